// Internal to autograd/: the optimizers' and schedules' state variables.
#pragma once

#include <string>

#include "kiln/framework/graph.h"

namespace kiln::optim {

/// A non-trainable variable named `name` whatever the name scope, every element `initial`;
/// `persistent` false: kept by the session but not by checkpoints (scratch copies).
Value state_variable(Graph& graph, const std::string& name, DType dtype, const Shape& shape,
                     double initial, bool persistent = true);

}  // namespace kiln::optim
