// Checkpoint files: named tensors, each with a CRC-32C, written atomically.
#pragma once

#include <map>
#include <string>

#include "kiln/framework/tensor.h"

namespace kiln {

/// The checkpoint format version this build writes and reads.
inline constexpr int kCheckpointVersion = 1;

/// Writes `tensors` to `path` through a temporary file and a rename: a crash mid-save leaves
/// the previous file as it was. Throws kiln::FileError.
void write_checkpoint(const std::map<std::string, Tensor>& tensors, const std::string& path);

/// Reads every tensor of a checkpoint, verifying the format version and each tensor's CRC.
/// Throws kiln::FileError naming the file (and the variable) for a missing, truncated,
/// garbled or corrupted file.
std::map<std::string, Tensor> read_checkpoint(const std::string& path);
/// read_checkpoint of the file's bytes held in memory; `source` names it in error messages.
std::map<std::string, Tensor> parse_checkpoint(const std::string& data, const std::string& source);

}  // namespace kiln
