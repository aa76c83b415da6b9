// kiln-launch: starts one process per rank of a data-parallel job on this node, with the
// environment torchrun sets, and supervises them.
//
//   kiln-launch --nproc-per-node N [--nnodes M --node-rank R] [--master-addr A]
//               [--master-port P] [--job-id ID] [--grace S] [--max-restarts N]
//               PROGRAM [ARGS...]
//
// Each rank gets RANK, WORLD_SIZE, LOCAL_RANK, LOCAL_WORLD_SIZE, MASTER_ADDR, MASTER_PORT and
// KILN_JOB_ID, and runs in a process group of its own; every line it prints is prefixed with
// "[rank R] " (stdout to stdout, stderr to stderr). SIGINT and SIGTERM are forwarded to every
// rank. When a rank fails (a non-zero exit or a signal), the launcher says which and how, ends
// the others (SIGTERM, then SIGKILL after the grace period, 5 s by default) and exits with the
// failed rank's code (or 1); it never leaves a process behind.
//
// With --max-restarts N (torchrun's option), a failed job is started again, every rank, up to N
// times: each attempt's processes get KILN_RESTART_COUNT (0, 1, ...), so a program resumes from
// its last checkpoint (distributed::restore_latest_checkpoint). A signal to the launcher ends the
// job without a restart.
//
// With several nodes the launchers agree through a store of their own, which node 0's launcher
// hosts on MASTER_PORT + 8 (past the ports the ranks' store may take): every attempt starts on
// all nodes together with the same KILN_RESTART_COUNT (each launcher waits up to
// --rdzv-timeout seconds, 300 by default, for the others); a rank failing on one node ends the
// attempt on every node (the others see it within a fifth of a second, whether or not their
// ranks notice their lost peer), and all decide alike whether to start again. A signal to any
// launcher ends the job on every node, without a restart. Node 0's launcher, which holds the
// store, leaves last.
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <optional>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "kiln/distributed/store.h"
#include "kiln/framework/error.h"

namespace {

volatile sig_atomic_t g_signal = 0;

void on_signal(int sig) {
  g_signal = sig;
}

int usage(const char* why) {
  std::fprintf(stderr,
               "kiln-launch: %s\n"
               "usage: kiln-launch --nproc-per-node N [--nnodes M --node-rank R]\n"
               "                   [--master-addr A] [--master-port P] [--job-id ID]\n"
               "                   [--grace SECONDS] [--max-restarts N] [--rdzv-timeout SECONDS]\n"
               "                   PROGRAM [ARGS...]\n",
               why);
  return 2;
}

bool parse_int(const char* text, long low, long high, long* out) {
  char* end = nullptr;
  errno = 0;
  const long v = std::strtol(text, &end, 10);
  if (errno || end == text || *end || v < low || v > high) return false;
  *out = v;
  return true;
}

struct Rank {
  long rank = 0;
  pid_t pid = -1;
  int out = -1, err = -1;  // read ends of its stdout and stderr pipes
  std::string out_line, err_line;
  bool running = false;
};

// Writes complete lines of `buffer` to `fd` with the rank's prefix; keeps the partial tail.
void emit_lines(int fd, const std::string& prefix, std::string& buffer, bool flush_all) {
  size_t start = 0;
  for (size_t nl; (nl = buffer.find('\n', start)) != std::string::npos; start = nl + 1) {
    const std::string line = prefix + buffer.substr(start, nl - start + 1);
    if (::write(fd, line.data(), line.size()) < 0) break;
  }
  buffer.erase(0, start);
  if (flush_all && !buffer.empty()) {
    const std::string line = prefix + buffer + "\n";
    if (::write(fd, line.data(), line.size()) < 0) return;
    buffer.clear();
  }
}

std::string describe(int status) {
  if (WIFEXITED(status)) return "exited with status " + std::to_string(WEXITSTATUS(status));
  if (WIFSIGNALED(status))
    return std::string("was killed by signal ") + std::to_string(WTERMSIG(status)) + " (" +
           strsignal(WTERMSIG(status)) + ")";
  return "stopped";
}

// What one attempt of the job needs.
struct Job {
  long nproc = 0, nnodes = 1, node_rank = 0, port = 0, grace = 5, rdzv_timeout = 300;
  std::string addr, job_id;
  char** program = nullptr;  // argv of the program, null-terminated
};

// How an attempt ended on some node: the exit code (128 + a signal for an interrupted
// launcher), what happened, and whether the job must stop (no restart).
struct Failure {
  int code = 1;
  std::string what;
  bool stop = false;
};

// The launchers of a job on several nodes, meeting through a store that node 0's launcher
// hosts. Keys per attempt: "<attempt>/ready/<node>" (its ranks start), "<attempt>/failed" (the
// first failure seen: "<code> <stop> <what>"), "<attempt>/done/<node>" (its ranks all
// succeeded), "<attempt>/over/<node>" (it is leaving). Store errors (a launcher gone) throw
// kiln::DistributedError.
class Peers {
 public:
  explicit Peers(const Job& job) : job_(job) {
    const int port = static_cast<int>(job.port) + kiln::distributed::kStorePortCandidates;
    const std::string id = "kiln-launch/" + (job.job_id.empty() ? "-" : job.job_id);
    if (job.node_rank == 0)
      server_ = std::make_unique<kiln::distributed::StoreServer>(port, id, job.nnodes);
    store_ = std::make_unique<kiln::distributed::Store>(job.addr, port, id, job.nnodes,
                                                        std::chrono::seconds(job.rdzv_timeout));
  }

