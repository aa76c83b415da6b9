// A CPU emulation of a CUDA thread block, for kernel bodies written against an `Env` (as
// ops/nn/attention_flash.h's are): each of the block's threads is an OS thread; __syncthreads,
// warp shuffles and the warp-wide mma.sync products (m16n8k16 on 16-bit values, m16n8k8 on tf32)
// are barriers over the block or the warp. Slow (a context switch per thread per barrier) and meant
// for small problems: it lets CI, which has no GPU, run the very code the GPU runs, index
// arithmetic, masking and register fragments included.
#pragma once

#include <barrier>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <deque>
#include <memory>
#include <thread>
#include <type_traits>
#include <vector>

#include "kiln/framework/dtype.h"

namespace kiln::testing {

/// One block's shared state: its barriers, the warps' exchange slots, and shared memory.
class EmulatedBlock {
 public:
  EmulatedBlock(int threads, size_t shared_bytes)
      : block_barrier_(threads), shared_((shared_bytes + 15) / 16) {
    const int warps = (threads + 31) / 32;
    warps_.reserve(static_cast<size_t>(warps));
    for (int w = 0; w < warps; ++w) warps_.emplace_back(std::make_unique<Warp>());
  }

  /// The block's shared memory: 16-byte aligned, filled with a pattern (not zeros), so that a
  /// body reading what it never wrote gets garbage, as on a GPU.
  void* shared() { return shared_.data(); }
  void fill_shared_with_garbage() {
    std::memset(shared_.data(), 0x7f, shared_.size() * sizeof(shared_[0]));  // NaN-ish bits
  }

  struct alignas(16) Chunk {
    unsigned char bytes[16];
  };
  /// What the lanes of a warp put down for one warp-wide operation.
  struct Slots {
    float value[32];
    uint32_t a[32][4];
    uint32_t b[32][2];
    const void* address[32];
  };
  /// Two sets of slots, used by turns: a lane writes operation k's set only after the barrier
  /// of operation k - 1, which every lane reaches after reading operation k - 2's (the same
  /// set), so one barrier per operation suffices.
  struct Warp {
    std::barrier<> barrier{32};
    Slots slots[2];
  };

  std::barrier<> block_barrier_;
  std::vector<std::unique_ptr<Warp>> warps_;
  std::vector<Chunk> shared_;
};

/// When an emulated cp.async lands. `deferred`: only when waited for, so reading a tile before
/// its wait reads garbage. `eager`: at once, so refilling a buffer that another warp still
/// reads changes what that warp reads. A body right under both is right on the GPU.
enum class CopyTiming { deferred, eager };

/// What a kernel body sees of its thread: attention_flash.h's Env, on the CPU.
class EmulatedEnv {
 public:
  EmulatedEnv(EmulatedBlock& block, int thread, CopyTiming timing = CopyTiming::deferred)
      : block_(block), thread_(thread), timing_(timing) {}

  int thread() const { return thread_; }
  void sync() { block_.block_barrier_.arrive_and_wait(); }

  float shfl_xor(float v, int lane_mask) {
    EmulatedBlock::Slots& w = exchange_slots();
    w.value[lane()] = v;
    warp().barrier.arrive_and_wait();
    return w.value[lane() ^ lane_mask];
  }

  float exp2(float x) const { return std::exp2(x); }

  /// cp.async of 16 bytes (zeros where `read` is false), landing as CopyTiming says.
  void copy16_async(void* to, const void* from, bool read) { copy_async(to, from, read, 16); }
  /// The same for 4 bytes.
  void copy4_async(void* to, const void* from, bool read) { copy_async(to, from, read, 4); }
  /// Closes the group of copies started since the last commit.
  void commit_copies() {
    groups_.push_back(std::move(open_));
    open_.clear();
  }
  /// Lands the oldest groups until at most kPending remain in flight.
  template <int kPending>
  void wait_copies() {
    while (groups_.size() > static_cast<size_t>(kPending)) {
      for (const Copy& c : groups_.front()) land(c);
      groups_.pop_front();
    }
  }

