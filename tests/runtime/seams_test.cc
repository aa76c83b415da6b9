// The engine's seams, each through a test-only op registered here as a new op would be:
// stream kinds (a collective on the communication stream), typed lane resources and the
// kernel cache.
#include <atomic>

#include "kiln/framework/kernel.h"
#include "kiln/runtime/plan.h"
#include "test_util.h"

namespace kiln {
namespace {

// y = x, as a collective would on one rank: the communication trait is what matters here.
void copy_cpu(KernelContext& ctx) {
  ctx.set_output(0, ctx.input(0).clone());
}

KILN_OP(test_collective)
    .input("x")
    .communication()
    .infer([](const InferContext& ctx) { return std::vector<TensorType>{ctx.input(0)}; })
    .kernel(DeviceKind::cpu, copy_cpu);

// A per-lane resource that counts how many were made, and which lane each is for.
std::atomic<int> lanes_made{0};
struct CountingResource final : LaneResource {
  explicit CountingResource(const LaneInfo& info) : kind(info.kind), index(info.index) {
    ++lanes_made;
  }
  StreamKind kind;
  int32_t index;
  int64_t uses = 0;
};
std::atomic<int> choices_made{0};

// y = x + (number of times this lane's resource was used before), so the test sees the
// resource persist between runs; the cached "choice" is made once per shape.
void uses_resources_cpu(KernelContext& ctx) {
  auto& resource = ctx.lane_resource<CountingResource>();
  const int64_t offset = resource.uses++;
  const int choice = ctx.cache().get<int>(ctx.cache_key("choice"), [] { return ++choices_made; });
  EXPECT_GE(choice, 1);
  const Tensor& x = ctx.input(0);
  Tensor& y = ctx.output(0);
  for (int64_t i = 0; i < x.numel(); ++i)
    y.data<float>()[i] = x.data<float>()[i] + static_cast<float>(offset);
}

KILN_OP(test_uses_resources)
    .input("x")
    .stateful()  // its output depends on the lane's history: never fold or merge it
    .infer([](const InferContext& ctx) { return std::vector<TensorType>{ctx.input(0)}; })
    .kernel(DeviceKind::cpu, uses_resources_cpu, {f32});

TEST(StreamKinds, ACollectiveRunsOnTheCommunicationStreamWithEventsBothWays) {
  Graph g;
  Value x = g.placeholder("x", f32, {4});
  Value grad = exp(x) * 2.0;  // "backward" produces a gradient
  Value reduced = g.add("test_collective", {grad});
  Value later = sin(x) + cos(x);  // compute independent of the collective
  Value y = reduced + later;      // consumes the collective's result
  Session s(g, {.inter_op_threads = 2});
  Tensor in = Tensor::from_vector<float>({0.1f, 0.2f, 0.3f, 0.4f});
  const Plan& plan = s.plan({{x, in}}, {y});
  ASSERT_EQ(plan.stream_kinds.back(), StreamKind::communication);
  int32_t collective = -1;
  for (int32_t i = 0; i < static_cast<int32_t>(plan.steps.size()); ++i)
    if (plan.graph->node(plan.steps[i].node).op_name() == "test_collective") collective = i;
  ASSERT_GE(collective, 0);
  const PlanStep& step = plan.steps[collective];
  EXPECT_EQ(plan.stream_kinds[step.stream], StreamKind::communication);
  EXPECT_FALSE(step.waits.empty()) << "the collective waits for the gradient's stream";
  bool awaited = false;
  for (const PlanStep& other : plan.steps)
    for (int32_t w : other.waits) awaited |= w == collective;
  EXPECT_TRUE(awaited) << "the consumer waits for the collective's event";
  // Lanes: every compute lane first, the communication lane after them.
  const LaneMap map = map_streams_to_lanes(plan, 2);
  EXPECT_EQ(map.lane_of_stream[step.stream], 2);
  EXPECT_EQ(map.lane_kinds[2], StreamKind::communication);
  // And it computes the same on one thread and on lanes.
  Session serial(g);
  testing::expect_near(testing::values(serial.run({{x, in}}, {y})[0]), s.run({{x, in}}, {y})[0],
                       1e-7, 0, "lanes");
}

TEST(StreamKinds, PassesNeitherFoldNorMergeCollectives) {
  Graph g;
  Value c = g.constant(Tensor::from_vector<float>({1, 2}));
  Value a = g.add("test_collective", {c});
  Value b = g.add("test_collective", {c});
  Session s(g);
  const Plan& plan = s.plan({}, {a + b});
  int collectives = 0;
  for (const PlanStep& step : plan.steps)
    collectives += plan.graph->node(step.node).op_name() == "test_collective";
  EXPECT_EQ(collectives, 2);
  EXPECT_EQ(s.run({}, {a + b})[0].to_vector<float>(), (std::vector<float>{2, 4}));
}

TEST(LaneResources, MadeOnFirstUsePerLaneAndKeptAcrossRunsAndPlans) {
  lanes_made = 0;
  choices_made = 0;
  Graph g;
  Value x = g.placeholder("x", f32, {-1});
  Value y = g.add("test_uses_resources", {x});
  Session s(g);
  EXPECT_EQ(lanes_made, 0);
  auto run = [&](int64_t n) { return s.run({{x, Tensor::full(f32, {n}, 1.0)}}, {y})[0]; };
  EXPECT_EQ(run(3).element(0), 1);  // first use: resource made, 0 earlier uses
  EXPECT_EQ(run(3).element(0), 2);
  EXPECT_EQ(run(5).element(0), 3);  // another plan, same lane, same resource
  EXPECT_EQ(lanes_made, 1);
  EXPECT_EQ(choices_made, 2) << "one choice per input shape, reused across runs";
  run(5);
  EXPECT_EQ(choices_made, 2);
  // Another session has lanes of its own.
  Session other(g);
  EXPECT_EQ(other.run({{x, Tensor::full(f32, {3}, 1.0)}}, {y})[0].element(0), 1);
  EXPECT_EQ(lanes_made, 2);
}

TEST(LaneResources, OutsideAnExecutorAKernelIsToldSo) {
  Graph g;
  Value x = g.placeholder("x", f32, {2});
  Value y = g.add("test_uses_resources", {x});
  const Node& node = y.node();
  ThreadPool pool(1);
  std::vector<Tensor> inputs = {Tensor::full(f32, {2}, 1.0)}, outputs(1);
  KernelContext ctx(node, inputs, node.outputs(), outputs, pool);
  testing::expect_error([&] { uses_resources_cpu(ctx); },
                        {"[test_uses_resources]", "no lane resources here"});
}

}  // namespace
}  // namespace kiln
