// Elementwise fusion: a tree of elementwise ops of one float dtype, whose inner values have one
// reader each, becomes one fused_elementwise node (ops/math/fused.cc). Its inputs must have the
// output's element count, be scalars, or be the output's trailing dims (a bias row); a
// broadcast of such a value to the output's shape is read through (its source is the input).
#include <algorithm>
#include <functional>
#include <unordered_map>
#include <unordered_set>

#include "kiln/ops/math/fused.h"
#include "kiln/runtime/passes/passes.h"

namespace kiln {

namespace {

class ElementwiseFusion final : public Pass {
 public:
  const char* name() const override { return "elementwise_fusion"; }

  bool run(Graph& graph) override {
    consumers_ = graph.consumers();
    kept_.clear();
    writers_.clear();
    for (int32_t id = 0; id < graph.num_nodes(); ++id)
      for (int index : graph.node(id).op().mutated_inputs())
        writers_[graph.node(id).inputs()[index].node].push_back(id);
    for (const auto& [name, sig] : graph.signatures())
      for (const auto* list : {&sig.outputs, &sig.targets})
        for (const Value& v : *list) kept_.insert(v.node_id());
    std::vector<char> fused(graph.num_nodes(), 0);
    bool changed = false;
    for (int32_t root = graph.num_nodes() - 1; root >= 0; --root) {
      if (fused[root]) continue;
      const Node& node = graph.node(root);
      const int opcode = ops::fused_opcode(node.op_name());
      if (opcode < 0 || node.num_outputs() != 1) continue;
      const TensorType& out = node.outputs()[0];
      if ((out.dtype != f32 && out.dtype != f64) || !out.shape.is_known()) continue;
      Group group{graph, root, out, {}, {}, 0};
      std::vector<int32_t> members;
      if (add_member(group, root, members, /*is_root=*/true) < 0 || members.size() < 2) continue;
      // Renumber operands: externals are registers 0..e-1, instruction k is register e + k.
      const int64_t num_external = static_cast<int64_t>(group.externals.size());
      std::string expr;
      for (size_t k = 0; k < group.code.size() / 4; ++k) {
        expr += str(k ? "; " : "", "r", num_external + static_cast<int64_t>(k), " = ",
                    ops::fused_op_name(static_cast<int>(group.code[4 * k])), "(");
        for (int j = 1; j <= 3; ++j) {
          int64_t& operand = group.code[4 * k + j];
          if (operand == kUnused) {
            operand = -1;
            continue;
          }
          operand = operand >= 0 ? num_external + operand : -(operand + 2);
          expr += str(j > 1 ? ", " : "", "r", operand);
        }
        expr += ")";
      }
      std::vector<Value> inputs;
      for (OutputRef r : group.externals) inputs.push_back(graph.value(r));
      graph.rewrite_node(
          root, "fused_elementwise", inputs,
          {{"code", group.code}, {"expr", expr}, {"dtype", out.dtype}, {"shape", out.shape}});
      for (int32_t m : members) fused[m] = 1;
      changed = true;
    }
    return changed;
  }

 private:
  static constexpr int64_t kUnused = -1000000;
  // At most this many ops per fused node: bounds the kernel's scratch registers (and this
  // pass's recursion) however long an elementwise chain is.
  static constexpr size_t kMaxOps = 64;

  struct Group {
    const Graph& graph;
    int32_t root;  // the node the group replaces
    TensorType out;
    std::vector<OutputRef> externals;
    std::vector<int64_t> code;  // 4 per instruction; operands as tokens until renumbered
    size_t visited = 0;         // nodes tried for this group (bounds size and recursion)
  };

  // Can the fused kernel read a value of shape `in` for an output of shape `out`? Same element
  // count, a scalar, or the output's trailing dims (leading 1s aside).
  static bool readable(const Shape& in, const Shape& out) {
    if (in.numel() == out.numel() || in.numel() == 1) return true;
    int64_t lead = 0;
    while (lead < in.rank() && in[lead] == 1) ++lead;
    const int64_t rank = in.rank() - lead;
    if (rank > out.rank()) return false;
    for (int64_t i = 1; i <= rank; ++i)
      if (in[-i] != out[-i]) return false;
    return true;
  }

