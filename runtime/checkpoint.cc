#include "kiln/runtime/checkpoint.h"

#include <cstring>
#include <functional>
#include <set>

#include "framework/checkpoint.pb.h"
#include "kiln/framework/byte_order.h"
#include "kiln/framework/crc32c.h"
#include "kiln/framework/file_io.h"
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
std::vector<std::pair<std::string, Tensor>> parse_version_1(const std::string& data,
                                                            const std::string& where) {
  proto::Checkpoint ckpt;
  KILN_CHECK(ckpt.ParseFromString(data), FileError, where,
             ": not a checkpoint file (truncated or garbled)");
  KILN_CHECK(ckpt.version() == 1, FileError, where, ": unsupported checkpoint version ",
             ckpt.version(), " (this build reads 1 and ", kCheckpointVersion, ")");
  std::vector<std::pair<std::string, Tensor>> out;
  for (const proto::CheckpointVariable& var : ckpt.variables()) {
    const std::string at = str(where, ": variable '", var.name(), "'");
    Tensor t = tensor_from_proto(var.value(), at);
    uint32_t crc = crc32c(t.raw_data(), t.nbytes());
    KILN_CHECK(crc == var.crc32c(), FileError, at, ": checksum mismatch (stored ", var.crc32c(),
               ", computed ", crc, "): the file is corrupt");
    out.emplace_back(var.name(), std::move(t));
  }
  return out;
}

bool starts_with_magic(const char* bytes, uint64_t size) {
  return size >= sizeof(kMagic) && std::memcmp(bytes, kMagic, sizeof(kMagic)) == 0;
}

// The header of version 2 `source`, read and checked whole: its checksum, every entry's type,
// and that the tensors fill the rest of the file exactly. Sets each tensor's offset and size.
proto::CheckpointHeader read_header(const ByteSource& source, const std::string& where,
                                    std::vector<uint64_t>* offsets, std::vector<uint64_t>* sizes,
                                    std::vector<TensorType>* types) {
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
  uint64_t total = 0;
  for (const proto::CheckpointEntry& entry : parsed.tensors()) {
    uint64_t bytes = 0;
    types->push_back(tensor_type_from_file(
        entry.dtype(), {entry.dims().data(), static_cast<size_t>(entry.dims().size())},
        str(where, ": variable '", entry.name(), "'"), &bytes));
    offsets->push_back(data_start + total);
    sizes->push_back(bytes);
    total += bytes;  // each below 2^44, and the sum stops at the file's size: no overflow
    KILN_CHECK(total <= source.size - data_start, FileError, where, ": the tensors up to '",
               entry.name(), "' need ", total, " bytes, the file holds ", source.size - data_start,
               ": it is truncated");
  }
  KILN_CHECK(data_start + total == source.size, FileError, where, ": the header lists ", total,
             " bytes of tensors, the file holds ", source.size - data_start,
             total > source.size - data_start ? ": it is truncated" : " (bytes after the last)");
  return parsed;
}

}  // namespace

// Where the reader's bytes come from: its file, or the caller's memory.
struct CheckpointReader::Source {
  std::unique_ptr<FileReader> file;
  ByteSource bytes;
};

CheckpointReader::CheckpointReader(const std::string& path)
    : source_(std::make_unique<Source>()), where_(str("[checkpoint] ", path)) {
  source_->file = std::make_unique<FileReader>(path);
  const FileReader& file = *source_->file;
  KILN_CHECK(file.size() > 0, FileError, where_, ": the file is empty");
  char magic[sizeof(kMagic)] = {};
  if (file.size() >= sizeof(kMagic)) file.read_at(0, magic, sizeof(magic));
  source_->bytes = {file.size(), [&file](uint64_t offset, void* out, size_t count) {
                      file.read_at(offset, out, count);
                    }};
  read_whole_ = !starts_with_magic(magic, file.size());
  if (read_whole_) {
    for (auto& [name, tensor] : parse_version_1(read_file(path, size_t{2} << 30), where_)) {
      entries_.push_back({name, tensor.dtype(), tensor.shape()});
      whole_.push_back(std::move(tensor));
    }
  }
  open_entries();
}

CheckpointReader::CheckpointReader(const std::string& data, const std::string& source)
    : source_(std::make_unique<Source>()), where_(str("[checkpoint] ", source)) {
  KILN_CHECK(!data.empty(), FileError, where_, ": the file is empty");
  source_->bytes = {data.size(), [&data, where = where_](uint64_t offset, void* out, size_t count) {
                      KILN_CHECK(offset <= data.size() && count <= data.size() - offset, FileError,
                                 where, ": the data ends before byte ", offset + count);
                      std::memcpy(out, data.data() + offset, count);
                    }};
  read_whole_ = !starts_with_magic(data.data(), data.size());
  if (read_whole_) {
    for (auto& [name, tensor] : parse_version_1(data, where_)) {
      entries_.push_back({name, tensor.dtype(), tensor.shape()});
      whole_.push_back(std::move(tensor));
    }
  }
  open_entries();
}

CheckpointReader::~CheckpointReader() = default;

