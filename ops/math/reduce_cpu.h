// The CPU sum kernel's reduction, for other kernels that sum over axes (sum_to).
#pragma once

#include <vector>

#include "kiln/framework/kernel.h"

namespace kiln::ops {

/// y = sum of x over `axes` (sorted, distinct, in x's dims); y holds x's kept dims in order.
/// Over the pool, in an order that does not depend on the number of threads.
void sum_into(const KernelContext& ctx, const Tensor& x, const std::vector<int64_t>& axes,
              Tensor& y);

}  // namespace kiln::ops
