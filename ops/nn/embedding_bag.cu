// CUDA kernel of segment_ids (ops/nn/embedding_bag.cc): one thread per position finds its bag by
// binary search over the offsets; the threads of the first S positions also check one offset
// each, reporting the first bad one through the error block.
#include <algorithm>

#include "kiln/ops/cuda/map.cuh"

namespace kiln::ops::cuda_nn {

using namespace kiln::ops::cuda;

void segment_ids_cuda(KernelContext& ctx) {
  const int64_t segments = ctx.input(0).numel(), n = ctx.input(1).numel();
  if (segments == 0 && n > 0)
    throw Error(str(ctx.where(), ": ", n, " ids and no offsets: each id needs a bag"));
  const int64_t* at = ctx.input(0).data<int64_t>();
  int64_t* out = ctx.output(0).data<int64_t>();
  const ErrorReporter errors = error_reporter(ctx);
  for_each(ctx, std::max(segments, n), [=] __device__(int64_t j) {
    if (j < segments) {
      const int64_t low = j == 0 ? 0 : at[j - 1], high = j == 0 ? 0 : n;
      if (at[j] < low || at[j] > high)
        errors.report(DataErrorKind::index_out_of_range, at[j], j, low, high + 1);
    }
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

}  // namespace kiln::ops::cuda_nn
