#include "kiln/runtime/checkpoint.h"

#include <cstring>
#include <functional>

#include "framework/checkpoint.pb.h"
#include "kiln/framework/byte_order.h"
#include "kiln/framework/crc32c.h"
#include "kiln/framework/graph_io.h"

namespace kiln {

namespace {

constexpr char kMagic[8] = {'K', 'I', 'L', 'N', 'C', 'K', 'P', '2'};
constexpr uint64_t kPreludeBytes = sizeof(kMagic) + 8;  // magic, header length
// Headers hold names and dims only; a longer one is garbage (checked before it is allocated).
constexpr uint64_t kMaxHeaderBytes = uint64_t{1} << 30;

// Where a checkpoint's bytes come from: a file (read in parts) or memory.
struct ByteSource {
  uint64_t size;
  std::function<void(uint64_t offset, void* out, size_t count)> read_at;
};

// Version 1: one Checkpoint message, every tensor's bytes inside it.
std::map<std::string, Tensor> parse_version_1(const std::string& data, const std::string& where) {
  proto::Checkpoint ckpt;
  KILN_CHECK(ckpt.ParseFromString(data), FileError, where,
             ": not a checkpoint file (truncated or garbled)");
  KILN_CHECK(ckpt.version() == 1, FileError, where, ": unsupported checkpoint version ",
             ckpt.version(), " (this build reads 1 and ", kCheckpointVersion, ")");
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

// Version 2: the header is read and checked whole (its CRC, every entry's type, and that the
// tensors fill the rest of the file exactly) before any tensor is allocated; then each tensor
// is read straight into its own memory and its CRC checked.
std::map<std::string, Tensor> parse_version_2(const ByteSource& source, const std::string& where) {
  KILN_CHECK(source.size >= kPreludeBytes, FileError, where, ": a version 2 file of ", source.size,
             " bytes is truncated (its header's length alone takes ", kPreludeBytes, ")");
  char prelude[kPreludeBytes];
  source.read_at(0, prelude, sizeof(prelude));
  const uint64_t header_bytes = read_little_endian(prelude + sizeof(kMagic), 8);
  KILN_CHECK(header_bytes <= kMaxHeaderBytes && header_bytes + kPreludeBytes + 4 <= source.size,
             FileError, where, ": the header claims ", header_bytes, " bytes and the file has ",
             source.size, ": it is truncated or corrupt");
  std::string header(header_bytes, '\0');
  source.read_at(kPreludeBytes, header.data(), header.size());
  char stored_crc[4];
  source.read_at(kPreludeBytes + header_bytes, stored_crc, 4);
  const auto stored = static_cast<uint32_t>(read_little_endian(stored_crc, 4));
  const uint32_t computed = crc32c(header.data(), header.size());
  KILN_CHECK(stored == computed, FileError, where, ": header checksum mismatch (stored ", stored,
             ", computed ", computed, "): the file is corrupt");
  proto::CheckpointHeader parsed;
  KILN_CHECK(parsed.ParseFromString(header), FileError, where, ": the header is garbled");
  KILN_CHECK(parsed.version() == 2, FileError, where, ": a version 2 file says version ",
             parsed.version());

  const uint64_t data_start = kPreludeBytes + header_bytes + 4;
  std::vector<TensorType> types;
  std::vector<uint64_t> sizes;
  uint64_t total = 0;
  for (const proto::CheckpointEntry& entry : parsed.tensors()) {
    uint64_t bytes = 0;
    types.push_back(tensor_type_from_file(
        entry.dtype(), {entry.dims().data(), static_cast<size_t>(entry.dims().size())},
        str(where, ": variable '", entry.name(), "'"), &bytes));
    sizes.push_back(bytes);
    total += bytes;  // each below 2^44, and the sum stops at the file's size: no overflow
    KILN_CHECK(total <= source.size - data_start, FileError, where, ": the tensors up to '",
               entry.name(), "' need ", total, " bytes, the file holds ", source.size - data_start,
               ": it is truncated");
  }
  KILN_CHECK(data_start + total == source.size, FileError, where, ": the header lists ", total,
             " bytes of tensors, the file holds ", source.size - data_start,
             total > source.size - data_start ? ": it is truncated" : " (bytes after the last)");

  std::map<std::string, Tensor> out;
  uint64_t offset = data_start;
  for (int i = 0; i < parsed.tensors_size(); ++i) {
    const proto::CheckpointEntry& entry = parsed.tensors(i);
    const std::string at = str(where, ": variable '", entry.name(), "'");
    Tensor t =
        Tensor::empty(types[static_cast<size_t>(i)].dtype, types[static_cast<size_t>(i)].shape);
    const uint64_t bytes = sizes[static_cast<size_t>(i)];
    if (bytes) source.read_at(offset, t.raw_data(), bytes);
    offset += bytes;
    const uint32_t crc = crc32c(t.raw_data(), t.nbytes());
    KILN_CHECK(crc == entry.crc32c(), FileError, at, ": checksum mismatch (stored ", entry.crc32c(),
               ", computed ", crc, "): the file is corrupt");
    canonicalize_file_bools(t);
    KILN_CHECK(out.emplace(entry.name(), std::move(t)).second, FileError, at, ": appears twice");
  }
  return out;
}

bool starts_with_magic(const char* bytes, uint64_t size) {
  return size >= sizeof(kMagic) && std::memcmp(bytes, kMagic, sizeof(kMagic)) == 0;
}

}  // namespace

void write_checkpoint(const std::map<std::string, Tensor>& tensors, const std::string& path) {
  proto::CheckpointHeader header;
  header.set_version(kCheckpointVersion);
  header.set_producer("kiln 0.1.0");
  std::vector<std::string_view> data;
  for (const auto& [name, tensor] : tensors) {
    KILN_CHECK(tensor.defined() && tensor.device().is_cpu(), FileError, "[checkpoint] ", path,
               ": variable '", name, "' is not a host tensor");
    proto::CheckpointEntry* entry = header.add_tensors();
    entry->set_name(name);
    entry->set_dtype(static_cast<int32_t>(tensor.dtype()));
    for (int64_t d : tensor.shape()) entry->add_dims(d);
    entry->set_crc32c(crc32c(tensor.raw_data(), tensor.nbytes()));
    data.emplace_back(static_cast<const char*>(tensor.raw_data()), tensor.nbytes());
  }
  std::string header_bytes;
  KILN_CHECK(header.SerializeToString(&header_bytes), FileError, "[checkpoint] ", path,
             ": cannot serialize the header");
  std::string prelude(kMagic, sizeof(kMagic)), header_crc;
  append_little_endian(prelude, header_bytes.size(), 8);
  append_little_endian(header_crc, crc32c(header_bytes.data(), header_bytes.size()), 4);
  std::vector<std::string_view> parts = {prelude, header_bytes, header_crc};
  parts.insert(parts.end(), data.begin(), data.end());
  write_file_atomically(path, parts);
}

std::map<std::string, Tensor> read_checkpoint(const std::string& path) {
  const std::string where = str("[checkpoint] ", path);
  const FileReader file(path);
  KILN_CHECK(file.size() > 0, FileError, where, ": the file is empty");
  char magic[sizeof(kMagic)] = {};
  if (file.size() >= sizeof(kMagic)) file.read_at(0, magic, sizeof(magic));
  if (!starts_with_magic(magic, file.size()))
    return parse_version_1(read_file(path, size_t{2} << 30), where);
  return parse_version_2({file.size(), [&](uint64_t offset, void* out,
                                           size_t count) { file.read_at(offset, out, count); }},
                         where);
}

std::map<std::string, Tensor> parse_checkpoint(const std::string& data, const std::string& path) {
  const std::string where = str("[checkpoint] ", path);
  KILN_CHECK(!data.empty(), FileError, where, ": the file is empty");
  if (!starts_with_magic(data.data(), data.size())) return parse_version_1(data, where);
  return parse_version_2({data.size(),
                          [&](uint64_t offset, void* out, size_t count) {
                            KILN_CHECK(offset <= data.size() && count <= data.size() - offset,
                                       FileError, where, ": the data ends before byte ",
                                       offset + count);
                            std::memcpy(out, data.data() + offset, count);
                          }},
                         where);
}

}  // namespace kiln
