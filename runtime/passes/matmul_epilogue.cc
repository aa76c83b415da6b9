// Matmul epilogues: add(matmul(a, b), bias) with bias one value per column (or, on the CPU, a
// matrix of C's shape: a residual, a recurrent step's input projection) becomes
// matmul_bias(a, b, bias), and a relu reading only that sum joins it too. On the CPU an
// optimizer update joins the product that makes its gradient (fold_update_into_product). cuBLASLt
// then adds the bias and applies the ReLU while it writes C (one pass over C fewer per op folded
// in). relu's gradient reads relu's output, so in training graphs the relu joins too; only a
// pre-activation with another reader keeps its relu apart. GELU is not folded: cuBLASLt's GELU
// epilogue is the tanh approximation, Kiln's gelu is exact. A convolution's per-channel bias joins
// it the same way, and a relu that alone reads a normalization's y joins the normalize op.
#include <optional>
#include <unordered_set>
#include <utility>

#include "kiln/runtime/passes/passes.h"

namespace kiln {

namespace {

// add(conv2d(x, w), b) with b a reshape or expand_dims of a [O] value to [1, O, 1, 1] (as
// nn::Conv2d adds its bias) becomes conv2d(x, w, bias): each kernel adds the bias to the images
// it has just written, one pass over the output fewer. Returns whether node `id` was rewritten.
template <typename SoleReader>
bool fold_conv_bias(Graph& graph, int32_t id, const SoleReader& sole_reader) {
  const Node& add = graph.node(id);
  for (int side = 0; side < 2; ++side) {
    const OutputRef product = add.inputs()[side], spread = add.inputs()[1 - side];
    const Node& conv = graph.node(product.node);
    if (conv.op_name() != "conv2d" || conv.inputs().size() != 2 || sole_reader(product.node) != id)
      continue;
    const Node& shaper = graph.node(spread.node);
    if (shaper.op_name() != "reshape" && shaper.op_name() != "expand_dims") continue;
    const TensorType& y = conv.outputs()[0];
    const OutputRef bias = shaper.inputs()[0];
    const TensorType& b = graph.node(bias.node).outputs()[bias.index];
    const Shape& spread_shape = shaper.outputs()[0].shape;
    if (!y.shape.is_known() || b.dtype != y.dtype || !(b.shape == Shape{y.shape[1]}) ||
        !(spread_shape == Shape{1, y.shape[1], 1, 1}) || !(add.outputs()[0] == y))
      continue;
    graph.rewrite_node(
        id, "conv2d",
        {graph.value(conv.inputs()[0]), graph.value(conv.inputs()[1]), graph.value(bias)},
        conv.attrs());
    return true;
  }
  return false;
}

// An SGD or Adam update whose gradient is a matrix product that only it reads (and whose
// operands hold no more elements than the product) becomes the update of that product
// (matmul_sgd_update, matmul_adam_update: the CPU applies the update to each block of the product
// right after computing it, and never stores the gradient). The same rule runs on the same product
// values, so the result is the unfused graph's. Returns whether node `id` was rewritten.
template <typename SoleReader>
bool fold_update_into_product(Graph& graph, int32_t id, const SoleReader& sole_reader) {
  const Node& update = graph.node(id);
  const std::string& op = update.op_name();
  const int gradient = op == "sgd_update" ? 2 : op == "adam_update" ? 3 : -1;
  if (gradient < 0) return false;
  const OutputRef grad = update.inputs()[gradient];
  const Node& mm = graph.node(grad.node);
  if (mm.op_name() != "matmul" || sole_reader(grad.node) != id) return false;
  const TensorType& c = mm.outputs()[0];
  const OutputRef var = update.inputs()[0];
  if (c.shape.rank() != 2 || !c.shape.is_known() ||
      !(graph.node(var.node).outputs()[var.index] == c))
    return false;
  // The fused update runs where the update was built, after the whole backward pass, so the
  // product's inputs (a layer's input and the gradient flowing into its output) stay alive
  // until then instead of the gradient. Fused only where they are no larger: a batch of a few
  // rows, not a transformer's thousands of tokens (whose activations would all outlive the
  // backward pass, and recompute segments would save nothing).
  int64_t operand_elements = 0;
  for (OutputRef in : mm.inputs()) {
    const Shape& shape = graph.node(in.node).outputs()[in.index].shape;
    if (!shape.is_known()) return false;
    operand_elements += shape.numel();
  }
  if (operand_elements > c.shape.numel()) return false;
  std::vector<Value> inputs;
  for (size_t i = 0; i < update.inputs().size(); ++i) {
    if (static_cast<int>(i) != gradient) {
      inputs.push_back(graph.value(update.inputs()[i]));
      continue;
    }
    inputs.push_back(graph.value(mm.inputs()[0]));
    inputs.push_back(graph.value(mm.inputs()[1]));
  }
  AttrMap attrs = update.attrs();
  attrs["transpose_a"] = mm.attr<bool>("transpose_a");
  attrs["transpose_b"] = mm.attr<bool>("transpose_b");
  graph.rewrite_node(id, "matmul_" + op, inputs, attrs);
  return true;
}

// relu(y) with y = normalize(...) read by nothing else (batch norm then ReLU, as in every conv
// block) becomes normalize(..., activation relu): the kernel applies relu as it writes y, and the
// relu's pass over y goes. relu's gradient reads relu's output, which is then y itself, so
// training graphs fold too. Returns the relu's output and the normalize's y to put in its place,
// or nothing.
template <typename Consumers>
std::optional<std::pair<OutputRef, OutputRef>> fold_relu_into_normalize(
    Graph& graph, int32_t id, const Consumers& consumers,
    const std::unordered_set<OutputRef, OutputRefHash>& kept) {
  const Node& relu = graph.node(id);
  if (relu.op_name() != "relu" || relu.inputs().size() != 1) return std::nullopt;
  const OutputRef y = relu.inputs()[0];
  const Node& norm = graph.node(y.node);
  if (norm.op_name() != "normalize" || y.index != 0 ||
      norm.attr<std::string>("activation") != "none" || kept.count(y) ||
      !(relu.outputs()[0] == norm.outputs()[0]))
    return std::nullopt;
  for (const auto& [reader, slot] : consumers[y.node])
    if (graph.node(reader).inputs()[slot] == y && reader != id) return std::nullopt;
  AttrMap attrs = norm.attrs();
  attrs["activation"] = std::string("relu");
  std::vector<Value> inputs;
  for (const OutputRef& in : norm.inputs()) inputs.push_back(graph.value(in));
  graph.rewrite_node(y.node, "normalize", inputs, attrs);
  return std::make_pair(OutputRef{id, 0}, y);
}

class MatmulEpilogue final : public Pass {
 public:
  explicit MatmulEpilogue(DeviceKind device) : device_(device) {}
  const char* name() const override { return "matmul_epilogue"; }

