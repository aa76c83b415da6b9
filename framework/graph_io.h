// Saving graphs to protobuf files and loading them back.
#pragma once

#include <memory>
#include <span>
#include <string>

#include "kiln/framework/file_io.h"
#include "kiln/framework/graph.h"

namespace kiln {

namespace proto {
class GraphDef;
class TensorProto;
}  // namespace proto

/// The graph file format version this build writes and the oldest it reads. Version 2 files
/// end with a CRC-32C of their bytes (version 1 files, which have none, still load).
inline constexpr int kGraphVersion = 2;
inline constexpr int kMinGraphVersion = 1;

/// On-disk form of a graph file.
enum class GraphFormat {
  automatic,  ///< text for names ending in .pbtxt or .txt, binary otherwise
  binary,
  text,
};

struct SaveGraphOptions {
  GraphFormat format = GraphFormat::automatic;
  /// Signatures to store in addition to those already added to the graph.
  std::vector<Signature> signatures{};
};

/// Converts a graph to its protobuf form (nodes in id order, attributes, constants, signatures).
void graph_to_proto(const Graph& graph, proto::GraphDef* out);
/// Builds a graph from its protobuf form. `source` names the file in error messages. Every
/// node is validated: known op, declared attributes of the right type, existing inputs, no
/// cycles, shapes that inference accepts. Throws kiln::FileError on any problem.
std::unique_ptr<Graph> graph_from_proto(const proto::GraphDef& def, const std::string& source);

/// Writes `graph` to `path` atomically (a temporary file renamed over the target), with a
/// CRC-32C of the file's bytes as its last field.
void save_graph(const Graph& graph, const std::string& path, const SaveGraphOptions& options = {});
/// Reads a graph file written by save_graph (binary or text). Throws kiln::FileError naming the
/// file and the problem for a missing, truncated, garbled or invalid file, and for one whose
/// checksum does not match its bytes (a text file edited by hand loads once its last line,
/// `crc32c: N`, is deleted).
std::unique_ptr<Graph> load_graph(const std::string& path,
                                  GraphFormat format = GraphFormat::automatic);

/// The text form of a graph (protobuf text format), as `kiln-graph --text` prints it.
std::string graph_to_text(const Graph& graph);

/// A tensor's protobuf form (dtype, dims, little-endian bytes).
void tensor_to_proto(const Tensor& tensor, proto::TensorProto* out);
/// Reads a TensorProto, checking dtype, dims and byte count before allocating; `where` starts
/// every error message. Throws kiln::FileError.
Tensor tensor_from_proto(const proto::TensorProto& proto, const std::string& where);

/// The type of a tensor a file describes by a dtype number and dims, checked before anything
/// is allocated: a known dtype, dims >= 0, at most 2^40 elements. `bytes` gets its byte count.
/// Throws kiln::FileError starting with `where`.
TensorType tensor_type_from_file(int32_t dtype, std::span<const int64_t> dims,
                                 const std::string& where, uint64_t* bytes);
/// Makes every byte of a bool tensor read from a file 0 or 1 (another value would be undefined
/// behaviour when read as bool); other dtypes are left as they are.
void canonicalize_file_bools(Tensor& tensor);

}  // namespace kiln
