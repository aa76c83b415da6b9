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
  std::vector<int64_t> dims;
  int64_t merged = 1, unknown = 0;
  for (int64_t d = 0; d < rank; ++d) {
    const int64_t size = s.rank() == 0 ? 1 : s[d];
    if (d < first || d > last) {
      dims.push_back(size);
      unknown += size < 0;
    } else if (size < 0 || merged < 0) {
      merged = -1;
    } else {
      merged *= size;
    }
    if (d == last) {
      dims.push_back(merged);
      unknown += merged < 0;
    }
  }
  KILN_CHECK(unknown <= 1, GraphError, "[flatten] ", x.name(), ": x ", s, " flattened over dims ",
             first, "..", last, " would leave ", unknown,
             " unknown dims; a reshape can infer one only");
  return reshape(x, Shape(dims));
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
