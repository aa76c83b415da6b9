// 3-D convolution and pooling over [N, C, D, H, W], built from the 2-D ops (no kernels of their
// own: their gradients are the 2-D ops', and they run wherever those do, cuDNN and oneDNN
// included). Each splits the depth from the plane:
//   conv3d:           y[:, :, od] = sum over kd of conv2d(x[:, :, od s + kd dil], w[:, :, kd]);
//                     one conv2d per depth tap kd, over every output depth at once (the images
//                     of x's depth slices taken with stride s, as a batch of N OD planes), so the
//                     products are a direct 3-D convolution's.
//   conv_transpose3d: its adjoint: per tap kd, conv_transpose2d of every input depth, placed at
//                     output depth id s + kd dil (zeros between, by padding), summed, cropped.
//   max_pool3d:       max_pool2d of each depth slice, then the maximum over each depth window's
//                     taps (dilation apart).
//   avg_pool3d:       avg_pool2d of each depth slice, then a product with a constant [OD, D]
//                     matrix of 1 / count per depth window: PyTorch's divisor is a product of
//                     per-dim counts (either count_include_pad rule), so averaging is separable.
//   adaptive_avg_pool: one such matrix per pooled dim (PyTorch's uneven windows), any rank.
//   adaptive_max_pool: per pooled dim, the maximum over the taps of its windows (gathers).
#include <algorithm>
#include <limits>
#include <string>
#include <vector>

#include "kiln/ops/array.h"
#include "kiln/ops/math.h"
#include "kiln/ops/nn.h"
#include "kiln/ops/nn/conv.h"

