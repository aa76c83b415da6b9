// SyncBatchNorm in one process (a world of one rank): it normalizes, trains and keeps running
// statistics as BatchNorm does, through its combined-statistics path; and its errors. Several
// ranks against one process on the whole batch: launched_data_parallel.cc.
#include <gtest/gtest.h>

#include "tests/distributed/dp_model.h"
#include "tests/test_util.h"

namespace kiln {
namespace {

using testing::bn_batch;
using testing::BnModel;
using testing::build_bn_model;

double max_relative_difference(const Tensor& a, const Tensor& b) {
  const auto x = a.to_vector<double>(), y = b.to_vector<double>();
  EXPECT_EQ(x.size(), y.size());
  double worst = 0;
  for (size_t i = 0; i < x.size() && i < y.size(); ++i)
    worst = std::max(worst, std::abs(x[i] - y[i]) / (1 + std::abs(y[i])));
  return worst;
}

TEST(SyncBatchNorm, AtOneRankItTrainsAsBatchNorm) {
  BnModel synced, plain;
  build_bn_model(synced, /*sync_batch_norm=*/true, /*data_parallel=*/false);
  build_bn_model(plain, false, false);
  Session a(synced.g), b(plain.g);
  b.initialize_variables();
  a.set_variables(b.variable_values());  // the same start
  for (uint32_t step = 0; step < 4; ++step) {
    auto batch = bn_batch(12 + 4 * step, step);  // batches of different sizes
    const FeedList feeds_a{{synced.x, batch.first}, {synced.y, batch.second}};
    const FeedList feeds_b{{plain.x, batch.first}, {plain.y, batch.second}};
    auto out_a = a.run(feeds_a, {synced.out}, {synced.train});
    auto out_b = b.run(feeds_b, {plain.out}, {plain.train});
    EXPECT_LT(max_relative_difference(out_a[0], out_b[0]), 1e-5) << "step " << step;
  }
  // Weights (so the gradients) and running statistics after four steps of Adam.
  for (size_t v = 0; v < synced.variables.size(); ++v)
    EXPECT_LT(max_relative_difference(a.variable_value(synced.variables[v]),
                                      b.variable_value(plain.variables[v])),
              1e-5)
        << synced.variables[v].name();
  // Evaluation is BatchNorm's: the running statistics.
  synced.bn->eval();
  plain.bn->eval();
  const Value eval_a = (*synced.bn)(synced.x), eval_b = (*plain.bn)(plain.x);
  auto batch = bn_batch(7, 99);
  EXPECT_LT(max_relative_difference(a.run({{synced.x, batch.first}}, {eval_a})[0],
                                    b.run({{plain.x, batch.first}}, {eval_b})[0]),
            1e-6);
  // The variables are BatchNorm's, under the same names.
  EXPECT_EQ(a.variable_values().size(), b.variable_values().size());
  EXPECT_TRUE(synced.g.find_node("bn/running_var"));
}

TEST(SyncBatchNorm, ErrorsNameTheLayerAndTheStatistics) {
  Graph g;
  distributed::SyncBatchNorm bn(g, "bn", 3);
  testing::expect_error([&] { bn(g.placeholder("v", f32, {3})); },
                        {"SyncBatchNorm bn", "expects [N, 3]", "got [3]"});
  // A combine that returns statistics of another shape.
  Value x = g.placeholder("x", f32, {4, 3});
  testing::expect_error(
      [&] {
        batch_norm(x, {}, {}, {}, {}, true, 0.1, 1e-5, {}, [](const BatchStatistics& s) {
          return BatchStatistics{s.count, s.mean, reshape(s.m2, Shape{1, 3})};
        });
      },
      {"batch_norm: the combined statistics must be a count [] and mean and m2 [3]"});
}

}  // namespace
}  // namespace kiln
