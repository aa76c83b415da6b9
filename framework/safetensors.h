// Safetensors files: the format Hugging Face and most of the ecosystem ship model weights in.
// Loading one gives tensors by name; a model maps them to its variables with
// Session::set_variable (a name map and, for Linear weights, a transpose: PyTorch stores them
// [out, in], kiln::nn::Linear [in, out]). Saving writes a file PyTorch's and JAX's safetensors
// packages read.
//
// The format: 8 bytes (little-endian u64) N, N bytes of JSON
//   {"__metadata__": {"format": "pt"},
//    "layer.weight": {"dtype": "F32", "shape": [4, 2], "data_offsets": [0, 32]}, ...}
// then the bytes of every tensor (C order, little-endian), at its offsets into this buffer.
#pragma once

#include <map>
#include <string>

#include "kiln/framework/tensor.h"

namespace kiln {

/// The tensors of a safetensors file, by name, and the strings of its "__metadata__".
struct SafetensorsFile {
  std::map<std::string, Tensor> tensors;
  std::map<std::string, std::string> metadata;
  /// The file it came from, for error messages.
  std::string source;

  /// The tensor called `name`. Throws kiln::FileError naming the file, the name and the
  /// names the file has.
  const Tensor& at(const std::string& name) const;
};

/// Reads a safetensors file, or every shard of a sharded one when `path` is the index
/// ("model.safetensors.index.json", whose "weight_map" names each tensor's shard file in
/// the same folder). The dtypes Kiln has are read as they are: F32 F64 F16 BF16 I32 I64 U8
/// BOOL; cast others (I8, F8, ...) to one of them before saving. Each tensor is read straight
/// into its own memory, so a file needs its size in memory once.
///
/// The file is untrusted: before any tensor is allocated, the header must be valid JSON of the
/// layout above, each dtype known, each shape's byte count equal to its offsets' span, and
/// the tensors must tile the data exactly (no gaps, overlaps, or bytes after the last), as the
/// format requires. Throws kiln::FileError naming the file, the tensor and the values.
SafetensorsFile load_safetensors(const std::string& path);

/// Reads safetensors bytes held in memory; `source` names them in error messages.
SafetensorsFile parse_safetensors(const std::string& data, const std::string& source);

/// Writes `tensors` (host or GPU; names unique by construction, "__metadata__" refused) and
/// `metadata` as a safetensors file, atomically (file_io.h): the tensors in order of element
/// size, largest first, then name, so each starts aligned to its element size, as the
/// reference writer does. Each tensor is written from its own memory (a GPU tensor from a host
/// copy), never joined with the others first. Throws kiln::FileError.
void save_safetensors(const std::map<std::string, Tensor>& tensors, const std::string& path,
                      const std::map<std::string, std::string>& metadata = {});
/// The bytes save_safetensors writes, in memory (parse_safetensors reads them back).
std::string serialize_safetensors(const std::map<std::string, Tensor>& tensors,
                                  const std::map<std::string, std::string>& metadata = {});

}  // namespace kiln
