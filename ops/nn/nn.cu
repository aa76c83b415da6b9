// CUDA kernels of softmax, log_softmax and softmax_cross_entropy (+ its gradient), with the
// CPU kernels' math (max-shifted, f32 accumulation for 16-bit floats). Rows along a last axis
// get one warp each (shuffle reductions); other axes one thread per (outer, inner) column.
#include <cfloat>

#include "kiln/ops/cuda/map.cuh"

namespace kiln::ops::cuda_nn {

using namespace kiln::ops::cuda;

template <typename C>
__device__ C warp_max(C v) {
  for (int offset = 16; offset > 0; offset /= 2) {
    const C other = __shfl_xor_sync(0xffffffffu, v, offset);
    v = other > v ? other : v;
  }
  return v;
}
template <typename C>
__device__ C warp_sum(C v) {
  for (int offset = 16; offset > 0; offset /= 2) v += __shfl_xor_sync(0xffffffffu, v, offset);
  return v;
}

template <typename C>
__device__ C negative_infinity() {
  return -std::numeric_limits<C>::infinity();
}

// softmax over rows of n contiguous elements, one warp per row.
//   y = exp(x - m) / s  or (log) y = (x - m) - log s (see softmax.cc),  m = max x, s = sum exp(x -
//   m)
template <typename T, bool kLog>
__global__ void softmax_rows(const T* x, T* y, int64_t rows, int64_t n) {
  using C = Compute<T>;
  const int64_t row = blockIdx.x * static_cast<int64_t>(blockDim.x / 32) + threadIdx.x / 32;
  const int lane = threadIdx.x % 32;
  if (row >= rows) return;  // whole warps leave together
  const T* in = x + row * n;
  T* out = y + row * n;
  C m = negative_infinity<C>();
  for (int64_t j = lane; j < n; j += 32) m = fmax(m, static_cast<C>(in[j]));
  m = warp_max(m);
  if (!isfinite(m)) m = C(0);  // all -inf (or inf/NaN): let the math propagate
  C s = 0;
  for (int64_t j = lane; j < n; j += 32) s += exp(static_cast<C>(in[j]) - m);
  s = warp_sum(s);
  const C log_s = log(s), inv = C(1) / s;
  for (int64_t j = lane; j < n; j += 32) {
    const C v = static_cast<C>(in[j]);
    out[j] = static_cast<T>(kLog ? (v - m) - log_s : exp(v - m) * inv);
  }
}

template <typename T, bool kLog>
void softmax_typed(KernelContext& ctx, int64_t outer, int64_t n, int64_t inner) {
  const T* x = ctx.input(0).data<T>();
  T* y = ctx.output(0).data<T>();
  if (inner == 1) {
    const LaunchConfig config = warp_per_row_launch(outer);
    softmax_rows<T, kLog>
        <<<static_cast<unsigned>(config.blocks), config.threads, 0, stream_of(ctx)>>>(x, y, outer,
                                                                                      n);
    check_launch(ctx);
    return;
  }
  for_each(ctx, outer * inner, [=] __device__(int64_t p) {
    using C = Compute<T>;
    const int64_t base = (p / inner) * n * inner + p % inner;
    C m = negative_infinity<C>();
    for (int64_t j = 0; j < n; ++j) m = fmax(m, static_cast<C>(x[base + j * inner]));
    if (!isfinite(m)) m = C(0);
    C s = 0;
    for (int64_t j = 0; j < n; ++j) s += exp(static_cast<C>(x[base + j * inner]) - m);
    const C log_s = log(s), inv = C(1) / s;
    for (int64_t j = 0; j < n; ++j) {
      const C v = static_cast<C>(x[base + j * inner]);
      y[base + j * inner] = static_cast<T>(kLog ? (v - m) - log_s : exp(v - m) * inv);
    }
  });
}

template <bool kLog>
void softmax_cuda(KernelContext& ctx) {
  const Tensor& x = ctx.input(0);
  const int64_t axis = normalize_axis(ctx.attr<int64_t>("axis"), x.rank(), ctx.where());
  int64_t outer = 1, n = x.shape()[axis], inner = 1;
  for (int64_t d = 0; d < axis; ++d) outer *= x.shape()[d];
  for (int64_t d = axis + 1; d < x.rank(); ++d) inner *= x.shape()[d];
  if (x.numel() == 0) return;
  dispatch_cuda_float(x.dtype(),
                      [&](auto tag) { softmax_typed<decltype(tag), kLog>(ctx, outer, n, inner); });
}
KILN_CUDA_KERNEL(softmax, softmax_cuda<false>, cuda_dtypes(DTypeClass::floating));
KILN_CUDA_KERNEL(log_softmax, softmax_cuda<true>, cuda_dtypes(DTypeClass::floating));

// softmax_cross_entropy, one warp per row of logits z:
//   loss[i] = log s - (z[i, y[i]] - m)
//   (grad)  dz[i, c] = dloss[i] * (exp(z[i, c] - m) / s - [c == y[i]])
// A label outside [0, classes) is reported (the run fails naming the node and the label).
// With label smoothing e and ignore_index as in cross_entropy.cc.
template <typename T, typename Index, bool kGrad>
__global__ void cross_entropy_rows(const T* z, const Index* labels, const T* dloss, T* out,
                                   int64_t batch, int64_t classes, int64_t ignore, double smoothing,
                                   ErrorReporter errors) {
  using C = Compute<T>;
  const int64_t row = blockIdx.x * static_cast<int64_t>(blockDim.x / 32) + threadIdx.x / 32;
  const int lane = threadIdx.x % 32;
  if (row >= batch) return;
  const T* in = z + row * classes;
  const int64_t label = static_cast<int64_t>(labels[row]);
  if (label == ignore) {
    if constexpr (kGrad) {
      for (int64_t c = lane; c < classes; c += 32) out[row * classes + c] = T(0);
    } else if (lane == 0) {
      out[row] = T(0);
    }
    return;
  }
  if (label < 0 || label >= classes) {
    if (lane == 0) errors.report(DataErrorKind::label_out_of_range, label, row, 0, classes);
    return;
  }
  C m = negative_infinity<C>();
  for (int64_t c = lane; c < classes; c += 32) m = fmax(m, static_cast<C>(in[c]));
  m = warp_max(m);
  C s = 0, shifted_sum = 0;
  for (int64_t c = lane; c < classes; c += 32) {
    s += exp(static_cast<C>(in[c]) - m);
    shifted_sum += static_cast<C>(in[c]) - m;
  }
  s = warp_sum(s);
  shifted_sum = warp_sum(shifted_sum);
  const C e = static_cast<C>(smoothing), spread = e / static_cast<C>(classes);
  if constexpr (kGrad) {
    const C g = static_cast<C>(dloss[row]), inv = C(1) / s;
    for (int64_t c = lane; c < classes; c += 32)
      out[row * classes + c] = static_cast<T>(
          g * (exp(static_cast<C>(in[c]) - m) * inv - (1 - e) * C(c == label) - spread));
  } else if (lane == 0) {
    out[row] = static_cast<T>(log(s) - (1 - e) * (static_cast<C>(in[label]) - m) -
                              e * shifted_sum / static_cast<C>(classes));
  }
}

template <typename T, typename Index, bool kGrad>
void cross_entropy_typed(KernelContext& ctx) {
  const Tensor& z = ctx.input(0);
  const int64_t batch = z.shape()[0], classes = z.shape()[1];
  if (batch == 0) return;
  const LaunchConfig config = warp_per_row_launch(batch);
  cross_entropy_rows<T, Index, kGrad>
      <<<static_cast<unsigned>(config.blocks), config.threads, 0, stream_of(ctx)>>>(
          z.data<T>(), ctx.input(1).data<Index>(), kGrad ? ctx.input(2).data<T>() : nullptr,
          ctx.output(0).data<T>(), batch, classes, ctx.attr<int64_t>("ignore_index"),
          ctx.attr<double>("label_smoothing"), error_reporter(ctx));
  check_launch(ctx);
}

template <typename T, bool kGrad>
void cross_entropy_index(KernelContext& ctx) {
  if (ctx.input(1).dtype() == DType::i32)
    cross_entropy_typed<T, int32_t, kGrad>(ctx);
  else
    cross_entropy_typed<T, int64_t, kGrad>(ctx);
}

template <bool kGrad>
void cross_entropy_cuda(KernelContext& ctx) {
  dispatch_cuda_float(ctx.input(0).dtype(),
                      [&](auto tag) { cross_entropy_index<decltype(tag), kGrad>(ctx); });
}
KILN_CUDA_KERNEL(softmax_cross_entropy, cross_entropy_cuda<false>,
                 cuda_dtypes(DTypeClass::floating));
KILN_CUDA_KERNEL(softmax_cross_entropy_grad, cross_entropy_cuda<true>,
                 cuda_dtypes(DTypeClass::floating));

}  // namespace kiln::ops::cuda_nn
