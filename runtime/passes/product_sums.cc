// Sums of products as one product: add_n over matmuls that only it reads, with the same
// transposes, dtype and result shape, becomes
//   sum_i op(A_i) op(B_i) = op([A_1 .. A_k]) op([B_1; ..; B_k]),
// the A_i joined along their contraction axis (0 when transposed, else 1) and the B_i along
// theirs (1 when transposed, else 0). Autograd makes such sums for a weight used at every step
// of an unrolled recurrence (an LSTM's W_hh: one [H, B] x [B, 4H] product per step, summed); one
// product of depth T B runs at a large gemm's speed, writes C once and leaves no add_n, and an
// optimizer update can then fold into it (matmul_epilogue runs after this pass). Only the order
// of the floating-point additions changes.
#include <unordered_map>

#include "kiln/ops/array.h"
#include "kiln/ops/math.h"
#include "kiln/runtime/passes/passes.h"

namespace kiln {

namespace {

class ProductSumMerging final : public Pass {
 public:
  const char* name() const override { return "product_sum_merging"; }

  bool run(Graph& graph) override {
    bool changed = false;
    std::vector<std::vector<std::pair<int32_t, int32_t>>> consumers;
    std::vector<char> kept;
    for (int32_t id = 0; id < graph.num_nodes(); ++id) {
      if (graph.node(id).op_name() != "add_n") continue;
      if (consumers.empty()) {  // after a merge moved nodes: read again
        consumers = graph.consumers();
        kept.assign(graph.num_nodes(), 0);
        for (const auto& [name, sig] : graph.signatures())
          for (const auto* list : {&sig.outputs, &sig.targets})
            for (const Value& v : *list) kept[v.node_id()] = 1;
      }
      if (consumers[id].empty() && !kept[id]) continue;  // dead (a merge replaced it)
      const int32_t moved_to = merge(graph, id, consumers, kept);
      if (moved_to >= 0) {
        changed = true;
        id = moved_to;
        consumers.clear();
      }
    }
    // The replaced products and sums are gone only when removed (fusion's clean-up may be off).
    if (changed) graph.remove_unreachable();
    return changed;
  }

 private:
  // Merges the products among add_n node `id`'s terms. The merged product's nodes are moved
  // before the add_n, which then reads it, or, when every term was a product, whose readers
  // read it instead. Returns the add_n's id after the move, or -1 when nothing merged.
  static int32_t merge(Graph& graph, int32_t id,
                       const std::vector<std::vector<std::pair<int32_t, int32_t>>>& consumers,
                       const std::vector<char>& kept) {
    const Node& sum = graph.node(id);
    const TensorType& result = sum.outputs()[0];
    if (!result.shape.is_known() || result.shape.rank() != 2) return -1;
    // The products that qualify, with the transposes of the first of them; the rest stay terms.
    std::vector<OutputRef> products, others;
    int transposes = -1;
    for (OutputRef in : sum.inputs()) {
      const Node& mm = graph.node(in.node);
      const bool product =
          mm.op_name() == "matmul" && mm.inputs().size() == 2 && !kept[in.node] &&
          consumers[in.node].size() == 1 && mm.outputs()[0] == result &&
          graph.node(mm.inputs()[0].node).outputs()[mm.inputs()[0].index].shape.rank() == 2 &&
          graph.node(mm.inputs()[1].node).outputs()[mm.inputs()[1].index].shape.rank() == 2;
      const int t = product ? mm.attr<bool>("transpose_a") * 2 + mm.attr<bool>("transpose_b") : -1;
      if (product && (transposes < 0 || t == transposes)) {
        transposes = t;
        products.push_back(in);
      } else {
        others.push_back(in);
      }
    }
    if (products.size() < 2) return -1;
    const bool transpose_a = transposes & 2, transpose_b = transposes & 1;
    std::vector<Value> as, bs;
    for (OutputRef p : products) {
      as.push_back(graph.value(graph.node(p.node).inputs()[0]));
      bs.push_back(graph.value(graph.node(p.node).inputs()[1]));
    }
    const std::string sum_name = sum.name();
    const int32_t first = graph.num_nodes();
    Value merged;
    {
      NameScope scope(graph, sum_name + "_merged");
      merged = matmul(concat(as, transpose_a ? 0 : 1), concat(bs, transpose_b ? 1 : 0), transpose_a,
                      transpose_b);
    }
    // After the move the new nodes start at `id` and the add_n follows them.
    const OutputRef merged_ref{id + (merged.node_id() - first), merged.index()};
    const int32_t sum_id = id + (graph.num_nodes() - first);
    graph.move_before(first, id);
    if (others.empty()) {
      graph.replace_uses({{OutputRef{sum_id, 0}, merged_ref}});
    } else {
      // The remaining terms (their ids are below the add_n's, so unchanged by the move).
      std::vector<Value> terms{graph.value(merged_ref)};
      for (OutputRef o : others) terms.push_back(graph.value(o));
      graph.rewrite_node(sum_id, "add_n", terms, {});
    }
    return sum_id;
  }
};

}  // namespace

std::unique_ptr<Pass> make_product_sum_merging() {
  return std::make_unique<ProductSumMerging>();
}

}  // namespace kiln
