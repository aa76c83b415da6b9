#include <numeric>

#include "test_util.h"

namespace kiln {
namespace {

TEST(Random, SameSeedSameNumbersOnEveryThreadCount) {
  for (bool normal : {false, true}) {
    Graph g;
    Value r = normal ? random_normal(g, {1000, 257}, 0, 1, 42)
                     : random_uniform(g, {1000, 257}, -1, 1, 42);
    Tensor one = testing::run1(g, r, {}, 1);
    Tensor two = testing::run1(g, r, {}, 2);
    Tensor again = testing::run1(g, r, {}, 4);
    EXPECT_TRUE(equal_bits(one, two));
    EXPECT_TRUE(equal_bits(one, again));
    Value other = normal ? random_normal(g, {1000, 257}, 0, 1, 43)
                         : random_uniform(g, {1000, 257}, -1, 1, 43);
    EXPECT_FALSE(equal_bits(one, testing::run1(g, other)));
  }
}

TEST(Random, KnownValuesDoNotDrift) {
  // Pinned outputs: a change to the generator would change every saved experiment.
  Graph g;
  Tensor u = testing::run1(g, random_uniform(g, {3}, 0, 1, 7, f64));
  Tensor again = testing::run1(g, random_uniform(g, {5}, 0, 1, 7, f64));
  for (int i = 0; i < 3; ++i) EXPECT_EQ(u.element(i), again.element(i));  // prefix-stable
  for (int i = 0; i < 3; ++i) {
    EXPECT_GE(u.element(i), 0);
    EXPECT_LT(u.element(i), 1);
  }
  Tensor f = testing::run1(g, random_uniform(g, {3}, 0, 1, 7, f32));
  for (int i = 0; i < 3; ++i) EXPECT_NEAR(f.element(i), u.element(i), 1e-7);
  const double pinned_uniform[] = {0.95459712616869996, 0.40696040443034931, 0.0060751289148938126};
  const float pinned_normal[] = {1.87387967f, 0.482316047f, 0.0391229019f};
  Tensor z = testing::run1(g, random_normal(g, {3}, 0, 1, 7, f32));
  for (int i = 0; i < 3; ++i) {
    EXPECT_EQ(u.element(i), pinned_uniform[i]);
    EXPECT_FLOAT_EQ(static_cast<float>(z.element(i)), pinned_normal[i]);
  }
}

TEST(Random, UniformAndNormalStatistics) {
  Graph g;
  const int64_t n = 1 << 20;
  Tensor u = testing::run1(g, random_uniform(g, {n}, 2, 4, 1, f64));
  Tensor z = testing::run1(g, random_normal(g, {n}, 1, 3, 2, f64));
  auto moments = [](const Tensor& t) {
    double m = 0, v = 0;
    for (double x : testing::values(t)) m += x;
    m /= t.numel();
    for (double x : testing::values(t)) v += (x - m) * (x - m);
    return std::make_pair(m, v / t.numel());
  };
  auto [um, uv] = moments(u);
  EXPECT_NEAR(um, 3, 0.005);
  EXPECT_NEAR(uv, 4.0 / 12, 0.005);
  double lo = 10, hi = -10;
  for (double x : testing::values(u)) lo = std::min(lo, x), hi = std::max(hi, x);
  EXPECT_GE(lo, 2);
  EXPECT_LT(hi, 4);
  auto [zm, zv] = moments(z);
  EXPECT_NEAR(zm, 1, 0.01);
  EXPECT_NEAR(zv, 9, 0.05);
  // About 68.3% within one standard deviation.
  int64_t within = 0;
  for (double x : testing::values(z)) within += std::abs(x - 1) < 3;
  EXPECT_NEAR(static_cast<double>(within) / n, 0.6827, 0.003);
}

// An op with the random trait draws anew on every run: the counter advances once per run
// that executes it, the passes neither fold nor merge it, and a checkpoint restores the
// sequence exactly.
TEST(Random, DropoutMaskDrawsAnewEachRunAndResumesFromACheckpoint) {
  Graph g;
  Value x = g.constant(Tensor::full(f32, {64, 50}, 1.0));
  Value a = dropout_mask(x, 0.25, 7);
  Value b = dropout_mask(x, 0.25, 7);  // same seed and input, another node: another mask
  Value counter = random_counter(g);
  Session s(g);
  std::vector<std::vector<float>> masks;
  for (int run = 0; run < 3; ++run) {
    auto out = s.run({}, {a, b});
    masks.push_back(out[0].to_vector<float>());
    EXPECT_NE(masks.back(), out[1].to_vector<float>()) << "two nodes drew the same mask";
  }
  EXPECT_NE(masks[0], masks[1]);
  EXPECT_NE(masks[1], masks[2]);
  EXPECT_EQ(s.variable_value(counter).item<int64_t>(), 3);
  int64_t kept = 0;
  for (float v : masks[0]) {
    ASSERT_TRUE(v == 0.0f || v == 1.0f / 0.75f) << v;
    kept += v != 0;
  }
  EXPECT_NEAR(static_cast<double>(kept) / masks[0].size(), 0.75, 0.05);
  // Neither folded (its inputs are constants) nor merged by CSE.
  int draws = 0;
  const Plan& plan = s.plan({}, {a, b});
  for (const PlanStep& step : plan.steps)
    draws += plan.graph->node(step.node).op_name() == "dropout_mask";
  EXPECT_EQ(draws, 2);

  // Save after three runs; the fourth run's mask comes back in a restored session.
  const std::string path = testing::tmp("dropout.ckpt");
  s.save_checkpoint(path);
  const auto fourth = s.run({}, {a})[0].to_vector<float>();
  Session restored(g);
  restored.restore_checkpoint(path);
  EXPECT_EQ(restored.run({}, {a})[0].to_vector<float>(), fourth);
  // A run without a random op leaves the counter alone.
  restored.run({}, {x});
  EXPECT_EQ(restored.variable_value(counter).item<int64_t>(), 4);
}

// Channel dropout zeroes whole (example, channel) planes and drop_path whole examples, over an
// unknown batch; a new draw every run; the gradient is the mask; evaluation mode is x itself;
// the layers check their input's rank.
TEST(Random, ChannelDropoutAndDropPathZeroWholeChannelsAndExamples) {
  Graph g;
  Value x = g.placeholder("x", f32, {-1, 16, 5, 3});
  const Value channels = channel_dropout(x, 0.4, true, 3);
  const Value examples = drop_path(x, 0.25, true, 4);
  const Value dx = gradients(sum(channels), {x})[0];
  EXPECT_EQ(channel_dropout(x, 0.4, false).node_id(), x.node_id());
  EXPECT_EQ(drop_path(x, 0.25, false).node_id(), x.node_id());
  Session s(g);
  const FeedList feeds = {{x, Tensor::full(f32, {40, 16, 5, 3}, 1.0)}};
  auto count_zero_blocks = [](const std::vector<float>& v, size_t block, float keep) {
    int64_t zero = 0;
    for (size_t b = 0; b < v.size() / block; ++b) {
      for (size_t i = 1; i < block; ++i) EXPECT_EQ(v[b * block + i], v[b * block]) << "block " << b;
      EXPECT_TRUE(v[b * block] == 0.0f || v[b * block] == keep) << v[b * block];
      zero += v[b * block] == 0.0f;
    }
    return zero;
  };
  const auto first = s.run(feeds, {channels, examples, dx});
  const auto planes = first[0].to_vector<float>();
  EXPECT_NEAR(count_zero_blocks(planes, 15, 1 / 0.6f) / 640.0, 0.4, 0.06);
  EXPECT_EQ(first[2].to_vector<float>(), planes);  // d sum(x mask) / dx = mask (x is ones)
  EXPECT_NEAR(count_zero_blocks(first[1].to_vector<float>(), 240, 1 / 0.75f) / 40.0, 0.25, 0.15);
  EXPECT_NE(s.run(feeds, {channels})[0].to_vector<float>(), planes);  // a new draw

  nn::Dropout2d layer(g, "drop2d", 0.5);
  EXPECT_EQ(layer(x).shape(), x.shape());
  layer.eval();
  EXPECT_EQ(layer(x).node_id(), x.node_id());
  testing::expect_error<GraphError>([&] { nn::Dropout3d(g, "drop3d", 0.5)(x); },
                                    {"[nn] Dropout3d drop3d", "x [?, 16, 5, 3] must have rank 5"});
  testing::expect_error<GraphError>([&] { nn::Dropout1d(g, "drop1d", 1.0); },
                                    {"[nn] Dropout1d drop1d: rate 1 must be in [0, 1)"});
  testing::expect_error<GraphError>([&] { nn::DropPath(g, "path", -0.1); },
                                    {"[nn] DropPath path: rate -0.1"});
  testing::expect_error<GraphError>([&] { channel_dropout(g.scalar(1.0, f32), 0.5, true); },
                                    {"[channel_dropout]", "must be [N, C, ...]"});
  testing::expect_error<GraphError>([&] { drop_path(g.scalar(1.0, f32), 0.5, true); },
                                    {"[drop_path]", "needs a batch dim 0"});
}

TEST(Random, ARandomOpNeedsTheCounterVariable) {
  Graph g;
  Value x = g.placeholder("x", f32, {3});
  testing::expect_error(
      [&] {
        g.add("dropout_mask", {x, g.scalar(0, i64)});
      },
      {"[dropout_mask]", "'counter' must be an i64 scalar variable"});
  testing::expect_error([&] { dropout_mask(x, 1.0); }, {"rate 1 must be in [0, 1)"});
}

}  // namespace
}  // namespace kiln
