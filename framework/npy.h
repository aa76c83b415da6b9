// NumPy .npy files: how users move arrays in and out of Kiln.
#pragma once

#include <string>

#include "kiln/framework/tensor.h"

namespace kiln {

/// Writes `tensor` as a .npy file (format 1.0, little-endian, C order), atomically.
void save_npy(const Tensor& tensor, const std::string& path);
/// Reads a .npy file of a dtype Kiln has (f4 f8 f2 i4 i8 u1 b1, little-endian, C order).
/// Throws kiln::FileError naming the file and the problem otherwise.
Tensor load_npy(const std::string& path);
/// Reads the bytes of a .npy file held in memory; `source` names it in error messages.
Tensor parse_npy(const std::string& data, const std::string& source);

}  // namespace kiln