  // Waits until every node's launcher has reached `attempt`; false when the launcher got a
  // signal meanwhile. Throws kiln::DistributedError naming the nodes that never came.
  bool meet(long attempt) {
    store_->set(key(attempt, "ready/" + std::to_string(job_.node_rank)), "1");
    const std::vector<std::string> ready = every_node(attempt, "ready");
    const auto deadline =
        std::chrono::steady_clock::now() + std::chrono::seconds(job_.rdzv_timeout);
    for (;;) {
      const std::vector<bool> set = store_->check(ready);
      std::string missing;
      for (size_t n = 0; n < set.size(); ++n)
        if (!set[n]) missing += (missing.empty() ? "" : ", ") + std::to_string(n);
      if (missing.empty()) return true;
      if (g_signal) return false;
      if (std::chrono::steady_clock::now() >= deadline)
        throw kiln::DistributedError("the launchers of node(s) " + missing +
                                     " never reached attempt " + std::to_string(attempt) +
                                     " within " + std::to_string(job_.rdzv_timeout) +
                                     " s (--rdzv-timeout; --nnodes " + std::to_string(job_.nnodes) +
                                     ", store " + store_->address() + ")");
      std::this_thread::sleep_for(std::chrono::milliseconds(100));
    }
  }
  // Tells the other nodes that `attempt` failed here (the first report stands).
  void report(long attempt, const Failure& f) {
    if (store_->add(key(attempt, "failures"), 1) == 1)
      store_->set(key(attempt, "failed"),
                  std::to_string(f.code) + " " + (f.stop ? "1" : "0") + " " + f.what);
  }
  // The failure some node reported for `attempt`, if any yet.
  std::optional<Failure> failure(long attempt) {
    const std::optional<std::string> v = store_->try_get(key(attempt, "failed"));
    if (!v) return std::nullopt;
    std::istringstream in(*v);
    Failure f;
    int stop = 0;
    in >> f.code >> stop;
    f.stop = stop != 0;
    std::getline(in >> std::ws, f.what);
    return f;
  }
  // After this node's ranks all succeeded: waits until every node's have, or one has failed.
  std::optional<Failure> outcome(long attempt) {
    store_->set(key(attempt, "done/" + std::to_string(job_.node_rank)), "1");
    const std::vector<std::string> done = every_node(attempt, "done");
    for (;;) {
      if (std::optional<Failure> f = failure(attempt)) return f;
      if (g_signal) {
        const Failure f = interrupted();
        report(attempt, f);
        return f;
      }
      bool all = true;
      for (bool set : store_->check(done)) all = all && set;
      if (all) return std::nullopt;
      std::this_thread::sleep_for(std::chrono::milliseconds(100));
    }
  }
  // Says this node is leaving after `attempt`; node 0 (the store's host) waits a while for the
  // others to say so too, so that none loses the store while it still reads it.
  void leave(long attempt) {
    store_->set(key(attempt, "over/" + std::to_string(job_.node_rank)), "1");
    if (job_.node_rank != 0) return;
    try {
      store_->wait(every_node(attempt, "over"), std::chrono::seconds(job_.grace + 30));
    } catch (const kiln::Error&) {
      // A node that went away without a word: nothing more to tell it.
    }
  }

 private:
  Failure interrupted() const {
    return {128 + static_cast<int>(g_signal),
            "node " + std::to_string(job_.node_rank) + "'s launcher got signal " +
                std::to_string(static_cast<int>(g_signal)),
            true};
  }
  static std::string key(long attempt, const std::string& what) {
    return std::to_string(attempt) + "/" + what;
  }
  std::vector<std::string> every_node(long attempt, const std::string& what) const {
    std::vector<std::string> keys;
    for (long n = 0; n < job_.nnodes; ++n)
      keys.push_back(key(attempt, what + "/" + std::to_string(n)));
    return keys;
  }

