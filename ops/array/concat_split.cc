// concat and split: joining tensors along an axis and cutting one apart.
#include "kiln/framework/gradient.h"
#include "kiln/framework/kernel.h"
#include "kiln/ops/array.h"
#include "kiln/ops/array/strided_copy.h"

namespace kiln {
namespace ops {
namespace {

// ---- concat: every input has the first's rank and dtype, and its dims except `axis`.
std::vector<TensorType> infer_concat(const InferContext& ctx) {
  const Shape& first = ctx.shape(0);
  if (first.rank() == 0) ctx.fail("cannot concatenate scalars (rank 0); reshape them to [1]");
  int64_t axis = ctx.axis(ctx.attr<int64_t>("axis"), first.rank());
  std::vector<int64_t> dims = first.dims();
  for (int i = 1; i < ctx.num_inputs(); ++i) {
    ctx.expect_same_dtype(0, i);
    const Shape& s = ctx.shape(i);
    if (s.rank() != first.rank())
      ctx.fail("input ", i, " has rank ", s.rank(), " (", s, "), input 0 has rank ", first.rank(),
               " (", first, ")");
    for (int64_t d = 0; d < s.rank(); ++d) {
      if (d == axis) {
        dims[d] = (dims[d] < 0 || s[d] < 0) ? -1 : ctx.checked_add(dims[d], s[d]);
      } else if (dims[d] >= 0 && s[d] >= 0 && dims[d] != s[d]) {
        ctx.fail("input ", i, " is ", s, " but input 0 is ", first, ": dim ", d,
                 " differs (only axis ", axis, " may)");
      } else if (dims[d] < 0) {
        dims[d] = s[d];
      }
    }
  }
  return {{ctx.dtype(0), Shape(std::move(dims))}};
}

// Input i is written into y at its offset along `axis` with y's strides (a strided scatter),
// so the same kernel runs on the CPU and the GPU.
void concat_kernel(KernelContext& ctx) {
  Tensor& y = ctx.output(0);
  const int64_t axis = normalize_axis(ctx.attr<int64_t>("axis"), y.rank(), ctx.where());
  const std::vector<int64_t> strides = y.shape().strides();
  int64_t start = 0;  // where this input begins along axis
  const size_t element = dtype_size(y.dtype());
  for (int i = 0; i < ctx.num_inputs(); ++i) {
    const Tensor& x = ctx.input(i);
    // Along axis 0 an input the planner had written into its place is there already.
    const bool in_place = axis == 0 && x.numel() > 0 &&
                          x.raw_data() == static_cast<char*>(y.raw_data()) +
                                              start * strides[axis] * static_cast<int64_t>(element);
    if (!in_place) strided_scatter(ctx, x, y, start * strides[axis], strides);
    start += x.shape()[axis];
  }
}

KILN_OP(concat)
    .variadic_input("values", 1)
    .attr("axis", AttrType::integer)
    .concatenates_inputs()
    .infer(infer_concat)
    .kernel(DeviceKind::cpu, concat_kernel)
    .kernel(DeviceKind::cuda, concat_kernel)
    // y = [x0, x1, ...] along axis    dx_i = the piece of dy where x_i sits
    .grad([](GradContext& c) -> GradList {
      std::vector<Value> inputs = {c.grad_output()};
      for (int i = 0; i < c.num_inputs(); ++i) inputs.push_back(c.input(i));
      return c.graph().add_node("split_like", inputs, {{"axis", c.attr<int64_t>("axis")}});
    });

// ---- split: sizes along `axis` that add up to the dim.
std::vector<TensorType> infer_split(const InferContext& ctx) {
  const Shape& x = ctx.shape(0);
  if (x.rank() == 0) ctx.fail("cannot split a scalar");
  int64_t axis = ctx.axis(ctx.attr<int64_t>("axis"), x.rank());
  const auto& sizes = ctx.attr<std::vector<int64_t>>("sizes");
  if (sizes.empty()) ctx.fail("needs at least one size");
  int64_t total = 0;
  for (int64_t s : sizes) {
    if (s < 0) ctx.fail("sizes ", attr_to_string(sizes), " has a negative size");
    total = ctx.checked_add(total, s);
  }
  if (x[axis] >= 0 && total != x[axis])
    ctx.fail("sizes ", attr_to_string(sizes), " add up to ", total, ", but axis ", axis, " of ", x,
             " has ", x[axis]);
  std::vector<TensorType> out;
  for (int64_t s : sizes) {
    Shape piece = x;
    piece[axis] = s;
    out.push_back({ctx.dtype(0), piece});
  }
  return out;
}

// Piece i is read from x at its offset along `axis` with x's strides (on either device). Where
// every dim before `axis` is 1 (a split along the first axis), each piece is one contiguous run
// of x: it becomes a view of x's storage (the op may alias its input) instead of a copy, when it
// starts on a 64-byte boundary as a planned buffer does (vector loads may count on that).
void split_kernel(KernelContext& ctx) {
  const Tensor& x = ctx.input(0);
  const int64_t axis = normalize_axis(ctx.attr<int64_t>("axis"), x.rank(), ctx.where());
  const std::vector<int64_t> strides = x.shape().strides();
  int64_t outer = 1;
  for (int64_t d = 0; d < axis; ++d) outer *= x.shape()[d];
  const size_t element = dtype_size(x.dtype());
  int64_t start = 0;
  for (int i = 0; i < ctx.num_outputs(); ++i) {
    const Shape& piece = ctx.output_type(i).shape;
    const size_t at = x.offset() + static_cast<size_t>(start * strides[axis]) * element;
    if (outer == 1 && x.storage() && at % 64 == 0) {
      ctx.set_output(i, Tensor(x.dtype(), piece, x.storage(), at));
    } else {
      strided_copy(ctx, x, start * strides[axis], strides, ctx.output(i));
    }
    start += piece[axis];
  }
}

KILN_OP(split)
    .may_alias_input()
    .input("x")
    .attr("axis", AttrType::integer)
    .attr("sizes", AttrType::integers)
    .infer(infer_split)
    .kernel(DeviceKind::cpu, split_kernel)
    .kernel(DeviceKind::cuda, split_kernel)
    // y_i = pieces of x    dx = [dy_0, dy_1, ...] (zeros for pieces nothing depends on)
    .grad([](GradContext& c) -> GradList {
      std::vector<Value> pieces;
      for (int i = 0; i < c.node().num_outputs(); ++i) pieces.push_back(c.grad_output(i));
      return {concat(pieces, c.attr<int64_t>("axis"))};
    });

// ---- split_like(x, likes...): split with the sizes of each like along `axis`, known at run
// time (concat's gradient).
KILN_OP(split_like)
    .may_alias_input()
    .input("x")
    .variadic_input("likes", 1)
    .attr("axis", AttrType::integer)
    .infer([](const InferContext& ctx) -> std::vector<TensorType> {
      const Shape& x = ctx.shape(0);
      int64_t axis = ctx.axis(ctx.attr<int64_t>("axis"), x.rank());
      int64_t total = 0;
      bool known = true;
      std::vector<TensorType> out;
      for (int i = 1; i < ctx.num_inputs(); ++i) {
        if (ctx.shape(i).rank() != x.rank())
          ctx.fail("like ", i - 1, " has rank ", ctx.shape(i).rank());
        Shape piece = x;
        piece[axis] = ctx.shape(i)[axis];
        known &= piece[axis] >= 0;
        total = ctx.checked_add(total, piece[axis]);
        out.push_back({ctx.dtype(0), piece});
      }
      if (known && x[axis] >= 0 && total != x[axis])
        ctx.fail("the likes add up to ", total, " along axis ", axis, ", x has ", x[axis]);
      return out;
    })
    .kernel(DeviceKind::cpu, split_kernel)
    .kernel(DeviceKind::cuda, split_kernel)
    .grad([](GradContext& c) -> GradList {
      std::vector<Value> pieces;
      for (int i = 0; i < c.node().num_outputs(); ++i) pieces.push_back(c.grad_output(i));
      GradList out(c.num_inputs());
      out[0] = concat(pieces, c.attr<int64_t>("axis"));
      return out;
    });

}  // namespace
}  // namespace ops

Value concat(const std::vector<Value>& values, int64_t axis) {
  KILN_CHECK(!values.empty(), GraphError, "[concat] needs at least one input");
  Graph& g = common_graph("concat", {&values[0]});
  for (const Value& v : values) common_graph("concat", {&values[0], &v});
  return g.add("concat", values, {{"axis", axis}});
}

std::vector<Value> split(const Value& x, std::vector<int64_t> sizes, int64_t axis) {
  return common_graph("split", {&x})
      .add_node("split", {x}, {{"axis", axis}, {"sizes", std::move(sizes)}});
}

std::vector<Value> split(const Value& x, int64_t num_splits, int64_t axis) {
  const Shape& s = x.shape();
  int64_t a = normalize_axis(axis, s.rank(), "[split] " + x.name());
  KILN_CHECK(num_splits > 0 && s[a] >= 0 && s[a] % num_splits == 0, GraphError, "[split] ",
             x.name(), ": cannot cut axis ", a, " of ", s, " into ", num_splits, " equal pieces");
  return split(x, std::vector<int64_t>(num_splits, s[a] / num_splits), axis);
}

}  // namespace kiln
