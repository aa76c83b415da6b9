// Atomic writes and safe reads (framework/file_io.h): concurrent saves to one path, temporaries
// of dead writers, files that are not regular files.
#include <dirent.h>
#include <fcntl.h>
#include <signal.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <filesystem>
#include <fstream>
#include <thread>

#include "test_util.h"

namespace kiln {
namespace {

using testing::expect_error;
using testing::tmp;

// Names in `folder` that start with `prefix`.
std::vector<std::string> entries_starting_with(const std::string& folder,
                                               const std::string& prefix) {
  std::vector<std::string> out;
  for (const auto& entry : std::filesystem::directory_iterator(folder)) {
    std::string name = entry.path().filename().string();
    if (name.rfind(prefix, 0) == 0) out.push_back(name);
  }
  return out;
}

// A fresh, empty folder under the test scratch space.
std::string fresh_folder(const std::string& name) {
  std::string folder = tmp(name);
  std::filesystem::remove_all(folder);
  std::filesystem::create_directories(folder);
  return folder;
}

TEST(FileIO, ConcurrentSavesToOnePathNeverFailOrTearAndLeaveNoTemporaries) {
  const std::string folder = fresh_folder("concurrent");
  const std::string path = folder + "/shared.bin";
  // Each writer's content is recognizable: 64 KiB of one byte value.
  auto content = [](int writer) { return std::string(65536, static_cast<char>('a' + writer)); };
  write_file_atomically(path, content(0));
  std::atomic<int> failures{0}, torn{0};
  std::atomic<bool> writing{true};
  std::vector<std::thread> threads;
  for (int w = 0; w < 8; ++w)
    threads.emplace_back([&, w] {
      for (int i = 0; i < 25; ++i) {
        try {
          write_file_atomically(path, content(w));
        } catch (const std::exception&) {
          ++failures;
        }
      }
    });
  std::thread reader([&] {
    while (writing) {
      std::string data = read_file(path, 1 << 20);
      if (data.size() != 65536 || data.find_first_not_of(data[0]) != std::string::npos) ++torn;
    }
  });
  for (auto& t : threads) t.join();
  writing = false;
  reader.join();
  EXPECT_EQ(failures.load(), 0);
  EXPECT_EQ(torn.load(), 0);
  EXPECT_TRUE(entries_starting_with(folder, "shared.bin.tmp.").empty());
}

TEST(FileIO, TemporariesOfDeadWritersAreRemovedAndLiveOnesKept) {
  const std::string folder = fresh_folder("stale");
  const std::string path = folder + "/model.ckpt";
  // Left by a writer that died (nobody holds its lock)...
  std::ofstream(path + ".tmp.99999.0") << "half a checkpoint";
  std::ofstream(path + ".tmp.99999.1") << "another half";
  // ...a live writer's temporary (locked), and files that only look similar.
  const std::string live = path + ".tmp.12345.7";
  std::ofstream(live) << "being written";
  int held = ::open(live.c_str(), O_RDONLY);
  ASSERT_GE(held, 0);
  ASSERT_EQ(::flock(held, LOCK_EX), 0);
  std::ofstream(path + ".tmp.notes") << "a user's file";
  std::ofstream(folder + "/other.ckpt.tmp.99999.0") << "another file's temporary";

  write_file_atomically(path, "new");
  std::vector<std::string> left = entries_starting_with(folder, "model.ckpt.tmp.");
  std::sort(left.begin(), left.end());
  EXPECT_EQ(left, (std::vector<std::string>{"model.ckpt.tmp.12345.7", "model.ckpt.tmp.notes"}));
  EXPECT_EQ(entries_starting_with(folder, "other.ckpt.tmp.").size(), 1u);
  EXPECT_EQ(read_file(path, 100), "new");
  ::close(held);  // the "writer" is gone: the next save removes its temporary
  write_file_atomically(path, "newer");
  EXPECT_EQ(entries_starting_with(folder, "model.ckpt.tmp.").size(), 1u);  // the user's notes
}

TEST(FileIO, AWriterKilledMidSaveLeavesTheOldFileAndItsTemporaryIsCleanedUp) {
  const std::string folder = fresh_folder("killed");
  const std::string path = folder + "/big.bin";
  write_file_atomically(path, "old");
  // A child saves 256 MiB in a loop and is killed with SIGKILL while it writes.
  pid_t child = ::fork();
  ASSERT_GE(child, 0);
  if (child == 0) {
    std::string data(size_t{256} << 20, 'x');
    for (;;) write_file_atomically(path, data);
  }
  for (int i = 0; i < 200 && entries_starting_with(folder, "big.bin.tmp.").empty(); ++i)
    ::usleep(10000);
  ::kill(child, SIGKILL);
  int status = 0;
  ::waitpid(child, &status, 0);
  // The file is the old one or a whole new one, never part of one.
  std::string now = read_file(path, size_t{1} << 30);
  EXPECT_TRUE(now == "old" || now == std::string(size_t{256} << 20, 'x')) << now.size();
  write_file_atomically(path, "after");
  EXPECT_TRUE(entries_starting_with(folder, "big.bin.tmp.").empty());
  EXPECT_EQ(read_file(path, 100), "after");
}

TEST(FileIO, ReadingRefusesFifosFoldersAndOversizedFiles) {
  const std::string folder = fresh_folder("special");
  const std::string fifo = folder + "/pipe.pb";
  ASSERT_EQ(::mkfifo(fifo.c_str(), 0600), 0);
  // Would block forever waiting for a writer if opened plainly.
  expect_error<FileError>([&] { read_file(fifo, 100); }, {"pipe.pb", "a FIFO"});
  expect_error<FileError>([&] { load_graph(fifo); }, {"pipe.pb", "not a regular file"});
  expect_error<FileError>([&] { load_npy(fifo); }, {"pipe.pb", "not a regular file"});
  expect_error<FileError>([&] { read_file(folder, 100); }, {"a folder"});
  std::ofstream(folder + "/big") << std::string(200, 'x');
  expect_error<FileError>([&] { read_file(folder + "/big", 100); },
                          {"200 bytes is larger than the limit of 100"});
  expect_error<FileError>([&] { read_file(folder + "/missing", 100); },
                          {"missing", "cannot open", "No such file"});
}

// A save that fails after the data is written (here the rename: the target is a folder) removes
// its temporary and leaves what was there.
TEST(FileIO, AFailedSaveLeavesWhatWasThereAndNoTemporary) {
  const std::string folder = fresh_folder("failing");
  const std::string path = folder + "/keep.bin";
  std::filesystem::create_directories(path);
  std::ofstream(path + "/inside") << "precious";
  expect_error<FileError>([&] { write_file_atomically(path, "lost?"); },
                          {"keep.bin", "cannot rename the finished file into place"});
  EXPECT_EQ(read_file(path + "/inside", 100), "precious");
  EXPECT_TRUE(entries_starting_with(folder, "keep.bin.tmp.").empty());
}

// A file produced as it is written: appends, then bytes written over (a header patched at the
// end), never past what was appended; a failing producer leaves the old file and no temporary.
TEST(FileIO, AProducedFileIsAppendedAndPatchedInPlace) {
  const std::string folder = fresh_folder("produced");
  const std::string path = folder + "/out.bin";
  write_file_atomically(path, [](FileWriter& out) {
    out.append("hello ");
    out.append("world");
    out.write_at(0, "H");
    out.write_at(6, "WORLD");
  });
  EXPECT_EQ(read_file(path, 100), "Hello WORLD");
  expect_error<FileError>(
      [&] {
        write_file_atomically(path, [](FileWriter& out) {
          out.append("0123");
          out.write_at(2, "abc");
        });
      },
      {"out.bin", "a write of 3 bytes at 2 passes the 4 bytes written"});
  expect_error<FileError>(
      [&] {
        write_file_atomically(path, [](FileWriter& out) {
          out.append("partial");
          throw FileError("[test] the producer failed");
        });
      },
      {"the producer failed"});
  EXPECT_EQ(read_file(path, 100), "Hello WORLD");
  EXPECT_TRUE(entries_starting_with(folder, "out.bin.tmp.").empty());
}

TEST(Tensor, WrappingStorageChecksItsSizeInEveryBuild) {
  auto storage = std::make_shared<HostStorage>(16);
  Tensor fits(f32, {4}, storage);
  EXPECT_EQ(fits.numel(), 4);
  Tensor at_end(f32, {2}, storage, 8);
  EXPECT_EQ(at_end.numel(), 2);
  expect_error<Error>([&] { Tensor(f32, {5}, storage); },
                      {"[tensor] f32[5]", "from byte offset 0", "holds 16 bytes"});
  expect_error<Error>([&] { Tensor(f32, {2}, storage, 12); }, {"byte offset 12"});
  expect_error<Error>([&] { Tensor(f32, {1}, storage, 20); }, {"byte offset 20"});
  // An element count whose byte size wraps around 64 bits does not slip through.
  expect_error<Error>([&] { Tensor(f64, {int64_t{1} << 61}, storage); }, {"holds 16 bytes"});
  expect_error<Error>([&] { Tensor(f32, {-1, 2}, storage); }, {"unknown dims"});
}

}  // namespace
}  // namespace kiln
