// Neural-network functions built from other ops (no kernels of their own): their gradients
// are the ops' gradients, and they run wherever those ops do (fusion merges the elementwise
// parts into one kernel).
#include <algorithm>
#include <cmath>
#include <limits>

#include "kiln/ops/array.h"
#include "kiln/ops/math.h"
#include "kiln/ops/nn.h"

namespace kiln {

// y = x where x >= 0, slope x below (NaN: every comparison is false, so NaN passes)
Value leaky_relu(const Value& x, double slope) {
  return where(less(x, scalar_like(x, 0)), x * slope, x);
}

// y = min(max(x, low), high); NaN passes (maximum and minimum let NaN win)
Value clamp(const Value& x, double low, double high) {
  KILN_CHECK(low <= high, GraphError, "[clamp] ", x.name(), ": low ", low, " is above high ", high);
  return minimum(maximum(x, scalar_like(x, low)), scalar_like(x, high));
}

// x > 0: x, else alpha (e^x - 1). expm1 reads min(x, 0): for large x, e^x would be inf and the
// untaken branch's gradient 0 inf = NaN.
Value elu(const Value& x, double alpha) {
  return where(greater(x, scalar_like(x, 0)), x, expm1(minimum(x, scalar_like(x, 0))) * alpha);
}

Value selu(const Value& x) {
  constexpr double kAlpha = 1.6732632423543772848170429916717;
  constexpr double kScale = 1.0507009873554804934193349852946;
  return elu(x, kAlpha) * kScale;
}

// x > 0: x, else alpha (e^(x / alpha) - 1), the exponent's argument clipped as in elu.
Value celu(const Value& x, double alpha) {
  KILN_CHECK(alpha != 0, GraphError, "[celu] ", x.name(), ": alpha must not be 0");
  return where(greater(x, scalar_like(x, 0)), x,
               expm1(minimum(x, scalar_like(x, 0)) * (1 / alpha)) * alpha);
}

Value hardtanh(const Value& x, double low, double high) {
  return clamp(x, low, high);
}

Value relu6(const Value& x) {
  return clamp(x, 0, 6);
}

Value hardsigmoid(const Value& x) {
  return clamp(x * (1.0 / 6) + 0.5, 0, 1);
}

Value hardswish(const Value& x) {
  return x * hardsigmoid(x);
}

Value mish(const Value& x) {
  return x * tanh(softplus(x));
}

Value logsigmoid(const Value& x) {
  return -softplus(-x);
}

Value softsign(const Value& x) {
  return x / (abs(x) + 1.0);
}

// where(x < 0, w x, x) with w [C] reshaped to [C, 1, ...] against x [N, C, ...].
Value prelu(const Value& x, const Value& weight) {
  const Shape& s = x.shape();
  const Shape& w = weight.shape();
  const bool single = w.rank() == 1 && w[0] == 1;
  const bool per_channel = w.rank() == 1 && s.rank() >= 2 && w[0] >= 1 && w[0] == s[1];
  KILN_CHECK(single || per_channel, GraphError, "[prelu] ", x.name(), ": weight must be [1] or [",
             s.rank() >= 2 ? str(s[1]) : std::string("C"), "] (x's channels, axis 1), got ", w,
             " for x ", s);
  Value slope = weight;
  if (per_channel && s.rank() > 2) {
    std::vector<int64_t> dims(static_cast<size_t>(s.rank() - 1), 1);
    dims[0] = w[0];
    slope = reshape(weight, Shape(dims));
  }
  return where(less(x, scalar_like(x, 0)), x * slope, x);
}

Value cosine_similarity(const Value& a, const Value& b, int64_t axis, double eps) {
  KILN_CHECK(eps > 0, GraphError, "[cosine_similarity] eps ", eps, " must be positive");
  // max(|v|, eps) as sqrt(max(|v|^2, eps^2)): a zero vector gets a finite gradient (sqrt's
  // derivative at 0 is infinite).
  auto unit = [&](const Value& v) {
    const Value squares = sum(square(v), {axis}, /*keepdims=*/true);
    return v / sqrt(maximum(squares, scalar_like(squares, eps * eps)));
  };
  return sum(unit(a) * unit(b), {axis});
}

Value squeeze(const Value& x, Axes axes_in) {
  const std::vector<int64_t>& axes = axes_in.list();
  const Shape& shape = x.shape();
  const int64_t rank = shape.rank();
  std::vector<bool> drop(static_cast<size_t>(rank), false);
  if (axes.empty()) {
    for (int64_t d = 0; d < rank; ++d) drop[d] = shape[d] == 1;
  } else {
    for (int64_t axis : axes) {
      const int64_t a = axis < 0 ? axis + rank : axis;
      KILN_CHECK(a >= 0 && a < rank, GraphError, "[squeeze] ", x.name(), ": axis ", axis,
                 " is outside a shape of rank ", rank);
      KILN_CHECK(shape[a] == 1, GraphError, "[squeeze] ", x.name(), ": dim ", axis, " of ", shape,
                 " is not 1");
      drop[a] = true;
    }
  }
  std::vector<int64_t> dims;
  for (int64_t d = 0; d < rank; ++d)
    if (!drop[d]) dims.push_back(shape[d]);
  return reshape(x, Shape(dims));
}

Value stack(const std::vector<Value>& values, int64_t axis) {
  KILN_CHECK(!values.empty(), GraphError, "[stack] needs at least one value");
  const int64_t rank = values[0].shape().rank() + 1;
  const int64_t a = axis < 0 ? axis + rank : axis;
  KILN_CHECK(a >= 0 && a < rank, GraphError, "[stack] axis ", axis,
             " is outside the result's rank ", rank);
  std::vector<Value> expanded;
  for (const Value& v : values) expanded.push_back(expand_dims(v, {a}));
  return concat(expanded, a);
}

// m = max(x) (held constant: the result does not depend on it); y = m + log(sum(exp(x - m))).
// Where every element is -inf, m is -inf and x - m NaN: m is replaced by 0 there, giving
// log(0) = -inf as PyTorch does.
Value logsumexp(const Value& x, Axes axes, bool keepdims) {
  Value m = x.graph()->add("stop_gradient", {max(x, axes, /*keepdims=*/true)});
  Value zero = scalar_like(x, 0);
  Value finite_m = where(equal(m, scalar_like(x, -INFINITY)), zero, m);
  Value y = log(sum(exp(x - finite_m), axes, /*keepdims=*/true)) + finite_m;
  if (keepdims) return y;
  std::vector<int64_t> reduced = axes.list();
  if (reduced.empty())
    for (int64_t d = 0; d < x.shape().rank(); ++d) reduced.push_back(d);
  return squeeze(y, reduced);
}

namespace {

const char* pad_mode_name(PadMode mode) {
  switch (mode) {
    case PadMode::constant:
      return "constant";
    case PadMode::reflect:
      return "reflect";
    case PadMode::replicate:
      return "replicate";
    case PadMode::circular:
      return "circular";
  }
  return "?";
}

// Positions [-before, n + after) of an axis of n mapped into [0, n) by the mode (reflect
// mirrors about the edge elements, replicate clamps, circular wraps). Constant padding is not
// a gather: pad() concatenates slabs of the value instead.
std::vector<int64_t> pad_sources(PadMode mode, int64_t n, int64_t before, int64_t after) {
  std::vector<int64_t> sources;
  for (int64_t i = -before; i < n + after; ++i) {
    int64_t j = i;
    switch (mode) {
      case PadMode::constant:
        break;
      case PadMode::reflect:
        j = i < 0 ? -i : i >= n ? 2 * (n - 1) - i : i;
        break;
      case PadMode::replicate:
        j = std::clamp<int64_t>(i, 0, n - 1);
        break;
      case PadMode::circular:
        j = ((i % n) + n) % n;
        break;
    }
    sources.push_back(j);
  }
  return sources;
}

// The constant slab `width` wide along `axis`, shaped like y elsewhere. With every dim known it
// is a folded constant; otherwise it follows y's first slice (full_like keeps unknown dims).
Value constant_band(const Value& y, int64_t axis, int64_t width, double value) {
  std::vector<int64_t> dims(y.shape().begin(), y.shape().end());
  dims[axis] = width;
  if (y.shape().is_known()) return fill(*y.graph(), Shape(dims), value, y.dtype());
  const Value edge = full_like(y.slice(axis, 0, 1), value);
  return width == 1 ? edge : gather(edge, y.graph()->constant(Tensor::zeros(i64, {width})), axis);
}

}  // namespace

Value pad(const Value& x, const std::vector<std::pair<int64_t, int64_t>>& widths, PadMode mode,
          double value) {
  const Shape& shape = x.shape();
  const std::string where = str("[pad] ", x.name(), " (", pad_mode_name(mode), ")");
  KILN_CHECK(static_cast<int64_t>(widths.size()) <= shape.rank(), GraphError, where, ": ",
             widths.size(), " (before, after) pairs for a shape of rank ", shape.rank());
  Value y = x;
  // The pairs are for the last dims, innermost first (torch.nn.functional.pad's order).
  for (size_t i = 0; i < widths.size(); ++i) {
    const auto [before, after] = widths[i];
    const int64_t axis = shape.rank() - 1 - static_cast<int64_t>(i);
    const int64_t n = shape[axis];
    KILN_CHECK(before >= 0 && after >= 0, GraphError, where, ": widths (", before, ", ", after,
               ") for dim ", axis, " must not be negative");
    if (before == 0 && after == 0) continue;
    KILN_CHECK(n >= 0, GraphError, where, ": dim ", axis, " of ", shape,
               " is padded, so it must be known");
    if (mode == PadMode::constant) {
      KILN_CHECK(n > 0 || y.shape().is_known(), GraphError, where, ": dim ", axis, " of ", shape,
                 " is empty and other dims are unknown");
      std::vector<Value> parts;
      if (before > 0) parts.push_back(constant_band(y, axis, before, value));
      parts.push_back(y);
      if (after > 0) parts.push_back(constant_band(y, axis, after, value));
      y = concat(parts, axis);
      continue;
    }
    // PyTorch's limits: reflect reaches at most n - 1 past an edge, circular n; replicate
    // repeats the edge element as far as asked.
    const int64_t reach = mode == PadMode::reflect    ? n - 1
                          : mode == PadMode::circular ? n
                                                      : std::numeric_limits<int64_t>::max();
    KILN_CHECK(n > 0 && before <= reach && after <= reach, GraphError, where, ": widths (", before,
               ", ", after, ") for dim ", axis, " of size ", n, " must be at most ", reach);
    const std::vector<int64_t> sources = pad_sources(mode, n, before, after);
    y = gather(y, y.graph()->constant(Tensor::from_vector<int64_t>(sources)), axis);
  }
  return y;
}

// [N, C r^2, H, W] -> [N, C, r, r, H, W] -> [N, C, H, r, W, r] -> [N, C, H r, W r]: channel
// c r^2 + i r + j lands at row h r + i, column w r + j (PyTorch's order).
Value pixel_shuffle(const Value& x, int64_t factor) {
  const Shape& s = x.shape();
  KILN_CHECK(factor >= 1, GraphError, "[pixel_shuffle] ", x.name(), ": factor ", factor,
             " must be at least 1");
  KILN_CHECK(s.rank() == 4 && s[1] >= 0 && s[1] % (factor * factor) == 0 && s[2] >= 0 && s[3] >= 0,
             GraphError, "[pixel_shuffle] ", x.name(), ": expects [N, C ", factor * factor,
             ", H, W] with known C, H, W, got ", s);
  const int64_t c = s[1] / (factor * factor), h = s[2], w = s[3];
  const Value split = reshape(x, {-1, c, factor, factor, h, w});
  return reshape(transpose(split, {0, 1, 4, 2, 5, 3}), {-1, c, h * factor, w * factor});
}

// The inverse: [N, C, H r, W r] -> [N, C, H, r, W, r] -> [N, C, r, r, H, W] -> [N, C r^2, H, W].
Value pixel_unshuffle(const Value& x, int64_t factor) {
  const Shape& s = x.shape();
  KILN_CHECK(factor >= 1, GraphError, "[pixel_unshuffle] ", x.name(), ": factor ", factor,
             " must be at least 1");
  KILN_CHECK(s.rank() == 4 && s[1] >= 0 && s[2] >= 0 && s[3] >= 0 && s[2] % factor == 0 &&
                 s[3] % factor == 0,
             GraphError, "[pixel_unshuffle] ", x.name(), ": expects [N, C, H, W] with known C, H",
             " and W divisible by ", factor, ", got ", s);
  const int64_t c = s[1], h = s[2] / factor, w = s[3] / factor;
  const Value split = reshape(x, {-1, c, h, factor, w, factor});
  return reshape(transpose(split, {0, 1, 3, 5, 2, 4}), {-1, c * factor * factor, h, w});
}

namespace {

// The block grid (oh, ow) of unfold / fold over an image of `size`, checking the options.
std::array<int64_t, 2> block_grid(const char* fn, const std::string& name,
                                  std::array<int64_t, 2> size, const UnfoldOptions& o) {
  std::array<int64_t, 2> grid{};
  for (size_t d = 0; d < 2; ++d) {
    KILN_CHECK(o.kernel_size[d] > 0 && o.dilation[d] > 0 && o.stride[d] > 0 && o.padding[d] >= 0,
               GraphError, "[", fn, "] ", name, ": kernel_size, dilation and stride must be ",
               "positive and padding not negative, got kernel_size ", o.kernel_size[d],
               ", dilation ", o.dilation[d], ", stride ", o.stride[d], ", padding ", o.padding[d],
               " along ", d == 0 ? "the height" : "the width");
    const int64_t span = o.dilation[d] * (o.kernel_size[d] - 1) + 1,
                  padded = size[d] + 2 * o.padding[d];
    KILN_CHECK(padded >= span, GraphError, "[", fn, "] ", name, ": a block spans ", span, " along ",
               d == 0 ? "the height" : "the width", ", more than the padded ", padded);
    grid[d] = (padded - span) / o.stride[d] + 1;
  }
  return grid;
}

// dims with the first replaced by -1 when it is unknown (a batch).
Shape with_batch(int64_t batch, std::vector<int64_t> rest) {
  rest.insert(rest.begin(), batch >= 0 ? batch : -1);
  return Shape(std::move(rest));
}

}  // namespace

// Block (i, j) of the padded x, for every output position at once: rows i d0, i d0 + s0, ...
// (oh of them) and the same across; stacked in (i, j) order after the channel.
Value unfold(const Value& x, const UnfoldOptions& o) {
  const Shape& s = x.shape();
  KILN_CHECK(s.rank() == 4 && s[1] > 0 && s[2] > 0 && s[3] > 0, GraphError, "[unfold] ", x.name(),
             ": expects x [N, C, H, W] with C, H and W known, got ", s);
  const auto [oh, ow] = block_grid("unfold", x.name(), {s[2], s[3]}, o);
  const auto [kh, kw] = o.kernel_size;
  const Value padded = o.padding[0] || o.padding[1]
                           ? pad(x, {{o.padding[1], o.padding[1]}, {o.padding[0], o.padding[0]}})
                           : x;
  constexpr int64_t kAll = std::numeric_limits<int64_t>::max();
  std::vector<Value> blocks;
  for (int64_t i = 0; i < kh; ++i)
    for (int64_t j = 0; j < kw; ++j) {
      const int64_t top = i * o.dilation[0], left = j * o.dilation[1];
      blocks.push_back(
          slice(padded, {0, 0, top, left},
                {kAll, kAll, top + (oh - 1) * o.stride[0] + 1, left + (ow - 1) * o.stride[1] + 1},
                {1, 1, o.stride[0], o.stride[1]}));
    }
  return reshape(stack(blocks, 2), with_batch(s[0], {s[1] * kh * kw, oh * ow}));
}

// Each block element (i, j), [N, C, oh, ow], spread to its image positions: zeros between its
// rows and columns for the stride (a [.., oh, 1, ow, 1] padded to [.., oh, s0, ow, s1], cut
// after the last), then padded out to the padded image at (i d0, j d1); the K terms added and
// the padding cut off.
Value fold(const Value& columns, std::array<int64_t, 2> output_size, const UnfoldOptions& o) {
  const Shape& s = columns.shape();
  const int64_t kh = o.kernel_size[0], kw = o.kernel_size[1];
  KILN_CHECK(output_size[0] > 0 && output_size[1] > 0, GraphError, "[fold] ", columns.name(),
             ": output_size (", output_size[0], ", ", output_size[1], ") must be positive");
  const auto [oh, ow] = block_grid("fold", columns.name(), output_size, o);
  KILN_CHECK(
      s.rank() == 3 && kh > 0 && kw > 0 && s[1] > 0 && s[1] % (kh * kw) == 0 && s[2] == oh * ow,
      GraphError, "[fold] ", columns.name(), ": expects columns [N, C ", kh * kw, ", ", oh * ow,
      "] (", oh, " x ", ow, " blocks of ", kh, " x ", kw, "), got ", s);
  const int64_t c = s[1] / (kh * kw), n = s[0];
  const int64_t height = output_size[0] + 2 * o.padding[0],
                width = output_size[1] + 2 * o.padding[1];
  const int64_t rows = (oh - 1) * o.stride[0] + 1, cols = (ow - 1) * o.stride[1] + 1;
  const Value blocks = reshape(columns, with_batch(n, {c, kh * kw, oh, ow}));
  constexpr int64_t kAll = std::numeric_limits<int64_t>::max();
  std::vector<Value> terms;
  for (int64_t i = 0; i < kh; ++i)
    for (int64_t j = 0; j < kw; ++j) {
      const int64_t k = i * kw + j, top = i * o.dilation[0], left = j * o.dilation[1];
      Value block =
          reshape(slice(blocks, {0, 0, k}, {kAll, kAll, k + 1}), with_batch(n, {c, oh, 1, ow, 1}));
      if (o.stride[0] > 1 || o.stride[1] > 1) {
        block = pad(block, {{0, o.stride[1] - 1}, {0, 0}, {0, o.stride[0] - 1}});
        block = slice(reshape(block, with_batch(n, {c, oh * o.stride[0], ow * o.stride[1]})),
                      {0, 0, 0, 0}, {kAll, kAll, rows, cols});
      } else {
        block = reshape(block, with_batch(n, {c, oh, ow}));
      }
      terms.push_back(pad(block, {{left, width - left - cols}, {top, height - top - rows}}));
    }
  const Value image = add_n(terms);
  if (!o.padding[0] && !o.padding[1]) return image;
  return slice(image, {0, 0, o.padding[0], o.padding[1]},
               {kAll, kAll, o.padding[0] + output_size[0], o.padding[1] + output_size[1]});
}

Value embedding(const Value& table, const Value& ids) {
  if (table.shape().rank() != 2)
    throw GraphError(str("embedding: the table must be [rows, dim], got ", table.shape()));
  return gather(table, ids, 0);
}

Value dropout(const Value& x, double rate, bool training, int64_t seed) {
  if (!training || rate == 0) return x;
  return x * dropout_mask(x, rate, seed);
}

namespace {

// x's first element along every dim from `from` on: shaped [d0, ..., d(from-1), 1, ..., 1], the
// shape of a dropout mask shared over those dims (its other dims follow x, even unknown ones).
Value first_along(const Value& x, int64_t from) {
  Value v = x;
  for (int64_t d = from; d < x.shape().rank(); ++d) v = v.slice(d, 0, 1);
  return v;
}

}  // namespace

// x * mask[n, c], one draw per channel of each example, broadcast over the positions
Value channel_dropout(const Value& x, double rate, bool training, int64_t seed) {
  KILN_CHECK(x.shape().rank() >= 2, GraphError, "[channel_dropout] ", x.name(), ": x ", x.shape(),
             " must be [N, C, ...]");
  if (!training || rate == 0) return x;
  return x * dropout_mask(first_along(x, 2), rate, seed);
}

// x * mask[n], one draw per example, broadcast over the rest
Value drop_path(const Value& x, double rate, bool training, int64_t seed) {
  KILN_CHECK(x.shape().rank() >= 1, GraphError, "[drop_path] ", x.name(),
             ": x is a scalar; it needs a batch dim 0");
  if (!training || rate == 0) return x;
  return x * dropout_mask(first_along(x, 1), rate, seed);
}

// a sigmoid(b) for the halves a, b of x along `axis`
Value glu(const Value& x, int64_t axis) {
  const Shape& shape = x.shape();
  const int64_t rank = static_cast<int64_t>(shape.rank());
  KILN_CHECK(axis >= -rank && axis < rank, GraphError, "[glu] ", x.name(), ": axis ", axis,
             " is outside the ", rank, " dims of ", shape);
  const int64_t a = axis < 0 ? axis + rank : axis;
  KILN_CHECK(shape[a] >= 0 && shape[a] % 2 == 0, GraphError, "[glu] ", x.name(), ": dim ", a,
             " of ", shape, " must be known and even to halve");
  std::vector<Value> halves = split(x, 2, a);
  return halves[0] * sigmoid(halves[1]);
}

}  // namespace kiln
