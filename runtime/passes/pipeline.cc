#include "runtime/passes/passes.h"

namespace kiln {

namespace {

class DeadCodeElimination final : public Pass {
 public:
  const char* name() const override { return "dead_code_elimination"; }
  bool run(Graph& graph) override { return graph.remove_unreachable() > 0; }
};

}  // namespace

std::unique_ptr<Pass> make_dead_code_elimination() {
  return std::make_unique<DeadCodeElimination>();
}

std::vector<std::string> optimize_graph(Graph& graph, const PassOptions& options) {
  std::vector<std::unique_ptr<Pass>> passes;
  if (options.algebraic_simplification) passes.push_back(make_algebraic_simplification());
  if (options.constant_folding) passes.push_back(make_constant_folding());
  if (options.common_subexpression_elimination)
    passes.push_back(make_common_subexpression_elimination());
  if (options.dead_code_elimination) passes.push_back(make_dead_code_elimination());
  std::vector<std::string> changed;
  auto note = [&](const Pass& pass) {
    for (const std::string& n : changed)
      if (n == pass.name()) return;
    changed.push_back(pass.name());
  };
  for (int round = 0; round < 8; ++round) {
    bool any = false;
    for (auto& pass : passes)
      if (pass->run(graph)) any = true, note(*pass);
    if (!any) break;
  }
  // Epilogues before fusion, which would otherwise take the add and relu into a chain.
  if (options.matmul_epilogue) {
    auto epilogue = make_matmul_epilogue();
    if (epilogue->run(graph)) note(*epilogue);
  }
  if (options.elementwise_fusion) {
    auto fusion = make_elementwise_fusion();
    if (fusion->run(graph)) {
      note(*fusion);
      if (options.dead_code_elimination) graph.remove_unreachable();
    }
  }
  return changed;
}

}  // namespace kiln
