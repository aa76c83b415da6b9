#include "kiln/framework/npy.h"

#include <cstring>
#include <string_view>

#include "kiln/framework/graph_io.h"

namespace kiln {

namespace {

constexpr char kMagic[] = "\x93NUMPY";

const char* descr_of(DType dtype) {
  switch (dtype) {
    case DType::f32:
      return "<f4";
    case DType::f64:
      return "<f8";
    case DType::f16:
      return "<f2";
    case DType::i32:
      return "<i4";
    case DType::i64:
      return "<i8";
    case DType::u8:
      return "|u1";
    case DType::boolean:
      return "|b1";
    case DType::bf16:
      break;
  }
  return nullptr;
}

// Finds `'key': <value>` in the header dict and returns the raw value text.
std::string header_field(const std::string& header, const std::string& key,
                         const std::string& path) {
  size_t at = header.find("'" + key + "'");
  KILN_CHECK(at != std::string::npos, FileError, "[npy] ", path, ": header has no '", key,
             "' field");
  size_t colon = header.find(':', at);
  KILN_CHECK(colon != std::string::npos, FileError, "[npy] ", path, ": malformed header");
  size_t begin = header.find_first_not_of(' ', colon + 1);
  KILN_CHECK(begin != std::string::npos, FileError, "[npy] ", path, ": malformed header");
  size_t end;
  if (header[begin] == '(') {
    end = header.find(')', begin);
    KILN_CHECK(end != std::string::npos, FileError, "[npy] ", path, ": malformed shape");
    return header.substr(begin, end - begin + 1);
  }
  if (header[begin] == '\'') {
    end = header.find('\'', begin + 1);
    KILN_CHECK(end != std::string::npos, FileError, "[npy] ", path, ": malformed header");
    return header.substr(begin + 1, end - begin - 1);
  }
  end = header.find_first_of(",}", begin);
  return header.substr(begin, end == std::string::npos ? std::string::npos : end - begin);
}

}  // namespace

void save_npy(const Tensor& tensor, const std::string& path) {
  const char* descr = descr_of(tensor.dtype());
  KILN_CHECK(descr != nullptr, FileError, "[npy] ", path, ": NumPy has no ", tensor.dtype(),
             " dtype; cast to f32 first");
  // NumPy's tuple syntax: "()", "(3,)", "(2, 3)".
  std::string shape = "(";
  for (int64_t i = 0; i < tensor.rank(); ++i)
    shape += str(tensor.shape()[i], tensor.rank() == 1 ? "," : (i + 1 < tensor.rank() ? ", " : ""));
  shape += ")";
  std::string header =
      str("{'descr': '", descr, "', 'fortran_order': False, 'shape': ", shape, ", }");
  // Pad with spaces so the data starts on a 64-byte boundary; the header ends with '\n'.
  size_t total = 10 + header.size() + 1;
  header.append((64 - total % 64) % 64, ' ');
  header += '\n';
  std::string data(kMagic, 6);
  data += '\x01';
  data += '\x00';
  data += static_cast<char>(header.size() & 0xff);
  data += static_cast<char>((header.size() >> 8) & 0xff);
  data += header;
  data.append(static_cast<const char*>(tensor.raw_data()), tensor.nbytes());
  write_file_atomically(path, data);
}

Tensor load_npy(const std::string& path) {
  return parse_npy(read_file(path, size_t{1} << 40), path);
}

Tensor parse_npy(const std::string& data, const std::string& path) {
  KILN_CHECK(data.size() >= 10 && data.compare(0, 6, kMagic, 6) == 0, FileError, "[npy] ", path,
             ": not a .npy file (bad magic)");
  uint8_t major = static_cast<uint8_t>(data[6]);
  size_t header_len, header_start;
  if (major == 1) {
    header_len = static_cast<uint8_t>(data[8]) | (static_cast<uint8_t>(data[9]) << 8);
    header_start = 10;
  } else if (major == 2 || major == 3) {
    KILN_CHECK(data.size() >= 12, FileError, "[npy] ", path, ": truncated header");
    header_len = 0;
    for (int i = 3; i >= 0; --i) header_len = (header_len << 8) | static_cast<uint8_t>(data[8 + i]);
    header_start = 12;
  } else {
    throw FileError(str("[npy] ", path, ": unsupported format version ", int(major)));
  }
  KILN_CHECK(header_start + header_len <= data.size(), FileError, "[npy] ", path,
             ": truncated header (", header_len, " bytes announced, ", data.size(),
             " in the file)");
  std::string header = data.substr(header_start, header_len);
  std::string descr = header_field(header, "descr", path);
  KILN_CHECK(header_field(header, "fortran_order", path) == "False", FileError, "[npy] ", path,
             ": Fortran-order arrays are not supported; save with np.ascontiguousarray");
  DType dtype{};
  bool found = false;
  // Accept '<f4' and its native-order spelling '=f4'; '|u1' also as 'u1'.
  std::string_view wanted = descr;
  if (!wanted.empty() && (wanted[0] == '=' || wanted[0] == '<' || wanted[0] == '|'))
    wanted.remove_prefix(1);
  for (DType d : {f32, f64, f16, i32, i64, u8, boolean}) {
    if (std::string_view(descr_of(d)).substr(1) == wanted && descr[0] != '>') {
      dtype = d;
      found = true;
    }
  }
  KILN_CHECK(found, FileError, "[npy] ", path, ": unsupported dtype '", descr, "'");
  std::string shape_text = header_field(header, "shape", path);
  std::vector<int64_t> dims;
  for (size_t i = 1; i + 1 < shape_text.size();) {
    while (i < shape_text.size() && (shape_text[i] == ' ' || shape_text[i] == ',')) ++i;
    if (i + 1 >= shape_text.size()) break;
    size_t end = i;
    while (end < shape_text.size() && shape_text[end] >= '0' && shape_text[end] <= '9') ++end;
    KILN_CHECK(end > i && end - i < 16, FileError, "[npy] ", path, ": malformed shape ",
               shape_text);
    dims.push_back(std::stoll(shape_text.substr(i, end - i)));
    i = end;
  }
  Shape shape(dims);
  int64_t numel = 0;
  try {
    numel = shape.numel();
  } catch (const Error&) {
    throw FileError(str("[npy] ", path, ": shape ", shape, " is too large"));
  }
  const size_t offset = header_start + header_len;
  const size_t available = data.size() - offset;
  // The byte count is formed only where it cannot wrap around 64 bits.
  const uint64_t size = dtype_size(dtype);
  const bool representable = static_cast<uint64_t>(numel) <= UINT64_MAX / size;
  KILN_CHECK(representable && static_cast<uint64_t>(numel) * size == available, FileError, "[npy] ",
             path, ": ", dtype, shape, " needs ",
             representable ? str(static_cast<uint64_t>(numel) * size) : str("over 2^64"),
             " bytes of data, the file has ", available);
  const size_t need = available;
  Tensor t = Tensor::empty(dtype, shape);
  if (need) std::memcpy(t.raw_data(), data.data() + offset, need);
  if (dtype == DType::boolean) {
    auto* bytes = static_cast<uint8_t*>(t.raw_data());
    for (int64_t i = 0; i < numel; ++i) bytes[i] = bytes[i] != 0;
  }
  return t;
}

}  // namespace kiln
