// add_n: the sum of any number of tensors of one dtype and shape (autograd's accumulator).
#include "kiln/framework/gradient.h"
#include "kiln/framework/kernel.h"
#include "kiln/ops/dtypes.h"
#include "kiln/ops/math.h"
#include "kiln/ops/math/elementwise.h"

namespace kiln {
namespace ops {
namespace {

KILN_OP(add_n)
    .variadic_input("values", 1)
    .infer([](const InferContext& ctx) -> std::vector<TensorType> {
      ctx.expect_dtype(0, dtypes_of(DTypeClass::numeric));
      Shape shape = ctx.shape(0);
      for (int i = 1; i < ctx.num_inputs(); ++i) {
        ctx.expect_same_dtype(0, i);
        if (!ctx.shape(i).compatible_with(shape))
          ctx.fail("input ", i, " is ", ctx.shape(i), ", input 0 is ", ctx.shape(0));
        for (int64_t d = 0; d < shape.rank(); ++d)
          if (shape[d] < 0) shape[d] = ctx.shape(i)[d];
      }
      return {{ctx.dtype(0), shape}};
    })
    .kernel(
        DeviceKind::cpu,
        [](KernelContext& ctx) {
          Tensor& y = ctx.output(0);
          const int n = ctx.num_inputs();
          dispatch_cpu(y.dtype(), [&](auto tag) {
            using T = decltype(tag);
            if constexpr (!std::is_same_v<T, bool>) {
              T* out = y.data<T>();
              ctx.parallel_for(y.numel(), n, [&](int64_t b, int64_t e) {
                const T* first = ctx.input(0).data<T>();
                for (int64_t i = b; i < e; ++i) out[i] = first[i];
                for (int k = 1; k < n; ++k) {
                  const T* in = ctx.input(k).data<T>();
                  for (int64_t i = b; i < e; ++i) out[i] = wrapping_add(out[i], in[i]);
                }
              });
            }
          });
        },
        cpu_dtypes_of(DTypeClass::numeric))
    .grad([](GradContext& c) -> GradList { return GradList(c.num_inputs(), c.grad_output()); });

}  // namespace
}  // namespace ops

Value add_n(const std::vector<Value>& values) {
  KILN_CHECK(!values.empty(), GraphError, "[add_n] needs at least one input");
  return values[0].graph()->add("add_n", values);
}

}  // namespace kiln
