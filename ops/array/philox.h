// Philox4x32-10 (Salmon et al., "Parallel random numbers: as easy as 1, 2, 3", SC'11): a
// counter-based generator. Output block i depends only on (key, i), so any element can be
// computed independently: the same numbers on every thread count and on the GPU.
#pragma once

#include <array>
#include <cstdint>
#include <string>

#include "kiln/framework/dtype.h"
#include "kiln/framework/graph.h"

namespace kiln::ops {

/// Four 32-bit random words for the 128-bit counter (`counter`, `stream`) under 64-bit `key`.
/// Seeded sources use stream 0; random ops put the run's random counter there, so each run
/// draws from a block of counters no other run touches.
KILN_HOST_DEVICE std::array<uint32_t, 4> philox4x32(uint64_t counter, uint64_t key,
                                                    uint64_t stream = 0) {
  uint32_t c0 = static_cast<uint32_t>(counter), c1 = static_cast<uint32_t>(counter >> 32);
  uint32_t c2 = static_cast<uint32_t>(stream), c3 = static_cast<uint32_t>(stream >> 32);
  uint32_t k0 = static_cast<uint32_t>(key), k1 = static_cast<uint32_t>(key >> 32);
  for (int round = 0; round < 10; ++round) {
    uint64_t p0 = uint64_t{0xD2511F53u} * c0;
    uint64_t p1 = uint64_t{0xCD9E8D57u} * c2;
    uint32_t n0 = static_cast<uint32_t>(p1 >> 32) ^ c1 ^ k0;
    uint32_t n2 = static_cast<uint32_t>(p0 >> 32) ^ c3 ^ k1;
    c1 = static_cast<uint32_t>(p1);
    c3 = static_cast<uint32_t>(p0);
    c0 = n0;
    c2 = n2;
    k0 += 0x9E3779B9u;  // golden ratio
    k1 += 0xBB67AE85u;  // sqrt(3) - 1
  }
  return {c0, c1, c2, c3};
}

/// A 64-bit key from a seed and a node's name (FNV-1a of the name, mixed into the seed), so
/// two random nodes with one seed still draw independent numbers, on every machine.
inline uint64_t random_key(int64_t seed, const std::string& node_name) {
  uint64_t h = 0xcbf29ce484222325ull;
  for (unsigned char c : node_name) h = (h ^ c) * 0x100000001b3ull;
  return static_cast<uint64_t>(seed) ^ (h * 0x9E3779B97F4A7C15ull);
}

/// The key a random node draws under: its seed attribute and the name in its "draw_as"
/// attribute where set (the copy that a recompute segment builds for the backward pass names
/// the node it repeats, so it draws the same numbers), else its own name.
inline uint64_t random_key(const Node& node) {
  const std::string& draw_as = node.attr<std::string>("draw_as");
  return random_key(node.attr<int64_t>("seed"), draw_as.empty() ? node.name() : draw_as);
}

/// A double in [0, 1) from 53 random bits.
KILN_HOST_DEVICE double unit_double(uint32_t hi, uint32_t lo) {
  return static_cast<double>(((uint64_t{hi} << 32) | lo) >> 11) * (1.0 / 9007199254740992.0);
}

}  // namespace kiln::ops
