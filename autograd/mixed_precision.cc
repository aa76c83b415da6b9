#include "kiln/autograd/mixed_precision.h"

#include <unordered_map>

#include "kiln/ops/array.h"

namespace kiln {

namespace {

int width(DType t) {
  return t == DType::f64 ? 3 : t == DType::f32 ? 2 : 1;
}

}  // namespace

Value autocast(const Value& y, DType compute) {
  KILN_CHECK(y.defined(), GraphError, "[autocast] of an undefined value");
  KILN_CHECK(compute == DType::bf16 || compute == DType::f16, GraphError,
             "[autocast] computes in bf16 or f16, not ", compute);
  Graph& g = *y.graph();
  // The nodes y needs (inputs have lower ids, so one backward sweep finds them).
  std::vector<char> needed(g.num_nodes(), 0);
  needed[y.node_id()] = 1;
  for (int32_t id = y.node_id(); id >= 0; --id)
    if (needed[id])
      for (OutputRef in : g.node(id).inputs()) needed[in.node] = 1;
  std::unordered_map<OutputRef, Value, OutputRefHash> mapped;
  auto lookup = [&](OutputRef r) {
    auto it = mapped.find(r);
    return it == mapped.end() ? g.value(r) : it->second;
  };
  for (int32_t id = 0; id <= y.node_id(); ++id) {
    if (!needed[id]) continue;
    const Node& node = g.node(id);
    if (node.inputs().empty()) continue;  // sources: variables stay f32 masters
    std::vector<Value> inputs;
    for (OutputRef in : node.inputs()) inputs.push_back(lookup(in));
    // The op's own declaration (OpDef::precision) decides; state keeps its dtype.
    const Precision policy = node.op().precision_policy();
    const bool writes_state = node.op().writes_state();
    int widest = 0;
    for (const Value& v : inputs)
      if (is_floating(v.dtype())) widest = std::max(widest, width(v.dtype()));
    for (size_t i = 0; i < inputs.size(); ++i) {
      const DType original = g.node(node.inputs()[i].node).outputs()[node.inputs()[i].index].dtype;
      Value& v = inputs[i];
      if (!is_floating(v.dtype())) continue;
      DType want = v.dtype();
      if (writes_state || policy == Precision::keep_f32)
        want = original;  // state keeps its dtype; sensitive ops get their f32 back
      else if (policy == Precision::low && width(original) <= 2)
        want = compute;
      else if (width(v.dtype()) < widest)
        want = original;
      if (want != v.dtype()) v = cast(v, want);
    }
    bool same = true;
    for (size_t i = 0; i < inputs.size(); ++i) same &= inputs[i].ref() == node.inputs()[i];
    if (same) continue;
    std::vector<Value> outputs = g.add_node(node.op_name(), inputs, node.attrs());
    for (int k = 0; k < node.num_outputs(); ++k) mapped[OutputRef{id, k}] = outputs[k];
  }
  Value out = lookup(y.ref());
  return out.dtype() == y.dtype() ? out : cast(out, y.dtype());
}

}  // namespace kiln
