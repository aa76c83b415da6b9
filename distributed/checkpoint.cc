// Checkpoints every rank writes together: a folder per step, committed by rank 0 once every
// rank's file is written; restore takes the newest committed one.
#include "kiln/distributed/checkpoint.h"

#include <algorithm>
#include <atomic>
#include <filesystem>
#include <future>
#include <map>
#include <mutex>
#include <sstream>

#include "kiln/distributed/collectives.h"
#include "kiln/distributed/distributed.h"
#include "kiln/framework/error.h"
#include "kiln/framework/file_io.h"
#include "kiln/runtime/checkpoint.h"

namespace kiln::distributed {

namespace fs = std::filesystem;

namespace {

constexpr const char* kCommitted = "COMMITTED";
constexpr const char* kMagic = "kiln distributed checkpoint 1";
// The most bytes of a COMMITTED file read (it comes from a folder others may write: untrusted).
constexpr size_t kMaxCommittedBytes = size_t{1} << 24;

// n in at least `width` digits, zeros first (so names sort as numbers).
std::string padded(int64_t n, size_t width) {
  std::string digits = std::to_string(n);
  if (digits.size() < width) digits.insert(0, width - digits.size(), '0');
  return digits;
}

std::string step_folder(const std::string& dir, int64_t step) {
  return (fs::path(dir) / ("step-" + padded(step, 12))).string();
}

std::string rank_file(int64_t rank) {
  return "rank-" + padded(rank, 5) + ".ckpt";
}

// The step of a folder named step-<digits>, or -1 for any other name.
int64_t step_of(const std::string& name) {
  if (name.size() <= 5 || name.size() > 5 + 18 || name.rfind("step-", 0) != 0) return -1;
  int64_t step = 0;
  for (size_t i = 5; i < name.size(); ++i) {
    if (name[i] < '0' || name[i] > '9') return -1;
    step = step * 10 + (name[i] - '0');
  }
  return step;
}

// A communicator for every rank of the job (one rank: the local one). The group is held while
// it is used.
struct Ranks {
  std::shared_ptr<Group> group = default_group();
  Communicator& comm = group ? group->communicator() : local_communicator();
};

// Every rank's `value`.
std::vector<int64_t> gather_all(Communicator& comm, int64_t value) {
  Tensor mine = Tensor::from_vector<int64_t>({value}, {1});
  return comm.all_gather(mine).to_vector<int64_t>();
}

// Throws on every rank when any rank's gathered `status` is negative (it failed): `what` says
// what did not happen, `error` is this rank's own message (empty where it did not fail).
void check_all(const std::vector<int64_t>& status, int64_t rank, const std::string& what,
               const std::string& error) {
  std::string failed;
  int64_t count = 0;
  for (size_t r = 0; r < status.size(); ++r)
    if (status[r] < 0) failed += (count++ ? ", " : "") + std::to_string(r);
  KILN_CHECK(count == 0, DistributedError, "[checkpoint] ", what, ": rank", count > 1 ? "s " : " ",
             failed, " failed",
             error.empty() ? std::string() : str(" (rank ", rank, ": ", error, ")"));
}

CommittedCheckpoint read_committed(const std::string& folder, int64_t step) {
  const std::string path = (fs::path(folder) / kCommitted).string();
  std::istringstream in(read_file(path, kMaxCommittedBytes));
  auto garbled = [&](const std::string& why) {
    return FileError(str("[checkpoint] ", path, ": ", why, " (not a COMMITTED file of Kiln)"));
  };
  std::string line;
  if (!std::getline(in, line) || line != kMagic)
    throw garbled("the first line is not '" + std::string(kMagic) + "'");
  CommittedCheckpoint c;
  std::string key;
  int64_t files = 0;
  if (!(in >> key >> c.step) || key != "step" || c.step != step)
    throw garbled(str("its step is not the folder's, ", step));
  if (!(in >> key >> c.world_size) || key != "world_size" || c.world_size < 1 ||
      c.world_size > (int64_t{1} << 24))
    throw garbled("no valid world_size");
  if (!(in >> key >> files) || key != "files" || files < 1 || files > c.world_size)
    throw garbled("no valid count of files");
  for (int64_t i = 0; i < files; ++i) {
    int64_t rank = -1;
    std::string name;
    // Only names this code writes: nothing outside the folder.
    if (!(in >> rank >> name) || rank < 0 || rank >= c.world_size || name != rank_file(rank) ||
        (i == 0 && rank != 0) || (i > 0 && rank <= c.file_ranks.back()))
      throw garbled(str("file entry ", i, " is not 'RANK rank-RANK.ckpt' in rising rank order"));
    c.file_ranks.push_back(rank);
    c.files.push_back((fs::path(folder) / name).string());
  }
  return c;
}

// Committed steps of `dir`, and all step folders, each in rising order.
void list_steps(const std::string& dir, std::vector<int64_t>* committed,
                std::vector<int64_t>* all) {
  std::error_code ec;
  if (!fs::is_directory(dir, ec)) return;
  for (const auto& entry : fs::directory_iterator(dir, ec)) {
    const int64_t step = step_of(entry.path().filename().string());
    if (step < 0 || !entry.is_directory(ec)) continue;
    if (all) all->push_back(step);
    if (committed && fs::exists(entry.path() / kCommitted, ec)) committed->push_back(step);
  }
  if (committed) std::sort(committed->begin(), committed->end());
  if (all) std::sort(all->begin(), all->end());
}

// Rank 0 after a commit: older committed steps beyond `keep`, and uncommitted folders older than
// the new one, go. A folder that cannot be removed stays (the next save tries again).
void prune(const std::string& dir, int64_t step, int64_t keep) {
  std::vector<int64_t> committed, all;
  list_steps(dir, &committed, &all);
  std::vector<int64_t> kept(committed.end() - std::min<int64_t>(keep, committed.size()),
                            committed.end());
  for (int64_t s : all) {
    const bool is_kept = std::find(kept.begin(), kept.end(), s) != kept.end();
    const bool is_committed = std::binary_search(committed.begin(), committed.end(), s);
    if (is_kept || s == step || (!is_committed && s > step)) continue;
    std::error_code ec;
    fs::remove_all(step_folder(dir, s), ec);
  }
}

// One save: what every rank does with its part, in the caller's thread (save_checkpoint) or a
// thread of its own (save_checkpoint_async). The ranks meet through the rendezvous store, not
// the communicator, so a save in the background never interleaves with training's collectives.
struct Save {
  std::string dir, folder, what;
  int64_t step = 0, rank = 0, world = 1;
  CheckpointOptions options;
  std::function<void(const std::string& path)> write_part;  // unset: this rank has none
  std::shared_ptr<Group> group;                             // holds the store while the save runs
  std::string keys;  // this save's store keys, "checkpoint/<n>/"
};

// Rank 0 after every rank reported: the step of each and how its part went.
std::string commit(const Save& s, const std::vector<std::string>& reports) {
  std::string failed, first_error;
  int64_t count = 0;
  std::vector<bool> wrote(static_cast<size_t>(s.world), false);
  for (int64_t r = 0; r < s.world; ++r) {
    std::istringstream in(reports[r]);
    int64_t step = -1;
    std::string kind;
    in >> step >> kind;
    if (step != s.step)
      return str("[checkpoint] ", s.dir, ": rank 0 saves step ", s.step, " but rank ", r, " step ",
                 step, ": every rank must save the same step");
    if (kind == "failed") {
      failed += (count++ ? ", " : "") + std::to_string(r);
      if (first_error.empty()) {
        std::getline(in >> std::ws, first_error);
        first_error = str(" (rank ", r, ": ", first_error, ")");
      }
    }
    wrote[r] = kind == "wrote";
  }
  if (count > 0)
    return str("[checkpoint] ", s.what, " is not committed: rank", count > 1 ? "s " : " ", failed,
               " failed", first_error);
  try {
    // Every file must be there (a folder the nodes do not share is not).
    std::string entries;
    int64_t files = 0;
    for (int64_t r = 0; r < s.world; ++r) {
      if (!wrote[r]) continue;
      const fs::path file = fs::path(s.folder) / rank_file(r);
      std::error_code ec;
      KILN_CHECK(fs::exists(file, ec), FileError, "[checkpoint] rank ", r, " wrote ", file.string(),
                 " but rank 0 does not see it: ", s.dir, " must be a folder every rank shares");
      entries += str(r, " ", rank_file(r), "\n");
      ++files;
    }
    write_file_atomically(
        (fs::path(s.folder) / kCommitted).string(),
        str(kMagic, "\nstep ", s.step, "\nworld_size ", s.world, "\nfiles ", files, "\n", entries));
    prune(s.dir, s.step, s.options.keep);
  } catch (const Error& e) {
    return str("[checkpoint] ", s.what, " is not committed: rank 0 failed (rank 0: ", e.what(),
               ")");
  }
  return "";
}

void run_save(const Save& s) {
  Store* store = s.world > 1 ? s.group->store() : nullptr;
  const auto timeout = s.options.timeout;
  // A commit of this step from before (a job that saves a step again) goes first, so the files
  // are never named by a COMMITTED they do not belong to.
  if (s.rank == 0) {
    std::error_code ec;
    fs::remove(fs::path(s.folder) / kCommitted, ec);
    if (store) store->set(s.keys + "cleared", "1");
  } else {
    store->wait({s.keys + "cleared"}, timeout);
  }
  std::string report = str(s.step, " none");
  try {
    std::error_code ec;
    fs::create_directories(s.folder, ec);
    KILN_CHECK(!ec, FileError, "[checkpoint] cannot make the folder ", s.folder, ": ",
               ec.message());
    if (s.write_part) {
      s.write_part((fs::path(s.folder) / rank_file(s.rank)).string());
      report = str(s.step, " wrote");
    }
  } catch (const Error& e) {
    report = str(s.step, " failed ", e.what());
  }
  if (s.rank != 0) {
    store->set(str(s.keys, "rank/", s.rank), report);
    store->wait({s.keys + "committed"}, timeout);
    const std::string result = *store->try_get(s.keys + "committed");
    KILN_CHECK(result == "ok", DistributedError, result);
    return;
  }
  std::vector<std::string> reports = {report};
  if (store) {
    std::vector<std::string> keys;
    for (int64_t r = 1; r < s.world; ++r) keys.push_back(str(s.keys, "rank/", r));
    store->wait(keys, timeout);
    for (const std::string& key : keys) reports.push_back(*store->try_get(key));
  }
  const std::string result = commit(s, reports);
  if (store) store->set(s.keys + "committed", result.empty() ? "ok" : result);
  KILN_CHECK(result.empty(), DistributedError, result);
}

// The save this process started last (saves run one at a time, in the order they were asked
// for: a newer one's pruning must not remove an older one's folder under it).
std::mutex last_save_mutex;
std::shared_future<void> last_save;

// What every save does first on the calling thread: checks, and this rank's place and keys.
Save plan_save(const std::string& dir, int64_t step, const CheckpointOptions& options) {
  KILN_CHECK(step >= 0, DistributedError, "[checkpoint] ", dir, ": step ", step, " is negative");
  KILN_CHECK(options.keep >= 1, DistributedError, "[checkpoint] ", dir, ": keep ", options.keep,
             " must be at least 1");
  static std::atomic<int64_t> saves{0};  // the same count on every rank: saves are collective
  Save s;
  s.dir = dir;
  s.folder = step_folder(dir, step);
  s.what = str("step ", step, " in ", dir);
  s.step = step;
  s.options = options;
  s.group = default_group();
  if (s.group) s.rank = s.group->rank(), s.world = s.group->world_size();
  s.keys = str("checkpoint/", saves++, "/");
  return s;
}

// This rank's part: rank 0 every persistent variable, the others their rank-local ones.
std::vector<Value> part_of(const Session& session, int64_t rank) {
  std::vector<Value> mine;
  for (const Value& var : persistent_variables(session.graph()))
    if (rank == 0 || var.node().attr<bool>("rank_local")) mine.push_back(var);
  return mine;
}

}  // namespace

void save_checkpoint(Session& session, const std::string& dir, int64_t step,
                     const CheckpointOptions& options) {
  Save s = plan_save(dir, step, options);
  {
    std::lock_guard<std::mutex> lock(last_save_mutex);
    if (last_save.valid()) last_save.wait();
  }
  // Each variable copied to the host as the writer reaches it (a device's one at a time).
  const std::vector<Value> mine = part_of(session, s.rank);
  if (!mine.empty())
    s.write_part = [&session, &mine](const std::string& path) {
      session.save_checkpoint(path, mine);
    };
  run_save(s);
}

std::shared_future<void> save_checkpoint_async(Session& session, const std::string& dir,
                                               int64_t step, const CheckpointOptions& options) {
  Save s = plan_save(dir, step, options);
  // This rank's values now, in host memory: training may go on and change the variables.
  const std::vector<Value> mine = part_of(session, s.rank);
  if (!mine.empty())
    s.write_part = [values = session.variable_values(mine)](const std::string& path) {
      write_checkpoint(values, path);
    };
  std::lock_guard<std::mutex> lock(last_save_mutex);
  std::shared_future<void> before = last_save;
  last_save = std::async(std::launch::async, [s = std::move(s), before] {
                if (before.valid()) before.wait();
                run_save(s);
              }).share();
  return last_save;
}

std::optional<CommittedCheckpoint> latest_checkpoint(const std::string& dir) {
  std::vector<int64_t> committed;
  list_steps(dir, &committed, nullptr);
  if (committed.empty()) return std::nullopt;
  return read_committed(step_folder(dir, committed.back()), committed.back());
}

std::optional<int64_t> restore_latest_checkpoint(Session& session, const std::string& dir) {
  Ranks ranks;
  Communicator& comm = ranks.comm;
  const int64_t rank = comm.rank(), world = comm.world_size();
  // Rank 0 picks the step; every rank restores that one.
  std::string error;
  int64_t step = -1;
  if (rank == 0) {
    try {
      if (auto latest = latest_checkpoint(dir)) step = latest->step;
    } catch (const Error& e) {
      error = e.what();
    }
  }
  Tensor chosen = Tensor::from_vector<int64_t>({error.empty() ? step : -2}, {1});
  comm.broadcast(chosen, 0);
  step = chosen.to_vector<int64_t>()[0];
  KILN_CHECK(step != -2, DistributedError, "[checkpoint] ", dir,
             ": rank 0 cannot read the newest checkpoint",
             error.empty() ? std::string() : " (" + error + ")");
  if (step < 0) return std::nullopt;
  const std::string what = str("step ", step, " of ", dir, " is not restored on every rank");
  try {
    const CommittedCheckpoint c = read_committed(step_folder(dir, step), step);
    // Own file first (same world size: this rank's slots), then rank 0's and the others'.
    std::vector<std::string> paths;
    for (size_t i = 0; i < c.files.size(); ++i)
      if (c.world_size == world && c.file_ranks[i] == rank) paths.push_back(c.files[i]);
    for (size_t i = 0; i < c.files.size(); ++i)
      if (!(c.world_size == world && c.file_ranks[i] == rank)) paths.push_back(c.files[i]);
    // Strictly where one file holds the whole state of a run like this one; files with other
    // ranks' slots (several files, or one unsharded file restored into a shard) are not.
    bool sharded = false;
    for (const Value& var : persistent_variables(session.graph()))
      sharded = sharded || var.node().attr<bool>("rank_local");
    session.restore_checkpoints(paths, /*strict=*/paths.size() == 1 && !sharded);
  } catch (const Error& e) {
    error = e.what();
  }
  check_all(gather_all(comm, error.empty() ? 1 : -1), rank, what, error);
  return step;
}

}  // namespace kiln::distributed
