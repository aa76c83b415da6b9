// compile_plan and its stages: prune, specialize shapes, passes, choose kernels, schedule,
// liveness, plan memory, release points.
#include <algorithm>
#include <queue>
#include <unordered_map>
#include <unordered_set>

#include "kiln/framework/kernel.h"
#include "kiln/runtime/plan.h"

namespace kiln {

namespace {

struct RefHash {
  size_t operator()(OutputRef r) const {
    return std::hash<int64_t>()((int64_t{r.node} << 32) | static_cast<uint32_t>(r.index));
  }
};

std::string describe_feeds(const std::vector<FeedSpec>& feeds) {
  std::string out;
  for (const FeedSpec& f : feeds)
    out += str(out.empty() ? "" : ", ", f.value.name(), " ", f.type.dtype, f.type.shape);
  return out.empty() ? "no feeds" : out;
}

}  // namespace

std::string plan_key(const std::vector<FeedSpec>& feeds, const std::vector<Value>& fetches,
                     const std::vector<Value>& targets) {
  std::string key = "f";
  for (const Value& v : fetches) key += str(' ', v.node_id(), ':', v.index());
  key += "|t";
  for (const Value& v : targets) key += str(' ', v.node_id());
  key += "|in";
  // The dtype is part of the key: a plan's kernels, arena and feed checks are for its dtypes.
  for (const FeedSpec& f : feeds)
    key += str(' ', f.value.node_id(), ':', f.value.index(), f.type.dtype, f.type.shape);
  return key;
}

void check_feeds(const Graph& graph, const std::vector<FeedSpec>& feeds) {
  std::unordered_set<OutputRef, RefHash> fed;
  for (size_t i = 0; i < feeds.size(); ++i) {
    const Value& v = feeds[i].value;
    KILN_CHECK(v.defined() && v.graph() == &graph, FeedError, "[session] feed #", i,
               " is not a value of this session's graph");
    const char* what = v.node().op().source() == OutputSource::feed ? "placeholder" : "value";
    if (const Tensor* t = feeds[i].tensor) {
      KILN_CHECK(t->defined(), FeedError, "[session] the feed for ", what, " '", v.name(),
                 "' is an undefined tensor");
      KILN_CHECK(t->device().is_cpu(), FeedError, "[session] the feed for ", what, " '", v.name(),
                 "' is on ", t->device(), "; feeds must be host tensors");
    }
    KILN_CHECK(fed.insert(v.ref()).second, FeedError, "[session] ", what, " '", v.name(),
               "' is fed twice");
    KILN_CHECK(feeds[i].type.dtype == v.dtype(), FeedError, "[session] feed for ", what, " '",
               v.name(), "': dtype ", feeds[i].type.dtype, " does not match the ", what, "'s ",
               v.dtype());
    KILN_CHECK(feeds[i].type.shape.compatible_with(v.shape()), FeedError, "[session] feed for ",
               what, " '", v.name(), "': shape ", feeds[i].type.shape, " contradicts the ", what,
               "'s ", v.shape());
  }
}

PrunedGraph prune(const Graph& graph, const std::vector<FeedSpec>& feeds,
                  const std::vector<Value>& fetches, const std::vector<Value>& targets) {
  for (const auto* list : {&fetches, &targets})
    for (const Value& v : *list)
      KILN_CHECK(v.defined() && v.graph() == &graph, FeedError,
                 "[session] a fetch or target is not a value of this session's graph");
  check_feeds(graph, feeds);
  PrunedGraph pruned;
  auto& fed = pruned.fed;
  for (size_t i = 0; i < feeds.size(); ++i)
    fed.emplace(feeds[i].value.ref(), static_cast<int32_t>(i));
  auto& reason = pruned.reason;
  auto& roots = pruned.roots;
  auto& order = pruned.order;

  // Prune: the nodes the fetches and targets reach without passing a fed value. `reason`
  // remembers, for each needed node, a fetch or target that needs it (for error messages).
  reason.assign(graph.num_nodes(), -1);
  std::vector<int32_t> stack;
  auto need = [&](int32_t node, int32_t root) {
    if (reason[node] < 0) reason[node] = root, stack.push_back(node);
  };
  for (const Value& v : fetches) {
    roots.push_back(str("fetch '", v.name(), "'"));
    if (!fed.count(v.ref())) need(v.node_id(), static_cast<int32_t>(roots.size() - 1));
  }
  for (const Value& v : targets) {
    roots.push_back(str("target '", v.node().name(), "'"));
    need(v.node_id(), static_cast<int32_t>(roots.size() - 1));
  }
  while (!stack.empty()) {
    int32_t id = stack.back();
    stack.pop_back();
    for (OutputRef in : graph.node(id).inputs())
      if (!fed.count(in)) need(in.node, reason[id]);
  }

  // An empty feed (batch of 0) in a run that writes state is refused: the step counter would
  // advance and the update would use the mean over no elements (NaN) or a zero gradient.
  for (size_t i = 0; i < feeds.size(); ++i) {
    if (!feeds[i].type.shape.is_known() || feeds[i].type.shape.numel() != 0) continue;
    for (int32_t id = 0; id < graph.num_nodes(); ++id) {
      const Node& writer = graph.node(id);
      if (reason[id] < 0 || writer.op().mutated_inputs().empty()) continue;
      const Node& state = graph.node(writer.inputs()[writer.op().mutated_inputs()[0]].node);
      throw FeedError(str("[session] the feed for '", feeds[i].value.name(), "' is empty (",
                          feeds[i].type.dtype, feeds[i].type.shape,
                          ") in a run that updates variables (", roots[reason[id]], " writes '",
                          state.name(), "'): an empty batch has no gradient to apply; skip it"));
    }
  }

  // Order: data dependencies, plus "every other reader of a variable runs before an op that
  // writes into it" (and writers of one variable run in id order). Kahn's algorithm with the
  // smallest id first keeps the order deterministic and close to the build order.
  std::vector<int32_t> needed;
  for (int32_t id = 0; id < graph.num_nodes(); ++id)
    if (reason[id] >= 0) needed.push_back(id);
  std::unordered_map<int32_t, std::vector<int32_t>> successors;
  std::unordered_map<int32_t, int32_t> pending;
  std::unordered_map<OutputRef, std::vector<int32_t>, RefHash> readers;
  auto add_edge = [&](int32_t from, int32_t to) {
    successors[from].push_back(to);
    ++pending[to];
  };
  for (int32_t id : needed) {
    pending[id] += 0;
    for (OutputRef in : graph.node(id).inputs()) {
      readers[in].push_back(id);
      if (!fed.count(in)) add_edge(in.node, id);
    }
  }
  for (int32_t id : needed) {
    const Node& node = graph.node(id);
    for (int index : node.op().mutated_inputs()) {
      OutputRef state = node.inputs()[index];
      for (int32_t reader : readers[state]) {
        if (reader == id) continue;
        const bool reader_writes = [&] {
          for (int j : graph.node(reader).op().mutated_inputs())
            if (graph.node(reader).inputs()[j] == state) return true;
          return false;
        }();
        if (!reader_writes)
          add_edge(reader, id);
        else if (reader < id)
          add_edge(reader, id);
      }
    }
  }
  std::priority_queue<int32_t, std::vector<int32_t>, std::greater<int32_t>> ready;
  for (int32_t id : needed)
    if (pending[id] == 0) ready.push(id);
  while (!ready.empty()) {
    int32_t id = ready.top();
    ready.pop();
    order.push_back(id);
    for (int32_t next : successors[id])
      if (--pending[next] == 0) ready.push(next);
  }
  if (order.size() != needed.size()) {
    for (int32_t id : needed)
      if (pending[id] > 0)
        throw GraphError(str("[session] node '", graph.node(id).name(),
                             "' must both read a variable after it is updated and before; ",
                             "fetch the update's output instead"));
  }

  return pruned;
}

Plan specialize_shapes(const Graph& graph, const PrunedGraph& pruned,
                       const std::vector<FeedSpec>& feeds, const std::vector<Value>& fetches,
                       const std::vector<Value>& targets) {
  const auto& reason = pruned.reason;
  const auto& roots = pruned.roots;
  // The plan's private graph: fed values become placeholders with the fed (concrete) shapes,
  // and the needed nodes are copied in `order` through add_node, so inference sees concrete
  // shapes and a fed shape that makes a node invalid is reported naming that node.
  Plan plan;
  plan.key = plan_key(feeds, fetches, targets);
  plan.graph = std::make_unique<Graph>();
  Graph& work = *plan.graph;
  std::unordered_map<OutputRef, OutputRef, RefHash> to_work;
  for (size_t i = 0; i < feeds.size(); ++i) {
    std::string name = str("feed#", i);
    while (graph.find_node(name)) name += "#";
    Value p = work.placeholder(name, feeds[i].type.dtype, feeds[i].type.shape);
    to_work[feeds[i].value.ref()] = p.ref();
  }
  for (int32_t id : pruned.order) {
    const Node& node = graph.node(id);
    if (node.op().source() == OutputSource::feed)
      throw FeedError(str("[session] placeholder '", node.name(), "' (", node.outputs()[0].dtype,
                          node.outputs()[0].shape, ") must be fed: ", roots[reason[id]],
                          " depends on it"));
    std::vector<Value> inputs;
    for (OutputRef in : node.inputs()) inputs.push_back(work.value(to_work.at(in)));
    std::vector<Value> made;
    try {
      made = work.add_node(node.op_name(), inputs, node.attrs(),
                           {.name = node.name(), .exact_name = true});
    } catch (const GraphError& e) {
      throw GraphError(str(e.what(), " (with ", describe_feeds(feeds), ")"));
    }
    for (int32_t i = 0; i < node.num_outputs(); ++i) {
      const TensorType& t = made[i].node().outputs()[i];
      KILN_CHECK(t.shape.is_known(), GraphError, "[", node.op_name(), "] ", node.name(),
                 ": output ", i, " has shape ", t.shape, " even with ", describe_feeds(feeds));
      t.shape.numel();  // throws for an element count that overflows
      // A fed output keeps its feed; the node's own value for it is computed and dropped.
      to_work.emplace(OutputRef{id, i}, made[i].ref());
    }
  }
  // Random ops (OpDef::random) advance their counter once per run, after every read of it:
  // the increment is the plan graph's last node, and an update runs after all other readers.
  std::vector<OutputRef> counters;
  for (int32_t id = 0; id < work.num_nodes(); ++id) {
    const Node& node = work.node(id);
    if (!node.op().is_random()) continue;
    const OutputRef counter = node.inputs().back();
    if (work.node(counter.node).op().source() == OutputSource::state &&
        std::find(counters.begin(), counters.end(), counter) == counters.end())
      counters.push_back(counter);
  }
  std::vector<Value> advances;
  for (OutputRef counter : counters) {
    const std::string name = work.node(counter.node).name();
    advances.push_back(work.add_node("assign_add",
                                     {work.value(counter), work.scalar(1, DType::i64)}, {},
                                     {.name = name + "/advance"})[0]);
  }

  Signature roots_signature{"__plan__", {}, {}, {}};
  for (const Value& v : fetches) roots_signature.outputs.push_back(work.value(to_work.at(v.ref())));
  for (const Value& v : targets)
    roots_signature.targets.push_back(work.value(to_work.at(OutputRef{v.node_id(), 0})));
  for (const Value& advance : advances) roots_signature.targets.push_back(advance);
  for (size_t i = 0; i < feeds.size(); ++i)
    roots_signature.inputs.push_back(work.value(OutputRef{static_cast<int32_t>(i), 0}));
  work.add_signature(roots_signature);

  return plan;
}

void choose_kernels(Plan& plan, DeviceKind device) {
  // Steps: the optimized graph in id order (a topological order that keeps every read of a
  // variable before the op that updates it), one slot per output.
  const Graph& work = *plan.graph;
  const Signature& final_roots = work.signature("__plan__");
  std::unordered_map<OutputRef, int32_t, RefHash> slot_of;
  for (size_t i = 0; i < final_roots.inputs.size(); ++i) {
    slot_of[final_roots.inputs[i].ref()] = plan.num_slots++;
    plan.feed_slots.push_back(plan.num_slots - 1);
    plan.slot_types.push_back(plan.graph->node(final_roots.inputs[i].node_id()).outputs()[0]);
  }
  for (int32_t id = 0; id < work.num_nodes(); ++id) {
    const Node& node = work.node(id);
    if (node.op().source() == OutputSource::feed) continue;  // the feeds
    PlanStep step;
    step.node = id;
    std::vector<TensorType> input_types;
    for (OutputRef in : node.inputs()) {
      step.input_slots.push_back(slot_of.at(in));
      input_types.push_back(plan.slot_types[slot_of.at(in)]);
    }
    step.output_types = node.outputs();
    for (int32_t i = 0; i < node.num_outputs(); ++i) {
      slot_of[OutputRef{id, i}] = plan.num_slots++;
      step.output_slots.push_back(plan.num_slots - 1);
      plan.slot_types.push_back(node.outputs()[i]);
    }
    const DType kernel_dtype =
        input_types.empty() ? step.output_types[0].dtype : input_types[0].dtype;
    step.kernel = choose_kernel(node, input_types, device);
    KILN_CHECK(step.kernel != nullptr, Error, "[", node.op_name(), "] ", node.name(), ": no ",
               device == DeviceKind::cpu ? "CPU" : "CUDA", " kernel for ", kernel_dtype);
    plan.steps.push_back(std::move(step));
  }
  for (const Value& v : final_roots.outputs) plan.fetch_slots.push_back(slot_of.at(v.ref()));
}

void mark_releases(Plan& plan) {
  // A slot dies after its last reader, unless it is fetched (or never read).
  const std::vector<int32_t>& last_use = plan.liveness.last_read;
  std::vector<bool> fetched(plan.num_slots, false);
  for (int32_t slot : plan.fetch_slots) fetched[slot] = true;
  for (int32_t slot = 0; slot < plan.num_slots; ++slot)
    if (last_use[slot] >= 0 && !fetched[slot])
      plan.steps[last_use[slot]].release_after.push_back(slot);
  // Outputs nobody reads or fetches die right after the step that made them.
  for (PlanStep& step : plan.steps)
    for (int32_t slot : step.output_slots)
      if (slot >= 0 && last_use[slot] < 0 && !fetched[slot]) step.release_after.push_back(slot);
}

Plan compile_plan(const Graph& graph, const std::vector<FeedSpec>& feeds,
                  const std::vector<Value>& fetches, const std::vector<Value>& targets,
                  DeviceKind device, const PassOptions& passes, int max_streams) {
  Plan plan =
      specialize_shapes(graph, prune(graph, feeds, fetches, targets), feeds, fetches, targets);
  PassOptions for_device = passes;
  for_device.device = device;
  plan.passes_applied = optimize_graph(*plan.graph, for_device);
  choose_kernels(plan, device);
  schedule_streams(plan, max_streams);
  analyze_liveness(plan);
  plan_memory(plan, passes.in_place);
  mark_releases(plan);
  return plan;
}

}  // namespace kiln
