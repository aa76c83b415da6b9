// interpolate (PyTorch's F.interpolate / nn.Upsample) built from other ops. Every mode is
// separable: along each spatial dim, output i is a fixed weighted sum of input positions, so
// the whole resize is one product per dim with a constant [out, in] matrix of those weights
// (x viewed as [..., in, rest], rest the later dims' product), and its gradient is the
// products'. Nearest by a whole factor is a broadcast instead (each input repeated k times: no
// arithmetic). The weights follow PyTorch's source-index rules (aten's UpSample.h):
//   scale     align_corners: (in - 1) / (out - 1) (0 when out is 1); else 1 / scale_factor
//             when one was given, in / out otherwise (in float for nearest, as aten; in double
//             for linear and cubic, where aten's CPU f32 kernels mix float and double: at
//             thousands of positions theirs move by up to ~1e-4 of a step)
//   nearest   src = min(floor(dst scale), in - 1)
//   nearest_exact  src = min(floor((dst + 1/2) scale), in - 1)
//   linear    src = dst scale (align_corners) or max((dst + 1/2) scale - 1/2, 0); weights
//             1 - t and t on floor(src) and the next position (the last one clamps)
//   cubic     src as linear but not clamped at 0; Keys' cubic convolution with A = -0.75 on
//             floor(src) - 1 .. floor(src) + 2, positions clamped to the input
//   antialias (linear and cubic; aten's _upsample_*_aa): the filter (1 - |d|, or the cubic
//             with A = -0.5) stretched by s = max(scale, 1) around center = (dst + 1/2) scale:
//             inputs j in [trunc(center - r s + 1/2), trunc(center + r s + 1/2)) within the
//             input (r the filter's radius, 1 or 2) weigh filter((j - center + 1/2) / s), the
//             weights normalized to sum to 1 (no clamped taps: the window is cut at the edges)
#include <algorithm>
#include <cmath>
#include <vector>

#include "kiln/framework/error.h"
#include "kiln/ops/array.h"
#include "kiln/ops/math.h"
#include "kiln/ops/nn.h"

