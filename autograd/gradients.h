// Symbolic differentiation: gradients are more nodes in the same graph.
#pragma once

#include <vector>

#include "framework/graph.h"

namespace kiln {

/// d(sum(dy * y)) / d(xs): for each x, a Value of x's shape and dtype in y's graph. `dy`
/// defaults to ones shaped like y (so for a scalar loss this is dloss/dx). The backward nodes
/// are built from each op's gradient function, partial gradients that meet are summed, and
/// only nodes on a path from some x to y are differentiated. An x that y does not depend on
/// (or only through integer, bool or stop_gradient paths) gets zeros.
///
/// Throws kiln::GraphError when a node on the path has no gradient function, naming its op
/// and the path from y to it; or when y or an x is not floating point.
std::vector<Value> gradients(const Value& y, const std::vector<Value>& xs, Value dy = {});

/// x in the forward pass; no gradient flows back through it.
Value stop_gradient(const Value& x);

}  // namespace kiln
