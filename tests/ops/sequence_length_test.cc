// What follows a sequence length known only at run time.
// - Rotary scalings that depend on it (dynamic NTK, LongRoPE): the frequencies at length L are
//   the formulas' (Hugging Face's rope functions, written out here), and a graph whose length is
//   known only at run time (a start fed each step, or T unknown) turns as the constant-frequency
//   rotation at that length. Hugging Face parity: tests/parity (llama_dynamic, llama_longrope).
// - Attention layers and T5's relative position bias built for any length (the batch known):
//   each run gives what a graph built for the fed length gives (T5 parity: "built for any
//   length").
#include <cmath>
#include <limits>

#include "test_util.h"

namespace kiln {
namespace {

using testing::expect_error;
using testing::r64;
using Kind = RotaryScaling::Kind;

const RotaryOptions kDynamic{
    .scaling = {.kind = Kind::dynamic, .factor = 2, .original_length = 16}};
const RotaryOptions kLongRope{.scaling = {.kind = Kind::longrope,
                                          .factor = 4,
                                          .original_length = 16,
                                          .short_factors = {1.0, 1.25, 1.5, 2.0},
                                          .long_factors = {1.0, 2.0, 4.0, 8.0}}};

TEST(RotaryScaling, DynamicAndLongRopeFrequenciesAtALength) {
  for (int64_t length : {0, 5, 16, 17, 24, 100, 5000}) {
    SCOPED_TRACE(str("length ", length));
    const std::vector<float> dynamic = rotary_frequencies(8, kDynamic, length);
    const std::vector<float> longrope = rotary_frequencies(8, kLongRope, length);
    // dynamic NTK: the base raised to base (factor L / original - (factor - 1))^(D / (D - 2)).
    const double ratio = std::max(1.0, 2.0 * static_cast<double>(length) / 16 - 1);
    const double base = 10000 * std::pow(ratio, 8.0 / 6.0);
    for (int c = 0; c < 4; ++c) {
      EXPECT_NEAR(dynamic[c], std::pow(base, -2.0 * c / 8), 2e-7 * dynamic[c]) << "pair " << c;
      const double divisor =
          (length > 16 ? kLongRope.scaling.long_factors : kLongRope.scaling.short_factors)[c];
      EXPECT_FLOAT_EQ(longrope[c], static_cast<float>(std::pow(10000.0, -2.0 * c / 8) / divisor));
    }
  }
  // Pair 0 always turns at 1; within the original length dynamic is unscaled.
  EXPECT_EQ(rotary_frequencies(8, kDynamic, 16), rotary_frequencies(8, {}));
  EXPECT_NE(rotary_frequencies(8, kDynamic, 17), rotary_frequencies(8, {}));
  // LongRoPE's attention factor: sqrt(1 + ln factor / ln original), or the one given.
  EXPECT_NEAR(rotary_attention_factor(kLongRope), std::sqrt(1 + std::log(4.0) / std::log(16.0)),
              1e-15);
  RotaryOptions given = kLongRope;
  given.scaling.attention_factor = 1.5;
  EXPECT_EQ(rotary_attention_factor(given), 1.5);
  EXPECT_EQ(rotary_attention_factor(kDynamic), 1);
}

// One plan, the start fed at run time: each step turns as the raw rotation with the frequencies
// at length start + T, times the attention factor; T unknown likewise.
TEST(RotaryScaling, TheFrequenciesFollowTheRunTimeLength) {
  for (const RotaryOptions* options : {&kDynamic, &kLongRope}) {
    SCOPED_TRACE(options == &kDynamic ? "dynamic" : "longrope");
    Graph g;
    Value x = g.placeholder("x", f64, {1, 2, 3, 8});
    Value any_length = g.placeholder("any_length", f64, {1, -1, 3, 8});
    Value start = g.placeholder("start", i64, {});
    Value frequencies = g.placeholder("frequencies", f32, {4});
    const double factor = rotary_attention_factor(*options);
    Value stepped = rotary_embedding(x, start, *options);
    Value reference =
        g.add("rotary", {x, frequencies, start}, {{"interleaved", false}, {"inverse", false}}) *
        factor;
    Value whole = rotary_embedding(any_length, {}, *options);
    Value whole_reference =
        g.add("rotary", {any_length, frequencies}, {{"interleaved", false}, {"inverse", false}}) *
        factor;
    Session s(g);
    const Tensor in = r64({1, 2, 3, 8}, -1, 1, 5);
    for (int64_t at : {0, 13, 14, 15, 40, 3000}) {
      const Tensor table = Tensor::from_vector(rotary_frequencies(8, *options, at + 2), {4});
      const auto out = s.run({{x, in}, {start, Tensor::scalar<int64_t>(at)}, {frequencies, table}},
                             {stepped, reference});
      const std::vector<double> a = out[0].to_vector<double>(), b = out[1].to_vector<double>();
      for (size_t i = 0; i < a.size(); ++i) ASSERT_NEAR(a[i], b[i], 1e-12) << at << " at " << i;
    }
    for (int64_t length : {3, 16, 17, 30}) {
      const Tensor long_in = r64({1, length, 3, 8}, -1, 1, 6);
      const Tensor table = Tensor::from_vector(rotary_frequencies(8, *options, length), {4});
      const auto out =
          s.run({{any_length, long_in}, {frequencies, table}}, {whole, whole_reference});
      EXPECT_EQ(out[0].to_vector<double>(), out[1].to_vector<double>()) << "length " << length;
    }
    // The steps past the original length do turn otherwise than those within it.
    EXPECT_NE(rotary_frequencies(8, *options, 20), rotary_frequencies(8, *options, 10));
  }
}

TEST(RotaryScaling, DynamicAndLongRopeErrorsNameTheOption) {
  Graph g;
  Value x = g.placeholder("x", f32, {1, 4, 2, 2});
  expect_error<GraphError>(
      [&] {
        rotary_embedding(x, {},
                         {.scaling = {.kind = Kind::dynamic, .factor = 2, .original_length = 16}});
      },
      {"[rotary_embedding] x", "dynamic scaling needs a depth above 2, got 2"});
  expect_error<GraphError>([&] { rotary_frequencies(8, {.scaling = {.kind = Kind::dynamic}}); },
                           {"original_length 0", "dynamic"});
  RotaryOptions three = kLongRope;
  three.scaling.long_factors.pop_back();
  expect_error<GraphError>([&] { rotary_frequencies(8, three); },
                           {"longrope needs 4 short and long factors", "got 4 and 3"});
  RotaryOptions zero = kLongRope;
  zero.scaling.short_factors[2] = 0;
  expect_error<GraphError>([&] { rotary_frequencies(8, zero); },
                           {"longrope factors must be positive and finite, got 0"});
  RotaryOptions nan = kLongRope;
  nan.scaling.long_factors[0] = std::numeric_limits<double>::quiet_NaN();
  expect_error<GraphError>([&] { rotary_frequencies(8, nan); }, {"got nan"});
}

// Beyond max_distance every distance has its half's last bucket, so the bias of a length fed at
// run time is the static bias of that length, bit for bit, up to lengths far past the table.
TEST(RelativePositionBias, ALengthKnownOnlyAtRunTime) {
  for (bool bidirectional : {true, false}) {
    SCOPED_TRACE(bidirectional ? "bidirectional" : "one direction");
    Graph g;
    nn::RelativePositionBias relative(
        g, "relative", 3, {.buckets = 8, .max_distance = 20, .bidirectional = bidirectional});
    Value any = g.placeholder("any", f32, {-1, -1, 4});
    Value bias = relative(any);
    EXPECT_EQ(bias.shape(), (Shape{1, 3, -1, -1}));
    Session s(g);
    for (int64_t length : {1, 7, 21, 60}) {
      const Tensor got = s.run({{any, Tensor::zeros(f32, {2, length, 4})}}, {bias})[0];
      const Tensor want = s.run({}, {relative.bias(length, length)})[0];
      EXPECT_EQ(got.shape(), want.shape());
      EXPECT_TRUE(equal_bits(got, want)) << "length " << length;
    }
  }
}

// A block built for [2, ?, dim] runs any length, as blocks built for that length do (the same
// variables), training steps and attention dropout included; given a wrong width it says so.
TEST(TransformerBlock, BuiltForAnyLengthWithTheBatchKnown) {
  Graph g;
  nn::TransformerBlock block(g, "block", 8, 2,
                             {.ffn_dim = 16,
                              .dropout = 0,
                              .causal = true,
                              .kv_heads = 1,
                              .rotary = RotaryOptions{.scaling = kDynamic.scaling}});
  Value any = g.placeholder("any", f32, {2, -1, 8});
  Value out = block(any);
  EXPECT_EQ(out.shape(), (Shape{2, -1, 8}));
  Value loss = mean(out * out);
  std::vector<Value> grads = gradients(loss, block.parameters());
  Session s(g);
  for (int64_t length : {1, 5, 12}) {
    Value fixed = g.placeholder(str("fixed", length), f32, {2, length, 8});
    Value want = block(fixed);
    const Tensor x = r64({2, length, 8}, -1, 1, static_cast<uint32_t>(length)).cast(f32);
    const auto got = s.run({{any, x}, {fixed, x}}, {out, want, grads[0]});
    EXPECT_EQ(got[0].to_vector<float>(), got[1].to_vector<float>()) << "length " << length;
    EXPECT_TRUE(std::isfinite(got[2].element(0)));
  }
  // The math path (attention_weights, attention dropout in training) builds its causal and
  // window mask from the run's lengths too.
  nn::MultiHeadAttention windowed(g, "windowed", 8, 2, {.causal = true, .window = 3});
  Value weights = windowed.attention_weights(any, any);
  Value wrong_width = g.placeholder("wrong_width", f32, {-1, -1, 6});
  expect_error<GraphError>([&] { windowed(wrong_width); }, {"[nn] MultiHeadAttention windowed",
                                                            "[batch, length, 8]", "got [?, ?, 6]"});
  nn::TransformerBlock dropping(g, "dropping", 8, 2,
                                {.ffn_dim = 16, .dropout = 0, .attention_dropout = 0.5});
  Value dropped = dropping(any);
  for (int64_t length : {1, 4, 9}) {
    Value fixed = g.placeholder(str("fixed_window", length), f32, {2, length, 8});
    Value want = windowed.attention_weights(fixed, fixed);
    const Tensor x = r64({2, length, 8}, -1, 1, static_cast<uint32_t>(40 + length)).cast(f32);
    const auto got = s.run({{any, x}, {fixed, x}}, {weights, want, dropped});
    EXPECT_EQ(got[0].shape(), (Shape{2, 2, length, length}));
    EXPECT_EQ(got[0].to_vector<float>(), got[1].to_vector<float>()) << "length " << length;
    EXPECT_EQ(got[2].shape(), (Shape{2, length, 8}));
  }
}

// Neither the batch nor the length known ([?, ?, dim], the way a saved model serves any batch
// of any length): the heads split and merge with unflatten and flatten, and Linear multiplies
// [?, ?, in] whole. An encoder block (grouped heads, rotary, q and k norms) and a decoder block
// over a memory of another length give what blocks built for each fed shape give, gradients
// included.
TEST(TransformerBlock, BuiltForAnyBatchAndLength) {
  Graph g;
  nn::TransformerBlock encoder(g, "encoder", 8, 2,
                               {.ffn_dim = 16,
                                .dropout = 0,
                                .causal = false,
                                .activation = nn::TransformerBlock::Activation::swiglu,
                                .kv_heads = 1,
                                .rotary = RotaryOptions{},
                                .qk_norm = true});
  nn::TransformerDecoderBlock decoder(g, "decoder", 8, 2, {.ffn_dim = 16, .dropout = 0});
  std::vector<Value> parameters = encoder.parameters();
  for (const Value& p : decoder.parameters()) parameters.push_back(p);
  auto model = [&](const Value& source, const Value& target) {
    const Value out = decoder.decode(target, encoder(source));
    return std::pair{out, gradients(mean(out * out), parameters)};
  };
  Value source = g.placeholder("source", f32, {-1, -1, 8});
  Value target = g.placeholder("target", f32, {-1, -1, 8});
  const auto [out, grads] = model(source, target);
  EXPECT_EQ(out.shape(), (Shape{-1, -1, 8}));
  Session s(g);
  struct Fed {
    int64_t batch, source_length, target_length;
  };
  for (const Fed& fed : {Fed{1, 1, 1}, Fed{3, 5, 2}, Fed{2, 7, 12}}) {
    SCOPED_TRACE(
        str("batch ", fed.batch, ", lengths ", fed.source_length, " and ", fed.target_length));
    const std::string at = str(fed.batch, "_", fed.source_length, "_", fed.target_length);
    Value fixed_source = g.placeholder("source" + at, f32, {fed.batch, fed.source_length, 8});
    Value fixed_target = g.placeholder("target" + at, f32, {fed.batch, fed.target_length, 8});
    const auto [want, want_grads] = model(fixed_source, fixed_target);
    const Tensor x = r64({fed.batch, fed.source_length, 8}, -1, 1, 3).cast(f32);
    const Tensor y = r64({fed.batch, fed.target_length, 8}, -1, 1, 4).cast(f32);
    std::vector<Value> fetched{out, want};
    for (size_t i = 0; i < grads.size(); ++i) {
      fetched.push_back(grads[i]);
      fetched.push_back(want_grads[i]);
    }
    const auto got =
        s.run({{source, x}, {target, y}, {fixed_source, x}, {fixed_target, y}}, fetched);
    for (size_t i = 0; i < got.size(); i += 2) {
      SCOPED_TRACE(i == 0 ? std::string("output") : parameters[i / 2 - 1].name());
      ASSERT_EQ(got[i].shape(), got[i + 1].shape());
      const auto a = got[i].to_vector<float>(), b = got[i + 1].to_vector<float>();
      float largest = 0, error = 0;
      for (size_t j = 0; j < a.size(); ++j) {
        largest = std::max(largest, std::abs(b[j]));
        error = std::max(error, std::abs(a[j] - b[j]));
      }
      EXPECT_LE(error, 1e-5f * std::max(largest, 1.0f));
    }
  }
}

}  // namespace
}  // namespace kiln
