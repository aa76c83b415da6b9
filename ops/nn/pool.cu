// CUDA kernels of the pooling ops (ops/nn/pool.cc), with the CPU kernels' rules: the first
// maximum of a window wins (a NaN at once), padding never does; averages divide as
// count_include_pad says; adaptive windows as ConvGeometry::adaptive. The backward ops gather
// rather than scatter: one thread per input pixel sums over the windows that hold it, so no atomics
// and the same result on every run (max_unpool2d, which scatters, runs a thread per plane).
#include "kiln/ops/array/strided_copy.h"
#include "kiln/ops/cuda/map.cuh"
#include "kiln/ops/nn/conv.h"

namespace kiln::ops::cuda_pool {

using namespace kiln::ops::cuda;

// The first and one-past-last of a window's taps start + t dilation (t < kernel) inside
// [0, in) (pool.cc's window_taps; inference made sure there is one).
__device__ void taps(int64_t start, int64_t kernel, int64_t dilation, int64_t in, int64_t* first,
                     int64_t* end) {
  *first = start < 0 ? start + (-start + dilation - 1) / dilation * dilation : start;
  const int64_t last = start + (kernel - 1) * dilation;
  *end = (last < in - 1 ? last : in - 1) + 1;
}

struct Window {
  int64_t h, w, oh, ow, kh, kw, sh, sw, ph, pw, dh, dw;
  bool include_pad;
  bool adaptive;  // uneven adaptive windows (ConvGeometry::adaptive)

