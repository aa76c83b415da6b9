// topk: the k first elements along one axis in an order (largest or smallest first), and
// their indices; sort and argsort are topk over the whole axis. x is viewed as [outer, n,
// inner]; each line (o, i) is ordered on its own. The order is total and deterministic: NaN
// counts as larger than every number (PyTorch's rule), and equal values keep their index order
// (a stable sort), so the CPU and the GPU pick the same indices.
#include <algorithm>
#include <numeric>
#include <type_traits>
#include <vector>

#include "kiln/framework/gradient.h"
#include "kiln/framework/kernel.h"
#include "kiln/ops/array.h"
#include "kiln/ops/dtypes.h"
#include "kiln/ops/math.h"

namespace kiln {
namespace ops {
namespace {

std::vector<TensorType> infer_topk(const InferContext& ctx) {
  ctx.expect_dtype(0, {f32, f64, f16, bf16, i32, i64});
  const Shape& x = ctx.shape(0);
  if (x.rank() == 0) ctx.fail("needs an input of rank >= 1, got a scalar");
  const int64_t axis = ctx.axis(ctx.attr<int64_t>("axis"), x.rank());
  const int64_t k = ctx.attr<int64_t>("k");
  if (k < -1) ctx.fail("k ", k, " must be at least 0 (or -1: the whole axis)");
  if (k >= 0 && x[axis] >= 0 && k > x[axis])
    ctx.fail("k ", k, " is more than the ", x[axis], " elements along axis ", axis, " of ", x);
  std::vector<int64_t> dims = x.dims();
  if (k >= 0) dims[static_cast<size_t>(axis)] = k;
  return {{ctx.dtype(0), Shape(dims)}, {i64, Shape(dims)}};
}

template <typename T>
bool is_nan(T v) {
  if constexpr (std::is_floating_point_v<T>)
    return v != v;
  else
    return false;
}

template <typename T>
void topk_typed(KernelContext& ctx, int64_t axis, bool largest) {
  const Tensor& x = ctx.input(0);
  const int64_t n = x.shape()[axis], k = ctx.output(0).shape()[axis];
  int64_t outer = 1, inner = 1;
  for (int64_t d = 0; d < axis; ++d) outer *= x.shape()[d];
  for (int64_t d = axis + 1; d < x.rank(); ++d) inner *= x.shape()[d];
  const T* in = x.data<T>();
  T* values = ctx.output(0).data<T>();
  int64_t* indices = ctx.output(1).data<int64_t>();
  ctx.parallel_for(outer * inner, n * 8, [&](int64_t p0, int64_t p1) {
    std::vector<int64_t> order(static_cast<size_t>(n));
    for (int64_t p = p0; p < p1; ++p) {
      const int64_t o = p / inner, i = p % inner;
      const T* line = in + o * n * inner + i;
      // a before b: NaN is the largest value; ties keep index order.
      auto before = [&](int64_t a, int64_t b) {
        const T va = line[a * inner], vb = line[b * inner];
        const bool nan_a = is_nan(va), nan_b = is_nan(vb);
        if (nan_a || nan_b) return nan_a && nan_b ? a < b : largest ? nan_a : nan_b;
        if (va != vb) return largest ? va > vb : va < vb;
        return a < b;
      };
      std::iota(order.begin(), order.end(), int64_t{0});
      std::partial_sort(order.begin(), order.begin() + k, order.end(), before);
      for (int64_t r = 0; r < k; ++r) {
        const int64_t at = (o * k + r) * inner + i;
        values[at] = line[order[static_cast<size_t>(r)] * inner];
        indices[at] = order[static_cast<size_t>(r)];
      }
    }
  });
}

void topk_cpu(KernelContext& ctx) {
  const Tensor& x = ctx.input(0);
  if (ctx.output(0).numel() == 0) return;
  const int64_t axis = normalize_axis(ctx.attr<int64_t>("axis"), x.rank(), ctx.where());
  const bool largest = ctx.attr<bool>("largest");
  dispatch_cpu(x.dtype(), [&](auto tag) {
    using T = decltype(tag);
    if constexpr (std::is_same_v<T, float> || std::is_same_v<T, double> ||
                  std::is_same_v<T, int32_t> || std::is_same_v<T, int64_t>)
      topk_typed<T>(ctx, axis, largest);
  });
}

KILN_OP(topk)
    .input("x")
    .attr("k", AttrType::integer)
    .attr("axis", int64_t{-1})
    .attr("largest", true)
    .infer(infer_topk)
    .kernel(DeviceKind::cpu, topk_cpu, {f32, f64, i32, i64})
    // The values are x picked along the axis by the indices: their gradient goes back to where
    // each came from (take_along_axis's); the indices have none.
    .grad([](GradContext& c) -> GradList {
      if (!c.has_grad_output(0)) return {Value()};
      return {c.graph().add("take_along_axis_grad", {c.grad_output(0), c.output(1), c.input(0)},
                            {{"axis", c.attr<int64_t>("axis")}})};
    });

}  // namespace
}  // namespace ops

Sorted topk(const Value& x, int64_t k, int64_t axis, bool largest) {
  KILN_CHECK(k >= 0, GraphError, "[topk] ", x.name(), ": k ", k, " must not be negative");
  const std::vector<Value> out =
      common_graph("topk", {&x})
          .add_node("topk", {x}, {{"k", k}, {"axis", axis}, {"largest", largest}});
  return {out[0], out[1]};
}

Sorted sort(const Value& x, int64_t axis, bool descending) {
  const std::vector<Value> out =
      common_graph("sort", {&x})
          .add_node("topk", {x}, {{"k", int64_t{-1}}, {"axis", axis}, {"largest", descending}});
  return {out[0], out[1]};
}

Value argsort(const Value& x, int64_t axis, bool descending) {
  return sort(x, axis, descending).indices;
}

}  // namespace kiln
