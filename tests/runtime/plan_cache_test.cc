// The session's plan cache: bounded, least recently used first out, memory that stays bounded
// when every run has a new batch size.
#include <fstream>

#include "test_util.h"

namespace kiln {
namespace {

#if defined(__SANITIZE_ADDRESS__) || defined(__SANITIZE_THREAD__)
constexpr bool kSanitized = true;  // the sanitizer's own memory use hides ours
#elif defined(__has_feature)
#if __has_feature(address_sanitizer) || __has_feature(thread_sanitizer)
constexpr bool kSanitized = true;
#else
constexpr bool kSanitized = false;
#endif
#else
constexpr bool kSanitized = false;
#endif

int64_t resident_kib() {
  std::ifstream status("/proc/self/status");
  std::string line;
  while (std::getline(status, line))
    if (line.rfind("VmRSS:", 0) == 0) return std::stoll(line.substr(6));
  return 0;
}

// A cached plan is for its feeds' dtypes as well as their shapes: after an f32 run, an i32
// feed of the same shape gets the feed check's error, not the f32 plan.
TEST(PlanCache, AFeedOfAnotherDtypeNeverReusesAPlan) {
  Graph g;
  Value x = g.placeholder("x", f32, {-1, 3});
  Value y = sum(x * 2.0, {1});
  Session s(g);
  EXPECT_EQ(s.run({{x, Tensor::full(f32, {2, 3}, 1.0)}}, {y})[0].element(0), 6);
  testing::expect_error(
      [&] {
        s.run({{x, Tensor::full(i32, {2, 3}, 1.0)}}, {y});
      },
      {"[session] feed for placeholder 'x'", "dtype i32", "f32"});
  testing::expect_error(
      [&] {
        s.run({{x, Tensor()}}, {y});
      },
      {"[session] the feed for placeholder 'x'", "undefined"});
  EXPECT_EQ(s.num_compilations(), 1);
  // A value (not a placeholder) fed with the right dtype after one with the wrong one.
  Value twice = x * 2.0;
  testing::expect_error(
      [&] {
        s.run({{twice, Tensor::full(f64, {2, 3}, 1.0)}}, {y});
      },
      {"[session] feed for value", "dtype f64"});
  EXPECT_EQ(s.run({{twice, Tensor::full(f32, {2, 3}, 1.0)}}, {sum(twice, {1})})[0].element(0), 3);
}

TEST(PlanCache, KeepsTheMostRecentlyUsedPlansUpToItsLimit) {
  Graph g;
  Value x = g.placeholder("x", f32, {-1, 3});
  Value y = sum(x * 2.0, {1});
  Session s(g, {.max_cached_plans = 4});
  auto run = [&](int64_t batch) {
    Tensor out = s.run({{x, Tensor::full(f32, {batch, 3}, 1.0)}}, {y})[0];
    EXPECT_EQ(out.shape(), Shape({batch}));
    EXPECT_EQ(out.element(0), 6);
  };
  for (int64_t b = 1; b <= 4; ++b) run(b);
  EXPECT_EQ(s.num_compiled_plans(), 4u);
  run(1);  // batch 1 is now the most recent; batch 2 the least
  run(5);  // evicts batch 2
  EXPECT_EQ(s.num_compiled_plans(), 4u);
  EXPECT_EQ(s.num_compilations(), 5);
  run(1);
  run(3);
  EXPECT_EQ(s.num_compilations(), 5);  // still cached
  run(2);                              // was evicted: compiled again
  EXPECT_EQ(s.num_compilations(), 6);
  testing::expect_error([&] { Session bad(g, {.max_cached_plans = 0}); }, {"max_cached_plans"});
}

// The reported case: every batch size compiled a plan and kept its arena (2,000 sizes took
// 2.4 GB). Plans are bounded now, and a session's CPU plans share one arena.
TEST(PlanCache, MemoryStaysBoundedWhenEveryRunHasANewBatchSize) {
  Graph g;
  Value x = g.placeholder("x", f32, {-1, 784});
  Value y = g.placeholder("y", i64, {-1});
  Value w1 = g.variable("w1", {784, 512}, init::he_normal(1));
  Value w2 = g.variable("w2", {512, 512}, init::he_normal(2));
  Value w3 = g.variable("w3", {512, 10}, init::he_normal(3));
  Value loss = mean(softmax_cross_entropy(matmul(relu(matmul(relu(matmul(x, w1)), w2)), w3), y));
  Value train = optim::SGD({.lr = 0.01, .momentum = 0.9}).minimize(loss);
  Session s(g);
  auto step = [&](int64_t batch) {
    s.run({{x, Tensor::zeros(f32, {batch, 784})}, {y, Tensor::zeros(i64, {batch})}}, {loss},
          {train});
  };
  step(1000);
  const int64_t before = resident_kib();
  const int64_t sizes = kSanitized ? 40 : 300;
  for (int64_t batch = 1001; batch <= 1000 + sizes; ++batch) step(batch);
  const int64_t grown_mib = (resident_kib() - before) / 1024;
  EXPECT_EQ(s.num_compiled_plans(), 32u);
  EXPECT_EQ(s.num_compilations(), sizes + 1);
  if (kSanitized) GTEST_SKIP() << "resident memory is not measured under a sanitizer";
  // Each of these plans has a ~20 MiB arena: 300 kept plans would be ~6 GiB.
  EXPECT_LT(grown_mib, 400) << "resident memory grew by " << grown_mib << " MiB";
  std::printf("[plan-cache] 300 new batch sizes: resident memory +%lld MiB, %zu plans kept\n",
              static_cast<long long>(grown_mib), s.num_compiled_plans());
}

}  // namespace
}  // namespace kiln
