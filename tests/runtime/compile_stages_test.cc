// compile_plan's stages one at a time (runtime/plan.h): what each makes from the one before.
#include "kiln/framework/kernel.h"
#include "kiln/runtime/plan.h"
#include "test_util.h"

namespace kiln {
namespace {

TEST(CompileStages, PruneOrdersWhatTheRootsNeedAndNamesWhoNeedsIt) {
  Graph g;
  Value x = g.placeholder("x", f32, {-1, 3});
  Value unused = exp(x);
  Value v = g.variable("v", {3}, init::zeros());
  Value y = x * v;
  Value update = assign_add(v, g.scalar(1, f32));
  const std::vector<FeedSpec> feeds = {{x, {f32, {2, 3}}}};
  PrunedGraph pruned = prune(g, feeds, {y}, {update});
  std::vector<std::string> names;
  for (int32_t id : pruned.order) names.push_back(g.node(id).name());
  // The read of v (y = x * v) runs before the update of v; exp(x) is not needed; x is fed.
  EXPECT_EQ(std::count(names.begin(), names.end(), unused.node().name()), 0);
  EXPECT_EQ(std::count(names.begin(), names.end(), "x"), 0);  // fed: its feed stands in
  auto at = [&](const std::string& n) {
    return std::find(names.begin(), names.end(), n) - names.begin();
  };
  EXPECT_LT(at(y.node().name()), at(update.node().name()));
  EXPECT_EQ(pruned.roots, (std::vector<std::string>{"fetch '" + y.name() + "'",
                                                    "target '" + update.node().name() + "'"}));
  EXPECT_GE(pruned.reason[v.node_id()], 0);  // needed by both; one is named
  EXPECT_EQ(pruned.reason[unused.node_id()], -1);
  // A needed placeholder that is not fed is reported with the root that needs it.
  testing::expect_error([&] { specialize_shapes(g, prune(g, {}, {y}, {}), {}, {y}, {}); },
                        {"placeholder 'x'", "must be fed", "fetch"});
}

TEST(CompileStages, SpecializeKernelsLivenessEachFromTheLast) {
  Graph g;
  Value x = g.placeholder("x", f32, {-1, 3});
  Value y = sum(exp(x) * 2.0, {1});
  const std::vector<FeedSpec> feeds = {{x, {f32, {4, 3}}}};
  Plan plan = specialize_shapes(g, prune(g, feeds, {y}, {}), feeds, {y}, {});
  // Every shape concrete: the fed batch of 4 reached every node.
  for (int32_t id = 0; id < plan.graph->num_nodes(); ++id)
    for (const TensorType& t : plan.graph->node(id).outputs()) EXPECT_TRUE(t.shape.is_known());
  EXPECT_EQ(plan.graph->signature("__plan__").outputs[0].shape(), Shape({4}));
  choose_kernels(plan, DeviceKind::cpu);
  ASSERT_EQ(plan.feed_slots.size(), 1u);
  for (const PlanStep& step : plan.steps) EXPECT_NE(step.kernel, nullptr);
  schedule_streams(plan, 1);
  analyze_liveness(plan);
  // The feed has no producer; each later slot is made by one step and read by the next.
  EXPECT_EQ(plan.liveness.producer[plan.feed_slots[0]], -1);
  for (size_t s = 0; s + 1 < plan.steps.size(); ++s)
    for (int32_t slot : plan.steps[s].output_slots)
      if (!plan.liveness.users[slot].empty()) {
        EXPECT_GT(plan.liveness.users[slot][0], int32_t(s));
      }
  plan_memory(plan, true);
  validate_memory_plan(plan);
  mark_releases(plan);
  int released = 0;
  for (const PlanStep& step : plan.steps) released += static_cast<int>(step.release_after.size());
  EXPECT_GT(released, 0);
}

// y = x for f64 only: an op with no CPU kernel for f32, so none for 16-bit floats either.
KILN_OP(test_f64_only)
    .input("x")
    .infer([](const InferContext& ctx) { return std::vector<TensorType>{ctx.input(0)}; })
    .kernel(DeviceKind::cpu, [](KernelContext& ctx) { ctx.set_output(0, ctx.input(0).clone()); },
            {f64});

TEST(CompileStages, AMissingKernelIsNamed) {
  Graph g;
  Value x = g.placeholder("x", i32, {3});
  Value y = g.add("test_f64_only", {cast(x, f64)});
  const std::vector<FeedSpec> feeds = {{x, {i32, {3}}}};
  Plan plan = specialize_shapes(g, prune(g, feeds, {y}, {}), feeds, {y}, {});
  choose_kernels(plan, DeviceKind::cpu);  // the f64 kernel exists
  for (DType dtype : {f32, f16}) {
    Graph h;
    Value b = h.placeholder("b", dtype, {3});
    Value z = h.add("test_f64_only", {b});
    const std::vector<FeedSpec> types = {{b, {dtype, {3}}}};
    Plan p = specialize_shapes(h, prune(h, types, {z}, {}), types, {z}, {});
    testing::expect_error([&] { choose_kernels(p, DeviceKind::cpu); },
                          {"[test_f64_only]", str("no CPU kernel for ", dtype)});
  }
}

}  // namespace
}  // namespace kiln
