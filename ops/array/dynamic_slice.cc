// dynamic_slice and dynamic_update_slice: reading and writing a window along one axis whose
// start is a tensor computed or fed at run time (XLA's ops of the same names, PyTorch's narrow
// and slice_scatter with a tensor start). A KV cache is their use: the decode step writes the
// new keys at the position it is fed, so one compiled plan serves every position.
//
// A start outside [0, dim - length] is an error naming the node, the start and the sizes (XLA
// clamps it; a cache written past its end should fail, not overwrite its last entries).
//
// assign_slice is dynamic_update_slice into a variable's own storage: a cache held in the
// session gets its window written and nothing else copied (dynamic_update_slice of a variable
// copies it whole into the result, and assigning that back copies it again).
#include <cstring>

#include "kiln/framework/gradient.h"
#include "kiln/framework/kernel.h"
#include "kiln/ops/array.h"
#include "kiln/ops/array/strided_copy.h"
#include "kiln/ops/state.h"

namespace kiln {
namespace ops {
namespace {

// The start read from its tensor (i32 or i64), checked so that `length` entries from it lie
// within `dim`.
int64_t dynamic_start(const KernelContext& ctx, const Tensor& start, int64_t length, int64_t dim) {
  const int64_t at =
      start.dtype() == i32 ? int64_t{start.data<int32_t>()[0]} : start.data<int64_t>()[0];
  KILN_CHECK(at >= 0 && at <= dim - length, Error, ctx.where(), ": start ", at,
             " is out of range: a window of ", length, " must lie within [0, ", dim,
             "), so the start must be in [0, ", dim - length, "]");
  return at;
}

// The start: an integer scalar (rank 0, or one element of rank 1).
void expect_start(const InferContext& ctx, int index) {
  ctx.expect_dtype(index, {i32, i64});
  const Shape& s = ctx.shape(index);
  if (!(s.rank() == 0 || (s.rank() == 1 && s[0] == 1)))
    ctx.fail("start must be an integer scalar (shape [] or [1]), got ", s);
}

std::vector<TensorType> infer_dynamic_slice(const InferContext& ctx) {
  expect_start(ctx, 1);
  const Shape& x = ctx.shape(0);
  if (x.rank() == 0) ctx.fail("x must have rank >= 1, got a scalar");
  const int64_t axis = ctx.axis(ctx.attr<int64_t>("axis"), x.rank());
  const int64_t length = ctx.attr<int64_t>("length");
  if (length < 0) ctx.fail("length ", length, " must be >= 0");
  if (x[axis] >= 0 && length > x[axis])
    ctx.fail("length ", length, " exceeds dim ", axis, " of x ", x);
  std::vector<int64_t> dims = x.dims();
  dims[axis] = length;
  return {{ctx.dtype(0), Shape(std::move(dims))}};
}

std::vector<TensorType> infer_dynamic_update_slice(const InferContext& ctx) {
  ctx.expect_same_dtype(0, 1);
  expect_start(ctx, 2);
  const Shape& x = ctx.shape(0);
  const Shape& update = ctx.shape(1);
  if (x.rank() == 0) ctx.fail("x must have rank >= 1, got a scalar");
  if (update.rank() != x.rank()) ctx.fail("update ", update, " must have the rank of x ", x);
  const int64_t axis = ctx.axis(ctx.attr<int64_t>("axis"), x.rank());
  for (int64_t d = 0; d < x.rank(); ++d) {
    if (x[d] < 0 || update[d] < 0) continue;
    if (d == axis ? update[d] > x[d] : update[d] != x[d])
      ctx.fail("update ", update, " does not fit x ", x, " along axis ", axis,
               " (the other dims must be equal, and the axis no longer)");
  }
  return {ctx.input(0)};
}

// Where the window of `length` from `start` begins in x, in elements, and x's strides (the
// window's too).
int64_t window_offset(const KernelContext& ctx, const Shape& x, int64_t axis, int64_t length,
                      const Tensor& start, std::vector<int64_t>* strides) {
  *strides = x.strides();
  return dynamic_start(ctx, start, length, x[axis]) * (*strides)[axis];
}

void dynamic_slice_cpu(KernelContext& ctx) {
  const Tensor& x = ctx.input(0);
  Tensor& out = ctx.output(0);
  const int64_t axis = normalize_axis(ctx.attr<int64_t>("axis"), x.rank(), ctx.where());
  std::vector<int64_t> strides;
  const int64_t offset =
      window_offset(ctx, x.shape(), axis, out.shape()[axis], ctx.input(1), &strides);
  strided_copy(ctx, x, offset, strides, out);
}

// Writes the update (input 1) over the window of `target` (shaped like input 0) that the start
// (input 2) and the axis attribute name.
void write_window(KernelContext& ctx, Tensor& target) {
  const Tensor& update = ctx.input(1);
  const int64_t axis = normalize_axis(ctx.attr<int64_t>("axis"), target.rank(), ctx.where());
  std::vector<int64_t> strides;
  const int64_t offset =
      window_offset(ctx, target.shape(), axis, update.shape()[axis], ctx.input(2), &strides);
  strided_scatter(ctx, update, target, offset, strides);
}

// out = x, then the update over its window. Output 0 may share x's buffer (the planner may
// compute it in place when this is x's last use): then only the window is written.
void dynamic_update_slice_cpu(KernelContext& ctx) {
  const Tensor& x = ctx.input(0);
  Tensor& out = ctx.output(0);
  if (out.raw_data() != x.raw_data() && x.nbytes() > 0)
    std::memcpy(out.raw_data(), x.raw_data(), x.nbytes());
  write_window(ctx, out);
}

// assign_slice: the update written over the variable's window, in its storage (only the window
// is touched); the output is the variable.
void assign_slice_cpu(KernelContext& ctx) {
  Tensor target = ctx.input(0);
  write_window(ctx, target);
  ctx.set_output(0, ctx.input(0));
}

KILN_OP(dynamic_slice)
    .input("x")
    .input("start")
    .attr("axis", AttrType::integer)
    .attr("length", AttrType::integer)
    .infer(infer_dynamic_slice)
    .kernel(DeviceKind::cpu, dynamic_slice_cpu)
    // dx = zeros with dy written over the window; the start gets no gradient.
    .grad([](GradContext& c) -> GradList {
      return {dynamic_update_slice(zeros_like(c.input(0)), c.grad_output(), c.input(1),
                                   c.attr<int64_t>("axis")),
              Value()};
    });

KILN_OP(assign_slice)
    .input("var")
    .input("update")
    .input("start")
    .attr("axis", AttrType::integer)
    .infer(infer_dynamic_update_slice)
    .mutates_input(0)
    .no_gradient()
    .kernel(DeviceKind::cpu, assign_slice_cpu);

KILN_OP(dynamic_update_slice)
    .input("x")
    .input("update")
    .input("start")
    .attr("axis", AttrType::integer)
    .infer(infer_dynamic_update_slice)
    .may_overwrite_input()
    .kernel(DeviceKind::cpu, dynamic_update_slice_cpu)
    // dx = dy with the window zeroed (the update replaced it); dupdate = dy's window.
    .grad([](GradContext& c) -> GradList {
      const int64_t axis = c.attr<int64_t>("axis");
      const Value& update = c.input(1);
      const int64_t a = normalize_axis(axis, update.shape().rank(), "[dynamic_update_slice]");
      KILN_CHECK(update.shape()[a] >= 0, GraphError, "[dynamic_update_slice] ", update.name(),
                 ": the gradient needs the update's length along axis ", a,
                 ", unknown in its shape ", update.shape());
      return {dynamic_update_slice(c.grad_output(), zeros_like(update), c.input(2), axis),
              dynamic_slice(c.grad_output(), c.input(2), update.shape()[a], axis), Value()};
    });

}  // namespace
}  // namespace ops

Value dynamic_slice(const Value& x, const Value& start, int64_t length, int64_t axis) {
  return common_graph("dynamic_slice", {&x, &start})
      .add("dynamic_slice", {x, start}, {{"axis", axis}, {"length", length}});
}

Value dynamic_update_slice(const Value& x, const Value& update, const Value& start, int64_t axis) {
  return common_graph("dynamic_update_slice", {&x, &update, &start})
      .add("dynamic_update_slice", {x, update, start}, {{"axis", axis}});
}

Value assign_slice(const Value& var, const Value& update, const Value& start, int64_t axis) {
  return common_graph("assign_slice", {&var, &update, &start})
      .add("assign_slice", {var, update, start}, {{"axis", axis}});
}

}  // namespace kiln
