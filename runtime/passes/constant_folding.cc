// Constant folding: a node whose inputs are all constants is computed once, here, and becomes
// a constant. Sources without inputs (fill, iota, seeded random) fold too, and so do inputs
// whose values the op never reads (OpDef::reads_only_type_of) once their shapes are known:
// numel(x) in a plan of concrete shapes is a constant, and x need not be.
#include "kiln/framework/kernel.h"
#include "kiln/runtime/passes/passes.h"

namespace kiln {

namespace {

// Outputs larger than this stay computed at run time (folding would trade compute for memory).
constexpr int64_t kMaxFoldedElements = int64_t{1} << 20;

// Only computed values without state, effects or randomness fold (the traits of the op).
bool foldable(const Node& node) {
  const OpDef& op = node.op();
  if (op.is_stateful() || op.source() != OutputSource::computed || node.num_outputs() == 0)
    return false;
  for (const TensorType& t : node.outputs())
    if (!t.shape.is_known() || t.shape.numel() > kMaxFoldedElements) return false;
  return true;
}

class ConstantFolding final : public Pass {
 public:
  const char* name() const override { return "constant_folding"; }
  bool run(Graph& graph) override {
    ThreadPool pool(1);
    bool changed = false;
    for (int32_t id = 0; id < graph.num_nodes(); ++id) {
      const Node& node = graph.node(id);
      if (!foldable(node) || node.num_outputs() != 1) continue;
      std::vector<Tensor> inputs;
      bool all_constant = true;
      for (size_t i = 0; i < node.inputs().size() && all_constant; ++i) {
        const OutputRef in = node.inputs()[i];
        const Node& producer = graph.node(in.node);
        const TensorType& type = producer.outputs()[in.index];
        if (node.op().reads_only_type(static_cast<int>(i)) && type.shape.is_known()) {
          // Its dtype and shape without storage: the kernel reads nothing else of it.
          inputs.emplace_back(type.dtype, type.shape, nullptr);
        } else if (producer.op().source() == OutputSource::attribute) {
          inputs.push_back(producer.attr<Tensor>("value"));
        } else {
          all_constant = false;
        }
      }
      if (!all_constant) continue;
      std::vector<TensorType> input_types;
      for (const Tensor& t : inputs) input_types.push_back({t.dtype(), t.shape()});
      KernelFn kernel = choose_kernel(node, input_types, DeviceKind::cpu);
      if (!kernel) continue;
      std::vector<Tensor> outputs(node.outputs().size());
      KernelContext ctx(node, inputs, node.outputs(), outputs, pool);
      try {
        kernel(ctx);
        for (int i = 0; i < ctx.num_outputs(); ++i) ctx.output(i);
      } catch (const Error&) {
        continue;  // a data error (say, a gather index) is reported when the graph runs
      }
      // A node keeps its id when it becomes a constant, so only one-output nodes fold.
      if (node.num_outputs() != 1) continue;
      graph.rewrite_node(id, "constant", {}, {{"value", outputs[0].clone()}});
      changed = true;
    }
    return changed;
  }
};

}  // namespace

std::unique_ptr<Pass> make_constant_folding() {
  return std::make_unique<ConstantFolding>();
}

}  // namespace kiln
