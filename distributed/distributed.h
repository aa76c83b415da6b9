// The entry point of a distributed program: distributed::init() finds the job from the
// environment (torchrun, Slurm, kiln-launch), meets the other ranks, and gives the process its
// rank, world size and communicator. Without any of the variables the program is one process
// (world size 1) and runs unchanged.
#pragma once

#include <chrono>
#include <memory>

#include "kiln/distributed/collectives.h"
#include "kiln/distributed/communicator.h"
#include "kiln/distributed/environment.h"
#include "kiln/distributed/store.h"

namespace kiln::distributed {

struct InitOptions {
  /// How long to wait for the other ranks, and for each collective.
  std::chrono::milliseconds timeout = std::chrono::minutes(5);
  /// Check before each collective that every rank calls the same one (check_collectives):
  /// a clear error in place of a hang or an abort when the ranks' programs differ, for one
  /// small all-gather per collective. The environment variable KILN_CHECK_COLLECTIVES=1
  /// turns it on too (0 or unset: off).
  bool check_collectives = false;
};

/// This process's job: its place, the rendezvous store, a communicator for host tensors.
class Group {
 public:
  int64_t rank() const { return env_.rank; }
  int64_t world_size() const { return env_.world_size; }
  int64_t local_rank() const { return env_.local_rank; }
  const Environment& environment() const { return env_; }
  /// The CPU communicator (Gloo; world size 1: a local one that does nothing).
  Communicator& communicator() { return *communicator_; }
  /// The rendezvous store (nullptr at world size 1).
  Store* store() { return rendezvous_.store.get(); }
  /// How long a collective (or meeting the others) may take before it is an error.
  std::chrono::milliseconds timeout() const { return timeout_; }

 private:
  friend std::shared_ptr<Group> init(const InitOptions&, const EnvironmentReader&);
  Environment env_;
  Rendezvous rendezvous_;
  std::unique_ptr<Communicator> communicator_;
  std::chrono::milliseconds timeout_{0};
};

/// Reads the environment, meets the other ranks and connects the communicator; the group
/// becomes the process's default (what collective ops in graphs use). Throws
/// kiln::DistributedError (a bad environment, a rank that never arrives, an unreachable
/// master) after at most options.timeout.
std::shared_ptr<Group> init(const InitOptions& options = {},
                            const EnvironmentReader& read = process_environment);

/// A communicator of one rank (world size 1): every collective leaves its tensor as it is.
std::unique_ptr<Communicator> make_local_communicator();
/// The process's one-rank communicator (what collectives use without a default group).
Communicator& local_communicator();

}  // namespace kiln::distributed
