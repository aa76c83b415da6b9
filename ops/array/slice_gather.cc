// slice, gather and take_along_axis: picking parts of a tensor by range or by index.
#include <cstring>

#include "kiln/framework/gradient.h"
#include "kiln/framework/kernel.h"
#include "kiln/ops/array.h"
#include "kiln/ops/array/strided_copy.h"
#include "kiln/ops/dtypes.h"
#include "kiln/ops/nn.h"

namespace kiln {
namespace ops {
namespace {

// ---- slice: Python semantics per axis, positive steps.
struct AxisRange {
  int64_t begin, length;
};

// Clamps [begin, end) with `step` to a dim of size `dim` as Python's slice.indices does.
AxisRange resolve_range(int64_t begin, int64_t end, int64_t step, int64_t dim) {
  auto clamp = [dim](int64_t i) {
    if (i < 0) i = i < -dim ? 0 : i + dim;
    return i > dim ? dim : i;
  };
  int64_t b = clamp(begin), e = clamp(end);
  // ceil((e - b) / step), written so that a huge step cannot overflow.
  return {b, e > b ? (e - b - 1) / step + 1 : 0};
}

std::vector<TensorType> infer_slice(const InferContext& ctx) {
  const Shape& x = ctx.shape(0);
  const auto& begin = ctx.attr<std::vector<int64_t>>("begin");
  const auto& end = ctx.attr<std::vector<int64_t>>("end");
  const auto& step = ctx.attr<std::vector<int64_t>>("step");
  if (begin.size() != end.size() || (!step.empty() && step.size() != begin.size()))
    ctx.fail("begin, end and step must have the same length; got ", begin.size(), ", ", end.size(),
             " and ", step.size());
  if (static_cast<int64_t>(begin.size()) > x.rank())
    ctx.fail(begin.size(), " axes given for ", x, " of rank ", x.rank());
  std::vector<int64_t> dims = x.dims();
  for (size_t i = 0; i < begin.size(); ++i) {
    int64_t s = step.empty() ? 1 : step[i];
    if (s <= 0) ctx.fail("step ", s, " on axis ", i, " must be positive");
    if (x[i] >= 0) dims[i] = resolve_range(begin[i], end[i], s, x[i]).length;
  }
  return {{ctx.dtype(0), Shape(std::move(dims))}};
}

// Where the slice of a tensor of `shape` starts (elements) and its strides per axis.
int64_t slice_view(const KernelContext& ctx, const Shape& shape, std::vector<int64_t>* strides) {
  const auto& begin = ctx.attr<std::vector<int64_t>>("begin");
  const auto& end = ctx.attr<std::vector<int64_t>>("end");
  const auto& step = ctx.attr<std::vector<int64_t>>("step");
  *strides = shape.strides();
  int64_t offset = 0;
  for (size_t i = 0; i < begin.size(); ++i) {
    int64_t s = step.empty() ? 1 : step[i];
    const AxisRange range = resolve_range(begin[i], end[i], s, shape[i]);
    offset += range.begin * (*strides)[i];
    // An axis of one element (or none) never steps, so its stride is unused; and a step from a
    // graph file may be huge (step times stride would overflow). With two or more elements the
    // step is below the dim, so step times stride stays within the tensor.
    (*strides)[i] = range.length > 1 ? (*strides)[i] * s : 0;
  }
  return offset;
}

// slice and slice_grad run on either device (strided_copy picks the loop or the CUDA kernel).
void slice_kernel(KernelContext& ctx) {
  std::vector<int64_t> strides;
  int64_t offset = slice_view(ctx, ctx.input(0).shape(), &strides);
  strided_copy(ctx, ctx.input(0), offset, strides, ctx.output(0));
}

// slice_grad(dy, x): zeros shaped like x with dy written where the slice came from.
void slice_grad_kernel(KernelContext& ctx) {
  Tensor& dx = ctx.output(0);
  fill_zero(ctx, dx);
  std::vector<int64_t> strides;
  int64_t offset = slice_view(ctx, dx.shape(), &strides);
  strided_scatter(ctx, ctx.input(0), dx, offset, strides);
}

KILN_OP(slice)
    .input("x")
    .attr("begin", AttrType::integers)
    .attr("end", AttrType::integers)
    .attr("step", std::vector<int64_t>{})
    .infer(infer_slice)
    .kernel(DeviceKind::cpu, slice_kernel)
    .kernel(DeviceKind::cuda, slice_kernel)
    .grad([](GradContext& c) -> GradList {
      return {c.graph().add("slice_grad", {c.grad_output(), c.input(0)},
                            {{"begin", c.attr<std::vector<int64_t>>("begin")},
                             {"end", c.attr<std::vector<int64_t>>("end")},
                             {"step", c.attr<std::vector<int64_t>>("step")}})};
    });

KILN_OP(slice_grad)
    .input("dy")
    .input("x")
    .attr("begin", AttrType::integers)
    .attr("end", AttrType::integers)
    .attr("step", std::vector<int64_t>{})
    .infer([](const InferContext& ctx) -> std::vector<TensorType> {
      ctx.expect_same_dtype(0, 1);
      // dy must have the shape of the slice of x.
      const std::vector<TensorType> x_only = {ctx.input(1)};  // InferContext keeps a reference
      InferContext of_x(ctx.op(), ctx.node_name(), x_only, ctx.attrs());
      const Shape sliced = infer_slice(of_x)[0].shape;
      if (!ctx.shape(0).compatible_with(sliced))
        ctx.fail("dy is ", ctx.shape(0), ", the slice of ", ctx.shape(1), " is ", sliced);
      return {ctx.input(1)};
    })
    .kernel(DeviceKind::cpu, slice_grad_kernel)
    .kernel(DeviceKind::cuda, slice_grad_kernel)
    .grad([](GradContext& c) -> GradList {
      return {slice(c.grad_output(), c.attr<std::vector<int64_t>>("begin"),
                    c.attr<std::vector<int64_t>>("end"), c.attr<std::vector<int64_t>>("step")),
              Value()};
    });

// ---- gather: out[o, j, i] = params[o, indices[j], i] with params viewed as [outer, n, inner].
std::vector<TensorType> infer_gather(const InferContext& ctx) {
  ctx.expect_dtype(1, {i32, i64});
  const Shape& params = ctx.shape(0);
  if (params.rank() == 0) ctx.fail("params must have rank >= 1, got a scalar");
  int64_t axis = ctx.axis(ctx.attr<int64_t>("axis"), params.rank());
  std::vector<int64_t> dims(params.begin(), params.begin() + axis);
  for (int64_t d : ctx.shape(1)) dims.push_back(d);
  for (int64_t i = axis + 1; i < params.rank(); ++i) dims.push_back(params[i]);
  return {{ctx.dtype(0), Shape(std::move(dims))}};
}

// The gradient of a picking op (gather, take_along_axis) takes (dy, indices, params) and gives
// zeros shaped like params with dy added where it was picked from: dy must have the shape the
// forward op gives for (params, indices).
using InferFn = std::vector<TensorType> (*)(const InferContext&);
std::vector<TensorType> infer_pick_grad(const InferContext& ctx, InferFn infer_forward,
                                        const char* forward_op) {
  const std::vector<TensorType> params_indices = {ctx.input(2), ctx.input(1)};
  InferContext forward(ctx.op(), ctx.node_name(), params_indices, ctx.attrs());
  const TensorType picked = infer_forward(forward)[0];
  ctx.expect_dtype(0, {f32, f64, f16, bf16});
  ctx.expect_same_dtype(0, 2);
  if (!ctx.shape(0).compatible_with(picked.shape))
    ctx.fail("dy is ", ctx.shape(0), ", ", forward_op, " gives ", picked.shape);
  return {ctx.input(2)};
}

// params viewed as [outer, n, inner] around `axis`.
struct AxisView {
  int64_t outer = 1, n = 1, inner = 1;
  AxisView(const Shape& shape, int64_t axis) : n(shape[axis]) {
    for (int64_t i = 0; i < axis; ++i) outer *= shape[i];
    for (int64_t i = axis + 1; i < shape.rank(); ++i) inner *= shape[i];
  }
};

template <typename Index>
void gather_typed(KernelContext& ctx, const Tensor& params, const Tensor& indices, Tensor& out,
                  int64_t axis) {
  const Shape& ps = params.shape();
  // Plain variables, not a structured binding: lambdas capture them (clang 14 cannot capture
  // bindings).
  const AxisView view(ps, axis);
  const int64_t outer = view.outer, n = view.n, inner = view.inner;
  const int64_t count = indices.numel();
  const Index* idx = indices.data<Index>();
  // Indices are data: check them all before copying anything.
  for (int64_t j = 0; j < count; ++j) {
    if (idx[j] < -n || idx[j] >= n)
      throw Error(str(ctx.where(), ": index ", idx[j], " (at position ", j,
                      ") is out of range for axis ", axis, " of size ", n, " in params ", ps));
  }
  const size_t row = static_cast<size_t>(inner) * dtype_size(params.dtype());
  const auto* src = static_cast<const char*>(params.raw_data());
  auto* dst = static_cast<char*>(out.raw_data());
  ctx.parallel_for(outer * count, inner, [&](int64_t p0, int64_t p1) {
    for (int64_t p = p0; p < p1; ++p) {
      int64_t o = p / count, j = p % count;
      int64_t i = idx[j] < 0 ? idx[j] + n : idx[j];
      std::memcpy(dst + p * row, src + (o * n + i) * row, row);
    }
  });
}

void gather_cpu(KernelContext& ctx) {
  const Tensor& params = ctx.input(0);
  const Tensor& indices = ctx.input(1);
  Tensor& out = ctx.output(0);
  if (out.numel() == 0) return;
  int64_t axis = normalize_axis(ctx.attr<int64_t>("axis"), params.rank(), ctx.where());
  if (indices.dtype() == i32)
    gather_typed<int32_t>(ctx, params, indices, out, axis);
  else
    gather_typed<int64_t>(ctx, params, indices, out, axis);
}

KILN_OP(gather)
    .input("params")
    .input("indices")
    .attr("axis", int64_t{0})
    .infer(infer_gather)
    .kernel(DeviceKind::cpu, gather_cpu)
    // y = params[indices]    dparams = zeros with dy added at each index (repeats add up)
    .grad([](GradContext& c) -> GradList {
      return {c.graph().add("gather_grad", {c.grad_output(), c.input(1), c.input(0)},
                            {{"axis", c.attr<int64_t>("axis")}}),
              Value()};
    });

template <typename T, typename Index>
void gather_grad_typed(KernelContext& ctx, const Tensor& dy, const Tensor& indices, Tensor& dx,
                       int64_t axis) {
  const AxisView view(dx.shape(), axis);
  const int64_t outer = view.outer, n = view.n, inner = view.inner;
  const int64_t count = indices.numel();
  const Index* idx = indices.data<Index>();
  const T* g = dy.data<T>();
  T* out = dx.data<T>();
  std::fill(out, out + dx.numel(), T(0));
  // Parallel over `outer` only: repeated indices within a row add up in order.
  ctx.parallel_for(outer, count * inner, [&](int64_t o0, int64_t o1) {
    for (int64_t o = o0; o < o1; ++o)
      for (int64_t j = 0; j < count; ++j) {
        int64_t i = idx[j] < 0 ? idx[j] + n : idx[j];
        if (i < 0 || i >= n) continue;  // the forward gather already reported it
        T* row = out + (o * n + i) * inner;
        const T* src = g + (o * count + j) * inner;
        for (int64_t k = 0; k < inner; ++k) row[k] += src[k];
      }
  });
}

KILN_OP(gather_grad)
    .input("dy")
    .input("indices")
    .input("params")
    .attr("axis", int64_t{0})
    .infer([](const InferContext& ctx) { return infer_pick_grad(ctx, infer_gather, "gather"); })
    .kernel(DeviceKind::cpu,
            [](KernelContext& ctx) {
              const Tensor& dy = ctx.input(0);
              const Tensor& indices = ctx.input(1);
              Tensor& dx = ctx.output(0);
              int64_t axis = normalize_axis(ctx.attr<int64_t>("axis"), dx.rank(), ctx.where());
              dispatch_cpu(dy.dtype(), [&](auto tag) {
                using T = decltype(tag);
                if constexpr (std::is_floating_point_v<T>) {
                  if (indices.dtype() == i32)
                    gather_grad_typed<T, int32_t>(ctx, dy, indices, dx, axis);
                  else
                    gather_grad_typed<T, int64_t>(ctx, dy, indices, dx, axis);
                }
              });
            },
            {f32, f64})
    .grad([](GradContext& c) -> GradList {
      return {gather(c.grad_output(), c.input(1), c.attr<int64_t>("axis")), Value(), Value()};
    });

// ---- take_along_axis (PyTorch's torch.gather): with params viewed as [outer, n, inner] and
// indices as [outer, m, inner] around `axis`, out[o, j, k] = params[o, indices[o, j, k], k].
std::vector<TensorType> infer_take_along_axis(const InferContext& ctx) {
  ctx.expect_dtype(1, {i32, i64});
  const Shape& params = ctx.shape(0);
  const Shape& indices = ctx.shape(1);
  if (params.rank() == 0) ctx.fail("params must have rank >= 1, got a scalar");
  if (indices.rank() != params.rank())
    ctx.fail("indices ", indices, " must have the rank of params ", params);
  const int64_t axis = ctx.axis(ctx.attr<int64_t>("axis"), params.rank());
  std::vector<int64_t> dims = indices.dims();
  for (int64_t d = 0; d < params.rank(); ++d) {
    if (d == axis) continue;
    if (params[d] >= 0 && indices[d] >= 0 && params[d] != indices[d])
      ctx.fail("indices ", indices, " and params ", params, " differ in dim ", d, " (only dim ",
               axis, ", the axis, may differ)");
    if (dims[d] < 0) dims[d] = params[d];
  }
  return {{ctx.dtype(0), Shape(std::move(dims))}};
}

// The index at flat position p of indices viewed as [outer, m, inner], checked against n.
template <typename Index>
void check_axis_indices(const KernelContext& ctx, const Tensor& indices, int64_t n, int64_t axis) {
  const Index* idx = indices.data<Index>();
  for (int64_t p = 0; p < indices.numel(); ++p)
    if (idx[p] < 0 || idx[p] >= n)
      throw Error(str(ctx.where(), ": index ", idx[p], " (at position ", p, " of indices ",
                      indices.shape(), ") is out of range [0, ", n, ") for axis ", axis));
}

template <typename Index>
void take_along_axis_typed(KernelContext& ctx, int64_t axis) {
  const Tensor& params = ctx.input(0);
  const Tensor& indices = ctx.input(1);
  Tensor& out = ctx.output(0);
  const AxisView view(params.shape(), axis);
  const int64_t n = view.n, inner = view.inner, m = indices.shape()[axis];
  check_axis_indices<Index>(ctx, indices, n, axis);
  const Index* idx = indices.data<Index>();
  const size_t word = dtype_size(params.dtype());
  const auto* src = static_cast<const char*>(params.raw_data());
  auto* dst = static_cast<char*>(out.raw_data());
  ctx.parallel_for(view.outer * m, inner, [&](int64_t r0, int64_t r1) {
    for (int64_t r = r0; r < r1; ++r) {
      const int64_t o = r / m;
      for (int64_t k = 0; k < inner; ++k) {
        const int64_t p = r * inner + k;
        std::memcpy(dst + p * word, src + ((o * n + idx[p]) * inner + k) * word, word);
      }
    }
  });
}

KILN_OP(take_along_axis)
    .input("params")
    .input("indices")
    .attr("axis", int64_t{0})
    .infer(infer_take_along_axis)
    .kernel(DeviceKind::cpu,
            [](KernelContext& ctx) {
              if (ctx.output(0).numel() == 0) return;
              const int64_t axis =
                  normalize_axis(ctx.attr<int64_t>("axis"), ctx.input(0).rank(), ctx.where());
              if (ctx.input(1).dtype() == i32)
                take_along_axis_typed<int32_t>(ctx, axis);
              else
                take_along_axis_typed<int64_t>(ctx, axis);
            })
    // dparams = zeros with dy added where each element came from (repeats add up).
    .grad([](GradContext& c) -> GradList {
      return {c.graph().add("take_along_axis_grad", {c.grad_output(), c.input(1), c.input(0)},
                            {{"axis", c.attr<int64_t>("axis")}}),
              Value()};
    });

template <typename T, typename Index>
void take_along_axis_grad_typed(KernelContext& ctx, int64_t axis) {
  const Tensor& dy = ctx.input(0);
  const Tensor& indices = ctx.input(1);
  Tensor& dx = ctx.output(0);
  const AxisView view(dx.shape(), axis);
  const int64_t n = view.n, inner = view.inner, m = indices.shape()[axis];
  const Index* idx = indices.data<Index>();
  const T* g = dy.data<T>();
  T* out = dx.data<T>();
  std::fill(out, out + dx.numel(), T(0));
  // Parallel over `outer` only: the repeats within one [m, inner] block add up in order.
  ctx.parallel_for(view.outer, m * inner, [&](int64_t o0, int64_t o1) {
    for (int64_t o = o0; o < o1; ++o)
      for (int64_t p = o * m * inner; p < (o + 1) * m * inner; ++p) {
        const int64_t i = idx[p];
        if (i < 0 || i >= n) continue;  // the forward op reported it
        out[(o * n + i) * inner + p % inner] += g[p];
      }
  });
}

KILN_OP(take_along_axis_grad)
    .input("dy")
    .input("indices")
    .input("params")
    .attr("axis", int64_t{0})
    .infer([](const InferContext& ctx) {
      return infer_pick_grad(ctx, infer_take_along_axis, "take_along_axis");
    })
    .kernel(DeviceKind::cpu,
            [](KernelContext& ctx) {
              const int64_t axis =
                  normalize_axis(ctx.attr<int64_t>("axis"), ctx.output(0).rank(), ctx.where());
              dispatch_cpu(ctx.input(0).dtype(), [&](auto tag) {
                using T = decltype(tag);
                if constexpr (std::is_floating_point_v<T>) {
                  if (ctx.input(1).dtype() == i32)
                    take_along_axis_grad_typed<T, int32_t>(ctx, axis);
                  else
                    take_along_axis_grad_typed<T, int64_t>(ctx, axis);
                }
              });
            },
            {f32, f64})
    .grad([](GradContext& c) -> GradList {
      return {take_along_axis(c.grad_output(), c.input(1), c.attr<int64_t>("axis")), Value(),
              Value()};
    });

}  // namespace
}  // namespace ops

Value slice(const Value& x, std::vector<int64_t> begin, std::vector<int64_t> end,
            std::vector<int64_t> step) {
  return common_graph("slice", {&x})
      .add("slice", {x},
           {{"begin", std::move(begin)}, {"end", std::move(end)}, {"step", std::move(step)}});
}

Value Value::slice(int64_t axis, int64_t begin, int64_t end, int64_t step) const {
  KILN_CHECK(defined(), GraphError, "[slice] of an undefined Value");
  const int64_t a = normalize_axis(axis, shape().rank(), "[slice] " + name());
  std::vector<int64_t> begins(static_cast<size_t>(a + 1), 0), ends(begins.size(), kSliceEnd),
      steps(begins.size(), 1);
  begins.back() = begin;
  ends.back() = end;
  steps.back() = step;
  return kiln::slice(*this, begins, ends, steps);
}

Value Value::operator[](int64_t index) const {
  KILN_CHECK(defined(), GraphError, "[index] of an undefined Value");
  KILN_CHECK(shape().rank() > 0, GraphError, "[index] ", name(), " is a scalar (shape ", shape(),
             "): there is no dim to index");
  const int64_t size = shape()[0];
  KILN_CHECK(size == kUnknownDim || (index >= -size && index < size), GraphError, "[index] ",
             name(), ": index ", index, " is out of range for dim 0 of size ", size, " (shape ",
             shape(), ")");
  // [i, i + 1) picks the one row; for -1 that is [-1, end).
  const int64_t end = index == -1 ? kSliceEnd : index + 1;
  return squeeze(slice(0, index, end), {0});
}

Value gather(const Value& params, const Value& indices, int64_t axis) {
  return common_graph("gather", {&params, &indices})
      .add("gather", {params, indices}, {{"axis", axis}});
}

Value take_along_axis(const Value& params, const Value& indices, int64_t axis) {
  return common_graph("take_along_axis", {&params, &indices})
      .add("take_along_axis", {params, indices}, {{"axis", axis}});
}

}  // namespace kiln