  // Whether every op that updates variable `var` reads the group's root (so runs after it):
  // then an inner node's read of var may move to the root's place in the order. Else it could
  // land after an update (plans run a variable's readers before its writers). Running
  // statistics, v <- v m + x (1 - m), fuse whole this way: the assign reads the root.
  bool updates_follow_root(const Group& g, int32_t var) const {
    auto found = writers_.find(var);
    if (found == writers_.end()) return true;
    for (int32_t writer : found->second) {
      const auto& inputs = g.graph.node(writer).inputs();
      if (std::find(inputs.begin(), inputs.end(), OutputRef{g.root, 0}) == inputs.end())
        return false;
    }
    return true;
  }

  // Token of external value `r` (-(index + 2)), added on first use; -1 when unreadable. The
  // root may read a variable that the graph also updates; an inner node only where the
  // updates follow the root (updates_follow_root).
  int64_t external(Group& g, OutputRef r, bool for_root) const {
    if (!for_root && !updates_follow_root(g, r.node)) return -1;
    const TensorType& t = g.graph.node(r.node).outputs()[r.index];
    if (t.dtype != g.out.dtype || !readable(t.shape, g.out.shape)) return -1;
    for (size_t i = 0; i < g.externals.size(); ++i)
      if (g.externals[i] == r) return -static_cast<int64_t>(i) - 2;
    g.externals.push_back(r);
    return -static_cast<int64_t>(g.externals.size()) - 1;
  }

  // The source of `r` where r is a broadcast the kernel does as it reads (a scalar, or a row
  // repeated over the leading dims: a mean's or a bias's gradient spread back over a batch), so
  // the broadcast value is never written out; else r.
  OutputRef through_broadcast(const Group& g, OutputRef r) const {
    const Node& n = g.graph.node(r.node);
    if (n.op_name() != "broadcast_like" && n.op_name() != "broadcast_to") return r;
    if (n.outputs()[0].shape != g.out.shape) return r;
    const OutputRef source = n.inputs()[0];
    const TensorType& t = g.graph.node(source.node).outputs()[source.index];
    return t.dtype == g.out.dtype && t.shape.is_known() && readable(t.shape, g.out.shape) ? source
                                                                                          : r;
  }

  // Can node `id`, read only inside the group, be computed inside it?
  bool inner_candidate(const Group& g, int32_t id) const {
    const Node& n = g.graph.node(id);
    if (ops::fused_opcode(n.op_name()) < 0 || n.num_outputs() != 1 || kept_.count(id) ||
        consumers_[id].size() != 1)
      return false;
    const TensorType& t = n.outputs()[0];
    if (t.shape != g.out.shape) return false;
    if (t.dtype == boolean) {  // a comparison feeding a where: its operands must be floats
      for (OutputRef in : n.inputs())
        if (g.graph.node(in.node).outputs()[in.index].dtype != g.out.dtype) return false;
      return true;
    }
    return t.dtype == g.out.dtype;
  }

  // Adds node `id` and the producers that can join it (post-order); returns its instruction
  // index, or -1 (leaving the group as it was) when `id` cannot be fused.
  int64_t add_member(Group& g, int32_t id, std::vector<int32_t>& members, bool is_root = false) {
    const Node& n = g.graph.node(id);
    ++g.visited;
    const size_t code_mark = g.code.size(), external_mark = g.externals.size();
    const size_t member_mark = members.size();
    auto fail = [&]() -> int64_t {
      g.code.resize(code_mark);
      g.externals.resize(external_mark);
      members.resize(member_mark);
      return -1;
    };
    std::vector<int64_t> operands;
    for (size_t i = 0; i < n.inputs().size(); ++i) {
      const OutputRef in = through_broadcast(g, n.inputs()[i]);
      int64_t token = -1;
      if (g.visited < kMaxOps && inner_candidate(g, in.node))
        token = add_member(g, in.node, members);
      // where's condition is a bool: it must be computed inside the group.
      if (token == -1 && !(n.op_name() == "where" && i == 0)) token = external(g, in, is_root);
      if (token == -1) return fail();
      operands.push_back(token);
    }
    members.push_back(id);
    g.code.push_back(ops::fused_opcode(n.op_name()));
    for (size_t j = 0; j < 3; ++j) g.code.push_back(j < operands.size() ? operands[j] : kUnused);
    return static_cast<int64_t>(g.code.size() / 4) - 1;
  }

  std::vector<std::vector<std::pair<int32_t, int32_t>>> consumers_;
  std::unordered_set<int32_t> kept_;
  // The variables some op of the graph writes, and those ops.
  std::unordered_map<int32_t, std::vector<int32_t>> writers_;
};

}  // namespace

std::unique_ptr<Pass> make_elementwise_fusion() {
  return std::make_unique<ElementwiseFusion>();
}

}  // namespace kiln
