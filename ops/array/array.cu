// CUDA kernels of the array ops: the strided copy under transpose, slice, concat and split
// (their kernels in the .cc files run on both devices through it), gather, take_along_axis
// and their gradients, dynamic_slice and dynamic_update_slice.
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include "kiln/ops/array/strided_copy.h"
#include "kiln/ops/cuda/map.cuh"

namespace kiln::ops {

namespace cuda_array {
using namespace kiln::ops::cuda;

template <typename Word>
void strided_typed(const KernelContext& ctx, bool scatter, const void* src, void* dst,
                   const StridedIndex& index, int64_t n) {
  const Word* in = static_cast<const Word*>(src);
  Word* out = static_cast<Word*>(dst);
  if (scatter)
    for_each(ctx, n, [=] __device__(int64_t i) { out[index.at(i)] = in[i]; });
  else
    for_each(ctx, n, [=] __device__(int64_t i) { out[i] = in[index.at(i)]; });
}

}  // namespace cuda_array

void strided_copy_cuda(const KernelContext& ctx, bool scatter, size_t word_bytes, const void* src,
                       void* dst, int64_t offset, const std::vector<int64_t>& dims,
                       const std::vector<int64_t>& strides) {
  StridedIndex index;
  KILN_CHECK(make_strided_index(dims, strides, offset, &index), Error, ctx.where(),
             ": a strided copy over ", dims.size(), " dims that do not merge below ", kMaxIndexDims,
             " is not supported on the GPU");
  int64_t n = 1;
  for (int64_t d : dims) n *= d;
  switch (word_bytes) {
    case 1:
      return cuda_array::strided_typed<uint8_t>(ctx, scatter, src, dst, index, n);
    case 2:
      return cuda_array::strided_typed<uint16_t>(ctx, scatter, src, dst, index, n);
    case 4:
      return cuda_array::strided_typed<uint32_t>(ctx, scatter, src, dst, index, n);
    default:
      return cuda_array::strided_typed<uint64_t>(ctx, scatter, src, dst, index, n);
  }
}

namespace cuda_array {

// Calls f(Word{}, Index{}) for the element size of `x` (copied as words of that size) and the
// dtype of `index` (i32, else i64): indices (gather, take_along_axis) or a window's start.
template <typename F>
void by_word_and_index(const Tensor& x, const Tensor& index, F f) {
  auto with_index = [&](auto word) {
    if (index.dtype() == DType::i32)
      f(word, int32_t{});
    else
      f(word, int64_t{});
  };
  switch (dtype_size(x.dtype())) {
    case 1:
      return with_index(uint8_t{});
    case 2:
      return with_index(uint16_t{});
    case 4:
      return with_index(uint32_t{});
    default:
      return with_index(uint64_t{});
  }
}

// params viewed as [outer, n, inner] around the gather axis.
struct AxisView {
  int64_t outer = 1, n = 1, inner = 1;
  AxisView(const Shape& shape, int64_t axis) : n(shape[axis]) {
    for (int64_t i = 0; i < axis; ++i) outer *= shape[i];
    for (int64_t i = axis + 1; i < shape.rank(); ++i) inner *= shape[i];
  }
};

// out[o, j, k] = params[o, indices[j], k]. An index out of range is reported (the run then
// fails naming the node) and its row written as zeros.
template <typename Word, typename Index>
void gather_typed(KernelContext& ctx, int64_t axis) {
  const Tensor& params = ctx.input(0);
  const Tensor& indices = ctx.input(1);
  Tensor& y = ctx.output(0);
  const AxisView v(params.shape(), axis);
  const int64_t count = indices.numel(), n = v.n, inner = v.inner;
  const Word* src = static_cast<const Word*>(params.raw_data());
  const Index* idx = indices.data<Index>();
  Word* out = static_cast<Word*>(y.raw_data());
  const ErrorReporter errors = error_reporter(ctx);
  for_each(ctx, y.numel(), [=] __device__(int64_t p) {
    const int64_t k = p % inner, row = p / inner;
    const int64_t j = row % count, o = row / count;
    int64_t i = idx[j];
    if (i < -n || i >= n) {
      if (k == 0) errors.report(DataErrorKind::index_out_of_range, i, j, -n, n);
      out[p] = Word(0);
      return;
    }
    if (i < 0) i += n;
    out[p] = src[(o * n + i) * inner + k];
  });
}

void gather_cuda(KernelContext& ctx) {
  if (ctx.output(0).numel() == 0) return;
  const int64_t axis = normalize_axis(ctx.attr<int64_t>("axis"), ctx.input(0).rank(), ctx.where());
  by_word_and_index(ctx.input(0), ctx.input(1), [&](auto word, auto index) {
    gather_typed<decltype(word), decltype(index)>(ctx, axis);
  });
}
KILN_CUDA_KERNEL(gather, gather_cuda);

// Atomic adds in the storage type (16-bit floats through CUDA's own types).
__device__ inline void add_to(float* p, float v) {
  atomicAdd(p, v);
}
__device__ inline void add_to(double* p, double v) {
  atomicAdd(p, v);
}
__device__ inline void add_to(Half* p, float v) {
  atomicAdd(reinterpret_cast<__half*>(p), __float2half(v));
}
__device__ inline void add_to(BFloat16* p, float v) {
  atomicAdd(reinterpret_cast<__nv_bfloat16*>(p), __float2bfloat16(v));
}

// dparams[o, indices[j], k] += dy[o, j, k]; repeated indices add up (in no fixed order).
template <typename T, typename Index>
void gather_grad_typed(KernelContext& ctx, int64_t axis) {
  const Tensor& dy = ctx.input(0);
  const Tensor& indices = ctx.input(1);
  Tensor& dx = ctx.output(0);
  fill_zero(ctx, dx);
  const AxisView v(dx.shape(), axis);
  const int64_t count = indices.numel(), n = v.n, inner = v.inner;
  const T* g = dy.data<T>();
  const Index* idx = indices.data<Index>();
  T* out = dx.data<T>();
  for_each(ctx, dy.numel(), [=] __device__(int64_t p) {
    const int64_t k = p % inner, row = p / inner;
    const int64_t j = row % count, o = row / count;
    int64_t i = idx[j];
    if (i < -n || i >= n) return;  // the forward gather reported it
    if (i < 0) i += n;
    add_to(out + (o * n + i) * inner + k, static_cast<Compute<T>>(g[p]));
  });
}

template <typename T>
void gather_grad_index(KernelContext& ctx, int64_t axis) {
  if (ctx.input(1).dtype() == DType::i32)
    gather_grad_typed<T, int32_t>(ctx, axis);
  else
    gather_grad_typed<T, int64_t>(ctx, axis);
}

void gather_grad_cuda(KernelContext& ctx) {
  const int64_t axis =
      normalize_axis(ctx.attr<int64_t>("axis"), ctx.output_type(0).shape.rank(), ctx.where());
  dispatch_cuda_float(ctx.input(0).dtype(),
                      [&](auto tag) { gather_grad_index<decltype(tag)>(ctx, axis); });
}
KILN_CUDA_KERNEL(gather_grad, gather_grad_cuda, cuda_dtypes(DTypeClass::floating));

// take_along_axis: out[o, j, k] = params[o, indices[o, j, k], k] with params [outer, n, inner]
// and indices [outer, m, inner]. An index outside [0, n) is reported and its element zeroed.
template <typename Word, typename Index>
void take_along_axis_typed(KernelContext& ctx, int64_t axis) {
  const Tensor& params = ctx.input(0);
  const Tensor& indices = ctx.input(1);
  const AxisView v(params.shape(), axis);
  const int64_t n = v.n, inner = v.inner, m = indices.shape()[axis];
  const Word* src = static_cast<const Word*>(params.raw_data());
  const Index* idx = indices.data<Index>();
  Word* out = static_cast<Word*>(ctx.output(0).raw_data());
  const ErrorReporter errors = error_reporter(ctx);
  for_each(ctx, indices.numel(), [=] __device__(int64_t p) {
    const int64_t k = p % inner, o = p / inner / m;
    const int64_t i = idx[p];
    if (i < 0 || i >= n) {
      errors.report(DataErrorKind::index_out_of_range, i, p, 0, n);
      out[p] = Word(0);
      return;
    }
    out[p] = src[(o * n + i) * inner + k];
  });
}

void take_along_axis_cuda(KernelContext& ctx) {
  if (ctx.output(0).numel() == 0) return;
  const int64_t axis = normalize_axis(ctx.attr<int64_t>("axis"), ctx.input(0).rank(), ctx.where());
  by_word_and_index(ctx.input(0), ctx.input(1), [&](auto word, auto index) {
    take_along_axis_typed<decltype(word), decltype(index)>(ctx, axis);
  });
}
KILN_CUDA_KERNEL(take_along_axis, take_along_axis_cuda);

// dparams[o, indices[o, j, k], k] += dy[o, j, k]; repeats add up (in no fixed order).
template <typename T, typename Index>
void take_along_axis_grad_typed(KernelContext& ctx, int64_t axis) {
  const Tensor& indices = ctx.input(1);
  Tensor& dx = ctx.output(0);
  fill_zero(ctx, dx);
  const AxisView v(dx.shape(), axis);
  const int64_t n = v.n, inner = v.inner, m = indices.shape()[axis];
  const T* g = ctx.input(0).data<T>();
  const Index* idx = indices.data<Index>();
  T* out = dx.data<T>();
  for_each(ctx, indices.numel(), [=] __device__(int64_t p) {
    const int64_t k = p % inner, o = p / inner / m;
    const int64_t i = idx[p];
    if (i < 0 || i >= n) return;  // the forward op reported it
    add_to(out + (o * n + i) * inner + k, static_cast<Compute<T>>(g[p]));
  });
}

void take_along_axis_grad_cuda(KernelContext& ctx) {
  const int64_t axis =
      normalize_axis(ctx.attr<int64_t>("axis"), ctx.output_type(0).shape.rank(), ctx.where());
  dispatch_cuda_float(ctx.input(0).dtype(), [&](auto tag) {
    using T = decltype(tag);
    if (ctx.input(1).dtype() == DType::i32)
      take_along_axis_grad_typed<T, int32_t>(ctx, axis);
    else
      take_along_axis_grad_typed<T, int64_t>(ctx, axis);
  });
}
KILN_CUDA_KERNEL(take_along_axis_grad, take_along_axis_grad_cuda,
                 cuda_dtypes(DTypeClass::floating));

// ---- dynamic_slice and dynamic_update_slice: the start is read on the device (no copy to the
// host, so a CUDA Graph replays them with whatever start the step computes or is fed).

// The start of a window of `length` within `n`, or -1 (reported) when it does not fit.
template <typename Index>
__device__ int64_t window_start(const Index* start, int64_t length, int64_t n,
                                const ErrorReporter& errors, bool report) {
  const int64_t at = start[0];
  if (at >= 0 && at <= n - length) return at;
  if (report) errors.report(DataErrorKind::start_out_of_range, at, 0, 0, n - length + 1);
  return -1;
}

// out[o, j, k] = x[o, start + j, k], x viewed as [outer, n, inner], out as [outer, length,
// inner]. A start that does not fit is reported and the output zeroed.
template <typename Word, typename Index>
void dynamic_slice_typed(KernelContext& ctx, int64_t axis) {
  const AxisView v(ctx.input(0).shape(), axis);
  const int64_t n = v.n, inner = v.inner, length = ctx.output(0).shape()[axis];
  const Word* src = static_cast<const Word*>(ctx.input(0).raw_data());
  const Index* start = ctx.input(1).data<Index>();
  Word* out = static_cast<Word*>(ctx.output(0).raw_data());
  const ErrorReporter errors = error_reporter(ctx);
  for_each(ctx, ctx.output(0).numel(), [=] __device__(int64_t p) {
    const int64_t at = window_start(start, length, n, errors, p == 0);
    const int64_t k = p % inner, row = p / inner;
    const int64_t j = row % length, o = row / length;
    out[p] = at < 0 ? Word(0) : src[(o * n + at + j) * inner + k];
  });
}

// out = x with update [outer, length, inner] over rows [start, start + length) of each outer
// block. out may be x's buffer (computed in place): then only the window is written. A start
// that does not fit is reported and out left equal to x.
template <typename Word, typename Index>
void dynamic_update_slice_typed(KernelContext& ctx, int64_t axis) {
  const AxisView v(ctx.input(0).shape(), axis);
  const int64_t n = v.n, inner = v.inner, length = ctx.input(1).shape()[axis];
  const Word* x = static_cast<const Word*>(ctx.input(0).raw_data());
  const Word* update = static_cast<const Word*>(ctx.input(1).raw_data());
  const Index* start = ctx.input(2).data<Index>();
  Word* out = static_cast<Word*>(ctx.output(0).raw_data());
  const bool in_place = out == x;
  const ErrorReporter errors = error_reporter(ctx);
  for_each(ctx, ctx.output(0).numel(), [=] __device__(int64_t p) {
    const int64_t at = window_start(start, length, n, errors, p == 0);
    const int64_t k = p % inner, row = p / inner;
    const int64_t i = row % n, o = row / n;
    if (at >= 0 && i >= at && i < at + length)
      out[p] = update[(o * length + i - at) * inner + k];
    else if (!in_place)
      out[p] = x[p];
  });
}

// assign_slice: var's rows [start, start + length) of each outer block := update, in var's
// storage; one thread per update element. A start that does not fit is reported and var left.
template <typename Word, typename Index>
void assign_slice_typed(KernelContext& ctx, int64_t axis) {
  const AxisView v(ctx.input(0).shape(), axis);
  const int64_t n = v.n, inner = v.inner, length = ctx.input(1).shape()[axis];
  Word* var = static_cast<Word*>(ctx.input(0).raw_data());
  const Word* update = static_cast<const Word*>(ctx.input(1).raw_data());
  const Index* start = ctx.input(2).data<Index>();
  const ErrorReporter errors = error_reporter(ctx);
  for_each(ctx, ctx.input(1).numel(), [=] __device__(int64_t p) {
    const int64_t at = window_start(start, length, n, errors, p == 0);
    if (at < 0) return;
    const int64_t k = p % inner, row = p / inner;
    const int64_t i = row % length, o = row / length;
    var[(o * n + at + i) * inner + k] = update[p];
  });
}

void dynamic_slice_cuda(KernelContext& ctx) {
  if (ctx.output(0).numel() == 0) return;
  const int64_t axis = normalize_axis(ctx.attr<int64_t>("axis"), ctx.input(0).rank(), ctx.where());
  by_word_and_index(ctx.input(0), ctx.input(1), [&](auto word, auto index) {
    dynamic_slice_typed<decltype(word), decltype(index)>(ctx, axis);
  });
}
void dynamic_update_slice_cuda(KernelContext& ctx) {
  if (ctx.output(0).numel() == 0) return;
  const int64_t axis = normalize_axis(ctx.attr<int64_t>("axis"), ctx.input(0).rank(), ctx.where());
  by_word_and_index(ctx.input(0), ctx.input(2), [&](auto word, auto index) {
    dynamic_update_slice_typed<decltype(word), decltype(index)>(ctx, axis);
  });
}
void assign_slice_cuda(KernelContext& ctx) {
  if (ctx.input(1).numel() > 0) {
    const int64_t axis =
        normalize_axis(ctx.attr<int64_t>("axis"), ctx.input(0).rank(), ctx.where());
    by_word_and_index(ctx.input(0), ctx.input(2), [&](auto word, auto index) {
      assign_slice_typed<decltype(word), decltype(index)>(ctx, axis);
    });
  }
  ctx.set_output(0, ctx.input(0));
}
KILN_CUDA_KERNEL(dynamic_slice, dynamic_slice_cuda);
KILN_CUDA_KERNEL(assign_slice, assign_slice_cuda);
KILN_CUDA_KERNEL(dynamic_update_slice, dynamic_update_slice_cuda);

}  // namespace cuda_array
}  // namespace kiln::ops
