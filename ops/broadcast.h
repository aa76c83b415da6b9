// Index arithmetic for elementwise ops whose inputs broadcast to the output (NumPy rules).
#pragma once

#include <array>
#include <cstdint>
#include <vector>

#include "kiln/framework/dtype.h"
#include "kiln/framework/shape.h"

namespace kiln::ops {

/// How N inputs map onto an output: the output's dims, coalesced (adjacent dims merged where
/// every input is contiguous or broadcast across both), and each input's element stride per
/// dim (0 where the input is broadcast). The last dim is the inner loop.
template <int N>
struct BroadcastLoop {
  std::vector<int64_t> dims;
  std::vector<std::array<int64_t, N>> strides;

  int64_t inner() const { return dims.empty() ? 1 : dims.back(); }
  int64_t outer() const {
    int64_t n = 1;
    for (size_t i = 0; i + 1 < dims.size(); ++i) n *= dims[i];
    return n;
  }
  std::array<int64_t, N> inner_strides() const {
    return dims.empty() ? std::array<int64_t, N>{} : strides.back();
  }
  /// Offsets of each input's element at the start of output row `row` (row < outer()).
  std::array<int64_t, N> row_offsets(int64_t row) const {
    std::array<int64_t, N> offsets{};
    for (int64_t d = static_cast<int64_t>(dims.size()) - 2; d >= 0 && row > 0; --d) {
      int64_t i = row % dims[d];
      row /= dims[d];
      for (int k = 0; k < N; ++k) offsets[k] += i * strides[d][k];
    }
    return offsets;
  }
};

/// Plans the loop for inputs of `shapes` broadcast to `out` (all concrete; `out` must be
/// their broadcast).
template <int N>
BroadcastLoop<N> make_broadcast_loop(const Shape& out, const std::array<Shape, N>& shapes) {
  BroadcastLoop<N> loop;
  const int64_t rank = out.rank();
  std::vector<std::array<int64_t, N>> strides(rank);
  for (int k = 0; k < N; ++k) {
    const Shape& s = shapes[k];
    int64_t stride = 1;
    for (int64_t d = rank - 1; d >= 0; --d) {
      int64_t sd = d - (rank - s.rank());
      int64_t dim = sd >= 0 ? s[sd] : 1;
      strides[d][k] = (dim == 1 && out[d] != 1) ? 0 : stride;
      stride *= dim;
    }
  }
  for (int64_t d = 0; d < rank; ++d) {
    if (out[d] == 1) continue;  // size-1 dims add nothing to the iteration
    if (!loop.dims.empty()) {
      // Merge with the previous dim when, for every input, stepping the previous dim equals
      // stepping this one out[d] times.
      bool mergeable = true;
      for (int k = 0; k < N; ++k) mergeable &= loop.strides.back()[k] == strides[d][k] * out[d];
      if (mergeable) {
        loop.dims.back() *= out[d];
        loop.strides.back() = strides[d];
        continue;
      }
    }
    loop.dims.push_back(out[d]);
    loop.strides.push_back(strides[d]);
  }
  return loop;
}

/// The dims of `x` that broadcasting stretched from `target` (x = broadcast of target): the
/// leading dims target lacks, and those where target has 1 and x does not. sum_to sums them.
inline std::vector<int64_t> stretched_axes(const Shape& x, const Shape& target) {
  const int64_t lead = x.rank() - target.rank();
  std::vector<int64_t> axes;
  for (int64_t d = 0; d < x.rank(); ++d)
    if (d < lead || (target[d - lead] == 1 && x[d] != 1)) axes.push_back(d);
  return axes;
}

}  // namespace kiln::ops
