// A training job that fails and is started again by kiln-launch --max-restarts, resuming from
// the checkpoints its ranks committed together (distributed::save_checkpoint): run by
// launch_test.cc's Launch.ARestartedJobResumesFromItsLastCommittedCheckpoint.
//
//   kiln-launch --nproc-per-node N --max-restarts 1 launched_restart DIR
//
// Sharded optimizer state (each rank its own slots) and a moving average of the weights; a
// checkpoint after every step, written in the background while the next step runs. In the first
// attempt the last rank exits with status 3 after step kFailAfter has run but before it is saved,
// while rank 0 may already be writing its part: that step never commits. The restarted attempt
// resumes from the step before it and trains to the end. Checks, printed one per line: the step it
// resumed at, the final state against an unsharded job trained without a failure (bit for bit:
// weights, slots, averages, counters), and the last checkpoint restored by every rank into the
// unsharded graph.
#include <cstdio>
#include <cstdlib>
#include <future>

#include "kiln/distributed/checkpoint.h"
#include "tests/distributed/dp_model.h"

using namespace kiln;

namespace {

constexpr int64_t kBatch = 48, kSteps = 6, kFailAfter = 3;
int failures = 0;

void check(bool ok, const std::string& what) {
  std::printf("%s %s\n", ok ? "ok" : "FAILED", what.c_str());
  failures += !ok;
}

// Every variable of `graph` holds the same bits in the two sessions.
bool same_state(Session& a, Session& b, const Graph& graph) {
  for (const Value& v : persistent_variables(graph))
    if (a.variable_value(v).to_vector<double>() != b.variable_value(v).to_vector<double>())
      return false;
  return true;
}

}  // namespace

int main(int argc, char** argv) {
  if (argc != 2) {
    std::fprintf(stderr, "usage: launched_restart DIR (under kiln-launch --max-restarts 1)\n");
    return 2;
  }
  const std::string dir = argv[1];
  try {
    // A long collective timeout (sanitized ranks stall): the failed attempt's rank 0 does not
    // wait for it, the launcher ends it once rank 1 has exited.
    const char* timeout_s = std::getenv("KILN_TEST_COLLECTIVE_TIMEOUT_S");
    auto group = distributed::init(
        {.timeout = std::chrono::seconds(timeout_s ? std::atoll(timeout_s) : 300)});
    const int64_t rank = group->rank(), world = group->world_size();
    const int64_t restart = group->environment().restart_count;
    const int64_t per_rank = kBatch / world;
    testing::DpModel sharded, plain;
    testing::build_dp_model(sharded,
                            {.bucket_bytes = 300, .shard_optimizer_state = true, .average = true});
    testing::build_dp_model(plain, {.bucket_bytes = 300, .average = true});
    auto step = [&](Session& session, testing::DpModel& m, int64_t at) {
      auto batch = testing::dp_batch(kBatch, static_cast<uint32_t>(200 + at));
      auto rows = testing::dp_rows(batch, rank * per_rank, (rank + 1) * per_rank);
      session.run({{m.x, rows.first}, {m.y, rows.second}}, {}, {m.train});
    };

    Session s(sharded.g);
    int64_t first = 0;
    if (auto resumed = distributed::restore_latest_checkpoint(s, dir)) {
      first = *resumed;
      std::printf("restart %lld: resumed at step %lld\n", static_cast<long long>(restart),
                  static_cast<long long>(first));
    } else {
      s.run({}, {}, {sharded.sync});
    }
    check(first == (restart == 0 ? 0 : kFailAfter),
          str("attempt ", restart, " starts at step ", first));
    // Each step's checkpoint is written in the background while the next step runs
    // (save_checkpoint_async), and waited for before the step after that.
    std::shared_future<void> saving;
    for (int64_t k = first; k < kSteps; ++k) {
      if (saving.valid()) saving.get();
      step(s, sharded, k);
      if (restart == 0 && rank == world - 1 && k == kFailAfter) {
        std::printf("rank %lld fails after step %lld, before saving it\n",
                    static_cast<long long>(rank), static_cast<long long>(k));
        std::fflush(stdout);
        std::_Exit(3);
      }
      saving = distributed::save_checkpoint_async(s, dir, k + 1);
    }
    saving.get();

    // The same job, unsharded and never interrupted.
    Session reference(plain.g);
    reference.run({}, {}, {plain.sync});
    for (int64_t k = 0; k < kSteps; ++k) step(reference, plain, k);
    Session unsharded(plain.g);
    check(distributed::restore_latest_checkpoint(unsharded, dir) == kSteps,
          "the last checkpoint is the last step's");
    check(same_state(unsharded, reference, plain.g),
          str("the restarted job's last checkpoint, every rank's file, restores the unsharded "
              "job trained without a failure, bit for bit (rank ",
              rank, ")"));
    // This rank's own state: the weights and averages the unsharded job has.
    bool same = true;
    for (size_t i = 0; i < sharded.variables.size(); ++i)
      same = same &&
             s.variable_value(sharded.variables[i]).to_vector<double>() ==
                 reference.variable_value(plain.variables[i]).to_vector<double>() &&
             s.variable_value(sharded.averages[i]).to_vector<double>() ==
                 reference.variable_value(plain.averages[i]).to_vector<double>();
    check(same, "the restarted sharded job's weights and averages are the unsharded job's");
    std::printf("rank %lld: %d failures\n", static_cast<long long>(rank), failures);
    return failures == 0 ? 0 : 1;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "%s\n", e.what());
    return 1;
  }
}
