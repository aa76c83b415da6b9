// CUDA kernels of normalize and normalize_backward (ops/nn/normalization.cc): one block per
// statistics group, sums in f64 as on the CPU (batch norm's groups hold up to millions of
// elements), a warp-shuffle then shared-memory reduction.
#include "kiln/ops/cuda/map.cuh"
#include "kiln/ops/nn/normalization.h"

namespace kiln::ops::cuda_norm {

using namespace kiln::ops::cuda;

constexpr int kThreads = 256;

// The sum of every thread's v in the block, returned to all threads.
__device__ double block_sum(double v) {
  __shared__ double partial[kThreads / 32];
  for (int offset = 16; offset > 0; offset /= 2) v += __shfl_xor_sync(0xffffffffu, v, offset);
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  __syncthreads();  // partial may still be read from the previous call
  if (lane == 0) partial[warp] = v;
  __syncthreads();
  double total = 0;
  for (int w = 0; w < kThreads / 32; ++w) total += partial[w];
  return total;
}

// The position in x of element m of group k.
__device__ int64_t at(const NormLayout& l, int64_t k, int64_t m) {
  return ((m / l.inner) * l.kept + k) * l.inner + m % l.inner;
}

template <typename T>
__global__ void normalize_kernel(const T* x, const T* scale, const T* shift, T* y, T* mean_out,
                                 T* rstd_out, NormLayout l, bool center, double eps, bool relu) {
  const int64_t k = blockIdx.x, count = l.outer * l.inner;
  double sum = 0;
  if (center)
    for (int64_t m = threadIdx.x; m < count; m += kThreads)
      sum += static_cast<double>(x[at(l, k, m)]);
  const double mean = center ? block_sum(sum) / static_cast<double>(count) : 0.0;
  double squares = 0;
  for (int64_t m = threadIdx.x; m < count; m += kThreads) {
    const double d = static_cast<double>(x[at(l, k, m)]) - mean;
    squares += d * d;
  }
  const double rstd = 1 / sqrt(block_sum(squares) / static_cast<double>(count) + eps);
  using C = Compute<T>;
  // Rounded to the storage type first, as the CPU kernel computes y from the stored values.
  const C m_t = static_cast<C>(static_cast<T>(mean)), r_t = static_cast<C>(static_cast<T>(rstd));
  // The affine step (scale and shift given, or neither): y = (x - m) r s + t.
  const C rs = scale ? r_t * static_cast<C>(scale[k]) : r_t;
  const C t = shift ? static_cast<C>(shift[k]) : C(0);
  for (int64_t m = threadIdx.x; m < count; m += kThreads) {
    const int64_t i = at(l, k, m);
    const T v = static_cast<T>((static_cast<C>(x[i]) - m_t) * rs + t);
    // activation "relu": relu's rule on the stored value (NaN and -0 pass through).
    y[i] = relu && static_cast<C>(v) < C(0) ? static_cast<T>(C(0)) : v;
  }
  if (threadIdx.x == 0) {
    mean_out[k] = static_cast<T>(mean);
    rstd_out[k] = static_cast<T>(rstd);
  }
}

template <typename T>
__global__ void normalize_backward_kernel(const T* x, const T* mean, const T* rstd, const T* dy,
                                          const T* scale, T* dx, T* dscale, T* dshift, NormLayout l,
                                          bool center) {
  using C = Compute<T>;
  const int64_t k = blockIdx.x, count = l.outer * l.inner;
  const C m_k = center ? static_cast<C>(mean[k]) : C(0), r = static_cast<C>(rstd[k]);
  const C rs = scale ? r * static_cast<C>(scale[k]) : r;
  double sum_dy = 0, sum_dy_xhat = 0;
  for (int64_t m = threadIdx.x; m < count; m += kThreads) {
    const int64_t i = at(l, k, m);
    const C g = static_cast<C>(dy[i]);
    sum_dy += g;
    sum_dy_xhat += static_cast<double>(g) * static_cast<double>((static_cast<C>(x[i]) - m_k) * r);
  }
  // Every thread calls block_sum (it synchronizes the block), in the same order.
  const double total_dy = block_sum(sum_dy), total_dy_xhat = block_sum(sum_dy_xhat);
  if (scale && threadIdx.x == 0) {
    dscale[k] = static_cast<T>(total_dy_xhat);
    dshift[k] = static_cast<T>(total_dy);
  }
  const C mean_dy = center ? static_cast<C>(total_dy / count) : C(0);
  const C mean_dy_xhat = static_cast<C>(total_dy_xhat / count);
  for (int64_t m = threadIdx.x; m < count; m += kThreads) {
    const int64_t i = at(l, k, m);
    const C xhat = (static_cast<C>(x[i]) - m_k) * r;
    dx[i] = static_cast<T>(rs * (static_cast<C>(dy[i]) - mean_dy - xhat * mean_dy_xhat));
  }
}

void normalize_cuda(KernelContext& ctx) {
  const Tensor& x = ctx.input(0);
  const NormLayout l = norm_layout(x.shape(), ctx.attr<std::vector<int64_t>>("axes"));
  if (l.kept == 0) return;
  const bool center = ctx.attr<bool>("center");
  const double eps = ctx.attr<double>("eps");
  const bool affine = ctx.num_inputs() == 3;
  const bool relu = ctx.attr<std::string>("activation") == "relu";
  dispatch_cuda_float(x.dtype(), [&](auto tag) {
    using T = decltype(tag);
    normalize_kernel<T><<<static_cast<unsigned>(l.kept), kThreads, 0, stream_of(ctx)>>>(
        x.data<T>(), affine ? ctx.input(1).data<T>() : nullptr,
        affine ? ctx.input(2).data<T>() : nullptr, static_cast<T*>(ctx.output(0).raw_data()),
        static_cast<T*>(ctx.output(1).raw_data()), static_cast<T*>(ctx.output(2).raw_data()), l,
        center, eps, relu);
  });
  check_launch(ctx);
}

void normalize_backward_cuda(KernelContext& ctx) {
  const Tensor& x = ctx.input(0);
  const NormLayout l = norm_layout(x.shape(), ctx.attr<std::vector<int64_t>>("axes"));
  if (l.kept == 0) return;
  const bool center = ctx.attr<bool>("center");
  const bool affine = ctx.num_inputs() == 5;
  dispatch_cuda_float(x.dtype(), [&](auto tag) {
    using T = decltype(tag);
    // With x empty each block still writes its dscale and dshift (zeros).
    normalize_backward_kernel<T><<<static_cast<unsigned>(l.kept), kThreads, 0, stream_of(ctx)>>>(
        x.data<T>(), ctx.input(1).data<T>(), ctx.input(2).data<T>(), ctx.input(3).data<T>(),
        affine ? ctx.input(4).data<T>() : nullptr, static_cast<T*>(ctx.output(0).raw_data()),
        affine ? static_cast<T*>(ctx.output(1).raw_data()) : nullptr,
        affine ? static_cast<T*>(ctx.output(2).raw_data()) : nullptr, l, center);
  });
  check_launch(ctx);
}

KILN_CUDA_KERNEL(normalize, normalize_cuda, cuda_dtypes(DTypeClass::floating));
KILN_CUDA_KERNEL(normalize_backward, normalize_backward_cuda, cuda_dtypes(DTypeClass::floating));

}  // namespace kiln::ops::cuda_norm
