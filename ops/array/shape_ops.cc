// reshape, transpose, broadcast_to, identity: ops that move or view elements without math.
#include <algorithm>
#include <numeric>

#include "kiln/framework/gradient.h"
#include "kiln/framework/kernel.h"
#include "kiln/ops/array.h"
#include "kiln/ops/array/permute.h"
#include "kiln/ops/array/strided_copy.h"
#include "kiln/ops/dtypes.h"
#include "kiln/ops/math/elementwise_cpu.h"

namespace kiln {
namespace ops {
namespace {

// ---- reshape: one target dim may be -1 and is inferred from the element count.
std::vector<TensorType> infer_reshape(const InferContext& ctx) {
  const Shape& x = ctx.shape(0);
  const Shape& target = ctx.attr<Shape>("shape");
  int64_t infer_at = -1, known = 1;
  for (int64_t i = 0; i < target.rank(); ++i) {
    if (target[i] == -1) {
      if (infer_at >= 0) ctx.fail("target shape ", target, " has more than one -1");
      infer_at = i;
    } else if (target[i] < 0) {
      ctx.fail("target shape ", target, " has a negative dim");
    } else {
      known = ctx.checked_mul(known, target[i]);
    }
  }
  std::vector<int64_t> dims = target.dims();
  if (x.is_known()) {
    int64_t n = x.numel();
    if (infer_at >= 0) {
      if (known == 0 || n % known != 0)
        ctx.fail("cannot reshape ", x, " (", n, " elements) to ", target);
      dims[infer_at] = n / known;
    } else if (known != n) {
      ctx.fail("cannot reshape ", x, " (", n, " elements) to ", target, " (", known, " elements)");
    }
  }
  return {{ctx.dtype(0), Shape(std::move(dims))}};
}

KILN_OP(reshape)
    .may_alias_input()
    .input("x")
    .attr("shape", AttrType::shape)
    .infer(infer_reshape)
    .grad([](GradContext& c) -> GradList { return {reshape_like(c.grad_output(), c.input(0))}; })
    .kernel(DeviceKind::cpu, view_kernel)
    .kernel(DeviceKind::cuda, view_kernel);

// ---- flatten and unflatten: reshapes that keep the dims they do not merge or split, known or
// not (a reshape's target can leave one dim unknown). The flatten() and unflatten() functions
// build these ops only where that takes two unknown dims or more, and a reshape otherwise.

// The number of unknown dims of s.
int64_t unknown_dims(const Shape& s) {
  return std::count_if(s.begin(), s.end(), [](int64_t d) { return d < 0; });
}

// Throws through ctx (a node's error) or, without one, as the graph-building call `what`.
template <typename... Pieces>
[[noreturn]] void shape_error(const InferContext* ctx, const char* what, Pieces&&... pieces) {
  if (ctx) ctx->fail(pieces...);
  throw GraphError(str("[", what, "] ", pieces...));
}

// a * b for sizes, failing instead of overflowing.
int64_t size_product(const InferContext* ctx, const char* what, int64_t a, int64_t b) {
  int64_t product = 0;
  if (__builtin_mul_overflow(a, b, &product))
    shape_error(ctx, what, "a size ", a, " * ", b, " overflows int64");
  return product;
}

// x with dims first..last (in range, first <= last) merged into one, unknown where any of them
// is; a scalar is seen as [1].
Shape flattened(const Shape& x, int64_t first, int64_t last, const InferContext* ctx) {
  std::vector<int64_t> dims;
  int64_t merged = 1;
  for (int64_t d = 0; d < std::max<int64_t>(x.rank(), 1); ++d) {
    const int64_t size = x.rank() == 0 ? 1 : x[d];
    if (d < first || d > last)
      dims.push_back(size);
    else if (size < 0 || merged < 0)
      merged = -1;
    else
      merged = size_product(ctx, "flatten", merged, size);
    if (d == last) dims.push_back(merged);
  }
  return Shape(std::move(dims));
}

// x with dim `axis` (in range) split into `sizes`: each >= 0, or one -1 inferred from the
// dim when it is known. Reports through ctx (or throws GraphError) a size that does not fit.
Shape unflattened(const Shape& x, int64_t axis, const std::vector<int64_t>& sizes,
                  const InferContext* ctx) {
  auto fail = [&](auto&&... pieces) { shape_error(ctx, "unflatten", pieces...); };
  if (sizes.empty()) fail("x ", x, ": sizes for dim ", axis, " are empty");
  int64_t infer_at = -1, known = 1;
  for (size_t i = 0; i < sizes.size(); ++i) {
    if (sizes[i] == -1 && infer_at < 0) {
      infer_at = static_cast<int64_t>(i);
    } else if (sizes[i] < 0) {
      fail("x ", x, ": sizes ", attr_to_string(sizes), " for dim ", axis,
           " may hold one -1 and no other negative size");
    } else {
      known = size_product(ctx, "unflatten", known, sizes[i]);
    }
  }
  std::vector<int64_t> split = sizes;
  const int64_t dim = x.rank() == 0 ? 1 : x[axis];
  if (dim >= 0 && infer_at >= 0) {
    if (known == 0 || dim % known != 0)
      fail("x ", x, ": dim ", axis, " (", dim, ") cannot be split into ", attr_to_string(sizes));
    split[static_cast<size_t>(infer_at)] = dim / known;
  } else if (dim >= 0 && known != dim) {
    fail("x ", x, ": dim ", axis, " (", dim, ") cannot be split into ", attr_to_string(sizes), " (",
         known, " elements)");
  }
  std::vector<int64_t> dims(x.begin(), x.end());
  if (dims.empty()) dims.push_back(1);
  dims.erase(dims.begin() + axis);
  dims.insert(dims.begin() + axis, split.begin(), split.end());
  return Shape(std::move(dims));
}

KILN_OP(flatten)
    .may_alias_input()
    .input("x")
    .attr("start_axis", int64_t{1})
    .attr("end_axis", int64_t{-1})
    .infer([](const InferContext& ctx) -> std::vector<TensorType> {
      const Shape& x = ctx.shape(0);
      const int64_t rank = std::max<int64_t>(x.rank(), 1);
      const int64_t first = ctx.axis(ctx.attr<int64_t>("start_axis"), rank);
      const int64_t last = ctx.axis(ctx.attr<int64_t>("end_axis"), rank);
      if (first > last)
        ctx.fail("start_axis ", first, " comes after end_axis ", last, " for x ", x);
      return {{ctx.dtype(0), flattened(x, first, last, &ctx)}};
    })
    .grad([](GradContext& c) -> GradList { return {reshape_like(c.grad_output(), c.input(0))}; })
    .kernel(DeviceKind::cpu, view_kernel)
    .kernel(DeviceKind::cuda, view_kernel);

KILN_OP(unflatten)
    .may_alias_input()
    .input("x")
    .attr("axis", AttrType::integer)
    .attr("sizes", AttrType::integers)
    .infer([](const InferContext& ctx) -> std::vector<TensorType> {
      const Shape& x = ctx.shape(0);
      const int64_t axis = ctx.axis(ctx.attr<int64_t>("axis"), std::max<int64_t>(x.rank(), 1));
      return {{ctx.dtype(0), unflattened(x, axis, ctx.attr<std::vector<int64_t>>("sizes"), &ctx)}};
    })
    .grad([](GradContext& c) -> GradList { return {reshape_like(c.grad_output(), c.input(0))}; })
    .kernel(DeviceKind::cpu, view_kernel)
    .kernel(DeviceKind::cuda, view_kernel);

KILN_OP(identity)
    .may_alias_input()
    .input("x")
    .infer([](const InferContext& ctx) { return std::vector<TensorType>{ctx.input(0)}; })
    .kernel(DeviceKind::cpu, view_kernel)
    .kernel(DeviceKind::cuda, view_kernel)
    .grad([](GradContext& c) -> GradList { return {c.grad_output()}; });

// ---- after: x itself, once `deps` have run (their values are unused). Whatever reads the
// result runs after them: batch norm's running statistics update this way in training.
KILN_OP(after)
    .may_alias_input()
    .input("x")
    .variadic_input("deps", 1)
    .infer([](const InferContext& ctx) { return std::vector<TensorType>{ctx.input(0)}; })
    .kernel(DeviceKind::cpu, view_kernel)
    .kernel(DeviceKind::cuda, view_kernel)
    .grad([](GradContext& c) -> GradList {
      GradList grads(static_cast<size_t>(c.num_inputs()));
      grads[0] = c.grad_output();
      return grads;
    });

// ---- transpose: out.shape[i] = x.shape[perm[i]].
std::vector<int64_t> resolve_perm(const std::vector<int64_t>& perm, int64_t rank) {
  if (!perm.empty()) return perm;
  std::vector<int64_t> reversed(rank);
  std::iota(reversed.rbegin(), reversed.rend(), 0);
  return reversed;
}

// Runs on either device (permute_copy is a strided copy).
void transpose_kernel(KernelContext& ctx) {
  const Tensor& x = ctx.input(0);
  permute_copy(ctx, x, resolve_perm(ctx.attr<std::vector<int64_t>>("perm"), x.rank()),
               ctx.output(0));
}

KILN_OP(transpose)
    .input("x")
    .attr("perm", std::vector<int64_t>{})
    // y = x permuted by p    dx = dy permuted by p's inverse
    .grad([](GradContext& c) -> GradList {
      std::vector<int64_t> perm =
          resolve_perm(c.attr<std::vector<int64_t>>("perm"), c.input(0).shape().rank());
      std::vector<int64_t> inverse(perm.size());
      for (size_t i = 0; i < perm.size(); ++i) inverse[perm[i]] = static_cast<int64_t>(i);
      return {transpose(c.grad_output(), inverse)};
    })
    .infer([](const InferContext& ctx) -> std::vector<TensorType> {
      const Shape& x = ctx.shape(0);
      std::vector<int64_t> perm = resolve_perm(ctx.attr<std::vector<int64_t>>("perm"), x.rank());
      std::vector<int64_t> sorted = perm;
      std::sort(sorted.begin(), sorted.end());
      bool valid = static_cast<int64_t>(perm.size()) == x.rank();
      for (int64_t i = 0; valid && i < x.rank(); ++i) valid = sorted[i] == i;
      if (!valid)
        ctx.fail("perm ", attr_to_string(perm), " is not a permutation of the ", x.rank(),
                 " dims of ", x);
      std::vector<int64_t> dims;
      for (int64_t p : perm) dims.push_back(x[p]);
      return {{ctx.dtype(0), Shape(std::move(dims))}};
    })
    .kernel(DeviceKind::cpu, transpose_kernel)
    .kernel(DeviceKind::cuda, transpose_kernel);

// ---- broadcast_to: NumPy broadcasting of x to exactly `shape`.
KILN_OP(broadcast_to)
    .input("x")
    .attr("shape", AttrType::shape)
    .grad([](GradContext& c) -> GradList { return {sum_to(c.grad_output(), c.input(0))}; })
    .infer([](const InferContext& ctx) -> std::vector<TensorType> {
      const Shape& x = ctx.shape(0);
      const Shape& target = ctx.attr<Shape>("shape");
      if (!target.is_known()) ctx.fail("target shape ", target, " must be fully known");
      Shape out;
      bool ok = x.rank() <= target.rank() && broadcast_shapes(x, target, &out);
      // Broadcasting may not grow the target: x's dims must each be 1 or the target's.
      for (int64_t i = 0; ok && i < x.rank(); ++i) {
        int64_t xd = x[i], td = target[target.rank() - x.rank() + i];
        ok = xd == 1 || xd == td || xd < 0 || td < 0;
      }
      if (!ok) ctx.fail("cannot broadcast ", x, " to ", target);
      return {{ctx.dtype(0), target}};
    })
    .kernel(DeviceKind::cpu, [](KernelContext& ctx) {
      const Tensor& x = ctx.input(0);
      Tensor& y = ctx.output(0);
      dispatch_all(x.dtype(), [&](auto tag) {
        using T = decltype(tag);
        elementwise_loop(
            ctx, y.data<T>(), y.shape(), [](T v) { return v; }, {x.shape()}, x.data<T>());
      });
    });

}  // namespace
}  // namespace ops

Value reshape(const Value& x, const Shape& shape) {
  return common_graph("reshape", {&x}).add("reshape", {x}, {{"shape", shape}});
}
Value flatten(const Value& x, int64_t start_axis, int64_t end_axis) {
  KILN_CHECK(x.defined(), GraphError, "[flatten] of an undefined Value");
  const Shape& s = x.shape();
  const int64_t rank = std::max<int64_t>(s.rank(), 1);  // a scalar flattens to [1]
  const int64_t first = normalize_axis(start_axis, rank, "[flatten] start_axis");
  const int64_t last = normalize_axis(end_axis, rank, "[flatten] end_axis");
  KILN_CHECK(first <= last, GraphError, "[flatten] ", x.name(), ": start_axis ", start_axis,
             " comes after end_axis ", end_axis, " for x ", s);
  const Shape merged = ops::flattened(s, first, last, nullptr);
  if (ops::unknown_dims(merged) <= 1) return reshape(x, merged);
  return x.graph()->add("flatten", {x}, {{"start_axis", first}, {"end_axis", last}});
}
Value unflatten(const Value& x, int64_t axis, const std::vector<int64_t>& sizes) {
  KILN_CHECK(x.defined(), GraphError, "[unflatten] of an undefined Value");
  const int64_t at = normalize_axis(axis, std::max<int64_t>(x.shape().rank(), 1),
                                    "[unflatten] " + x.name() + " axis");
  const Shape split = ops::unflattened(x.shape(), at, sizes, nullptr);
  if (ops::unknown_dims(split) <= 1) return reshape(x, split);
  return x.graph()->add("unflatten", {x}, {{"axis", at}, {"sizes", sizes}});
}
Value identity(const Value& x) {
  return common_graph("identity", {&x}).add("identity", {x});
}
Value Value::named(const std::string& name) const {
  KILN_CHECK(defined(), GraphError, "[named] of an undefined Value");
  KILN_CHECK(!name.empty(), GraphError, "[named] ", this->name(), ": the name is empty");
  return graph()->add("identity", {*this}, {}, {.name = name, .exact_name = true});
}
Value constant(Graph& graph, const Tensor& value, const std::string& name) {
  return graph.constant(value, name);
}
Value after(const Value& x, const std::vector<Value>& deps) {
  std::vector<Value> inputs{x};
  inputs.insert(inputs.end(), deps.begin(), deps.end());
  return x.graph()->add("after", inputs);
}
Value transpose(const Value& x, std::vector<int64_t> perm) {
  return common_graph("transpose", {&x}).add("transpose", {x}, {{"perm", std::move(perm)}});
}
Value broadcast_to(const Value& x, const Shape& shape) {
  return common_graph("broadcast_to", {&x}).add("broadcast_to", {x}, {{"shape", shape}});
}

}  // namespace kiln
