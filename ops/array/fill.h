// The fill kernel, shared by fill and full_like.
#pragma once

#include "kiln/framework/kernel.h"

namespace kiln::ops {

/// Writes the node's "value" attribute (converted to the output dtype) into every element of
/// output 0.
void fill_cpu(KernelContext& ctx);

}  // namespace kiln::ops
