// Checkpoints every rank writes together: a folder per step, committed by rank 0 once every
// rank's file is written; restore takes the newest committed one.
#include "kiln/distributed/checkpoint.h"

#include <algorithm>
#include <filesystem>
#include <sstream>

#include "kiln/distributed/collectives.h"
#include "kiln/distributed/distributed.h"
#include "kiln/framework/error.h"
#include "kiln/framework/file_io.h"

namespace kiln::distributed {

namespace fs = std::filesystem;

namespace {

constexpr const char* kCommitted = "COMMITTED";
constexpr const char* kMagic = "kiln distributed checkpoint 1";
// A COMMITTED file names at most this many files and is at most this large (it is read from a
// folder that others may write: untrusted).
constexpr size_t kMaxCommittedBytes = size_t{1} << 24;

std::string step_folder(const std::string& dir, int64_t step) {
  std::string digits = std::to_string(step);
  if (digits.size() < 12) digits.insert(0, 12 - digits.size(), '0');
  return (fs::path(dir) / ("step-" + digits)).string();
}

std::string rank_file(int64_t rank) {
  std::string digits = std::to_string(rank);
  if (digits.size() < 5) digits.insert(0, 5 - digits.size(), '0');
  return "rank-" + digits + ".ckpt";
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

}  // namespace

void save_checkpoint(Session& session, const std::string& dir, int64_t step,
                     const CheckpointOptions& options) {
  KILN_CHECK(step >= 0, DistributedError, "[checkpoint] ", dir, ": step ", step, " is negative");
  KILN_CHECK(options.keep >= 1, DistributedError, "[checkpoint] ", dir, ": keep ", options.keep,
             " must be at least 1");
  Ranks ranks;
  Communicator& comm = ranks.comm;
  const int64_t rank = comm.rank(), world = comm.world_size();
  const std::string folder = step_folder(dir, step);
  const std::string what = str("step ", step, " in ", dir);  // "... is not committed"
  // A commit of this step from before (a job that saves a step again) goes first, so the files
  // are never named by a COMMITTED they do not belong to. The gather below orders it before
  // any rank writes.
  if (rank == 0) {
    std::error_code ec;
    fs::remove(fs::path(folder) / kCommitted, ec);
  }
  const std::vector<int64_t> steps = gather_all(comm, step);
  for (int64_t r = 0; r < world; ++r)
    KILN_CHECK(steps[r] == step, DistributedError, "[checkpoint] ", dir, ": rank ", rank,
               " saves step ", step, " but rank ", r, " step ", steps[r],
               ": every rank must save the same step");

  // This rank's part: rank 0 every persistent variable, the others their rank-local ones.
  std::vector<Value> mine;
  for (const Value& var : persistent_variables(session.graph()))
    if (rank == 0 || var.node().attr<bool>("rank_local")) mine.push_back(var);
  std::string error;
  try {
    std::error_code ec;
    fs::create_directories(folder, ec);
    KILN_CHECK(!ec, FileError, "[checkpoint] cannot make the folder ", folder, ": ", ec.message());
    if (!mine.empty()) session.save_checkpoint((fs::path(folder) / rank_file(rank)).string(), mine);
  } catch (const Error& e) {
    error = e.what();
  }
  // Each rank's status: -1 failed, 0 had nothing to write, 1 wrote its file.
  const std::vector<int64_t> wrote =
      gather_all(comm, !error.empty() ? -1 : static_cast<int64_t>(!mine.empty()));
  check_all(wrote, rank, what + " is not committed", error);

  // Rank 0 commits: every file must be there (a folder the nodes do not share is not).
  if (rank == 0) {
    try {
      std::string text = str(kMagic, "\nstep ", step, "\nworld_size ", world, "\nfiles ");
      std::string entries;
      int64_t files = 0;
      for (int64_t r = 0; r < world; ++r) {
        if (!wrote[r]) continue;
        const fs::path file = fs::path(folder) / rank_file(r);
        std::error_code ec;
        KILN_CHECK(fs::exists(file, ec), FileError, "[checkpoint] rank ", r, " wrote ",
                   file.string(), " but rank 0 does not see it: ", dir,
                   " must be a folder every rank shares");
        entries += str(r, " ", rank_file(r), "\n");
        ++files;
      }
      write_file_atomically((fs::path(folder) / kCommitted).string(),
                            str(text, files, "\n", entries));
      prune(dir, step, options.keep);
    } catch (const Error& e) {
      error = e.what();
    }
  }
  check_all(gather_all(comm, error.empty() ? 1 : -1), rank, what + " is not committed", error);
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
