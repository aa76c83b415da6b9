// CUDA kernels of segment_ids and bag_argmax (ops/nn/embedding_bag.cc). segment_ids: one thread
// per position finds its bag by binary search over the offsets. bag_argmax: one thread per bag
// and column walks the bag's rows. In both, the threads of the first S indices also check one
// offset each, reporting the first bad one through the error block.
#include <algorithm>

#include "kiln/ops/cuda/map.cuh"
#include "kiln/ops/nn/embedding_bag.h"

namespace kiln::ops::cuda_nn {

using namespace kiln::ops::cuda;

// Reports offset j unless it starts at 0 (j = 0) or lies in [offsets[j - 1], n].
__device__ void check_offset(const int64_t* at, int64_t j, int64_t n, const ErrorReporter& errors) {
  const int64_t low = j == 0 ? 0 : at[j - 1], high = j == 0 ? 0 : n;
  if (at[j] < low || at[j] > high)
    errors.report(DataErrorKind::index_out_of_range, at[j], j, low, high + 1);
}

void segment_ids_cuda(KernelContext& ctx) {
  const int64_t segments = ctx.input(0).numel(), n = ctx.input(1).numel();
  if (segments == 0 && n > 0)
    throw Error(str(ctx.where(), ": ", n, " ids and no offsets: each id needs a bag"));
  const int64_t* at = ctx.input(0).data<int64_t>();
  int64_t* out = ctx.output(0).data<int64_t>();
  const ErrorReporter errors = error_reporter(ctx);
  for_each(ctx, std::max(segments, n), [=] __device__(int64_t j) {
    if (j < segments) check_offset(at, j, n, errors);
    if (j < n) {
      // The last s with at[s] <= j (at[0] = 0 <= j once the offsets are valid).
      int64_t lo = 0, hi = segments;  // invariant: at[lo] <= j < at[hi] (at[segments] = inf)
      while (hi - lo > 1) {
        const int64_t mid = lo + (hi - lo) / 2;
        if (at[mid] <= j)
          lo = mid;
        else
          hi = mid;
      }
      out[j] = lo;
    }
  });
}
KILN_CUDA_KERNEL(segment_ids, segment_ids_cuda);

template <typename T>
void bag_argmax_typed(KernelContext& ctx) {
  using C = Compute<T>;
  const int64_t n = ctx.input(0).shape()[0], width = ctx.input(0).shape()[1];
  const int64_t segments = ctx.input(1).numel(), bags = ctx.output(0).shape()[0];
  if (segments == 0 && n > 0)
    throw Error(str(ctx.where(), ": ", n, " ids and no offsets: each id needs a bag"));
  const T* x = ctx.input(0).data<T>();
  const int64_t* at = ctx.input(1).data<int64_t>();
  const bool* kept = ctx.input(2).data<bool>();
  int64_t* out = ctx.output(0).data<int64_t>();
  const ErrorReporter errors = error_reporter(ctx);
  for_each(ctx, std::max(segments, bags * width), [=] __device__(int64_t j) {
    if (j < segments) check_offset(at, j, n, errors);
    if (j >= bags * width) return;
    const int64_t b = j / width, d = j % width;
    // Clamped: with bad offsets the run fails anyway, and no read leaves the rows.
    const int64_t begin = min(max(at[b], int64_t{0}), n);
    const int64_t end = min(max(b + 1 < segments ? at[b + 1] : n, begin), n);
    int64_t best = n;
    for (int64_t i = begin; i < end; ++i)
      if (kept[i] &&
          bag_max_replaces(best == n, best == n ? C(0) : static_cast<C>(x[best * width + d]),
                           static_cast<C>(x[i * width + d])))
        best = i;
    out[j] = best;
  });
}

void bag_argmax_cuda(KernelContext& ctx) {
  dispatch_cuda_float(ctx.input(0).dtype(),
                      [&](auto tag) { bag_argmax_typed<decltype(tag)>(ctx); });
}
KILN_CUDA_KERNEL(bag_argmax, bag_argmax_cuda, cuda_dtypes(DTypeClass::floating));

}  // namespace kiln::ops::cuda_nn
