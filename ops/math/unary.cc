// Elementwise unary ops, one registration per row of KILN_UNARY_OPS (ops/math/elementwise.h).
#include "framework/kernel.h"
#include "ops/dtypes.h"
#include "ops/math.h"
#include "ops/math/elementwise.h"
#include "ops/math/elementwise_cpu.h"

namespace kiln {
namespace ops {
namespace {

template <typename F>
void unary_cpu(KernelContext& ctx) {
  const Tensor& x = ctx.input(0);
  Tensor& y = ctx.output(0);
  dispatch_cpu(x.dtype(), [&](auto tag) {
    using T = decltype(tag);
    if constexpr (!std::is_same_v<T, bool>) {
      elementwise_loop(ctx, y.data<T>(), y.shape(), F{}, {x.shape()}, x.data<T>());
    }
  });
}

std::vector<TensorType> infer_unary(const InferContext& ctx, DTypeClass cls) {
  ctx.expect_dtype(0, dtypes_of(cls));
  return {ctx.input(0)};
}

#define KILN_REGISTER_UNARY(name, cls, expr)                                   \
  KILN_OP(name)                                                                \
      .input("x")                                                              \
      .elementwise()                                                           \
      .infer([](const InferContext& c) { return infer_unary(c, DTypeClass::cls); }) \
      .kernel(DeviceKind::cpu, unary_cpu<name##_fn>, cpu_dtypes_of(DTypeClass::cls));
KILN_UNARY_OPS(KILN_REGISTER_UNARY)
#undef KILN_REGISTER_UNARY

}  // namespace
}  // namespace ops

#define KILN_UNARY_BUILDER(name, cls, expr) \
  Value name(const Value& x) { return common_graph(#name, {&x}).add(#name, {x}); }
KILN_UNARY_OPS(KILN_UNARY_BUILDER)
#undef KILN_UNARY_BUILDER

Value operator-(const Value& x) { return neg(x); }

}  // namespace kiln