  // Window (i, j)'s rows *h0, *h0 + dh, .. < *h1 and columns *w0, *w0 + dw, .. < *w1 inside
  // the input (dh = dw = 1 but for dilated max pooling).
  __device__ void bounds(int64_t i, int64_t j, int64_t* h0, int64_t* h1, int64_t* w0,
                         int64_t* w1) const {
    if (adaptive) {  // [floor(i H / OH), ceil((i + 1) H / OH))
      *h0 = i * h / oh;
      *h1 = ((i + 1) * h + oh - 1) / oh;
      *w0 = j * w / ow;
      *w1 = ((j + 1) * w + ow - 1) / ow;
      return;
    }
    taps(i * sh - ph, kh, dh, h, h0, h1);
    taps(j * sw - pw, kw, dw, w, w0, w1);
  }
  // The divisor of an average over window (i, j) (see pool.cc).
  __device__ int64_t count(int64_t i, int64_t j) const {
    int64_t h0, h1, w0, w1;
    bounds(i, j, &h0, &h1, &w0, &w1);
    if (!include_pad) return (h1 - h0) * (w1 - w0);
    const int64_t top = i * sh - ph, left = j * sw - pw;
    const int64_t hs = (top + kh < h + ph ? top + kh : h + ph) - top;
    const int64_t ws = (left + kw < w + pw ? left + kw : w + pw) - left;
    return hs * ws;
  }
  // The windows holding input row r: [*i0, *i1) (and the same for columns with col_range).
  // Adaptive: window i holds r iff floor(i H / OH) <= r < ceil((i + 1) H / OH), that is
  // floor(r OH / H) <= i < ceil((r + 1) OH / H). Dilated: the windows whose span
  // dh (kh - 1) + 1 covers r, a superset of those with a tap on it (the max ops' backward asks
  // each window's argmax, which is a tap).
  __device__ void row_range(int64_t r, int64_t* i0, int64_t* i1) const {
    if (adaptive) {
      *i0 = r * oh / h;
      *i1 = ((r + 1) * oh + h - 1) / h;
      return;
    }
    const int64_t lo = r + ph - dh * (kh - 1);  // the first window's top must be > r - span
    *i0 = lo <= 0 ? 0 : (lo + sh - 1) / sh;
    const int64_t hi = (r + ph) / sh + 1;
    *i1 = hi < oh ? hi : oh;
  }
  __device__ void col_range(int64_t q, int64_t* j0, int64_t* j1) const {
    if (adaptive) {
      *j0 = q * ow / w;
      *j1 = ((q + 1) * ow + w - 1) / w;
      return;
    }
    const int64_t lo = q + pw - dw * (kw - 1);
    *j0 = lo <= 0 ? 0 : (lo + sw - 1) / sw;
    const int64_t hi = (q + pw) / sw + 1;
    *j1 = hi < ow ? hi : ow;
  }
  // The offset in its plane of window (i, j)'s first maximum.
  template <typename T>
  __device__ int64_t argmax(const T* plane, int64_t i, int64_t j) const {
    using C = Compute<T>;
    int64_t h0, h1, w0, w1;
    bounds(i, j, &h0, &h1, &w0, &w1);
    int64_t best = h0 * w + w0;
    C best_value = static_cast<C>(plane[best]);
    for (int64_t r = h0; r < h1; r += dh)
      for (int64_t q = w0; q < w1; q += dw) {
        const C v = static_cast<C>(plane[r * w + q]);
        if (isnan(v)) return r * w + q;
        if (v > best_value) {
          best = r * w + q;
          best_value = v;
        }
      }
    return best;
  }
};

Window window_of(const KernelContext& ctx, const Shape& x, const Shape& y) {
  const ConvGeometry g = pool_geometry(ctx.node(), x, y);
  const AttrMap& attrs = ctx.node().attrs();
  const bool include_pad =
      attrs.count("count_include_pad") != 0 && ctx.attr<bool>("count_include_pad");
  return {g.in_h,     g.in_w,  g.out_h, g.out_w,      g.kernel_h,   g.kernel_w,  g.stride_h,
          g.stride_w, g.pad_h, g.pad_w, g.dilation_h, g.dilation_w, include_pad, g.adaptive};
}

// kMode 0: y = max of x; 1: y = v at x's argmax; 2: dx from (x, dy); 3: the argmax (i64).
template <int kMode, typename T>
void max_pool_typed(KernelContext& ctx) {
  const Tensor& x = ctx.input(0);
  const Shape& pooled = kMode == 2 ? ctx.input(1).shape() : ctx.output(0).shape();
  const Window win = window_of(ctx, x.shape(), pooled);
  const T* px = x.data<T>();
  const T* other = kMode == 0 || kMode == 3 ? nullptr : ctx.input(1).data<T>();
  T* out = kMode == 3 ? nullptr : static_cast<T*>(ctx.output(0).raw_data());
  int64_t* argmax = kMode == 3 ? static_cast<int64_t*>(ctx.output(0).raw_data()) : nullptr;
  const int64_t in_plane = win.h * win.w, out_plane = win.oh * win.ow;
  // positive_only (pool.cc): windows whose maximum is not > 0 route and select nothing.
  const bool positive_only = kMode != 0 && ctx.node().attrs().count("positive_only") != 0 &&
                             ctx.attr<bool>("positive_only");
  if constexpr (kMode == 2) {
    for_each(ctx, x.numel(), [=] __device__(int64_t idx) {
      const int64_t p = idx / in_plane, at = idx % in_plane, r = at / win.w, q = at % win.w;
      int64_t i0, i1, j0, j1;
      win.row_range(r, &i0, &i1);
      win.col_range(q, &j0, &j1);
      Compute<T> sum = 0;
      // x[idx] is the maximum of every window it wins.
      if (positive_only && !(static_cast<Compute<T>>(px[idx]) > Compute<T>(0))) i1 = i0;
      for (int64_t i = i0; i < i1; ++i)
        for (int64_t j = j0; j < j1; ++j)
          if (win.argmax(px + p * in_plane, i, j) == at)
            sum += static_cast<Compute<T>>(other[p * out_plane + i * win.ow + j]);
      out[idx] = static_cast<T>(sum);
    });
  } else {
    for_each(ctx, ctx.output(0).numel(), [=] __device__(int64_t idx) {
      const int64_t p = idx / out_plane, i = idx % out_plane / win.ow, j = idx % win.ow;
      const int64_t at = win.argmax(px + p * in_plane, i, j);
      if (kMode == 3) {  // not `if constexpr`: a device lambda may not first capture there
        argmax[idx] = at;
        return;
      }
      const bool routes =
          !positive_only || static_cast<Compute<T>>(px[p * in_plane + at]) > Compute<T>(0);
      out[idx] = kMode == 0 ? px[p * in_plane + at] : routes ? other[p * in_plane + at] : T(0);
    });
  }
}

// kBackward false: y = window means of x; true: dx from dy.
template <bool kBackward, typename T>
void avg_pool_typed(KernelContext& ctx) {
  using C = Compute<T>;
  const Tensor& in = ctx.input(0);
  Tensor& out_tensor = ctx.output(0);
  const Window win = kBackward ? window_of(ctx, out_tensor.shape(), in.shape())
                               : window_of(ctx, in.shape(), out_tensor.shape());
  const T* pin = in.data<T>();
  T* out = static_cast<T*>(out_tensor.raw_data());
  const int64_t in_plane = win.h * win.w, out_plane = win.oh * win.ow;
  if constexpr (kBackward) {
    for_each(ctx, out_tensor.numel(), [=] __device__(int64_t idx) {
      const int64_t p = idx / in_plane, at = idx % in_plane;
      int64_t i0, i1, j0, j1;
      win.row_range(at / win.w, &i0, &i1);
      win.col_range(at % win.w, &j0, &j1);
      C sum = 0;
      for (int64_t i = i0; i < i1; ++i)
        for (int64_t j = j0; j < j1; ++j)
          sum +=
              static_cast<C>(pin[p * out_plane + i * win.ow + j]) / static_cast<C>(win.count(i, j));
      out[idx] = static_cast<T>(sum);
    });
  } else {
    for_each(ctx, out_tensor.numel(), [=] __device__(int64_t idx) {
      const int64_t p = idx / out_plane, i = idx % out_plane / win.ow, j = idx % win.ow;
      int64_t h0, h1, w0, w1;
      win.bounds(i, j, &h0, &h1, &w0, &w1);
      C sum = 0;
      for (int64_t r = h0; r < h1; ++r)
        for (int64_t q = w0; q < w1; ++q) sum += static_cast<C>(pin[p * in_plane + r * win.w + q]);
      out[idx] = static_cast<T>(sum / static_cast<C>(win.count(i, j)));
    });
  }
}

// max_unpool2d: one thread per plane writes its x values at their indices in order, as the CPU
// kernel does (the same value stays where indices repeat, and no races). An index outside the
// plane is reported (the run fails naming the node) and skipped.
template <typename T>
void max_unpool_typed(KernelContext& ctx) {
  const Tensor& x = ctx.input(0);
  Tensor& y = ctx.output(0);
  fill_zero(ctx, y);
  const int64_t count = x.shape()[2] * x.shape()[3], width = y.shape()[3];
  const int64_t plane = y.shape()[2] * width;
  const T* px = x.data<T>();
  const int64_t* indices = ctx.input(1).data<int64_t>();
  T* out = static_cast<T*>(y.raw_data());
  const ErrorReporter errors = error_reporter(ctx);
  for_each(ctx, x.shape()[0] * x.shape()[1], [=] __device__(int64_t p) {
    for (int64_t k = p * count; k < (p + 1) * count; ++k) {
      const int64_t at = indices[k];
      if (at < 0 || at >= plane) {
        errors.report(DataErrorKind::index_out_of_range, at, k, 0, plane);
        continue;
      }
      out[p * plane + at] = px[k];
    }
  });
}

void max_unpool_cuda(KernelContext& ctx) {
  if (ctx.input(0).numel() == 0) {
    fill_zero(ctx, ctx.output(0));
    return;
  }
  dispatch_cuda_float(ctx.input(0).dtype(),
                      [&](auto tag) { max_unpool_typed<decltype(tag)>(ctx); });
}

template <int kMode>
void max_pool_cuda(KernelContext& ctx) {
  dispatch_cuda_float(ctx.input(0).dtype(),
                      [&](auto tag) { max_pool_typed<kMode, decltype(tag)>(ctx); });
}
template <bool kBackward>
void avg_pool_cuda(KernelContext& ctx) {
  dispatch_cuda_float(ctx.input(0).dtype(),
                      [&](auto tag) { avg_pool_typed<kBackward, decltype(tag)>(ctx); });
}

KILN_CUDA_KERNEL(max_pool2d, max_pool_cuda<0>, cuda_dtypes(DTypeClass::floating));
KILN_CUDA_KERNEL(max_pool2d_select, max_pool_cuda<1>, cuda_dtypes(DTypeClass::floating));
KILN_CUDA_KERNEL(max_pool2d_indices, max_pool_cuda<3>, cuda_dtypes(DTypeClass::floating));
KILN_CUDA_KERNEL(max_unpool2d, max_unpool_cuda, cuda_dtypes(DTypeClass::floating));
KILN_CUDA_KERNEL(max_pool2d_backward, max_pool_cuda<2>, cuda_dtypes(DTypeClass::floating));
KILN_CUDA_KERNEL(adaptive_max_pool2d, max_pool_cuda<0>, cuda_dtypes(DTypeClass::floating));
KILN_CUDA_KERNEL(adaptive_max_pool2d_select, max_pool_cuda<1>, cuda_dtypes(DTypeClass::floating));
KILN_CUDA_KERNEL(adaptive_max_pool2d_backward, max_pool_cuda<2>, cuda_dtypes(DTypeClass::floating));
KILN_CUDA_KERNEL(avg_pool2d, avg_pool_cuda<false>, cuda_dtypes(DTypeClass::floating));
KILN_CUDA_KERNEL(avg_pool2d_backward, avg_pool_cuda<true>, cuda_dtypes(DTypeClass::floating));

}  // namespace kiln::ops::cuda_pool
