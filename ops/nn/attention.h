// The sizes of an attention problem (see attention.cc), shared by its CPU and CUDA kernels.
#pragma once

#include <cstdint>
#include <string>

#include "kiln/framework/shape.h"

namespace kiln::ops {

struct AttentionShape {
  int64_t batch = 0, heads = 0, queries = 0, keys = 0, depth = 0, value_depth = 0;
  /// Element strides of the bool mask along [B, H, Tq, Tk] (0 where it broadcasts).
  int64_t mask_strides[4] = {0, 0, 0, 0};
};

/// The problem of q [B, H, Tq, D], k [B, H, Tk, D], v [B, H, Tk, Dv] and the mask's shape (or
/// nullptr). Throws kiln::Error naming `where` when the mask, known only now, does not
/// broadcast to the scores.
AttentionShape attention_shape(const Shape& q, const Shape& k, const Shape& v, const Shape* mask,
                               const std::string& where);

}  // namespace kiln::ops
