// cast: elementwise conversion between any two dtypes (see kiln::convert for the rules).
#include "kiln/framework/gradient.h"
#include "kiln/framework/kernel.h"
#include "kiln/ops/array.h"
#include "kiln/ops/math/elementwise_cpu.h"

namespace kiln {
namespace ops {
namespace {

KILN_OP(cast)
    .input("x")
    .attr("dtype", AttrType::dtype)
    .elementwise()
    // The gradient converts back to x's dtype (autograd asks only for floating x).
    .grad([](GradContext& c) -> GradList {
      if (!is_floating(c.output().dtype())) return {Value()};
      return {cast(c.grad_output(), c.input(0).dtype())};
    })
    .infer([](const InferContext& ctx) -> std::vector<TensorType> {
      return {{ctx.attr<DType>("dtype"), ctx.shape(0)}};
    })
    .kernel(DeviceKind::cpu, [](KernelContext& ctx) {
      const Tensor& x = ctx.input(0);
      Tensor& y = ctx.output(0);
      dispatch_all(x.dtype(), [&](auto from_tag) {
        using From = decltype(from_tag);
        dispatch_all(y.dtype(), [&](auto to_tag) {
          using To = decltype(to_tag);
          elementwise_loop(
              ctx, y.data<To>(), y.shape(), [](From v) { return convert<To>(v); }, {x.shape()},
              x.data<From>());
        });
      });
    });

}  // namespace
}  // namespace ops

Value cast(const Value& x, DType dtype) {
  return common_graph("cast", {&x}).add("cast", {x}, {{"dtype", dtype}});
}

}  // namespace kiln
