// Data parallelism as a graph transform (PyTorch DDP's design in graph form). Every rank runs
// the same training graph on its own shard of the batch; between compute_gradients and
// apply_gradients the gradients are averaged over the ranks, in buckets:
//
//   auto grads = optimizer.compute_gradients(loss);
//   auto dp = distributed::data_parallel(grads);             // buckets of ~25 MB
//   Value train = dp.apply(optimizer);                       // average, then update
//   Value sync = distributed::broadcast_variables(graph);    // run once: rank 0's values
//
// Buckets are filled in the order backward produces the gradients (the last layer's first);
// each is packed (concat), all-reduced on the communication stream as soon as its last
// gradient exists, and unpacked, while backward goes on with the earlier layers. The schedule
// runs the ops that feed a collective as early as it can and the ops that wait for one as late
// as it can, so compute does not stall on communication it does not need yet.
#pragma once

#include <cstdint>
#include <vector>

#include "kiln/autograd/optim.h"
#include "kiln/framework/graph.h"

namespace kiln::distributed {

struct DataParallelOptions {
  /// Gradients are packed into buckets of at least this many bytes (the last one may be
  /// smaller; a gradient larger than this is a bucket of its own). PyTorch DDP's default.
  int64_t bucket_bytes = 25 * 1024 * 1024;
  /// The first bucket (the last layers' gradients) closes at this size instead, so the first
  /// all-reduce starts early in backward (PyTorch DDP's first bucket is 1 MiB too). At most
  /// bucket_bytes counts.
  int64_t first_bucket_bytes = 1024 * 1024;
  /// Micro-batches per optimizer step (PyTorch's no_sync): the first accumulation_steps - 1
  /// run the `accumulate` target, which adds the gradients into per-variable accumulators and
  /// communicates nothing; the last runs apply(), which all-reduces (accumulated + its own) /
  /// accumulation_steps, updates and zeroes the accumulators. So with a mean loss per
  /// micro-batch the update is the one of the mean over every micro-batch of every rank.
  int64_t accumulation_steps = 1;
};

/// One all-reduced bucket: its gradients' variables, in packing order.
struct GradientBucket {
  std::vector<Value> variables{};
  DType dtype = DType::f32;
  int64_t bytes = 0;
  /// The all_reduce node's output (the packed, averaged gradients).
  Value reduced{};
};

/// What data_parallel adds to the graph.
struct DataParallel {
  /// The gradients averaged over the ranks (and micro-batches), for apply_gradients.
  std::vector<optim::GradientAndVariable> gradients{};
  /// In the order they are all-reduced.
  std::vector<GradientBucket> buckets{};
  /// With accumulation_steps > 1: the target of the micro-batches that do not step.
  Value accumulate{};
  /// With accumulation_steps > 1: the target that zeroes the accumulators (part of apply()).
  Value reset{};
  /// optimizer.apply_gradients(gradients), and the reset of the accumulators: one target.
  Value apply(optim::Optimizer& optimizer) const;
};

/// Averages `gradients` (from compute_gradients) over the ranks of the default group, in
/// buckets. At world size 1 the all-reduces are identities: the same graph runs anywhere.
/// Throws kiln::GraphError for an empty list, gradients from several graphs, or bad options.
DataParallel data_parallel(const std::vector<optim::GradientAndVariable>& gradients,
                           const DataParallelOptions& options = {});

/// A target that overwrites every variable of `graph` (as it is now: call it after the
/// optimizer made its slots) with rank `root`'s value, one bucket per dtype. Run it once
/// before training, after any checkpoint restore on rank root, so every rank starts alike.
Value broadcast_variables(Graph& graph, int64_t root = 0);

}  // namespace kiln::distributed
