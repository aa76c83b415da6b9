// Layer, RMS, group and batch norm (ops/nn/normalization.cc) against f64 formulas (PyTorch's
// definitions), their gradients against finite differences, batch norm's running statistics,
// and the errors a user can hit building convolution, pooling and normalization.
#include <cmath>

#include "autograd/gradcheck.h"
#include "test_util.h"

namespace kiln {
namespace {

using testing::check_gradients;
using testing::expect_error;

Tensor r64(const Shape& s, double lo, double hi, uint32_t seed) {
  return testing::random_tensor(f64, s, lo, hi, seed);
}

// (x - mean) / sqrt(var + eps) of each group of `size` consecutive elements (center) or
// x / sqrt(mean(x^2) + eps).
std::vector<double> normalized_rows(const Tensor& x, int64_t size, double eps, bool center) {
  std::vector<double> out;
  for (int64_t row = 0; row < x.numel() / size; ++row) {
    double mean = 0, squares = 0;
    for (int64_t i = 0; i < size; ++i) mean += x.element(row * size + i) / size;
    if (!center) mean = 0;
    for (int64_t i = 0; i < size; ++i)
      squares += std::pow(x.element(row * size + i) - mean, 2) / size;
    for (int64_t i = 0; i < size; ++i)
      out.push_back((x.element(row * size + i) - mean) / std::sqrt(squares + eps));
  }
  return out;
}

TEST(Normalization, LayerAndRmsNormMatchTheirDefinitions) {
  Tensor x = r64({3, 4, 5}, -2, 3, 1), w = r64({4, 5}, 0.5, 1.5, 2), b = r64({4, 5}, -1, 1, 3);
  Graph g;
  Value vx = g.placeholder("x", f64, {3, 4, 5});
  Value vw = g.constant(w), vb = g.constant(b);
  const auto ln = testing::run1(g, layer_norm(vx, 2, vw, vb, 1e-5), {{vx, x}}).to_vector<double>();
  const auto rms = testing::run1(g, rms_norm(vx, 1, Value(), 1e-6), {{vx, x}}).to_vector<double>();
  const std::vector<double> want_ln = normalized_rows(x, 20, 1e-5, true);
  const std::vector<double> want_rms = normalized_rows(x, 5, 1e-6, false);
  for (int64_t i = 0; i < 60; ++i) {
    EXPECT_NEAR(ln[i], want_ln[i] * w.element(i % 20) + b.element(i % 20), 1e-12) << i;
    EXPECT_NEAR(rms[i], want_rms[i], 1e-12) << i;
  }
  check_gradients(
      [](Graph&, const std::vector<Value>& v) { return layer_norm(v[0], 2, v[1], v[2]); },
      {x, w, b}, "layer_norm");
  check_gradients([](Graph&, const std::vector<Value>& v) { return rms_norm(v[0], 1, v[1]); },
                  {x, r64({5}, 0.5, 1.5, 4)}, "rms_norm");
}

TEST(Normalization, GroupNormNormalizesEachGroupOfEachExample) {
  Tensor x = r64({2, 6, 3, 2}, -2, 3, 5), w = r64({6}, 0.5, 1.5, 6), b = r64({6}, -1, 1, 7);
  Graph g;
  Value vx = g.placeholder("x", f64, {-1, 6, 3, 2});
  const auto got = testing::run1(g, group_norm(vx, 3, g.constant(w), g.constant(b)), {{vx, x}})
                       .to_vector<double>();
  // Groups of 2 channels x 6 positions = 12 consecutive elements.
  const std::vector<double> want = normalized_rows(x, 12, 1e-5, true);
  for (int64_t i = 0; i < x.numel(); ++i) {
    const int64_t channel = i / 6 % 6;
    EXPECT_NEAR(got[i], want[i] * w.element(channel) + b.element(channel), 1e-12) << i;
  }
  check_gradients(
      [](Graph&, const std::vector<Value>& v) { return group_norm(v[0], 2, v[1], v[2]); },
      {x, w, b}, "group_norm");
}

TEST(Normalization, BatchNormTrainsOnBatchStatisticsAndKeepsRunningOnes) {
  const Shape shape{4, 3, 2, 2};
  Tensor x = r64(shape, -2, 3, 8);
  Graph g;
  Value vx = g.placeholder("x", f64, shape);
  Value mean = g.variable("running_mean", {3}, init::zeros(), f64, false);
  Value var = g.variable("running_var", {3}, init::constant(1), f64, false);
  Value train = batch_norm(vx, mean, var, Value(), Value(), true, 0.1);
  Value eval = batch_norm(vx, mean, var, Value(), Value(), false);
  Session s(g, {.intra_op_threads = 2});
  const auto y = s.run({{vx, x}}, {train})[0].to_vector<double>();
  // Per channel: M = 16 elements (4 examples x 4 positions).
  std::vector<double> batch_mean(3, 0), batch_var(3, 0);
  auto at = [&](int64_t n, int64_t c, int64_t p) { return x.element((n * 3 + c) * 4 + p); };
  for (int64_t c = 0; c < 3; ++c) {
    for (int64_t n = 0; n < 4; ++n)
      for (int64_t p = 0; p < 4; ++p) batch_mean[c] += at(n, c, p) / 16;
    for (int64_t n = 0; n < 4; ++n)
      for (int64_t p = 0; p < 4; ++p) batch_var[c] += std::pow(at(n, c, p) - batch_mean[c], 2) / 16;
    for (int64_t n = 0; n < 4; ++n)
      for (int64_t p = 0; p < 4; ++p)
        EXPECT_NEAR(y[(n * 3 + c) * 4 + p],
                    (at(n, c, p) - batch_mean[c]) / std::sqrt(batch_var[c] + 1e-5), 1e-12);
  }
  // One training step moved the running statistics 10% toward the batch's (variance unbiased).
  const auto rm = s.run({}, {mean})[0].to_vector<double>();
  const auto rv = s.run({}, {var})[0].to_vector<double>();
  for (int64_t c = 0; c < 3; ++c) {
    EXPECT_NEAR(rm[c], 0.1 * batch_mean[c], 1e-12);
    EXPECT_NEAR(rv[c], 0.9 + 0.1 * batch_var[c] * 16 / 15, 1e-10);
  }
  // Evaluation reads them and changes nothing.
  const auto e = s.run({{vx, x}}, {eval})[0].to_vector<double>();
  for (int64_t c = 0; c < 3; ++c)
    EXPECT_NEAR(e[c * 4], (at(0, c, 0) - rm[c]) / std::sqrt(rv[c] + 1e-5), 1e-12);
  EXPECT_EQ(s.run({}, {mean})[0].to_vector<double>(), rm);
  check_gradients(
      [](Graph&, const std::vector<Value>& v) {
        return batch_norm(v[0], Value(), Value(), v[1], v[2], true);
      },
      {x, r64({3}, 0.5, 1.5, 9), r64({3}, -1, 1, 10)}, "batch_norm");
}

TEST(Normalization, SecondDerivativesThroughNormalizeAreRefusedByName) {
  Graph g;
  Value x = g.placeholder("x", f64, {3, 4});
  Value dx = gradients(sum(square(layer_norm(x))), {x})[0];
  expect_error<GraphError>([&] { gradients(sum(dx), {x}); }, {"normalize_backward", "no gradient"});
}

TEST(Normalization, BadShapesAndSettingsAreGraphErrors) {
  Graph g;
  Value x = g.placeholder("x", f32, {-1, 6, 8, 8});
  Value w = g.placeholder("w", f32, {4, 3, 3, 3});
  expect_error<GraphError>([&] { conv2d(x, w); }, {"[conv2d]", "takes 3 channels per group", "6"});
  expect_error<GraphError>(
      [&] {
        conv2d(x, g.placeholder("w2", f32, {4, 6, 9, 9}));
      },
      {"[conv2d]", "smaller than the 9-wide dilated kernel"});
  expect_error<GraphError>(
      [&] {
        conv2d(x, g.placeholder("w3", f32, {4, 3, 3, 3}), {.groups = 4});
      },
      {"[conv2d]", "divide by groups 4"});
  expect_error<GraphError>(
      [&] {
        conv2d(x, w, {.stride = {0, 1}});
      },
      {"stride (0, 1) must be in [1, 16777216]"});
  expect_error<GraphError>(
      [&] {
        max_pool2d(x, {.kernel_size = {3, 3}, .padding = {2, 2}});
      },
      {"[max_pool2d]", "at most half the window"});
  expect_error<GraphError>(
      [&] {
        avg_pool2d(x, {.kernel_size = {9, 9}});
      },
      {"[avg_pool2d]", "smaller than the window"});
  expect_error<GraphError>([&] { normalize(x, {1, 3}); }, {"[normalize]", "adjacent"});
  expect_error<GraphError>([&] { layer_norm(x, 5); }, {"layer_norm", "normalized_dims 5"});
  expect_error<GraphError>([&] { group_norm(x, 4); }, {"group_norm", "6 channels", "4 groups"});
  Value c4 = g.variable("c4", {4}, init::zeros());
  expect_error<GraphError>([&] { batch_norm(x, c4, c4, Value(), Value(), true); },
                           {"batch_norm", "[4]", "6 channels"});
  expect_error<GraphError>(
      [&] {
        conv_transpose2d(x, g.placeholder("t", f32, {6, 2, 3, 3}), {}, {1, 0});
      },
      {"conv_transpose2d", "output_padding 1"});
}

}  // namespace
}  // namespace kiln
