// The CUDA kernel of dropout_mask (ops/nn/dropout.cc): the same Philox blocks as the CPU, so
// both draw the same mask. The run's counter is read on the device, so a replayed CUDA Graph
// draws a new mask each time as well.
#include "kiln/ops/array/philox.h"
#include "kiln/ops/cuda/map.cuh"

namespace kiln::ops::cuda_dropout {

using namespace kiln::ops::cuda;

template <typename T>
void dropout_mask_typed(KernelContext& ctx, uint64_t key, double rate) {
  T* out = static_cast<T*>(ctx.output(0).raw_data());
  const int64_t* counter = ctx.input(1).data<int64_t>();
  const T keep = static_cast<T>(1 / (1 - rate));
  for_each(ctx, ctx.output(0).numel(), [=] __device__(int64_t i) {
    const auto w = philox4x32(static_cast<uint64_t>(i), key, static_cast<uint64_t>(*counter));
    out[i] = unit_double(w[0], w[1]) >= rate ? keep : T(0);
  });
}

void dropout_mask_cuda(KernelContext& ctx) {
  const uint64_t key = random_key(ctx.node());
  const double rate = ctx.attr<double>("rate");
  dispatch_cuda_float(ctx.output(0).dtype(),
                      [&](auto tag) { dropout_mask_typed<decltype(tag)>(ctx, key, rate); });
}
KILN_CUDA_KERNEL(dropout_mask, dropout_mask_cuda, cuda_dtypes(DTypeClass::floating));

}  // namespace kiln::ops::cuda_dropout
