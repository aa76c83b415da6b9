// dropout_mask: the random mask of inverted dropout, drawn anew on every run.
//   mask = 1 / (1 - rate) where u >= rate, else 0;  u uniform in [0, 1)
// Element i of run r uses Philox block (i, r) under random_key(seed, node name or draw_as):
// the same numbers on every thread count and on the GPU, new numbers on every run.
#include "kiln/framework/kernel.h"
#include "kiln/ops/array.h"
#include "kiln/ops/array/philox.h"
#include "kiln/ops/dtypes.h"
#include "kiln/ops/nn.h"

namespace kiln {
namespace ops {
namespace {

std::vector<TensorType> infer_dropout_mask(const InferContext& ctx) {
  ctx.expect_dtype(0, dtypes_of(DTypeClass::floating));
  const double rate = ctx.attr<double>("rate");
  if (!(rate >= 0 && rate < 1)) ctx.fail("rate ", rate, " must be in [0, 1)");
  return {ctx.input(0)};
}

void dropout_mask_cpu(KernelContext& ctx) {
  Tensor& y = ctx.output(0);
  const uint64_t key = random_key(ctx.node());
  const uint64_t run = static_cast<uint64_t>(ctx.input(1).data<int64_t>()[0]);
  const double rate = ctx.attr<double>("rate");
  dispatch_cpu(y.dtype(), [&](auto tag) {
    using T = decltype(tag);
    if constexpr (std::is_floating_point_v<T>) {
      const T keep = static_cast<T>(1 / (1 - rate));
      T* out = y.data<T>();
      ctx.parallel_for(y.numel(), 16, [&](int64_t begin, int64_t end) {
        for (int64_t i = begin; i < end; ++i) {
          const auto w = philox4x32(static_cast<uint64_t>(i), key, run);
          out[i] = unit_double(w[0], w[1]) >= rate ? keep : T(0);
        }
      });
    }
  });
}

KILN_OP(dropout_mask)
    .input("x")
    .attr("rate", 0.5)
    .attr("seed", int64_t{0})
    .random()
    .no_gradient()
    .infer(infer_dropout_mask)
    .kernel(DeviceKind::cpu, dropout_mask_cpu, {f32, f64});

}  // namespace
}  // namespace ops

Value dropout_mask(const Value& x, double rate, int64_t seed) {
  Graph& graph = common_graph("dropout_mask", {&x});
  return graph.add("dropout_mask", {x, random_counter(graph)}, {{"rate", rate}, {"seed", seed}});
}

}  // namespace kiln
