// NaN in training, and SessionOptions::check_numerics.
#include "test_util.h"

namespace kiln {
namespace {

using testing::expect_error;

// The case: one NaN pixel in a batch, one SGD step of a ReLU network. The NaN must
// show in the loss at once, and in every later loss, not vanish into dead units.
TEST(Numerics, ANaNInputIsVisibleInTheLossNotSwallowedByRelu) {
  Graph g;
  Value x = g.placeholder("x", f32, {-1, 8});
  Value y = g.placeholder("y", i64, {-1});
  Value w1 = g.variable("w1", {8, 16}, init::he_normal(1));
  Value b1 = g.variable("b1", {16}, init::zeros());
  Value w2 = g.variable("w2", {16, 4}, init::glorot_uniform(2));
  Value loss = mean(softmax_cross_entropy(matmul(relu(matmul(x, w1) + b1), w2), y));
  Value train = optim::SGD({.lr = 0.1}).minimize(loss);
  Session s(g);
  Tensor images = testing::random_tensor(f32, {4, 8}, -1, 1, 3);
  Tensor labels = Tensor::from_vector<int64_t>({0, 1, 2, 3});
  images.data<float>()[5] = std::nanf("");
  const float first = s.run({{x, images}, {y, labels}}, {loss}, {train})[0].item<float>();
  EXPECT_TRUE(std::isnan(first));
  images.data<float>()[5] = 0.5f;  // a clean batch: the damage the step did still shows
  EXPECT_TRUE(std::isnan(s.run({{x, images}, {y, labels}}, {loss})[0].item<float>()));
}

TEST(Numerics, CheckNumericsStopsAtTheFirstNaNNamingTheNode) {
  Graph g;
  Value x = g.placeholder("x", f32, {2, 2});
  Value w = g.variable("w", {2}, init::constant(1.0));
  Value logs = log(x);  // NaN for a negative input
  Value z = logs * 2.0 + 1.0;
  Value loss = sum(z * w);
  Value train = optim::SGD({.lr = 0.1}).minimize(loss);
  Tensor bad = Tensor::from_vector<float>({1, 2, -3, 4}, {2, 2});
  {
    Session quiet(g);  // off by default: NaN flows through
    EXPECT_TRUE(std::isnan(quiet.run({{x, bad}}, {loss})[0].item<float>()));
  }
  Session s(g, {.check_numerics = NumericsCheck::nan});
  expect_error<NumericsError>(
      [&] {
        s.run({{x, bad}}, {loss}, {train});
      },
      {"[check_numerics] node 'log' (log), output 0", "f32[2, 2] has NaN at [1, 0] (element 2)"});
  // The run stopped before the update: w is untouched, the step counter too.
  EXPECT_EQ(s.variable_value(w).to_vector<float>(), (std::vector<float>{1, 1}));
  EXPECT_EQ(s.variable_value(g.value("global_step")).item<int64_t>(), 0);
  // A clean feed runs, and trains.
  Tensor good = Tensor::from_vector<float>({1, 2, 3, 4}, {2, 2});
  s.run({{x, good}}, {loss}, {train});
  EXPECT_NE(s.variable_value(w).to_vector<float>(), (std::vector<float>{1, 1}));
}

TEST(Numerics, CheckNumericsLooksAtFeedsAndVariablesAndCanAllowInfinity) {
  Graph g;
  Value x = g.placeholder("x", f32, {3});
  Value v = g.variable("v", {3}, init::zeros());
  Value y = log(x) + v;  // log(0) = -inf
  Tensor zeros = Tensor::from_vector<float>({1, 0, 2});
  Session allow_inf(g, {.check_numerics = NumericsCheck::nan});
  EXPECT_EQ(allow_inf.run({{x, zeros}}, {y})[0].element(1), -INFINITY);
  Session strict(g, {.check_numerics = NumericsCheck::nan_or_inf});
  expect_error<NumericsError>(
      [&] {
        strict.run({{x, zeros}}, {y});
      },
      {"node 'log' (log)", "-inf at [1]"});
  expect_error<NumericsError>(
      [&] {
        strict.run({{x, Tensor::from_vector<float>({1, NAN, 2})}}, {y});
      },
      {"[check_numerics] feed 'x'", "NaN at [1]"});
  strict.set_variable(v, Tensor::from_vector<float>({0, INFINITY, 0}));
  expect_error<NumericsError>(
      [&] {
        strict.run({{x, Tensor::from_vector<float>({1, 1, 1})}}, {y});
      },
      {"node 'v' (variable)", "+inf at [1]"});
}

TEST(Numerics, CheckNumericsNamesGraphNodesNotFusedOnesAndStopsEveryStream) {
  Graph g;
  Value x = g.placeholder("x", f32, {64});
  Value a = sqrt(x - 1.0) * 3.0;  // fusible chain; NaN for x < 1
  Value b = exp(x) + 1.0;         // an independent branch, on another stream
  Value y = sum(a) + sum(b);
  Tensor input = Tensor::full(f32, {64}, 2.0);
  input.data<float>()[40] = 0.5f;
  for (int threads : {1, 2}) {
    Session s(g, {.inter_op_threads = threads, .check_numerics = NumericsCheck::nan});
    expect_error<NumericsError>(
        [&] {
          s.run({{x, input}}, {y});
        },
        {"node 'sqrt' (sqrt)", "NaN at [40]"});
  }
}

}  // namespace
}  // namespace kiln
