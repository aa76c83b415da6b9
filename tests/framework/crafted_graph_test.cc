// Graphs as a crafted file could describe them: every attribute a kernel trusts is checked when
// the node is built (and so when a file is loaded), with a clear error and never a crash. Each
// case here once got through (found by the fuzz targets in tests/fuzz or by review).
#include "kiln/ops/math/fused.h"
#include "test_util.h"

namespace kiln {
namespace {

using testing::expect_error;

// The reported crash: a unary instruction with an out-of-range register in the operand slot it
// does not use passed inference, and the CPU kernel read reg[9999].
TEST(CraftedGraphs, FusedProgramsAreCheckedInEverySlot) {
  Graph g;
  Value x = g.placeholder("x", f32, {2, 3});
  auto fused = [&](std::vector<int64_t> code) {
    return g.add("fused_elementwise", {x}, {{"code", code}, {"shape", Shape{2, 3}}});
  };
  const int64_t exp = ops::fused_opcode("exp"), add = ops::fused_opcode("add");
  expect_error<GraphError>(
      [&] {
        fused({exp, 0, 9999, -1});
      },
      {"[fused_elementwise]", "instruction 0 (exp) has operand 2 = 9999", "must be -1"});
  expect_error<GraphError>([&] { fused({exp, 0, -1, 7}); }, {"operand 3 = 7"});
  expect_error<GraphError>([&] { fused({add, 0, 1, -1}); }, {"reads register 1"});
  expect_error<GraphError>([&] { fused({ops::op_count, 0, -1, -1}); }, {"bad opcode"});
  expect_error<GraphError>([&] { fused({exp, 0, -1}); }, {"malformed program"});
  expect_error<GraphError>([&] { fused(std::vector<int64_t>(4 * 1025, -1)); },
                           {"1025 instructions"});
  // A well-formed program builds and runs: exp(x) + x.
  Value ok = fused({exp, 0, -1, -1, add, 1, 0, -1});
  Tensor in = Tensor::from_vector<float>({0, 1, 2, 3, 4, 5}, {2, 3});
  Tensor y = testing::run1(g, ok, {{x, in}});
  EXPECT_FLOAT_EQ(y.to_vector<float>()[1], std::exp(1.0f) + 1.0f);
}

// Sizes taken from attributes are summed and multiplied without overflow (found by fuzzing:
// signed overflow, undefined behaviour, in slice, split, concat and reshape inference).
TEST(CraftedGraphs, HugeSizesInAttributesAreRefusedNotOverflowed) {
  Graph g;
  Value x = g.placeholder("x", f32, {4, 3});
  // slice: a step near INT64_MAX takes one element.
  Value s = g.add("slice", {x},
                  {{"begin", std::vector<int64_t>{2}},
                   {"end", std::vector<int64_t>{INT64_MAX}},
                   {"step", std::vector<int64_t>{INT64_MAX}}});
  EXPECT_EQ(s.shape(), Shape({1, 3}));
  expect_error<GraphError>(
      [&] {
        g.add_node("split", {x},
                   {{"axis", int64_t{0}}, {"sizes", std::vector<int64_t>{INT64_MAX, 3}}});
      },
      {"[split]", "sizes overflow"});
  expect_error<GraphError>(
      [&] {
        g.add("reshape", {x}, {{"shape", Shape{int64_t{1} << 40, int64_t{1} << 40, -1}}});
      },
      {"[reshape]", "sizes overflow"});
  Value huge = g.placeholder("huge", f32, {int64_t{1} << 45, 1});
  expect_error<GraphError>(
      [&] {
        concat({huge, huge, huge, huge, huge, huge, huge, huge}, 0);
      },
      {"[concat]", "more than 2^48 bytes"});
  expect_error<GraphError>([&] { g.placeholder("enormous", f64, {INT64_MAX}); },
                           {"[placeholder] enormous", "more than 2^48 bytes"});
}

// Integer state wraps (two's complement) like every integer op, instead of overflowing.
TEST(CraftedGraphs, IntegerAssignAddWraps) {
  Graph g;
  Value v = g.variable("v", {2}, init::constant(static_cast<double>(INT32_MAX)), i32, false);
  Value step = assign_add(v, g.constant(Tensor::from_vector<int32_t>({1, 2})));
  Session s(g);
  s.run({}, {}, {step});
  EXPECT_EQ(s.variable_value(v).to_vector<int32_t>(),
            (std::vector<int32_t>{INT32_MIN, INT32_MIN + 1}));
}

// Integer sums of user data wrap too (they overflowed, undefined behaviour, in sum, add_n and
// sum_to).
TEST(CraftedGraphs, IntegerSumsOfDataWrap) {
  Graph g;
  Value x = g.placeholder("x", i64, {2, 2});
  Value like = g.placeholder("like", i64, {1, 2});
  Session s(g);
  const Tensor big = Tensor::from_vector<int64_t>({INT64_MAX, 1, 1, INT64_MAX}, {2, 2});
  auto out = s.run({{x, big}, {like, Tensor::zeros(i64, {1, 2})}},
                   {sum(x), sum(x, {0}), add_n({x, x}), sum_to(x, like)});
  EXPECT_EQ(out[0].item<int64_t>(), 0);  // 2 (2^63 - 1) + 2 = 2^64 = 0 (mod 2^64)
  EXPECT_EQ(out[1].to_vector<int64_t>(), (std::vector<int64_t>{INT64_MIN, INT64_MIN}));
  EXPECT_EQ(out[2].to_vector<int64_t>()[0], -2);
  EXPECT_EQ(out[3].to_vector<int64_t>(), (std::vector<int64_t>{INT64_MIN, INT64_MIN}));
}

// A checkpoint may hold any step count: Adam's bias correction at the largest one is computed
// without integer overflow (it was step + 1 in int64), and the counter wraps.
TEST(CraftedGraphs, AdamAtTheLargestStepCount) {
  Graph g;
  Value p = g.variable("p", {2}, init::constant(1.0));
  Value train = optim::Adam({.lr = 0.1}).minimize(sum(square(p)));
  Session s(g);
  s.set_variable(g.value("global_step"), Tensor::scalar<int64_t>(INT64_MAX));
  s.run({}, {}, {train});
  EXPECT_EQ(s.variable_value(g.value("global_step")).item<int64_t>(), INT64_MIN);
  // No bias correction left at that step: p -= lr m / sqrt(v) = 0.1 (0.1 g) / sqrt(0.001 g^2).
  for (float v : s.variable_value(p).to_vector<float>())
    EXPECT_NEAR(v, 1 - 0.1 * 0.1 / std::sqrt(0.001), 1e-5);
}

}  // namespace
}  // namespace kiln
