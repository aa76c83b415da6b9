// Symbolic differentiation: gradients are more nodes in the same graph.
#pragma once

#include <vector>

#include "kiln/framework/graph.h"

namespace kiln {

/// Options of gradients().
struct GradientOptions {
  /// The gradient flowing into y: ones shaped like y when undefined (so for a scalar loss the
  /// result is dloss/dx).
  Value dy{};
  /// An x that y does not depend on through differentiable ops gets an undefined Value instead
  /// of an error (PyTorch's allow_unused, which gives None).
  bool allow_unused = false;
  /// Such an x gets zeros shaped like it instead (PyTorch's materialize_grads); implies
  /// allow_unused.
  bool materialize_unused = false;
};

/// d(sum(dy * y)) / d(xs): for each x, a Value of x's shape and dtype in y's graph. The
/// backward nodes are built from each op's gradient function, partial gradients that meet are
/// summed, and only nodes on a path from some x to y are differentiated.
///
/// Throws kiln::GraphError when a node on the path has no gradient function, naming its op and
/// the path from y to it; when y or an x is not floating point; and when y does not depend on
/// an x (or only through integer, bool or stop_gradient paths, which the message names) unless
/// `options` allow it.
std::vector<Value> gradients(const Value& y, const std::vector<Value>& xs,
                             const GradientOptions& options = {});

/// x in the forward pass; no gradient flows back through it.
Value stop_gradient(const Value& x);

}  // namespace kiln
