#include "kiln/framework/safetensors.h"

#include <algorithm>
#include <bit>
#include <cstring>
#include <functional>
#include <set>
#include <string_view>
#include <vector>

#include "kiln/framework/byte_order.h"
#include "kiln/framework/file_io.h"
#include "kiln/framework/json.h"

namespace kiln {

namespace {

static_assert(std::endian::native == std::endian::little,
              "safetensors data is little-endian, as Kiln's tensors are on x86-64 and ARM");

// The reference implementation's bound: a header is a list of names and shapes, never this big.
constexpr uint64_t kMaxHeaderBytes = 100'000'000;

struct NamedDType {
  const char* name;
  DType dtype;
};
constexpr NamedDType kDTypes[] = {{"F32", f32}, {"F64", f64}, {"F16", f16}, {"BF16", bf16},
                                  {"I32", i32}, {"I64", i64}, {"U8", u8},   {"BOOL", boolean}};
// Dtypes of the format that Kiln has no tensors of.
constexpr const char* kOtherDTypes[] = {"I8",  "I16",     "U16",     "U32",
                                        "U64", "F8_E4M3", "F8_E5M2", "F8_E8M0",
                                        "F4",  "F6_E2M3", "F6_E3M2", "C64"};

const char* name_of(DType dtype) {
  for (const NamedDType& d : kDTypes)
    if (d.dtype == dtype) return d.name;
  return "?";
}

// One tensor's header entry, checked: its bytes are data[begin, end) of the data buffer.
struct Entry {
  std::string name;
  DType dtype;
  Shape shape;
  uint64_t begin = 0, end = 0;
};

struct Header {
  std::vector<Entry> entries;
  std::map<std::string, std::string> metadata;
};

// The header length from the first 8 bytes, checked against the file's size.
uint64_t header_length(const char* first8, uint64_t file_size, const std::string& source) {
  const uint64_t length = read_little_endian(first8, 8);
  KILN_CHECK(length <= kMaxHeaderBytes, FileError, "[safetensors] ", source,
             ": the header length is ", length, " bytes, more than the format's limit of ",
             kMaxHeaderBytes, " (not a safetensors file?)");
  KILN_CHECK(length <= file_size - 8, FileError, "[safetensors] ", source, ": the header is ",
             length, " bytes but the file has only ", file_size - 8,
             " after the length (truncated?)");
  return length;
}

DType parse_dtype(const JsonValue* value, const std::string& where) {
  KILN_CHECK(value != nullptr && value->kind() == JsonValue::Kind::string, FileError, where,
             ": \"dtype\" is missing or not a string");
  for (const NamedDType& d : kDTypes)
    if (value->text() == d.name) return d.dtype;
  for (const char* other : kOtherDTypes)
    KILN_CHECK(value->text() != other, FileError, where, ": dtype ", other,
               " is not one Kiln has (F32 F64 F16 BF16 I32 I64 U8 BOOL); cast the tensor to one "
               "of them before saving");
  throw FileError(str(where, ": unknown dtype \"", value->text(), "\""));
}

// The two numbers of a [begin, end] pair or the dims of a shape: non-negative integers.
std::vector<uint64_t> parse_integers(const JsonValue* value, const char* key,
                                     const std::string& where) {
  KILN_CHECK(value != nullptr && value->kind() == JsonValue::Kind::array, FileError, where, ": \"",
             key, "\" is missing or not an array");
  std::vector<uint64_t> numbers;
  for (const JsonValue& item : value->items()) {
    uint64_t n = 0;
    KILN_CHECK(item.to_uint64(&n) && n <= static_cast<uint64_t>(INT64_MAX), FileError, where,
               ": \"", key, "\" holds ",
               item.kind() == JsonValue::Kind::number ? item.text() : "a ",
               item.kind() == JsonValue::Kind::number ? "" : JsonValue::kind_name(item.kind()),
               ", not an integer from 0 to 2^63 - 1");
    numbers.push_back(n);
  }
  return numbers;
}

// Parses and checks the JSON header; `data_bytes` is the size of the buffer after it.
Header parse_header(std::string_view text, uint64_t data_bytes, const std::string& source) {
  const std::string prefix = str("[safetensors] ", source);
  KILN_CHECK(!text.empty() && text[0] == '{', FileError, prefix,
             ": the header does not start with '{' (not a safetensors file?)");
  const JsonValue root = parse_json(text, source);
  KILN_CHECK(root.is_object(), FileError, prefix, ": the header is not a JSON object");
  Header header;
  for (const auto& [name, value] : root.members()) {
    if (name == "__metadata__") {
      KILN_CHECK(value.is_object(), FileError, prefix, ": \"__metadata__\" is a ",
                 JsonValue::kind_name(value.kind()), ", not an object of strings");
      for (const auto& [key, item] : value.members()) {
        KILN_CHECK(item.kind() == JsonValue::Kind::string, FileError, prefix,
                   ": \"__metadata__\" entry \"", key, "\" is a ",
                   JsonValue::kind_name(item.kind()), ", not a string");
        header.metadata[key] = item.text();
      }
      continue;
    }
    const std::string where = str(prefix, ": tensor '", name, "'");
    KILN_CHECK(value.is_object(), FileError, where, ": its entry is a ",
               JsonValue::kind_name(value.kind()), ", not an object");
    Entry entry;
    entry.name = name;
    entry.dtype = parse_dtype(value.find("dtype"), where);
    const std::vector<uint64_t> dims = parse_integers(value.find("shape"), "shape", where);
    const std::vector<uint64_t> offsets =
        parse_integers(value.find("data_offsets"), "data_offsets", where);
    KILN_CHECK(
        offsets.size() == 2 && offsets[0] <= offsets[1] && offsets[1] <= data_bytes, FileError,
        where, ": data_offsets must be [begin, end] with begin <= end <= ", data_bytes,
        " (the data's size)",
        offsets.size() == 2 ? str("; it has [", offsets[0], ", ", offsets[1], "]") : std::string());
    entry.begin = offsets[0];
    entry.end = offsets[1];
    // The byte count, unless it wraps around 64 bits; a 0 dim anywhere makes it 0.
    uint64_t bytes = dtype_size(entry.dtype);
    bool fits = true;
    for (uint64_t d : dims) fits = !__builtin_mul_overflow(bytes, d, &bytes) && fits;
    const bool empty = std::find(dims.begin(), dims.end(), 0u) != dims.end();
    if (empty) {
      bytes = 0;
      fits = true;
    }
    std::vector<int64_t> signed_dims(dims.begin(), dims.end());
    entry.shape = Shape(signed_dims);
    KILN_CHECK(fits && bytes == entry.end - entry.begin, FileError, where, ": ",
               name_of(entry.dtype), entry.shape, " needs ",
               fits ? str(bytes) : std::string("over 2^64"), " bytes, its offsets [", entry.begin,
               ", ", entry.end, "] hold ", entry.end - entry.begin);
    if (empty) {
      try {
        entry.shape.numel();
      } catch (const Error&) {
        throw FileError(str(where, ": shape ", entry.shape, " is too large"));
      }
    }
    header.entries.push_back(std::move(entry));
  }
  // The tensors must tile the data: sorted by offset, each begins where the one before ends,
  // and the last ends where the data does.
  std::vector<const Entry*> order;
  for (const Entry& e : header.entries) order.push_back(&e);
  std::sort(order.begin(), order.end(), [](const Entry* a, const Entry* b) {
    return a->begin != b->begin ? a->begin < b->begin : a->end < b->end;
  });
  uint64_t expected = 0;
  const Entry* previous = nullptr;
  for (const Entry* e : order) {
    KILN_CHECK(e->begin == expected, FileError, prefix, ": tensor '", e->name, "' starts at byte ",
               e->begin, " of the data but ",
               previous ? str("'", previous->name, "' ends at ", expected)
                        : std::string("the first tensor must start at 0"),
               e->begin < expected ? " (they overlap)" : " (a gap)");
    expected = e->end;
    previous = e;
  }
  KILN_CHECK(expected == data_bytes, FileError, prefix, ": the tensors end at byte ", expected,
             " of the data but the file has ", data_bytes, " (", data_bytes - expected,
             " bytes no tensor holds)");
  return header;
}

// The tensors of a checked header, each filled by `read(entry, destination)`.
SafetensorsFile build(const Header& header, const std::string& source,
                      const std::function<void(const Entry&, void*)>& read) {
  SafetensorsFile file;
  file.source = source;
  file.metadata = header.metadata;
  for (const Entry& e : header.entries) {
    Tensor t = Tensor::empty(e.dtype, e.shape);
    if (e.end > e.begin) read(e, t.raw_data());
    if (e.dtype == DType::boolean) {  // Kiln's bools are 0 or 1; the file's are any byte
      auto* bytes = static_cast<uint8_t*>(t.raw_data());
      for (int64_t i = 0; i < t.numel(); ++i) bytes[i] = bytes[i] != 0;
    }
    file.tensors.emplace(e.name, std::move(t));
  }
  return file;
}

SafetensorsFile load_one(const std::string& path) {
  const FileReader reader(path);
  KILN_CHECK(reader.size() >= 8, FileError, "[safetensors] ", path, ": ", reader.size(),
             " bytes is too short for a safetensors file (8 bytes of header length first)");
  char first8[8];
  reader.read_at(0, first8, 8);
  const uint64_t length = header_length(first8, reader.size(), path);
  std::string text(static_cast<size_t>(length), '\0');
  reader.read_at(8, text.data(), text.size());
  const uint64_t data_start = 8 + length;
  const Header header = parse_header(text, reader.size() - data_start, path);
  return build(header, path, [&](const Entry& e, void* out) {
    reader.read_at(data_start + e.begin, out, static_cast<size_t>(e.end - e.begin));
  });
}

bool ends_with(const std::string& text, std::string_view tail) {
  return text.size() >= tail.size() &&
         text.compare(text.size() - tail.size(), tail.size(), tail) == 0;
}

// A sharded checkpoint: {"metadata": {...}, "weight_map": {"tensor": "shard file", ...}}.
SafetensorsFile load_sharded(const std::string& index_path) {
  const std::string prefix = str("[safetensors] ", index_path);
  const JsonValue index = parse_json(read_file(index_path, kMaxHeaderBytes), index_path);
  const JsonValue* weight_map = index.is_object() ? index.find("weight_map") : nullptr;
  KILN_CHECK(weight_map != nullptr && weight_map->is_object(), FileError, prefix,
             ": not a sharded-checkpoint index (no \"weight_map\" object)");
  const size_t slash = index_path.rfind('/');
  const std::string folder = slash == std::string::npos ? "" : index_path.substr(0, slash + 1);
  std::map<std::string, std::set<std::string>> wanted;  // shard -> the tensors taken from it
  for (const auto& [name, shard] : weight_map->members()) {
    KILN_CHECK(shard.kind() == JsonValue::Kind::string, FileError, prefix, ": weight_map['", name,
               "'] is a ", JsonValue::kind_name(shard.kind()), ", not a file name");
    // The index is untrusted: it names files beside it, never ones elsewhere.
    const std::string& file = shard.text();
    KILN_CHECK(!file.empty() && file[0] != '/' && file.find('\0') == std::string::npos &&
                   ("/" + file + "/").find("/../") == std::string::npos,
               FileError, prefix, ": weight_map['", name, "'] is ", json_quoted(file),
               ": shards must be files in the index's folder");
    wanted[file].insert(name);
  }
  SafetensorsFile result;
  result.source = index_path;
  if (const JsonValue* metadata = index.find("metadata"); metadata && metadata->is_object())
    for (const auto& [key, value] : metadata->members())
      if (value.kind() == JsonValue::Kind::string || value.kind() == JsonValue::Kind::number)
        result.metadata[key] = value.text();
  for (const auto& [file, names] : wanted) {
    SafetensorsFile shard = load_one(folder + file);
    for (const auto& [name, tensor] : shard.tensors)
      KILN_CHECK(names.count(name), FileError, prefix, ": shard ", file, " holds tensor '", name,
                 "', which the index does not list there");
    for (const std::string& name : names) result.tensors.emplace(name, shard.at(name));
    for (const auto& [key, value] : shard.metadata) result.metadata.emplace(key, value);
  }
  return result;
}

// The file's bytes; `where` starts error messages ("[safetensors] PATH: ").
// A file's bytes in parts: its first 8 bytes and header, then every tensor's bytes (host
// copies, in file order), so a save writes each from its own memory.
struct FileParts {
  std::string head;
  std::vector<Tensor> tensors;