  template <typename T>
  uint32_t pack(float lo, float hi) const {
    return uint32_t{T(lo).bits} | uint32_t{T(hi).bits} << 16;
  }

  /// ldmatrix .x4 (PTX ISA): four 8 x 8 matrices of 16-bit values; lane 8 m + r gives the
  /// address of row r of matrix m. Lane L = 4 g + t receives in x[m] the values (g, 2t) and
  /// (g, 2t + 1) of matrix m, or with kTransposed (2t, g) and (2t + 1, g).
  template <bool kTransposed>
  void load_matrices(uint32_t (&x)[4], const void* row) {
    EmulatedBlock::Slots& w = exchange_slots();
    w.address[lane()] = row;
    warp().barrier.arrive_and_wait();
    const int g = lane() / 4, t = lane() % 4;
    auto at = [&](int m, int r, int c) {
      return static_cast<const uint16_t*>(w.address[8 * m + r])[c];
    };
    for (int m = 0; m < 4; ++m) {
      const uint16_t lo = kTransposed ? at(m, 2 * t, g) : at(m, g, 2 * t);
      const uint16_t hi = kTransposed ? at(m, 2 * t + 1, g) : at(m, g, 2 * t + 1);
      x[m] = uint32_t{lo} | uint32_t{hi} << 16;
    }
  }

  /// A turn across blocks (a counter in global memory). Blocks run one after another in index
  /// order, so a block whose turn has not come would wait forever on the GPU as well (it waits
  /// for a later block, which a GPU might not have started): that stops the run, loudly.
  void wait_turn(const int* turn, int value) const {
    if (*turn == value) return;
    std::fprintf(stderr,
                 "simt_emulator: a block waits for turn %d of a counter at %d: on a GPU it "
                 "would wait forever\n",
                 value, *turn);
    std::abort();
  }
  void pass_turn(int* turn, int value) const { *turn = value; }
  /// __threadfence: nothing to do here. Blocks run one after another (each joins its threads
  /// before the next starts) and the block barrier orders a block's own threads. (A fence would
  /// also be refused under ThreadSanitizer, which cannot model it.)
  void fence() const {}
  float load_through_l2(const float* at) const { return *at; }
  void store_through_l2(float* at, float v) const { *at = v; }

  /// cvt.rna.tf32.f32: x rounded to 10 mantissa bits, to nearest with ties away from zero (a
  /// carry into the exponent is right); the 13 low bits zero. NaN and infinity pass unchanged.
  uint32_t to_tf32(float x) const {
    uint32_t bits;
    std::memcpy(&bits, &x, sizeof(bits));
    if ((bits & 0x7f800000u) == 0x7f800000u) return bits;
    return (bits + 0x1000u) & 0xffffe000u;
  }

  /// d += a b over the warp with the PTX ISA's m16n8k8 tf32 fragments (attention_flash.h's
  /// header comment); the tensor cores read 19 bits of each register (sign, exponent, 10 bits
  /// of mantissa) and ignore the 13 below.
  void mma_tf32(float (&d)[4], const uint32_t (&a)[4], uint32_t b0, uint32_t b1) {
    const EmulatedBlock::Slots& w = publish_fragments(a, b0, b1);
    auto value = [](uint32_t bits) {
      bits &= 0xffffe000u;
      float x;
      std::memcpy(&x, &bits, sizeof(x));
      return x;
    };
    float A[16][8], B[8][8];
    for (int l = 0; l < 32; ++l) {
      const int g = l / 4, t = l % 4;
      for (int r = 0; r < 4; ++r) A[g + 8 * (r % 2)][t + 4 * (r / 2)] = value(w.a[l][r]);
      for (int r = 0; r < 2; ++r) B[t + 4 * r][g] = value(w.b[l][r]);
    }
    multiply_into<8>(d, A, B);
  }

