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

// With per_element (affine "elements", outer 1), scale and shift are indexed by the element of
// the group (m), else by the group (k).
template <typename T>
__global__ void normalize_kernel(const T* x, const T* scale, const T* shift, T* y, T* mean_out,
                                 T* rstd_out, NormLayout l, bool center, double eps, bool relu,
                                 bool per_element) {
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
  const C rs = scale && !per_element ? r_t * static_cast<C>(scale[k]) : r_t;
  const C t = shift && !per_element ? static_cast<C>(shift[k]) : C(0);
  for (int64_t m = threadIdx.x; m < count; m += kThreads) {
    const int64_t i = at(l, k, m);
    const C xhat_s = (static_cast<C>(x[i]) - m_t) * rs;
    const T v = per_element
                    ? static_cast<T>(xhat_s * static_cast<C>(scale[m]) + static_cast<C>(shift[m]))
                    : static_cast<T>(xhat_s + t);
    // activation "relu": relu's rule on the stored value (NaN and -0 pass through).
    y[i] = relu && static_cast<C>(v) < C(0) ? static_cast<T>(C(0)) : v;
  }
  if (threadIdx.x == 0) {
    mean_out[k] = static_cast<T>(mean);
    rstd_out[k] = static_cast<T>(rstd);
  }
}

// dx (unless null), and with scale per group (not per_element) dscale and dshift; with
// per_element, g = dy scale[m] and the parameters' gradients come from
// normalize_column_sums_kernel.
template <typename T>
__global__ void normalize_backward_kernel(const T* x, const T* mean, const T* rstd, const T* dy,
                                          const T* scale, T* dx, T* dscale, T* dshift, NormLayout l,
                                          bool center, bool per_element) {
  using C = Compute<T>;
  const int64_t k = blockIdx.x, count = l.outer * l.inner;
  const C m_k = center ? static_cast<C>(mean[k]) : C(0), r = static_cast<C>(rstd[k]);
  const C rs = scale && !per_element ? r * static_cast<C>(scale[k]) : r;
  // g: dy, or dy scale[m] per element.
  auto g_at = [&](int64_t m, int64_t i) {
    const C d = static_cast<C>(dy[i]);
    return per_element ? d * static_cast<C>(scale[m]) : d;
  };
  double sum_dy = 0, sum_dy_xhat = 0;
  for (int64_t m = threadIdx.x; m < count; m += kThreads) {
    const int64_t i = at(l, k, m);
    const C g = g_at(m, i);
    sum_dy += g;
    sum_dy_xhat += static_cast<double>(g) * static_cast<double>((static_cast<C>(x[i]) - m_k) * r);
  }
  // Every thread calls block_sum (it synchronizes the block), in the same order.
  const double total_dy = block_sum(sum_dy), total_dy_xhat = block_sum(sum_dy_xhat);
  if (scale && !per_element && threadIdx.x == 0) {
    dscale[k] = static_cast<T>(total_dy_xhat);
    dshift[k] = static_cast<T>(total_dy);
  }
  if (dx == nullptr) return;  // the parameters' gradients alone
  const C mean_dy = center ? static_cast<C>(total_dy / count) : C(0);
  const C mean_dy_xhat = static_cast<C>(total_dy_xhat / count);
  for (int64_t m = threadIdx.x; m < count; m += kThreads) {
    const int64_t i = at(l, k, m);
    const C xhat = (static_cast<C>(x[i]) - m_k) * r;
    dx[i] = static_cast<T>(rs * (g_at(m, i) - mean_dy - xhat * mean_dy_xhat));
  }
}

