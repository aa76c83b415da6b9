// Training with several threads must be repeatable bit for bit: every parallel split in Kiln
// depends only on sizes, and concurrent BLAS calls must not interfere.
#include "test_util.h"

namespace kiln {
namespace {

std::vector<double> train_losses(int threads) {
  Graph g;
  Value x = g.placeholder("x", f32, {-1, 96});
  Value y = g.placeholder("y", i64, {-1});
  Value h = x;
  int64_t width = 96;
  for (int layer = 0; layer < 3; ++layer) {
    NameScope scope(g, str("dense", layer));
    Value w = g.variable("w", {width, 160}, init::he_normal(layer + 1));
    Value b = g.variable("b", {160}, init::zeros());
    h = relu(matmul(h, w) + b);
    width = 160;
  }
  Value w = g.variable("out", {width, 7}, init::glorot_uniform(9));
  Value loss = mean(softmax_cross_entropy(matmul(h, w), y));
  Value train = optim::Adam({.lr = 3e-3}).minimize(loss);
  Session s(g, {.intra_op_threads = threads});
  std::vector<double> losses;
  for (int step = 0; step < 25; ++step) {
    Tensor xb = testing::random_tensor(f32, {256, 96}, -1, 1, 1000 + step);
    Tensor yb = Tensor::empty(i64, {256});
    for (int i = 0; i < 256; ++i) yb.data<int64_t>()[i] = (i * 7 + step) % 7;
    losses.push_back(s.run({{x, xb}, {y, yb}}, {loss}, {train})[0].item<double>());
  }
  return losses;
}

TEST(Determinism, TrainingIsRepeatableWithThreads) {
  const std::vector<double> first = train_losses(2);
  for (int repeat = 0; repeat < 3; ++repeat)
    EXPECT_EQ(train_losses(2), first) << "repeat " << repeat;
  EXPECT_LT(first.back(), first.front());
}

}  // namespace
}  // namespace kiln
