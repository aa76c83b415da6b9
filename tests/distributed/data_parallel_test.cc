// The data-parallel transform in one process (a world of one rank): bucket order and sizes,
// the schedule's overlap of communication with backward, equality with plain training,
// micro-batch accumulation, saving and loading, and its errors. Several ranks:
// launched_data_parallel.cc.
#include <gtest/gtest.h>

#include <fstream>
#include <random>
#include <set>

#include "kiln/runtime/plan.h"
#include "tests/distributed/dp_model.h"
#include "tests/test_util.h"

namespace kiln {
namespace {

using testing::build_dp_model;
using testing::dp_batch;
using testing::DpModel;

int64_t bytes(const Value& v) {
  return v.shape().numel() * 4;
}

TEST(DataParallel, BucketsFollowBackwardOrderAndTheirSize) {
  DpModel m;
  build_dp_model(m, {.bucket_bytes = 300});
  const auto& buckets = m.dp.buckets;
  ASSERT_GE(buckets.size(), 3u);
  // The last layer's gradients exist first: they are in the first bucket; the first layer's
  // in the last.
  auto has = [](const distributed::GradientBucket& b, const std::string& prefix) {
    return std::any_of(b.variables.begin(), b.variables.end(),
                       [&](const Value& v) { return v.name().starts_with(prefix); });
  };
  EXPECT_TRUE(has(buckets[0], "dense3/"));
  EXPECT_FALSE(has(buckets[0], "dense1/"));
  EXPECT_TRUE(has(buckets.back(), "dense1/"));
  std::set<std::string> seen;
  for (size_t k = 0; k < buckets.size(); ++k) {
    int64_t total = 0;
    bool aligned_part = true;  // sizes that are multiples of 64 bytes come first
    for (const Value& v : buckets[k].variables) {
      EXPECT_TRUE(seen.insert(v.name()).second) << v.name() << " is in two buckets";
      total += bytes(v);
      if (bytes(v) % 64 != 0) {
        aligned_part = false;
      } else {
        EXPECT_TRUE(aligned_part) << v.name() << " follows an odd-sized gradient";
      }
    }
    EXPECT_EQ(total, buckets[k].bytes);
    if (k + 1 < buckets.size()) {
      EXPECT_GE(total, 300);  // every bucket but the last is full
    }
    EXPECT_EQ(buckets[k].reduced.node().op_name(), "all_reduce");
    EXPECT_EQ(buckets[k].reduced.node().template attr<std::string>("reduction"), "avg");
  }
  EXPECT_EQ(seen.size(), m.variables.size());
  // A small first bucket (DDP's), then full-size ones.
  DpModel first;
  build_dp_model(first, {.bucket_bytes = 2000, .first_bucket_bytes = 300});
  ASSERT_GE(first.dp.buckets.size(), 2u);
  EXPECT_GE(first.dp.buckets[0].bytes, 300);
  EXPECT_LT(first.dp.buckets[0].bytes, 2000);
  for (size_t k = 1; k + 1 < first.dp.buckets.size(); ++k)
    EXPECT_GE(first.dp.buckets[k].bytes, 2000);
  // The default: everything in one bucket.
  DpModel one;
  build_dp_model(one);
  EXPECT_EQ(one.dp.buckets.size(), 1u);
}

TEST(DataParallel, ThePlanAllReducesEachBucketAsSoonAsItIsReadyWhileBackwardGoesOn) {
  DpModel m;
  build_dp_model(m, {.bucket_bytes = 300});
  Session s(m.g, {.validate_memory_plan = true});
  auto [xb, yb] = dp_batch(8, 1);
  const Plan& plan = s.plan({{m.x, xb}, {m.y, yb}}, {m.loss}, {m.train});
  std::vector<int32_t> collectives;
  for (int32_t i = 0; i < static_cast<int32_t>(plan.steps.size()); ++i)
    if (plan.graph->node(plan.steps[i].node).op_name() == "all_reduce") collectives.push_back(i);
  ASSERT_EQ(collectives.size(), m.dp.buckets.size());
  std::vector<int32_t> producer(plan.num_slots, -1);
  for (int32_t i = 0; i < static_cast<int32_t>(plan.steps.size()); ++i)
    for (int32_t slot : plan.steps[i].output_slots) producer[slot] = i;
  int packed = 0;
  for (int32_t c : collectives) {
    const PlanStep& step = plan.steps[c];
    EXPECT_EQ(plan.stream_kinds[step.stream], StreamKind::communication);
    // As soon as its packed input exists: the step just before it made that input.
    EXPECT_EQ(producer[step.input_slots[0]], c - 1) << "bucket at step " << c;
    // A packed bucket (a concat's buffer) is reduced in place: no copy for the collective.
    if (plan.graph->node(plan.steps[c - 1].node).op_name() == "concat") {
      EXPECT_EQ(plan.in_place_of[step.output_slots[0]], step.input_slots[0]);
      ++packed;
    }
  }
  EXPECT_GE(packed, 1);
  // Packing costs no copy where the layout allows: the weight gradients (whole multiples of
  // the arena's alignment, at aligned places) are computed straight into their bucket.
  int in_bucket = 0;
  for (int32_t slot = 0; slot < plan.num_slots; ++slot)
    if (plan.packed_into[slot] >= 0) {
      ++in_bucket;
      EXPECT_EQ(plan.graph->node(plan.steps[producer[slot]].node).op_name(), "matmul");
      EXPECT_EQ(plan.graph->node(plan.steps[producer[plan.packed_into[slot]]].node).op_name(),
                "concat");
    }
  EXPECT_GE(in_bucket, 2);
  EXPECT_NO_THROW(validate_memory_plan(plan));
  // Overlap: after the first all-reduce, backward still has products to compute that do not
  // wait for it (the earlier layers' gradients), and every update comes after the last
  // gradient product.
  const HappensBefore order(plan);
  int independent_products = 0, last_product = -1, first_update = -1;
  for (int32_t i = 0; i < static_cast<int32_t>(plan.steps.size()); ++i) {
    const std::string& op = plan.graph->node(plan.steps[i].node).op_name();
    if (op == "matmul" || op == "matmul_bias") {
      last_product = i;
      if (i > collectives[0] && !order.before(collectives[0], i)) ++independent_products;
    }
    if (op == "adam_update" && first_update < 0) first_update = i;
  }
  EXPECT_GE(independent_products, 2);
  EXPECT_GT(first_update, last_product);
  // The Chrome trace shows the collectives on the communication stream (its own tid).
  const std::string trace = testing::tmp("dp_trace.json");
  Session traced(m.g, {.trace_path = trace});
  traced.run({{m.x, xb}, {m.y, yb}}, {m.loss}, {m.train});
  traced.write_trace(trace);
  std::ifstream in(trace);
  const std::string json((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  EXPECT_NE(json.find("\"cat\": \"all_reduce\""), std::string::npos);
  EXPECT_NE(json.find(str("\"tid\": ", plan.num_streams - 1)), std::string::npos);
}

// At world size 1 the average is the identity: the same numbers as training without it.
TEST(DataParallel, OneProcessTrainsExactlyAsWithoutTheTransform) {
  DpModel dp, plain;
  build_dp_model(dp, {.bucket_bytes = 300});
  build_dp_model(plain, {.data_parallel = false});
  Session a(dp.g), b(plain.g);
  a.run({}, {}, {dp.sync});
  for (uint32_t step = 0; step < 4; ++step) {
    auto [xb, yb] = dp_batch(16, step);
    a.run({{dp.x, xb}, {dp.y, yb}}, {}, {dp.train});
    b.run({{plain.x, xb}, {plain.y, yb}}, {}, {plain.train});
  }
  for (size_t i = 0; i < dp.variables.size(); ++i)
    testing::expect_near(testing::values(b.variable_value(plain.variables[i])),
                         a.variable_value(dp.variables[i]), 0, 0, dp.variables[i].name());
}

// ZeroRedundancyOptimizer's partition: largest first, each to the rank holding the fewest
// bytes so far, the lowest on ties.
TEST(DataParallel, PartitionVariablesBalancesTheirBytesLargestFirst) {
  Graph g;
  std::vector<Value> vars;
  for (int64_t n : {10, 100, 40, 60, 50, 40})
    vars.push_back(g.variable(str("v", vars.size()), {n}, init::zeros()));
  // Sorted: v1 100, v3 60, v4 50, v2 40, v5 40, v0 10 over two ranks:
  // 100→0; 60→1; 50→1 (60 < 100); 40 (v2)→0 (100 < 110); 40 (v5)→1 (140 > 110); 10→0 (140, 150).
  EXPECT_EQ(distributed::partition_variables(vars, 2), (std::vector<int64_t>{0, 0, 0, 1, 1, 1}));
  // Three ranks: 100→0, 60→1, 50→2, 40→2 (50 the least), 40→1 (60), 10→2 (100, 100, 90).
  EXPECT_EQ(distributed::partition_variables(vars, 3), (std::vector<int64_t>{2, 0, 2, 1, 2, 1}));
  EXPECT_EQ(distributed::partition_variables(vars, 1), std::vector<int64_t>(6, 0));
  // More ranks than variables: some own none.
  EXPECT_EQ(distributed::partition_variables({vars[0], vars[1]}, 4), (std::vector<int64_t>{1, 0}));
  EXPECT_THROW(distributed::partition_variables(vars, 0), GraphError);
}

// Trains `sharded` and `plain` 4 steps on the same batches; their weights and moving averages
// must end bit for bit alike. Returns both sessions.
std::pair<std::unique_ptr<Session>, std::unique_ptr<Session>> expect_same_training(DpModel& sharded,
                                                                                   DpModel& plain) {
  auto a = std::make_unique<Session>(sharded.g);
  auto b = std::make_unique<Session>(plain.g);
  for (uint32_t step = 0; step < 4; ++step) {
    auto [xb, yb] = dp_batch(16, step);
    a->run({{sharded.x, xb}, {sharded.y, yb}}, {}, {sharded.train});
    b->run({{plain.x, xb}, {plain.y, yb}}, {}, {plain.train});
  }
  for (size_t i = 0; i < sharded.variables.size(); ++i) {
    testing::expect_near(testing::values(b->variable_value(plain.variables[i])),
                         a->variable_value(sharded.variables[i]), 0, 0,
                         sharded.variables[i].name());
    testing::expect_near(testing::values(b->variable_value(plain.averages[i])),
                         a->variable_value(sharded.averages[i]), 0, 0, sharded.averages[i].name());
  }
  return {std::move(a), std::move(b)};
}

// In one process the sharded step owns everything: the same numbers as the plain step, and the
// moving average (read through Optimizer::updated) moves alike.
TEST(DataParallel, ShardedOptimizerStateInOneProcessTrainsExactlyAsUnsharded) {
  DpModel sharded, plain;
  build_dp_model(sharded, {.bucket_bytes = 300, .shard_optimizer_state = true, .average = true});
  build_dp_model(plain, {.data_parallel = false, .average = true});
  EXPECT_EQ(sharded.dp.owners, std::vector<int64_t>(sharded.variables.size(), 0));
  EXPECT_EQ(sharded.dp.world_size, 1);
  expect_same_training(sharded, plain);
}

// Sharded gradients (ZeRO stage 2) at world size 1: every bucket is reduce-scattered (an
// identity here), this one rank owns every gradient, and with clipping and loss scaling it
// trains bit for bit as without the transform (the norm and the overflow probe pass through
// the all-reduces over ranks unchanged).
TEST(DataParallel, ShardedGradientsInOneProcessTrainExactlyAsUnsharded) {
  DpModel sharded, plain;
  build_dp_model(sharded, {.bucket_bytes = 300,
                           .shard_gradients = true,
                           .clip_norm = 0.05,
                           .loss_scaling = true,
                           .average = true});
  build_dp_model(
      plain, {.data_parallel = false, .clip_norm = 0.05, .loss_scaling = true, .average = true});
  EXPECT_EQ(sharded.dp.owners, std::vector<int64_t>(sharded.variables.size(), 0));
  EXPECT_TRUE(sharded.dp.gradients_sharded);
  ASSERT_GE(sharded.dp.buckets.size(), 2u);
  for (const distributed::GradientBucket& bucket : sharded.dp.buckets) {
    EXPECT_TRUE(bucket.scattered);
    EXPECT_EQ(bucket.reduced.node().op_name(), "reduce_scatter");
    // Padded to whole 64-byte lines.
    EXPECT_EQ(bucket.reduced.shape().numel() % 16, 0) << bucket.reduced.shape();
  }
  for (const auto& p : sharded.dp.gradients) EXPECT_TRUE(p.gradient.defined());
  auto [a, b] = expect_same_training(sharded, plain);
  EXPECT_EQ(a->variable_value(sharded.g.value("loss_scale")).element(0),
            b->variable_value(plain.g.value("loss_scale")).element(0));
}

// Two micro-batches of 8 (accumulate, then step) update as one batch of 16 does.
// A per-channel scale's gradient is sum_to(dy * x): the sum may alias its input where it
// reduces nothing, but here it reduces a [32, 16, 2, 2] product to [1, 16, 1, 1]. The planner
// once followed it as a view and wrote the whole product into the gradient's 64 bytes of the
// bucket, over the next gradient (found by the CNN example training badly with batch norm).
TEST(DataParallel, AGradientReducedFromALargerValueIsNotPackedAsAView) {
  auto train = [](bool data_parallel) {
    Graph g;
    Value x = g.placeholder("x", f32, {-1, 16, 2, 2});
    Value scale = g.variable("scale", {16}, init::constant(1));
    Value w = g.variable("w", {64, 16}, init::uniform(-0.5, 0.5, 1));
    Value h = tanh(x * reshape(scale, {1, 16, 1, 1}));
    Value loss = mean(square(matmul(reshape(h, {-1, 64}), w)));
    optim::SGD sgd({.lr = 0.1});
    Value step = data_parallel ? distributed::data_parallel(sgd.compute_gradients(loss)).apply(sgd)
                               : sgd.minimize(loss);
    Session s(g, {.validate_memory_plan = true});
    Tensor xs = testing::random_tensor(f32, {32, 16, 2, 2}, -1, 1, 3);
    for (int i = 0; i < 3; ++i) s.run({{x, xs}}, {}, {step});
    return s.run({}, {scale, w});
  };
  std::vector<Tensor> plain = train(false), dp = train(true);
  for (size_t i = 0; i < plain.size(); ++i)
    EXPECT_EQ(dp[i].to_vector<float>(), plain[i].to_vector<float>()) << i;
}

TEST(DataParallel, AccumulationOverMicroBatchesEqualsOneBigBatch) {
  DpModel dp, plain;
  build_dp_model(dp, {.bucket_bytes = 300, .accumulation_steps = 2});
  build_dp_model(plain, {.data_parallel = false});
  ASSERT_TRUE(dp.accumulate.defined());
  Session a(dp.g), b(plain.g);
  for (uint32_t step = 0; step < 3; ++step) {
    auto batch = dp_batch(16, step);
    auto first = testing::dp_rows(batch, 0, 8), second = testing::dp_rows(batch, 8, 16);
    a.run({{dp.x, first.first}, {dp.y, first.second}}, {}, {dp.accumulate});
    a.run({{dp.x, second.first}, {dp.y, second.second}}, {}, {dp.train});
    b.run({{plain.x, batch.first}, {plain.y, batch.second}}, {}, {plain.train});
  }
  for (size_t i = 0; i < dp.variables.size(); ++i)
    testing::expect_near(testing::values(b.variable_value(plain.variables[i])),
                         a.variable_value(dp.variables[i]), 1e-5, 1e-5, dp.variables[i].name());
  // The accumulators are zero again after each step.
  for (const Value& var : dp.g.variables()) {
    if (!var.name().ends_with("/grad_accumulator")) continue;
    EXPECT_EQ(testing::values(a.variable_value(var)),
              std::vector<double>(static_cast<size_t>(var.shape().numel()), 0.0))
        << var.name();
  }
}

// The transformed graph is a graph like any other: it saves, loads, trains and resumes.
TEST(DataParallel, TheTransformedGraphSavesLoadsAndResumes) {
  DpModel m;
  build_dp_model(m, {.bucket_bytes = 300});
  m.g.add_signature({"train", {m.x, m.y}, {m.loss}, {m.train}});
  m.g.add_signature({"sync", {}, {}, {m.sync}});
  const std::string graph = testing::tmp("dp.pb"), ckpt = testing::tmp("dp.ckpt");
  save_graph(m.g, graph);
  auto loaded = load_graph(graph);
  int collectives = 0;
  for (int32_t id = 0; id < loaded->num_nodes(); ++id)
    collectives += loaded->node(id).op().is_communication();
  std::set<DType> dtypes;  // broadcast_variables: one bucket per dtype
  for (const Value& var : m.g.variables()) dtypes.insert(var.dtype());
  EXPECT_EQ(collectives, static_cast<int>(m.dp.buckets.size() + dtypes.size()));
  Session a(m.g), b(*loaded);
  a.run({}, {}, {m.sync});
  b.run_signature("sync", {});
  auto [xb, yb] = dp_batch(16, 3);
  for (int step = 0; step < 2; ++step) {
    const double la = a.run({{m.x, xb}, {m.y, yb}}, {m.loss}, {m.train})[0].item<double>();
    const double lb = b.run_signature("train", {xb, yb})[0].item<double>();
    EXPECT_EQ(la, lb);
  }
  b.save_checkpoint(ckpt);
  Session c(*loaded);
  c.restore_checkpoint(ckpt);
  const double lb = b.run_signature("train", {xb, yb})[0].item<double>();
  const double lc = c.run_signature("train", {xb, yb})[0].item<double>();
  EXPECT_EQ(lb, lc);
}

TEST(DataParallel, ErrorsNameTheProblem) {
  DpModel m;
  build_dp_model(m, {.data_parallel = false});
  optim::SGD sgd;
  auto grads = sgd.compute_gradients(m.loss);
  testing::expect_error<GraphError>([&] { distributed::data_parallel({}); }, {"no gradients"});
  testing::expect_error<GraphError>([&] { distributed::data_parallel(grads, {.bucket_bytes = 0}); },
                                    {"bucket_bytes 0"});
  testing::expect_error<GraphError>(
      [&] { distributed::data_parallel(grads, {.accumulation_steps = 0}); },
      {"accumulation_steps 0"});
  // Accumulating in the optimizer and in data_parallel both would average twice.
  optim::SGD accumulating;
  accumulating.with_gradient_accumulation(2);
  testing::expect_error<GraphError>(
      [&] { distributed::data_parallel(grads, {.accumulation_steps = 2}).apply(accumulating); },
      {"[data_parallel]", "accumulates 2 micro-batches itself", "accumulate in one place"});
  // Sharded gradients: each rank holds only its share, so the optimizer cannot accumulate them.
  testing::expect_error<GraphError>(
      [&] { distributed::data_parallel(grads, {.shard_gradients = true}).apply(accumulating); },
      {"[optim]", "accumulates 2 micro-batches", "only its share of the gradients",
       "accumulation_steps"});
  Graph empty;
  testing::expect_error<GraphError>([&] { distributed::broadcast_variables(empty); },
                                    {"no variables"});
}

// Collectives built for another world size fail at run time naming both sizes; a reduction
// without a gradient says so.
TEST(Collectives, WorldSizeAndGradientErrors) {
  Graph g;
  Value x = g.placeholder("x", f32, {4, 2});
  Value gathered = distributed::all_gather(x, 2);
  EXPECT_EQ(gathered.shape(), Shape({2, 4, 2}));
  Session s(g);
  testing::expect_error<DistributedError>(
      [&] {
        s.run({{x, Tensor::full(f32, {4, 2}, 1.0)}}, {gathered});
      },
      {"built for a world of 2 ranks, run in one of 1"});
  testing::expect_error<GraphError>(
      [&] {
        distributed::reduce_scatter(g.placeholder("odd", f32, {3}), distributed::ReduceOp::sum, 2);
      },
      {"not a multiple of the world size 2"});
  testing::expect_error<GraphError>(
      [&] { distributed::all_reduce(g.placeholder("n", i64, {3}), distributed::ReduceOp::avg); },
      {"avg of i64"});
  Value peak = distributed::all_reduce(x, distributed::ReduceOp::max);
  testing::expect_error<GraphError>([&] { gradients(sum(peak), {x}); },
                                    {"the max reduction has no gradient"});
}

TEST(DataParallel, CompressedBucketsSendSixteenBitsAndRoundTheAverages) {
  for (DType wire : {bf16, f16}) {
    DpModel dp, rounded;
    build_dp_model(dp, {.bucket_bytes = 300, .compression = wire});
    build_dp_model(rounded, {.data_parallel = false, .round_gradients_to = wire});
    for (const distributed::GradientBucket& b : dp.dp.buckets) {
      EXPECT_EQ(b.dtype, f32);
      EXPECT_EQ(b.wire_dtype, wire);
      EXPECT_EQ(b.reduced.dtype(), wire);  // the all-reduce's
    }
    // At world size 1 the average of one rank is its gradient, rounded to 16 bits and back:
    // the same steps, bit for bit, as gradients rounded by hand.
    Session a(dp.g), b(rounded.g);
    for (uint32_t step = 0; step < 3; ++step) {
      auto batch = dp_batch(24, step);
      a.run({{dp.x, batch.first}, {dp.y, batch.second}}, {}, {dp.train});
      b.run({{rounded.x, batch.first}, {rounded.y, batch.second}}, {}, {rounded.train});
    }
    for (size_t v = 0; v < dp.variables.size(); ++v)
      EXPECT_EQ(a.variable_value(dp.variables[v]).to_vector<double>(),
                b.variable_value(rounded.variables[v]).to_vector<double>())
          << wire << " " << dp.variables[v].name();
  }
  DpModel plain;
  build_dp_model(plain, {.data_parallel = false});
  auto grads = optim::SGD({.lr = 0.1}).compute_gradients(plain.loss);
  testing::expect_error([&] { distributed::data_parallel(grads, {.compression = i32}); },
                        {"[data_parallel] compression to i32", "only f16 and bf16"});
  testing::expect_error([&] { distributed::data_parallel(grads, {.compression = f32}); },
                        {"compression to f32"});
}

// PowerSGD of rank 1 at world size 1, step by step against the algorithm written out here
// (Vogels et al.'s, as DDP's powerSGD_hook): M = G + E, P = M Q, P /= |P| + eps, Q = M^T P,
// G' = P Q^T, E = M - G'; Q warm-starts the next step. The bias (a vector) is sent whole.
TEST(PowerSgd, RankOneStepsFollowTheAlgorithmWithErrorFeedback) {
  testing::PowerSgdModel compressed(
      distributed::PowerSgdOptions{.rank = 1, .min_compression_rate = 0});
  testing::PowerSgdModel plain(std::nullopt);
  ASSERT_EQ(compressed.dp.buckets.size(), 1u);
  const distributed::GradientBucket& bucket = compressed.dp.buckets[0];
  ASSERT_EQ(bucket.low_rank.size(), 1u);
  EXPECT_EQ(bucket.low_rank[0].node().name(), "w");
  EXPECT_EQ(bucket.reduced.shape(), Shape({4}));         // the bias, whole
  ASSERT_EQ(bucket.collectives.size(), 3u);              // the bias, P, Q
  EXPECT_EQ(bucket.collectives[1].shape(), Shape({6}));  // P: 6 x 1
  EXPECT_EQ(bucket.collectives[2].shape(), Shape({4}));  // Q: 4 x 1
  Value error = compressed.variable_named("w/power_sgd_error");
  Value q = compressed.variable_named("w/power_sgd_q");
  EXPECT_EQ(error.node().name(), "data_parallel/w/power_sgd_error");
  EXPECT_EQ(q.node().name(), "data_parallel/w/power_sgd_q");
  EXPECT_TRUE(error.node().attr<bool>("rank_local"));
  EXPECT_FALSE(q.node().attr<bool>("rank_local"));

  Session s(compressed.g), reference(plain.g);
  std::vector<double> w = s.variable_value(compressed.w).to_vector<double>();
  std::vector<double> b(4, 0.0), e(24, 0.0);
  std::vector<double> qv = s.variable_value(q).to_vector<double>();
  for (uint32_t step = 0; step < 3; ++step) {
    auto batch = testing::power_sgd_batch(step);
    // The true gradients at the reference's weights.
    reference.set_variable(
        plain.w, Tensor::from_vector<float>(std::vector<float>(w.begin(), w.end()), {6, 4}));
    reference.set_variable(plain.b,
                           Tensor::from_vector<float>(std::vector<float>(b.begin(), b.end()), {4}));
    auto got = reference.run({{plain.x, batch.first}, {plain.y, batch.second}},
                             {plain.grads[0].gradient, plain.grads[1].gradient});
    const auto gw = got[0].to_vector<double>(), gb = got[1].to_vector<double>();
    std::vector<double> m(24), p(6, 0.0), q_new(4, 0.0);
    for (int i = 0; i < 24; ++i) m[i] = gw[i] + e[i];
    for (int i = 0; i < 6; ++i)
      for (int j = 0; j < 4; ++j) p[i] += m[i * 4 + j] * qv[j];
    double norm = 0;
    for (double v : p) norm += v * v;
    for (double& v : p) v /= std::sqrt(norm) + 1e-8;
    for (int j = 0; j < 4; ++j)
      for (int i = 0; i < 6; ++i) q_new[j] += m[i * 4 + j] * p[i];
    for (int i = 0; i < 6; ++i)
      for (int j = 0; j < 4; ++j) {
        const double approx = p[i] * q_new[j];
        e[i * 4 + j] = m[i * 4 + j] - approx;
        w[i * 4 + j] -= 0.1 * approx;
      }
    for (int j = 0; j < 4; ++j) b[j] -= 0.1 * gb[j];
    qv = q_new;
    s.run({{compressed.x, batch.first}, {compressed.y, batch.second}}, {}, {compressed.train});
    testing::expect_near(w, s.variable_value(compressed.w), 1e-5, 1e-5, str("w, step ", step));
    testing::expect_near(b, s.variable_value(compressed.b), 1e-5, 1e-5, str("b, step ", step));
    testing::expect_near(e, s.variable_value(error), 1e-5, 1e-5, str("error, step ", step));
    testing::expect_near(qv, s.variable_value(q), 1e-5, 1e-5, str("q, step ", step));
  }
  // The residue is real: a rank-1 step leaves most of a 6 x 4 gradient behind.
  double residue = 0;
  for (double v : e) residue = std::max(residue, std::abs(v));
  EXPECT_GT(residue, 1e-3);
}

// At full rank (a 6 x 4 gradient, rank 4) the projection keeps the whole gradient: training
// equals uncompressed training to rounding, and the error stays at rounding. Bad options name
// themselves.
TEST(PowerSgd, FullRankKeepsTheGradientAndBadOptionsAreRefused) {
  testing::PowerSgdModel compressed(
      distributed::PowerSgdOptions{.rank = 4, .min_compression_rate = 0});
  testing::PowerSgdModel plain(std::nullopt);
  Session s(compressed.g), reference(plain.g);
  for (uint32_t step = 0; step < 4; ++step) {
    auto batch = testing::power_sgd_batch(10 + step);
    s.run({{compressed.x, batch.first}, {compressed.y, batch.second}}, {}, {compressed.train});
    reference.run({{plain.x, batch.first}, {plain.y, batch.second}}, {}, {plain.train});
  }
  testing::expect_near(testing::values(reference.variable_value(plain.w)),
                       s.variable_value(compressed.w), 1e-5, 1e-5, "w");
  for (double v :
       s.variable_value(compressed.variable_named("w/power_sgd_error")).to_vector<double>())
    EXPECT_LT(std::abs(v), 1e-5);
  // The default rate 2: a 6 x 4 matrix shrinks enough at rank 1 (24 > 2 * 10) but not at
  // rank 2 (24 < 2 * 20), where it is sent whole.
  testing::PowerSgdModel kept(distributed::PowerSgdOptions{.rank = 2});
  EXPECT_TRUE(kept.dp.buckets[0].low_rank.empty());
  EXPECT_EQ(kept.dp.buckets[0].reduced.shape(), Shape({28}));
  testing::PowerSgdModel squeezed(distributed::PowerSgdOptions{.rank = 1});
  EXPECT_EQ(squeezed.dp.buckets[0].low_rank.size(), 1u);

  auto grads = plain.grads;
  testing::expect_error<GraphError>(
      [&] {
        distributed::data_parallel(grads, {.power_sgd = distributed::PowerSgdOptions{.rank = 0}});
      },
      {"[data_parallel] power_sgd's rank 0 must be at least 1"});
  testing::expect_error<GraphError>(
      [&] {
        distributed::data_parallel(
            grads, {.compression = bf16, .power_sgd = distributed::PowerSgdOptions{}});
      },
      {"power_sgd compresses the gradients itself: not with compression"});
  testing::expect_error<GraphError>(
      [&] {
        distributed::data_parallel(
            grads, {.shard_gradients = true, .power_sgd = distributed::PowerSgdOptions{}});
      },
      {"not with shard_gradients"});
}

}  // namespace
}  // namespace kiln
