// Checkpoints that every rank of a job writes together, and that a restarted job resumes from
// (torch.distributed.checkpoint's role, with a commit). Each call is collective: every rank of
// the default group calls it with the same arguments.
//
//   if (auto step = distributed::restore_latest_checkpoint(session, "ckpt")) first = *step;
//   for (int64_t step = first; step < steps; ++step) {
//     session.run(feeds, {}, {train});
//     if ((step + 1) % 100 == 0) distributed::save_checkpoint(session, "ckpt", step + 1);
//   }
//
// Checkpoint `step` is the folder dir/step-<step>: rank 0 writes every persistent variable it
// holds, each other rank only its rank-local ones (a sharded optimizer's slots); rank 0 then
// writes the file COMMITTED, which names the files, once every rank has written its own. A
// folder without it (a job that failed while saving) is never restored. `dir` must be one folder
// that every rank reads and writes: a file system the nodes share.
#pragma once

#include <chrono>
#include <cstdint>
#include <future>
#include <optional>
#include <string>
#include <vector>

#include "kiln/runtime/session.h"

namespace kiln::distributed {

struct CheckpointOptions {
  /// Committed checkpoints left in the folder after a save (the newest; older ones, and folders
  /// of saves that never committed, are removed). At least 1.
  int64_t keep = 2;
  /// How long a rank waits for the others to write their parts, and for rank 0's commit.
  std::chrono::milliseconds timeout = std::chrono::minutes(30);
};

/// Writes checkpoint `step` (>= 0) of every rank's session into `dir` and commits it; returns on
/// every rank once it is committed. Throws kiln::DistributedError on every rank when the ranks
/// pass different steps or any rank cannot write its part (naming the ranks, and the first
/// failure's error; the step is then not committed and the last committed one stays). The
/// ranks meet through the rendezvous store: no collective of the communicator is used. Waits
/// first for this process's save_checkpoint_async still running.
void save_checkpoint(Session& session, const std::string& dir, int64_t step,
                     const CheckpointOptions& options = {});

/// save_checkpoint in a thread of its own (torch.distributed.checkpoint.async_save): the
/// variables this rank writes are copied to host memory now, then training goes on while they
/// are written and committed. get() on the future throws what save_checkpoint would have (its
/// destructor never does); this process's saves run one at a time, in the order asked for.
/// Every rank must keep `dir` and its group until it is done.
std::shared_future<void> save_checkpoint_async(Session& session, const std::string& dir,
                                               int64_t step, const CheckpointOptions& options = {});

/// What a committed checkpoint holds (from its COMMITTED file).
struct CommittedCheckpoint {
  int64_t step = 0;
  int64_t world_size = 1;           ///< of the job that wrote it
  std::vector<std::string> files;   ///< paths, rank 0's first
  std::vector<int64_t> file_ranks;  ///< the rank that wrote each file
};

/// The newest committed checkpoint in `dir` (not collective), or nullopt when there is none (or
/// no folder). Throws kiln::FileError naming the file for a COMMITTED file that is garbled.
std::optional<CommittedCheckpoint> latest_checkpoint(const std::string& dir);

/// Restores every rank's session from the newest committed checkpoint in `dir` (the one rank 0
/// finds) and returns its step; nullopt on every rank when there is none, the sessions
/// unchanged. At the world size that wrote it each rank reads its own file first; at another
/// world size, or unsharded, each variable comes from the first file that holds it. Throws
/// kiln::DistributedError on every rank when any rank cannot restore (naming the ranks, with
/// this rank's own error); no session changes unless every check of its files passed.
std::optional<int64_t> restore_latest_checkpoint(Session& session, const std::string& dir);

}  // namespace kiln::distributed