  const Job& job_;
  std::unique_ptr<kiln::distributed::StoreServer> server_;
  std::unique_ptr<kiln::distributed::Store> store_;
};

// Starts every rank of this node for `attempt` and supervises them until all have ended.
// Returns nullopt when every rank succeeded, else how the attempt failed: a rank of this node
// (its exit code, 1 for a signal), a signal to the launcher (128 + it; the job stops), or, with
// `peers`, a failure another node reported (this node's ranks are ended then too).
std::optional<Failure> run_attempt(const Job& job, long attempt, Peers* peers) {
  const long nproc = job.nproc, node_rank = job.node_rank, grace = job.grace;
  const long world = nproc * job.nnodes;
  std::vector<Rank> ranks(static_cast<size_t>(nproc));
  for (long local = 0; local < nproc; ++local) {
    Rank& r = ranks[static_cast<size_t>(local)];
    r.rank = node_rank * nproc + local;
    int out[2], err[2];
    if (::pipe2(out, O_CLOEXEC) != 0 || ::pipe2(err, O_CLOEXEC) != 0) {
      std::perror("kiln-launch: pipe");
      return Failure{1, "cannot make a pipe", true};
    }
    const pid_t pid = ::fork();
    if (pid < 0) {
      std::perror("kiln-launch: fork");
      return Failure{1, "cannot fork", true};
    }
    if (pid == 0) {
      ::setpgid(0, 0);  // its own group: the launcher ends it and everything it started
      ::dup2(out[1], STDOUT_FILENO);
      ::dup2(err[1], STDERR_FILENO);
      ::setenv("RANK", std::to_string(r.rank).c_str(), 1);
      ::setenv("WORLD_SIZE", std::to_string(world).c_str(), 1);
      ::setenv("LOCAL_RANK", std::to_string(local).c_str(), 1);
      ::setenv("LOCAL_WORLD_SIZE", std::to_string(nproc).c_str(), 1);
      ::setenv("MASTER_ADDR", job.addr.c_str(), 1);
      ::setenv("MASTER_PORT", std::to_string(job.port).c_str(), 1);
      ::setenv("KILN_RESTART_COUNT", std::to_string(attempt).c_str(), 1);
      if (!job.job_id.empty()) ::setenv("KILN_JOB_ID", job.job_id.c_str(), 1);
      ::execvp(job.program[0], job.program);
      std::fprintf(stderr, "kiln-launch: cannot run '%s': %s\n", job.program[0],
                   std::strerror(errno));
      std::_Exit(127);
    }
    ::setpgid(pid, pid);  // also here, so no signal can race the child's own call
    ::close(out[1]);
    ::close(err[1]);
    r.pid = pid;
    r.out = out[0];
    r.err = err[0];
    r.running = true;
  }

  std::optional<Failure> failed;
  bool ending = false;
  auto end_deadline = std::chrono::steady_clock::time_point::max();
  auto next_look = std::chrono::steady_clock::now();
  auto end_all = [&](int sig) {
    for (Rank& r : ranks)
      if (r.running) ::kill(-r.pid, sig);
  };
  // Ends this node's ranks after `f` (SIGTERM, then SIGKILL after the grace period); tells the
  // other nodes when it happened here.
  auto fail = [&](Failure f, bool here, int sig) {
    failed = std::move(f);
    end_all(sig);
    ending = true;
    end_deadline = std::chrono::steady_clock::now() + std::chrono::seconds(grace);
    if (!here || peers == nullptr) return;
    try {
      peers->report(attempt, *failed);
    } catch (const kiln::Error& e) {
      std::fprintf(stderr, "[kiln-launch] cannot tell the other nodes: %s\n", e.what());
    }
  };
  const std::string node = "node " + std::to_string(node_rank) + ": ";
  for (;;) {
    if (g_signal && !ending) {  // forward, then wait for them as after a failure
      std::fprintf(stderr, "[kiln-launch] got signal %d; forwarding it to every rank\n",
                   static_cast<int>(g_signal));
      fail({128 + static_cast<int>(g_signal),
            node + "the launcher got signal " + std::to_string(static_cast<int>(g_signal)), true},
           true, g_signal);
    }
    // Another node's failure, looked for five times a second.
    if (peers != nullptr && !ending && std::chrono::steady_clock::now() >= next_look) {
      next_look = std::chrono::steady_clock::now() + std::chrono::milliseconds(200);
      try {
        if (std::optional<Failure> f = peers->failure(attempt)) {
          std::fprintf(
              stderr,
              "[kiln-launch] attempt %ld failed on another node (%s); ending this node's ranks\n",
              attempt, f->what.c_str());
          fail(*f, false, SIGTERM);
        }
      } catch (const kiln::Error& e) {
        std::fprintf(
            stderr,
            "[kiln-launch] lost the other nodes' launchers (%s); ending this node's ranks\n",
            e.what());
        fail({1, "the launchers' store is gone", true}, false, SIGTERM);
      }
    }
    // Output.
    std::vector<pollfd> fds;
    for (const Rank& r : ranks) {
      if (r.out >= 0) fds.push_back({r.out, POLLIN, 0});
      if (r.err >= 0) fds.push_back({r.err, POLLIN, 0});
    }
    if (!fds.empty()) ::poll(fds.data(), fds.size(), 100);
    for (Rank& r : ranks) {
      for (int* fd : {&r.out, &r.err}) {
        if (*fd < 0) continue;
        pollfd p{*fd, POLLIN, 0};
        if (::poll(&p, 1, 0) <= 0) continue;
        char buffer[65536];
        const ssize_t n = ::read(*fd, buffer, sizeof(buffer));
        std::string& line = fd == &r.out ? r.out_line : r.err_line;
        const int target = fd == &r.out ? STDOUT_FILENO : STDERR_FILENO;
        const std::string prefix = "[rank " + std::to_string(r.rank) + "] ";
        if (n > 0) {
          line.append(buffer, static_cast<size_t>(n));
          emit_lines(target, prefix, line, false);
        } else if (n == 0 || (errno != EINTR && errno != EAGAIN)) {
          emit_lines(target, prefix, line, true);
          ::close(*fd);
          *fd = -1;
        }
      }
    }
    // Exits.
    for (int status = 0;;) {
      const pid_t pid = ::waitpid(-1, &status, WNOHANG);
      if (pid <= 0) break;
      for (Rank& r : ranks) {
        if (r.pid != pid) continue;
        r.running = false;
        const bool failed_here = !WIFEXITED(status) || WEXITSTATUS(status) != 0;
        if (failed_here && !ending) {
          const std::string what = "rank " + std::to_string(r.rank) + " (pid " +
                                   std::to_string(pid) + ") " + describe(status);
          std::fprintf(stderr, "[kiln-launch] %s; ending the other ranks\n", what.c_str());
          fail({WIFEXITED(status) ? WEXITSTATUS(status) : 1, node + what, false}, true, SIGTERM);
        }
      }
    }
    bool any_running = false, any_open = false;
    for (const Rank& r : ranks) any_running |= r.running, any_open |= r.out >= 0 || r.err >= 0;
    if (!any_running) {
      // A rank's process group may outlive it (a child it started): end it too.
      for (const Rank& r : ranks) ::kill(-r.pid, SIGKILL);
      if (!any_open) break;
    }
    if (ending && std::chrono::steady_clock::now() >= end_deadline) {
      end_all(SIGKILL);
      end_deadline = std::chrono::steady_clock::time_point::max();
    }
  }
  return failed;
}

}  // namespace

