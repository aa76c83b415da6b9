// Reading and writing whole files safely: every file Kiln writes (graphs, checkpoints, .npy,
// traces) goes through write_file_atomically, and every file it loads through read_file.
#pragma once

#include <cstddef>
#include <cstdint>
#include <functional>
#include <string>
#include <string_view>
#include <vector>

namespace kiln {

/// Writes `data` to `path` so that readers see the old file or the new one, never part of
/// one, and so that the new file survives a crash once this returns:
///   1. a temporary `PATH.tmp.<pid>.<n>` unique to this call (so threads and processes saving
///      to one path never share it), created exclusively and locked while it is written;
///   2. the data written and fsync'ed, the temporary renamed over `path`, the folder fsync'ed.
/// Temporaries of earlier writers that died mid-save (no process holds their lock) are
/// removed first. On any failure the temporary is removed and the old file is untouched.
/// Throws kiln::FileError naming the path and the system's reason.
void write_file_atomically(const std::string& path, const std::string& data);
/// write_file_atomically of `parts` one after another, without joining them in memory first
/// (a safetensors header, then each tensor's bytes where the tensor holds them).
void write_file_atomically(const std::string& path, const std::vector<std::string_view>& parts);

/// The temporary file of a write_file_atomically in progress.
class FileWriter {
 public:
  virtual ~FileWriter() = default;
  /// Appends `data` to what was written.
  virtual void append(std::string_view data) = 0;
  /// Writes `data` over bytes already appended from `offset` on (a header whose checksums are
  /// known only once the data after it was written); the file does not grow.
  virtual void write_at(uint64_t offset, std::string_view data) = 0;
};
/// write_file_atomically of what `produce` writes through the FileWriter it is given, as it
/// produces it: a file larger than memory, or bytes copied from a device one part at a time.
/// An exception from `produce` removes the temporary and leaves `path` as it was.
void write_file_atomically(const std::string& path,
                           const std::function<void(FileWriter&)>& produce);

/// Reads a whole regular file, refusing anything else (a FIFO, a folder, a device: reading
/// one could block forever or never end) and files larger than `max_bytes`.
/// Throws kiln::FileError naming the path and the problem.
std::string read_file(const std::string& path, size_t max_bytes);

/// A regular file opened for reading parts of it, for files too large to hold twice in memory
/// (model weights): each part is read straight into the memory that keeps it.
class FileReader {
 public:
  /// Opens `path`, refusing anything but a regular file (as read_file does).
  /// Throws kiln::FileError naming the path and the problem.
  explicit FileReader(const std::string& path);
  ~FileReader();
  FileReader(const FileReader&) = delete;
  FileReader& operator=(const FileReader&) = delete;

  /// The file's size in bytes when it was opened.
  uint64_t size() const { return size_; }
  /// Reads `count` bytes at `offset` into `out`; throws kiln::FileError when the file ends
  /// first (it shrank) or the read fails.
  void read_at(uint64_t offset, void* out, size_t count) const;
  const std::string& path() const { return path_; }

 private:
  std::string path_;
  int fd_ = -1;
  uint64_t size_ = 0;
};

}  // namespace kiln
