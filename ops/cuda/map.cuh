// Elementwise maps on the GPU: y[i] = f(x[i], ...) with NumPy broadcasting, flat when every
// operand has y's element count. f is a __device__ lambda or functor.
#pragma once

#include "kiln/ops/cuda/cuda_common.cuh"
#include "kiln/ops/dtypes.h"

namespace kiln::ops::cuda {

template <int N>
BroadcastIndex<N> broadcast_index_or_fail(const KernelContext& ctx, const Shape& out,
                                          const std::array<Shape, N>& shapes) {
  BroadcastIndex<N> index;
  KILN_CHECK(make_broadcast_index<N>(out, shapes, &index), Error, ctx.where(), ": ", out,
             " needs more than ", kMaxIndexDims, " dims after merging; the GPU kernels take ",
             kMaxIndexDims);
  return index;
}

template <typename Out, typename A, typename F>
void map1(const KernelContext& ctx, const Tensor& a, Tensor& y, F f) {
  const int64_t n = y.numel();
  const A* pa = static_cast<const A*>(a.raw_data());
  Out* out = static_cast<Out*>(y.raw_data());
  if (a.numel() == n) {
    for_each(ctx, n, [=] __device__(int64_t i) { out[i] = f(pa[i]); });
    return;
  }
  const BroadcastIndex<1> index = broadcast_index_or_fail<1>(ctx, y.shape(), {a.shape()});
  for_each(ctx, n, [=] __device__(int64_t i) {
    int64_t off[1];
    index.offsets(i, off);
    out[i] = f(pa[off[0]]);
  });
}

template <typename Out, typename A, typename B, typename F>
void map2(const KernelContext& ctx, const Tensor& a, const Tensor& b, Tensor& y, F f) {
  const int64_t n = y.numel();
  const A* pa = static_cast<const A*>(a.raw_data());
  const B* pb = static_cast<const B*>(b.raw_data());
  Out* out = static_cast<Out*>(y.raw_data());
  if (a.numel() == n && b.numel() == n) {
    for_each(ctx, n, [=] __device__(int64_t i) { out[i] = f(pa[i], pb[i]); });
    return;
  }
  const BroadcastIndex<2> index =
      broadcast_index_or_fail<2>(ctx, y.shape(), {a.shape(), b.shape()});
  for_each(ctx, n, [=] __device__(int64_t i) {
    int64_t off[2];
    index.offsets(i, off);
    out[i] = f(pa[off[0]], pb[off[1]]);
  });
}

template <typename Out, typename A, typename B, typename C, typename F>
void map3(const KernelContext& ctx, const Tensor& a, const Tensor& b, const Tensor& c, Tensor& y,
          F f) {
  const int64_t n = y.numel();
  const A* pa = static_cast<const A*>(a.raw_data());
  const B* pb = static_cast<const B*>(b.raw_data());
  const C* pc = static_cast<const C*>(c.raw_data());
  Out* out = static_cast<Out*>(y.raw_data());
  const BroadcastIndex<3> index =
      broadcast_index_or_fail<3>(ctx, y.shape(), {a.shape(), b.shape(), c.shape()});
  for_each(ctx, n, [=] __device__(int64_t i) {
    int64_t off[3];
    index.offsets(i, off);
    out[i] = f(pa[off[0]], pb[off[1]], pc[off[2]]);
  });
}

/// True when T is one of the dtypes of class `cls` (compile time).
template <typename T>
constexpr bool in_class(DTypeClass cls) {
  const bool floating = is_float_v<T>;
  const bool sign = floating || std::is_same_v<T, int32_t> || std::is_same_v<T, int64_t>;
  switch (cls) {
    case DTypeClass::floating:
      return floating;
    case DTypeClass::signed_:
      return sign;
    case DTypeClass::numeric:
      return sign || std::is_same_v<T, uint8_t>;
    case DTypeClass::any:
      return true;
  }
  return false;
}

/// The dtypes of a class, as a kernel registration list.
inline std::vector<DType> cuda_dtypes(DTypeClass cls) {
  std::span<const DType> all = dtypes_of(cls);
  return {all.begin(), all.end()};
}

}  // namespace kiln::ops::cuda
