// The parts of a LLaMA-style model: rotary_embedding and glu against their formulas and finite
// differences; grouped-query attention (MultiHeadAttention with kv_heads) against full attention
// whose key and value weights repeat each group's, in values and in gradients; and the block's
// options (RMS norm, SwiGLU, no biases) in its variables; ALiBi's slopes and bias.
#include <cmath>

#include "autograd/gradcheck.h"
#include "test_util.h"

namespace kiln {
namespace {

using testing::check_gradients;
using testing::expect_error;
using testing::r64;

// rotary_embedding of x [B, T, H, D] at positions start.., element by element: pair c of
// (x[c], x[c + D/2]) (or (x[2c], x[2c + 1]) interleaved) turned by (start + t) base^(-2c / D),
// the frequency and the angle rounded to f32 as the function computes them.
std::vector<double> rotary_reference(const Tensor& x, int64_t start, double base,
                                     bool interleaved) {
  const Shape& s = x.shape();
  const int64_t pairs = s[3] / 2;
  std::vector<double> out(static_cast<size_t>(x.numel()));
  for (int64_t b = 0; b < s[0]; ++b)
    for (int64_t t = 0; t < s[1]; ++t)
      for (int64_t h = 0; h < s[2]; ++h)
        for (int64_t c = 0; c < pairs; ++c) {
          const float frequency = static_cast<float>(std::pow(base, -2.0 * c / s[3]));
          const float angle = static_cast<float>(start + t) * frequency;
          const double cos_w = std::cos(angle), sin_w = std::sin(angle);
          const int64_t row = ((b * s[1] + t) * s[2] + h) * s[3];
          const int64_t i = row + (interleaved ? 2 * c : c);
          const int64_t j = row + (interleaved ? 2 * c + 1 : c + pairs);
          const double a = x.element(i), bb = x.element(j);
          out[static_cast<size_t>(i)] = a * cos_w - bb * sin_w;
          out[static_cast<size_t>(j)] = bb * cos_w + a * sin_w;
        }
  return out;
}

TEST(RotaryEmbedding, TurnsEachPairByPositionTimesItsFrequency) {
  for (bool interleaved : {false, true})
    for (int64_t start : {int64_t{-1}, int64_t{0}, int64_t{37}}) {
      SCOPED_TRACE(str("interleaved ", interleaved, ", start ", start));
      Graph g;
      Value x = g.placeholder("x", f64, {2, 5, 3, 8});
      Value at = g.placeholder("start", i32, {1});
      const RotaryOptions options{.base = 500, .interleaved = interleaved};
      Value y = start < 0 ? rotary_embedding(x, {}, options) : rotary_embedding(x, at, options);
      const Tensor in = r64({2, 5, 3, 8}, -2, 2, 3);
      FeedList feeds{{x, in}};
      if (start >= 0) feeds.emplace_back(at, Tensor::from_vector<int32_t>({int32_t(start)}));
      const std::vector<double> got = Session(g).run(feeds, {y})[0].to_vector<double>();
      const std::vector<double> want =
          rotary_reference(in, std::max<int64_t>(start, 0), 500, interleaved);
      ASSERT_EQ(got.size(), want.size());
      for (size_t i = 0; i < got.size(); ++i) EXPECT_NEAR(got[i], want[i], 2e-6) << "at " << i;
    }
}

// A query and a key turned for positions p and p' have the dot product of the pair turned for
// p - p' and 0: attention sees relative positions only.
TEST(RotaryEmbedding, DotProductsDependOnTheDistanceOnly) {
  Graph g;
  Value q = g.placeholder("q", f64, {1, 1, 1, 16}), k = g.placeholder("k", f64, {1, 1, 1, 16});
  Value p = g.placeholder("p", i64, {}), p2 = g.placeholder("p2", i64, {});
  Value zero = g.placeholder("zero", i64, {});
  Value dot_at = sum(rotary_embedding(q, p) * rotary_embedding(k, p2));
  Value dot_shifted = sum(rotary_embedding(q, p - p2) * rotary_embedding(k, zero));
  Session s(g);
  const Tensor qv = r64({1, 1, 1, 16}, -1, 1, 4), kv = r64({1, 1, 1, 16}, -1, 1, 5);
  const auto out = s.run({{q, qv},
                          {k, kv},
                          {p, Tensor::scalar<int64_t>(9)},
                          {p2, Tensor::scalar<int64_t>(4)},
                          {zero, Tensor::scalar<int64_t>(0)}},
                         {dot_at, dot_shifted});
  EXPECT_NEAR(out[0].element(0), out[1].element(0), 1e-5);
  double plain = 0;
  for (int64_t i = 0; i < 16; ++i) plain += qv.element(i) * kv.element(i);
  EXPECT_GT(std::abs(out[0].element(0) - plain), 1e-3);  // the positions did turn them
}

TEST(RotaryEmbedding, GradientsMatchFiniteDifferences) {
  for (bool interleaved : {false, true})
    check_gradients(
        [&](Graph& g, const std::vector<Value>& v) {
          Value start = g.constant(Tensor::scalar<int64_t>(3));
          return rotary_embedding(v[0], start, {.interleaved = interleaved});
        },
        {r64({2, 4, 2, 6}, -2, 2, 6)}, str("rotary_embedding interleaved ", interleaved));
}

TEST(RotaryEmbedding, ErrorsNameTheValueAndTheShape) {
  Graph g;
  Value x = g.placeholder("x", f32, {2, 5, 3, 8});
  expect_error<GraphError>(
      [&] {
        rotary_embedding(g.placeholder("flat", f32, {2, 5, 24}));
      },
      {"[rotary_embedding] flat", "[batch, length, heads, depth]", "[2, 5, 24]"});
  expect_error<GraphError>(
      [&] {
        rotary_embedding(g.placeholder("odd", f32, {2, 5, 3, 7}));
      },
      {"[rotary_embedding] odd", "even", "[2, 5, 3, 7]"});
  expect_error<GraphError>(
      [&] {
        rotary_embedding(g.placeholder("unknown", f32, {2, 5, 3, -1}));
      },
      {"[rotary_embedding] unknown", "depth known and even"});
  expect_error<GraphError>([&] { rotary_embedding(x, g.placeholder("p", f32, {})); },
                           {"[rotary_embedding] x", "start must be an i32 or i64"});
  expect_error<GraphError>([&] { rotary_embedding(x, g.placeholder("p2", i64, {2})); },
                           {"[rotary_embedding] x", "scalar", "[2]"});
  expect_error<GraphError>([&] { rotary_embedding(x, {}, {.base = 0}); },
                           {"[rotary_embedding] x", "base 0"});
  expect_error<GraphError>(
      [&] {
        rotary_embedding(g.placeholder("ids", i32, {2, 5, 3, 8}));
      },
      {"[rotary_embedding] ids", "floating point"});
}

// Hugging Face transformers 5.25's ROPE_INIT_FUNCTIONS on the same configurations (its inverse
// frequencies, printed to 9 digits): an implementation written apart from this one.
TEST(RotaryScaling, FrequenciesMatchHuggingFacesRopeParameters) {
  struct Case {
    const char* name;
    int64_t depth;
    RotaryOptions options;
    std::vector<double> want;
    double attention_factor;
  };
  using Kind = RotaryScaling::Kind;
  const std::vector<Case> cases{
      {"llama3 (LLaMA 3.1's: head 64 of theta 5e5, factor 8 over 8192)",
       64,
       {.base = 500000, .scaling = {.kind = Kind::llama3, .factor = 8, .original_length = 8192}},
       {1,
        0.663601279,
        0.440366626,
        0.292227834,
        0.193922758,
        0.128687382,
        0.0853971019,
        0.0566696189,
        0.0376060307,
        0.0249554086,
        0.0165604409,
        0.0109895291,
        0.00729266508,
        0.00483942125,
        0.00321144611,
        0.00137189368,
        0.000524846022,
        0.000178507791,
        7.78465546e-05,
        5.16590699e-05,
        3.42810235e-05,
        2.2748929e-05,
        1.50962178e-05,
        1.00178686e-05,
        6.64786967e-06,
        4.41153452e-06,
        2.92749974e-06,
        1.94269251e-06,
        1.28917316e-06,
        8.55496921e-07,
        5.6770881e-07,
        3.7673226e-07},
       1},
      {"yarn (head 64 of theta 1e4, factor 4 over 4096)",
       64,
       {.scaling = {.kind = Kind::yarn, .factor = 4, .original_length = 4096}},
       {1,
        0.749894202,
        0.562341332,
        0.421696514,
        0.316227764,
        0.237137362,
        0.177827939,
        0.133352146,
        0.100000001,
        0.0749894157,
        0.0562341288,
        0.039736785,
        0.0279739965,
        0.0196094345,
        0.0136790723,
        0.00948851742,
        0.00653846189,
        0.00447052345,
        0.00302799162,
        0.0020273868,
        0.00133788679,
        0.000866463524,
        0.000547162897,
        0.000333380362,
        0.000250000012,
        0.000187473546,
        0.000140585325,
        0.000105424122,
        7.90569466e-05,
        5.92843462e-05,
        4.44569851e-05,
        3.33380376e-05},
       1.138629436111989},
      {"linear (head 16 of theta 1e4, factor 4)",
       16,
       {.scaling = {.kind = Kind::linear, .factor = 4}},
       {0.25, 0.079056941, 0.0250000004, 0.00790569466, 0.00249999994, 0.000790569466,
        0.000250000012, 7.90569466e-05},
       1},
  };
  for (const Case& c : cases) {
    SCOPED_TRACE(c.name);
    const std::vector<float> got = rotary_frequencies(c.depth, c.options);
    ASSERT_EQ(got.size(), c.want.size());
    for (size_t i = 0; i < got.size(); ++i)  // f32 powers of the base differ by an ulp or two
      EXPECT_NEAR(got[i], c.want[i], 1e-6 * c.want[i]) << "pair " << i;
    EXPECT_NEAR(rotary_attention_factor(c.options), c.attention_factor, 1e-12);
  }
  // Unscaled: base^(-2c / D) itself.
  const std::vector<float> plain = rotary_frequencies(8, {.base = 100});
  for (size_t c = 0; c < plain.size(); ++c)
    EXPECT_FLOAT_EQ(plain[c], static_cast<float>(std::pow(100.0, -2.0 * double(c) / 8)));
}

// Position interpolation divides every frequency by the factor: position 4 p then turns as p
// did unscaled (exactly: the factor is a power of two).
TEST(RotaryScaling, LinearTurnsPositionFactorTimesPAsUnscaledTurnsP) {
  Graph g;
  Value x = g.placeholder("x", f64, {1, 1, 2, 8});
  Value p = g.placeholder("p", i64, {});
  Value scaled_p = g.placeholder("scaled_p", i64, {});
  RotaryOptions stretched{.scaling = {.kind = RotaryScaling::Kind::linear, .factor = 4}};
  Value scaled = rotary_embedding(x, scaled_p, stretched);
  Value plain = rotary_embedding(x, p);
  const Tensor in = r64({1, 1, 2, 8}, -1, 1, 11);
  const auto out = Session(g).run(
      {{x, in}, {p, Tensor::scalar<int64_t>(7)}, {scaled_p, Tensor::scalar<int64_t>(28)}},
      {scaled, plain});
  const std::vector<double> a = out[0].to_vector<double>(), b = out[1].to_vector<double>();
  for (size_t i = 0; i < a.size(); ++i) EXPECT_NEAR(a[i], b[i], 1e-12) << "at " << i;
  EXPECT_GT(std::abs(a[0] - in.element(0)), 1e-3);  // and position 7 did turn them
}

// YaRN multiplies the turned features by its attention factor: each pair's length grows by the
// factor (0.1 ln 4 + 1 by default, or the one given); the
// gradient carries the factor too.
TEST(RotaryScaling, YarnScalesTheTurnedPairsByItsAttentionFactor) {
  for (double given : {0.0, 1.5}) {
    SCOPED_TRACE(str("attention_factor ", given));
    const RotaryOptions options{.scaling = {.kind = RotaryScaling::Kind::yarn,
                                            .factor = 4,
                                            .original_length = 64,
                                            .attention_factor = given}};
    const double factor = given > 0 ? given : 0.1 * std::log(4.0) + 1;
    Graph g;
    Value x = g.placeholder("x", f64, {2, 3, 2, 8});
    Value y = rotary_embedding(x, {}, options);
    const Tensor in = r64({2, 3, 2, 8}, -2, 2, 12);
    const Tensor out = Session(g).run({{x, in}}, {y})[0];
    for (int64_t row = 0; row < 12; ++row)
      for (int64_t c = 0; c < 4; ++c) {
        const int64_t i = row * 8 + c, j = i + 4;
        EXPECT_NEAR(std::hypot(out.element(i), out.element(j)),
                    factor * std::hypot(in.element(i), in.element(j)), 1e-7);  // f32 cos, sin
      }
    check_gradients(
        [&](Graph& graph, const std::vector<Value>& v) {
          return rotary_embedding(v[0], graph.constant(Tensor::scalar<int64_t>(5)), options);
        },
        {r64({1, 3, 2, 8}, -2, 2, 13)}, "rotary_embedding yarn");
  }
}

TEST(RotaryScaling, ErrorsNameTheOptionAndItsValue) {
  using Kind = RotaryScaling::Kind;
  Graph g;
  Value x = g.placeholder("x", f32, {2, 5, 3, 8});
  expect_error<GraphError>([&] { rotary_frequencies(7); },
                           {"[rotary_frequencies]", "depth 7", "even"});
  expect_error<GraphError>(
      [&] { rotary_embedding(x, {}, {.scaling = {.kind = Kind::linear, .factor = 0.5}}); },
      {"[rotary_embedding] x", "scaling factor 0.5", "at least 1"});
  expect_error<GraphError>(
      [&] { rotary_frequencies(8, {.scaling = {.kind = Kind::llama3, .factor = 8}}); },
      {"[rotary_frequencies]", "original_length 0"});
  expect_error<GraphError>(
      [&] {
        rotary_frequencies(8, {.scaling = {.kind = Kind::llama3,
                                           .factor = 8,
                                           .original_length = 8192,
                                           .low_frequency_factor = 4,
                                           .high_frequency_factor = 4}});
      },
      {"[rotary_frequencies]", "low_frequency_factor (4) < high_frequency_factor (4)"});
  expect_error<GraphError>(
      [&] {
        rotary_frequencies(8, {.scaling = {.kind = Kind::yarn,
                                           .factor = 2,
                                           .original_length = 512,
                                           .beta_fast = 1,
                                           .beta_slow = 32}});
      },
      {"[rotary_frequencies]", "beta_slow (32) < beta_fast (1)"});
  expect_error<GraphError>(
      [&] {
        rotary_embedding(
            x, {},
            {.base = 1, .scaling = {.kind = Kind::yarn, .factor = 2, .original_length = 512}});
      },
      {"[rotary_embedding] x", "yarn needs a base above 1, got 1"});
  expect_error<GraphError>(
      [&] {
        rotary_frequencies(
            8,
            {.scaling = {
                 .kind = Kind::yarn, .factor = 2, .original_length = 512, .attention_factor = -1}});
      },
      {"[rotary_frequencies]", "attention_factor -1"});
}

// Partial rotary embedding (dims < depth): the first `dims` features of each head turn as a
// head of depth `dims` would (frequencies base^(-2c / dims)), the others pass unchanged; with
// YaRN's factor on the turned ones only.
TEST(RotaryEmbedding, PartialTurnsTheFirstDimsAndPassesTheRest) {
  constexpr int64_t kTurned = 6, kDepth = 10;
  for (bool interleaved : {false, true}) {
    SCOPED_TRACE(str("interleaved ", interleaved));
    Graph g;
    Value x = g.placeholder("x", f64, {2, 4, 3, kDepth});
    Value y = rotary_embedding(x, g.constant(Tensor::scalar<int64_t>(5)),
                               {.base = 300, .interleaved = interleaved, .dims = kTurned});
    const Tensor in = r64({2, 4, 3, kDepth}, -2, 2, 14);
    Tensor head = Tensor::empty(f64, {2, 4, 3, kTurned});
    for (int64_t row = 0; row < 24; ++row)
      for (int64_t c = 0; c < kTurned; ++c)
        head.data<double>()[row * kTurned + c] = in.element(row * kDepth + c);
    const std::vector<double> turned = rotary_reference(head, 5, 300, interleaved);
    const std::vector<double> got = Session(g).run({{x, in}}, {y})[0].to_vector<double>();
    for (int64_t row = 0; row < 24; ++row)
      for (int64_t c = 0; c < kDepth; ++c) {
        const double want = c < kTurned ? turned[static_cast<size_t>(row * kTurned + c)]
                                        : in.element(row * kDepth + c);
        EXPECT_NEAR(got[static_cast<size_t>(row * kDepth + c)], want, 2e-6)
            << "row " << row << " feature " << c;
      }
    check_gradients(
        [&](Graph&, const std::vector<Value>& v) {
          return rotary_embedding(
              v[0], {},
              {.interleaved = interleaved,
               .scaling = {.kind = RotaryScaling::Kind::yarn, .factor = 2, .original_length = 16},
               .dims = 4});
        },
        {r64({1, 3, 2, 7}, -2, 2, 15)}, "partial rotary_embedding");
  }
  Graph g;
  Value x = g.placeholder("x", f32, {2, 5, 3, 8});
  expect_error<GraphError>([&] { rotary_embedding(x, {}, {.dims = 3}); },
                           {"[rotary_embedding] x", "even", "turning its first 3"});
  expect_error<GraphError>([&] { rotary_embedding(x, {}, {.dims = 10}); },
                           {"[rotary_embedding] x", "dims 10 must be in [0, 8]"});
  expect_error<GraphError>(
      [&] { nn::MultiHeadAttention(g, "mha", 16, 2, {.rotary = RotaryOptions{.dims = 12}}); },
      {"[nn] MultiHeadAttention mha", "cannot turn 12 of the head depth 8"});
}

TEST(Glu, IsTheFirstHalfTimesTheSigmoidOfTheSecond) {
  Graph g;
  Value x = g.placeholder("x", f64, {3, 4, 5});
  const Tensor in = r64({3, 4, 5}, -3, 3, 7);
  const std::vector<double> got = Session(g).run({{x, in}}, {glu(x, 1)})[0].to_vector<double>();
  ASSERT_EQ(got.size(), 30u);
  for (int64_t a = 0; a < 3; ++a)
    for (int64_t i = 0; i < 2; ++i)
      for (int64_t c = 0; c < 5; ++c) {
        const double first = in.element((a * 4 + i) * 5 + c);
        const double second = in.element((a * 4 + i + 2) * 5 + c);
        EXPECT_NEAR(got[static_cast<size_t>((a * 2 + i) * 5 + c)], first / (1 + std::exp(-second)),
                    1e-12);
      }
  check_gradients([](Graph&, const std::vector<Value>& v) { return glu(v[0]); },
                  {r64({3, 6}, -3, 3, 8)}, "glu");
  expect_error<GraphError>([&] { glu(x); }, {"[glu] x", "dim 2", "even"});
  expect_error<GraphError>([&] { glu(x, 3); }, {"[glu] x", "axis 3"});
}

constexpr int64_t kDim = 16, kHeads = 4, kGroup = 2, kDepth = kDim / kHeads;

// Grouped-query attention is full attention whose key-value heads repeat each group's: a
// layer with kv_heads 2 against one with 4 heads whose k and v weights (and biases) hold
// column block h / 2 of the grouped layer's at block h. Outputs agree (the fused op in
// evaluation, and the math path with attention dropout in training), and so do the
// gradients: the input's, and the grouped weights' as the sums of their repeats'.
TEST(GroupedQueryAttention, IsFullAttentionWithRepeatedKeyValueHeads) {
  for (bool rotary : {false, true})
    for (bool math_path : {false, true}) {
      SCOPED_TRACE(str("rotary ", rotary, ", math path ", math_path));
      Graph g;
      nn::MultiHeadAttention::Options options{.causal = true, .dropout = math_path ? 1e-12 : 0};
      if (rotary) options.rotary = RotaryOptions{};
      nn::MultiHeadAttention full(g, "full", kDim, kHeads, options);
      options.kv_heads = kHeads / kGroup;
      nn::MultiHeadAttention grouped(g, "grouped", kDim, kHeads, options);
      EXPECT_EQ(grouped.key.weight.shape(), (Shape{kDim, kDim / kGroup}));
      if (!math_path) {
        full.eval();
        grouped.eval();
      }
      Value x = g.placeholder("x", f32, {2, 5, kDim});
      Value y_full = full(x), y_grouped = grouped(x);
      Value r = g.placeholder("r", f32, {2, 5, kDim});
      std::vector<Value> wrt_full =
          gradients(sum(y_full * r), {x, full.key.weight, full.value.bias});
      std::vector<Value> wrt_grouped =
          gradients(sum(y_grouped * r), {x, grouped.key.weight, grouped.value.bias});

      Session s(g);
      s.set_variable(full.query.weight, s.variable_value(grouped.query.weight));
      s.set_variable(full.query.bias, s.variable_value(grouped.query.bias));
      s.set_variable(full.output.weight, s.variable_value(grouped.output.weight));
      s.set_variable(full.output.bias, s.variable_value(grouped.output.bias));
      // Column c of head h of the full layer's k and v is column c of head h / group.
      auto repeat_columns = [](const Tensor& t) {
        const int64_t rows = t.shape().rank() == 2 ? t.shape()[0] : 1;
        const int64_t columns = t.shape()[t.shape().rank() - 1];
        std::vector<float> out(static_cast<size_t>(rows * kDim));
        for (int64_t i = 0; i < rows; ++i)
          for (int64_t h = 0; h < kHeads; ++h)
            for (int64_t c = 0; c < kDepth; ++c)
              out[static_cast<size_t>(i * kDim + h * kDepth + c)] =
                  t.data<float>()[i * columns + h / kGroup * kDepth + c];
        return t.shape().rank() == 2 ? Tensor::from_vector(out, {rows, kDim})
                                     : Tensor::from_vector(out, {kDim});
      };
      for (auto [to, from] : {std::pair{full.key.weight, grouped.key.weight},
                              std::pair{full.key.bias, grouped.key.bias},
                              std::pair{full.value.weight, grouped.value.weight},
                              std::pair{full.value.bias, grouped.value.bias}})
        s.set_variable(to, repeat_columns(s.variable_value(from)));

      const Tensor in = testing::random_tensor(f32, {2, 5, kDim}, -2, 2, 9);
      const Tensor weights = testing::random_tensor(f32, {2, 5, kDim}, -1, 1, 10);
      std::vector<Value> fetches{y_full, y_grouped};
      fetches.insert(fetches.end(), wrt_full.begin(), wrt_full.end());
      fetches.insert(fetches.end(), wrt_grouped.begin(), wrt_grouped.end());
      const auto out = s.run({{x, in}, {r, weights}}, fetches);
      auto expect_near = [](const std::vector<float>& got, const std::vector<float>& want,
                            const char* what) {
        ASSERT_EQ(got.size(), want.size()) << what;
        for (size_t i = 0; i < got.size(); ++i) EXPECT_NEAR(got[i], want[i], 2e-5) << what;
      };
      expect_near(out[1].to_vector<float>(), out[0].to_vector<float>(), "output");
      expect_near(out[5].to_vector<float>(), out[2].to_vector<float>(), "d x");
      // d grouped column (g, c) = sum over the group's heads h of d full column (h, c).
      auto summed = [](const Tensor& t) {
        const int64_t rows = t.shape().rank() == 2 ? t.shape()[0] : 1;
        const int64_t width = kDim / kGroup;
        std::vector<float> out(static_cast<size_t>(rows * width), 0.0f);
        for (int64_t i = 0; i < rows; ++i)
          for (int64_t h = 0; h < kHeads; ++h)
            for (int64_t c = 0; c < kDepth; ++c)
              out[static_cast<size_t>(i * width + h / kGroup * kDepth + c)] +=
                  t.data<float>()[i * kDim + h * kDepth + c];
        return out;
      };
      expect_near(out[6].to_vector<float>(), summed(out[3]), "d key weight");
      expect_near(out[7].to_vector<float>(), summed(out[4]), "d value bias");
    }
}

// A head depth other than dim / heads (Gemma 7B's, Qwen3's, T5's d_kv): q [dim -> heads *
// head_dim], k and v [dim -> kv_heads * head_dim], the output [heads * head_dim -> dim], and the
// layer is its composition written out (per-head norms, rotary, the fused op); the math path
// (attention dropout) and cached decoding agree with it.
TEST(GroupedQueryAttention, AHeadDepthOtherThanDimOverHeads) {
  constexpr int64_t kWidth = 8, kHeadCount = 3, kKvHeads = 1, kHeadDim = 6, kLength = 5;
  for (bool math_path : {false, true}) {
    SCOPED_TRACE(str("math path ", math_path));
    Graph g;
    nn::MultiHeadAttention attention(g, "attention", kWidth, kHeadCount,
                                     {.causal = true,
                                      .dropout = math_path ? 1e-12 : 0,
                                      .kv_heads = kKvHeads,
                                      .rotary = RotaryOptions{.base = 100},
                                      .qk_norm = true,
                                      .head_dim = kHeadDim});
    if (!math_path) attention.eval();
    EXPECT_EQ(attention.query.weight.shape(), (Shape{kWidth, kHeadCount * kHeadDim}));
    EXPECT_EQ(attention.key.weight.shape(), (Shape{kWidth, kKvHeads * kHeadDim}));
    EXPECT_EQ(attention.output.weight.shape(), (Shape{kHeadCount * kHeadDim, kWidth}));
    EXPECT_EQ(attention.query_norm->weight.shape(), (Shape{kHeadDim}));
    Value x = g.placeholder("x", f32, {2, kLength, kWidth});
    Value y = attention(x);
    // Written out from the layer's variables.
    auto heads = [&](const nn::Linear& linear, int64_t count) {
      return reshape(matmul(x, linear.weight) + linear.bias, {-1, kLength, count, kHeadDim});
    };
    auto normed = [](const Value& t, const Value& weight) { return rms_norm(t, 1, weight, 1e-6); };
    Value q =
        rotary_embedding(normed(heads(attention.query, kHeadCount), attention.query_norm->weight),
                         {}, {.base = 100});
    Value k = rotary_embedding(normed(heads(attention.key, kKvHeads), attention.key_norm->weight),
                               {}, {.base = 100});
    Value attended = scaled_dot_product_attention(q, k, heads(attention.value, kKvHeads),
                                                  {.causal = true, .layout = "bthd"});
    Value want =
        matmul(reshape(attended, {-1, kLength, kHeadCount * kHeadDim}), attention.output.weight) +
        attention.output.bias;
    Session s(g);
    const Tensor in = testing::random_tensor(f32, {2, kLength, kWidth}, -1, 1, 21);
    // Norm weights away from 1, so that a norm over the wrong dims shows.
    for (const nn::RMSNorm* norm : {attention.query_norm, attention.key_norm})
      s.set_variable(norm->weight, testing::random_tensor(f32, {kHeadDim}, 0.5, 1.5, 22));
    const auto out = s.run({{x, in}}, {y, want});
    for (int64_t i = 0; i < out[0].numel(); ++i)
      ASSERT_NEAR(out[0].element(i), out[1].element(i), 1e-5) << i;
    if (math_path) continue;
    // Cached decoding, one token at a time, gives the same rows.
    Graph gc;
    nn::MultiHeadAttention cached(gc, "attention", kWidth, kHeadCount,
                                  {.causal = true,
                                   .kv_heads = kKvHeads,
                                   .rotary = RotaryOptions{.base = 100},
                                   .qk_norm = true,
                                   .head_dim = kHeadDim});
    cached.eval();
    Value token = gc.placeholder("token", f32, {2, 1, kWidth});
    Value position = gc.placeholder("position", i64, {});
    const nn::KVCache cache = cached.cache_placeholders(kLength);
    EXPECT_EQ(cache.keys.shape(), (Shape{kUnknownDim, kLength, kKvHeads, kHeadDim}));
    const auto step = cached.attend_cached(token, cache, position);
    Session sc(gc);
    sc.set_variables(s.variable_values());
    Tensor keys = Tensor::zeros(f32, {2, kLength, kKvHeads, kHeadDim}), values = keys;
    for (int64_t t = 0; t < kLength; ++t) {
      Tensor one = Tensor::empty(f32, {2, 1, kWidth});
      for (int64_t b = 0; b < 2; ++b)
        std::copy_n(in.data<float>() + (b * kLength + t) * kWidth, kWidth,
                    one.data<float>() + b * kWidth);
      const auto got = sc.run({{token, one},
                               {position, Tensor::scalar<int64_t>(t)},
                               {cache.keys, keys},
                               {cache.values, values}},
                              {step.output, step.cache.keys, step.cache.values});
      keys = got[1];
      values = got[2];
      for (int64_t b = 0; b < 2; ++b)
        for (int64_t c = 0; c < kWidth; ++c)
          ASSERT_NEAR(got[0].element(b * kWidth + c),
                      out[0].element((b * kLength + t) * kWidth + c), 1e-5)
              << "position " << t;
    }
  }
  Graph g;
  expect_error<GraphError>(
      [&] { nn::MultiHeadAttention(g, "odd", 8, 3, {}); },
      {"[nn] MultiHeadAttention odd", "dim 8 does not split into 3 heads", "head_dim"});
  expect_error<GraphError>([&] { nn::MultiHeadAttention(g, "negative", 8, 2, {.head_dim = -4}); },
                           {"[nn] MultiHeadAttention negative", "head_dim -4 must be positive"});
}

// A LLaMA-style block: RMS norms (weights only), one Linear of 2 ffn_dim for SwiGLU's gate and
// up, no biases, k and v projections of kv_heads heads; its output is finite and its gradient
// reaches every variable.
TEST(GroupedQueryAttention, ALlamaStyleBlockHasItsVariablesAndTrains) {
  Graph g;
  nn::TransformerBlock block(g, "block", kDim, kHeads,
                             {.ffn_dim = 24,
                              .dropout = 0,
                              .activation = nn::TransformerBlock::Activation::swiglu,
                              .norm = nn::TransformerBlock::Norm::rms,
                              .bias = false,
                              .kv_heads = 1,
                              .rotary = RotaryOptions{}});
  std::vector<std::string> names;
  for (const Value& v : block.parameters()) names.push_back(str(v.name(), " ", v.shape()));
  EXPECT_EQ(names,
            (std::vector<std::string>{
                "block/norm1/weight [16]", "block/norm2/weight [16]",
                "block/attention/query/weight [16, 16]", "block/attention/key/weight [16, 4]",
                "block/attention/value/weight [16, 4]", "block/attention/output/weight [16, 16]",
                "block/ffn_in/weight [16, 48]", "block/ffn_out/weight [24, 16]"}));
  Value x = g.placeholder("x", f32, {2, 6, kDim});
  Value loss = sum(square(block(x)));
  std::vector<Value> grads = gradients(loss, block.parameters());
  Session s(g);
  const auto out = s.run({{x, testing::random_tensor(f32, {2, 6, kDim}, -1, 1, 12)}}, grads);
  for (size_t i = 0; i < out.size(); ++i) {
    double norm = 0;
    for (float v : out[i].to_vector<float>()) {
      ASSERT_TRUE(std::isfinite(v)) << names[i];
      norm += std::abs(v);
    }
    EXPECT_GT(norm, 0) << names[i];
  }
  expect_error<GraphError>([&] { nn::MultiHeadAttention(g, "bad", kDim, kHeads, {.kv_heads = 3}); },
                           {"[nn] MultiHeadAttention bad", "kv_heads 3", "divide the 4 heads"});
  expect_error<GraphError>(
      [&] { nn::MultiHeadAttention(g, "odd", 12, 4, {.rotary = RotaryOptions{}}); },
      {"[nn] MultiHeadAttention odd", "cannot turn 3 of the head depth 3"});
}

// qkv_bias: biases on the q, k and v projections whatever `bias` says of the others (Qwen2's).
TEST(GroupedQueryAttention, QkvBiasGivesTheInputProjectionsBiasesAlone) {
  Graph g;
  nn::TransformerBlock block(g, "block", kDim, kHeads,
                             {.ffn_dim = 8, .bias = false, .kv_heads = 2, .qkv_bias = true});
  std::vector<std::string> names;
  for (const Value& v : block.attention.parameters()) names.push_back(v.name());
  EXPECT_EQ(names,
            (std::vector<std::string>{"block/attention/query/weight", "block/attention/query/bias",
                                      "block/attention/key/weight", "block/attention/key/bias",
                                      "block/attention/value/weight", "block/attention/value/bias",
                                      "block/attention/output/weight"}));
  EXPECT_FALSE(block.ffn_in.bias.defined());
}

// A parallel block (GPT-NeoX's) adds the attention of norm1(x) and the FFN of norm2(x) to x,
// both from x: the same as the block's own layers called that way.
TEST(GroupedQueryAttention, AParallelBlockSumsAttentionAndFeedForwardOfX) {
  Graph g;
  nn::TransformerBlock block(
      g, "block", kDim, kHeads,
      {.ffn_dim = 12, .dropout = 0, .rotary = RotaryOptions{.dims = 2}, .parallel = true});
  Value x = g.placeholder("x", f32, {2, 3, kDim});
  Value y = block(x);
  Value want =
      x + block.attention(block.norm1(x)) + block.ffn_out(gelu(block.ffn_in(block.norm2(x))));
  const auto out =
      Session(g).run({{x, testing::random_tensor(f32, {2, 3, kDim}, -2, 2, 14)}}, {y, want});
  for (int64_t i = 0; i < out[0].numel(); ++i)
    EXPECT_NEAR(out[0].element(i), out[1].element(i), 1e-6) << i;
  expect_error<GraphError>(
      [&] {
        nn::TransformerBlock(g, "post", kDim, kHeads, {.norm_first = false, .parallel = true});
      },
      {"[nn] TransformerBlock post", "parallel block is pre-norm"});
  expect_error<GraphError>(
      [&] { nn::TransformerDecoderBlock(g, "decoder", kDim, kHeads, {.parallel = true}); },
      {"[nn] TransformerDecoderBlock decoder", "TransformerBlock's only"});
}

// Gemma 3's block: norms around both branches (post_norms), and its own attention scale; the
// same as the block's layers called that way, and a scale s the same as the default scale with
// the queries multiplied by s sqrt(depth).
TEST(GroupedQueryAttention, PostNormsAndAnAttentionScale) {
  Graph g;
  nn::TransformerBlock block(g, "block", kDim, kHeads,
                             {.ffn_dim = 12,
                              .dropout = 0,
                              .norm = nn::TransformerBlock::Norm::rms,
                              .attention_scale = 0.25,
                              .post_norms = true});
  ASSERT_NE(block.attention_output_norm, nullptr);
  ASSERT_NE(block.ffn_output_norm, nullptr);
  Value x = g.placeholder("x", f32, {2, 3, kDim});
  Value y = block(x);
  Value h = x + (*block.attention_output_norm)(block.attention(block.norm1(x)));
  Value want = h + (*block.ffn_output_norm)(block.ffn_out(gelu(block.ffn_in(block.norm2(h)))));
  // The attention alone, and a default-scaled one whose query projection carries the scale.
  nn::MultiHeadAttention plain(g, "plain", kDim, kHeads, {.causal = true});  // as the block
  Value attended = block.attention(x), rescaled = plain(x);
  Session s(g);
  s.initialize_variables();
  const double factor = 0.25 * std::sqrt(double(kDim / kHeads));
  for (const auto& [from, to] : std::initializer_list<std::pair<nn::Linear*, nn::Linear*>>{
           {&block.attention.query, &plain.query},
           {&block.attention.key, &plain.key},
           {&block.attention.value, &plain.value},
           {&block.attention.output, &plain.output}}) {
    Tensor w = s.variable_value(from->weight), b = s.variable_value(from->bias);
    if (from == &block.attention.query) {
      for (int64_t i = 0; i < w.numel(); ++i) w.data<float>()[i] *= static_cast<float>(factor);
      for (int64_t i = 0; i < b.numel(); ++i) b.data<float>()[i] *= static_cast<float>(factor);
    }
    s.set_variable(to->weight, w);
    s.set_variable(to->bias, b);
  }
  const auto out = s.run({{x, testing::random_tensor(f32, {2, 3, kDim}, -2, 2, 15)}},
                         {y, want, attended, rescaled});
  for (int64_t i = 0; i < out[0].numel(); ++i) {
    EXPECT_NEAR(out[0].element(i), out[1].element(i), 1e-6) << i;
    EXPECT_NEAR(out[2].element(i), out[3].element(i), 1e-5) << i;
  }
  expect_error<GraphError>(
      [&] {
        nn::TransformerBlock(g, "parallel", kDim, kHeads, {.parallel = true, .post_norms = true});
      },
      {"[nn] TransformerBlock parallel", "post_norms are for a pre-norm block"});
  expect_error<GraphError>(
      [&] { nn::MultiHeadAttention(g, "negative", kDim, kHeads, {.scale = -1}); },
      {"[nn] MultiHeadAttention negative", "scale -1"});
}

// OLMo 2's block: norms after each branch and none before (norm1 and norm2 identities without
// variables), x + attention_output_norm(attn(x)), then h + ffn_output_norm(ffn(h)); its q and k
// norms span each projection's heads (weights of heads * depth and kv_heads * depth), applied
// before the projection splits into heads.
TEST(GroupedQueryAttention, NormsAfterEachBranchOnlyAndQkNormsAcrossHeads) {
  Graph g;
  nn::TransformerBlock block(g, "block", kDim, kHeads,
                             {.ffn_dim = 12,
                              .dropout = 0,
                              .norm = nn::TransformerBlock::Norm::rms,
                              .kv_heads = kHeads / kGroup,
                              .qk_norm = true,
                              .post_norms = true,
                              .input_norms = false,
                              .qk_norm_across_heads = true});
  for (const Value& v : g.variables()) {
    EXPECT_EQ(v.name().find("norm1"), std::string::npos) << v.name();
    EXPECT_EQ(v.name().find("norm2"), std::string::npos) << v.name();
  }
  nn::MultiHeadAttention& attention = block.attention;
  EXPECT_EQ(attention.query_norm->weight.shape(), (Shape{kDim}));
  EXPECT_EQ(attention.key_norm->weight.shape(), (Shape{kDim / kGroup}));
  Value x = g.placeholder("x", f32, {2, 3, kDim});
  Value y = block(x);
  Value h = x + (*block.attention_output_norm)(attention(x));
  Value want = h + (*block.ffn_output_norm)(block.ffn_out(gelu(block.ffn_in(h))));
  // The attention written out: each projection normalized whole, then split into heads.
  auto heads = [&](const nn::Linear& linear, const nn::RMSNorm& norm, int64_t count) {
    return reshape(rms_norm(matmul(x, linear.weight) + linear.bias, 1, norm.weight, 1e-5),
                   {-1, 3, count, kDepth});
  };
  Value attended =
      scaled_dot_product_attention(heads(attention.query, *attention.query_norm, kHeads),
                                   heads(attention.key, *attention.key_norm, kHeads / kGroup),
                                   reshape(matmul(x, attention.value.weight) + attention.value.bias,
                                           {-1, 3, kHeads / kGroup, kDepth}),
                                   {.causal = true, .layout = "bthd"});
  Value attention_want =
      matmul(reshape(attended, {-1, 3, kDim}), attention.output.weight) + attention.output.bias;
  Session s(g);
  s.initialize_variables();
  for (const nn::RMSNorm* norm : {attention.query_norm, attention.key_norm})  // away from 1
    s.set_variable(norm->weight, testing::random_tensor(f32, norm->weight.shape(), 0.5, 1.5, 16));
  const auto out = s.run({{x, testing::random_tensor(f32, {2, 3, kDim}, -2, 2, 15)}},
                         {y, want, attention(x), attention_want});
  for (int64_t i = 0; i < out[0].numel(); ++i) {
    EXPECT_NEAR(out[0].element(i), out[1].element(i), 1e-5) << i;
    EXPECT_NEAR(out[2].element(i), out[3].element(i), 1e-5) << i;
  }
  expect_error<GraphError>(
      [&] { nn::TransformerBlock(g, "bare", kDim, kHeads, {.input_norms = false}); },
      {"[nn] TransformerBlock bare", "without input_norms needs post_norms"});
}

// The gated FFNs: with the attention's output projection zeroed, a pre-norm block is x +
// ffn_out(act(gate) * up) of rms_norm(x), gate and up the halves of ffn_in: SiLU for swiglu,
// GELU's tanh form for geglu (Gemma's).
TEST(GroupedQueryAttention, GatedFeedForwardsGateTheUpHalf) {
  for (auto activation :
       {nn::TransformerBlock::Activation::swiglu, nn::TransformerBlock::Activation::geglu}) {
    const bool swish = activation == nn::TransformerBlock::Activation::swiglu;
    SCOPED_TRACE(swish ? "swiglu" : "geglu");
    Graph g;
    nn::TransformerBlock block(g, "block", kDim, kHeads,
                               {.ffn_dim = 12,
                                .dropout = 0,
                                .activation = activation,
                                .norm = nn::TransformerBlock::Norm::rms,
                                .bias = false});
    Value x = g.placeholder("x", f32, {2, 3, kDim});
    Value y = block(x);
    std::vector<Value> halves =
        split(matmul(rms_norm(x, 1, Value(), 1e-5), block.ffn_in.weight), 2, -1);
    Value gate = swish ? silu(halves[0]) : gelu_tanh(halves[0]);
    Value want = x + matmul(gate * halves[1], block.ffn_out.weight);
    Session s(g);
    s.initialize_variables();
    s.set_variable(block.attention.output.weight, Tensor::zeros(f32, {kDim, kDim}));
    const auto out = s.run({{x, testing::random_tensor(f32, {2, 3, kDim}, -2, 2, 13)}}, {y, want});
    EXPECT_EQ(block.ffn_in.weight.shape(), Shape({kDim, 24}));
    for (int64_t i = 0; i < out[0].numel(); ++i)
      EXPECT_NEAR(out[0].element(i), out[1].element(i), 1e-5) << i;
  }
}

// ALiBi's slopes: the paper's geometric sequence for 8 heads (1/2 .. 1/256), and for 6 heads
// those of 4 (1/4 .. 1/256) then every other of 8's (1/2, 1/8), as BLOOM's build_alibi_tensor.
TEST(Alibi, SlopesFollowThePaperForEveryHeadCount) {
  EXPECT_EQ(alibi_slopes(8), (std::vector<double>{1. / 2, 1. / 4, 1. / 8, 1. / 16, 1. / 32, 1. / 64,
                                                  1. / 128, 1. / 256}));
  EXPECT_EQ(alibi_slopes(6),
            (std::vector<double>{1. / 4, 1. / 16, 1. / 64, 1. / 256, 1. / 2, 1. / 8}));
  EXPECT_EQ(alibi_slopes(1), (std::vector<double>{1. / 256}));
  EXPECT_EQ(alibi_slopes(3), (std::vector<double>{1. / 16, 1. / 256, 1. / 4}));
  expect_error<GraphError>([] { alibi_slopes(0); }, {"[alibi]", "positive, not 0"});
}

// Positions read from a tensor when the graph runs, past an offset, give the bias of those
// positions: a query at position p + i sees key j at distance j - (p + i). The bias for lengths
// known at build time is the same with p = 0.
TEST(Alibi, PositionsComeFromTheTensorsFed) {
  Graph g;
  Value x = g.placeholder("x", i64, {-1, -1});
  Value start = g.placeholder("start", i32, {});
  Value keys = g.placeholder("keys", f32, {-1, 3, -1, 2});
  Value query_positions = positions_along(x, 1, f64, start);
  Value key_positions = positions_along(keys, -2, f64);
  Value bias = alibi_bias(3, query_positions, key_positions, f64);
  Value symmetric = alibi_bias(3, positions_along(x, 1, f64), key_positions, f64, true);
  Session s(g);
  const auto got = s.run({{x, Tensor::from_vector<int64_t>(std::vector<int64_t>(8, 7), {2, 4})},
                          {start, Tensor::scalar<int32_t>(2)},
                          {keys, testing::random_tensor(f32, {1, 3, 6, 2}, -1, 1, 1)}},
                         {query_positions, bias, symmetric});
  testing::expect_near({2, 3, 4, 5}, got[0], 0, 0, "query positions");
  ASSERT_EQ(got[1].shape(), Shape({3, 4, 6}));
  const std::vector<double> slopes = alibi_slopes(3);
  for (int64_t h = 0; h < 3; ++h)
    for (int64_t i = 0; i < 4; ++i)
      for (int64_t j = 0; j < 6; ++j) {
        ASSERT_EQ(got[1].element((h * 4 + i) * 6 + j), slopes[h] * double(j - (2 + i)));
        ASSERT_EQ(got[2].element((h * 4 + i) * 6 + j), -slopes[h] * std::abs(double(j - i)));
      }
  Graph fixed;
  testing::expect_near(testing::values(got[2]),
                       Session(fixed).run({}, {alibi_bias(fixed, 3, 4, 6, f64, true)})[0], 0, 0,
                       "the bias of known lengths");
  expect_error<GraphError>([&] { positions_along(x, 2); }, {"[positions_along]", "axis 2 of"});
  expect_error<GraphError>([&] { positions_along(x, 1, f32, g.scalar(1.0, f32)); },
                           {"[positions_along]", "integer scalar", "f32"});
}

// The bias is slope_h * (j - i), or -slope_h |j - i|; as a float mask it is the attention's
// bias written out.
TEST(Alibi, BiasIsTheSlopeTimesTheDistance) {
  for (bool symmetric : {false, true}) {
    Graph g;
    Value bias = alibi_bias(g, 3, 4, 6, f64, symmetric);
    EXPECT_EQ(bias.shape(), Shape({3, 4, 6}));
    const Tensor got = Session(g).run({}, {bias})[0];
    const std::vector<double> slopes = alibi_slopes(3);
    for (int64_t h = 0; h < 3; ++h)
      for (int64_t i = 0; i < 4; ++i)
        for (int64_t j = 0; j < 6; ++j) {
          const double distance = double(j - i);
          ASSERT_EQ(got.element((h * 4 + i) * 6 + j),
                    slopes[h] * (symmetric ? -std::abs(distance) : distance))
              << h << " " << i << " " << j;
        }
  }
  Graph g;
  Value q = g.placeholder("q", f32, {2, 3, 5, 4});
  Value with_alibi =
      scaled_dot_product_attention(q, q, q, {.mask = alibi_bias(g, 3, 5, 5), .causal = true});
  Value plain = scaled_dot_product_attention(q, q, q, {.causal = true});
  const auto out = Session(g).run({{q, testing::random_tensor(f32, {2, 3, 5, 4}, -1, 1, 3)}},
                                  {with_alibi, plain});
  double largest = 0;  // the first query attends to itself alone either way; the rest differ
  for (int64_t e = 0; e < out[0].numel(); ++e)
    largest = std::max(largest, std::abs(out[0].element(e) - out[1].element(e)));
  EXPECT_GT(largest, 1e-3);
  expect_error<GraphError>([&] { alibi_bias(g, 2, -1, 4); }, {"[alibi]", "-1 queries"});
  expect_error<GraphError>([&] { alibi_bias(2, q, q); }, {"[alibi]", "positions as vectors"});
  expect_error<GraphError>([&] { alibi_bias(g, 2, 3, 4, i32); }, {"[alibi]", "float dtype"});
}

// T5's buckets against transformers 5.25's T5Attention._relative_position_bucket over relative
// positions -300 .. 300: each run of equal buckets as (its first position, its bucket), with 32
// buckets and max_distance 128 (T5's) both ways, and 8 buckets up to 20 bidirectionally.
TEST(RelativePositionBias, BucketsAreTransformersOnes) {
  struct Table {
    bool bidirectional;
    int64_t buckets, max_distance;
    std::vector<std::pair<int64_t, int64_t>> runs;
  };
  const std::vector<Table> tables = {
      {true, 32, 128, {{-300, 15}, {-90, 14}, {-63, 13}, {-45, 12}, {-31, 11}, {-22, 10}, {-15, 9},
                       {-11, 8},   {-7, 7},   {-6, 6},   {-5, 5},   {-4, 4},   {-3, 3},   {-2, 2},
                       {-1, 1},    {0, 0},    {1, 17},   {2, 18},   {3, 19},   {4, 20},   {5, 21},
                       {6, 22},    {7, 23},   {8, 24},   {12, 25},  {16, 26},  {23, 27},  {32, 28},
                       {46, 29},   {64, 30},  {91, 31}}},
      {true, 8, 20, {{-300, 3}, {-6, 2}, {-1, 1}, {0, 0}, {1, 5}, {2, 6}, {7, 7}}},
      {false, 32, 128, {{-300, 31}, {-112, 30}, {-98, 29}, {-86, 28}, {-76, 27}, {-66, 26},
                        {-58, 25},  {-51, 24},  {-45, 23}, {-39, 22}, {-34, 21}, {-30, 20},
                        {-26, 19},  {-23, 18},  {-20, 17}, {-18, 16}, {-15, 15}, {-14, 14},
                        {-13, 13},  {-12, 12},  {-11, 11}, {-10, 10}, {-9, 9},   {-8, 8},
                        {-7, 7},    {-6, 6},    {-5, 5},   {-4, 4},   {-3, 3},   {-2, 2},
                        {-1, 1},    {0, 0}}}};
  for (const Table& t : tables) {
    size_t run = 0;
    for (int64_t relative = -300; relative <= 300; ++relative) {
      if (run + 1 < t.runs.size() && relative == t.runs[run + 1].first) ++run;
      ASSERT_EQ(relative_position_bucket(relative, t.bidirectional, t.buckets, t.max_distance),
                t.runs[run].second)
          << "relative " << relative << ", " << t.buckets << " buckets, bidirectional "
          << t.bidirectional;
    }
  }
  expect_error<GraphError>([] { relative_position_bucket(0, true, 2); },
                           {"[relative_position_bucket]", "2 buckets", "at least 4"});
  expect_error<GraphError>([] { relative_position_bucket(0, false, 32, 10); },
                           {"max_distance 10", "the 16 exact distances"});
}

// The layer's bias [1, heads, Tq, Tk] is its table read at the buckets of j - i; attention with
// it passes its table a gradient (the bias gradient's composition through the embedding), which
// finite differences confirm.
TEST(RelativePositionBias, TheBiasIsTheTableAtTheBucketsAndLearns) {
  Graph g;
  nn::RelativePositionBias relative(g, "relative", 3, {.buckets = 8, .max_distance = 20});
  EXPECT_EQ(relative.weight.shape(), (Shape{8, 3}));
  Value bias = relative.bias(4, 6);
  EXPECT_EQ(bias.shape(), (Shape{1, 3, 4, 6}));
  Value x = g.placeholder("x", f32, {2, 5, 7});
  EXPECT_EQ(relative(x).shape(), (Shape{1, 3, 5, 5}));
  // A cached step's: two queries at position p of a cache of 6 are rows p and p + 1 of the
  // whole square's bias.
  Value position = g.placeholder("position", i64, {});
  Value step = relative.bias_at(position, 2, 6), square = relative.bias(6, 6);
  Session s(g);
  for (int64_t p = 0; p <= 4; ++p) {
    const auto got = s.run({{position, Tensor::scalar<int64_t>(p)}}, {step, square});
    ASSERT_EQ(got[0].shape(), (Shape{1, 3, 2, 6}));
    for (int64_t h = 0; h < 3; ++h)
      for (int64_t i = 0; i < 2; ++i)
        for (int64_t j = 0; j < 6; ++j)
          ASSERT_EQ(got[0].element((h * 2 + i) * 6 + j), got[1].element((h * 6 + p + i) * 6 + j))
              << "position " << p;
  }
  expect_error<GraphError>([&] { relative.bias_at(position, 7, 6); },
                           {"[nn] RelativePositionBias relative", "7 queries", "got 6"});
  const auto out = s.run({}, {bias, relative.weight});
  for (int64_t h = 0; h < 3; ++h)
    for (int64_t i = 0; i < 4; ++i)
      for (int64_t j = 0; j < 6; ++j)
        ASSERT_EQ(out[0].element((h * 4 + i) * 6 + j),
                  out[1].element(relative_position_bucket(j - i, true, 8, 20) * 3 + h));
  check_gradients(
      [&](Graph& gg, const std::vector<Value>& v) {
        // The table as an input: the bias read from it the layer's way.
        const Value buckets = relative_position_buckets(gg, 5, 6, false, 8, 20);
        const Value read = expand_dims(transpose(embedding(v[3], buckets), {2, 0, 1}), {0});
        return scaled_dot_product_attention(v[0], v[1], v[2], {.mask = read, .causal = true});
      },
      {r64({1, 2, 5, 4}, -1, 1, 31), r64({1, 2, 6, 4}, -1, 1, 32), r64({1, 2, 6, 3}, -1, 1, 33),
       r64({8, 2}, -1, 1, 34)},
      "attention with a relative position bias");
}

}  // namespace
}  // namespace kiln