int main(int argc, char** argv) {
  long nproc = -1, nnodes = 1, node_rank = 0, port = 29500, grace = 5, max_restarts = 0,
       rdzv_timeout = 300;
  std::string addr = "127.0.0.1", job_id;
  int i = 1;
  for (; i < argc; ++i) {
    const std::string a = argv[i];
    if (a.rfind("--", 0) != 0) break;
    if (a == "--help" || a == "-h") {
      std::printf(
          "kiln-launch: starts PROGRAM once per process of a data-parallel job (torchrun's\n"
          "role), with RANK, WORLD_SIZE, LOCAL_RANK, LOCAL_WORLD_SIZE, MASTER_ADDR,\n"
          "MASTER_PORT and KILN_JOB_ID set; prefixes each line of output with [rank R]; stops\n"
          "every process (SIGTERM, then SIGKILL after --grace seconds) when one fails; with\n"
          "--max-restarts N starts them all again up to N times (KILN_RESTART_COUNT counts).\n"
          "With --nnodes M the nodes' launchers meet on MASTER_PORT + 8 of node 0 (each waits\n"
          "--rdzv-timeout seconds for the others, 300 by default), start every attempt together\n"
          "and end it together when a rank fails anywhere.\n"
          "usage: kiln-launch --nproc-per-node N [--nnodes M --node-rank R]\n"
          "                   [--master-addr A] [--master-port P] [--job-id ID]\n"
          "                   [--grace SECONDS] [--max-restarts N] [--rdzv-timeout SECONDS]\n"
          "                   PROGRAM [ARGS...]\n");
      return 0;
    }
    if (i + 1 >= argc) return usage(("missing value for " + a).c_str());
    const char* v = argv[++i];
    if (a == "--nproc-per-node") {
      if (!parse_int(v, 1, 4096, &nproc)) return usage("--nproc-per-node must be in 1..4096");
    } else if (a == "--nnodes") {
      if (!parse_int(v, 1, 1 << 20, &nnodes)) return usage("--nnodes must be >= 1");
    } else if (a == "--node-rank") {
      if (!parse_int(v, 0, 1 << 20, &node_rank)) return usage("--node-rank must be >= 0");
    } else if (a == "--master-port") {
      if (!parse_int(v, 1, 65535, &port)) return usage("--master-port must be in 1..65535");
    } else if (a == "--grace") {
      if (!parse_int(v, 0, 3600, &grace)) return usage("--grace must be in 0..3600 seconds");
    } else if (a == "--max-restarts") {
      if (!parse_int(v, 0, 1000000, &max_restarts))
        return usage("--max-restarts must be in 0..1000000");
    } else if (a == "--rdzv-timeout") {
      if (!parse_int(v, 1, 86400, &rdzv_timeout))
        return usage("--rdzv-timeout must be in 1..86400 seconds");
    } else if (a == "--master-addr") {
      addr = v;
    } else if (a == "--job-id") {
      job_id = v;
    } else {
      return usage(("unknown option " + a).c_str());
    }
  }
  if (nproc < 0) return usage("--nproc-per-node is required");
  if (node_rank >= nnodes) return usage("--node-rank must be below --nnodes");
  if (i >= argc) return usage("no program to run");
  // One job id for the ranks of this node; with several nodes it must be given (or come from
  // the environment) so that every node agrees.
  if (job_id.empty()) {
    if (const char* env = std::getenv("KILN_JOB_ID")) job_id = env;
  }
  if (job_id.empty() && nnodes == 1)
    job_id = "kiln-launch-" + std::to_string(::getpid()) + "-" +
             std::to_string(std::chrono::system_clock::now().time_since_epoch().count());

  struct sigaction action {};
  action.sa_handler = on_signal;
  sigemptyset(&action.sa_mask);
  ::sigaction(SIGINT, &action, nullptr);
  ::sigaction(SIGTERM, &action, nullptr);
  ::signal(SIGPIPE, SIG_IGN);

  Job job{nproc, nnodes, node_rank, port, grace, rdzv_timeout, addr, job_id, argv + i};
  std::unique_ptr<Peers> peers;
  if (nnodes > 1) {
    try {
      peers = std::make_unique<Peers>(job);
    } catch (const kiln::Error& e) {
      std::fprintf(stderr, "[kiln-launch] cannot meet the other nodes' launchers: %s\n", e.what());
      return 1;
    }
  }
  for (long attempt = 0;; ++attempt) {
    std::optional<Failure> failed;
    try {
      if (peers && !peers->meet(attempt)) return 128 + static_cast<int>(g_signal);
    } catch (const kiln::Error& e) {
      std::fprintf(stderr, "[kiln-launch] %s\n", e.what());
      return 1;
    }
    failed = run_attempt(job, attempt, peers.get());
    if (!failed && peers) {
      try {
        failed = peers->outcome(attempt);
        if (failed)
          std::fprintf(stderr, "[kiln-launch] attempt %ld failed (%s)\n", attempt,
                       failed->what.c_str());
      } catch (const kiln::Error& e) {
        std::fprintf(stderr, "[kiln-launch] lost the other nodes' launchers: %s\n", e.what());
        failed = Failure{1, "the launchers' store is gone", true};
      }
    }
    if (!failed || failed->stop || attempt >= max_restarts) {
      if (failed && !failed->stop && max_restarts > 0)
        std::fprintf(stderr, "[kiln-launch] the job failed after %ld restart%s; giving up\n",
                     attempt, attempt == 1 ? "" : "s");
      if (peers) {
        try {
          peers->leave(attempt);
        } catch (const kiln::Error&) {
          // The others are gone already.
        }
      }
      return failed ? failed->code : 0;
    }
    std::fprintf(stderr, "[kiln-launch] restarting every rank (restart %ld of %ld)\n", attempt + 1,
                 max_restarts);
  }
}
