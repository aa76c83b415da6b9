// CRC-32C (Castagnoli), the checksum stored with every checkpointed tensor.
#pragma once

#include <cstddef>
#include <cstdint>

namespace kiln {

/// CRC-32C of `size` bytes, continuing from `crc` (0 to start).
uint32_t crc32c(const void* data, size_t size, uint32_t crc = 0);

}  // namespace kiln
