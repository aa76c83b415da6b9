// The environment contract of a distributed run: the variables torchrun and Slurm set, read
// into one description of this process's place in the job.
#pragma once

#include <cstdint>
#include <functional>
#include <optional>
#include <string>

namespace kiln::distributed {

/// Where this process is in the job.
struct Environment {
  int64_t rank = 0;              ///< 0 .. world_size - 1
  int64_t world_size = 1;        ///< processes in the job
  int64_t local_rank = 0;        ///< 0 .. local_world_size - 1 on this node (picks the GPU)
  int64_t local_world_size = 1;  ///< processes on this node
  std::string master_addr = "127.0.0.1";  ///< where rank 0's rendezvous listens
  int64_t master_port = 29500;
  /// Who set it: "torchrun" (RANK, WORLD_SIZE, ...; kiln-launch sets the same), "slurm"
  /// (SLURM_PROCID, SLURM_NTASKS, SLURM_LOCALID, ...), or "none" (a single process).
  std::string source = "none";
  /// torchrun (PyTorch 2.x) hosts its own store on MASTER_PORT
  /// (TORCHELASTIC_USE_AGENT_STORE=True): Kiln must not expect to bind that port.
  bool port_taken_by_launcher = false;
  /// The job's identity (TORCHELASTIC_RUN_ID, SLURM_JOB_ID or KILN_JOB_ID; "" if none): the
  /// rendezvous refuses a store of another job.
  std::string job_id{};
  /// How many times the launcher restarted the job's processes after a failure
  /// (KILN_RESTART_COUNT from kiln-launch --max-restarts, TORCHELASTIC_RESTART_COUNT from
  /// torchrun, SLURM_RESTART_COUNT from a requeued Slurm job; 0 if none): a restarted program
  /// resumes from its last checkpoint (distributed::restore_latest_checkpoint). The rendezvous
  /// counts it as part of the job's identity, so a rank left over from an earlier attempt never
  /// joins the new one.
  int64_t restart_count = 0;
};

/// The identity the rendezvous store checks: the job id, and the restart after which the
/// processes started ("job-42", "job-42/restart-2").
std::string rendezvous_id(const Environment& env);

/// Reads a variable: its value, or nullopt when unset (tests pass their own).
using EnvironmentReader = std::function<std::optional<std::string>(const std::string&)>;
/// The process's real environment.
std::optional<std::string> process_environment(const std::string& name);

/// Reads the environment: torchrun's names (RANK, WORLD_SIZE, LOCAL_RANK, LOCAL_WORLD_SIZE,
/// MASTER_ADDR, MASTER_PORT) when RANK or WORLD_SIZE is set, else Slurm's (SLURM_PROCID,
/// SLURM_NTASKS, SLURM_LOCALID, SLURM_NTASKS_PER_NODE or SLURM_TASKS_PER_NODE; the master
/// from MASTER_ADDR or the first host of SLURM_JOB_NODELIST / SLURM_NODELIST), else a single
/// process (world size 1). Under Slurm without MASTER_PORT the port is 20000 + job id % 20000.
/// Throws kiln::DistributedError naming the variable and its value for
/// a value that is not a number, out of range (rank >= world size, a port outside 1..65535)
/// or missing where the others need it.
Environment read_environment(const EnvironmentReader& read = process_environment);

/// The first host of a Slurm node list: "gpu[03-05,07],cpu1" -> "gpu03".
std::string first_slurm_host(const std::string& nodelist);

}  // namespace kiln::distributed
