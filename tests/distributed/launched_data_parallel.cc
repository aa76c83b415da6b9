// A data-parallel job, run under kiln-launch with 2 and 4 ranks (CTest label `distributed`):
//   1. collective ops in a graph, every dtype, sizes 0, 1 and a large odd size;
//   2. broadcast_variables makes every rank start from rank 0's values;
//   3. data-parallel training (buckets, then with two micro-batches per step) ends with the
//      variables of one process training on the concatenated batch;
//   4. rank 0's checkpoint restores on every rank;
//   5. sharded optimizer state (ZeRO stage 1) trains exactly as unsharded, each rank holding
//      only its variables' slots; each rank's own checkpoint resumes it, and all of them
//      together restore the unsharded run; the same with sharded gradients (stage 2), also
//      with clipping and loss scaling, and over variables of two dtypes;
//   6. SyncBatchNorm normalizes by every rank's batch and trains as BatchNorm on all of it;
//   7. gradients all-reduced in bf16 train as one process does, to bf16's precision.
// Prints one line per check and exits non-zero on any failure. For the launcher's tests,
// KILN_TEST_KILL_RANK=r makes rank r kill itself (SIGKILL) in the middle of training, and
// KILN_TEST_PID_DIR=d makes each rank write its pid to d/<rank>.pid.
#include <signal.h>
#include <unistd.h>

#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <functional>
#include <random>

#include "kiln/runtime/plan.h"
#include "tests/distributed/dp_model.h"

using namespace kiln;

