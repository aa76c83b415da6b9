#include "test_util.h"

namespace kiln {
namespace {

TEST(Softmax, MatchesReferenceOnAnyAxisAndIsStable) {
  for (DType dtype : {f32, f64}) {
    for (int64_t axis : {0, 1, 2, -1}) {
      Graph g;
      Tensor in = testing::random_tensor(dtype, {3, 4, 5}, -20, 20, 3);
      Value x = g.constant(in);
      Session s(g);
      auto out = s.run({}, {softmax(x, axis), log_softmax(x, axis)});
      const Shape& shape = in.shape();
      int64_t a = axis < 0 ? axis + 3 : axis;
      std::vector<double> expected_sm, expected_lsm;
      for (int64_t i = 0; i < in.numel(); ++i) {
        std::vector<int64_t> idx = testing::unravel(i, shape);
        double m = -INFINITY, total = 0;
        std::vector<int64_t> j = idx;
        for (j[a] = 0; j[a] < shape[a]; ++j[a])
          m = std::max(m, in.element((j[0] * 4 + j[1]) * 5 + j[2]));
        for (j[a] = 0; j[a] < shape[a]; ++j[a])
          total += std::exp(in.element((j[0] * 4 + j[1]) * 5 + j[2]) - m);
        expected_sm.push_back(std::exp(in.element(i) - m) / total);
        expected_lsm.push_back(in.element(i) - m - std::log(total));
      }
      double tol = dtype == f32 ? 1e-5 : 1e-12;
      testing::expect_near(expected_sm, out[0], tol, tol, str("softmax axis ", axis));
      testing::expect_near(expected_lsm, out[1], tol, tol, str("log_softmax axis ", axis));
    }
  }
  Graph g;
  Value big = g.constant(Tensor::from_vector<float>({1000, 1000, -1000}));
  auto y = testing::run1(g, softmax(big)).to_vector<float>();
  EXPECT_FLOAT_EQ(y[0], 0.5f);
  EXPECT_FLOAT_EQ(y[2], 0.0f);
}

// Logits near 1e4 in f32: log_softmax and the cross-entropy must keep f32's relative accuracy
// (computing x - (m + log s) rounds m + log s to a spacing of 1e-3 and was off by 2.8e-4).
TEST(Softmax, LogSoftmaxKeepsF32AccuracyOnLargeLogits) {
  Graph g;
  const std::vector<float> row = {10000.0f, 10000.5f, 9999.25f, 10001.0f, 9998.0f};
  Value x = g.constant(Tensor::from_vector<float>(row, {1, 5}));
  Value labels = g.constant(Tensor::from_vector<int64_t>({3}));
  Session s(g);
  auto out = s.run({}, {log_softmax(x), softmax_cross_entropy(x, labels)});
  double m = 10001.0, total = 0;
  for (float v : row) total += std::exp(double(v) - m);
  for (int i = 0; i < 5; ++i) {
    const double expected = (double(row[i]) - m) - std::log(total);
    EXPECT_NEAR(out[0].element(i), expected, 2e-7 * std::abs(expected))
        << "log_softmax[" << i << "]";
  }
  const double loss = std::log(total);  // label 3 holds the max
  EXPECT_NEAR(out[1].element(0), loss, 2e-7 * loss) << "softmax_cross_entropy";
}

TEST(CrossEntropy, MatchesReferenceAndRejectsBadLabels) {
  Graph g;
  Tensor logits = testing::random_tensor(f64, {4, 6}, -5, 5, 9);
  Value z = g.constant(logits);
  Value y = g.constant(Tensor::from_vector<int32_t>({0, 5, 2, 2}));
  Tensor loss = testing::run1(g, softmax_cross_entropy(z, y));
  ASSERT_EQ(loss.shape(), Shape({4}));
  std::vector<int> labels = {0, 5, 2, 2};
  for (int i = 0; i < 4; ++i) {
    double m = -INFINITY, s = 0;
    for (int c = 0; c < 6; ++c) m = std::max(m, logits.element(i * 6 + c));
    for (int c = 0; c < 6; ++c) s += std::exp(logits.element(i * 6 + c) - m);
    EXPECT_NEAR(loss.element(i), m + std::log(s) - logits.element(i * 6 + labels[i]), 1e-12);
  }
  Value bad = g.constant(Tensor::from_vector<int64_t>({0, 6, 1, 1}));
  testing::expect_error([&] { testing::run1(g, softmax_cross_entropy(z, bad)); },
                        {"[softmax_cross_entropy]", "label 6 at position 1", "[0, 6)"});
  testing::expect_error<GraphError>(
      [&] {
        softmax_cross_entropy(z, g.constant(Tensor::from_vector<int64_t>({1, 2})));
      },
      {"batch sizes differ"});
  testing::expect_error<GraphError>([&] { softmax_cross_entropy(z, z); }, {"labels", "f64"});
}

}  // namespace
}  // namespace kiln