  std::vector<std::string_view> views() const {
    std::vector<std::string_view> out = {head};
    for (const Tensor& t : tensors)
      out.emplace_back(static_cast<const char*>(t.raw_data()), t.nbytes());
    return out;
  }
};

FileParts serialize(const std::map<std::string, Tensor>& tensors,
                    const std::map<std::string, std::string>& metadata, const std::string& where) {
  std::vector<std::pair<const std::string*, Tensor>> order;
  for (const auto& [name, tensor] : tensors) {
    KILN_CHECK(name != "__metadata__", FileError, where,
               "a tensor may not be called \"__metadata__\" (the format's metadata key)");
    KILN_CHECK(tensor.defined(), FileError, where, "tensor '", name, "' is undefined");
    order.emplace_back(&name, tensor.to(Device::cpu()));
  }
  // Largest elements first: every tensor then starts at a multiple of its element size.
  std::stable_sort(order.begin(), order.end(), [](const auto& a, const auto& b) {
    return dtype_size(a.second.dtype()) > dtype_size(b.second.dtype());
  });
  std::string header = "{";
  if (!metadata.empty()) {
    header += "\"__metadata__\":{";
    bool first = true;
    for (const auto& [key, value] : metadata) {
      header += str(first ? "" : ",", json_quoted(key), ":", json_quoted(value));
      first = false;
    }
    header += "}";
  }
  uint64_t offset = 0;
  for (const auto& [name, tensor] : order) {
    std::string dims;
    for (int64_t i = 0; i < tensor.rank(); ++i) dims += str(i ? "," : "", tensor.shape()[i]);
    header += str(header.size() > 1 ? "," : "", json_quoted(*name), ":{\"dtype\":\"",
                  name_of(tensor.dtype()), "\",\"shape\":[", dims, "],\"data_offsets\":[", offset,
                  ",", offset + tensor.nbytes(), "]}");
    offset += tensor.nbytes();
  }
  header += "}";
  header.append((8 - header.size() % 8) % 8, ' ');  // the data starts 8-byte aligned
  FileParts file;
  append_little_endian(file.head, header.size(), 8);
  file.head += header;
  for (auto& [name, tensor] : order) file.tensors.push_back(std::move(tensor));
  return file;
}

}  // namespace

const Tensor& SafetensorsFile::at(const std::string& name) const {
  const auto it = tensors.find(name);
  if (it != tensors.end()) return it->second;
  std::string names;
  int listed = 0;
  for (const auto& entry : tensors) {
    if (listed == 8) {
      names += ", ...";
      break;
    }
    names += (listed++ ? ", '" : "'") + entry.first + "'";
  }
  throw FileError(str("[safetensors] ", source, ": no tensor '", name, "'; it has ", tensors.size(),
                      tensors.size() == 1 ? " tensor" : " tensors", tensors.empty() ? "" : ": ",
                      names));
}

SafetensorsFile load_safetensors(const std::string& path) {
  return ends_with(path, ".index.json") ? load_sharded(path) : load_one(path);
}

SafetensorsFile parse_safetensors(const std::string& data, const std::string& source) {
  KILN_CHECK(data.size() >= 8, FileError, "[safetensors] ", source, ": ", data.size(),
             " bytes is too short for a safetensors file (8 bytes of header length first)");
  const uint64_t length = header_length(data.data(), data.size(), source);
  const size_t data_start = 8 + static_cast<size_t>(length);
  const Header header =
      parse_header(std::string_view(data).substr(8, length), data.size() - data_start, source);
  return build(header, source, [&](const Entry& e, void* out) {
    std::memcpy(out, data.data() + data_start + e.begin, static_cast<size_t>(e.end - e.begin));
  });
}

void save_safetensors(const std::map<std::string, Tensor>& tensors, const std::string& path,
                      const std::map<std::string, std::string>& metadata) {
  write_file_atomically(path,
                        serialize(tensors, metadata, str("[safetensors] ", path, ": ")).views());
}

std::string serialize_safetensors(const std::map<std::string, Tensor>& tensors,
                                  const std::map<std::string, std::string>& metadata) {
  const FileParts file = serialize(tensors, metadata, "[safetensors] ");
  std::string data;
  for (std::string_view part : file.views()) data.append(part);
  return data;
}

}  // namespace kiln
