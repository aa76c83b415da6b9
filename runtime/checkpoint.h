// Checkpoint files: named tensors, each with a CRC-32C, written atomically. Version 2
// (framework/checkpoint.proto): a checksummed header of names, dtypes and shapes, then the
// tensors' bytes, so a checkpoint may pass 2 GiB and loads each tensor straight into its
// memory. Version 1 files (one protobuf message) still load.
#pragma once

#include <functional>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "kiln/framework/tensor.h"

namespace kiln {

/// The checkpoint format version this build writes and reads.
inline constexpr int kCheckpointVersion = 2;

/// Writes `tensors` to `path` through a temporary file and a rename: a crash mid-save leaves
/// the previous file as it was. Throws kiln::FileError.
void write_checkpoint(const std::map<std::string, Tensor>& tensors, const std::string& path);

/// A tensor to checkpoint: its name and type, and what gives its value on the host when the
/// writer reaches it (a device tensor's copy, made then; a host tensor itself).
struct CheckpointSource {
  std::string name;
  DType dtype;
  Shape shape;
  std::function<Tensor()> host_value;
};
/// write_checkpoint of tensors fetched one at a time, in the given order (names unique): each
/// is written, and its checksum taken, as it is fetched, and the header's checksums filled in
/// at the end, so host memory holds one tensor of a device's model at a time. A value of
/// another type than its source's is a FileError naming it, and the old file stays.
void write_checkpoint(const std::vector<CheckpointSource>& sources, const std::string& path);

/// A checkpoint file opened for reading one tensor at a time (a restore onto a device: host
/// memory holds one tensor at a time). Opening reads and checks the header (the format, its
/// checksum, every entry's type, and that the tensors fill the file exactly); read() checks
/// each tensor's checksum. A version 1 file is read whole when opened.
class CheckpointReader {
 public:
  /// Throws kiln::FileError naming the file for a missing, truncated or garbled one.
  explicit CheckpointReader(const std::string& path);
  /// The same of a checkpoint's bytes held in memory (kept by the caller while this is used);
  /// `source` names it in error messages.
  CheckpointReader(const std::string& data, const std::string& source);
  ~CheckpointReader();
  CheckpointReader(const CheckpointReader&) = delete;
  CheckpointReader& operator=(const CheckpointReader&) = delete;

  struct Entry {
    std::string name;
    DType dtype;
    Shape shape;
  };
  /// The tensors the file holds, in its order (names unique).
  const std::vector<Entry>& entries() const { return entries_; }
  /// Tensor `index` of entries(), read into a new host tensor; a FileError naming it when its
  /// checksum does not match (the file is corrupt).
  Tensor read(size_t index) const;

 private:
  /// Reads a version 2 header (a version 1 file's entries are set already); checks the names.
  void open_entries();
  struct Source;
  std::unique_ptr<Source> source_;
  std::vector<Entry> entries_;
  std::vector<uint64_t> offsets_;    // of each tensor's bytes (version 2)
  std::vector<uint32_t> checksums_;  // version 2
  bool read_whole_ = false;          // version 1
  std::vector<Tensor> whole_;        // version 1: every tensor, read when opened
  std::string where_;
};

/// Reads every tensor of a checkpoint (version 1 or 2), verifying the format, the header's and
/// each tensor's CRC, and that the tensors fill the file exactly, before allocating a tensor.
/// The file needs its size in memory once. Throws kiln::FileError naming the file (and the
/// variable) for a missing, truncated, garbled or corrupted file.
std::map<std::string, Tensor> read_checkpoint(const std::string& path);
/// read_checkpoint of the file's bytes held in memory; `source` names it in error messages.
std::map<std::string, Tensor> parse_checkpoint(const std::string& data, const std::string& source);

}  // namespace kiln
