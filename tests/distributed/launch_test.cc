// kiln-launch (CTest label `distributed`): the environment each rank gets, prefixed output,
// a failing rank ending the others, forwarded signals, no process left behind, restarts.
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <thread>

#include "test_util.h"

namespace kiln {
namespace {

struct Result {
  int code = -1;
  std::string out, err;
  double seconds = 0;
};

std::string slurp(const std::string& path) {
  std::ifstream in(path);
  std::stringstream s;
  s << in.rdbuf();
  return s.str();
}

// Runs kiln-launch with `args` through the shell; `tag` tells apart the files of launchers that
// run at once.
Result launch(const std::string& args, const std::string& tag = "") {
  // Files of this process (CTest runs the tests of this binary as parallel processes).
  const std::string base = testing::tmp(str("launch.", ::getpid(), tag));
  const std::string out = base + ".out", err = base + ".err";
  const auto start = std::chrono::steady_clock::now();
  const int status = std::system(str(KILN_LAUNCH_TOOL, " ", args, " >", out, " 2>", err).c_str());
  Result r;
  r.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  r.code = WIFEXITED(status) ? WEXITSTATUS(status) : -1;
  r.out = slurp(out);
  r.err = slurp(err);
  return r;
}

// Runs the launchers of nodes 0 .. nnodes - 1 at once, each with `args` after its --nnodes and
// --node-rank; returns their results in node order.
std::vector<Result> launch_nodes(int nnodes, const std::string& args) {
  std::vector<Result> results(static_cast<size_t>(nnodes));
  std::vector<std::thread> threads;
  for (int n = 0; n < nnodes; ++n)
    threads.emplace_back([&, n] {
      results[static_cast<size_t>(n)] =
          launch(str("--nnodes ", nnodes, " --node-rank ", n, " ", args), str(".node", n));
    });
  for (std::thread& t : threads) t.join();
  return results;
}

bool alive(pid_t pid) {
  return ::kill(pid, 0) == 0;
}

TEST(Launch, EveryRankGetsTheEnvironmentAndItsOutputIsPrefixed) {
  const Result r = launch(
      "--nproc-per-node 2 --master-port 1234 sh -c "
      "'echo \"$RANK $WORLD_SIZE $LOCAL_RANK $LOCAL_WORLD_SIZE $MASTER_ADDR $MASTER_PORT\"; "
      "test -n \"$KILN_JOB_ID\" && printf partial >&2'");
  EXPECT_EQ(r.code, 0) << r.err;
  EXPECT_NE(r.out.find("[rank 0] 0 2 0 2 127.0.0.1 1234\n"), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("[rank 1] 1 2 1 2 127.0.0.1 1234\n"), std::string::npos) << r.out;
  // A last line without a newline is still printed, prefixed, on the right stream.
  EXPECT_NE(r.err.find("[rank 1] partial\n"), std::string::npos) << r.err;
  const std::vector<Result> nodes = launch_nodes(
      3, "--nproc-per-node 2 --master-port 29820 --job-id j sh -c 'echo $RANK/$WORLD_SIZE'");
  for (const Result& node : nodes) EXPECT_EQ(node.code, 0) << node.err;
  EXPECT_NE(nodes[2].out.find("[rank 4] 4/6"), std::string::npos) << nodes[2].out;
  EXPECT_NE(nodes[2].out.find("[rank 5] 5/6"), std::string::npos) << nodes[2].out;
  EXPECT_NE(nodes[0].out.find("[rank 0] 0/6"), std::string::npos) << nodes[0].out;
}

// With several nodes the launchers start each attempt together and end it together: a rank
// failing on node 1 ends node 0's ranks (which would sleep a minute, never noticing), and both
// nodes start attempt 1 with the same KILN_RESTART_COUNT.
TEST(Launch, NodesStartEveryAttemptTogetherAndEndItTogether) {
  const std::string script =
      "sh -c 'echo \"attempt $KILN_RESTART_COUNT\"; if [ $KILN_RESTART_COUNT = 0 ]; then "
      "if [ $RANK = 3 ]; then sleep 1; exit 4; fi; exec sleep 60; fi'";
  const std::vector<Result> nodes = launch_nodes(
      2, "--nproc-per-node 2 --master-port 29830 --job-id restarts --grace 2 --max-restarts 1 " +
             script);
  for (const Result& node : nodes) {
    EXPECT_EQ(node.code, 0) << node.err;
    EXPECT_LT(node.seconds, 40) << "a node waited for its ranks' own end";
    EXPECT_NE(node.err.find("restarting every rank (restart 1 of 1)"), std::string::npos)
        << node.err;
  }
  for (const char* line : {"[rank 0] attempt 1\n", "[rank 1] attempt 1\n"})
    EXPECT_NE(nodes[0].out.find(line), std::string::npos) << nodes[0].out;
  for (const char* line : {"[rank 2] attempt 1\n", "[rank 3] attempt 1\n"})
    EXPECT_NE(nodes[1].out.find(line), std::string::npos) << nodes[1].out;
  EXPECT_NE(nodes[0].err.find("attempt 0 failed on another node (node 1: rank 3 (pid "),
            std::string::npos)
      << nodes[0].err;
  EXPECT_NE(nodes[0].err.find(") exited with status 4); ending this node's ranks"),
            std::string::npos)
      << nodes[0].err;

  // Without restarts the failure ends every node's job with the failed rank's code.
  const std::vector<Result> once =
      launch_nodes(2, "--nproc-per-node 2 --master-port 29830 --job-id once --grace 2 " + script);
  for (const Result& node : once) {
    EXPECT_EQ(node.code, 4) << node.err;
    EXPECT_LT(node.seconds, 40);
    EXPECT_EQ(node.err.find("restarting"), std::string::npos) << node.err;
  }
}

// A node whose peers never come says which are missing, within --rdzv-timeout.
TEST(Launch, ANodeAloneSaysWhichNodesNeverCame) {
  const Result first = launch(
      "--nproc-per-node 1 --nnodes 3 --node-rank 0 --master-port 29840 --job-id alone "
      "--rdzv-timeout 2 true");
  EXPECT_EQ(first.code, 1);
  EXPECT_NE(first.err.find("the launchers of node(s) 1, 2 never reached attempt 0 within 2 s"),
            std::string::npos)
      << first.err;
  EXPECT_LT(first.seconds, 30);
  const Result other = launch(
      "--nproc-per-node 1 --nnodes 2 --node-rank 1 --master-port 29840 --job-id alone "
      "--rdzv-timeout 2 true");
  EXPECT_EQ(other.code, 1);
  EXPECT_NE(other.err.find("cannot meet the other nodes' launchers"), std::string::npos)
      << other.err;
  EXPECT_LT(other.seconds, 30);
}

TEST(Launch, AFailingRankEndsTheOthersAndIsNamed) {
  const std::string pidfile = testing::tmp("launch_sleeper.pid");
  std::remove(pidfile.c_str());
  const Result r = launch(
      // Rank 1 fails once rank 0 has written its pid (however slowly a loaded machine starts it).
      str("--nproc-per-node 3 --grace 2 sh -c 'if [ $RANK = 1 ]; then until [ -s ", pidfile,
          " ]; do sleep 0.05; done; exit 3; fi; if [ $RANK = 0 ]; then echo $$ > ", pidfile,
          ".tmp && mv ", pidfile, ".tmp ", pidfile, "; fi; exec sleep 60'"));
  EXPECT_EQ(r.code, 3);
  EXPECT_NE(r.err.find("[kiln-launch] rank 1"), std::string::npos) << r.err;
  EXPECT_NE(r.err.find("exited with status 3; ending the other ranks"), std::string::npos);
  EXPECT_LT(r.seconds, 30);
  const pid_t sleeper = std::stoi(slurp(pidfile));
  EXPECT_FALSE(alive(sleeper)) << "rank 0 was left running";

  const Result crash =
      launch("--nproc-per-node 2 sh -c 'if [ $RANK = 0 ]; then kill -SEGV $$; fi; sleep 60'");
  EXPECT_EQ(crash.code, 1);
  EXPECT_NE(crash.err.find("rank 0"), std::string::npos) << crash.err;
  EXPECT_NE(crash.err.find("killed by signal 11"), std::string::npos) << crash.err;
  EXPECT_LT(crash.seconds, 30);
}

TEST(Launch, SignalsAreForwardedAndNothingIsLeft) {
  const std::string pidfile = testing::tmp("launch_signal.pid");
  std::remove(pidfile.c_str());
  const pid_t launcher = ::fork();
  if (launcher == 0) {
    const std::string script = str("echo $$ >> ", pidfile, "; exec sleep 60");
    // With restarts allowed: a signal still ends the job, and starts no other attempt.
    ::execl(KILN_LAUNCH_TOOL, KILN_LAUNCH_TOOL, "--nproc-per-node", "2", "--grace", "2",
            "--max-restarts", "5", "sh", "-c", script.c_str(), static_cast<char*>(nullptr));
    std::_Exit(127);
  }
  // Until both ranks are running.
  for (int i = 0; i < 200; ++i) {
    const std::string pids = slurp(pidfile);
    if (std::count(pids.begin(), pids.end(), '\n') >= 2) break;
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
  }
  ::kill(launcher, SIGTERM);
  int status = 0;
  ASSERT_EQ(::waitpid(launcher, &status, 0), launcher);
  ASSERT_TRUE(WIFEXITED(status));
  EXPECT_EQ(WEXITSTATUS(status), 128 + SIGTERM);
  // Only the first attempt's two ranks ever started, and none is left.
  std::ifstream pids(pidfile);
  int count = 0;
  for (pid_t pid; pids >> pid; ++count) EXPECT_FALSE(alive(pid)) << "rank pid " << pid;
  EXPECT_EQ(count, 2);
}

#ifdef KILN_DP_PROGRAM
// A rank killed in the middle of data-parallel training (its peers wait in an all-reduce):
// the launcher names it, ends the others and exits non-zero well within 60 s.
TEST(Launch, ARankKilledMidStepEndsTheJob) {
  const std::string pids = testing::tmp("dp_pids");
  std::filesystem::remove_all(pids);
  std::filesystem::create_directories(pids);
  const Result r =
      launch(str("--nproc-per-node 3 --master-port 29760 --grace 2 env "
                 "KILN_TEST_KILL_RANK=1 KILN_TEST_PID_DIR=",
                 pids, " ", KILN_DP_PROGRAM, " ", testing::tmp("dp_killed.ckpt")));
  EXPECT_NE(r.code, 0);
  EXPECT_NE(r.out.find("[rank 1] rank 1 kills itself"), std::string::npos) << r.out;
  EXPECT_NE(r.err.find("rank 1"), std::string::npos) << r.err;
  EXPECT_NE(r.err.find("killed by signal 9"), std::string::npos) << r.err;
  EXPECT_LT(r.seconds, 60);
  int ranks = 0;
  for (const auto& entry : std::filesystem::directory_iterator(pids)) {
    ++ranks;
    const pid_t pid = std::stoi(slurp(entry.path().string()));
    EXPECT_FALSE(alive(pid)) << entry.path() << " was left running";
  }
  EXPECT_EQ(ranks, 3);
}
#endif

#ifdef KILN_RESTART_PROGRAM
// Fault tolerance: a rank fails in the middle of training (after a step, before its checkpoint
// commits); with --max-restarts 1 every rank starts again and resumes from the last committed
// step, ending where a job without the failure ends (launched_restart.cc checks the state).
TEST(Launch, ARestartedJobResumesFromItsLastCommittedCheckpoint) {
  const std::string dir = testing::tmp(str("restart_job_", ::getpid()));
  std::filesystem::remove_all(dir);
  const Result r = launch(str("--nproc-per-node 2 --master-port 29790 --grace 2 --max-restarts 1 ",
                              KILN_RESTART_PROGRAM, " ", dir));
  EXPECT_EQ(r.code, 0) << r.out << r.err;
  EXPECT_NE(r.out.find("[rank 1] rank 1 fails after step 3, before saving it"), std::string::npos)
      << r.out;
  // The launcher names the rank it saw end first: rank 1, or rank 0 failing on its lost peer.
  EXPECT_NE(r.err.find("[kiln-launch] restarting every rank (restart 1 of 1)"), std::string::npos)
      << r.err;
  for (const char* rank : {"[rank 0] ", "[rank 1] "}) {
    EXPECT_NE(r.out.find(str(rank, "restart 1: resumed at step 3")), std::string::npos) << r.out;
    EXPECT_NE(r.out.find(str(rank, "rank ", rank[6], ": 0 failures")), std::string::npos) << r.out;
  }
  EXPECT_EQ(r.out.find("FAILED"), std::string::npos) << r.out;
  std::filesystem::remove_all(dir);
  // Without a restart the same failure ends the job.
  const Result once = launch(
      str("--nproc-per-node 2 --master-port 29790 --grace 2 ", KILN_RESTART_PROGRAM, " ", dir));
  EXPECT_NE(once.code, 0) << once.err;
  EXPECT_EQ(once.err.find("restarting"), std::string::npos) << once.err;
  std::filesystem::remove_all(dir);
}
#endif

TEST(Launch, RestartsStartEveryRankAgainUntilTheLimit) {
  // Rank 1 fails in attempts 0 and 1: two restarts are enough, one is not. (Rank 0 of a failed
  // attempt may be ended before it prints.)
  const std::string script =
      "sh -c 'echo \"attempt $KILN_RESTART_COUNT\"; "
      "if [ $RANK = 1 ] && [ $KILN_RESTART_COUNT -lt 2 ]; then exit 4; fi'";
  const Result enough = launch("--nproc-per-node 2 --grace 2 --max-restarts 2 " + script);
  EXPECT_EQ(enough.code, 0) << enough.err;
  for (const char* line : {"[rank 1] attempt 0\n", "[rank 1] attempt 1\n", "[rank 0] attempt 2\n",
                           "[rank 1] attempt 2\n"})
    EXPECT_NE(enough.out.find(line), std::string::npos) << enough.out;
  EXPECT_NE(enough.err.find("restarting every rank (restart 2 of 2)"), std::string::npos)
      << enough.err;
  const Result short_of_one = launch("--nproc-per-node 2 --grace 2 --max-restarts 1 " + script);
  EXPECT_EQ(short_of_one.code, 4);
  EXPECT_EQ(short_of_one.out.find("attempt 2"), std::string::npos) << short_of_one.out;
  EXPECT_NE(short_of_one.err.find("the job failed after 1 restart; giving up"), std::string::npos)
      << short_of_one.err;
  // Success needs no restart; without --max-restarts a failure is final.
  const Result fine =
      launch("--nproc-per-node 2 --max-restarts 3 sh -c 'echo attempt $KILN_RESTART_COUNT'");
  EXPECT_EQ(fine.code, 0);
  EXPECT_EQ(fine.err.find("restarting"), std::string::npos) << fine.err;
  EXPECT_EQ(launch("--nproc-per-node 2 " + script).code, 4);
}

TEST(Launch, UsageErrors) {
  EXPECT_EQ(launch("true").code, 2);
  EXPECT_EQ(launch("--nproc-per-node 0 true").code, 2);
  EXPECT_EQ(launch("--nproc-per-node 2 --nnodes 2 --node-rank 2 true").code, 2);
  EXPECT_EQ(launch("--nproc-per-node 2 --max-restarts -1 true").code, 2);
  EXPECT_EQ(launch("--nproc-per-node 2 --rdzv-timeout 0 true").code, 2);
  const Result missing = launch("--nproc-per-node 1 /no/such/program");
  EXPECT_EQ(missing.code, 127);
  EXPECT_NE(missing.err.find("cannot run '/no/such/program'"), std::string::npos) << missing.err;
}

}  // namespace
}  // namespace kiln
