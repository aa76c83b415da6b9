// Checkpoints every rank writes together (distributed/checkpoint.h), in one process (a world of
// one rank): the folder per step and its COMMITTED file, keeping the newest, resuming from the
// newest committed step exactly, ignoring a save that never committed, and the errors of bad
// folders and garbled files. Several ranks and a restarted job: launched_restart.cc.
#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>

#include "kiln/distributed/checkpoint.h"
#include "tests/distributed/dp_model.h"
#include "tests/test_util.h"

namespace kiln {
namespace {

namespace fs = std::filesystem;
using testing::build_dp_model;
using testing::dp_batch;
using testing::DpModel;

// A fresh folder of this test.
std::string fresh(const std::string& name) {
  const std::string dir = testing::tmp(str("dckpt_", name, "_", ::getpid()));
  fs::remove_all(dir);
  return dir;
}

void train_step(Session& s, DpModel& m, int64_t step) {
  auto batch = dp_batch(24, static_cast<uint32_t>(step));
  s.run({{m.x, batch.first}, {m.y, batch.second}}, {}, {m.train});
}

// Every persistent variable's values in the two sessions are the same bits.
bool same_state(Session& a, Session& b) {
  auto x = a.variable_values(), y = b.variable_values();
  if (x.size() != y.size()) return false;
  for (const auto& [name, value] : x) {
    const auto other = y.find(name);
    if (other == y.end() || value.to_vector<double>() != other->second.to_vector<double>())
      return false;
  }
  return true;
}

std::string slurp(const std::string& path) {
  std::ifstream in(path);
  return std::string(std::istreambuf_iterator<char>(in), {});
}

TEST(DistributedCheckpoint, ResumesFromTheNewestCommittedStepAndKeepsTheNewest) {
  const std::string dir = fresh("resume");
  EXPECT_FALSE(distributed::latest_checkpoint(dir).has_value());
  DpModel m;
  build_dp_model(m, {.average = true});
  Session s(m.g);
  {
    // Nothing saved yet: nothing restored, nothing changed.
    Session empty(m.g);
    empty.initialize_variables();
    const auto before = empty.variable_values();
    EXPECT_FALSE(distributed::restore_latest_checkpoint(empty, dir).has_value());
    EXPECT_EQ(empty.variable_values().begin()->second.to_vector<double>(),
              before.begin()->second.to_vector<double>());
  }
  for (int64_t step = 0; step < 4; ++step) {
    train_step(s, m, step);
    distributed::save_checkpoint(s, dir, step + 1);
  }
  // keep = 2: steps 3 and 4 are left.
  std::vector<std::string> folders;
  for (const auto& entry : fs::directory_iterator(dir))
    folders.push_back(entry.path().filename().string());
  std::sort(folders.begin(), folders.end());
  EXPECT_EQ(folders, (std::vector<std::string>{"step-000000000003", "step-000000000004"}));
  EXPECT_EQ(slurp(dir + "/step-000000000004/COMMITTED"),
            "kiln distributed checkpoint 1\nstep 4\nworld_size 1\nfiles 1\n0 rank-00000.ckpt\n");
  const auto latest = distributed::latest_checkpoint(dir);
  ASSERT_TRUE(latest.has_value());
  EXPECT_EQ(latest->step, 4);
  EXPECT_EQ(latest->files, std::vector<std::string>{dir + "/step-000000000004/rank-00000.ckpt"});

  // A save that failed before its commit (a folder of a newer step without COMMITTED) is
  // ignored: the newest committed step is restored, and resumes exactly.
  fs::create_directories(dir + "/step-000000000005");
  std::ofstream(dir + "/step-000000000005/rank-00000.ckpt") << "half a file";
  DpModel again;
  build_dp_model(again, {.average = true});
  Session resumed(again.g);
  EXPECT_EQ(distributed::restore_latest_checkpoint(resumed, dir), 4);
  EXPECT_TRUE(same_state(resumed, s));
  train_step(resumed, again, 4);
  train_step(s, m, 4);
  EXPECT_TRUE(same_state(resumed, s));
  // The next commit removes the uncommitted folder older than it and the oldest kept step.
  distributed::save_checkpoint(resumed, dir, 6, {.keep = 1});
  EXPECT_TRUE(fs::exists(dir + "/step-000000000006/COMMITTED"));
  EXPECT_FALSE(fs::exists(dir + "/step-000000000005"));
  EXPECT_FALSE(fs::exists(dir + "/step-000000000004"));
  EXPECT_FALSE(fs::exists(dir + "/step-000000000003"));
  // Saving the same step again replaces it whole.
  distributed::save_checkpoint(resumed, dir, 6, {.keep = 1});
  Session third(again.g);
  EXPECT_EQ(distributed::restore_latest_checkpoint(third, dir), 6);
  EXPECT_TRUE(same_state(third, resumed));
}

TEST(DistributedCheckpoint, AsyncSavesKeepTheValuesOfWhenTheyWereAskedFor) {
  const std::string dir = fresh("async");
  DpModel m;
  build_dp_model(m, {.average = true});
  Session s(m.g);
  train_step(s, m, 0);
  Session at_one(m.g);
  at_one.set_variables(s.variable_values());
  auto first = distributed::save_checkpoint_async(s, dir, 1);
  // Training goes on while step 1 is written: the checkpoint keeps step 1's values.
  train_step(s, m, 1);
  auto second = distributed::save_checkpoint_async(s, dir, 2);
  train_step(s, m, 2);
  first.get();
  second.get();
  ASSERT_TRUE(fs::exists(dir + "/step-000000000001/COMMITTED"));
  DpModel again;
  build_dp_model(again, {.average = true});
  {
    // Step 1 alone: its folder restored through a copy of the folder holding only it.
    const std::string only_one = fresh("async_one");
    fs::create_directories(only_one);
    fs::copy(dir + "/step-000000000001", only_one + "/step-000000000001");
    Session restored(again.g);
    EXPECT_EQ(distributed::restore_latest_checkpoint(restored, only_one), 1);
    EXPECT_TRUE(same_state(restored, at_one));
    EXPECT_FALSE(same_state(restored, s));
  }
  // A synchronous save waits for the saves still running, and is the newest.
  auto third = distributed::save_checkpoint_async(s, dir, 3);
  distributed::save_checkpoint(s, dir, 4);
  EXPECT_TRUE(third.wait_for(std::chrono::seconds(0)) == std::future_status::ready);
  Session restored(again.g);
  EXPECT_EQ(distributed::restore_latest_checkpoint(restored, dir), 4);
  EXPECT_TRUE(same_state(restored, s));
  // A failure comes out of get(), as save_checkpoint would throw it.
  const std::string blocked = fresh("async_blocked");
  std::ofstream(blocked) << "a file";
  auto failing = distributed::save_checkpoint_async(s, blocked, 5);
  testing::expect_error(
      [&] { failing.get(); },
      {"step 5 in " + blocked + " is not committed: rank 0 failed", "cannot make the folder"});
  fs::remove(blocked);
}

TEST(DistributedCheckpoint, BadArgumentsFoldersAndFilesAreNamed) {
  DpModel m;
  build_dp_model(m);
  Session s(m.g);
  const std::string dir = fresh("errors");
  testing::expect_error([&] { distributed::save_checkpoint(s, dir, -1); },
                        {"[checkpoint]", "step -1 is negative"});
  testing::expect_error([&] { distributed::save_checkpoint(s, dir, 1, {.keep = 0}); },
                        {"keep 0 must be at least 1"});
  // A folder that cannot be made (a file is in the way): not committed, and why.
  std::ofstream(dir) << "a file";
  testing::expect_error(
      [&] { distributed::save_checkpoint(s, dir, 1); },
      {"step 1 in " + dir + " is not committed: rank 0 failed", "cannot make the folder"});
  fs::remove(dir);

  // Garbled COMMITTED files are refused by name, and never let a name leave the folder.
  distributed::save_checkpoint(s, dir, 1);
  const std::string committed = dir + "/step-000000000001/COMMITTED";
  for (const std::string& text :
       {std::string("not a checkpoint\n"),
        std::string("kiln distributed checkpoint 1\nstep 2\nworld_size 1\nfiles 1\n"),
        std::string("kiln distributed checkpoint 1\nstep 1\nworld_size 1\nfiles 1\n"
                    "0 ../../elsewhere.ckpt\n"),
        std::string("kiln distributed checkpoint 1\nstep 1\nworld_size 0\nfiles 1\n")}) {
    std::ofstream(committed) << text;
    testing::expect_error([&] { distributed::latest_checkpoint(dir); }, {committed});
    Session other(m.g);
    testing::expect_error([&] { distributed::restore_latest_checkpoint(other, dir); },
                          {"rank 0 cannot read the newest checkpoint", committed});
  }
  // A committed step whose file is corrupt: the checkpoint reader's error, on every rank.
  distributed::save_checkpoint(s, dir, 2);
  const std::string file = dir + "/step-000000000002/rank-00000.ckpt";
  fs::resize_file(file, fs::file_size(file) - 10);
  Session other(m.g);
  testing::expect_error(
      [&] { distributed::restore_latest_checkpoint(other, dir); },
      {"step 2 of " + dir + " is not restored on every rank: rank 0 failed", file, "truncated"});
  // Saving only some variables: each must be a persistent variable of the graph.
  testing::expect_error([&] { s.save_checkpoint(dir + "/x.ckpt", {m.loss}); },
                        {"is not a persistent variable of the session's graph"});
  testing::expect_error(
      [&] {
        s.save_checkpoint(dir + "/x.ckpt", {m.variables[0], m.variables[0]});
      },
      {"listed twice"});
  EXPECT_FALSE(fs::exists(dir + "/x.ckpt"));
}

}  // namespace
}  // namespace kiln
