// A strided copy: the index arithmetic under transpose, slice and the reductions' permute.
#pragma once

#include <vector>

#include "framework/kernel.h"

namespace kiln::ops {

/// out[i0, i1, ...] = src[offset + i0 * strides[0] + i1 * strides[1] + ...] for every index of
/// `out` (allocated, same dtype as src). Strides and offset are in elements.
void strided_copy(const KernelContext& ctx, const Tensor& src, int64_t offset,
                  const std::vector<int64_t>& strides, Tensor& out);

/// The inverse: dst[offset + i0 * strides[0] + ...] = src[i0, i1, ...] for every index of `src`
/// (dst allocated, same dtype). Elements of dst not addressed are left as they are.
void strided_scatter(const KernelContext& ctx, const Tensor& src, Tensor& dst, int64_t offset,
                     const std::vector<int64_t>& strides);

}  // namespace kiln::ops
