// The statistics of every rank's batch, for SyncBatchNorm.
#include "kiln/distributed/sync_batch_norm.h"

#include "kiln/distributed/collectives.h"
#include "kiln/ops/array.h"
#include "kiln/ops/math.h"

namespace kiln::distributed {

CombineStatistics statistics_over_ranks(int64_t world_size) {
  return [world_size](const BatchStatistics& local) {
    const int64_t channels = local.mean.shape()[0];
    // One row per rank: [count, mean (C), M2 (C)].
    const Value rows =
        all_gather(concat({reshape(local.count, Shape{1}), local.mean, local.m2}, 0), world_size);
    const Value counts = slice(rows, {0, 0}, {rows.shape()[0], 1});  // [W, 1]
    const Value means = slice(rows, {0, 1}, {rows.shape()[0], 1 + channels});
    const Value m2s = slice(rows, {0, 1 + channels}, {rows.shape()[0], 1 + 2 * channels});
    BatchStatistics all;
    all.count = sum(counts);
    all.mean = sum(counts * means, {0}) / all.count;
    // Each rank's M2 about its own mean, plus its count times its mean's squared distance from
    // the whole batch's.
    all.m2 = sum(m2s + counts * square(means - all.mean), {0});
    return all;
  };
}

}  // namespace kiln::distributed
