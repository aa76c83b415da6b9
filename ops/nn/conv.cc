// conv2d and its two gradient ops (see conv.h for the geometry):
//   conv2d(x, w)                    y = x ⋆ w
//   conv2d_backward_input(dy, w)    dx: the adjoint of conv2d in x (also conv_transpose2d)
//   conv2d_backward_filter(x, dy)   dw: the adjoint of conv2d in w
// All three are bilinear, so each one's gradient is made of the other two:
//   <bi(dy, w), v> = <dy, conv(v, w)>   and   <bf(x, dy), V> = <conv(x, V), dy>.
// CPU kernels share the matmul path: the input is unfolded (im2col, one row per input channel
// and kernel offset, one column per output pixel), so each image and group is one gemm:
//   y[n, g] = W[g] [og, patch] @ col [patch, OH OW]
//   dcol    = W[g]^T @ dy[n, g],  folded back into dx (col2im, summing overlaps)
//   dW[g]  += dy[n, g] @ col^T   (summed over images in a fixed order: thread-count independent)
#include <algorithm>
#include <cstring>

#include "kiln/framework/gradient.h"
#include "kiln/framework/kernel.h"
#include "kiln/ops/dtypes.h"
#include "kiln/ops/math.h"
#include "kiln/ops/math/blas.h"
#include "kiln/ops/nn.h"
#include "kiln/ops/nn/conv.h"
#include "kiln/ops/nn/conv_onednn.h"

