// Checkpoint files: named tensors, each with a CRC-32C, written atomically. Version 2
// (framework/checkpoint.proto): a checksummed header of names, dtypes and shapes, then the
// tensors' bytes, so a checkpoint may pass 2 GiB and loads each tensor straight into its
// memory. Version 1 files (one protobuf message) still load.
#pragma once

#include <map>
#include <string>

#include "kiln/framework/tensor.h"

namespace kiln {

/// The checkpoint format version this build writes and reads.
inline constexpr int kCheckpointVersion = 2;

/// Writes `tensors` to `path` through a temporary file and a rename: a crash mid-save leaves
/// the previous file as it was. Throws kiln::FileError.
void write_checkpoint(const std::map<std::string, Tensor>& tensors, const std::string& path);

/// Reads every tensor of a checkpoint (version 1 or 2), verifying the format, the header's and
/// each tensor's CRC, and that the tensors fill the file exactly, before allocating a tensor.
/// The file needs its size in memory once. Throws kiln::FileError naming the file (and the
/// variable) for a missing, truncated, garbled or corrupted file.
std::map<std::string, Tensor> read_checkpoint(const std::string& path);
/// read_checkpoint of the file's bytes held in memory; `source` names it in error messages.
std::map<std::string, Tensor> parse_checkpoint(const std::string& data, const std::string& source);

}  // namespace kiln
