// Batch norm over the batches of every rank of a data-parallel job (PyTorch's SyncBatchNorm):
// with small per-rank batches, each rank's own statistics are too noisy to train by.
#pragma once

#include <optional>
#include <string>

#include "kiln/ops/layers.h"

namespace kiln::distributed {

/// batch_norm's `combine` for the default group: each rank's count, mean and M2 per channel go
/// to every rank (one all_gather of 2C + 1 values per call; its gradient is a reduce_scatter),
/// and every rank combines them alike (Chan et al.'s parallel variance), so ranks may hold
/// batches of different sizes. `world_size` 0: the default group's (part of the graph).
CombineStatistics statistics_over_ranks(int64_t world_size = 0);

/// Batch norm of x [N, C, ...] whose training statistics are those of every rank's batch
/// together (PyTorch's SyncBatchNorm, for inputs of rank 2 to 5), and whose gradients flow back
/// through them to every rank. Evaluation, and its variables and their names, are
/// BatchNorm's: a checkpoint or state_dict of either loads into the other. At world size 1 it
/// normalizes as BatchNorm does.
class SyncBatchNorm : public nn::BatchNorm {
 public:
  SyncBatchNorm(Graph& graph, const std::string& name, int64_t channels,
                std::optional<double> momentum = 0.1, double eps = 1e-5, bool affine = true,
                bool track_running_stats = true, int64_t world_size = 0)
      : nn::BatchNorm(graph, name, "SyncBatchNorm", {2, 3, 4, 5}, channels, momentum, eps, affine,
                      track_running_stats) {
    combine_statistics(statistics_over_ranks(world_size));
  }
};

}  // namespace kiln::distributed
