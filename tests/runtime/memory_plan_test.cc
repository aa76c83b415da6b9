#include <random>

#include "kiln/runtime/plan.h"
#include "test_util.h"

namespace kiln {
namespace {

// A random training-like graph: matmuls, elementwise chains, views, reductions, a variable
// and its update, with several independent branches.
struct RandomModel {
  Graph g;
  Value x;
  std::vector<Value> fetches;
  Value train;
  explicit RandomModel(uint32_t seed) {
    std::mt19937 rng(seed);
    x = g.placeholder("x", f32, {-1, 16});
    Value w = g.variable("w", {16, 16}, init::glorot_uniform(seed));
    std::vector<Value> pool = {x};
    for (int i = 0; i < 25; ++i) {
      Value a = pool[rng() % pool.size()];
      Value v;
      switch (rng() % 7) {
        case 0:
          v = matmul(a, w);
          break;
        case 1:
          v = tanh(a) * 0.5 + a;
          break;
        case 2:
          v = reshape(transpose(reshape(a, {-1, 4, 4}), {0, 2, 1}), {-1, 16});
          break;
        case 3:
          v = a - mean(a, {1}, true);
          break;
        case 4:
          v = relu(a) + pool[rng() % pool.size()];
          break;
        case 5:
          v = softmax(a);
          break;
        default:
          v = concat(split(a, 2, 1), 1) * 2.0;
          break;
      }
      pool.push_back(v);
    }
    // The last product makes sure the loss depends on w, whatever the branches drew.
    Value loss = mean(square(pool.back())) + mean(matmul(pool[pool.size() / 2], w));
    train = optim::SGD({.lr = 0.01}).minimize(loss);
    fetches = {loss, pool[pool.size() / 3]};
  }
};

TEST(MemoryPlan, ValidOnRandomGraphsForEveryStreamCountAndSameResults) {
  for (uint32_t seed = 0; seed < 25; ++seed) {
    RandomModel m(seed);
    Tensor in = testing::random_tensor(f32, {6, 16}, -1, 1, seed);
    std::vector<Tensor> reference;
    for (int streams : {1, 2, 4}) {
      for (bool in_place : {true, false}) {
        SessionOptions options{
            .intra_op_threads = 2, .inter_op_threads = streams, .validate_memory_plan = true};
        options.passes.in_place = in_place;
        Session s(m.g, options);
        const Plan& plan = s.plan({{m.x, in}}, m.fetches, {m.train});
        EXPECT_LE(plan.num_streams, streams);
        EXPECT_LE(plan.arena_bytes, plan.unshared_bytes);
        auto out = s.run({{m.x, in}}, m.fetches, {m.train});
        if (reference.empty()) {
          reference = out;
          continue;
        }
        for (size_t i = 0; i < out.size(); ++i)
          testing::expect_near(testing::values(reference[i]), out[i], 1e-5, 1e-6,
                               str("seed ", seed, " streams ", streams, " in_place ", in_place));
      }
    }
  }
}

TEST(MemoryPlan, ValidatorCatchesOverlappingBuffers) {
  RandomModel m(3);
  Session s(m.g, {.validate_memory_plan = true});
  Tensor in = testing::random_tensor(f32, {6, 16}, -1, 1, 3);
  Plan& plan = const_cast<Plan&>(s.plan({{m.x, in}}, m.fetches, {m.train}));
  EXPECT_NO_THROW(validate_memory_plan(plan));
  // Put two buffers that are alive at the same time on the same bytes.
  const PlanStep& step = plan.steps[plan.steps.size() / 2];
  int32_t a = -1, b = -1;
  for (const PlanStep& st : plan.steps)
    for (int32_t in_slot : st.input_slots)
      if (plan.slot_offset[in_slot] >= 0 && st.input_slots.size() >= 2) {
        for (int32_t other : st.input_slots)
          if (other != in_slot && plan.slot_offset[other] >= 0 &&
              plan.slot_offset[other] != plan.slot_offset[in_slot])
            a = in_slot, b = other;
      }
  (void)step;
  ASSERT_GE(a, 0) << "no step reads two arena buffers";
  plan.slot_offset[b] = plan.slot_offset[a];
  testing::expect_error([&] { validate_memory_plan(plan); }, {"[memory]", "share arena bytes"});
}

TEST(MemoryPlan, ATrainingStepAllocatesNothingAfterItsFirstRun) {
  RandomModel m(7);
  Session s(m.g);
  Tensor in = testing::random_tensor(f32, {32, 16}, -1, 1, 7);
  s.run({{m.x, in}}, {}, {m.train});
  s.run({{m.x, in}}, {}, {m.train});
  const int64_t before = host_allocation_count();
  for (int i = 0; i < 5; ++i) s.run({{m.x, in}}, {}, {m.train});
  EXPECT_EQ(host_allocation_count(), before) << "tensor buffers allocated by planned steps";
  // Fetched results are the caller's: one buffer each per run.
  s.run({{m.x, in}}, {m.fetches[0]}, {m.train});
  const int64_t with_fetch = host_allocation_count();
  s.run({{m.x, in}}, {m.fetches[0]}, {m.train});
  EXPECT_EQ(host_allocation_count(), with_fetch + 1);
}

TEST(MemoryPlan, ReuseMakesThePeakSmallerThanTheSum) {
  Graph g;
  Value x = g.placeholder("x", f32, {1024});
  Value v = x;
  for (int i = 0; i < 20; ++i) v = sum(exp(v) * 0.5, {}, true) + v;  // no fusion across sum
  SessionOptions o;
  o.passes.elementwise_fusion = false;
  Session s(g, o);
  const Plan& plan = s.plan({{x, Tensor::zeros(f32, {1024})}}, {v});
  EXPECT_GT(plan.unshared_bytes, 4 * plan.arena_bytes);
  validate_memory_plan(plan);
}

TEST(Streams, IndependentBranchesRunInParallelAndErrorsStopEveryStream) {
  Graph g;
  Value x = g.placeholder("x", f32, {64, 64});
  Value left = tanh(matmul(x, x)), right = sigmoid(matmul(x, transpose(x)));
  Value joined = left + right;
  Session s(g, {.inter_op_threads = 2, .validate_memory_plan = true});
  Tensor in = testing::random_tensor(f32, {64, 64}, -1, 1, 1);
  const Plan& plan = s.plan({{x, in}}, {joined});
  EXPECT_EQ(plan.num_streams, 2);
  int waits = 0;
  for (const PlanStep& step : plan.steps) waits += static_cast<int>(step.waits.size());
  EXPECT_GT(waits, 0);
  Session sequential(g);
  EXPECT_TRUE(equal_bits(s.run({{x, in}}, {joined})[0], sequential.run({{x, in}}, {joined})[0]));
  // A data error in one branch: reported, no hang, the session still works.
  Value idx = g.placeholder("idx", i64, {2});
  Value bad = gather(left, idx) + gather(right, idx);
  testing::expect_error(
      [&] {
        s.run({{x, in}, {idx, Tensor::from_vector<int64_t>({0, 99})}}, {bad});
      },
      {"[gather]", "index 99"});
  EXPECT_NO_THROW(s.run({{x, in}, {idx, Tensor::from_vector<int64_t>({0, 1})}}, {bad}));
}

}  // namespace
}  // namespace kiln
