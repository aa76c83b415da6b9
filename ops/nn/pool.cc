// 2-D pooling over NCHW planes (windows as in conv.h; dilation for the max ops only, as
// PyTorch's: window w's taps are rows start + t dilation, t < kernel, and columns likewise):
//   max_pool2d:          y[w] = max over window w of x (NaN wins; padding never does)
//   max_pool2d_backward: dx[argmax w] += dy[w]  (the first maximum, as PyTorch)
//   max_pool2d_select:   v[argmax w]            (the adjoint of the backward op in dy)
//   max_pool2d_indices:  argmax w as h W + w in x's plane, i64 (PyTorch's return_indices)
//   max_unpool2d:        y[n, c, indices[n, c, i, j]] = x[n, c, i, j] over a zero plane of
//                        output_size, in x's order, so of several values sent to one place the
//                        last stays (PyTorch's max_unpool2d; overlapping pool windows send one
//                        maximum twice); its gradient picks dy at the indices for every x
//                        (take_along_axis), as PyTorch's
// Both take `positive_only`: only windows whose maximum is > 0 route (and select); the others
// give 0. That is the gradient of max_pool2d(relu(z)) with relu's gradient folded in (the
// pool's input is relu's output, and relu passes gradient where it is > 0), which the
// algebraic simplification pass makes of where(z > 0, max_pool2d_backward(relu(z), dy), 0).
//   avg_pool2d:          y[w] = sum over window w of x / count, count = the window's size, or
//                        its part inside the input when count_include_pad is false
//   avg_pool2d_backward: dx[p] += dy[w] / count(w) for every window w holding p
// The backward ops are linear in dy, so their gradients are the ops above again.
//   adaptive_max_pool2d (and its _backward, _select): the max ops over an output_size grid of
//                        windows, row i [floor(i H / OH), ceil((i + 1) H / OH)), columns
//                        likewise (PyTorch's AdaptiveMaxPool2d): uneven and overlapping where
//                        OH does not divide H, the ordinary tiled window where it does.
#include <algorithm>
#include <cmath>
#include <limits>
#include <type_traits>
#include <utility>
#include <vector>

#if defined(__AVX512F__)
#include <immintrin.h>
#endif

#include "kiln/framework/gradient.h"
#include "kiln/framework/kernel.h"
#include "kiln/ops/array.h"
#include "kiln/ops/dtypes.h"
#include "kiln/ops/math.h"
#include "kiln/ops/nn.h"
#include "kiln/ops/nn/conv.h"