namespace kiln {

namespace {

// x [N, C, D, H, W] (N may be unknown; the rest must be known).
void check_volume(const char* op, const Value& x, const char* what = "x") {
  const Shape& s = x.shape();
  bool known = s.rank() == 5;
  for (int64_t d = 1; known && d < 5; ++d) known = s[d] >= 0;
  KILN_CHECK(known, GraphError, "[", op, "] ", what, " ", s,
             " must be [N, C, D, H, W] with C, D, H, W known");
}

// [N, C, D, ...] <-> [N, D, C, ...]: depth slices as a batch of planes.
Value swap_channels_and_depth(const Value& x) {
  return transpose(x, {0, 2, 1, 3, 4});
}

// Tap kd of a 3-D filter [A, B, KD, KH, KW] as a 2-D one [A, B, KH, KW].
Value depth_tap(const Value& filter, int64_t kd) {
  return squeeze(filter.slice(2, kd, kd + 1), {2});
}

// The windows of a pooling along one dim: output i takes the inputs i s - p + t dilation, t < k
// (PyTorch's size rule, ceil_mode included); each must take at least one input.
int64_t pooled_size(const char* op, int64_t in, int64_t kernel, int64_t stride, int64_t padding,
                    bool ceil_mode, int64_t dilation = 1) {
  KILN_CHECK(kernel >= 1 && stride >= 1 && padding >= 0 && padding * 2 <= kernel && dilation >= 1,
             GraphError, "[", op, "] window ", kernel, ", stride ", stride, ", padding ", padding,
             dilation != 1 ? str(", dilation ", dilation) : "",
             ": sizes must be positive and padding at most half the window");
  const int64_t extent = dilation * (kernel - 1) + 1;
  const int64_t span = in + 2 * padding - extent + (ceil_mode ? stride - 1 : 0);
  int64_t count = (span >= 0 ? span / stride : -((-span + stride - 1) / stride)) + 1;
  if (ceil_mode && count >= 1 && (count - 1) * stride >= in + padding) --count;
  KILN_CHECK(count >= 1, GraphError, "[", op, "] a dim of ", in, " is smaller than the window ",
             kernel, dilation > 1 ? str(" of dilation ", dilation) : "");
  for (int64_t i = 0; dilation > 1 && i < count; ++i) {
    // The first tap at or past 0 of window i, start + t dilation.
    const int64_t start = i * stride - padding;
    const int64_t first = start < 0 ? start + (-start + dilation - 1) / dilation * dilation : start;
    KILN_CHECK(first < in && first <= start + (kernel - 1) * dilation, GraphError, "[", op,
               "] window ", i, " over a dim of ", in, " holds no input element (kernel ", kernel,
               ", dilation ", dilation, ", padding ", padding, ")");
  }
  return count;
}

// A constant [out, in] matrix of x's dtype: row i holds 1 / count over [begin_i, end_i)
// (computed in double: in f64 the weights are exact to the last bit).
Value averaging_matrix(Graph& graph, const Value& x, int64_t in,
                       const std::vector<std::array<int64_t, 3>>& windows) {
  const int64_t out = static_cast<int64_t>(windows.size());
  std::vector<double> m(static_cast<size_t>(out * in), 0.0);
  for (int64_t i = 0; i < out; ++i) {
    const auto [begin, end, count] = windows[static_cast<size_t>(i)];
    for (int64_t j = begin; j < end; ++j)
      m[static_cast<size_t>(i * in + j)] = 1.0 / static_cast<double>(count);
  }
  const Value weights = constant(graph, Tensor::from_vector(m, Shape{out, in}), "windows");
  return x.dtype() == f64 ? weights : cast(weights, x.dtype());  // folded once
}

}  // namespace

Value conv3d(const Value& x, const Value& filter, const Conv3dOptions& options) {
  check_volume("conv3d", x);
  check_volume("conv3d", filter, "filter");
  const NameScope scope(*x.graph(), "conv3d");
  const auto& [sd, sh, sw] = options.stride;
  const auto& [dd, dh, dw] = options.dilation;
  Value input = x;
  std::array<int64_t, 3> padding = options.padding;
  if (options.same) {  // PyTorch's: half before, the rest after; then no padding of the op's
    const auto widths = ops::same_padding("conv3d", filter.shape(), options.stride.data(),
                                          options.padding.data(), options.dilation.data(), 3);
    input = pad(x, {widths[2], widths[1], widths[0]}, options.padding_mode);
    padding = {0, 0, 0};
  } else if (options.padding_mode != PadMode::constant) {
    input = pad(x, {{padding[2], padding[2]}, {padding[1], padding[1]}, {padding[0], padding[0]}},
                options.padding_mode);
    padding = {0, 0, 0};
  } else if (padding[0] > 0) {
    input = pad(x, {{0, 0}, {0, 0}, {padding[0], padding[0]}});  // the plane's is conv2d's
  }
  const int64_t depth = input.shape()[2], taps = filter.shape()[2];
  KILN_CHECK(sd >= 1 && dd >= 1 && padding[0] >= 0, GraphError, "[conv3d] depth stride ", sd,
             ", dilation ", dd, " and padding ", padding[0], " must be positive (padding >= 0)");
  KILN_CHECK(options.groups >= 1 && filter.shape()[1] * options.groups == x.shape()[1], GraphError,
             "[conv3d] x ", x.shape(), " has ", x.shape()[1], " channels; filter ", filter.shape(),
             " in ", options.groups, " groups takes ", filter.shape()[1] * options.groups);
  KILN_CHECK(depth - dd * (taps - 1) - 1 >= 0, GraphError, "[conv3d] x ", x.shape(),
             " is shallower than the filter ", filter.shape(), " (dilation ", dd, ", padding ",
             options.padding[0], ")");
  const int64_t out_depth = (depth - dd * (taps - 1) - 1) / sd + 1;
  const Value slices = swap_channels_and_depth(input);  // [N, Dp, C, H, W]
  const Shape& s = slices.shape();
  const Conv2dOptions plane{.stride = {sh, sw},
                            .padding = {padding[1], padding[2]},
                            .dilation = {dh, dw},
                            .groups = options.groups};
  std::vector<Value> terms;
  for (int64_t kd = 0; kd < taps; ++kd) {
    const Value images = reshape(slices.slice(1, kd * dd, kd * dd + (out_depth - 1) * sd + 1, sd),
                                 {-1, s[2], s[3], s[4]});
    terms.push_back(conv2d(images, depth_tap(filter, kd), plane));
  }
  const Value sum_of = taps == 1 ? terms[0] : add_n(terms);  // [N OD, O, OH, OW]
  const Shape& y = sum_of.shape();
  return swap_channels_and_depth(reshape(sum_of, {-1, out_depth, y[1], y[2], y[3]}));
}

Value conv_transpose3d(const Value& x, const Value& filter, const Conv3dOptions& options,
                       std::array<int64_t, 3> output_padding) {
  check_volume("conv_transpose3d", x);
  check_volume("conv_transpose3d", filter, "filter");
  KILN_CHECK(options.padding_mode == PadMode::constant, GraphError,
             "[conv_transpose3d] padding_mode must be zeros (constant), as PyTorch's");
  KILN_CHECK(!options.same, GraphError,
             "[conv_transpose3d] padding \"same\" is for convolutions, not transposed ones (as "
             "PyTorch's)");
  const NameScope scope(*x.graph(), "conv_transpose3d");
  const auto& [sd, sh, sw] = options.stride;
  const auto& [dd, dh, dw] = options.dilation;
  const int64_t pd = options.padding[0], opd = output_padding[0];
  KILN_CHECK(sd >= 1 && dd >= 1 && pd >= 0, GraphError, "[conv_transpose3d] depth stride ", sd,
             ", dilation ", dd, " and padding ", pd, " must be positive (padding >= 0)");
  KILN_CHECK(opd >= 0 && opd < std::max(sd, dd), GraphError, "[conv_transpose3d] output_padding ",
             opd, " must be in [0, max(stride, dilation))");
  const int64_t depth = x.shape()[2], taps = filter.shape()[2];
  // Tap kd of input depth i lands at i sd + kd dd of the uncropped output (`full` deep); the
  // output is its depths [pd, pd + out_depth).
  const int64_t spread = (depth - 1) * sd + 1, full = spread + dd * (taps - 1);
  const int64_t out_depth = full - 2 * pd + opd;
  KILN_CHECK(out_depth >= 1, GraphError, "[conv_transpose3d] x ", x.shape(), " and filter ",
             filter.shape(), " give an output depth of ", out_depth);
  const Shape& xs = x.shape();
  const Value images = reshape(swap_channels_and_depth(x), {-1, xs[1], xs[3], xs[4]});
  const Conv2dOptions plane{.stride = {sh, sw},
                            .padding = {options.padding[1], options.padding[2]},
                            .dilation = {dh, dw},
                            .groups = options.groups};
  std::vector<Value> terms;
  for (int64_t kd = 0; kd < taps; ++kd) {
    Value t = conv_transpose2d(images, depth_tap(filter, kd), plane,
                               {output_padding[1], output_padding[2]});  // [N D, O, OH, OW]
    const Shape ts = t.shape();
    t = reshape(t, {-1, depth, ts[1], ts[2], ts[3]});
    if (sd > 1) {  // sd - 1 zero depths after each: [N, D, sd, ...] read as [N, D sd, ...]
      t = pad(expand_dims(t, 2), {{0, 0}, {0, 0}, {0, 0}, {0, sd - 1}});
      t = reshape(t, {-1, depth * sd, ts[1], ts[2], ts[3]}).slice(1, 0, spread);
    }
    terms.push_back(pad(t, {{0, 0}, {0, 0}, {0, 0}, {kd * dd, full - spread - kd * dd}}));
  }
  Value sum_of = taps == 1 ? terms[0] : add_n(terms);  // [N, full, O, OH, OW]
  if (pd + out_depth > full)
    sum_of = pad(sum_of, {{0, 0}, {0, 0}, {0, 0}, {0, pd + out_depth - full}});
  return swap_channels_and_depth(sum_of.slice(1, pd, pd + out_depth));
}

namespace {

// The 3-D window as the plane's 2-D window, and the depth's (kernel, stride, padding).
Pool2dOptions plane_window(const Pool3dOptions& o) {
  return {.kernel_size = {o.kernel_size[1], o.kernel_size[2]},
          .stride = {o.stride[1] > 0 ? o.stride[1] : o.kernel_size[1],
                     o.stride[2] > 0 ? o.stride[2] : o.kernel_size[2]},
          .padding = {o.padding[1], o.padding[2]},
          .ceil_mode = o.ceil_mode,
          .dilation = {o.dilation[1], o.dilation[2]}};
}

// A 3-D pooling's window along the depth, and the depths in and out.
struct DepthWindow {
  int64_t kernel, stride, padding, dilation, depth, out_depth;
};
DepthWindow depth_window(const char* op, const Value& x, const Pool3dOptions& o) {
  const int64_t k = o.kernel_size[0], s = o.stride[0] > 0 ? o.stride[0] : k;
  const int64_t depth = x.shape()[2], d = o.dilation[0];
  return {k, s, o.padding[0], d, depth, pooled_size(op, depth, k, s, o.padding[0], o.ceil_mode, d)};
}

// pool2d applied to every depth slice of x: [N, D, C, OH, OW].
Value pool_planes(const Value& x, const std::function<Value(const Value&)>& pool2d) {
  const Value slices = swap_channels_and_depth(x);
  const Shape& s = slices.shape();
  const Value pooled = pool2d(reshape(slices, {-1, s[2], s[3], s[4]}));
  const Shape& p = pooled.shape();
  return reshape(pooled, {-1, s[1], p[1], p[2], p[3]});
}

}  // namespace

Value max_pool3d(const Value& x, const Pool3dOptions& options) {
  check_volume("max_pool3d", x);
  const NameScope scope(*x.graph(), "max_pool3d");
  const auto [k, s, p, d, depth, out_depth] = depth_window("max_pool3d", x, options);
  const Pool2dOptions window = plane_window(options);
  Value planes = pool_planes(x, [&](const Value& v) { return max_pool2d(v, window); });
  // Padding of -inf never wins (every window holds an input depth).
  const int64_t after = std::max<int64_t>(0, (out_depth - 1) * s + (k - 1) * d + 1 - depth - p);
  if (p > 0 || after > 0)
    planes =
        pad(planes, {{0, 0}, {0, 0}, {0, 0}, {p, after}}, -std::numeric_limits<double>::infinity());
  Value y;
  for (int64_t kd = 0; kd < k; ++kd) {  // depth tap kd of window i: padded depth i s + kd d
    const Value tap = planes.slice(1, kd * d, kd * d + (out_depth - 1) * s + 1, s);
    y = kd == 0 ? tap : maximum(y, tap);
  }
  return swap_channels_and_depth(y);
}

Value avg_pool3d(const Value& x, const Pool3dOptions& options, bool count_include_pad) {
  check_volume("avg_pool3d", x);
  KILN_CHECK(options.dilation == (std::array<int64_t, 3>{1, 1, 1}), GraphError,
             "[avg_pool3d] takes no dilation (PyTorch's has none), got ", options.dilation[0], ", ",
             options.dilation[1], ", ", options.dilation[2]);
  const NameScope scope(*x.graph(), "avg_pool3d");
  const auto [k, s, p, d, depth, out_depth] = depth_window("avg_pool3d", x, options);
  const Pool2dOptions window = plane_window(options);
  const Value planes =
      pool_planes(x, [&](const Value& v) { return avg_pool2d(v, window, count_include_pad); });
  // Depth window i: [i s - p, i s - p + k) clipped to the input; PyTorch counts it clipped to the
  // padded input instead with count_include_pad.
  std::vector<std::array<int64_t, 3>> windows;
  for (int64_t i = 0; i < out_depth; ++i) {
    const int64_t start = i * s - p, end = std::min(start + k, depth + p);
    const int64_t begin = std::max<int64_t>(start, 0), stop = std::min(end, depth);
    windows.push_back({begin, stop, count_include_pad ? end - start : stop - begin});
  }
  const Shape& ps = planes.shape();  // [N, D, C, OH, OW]
  const Value averaged = matmul(averaging_matrix(*x.graph(), x, depth, windows),
                                reshape(planes, {-1, depth, ps[2] * ps[3] * ps[4]}));
  return swap_channels_and_depth(reshape(averaged, {-1, out_depth, ps[2], ps[3], ps[4]}));
}

namespace {

// PyTorch's adaptive window o of `out` over `in`: [floor(o in / out), ceil((o + 1) in / out)).
std::pair<int64_t, int64_t> adaptive_window(int64_t o, int64_t in, int64_t out) {
  return {o * in / out, ((o + 1) * in + out - 1) / out};
}

// Checks that x has output_size.size() known positive dims after its batch to pool, each
// output size positive; `unknown_allowed`: how many other dims may be unknown.
void check_adaptive(const char* fn, const Value& x, const std::vector<int64_t>& output_size,
                    int64_t unknown_allowed) {
  const Shape& s = x.shape();
  const int64_t dims = static_cast<int64_t>(output_size.size());
  bool known = dims >= 1 && s.rank() >= dims + 1;
  int64_t unknown = 0;  // among the dims not pooled
  for (int64_t d = 0; known && d < s.rank(); ++d) {
    if (d >= s.rank() - dims) known = s[d] > 0;
    unknown += s[d] < 0;
  }
  KILN_CHECK(known && unknown <= unknown_allowed, GraphError, "[", fn, "] x ", s, " must have ",
             dims, " known positive dims to pool after its batch",
             unknown_allowed == 1 ? ", and one unknown dim at most" : "");
  for (int64_t out : output_size)
    if (out <= 0) {
      std::string sizes;  // as given: a Shape would print -1 as ?
      for (int64_t o : output_size) sizes += str(sizes.empty() ? "" : ", ", o);
      throw GraphError(str("[", fn, "] output size [", sizes, "] must be positive"));
    }
}

}  // namespace

Value adaptive_avg_pool(const Value& x, const std::vector<int64_t>& output_size) {
  const Shape& s = x.shape();
  const int64_t dims = static_cast<int64_t>(output_size.size());
  // Past the last dim, blocks are reshaped: one unknown dim at most.
  check_adaptive("adaptive_avg_pool", x, output_size, dims == 1 ? s.rank() : 1);
  const NameScope scope(*x.graph(), "adaptive_avg_pool");
  Value y = x;
  // Pool the last dim (a product with the matrix transposed), then each one before it as the
  // rows of [..., in, rest] blocks (the matrix times each block, broadcast over the leading dims).
  for (int64_t i = 0; i < dims; ++i) {
    const int64_t axis = s.rank() - 1 - i, in = s[axis],
                  out = output_size[static_cast<size_t>(dims - 1 - i)];
    std::vector<std::array<int64_t, 3>> windows;
    for (int64_t o = 0; o < out; ++o) {
      const auto [begin, end] = adaptive_window(o, in, out);
      windows.push_back({begin, end, end - begin});
    }
    const Value m = averaging_matrix(*x.graph(), x, in, windows);  // [out, in]
    if (i == 0) {
      y = matmul(y, m, false, true);  // [..., in] [in, out]
    } else {
      // Pool `axis` as the rows of [..., in, rest]: m [out, in] times each [in, rest] block.
      const Shape& ys = y.shape();
      std::vector<int64_t> rows(ys.begin(), ys.begin() + axis + 1);
      int64_t rest = 1;
      for (int64_t d = axis + 1; d < ys.rank(); ++d) rest *= ys[d];
      rows.push_back(rest);
      std::vector<int64_t> back(ys.begin(), ys.end());
      back[static_cast<size_t>(axis)] = out;
      for (int64_t d = 0; d < axis; ++d)  // the one unknown leading dim, if any
        if (ys[d] < 0) rows[static_cast<size_t>(d)] = back[static_cast<size_t>(d)] = -1;
      y = reshape(matmul(m, reshape(y, Shape(rows))), Shape(back));
    }
  }
  return y;
}

Value adaptive_max_pool(const Value& x, const std::vector<int64_t>& output_size) {
  const Shape& s = x.shape();
  check_adaptive("adaptive_max_pool", x, output_size, s.rank());
  const NameScope scope(*x.graph(), "adaptive_max_pool");
  const int64_t dims = static_cast<int64_t>(output_size.size());
  Value y = x;
  for (int64_t i = 0; i < dims; ++i) {
    const int64_t axis = s.rank() - dims + i, in = s[axis], out = output_size[i];
    int64_t taps = 0;
    for (int64_t o = 0; o < out; ++o) {
      const auto [begin, end] = adaptive_window(o, in, out);
      taps = std::max(taps, end - begin);
    }
    Value pooled;
    for (int64_t t = 0; t < taps; ++t) {
      std::vector<int64_t> index;  // tap t of each window; past a short one's end, its last
      for (int64_t o = 0; o < out; ++o) {
        const auto [begin, end] = adaptive_window(o, in, out);
        index.push_back(std::min(begin + t, end - 1));
      }
      const Value tap =
          gather(y, x.graph()->constant(Tensor::from_vector<int64_t>(index, {out})), axis);
      pooled = t == 0 ? tap : maximum(pooled, tap);
    }
    y = pooled;
  }
  return y;
}

}  // namespace kiln
