// Mixed precision on the CPU: the autocast graph's structure and dtypes, 16-bit graphs training
// like f32 (bf16 products on oneDNN, other ops widened to f32), and dynamic loss scaling
// (which works in any dtype): skipped steps change nothing, the scale backs off and grows. The
// GPU runs the same 16-bit graphs in tests/gpu/cuda_runtime_test.cc.
#include <functional>
#include <memory>

#include "test_util.h"

namespace kiln {
namespace {

struct Model {
  Graph g;
  Value x, y, w1, b1, w2, logits, loss;
};

std::unique_ptr<Model> model() {
  auto m = std::make_unique<Model>();
  Graph& g = m->g;
  m->x = g.placeholder("x", f32, {-1, 6});
  m->y = g.placeholder("y", i64, {-1});
  m->w1 = g.variable("w1", {6, 8}, init::he_normal(1));
  m->b1 = g.variable("b1", {8}, init::zeros());
  m->w2 = g.variable("w2", {8, 3}, init::glorot_uniform(2));
  m->logits = matmul(relu(matmul(m->x, m->w1) + m->b1), m->w2);
  m->loss = mean(softmax_cross_entropy(m->logits, m->y));
  return m;
}

TEST(MixedPrecision, AutocastRunsProductsIn16BitsAndKeepsF32Masters) {
  auto m = model();
  const int32_t before = m->g.num_nodes();
  Value loss = autocast(m->loss, bf16);
  EXPECT_EQ(loss.dtype(), f32);
  int low_matmuls = 0, f32_cross_entropy = 0;
  for (int32_t id = before; id < m->g.num_nodes(); ++id) {
    const Node& n = m->g.node(id);
    if (n.op_name() == "matmul") {
      ++low_matmuls;
      EXPECT_EQ(n.outputs()[0].dtype, bf16);
    }
    if (n.op_name() == "softmax_cross_entropy") {
      ++f32_cross_entropy;
      EXPECT_EQ(n.outputs()[0].dtype, f32);
    }
    EXPECT_NE(n.op_name(), "variable");  // the masters are shared, not copied
  }
  EXPECT_EQ(low_matmuls, 2);
  EXPECT_EQ(f32_cross_entropy, 1);
  // Gradients reach the f32 masters as f32.
  for (const Value& grad : gradients(loss, {m->w1, m->b1, m->w2})) EXPECT_EQ(grad.dtype(), f32);
  testing::expect_error<GraphError>([&] { autocast(m->loss, f32); }, {"[autocast]", "bf16 or f16"});
}

std::pair<Tensor, Tensor> batch(int seed) {
  return {testing::random_tensor(f32, {5, 6}, -1, 1, seed),
          Tensor::from_vector<int64_t>({0, 2, 1, 1, 0})};
}

TEST(MixedPrecision, LossScalingMatchesUnscaledTrainingWhenNothingOverflows) {
  auto plain = model(), scaled = model();
  Value t1 = optim::Adam({.lr = 1e-2}).minimize(plain->loss);
  Value t2 = optim::Adam({.lr = 1e-2})
                 .with_loss_scaling({.initial = 1024, .growth_interval = 3})
                 .minimize(scaled->loss);
  Session s1(plain->g), s2(scaled->g);
  for (int step = 0; step < 7; ++step) {
    auto [x, y] = batch(step);
    double l1 = s1.run({{plain->x, x}, {plain->y, y}}, {plain->loss}, {t1})[0].item<double>();
    double l2 = s2.run({{scaled->x, x}, {scaled->y, y}}, {scaled->loss}, {t2})[0].item<double>();
    EXPECT_NEAR(l1, l2, 1e-5) << "step " << step;
  }
  // Seven good steps with growth every 3: 1024 -> 2048 -> 4096, one good step left over.
  EXPECT_EQ(s2.variable_value(scaled->g.value("loss_scale")).item<float>(), 4096.0f);
  EXPECT_EQ(s2.variable_value(scaled->g.value("loss_scale_good_steps")).item<int64_t>(), 1);
  EXPECT_EQ(s2.variable_value(scaled->g.value("global_step")).item<int64_t>(), 7);
}

// Each kind of update honours apply_if: SGD's, and the shared-rule updates (element_rules.h).
TEST(MixedPrecision, AnOverflowingStepIsSkippedAndTheScaleBacksOff) {
  std::vector<std::pair<const char*, std::function<std::unique_ptr<optim::Optimizer>()>>> makers = {
      {"SGD",
       [] { return std::make_unique<optim::SGD>(optim::SGDOptions{.lr = 0.1, .momentum = 0.9}); }},
      {"RMSProp",
       [] {
         return std::make_unique<optim::RMSProp>(
             optim::RMSPropOptions{.lr = 1e-2, .momentum = 0.5, .centered = true});
       }},
      {"Adagrad", [] { return std::make_unique<optim::Adagrad>(); }},
      {"NAdam", [] { return std::make_unique<optim::NAdam>(); }},
      {"RAdam", [] { return std::make_unique<optim::RAdam>(); }},
      {"Rprop", [] { return std::make_unique<optim::Rprop>(); }},
      {"ASGD", [] { return std::make_unique<optim::ASGD>(optim::ASGDOptions{.t0 = 0}); }}};
  for (auto& [name, make] : makers) {
    SCOPED_TRACE(name);
    auto m = model();
    // A scale at which the scaled loss overflows f32: every gradient is inf or NaN.
    Value train = make()->with_loss_scaling({.initial = 3e38}).minimize(m->loss * 100.0);
    Session s(m->g);
    s.initialize_variables();
    const Tensor w1 = s.variable_value(m->w1);
    auto [x, y] = batch(0);
    s.run({{m->x, x}, {m->y, y}}, {}, {train});
    EXPECT_TRUE(equal_bits(s.variable_value(m->w1), w1));  // skipped: nothing moved
    EXPECT_EQ(s.variable_value(m->g.value("global_step")).item<int64_t>(), 0);
    EXPECT_FLOAT_EQ(s.variable_value(m->g.value("loss_scale")).item<float>(), 1.5e38f);
    if (m->g.find_node("nadam_mu_product")) {  // NAdam's momentum product did not advance
      EXPECT_EQ(s.variable_value(m->g.value("nadam_mu_product")).item<double>(), 1.0);
    }
    // Backing off until the gradients fit, then training proceeds.
    for (int i = 0; i < 40; ++i) s.run({{m->x, x}, {m->y, y}}, {}, {train});
    EXPECT_GT(s.variable_value(m->g.value("global_step")).item<int64_t>(), 0);
    EXPECT_FALSE(equal_bits(s.variable_value(m->w1), w1));
    for (const Value& v : m->g.variables())  // slots stay finite: skipped steps wrote nothing
      for (double e : testing::values(s.variable_value(v)))
        ASSERT_TRUE(std::isfinite(e)) << v.name();
  }
}

// Eight Adam steps on fixed batches; the losses.
std::vector<double> train_losses(DType low) {
  auto m = model();
  optim::Adam adam({.lr = 1e-2});
  if (low == f16) adam.with_loss_scaling({.initial = 1024});
  Value loss = low == f32 ? m->loss : autocast(m->loss, low);
  Value train = adam.minimize(loss);
  Session s(m->g);
  std::vector<double> losses;
  for (int step = 0; step < 8; ++step) {
    auto [x, y] = batch(step % 3);
    losses.push_back(s.run({{m->x, x}, {m->y, y}}, {loss}, {train})[0].item<double>());
  }
  return losses;
}

TEST(MixedPrecision, SixteenBitGraphsTrainOnTheCpuLikeF32) {
  const std::vector<double> reference = train_losses(f32);
  for (DType low : {bf16, f16}) {
    const std::vector<double> losses = train_losses(low);
    for (size_t i = 0; i < losses.size(); ++i)
      EXPECT_NEAR(losses[i], reference[i], 0.03 * (1 + std::abs(reference[i])))
          << low << " step " << i;
    EXPECT_LT(losses.back(), losses.front() - 0.1) << low;
  }
}

// A pre-norm transformer block (attention, layer norm, GELU, dropout) under bf16 autocast runs
// on the CPU, forward and backward, close to its f32 self.
TEST(MixedPrecision, TransformerBlockRunsInBf16OnTheCpu) {
  Graph g;
  Value x = g.placeholder("x", f32, {2, 16, 32});
  nn::TransformerBlock block(g, "block", 32, 4, {.dropout = 0.0, .causal = true});
  Value loss = mean(square(block(x)));
  Value low = autocast(loss, bf16);
  std::vector<Value> grads = gradients(low, {x});
  std::vector<Value> f32_grads = gradients(loss, {x});
  Session s(g);
  Tensor input = testing::random_tensor(f32, {2, 16, 32}, -1, 1, 3);
  std::vector<Tensor> out = s.run({{x, input}}, {loss, low, f32_grads[0], grads[0]});
  EXPECT_NEAR(out[1].item<double>(), out[0].item<double>(), 0.02 * out[0].item<double>());
  EXPECT_EQ(out[3].dtype(), f32);
  const std::vector<float> want = out[2].to_vector<float>(), got = out[3].to_vector<float>();
  double err = 0, norm = 0;
  for (size_t i = 0; i < want.size(); ++i) {
    err += (got[i] - want[i]) * (got[i] - want[i]);
    norm += want[i] * want[i];
  }
  EXPECT_LT(std::sqrt(err / norm), 0.05);  // relative error of the whole gradient
}

}  // namespace
}  // namespace kiln
