// Internal to autograd/: the optimizers' and schedules' state variables.
#pragma once

#include <string>

#include "kiln/framework/graph.h"

namespace kiln::optim {

/// A non-trainable variable named `name` whatever the name scope, every element `initial`;
/// `persistent` false: kept by the session but not by checkpoints (scratch copies);
/// `rank_local`: this rank's own state (VariableOptions::rank_local).
Value state_variable(Graph& graph, const std::string& name, DType dtype, const Shape& shape,
                     double initial, bool persistent = true, bool rank_local = false);

/// Writes `moved` into the variable `state`, or where `apply_if` (a bool scalar) is defined and
/// false leaves it as it is (a step loss scaling or gradient accumulation skips). Returns the
/// assign's output, so what reads it runs after the write.
Value assign_unless_skipped(const Value& state, const Value& moved, const Value& apply_if);

}  // namespace kiln::optim
