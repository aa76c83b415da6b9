#include "kiln/distributed/environment.h"

#include <climits>
#include <cstdlib>

#include "kiln/framework/error.h"

namespace kiln::distributed {

namespace {

// A whole decimal number in [low, high], or an error naming the variable.
int64_t parse_integer(const std::string& name, const std::string& text, int64_t low, int64_t high) {
  size_t used = 0;
  int64_t value = 0;
  bool ok = !text.empty();
  try {
    value = std::stoll(text, &used);
  } catch (const std::exception&) {
    ok = false;
  }
  KILN_CHECK(ok && used == text.size(), DistributedError, "[distributed] ", name, "='", text,
             "' is not a whole number");
  KILN_CHECK(value >= low && value <= high, DistributedError, "[distributed] ", name, "=", value,
             " is outside [", low, ", ", high, "]");
  return value;
}

int64_t required(const EnvironmentReader& read, const std::string& name, const std::string& why,
                 int64_t low, int64_t high) {
  auto text = read(name);
  KILN_CHECK(text.has_value(), DistributedError, "[distributed] ", name, " is not set (", why, ")");
  return parse_integer(name, *text, low, high);
}

int64_t optional_integer(const EnvironmentReader& read, const std::string& name, int64_t fallback,
                         int64_t low, int64_t high) {
  auto text = read(name);
  return text ? parse_integer(name, *text, low, high) : fallback;
}

constexpr int64_t kMaxWorld = int64_t{1} << 24;

}  // namespace

std::optional<std::string> process_environment(const std::string& name) {
  const char* value = std::getenv(name.c_str());
  if (!value) return std::nullopt;
  return std::string(value);
}

std::string first_slurm_host(const std::string& nodelist) {
  // "prefix[a-b,c],other": the first entry, with the first number of its range.
  std::string first;
  int depth = 0;
  for (char c : nodelist) {
    if (c == '[') ++depth;
    if (c == ']') --depth;
    if (c == ',' && depth == 0) break;
    first += c;
  }
  const size_t open = first.find('[');
  if (open == std::string::npos) return first;
  std::string range = first.substr(open + 1);
  const size_t end = range.find_first_of("-,]");
  return first.substr(0, open) + range.substr(0, end);
}

Environment read_environment(const EnvironmentReader& read) {
  Environment env;
  // Also of one process: a program its launcher or scheduler started again.
  for (const char* name :
       {"KILN_RESTART_COUNT", "TORCHELASTIC_RESTART_COUNT", "SLURM_RESTART_COUNT"})
    if (read(name)) {
      env.restart_count = optional_integer(read, name, 0, 0, INT64_MAX);
      break;
    }
  const bool torchrun = read("RANK").has_value() || read("WORLD_SIZE").has_value();
  const bool slurm = !torchrun && read("SLURM_PROCID").has_value();
  if (!torchrun && !slurm) return env;  // one process
  if (torchrun) {
    env.source = "torchrun";
    const std::string why = "torchrun and kiln-launch set RANK and WORLD_SIZE together";
    env.world_size = required(read, "WORLD_SIZE", why, 1, kMaxWorld);
    env.rank = required(read, "RANK", why, 0, env.world_size - 1);
    env.local_world_size =
        optional_integer(read, "LOCAL_WORLD_SIZE", env.world_size, 1, env.world_size);
    env.local_rank = optional_integer(read, "LOCAL_RANK", env.rank % env.local_world_size, 0,
                                      env.local_world_size - 1);
    env.port_taken_by_launcher = read("TORCHELASTIC_USE_AGENT_STORE").value_or("") == "True";
  } else {
    env.source = "slurm";
    const std::string why = "srun sets SLURM_PROCID and SLURM_NTASKS together";
    env.world_size = required(read, "SLURM_NTASKS", why, 1, kMaxWorld);
    env.rank = required(read, "SLURM_PROCID", why, 0, env.world_size - 1);
    // SLURM_NTASKS_PER_NODE is set with --ntasks-per-node; SLURM_TASKS_PER_NODE is "4" or
    // "4(x2)" (4 tasks on each of 2 nodes): its leading number is this layout's count.
    auto per_node = read("SLURM_NTASKS_PER_NODE");
    if (!per_node) {
      if (auto tasks = read("SLURM_TASKS_PER_NODE")) {
        const size_t digits = tasks->find_first_not_of("0123456789");
        per_node = tasks->substr(0, digits);
      }
    }
    env.local_world_size =
        per_node ? parse_integer("SLURM_NTASKS_PER_NODE", *per_node, 1, env.world_size) : 1;
    env.local_rank = optional_integer(read, "SLURM_LOCALID", env.rank % env.local_world_size, 0,
                                      env.local_world_size - 1);
    if (!read("MASTER_ADDR")) {
      auto nodes = read("SLURM_JOB_NODELIST");
      if (!nodes) nodes = read("SLURM_NODELIST");
      if (nodes && !nodes->empty()) env.master_addr = first_slurm_host(*nodes);
    }
  }
  if (auto addr = read("MASTER_ADDR")) {
    KILN_CHECK(!addr->empty(), DistributedError, "[distributed] MASTER_ADDR is empty");
    env.master_addr = *addr;
  }
  // Without MASTER_PORT a Slurm job picks one from its job id, so two jobs sharing a node do
  // not meet at one port (each rank computes the same one).
  int64_t port = env.master_port;
  if (slurm)
    if (auto job = read("SLURM_JOB_ID"))
      port = 20000 + parse_integer("SLURM_JOB_ID", *job, 0, INT64_MAX) % 20000;
  env.master_port = optional_integer(read, "MASTER_PORT", port, 1, 65535);
  // One job's identity, so a rank never joins another job's rendezvous on the same port.
  for (const char* name : {"TORCHELASTIC_RUN_ID", "SLURM_JOB_ID", "KILN_JOB_ID"})
    if (auto id = read(name)) {
      env.job_id = *id;
      break;
    }
  return env;
}

std::string rendezvous_id(const Environment& env) {
  return env.restart_count == 0 ? env.job_id
                                : env.job_id + "/restart-" + std::to_string(env.restart_count);
}

}  // namespace kiln::distributed