void CheckpointReader::open_entries() {
  if (!read_whole_) {  // version 2 (a version 1 file was read whole)
    std::vector<uint64_t> sizes;
    std::vector<TensorType> types;
    const proto::CheckpointHeader header =
        read_header(source_->bytes, where_, &offsets_, &sizes, &types);
    for (int i = 0; i < header.tensors_size(); ++i) {
      entries_.push_back({header.tensors(i).name(), types[static_cast<size_t>(i)].dtype,
                          types[static_cast<size_t>(i)].shape});
      checksums_.push_back(header.tensors(i).crc32c());
    }
  }
  std::set<std::string> names;
  for (const Entry& entry : entries_)
    KILN_CHECK(names.insert(entry.name).second, FileError, where_, ": variable '", entry.name,
               "': appears twice");
}

Tensor CheckpointReader::read(size_t index) const {
  KILN_CHECK(index < entries_.size(), Error, where_, ": tensor ", index, " of ", entries_.size());
  if (read_whole_) return whole_[index];
  const Entry& entry = entries_[index];
  Tensor t = Tensor::empty(entry.dtype, entry.shape);
  if (t.nbytes()) source_->bytes.read_at(offsets_[index], t.raw_data(), t.nbytes());
  const uint32_t crc = crc32c(t.raw_data(), t.nbytes());
  KILN_CHECK(crc == checksums_[index], FileError, where_, ": variable '", entry.name,
             "': checksum mismatch (stored ", checksums_[index], ", computed ", crc,
             "): the file is corrupt");
  canonicalize_file_bools(t);
  return t;
}

void write_checkpoint(const std::vector<CheckpointSource>& sources, const std::string& path) {
  // The header is written first with every checksum 0 and again at the end with the tensors'.
  // Its checksums are fixed32 fields serialized even when 0, so both have the same length.
  proto::CheckpointHeader header;
  header.set_version(kCheckpointVersion);
  header.set_producer("kiln 0.1.0");
  std::set<std::string> names;
  for (const CheckpointSource& source : sources) {
    KILN_CHECK(names.insert(source.name).second, FileError, "[checkpoint] ", path, ": variable '",
               source.name, "' is given twice");
    proto::CheckpointEntry* entry = header.add_tensors();
    entry->set_name(source.name);
    entry->set_dtype(static_cast<int32_t>(source.dtype));
    for (int64_t d : source.shape) entry->add_dims(d);
    entry->set_crc32c(0);
  }
  std::string header_bytes;
  KILN_CHECK(header.SerializeToString(&header_bytes), FileError, "[checkpoint] ", path,
             ": cannot serialize the header");
  write_file_atomically(path, [&](FileWriter& out) {
    std::string prelude(kMagic, sizeof(kMagic));
    append_little_endian(prelude, header_bytes.size(), 8);
    out.append(prelude);
    out.append(header_bytes);
    out.append(std::string(4, '\0'));
    for (size_t i = 0; i < sources.size(); ++i) {
      const CheckpointSource& source = sources[i];
      const Tensor value = source.host_value();  // a device tensor's copy lives until the next
      KILN_CHECK(value.defined() && value.device().is_cpu() && value.dtype() == source.dtype &&
                     value.shape() == source.shape,
                 FileError, "[checkpoint] ", path, ": variable '", source.name, "' should be a ",
                 "host tensor ", source.dtype, source.shape, ", got ",
                 value.defined() ? str(value.dtype(), value.shape(), " on ", value.device())
                                 : std::string("an undefined tensor"));
      header.mutable_tensors(static_cast<int>(i))
          ->set_crc32c(crc32c(value.raw_data(), value.nbytes()));
      out.append({static_cast<const char*>(value.raw_data()), value.nbytes()});
    }
    std::string final_header, header_crc;
    KILN_CHECK(
        header.SerializeToString(&final_header) && final_header.size() == header_bytes.size(),
        FileError, "[checkpoint] ", path, ": the header changed length");
    append_little_endian(header_crc, crc32c(final_header.data(), final_header.size()), 4);
    out.write_at(kPreludeBytes, final_header);
    out.write_at(kPreludeBytes + final_header.size(), header_crc);
  });
}

void write_checkpoint(const std::map<std::string, Tensor>& tensors, const std::string& path) {
  std::vector<CheckpointSource> sources;
  for (const auto& [name, tensor] : tensors) {
    KILN_CHECK(tensor.defined() && tensor.device().is_cpu(), FileError, "[checkpoint] ", path,
               ": variable '", name, "' is not a host tensor");
    sources.push_back({name, tensor.dtype(), tensor.shape(), [&value = tensor] { return value; }});
  }
  write_checkpoint(sources, path);
}

namespace {
std::map<std::string, Tensor> read_all(const CheckpointReader& reader) {
  std::map<std::string, Tensor> out;
  for (size_t i = 0; i < reader.entries().size(); ++i)
    out.emplace(reader.entries()[i].name, reader.read(i));
  return out;
}
}  // namespace

std::map<std::string, Tensor> read_checkpoint(const std::string& path) {
  return read_all(CheckpointReader(path));
}

std::map<std::string, Tensor> parse_checkpoint(const std::string& data, const std::string& path) {
  return read_all(CheckpointReader(data, path));
}

}  // namespace kiln
