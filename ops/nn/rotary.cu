// CUDA kernel of rotary (ops/nn/rotary.cc): one thread per feature pair of x [B, T, H, D], with
// the CPU kernel's angles (p = float(t) + float(start), w = p f[c], both f32) and arithmetic in
// Compute<T> (f32 for 16-bit x, f64 for f64). The start is read on the device, so a captured
// CUDA Graph turns each step's rows for the position it is fed.
#include "kiln/ops/cuda/map.cuh"

namespace kiln::ops::cuda_rotary {

using namespace kiln::ops::cuda;

struct RotaryShape {
  int64_t length, heads, pairs;
  int64_t second, step;  // offsets of a pair's second feature, and from one pair to the next
  float direction;       // 1, or -1 for the inverse rotation
};

template <typename T, typename Index>
__global__ void rotary_kernel(RotaryShape r, const T* x, const float* frequencies,
                              const Index* start, T* y, int64_t n) {
  using C = Compute<T>;
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  const float first = start == nullptr ? 0.0f : static_cast<float>(start[0]);
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < n;
       i += stride) {
    const int64_t c = i % r.pairs, row = i / r.pairs;
    const int64_t t = row / r.heads % r.length;
    const float w = (static_cast<float>(t) + first) * frequencies[c];
    float sin_w, cos_w;
    sincosf(w, &sin_w, &cos_w);
    const C cw = static_cast<C>(cos_w), sw = static_cast<C>(r.direction * sin_w);
    const int64_t at = row * 2 * r.pairs + c * r.step;
    const C u = static_cast<C>(x[at]), v = static_cast<C>(x[at + r.second]);
    y[at] = static_cast<T>(u * cw - v * sw);
    y[at + r.second] = static_cast<T>(v * cw + u * sw);
  }
}

template <typename T, typename Index>
void launch(KernelContext& ctx, const RotaryShape& r, const Index* start) {
  const Tensor& x = ctx.input(0);
  const int64_t n = x.numel() / 2;
  if (n == 0) return;
  const LaunchConfig config = elementwise_launch(n);
  rotary_kernel<T, Index>
      <<<static_cast<unsigned>(config.blocks), config.threads, 0, stream_of(ctx)>>>(
          r, x.data<T>(), ctx.input(1).data<float>(), start,
          static_cast<T*>(ctx.output(0).raw_data()), n);
  check_launch(ctx);
}

void rotary_cuda(KernelContext& ctx) {
  const Shape& s = ctx.input(0).shape();
  const bool interleaved = ctx.attr<bool>("interleaved");
  const int64_t pairs = s[3] / 2;
  KILN_CHECK(ctx.input(1).numel() == pairs, Error, ctx.where(), ": ", ctx.input(1).numel(),
             " frequencies for a depth of ", s[3]);
  const RotaryShape r{s[1],
                      s[2],
                      pairs,
                      interleaved ? 1 : pairs,
                      interleaved ? 2 : 1,
                      ctx.attr<bool>("inverse") ? -1.0f : 1.0f};
  dispatch_cuda_float(ctx.input(0).dtype(), [&](auto tag) {
    using T = decltype(tag);
    if (ctx.num_inputs() < 3)
      launch<T, int64_t>(ctx, r, nullptr);
    else if (ctx.input(2).dtype() == DType::i32)
      launch<T, int32_t>(ctx, r, ctx.input(2).data<int32_t>());
    else
      launch<T, int64_t>(ctx, r, ctx.input(2).data<int64_t>());
  });
}

KILN_CUDA_KERNEL(rotary, rotary_cuda, cuda_dtypes(DTypeClass::floating));

}  // namespace kiln::ops::cuda_rotary
