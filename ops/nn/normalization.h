// The layout of normalize's statistics groups (see normalization.cc), shared by its CPU and
// CUDA kernels: x viewed as [outer, kept, inner], one group per kept index.
#pragma once

#include <cstdint>
#include <vector>

#include "kiln/framework/graph.h"

namespace kiln::ops {

struct NormLayout {
  int64_t outer = 1, kept = 1, inner = 1;
  /// Elements per statistics group.
  int64_t group_size() const { return outer * inner; }
};

/// The layout of x normalized over `axes` (validated by the op's inference).
NormLayout norm_layout(const Shape& x, const std::vector<int64_t>& axes);

/// 1 / M for statistics `stats` of x (M = numel(x) / numel(stats)), a scalar known at run time.
Value reciprocal_count(const Value& x, const Value& stats);

}  // namespace kiln::ops