namespace {

int failures = 0;

void check(bool ok, const std::string& what) {
  std::printf("%s %s\n", ok ? "ok" : "FAILED", what.c_str());
  failures += !ok;
}

// A tensor of `dtype` whose element i is f(i).
template <typename F>
Tensor make(DType dtype, int64_t n, F f) {
  Tensor t = Tensor::empty(dtype, Shape({n}));
  dispatch_all(dtype, [&](auto tag) {
    using T = decltype(tag);
    T* data = t.data<T>();
    for (int64_t i = 0; i < n; ++i) data[i] = convert<T>(f(i));
  });
  return t;
}

// The first i where got differs from want(i), or -1.
template <typename F>
int64_t first_difference(const Tensor& got, F want) {
  for (int64_t i = 0; i < got.numel(); ++i)
    if (got.element(i) != want(i)) return i;
  return -1;
}

void check_collectives(int64_t rank, int64_t world) {
  for (DType dtype : {f32, f64, f16, bf16, i32, i64, u8, boolean}) {
    for (int64_t n : {int64_t{0}, int64_t{1}, int64_t{100003}}) {
      // x_r[i] = (i mod 3) + r: small integers, exact in every dtype (bool: nonzero).
      auto value = [&](int64_t i, int64_t r) {
        const double v = static_cast<double>(i % 3 + r);
        return dtype == boolean ? static_cast<double>(v != 0) : v;
      };
      Graph g;
      Value x = g.placeholder("x", dtype, {n});
      Value xs = g.placeholder("xs", dtype, {n * world});
      Value summed = distributed::all_reduce(x, distributed::ReduceOp::sum);
      Value peak = distributed::all_reduce(x, distributed::ReduceOp::max);
      Value low = distributed::all_reduce(x, distributed::ReduceOp::min);
      Value from_last = distributed::broadcast(x, world - 1);
      Value gathered = distributed::all_gather(x);
      Value part = distributed::reduce_scatter(xs, distributed::ReduceOp::sum);
      Session s(g);
      auto out = s.run({{x, make(dtype, n, [&](int64_t i) { return value(i, rank); })},
                        {xs, make(dtype, n * world, [&](int64_t i) { return value(i, rank); })}},
                       {summed, peak, low, from_last, gathered, part});
      auto sum_of = [&](int64_t i) {
        double total = 0;
        for (int64_t r = 0; r < world; ++r) total += value(i, r);
        return dtype == boolean ? static_cast<double>(total != 0) : total;
      };
      const std::string what = str(dtype, " [", n, "]");
      check(first_difference(out[0], sum_of) < 0, "all_reduce sum " + what);
      check(first_difference(out[1], [&](int64_t i) { return value(i, world - 1); }) < 0,
            "all_reduce max " + what);
      check(first_difference(out[2], [&](int64_t i) { return value(i, 0); }) < 0,
            "all_reduce min " + what);
      check(first_difference(out[3], [&](int64_t i) { return value(i, world - 1); }) < 0,
            "broadcast " + what);
      check(out[4].shape() == Shape({world, n}) &&
                first_difference(out[4],
                                 [&](int64_t i) {
                                   return value(i % std::max<int64_t>(n, 1),
                                                i / std::max<int64_t>(n, 1));
                                 }) < 0,
            "all_gather " + what);
      check(out[5].shape() == Shape({n}) &&
                first_difference(out[5], [&](int64_t i) { return sum_of(rank * n + i); }) < 0,
            "reduce_scatter " + what);
    }
  }
}

double max_difference(Session& a, const testing::DpModel& ma, Session& b,
                      const testing::DpModel& mb) {
  double worst = 0;
  for (size_t v = 0; v < ma.variables.size(); ++v) {
    const auto x = a.variable_value(ma.variables[v]).to_vector<double>();
    const auto y = b.variable_value(mb.variables[v]).to_vector<double>();
    for (size_t i = 0; i < x.size(); ++i)
      worst = std::max(worst, std::abs(x[i] - y[i]) / (1 + std::abs(y[i])));
  }
  return worst;
}

void check_training(distributed::Group& group, const std::string& checkpoint) {
  const int64_t rank = group.rank(), world = group.world_size();
  constexpr int64_t kBatch = 48, kSteps = 6;
  const int64_t per_rank = kBatch / world;
  const char* kill_rank = std::getenv("KILN_TEST_KILL_RANK");

  for (int64_t micro : {1, 2}) {
    testing::DpModel dp, one;
    testing::build_dp_model(dp, {.bucket_bytes = 300, .accumulation_steps = micro});
    testing::build_dp_model(one, {.data_parallel = false});
    Session s(dp.g), reference(one.g);
    // Every rank starts from rank 0's values, whatever it held before.
    s.set_variable(dp.variables[0], Tensor::full(f32, dp.variables[0].shape(), double(rank + 1)));
    s.run({}, {}, {dp.sync});
    const auto synced = s.variable_value(dp.variables[0]).to_vector<double>();
    check(std::all_of(synced.begin(), synced.end(), [](double v) { return v == 1; }),
          str("broadcast_variables gives rank 0's values (micro-batches ", micro, ")"));
    reference.set_variable(one.variables[0], Tensor::full(f32, one.variables[0].shape(), 1.0));

    for (int64_t step = 0; step < kSteps; ++step) {
      if (kill_rank && std::atoll(kill_rank) == rank && step == kSteps / 2) {
        std::printf("rank %lld kills itself at step %lld\n", static_cast<long long>(rank),
                    static_cast<long long>(step));
        std::fflush(stdout);
        ::raise(SIGKILL);
      }
      auto batch = testing::dp_batch(kBatch, static_cast<uint32_t>(step));
      reference.run({{one.x, batch.first}, {one.y, batch.second}}, {}, {one.train});
      // This rank's rows, as `micro` micro-batches.
      const int64_t size = per_rank / micro;
      for (int64_t m = 0; m < micro; ++m) {
        const int64_t begin = rank * per_rank + m * size;
        auto rows = testing::dp_rows(batch, begin, begin + size);
        s.run({{dp.x, rows.first}, {dp.y, rows.second}}, {},
              {m + 1 < micro ? dp.accumulate : dp.train});
      }
    }
    const double difference = max_difference(s, dp, reference, one);
    // Averaging in another order than one process sums: f32 rounding only (measured about
    // 6e-8 on 2 and 4 ranks); summing instead of averaging would be off by orders more.
    check(difference < 1e-6,
          str("data-parallel training on ", world, " ranks (", dp.dp.buckets.size(),
              " buckets, micro-batches ", micro, ") equals one process on the whole batch: ",
              "max relative difference ", difference, " < 1e-6"));
    if (micro == 1) {
      if (rank == 0) s.save_checkpoint(checkpoint);
      group.communicator().barrier();
      Session restored(dp.g);
      restored.restore_checkpoint(checkpoint);
      check(max_difference(restored, dp, s, dp) == 0,
            "rank 0's checkpoint restores this rank's variables exactly");
    }
  }
}

// Gradients all-reduced in bf16 (DDP's bf16_compress_hook): training follows one process on
// the whole batch to bf16's precision, and is not the uncompressed run.
void check_compressed_training(distributed::Group& group) {
  const int64_t rank = group.rank(), world = group.world_size();
  constexpr int64_t kBatch = 48, kSteps = 4;
  const int64_t per_rank = kBatch / world;
  testing::DpModel dp, one;
  testing::build_dp_model(dp, {.bucket_bytes = 300, .compression = bf16});
  testing::build_dp_model(one, {.data_parallel = false});
  Session s(dp.g), reference(one.g);
  s.run({}, {}, {dp.sync});
  for (int64_t step = 0; step < kSteps; ++step) {
    auto batch = testing::dp_batch(kBatch, static_cast<uint32_t>(400 + step));
    auto rows = testing::dp_rows(batch, rank * per_rank, (rank + 1) * per_rank);
    s.run({{dp.x, rows.first}, {dp.y, rows.second}}, {}, {dp.train});
    reference.run({{one.x, batch.first}, {one.y, batch.second}}, {}, {one.train});
  }
  const double difference = max_difference(s, dp, reference, one);
  // bf16 keeps 8 bits of mantissa (relative 2^-9 per rounding); uncompressed stays within 1e-6.
  check(difference > 1e-6 && difference < 2e-3,
        str("data-parallel training with bf16 all-reduces on ", world,
            " ranks follows one process to bf16's precision: max relative difference ", difference,
            " in (1e-6, 2e-2)"));
}

// Every variable of the graph (weights, slots, averages, counters) equal in the two sessions.
bool same_state(Session& a, Session& b, Graph& graph) {
  for (const Value& v : graph.variables()) {
    const Tensor x = a.variable_value(v), y = b.variable_value(v);
    if (x.numel() != y.numel() || first_difference(x, [&](int64_t i) { return y.element(i); }) >= 0)
      return false;
  }
  return true;
}

// The plan's collectives in queue order ("all_reduce[84] all_gather[2, 40] ...").
std::string collectives_of(const Plan& plan) {
  std::string order;
  for (const PlanStep& st : plan.steps) {
    const Node& n = plan.graph->node(st.node);
    if (n.op().is_communication()) order += str(n.op_name(), st.output_types[0].shape, " ");
  }
  return order;
}

// Whether every rank queues the same collectives as this one (ranks whose queues differ hang
// or abort at the first difference): each rank's list is compared through a gather of hashes.
bool same_collectives_on_every_rank(distributed::Group& group, const Plan& plan) {
  const auto hash = static_cast<int64_t>(std::hash<std::string>()(collectives_of(plan)));
  if (std::getenv("KILN_TEST_PRINT_COLLECTIVES"))
    std::printf("rank %lld queues %s\n", static_cast<long long>(group.rank()),
                collectives_of(plan).c_str());
  const Tensor all = group.communicator().all_gather(Tensor::from_vector<int64_t>({hash}, {1}));
  for (int64_t r = 0; r < group.world_size(); ++r)
    if (all.data<int64_t>()[r] != hash) return false;
  return true;
}

// Sharded optimizer state (ZeRO stage 1), and with shard_gradients the gradients too (stage
// 2): each rank holds only its variables' slots, queues the collectives every other rank does,
// and trains as the unsharded run does (stage 1 bit for bit; stage 2 reduces in a ring, whose
// sums have one order on 2 ranks and another than the all-reduce's on more).
// Every variable of graph `gb` (in session b) equal to the one of its name in graph `ga`
// (session a): a rank's own weights, slots, averages and counters against a restored graph.
bool same_named_state(Session& a, Graph& ga, Session& b, Graph& gb) {
  for (const Value& v : gb.variables()) {
    if (!ga.find_node(v.node().name())) return false;
    const Tensor x = a.variable_value(ga.value(v.node().name())), y = b.variable_value(v);
    if (x.numel() != y.numel() || first_difference(x, [&](int64_t i) { return y.element(i); }) >= 0)
      return false;
  }
  return true;
}

void check_sharded_training(distributed::Group& group, const std::string& checkpoint,
                            bool shard_gradients) {
  const int64_t rank = group.rank(), world = group.world_size();
  constexpr int64_t kBatch = 48, kSteps = 4;
  const int64_t per_rank = kBatch / world;
  const std::string stage = shard_gradients ? "ZeRO stage 2" : "ZeRO stage 1";
  testing::DpModel sharded, plain;
  testing::build_dp_model(sharded, {.bucket_bytes = 300,
                                    .shard_optimizer_state = true,
                                    .shard_gradients = shard_gradients,
                                    .average = true});
  testing::build_dp_model(plain, {.bucket_bytes = 300, .average = true});
  // Only this rank's variables have Adam's moments here.
  int64_t owned = 0;
  for (size_t i = 0; i < sharded.variables.size(); ++i) {
    owned += sharded.dp.owners[i] == rank;
    const bool has_slot = sharded.g.find_node(sharded.variables[i].node().name() + "/adam_m");
    check(has_slot == (sharded.dp.owners[i] == rank),
          str("rank ", rank, " holds the slots of ", sharded.variables[i].name(),
              " exactly when it owns it (owner ", sharded.dp.owners[i], ")"));
  }
  check(owned > 0 && owned < static_cast<int64_t>(sharded.variables.size()),
        str("rank ", rank, " of ", world, " owns ", owned, " of ", sharded.variables.size(),
            " variables"));
  Session s(sharded.g), reference(plain.g);
  s.run({}, {}, {sharded.sync});
  reference.run({}, {}, {plain.sync});
  auto step = [&](Session& session, testing::DpModel& m, int64_t at) {
    auto batch = testing::dp_batch(kBatch, static_cast<uint32_t>(100 + at));
    auto rows = testing::dp_rows(batch, rank * per_rank, (rank + 1) * per_rank);
    session.run({{m.x, rows.first}, {m.y, rows.second}}, {}, {m.train});
  };
  {
    auto batch = testing::dp_batch(kBatch, 100);
    auto rows = testing::dp_rows(batch, rank * per_rank, (rank + 1) * per_rank);
    const Plan& plan =
        s.plan({{sharded.x, rows.first}, {sharded.y, rows.second}}, {}, {sharded.train});
    // The ranks must queue the same collectives in the same order: every bucket's all-reduce
    // or reduce-scatter (even where only other ranks read the average), then the gather of the
    // variables.
    const std::string order = collectives_of(plan);
    std::string want;
    for (const distributed::GradientBucket& bucket : sharded.dp.buckets) {
      check(bucket.scattered == shard_gradients, "the bucket is reduce-scattered with stage 2");
      want += str(shard_gradients ? "reduce_scatter" : "all_reduce", bucket.reduced.shape(), " ");
    }
    check(order.starts_with(want) && order.substr(want.size()).starts_with("all_gather") &&
              order.find("all_reduce", want.size()) == std::string::npos,
          str(stage, ": rank ", rank, " queues ", order));
    check(same_collectives_on_every_rank(group, plan),
          str(stage, ": every rank queues what rank ", rank, " does"));
    if (shard_gradients) {
      bool only_owned = true;
      for (size_t i = 0; i < sharded.dp.gradients.size(); ++i)
        only_owned &= sharded.dp.gradients[i].gradient.defined() == (sharded.dp.owners[i] == rank);
      check(only_owned,
            str("rank ", rank, " receives the averaged gradients of its variables only"));
    }
  }
  for (int64_t k = 0; k < kSteps; ++k) {
    step(s, sharded, k);
    step(reference, plain, k);
  }
  double difference = max_difference(s, sharded, reference, plain);
  for (size_t i = 0; i < sharded.averages.size(); ++i) {
    const auto x = s.variable_value(sharded.averages[i]).to_vector<double>();
    const auto y = reference.variable_value(plain.averages[i]).to_vector<double>();
    for (size_t j = 0; j < x.size(); ++j)
      difference = std::max(difference, std::abs(x[j] - y[j]) / (1 + std::abs(y[j])));
  }
  const bool exact = !shard_gradients || world == 2;
  check(exact ? difference == 0 : difference < 1e-6,
        str(stage, " on ", world, " ranks trains the weights and their moving averages as ",
            "unsharded: max relative difference ", difference, exact ? " == 0" : " < 1e-6"));
  // Each rank saves its own checkpoint (its slots) and resumes from it.
  const std::string mine = str(checkpoint, ".rank", rank, shard_gradients ? ".zero2" : "");
  s.save_checkpoint(mine);
  group.communicator().barrier();
  Session resumed(sharded.g);
  resumed.restore_checkpoint(mine);
  check(same_state(resumed, s, sharded.g), "a rank's own checkpoint restores its whole state");
  step(resumed, sharded, kSteps);
  step(s, sharded, kSteps);
  check(same_state(resumed, s, sharded.g), "and the resumed rank steps exactly as the original");
  bool refused = false;
  try {
    Session other(sharded.g);
    other.restore_checkpoint(
        str(checkpoint, ".rank", (rank + 1) % world, shard_gradients ? ".zero2" : ""));
  } catch (const FileError& e) {
    refused = std::string(e.what()).find("adam_m") != std::string::npos;
    if (!refused) std::printf("  the error: %s\n", e.what());
  }
  check(refused, "another rank's checkpoint is refused, naming a slot it lacks");
  // Every rank's file together restores the unsharded run (as any other world size would):
  // weights, every slot, averages and counters as the unsharded training left them.
  std::vector<std::string> all;
  for (int64_t r = 0; r < world; ++r)
    all.push_back(str(checkpoint, ".rank", r, shard_gradients ? ".zero2" : ""));
  Session unsharded(plain.g);
  unsharded.restore_checkpoints(all);
  Session own(sharded.g);  // the state this rank saved (s has stepped since)
  own.restore_checkpoint(mine);
  if (exact)
    check(same_state(unsharded, reference, plain.g),
          str("the ", world, " ranks' checkpoints restore the unsharded run exactly"));
  else
    check(same_named_state(unsharded, plain.g, own, sharded.g),
          str("the ", world, " ranks' checkpoints restore rank ", rank, "'s state exactly"));
  group.communicator().barrier();
  std::remove(mine.c_str());
}

// Stage 2 with global-norm clipping (a norm small enough to clip every step) and loss scaling:
// each rank holds only its gradients, so the norm and the overflow check are summed over the
// ranks; training follows the unsharded run with the same settings.
void check_sharded_gradients_clipped(distributed::Group& group) {
  const int64_t rank = group.rank(), world = group.world_size();
  constexpr int64_t kBatch = 48, kSteps = 4;
  const int64_t per_rank = kBatch / world;
  testing::DpModel sharded, plain, unclipped;
  testing::build_dp_model(
      sharded,
      {.bucket_bytes = 300, .shard_gradients = true, .clip_norm = 0.05, .loss_scaling = true});
  testing::build_dp_model(plain, {.bucket_bytes = 300, .clip_norm = 0.05, .loss_scaling = true});
  testing::build_dp_model(unclipped, {.bucket_bytes = 300, .loss_scaling = true});
  Session s(sharded.g), reference(plain.g), free(unclipped.g);
  s.run({}, {}, {sharded.sync});
  reference.run({}, {}, {plain.sync});
  free.run({}, {}, {unclipped.sync});
  for (int64_t k = 0; k < kSteps; ++k) {
    auto batch = testing::dp_batch(kBatch, static_cast<uint32_t>(500 + k));
    auto rows = testing::dp_rows(batch, rank * per_rank, (rank + 1) * per_rank);
    s.run({{sharded.x, rows.first}, {sharded.y, rows.second}}, {}, {sharded.train});
    reference.run({{plain.x, rows.first}, {plain.y, rows.second}}, {}, {plain.train});
    free.run({{unclipped.x, rows.first}, {unclipped.y, rows.second}}, {}, {unclipped.train});
  }
  const double difference = max_difference(s, sharded, reference, plain);
  // A norm of this rank's share alone would clip by another factor on each rank: the weights
  // would differ by far more than rounding.
  check(difference < 1e-6,
        str("ZeRO stage 2 with clipping and loss scaling on ", world,
            " ranks trains as unsharded: max relative difference ", difference, " < 1e-6"));
  const double clipping = max_difference(reference, plain, free, unclipped);
  check(clipping > 1e-3, str("(clipping changes that training: ", clipping, " from unclipped)"));
  check(s.variable_value(sharded.g.value("global_step")).element(0) == kSteps,
        "and skips no step (the summed overflow probe is finite)");
}

// Stage 2 with two micro-batches per step and bf16 on the wire: the accumulators stay whole on
// every rank (micro-batches communicate nothing), the step's reduce-scatter sends 16 bits; it
// trains as unsharded data parallelism with the same settings, to bf16's rounding of the sums
// in another order.
void check_sharded_gradients_accumulated_and_compressed(distributed::Group& group) {
  const int64_t rank = group.rank(), world = group.world_size();
  constexpr int64_t kBatch = 48, kSteps = 3;
  const int64_t per_rank = kBatch / world, half = per_rank / 2;
  testing::DpModel sharded, plain;
  testing::build_dp_model(
      sharded,
      {.bucket_bytes = 300, .accumulation_steps = 2, .shard_gradients = true, .compression = bf16});
  testing::build_dp_model(plain,
                          {.bucket_bytes = 300, .accumulation_steps = 2, .compression = bf16});
  bool wire = true;
  for (const distributed::GradientBucket& bucket : sharded.dp.buckets)
    wire &= bucket.scattered && bucket.wire_dtype == bf16;
  check(wire, "every bucket is reduce-scattered in bf16");
  Session s(sharded.g), reference(plain.g);
  s.run({}, {}, {sharded.sync});
  reference.run({}, {}, {plain.sync});
  for (int64_t k = 0; k < kSteps; ++k) {
    auto batch = testing::dp_batch(kBatch, static_cast<uint32_t>(700 + k));
    for (int64_t m = 0; m < 2; ++m) {
      const int64_t begin = rank * per_rank + m * half;
      auto rows = testing::dp_rows(batch, begin, begin + half);
      s.run({{sharded.x, rows.first}, {sharded.y, rows.second}}, {},
            {m == 0 ? sharded.accumulate : sharded.train});
      reference.run({{plain.x, rows.first}, {plain.y, rows.second}}, {},
                    {m == 0 ? plain.accumulate : plain.train});
    }
  }
  const double difference = max_difference(s, sharded, reference, plain);
  check(difference < 2e-3,
        str("ZeRO stage 2 with micro-batches and bf16 on the wire on ", world,
            " ranks trains as unsharded: max relative difference ", difference, " < 2e-3"));
}

// PowerSGD on several ranks. At full rank (a 6 x 4 regression gradient, rank 4) it trains as
// plain data parallelism: the summed P spans the average gradient's columns and the averaged
// Q carries it (a Q summed instead would scale every step by the world size). At rank 1 on the
// MLP, Q is the same on every rank after training while each rank keeps its own error.
void check_power_sgd(distributed::Group& group) {
  const int64_t rank = group.rank(), world = group.world_size();
  constexpr int64_t kBatch = 24;
  const int64_t per_rank = kBatch / world;
  testing::PowerSgdModel compressed(
      distributed::PowerSgdOptions{.rank = 4, .min_compression_rate = 0});
  testing::PowerSgdModel plain(std::nullopt, /*data_parallel=*/true);
  Session s(compressed.g), reference(plain.g);
  for (uint32_t step = 0; step < 4; ++step) {
    auto batch = testing::power_sgd_batch(900 + step, kBatch);
    // This rank's rows of x [24, 6] and y [24, 4].
    auto rows_of = [&](const Tensor& t) {
      const int64_t width = t.shape()[1];
      auto all = t.to_vector<float>();
      std::vector<float> mine(all.begin() + rank * per_rank * width,
                              all.begin() + (rank + 1) * per_rank * width);
      return Tensor::from_vector<float>(mine, {per_rank, width});
    };
    const std::pair<Tensor, Tensor> rows = {rows_of(batch.first), rows_of(batch.second)};
    s.run({{compressed.x, rows.first}, {compressed.y, rows.second}}, {}, {compressed.train});
    reference.run({{plain.x, rows.first}, {plain.y, rows.second}}, {}, {plain.train});
  }
  const auto got = s.variable_value(compressed.w).to_vector<double>();
  const auto want = reference.variable_value(plain.w).to_vector<double>();
  double d = 0;
  for (size_t i = 0; i < got.size(); ++i) d = std::max(d, std::abs(got[i] - want[i]));
  check(d < 1e-5, str("PowerSGD at full rank on ", world,
                      " ranks trains as plain data parallelism: max difference ", d, " < 1e-5"));

  testing::DpModel low;
  testing::build_dp_model(low, {.bucket_bytes = 300, .power_sgd = distributed::PowerSgdOptions{}});
  Session t(low.g);
  t.run({}, {}, {low.sync});
  for (int64_t k = 0; k < 3; ++k) {
    auto batch = testing::dp_batch(48, static_cast<uint32_t>(950 + k));
    auto rows = testing::dp_rows(batch, rank * (48 / world), (rank + 1) * (48 / world));
    t.run({{low.x, rows.first}, {low.y, rows.second}}, {}, {low.train});
  }
  std::vector<double> qs, errors;
  for (const Value& v : low.g.variables()) {
    auto values = t.variable_value(v).to_vector<double>();
    auto& into = v.node().name().ends_with("power_sgd_q")       ? qs
                 : v.node().name().ends_with("power_sgd_error") ? errors
                                                                : values;
    if (&into != &values) into.insert(into.end(), values.begin(), values.end());
  }
  auto hash_of = [](const std::vector<double>& v) {
    return static_cast<int64_t>(std::hash<std::string>()(
        std::string(reinterpret_cast<const char*>(v.data()), v.size() * sizeof(double))));
  };
  const Tensor all = group.communicator().all_gather(
      Tensor::from_vector<int64_t>({hash_of(qs), hash_of(errors)}, {2}));
  bool same_q = true, own_error = true;
  for (int64_t r = 0; r < world; ++r) {
    same_q &= all.data<int64_t>()[2 * r] == hash_of(qs);
    if (r != rank) own_error &= all.data<int64_t>()[2 * r + 1] != hash_of(errors);
  }
  check(!qs.empty() && same_q,
        str("PowerSGD's Q (", qs.size(), " values) is the same on every rank"));
  check(!errors.empty() && own_error, "and each rank's error feedback is its own");

  // With sharded optimizer state (ZeRO 1) the compressed gradients update each owner's
  // variables and the gather spreads them: the same weights, bit for bit.
  testing::DpModel sharded_low, low_again;
  testing::build_dp_model(sharded_low, {.bucket_bytes = 300,
                                        .shard_optimizer_state = true,
                                        .power_sgd = distributed::PowerSgdOptions{}});
  testing::build_dp_model(low_again,
                          {.bucket_bytes = 300, .power_sgd = distributed::PowerSgdOptions{}});
  Session u(sharded_low.g), v(low_again.g);
  u.run({}, {}, {sharded_low.sync});
  v.run({}, {}, {low_again.sync});
  for (int64_t k = 0; k < 3; ++k) {
    auto batch = testing::dp_batch(48, static_cast<uint32_t>(980 + k));
    auto rows = testing::dp_rows(batch, rank * (48 / world), (rank + 1) * (48 / world));
    u.run({{sharded_low.x, rows.first}, {sharded_low.y, rows.second}}, {}, {sharded_low.train});
    v.run({{low_again.x, rows.first}, {low_again.y, rows.second}}, {}, {low_again.train});
  }
  const double sharded_difference = max_difference(u, sharded_low, v, low_again);
  check(sharded_difference == 0,
        str("PowerSGD with sharded optimizer state on ", world,
            " ranks trains as without it: max relative difference ", sharded_difference));
}

// Sharded state over variables of two dtypes, where some ranks own none of the f64 ones (and
// on 4 ranks, one rank owns nothing): their gathers of that dtype send only zeros, and must
// still be queued in the same place as on the ranks that own some. (A constant to gather is
// ready at once: queued by readiness, it went before the f32 gather on those ranks, and the
// ranks' gathers of different sizes met.)
void check_sharded_mixed_dtypes(distributed::Group& group) {
  const int64_t rank = group.rank(), world = group.world_size();
  for (bool shard_gradients : {false, true}) {
    auto build = [&](Graph& g, Value& x, Value& train, std::vector<Value>& vars, bool sharded) {
      x = g.placeholder("x", f32, {-1, 8});
      Value w = g.variable("w", {8, 16}, init::he_normal(1));               // 512 bytes: rank 0
      Value b = g.variable("b", {16}, init::uniform(-0.1, 0.1, 2));         // 64: rank 1
      Value v = g.variable("v", {4}, init::uniform(-1, 1, 3), DType::f64);  // 32: rank 1 or 2
      Value loss = mean(square(relu(matmul(x, w) + b))) + cast(sum(square(v)), f32);
      optim::Adam adam({.lr = 1e-2});
      auto grads = adam.compute_gradients(loss);
      if (sharded)
        train = distributed::data_parallel(
                    grads, {.shard_optimizer_state = true, .shard_gradients = shard_gradients})
                    .apply(adam);
      else
        train = distributed::data_parallel(grads).apply(adam);
      vars = {w, b, v};
    };
    Graph g, h;
    Value x, y, train, plain_train;
    std::vector<Value> vars, plain_vars;
    build(g, x, train, vars, true);
    build(h, y, plain_train, plain_vars, false);
    Session s(g), reference(h);
    std::mt19937 rng(9);
    std::uniform_real_distribution<float> u(-1, 1);
    std::vector<float> xs(8 * 8);
    for (float& e : xs) e = u(rng);
    const Tensor rows = Tensor::from_vector<float>(xs, {8, 8});
    const std::string stage = shard_gradients ? "ZeRO stage 2" : "ZeRO stage 1";
    check(same_collectives_on_every_rank(group, s.plan({{x, rows}}, {}, {train})),
          str(stage, " over f32 and f64 variables: every rank queues what rank ", rank, " does"));
    for (int k = 0; k < 3; ++k) {
      s.run({{x, rows}}, {}, {train});
      reference.run({{y, rows}}, {}, {plain_train});
    }
    double d = 0;
    for (size_t i = 0; i < vars.size(); ++i) {
      const auto a = s.variable_value(vars[i]).to_vector<double>();
      const auto r = reference.variable_value(plain_vars[i]).to_vector<double>();
      for (size_t j = 0; j < a.size(); ++j) d = std::max(d, std::abs(a[j] - r[j]));
    }
    check(d < 1e-6, str(stage, " over f32 and f64 variables on ", world,
                        " ranks trains as unsharded: max difference ", d));
  }
}

// SyncBatchNorm: on ranks holding batches of different sizes it normalizes as BatchNorm does on
// their concatenation; data-parallel training with it (even shards) ends where one process
// with BatchNorm on the whole batch does, running statistics included.
void check_sync_batch_norm(distributed::Group& group) {
  const int64_t rank = group.rank(), world = group.world_size();
  auto worst = [](const Tensor& a, const Tensor& b) {
    const auto x = a.to_vector<double>(), y = b.to_vector<double>();
    double d = x.size() == y.size() ? 0 : INFINITY;
    for (size_t i = 0; i < x.size() && i < y.size(); ++i)
      d = std::max(d, std::abs(x[i] - y[i]) / (1 + std::abs(y[i])));
    return d;
  };
  {
    // Rank r holds 3 + 2r examples; the statistics are those of all of them.
    testing::BnModel synced, plain;
    testing::build_bn_model(synced, true, false);
    testing::build_bn_model(plain, false, false);
    int64_t total = 0, begin = 0;
    for (int64_t r = 0; r < world; ++r) {
      if (r == rank) begin = total;
      total += 3 + 2 * r;
    }
    auto batch = testing::bn_batch(total, 7);
    auto mine = testing::dp_rows(batch, begin, begin + 3 + 2 * rank);
    Session a(synced.g), b(plain.g);
    const Tensor got = a.run({{synced.x, mine.first}}, {synced.out})[0];
    const Tensor whole = b.run({{plain.x, batch.first}}, {plain.out})[0];
    const double d =
        worst(got, testing::dp_rows({whole, batch.second}, begin, begin + 3 + 2 * rank).first);
    check(d < 1e-5, str("SyncBatchNorm on rank ", rank, "'s ", 3 + 2 * rank, " of ", total,
                        " examples normalizes as BatchNorm on all of them: ", d, " < 1e-5"));
  }
  constexpr int64_t kBatch = 48, kSteps = 4;
  const int64_t per_rank = kBatch / world;
  testing::BnModel dp, one;
  testing::build_bn_model(dp, true, true);
  testing::build_bn_model(one, false, false);
  Session s(dp.g), reference(one.g);
  s.run({}, {}, {dp.sync});
  reference.set_variables(s.variable_values());
  for (int64_t k = 0; k < kSteps; ++k) {
    auto batch = testing::bn_batch(kBatch, static_cast<uint32_t>(300 + k));
    auto rows = testing::dp_rows(batch, rank * per_rank, (rank + 1) * per_rank);
    s.run({{dp.x, rows.first}, {dp.y, rows.second}}, {}, {dp.train});
    reference.run({{one.x, batch.first}, {one.y, batch.second}}, {}, {one.train});
  }
  double d = 0;
  for (size_t v = 0; v < dp.variables.size(); ++v)
    d = std::max(
        d, worst(s.variable_value(dp.variables[v]), reference.variable_value(one.variables[v])));
  // f32 sums in another order only; per-rank statistics instead would be off by far more.
  check(d < 1e-5, str("data-parallel training with SyncBatchNorm on ", world,
                      " ranks equals BatchNorm on the whole batch (weights and running ",
                      "statistics): max relative difference ", d, " < 1e-5"));
}

}  // namespace

