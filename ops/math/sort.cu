// CUDA kernel of topk (and so sort and argsort): one thread per element of each line of x
// viewed as [outer, n, inner] counts the elements that come before it in the order (NaN
// largest, ties by index: the CPU's order exactly); an element of rank r < k writes output r.
// O(n) work per element and no scratch memory: each line's elements are ranked in parallel.
#include "kiln/ops/cuda/map.cuh"

namespace kiln::ops::cuda_sort {

using namespace kiln::ops::cuda;

template <typename C>
__device__ bool comes_before(C va, int64_t a, C vb, int64_t b, bool largest) {
  bool nan_a = false, nan_b = false;
  if constexpr (std::is_floating_point_v<C>) nan_a = va != va, nan_b = vb != vb;
  if (nan_a || nan_b) return nan_a && nan_b ? a < b : largest ? nan_a : nan_b;
  if (va != vb) return largest ? va > vb : va < vb;
  return a < b;
}

template <typename T>
void topk_typed(KernelContext& ctx, int64_t outer, int64_t n, int64_t inner, int64_t k,
                bool largest) {
  const T* in = ctx.input(0).data<T>();
  T* values = ctx.output(0).data<T>();
  int64_t* indices = ctx.output(1).data<int64_t>();
  for_each(ctx, outer * n * inner, [=] __device__(int64_t p) {
    using C = Compute<T>;
    const int64_t i = p % inner, j = (p / inner) % n, o = p / inner / n;
    const T* line = in + o * n * inner + i;
    const C mine = static_cast<C>(line[j * inner]);
    int64_t rank = 0;
    for (int64_t m = 0; m < n && rank < k; ++m)
      rank += comes_before(static_cast<C>(line[m * inner]), m, mine, j, largest) ? 1 : 0;
    if (rank < k) {
      values[(o * k + rank) * inner + i] = line[j * inner];
      indices[(o * k + rank) * inner + i] = j;
    }
  });
}

void topk_cuda(KernelContext& ctx) {
  const Tensor& x = ctx.input(0);
  if (ctx.output(0).numel() == 0) return;
  const int64_t axis = normalize_axis(ctx.attr<int64_t>("axis"), x.rank(), ctx.where());
  int64_t outer = 1, inner = 1;
  for (int64_t d = 0; d < axis; ++d) outer *= x.shape()[d];
  for (int64_t d = axis + 1; d < x.rank(); ++d) inner *= x.shape()[d];
  const int64_t n = x.shape()[axis], k = ctx.output(0).shape()[axis];
  const bool largest = ctx.attr<bool>("largest");
  dispatch_all(x.dtype(), [&](auto tag) {
    using T = decltype(tag);
    if constexpr (!std::is_same_v<T, bool> && !std::is_same_v<T, uint8_t>)
      topk_typed<T>(ctx, outer, n, inner, k, largest);
  });
}
KILN_CUDA_KERNEL(topk, topk_cuda, cuda_dtypes(DTypeClass::signed_));

}  // namespace kiln::ops::cuda_sort