namespace kiln {

namespace {

const char* mode_name(InterpolateMode mode) {
  switch (mode) {
    case InterpolateMode::nearest:
      return "nearest";
    case InterpolateMode::nearest_exact:
      return "nearest_exact";
    case InterpolateMode::linear:
      return "linear";
    case InterpolateMode::cubic:
      return "cubic";
  }
  return "?";
}

// Keys' cubic convolution kernel at distance d in [0, 2): A = -0.75 is PyTorch's bicubic, -0.5
// its antialiased bicubic (and PIL's).
template <typename T>
T cubic_weight(T d, T a = T(-0.75)) {
  if (d <= 1) return ((a + 2) * d - (a + 3)) * d * d + 1;
  return ((a * d - 5 * a) * d + 8 * a) * d - 4 * a;
}

// The antialiased weights of output i (see the top): the filter of `mode` stretched by the
// downscale, its taps cut at the input's edges and normalized.
template <typename T>
std::vector<std::pair<int64_t, double>> antialiased_row(InterpolateMode mode, int64_t i, int64_t in,
                                                        T scale) {
  const T radius = mode == InterpolateMode::cubic ? T(2) : T(1);
  const T stretch = scale >= 1 ? scale : T(1);
  const T center = scale * (static_cast<T>(i) + T(0.5)), support = radius * stretch;
  // Truncation toward zero, as aten's casts.
  const int64_t first = std::max<int64_t>(static_cast<int64_t>(center - support + T(0.5)), 0);
  const int64_t end = std::min<int64_t>(static_cast<int64_t>(center + support + T(0.5)), in);
  std::vector<std::pair<int64_t, double>> row;
  T total = 0;
  for (int64_t j = first; j < end; ++j) {
    const T d = std::abs((static_cast<T>(j) - center + T(0.5)) / stretch);
    const T w = d >= radius                      ? T(0)
                : mode == InterpolateMode::cubic ? cubic_weight(d, T(-0.5))
                                                 : T(1) - d;
    row.emplace_back(j, static_cast<double>(w));
    total += w;
  }
  if (total != 0)
    for (auto& tap : row) tap.second = static_cast<double>(static_cast<T>(tap.second) / total);
  return row;
}

// Output i's weights over the inputs along one dim: (input position, weight) pairs, at most four,
// each position once, no zero weights.
using WeightRows = std::vector<std::vector<std::pair<int64_t, double>>>;

// The weights of one dim, the positions computed in T. `scale_factor` is the user's (0: none
// given).
template <typename T>
WeightRows resize_weights(InterpolateMode mode, bool align_corners, bool antialias, int64_t in,
                          int64_t out, double scale_factor) {
  T scale;
  if (align_corners)
    scale = out > 1 ? static_cast<T>(in - 1) / static_cast<T>(out - 1) : T(0);
  else
    scale = scale_factor > 0 ? static_cast<T>(1.0 / scale_factor)
                             : static_cast<T>(in) / static_cast<T>(out);
  WeightRows rows(static_cast<size_t>(out));
  auto add = [&](int64_t i, int64_t j, T v) {
    j = std::min(std::max<int64_t>(j, 0), in - 1);  // clamped taps add to the edge position
    auto& row = rows[static_cast<size_t>(i)];
    for (auto& [position, weight] : row)
      if (position == j) {
        weight += static_cast<double>(v);
        return;
      }
    row.emplace_back(j, static_cast<double>(v));
  };
  auto floor_of = [](T v) { return static_cast<int64_t>(std::floor(v)); };
  for (int64_t i = 0; antialias && i < out; ++i)
    rows[static_cast<size_t>(i)] = antialiased_row(mode, i, in, scale);
  for (int64_t i = 0; !antialias && i < out; ++i) {
    const T dst = static_cast<T>(i);
    switch (mode) {
      case InterpolateMode::nearest:
        add(i, floor_of(dst * scale), T(1));
        break;
      case InterpolateMode::nearest_exact:
        add(i, floor_of((dst + T(0.5)) * scale), T(1));
        break;
      case InterpolateMode::linear: {
        const T src = align_corners ? dst * scale : std::max((dst + T(0.5)) * scale - T(0.5), T(0));
        const int64_t j = floor_of(src);
        const T t = src - static_cast<T>(j);
        add(i, j, 1 - t);
        add(i, j + 1, t);
        break;
      }
      case InterpolateMode::cubic: {
        const T src = align_corners ? dst * scale : (dst + T(0.5)) * scale - T(0.5);
        const int64_t j = floor_of(src);
        const T t = src - static_cast<T>(j);
        add(i, j - 1, cubic_weight(t + 1));
        add(i, j, cubic_weight(t));
        add(i, j + 1, cubic_weight(1 - t));
        add(i, j + 2, cubic_weight(2 - t));
        break;
      }
    }
  }
  for (auto& row : rows)
    std::erase_if(row, [](const std::pair<int64_t, double>& tap) { return tap.second == 0; });
  return rows;
}

// Whether the weights pick input i / k alone for output i (k = out / in): a repeat.
bool repeats(const WeightRows& rows, int64_t in, int64_t out) {
  if (out % in != 0) return false;
  for (int64_t i = 0; i < out; ++i) {
    const auto& row = rows[static_cast<size_t>(i)];
    if (row.size() != 1 || row[0].first != i / (out / in) || row[0].second != 1.0) return false;
  }
  return true;
}

// The weights as a dense [out, in] matrix (transposed: [in, out]).
std::vector<double> dense(const WeightRows& rows, int64_t in, int64_t out, bool transposed) {
  std::vector<double> m(static_cast<size_t>(in * out), 0.0);
  for (int64_t i = 0; i < out; ++i)
    for (const auto& [j, weight] : rows[static_cast<size_t>(i)])
      m[static_cast<size_t>(transposed ? j * out + i : i * in + j)] = weight;
  return m;
}

// A constant of x's dtype holding `values` (f16/bf16: made in f32 and cast).
Value constant_like(const Value& x, const std::vector<double>& values, const Shape& shape,
                    const std::string& name) {
  if (x.dtype() == f64) return constant(*x.graph(), Tensor::from_vector(values, shape), name);
  const Value m =
      constant(*x.graph(),
               Tensor::from_vector(std::vector<float>(values.begin(), values.end()), shape), name);
  return x.dtype() == f32 ? m : cast(m, x.dtype());
}

// Above this many entries (in x out) a dim's dense weight matrix is too large to hold and its
// product too slow (in flops per output): the taps are gathered instead.
constexpr int64_t kDenseLimit = int64_t{1} << 20;

// Below this many elements after the resized axis, a product per leading entry is too small to
// run at the gemm's speed (per-call cost dominates), and the axis is moved last instead.
constexpr int64_t kBatchedRest = 512;

// x resized along `axis` from in to out elements.
Value resize_axis(const Value& x, int64_t axis, int64_t out, const InterpolateOptions& options,
                  double scale_factor) {
  const InterpolateMode mode = options.mode;
  const bool align_corners = options.align_corners;
  const Shape& s = x.shape();
  const int64_t in = s[axis];
  // Same size: every mode is the identity unless a factor other than 1 scales the positions.
  if (in == out && (align_corners || scale_factor <= 0 || scale_factor == 1)) return x;
  int64_t rest = 1;
  for (int64_t d = axis + 1; d < s.rank(); ++d) rest *= s[d];
  std::vector<int64_t> lead(s.dims().begin(), s.dims().begin() + axis);
  auto shaped = [&](std::vector<int64_t> tail) {
    std::vector<int64_t> dims = lead;
    dims.insert(dims.end(), tail.begin(), tail.end());
    for (int64_t& d : dims) d = d < 0 ? -1 : d;  // an unknown batch stays unknown
    return Shape(dims);
  };
  std::vector<int64_t> result_dims(s.dims().begin(), s.dims().end());
  result_dims[static_cast<size_t>(axis)] = out;
  for (int64_t& d : result_dims) d = d < 0 ? -1 : d;
  // Nearest picks positions in float whatever the dtype, as aten's nearest_idx does (the pick is
  // discrete: another rounding could pick another input); linear and cubic weights are
  // continuous in the position, which is computed in double.
  const bool nearest = mode == InterpolateMode::nearest || mode == InterpolateMode::nearest_exact;
  const WeightRows w =
      nearest
          ? resize_weights<float>(mode, align_corners, false, in, out, scale_factor)
          : resize_weights<double>(mode, align_corners, options.antialias, in, out, scale_factor);
  if (repeats(w, in, out)) {
    // Each input position repeated out / in times: [..., in, 1, rest] to [..., in, k, rest] by
    // a broadcast, or (an unknown batch) a product with ones of [in, k, rest].
    const Value split = reshape(x, shaped({in, 1, rest}));
    const bool known = std::all_of(lead.begin(), lead.end(), [](int64_t d) { return d >= 0; });
    const Value repeated =
        known
            ? broadcast_to(split, shaped({in, out / in, rest}))
            : split * constant_like(
                          x, std::vector<double>(static_cast<size_t>(in * (out / in) * rest), 1.0),
                          Shape{in, out / in, rest}, "repeat_ones");
    return reshape(repeated, Shape(result_dims));
  }
  if (in * out > kDenseLimit) {
    // y = sum over taps t of gather(x, position_t, axis) weight_t, the weights [out, 1, ...]
    // broadcast over the later dims (a row with fewer taps repeats its first at weight 0).
    size_t taps = 0;
    for (const auto& row : w) taps = std::max(taps, row.size());
    std::vector<int64_t> trailing(static_cast<size_t>(s.rank() - axis), 1);
    trailing[0] = out;
    Value y;
    for (size_t t = 0; t < taps; ++t) {
      std::vector<int64_t> positions(static_cast<size_t>(out));
      std::vector<double> weights(static_cast<size_t>(out), 0.0);
      for (int64_t i = 0; i < out; ++i) {
        const auto& row = w[static_cast<size_t>(i)];
        const auto& tap = t < row.size() ? row[t] : row[0];
        positions[static_cast<size_t>(i)] = tap.first;
        if (t < row.size()) weights[static_cast<size_t>(i)] = tap.second;
      }
      const Value picked = gather(
          x, constant(*x.graph(), Tensor::from_vector(positions, Shape{out}), str("taps_", t)),
          axis);
      const bool unit =
          std::all_of(weights.begin(), weights.end(), [](double v) { return v == 1; });
      const Value term =
          unit ? picked
               : picked * constant_like(x, weights, Shape(trailing), str("tap_weights_", t));
      y = y.defined() ? y + term : term;
    }
    return y;
  }
  if (axis + 1 == s.rank() || rest >= kBatchedRest) {
    // [out, in] x [..., in, rest]: one product per leading entry (just one for the last axis,
    // x [..., in] times the weights' transpose).
    if (axis + 1 == s.rank())
      return matmul(
          x, constant_like(x, dense(w, in, out, true), Shape{in, out}, str("resize_", axis)));
    const Value m =
        constant_like(x, dense(w, in, out, false), Shape{out, in}, str("resize_", axis));
    return reshape(matmul(m, reshape(x, shaped({in, rest}))), Shape(result_dims));
  }
  // A short rest would make many small products (one per leading entry): move the axis last
  // instead, resize it there in one product, and move it back.
  std::vector<int64_t> swap(static_cast<size_t>(s.rank()));
  for (int64_t d = 0; d < s.rank(); ++d) swap[static_cast<size_t>(d)] = d;
  std::swap(swap[static_cast<size_t>(axis)], swap.back());
  return transpose(resize_axis(transpose(x, swap), s.rank() - 1, out, options, scale_factor), swap);
}

}  // namespace

Value interpolate(const Value& x, const InterpolateOptions& options) {
  const Shape& s = x.shape();
  const int64_t spatial = s.rank() - 2;
  const char* mode = mode_name(options.mode);
  KILN_CHECK(spatial >= 1 && spatial <= 3 && is_floating(x.dtype()), GraphError, "[interpolate] ",
             x.name(), ": x must be floating [N, C, L], [N, C, H, W] or [N, C, D, H, W], got ",
             x.dtype(), " ", s);
  for (int64_t d = 1; d < s.rank(); ++d)
    KILN_CHECK(s[d] >= 1, GraphError, "[interpolate] ", x.name(),
               ": every dim but the batch must be known and positive, got ", s);
  const bool by_size = !options.size.empty(), by_scale = !options.scale_factor.empty();
  KILN_CHECK(by_size != by_scale, GraphError, "[interpolate] ", x.name(),
             ": give either size or scale_factor, not ", by_size ? "both" : "neither");
  auto count_ok = [&](size_t n) { return n == 1 || n == static_cast<size_t>(spatial); };
  KILN_CHECK(count_ok(by_size ? options.size.size() : options.scale_factor.size()), GraphError,
             "[interpolate] ", x.name(), ": ", by_size ? "size" : "scale_factor", " needs 1 or ",
             spatial, " values for x ", s);
  KILN_CHECK(!options.align_corners || options.mode == InterpolateMode::linear ||
                 options.mode == InterpolateMode::cubic,
             GraphError, "[interpolate] ", x.name(),
             ": align_corners is for linear and cubic, not ", mode);
  KILN_CHECK(!options.antialias || options.mode == InterpolateMode::linear ||
                 options.mode == InterpolateMode::cubic,
             GraphError, "[interpolate] ", x.name(), ": antialias is for linear and cubic, not ",
             mode);
  Value y = x;
  for (int64_t d = 0; d < spatial; ++d) {
    const int64_t axis = 2 + d, in = s[axis];
    const size_t k = static_cast<size_t>(d);
    double factor = 0;
    int64_t out;
    if (by_size) {
      out = options.size.size() == 1 ? options.size[0] : options.size[k];
    } else {
      factor = options.scale_factor.size() == 1 ? options.scale_factor[0] : options.scale_factor[k];
      KILN_CHECK(std::isfinite(factor) && factor > 0, GraphError, "[interpolate] ", x.name(),
                 ": scale_factor ", factor, " must be positive");
      out = static_cast<int64_t>(std::floor(static_cast<double>(in) * factor));
    }
    KILN_CHECK(out >= 1 && out <= (int64_t{1} << 24), GraphError, "[interpolate] ", x.name(),
               ": output size ", out, " along dim ", axis, " must be in [1, 2^24]");
    y = resize_axis(y, axis, out, options, factor);
  }
  return y;
}

}  // namespace kiln
