// CUDA kernels of the reductions (sum, mean, max, min over axes; argmax, argmin; sum_to) and
// the running sum cumsum.
// As on the CPU, x is seen as [outer, r, inner] with the reduced dims in the middle (permuted
// there first when they are not adjacent). inner == 1: one block reduces one row; else one
// thread per (outer, inner) walks r (coalesced across inner); few long rows are split into
// pieces reduced apart, then combined (Split). 16-bit floats accumulate in f32,
// integers in i64.
#include <algorithm>
#include <cfloat>

#include "kiln/ops/array/strided_copy.h"
#include "kiln/ops/cuda/map.cuh"
#include "kiln/ops/math/elementwise.h"

namespace kiln::ops::cuda_reduce {

using namespace kiln::ops::cuda;

enum class Kind { sum, mean, max, min };

template <typename T>
using Acc = std::conditional_t<std::is_integral_v<T>, int64_t, Compute<T>>;

template <typename A>
__device__ A initial(Kind kind) {
  if (kind == Kind::max) return std::numeric_limits<A>::lowest();
  if (kind == Kind::min) return std::numeric_limits<A>::max();
  return A(0);
}
// NaN wins max and min, as in torch (and the CPU kernel).
template <typename A>
__device__ A combine(Kind kind, A acc, A v) {
  if (kind == Kind::max) return (v != v || v > acc) ? v : acc;
  if (kind == Kind::min) return (v != v || v < acc) ? v : acc;
  return wrapping_add(acc, v);  // integers wrap, as on the CPU
}

constexpr int kRowThreads = 256;

// A reduction into few outputs over long rows is split, or one block (one thread) would walk a
// whole row while the GPU idles (a loss summed over 8M values: 9 ms as one block, not 10 us):
// each row is cut into `splits` pieces of `piece` elements, each reduced into an accumulator
// (f32, f64 or i64), and a second pass combines a row's partials, in order. The cut depends on
// the shape alone, so every run adds in the same order (the same bits).
struct Split {
  int64_t piece, splits;
};
constexpr int64_t kWantedBlocks = 512;       // rows of a block each: several waves of any GPU
constexpr int64_t kBlockPiece = 4096;        // at least this many elements per block
constexpr int64_t kWantedThreads = 1 << 17;  // columns of a thread each
constexpr int64_t kThreadPiece = 64;         // at least this many elements per thread
Split split_of(int64_t parallel, int64_t r, int64_t wanted, int64_t least) {
  if (parallel >= wanted || r <= least) return {r, 1};
  const int64_t splits = std::min((wanted + parallel - 1) / parallel, (r + least - 1) / least);
  const int64_t piece = (r + splits - 1) / splits;
  return {piece, (r + piece - 1) / piece};
}

// Rows of r contiguous elements, each cut into split.splits pieces: block b reduces piece
// b % splits of row b / splits into y[b] (divided by `divisor` where it is not 0: a mean's
// count, given on the last pass only).
template <typename In, typename A, typename Out>
__global__ void reduce_rows(const In* x, Out* y, int64_t r, Split split, int64_t divisor,
                            Kind kind) {
  __shared__ A partial[kRowThreads];
  const int64_t row = blockIdx.x / split.splits, first = blockIdx.x % split.splits * split.piece;
  const int64_t length = std::min(split.piece, r - first);
  const In* at = x + row * r + first;
  A acc = initial<A>(kind);
  for (int64_t j = threadIdx.x; j < length; j += blockDim.x)
    acc = combine(kind, acc, static_cast<A>(static_cast<Compute<In>>(at[j])));
  partial[threadIdx.x] = acc;
  __syncthreads();
  for (int width = blockDim.x / 2; width > 0; width /= 2) {
    if (threadIdx.x < width)
      partial[threadIdx.x] = combine(kind, partial[threadIdx.x], partial[threadIdx.x + width]);
    __syncthreads();
  }
  if (threadIdx.x == 0) {
    A total = partial[0];
    if (divisor != 0) total = total / static_cast<A>(divisor);
    y[blockIdx.x] = static_cast<Out>(total);
  }
}

// x as [outer, r, inner] with inner > 1: one thread per (outer, piece, inner) walks its piece
// of r (coalesced across inner) into y, [outer, splits, inner].
template <typename In, typename A, typename Out>
void reduce_columns(const KernelContext& ctx, const In* x, Out* y, int64_t outer, int64_t r,
                    int64_t inner, Split split, int64_t divisor, Kind kind) {
  for_each(ctx, outer * split.splits * inner, [=] __device__(int64_t p) {
    const int64_t o = p / (split.splits * inner), i = p % inner;
    const int64_t first = p / inner % split.splits * split.piece;
    const int64_t end = std::min(r, first + split.piece);
    const In* base = x + o * r * inner + i;
    A acc = initial<A>(kind);
    for (int64_t j = first; j < end; ++j)
      acc = combine(kind, acc, static_cast<A>(static_cast<Compute<In>>(base[j * inner])));
    if (divisor != 0) acc = acc / static_cast<A>(divisor);
    y[p] = static_cast<Out>(acc);
  });
}

template <typename T>
void reduce_3d(const KernelContext& ctx, const T* x, T* y, int64_t outer, int64_t r, int64_t inner,
               Kind kind) {
  using A = Acc<T>;
  const int64_t divisor = kind == Kind::mean ? r : 0;
  const bool rows = inner == 1;
  const Split split = rows ? split_of(outer, r, kWantedBlocks, kBlockPiece)
                           : split_of(outer * inner, r, kWantedThreads, kThreadPiece);
  auto pass = [&](const auto* in, auto* out, int64_t length, Split cut, int64_t count) {
    using In = std::remove_const_t<std::remove_pointer_t<decltype(in)>>;
    using Out = std::remove_pointer_t<decltype(out)>;
    if (rows) {
      reduce_rows<In, A, Out>
          <<<static_cast<unsigned>(outer * cut.splits), kRowThreads, 0, stream_of(ctx)>>>(
              in, out, length, cut, count, kind);
      check_launch(ctx);
    } else {
      reduce_columns<In, A, Out>(ctx, in, out, outer, length, inner, cut, count, kind);
    }
  };
  if (split.splits == 1) return pass(x, y, r, split, divisor);
  std::shared_ptr<Storage> partials = ctx.scratch(sizeof(A) * outer * split.splits * inner);
  A* sums = static_cast<A*>(partials->data());
  pass(x, sums, r, split, int64_t{0});
  pass(static_cast<const A*>(sums), y, split.splits, Split{split.splits, 1}, divisor);
}

// Reduces x over `axes` (sorted, distinct) into y.
template <typename T>
void reduce_axes(const KernelContext& ctx, const Tensor& x, Tensor& y,
                 const std::vector<int64_t>& axes, Kind kind) {
  if (y.numel() == 0) return;
  const Shape& shape = x.shape();
  int64_t outer = 1, r = 1, inner = 1;
  const T* source = x.data<T>();
  std::shared_ptr<Storage> permuted;
  const bool adjacent = axes.back() - axes.front() + 1 == static_cast<int64_t>(axes.size());
  if (adjacent) {
    for (int64_t i = 0; i < shape.rank(); ++i) {
      if (i < axes.front())
        outer *= shape[i];
      else if (i > axes.back())
        inner *= shape[i];
      else
        r *= shape[i];
    }
  } else {
    // Kept dims first, reduced dims last, copied into scratch.
    std::vector<int64_t> dims, strides;
    const std::vector<int64_t> x_strides = shape.strides();
    for (int64_t i = 0; i < shape.rank(); ++i)
      if (!std::binary_search(axes.begin(), axes.end(), i))
        dims.push_back(shape[i]), strides.push_back(x_strides[i]), outer *= shape[i];
    for (int64_t a : axes) dims.push_back(shape[a]), strides.push_back(x_strides[a]), r *= shape[a];
    permuted = ctx.scratch(x.nbytes());
    strided_copy_cuda(ctx, false, sizeof(T), x.raw_data(), permuted->data(), 0, dims, strides);
    source = static_cast<const T*>(permuted->data());
  }
  if (r == 0) {  // an empty sum is 0 (max/min over nothing is rejected when the graph is built)
    zero_device_bytes(y.raw_data(), y.nbytes(), ctx.stream(), ctx.where());
    return;
  }
  reduce_3d(ctx, source, y.data<T>(), outer, r, inner, kind);
}

std::vector<int64_t> sorted_axes(const KernelContext& ctx, int64_t rank) {
  const auto& given = ctx.attr<std::vector<int64_t>>("axes");
  std::vector<int64_t> axes;
  if (given.empty())
    for (int64_t i = 0; i < rank; ++i) axes.push_back(i);
  for (int64_t a : given) axes.push_back(normalize_axis(a, rank, ctx.where()));
  std::sort(axes.begin(), axes.end());
  return axes;
}

template <Kind kKind>
void reduce_cuda(KernelContext& ctx) {
  const Tensor& x = ctx.input(0);
  Tensor& y = ctx.output(0);
  const std::vector<int64_t> axes = sorted_axes(ctx, x.rank());
  if (axes.empty()) {  // a scalar: nothing to reduce
    copy_bytes(y.raw_data(), x.raw_data(), x.nbytes(), ctx.stream(), ctx.where());
    return;
  }
  dispatch_all(x.dtype(), [&](auto tag) {
    using T = decltype(tag);
    if constexpr (!std::is_same_v<T, bool>) reduce_axes<T>(ctx, x, y, axes, kKind);
  });
}
KILN_CUDA_KERNEL(sum, reduce_cuda<Kind::sum>, cuda_dtypes(DTypeClass::numeric));
KILN_CUDA_KERNEL(mean, reduce_cuda<Kind::mean>, cuda_dtypes(DTypeClass::floating));
KILN_CUDA_KERNEL(max, reduce_cuda<Kind::max>, cuda_dtypes(DTypeClass::numeric));
KILN_CUDA_KERNEL(min, reduce_cuda<Kind::min>, cuda_dtypes(DTypeClass::numeric));

// sum_to(x, like): sums the dims broadcasting stretched (a view when nothing was).
void sum_to_cuda(KernelContext& ctx) {
  const Tensor& x = ctx.input(0);
  const Shape& target = ctx.output_type(0).shape;
  if (x.numel() == target.numel()) {
    ctx.set_output(0, x.reshaped(target));
    return;
  }
  Tensor& y = ctx.output(0);
  const std::vector<int64_t> axes = stretched_axes(x.shape(), target);
  dispatch_all(x.dtype(), [&](auto tag) {
    using T = decltype(tag);
    if constexpr (!std::is_same_v<T, bool>) reduce_axes<T>(ctx, x, y, axes, Kind::sum);
  });
}
KILN_CUDA_KERNEL(sum_to, sum_to_cuda, cuda_dtypes(DTypeClass::numeric));

// argmax / argmin along one axis: ties go to the first index, NaN counts as the extreme.
template <typename T, bool kMax>
void arg_typed(KernelContext& ctx, int64_t outer, int64_t r, int64_t inner) {
  const T* in = ctx.input(0).data<T>();
  int64_t* out = ctx.output(0).data<int64_t>();
  for_each(ctx, outer * inner, [=] __device__(int64_t p) {
    using C = Compute<T>;
    const T* row = in + (p / inner) * r * inner + p % inner;
    int64_t best = 0;
    C best_value = static_cast<C>(row[0]);
    for (int64_t j = 1; j < r && best_value == best_value; ++j) {
      const C v = static_cast<C>(row[j * inner]);
      if (v != v || (kMax ? v > best_value : v < best_value)) best = j, best_value = v;
    }
    out[p] = best;
  });
}
template <bool kMax>
void arg_cuda(KernelContext& ctx) {
  const Tensor& x = ctx.input(0);
  const int64_t axis = normalize_axis(ctx.attr<int64_t>("axis"), x.rank(), ctx.where());
  int64_t outer = 1, inner = 1;
  for (int64_t i = 0; i < axis; ++i) outer *= x.shape()[i];
  for (int64_t i = axis + 1; i < x.rank(); ++i) inner *= x.shape()[i];
  dispatch_all(x.dtype(), [&](auto tag) {
    using T = decltype(tag);
    if constexpr (!std::is_same_v<T, bool>) arg_typed<T, kMax>(ctx, outer, x.shape()[axis], inner);
  });
}
KILN_CUDA_KERNEL(argmax, arg_cuda<true>, cuda_dtypes(DTypeClass::numeric));
KILN_CUDA_KERNEL(argmin, arg_cuda<false>, cuda_dtypes(DTypeClass::numeric));

// cumsum: one thread per line (o, k) of x viewed as [outer, n, inner], walking n (coalesced
// across inner); floats add in double, integers in unsigned 64 bits, as on the CPU. A single
// long line is one thread's walk: no parallel scan yet.
template <typename T>
void cumsum_typed(KernelContext& ctx, int64_t outer, int64_t n, int64_t inner, bool exclusive,
                  bool reverse) {
  using A = std::conditional_t<std::is_integral_v<T>, unsigned long long, double>;
  const T* in = ctx.input(0).data<T>();
  T* out = ctx.output(0).data<T>();
  for_each(ctx, outer * inner, [=] __device__(int64_t p) {
    const int64_t base = (p / inner) * n * inner + p % inner;
    A acc = A(0);
    for (int64_t step = 0; step < n; ++step) {
      const int64_t at = base + (reverse ? n - 1 - step : step) * inner;
      const A v = static_cast<A>(static_cast<Compute<T>>(in[at]));
      if (exclusive) {
        out[at] = static_cast<T>(static_cast<Compute<T>>(acc));
        acc += v;
      } else {
        acc += v;
        out[at] = static_cast<T>(static_cast<Compute<T>>(acc));
      }
    }
  });
}
void cumsum_cuda(KernelContext& ctx) {
  const Tensor& x = ctx.input(0);
  if (x.numel() == 0) return;
  const int64_t axis = normalize_axis(ctx.attr<int64_t>("axis"), x.rank(), ctx.where());
  int64_t outer = 1, inner = 1;
  for (int64_t i = 0; i < axis; ++i) outer *= x.shape()[i];
  for (int64_t i = axis + 1; i < x.rank(); ++i) inner *= x.shape()[i];
  const bool exclusive = ctx.attr<bool>("exclusive"), reverse = ctx.attr<bool>("reverse");
  dispatch_all(x.dtype(), [&](auto tag) {
    using T = decltype(tag);
    if constexpr (!std::is_same_v<T, bool> && !std::is_same_v<T, uint8_t>)
      cumsum_typed<T>(ctx, outer, x.shape()[axis], inner, exclusive, reverse);
  });
}
KILN_CUDA_KERNEL(cumsum, cumsum_cuda, cuda_dtypes(DTypeClass::signed_));

}  // namespace kiln::ops::cuda_reduce
