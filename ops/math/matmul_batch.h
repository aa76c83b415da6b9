// Batch broadcasting of matmul, shared by the CPU and CUDA kernels.
#pragma once

#include <cstdint>
#include <vector>

#include "kiln/framework/shape.h"

namespace kiln::ops {

/// Matrix offset (in matrices) of input `in_batch`'s entry for each output batch entry (NumPy
/// broadcasting of the batch dims).
inline std::vector<int64_t> batch_offsets(const Shape& out_batch, const Shape& in_batch) {
  const int64_t count = out_batch.numel();
  std::vector<int64_t> offsets(count, 0);
  const int64_t rank = out_batch.rank();
  for (int64_t i = 0; i < count; ++i) {
    int64_t rest = i, offset = 0, stride = 1;
    for (int64_t d = rank - 1; d >= 0; --d) {
      const int64_t index = rest % out_batch[d];
      rest /= out_batch[d];
      const int64_t in_d = d - (rank - in_batch.rank());
      if (in_d >= 0) {
        if (in_batch[in_d] != 1) offset += index * stride;
        stride *= in_batch[in_d];
      }
    }
    offsets[i] = offset;
  }
  return offsets;
}

/// The stride (in matrices) that walks `offsets` (0 when all are 0, 1 when they count up),
/// or -1 when no single stride does.
inline int64_t uniform_batch_stride(const std::vector<int64_t>& offsets) {
  if (offsets.size() <= 1) return 0;
  const int64_t stride = offsets[1] - offsets[0];
  for (size_t i = 0; i < offsets.size(); ++i)
    if (offsets[i] != static_cast<int64_t>(i) * stride) return -1;
  return stride;
}

/// Whether C = A op(B) of a batched A [..., M, K], not transposed, and a matrix B is one
/// product of A's rows: A lies in memory as [rows, K] (rows_of_matrix below) and C as [rows, N].
inline bool product_folds_rows(const Shape& a, const Shape& b, bool ta) {
  return !ta && b.rank() == 2 && a.rank() > 2;
}

/// The product of a known shape's dims but the last: its rows seen as one matrix.
inline int64_t rows_of_matrix(const Shape& a) {
  int64_t rows = 1;
  for (int64_t d = 0; d + 1 < a.rank(); ++d) rows *= a[d];
  return rows;
}

}  // namespace kiln::ops
