// Little-endian integers in file formats (checkpoint and safetensors headers, graph checksums,
// TensorBoard records): written and read byte by byte, whatever the host's order.
#pragma once

#include <cstdint>
#include <string>

namespace kiln {

/// Appends the low `bytes` bytes of `value` to `out`, least significant first.
inline void append_little_endian(std::string& out, uint64_t value, int bytes) {
  for (int i = 0; i < bytes; ++i) out.push_back(static_cast<char>((value >> (8 * i)) & 0xff));
}

/// The unsigned integer stored in `bytes` bytes at `p`, least significant first.
inline uint64_t read_little_endian(const char* p, int bytes) {
  uint64_t value = 0;
  for (int i = bytes - 1; i >= 0; --i) value = (value << 8) | static_cast<uint8_t>(p[i]);
  return value;
}

}  // namespace kiln
