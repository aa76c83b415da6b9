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
// job without a restart. With several nodes each node's launcher restarts its own ranks: a
// failure on one node fails the others' ranks too (their peer is gone), so every node restarts
// once per failure and the attempts meet again (the rendezvous tells attempts apart).
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

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
               "                   [--grace SECONDS] [--max-restarts N] PROGRAM [ARGS...]\n",
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
  long nproc = 0, nnodes = 1, node_rank = 0, port = 0, grace = 5;
  std::string addr, job_id;
  char** program = nullptr;  // argv of the program, null-terminated
};

// Starts every rank of this node and supervises them until all have ended. Returns the exit
// code: 0, the first failed rank's (1 for a signal), or 128 + a signal the launcher got (then
// *interrupted is set).
int run_attempt(const Job& job, long restart, bool* interrupted) {
  const long nproc = job.nproc, node_rank = job.node_rank, grace = job.grace;
  const long world = nproc * job.nnodes;
  std::vector<Rank> ranks(static_cast<size_t>(nproc));
  for (long local = 0; local < nproc; ++local) {
    Rank& r = ranks[static_cast<size_t>(local)];
    r.rank = node_rank * nproc + local;
    int out[2], err[2];
    if (::pipe2(out, O_CLOEXEC) != 0 || ::pipe2(err, O_CLOEXEC) != 0) {
      std::perror("kiln-launch: pipe");
      return 1;
    }
    const pid_t pid = ::fork();
    if (pid < 0) {
      std::perror("kiln-launch: fork");
      return 1;
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
      ::setenv("KILN_RESTART_COUNT", std::to_string(restart).c_str(), 1);
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

  int exit_code = 0;
  bool ending = false;
  auto end_deadline = std::chrono::steady_clock::time_point::max();
  auto end_all = [&](int sig) {
    for (Rank& r : ranks)
      if (r.running) ::kill(-r.pid, sig);
  };
  for (;;) {
    if (g_signal && !ending) {  // forward, then wait for them as after a failure
      std::fprintf(stderr, "[kiln-launch] got signal %d; forwarding it to every rank\n",
                   static_cast<int>(g_signal));
      end_all(g_signal);
      exit_code = 128 + g_signal;
      ending = true;
      end_deadline = std::chrono::steady_clock::now() + std::chrono::seconds(grace);
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
        const bool failed = !WIFEXITED(status) || WEXITSTATUS(status) != 0;
        if (failed && !ending) {
          std::fprintf(stderr, "[kiln-launch] rank %ld (pid %d) %s; ending the other ranks\n",
                       r.rank, static_cast<int>(pid), describe(status).c_str());
          exit_code = WIFEXITED(status) ? WEXITSTATUS(status) : 1;
          end_all(SIGTERM);
          ending = true;
          end_deadline = std::chrono::steady_clock::now() + std::chrono::seconds(grace);
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
  *interrupted = g_signal != 0;
  return exit_code;
}

}  // namespace

int main(int argc, char** argv) {
  long nproc = -1, nnodes = 1, node_rank = 0, port = 29500, grace = 5, max_restarts = 0;
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
          "usage: kiln-launch --nproc-per-node N [--nnodes M --node-rank R]\n"
          "                   [--master-addr A] [--master-port P] [--job-id ID]\n"
          "                   [--grace SECONDS] [--max-restarts N] PROGRAM [ARGS...]\n");
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

  Job job{nproc, nnodes, node_rank, port, grace, addr, job_id, argv + i};
  for (long restart = 0;; ++restart) {
    bool interrupted = false;
    const int code = run_attempt(job, restart, &interrupted);
    if (code == 0 || interrupted || restart >= max_restarts) {
      if (code != 0 && !interrupted && max_restarts > 0)
        std::fprintf(stderr, "[kiln-launch] the job failed after %ld restart%s; giving up\n",
                     restart, restart == 1 ? "" : "s");
      return code;
    }
    std::fprintf(stderr, "[kiln-launch] restarting every rank (restart %ld of %ld)\n", restart + 1,
                 max_restarts);
  }
}
