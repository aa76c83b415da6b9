// Checking values for NaN and infinity while a plan runs (SessionOptions::check_numerics), as
// TensorFlow's check_numerics and PyTorch's anomaly mode do.
#pragma once

#include <cstdint>
#include <string>

#include "kiln/framework/graph.h"

namespace kiln {

/// Which values stop a run when SessionOptions::check_numerics asks for it.
enum class NumericsCheck {
  off,         ///< nothing is checked (the default)
  nan,         ///< NaN stops the run (infinities are allowed, e.g. -inf in masks)
  nan_or_inf,  ///< NaN, +inf and -inf stop the run
};

/// Position of the first element of host tensor `t` that `check` refuses, or -1 (also -1 for
/// integer and bool tensors, which cannot hold NaN or infinity).
int64_t first_non_finite(const Tensor& t, NumericsCheck check);

/// Throws kiln::NumericsError when host tensor `t` holds a value `check` refuses; `what` says
/// where it comes from ("node 'dense1/relu' (relu), output 0", "feed 'x'"):
/// "[check_numerics] node 'dense1/relu' (relu), output 0: f32[128, 32] has NaN at [3, 17] ...".
void check_numerics(const Tensor& t, NumericsCheck check, const std::string& what);

}  // namespace kiln
