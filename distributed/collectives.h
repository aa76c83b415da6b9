// Collectives as graph ops. Each has the communication trait: the schedule puts it on the
// communication stream (overlapping compute), passes never fold, merge or move it, and it is
// saved, loaded and traced like any other op. At run time it uses the process's default group
// (distributed::init() sets it; without one, a world of one rank, where each is an identity).
// The host kernels run Gloo; CUDA kernels run NCCL on the communication stream.
#pragma once

#include <memory>

#include "kiln/distributed/communicator.h"
#include "kiln/framework/graph.h"

namespace kiln::distributed {

class Group;

/// The group collective ops use: the one given to set_default_group (distributed::init sets
/// it), or nullptr for a process that is its own world.
std::shared_ptr<Group> default_group();
void set_default_group(std::shared_ptr<Group> group);

/// The reduction of every rank's x (same shape everywhere). Gradient: sum → all_reduce(dy, sum),
/// avg → all_reduce(dy, avg) (each rank's x reaches every rank's y); max and min have none.
Value all_reduce(const Value& x, ReduceOp op = ReduceOp::sum);
/// Rank `root`'s x, on every rank (not differentiable).
Value broadcast(const Value& x, int64_t root = 0);
/// Every rank's x stacked along a new leading axis: [world_size, ...x.shape]. `world_size`
/// (default: the default group's) is part of the graph: running at another world size is an
/// error naming both. Gradient: reduce_scatter(dy, sum), this rank's part.
Value all_gather(const Value& x, int64_t world_size = 0);
/// The reduction of every rank's x (leading dim a multiple of world_size), this rank's
/// 1/world_size of it along dim 0. Gradient: all_gather(dy) (÷ world_size for avg).
Value reduce_scatter(const Value& x, ReduceOp op = ReduceOp::sum, int64_t world_size = 0);

/// "sum", "avg", "max", "min" → the ReduceOp; anything else throws kiln::GraphError.
ReduceOp parse_reduce_op(const std::string& name);

}  // namespace kiln::distributed
