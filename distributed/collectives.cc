// The collective ops: schemas, inference, gradients and host kernels (Gloo through the default
// group's communicator). The CUDA kernels (NCCL) are in nccl_collectives.cc.
#include "kiln/distributed/collectives.h"

#include <cstring>
#include <mutex>

#include "kiln/distributed/distributed.h"
#include "kiln/framework/gradient.h"
#include "kiln/framework/kernel.h"
#include "kiln/ops/array.h"
#include "kiln/ops/math.h"

namespace kiln::distributed {

namespace {

std::mutex default_group_mutex;
std::shared_ptr<Group> default_group_value;

int64_t default_world_size() {
  std::shared_ptr<Group> group = default_group();
  return group ? group->world_size() : 1;
}

// The world size a node was built for; the run's must match (all_gather, reduce_scatter).
int64_t built_world_size(const InferContext& ctx) {
  const int64_t world = ctx.attr<int64_t>("world_size");
  if (world < 1) ctx.fail("world_size ", world, " must be at least 1");
  return world;
}

std::vector<TensorType> infer_all_reduce(const InferContext& ctx) {
  const ReduceOp op = parse_reduce_op(ctx.attr<std::string>("reduction"));
  if (op == ReduceOp::avg && !is_floating(ctx.dtype(0)))
    ctx.fail("avg of ", ctx.dtype(0), " (an integer dtype) is not defined");
  return {ctx.input(0)};
}

std::vector<TensorType> infer_broadcast(const InferContext& ctx) {
  if (ctx.attr<int64_t>("root") < 0) ctx.fail("root ", ctx.attr<int64_t>("root"), " is negative");
  return {ctx.input(0)};
}

std::vector<TensorType> infer_all_gather(const InferContext& ctx) {
  std::vector<int64_t> dims = {built_world_size(ctx)};
  for (int64_t d : ctx.shape(0)) dims.push_back(d);
  return {{ctx.dtype(0), Shape(dims)}};
}

std::vector<TensorType> infer_reduce_scatter(const InferContext& ctx) {
  const int64_t world = built_world_size(ctx);
  const ReduceOp op = parse_reduce_op(ctx.attr<std::string>("reduction"));
  if (op == ReduceOp::avg && !is_floating(ctx.dtype(0)))
    ctx.fail("avg of ", ctx.dtype(0), " (an integer dtype) is not defined");
  const Shape& shape = ctx.shape(0);
  if (shape.rank() < 1) ctx.fail("x must have a leading dim to scatter, got a scalar");
  std::vector<int64_t> dims(shape.begin(), shape.end());
  if (dims[0] >= 0) {
    if (dims[0] % world != 0)
      ctx.fail("the leading dim of x", shape, " is not a multiple of the world size ", world);
    dims[0] /= world;
  }
  return {{ctx.dtype(0), Shape(dims)}};
}

// The communicator of the default group, checked against the world size the node was built for.
Communicator& communicator_for(KernelContext& ctx, int64_t built_world = 0) {
  std::shared_ptr<Group> group = default_group();
  Communicator& comm = group ? group->communicator() : local_communicator();
  KILN_CHECK(built_world == 0 || built_world == comm.world_size(), DistributedError, ctx.where(),
             ": built for a world of ", built_world, " ranks, run in one of ", comm.world_size());
  return comm;
}

// Runs a collective; a transport error is rethrown naming the node.
template <typename F>
void collective(KernelContext& ctx, F&& body) {
  try {
    body();
  } catch (const DistributedError& e) {
    throw DistributedError(str(ctx.where(), ": ", e.what()));
  }
}

void copy_input(KernelContext& ctx) {
  const Tensor& x = ctx.input(0);
  Tensor& y = ctx.output(0);
  if (x.nbytes() > 0 && y.raw_data() != x.raw_data())
    std::memcpy(y.raw_data(), x.raw_data(), x.nbytes());
}

void all_reduce_cpu(KernelContext& ctx) {
  copy_input(ctx);
  const ReduceOp op = parse_reduce_op(ctx.attr<std::string>("reduction"));
  collective(ctx, [&] { communicator_for(ctx).all_reduce(ctx.output(0), op); });
}

void broadcast_cpu(KernelContext& ctx) {
  copy_input(ctx);
  collective(ctx,
             [&] { communicator_for(ctx).broadcast(ctx.output(0), ctx.attr<int64_t>("root")); });
}

void all_gather_cpu(KernelContext& ctx) {
  collective(ctx, [&] {
    Tensor gathered =
        communicator_for(ctx, ctx.attr<int64_t>("world_size")).all_gather(ctx.input(0));
    Tensor& y = ctx.output(0);
    if (y.nbytes() > 0) std::memcpy(y.raw_data(), gathered.raw_data(), y.nbytes());
  });
}

void reduce_scatter_cpu(KernelContext& ctx) {
  const ReduceOp op = parse_reduce_op(ctx.attr<std::string>("reduction"));
  collective(ctx, [&] {
    Tensor part =
        communicator_for(ctx, ctx.attr<int64_t>("world_size")).reduce_scatter(ctx.input(0), op);
    Tensor& y = ctx.output(0);
    if (y.nbytes() > 0) std::memcpy(y.raw_data(), part.raw_data(), y.nbytes());
  });
}

// y_r = reduce_s x_s on every rank r, so dL/dx_s = sum_r dL_r/dy_r (sum), or its mean (avg).
std::vector<Value> all_reduce_grad(GradContext& g) {
  const ReduceOp op = parse_reduce_op(g.attr<std::string>("reduction"));
  KILN_CHECK(op == ReduceOp::sum || op == ReduceOp::avg, GraphError, "[all_reduce] ",
             g.node().name(), ": the ", reduce_op_name(op), " reduction has no gradient");
  return {all_reduce(g.grad_output(0), op)};
}

// y = [x_0, ..., x_{n-1}] on every rank, so dL/dx_s = sum_r dy_r[s]: rank s's part of the
// reduce-scatter of dy, shaped like x.
std::vector<Value> all_gather_grad(GradContext& g) {
  const int64_t world = g.attr<int64_t>("world_size");
  return {reshape_like(reduce_scatter(g.grad_output(0), ReduceOp::sum, world), g.input(0))};
}

// y_r = (reduce_s x_s)[chunk r], so dL/dx_s = [dy_0, ..., dy_{n-1}] (÷ n for avg).
std::vector<Value> reduce_scatter_grad(GradContext& g) {
  const int64_t world = g.attr<int64_t>("world_size");
  const ReduceOp op = parse_reduce_op(g.attr<std::string>("reduction"));
  KILN_CHECK(op == ReduceOp::sum || op == ReduceOp::avg, GraphError, "[reduce_scatter] ",
             g.node().name(), ": the ", reduce_op_name(op), " reduction has no gradient");
  Value dx = reshape_like(all_gather(g.grad_output(0), world), g.input(0));
  return {op == ReduceOp::avg ? dx / static_cast<double>(world) : dx};
}

KILN_OP(all_reduce)
    .input("x")
    .attr("reduction", std::string("sum"))
    .communication()
    .may_overwrite_input()
    .infer(infer_all_reduce)
    .grad(all_reduce_grad)
    .kernel(DeviceKind::cpu, all_reduce_cpu);

KILN_OP(broadcast)
    .input("x")
    .attr("root", int64_t{0})
    .communication()
    .may_overwrite_input()
    .no_gradient()
    .infer(infer_broadcast)
    .kernel(DeviceKind::cpu, broadcast_cpu);

KILN_OP(all_gather)
    .input("x")
    .attr("world_size", AttrType::integer)
    .communication()
    .infer(infer_all_gather)
    .grad(all_gather_grad)
    .kernel(DeviceKind::cpu, all_gather_cpu);

KILN_OP(reduce_scatter)
    .input("x")
    .attr("reduction", std::string("sum"))
    .attr("world_size", AttrType::integer)
    .communication()
    .infer(infer_reduce_scatter)
    .grad(reduce_scatter_grad)
    .kernel(DeviceKind::cpu, reduce_scatter_cpu);

}  // namespace

std::shared_ptr<Group> default_group() {
  std::lock_guard<std::mutex> lock(default_group_mutex);
  return default_group_value;
}

void set_default_group(std::shared_ptr<Group> group) {
  std::lock_guard<std::mutex> lock(default_group_mutex);
  default_group_value = std::move(group);
}

ReduceOp parse_reduce_op(const std::string& name) {
  for (ReduceOp op : {ReduceOp::sum, ReduceOp::avg, ReduceOp::max, ReduceOp::min})
    if (name == reduce_op_name(op)) return op;
  throw GraphError(str("[distributed] unknown reduction '", name, "' (sum, avg, max or min)"));
}

Value all_reduce(const Value& x, ReduceOp op) {
  return common_graph("all_reduce", {&x})
      .add("all_reduce", {x}, {{"reduction", std::string(reduce_op_name(op))}});
}

Value broadcast(const Value& x, int64_t root) {
  return common_graph("broadcast", {&x}).add("broadcast", {x}, {{"root", root}});
}

Value all_gather(const Value& x, int64_t world_size) {
  return common_graph("all_gather", {&x})
      .add("all_gather", {x}, {{"world_size", world_size > 0 ? world_size : default_world_size()}});
}

Value reduce_scatter(const Value& x, ReduceOp op, int64_t world_size) {
  return common_graph("reduce_scatter", {&x})
      .add("reduce_scatter", {x},
           {{"reduction", std::string(reduce_op_name(op))},
            {"world_size", world_size > 0 ? world_size : default_world_size()}});
}

}  // namespace kiln::distributed
