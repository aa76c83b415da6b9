// The CPU attention kernels' score rows past q k^T (attention.cc's gemm path and
// attention_tiled.cc's tiles share it): the scale, softcap and bias where ScoreTerms has them,
// -inf where a bool mask hides a key.
#pragma once

#include <cstdint>
#include <limits>

#include "kiln/ops/math/vector_math.h"
#include "kiln/ops/nn/attention.h"

namespace kiln::ops {

/// Row i of (b, h)'s scores, entries [j0, j1) holding q k^T (row[j] for key j): with a bias or
/// a softcap, softcap(scale q k^T) + bias (and `slope`, when given, receives d s / d(q k^T) =
/// scale (1 - tanh^2) under a softcap); with a bool mask, -inf where it hides a key; else
/// unchanged (the callers scale inside their exponentials: ScoreTerms::exp_scale).
template <typename T>
void apply_score_terms(const ScoreTerms<T>& terms, const AttentionShape& a, T scale, int64_t b,
                       int64_t h, int64_t i, int64_t j0, int64_t j1, T* row, T* slope = nullptr) {
  const int64_t at = b * a.mask_strides[0] + h * a.mask_strides[1] + i * a.mask_strides[2];
  const T cap = terms.softcap;
  if (cap > 0) {
    for (int64_t j = j0; j < j1; ++j) {
      const T t = tanh_cpu_fn{}(row[j] * (scale / cap));  // f32: vectorized, within 4 ulp
      row[j] = cap * t;
      if (slope != nullptr) slope[j] = scale * (T(1) - t * t);
    }
  } else if (terms.bias != nullptr) {
    const T* bias = terms.bias + at;
    for (int64_t j = j0; j < j1; ++j) row[j] = row[j] * scale + bias[j * a.mask_strides[3]];
    return;
  }
  if (terms.bias != nullptr) {
    const T* bias = terms.bias + at;
    for (int64_t j = j0; j < j1; ++j) row[j] += bias[j * a.mask_strides[3]];
  } else if (terms.keep != nullptr) {
    const bool* keep = terms.keep + at;
    for (int64_t j = j0; j < j1; ++j)
      if (!keep[j * a.mask_strides[3]]) row[j] = -std::numeric_limits<T>::infinity();
  }
}

}  // namespace kiln::ops
