// CRC-32C (Castagnoli), the checksum stored with every checkpointed tensor.
#pragma once

#include <cstddef>
#include <cstdint>

namespace kiln {

/// CRC-32C of `size` bytes, continuing from `crc` (0 to start): with the CPU's CRC32
/// instruction where it has one (x86-64 with SSE4.2), else crc32c_bytewise.
uint32_t crc32c(const void* data, size_t size, uint32_t crc = 0);
/// The same from a table, one byte at a time (the portable path; tests hold both alike).
uint32_t crc32c_bytewise(const void* data, size_t size, uint32_t crc = 0);

}  // namespace kiln