// Affine "elements": dscale[b] = sum over the rows k of dy xhat, dshift[b] = sum of dy, for x
// [rows, inner]; one thread per element b (adjacent threads read adjacent elements), each sum in
// row order in f64.
template <typename T>
__global__ void normalize_column_sums_kernel(const T* x, const T* mean, const T* rstd, const T* dy,
                                             T* dscale, T* dshift, int64_t rows, int64_t inner,
                                             bool center) {
  using C = Compute<T>;
  const int64_t b = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (b >= inner) return;
  double sum_dy = 0, sum_dy_xhat = 0;
  for (int64_t k = 0; k < rows; ++k) {
    const int64_t i = k * inner + b;
    const C m_k = center ? static_cast<C>(mean[k]) : C(0);
    const C xhat = (static_cast<C>(x[i]) - m_k) * static_cast<C>(rstd[k]);
    const double d = static_cast<double>(static_cast<C>(dy[i]));
    sum_dy += d;
    sum_dy_xhat += d * static_cast<double>(xhat);
  }
  dscale[b] = static_cast<T>(sum_dy_xhat);
  dshift[b] = static_cast<T>(sum_dy);
}

void normalize_cuda(KernelContext& ctx) {
  const Tensor& x = ctx.input(0);
  const NormLayout l = norm_layout(x.shape(), ctx.attr<std::vector<int64_t>>("axes"));
  if (l.kept == 0) return;
  const bool center = ctx.attr<bool>("center");
  const double eps = ctx.attr<double>("eps");
  const bool affine = ctx.num_inputs() == 3;
  const bool per_element = affine && ctx.attr<std::string>("affine") == "elements";
  const bool relu = ctx.attr<std::string>("activation") == "relu";
  dispatch_cuda_float(x.dtype(), [&](auto tag) {
    using T = decltype(tag);
    normalize_kernel<T><<<static_cast<unsigned>(l.kept), kThreads, 0, stream_of(ctx)>>>(
        x.data<T>(), affine ? ctx.input(1).data<T>() : nullptr,
        affine ? ctx.input(2).data<T>() : nullptr, static_cast<T*>(ctx.output(0).raw_data()),
        static_cast<T*>(ctx.output(1).raw_data()), static_cast<T*>(ctx.output(2).raw_data()), l,
        center, eps, relu, per_element);
  });
  check_launch(ctx);
}

void normalize_backward_cuda(KernelContext& ctx) {
  const Tensor& x = ctx.input(0);
  const NormLayout l = norm_layout(x.shape(), ctx.attr<std::vector<int64_t>>("axes"));
  const bool center = ctx.attr<bool>("center");
  const bool affine = ctx.num_inputs() == 5;
  const bool per_element = affine && ctx.attr<std::string>("affine") == "elements";
  const bool input_gradient = ctx.attr<bool>("input_gradient");  // else affine (inference)
  dispatch_cuda_float(x.dtype(), [&](auto tag) {
    using T = decltype(tag);
    T* dx = input_gradient ? static_cast<T*>(ctx.output(0).raw_data()) : nullptr;
    T* dscale = affine ? static_cast<T*>(ctx.output(input_gradient ? 1 : 0).raw_data()) : nullptr;
    T* dshift = affine ? static_cast<T*>(ctx.output(input_gradient ? 2 : 1).raw_data()) : nullptr;
    // With x empty each block still writes its dscale and dshift (zeros); with no rows, the
    // column sums do (per element). Per element without dx, the column sums are all there is.
    if (l.kept > 0 && (dx != nullptr || !per_element))
      normalize_backward_kernel<T><<<static_cast<unsigned>(l.kept), kThreads, 0, stream_of(ctx)>>>(
          x.data<T>(), ctx.input(1).data<T>(), ctx.input(2).data<T>(), ctx.input(3).data<T>(),
          affine ? ctx.input(4).data<T>() : nullptr, dx, dscale, dshift, l, center, per_element);
    if (per_element && l.inner > 0)
      normalize_column_sums_kernel<T>
          <<<static_cast<unsigned>((l.inner + kThreads - 1) / kThreads), kThreads, 0,
             stream_of(ctx)>>>(x.data<T>(), ctx.input(1).data<T>(), ctx.input(2).data<T>(),
                               ctx.input(3).data<T>(), dscale, dshift, l.kept, l.inner, center);
  });
  check_launch(ctx);
}

KILN_CUDA_KERNEL(normalize, normalize_cuda, cuda_dtypes(DTypeClass::floating));
KILN_CUDA_KERNEL(normalize_backward, normalize_backward_cuda, cuda_dtypes(DTypeClass::floating));

}  // namespace kiln::ops::cuda_norm
