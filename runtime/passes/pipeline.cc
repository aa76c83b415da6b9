// The pass pipeline: ordered passes, fixed-point groups, the invariant checker, and the
// registry through which other modules add passes.
#include <algorithm>
#include <cstdlib>
#include <mutex>

#include "kiln/runtime/passes/passes.h"

namespace kiln {

namespace {

class DeadCodeElimination final : public Pass {
 public:
  const char* name() const override { return "dead_code_elimination"; }
  bool run(Graph& graph) override { return graph.remove_unreachable() > 0; }
};

struct Registered {
  int64_t id;
  PassStage stage;
  PassFactory factory;
};

std::mutex& registry_mutex() {
  static std::mutex mutex;
  return mutex;
}

std::vector<Registered>& registry() {
  static std::vector<Registered> passes;
  return passes;
}

void add_registered(PassPipeline& pipeline, PassStage stage, const PassOptions& options) {
  std::lock_guard<std::mutex> lock(registry_mutex());
  for (const Registered& r : registry())
    if (r.stage == stage)
      if (auto pass = r.factory(options)) pipeline.add_pass(std::move(pass));
}

}  // namespace

bool verify_passes_by_default() {
#ifndef NDEBUG
  return true;
#else
  static const bool from_environment = [] {
    const char* value = std::getenv("KILN_VERIFY_PASSES");
    return value && *value && std::string(value) != "0";
  }();
  return from_environment;
#endif
}

void verify_graph(const Graph& graph, const std::string& after) {
  auto fail = [&](const Node& node, const auto&... parts) {
    throw Error(str("[passes] after ", after, ": node '", node.name(), "' (", node.op_name(), ") ",
                    parts...));
  };
  for (int32_t id = 0; id < graph.num_nodes(); ++id) {
    const Node& node = graph.node(id);
    std::vector<TensorType> input_types;
    for (size_t i = 0; i < node.inputs().size(); ++i) {
      const OutputRef in = node.inputs()[i];
      if (in.node < 0 || in.node >= id)
        fail(node, "reads input ", i, " from node ", in.node, ", not defined before it (id ", id,
             ")");
      const Node& producer = graph.node(in.node);
      if (in.index < 0 || in.index >= producer.num_outputs())
        fail(node, "reads output ", in.index, " of '", producer.name(), "', which has ",
             producer.num_outputs());
      input_types.push_back(producer.outputs()[in.index]);
    }
    std::vector<TensorType> inferred;
    try {
      inferred =
          node.op().infer_fn()(InferContext(node.op(), node.name(), input_types, node.attrs()));
    } catch (const GraphError& e) {
      fail(node, "no longer passes inference: ", e.what());
    }
    if (inferred != node.outputs()) {
      std::string recorded, now;
      for (const TensorType& t : node.outputs()) recorded += str(" ", t.dtype, t.shape);
      for (const TensorType& t : inferred) now += str(" ", t.dtype, t.shape);
      fail(node, "records outputs", recorded, " but its inputs now give", now);
    }
  }
  for (const auto& [name, sig] : graph.signatures()) {
    for (const auto* list : {&sig.inputs, &sig.outputs, &sig.targets})
      for (const Value& v : *list)
        if (v.node_id() < 0 || v.node_id() >= graph.num_nodes() ||
            v.index() >= graph.node(v.node_id()).num_outputs())
          throw Error(str("[passes] after ", after, ": signature '", name,
                          "' names a value that no longer exists"));
  }
}

Pass& PassPipeline::add_pass(std::unique_ptr<Pass> pass) {
  passes_.push_back(std::move(pass));
  return *passes_.back();
}

bool PassPipeline::run_once(Graph& graph) {
  bool any = false;
  for (auto& pass : passes_) {
    const bool changed = pass->run(graph);
    if (verify_) verify_graph(graph, pass->name());
    if (!changed) continue;
    any = true;
    // A nested pipeline reports its own passes; a plain pass itself.
    std::vector<std::string> names;
    if (auto* nested = dynamic_cast<PassPipeline*>(pass.get()))
      names = nested->changed();
    else
      names.push_back(pass->name());
    for (const std::string& n : names)
      if (std::find(changed_.begin(), changed_.end(), n) == changed_.end()) changed_.push_back(n);
  }
  return any;
}

bool PassPipeline::run(Graph& graph) {
  return run_once(graph);
}

bool FixedPointPipeline::run(Graph& graph) {
  bool any = false;
  for (int round = 0; round < max_rounds_; ++round) {
    if (!run_once(graph)) break;
    any = true;
  }
  return any;
}

PassRegistration::PassRegistration(PassStage stage, PassFactory factory) {
  static int64_t next_id = 0;
  std::lock_guard<std::mutex> lock(registry_mutex());
  id_ = next_id++;
  registry().push_back({id_, stage, std::move(factory)});
}

PassRegistration::~PassRegistration() {
  std::lock_guard<std::mutex> lock(registry_mutex());
  std::erase_if(registry(), [&](const Registered& r) { return r.id == id_; });
}

std::unique_ptr<Pass> make_dead_code_elimination() {
  return std::make_unique<DeadCodeElimination>();
}

std::unique_ptr<PassPipeline> make_default_pipeline(const PassOptions& options) {
  auto pipeline = std::make_unique<PassPipeline>("default", options.verify);
  auto& cleanup = pipeline->add_pass<FixedPointPipeline>("cleanup", 8, options.verify);
  if (options.algebraic_simplification) cleanup.add_pass(make_algebraic_simplification());
  if (options.constant_folding) cleanup.add_pass(make_constant_folding());
  if (options.common_subexpression_elimination)
    cleanup.add_pass(make_common_subexpression_elimination());
  if (options.dead_code_elimination) cleanup.add_pass(make_dead_code_elimination());
  add_registered(cleanup, PassStage::cleanup, options);
  add_registered(*pipeline, PassStage::before_fusion, options);
  // Sums of products first: the merged product's optimizer update can then join it.
  if (options.product_sum_merging) pipeline->add_pass(make_product_sum_merging());
  // Epilogues before fusion, which would otherwise take the add and relu into a chain.
  if (options.matmul_epilogue) pipeline->add_pass(make_matmul_epilogue(options.device));
  if (options.elementwise_fusion) {
    pipeline->add_pass(make_elementwise_fusion());
    // The nodes fusion replaced are gone only after dead-code elimination.
    if (options.dead_code_elimination) pipeline->add_pass(make_dead_code_elimination());
  }
  add_registered(*pipeline, PassStage::after_fusion, options);
  return pipeline;
}

std::vector<std::string> optimize_graph(Graph& graph, const PassOptions& options) {
  auto pipeline = make_default_pipeline(options);
  pipeline->run(graph);
  return pipeline->changed();
}

}  // namespace kiln
