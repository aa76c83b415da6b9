// optim::BatchNormUpdate (torch.optim.swa_utils.update_bn) against the averages written out:
// each running statistic the mean over the batches of the batch's own, a later layer's input
// normalized by the earlier layer's batch statistics (training mode). PyTorch's own update_bn
// is compared in torch_layer_parity (its update_bn model).
#include "kiln/autograd/batch_norm_update.h"

#include <cmath>
#include <vector>

#include "kiln/ops/layers.h"
#include "test_util.h"

namespace kiln {
namespace {

using testing::expect_error;

constexpr int64_t kRows = 4, kIn = 3, kOut = 2;

// BatchNorm1d(3, momentum 0.1) -> Linear(3, 2) -> BatchNorm1d(2, momentum None).
struct Model {
  Graph g;
  Value x = g.placeholder("x", f32, {kRows, kIn});
  nn::Sequential model{g, "m"};
  nn::BatchNorm1d& first = model.add<nn::BatchNorm1d>("bn1", kIn);
  nn::Linear& linear = model.add<nn::Linear>("fc", kIn, kOut);
  nn::BatchNorm1d& second = model.add<nn::BatchNorm1d>("bn2", kOut, std::nullopt);
};

// Per column of x [rows, cols]: the mean and the unbiased variance.
void column_statistics(const std::vector<double>& x, int64_t cols, std::vector<double>& mean,
                       std::vector<double>& var) {
  const int64_t rows = static_cast<int64_t>(x.size()) / cols;
  mean.assign(cols, 0);
  var.assign(cols, 0);
  for (int64_t c = 0; c < cols; ++c) {
    for (int64_t r = 0; r < rows; ++r) mean[c] += x[r * cols + c] / rows;
    for (int64_t r = 0; r < rows; ++r)
      var[c] += std::pow(x[r * cols + c] - mean[c], 2) / (rows - 1);
  }
}

std::vector<double> values(Session& s, const Value& v) {
  return s.variable_value(v).cast(f64).to_vector<double>();
}

TEST(BatchNormUpdate, RunningStatisticsAreTheBatchesMeans) {
  Model m;
  m.model.eval();
  optim::BatchNormUpdate update(m.model, m.x);
  EXPECT_EQ(update.layers(), 2u);
  Session s(m.g);
  s.initialize_variables();
  s.set_variable(m.first.running_mean, Tensor::full(f32, {kIn}, 5));  // stale: reset first
  s.set_variable(m.first.weight, Tensor::from_vector<float>({1.5f, 0.5f, 2}));
  s.set_variable(m.first.bias, Tensor::from_vector<float>({0.1f, -0.2f, 0.3f}));
  s.set_variable(m.second.num_batches_tracked, Tensor::scalar<int64_t>(7));
  const std::map<std::string, Tensor> parameters_before = s.variable_values();

  std::vector<FeedList> batches;
  std::vector<double> mean1(kIn), var1(kIn), mean2(kOut), var2(kOut);
  const std::vector<double> w = values(s, m.linear.weight), b = values(s, m.linear.bias);
  const std::vector<double> gamma = values(s, m.first.weight), beta = values(s, m.first.bias);
  for (uint32_t k = 0; k < 3; ++k) {
    const Tensor x = testing::random_tensor(f32, {kRows, kIn}, -2, 2, 10 + k);
    batches.push_back({{m.x, x}});
    const std::vector<double> xs = x.cast(f64).to_vector<double>();
    std::vector<double> mu, var;
    column_statistics(xs, kIn, mu, var);
    // The first layer normalizes by the batch's biased variance, then its affine; the linear
    // layer's [in, out] weight follows.
    std::vector<double> h(kRows * kOut);
    for (int64_t r = 0; r < kRows; ++r)
      for (int64_t o = 0; o < kOut; ++o) {
        double sum = b[o];
        for (int64_t c = 0; c < kIn; ++c) {
          const double biased = var[c] * (kRows - 1) / kRows;
          const double y = (xs[r * kIn + c] - mu[c]) / std::sqrt(biased + 1e-5);
          sum += (gamma[c] * y + beta[c]) * w[c * kOut + o];
        }
        h[r * kOut + o] = sum;
      }
    std::vector<double> mu2, var2_k;
    column_statistics(h, kOut, mu2, var2_k);
    for (int64_t c = 0; c < kIn; ++c) {
      mean1[c] += mu[c] / 3;
      var1[c] += var[c] / 3;
    }
    for (int64_t c = 0; c < kOut; ++c) {
      mean2[c] += mu2[c] / 3;
      var2[c] += var2_k[c] / 3;
    }
  }
  update.run(s, batches);
  auto expect_near = [](const std::vector<double>& got, const std::vector<double>& want) {
    ASSERT_EQ(got.size(), want.size());
    for (size_t i = 0; i < got.size(); ++i) EXPECT_NEAR(got[i], want[i], 2e-5) << i;
  };
  expect_near(values(s, m.first.running_mean), mean1);
  expect_near(values(s, m.first.running_var), var1);
  expect_near(values(s, m.second.running_mean), mean2);
  expect_near(values(s, m.second.running_var), var2);
  EXPECT_EQ(s.variable_value(m.second.num_batches_tracked).item<int64_t>(), 3);
  // The trainable variables are untouched; the pass's own count is not a saved variable.
  const std::map<std::string, Tensor> after = s.variable_values();
  for (const Value& p : m.model.parameters())
    EXPECT_EQ(after.at(p.name()).to_vector<float>(),
              parameters_before.at(p.name()).to_vector<float>())
        << p.name();
  EXPECT_EQ(after.count("m/bn1/update_bn_count"), 0u);
  EXPECT_EQ(after.size(), parameters_before.size());

  // One batch at a time gives the same; a second update of the same model reuses the count.
  optim::BatchNormUpdate again(m.model, m.x);
  again.reset(s);
  EXPECT_EQ(values(s, m.first.running_mean), std::vector<double>(kIn, 0.0));
  EXPECT_EQ(values(s, m.first.running_var), std::vector<double>(kIn, 1.0));
  for (const FeedList& batch : batches) again.add(s, batch);
  expect_near(values(s, m.first.running_mean), mean1);
  expect_near(values(s, m.second.running_var), var2);
}

TEST(BatchNormUpdate, LeavesEveryLayersModeAndGraphAsTheyWere) {
  Model m;
  m.model.eval();
  m.second.train();  // mixed modes are put back one by one
  optim::BatchNormUpdate update(m.model, m.x);
  EXPECT_FALSE(m.model.training());
  EXPECT_FALSE(m.first.training());
  EXPECT_FALSE(m.linear.training());
  EXPECT_TRUE(m.second.training());
  // Built after the update: the first layer in evaluation mode reads its running statistics
  // and changes nothing; the second, in training mode, moves its own by momentum None (its
  // count, not the update's).
  m.model.eval();
  Value y = m.model(m.x);
  Session s(m.g);
  s.initialize_variables();
  s.set_variable(m.first.running_mean, Tensor::from_vector<float>({1, 2, 3}));
  s.run({{m.x, testing::random_tensor(f32, {kRows, kIn}, -1, 1, 3)}}, {y});
  EXPECT_EQ(s.variable_value(m.first.running_mean).to_vector<float>(),
            (std::vector<float>{1, 2, 3}));
  EXPECT_EQ(s.variable_value(m.second.num_batches_tracked).item<int64_t>(), 0);
}

TEST(BatchNormUpdate, ModelWithoutBatchNormIsLeftAlone) {
  Graph g;
  Value x = g.placeholder("x", f32, {2, 3});
  nn::Sequential model(g, "plain");
  model.add<nn::Linear>("fc", 3, 2);
  model.add<nn::LayerNorm>("norm", Shape{2});
  const int32_t nodes = g.num_nodes();
  optim::BatchNormUpdate update(model, x);
  EXPECT_EQ(update.layers(), 0u);
  EXPECT_EQ(g.num_nodes(), nodes);
  Session s(g);
  update.run(s, {{{x, Tensor::zeros(f32, {2, 3})}}});
}

TEST(BatchNormUpdate, ErrorsNameTheProblem) {
  Model m;
  Graph other;
  Value foreign = other.placeholder("foreign", f32, {kRows, kIn});
  expect_error<GraphError>([&] { optim::BatchNormUpdate(m.model, foreign); },
                           {"[update_bn]", "foreign", "'m'"});
  optim::BatchNormUpdate update(m.model, m.x);
  Session s(m.g);
  expect_error<FeedError>(
      [&] {
        update.run(s, {{{m.x, Tensor::zeros(f32, {kRows, 5})}}});
      },
      {"'x'"});
  expect_error<FeedError>([&] { update.run(s, {FeedList{}}); }, {"x"});
}

}  // namespace
}  // namespace kiln
