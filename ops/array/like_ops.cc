// Ops whose output shape comes from another tensor at run time ("like" ops), so gradients of
// graphs with unknown dims stay correct: sum_to, broadcast_like, reshape_like, full_like,
// numel; and expand_dims, stop_gradient, group.
#include <cstring>

#include "kiln/framework/gradient.h"
#include "kiln/framework/kernel.h"
#include "kiln/ops/array.h"
#include "kiln/ops/array/fill.h"
#include "kiln/ops/array/strided_copy.h"
#include "kiln/ops/broadcast.h"
#include "kiln/ops/dtypes.h"
#include "kiln/ops/math.h"
#include "kiln/ops/math/elementwise.h"
#include "kiln/ops/math/elementwise_cpu.h"
#include "kiln/ops/math/reduce_cpu.h"

namespace kiln {
namespace ops {
namespace {

// True when `small` broadcasts to `big` (NumPy rules; unknown dims are assumed to fit).
bool broadcasts_to(const Shape& small, const Shape& big) {
  if (small.rank() > big.rank()) return false;
  for (int64_t i = 0; i < small.rank(); ++i) {
    int64_t s = small[i], b = big[big.rank() - small.rank() + i];
    if (!(s == 1 || s == b || s < 0 || b < 0)) return false;
  }
  return true;
}

// ---- sum_to(x, like): x summed over the dims that broadcasting would stretch from like's
// shape, so the result has like's shape. The gradient of every broadcasting op goes through it.
KILN_OP(sum_to)
    .may_alias_input_of_same_size()
    .input("x")
    .input("like")
    .reads_only_type_of(1)
    .infer([](const InferContext& ctx) -> std::vector<TensorType> {
      ctx.expect_dtype(0, dtypes_of(DTypeClass::numeric));
      if (!broadcasts_to(ctx.shape(1), ctx.shape(0)))
        ctx.fail("cannot sum ", ctx.shape(0), " down to ", ctx.shape(1));
      return {{ctx.dtype(0), ctx.shape(1)}};
    })
    .kernel(
        DeviceKind::cpu,
        [](KernelContext& ctx) {
          const Tensor& x = ctx.input(0);
          const Shape& target = ctx.output_type(0).shape;
          if (x.shape().numel() == target.numel()) {  // nothing was stretched: a view
            ctx.set_output(0, x.reshaped(target));
            return;
          }
          Tensor& y = ctx.output(0);
          const std::vector<int64_t> axes = stretched_axes(x.shape(), target);
          sum_into(ctx, x, axes, y);  // the sum kernel's reduction
        },
        cpu_dtypes_of(DTypeClass::numeric))
    .grad([](GradContext& c) -> GradList {
      return {c.graph().add("broadcast_like", {c.grad_output(), c.input(0)}), Value()};
    });

// ---- broadcast_like(x, like): x broadcast to like's shape.
KILN_OP(broadcast_like)
    .may_alias_input_of_same_size()
    .input("x")
    .input("like")
    .reads_only_type_of(1)
    .infer([](const InferContext& ctx) -> std::vector<TensorType> {
      if (!broadcasts_to(ctx.shape(0), ctx.shape(1)))
        ctx.fail("cannot broadcast ", ctx.shape(0), " to ", ctx.shape(1));
      return {{ctx.dtype(0), ctx.shape(1)}};
    })
    .kernel(DeviceKind::cpu,
            [](KernelContext& ctx) {
              const Tensor& x = ctx.input(0);
              const Shape& target = ctx.output_type(0).shape;
              if (x.numel() == target.numel()) {
                ctx.set_output(0, x.reshaped(target));
                return;
              }
              Tensor& y = ctx.output(0);
              dispatch_all(x.dtype(), [&](auto tag) {
                using T = decltype(tag);
                elementwise_loop(
                    ctx, y.data<T>(), y.shape(), [](T v) { return v; }, {x.shape()}, x.data<T>());
              });
            })
    .grad([](GradContext& c) -> GradList {
      return {c.graph().add("sum_to", {c.grad_output(), c.input(0)}), Value()};
    });

// ---- reshape_like(x, like): x's elements with like's shape.
KILN_OP(reshape_like)
    .may_alias_input()
    .input("x")
    .input("like")
    .reads_only_type_of(1)
    .infer([](const InferContext& ctx) -> std::vector<TensorType> {
      if (ctx.shape(0).is_known() && ctx.shape(1).is_known() &&
          ctx.shape(0).numel() != ctx.shape(1).numel())
        ctx.fail("cannot reshape ", ctx.shape(0), " like ", ctx.shape(1));
      return {{ctx.dtype(0), ctx.shape(1)}};
    })
    .kernel(DeviceKind::cpu, view_kernel)
    .kernel(DeviceKind::cuda, view_kernel)
    .grad([](GradContext& c) -> GradList {
      return {c.graph().add("reshape_like", {c.grad_output(), c.input(0)}), Value()};
    });

// ---- full_like(x, value): like's shape and dtype, every element `value`.
KILN_OP(full_like)
    .input("like")
    .reads_only_type_of(0)
    .attr("value", 0.0)
    .no_gradient()
    .infer([](const InferContext& ctx) { return std::vector<TensorType>{ctx.input(0)}; })
    .kernel(DeviceKind::cpu, fill_cpu);

// ---- numel(x): the element count of x as a rank-0 tensor of `dtype`.
KILN_OP(numel)
    .input("x")
    .reads_only_type_of(0)
    .attr("dtype", DType::f32)
    .no_gradient()
    .infer([](const InferContext& ctx) -> std::vector<TensorType> {
      return {{ctx.attr<DType>("dtype"), Shape{}}};
    })
    .kernel(DeviceKind::cpu, [](KernelContext& ctx) {
      Tensor& y = ctx.output(0);
      int64_t n = ctx.input(0).numel();
      dispatch_all(y.dtype(),
                   [&](auto tag) { *y.data<decltype(tag)>() = convert<decltype(tag)>(n); });
    });

// ---- expand_dims(x, axes): inserts size-1 dims so that they sit at `axes` of the result.
std::vector<TensorType> infer_expand_dims(const InferContext& ctx) {
  const Shape& x = ctx.shape(0);
  const auto& axes = ctx.attr<std::vector<int64_t>>("axes");
  const int64_t rank = x.rank() + static_cast<int64_t>(axes.size());
  std::vector<char> inserted(rank, 0);
  for (int64_t a : axes) {
    int64_t axis = ctx.axis(a, rank);
    if (inserted[axis]) ctx.fail("axis ", a, " is listed twice");
    inserted[axis] = 1;
  }
  std::vector<int64_t> dims;
  for (int64_t d = 0, from = 0; d < rank; ++d) dims.push_back(inserted[d] ? 1 : x[from++]);
  return {{ctx.dtype(0), Shape(std::move(dims))}};
}

KILN_OP(expand_dims)
    .may_alias_input()
    .input("x")
    .attr("axes", AttrType::integers)
    .infer(infer_expand_dims)
    .kernel(DeviceKind::cpu, view_kernel)
    .kernel(DeviceKind::cuda, view_kernel)
    .grad([](GradContext& c) -> GradList {
      return {c.graph().add("reshape_like", {c.grad_output(), c.input(0)})};
    });

// ---- stop_gradient(x): x, but autograd treats it as a constant.
KILN_OP(stop_gradient)
    .may_alias_input()
    .input("x")
    .no_gradient()
    .infer([](const InferContext& ctx) { return std::vector<TensorType>{ctx.input(0)}; })
    .kernel(DeviceKind::cpu, view_kernel)
    .kernel(DeviceKind::cuda, view_kernel);

// ---- group(values...): runs all inputs; its output (a bool scalar) carries no data. Used as
// one train target for many updates.
KILN_OP(group)
    .variadic_input("values", 0)
    .stateful()  // a target: two groups of the same values are still two targets
    .no_gradient()
    .infer([](const InferContext&) {
      return std::vector<TensorType>{{DType::boolean, Shape{}}};
    })
    .kernel(DeviceKind::cpu, [](KernelContext& ctx) { *ctx.output(0).data<bool>() = true; });

}  // namespace
}  // namespace ops

Value expand_dims(const Value& x, Axes axes) {
  return common_graph("expand_dims", {&x}).add("expand_dims", {x}, {{"axes", axes.list()}});
}
Value sum_to(const Value& x, const Value& like) {
  return common_graph("sum_to", {&x, &like}).add("sum_to", {x, like});
}
Value broadcast_like(const Value& x, const Value& like) {
  return common_graph("broadcast_like", {&x, &like}).add("broadcast_like", {x, like});
}
Value reshape_like(const Value& x, const Value& like) {
  return common_graph("reshape_like", {&x, &like}).add("reshape_like", {x, like});
}
Value full_like(const Value& like, double value) {
  return common_graph("full_like", {&like}).add("full_like", {like}, {{"value", value}});
}
Value zeros_like(const Value& like) {
  return full_like(like, 0.0);
}
Value ones_like(const Value& like) {
  return full_like(like, 1.0);
}
Value numel(const Value& x, DType dtype) {
  return common_graph("numel", {&x}).add("numel", {x}, {{"dtype", dtype}});
}
Value group(Graph& graph, const std::vector<Value>& values) {
  return graph.add("group", values, {}, {.name = "group"});
}

}  // namespace kiln
