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

}  // namespace
}  // namespace kiln
