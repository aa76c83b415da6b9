#include "kiln/framework/crc32c.h"

#include <array>
#include <cstring>

#if defined(__x86_64__)
#include <nmmintrin.h>
#endif

namespace kiln {

namespace {
// Table for the reflected polynomial 0x82F63B78, one byte at a time.
constexpr std::array<uint32_t, 256> make_table() {
  std::array<uint32_t, 256> table{};
  for (uint32_t i = 0; i < 256; ++i) {
    uint32_t c = i;
    for (int k = 0; k < 8; ++k) c = (c & 1) ? (c >> 1) ^ 0x82F63B78u : c >> 1;
    table[i] = c;
  }
  return table;
}
constexpr std::array<uint32_t, 256> kTable = make_table();

#if defined(__x86_64__)
// SSE4.2's crc32 instruction is this CRC's update (same polynomial, reflected), 8 bytes a step:
// ~20x the table here (2.4 s per GiB with the table). Like the table it works on the inverted
// state, so both give the same bits.
__attribute__((target("sse4.2"))) uint32_t crc32c_instruction(const uint8_t* p, size_t size,
                                                              uint32_t crc) {
  for (; size > 0 && (reinterpret_cast<uintptr_t>(p) & 7) != 0; --size)
    crc = _mm_crc32_u8(crc, *p++);
  uint64_t wide = crc;
  for (; size >= 8; size -= 8, p += 8) {
    uint64_t word;
    std::memcpy(&word, p, 8);
    wide = _mm_crc32_u64(wide, word);
  }
  crc = static_cast<uint32_t>(wide);
  for (; size > 0; --size) crc = _mm_crc32_u8(crc, *p++);
  return crc;
}

bool has_crc32_instruction() {
  static const bool has = __builtin_cpu_supports("sse4.2");
  return has;
}
#endif
}  // namespace

uint32_t crc32c_bytewise(const void* data, size_t size, uint32_t crc) {
  const auto* p = static_cast<const uint8_t*>(data);
  crc = ~crc;
  for (size_t i = 0; i < size; ++i) crc = kTable[(crc ^ p[i]) & 0xff] ^ (crc >> 8);
  return ~crc;
}

uint32_t crc32c(const void* data, size_t size, uint32_t crc) {
#if defined(__x86_64__)
  if (has_crc32_instruction())
    return ~crc32c_instruction(static_cast<const uint8_t*>(data), size, ~crc);
#endif
  return crc32c_bytewise(data, size, crc);
}

}  // namespace kiln
