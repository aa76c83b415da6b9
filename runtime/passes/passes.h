// Graph passes: rewrites of a plan's private copy of the graph, run before scheduling.
// Each pass is a small unit with a name and a `run(Graph&) -> changed` contract; passes
// never change results beyond floating-point reassociation.
#pragma once

#include <memory>
#include <string>
#include <vector>

#include "framework/graph.h"

namespace kiln {

/// One graph rewrite.
class Pass {
 public:
  virtual ~Pass() = default;
  virtual const char* name() const = 0;
  /// Rewrites `graph` in place; returns true when anything changed. The graph's signatures
  /// name what must be kept (fetches, targets).
  virtual bool run(Graph& graph) = 0;
};

/// Removes nodes that no signature needs.
std::unique_ptr<Pass> make_dead_code_elimination();
/// Replaces nodes whose inputs are all constants by the constant they compute (outputs of up
/// to 1M elements; never variables, placeholders or ops that write state).
std::unique_ptr<Pass> make_constant_folding();
/// Merges nodes that compute the same op with the same attributes on the same inputs.
std::unique_ptr<Pass> make_common_subexpression_elimination();
/// Removes no-ops and folds pairs: x*1, x+0, x-0, x/1, -(-x), identity, stop_gradient,
/// reshapes/broadcasts/casts/sum_to that change nothing, transpose∘transpose, reshape∘reshape.
std::unique_ptr<Pass> make_algebraic_simplification();
/// Turns trees of elementwise ops of one float dtype into one fused_elementwise node that
/// reads its inputs once and writes its output once.
std::unique_ptr<Pass> make_elementwise_fusion();

/// Folds a bias add (and a relu that only it feeds) into the matmul before it: matmul_bias,
/// which cuBLASLt runs as one product with an epilogue.
std::unique_ptr<Pass> make_matmul_epilogue();

/// Which passes a Session runs (all on by default).
struct PassOptions {
  bool constant_folding = true;
  bool common_subexpression_elimination = true;
  bool algebraic_simplification = true;
  bool matmul_epilogue = true;
  bool elementwise_fusion = true;
  bool dead_code_elimination = true;
  /// Let an elementwise op write into an input buffer that dies at it (memory planning).
  bool in_place = true;
};

/// Runs the enabled passes in order, repeating until none changes anything (at most 8
/// rounds); fusion runs last, once. Returns the names of passes that changed the graph.
std::vector<std::string> optimize_graph(Graph& graph, const PassOptions& options);

}  // namespace kiln
