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

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "kiln/runtime/session.h"

namespace kiln::distributed {

struct CheckpointOptions {
  /// Committed checkpoints left in the folder after a save (the newest; older ones, and folders
  /// of saves that never committed, are removed). At least 1.
  int64_t keep = 2;
};

/// Writes checkpoint `step` (>= 0) of every rank's session into `dir` and commits it; returns on
/// every rank once it is committed. Throws kiln::DistributedError on every rank when the ranks
/// pass different steps or any rank cannot write its part (naming the ranks; the step is then
/// not committed and the last committed one stays), kiln::FileError for a bad folder.
void save_checkpoint(Session& session, const std::string& dir, int64_t step,
                     const CheckpointOptions& options = {});

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