  bool run(Graph& graph) override {
    const auto consumers = graph.consumers();
    std::vector<char> kept(graph.num_nodes(), 0);
    std::unordered_set<OutputRef, OutputRefHash> kept_values;
    for (const auto& [name, sig] : graph.signatures())
      for (const auto* list : {&sig.outputs, &sig.targets})
        for (const Value& v : *list) {
          kept[v.node_id()] = 1;
          kept_values.insert(v.ref());
        }
    // The one reader of node id's only output, or -1.
    auto sole_reader = [&](int32_t id) -> int32_t {
      if (kept[id] || consumers[id].size() != 1) return -1;
      return consumers[id][0].first;
    };
    bool changed = false;
    std::vector<char> done(graph.num_nodes(), 0);
    std::unordered_map<OutputRef, OutputRef, OutputRefHash> replace;
    for (int32_t id = 0; id < graph.num_nodes(); ++id) {
      if (auto folded = fold_relu_into_normalize(graph, id, consumers, kept_values)) {
        replace.insert(*folded);
        continue;
      }
      // The product updates have CPU kernels only: on a GPU the update stays one kernel after
      // cuBLAS's product.
      if (device_ == DeviceKind::cpu && fold_update_into_product(graph, id, sole_reader)) {
        changed = true;
        continue;
      }
      const Node& add = graph.node(id);
      // add, or autograd's add_n of two (a gradient that reaches a value two ways).
      const bool sum_of_two =
          add.op_name() == "add" || (add.op_name() == "add_n" && add.inputs().size() == 2);
      if (!sum_of_two || done[id]) continue;
      for (int side = 0; side < 2; ++side) {
        const OutputRef product = add.inputs()[side], bias = add.inputs()[1 - side];
        const Node& mm = graph.node(product.node);
        if (mm.op_name() != "matmul" || sole_reader(product.node) != id) continue;
        const TensorType& c = mm.outputs()[0];
        const TensorType& b = graph.node(bias.node).outputs()[bias.index];
        const Shape& a_shape =
            graph.node(mm.inputs()[0].node).outputs()[mm.inputs()[0].index].shape;
        const int64_t k = mm.attr<bool>("transpose_a") ? a_shape[0] : a_shape[1];
        // Matrices with known dims, k > 0, a bias of exactly [N] or (on the CPU) an addend of
        // exactly C's shape, and y shaped like C. The addend is folded only where it was
        // measured (the CPU: one pass over C fewer); cuBLASLt's C with beta 1 takes it on a GPU.
        const bool row = b.shape.rank() == 1 && b.shape[0] == c.shape[1];
        const bool addend = device_ == DeviceKind::cpu && b.shape == c.shape;
        if (c.shape.rank() != 2 || !c.shape.is_known() || k <= 0 || !(row || addend) ||
            !(add.outputs()[0].shape == c.shape))
          continue;
        int32_t target = id;
        std::string activation = "none";
        const int32_t reader = sole_reader(id);
        if (reader >= 0 && graph.node(reader).op_name() == "relu") {
          target = reader;
          activation = "relu";
        }
        graph.rewrite_node(
            target, "matmul_bias",
            {graph.value(mm.inputs()[0]), graph.value(mm.inputs()[1]), graph.value(bias)},
            {{"transpose_a", mm.attr<bool>("transpose_a")},
             {"transpose_b", mm.attr<bool>("transpose_b")},
             {"activation", activation}});
        done[target] = 1;
        changed = true;
        break;
      }
      if (!done[id] && fold_conv_bias(graph, id, sole_reader)) {
        done[id] = 1;
        changed = true;
      }
    }
    if (!replace.empty()) {
      graph.replace_uses(replace);
      changed = true;
    }
    if (changed) graph.remove_unreachable();
    return changed;
  }

 private:
  DeviceKind device_;
};

}  // namespace

std::unique_ptr<Pass> make_matmul_epilogue(DeviceKind device) {
  return std::make_unique<MatmulEpilogue>(device);
}

}  // namespace kiln
