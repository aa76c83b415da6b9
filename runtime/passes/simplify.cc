// Algebraic simplification on concrete shapes: no-op nodes are bypassed and pairs collapse.
#include "kiln/ops/array.h"
#include "kiln/runtime/passes/passes.h"

namespace kiln {

namespace {

// True when `ref` is a constant whose every element equals `value`.
bool is_constant_equal_to(const Graph& graph, OutputRef ref, double value) {
  const Node& node = graph.node(ref.node);
  if (node.op_name() != "constant") return false;
  const Tensor& t = node.attr<Tensor>("value");
  if (t.numel() == 0 || t.numel() > 4096) return false;
  for (int64_t i = 0; i < t.numel(); ++i)
    if (t.element(i) != value) return false;
  return true;
}

// Whether `where` is where(greater(r, 0), max_pool2d_backward(relu(z), dy), 0) with r = relu(z)
// (what relu's gradient makes behind a max-pool of a relu) or r = z (relu(z) > 0 exactly when
// z > 0, so the two masks are equal). Then, per element: where a window's winner
// is z > 0 (so relu(z) = z > 0) the pool routes dy there and the mask keeps it; where the
// window's maximum relu(z) is 0, the winner has z <= 0 (or NaN) and the mask zeroes what the
// pool routed. So the pair equals the pool's gradient routing only from windows whose maximum
// is > 0 (max_pool2d_backward's positive_only), and one pass replaces two.
bool folds_relu_gradient_into_pool(const Graph& graph, const Node& where) {
  const OutputRef cond = where.inputs()[0], routed = where.inputs()[1];
  if (!is_constant_equal_to(graph, where.inputs()[2], 0.0)) return false;
  const Node& greater = graph.node(cond.node);
  const Node& pool = graph.node(routed.node);
  if (greater.op_name() != "greater" || pool.op_name() != "max_pool2d_backward" ||
      pool.attr<bool>("positive_only") || !is_constant_equal_to(graph, greater.inputs()[1], 0.0))
    return false;
  const Node& relu = graph.node(pool.inputs()[0].node);
  const OutputRef masked = greater.inputs()[0];
  return relu.op_name() == "relu" && (masked == relu.inputs()[0] || masked == pool.inputs()[0]) &&
         pool.outputs()[0] == where.outputs()[0];
}

class AlgebraicSimplification final : public Pass {
 public:
  const char* name() const override { return "algebraic_simplification"; }
  bool run(Graph& graph) override {
    std::unordered_map<OutputRef, OutputRef, OutputRefHash> replace;
    bool rewritten = false;
    for (int32_t id = 0; id < graph.num_nodes(); ++id) {
      const Node& node = graph.node(id);
      const std::string& op = node.op_name();
      if (node.num_outputs() != 1 || node.inputs().empty()) continue;
      const OutputRef self{id, 0};
      const TensorType& out = node.outputs()[0];
      auto same_type = [&](OutputRef r) { return graph.node(r.node).outputs()[r.index] == out; };
      const OutputRef x = node.inputs()[0];
      auto bypass = [&](OutputRef to) { replace[self] = to; };

      if (op == "identity" || op == "stop_gradient") {
        bypass(x);
      } else if ((op == "reshape" || op == "flatten" || op == "unflatten" || op == "reshape_like" ||
                  op == "expand_dims" || op == "sum_to" || op == "broadcast_like" ||
                  op == "broadcast_to" || op == "cast") &&
                 same_type(x)) {
        bypass(x);  // changes neither shape nor dtype
      } else if (op == "add_n" && node.inputs().size() == 1) {
        bypass(x);
      } else if ((op == "mul" || op == "add" || op == "sub" || op == "div") &&
                 node.inputs().size() == 2) {
        const OutputRef y = node.inputs()[1];
        const double unit = (op == "mul" || op == "div") ? 1.0 : 0.0;
        if (is_constant_equal_to(graph, y, unit) && same_type(x))
          bypass(x);
        else if ((op == "mul" || op == "add") && is_constant_equal_to(graph, x, unit) &&
                 same_type(y))
          bypass(y);
      } else if (op == "where" && node.inputs().size() == 3 &&
                 folds_relu_gradient_into_pool(graph, node)) {
        // where(z > 0, max_pool2d_backward(relu(z), dy), 0): relu's gradient masks the
        // pool's; the pool routes only from windows whose maximum (a relu output) is > 0.
        const Node& pool = graph.node(node.inputs()[1].node);
        AttrMap attrs = pool.attrs();
        attrs["positive_only"] = true;
        graph.rewrite_node(id, "max_pool2d_backward",
                           {graph.value(pool.inputs()[0]), graph.value(pool.inputs()[1])}, attrs);
        rewritten = true;
      } else if (op == "neg" && graph.node(x.node).op_name() == "neg") {
        bypass(graph.node(x.node).inputs()[0]);
      } else if (op == "reshape" && graph.node(x.node).op_name() == "reshape") {
        // reshape(reshape(a)) = reshape(a)
        Value a = graph.value(graph.node(x.node).inputs()[0]);
        graph.rewrite_node(id, "reshape", {a}, {{"shape", out.shape}});
        rewritten = true;
      } else if (op == "transpose" && graph.node(x.node).op_name() == "transpose") {
        // transpose(transpose(a, p), q) = transpose(a, p∘q), and a itself when that is the
        // identity.
        const Node& inner = graph.node(x.node);
        const int64_t rank = out.shape.rank();
        auto perm_of = [rank](const Node& n) {
          std::vector<int64_t> p = n.attr<std::vector<int64_t>>("perm");
          if (p.empty())
            for (int64_t i = rank - 1; i >= 0; --i) p.push_back(i);
          return p;
        };
        std::vector<int64_t> p = perm_of(inner), q = perm_of(node), composed(rank);
        bool identity = true;
        for (int64_t i = 0; i < rank; ++i) {
          composed[i] = p[q[i]];
          identity &= composed[i] == i;
        }
        if (identity) {
          bypass(inner.inputs()[0]);
        } else {
          graph.rewrite_node(id, "transpose", {graph.value(inner.inputs()[0])},
                             {{"perm", composed}});
          rewritten = true;
        }
      }
    }
    graph.replace_uses(replace);
    return rewritten || !replace.empty();
  }
};

}  // namespace

std::unique_ptr<Pass> make_algebraic_simplification() {
  return std::make_unique<AlgebraicSimplification>();
}

}  // namespace kiln