namespace kiln {
namespace ops {

ConvGeometry conv_geometry(const Node& node, const Shape& x, const Shape& y, const Shape& filter) {
  ConvGeometry g;
  g.batch = x[0];
  g.in_channels = x[1];
  g.in_h = x[2];
  g.in_w = x[3];
  g.out_channels = y[1];
  g.out_h = y[2];
  g.out_w = y[3];
  g.kernel_h = filter[2];
  g.kernel_w = filter[3];
  const auto& stride = node.attr<std::vector<int64_t>>("stride");
  const auto& padding = node.attr<std::vector<int64_t>>("padding");
  const auto& dilation = node.attr<std::vector<int64_t>>("dilation");
  g.stride_h = stride[0];
  g.stride_w = stride[1];
  g.pad_h = padding[0];
  g.pad_w = padding[1];
  g.dilation_h = dilation[0];
  g.dilation_w = dilation[1];
  g.groups = node.attr<int64_t>("groups");
  return g;
}

namespace {

// ---- Schema: every conv op carries the same four attributes.

// Window attributes are bounded so that no size arithmetic can overflow (they come from files).
constexpr int64_t kMaxWindow = int64_t{1} << 24;

void check_pair(const InferContext& ctx, const char* name, int64_t min) {
  const auto& v = ctx.attr<std::vector<int64_t>>(name);
  if (v.size() != 2) ctx.fail(name, " needs 2 values (height, width), got ", v.size());
  if (v[0] < min || v[1] < min || v[0] > kMaxWindow || v[1] > kMaxWindow)
    ctx.fail(name, " (", v[0], ", ", v[1], ") must be in [", min, ", ", kMaxWindow, "]");
}

// Checks the attributes and the 4-D float operands; returns the filter's group count.
int64_t check_conv(const InferContext& ctx, int x_index, int filter_index) {
  ctx.expect_dtype(0, {f32, f64, f16, bf16});
  ctx.expect_same_dtype(0, 1);
  check_pair(ctx, "stride", 1);
  check_pair(ctx, "padding", 0);
  check_pair(ctx, "dilation", 1);
  const int64_t groups = ctx.attr<int64_t>("groups");
  if (groups < 1) ctx.fail("groups ", groups, " must be >= 1");
  for (int i : {0, 1})
    if (ctx.shape(i).rank() != 4) ctx.fail("input ", i, " must be 4-D (NCHW), got ", ctx.shape(i));
  for (int i : {x_index, filter_index})
    if (i >= 0)
      for (int64_t d = 1; d < 4; ++d)
        if (ctx.shape(i)[d] < 0) ctx.fail("input ", i, " ", ctx.shape(i), " needs known C, H, W");
  return groups;
}

int64_t out_size(const InferContext& ctx, int64_t in, int64_t kernel, int dim) {
  const int64_t size = conv_output_size(in, kernel, ctx.attr<std::vector<int64_t>>("stride")[dim],
                                        ctx.attr<std::vector<int64_t>>("padding")[dim],
                                        ctx.attr<std::vector<int64_t>>("dilation")[dim]);
  if (size < 1)
    ctx.fail("the ", dim == 0 ? "height" : "width", " ", in, " with padding is smaller than the ",
             kernel, "-wide dilated kernel");
  return size;
}

std::vector<TensorType> infer_conv2d(const InferContext& ctx) {
  const int64_t groups = check_conv(ctx, 0, 1);
  const Shape& x = ctx.shape(0);
  const Shape& w = ctx.shape(1);
  if (x[1] % groups != 0 || w[0] % groups != 0)
    ctx.fail("channels in (", x[1], ") and out (", w[0], ") must divide by groups ", groups);
  if (w[1] * groups != x[1])
    ctx.fail("the filter ", w, " takes ", w[1], " channels per group; x ", x, " has ",
             x[1] / groups, " (groups ", groups, ")");
  if (ctx.num_inputs() > 3) ctx.fail("takes at most one bias, got ", ctx.num_inputs() - 2);
  if (ctx.num_inputs() == 3) {
    ctx.expect_same_dtype(0, 2);
    if (!ctx.shape(2).compatible_with(Shape{w[0]}))
      ctx.fail("bias must be [", w[0], "] (one per output channel), got ", ctx.shape(2));
  }
  return {{ctx.dtype(0),
           Shape{x[0], w[0], out_size(ctx, x[2], w[2], 0), out_size(ctx, x[3], w[3], 1)}}};
}

// dy [N, O, OH, OW], w [O, C / g, KH, KW], attribute input_size (H, W): dx [N, C, H, W].
std::vector<TensorType> infer_backward_input(const InferContext& ctx) {
  const int64_t groups = check_conv(ctx, -1, 1);
  const Shape& dy = ctx.shape(0);
  const Shape& w = ctx.shape(1);
  const auto& size = ctx.attr<std::vector<int64_t>>("input_size");
  if (size.size() != 2 || size[0] < 1 || size[1] < 1 || size[0] > kMaxWindow ||
      size[1] > kMaxWindow)
    ctx.fail("input_size must be 2 values (height, width) in [1, ", kMaxWindow, "]");
  if (w[0] % groups != 0) ctx.fail("filter ", w, " channels do not divide by groups ", groups);
  if (dy[1] >= 0 && dy[1] != w[0])
    ctx.fail("dy ", dy, " has ", dy[1], " channels, the filter ", w, " makes ", w[0]);
  for (int dim : {0, 1}) {
    const int64_t want = out_size(ctx, size[dim], w[2 + dim], dim);
    if (dy[2 + dim] >= 0 && dy[2 + dim] != want)
      ctx.fail("dy ", dy, " does not match an input of ", size[0], "x", size[1], " (which gives ",
               want, " along dim ", 2 + dim, ")");
  }
  return {{ctx.dtype(0), Shape{dy[0], w[1] * groups, size[0], size[1]}}};
}

// x [N, C, H, W], dy [N, O, OH, OW], attribute kernel_size (KH, KW): dw [O, C / g, KH, KW].
std::vector<TensorType> infer_backward_filter(const InferContext& ctx) {
  const int64_t groups = check_conv(ctx, 0, -1);
  const Shape& x = ctx.shape(0);
  const Shape& dy = ctx.shape(1);
  const auto& kernel = ctx.attr<std::vector<int64_t>>("kernel_size");
  if (kernel.size() != 2 || kernel[0] < 1 || kernel[1] < 1 || kernel[0] > kMaxWindow ||
      kernel[1] > kMaxWindow)
    ctx.fail("kernel_size must be 2 values (height, width) in [1, ", kMaxWindow, "]");
  if (dy[1] < 0) ctx.fail("dy ", dy, " needs known channels");
  if (x[1] % groups != 0 || dy[1] % groups != 0)
    ctx.fail("channels in (", x[1], ") and out (", dy[1], ") must divide by groups ", groups);
  for (int dim : {0, 1}) {
    const int64_t want = out_size(ctx, x[2 + dim], kernel[dim], dim);
    if (dy[2 + dim] >= 0 && dy[2 + dim] != want)
      ctx.fail("dy ", dy, " does not match x ", x, " (which gives ", want, " along dim ", 2 + dim,
               ")");
  }
  return {{ctx.dtype(0), Shape{dy[1], x[1] / groups, kernel[0], kernel[1]}}};
}

// ---- CPU kernels.

// col[(c KH + a) KW + b, i OW + j] = x[c, i s - p + a d, j s - p + b d] (0 outside), for the
// `channels` planes at x. kAdd: the reverse (col2im), x[...] += col[...].
template <bool kAdd, typename T>
void unfold(const ConvGeometry& g, int64_t channels, std::conditional_t<kAdd, T*, const T*> x,
            std::conditional_t<kAdd, const T*, T*> col) {
  const int64_t ow_count = g.out_w;
  for (int64_t c = 0; c < channels; ++c)
    for (int64_t a = 0; a < g.kernel_h; ++a)
      for (int64_t b = 0; b < g.kernel_w; ++b) {
        auto row = col + ((c * g.kernel_h + a) * g.kernel_w + b) * g.out_pixels();
        const int64_t w_offset = b * g.dilation_w - g.pad_w;
        // Output columns j whose input column j s + w_offset lies in [0, W).
        int64_t j_lo = 0, j_hi = ow_count;
        while (j_lo < ow_count && j_lo * g.stride_w + w_offset < 0) ++j_lo;
        while (j_hi > j_lo && (j_hi - 1) * g.stride_w + w_offset >= g.in_w) --j_hi;
        for (int64_t i = 0; i < g.out_h; ++i) {
          auto out = row + i * ow_count;
          const int64_t h = i * g.stride_h - g.pad_h + a * g.dilation_h;
          if (h < 0 || h >= g.in_h) {
            if constexpr (!kAdd) std::fill(out, out + ow_count, T(0));
            continue;
          }
          auto in = x + (c * g.in_h + h) * g.in_w + w_offset;
          if constexpr (kAdd) {
            for (int64_t j = j_lo; j < j_hi; ++j) in[j * g.stride_w] += out[j];
          } else {
            std::fill(out, out + j_lo, T(0));
            for (int64_t j = j_lo; j < j_hi; ++j) out[j] = in[j * g.stride_w];
            std::fill(out + j_hi, out + ow_count, T(0));
          }
        }
      }
}

int as_int(int64_t v) {
  return static_cast<int>(v);
}

// The gemm sizes of a problem fit BLAS's 32-bit ints.
void check_blas_sizes(const KernelContext& ctx, const ConvGeometry& g) {
  constexpr int64_t kMax = (int64_t{1} << 31) - 1;
  KILN_CHECK(g.patch_size() <= kMax && g.out_pixels() <= kMax && g.group_out() <= kMax &&
                 g.patch_size() * g.out_pixels() <= (int64_t{1} << 40),
             Error, ctx.where(), ": a ", g.group_in(), "x", g.kernel_h, "x", g.kernel_w,
             " patch over ", g.out_h, "x", g.out_w, " outputs exceeds the CPU kernel's limits");
}

template <typename T>
void conv2d_typed(KernelContext& ctx) {
  single_threaded_blas();
  const Tensor& x = ctx.input(0);
  const Tensor& w = ctx.input(1);
  Tensor& y = ctx.output(0);
  const ConvGeometry g = conv_geometry(ctx.node(), x.shape(), y.shape(), w.shape());
  const T* px = x.data<T>();
  const T* pw = w.data<T>();
  T* py = y.data<T>();
  const T* bias = ctx.num_inputs() == 3 ? ctx.input(2).data<T>() : nullptr;
  if constexpr (std::is_same_v<T, float>)
    if (onednn_convolution(ctx, ConvPass::forward, g, px, pw, py, bias)) return;
  check_blas_sizes(ctx, g);
  const int64_t patch = g.patch_size(), pixels = g.out_pixels(), og = g.group_out();
  ctx.parallel_for(g.batch * g.groups, og * patch * pixels, [&](int64_t t0, int64_t t1) {
    std::vector<T> col(g.pointwise() ? 0 : patch * pixels);
    for (int64_t t = t0; t < t1; ++t) {
      const int64_t n = t / g.groups, group = t % g.groups;
      const T* xg = px + (n * g.in_channels + group * g.group_in()) * g.in_pixels();
      const T* unfolded = xg;
      if (!g.pointwise()) {
        unfold<false, T>(g, g.group_in(), xg, col.data());
        unfolded = col.data();
      }
      T* out = py + (n * g.out_channels + group * og) * pixels;
      gemm(false, false, as_int(og), as_int(pixels), as_int(patch), pw + group * og * patch,
           as_int(patch), unfolded, as_int(pixels), out, as_int(pixels));
      if (bias) add_channel_bias(out, 1, og, pixels, bias + group * og);
    }
  });
}

template <typename T>
void backward_input_typed(KernelContext& ctx) {
  single_threaded_blas();
  const Tensor& dy = ctx.input(0);
  const Tensor& w = ctx.input(1);
  Tensor& dx = ctx.output(0);
  const ConvGeometry g = conv_geometry(ctx.node(), dx.shape(), dy.shape(), w.shape());
  const T* pdy = dy.data<T>();
  const T* pw = w.data<T>();
  T* pdx = dx.data<T>();
  if constexpr (std::is_same_v<T, float>)
    if (onednn_convolution(ctx, ConvPass::backward_input, g, pdy, pw, pdx)) return;
  check_blas_sizes(ctx, g);
  const int64_t patch = g.patch_size(), pixels = g.out_pixels(), og = g.group_out();
  ctx.parallel_for(g.batch * g.groups, og * patch * pixels, [&](int64_t t0, int64_t t1) {
    std::vector<T> col(g.pointwise() ? 0 : patch * pixels);
    for (int64_t t = t0; t < t1; ++t) {
      const int64_t n = t / g.groups, group = t % g.groups;
      T* dxg = pdx + (n * g.in_channels + group * g.group_in()) * g.in_pixels();
      T* dcol = g.pointwise() ? dxg : col.data();
      gemm(true, false, as_int(patch), as_int(pixels), as_int(og), pw + group * og * patch,
           as_int(patch), pdy + (n * g.out_channels + group * og) * pixels, as_int(pixels), dcol,
           as_int(pixels));
      if (!g.pointwise()) {
        std::fill(dxg, dxg + g.group_in() * g.in_pixels(), T(0));
        unfold<true, T>(g, g.group_in(), dxg, dcol);
      }
    }
  });
}

// Images are summed in blocks of kImagesPerBlock, then the blocks in order, so the result
// does not depend on how many threads ran.
constexpr int64_t kImagesPerBlock = 4;

template <typename T>
void backward_filter_typed(KernelContext& ctx) {
  single_threaded_blas();
  const Tensor& x = ctx.input(0);
  const Tensor& dy = ctx.input(1);
  Tensor& dw = ctx.output(0);
  const ConvGeometry g = conv_geometry(ctx.node(), x.shape(), dy.shape(), dw.shape());
  const T* px = x.data<T>();
  const T* pdy = dy.data<T>();
  T* pdw = dw.data<T>();
  if constexpr (std::is_same_v<T, float>)
    if (onednn_convolution(ctx, ConvPass::backward_filter, g, px, pdy, pdw)) return;
  check_blas_sizes(ctx, g);
  const int64_t patch = g.patch_size(), pixels = g.out_pixels(), og = g.group_out();
  const int64_t blocks = (g.batch + kImagesPerBlock - 1) / kImagesPerBlock;
  const int64_t filter_size = g.out_channels * patch;
  std::vector<T> partial(static_cast<size_t>(std::max<int64_t>(blocks, 1) * filter_size), T(0));
  ctx.parallel_for(
      blocks, kImagesPerBlock * g.out_channels * patch * pixels, [&](int64_t b0, int64_t b1) {
        std::vector<T> col(g.pointwise() ? 0 : patch * pixels);
        for (int64_t b = b0; b < b1; ++b) {
          T* sum = partial.data() + b * filter_size;
          const int64_t end = std::min(g.batch, (b + 1) * kImagesPerBlock);
          for (int64_t n = b * kImagesPerBlock; n < end; ++n)
            for (int64_t group = 0; group < g.groups; ++group) {
              const T* xg = px + (n * g.in_channels + group * g.group_in()) * g.in_pixels();
              const T* unfolded = xg;
              if (!g.pointwise()) {
                unfold<false, T>(g, g.group_in(), xg, col.data());
                unfolded = col.data();
              }
              gemm(false, true, as_int(og), as_int(patch), as_int(pixels),
                   pdy + (n * g.out_channels + group * og) * pixels, as_int(pixels), unfolded,
                   as_int(pixels), sum + group * og * patch, as_int(patch), T(1));
            }
        }
      });
  std::fill(pdw, pdw + filter_size, T(0));
  for (int64_t b = 0; b < blocks; ++b) {
    const T* sum = partial.data() + b * filter_size;
    for (int64_t i = 0; i < filter_size; ++i) pdw[i] += sum[i];
  }
}

template <template <typename> class Kernel>
void float_kernel(KernelContext& ctx) {
  dispatch_float(ctx.input(0).dtype(), [&](auto tag) { Kernel<decltype(tag)>::run(ctx); });
}
template <typename T>
struct Conv2d {
  static void run(KernelContext& ctx) { conv2d_typed<T>(ctx); }
};
template <typename T>
struct BackwardInput {
  static void run(KernelContext& ctx) { backward_input_typed<T>(ctx); }
};
template <typename T>
struct BackwardFilter {
  static void run(KernelContext& ctx) { backward_filter_typed<T>(ctx); }
};

// ---- Graph builders and gradients.

AttrMap conv_attrs(const Node& node) {
  return {{"stride", node.attr<std::vector<int64_t>>("stride")},
          {"padding", node.attr<std::vector<int64_t>>("padding")},
          {"dilation", node.attr<std::vector<int64_t>>("dilation")},
          {"groups", node.attr<int64_t>("groups")}};
}

Value backward_input(const Value& dy, const Value& w, const Node& like, int64_t h, int64_t wd) {
  AttrMap attrs = conv_attrs(like);
  attrs["input_size"] = std::vector<int64_t>{h, wd};
  return dy.graph()->add("conv2d_backward_input", {dy, w}, attrs);
}
Value backward_filter(const Value& x, const Value& dy, const Node& like, int64_t kh, int64_t kw) {
  AttrMap attrs = conv_attrs(like);
  attrs["kernel_size"] = std::vector<int64_t>{kh, kw};
  return x.graph()->add("conv2d_backward_filter", {x, dy}, attrs);
}
Value forward(const Value& x, const Value& w, const Node& like) {
  return x.graph()->add("conv2d", {x, w}, conv_attrs(like));
}

#define KILN_CONV_ATTRS                             \
  attr("stride", std::vector<int64_t>{1, 1})        \
      .attr("padding", std::vector<int64_t>{0, 0})  \
      .attr("dilation", std::vector<int64_t>{1, 1}) \
      .attr("groups", int64_t{1})

KILN_OP(conv2d)
    .precision(Precision::low)
    .input("x")
    .input("filter")
    .variadic_input("bias", 0)  // optional [O]: the matmul_epilogue pass folds a bias add in
    .KILN_CONV_ATTRS.infer(infer_conv2d)
    .kernel(DeviceKind::cpu, float_kernel<Conv2d>, {f32, f64})
    .grad([](GradContext& c) -> GradList {
      Value x = c.input(0), w = c.input(1), dy = c.grad_output();
      GradList grads{backward_input(dy, w, c.node(), x.shape()[2], x.shape()[3]),
                     backward_filter(x, dy, c.node(), w.shape()[2], w.shape()[3])};
      if (c.num_inputs() == 3) grads.push_back(sum(dy, {0, 2, 3}));  // dbias: over n, h, w
      return grads;
    });

KILN_OP(conv2d_backward_input)
    .precision(Precision::low)
    .input("dy")
    .input("filter")
    .KILN_CONV_ATTRS.attr("input_size", AttrType::integers)
    .infer(infer_backward_input)
    .kernel(DeviceKind::cpu, float_kernel<BackwardInput>, {f32, f64})
    .grad([](GradContext& c) -> GradList {
      Value dy = c.input(0), w = c.input(1), v = c.grad_output();
      return {forward(v, w, c.node()),
              backward_filter(v, dy, c.node(), w.shape()[2], w.shape()[3])};
    });

KILN_OP(conv2d_backward_filter)
    .precision(Precision::low)
    .input("x")
    .input("dy")
    .KILN_CONV_ATTRS.attr("kernel_size", AttrType::integers)
    .infer(infer_backward_filter)
    .kernel(DeviceKind::cpu, float_kernel<BackwardFilter>, {f32, f64})
    .grad([](GradContext& c) -> GradList {
      Value x = c.input(0), dy = c.input(1), v = c.grad_output();
      return {backward_input(dy, v, c.node(), x.shape()[2], x.shape()[3]), forward(x, v, c.node())};
    });

#undef KILN_CONV_ATTRS

AttrMap options_attrs(const Conv2dOptions& o) {
  return {{"stride", std::vector<int64_t>{o.stride[0], o.stride[1]}},
          {"padding", std::vector<int64_t>{o.padding[0], o.padding[1]}},
          {"dilation", std::vector<int64_t>{o.dilation[0], o.dilation[1]}},
          {"groups", o.groups}};
}

}  // namespace
}  // namespace ops

std::vector<std::pair<int64_t, int64_t>> ops::same_padding(const std::string& op,
                                                           const Shape& filter,
                                                           const int64_t* stride,
                                                           const int64_t* padding,
                                                           const int64_t* dilation, int dims) {
  std::vector<std::pair<int64_t, int64_t>> widths;
  for (int d = 0; d < dims; ++d) {
    const int64_t kernel = filter.rank() >= dims ? filter[filter.rank() - dims + d] : -1;
    KILN_CHECK(stride[d] == 1 && padding[d] == 0 && kernel >= 0, GraphError, "[", op,
               "] padding \"same\" takes stride 1, no padding of its own and a filter of known ",
               "size: stride ", stride[d], ", padding ", padding[d], ", filter ", filter, " (dim ",
               d, ")");
    const int64_t total = dilation[d] * (kernel - 1);
    widths.emplace_back(total / 2, total - total / 2);
  }
  return widths;
}

Value conv2d(const Value& x, const Value& filter, const Conv2dOptions& options) {
  Graph& graph = common_graph("conv2d", {&x, &filter});
  if (options.same) {
    const auto widths = ops::same_padding("conv2d", filter.shape(), options.stride.data(),
                                          options.padding.data(), options.dilation.data(), 2);
    Conv2dOptions resolved = options;
    resolved.same = false;
    if (widths[0].first == widths[0].second && widths[1].first == widths[1].second) {
      resolved.padding = {widths[0].first, widths[1].first};  // even: the op's own padding
      return conv2d(x, filter, resolved);
    }
    // An odd total: one more after than before, as PyTorch pads.
    KILN_CHECK(x.shape().rank() == 4, GraphError, "conv2d: x ", x.shape(), " must be [N, C, H, W]");
    return conv2d(pad(x, {widths[1], widths[0]}, options.padding_mode), filter, resolved);
  }
  if (options.padding_mode != PadMode::constant &&
      (options.padding[0] != 0 || options.padding[1] != 0)) {
    KILN_CHECK(x.shape().rank() == 4, GraphError, "conv2d: x ", x.shape(), " must be [N, C, H, W]");
    Conv2dOptions unpadded = options;
    unpadded.padding = {0, 0};
    const Value padded =
        pad(x, {{options.padding[1], options.padding[1]}, {options.padding[0], options.padding[0]}},
            options.padding_mode);
    return graph.add("conv2d", {padded, filter}, ops::options_attrs(unpadded));
  }
  return graph.add("conv2d", {x, filter}, ops::options_attrs(options));
}

Value conv_transpose2d(const Value& x, const Value& filter, const Conv2dOptions& options,
                       std::array<int64_t, 2> output_padding) {
  Graph& graph = common_graph("conv_transpose2d", {&x, &filter});
  KILN_CHECK(!options.same, GraphError,
             "conv_transpose2d: padding \"same\" is for convolutions, not transposed ones (as "
             "PyTorch's)");
  KILN_CHECK(options.padding_mode == PadMode::constant, GraphError,
             "conv_transpose2d: padding_mode must be zeros (constant), as PyTorch's");
  const Shape& xs = x.shape();
  const Shape& ws = filter.shape();
  if (xs.rank() != 4 || ws.rank() != 4 || xs[2] < 0 || xs[3] < 0 || ws[2] < 0 || ws[3] < 0)
    throw GraphError(str("conv_transpose2d: x ", xs, " and filter ", ws,
                         " must be 4-D with known spatial dims"));
  // The input size of the convolution whose adjoint this is:
  //   (in - 1) stride - 2 pad + dilation (k - 1) + 1 + output_padding.
  std::vector<int64_t> size(2);
  for (int d : {0, 1}) {
    if (output_padding[d] < 0 ||
        output_padding[d] >= std::max(options.stride[d], options.dilation[d]))
      throw GraphError(str("conv_transpose2d: output_padding ", output_padding[d],
                           " must be in [0, max(stride, dilation))"));
    size[d] = (xs[2 + d] - 1) * options.stride[d] - 2 * options.padding[d] +
              options.dilation[d] * (ws[2 + d] - 1) + 1 + output_padding[d];
    if (size[d] < 1)
      throw GraphError(str("conv_transpose2d: x ", xs, " and filter ", ws, " give an output of ",
                           size[d], " along dim ", 2 + d));
  }
  AttrMap attrs = ops::options_attrs(options);
  attrs["input_size"] = size;
  return graph.add("conv2d_backward_input", {x, filter}, attrs);
}

}  // namespace kiln