  /// d += a b over the warp, with the PTX ISA's m16n8k16 fragments (attention_flash.h's header
  /// comment): every lane puts its fragments in the warp's slots, then computes its own four
  /// values of d from all of them.
  template <typename T>
  void mma(float (&d)[4], const uint32_t (&a)[4], uint32_t b0, uint32_t b1) {
    const EmulatedBlock::Slots& w = publish_fragments(a, b0, b1);
    float A[16][16], B[16][8];
    auto low = [](uint32_t r) { return T::to_float(static_cast<uint16_t>(r & 0xffffu)); };
    auto high = [](uint32_t r) { return T::to_float(static_cast<uint16_t>(r >> 16)); };
    for (int l = 0; l < 32; ++l) {
      const int g = l / 4, t = l % 4;
      for (int r = 0; r < 4; ++r) {
        const int row = g + 8 * (r % 2), col = 2 * t + 8 * (r / 2);
        A[row][col] = low(w.a[l][r]);
        A[row][col + 1] = high(w.a[l][r]);
      }
      for (int r = 0; r < 2; ++r) {
        B[2 * t + 8 * r][g] = low(w.b[l][r]);
        B[2 * t + 8 * r + 1][g] = high(w.b[l][r]);
      }
    }
    multiply_into<16>(d, A, B);
  }

 private:
  // This lane's four values of d (the C fragment) += A B, summed in f32.
  template <int K>
  void multiply_into(float (&d)[4], const float (&A)[16][K], const float (&B)[K][8]) const {
    const int g = lane() / 4, t = lane() % 4;
    for (int e = 0; e < 4; ++e) {
      const int row = g + 8 * (e / 2), col = 2 * t + (e % 2);
      float sum = d[e];
      for (int k = 0; k < K; ++k) sum += A[row][k] * B[k][col];
      d[e] = sum;
    }
  }

  // Puts this lane's A and B fragments in the warp's slots and waits for every lane's.
  const EmulatedBlock::Slots& publish_fragments(const uint32_t (&a)[4], uint32_t b0, uint32_t b1) {
    EmulatedBlock::Slots& w = exchange_slots();
    std::memcpy(w.a[lane()], a, sizeof(a));
    w.b[lane()][0] = b0;
    w.b[lane()][1] = b1;
    warp().barrier.arrive_and_wait();
    return w;
  }

  int lane() const { return thread_ % 32; }
  EmulatedBlock::Warp& warp() { return *block_.warps_[static_cast<size_t>(thread_ / 32)]; }
  // This warp operation's set of slots (every lane of a warp runs the same operations).
  EmulatedBlock::Slots& exchange_slots() { return warp().slots[operations_++ % 2]; }

  struct Copy {
    void* to;
    const void* from;  // nullptr: zeros
    size_t bytes;
  };
  void copy_async(void* to, const void* from, bool read, size_t bytes) {
    const Copy copy{to, read ? from : nullptr, bytes};
    if (timing_ == CopyTiming::eager)
      land(copy);
    else
      open_.push_back(copy);
  }
  static void land(const Copy& c) {
    if (c.from)
      std::memcpy(c.to, c.from, c.bytes);
    else
      std::memset(c.to, 0, c.bytes);
  }

  EmulatedBlock& block_;
  int thread_;
  CopyTiming timing_;
  uint64_t operations_ = 0;
  std::vector<Copy> open_;
  std::deque<std::vector<Copy>> groups_;
};

/// Runs body(env, block_index, shared) for every block of a 1-D grid, one block at a time, each
/// on `threads` OS threads (a multiple of 32).
template <typename Body>
void run_emulated_grid(int64_t blocks, int threads, size_t shared_bytes, Body body,
                       CopyTiming timing = CopyTiming::deferred) {
  for (int64_t b = 0; b < blocks; ++b) {
    EmulatedBlock block(threads, shared_bytes);
    block.fill_shared_with_garbage();
    std::vector<std::thread> workers;
    workers.reserve(static_cast<size_t>(threads));
    for (int i = 0; i < threads; ++i)
      workers.emplace_back([&block, &body, b, i, timing] {
        EmulatedEnv env(block, i, timing);
        body(env, b, block.shared());
      });
    for (std::thread& w : workers) w.join();
  }
}

}  // namespace kiln::testing
