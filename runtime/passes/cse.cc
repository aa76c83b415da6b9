// Common-subexpression elimination: one pass in id order (a topological order), keyed by
// (op, inputs, attributes); a later duplicate's outputs are replaced by the earlier node's.
#include <cstring>
#include <sstream>

#include "kiln/runtime/passes/passes.h"

namespace kiln {

namespace {

// Nodes of stateful ops (variables, feeds, updates, random draws, collectives, targets) are
// distinct even with equal inputs and attributes.
bool has_identity(const Node& node) {
  return node.op().is_stateful();
}

// An exact key for an attribute (doubles by their bits; small tensors by their bytes, large
// ones by their storage, which is what a copied graph shares).
void write_attr_key(std::ostringstream& out, const AttrValue& value) {
  std::visit(
      [&](const auto& v) {
        using T = std::decay_t<decltype(v)>;
        if constexpr (std::is_same_v<T, double>) {
          uint64_t bits;
          std::memcpy(&bits, &v, 8);
          out << "d" << bits;
        } else if constexpr (std::is_same_v<T, std::vector<double>>) {
          for (double d : v) {
            uint64_t bits;
            std::memcpy(&bits, &d, 8);
            out << "d" << bits << ",";
          }
        } else if constexpr (std::is_same_v<T, Tensor>) {
          out << "t" << v.dtype() << v.shape();
          if (v.nbytes() <= 256)
            out.write(static_cast<const char*>(v.raw_data()),
                      static_cast<std::streamsize>(v.nbytes()));
          else
            out << v.storage().get() << "+" << v.offset();
        } else {
          out << attr_to_string(AttrValue(v));
        }
      },
      value);
}

class CommonSubexpressionElimination final : public Pass {
 public:
  const char* name() const override { return "common_subexpression_elimination"; }
  bool run(Graph& graph) override {
    std::unordered_map<std::string, int32_t> seen;
    std::unordered_map<OutputRef, OutputRef, OutputRefHash> replace;
    for (int32_t id = 0; id < graph.num_nodes(); ++id) {
      const Node& node = graph.node(id);
      if (has_identity(node)) continue;
      std::ostringstream key;
      key << node.op_name() << "(";
      for (OutputRef in : node.inputs()) {
        // Inputs already replaced in this sweep count as their replacement.
        auto it = replace.find(in);
        OutputRef r = it == replace.end() ? in : it->second;
        key << r.node << ":" << r.index << ",";
      }
      key << ")";
      for (const auto& [name, value] : node.attrs()) {
        key << name << "=";
        write_attr_key(key, value);
        key << ";";
      }
      auto [it, inserted] = seen.emplace(key.str(), id);
      if (inserted) continue;
      for (int32_t i = 0; i < node.num_outputs(); ++i)
        replace[OutputRef{id, i}] = OutputRef{it->second, i};
    }
    graph.replace_uses(replace);
    return !replace.empty();
  }
};

}  // namespace

std::unique_ptr<Pass> make_common_subexpression_elimination() {
  return std::make_unique<CommonSubexpressionElimination>();
}

}  // namespace kiln
