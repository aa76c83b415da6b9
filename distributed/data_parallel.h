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
#include <optional>
#include <vector>

#include "kiln/autograd/optim.h"
#include "kiln/framework/graph.h"

namespace kiln::distributed {

/// PowerSGD gradient compression (Vogels et al. 2019; PyTorch DDP's powerSGD_hook): each
/// gradient of rank >= 2, viewed as an n x m matrix M (its first dim by the rest), travels as
/// two thin matrices. With this rank's error feedback E and a warm-started Q [m, rank]:
///   M = grad + E;  P = all_reduce_sum(M Q);  P = orthonormal columns of P (Gram-Schmidt);
///   Q = all_reduce_avg(M^T P);  grad = P Q^T (the average gradient projected on P's span);
///   E = M - grad.
/// So a matrix sends (n + m) * rank values instead of n * m. Gradients of rank 1, and those
/// that would not shrink by min_compression_rate, are all-reduced whole (as the hook does).
/// Q (identical on every rank) and E (rank-local: this rank's residue) are persistent
/// variables named "data_parallel/<var>/power_sgd_q" and ".../power_sgd_error", saved with
/// checkpoints. A rank above the gradient's own rank adds directions made of rounding (as the
/// hook's does): keep it small (1 to 4).
/// Unlike the hook there is no start_powerSGD_iter: the graph compresses from its first step
/// (to warm up uncompressed, train a graph without it, then restore its checkpoint into this
/// one with strict = false).
struct PowerSgdOptions {
  /// The rank of the approximation (the hook's matrix_approximation_rank).
  int64_t rank = 1;
  /// A matrix is compressed only when n * m > min_compression_rate * (n + m) * rank.
  double min_compression_rate = 2;
  /// Added to each column's norm before it is normalized (a zero column stays zero).
  double orthogonalization_epsilon = 1e-8;
  /// The seed of Q's initial values (the same on every rank).
  int64_t seed = 0;
};

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
  /// ZeRO stage 1 (torch's ZeroRedundancyOptimizer): each variable is updated by one rank,
  /// which alone holds its optimizer slots (so a rank holds about 1/world_size of Adam's
  /// moments; partition_variables balances the bytes). After the step every rank gathers the
  /// variables other ranks updated, one all_gather per dtype. Training equals the unsharded
  /// run bit for bit (clipping and loss scaling still see every gradient). Each rank's graph
  /// then has its own slots: each rank saves and resumes from its own checkpoint at the same
  /// world size (another rank's file lacks this rank's slots: restoring it names them); all
  /// the files together, Session::restore_checkpoints(paths, false), restore any world size.
  bool shard_optimizer_state = false;
  /// ZeRO stage 2 (sharded optimizer state as above, and the gradients too): each bucket is
  /// laid out by owner, each rank's part padded to the longest, and reduce-scattered instead
  /// of all-reduced, so each rank receives only the averages of the variables it updates (half
  /// the bytes of an all-reduce on the wire; no full averaged bucket in memory). Owners are
  /// balanced within each bucket (a variable is owned whole, so a bucket of one variable
  /// still sends its size: larger buckets of many variables shard best). Clipping's
  /// norm and loss scaling's overflow check are summed over the ranks by two scalar
  /// all-reduces. Implies shard_optimizer_state. The result equals the unsharded run up to
  /// the order of the sums (bit for bit on 2 ranks, whose sums have one order).
  bool shard_gradients = false;
  /// f16 or bf16: each bucket of wider floating gradients (f32, f64) is cast to it for the
  /// all-reduce and back after it (PyTorch DDP's fp16_compress_hook and bf16_compress_hook):
  /// half the bytes on the wire, the averaged gradients rounded to its precision. Gloo and NCCL
  /// sum 16-bit values in f32. bf16 keeps f32's range; f16 makes gradients beyond 65504 inf
  /// (with loss scaling, a skipped step). Unset: gradients travel in their own dtype.
  std::optional<DType> compression{};
  /// PowerSGD low-rank compression of the matrices' gradients (see PowerSgdOptions). Not with
  /// `compression` or `shard_gradients`.
  std::optional<PowerSgdOptions> power_sgd{};
};

/// One all-reduced bucket: its gradients' variables, in packing order.
struct GradientBucket {
  std::vector<Value> variables{};
  DType dtype = DType::f32;
  int64_t bytes = 0;
  /// The dtype the all-reduce sends: `dtype`, or the compression's.
  DType wire_dtype = DType::f32;
  /// The all_reduce node's output (the packed, averaged gradients); with shard_gradients the
  /// reduce_scatter's (this rank's part: the averages of the variables it owns, padded). With
  /// power_sgd, of the gradients sent whole (undefined when every one is compressed).
  Value reduced{};
  /// With power_sgd: the variables whose gradients are compressed (not in `reduced`).
  std::vector<Value> low_rank{};
  /// Every collective of the bucket, in the order they run (`reduced`, then PowerSGD's P and
  /// Q all-reduces).
  std::vector<Value> collectives{};
  /// Reduce-scattered to the variables' owners (shard_gradients) rather than all-reduced.
  bool scattered = false;
};

/// What data_parallel adds to the graph.
struct DataParallel {
  /// The gradients averaged over the ranks (and micro-batches), for apply_gradients. With
  /// shard_gradients only those of this rank's variables are defined.
  std::vector<optim::GradientAndVariable> gradients{};
  /// In the order they are all-reduced.
  std::vector<GradientBucket> buckets{};
  /// With accumulation_steps > 1: the target of the micro-batches that do not step.
  Value accumulate{};
  /// With accumulation_steps > 1: the target that zeroes the accumulators (part of apply()).
  Value reset{};
  /// With power_sgd: the target that stores each compressed matrix's new Q and error (part
  /// of apply()).
  Value power_sgd_state{};
  /// With shard_optimizer_state: the rank that updates each variable of `gradients` and holds
  /// its slots (the graph is built for this process's rank, `rank`); else empty.
  std::vector<int64_t> owners{};
  /// The gradients are sharded too (shard_gradients: ZeRO stage 2).
  bool gradients_sharded = false;
  /// The rank and world size the graph was built for.
  int64_t rank = 0, world_size = 1;
  /// optimizer.apply_gradients(gradients), and the reset of the accumulators: one target.
  /// With sharded optimizer state, the update of this rank's variables and the gather of the
  /// others'; optimizer.updated() then gives every variable's new value.
  Value apply(optim::Optimizer& optimizer) const;
};

/// The rank (of `world_size`) that owns each of `variables`, balanced by bytes as torch's
/// ZeroRedundancyOptimizer partitions its parameters: the largest first, each to the rank that
/// holds the fewest bytes so far (the lowest such rank on ties). The same on every rank.
std::vector<int64_t> partition_variables(const std::vector<Value>& variables, int64_t world_size);

/// Averages `gradients` (from compute_gradients) over the ranks of the default group, in
/// buckets. At world size 1 the all-reduces are identities: the same graph runs anywhere.
/// Throws kiln::GraphError for an empty list, gradients from several graphs, or bad options.
DataParallel data_parallel(const std::vector<optim::GradientAndVariable>& gradients,
                           const DataParallelOptions& options = {});

/// A target that overwrites every variable of `graph` (as it is now: call it after the
/// optimizer made its slots) with rank `root`'s value, one bucket per dtype; rank-local ones
/// (a sharded optimizer's slots, VariableOptions::rank_local) keep their own. Run it once
/// before training, after any checkpoint restore on rank root, so every rank starts alike.
Value broadcast_variables(Graph& graph, int64_t root = 0);

}  // namespace kiln::distributed