namespace kiln {
namespace ops {

ConvGeometry pool_geometry(const Node& node, const Shape& x, const Shape& y) {
  ConvGeometry g;
  g.batch = x[0];
  g.in_channels = g.out_channels = g.groups = x[1];
  g.in_h = x[2];
  g.in_w = x[3];
  g.out_h = y[2];
  g.out_w = y[3];
  if (node.attrs().count("output_size") != 0) {
    g.adaptive = g.in_h % g.out_h != 0 || g.in_w % g.out_w != 0;
    // Tiled: a window of in / out; uneven: ceil(in / out) + 1 bounds every window.
    g.kernel_h = g.stride_h = g.adaptive ? (g.in_h + g.out_h - 1) / g.out_h + 1 : g.in_h / g.out_h;
    g.kernel_w = g.stride_w = g.adaptive ? (g.in_w + g.out_w - 1) / g.out_w + 1 : g.in_w / g.out_w;
    return g;
  }
  const auto& kernel = node.attr<std::vector<int64_t>>("kernel_size");
  const auto& stride = node.attr<std::vector<int64_t>>("stride");
  const auto& padding = node.attr<std::vector<int64_t>>("padding");
  g.kernel_h = kernel[0];
  g.kernel_w = kernel[1];
  g.stride_h = stride[0];
  g.stride_w = stride[1];
  g.pad_h = padding[0];
  g.pad_w = padding[1];
  if (node.attrs().count("dilation") != 0) {
    const auto& dilation = node.attr<std::vector<int64_t>>("dilation");
    g.dilation_h = dilation[0];
    g.dilation_w = dilation[1];
  }
  return g;
}

namespace {

// The first and one-past-last row (or column) of input `in` that a window starting at `start`
// (in padded coordinates: start = i stride - pad) of `kernel` taps `dilation` apart touches:
// the taps start + t dilation inside [0, in); {-1, -1} when none is. With dilation 1 the
// window's rows clipped to the input.
std::pair<int64_t, int64_t> window_taps(int64_t start, int64_t kernel, int64_t dilation,
                                        int64_t in) {
  const int64_t skip = start < 0 ? (-start + dilation - 1) / dilation : 0;  // taps in the padding
  const int64_t first = start + skip * dilation;
  const int64_t last = std::min(start + (kernel - 1) * dilation, in - 1);
  if (skip >= kernel || first > last) return {-1, -1};
  return {first, last + 1};
}

// Checks x (4-D float, known C/H/W) and the window; returns the output's type.
TensorType infer_pool_of(const InferContext& ctx, const Shape& x) {
  auto pair = [&](const char* name, int64_t min) {
    const auto& v = ctx.attr<std::vector<int64_t>>(name);
    if (v.size() != 2) ctx.fail(name, " needs 2 values (height, width), got ", v.size());
    constexpr int64_t kMax = int64_t{1} << 24;  // no size arithmetic can overflow
    if (v[0] < min || v[1] < min || v[0] > kMax || v[1] > kMax)
      ctx.fail(name, " (", v[0], ", ", v[1], ") must be in [", min, ", ", kMax, "]");
    return v;
  };
  const auto kernel = pair("kernel_size", 1);
  const auto stride = pair("stride", 1);
  const auto padding = pair("padding", 0);
  const std::vector<int64_t> dilation =
      ctx.attrs().count("dilation") != 0 ? pair("dilation", 1) : std::vector<int64_t>{1, 1};
  if (padding[0] * 2 > kernel[0] || padding[1] * 2 > kernel[1])
    ctx.fail("padding (", padding[0], ", ", padding[1], ") must be at most half the window (",
             kernel[0], ", ", kernel[1], ")");
  if (x.rank() != 4) ctx.fail("x must be 4-D (NCHW), got ", x);
  if (x[1] < 0 || x[2] < 0 || x[3] < 0) ctx.fail("x ", x, " needs known C, H, W");
  const bool ceil_mode = ctx.attr<bool>("ceil_mode");
  Shape out{x[0], x[1], 0, 0};
  for (int d : {0, 1}) {
    // PyTorch's rule: floor((in + 2 pad - extent) / stride) + 1 windows, extent = dilation
    // (kernel - 1) + 1, rounded up instead in ceil_mode as long as the last window starts
    // inside the input or its left padding (so in ceil_mode a window may also be larger than
    // the padded input).
    const int64_t extent = dilation[d] * (kernel[d] - 1) + 1;
    const int64_t span = x[2 + d] + 2 * padding[d] - extent + (ceil_mode ? stride[d] - 1 : 0);
    int64_t count = (span >= 0 ? span / stride[d] : -((-span + stride[d] - 1) / stride[d])) + 1;
    if (ceil_mode && count >= 1 && (count - 1) * stride[d] >= x[2 + d] + padding[d]) --count;
    out[2 + d] = count;
    if (out[2 + d] < 1)
      ctx.fail("x ", x, " is smaller than the window (", kernel[0], ", ", kernel[1],
               dilation[d] > 1 ? str(", dilation ", dilation[0], ", ", dilation[1]) : "", ")");
    // Dilated taps can step over a small input: every window must hold an input element.
    for (int64_t i = 0; dilation[d] > 1 && i < count; ++i)
      if (window_taps(i * stride[d] - padding[d], kernel[d], dilation[d], x[2 + d]).first < 0)
        ctx.fail("window ", i, " along ", d == 0 ? "the height" : "the width", " of x ", x,
                 " holds no input element (kernel ", kernel[d], ", dilation ", dilation[d],
                 ", padding ", padding[d], ")");
  }
  return {ctx.dtype(0), out};
}

// The output_size attribute, checked: (height, width), each in [1, 2^24].
const std::vector<int64_t>& output_size_of(const InferContext& ctx) {
  const auto& size = ctx.attr<std::vector<int64_t>>("output_size");
  constexpr int64_t kMax = int64_t{1} << 24;
  if (size.size() != 2 || size[0] < 1 || size[1] < 1 || size[0] > kMax || size[1] > kMax)
    ctx.fail("output_size must be 2 values (height, width) in [1, ", kMax, "]");
  return size;
}

// Checks x (4-D float, known C, H >= 1, W >= 1) and output_size; returns the output's type.
TensorType infer_adaptive_of(const InferContext& ctx, const Shape& x) {
  const std::vector<int64_t>& size = output_size_of(ctx);
  if (x.rank() != 4) ctx.fail("x must be 4-D (NCHW), got ", x);
  if (x[1] < 0 || x[2] < 1 || x[3] < 1) ctx.fail("x ", x, " needs known C and H, W >= 1");
  return {ctx.dtype(0), Shape{x[0], x[1], size[0], size[1]}};
}

// The pooled type of x: by output_size for the adaptive ops, else by the window.
TensorType pooled_type(const InferContext& ctx, const Shape& x) {
  return ctx.attrs().count("output_size") != 0 ? infer_adaptive_of(ctx, x) : infer_pool_of(ctx, x);
}

std::vector<TensorType> infer_pool(const InferContext& ctx) {
  ctx.expect_dtype(0, {f32, f64, f16, bf16});
  return {pooled_type(ctx, ctx.shape(0))};
}

// The pooled shape, of i64 indices.
std::vector<TensorType> infer_pool_indices(const InferContext& ctx) {
  ctx.expect_dtype(0, {f32, f64, f16, bf16});
  return {{i64, pooled_type(ctx, ctx.shape(0)).shape}};
}

// x [N, C, OH, OW] (C, OH, OW known) and i64 indices of its shape: [N, C, H, W] by output_size.
std::vector<TensorType> infer_unpool(const InferContext& ctx) {
  ctx.expect_dtype(0, {f32, f64, f16, bf16});
  ctx.expect_dtype(1, {i64});
  const Shape& x = ctx.shape(0);
  if (x.rank() != 4 || x[1] < 0 || x[2] < 0 || x[3] < 0)
    ctx.fail("x must be 4-D (NCHW) with known C, H, W, got ", x);
  if (!ctx.shape(1).compatible_with(x))
    ctx.fail("indices ", ctx.shape(1), " must be shaped like x ", x);
  const std::vector<int64_t>& size = output_size_of(ctx);
  return {{ctx.dtype(0), Shape{x[0], x[1], size[0], size[1]}}};
}

// (x, dy) -> dx like x; (x, v) -> like the pooled output.
template <bool kLikeX>
std::vector<TensorType> infer_pool_pair(const InferContext& ctx) {
  ctx.expect_dtype(0, {f32, f64, f16, bf16});
  ctx.expect_same_dtype(0, 1);
  const TensorType pooled = pooled_type(ctx, ctx.shape(0));
  const Shape& want = kLikeX ? pooled.shape : ctx.shape(0);
  if (!ctx.shape(1).compatible_with(want))
    ctx.fail("input 1 is ", ctx.shape(1), ", expected ", want);
  return {kLikeX ? ctx.input(0) : pooled};
}

// dy [N, C, OH, OW] and attribute input_size: dx [N, C, H, W].
std::vector<TensorType> infer_avg_backward(const InferContext& ctx) {
  ctx.expect_dtype(0, {f32, f64, f16, bf16});
  const auto& size = ctx.attr<std::vector<int64_t>>("input_size");
  if (size.size() != 2 || size[0] < 1 || size[1] < 1 || size[0] > (int64_t{1} << 24) ||
      size[1] > (int64_t{1} << 24))
    ctx.fail("input_size must be 2 values (height, width) in [1, 2^24]");
  const Shape& dy = ctx.shape(0);
  if (dy.rank() != 4) ctx.fail("dy must be 4-D, got ", dy);
  const Shape x{dy[0], dy[1], size[0], size[1]};
  const TensorType pooled = infer_pool_of(ctx, x);
  if (!dy.compatible_with(pooled.shape))
    ctx.fail("dy ", dy, " does not match an input of ", size[0], "x", size[1], " (pooled ",
             pooled.shape, ")");
  return {{ctx.dtype(0), x}};
}

// Window i's first and one-past-last input index along a dim of `in` pooled to `out` (the
// window's start offset by the padding, its taps `dilation` apart, clipped to the input:
// window_taps; adaptive windows as above).
std::pair<int64_t, int64_t> window_span(const ConvGeometry& g, int64_t i, int64_t in, int64_t out,
                                        int64_t kernel, int64_t stride, int64_t pad,
                                        int64_t dilation) {
  if (g.adaptive) return {i * in / out, ((i + 1) * in + out - 1) / out};
  return window_taps(i * stride - pad, kernel, dilation, in);
}

// Calls fn(plane, i, j, h0, h1, w0, w1) for every output pixel of every plane: the window's
// rows h0, h0 + dilation_h, ... < h1 and columns w0, w0 + dilation_w, ... < w1 inside the
// input (inference made sure there is one). Planes are split over threads.
template <typename Fn>
void for_each_window(const KernelContext& ctx, const ConvGeometry& g, Fn&& fn) {
  ctx.parallel_for(g.batch * g.in_channels, g.out_pixels() * g.kernel_h * g.kernel_w,
                   [&](int64_t p0, int64_t p1) {
                     for (int64_t p = p0; p < p1; ++p)
                       for (int64_t i = 0; i < g.out_h; ++i) {
                         const auto [h0, h1] = window_span(g, i, g.in_h, g.out_h, g.kernel_h,
                                                           g.stride_h, g.pad_h, g.dilation_h);
                         for (int64_t j = 0; j < g.out_w; ++j) {
                           const auto [w0, w1] = window_span(g, j, g.in_w, g.out_w, g.kernel_w,
                                                             g.stride_w, g.pad_w, g.dilation_w);
                           fn(p, i, j, h0, h1, w0, w1);
                         }
                       }
                   });
}

// The tiled case: windows that tile the input without gaps or padding (kernel == stride,
// in_w == out_w * kernel_w; rows below the last window are never read), as a 2x2 pool of an
// even-sized map. Each window's first maximum (row-major order; a NaN wins) is found as the
// first maximum of each row's piece (columns), then the first row holding the largest piece, so
// both passes run over contiguous memory and vectorize. kIndex keeps the winner's place in its
// window (r * kernel_w + c).
bool tiles(const ConvGeometry& g) {
  return !g.adaptive && g.dilation_h == 1 && g.dilation_w == 1 && g.out_h * g.kernel_h <= g.in_h &&
         g.pad_h == 0 && g.pad_w == 0 && g.stride_h == g.kernel_h && g.stride_w == g.kernel_w &&
         g.in_w == g.out_w * g.kernel_w;
}

template <typename T>
bool replaces(T v, T best) {
  return (v > best || v != v) && best == best;
}

// best [out_h * out_w] (and at) for one plane; row_best/row_at hold kernel_h * out_h * out_w.
// kKernelW: the window's width when known at compile time (2, the common case, lets the
// compiler split even and odd columns with shuffles instead of gathers), else 0.
template <bool kIndex, int kKernelW, typename T>
void max_pool_tiled_plane(const T* plane, const ConvGeometry& g, T* row_best, int32_t* row_at,
                          T* best, int32_t* at) {
  const int64_t pieces = g.out_h * g.kernel_h * g.out_w;  // row pieces of all windows
  const int64_t kw = kKernelW > 0 ? kKernelW : g.kernel_w;
  for (int64_t t = 0; t < pieces; ++t) {
    row_best[t] = plane[t * kw];
    if constexpr (kIndex) row_at[t] = 0;
  }
  for (int64_t c = 1; c < kw; ++c)
    for (int64_t t = 0; t < pieces; ++t) {
      const T v = plane[t * kw + c];
      const bool take = replaces(v, row_best[t]);
      row_best[t] = take ? v : row_best[t];
      if constexpr (kIndex) row_at[t] = take ? static_cast<int32_t>(c) : row_at[t];
    }
  const int64_t ow = g.out_w;
  for (int64_t i = 0; i < g.out_h; ++i) {
    T* b = best + i * ow;
    const T* first = row_best + i * g.kernel_h * ow;
    for (int64_t j = 0; j < ow; ++j) {
      b[j] = first[j];
      if constexpr (kIndex) at[i * ow + j] = row_at[i * g.kernel_h * ow + j];
    }
    for (int64_t r = 1; r < g.kernel_h; ++r) {
      const T* piece = first + r * ow;
      const int32_t* piece_at = nullptr;  // (no arithmetic on the null row_at of kIndex false)
      if constexpr (kIndex) piece_at = row_at + (i * g.kernel_h + r) * ow;
      for (int64_t j = 0; j < ow; ++j) {
        const bool take = replaces(piece[j], b[j]);
        b[j] = take ? piece[j] : b[j];
        if constexpr (kIndex)
          at[i * ow + j] = take ? static_cast<int32_t>(r * kw) + piece_at[j] : at[i * ow + j];
      }
    }
  }
}

// The tiled gradient of one plane: every dx element written once, dy where the window's
// winner `at` (r * kernel_w + c) is, else 0 (windows do not overlap), so the loops run over
// contiguous rows instead of scattering into a zeroed plane.
template <typename T>
void route_tiled_plane(const ConvGeometry& g, const int32_t* at, const T* best, const T* dy, T* dx,
                       bool positive_only) {
  const int64_t kw = g.kernel_w, ow = g.out_w;
  for (int64_t i = 0; i < g.out_h; ++i)
    for (int64_t r = 0; r < g.kernel_h; ++r) {
      T* row = dx + (i * g.kernel_h + r) * g.in_w;
      const int32_t* win = at + i * ow;
      const T* grad = dy + i * ow;
      const T* top = best + i * ow;
      for (int64_t j = 0; j < ow; ++j)
        for (int64_t c = 0; c < kw; ++c)
          row[j * kw + c] =
              win[j] == static_cast<int32_t>(r * kw + c) && (!positive_only || top[j] > T(0))
                  ? grad[j]
                  : T(0);
    }
  // Rows below the last window get no gradient.
  std::fill(dx + g.out_h * g.kernel_h * g.in_w, dx + g.in_pixels(), T(0));
}

// The gradient of a tiled 2x2 pool over one plane in one pass: each window's four values, its
// first maximum (row-major; a NaN wins, as replaces() rules), and dy written to that place and
// 0 to the other three. No scratch arrays; the loop over a row's windows vectorizes.
template <typename T>
void route_tiled_2x2_plane(const ConvGeometry& g, const T* x, const T* dy, T* dx,
                           bool positive_only) {
  const int64_t ow = g.out_w, w = g.in_w;
  for (int64_t i = 0; i < g.out_h; ++i) {
    const T* x0 = x + 2 * i * w;
    const T* x1 = x0 + w;
    const T* grad = dy + i * ow;
    T* d0 = dx + 2 * i * w;
    T* d1 = d0 + w;
    for (int64_t j = 0; j < ow; ++j) {
      const T v00 = x0[2 * j], v01 = x0[2 * j + 1], v10 = x1[2 * j], v11 = x1[2 * j + 1];
      T best = v00;
      int winner = 0;
      if (replaces(v01, best)) best = v01, winner = 1;
      if (replaces(v10, best)) best = v10, winner = 2;
      if (replaces(v11, best)) best = v11, winner = 3;
      const T gj = positive_only && !(best > T(0)) ? T(0) : grad[j];
      d0[2 * j] = winner == 0 ? gj : T(0);
      d0[2 * j + 1] = winner == 1 ? gj : T(0);
      d1[2 * j] = winner == 2 ? gj : T(0);
      d1[2 * j + 1] = winner == 3 ? gj : T(0);
    }
  }
  std::fill(dx + g.out_h * 2 * w, dx + g.in_pixels(), T(0));  // rows no window reads
}

#if defined(__AVX512F__)
// The 2x2 tiled pool in f32 with AVX-512, one window row (a strip of two input rows) at a time,
// 16 windows per step: each row's 32 floats are loaded and split into even and odd columns (the
// windows' left and right values), the four compared in the scalar code's order with its rule
// (replaces(): a NaN wins, ties keep the first), and the backward's four results interleaved
// back. Masked loads and stores cover a row's last windows, so any width tiles.
namespace avx512 {

inline __mmask16 first_lanes(int64_t n) {
  return static_cast<__mmask16>((1u << n) - 1);  // n in [0, 16]
}

// Columns [0, 2n) of `row` (n <= 16 windows): even ones (each window's left value) and odd.
inline void split_columns(const float* row, int64_t n, __m512& even, __m512& odd) {
  const __m512i even_index =
      _mm512_setr_epi32(0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30);
  const __m512i odd_index = _mm512_add_epi32(even_index, _mm512_set1_epi32(1));
  const __m512 lo = _mm512_maskz_loadu_ps(first_lanes(std::min<int64_t>(2 * n, 16)), row);
  const __m512 hi = _mm512_maskz_loadu_ps(first_lanes(std::max<int64_t>(2 * n - 16, 0)), row + 16);
  even = _mm512_permutex2var_ps(lo, even_index, hi);
  odd = _mm512_permutex2var_ps(lo, odd_index, hi);
}

// Stores `even` and `odd` interleaved as columns [0, 2n) of `row`.
inline void store_interleaved(float* row, int64_t n, __m512 even, __m512 odd) {
  const __m512i lo_index =
      _mm512_setr_epi32(0, 16, 1, 17, 2, 18, 3, 19, 4, 20, 5, 21, 6, 22, 7, 23);
  const __m512i hi_index = _mm512_add_epi32(lo_index, _mm512_set1_epi32(8));
  _mm512_mask_storeu_ps(row, first_lanes(std::min<int64_t>(2 * n, 16)),
                        _mm512_permutex2var_ps(even, lo_index, odd));
  _mm512_mask_storeu_ps(row + 16, first_lanes(std::max<int64_t>(2 * n - 16, 0)),
                        _mm512_permutex2var_ps(even, hi_index, odd));
}

// Windows [j0, j0 + n) of window row i: their maximum, and in `at` the winner's place 0..3.
inline __m512 window_max(const float* x0, const float* x1, int64_t n, __m512i* at) {
  __m512 v[4];
  split_columns(x0, n, v[0], v[1]);
  split_columns(x1, n, v[2], v[3]);
  __m512 best = v[0];
  __m512i place = _mm512_setzero_si512();
  for (int k = 1; k < 4; ++k) {
    // replaces(v, best): (v > best || v is NaN) && best is not NaN.
    const __mmask16 take = (_mm512_cmp_ps_mask(v[k], best, _CMP_GT_OQ) |
                            _mm512_cmp_ps_mask(v[k], v[k], _CMP_UNORD_Q)) &
                           _mm512_cmp_ps_mask(best, best, _CMP_ORD_Q);
    best = _mm512_mask_mov_ps(best, take, v[k]);
    place = _mm512_mask_mov_epi32(place, take, _mm512_set1_epi32(k));
  }
  *at = place;
  return best;
}

// y for one plane.
inline void pool_2x2_plane(const ConvGeometry& g, const float* x, float* y) {
  const int64_t ow = g.out_w, w = g.in_w;
  for (int64_t i = 0; i < g.out_h; ++i)
    for (int64_t j0 = 0; j0 < ow; j0 += 16) {
      const int64_t n = std::min<int64_t>(16, ow - j0);
      const float* x0 = x + 2 * i * w + 2 * j0;
      __m512i at;
      _mm512_mask_storeu_ps(y + i * ow + j0, first_lanes(n), window_max(x0, x0 + w, n, &at));
    }
}

// dx for one plane: dy at each window's winner, 0 elsewhere (and, positive_only, 0 for windows
// whose maximum is not > 0).
inline void route_2x2_plane(const ConvGeometry& g, const float* x, const float* dy, float* dx,
                            bool positive_only) {
  const int64_t ow = g.out_w, w = g.in_w;
  for (int64_t i = 0; i < g.out_h; ++i)
    for (int64_t j0 = 0; j0 < ow; j0 += 16) {
      const int64_t n = std::min<int64_t>(16, ow - j0);
      const float* x0 = x + 2 * i * w + 2 * j0;
      __m512i at;
      const __m512 best = window_max(x0, x0 + w, n, &at);
      __m512 grad = _mm512_maskz_loadu_ps(first_lanes(n), dy + i * ow + j0);
      if (positive_only)
        grad = _mm512_maskz_mov_ps(_mm512_cmp_ps_mask(best, _mm512_setzero_ps(), _CMP_GT_OQ), grad);
      auto at_place = [&](int k) {
        return _mm512_maskz_mov_ps(_mm512_cmpeq_epi32_mask(at, _mm512_set1_epi32(k)), grad);
      };
      float* d0 = dx + 2 * i * w + 2 * j0;
      store_interleaved(d0, n, at_place(0), at_place(1));
      store_interleaved(d0 + w, n, at_place(2), at_place(3));
    }
  std::fill(dx + g.out_h * 2 * w, dx + g.in_pixels(), 0.0f);  // rows no window reads
}

}  // namespace avx512
#endif

// kMode as max_pool_typed, for geometries that tile.
template <int kMode, typename T>
void max_pool_tiled(KernelContext& ctx, const ConvGeometry& g, const T* px, const T* other, T* out,
                    bool positive_only) {
  ctx.parallel_for(g.batch * g.in_channels, g.in_pixels() * 2, [&](int64_t p0, int64_t p1) {
    const int64_t pieces = g.out_h * g.kernel_h * g.out_w;
    std::vector<T> row_best(static_cast<size_t>(pieces));
    std::vector<int32_t> row_at(kMode == 0 ? 0 : static_cast<size_t>(pieces));
    std::vector<T> best(kMode == 0 ? 0 : static_cast<size_t>(g.out_pixels()));
    std::vector<int32_t> at(kMode == 0 ? 0 : static_cast<size_t>(g.out_pixels()));
    for (int64_t p = p0; p < p1; ++p) {
      const T* plane = px + p * g.in_pixels();
#if defined(__AVX512F__)
      if constexpr (std::is_same_v<T, float> && kMode != 1) {
        if (g.kernel_w == 2 && g.kernel_h == 2) {
          if constexpr (kMode == 0)
            avx512::pool_2x2_plane(g, plane, out + p * g.out_pixels());
          else
            avx512::route_2x2_plane(g, plane, other + p * g.out_pixels(), out + p * g.in_pixels(),
                                    positive_only);
          continue;
        }
      }
#endif
      if constexpr (kMode == 0) {
        T* y = out + p * g.out_pixels();
        if (g.kernel_w == 2)
          max_pool_tiled_plane<false, 2>(plane, g, row_best.data(), nullptr, y, nullptr);
        else
          max_pool_tiled_plane<false, 0>(plane, g, row_best.data(), nullptr, y, nullptr);
        continue;
      }
      if (kMode == 2 && g.kernel_w == 2 && g.kernel_h == 2) {
        route_tiled_2x2_plane(g, plane, other + p * g.out_pixels(), out + p * g.in_pixels(),
                              positive_only);
        continue;
      }
      if (g.kernel_w == 2)
        max_pool_tiled_plane<true, 2>(plane, g, row_best.data(), row_at.data(), best.data(),
                                      at.data());
      else
        max_pool_tiled_plane<true, 0>(plane, g, row_best.data(), row_at.data(), best.data(),
                                      at.data());
      if constexpr (kMode == 2) {
        route_tiled_plane(g, at.data(), best.data(), other + p * g.out_pixels(),
                          out + p * g.in_pixels(), positive_only);
        continue;
      }
      for (int64_t i = 0; i < g.out_h; ++i)
        for (int64_t j = 0; j < g.out_w; ++j) {
          const int64_t o = i * g.out_w + j;
          const int64_t r = at[o] / g.kernel_w, c = at[o] % g.kernel_w;
          const int64_t offset = (i * g.kernel_h + r) * g.in_w + j * g.kernel_w + c;
          out[p * g.out_pixels() + o] =
              positive_only && !(best[o] > T(0)) ? T(0) : other[p * g.in_pixels() + offset];
        }
    }
  });
}

// The offset of the first maximum (a NaN at once) of rows h0, h0 + dh, .. < h1 and columns
// w0, w0 + dw, .. < w1 of a plane `width` wide.
template <typename T>
int64_t argmax_in(const T* plane, int64_t width, int64_t h0, int64_t h1, int64_t w0, int64_t w1,
                  int64_t dh, int64_t dw) {
  int64_t best = h0 * width + w0;
  T best_value = plane[best];
  for (int64_t h = h0; h < h1; h += dh)
    for (int64_t w = w0; w < w1; w += dw) {
      const T v = plane[h * width + w];
      if (std::isnan(v)) return h * width + w;
      if (v > best_value) {
        best = h * width + w;
        best_value = v;
      }
    }
  return best;
}

// kMode 0: y = max (input x); 1: y = v at the argmax (inputs x, v); 2: dx += dy at the argmax;
// 3: the argmax (i64).
template <int kMode, typename T>
void max_pool_typed(KernelContext& ctx) {
  const Tensor& x = ctx.input(0);
  const Shape& pooled = kMode == 2 ? ctx.input(1).shape() : ctx.output(0).shape();
  const ConvGeometry g = pool_geometry(ctx.node(), x.shape(), pooled);
  const T* px = x.data<T>();
  const T* other = kMode == 0 || kMode == 3 ? nullptr : ctx.input(1).data<T>();
  T* out = kMode == 3 ? nullptr : ctx.output(0).data<T>();
  int64_t* argmax = kMode == 3 ? ctx.output(0).data<int64_t>() : nullptr;
  const bool positive_only = kMode != 0 && ctx.node().attrs().count("positive_only") != 0 &&
                             ctx.attr<bool>("positive_only");
  if constexpr (kMode != 3) {  // the indices take the general path (the same first maximum)
    if (tiles(g)) return max_pool_tiled<kMode>(ctx, g, px, other, out, positive_only);
  }
  if constexpr (kMode == 2) std::fill(out, out + ctx.output(0).numel(), T(0));
  for_each_window(
      ctx, g, [&](int64_t p, int64_t i, int64_t j, int64_t h0, int64_t h1, int64_t w0, int64_t w1) {
        const int64_t at =
            argmax_in(px + p * g.in_pixels(), g.in_w, h0, h1, w0, w1, g.dilation_h, g.dilation_w);
        const int64_t o = p * g.out_pixels() + i * g.out_w + j;
        const bool routes = !positive_only || px[p * g.in_pixels() + at] > T(0);
        if constexpr (kMode == 0) out[o] = px[p * g.in_pixels() + at];
        if constexpr (kMode == 1) out[o] = routes ? other[p * g.in_pixels() + at] : T(0);
        if constexpr (kMode == 2)
          if (routes) out[p * g.in_pixels() + at] += other[o];
        if constexpr (kMode == 3) argmax[o] = at;
      });
}

// y: zeros of output_size per plane, each x written at its index in the plane in order (the
// last of several at one place stays). The indices are data: all are checked before anything is
// written.
template <typename T>
void max_unpool_typed(KernelContext& ctx) {
  const Tensor& x = ctx.input(0);
  const int64_t* indices = ctx.input(1).data<int64_t>();
  Tensor& y = ctx.output(0);
  const int64_t planes = x.shape()[0] * x.shape()[1], count = x.shape()[2] * x.shape()[3];
  const int64_t height = y.shape()[2], width = y.shape()[3], plane = height * width;
  for (int64_t k = 0; k < planes * count; ++k)
    if (indices[k] < 0 || indices[k] >= plane)
      throw Error(str(ctx.where(), ": index ", indices[k], " (at position ", k,
                      ") is out of range for an output plane of ", height, " x ", width));
  const T* px = x.data<T>();
  T* out = y.data<T>();
  ctx.parallel_for(planes, count, [&](int64_t p0, int64_t p1) {
    std::fill(out + p0 * plane, out + p1 * plane, T(0));
    for (int64_t p = p0; p < p1; ++p)
      for (int64_t k = p * count; k < (p + 1) * count; ++k) out[p * plane + indices[k]] = px[k];
  });
}

void max_unpool_cpu(KernelContext& ctx) {
  dispatch_float(ctx.input(0).dtype(), [&](auto tag) { max_unpool_typed<decltype(tag)>(ctx); });
}

int64_t window_count(const ConvGeometry& g, bool include_pad, int64_t i, int64_t j, int64_t h0,
                     int64_t h1, int64_t w0, int64_t w1) {
  if (!include_pad) return (h1 - h0) * (w1 - w0);
  // The window clipped to the padded input, as PyTorch counts it.
  const int64_t h = i * g.stride_h - g.pad_h, w = j * g.stride_w - g.pad_w;
  const int64_t hs = std::min(h + g.kernel_h, g.in_h + g.pad_h) - h;
  const int64_t ws = std::min(w + g.kernel_w, g.in_w + g.pad_w) - w;
  return hs * ws;
}

// kBackward false: y = window average of x; true: dx from dy.
template <bool kBackward, typename T>
void avg_pool_typed(KernelContext& ctx) {
  const Tensor& in = ctx.input(0);
  Tensor& out = ctx.output(0);
  const ConvGeometry g = kBackward ? pool_geometry(ctx.node(), out.shape(), in.shape())
                                   : pool_geometry(ctx.node(), in.shape(), out.shape());
  const bool include_pad = ctx.attr<bool>("count_include_pad");
  const T* pin = in.data<T>();
  T* pout = out.data<T>();
  if constexpr (kBackward) std::fill(pout, pout + out.numel(), T(0));
  for_each_window(
      ctx, g, [&](int64_t p, int64_t i, int64_t j, int64_t h0, int64_t h1, int64_t w0, int64_t w1) {
        const T scale = T(1) / static_cast<T>(window_count(g, include_pad, i, j, h0, h1, w0, w1));
        const int64_t o = p * g.out_pixels() + i * g.out_w + j;
        if constexpr (kBackward) {
          T* plane = pout + p * g.in_pixels();
          const T d = pin[o] * scale;
          for (int64_t h = h0; h < h1; ++h)
            for (int64_t w = w0; w < w1; ++w) plane[h * g.in_w + w] += d;
        } else {
          const T* plane = pin + p * g.in_pixels();
          T sum = 0;
          for (int64_t h = h0; h < h1; ++h)
            for (int64_t w = w0; w < w1; ++w) sum += plane[h * g.in_w + w];
          pout[o] = sum * scale;
        }
      });
}

template <int kMode>
void max_pool_cpu(KernelContext& ctx) {
  dispatch_float(ctx.input(0).dtype(),
                 [&](auto tag) { max_pool_typed<kMode, decltype(tag)>(ctx); });
}
template <bool kBackward>
void avg_pool_cpu(KernelContext& ctx) {
  dispatch_float(ctx.input(0).dtype(),
                 [&](auto tag) { avg_pool_typed<kBackward, decltype(tag)>(ctx); });
}

AttrMap window_attrs(const Node& node) {
  AttrMap attrs = {{"kernel_size", node.attr<std::vector<int64_t>>("kernel_size")},
                   {"stride", node.attr<std::vector<int64_t>>("stride")},
                   {"padding", node.attr<std::vector<int64_t>>("padding")},
                   {"ceil_mode", node.attr<bool>("ceil_mode")}};
  if (node.attrs().count("dilation") != 0)  // the max ops
    attrs["dilation"] = node.attr<std::vector<int64_t>>("dilation");
  return attrs;
}
// The backward op or the selection (`role`: "backward", "select") for max pool node `like`,
// adaptive or not as it is, with like's positive_only (false for max_pool2d itself).
Value max_pool_op(const char* role, const Value& x, const Value& other, const Node& like) {
  if (like.attrs().count("output_size") != 0)
    return x.graph()->add(str("adaptive_max_pool2d_", role), {x, other},
                          {{"output_size", like.attr<std::vector<int64_t>>("output_size")}});
  AttrMap attrs = window_attrs(like);
  attrs["positive_only"] = like.op_name() != "max_pool2d" && like.attr<bool>("positive_only");
  return x.graph()->add(str("max_pool2d_", role), {x, other}, attrs);
}
Value avg_pool_op(const Value& x, const Node& like) {
  AttrMap attrs = window_attrs(like);
  attrs["count_include_pad"] = like.attr<bool>("count_include_pad");
  return x.graph()->add("avg_pool2d", {x}, attrs);
}
Value avg_backward_op(const Value& dy, const Node& like, const Shape& x) {
  AttrMap attrs = window_attrs(like);
  attrs["count_include_pad"] = like.attr<bool>("count_include_pad");
  attrs["input_size"] = std::vector<int64_t>{x[2], x[3]};
  return dy.graph()->add("avg_pool2d_backward", {dy}, attrs);
}

#define KILN_WINDOW_ATTRS                          \
  attr("kernel_size", AttrType::integers)          \
      .attr("stride", AttrType::integers)          \
      .attr("padding", std::vector<int64_t>{0, 0}) \
      .attr("ceil_mode", false)

KILN_OP(max_pool2d)
    .input("x")
    .KILN_WINDOW_ATTRS.attr("dilation", std::vector<int64_t>{1, 1})
    .infer(infer_pool)
    .kernel(DeviceKind::cpu, max_pool_cpu<0>, {f32, f64})
    .grad([](GradContext& c) -> GradList {
      return {max_pool_op("backward", c.input(0), c.grad_output(), c.node())};
    });

KILN_OP(max_pool2d_indices)
    .input("x")
    .KILN_WINDOW_ATTRS.attr("dilation", std::vector<int64_t>{1, 1})
    .no_gradient()
    .infer(infer_pool_indices)
    .kernel(DeviceKind::cpu, max_pool_cpu<3>, {f32, f64});

KILN_OP(max_unpool2d)
    .input("x")
    .input("indices")
    .attr("output_size", AttrType::integers)
    .infer(infer_unpool)
    .kernel(DeviceKind::cpu, max_unpool_cpu, {f32, f64})
    .grad([](GradContext& c) -> GradList {
      // dx[n, c, i, j] = dy[n, c, indices[n, c, i, j]]: picked along the flattened plane.
      const Shape& x = c.input(0).shape();
      const Shape& y = c.output().shape();
      const Value picked = take_along_axis(reshape(c.grad_output(), {-1, y[1], y[2] * y[3]}),
                                           reshape(c.input(1), {-1, x[1], x[2] * x[3]}), 2);
      return {reshape(picked, {-1, x[1], x[2], x[3]}), Value()};
    });

KILN_OP(max_pool2d_select)
    .input("x")
    .input("v")
    .KILN_WINDOW_ATTRS.attr("dilation", std::vector<int64_t>{1, 1})
    .attr("positive_only", false)
    .infer(infer_pool_pair<false>)
    .kernel(DeviceKind::cpu, max_pool_cpu<1>, {f32, f64})
    .grad([](GradContext& c) -> GradList {
      // Piecewise constant in x (the selection).
      return {Value(), max_pool_op("backward", c.input(0), c.grad_output(), c.node())};
    });

KILN_OP(max_pool2d_backward)
    .input("x")
    .input("dy")
    .KILN_WINDOW_ATTRS.attr("dilation", std::vector<int64_t>{1, 1})
    .attr("positive_only", false)
    .infer(infer_pool_pair<true>)
    .kernel(DeviceKind::cpu, max_pool_cpu<2>, {f32, f64})
    .grad([](GradContext& c) -> GradList {
      return {Value(), max_pool_op("select", c.input(0), c.grad_output(), c.node())};
    });

KILN_OP(avg_pool2d)
    .input("x")
    .KILN_WINDOW_ATTRS.attr("count_include_pad", true)
    .infer(infer_pool)
    .kernel(DeviceKind::cpu, avg_pool_cpu<false>, {f32, f64})
    .grad([](GradContext& c) -> GradList {
      return {avg_backward_op(c.grad_output(), c.node(), c.input(0).shape())};
    });

KILN_OP(avg_pool2d_backward)
    .input("dy")
    .KILN_WINDOW_ATTRS.attr("count_include_pad", true)
    .attr("input_size", AttrType::integers)
    .infer(infer_avg_backward)
    .kernel(DeviceKind::cpu, avg_pool_cpu<true>, {f32, f64})
    .grad([](GradContext& c) -> GradList { return {avg_pool_op(c.grad_output(), c.node())}; });

#undef KILN_WINDOW_ATTRS

KILN_OP(adaptive_max_pool2d)
    .input("x")
    .attr("output_size", AttrType::integers)
    .infer(infer_pool)
    .kernel(DeviceKind::cpu, max_pool_cpu<0>, {f32, f64})
    .grad([](GradContext& c) -> GradList {
      return {max_pool_op("backward", c.input(0), c.grad_output(), c.node())};
    });

KILN_OP(adaptive_max_pool2d_select)
    .input("x")
    .input("v")
    .attr("output_size", AttrType::integers)
    .infer(infer_pool_pair<false>)
    .kernel(DeviceKind::cpu, max_pool_cpu<1>, {f32, f64})
    .grad([](GradContext& c) -> GradList {
      return {Value(), max_pool_op("backward", c.input(0), c.grad_output(), c.node())};
    });

KILN_OP(adaptive_max_pool2d_backward)
    .input("x")
    .input("dy")
    .attr("output_size", AttrType::integers)
    .infer(infer_pool_pair<true>)
    .kernel(DeviceKind::cpu, max_pool_cpu<2>, {f32, f64})
    .grad([](GradContext& c) -> GradList {
      return {Value(), max_pool_op("select", c.input(0), c.grad_output(), c.node())};
    });

AttrMap pool_attrs(const Pool2dOptions& o) {
  const std::array<int64_t, 2> stride = o.stride[0] > 0 ? o.stride : o.kernel_size;
  return {{"kernel_size", std::vector<int64_t>{o.kernel_size[0], o.kernel_size[1]}},
          {"stride", std::vector<int64_t>{stride[0], stride[1]}},
          {"padding", std::vector<int64_t>{o.padding[0], o.padding[1]}},
          {"ceil_mode", o.ceil_mode}};
}
// The max ops' window: pool_attrs and the dilation.
AttrMap max_pool_attrs(const Pool2dOptions& o) {
  AttrMap attrs = pool_attrs(o);
  attrs["dilation"] = std::vector<int64_t>{o.dilation[0], o.dilation[1]};
  return attrs;
}

}  // namespace
}  // namespace ops

Value max_pool2d(const Value& x, const Pool2dOptions& options) {
  return common_graph("max_pool2d", {&x}).add("max_pool2d", {x}, ops::max_pool_attrs(options));
}

std::pair<Value, Value> max_pool2d_with_indices(const Value& x, const Pool2dOptions& options) {
  const Value indices = common_graph("max_pool2d_indices", {&x})
                            .add("max_pool2d_indices", {x}, ops::max_pool_attrs(options));
  return {max_pool2d(x, options), indices};
}

Value max_unpool2d(const Value& x, const Value& indices, const Pool2dOptions& options,
                   std::array<int64_t, 2> output_size) {
  Graph& g = common_graph("max_unpool2d", {&x, &indices});
  const Shape& xs = x.shape();
  const bool by_default = output_size[0] == 0 && output_size[1] == 0;
  KILN_CHECK(!by_default || (xs.rank() == 4 && xs[2] >= 0 && xs[3] >= 0), GraphError,
             "[max_unpool2d] x ", xs, " must be [N, C, H, W] with known H, W");
  if (xs.rank() == 4 && xs[2] >= 0 && xs[3] >= 0)
    for (int d = 0; d < 2; ++d) {
      // PyTorch's default: the size a pooling of this window maps onto x's size. An explicit
      // size must lie strictly within one stride of it (the sizes a pooling maps onto x's).
      const int64_t stride = options.stride[d] > 0 ? options.stride[d] : options.kernel_size[d];
      const int64_t size =
          (xs[2 + d] - 1) * stride - 2 * options.padding[d] + options.kernel_size[d];
      if (by_default) {
        output_size[d] = size;
        continue;
      }
      const bool positive = output_size[0] >= 1 && output_size[1] >= 1;  // else the op refuses
      KILN_CHECK(!positive || (output_size[d] > size - stride && output_size[d] < size + stride),
                 GraphError, "[max_unpool2d] output_size (", output_size[0], ", ", output_size[1],
                 ") is not a size this pooling maps onto x ", xs, ": ", d == 0 ? "height" : "width",
                 " must lie in (", size - stride, ", ", size + stride, ")");
    }
  return g.add("max_unpool2d", {x, indices},
               {{"output_size", std::vector<int64_t>{output_size[0], output_size[1]}}});
}

Value avg_pool2d(const Value& x, const Pool2dOptions& options, bool count_include_pad) {
  KILN_CHECK(options.dilation[0] == 1 && options.dilation[1] == 1, GraphError,
             "[avg_pool2d] takes no dilation (PyTorch's neither), got (", options.dilation[0], ", ",
             options.dilation[1], ")");
  AttrMap attrs = ops::pool_attrs(options);
  attrs["count_include_pad"] = count_include_pad;
  return common_graph("avg_pool2d", {&x}).add("avg_pool2d", {x}, attrs);
}

Value adaptive_max_pool2d(const Value& x, std::array<int64_t, 2> output_size) {
  return common_graph("adaptive_max_pool2d", {&x})
      .add("adaptive_max_pool2d", {x},
           {{"output_size", std::vector<int64_t>{output_size[0], output_size[1]}}});
}

Value global_avg_pool2d(const Value& x) {
  if (x.shape().rank() != 4)
    throw GraphError(str("global_avg_pool2d: x must be 4-D (NCHW), got ", x.shape()));
  return mean(x, {2, 3});
}

}  // namespace kiln