int main(int argc, char** argv) {
  try {
    // 60 s for a collective, or KILN_TEST_COLLECTIVE_TIMEOUT_S: under ThreadSanitizer on 2 cores
    // the ranks' steps stall for tens of seconds at a time (ctest sets 600 there).
    const char* timeout_s = std::getenv("KILN_TEST_COLLECTIVE_TIMEOUT_S");
    auto group = distributed::init(
        {.timeout = std::chrono::seconds(timeout_s ? std::atoll(timeout_s) : 60)});
    if (const char* dir = std::getenv("KILN_TEST_PID_DIR"))
      std::ofstream(str(dir, "/", group->rank(), ".pid")) << ::getpid() << "\n";
    const std::string checkpoint =
        argc > 1 ? argv[1] : str("/tmp/kiln_dp_", group->environment().job_id, ".ckpt");
    // The launcher's kill test goes straight to training (its clock is running).
    if (!std::getenv("KILN_TEST_KILL_RANK")) check_collectives(group->rank(), group->world_size());
    check_training(*group, checkpoint);
    if (!std::getenv("KILN_TEST_KILL_RANK")) {
      check_sharded_training(*group, checkpoint, false);
      check_sharded_training(*group, checkpoint, true);
      check_sharded_gradients_clipped(*group);
      check_sharded_gradients_accumulated_and_compressed(*group);
      check_sharded_mixed_dtypes(*group);
      check_power_sgd(*group);
    }
    if (!std::getenv("KILN_TEST_KILL_RANK")) check_sync_batch_norm(*group);
    if (!std::getenv("KILN_TEST_KILL_RANK")) check_compressed_training(*group);
    std::printf("rank %lld: %d failures\n", static_cast<long long>(group->rank()), failures);
    return failures == 0 ? 0 : 1;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "%s\n", e.what());
    return 1;
  }
}
