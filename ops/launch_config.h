// Launch configurations of Kiln's CUDA kernels, as plain functions the CPU tests check.
#pragma once

#include <algorithm>
#include <array>
#include <cstdint>

#include "kiln/framework/dtype.h"
#include "kiln/ops/broadcast.h"

namespace kiln::ops {

/// Threads per block of the grid-stride elementwise kernels.
inline constexpr int kElementwiseThreads = 256;
/// Most dims an index over a (coalesced) tensor may have in a CUDA kernel.
inline constexpr int kMaxIndexDims = 8;

/// A grid of `blocks` blocks of `threads` threads.
struct LaunchConfig {
  int64_t blocks = 1;
  int threads = kElementwiseThreads;
};

/// Grid for `n` independent items handled by a grid-stride loop, `per_thread` items per
/// thread per pass: enough blocks to cover n once, at most `max_blocks` (the loop does the
/// rest), at least one.
inline LaunchConfig elementwise_launch(int64_t n, int per_thread = 1,
                                       int64_t max_blocks = int64_t{1} << 16) {
  const int64_t per_block = int64_t{kElementwiseThreads} * per_thread;
  const int64_t blocks = (n + per_block - 1) / per_block;
  return {std::clamp<int64_t>(blocks, 1, max_blocks), kElementwiseThreads};
}

/// Grid for `rows` rows each reduced by one warp (32 lanes), `warps_per_block` per block.
inline LaunchConfig warp_per_row_launch(int64_t rows, int warps_per_block = 8) {
  const int64_t blocks = (rows + warps_per_block - 1) / warps_per_block;
  return {std::clamp<int64_t>(blocks, 1, int64_t{1} << 31), 32 * warps_per_block};
}

/// Element offsets of N operands for a linear output index, from a coalesced broadcast loop.
/// Trivially copyable: passed to kernels by value.
template <int N>
struct BroadcastIndex {
  int rank = 0;
  int64_t dims[kMaxIndexDims] = {};
  int64_t strides[kMaxIndexDims][N] = {};

  /// Offsets of output element `i` (row-major over dims) in each operand.
  KILN_HOST_DEVICE void offsets(int64_t i, int64_t (&out)[N]) const {
    for (int k = 0; k < N; ++k) out[k] = 0;
    for (int d = rank - 1; d >= 0; --d) {
      const int64_t index = i % dims[d];
      i /= dims[d];
      for (int k = 0; k < N; ++k) out[k] += index * strides[d][k];
    }
  }
};

/// The BroadcastIndex of operands `shapes` broadcast to `out`; false when the coalesced loop
/// has more than kMaxIndexDims dims.
template <int N>
bool make_broadcast_index(const Shape& out, const std::array<Shape, N>& shapes,
                          BroadcastIndex<N>* index) {
  const BroadcastLoop<N> loop = make_broadcast_loop<N>(out, shapes);
  if (loop.dims.size() > static_cast<size_t>(kMaxIndexDims)) return false;
  index->rank = static_cast<int>(loop.dims.size());
  for (size_t d = 0; d < loop.dims.size(); ++d) {
    index->dims[d] = loop.dims[d];
    for (int k = 0; k < N; ++k) index->strides[d][k] = loop.strides[d][k];
  }
  return true;
}

/// A strided view of up to kMaxIndexDims dims: element i of the dense view (row-major over
/// dims) sits at offset + sum(index_d * strides_d).
struct StridedIndex {
  int rank = 0;
  int64_t offset = 0;
  int64_t dims[kMaxIndexDims] = {};
  int64_t strides[kMaxIndexDims] = {};

  KILN_HOST_DEVICE int64_t at(int64_t i) const {
    int64_t result = offset;
    for (int d = rank - 1; d >= 0; --d) {
      result += (i % dims[d]) * strides[d];
      i /= dims[d];
    }
    return result;
  }
};

/// The StridedIndex of a view (merging dims where the strides allow); false when it needs more
/// than kMaxIndexDims dims.
inline bool make_strided_index(const std::vector<int64_t>& dims,
                               const std::vector<int64_t>& strides, int64_t offset,
                               StridedIndex* index) {
  std::vector<int64_t> d_out, s_out;
  for (size_t d = 0; d < dims.size(); ++d) {
    if (dims[d] == 1) continue;
    if (!d_out.empty() && s_out.back() == strides[d] * dims[d]) {
      d_out.back() *= dims[d];
      s_out.back() = strides[d];
      continue;
    }
    d_out.push_back(dims[d]);
    s_out.push_back(strides[d]);
  }
  if (d_out.size() > static_cast<size_t>(kMaxIndexDims)) return false;
  index->rank = static_cast<int>(d_out.size());
  index->offset = offset;
  for (size_t d = 0; d < d_out.size(); ++d) {
    index->dims[d] = d_out[d];
    index->strides[d] = s_out[d];
  }
  return true;
}

}  // namespace kiln::ops
