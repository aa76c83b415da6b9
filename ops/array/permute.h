// Copying a tensor into another dim order: shared by transpose and the reductions.
#pragma once

#include <vector>

#include "kiln/framework/kernel.h"

namespace kiln::ops {

/// out = x with dims reordered: out.shape[i] = x.shape[perm[i]]. `out` must be allocated with
/// that shape and x's dtype. Parallel over output rows.
void permute_copy(const KernelContext& ctx, const Tensor& x, const std::vector<int64_t>& perm,
                  Tensor& out);

}  // namespace kiln::ops
