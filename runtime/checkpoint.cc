#include "kiln/runtime/checkpoint.h"

#include "framework/checkpoint.pb.h"
#include "kiln/framework/crc32c.h"
#include "kiln/framework/graph_io.h"

namespace kiln {

void write_checkpoint(const std::map<std::string, Tensor>& tensors, const std::string& path) {
  proto::Checkpoint ckpt;
  ckpt.set_version(kCheckpointVersion);
  ckpt.set_producer("kiln 0.1.0");
  for (const auto& [name, tensor] : tensors) {
    proto::CheckpointVariable* var = ckpt.add_variables();
    var->set_name(name);
    tensor_to_proto(tensor, var->mutable_value());
    var->set_crc32c(crc32c(tensor.raw_data(), tensor.nbytes()));
  }
  std::string data;
  KILN_CHECK(ckpt.SerializeToString(&data), FileError, "[checkpoint] ", path,
             ": cannot serialize (larger than 2 GiB?)");
  write_file_atomically(path, data);
}

std::map<std::string, Tensor> read_checkpoint(const std::string& path) {
  return parse_checkpoint(read_file(path, size_t{2} << 30), path);
}

std::map<std::string, Tensor> parse_checkpoint(const std::string& data, const std::string& path) {
  const std::string where = str("[checkpoint] ", path);
  proto::Checkpoint ckpt;
  KILN_CHECK(!data.empty(), FileError, where, ": the file is empty");
  KILN_CHECK(ckpt.ParseFromString(data), FileError, where,
             ": not a checkpoint file (truncated or garbled)");
  KILN_CHECK(ckpt.version() == kCheckpointVersion, FileError, where,
             ": unsupported checkpoint version ", ckpt.version(), " (this build reads ",
             kCheckpointVersion, ")");
  std::map<std::string, Tensor> out;
  for (const proto::CheckpointVariable& var : ckpt.variables()) {
    const std::string at = str(where, ": variable '", var.name(), "'");
    Tensor t = tensor_from_proto(var.value(), at);
    uint32_t crc = crc32c(t.raw_data(), t.nbytes());
    KILN_CHECK(crc == var.crc32c(), FileError, at, ": checksum mismatch (stored ", var.crc32c(),
               ", computed ", crc, "): the file is corrupt");
    KILN_CHECK(out.emplace(var.name(), std::move(t)).second, FileError, at, ": appears twice");
  }
  return out;
}

}  // namespace kiln
