// rotary: the rotary position embedding of x [B, T, H, D] as one op (the composition it
// replaces, of iota, cos, sin, split, four products and a concat, cost 5 ms of a LLaMA-style
// block's 65 ms training step on this CPU). Inputs x, frequencies [D/2] (f32) and an optional
// integer scalar start; row t of x sits at position p = start + t, and feature pair c, (a, b) =
// (x[c], x[c + D/2]) or with `interleaved` (x[2c], x[2c + 1]), turns by w = p f[c]:
//   (a, b) -> (a cos w - b sin w, b cos w + a sin w)
// The rotation is orthogonal, so the gradient turns dy back by -w: the same op with `inverse`.
// Angles are f32 as the composition's were: p = float(t) + float(start), then w = p f[c] (one f32
// rounding each), cos and sin in f32; the products are in f32 for 16-bit x (one rounding of the
// result) and f64 for f64.
#include <algorithm>
#include <cmath>
#include <limits>
#include <string>
#include <vector>

#include "kiln/framework/gradient.h"
#include "kiln/framework/kernel.h"
#include "kiln/ops/array.h"
#include "kiln/ops/dtypes.h"
#include "kiln/ops/math.h"
#include "kiln/ops/nn.h"

namespace kiln {
namespace ops {
namespace {

std::vector<TensorType> infer_rotary(const InferContext& ctx) {
  ctx.expect_dtype(0, {f32, f64, f16, bf16});
  const Shape& x = ctx.shape(0);
  if (x.rank() != 4) ctx.fail("x must be [batch, length, heads, depth], got ", x);
  if (x[3] >= 0 && x[3] % 2 != 0) ctx.fail("the depth of x ", x, " must be even");
  ctx.expect_dtype(1, {f32});
  const Shape& f = ctx.shape(1);
  if (f.rank() != 1 || (x[3] >= 0 && f[0] >= 0 && f[0] * 2 != x[3]))
    ctx.fail("frequencies ", f, " must be [depth / 2] for x ", x);
  if (ctx.num_inputs() > 3) ctx.fail("takes at most one start");
  if (ctx.num_inputs() == 3) {
    ctx.expect_dtype(2, {i32, i64});
    const Shape& s = ctx.shape(2);
    if (!(s.rank() == 0 || (s.rank() == 1 && s[0] == 1)))
      ctx.fail("start must be an integer scalar (shape [] or [1]), got ", s);
  }
  return {ctx.input(0)};
}

template <typename T>
void rotary_typed(KernelContext& ctx) {
  const Tensor& x = ctx.input(0);
  const Shape& s = x.shape();
  const int64_t length = s[1], rows_per_position = s[2], depth = s[3], pairs = depth / 2;
  KILN_CHECK(ctx.input(1).numel() == pairs, Error, ctx.where(), ": ", ctx.input(1).numel(),
             " frequencies for a depth of ", depth);
  int64_t start = 0;
  if (ctx.num_inputs() > 2) {
    const Tensor& at = ctx.input(2);
    start = at.dtype() == i32 ? int64_t{at.data<int32_t>()[0]} : at.data<int64_t>()[0];
  }
  const bool interleaved = ctx.attr<bool>("interleaved");
  const float direction = ctx.attr<bool>("inverse") ? -1.0f : 1.0f;
  // cos w and sin w for every (t, c), once per call: [T, D/2] each.
  const float* frequencies = ctx.input(1).data<float>();
  std::vector<float> cos_w(static_cast<size_t>(length * pairs)),
      sin_w(static_cast<size_t>(length * pairs));
  for (int64_t t = 0; t < length; ++t) {
    const float p = static_cast<float>(t) + static_cast<float>(start);
    for (int64_t c = 0; c < pairs; ++c) {
      const float w = p * frequencies[c];
      cos_w[static_cast<size_t>(t * pairs + c)] = std::cos(w);
      sin_w[static_cast<size_t>(t * pairs + c)] = direction * std::sin(w);
    }
  }
  const T* in = x.data<T>();
  T* out = ctx.output(0).data<T>();
  // Element offsets of pair c's two features within a row, and from one pair to the next.
  const int64_t second = interleaved ? 1 : pairs, step = interleaved ? 2 : 1;
  const int64_t rows = s[0] * length * rows_per_position;
  ctx.parallel_for(rows, depth * 8, [&](int64_t r0, int64_t r1) {
    for (int64_t r = r0; r < r1; ++r) {
      const int64_t t = r / rows_per_position % length;
      const float* cr = cos_w.data() + t * pairs;
      const float* sr = sin_w.data() + t * pairs;
      const T* a = in + r * depth;
      T* y = out + r * depth;
      for (int64_t c = 0; c < pairs; ++c) {
        const T u = a[c * step], v = a[c * step + second];
        const T cw = static_cast<T>(cr[c]), sw = static_cast<T>(sr[c]);
        y[c * step] = u * cw - v * sw;
        y[c * step + second] = v * cw + u * sw;
      }
    }
  });
}

void rotary_cpu(KernelContext& ctx) {
  dispatch_float(ctx.input(0).dtype(), [&](auto tag) { rotary_typed<decltype(tag)>(ctx); });
}

KILN_OP(rotary)
    .input("x")
    .input("frequencies")
    .variadic_input("start", 0)
    .attr("interleaved", false)
    .attr("inverse", false)
    .infer(infer_rotary)
    .kernel(DeviceKind::cpu, rotary_cpu, {f32, f64})
    // The rotation's transpose is its inverse: dx = dy turned back. No gradient reaches the
    // frequencies or the start.
    .grad([](GradContext& c) -> GradList {
      std::vector<Value> inputs{c.grad_output(), c.input(1)};
      if (c.num_inputs() > 2) inputs.push_back(c.input(2));
      Value dx = c.graph().add(
          "rotary", inputs,
          {{"interleaved", c.attr<bool>("interleaved")}, {"inverse", !c.attr<bool>("inverse")}});
      GradList out{dx, Value()};
      if (c.num_inputs() > 2) out.push_back(Value());
      return out;
    });

}  // namespace
}  // namespace ops

namespace {

constexpr double kPi = 3.14159265358979323846;

// Pair c of a depth-D head turns base^(-2c / D) radians per position: its wavelength is
// 2 pi base^(2c / D) positions, so over `length` positions it turns length / wavelength times.
// The (fractional) pair index that turns `rotations` times over `length`, solving
// length / (2 pi base^(2c / D)) = rotations for c.
double pair_turning(double rotations, double length, int64_t depth, double base) {
  return static_cast<double>(depth) * std::log(length / (rotations * 2 * kPi)) /
         (2 * std::log(base));
}

void check_scaling(const std::string& where, int64_t depth, const RotaryOptions& options) {
  const RotaryScaling& s = options.scaling;
  KILN_CHECK(depth > 0 && depth % 2 == 0, GraphError, where, ": depth ", depth,
             " must be positive and even");
  KILN_CHECK(options.base > 0, GraphError, where, ": base ", options.base, " must be positive");
  if (s.kind == RotaryScaling::Kind::none) return;
  KILN_CHECK(s.factor >= 1, GraphError, where, ": scaling factor ", s.factor,
             " must be at least 1");
  if (s.kind == RotaryScaling::Kind::linear) return;
  KILN_CHECK(s.original_length > 0, GraphError, where, ": original_length ", s.original_length,
             " must be positive for llama3, yarn, dynamic and longrope scaling");
  KILN_CHECK(s.attention_factor >= 0, GraphError, where, ": attention_factor ", s.attention_factor,
             " must be positive (or 0 for the default)");
  if (s.kind == RotaryScaling::Kind::dynamic)
    KILN_CHECK(depth > 2, GraphError, where, ": dynamic scaling needs a depth above 2, got ",
               depth);
  if (s.kind == RotaryScaling::Kind::longrope) {
    const auto pairs = static_cast<size_t>(depth / 2);
    KILN_CHECK(s.short_factors.size() == pairs && s.long_factors.size() == pairs, GraphError, where,
               ": longrope needs ", pairs, " short and long factors (depth ", depth, " / 2), got ",
               s.short_factors.size(), " and ", s.long_factors.size());
    for (const std::vector<double>* factors : {&s.short_factors, &s.long_factors})
      for (double f : *factors)
        KILN_CHECK(std::isfinite(f) && f > 0, GraphError, where,
                   ": longrope factors must be positive and finite, got ", f);
  }
  if (s.kind == RotaryScaling::Kind::llama3)
    KILN_CHECK(0 < s.low_frequency_factor && s.low_frequency_factor < s.high_frequency_factor,
               GraphError, where, ": llama3 needs 0 < low_frequency_factor (",
               s.low_frequency_factor, ") < high_frequency_factor (", s.high_frequency_factor, ")");
  if (s.kind == RotaryScaling::Kind::yarn) {
    KILN_CHECK(options.base > 1, GraphError, where, ": yarn needs a base above 1, got ",
               options.base);
    KILN_CHECK(0 < s.beta_slow && s.beta_slow < s.beta_fast, GraphError, where,
               ": yarn needs 0 < beta_slow (", s.beta_slow, ") < beta_fast (", s.beta_fast, ")");
  }
}

// Dynamic NTK at sequence length L stretches pair c's frequency base^(-2c/D) by ratio^(-2c/(D-2)),
// ratio = factor L / original - (factor - 1), at least 1 (the base raised by ratio^(D/(D-2))).
double dynamic_ratio(const RotaryScaling& s, double length) {
  return std::max(1.0, s.factor * length / static_cast<double>(s.original_length) - (s.factor - 1));
}
double dynamic_exponent(int64_t pair, int64_t depth) {
  return -2.0 * static_cast<double>(pair) / static_cast<double>(depth - 2);
}

// rotary_frequencies, its errors starting with `where`.
std::vector<float> frequencies_checked(const std::string& where, int64_t depth,
                                       const RotaryOptions& options, int64_t sequence_length) {
  check_scaling(where, depth, options);
  const RotaryScaling& s = options.scaling;
  const int64_t pairs = depth / 2;
  const double length = static_cast<double>(s.original_length);
  // yarn's blend runs over pair indices [low, high]: the pairs turning beta_fast and beta_slow
  // times over the original length, widened to whole pairs and kept inside the head.
  double low = 0, high = 0;
  if (s.kind == RotaryScaling::Kind::yarn) {
    low = std::max(0.0, std::floor(pair_turning(s.beta_fast, length, depth, options.base)));
    high = std::min(static_cast<double>(depth - 1),
                    std::ceil(pair_turning(s.beta_slow, length, depth, options.base)));
    if (high <= low) high = low + 1e-3;  // a step rather than a division by zero
  }
  std::vector<float> frequencies(static_cast<size_t>(pairs));
  for (int64_t c = 0; c < pairs; ++c) {
    const double f =
        std::pow(options.base, -2.0 * static_cast<double>(c) / static_cast<double>(depth));
    const double stretched = f / s.factor;
    // The weight of the unscaled frequency: 1 keeps f, 0 divides it by the factor.
    double keep = 1;
    switch (s.kind) {
      case RotaryScaling::Kind::none:
        break;
      case RotaryScaling::Kind::linear:
        keep = 0;
        break;
      case RotaryScaling::Kind::llama3: {
        // original_length / wavelength is how many turns the pair makes over the original
        // context; below low_frequency_factor turns it is stretched, above high kept.
        const double turns = length * f / (2 * kPi);
        keep = std::clamp(
            (turns - s.low_frequency_factor) / (s.high_frequency_factor - s.low_frequency_factor),
            0.0, 1.0);
        break;
      }
      case RotaryScaling::Kind::yarn:
        keep = 1 - std::clamp((static_cast<double>(c) - low) / (high - low), 0.0, 1.0);
        break;
      case RotaryScaling::Kind::dynamic: {
        // As the graph computes it (rotary_embedding), so both give the same frequencies.
        const double ratio = dynamic_ratio(s, static_cast<double>(sequence_length));
        frequencies[static_cast<size_t>(c)] =
            static_cast<float>(f * std::exp(std::log(ratio) * dynamic_exponent(c, depth)));
        continue;
      }
      case RotaryScaling::Kind::longrope: {
        const bool long_context = sequence_length > s.original_length;
        frequencies[static_cast<size_t>(c)] = static_cast<float>(
            f / (long_context ? s.long_factors : s.short_factors)[static_cast<size_t>(c)]);
        continue;
      }
    }
    frequencies[static_cast<size_t>(c)] = static_cast<float>(keep * f + (1 - keep) * stretched);
  }
  return frequencies;
}

}  // namespace

std::vector<float> rotary_frequencies(int64_t depth, const RotaryOptions& options, int64_t length) {
  return frequencies_checked("[rotary_frequencies]", depth, options, length);
}

double rotary_attention_factor(const RotaryOptions& options) {
  const RotaryScaling& s = options.scaling;
  if (s.kind != RotaryScaling::Kind::yarn && s.kind != RotaryScaling::Kind::longrope) return 1;
  if (s.attention_factor > 0) return s.attention_factor;
  if (s.factor <= 1) return 1;
  if (s.kind == RotaryScaling::Kind::yarn) return 0.1 * std::log(s.factor) + 1;
  return std::sqrt(1 + std::log(s.factor) / std::log(static_cast<double>(s.original_length)));
}

namespace {

// The frequencies of dynamic or longrope scaling at the run-time sequence length start + T, as
// a graph value [turned / 2] f32 (rotary_frequencies computes the same on the host).
Value frequencies_in_graph(const Value& x, const Value& start, int64_t turned,
                           const RotaryOptions& options) {
  Graph& graph = *x.graph();
  const RotaryScaling& s = options.scaling;
  constexpr int64_t kAll = std::numeric_limits<int64_t>::max();
  // T, known or counted from x: a [1, T, 1, 1] slice's elements.
  Value length = x.shape()[1] >= 0 ? graph.scalar(static_cast<double>(x.shape()[1]), f64)
                                   : numel(slice(x, {0, 0, 0, 0}, {1, kAll, 1, 1}), f64);
  if (start.defined()) length = length + reshape(cast(start, f64), Shape{});
  const int64_t pairs = turned / 2;
  if (s.kind == RotaryScaling::Kind::longrope) {
    auto table = [&](int64_t at) {
      return constant(graph, Tensor::from_vector(rotary_frequencies(turned, options, at), {pairs}));
    };
    return where(greater(length, static_cast<double>(s.original_length)),
                 table(s.original_length + 1), table(0));
  }
  // dynamic: f_c ratio^(-2c / (D - 2)), in f64, rounded once to f32.
  std::vector<double> unscaled(static_cast<size_t>(pairs)), exponents(unscaled.size());
  for (int64_t c = 0; c < pairs; ++c) {
    unscaled[static_cast<size_t>(c)] =
        std::pow(options.base, -2.0 * static_cast<double>(c) / static_cast<double>(turned));
    exponents[static_cast<size_t>(c)] = dynamic_exponent(c, turned);
  }
  const Value ratio =
      maximum(length * (s.factor / static_cast<double>(s.original_length)) - (s.factor - 1), 1.0);
  return cast(constant(graph, Tensor::from_vector(unscaled, {pairs})) *
                  exp(log(ratio) * constant(graph, Tensor::from_vector(exponents, {pairs}))),
              f32);
}

}  // namespace

Value rotary_embedding(const Value& x, const Value& start, const RotaryOptions& options) {
  const Shape& shape = x.shape();
  const int64_t turned = options.dims > 0 ? options.dims : shape.rank() == 4 ? shape[3] : 0;
  KILN_CHECK(shape.rank() == 4 && shape[3] > 0 && turned % 2 == 0, GraphError,
             "[rotary_embedding] ", x.name(),
             ": expects x [batch, length, heads, depth] with the depth known and even, got ", shape,
             options.dims > 0 ? str(" (turning its first ", options.dims, ")") : "");
  KILN_CHECK(options.dims >= 0 && turned <= shape[3], GraphError, "[rotary_embedding] ", x.name(),
             ": dims ", options.dims, " must be in [0, ", shape[3], "] (the depth of x ", shape,
             ")");
  KILN_CHECK(is_floating(x.dtype()), GraphError, "[rotary_embedding] ", x.name(),
             ": x must be floating point, got ", x.dtype());
  Graph& graph = *x.graph();
  const bool by_length = options.scaling.kind == RotaryScaling::Kind::dynamic ||
                         options.scaling.kind == RotaryScaling::Kind::longrope;
  const std::vector<float> frequencies = frequencies_checked(
      str("[rotary_embedding] ", x.name()), turned, options, std::max<int64_t>(shape[1], 0));
  if (start.defined()) {
    KILN_CHECK(start.graph() == x.graph(), GraphError, "[rotary_embedding] ", x.name(), ": start ",
               start.name(), " belongs to another graph");
    KILN_CHECK(start.dtype() == i32 || start.dtype() == i64, GraphError, "[rotary_embedding] ",
               x.name(), ": start must be an i32 or i64 scalar, got ", start.dtype());
    KILN_CHECK(start.shape().rank() == 0 || start.shape() == Shape{1}, GraphError,
               "[rotary_embedding] ", x.name(), ": start must be a scalar (rank 0 or [1]), got ",
               start.shape());
  }
  // Partial: the turned features are a slice of the head, and the rest join them after.
  const bool partial = turned < shape[3];
  constexpr int64_t kAll = std::numeric_limits<int64_t>::max();
  // Scalings that follow the sequence length compute their frequencies in the graph unless the
  // length is known now.
  const Value table = by_length && (start.defined() || shape[1] < 0)
                          ? frequencies_in_graph(x, start, turned, options)
                          : constant(graph, Tensor::from_vector(frequencies, {turned / 2}));
  std::vector<Value> inputs{partial ? slice(x, {0, 0, 0, 0}, {kAll, kAll, kAll, turned}) : x,
                            table};
  if (start.defined()) inputs.push_back(start);
  Value out =
      graph.add("rotary", inputs, {{"interleaved", options.interleaved}, {"inverse", false}});
  const double scale = rotary_attention_factor(options);
  if (scale != 1) out = out * scale;
  if (!partial) return out;
  return concat({out, slice(x, {0, 0, 0, turned}, {kAll, kAll, kAll, kAll})}, 3);
}

}  // namespace kiln
