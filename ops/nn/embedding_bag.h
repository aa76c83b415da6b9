// The rule bag_argmax's CPU and CUDA kernels share (ops/nn/embedding_bag.cc, .cu).
#pragma once

#include "kiln/framework/dtype.h"

namespace kiln::ops {

/// Whether value v takes a bag's maximum from `best` (the current one; `none`: no row yet): it
/// is larger, or a NaN (which wins, the first NaN staying), as torch.max.
template <typename T>
KILN_HOST_DEVICE bool bag_max_replaces(bool none, T best, T v) {
  if (none) return true;
  if (best != best) return false;  // a NaN holds
  return v > best || v != v;
}

}  // namespace kiln::ops
