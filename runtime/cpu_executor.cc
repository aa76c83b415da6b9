// The CPU executor: runs a Plan's steps in order with intra-op parallel kernels.
#include <algorithm>
#include <map>
#include <new>

#include "framework/kernel.h"
#include "runtime/plan.h"

namespace kiln {

std::vector<Tensor> execute_on_cpu(const Plan& plan, const std::vector<Tensor>& feeds,
                                   ThreadPool& pool,
                                   VariableStore& variables) {
  std::vector<Tensor> slots(plan.num_slots);
  for (size_t i = 0; i < feeds.size(); ++i) slots[plan.feed_slots[i]] = feeds[i];
  std::vector<Tensor> inputs, outputs;
  // A fetched variable is copied when it is read, before any update in this run changes it.
  std::vector<char> fetched_slot(plan.num_slots, 0);
  for (int32_t slot : plan.fetch_slots) fetched_slot[slot] = 1;
  std::map<int32_t, Tensor> snapshots;
  if (plan.arena_bytes > 0 && !plan.arena) plan.arena = std::make_shared<HostStorage>(plan.arena_bytes);
  for (const PlanStep& step : plan.steps) {
    const Node& node = plan.graph->node(step.node);
    inputs.clear();
    for (int32_t slot : step.input_slots) inputs.push_back(slots[slot]);
    outputs.assign(step.output_types.size(), Tensor());
    for (size_t i = 0; i < outputs.size(); ++i) {  // planned outputs are views of the arena
      const int64_t offset = plan.slot_offset[step.output_slots[i]];
      if (offset >= 0)
        outputs[i] = Tensor(step.output_types[i].dtype, step.output_types[i].shape, plan.arena,
                            static_cast<size_t>(offset));
    }
    KernelContext ctx(node, inputs, step.output_types, outputs, pool, &variables);
    try {
      step.kernel(ctx);
      for (int i = 0; i < ctx.num_outputs(); ++i) ctx.output(i);  // allocate any left untouched
    } catch (const std::bad_alloc&) {
      throw Error(str(ctx.where(), ": out of host memory"));
    }
    for (size_t i = 0; i < step.output_slots.size(); ++i) {
      const int32_t slot = step.output_slots[i];
      if (slot < 0) continue;
      // Fetched variables and constants are copied: later updates (or a caller writing into
      // the result) must not reach the fetched tensor or the plan's constants.
      if (fetched_slot[slot] && (node.op_name() == "variable" || node.op_name() == "constant"))
        snapshots[slot] = outputs[i].clone();
      slots[slot] = std::move(outputs[i]);
    }
    for (int32_t slot : step.release_after) slots[slot] = Tensor();
  }
  std::vector<Tensor> fetched;
  std::vector<const Storage*> state;
  for (const std::string& name : variables.names()) state.push_back(variables.get(name).storage().get());
  for (int32_t slot : plan.fetch_slots) {
    if (auto it = snapshots.find(slot); it != snapshots.end()) {
      fetched.push_back(it->second);
      continue;
    }
    const Tensor& t = slots[slot];
    bool aliases_state = std::find(state.begin(), state.end(), t.storage().get()) != state.end();
    fetched.push_back(aliases_state ? t.clone() : t);
  }
  return fetched;
}

}  // namespace kiln
