// Flash attention on tensor cores for f16, bf16 and f32 (attention.cu's kernels for depths 32, 64
// and 128), written once for two executors: the GPU, and a CPU emulation of a thread block
// (tests/ops/simt_emulator.h) that runs these same bodies in CI, where no GPU is.
//
// A block of kThreads threads (4 warps) owns kRows = 64 rows: query rows (forward, dq) or key
// rows (dk, dv), 16 per warp; or, for the query side, 128 rows, 32 per warp (M = 2 m-tiles of 16:
// FlashAttention-2's shape, each K or V fragment read from shared memory feeds twice the
// products, for 64 more registers of sums). It walks the other side in steps of kCols = 64 rows
// staged in shared memory. Products are warp-wide mma.sync with f32 sums: m16n8k16 for 16-bit
// inputs
// (`Env::mma`), m16n8k8 on tf32 for f32 inputs, three per product (`mma` below, "3xTF32"). Their
// register fragments (PTX ISA, "Matrix Fragments for mma.m16n8k16 / m16n8k8"), with
// g = lane / 4 and t = lane % 4; 16-bit: two values per 32-bit register, tf32: one:
// clang-format off
//   16-bit A (16 x 16, 4 registers): A[g][2t..],  A[g+8][2t..], A[g][2t+8..], A[g+8][2t+8..]
//   16-bit B (16 x 8, 2 registers):  B[2t..][g],  B[2t+8..][g]   (k = 2t, 2t + 1; n = g)
//   tf32 A (16 x 8, 4 registers):    A[g][t], A[g+8][t], A[g][t+4], A[g+8][t+4]
//   tf32 B (8 x 8, 2 registers):     B[t][g], B[t+4][g]
//   C (16 x 8, 4 floats):            C[g][2t], C[g][2t+1], C[g+8][2t], C[g+8][2t+1]
// clang-format on
// Either A fragment covers 32 bytes of each of its 16 rows (16 halves or 8 floats), so one
// ldmatrix .x4 loads both kinds. C tiles are, value for value, the A fragment of the next
// product: probabilities and score gradients go from one product to the next in registers (two
// C tiles side by side for 16 bits; one for tf32, whose A takes the lane's columns 2t, 2t + 1 as
// its k = t, t + 4: a product sums over k in any order, so B's rows are read in that order). Each
// lane holds two rows of every C tile (g and g + 8); a row lives in the 4 lanes t = 0..3 of one g,
// so a row reduction is two xor-shuffles (1, 2).
//
// The math (scores s = scale q k^T; in base 2, x = s log2(e), so exponentials are exp2):
//   forward:  online softmax per query row: m' = max(m, x), l = l 2^(m - m') + sum 2^(x - m'),
//             o = o 2^(m - m') + 2^(x - m') v; out = o / l, lse = (m ln 2 + ln l) [natural log]
//   backward: p = 2^(x - lse log2(e)), D = dout . out (one per query row, delta),
//             ds = p (dout . v - D); dq = scale ds k, dk = scale ds^T q, dv = p^T dout.
// With a softcap c and a bias (score_log2), s = c tanh(scale q k^T / c) + bias, and ds takes the
// slope 1 - tanh^2 of the cap (dq and dk keep their factor scale).
// dq is a kernel of its own over query blocks (dq_block), dk and dv one over key blocks: 7
// products. With KILN_CUDA_ATTENTION=summed_dq, one kernel over key blocks makes all three (5
// products): dq's rows are summed over the key blocks in turns, in the order of their index
// (dkv_block<T, D, true>), which serializes a head's key blocks (slower on the H200). Either way
// no atomics add anything: the same bits on every run.
// Every masked score is exactly -inf (probability 0); a query row with no visible key gets out 0
// and lse -inf, and adds nothing to any gradient (as the CPU kernels).
//
// What a body asks of its Env (attention.cu's DeviceEnv; the emulator's EmulatedEnv):
// thread() and sync() (__syncthreads); shfl_xor; exp2; pack<T>(lo, hi) (two values rounded to T
// in one register); mma<T>(d, a, b0, b1) (d += a b, 16-bit); to_tf32(x) (cvt.rna.tf32.f32) and
// mma_tf32(d, a, b0, b1); load_matrices<transposed>(x, row) (ldmatrix .x4);
// copy16_async(to, from, read) and copy4_async (16 or 4 bytes), commit_copies(),
// wait_copies<pending>() (cp.async and its groups);
// for dq summed across blocks: wait_turn(counter, value) (spin until the counter holds value),
// pass_turn(counter, value), fence() (__threadfence), load_through_l2 / store_through_l2 (global
// f32 accesses that no multiprocessor's L1 keeps stale).
#pragma once

#include <cmath>
#include <cstdint>
#include <cstring>
#include <type_traits>

#include "kiln/framework/dtype.h"
#include "kiln/ops/nn/attention.h"

#if defined(__CUDACC__)
#define KILN_FLASH_FN __device__ __forceinline__
// Loops over the fragments and tiles a thread holds in registers: unrolled, or an array indexed
// by the loop variable goes to local memory (nvcc leaves the bigger ones rolled on its own).
#define KILN_FLASH_UNROLL _Pragma("unroll")
#else
#define KILN_FLASH_FN inline
#define KILN_FLASH_UNROLL
#endif

namespace kiln::ops::flash {

constexpr int kWarps = 4;
constexpr int kThreads = 32 * kWarps;
constexpr int kRows = 16 * kWarps;  // rows a block owns: 16 per warp
/// Rows a query-side block (forward, dq) owns with M m-tiles of 16 rows per warp: 64 or 128.
template <int M>
constexpr int kQueryRows = 16 * M* kWarps;
constexpr int kCols = 64;  // rows of the other side staged per step
constexpr float kLog2e = 1.4426950408889634f;
constexpr float kLn2 = 0.6931471805599453f;

/// What the kernels store and stage of a T: f16 and bf16 values as their bits, f32 as itself.
template <typename T>
struct ElementOf {
  using type = uint16_t;
};
template <>
struct ElementOf<float> {
  using type = float;
};
template <typename T>
using Element = typename ElementOf<T>::type;
template <typename T>
constexpr bool kTf32 = std::is_same_v<T, float>;

/// Elements in 16 bytes: one cp.async copy, one row of an ldmatrix matrix, and the padding after
/// each shared row, so that the 8 rows an ldmatrix reads fall on 8 different groups of 4 banks
/// (row strides of D + 8 halves: 4 mod 32 words at D = 64 and 128, 20 at D = 32; of D + 4 floats:
/// 4 mod 32 at every depth).
template <typename T>
constexpr int kVector = 16 / static_cast<int>(sizeof(Element<T>));
/// The k of one product: 16 (m16n8k16) for 16-bit inputs, 8 (m16n8k8) for tf32.
template <typename T>
constexpr int kStepK = 2 * kVector<T>;

/// Whether the query-side kernels (forward, dq) may run with M = 2, 32 query rows a warp: 16-bit
/// inputs at depth 64 or less. Deeper rows' sums, or f32's three products per product, would
/// leave too few of a thread's 255 registers.
template <typename T, int D>
constexpr bool kWideQueryBlocks = !kTf32<T> && D <= 64;

/// Whether the flash kernels take a problem (otherwise the warp-per-row kernels run it).
inline bool supports(DType dtype, const AttentionShape& a) {
  return (dtype == DType::f16 || dtype == DType::bf16 || dtype == DType::f32) &&
         a.depth == a.value_depth && (a.depth == 32 || a.depth == 64 || a.depth == 128);
}

/// The inputs and outputs of one launch: tensors of Element<T>.
struct Params {
  AttentionShape a;  // with the reach: causal, window, query offset
  // The op's query offset input in device memory (nullptr: none): attention.cu's forward
  // kernel sets a's from it before the body runs (the bodies read only a).
  const int64_t* query_offset = nullptr;
  float scale = 1;       // of the scores
  float scale_log2 = 1;  // scale * log2(e)
  const bool* mask = nullptr;
  // An additive bias of the scores (of Element<T>, strides a.mask_strides) instead of the mask,
  // and a softcap c (0: none): score = c tanh(scale q . k / c) + bias.
  const void* bias = nullptr;
  float softcap = 0;
  const void* q = nullptr;
  const void* k = nullptr;
  const void* v = nullptr;
  const void* dout = nullptr;    // backward
  const float* lse = nullptr;    // backward: the forward's lse
  const float* delta = nullptr;  // backward: dout . out per query row
  void* out = nullptr;           // forward
  float* lse_out = nullptr;      // forward
  void* dq = nullptr;            // backward
  void* dk = nullptr;
  void* dv = nullptr;
  // dq summed by the dk/dv kernel (dkv_block<T, D, true>): f32 partial sums [B H, Tq, D], a
  // turn counter per (b h, query block), and the counter that hands each block its place in
  // the turns (attention.cu); the counters zero before the launch.
  float* dq_sums = nullptr;
  int* dq_turns = nullptr;
  int* block_tickets = nullptr;
};

/// A tensor of Params as the Element<T>s it holds.
template <typename T>
KILN_HOST_DEVICE const Element<T>* elements(const void* tensor) {
  return static_cast<const Element<T>*>(tensor);
}

/// Blocks of `block_rows` rows (kRows unless given) over `rows` rows.
KILN_HOST_DEVICE int64_t blocks_of(int64_t rows, int64_t block_rows = kRows) {
  return (rows + block_rows - 1) / block_rows;
}

/// Whether every query block of kRows rows reaches a key (a window can leave the last rows of a
/// problem with more queries than keys none): dkv_block<T, D, true> writes dq only there.
inline bool every_query_block_reaches_a_key(const AttentionShape& a) {
  return a.keys > 0 && (a.queries == 0 || a.first_key((a.queries - 1) / kRows * kRows) < a.keys);
}

/// Whether query i attends to key j of batch-and-head bh (i may be past the queries: rows a
/// block computes but never writes).
KILN_FLASH_FN bool attends(const Params& p, int64_t bh, int64_t i, int64_t j) {
  const AttentionShape& a = p.a;
  if (j >= a.keys || !a.reaches(i, j)) return false;
  if (p.mask == nullptr) return true;
  if (i >= a.queries) return false;
  const int64_t b = bh / a.heads, h = bh % a.heads;
  return p.mask[b * a.mask_strides[0] + h * a.mask_strides[1] + i * a.mask_strides[2] +
                j * a.mask_strides[3]];
}

/// What the kernels read of a T (16-bit bits, or the float), as a float.
template <typename T>
KILN_FLASH_FN float value_of(Element<T> e) {
  if constexpr (kTf32<T>)
    return e;
  else
    return T::to_float(e);
}

/// Whether a problem's scores have a bias or a softcap: the bodies' kTerms. The bodies with
/// kTerms are kernels of their own (attention.cu), so the plain ones hold none of the terms' code.
KILN_HOST_DEVICE bool has_score_terms(const Params& p) {
  return p.bias != nullptr || p.softcap > 0;
}

/// The score of query i and key j of bh from their dot product, in log2 units (times log2 e),
/// for the bodies with kTerms (the plain ones take scale dot log2 e themselves): scale dot,
/// capped to c tanh(scale dot / c) under a softcap c, plus the bias. `slope` gets
/// d score / d (scale dot): 1 - tanh^2 under a softcap, else 1. Rows past the queries and keys
/// past the end read no bias (their scores are never used).
template <typename T>
KILN_FLASH_FN float score_log2(const Params& p, int64_t bh, int64_t i, int64_t j, float dot,
                               float& slope) {
  float score = dot * p.scale;
  slope = 1;
  if (p.softcap > 0) {
    const float t = tanhf(score / p.softcap);
    score = p.softcap * t;
    slope = 1 - t * t;
  }
  const AttentionShape& a = p.a;
  if (p.bias != nullptr && i < a.queries && j < a.keys) {
    const int64_t b = bh / a.heads, h = bh % a.heads;
    score += value_of<T>(elements<T>(p.bias)[b * a.mask_strides[0] + h * a.mask_strides[1] +
                                             i * a.mask_strides[2] + j * a.mask_strides[3]]);
  }
  return score * kLog2e;
}

/// A row's lse in log2 units for the backward's 2^(x - lse): a row that sees no key (lse -inf:
/// a mask, or a bias of -inf everywhere) gets +inf, so that each probability is 0 even where
/// its score x is -inf (no -inf - -inf).
KILN_FLASH_FN float lse_log2(float lse) {
  return lse == -INFINITY ? INFINITY : lse * kLog2e;
}

/// Shared memory of each kernel, in bytes: tiles of 64 rows (the query side's: kQueryRows<M>) of
/// D (+ kVector) elements, the side walked in steps twice (the next step's tiles load while this
/// one's are used). forward: q, 2 x (k, v); dq: q, dout, 2 x (k, v); dk and dv: k, v,
/// 2 x (q, dout, two floats per query). With dq summed in (dkvq_shared_bytes), at most 216 KiB
/// (f32, depth 128): under the 227 KiB of a Hopper block, over the 163 KiB of an A100
/// (attention.cu checks the device before it launches).
template <typename T, int D, int Rows = kRows>
constexpr size_t tile_bytes() {
  return sizeof(Element<T>) * Rows * (D + kVector<T>);
}
template <typename T, int D, int M = 1>
constexpr size_t forward_shared_bytes() {
  return tile_bytes<T, D, kQueryRows<M>>() + 4 * tile_bytes<T, D>();
}
template <typename T, int D, int M = 1>
constexpr size_t dq_shared_bytes() {
  return 2 * tile_bytes<T, D, kQueryRows<M>>() + 4 * tile_bytes<T, D>();
}
template <typename T, int D>
constexpr size_t dkv_shared_bytes() {
  return 6 * tile_bytes<T, D>() + sizeof(float) * 2 * 2 * kCols;
}
/// The row stride of the score-gradient tile that dkv_block<T, D, true> passes between warps.
template <typename T>
constexpr int kGradientStride = kRows + kVector<T>;
/// dk, dv and dq in one kernel: dkv's and the step's score gradients, [kCols][kGradientStride].
template <typename T, int D>
constexpr size_t dkvq_shared_bytes() {
  return dkv_shared_bytes<T, D>() + sizeof(Element<T>) * kCols * kGradientStride<T>;
}
static_assert(kRows == kCols, "a tile is kRows or kCols rows: the sizes above count on both");

// ---- Moving values.

KILN_FLASH_FN void store32(uint16_t* p, uint32_t v) {
#if defined(__CUDA_ARCH__)
  *reinterpret_cast<uint32_t*>(p) = v;
#else
  std::memcpy(p, &v, sizeof(v));
#endif
}
KILN_FLASH_FN uint32_t bits_of(float x) {
  uint32_t bits;
  std::memcpy(&bits, &x, sizeof(bits));
  return bits;
}
KILN_FLASH_FN float float_of(uint32_t bits) {
  float x;
  std::memcpy(&x, &bits, sizeof(x));
  return x;
}

/// Starts staging rows first .. first + Rows - 1 of (bh) from a [.., length, D] tensor into `tile`
/// (row stride D + kVector), 16 bytes per copy (Env::copy16_async(to, from, read): cp.async on
/// the GPU, zeros where `read` is false); rows past `length` become zeros, so that nothing beyond
/// the tensor can put a NaN into a product. The tile is there once the thread's copies are waited
/// for (Env::wait_copies) and the block has synchronized. `key_value`: src is k or v, whose rows
/// query head bh reads are those of its key-value head (AttentionShape::kv_row_offset).
template <typename T, int D, int Rows = kCols, class Env>
KILN_FLASH_FN void stage_rows(Env& env, Element<T>* tile, const Element<T>* src, const Params& p,
                              int64_t bh, int64_t first, int64_t length, bool key_value = false) {
  constexpr int kV = kVector<T>, kVectors = D / kV;  // 16-byte pieces of a row
  // Rows lie row_stride apart in either layout: one offset computed in 64 bits, then a step.
  const int64_t first_offset =
      key_value ? p.a.kv_row_offset(bh, first, D) : p.a.row_offset(bh, first, length, D);
  const int64_t stride = key_value ? p.a.kv_row_stride(D) : p.a.row_stride(D);
  KILN_FLASH_UNROLL
  for (int idx = env.thread(); idx < Rows * kVectors; idx += kThreads) {
    const int r = idx / kVectors, c = idx % kVectors;
    const bool inside = first + r < length;
    env.copy16_async(tile + r * (D + kV) + c * kV,
                     inside ? src + first_offset + r * stride + c * kV : src, inside);
  }
}

// ---- Fragments, loaded from shared tiles with Env::load_matrices (ldmatrix: four 8 x 8
// matrices, lane 8 m + r giving the address of row r of matrix m).

/// The A fragment of k-step ks (32 bytes of each row from 32 ks bytes on) of the 16 rows at
/// `rows` (stride `stride`): matrices (rows 0-7, 8-15) x (bytes 0-15, 16-31) in the fragment's
/// register order, for 16-bit values and tf32 alike.
template <typename T, class Env>
KILN_FLASH_FN void load_a(Env& env, uint32_t (&a)[4], const Element<T>* rows, int stride, int ks,
                          int lane) {
  const int m = lane / 8, r = lane % 8;
  env.template load_matrices<false>(
      a, rows + (r + 8 * (m % 2)) * stride + ks * kStepK<T> + kVector<T> * (m / 2));
}

/// The B fragments of n-tiles nt and nt + 1 (b[0..1], b[2..3]) at k-step ks for B = X^T, X a
/// shared tile of rows n and columns k: B[k][n] = X[n][k], the k's of one row side by side.
template <typename T, class Env>
KILN_FLASH_FN void load_b_transposed(Env& env, uint32_t (&b)[4], const Element<T>* x, int stride,
                                     int nt, int ks, int lane) {
  const int m = lane / 8, r = lane % 8;
  env.template load_matrices<false>(
      b, x + ((nt + m / 2) * 8 + r) * stride + ks * kStepK<T> + kVector<T> * (m % 2));
}

/// The B fragments of n-tiles nt and nt + 1 at k-step ks for B = Y, a shared tile of rows k and
/// columns n: each lane needs rows of one column. 16-bit: two rows side by side, which the
/// transposing load gives. tf32: rows ks 8 + 2t and + 1 as k = t and t + 4 (c_to_a's order), by
/// plain loads; a warp's 32 lanes read 32 different banks (row stride 4 mod 32 words: 8t + g).
template <typename T, class Env>
KILN_FLASH_FN void load_b(Env& env, uint32_t (&b)[4], const Element<T>* y, int stride, int nt,
                          int ks, int lane) {
  if constexpr (kTf32<T>) {
    const int g = lane / 4, t = lane % 4;
    const float* at = y + (ks * 8 + 2 * t) * stride + nt * 8 + g;
    b[0] = bits_of(at[0]);
    b[1] = bits_of(at[stride]);
    b[2] = bits_of(at[8]);
    b[3] = bits_of(at[stride + 8]);
  } else {
    const int m = lane / 8, r = lane % 8;
    env.template load_matrices<true>(
        b, y + (ks * kStepK<T> + 8 * (m % 2) + r) * stride + (nt + m / 2) * 8);
  }
}

/// The C tiles of k-step kk as an A fragment: two side by side (n-tiles 2 kk, 2 kk + 1) rounded
/// to 16 bits, or tile kk as tf32, its columns 2t, 2t + 1 taken as k = t, t + 4.
template <typename T, class Env, int N>
KILN_FLASH_FN void c_to_a(Env& env, uint32_t (&a)[4], const float (&c)[N][4], int kk) {
  if constexpr (kTf32<T>) {
    a[0] = bits_of(c[kk][0]);
    a[1] = bits_of(c[kk][2]);
    a[2] = bits_of(c[kk][1]);
    a[3] = bits_of(c[kk][3]);
  } else {
    a[0] = env.template pack<T>(c[2 * kk][0], c[2 * kk][1]);
    a[1] = env.template pack<T>(c[2 * kk][2], c[2 * kk][3]);
    a[2] = env.template pack<T>(c[2 * kk + 1][0], c[2 * kk + 1][1]);
    a[3] = env.template pack<T>(c[2 * kk + 1][2], c[2 * kk + 1][3]);
  }
}

/// x as tf32 (hi, 10 mantissa bits, rounded to nearest) and what remains (lo, also tf32).
template <class Env>
KILN_FLASH_FN void split_tf32(Env& env, uint32_t x, uint32_t& hi, uint32_t& lo) {
  hi = env.to_tf32(float_of(x));
  lo = env.to_tf32(float_of(x) - float_of(hi));
}

/// d += a b over the warp. 16-bit: one mma. f32: three mma on tf32 ("3xTF32"): with
/// x = hi + lo as split_tf32 gives, a b = hi_a hi_b + hi_a lo_b + lo_a hi_b + lo_a lo_b, and the
/// last term, ~2^-22 of the product, is left out: about f32's accuracy at tensor-core speed.
/// The small terms go first, so they are not lost under the large one.
template <typename T, class Env>
KILN_FLASH_FN void mma(Env& env, float (&d)[4], const uint32_t (&a)[4], uint32_t b0, uint32_t b1) {
  if constexpr (kTf32<T>) {
    uint32_t a_hi[4], a_lo[4], b_hi[2], b_lo[2];
    KILN_FLASH_UNROLL
    for (int i = 0; i < 4; ++i) split_tf32(env, a[i], a_hi[i], a_lo[i]);
    split_tf32(env, b0, b_hi[0], b_lo[0]);
    split_tf32(env, b1, b_hi[1], b_lo[1]);
    env.mma_tf32(d, a_lo, b_hi[0], b_hi[1]);
    env.mma_tf32(d, a_hi, b_lo[0], b_lo[1]);
    env.mma_tf32(d, a_hi, b_hi[0], b_hi[1]);
  } else {
    env.template mma<T>(d, a, b0, b1);
  }
}

// The products below run over a warp's M m-tiles of 16 rows (acc[m] the sums of tile m): each B
// fragment loaded from shared memory feeds all M, so M = 2 (32 rows per warp) halves the
// shared-memory reads per product of M = 1.

/// acc (M tiles of 16 x 8 N) += A (16 M x K, fragments a) X^T for the shared tile X (rows n).
template <typename T, int K, int N, int M, class Env>
KILN_FLASH_FN void product_a_xt(Env& env, float (&acc)[M][N][4],
                                const uint32_t (&a)[M][K / kStepK<T>][4], const Element<T>* x,
                                int stride, int lane) {
  KILN_FLASH_UNROLL
  for (int nt = 0; nt < N; nt += 2) {
    KILN_FLASH_UNROLL
    for (int ks = 0; ks < K / kStepK<T>; ++ks) {
      uint32_t b[4];
      load_b_transposed<T>(env, b, x, stride, nt, ks, lane);
      KILN_FLASH_UNROLL
      for (int m = 0; m < M; ++m) {
        mma<T>(env, acc[m][nt], a[m][ks], b[0], b[1]);
        mma<T>(env, acc[m][nt + 1], a[m][ks], b[2], b[3]);
      }
    }
  }
}

/// acc (M tiles of 16 x 8 N) += A (16 M x K, read from the shared rows `a_rows`) X^T.
template <typename T, int K, int N, int M, class Env>
KILN_FLASH_FN void product_shared_xt(Env& env, float (&acc)[M][N][4], const Element<T>* a_rows,
                                     int a_stride, const Element<T>* x, int stride, int lane) {
  KILN_FLASH_UNROLL
  for (int ks = 0; ks < K / kStepK<T>; ++ks) {
    uint32_t a[M][4];
    KILN_FLASH_UNROLL
    for (int m = 0; m < M; ++m)
      load_a<T>(env, a[m], a_rows + 16 * m * a_stride, a_stride, ks, lane);
    KILN_FLASH_UNROLL
    for (int nt = 0; nt < N; nt += 2) {
      uint32_t b[4];
      load_b_transposed<T>(env, b, x, stride, nt, ks, lane);
      KILN_FLASH_UNROLL
      for (int m = 0; m < M; ++m) {
        mma<T>(env, acc[m][nt], a[m], b[0], b[1]);
        mma<T>(env, acc[m][nt + 1], a[m], b[2], b[3]);
      }
    }
  }
}

/// acc (M tiles of 16 x D) += A Y for the shared tile Y of `Steps` k-steps of rows (stride
/// D + kVector), with the A fragment of m-tile m at k-step kk made by `a_fragment(a, m, kk)`.
template <typename T, int D, int Steps, int M, class Env, class AFragment>
KILN_FLASH_FN void product_y(Env& env, float (&acc)[M][D / 8][4], AFragment&& a_fragment,
                             const Element<T>* y, int lane) {
  KILN_FLASH_UNROLL
  for (int kk = 0; kk < Steps; ++kk) {
    uint32_t a[M][4];
    KILN_FLASH_UNROLL
    for (int m = 0; m < M; ++m) a_fragment(a[m], m, kk);
    KILN_FLASH_UNROLL
    for (int dt = 0; dt < D / 8; dt += 2) {
      uint32_t b[4];
      load_b<T>(env, b, y, D + kVector<T>, dt, kk, lane);
      KILN_FLASH_UNROLL
      for (int m = 0; m < M; ++m) {
        mma<T>(env, acc[m][dt], a[m], b[0], b[1]);
        mma<T>(env, acc[m][dt + 1], a[m], b[2], b[3]);
      }
    }
  }
}

/// acc (M tiles of 16 x D) += C (M tiles of 16 x kCols, C tiles made A fragments) Y for the
/// shared tile Y of kCols rows (stride D + kVector).
template <typename T, int D, int M, class Env>
KILN_FLASH_FN void product_c_y(Env& env, float (&acc)[M][D / 8][4],
                               const float (&c)[M][kCols / 8][4], const Element<T>* y, int lane) {
  product_y<T, D, kCols / kStepK<T>>(
      env, acc, [&](uint32_t(&a)[4], int m, int kk) { c_to_a<T>(env, a, c[m], kk); }, y, lane);
}

/// acc (M tiles of 16 x D) += A (16 M x kRows, read from the shared rows `a_rows`) Y for the
/// shared tile Y of kRows rows (stride D + kVector). For tf32, A's columns hold Y's rows in
/// load_b's order.
template <typename T, int D, int M, class Env>
KILN_FLASH_FN void product_shared_y(Env& env, float (&acc)[M][D / 8][4], const Element<T>* a_rows,
                                    int a_stride, const Element<T>* y, int lane) {
  product_y<T, D, kRows / kStepK<T>>(
      env, acc,
      [&](uint32_t(&a)[4], int m, int ks) {
        load_a<T>(env, a, a_rows + 16 * m * a_stride, a_stride, ks, lane);
      },
      y, lane);
}

template <int N>
KILN_FLASH_FN void zero(float (&acc)[N][4]) {
  KILN_FLASH_UNROLL
  for (int i = 0; i < N; ++i) acc[i][0] = acc[i][1] = acc[i][2] = acc[i][3] = 0;
}
template <int M, int N>
KILN_FLASH_FN void zero(float (&acc)[M][N][4]) {
  KILN_FLASH_UNROLL
  for (int m = 0; m < M; ++m) zero(acc[m]);
}

/// Writes the 16 x D accumulator rows `first` .. of a [.., length, D] tensor (times `scale`),
/// rows past `length` left out.
template <typename T, int D, class Env>
KILN_FLASH_FN void write_rows(Env& env, void* dst, const float (&acc)[D / 8][4], const Params& p,
                              int64_t bh, int64_t first, int64_t length,
                              const float (&row_scale)[2], int lane) {
  const int g = lane / 4, t = lane % 4;
  KILN_FLASH_UNROLL
  for (int r = 0; r < 2; ++r) {
    const int64_t row = first + g + 8 * r;
    if (row >= length) continue;
    Element<T>* out = static_cast<Element<T>*>(dst) + p.a.row_offset(bh, row, length, D) + 2 * t;
    KILN_FLASH_UNROLL
    for (int dt = 0; dt < D / 8; ++dt) {
      const float lo = acc[dt][2 * r] * row_scale[r], hi = acc[dt][2 * r + 1] * row_scale[r];
      if constexpr (kTf32<T>) {
        out[dt * 8] = lo;
        out[dt * 8 + 1] = hi;
      } else {
        store32(out + dt * 8, env.template pack<T>(lo, hi));
      }
    }
  }
}

// ---- The kernels' bodies: `block` is the block's index in a 1-D grid.

/// Whether a step of keys [k0, k0 + kCols) of query rows [q0, q0 + rows) needs the per-score
/// mask test: keys past the end, the causal diagonal, the window's edge, or a mask.
KILN_FLASH_FN bool needs_mask_test(const Params& p, int64_t q0, int64_t rows, int64_t k0) {
  const AttentionShape& a = p.a;
  return p.mask != nullptr || k0 + kCols > a.keys ||
         (a.causal && k0 + kCols - 1 > a.position(q0)) ||
         (a.window > 0 && k0 <= a.position(q0 + rows - 1) - a.window);
}

/// Walks the other side's steps of kCols rows from `first` to `end` in two buffers: before step
/// k0's tiles are used, step k0 + kCols's start loading into the other buffer.
/// stage(k0, buffer) starts a step's copies (the caller has started and committed those of
/// `first` into buffer 0, with whatever else the block stages once); use(k0, buffer) runs with
/// the step's tiles in place, between two block synchronizations (the second keeps a buffer from
/// being refilled while a warp still reads it).
template <class Env, class Stage, class Use>
KILN_FLASH_FN void walk_steps(Env& env, int64_t first, int64_t end, Stage&& stage, Use&& use) {
  int buffer = 0;
  for (int64_t k0 = first; k0 < end; k0 += kCols, buffer ^= 1) {
    if (k0 + kCols < end) {
      stage(k0 + kCols, buffer ^ 1);
      env.commit_copies();
      env.template wait_copies<1>();  // all but the group just started
    } else {
      env.template wait_copies<0>();
    }
    env.sync();
    use(k0, buffer);
    env.sync();
  }
  env.template wait_copies<0>();  // none left in flight (a walk of no steps)
}

/// The (b, h) and first query row of a block of the query-side kernels (forward, dq) of
/// `block_rows` rows: blocks_of(queries, block_rows) blocks per (b, h), the longest causal rows
/// first.
struct QueryBlock {
  int64_t bh, q0;
};
KILN_FLASH_FN QueryBlock query_block(const AttentionShape& a, int64_t block, int block_rows) {
  const int64_t q_blocks = blocks_of(a.queries, block_rows);
  return {block / q_blocks, (q_blocks - 1 - block % q_blocks) * block_rows};
}

/// Starts staging key rows k0 .. of (bh): k into `tile`, v into the tile after it.
template <typename T, int D, class Env>
KILN_FLASH_FN void stage_keys_values(Env& env, Element<T>* tile, const Params& p, int64_t bh,
                                     int64_t k0) {
  stage_rows<T, D>(env, tile, elements<T>(p.k), p, bh, k0, p.a.keys, true);
  stage_rows<T, D>(env, tile + kCols * (D + kVector<T>), elements<T>(p.v), p, bh, k0, p.a.keys,
                   true);
}

/// Forward: out and lse of query rows [q0, q0 + kQueryRows<M>) of one (b, h), 16 M per warp.
/// Grid: blocks_of(queries, kQueryRows<M>) per (b, h) (query_block).
/// kTerms: the scores have a bias or a softcap (has_score_terms; see score_log2).
template <typename T, int D, int M, bool kTerms, class Env>
KILN_FLASH_FN void forward_block(Env& env, const Params& p, int64_t block, void* shared) {
  using E = Element<T>;
  constexpr int R = kQueryRows<M>;
  const AttentionShape& a = p.a;
  const QueryBlock place = query_block(a, block, R);
  const int64_t bh = place.bh, q0 = place.q0;  // plain variables: lambdas below capture them
  constexpr int S = D + kVector<T>;
  E* qs = static_cast<E*>(shared);
  E* kv = qs + R * S;  // per buffer: k, then v
  auto k_tile = [&](int buffer) { return kv + buffer * 2 * kCols * S; };
  const int warp = env.thread() / 32, lane = env.thread() % 32, g = lane / 4, t = lane % 4;
  const int64_t first_row = q0 + warp * 16 * M;  // this warp's: m-tile i from 16 i on

  auto stage = [&](int64_t k0, int buffer) {
    stage_keys_values<T, D>(env, k_tile(buffer), p, bh, k0);
  };
  // Every staged tensor has rows (a copy past the end still names an address inside it).
  const KeySpan steps = a.keys_reached(q0, R, kCols);  // begin: a step's first key
  const int64_t begin = steps.begin;  // a plain variable: the lambdas below capture it
  stage_rows<T, D, R>(env, qs, elements<T>(p.q), p, bh, q0, a.queries);
  if (begin < steps.end) stage(begin, 0);
  env.commit_copies();

  // This warp's q fragments stay in registers up to 32 of them with 16 rows a warp (f32 at depth
  // 128 would take 64), up to 16 with 32 rows a warp (whose sums take twice the registers): past
  // that they are read from the shared tile at each step.
  constexpr int kSteps = D / kStepK<T>;
  constexpr bool kFragmentsInRegisters = 4 * M * kSteps <= 32 / M;
  const E* qw = qs + warp * 16 * M * S;
  uint32_t qf[M][kFragmentsInRegisters ? kSteps : 1][4];
  float o[M][D / 8][4];
  zero(o);
  float m[M][2], l[M][2];  // l: this lane's part of the row sum
  KILN_FLASH_UNROLL
  for (int i = 0; i < M; ++i) m[i][0] = m[i][1] = -INFINITY, l[i][0] = l[i][1] = 0;
  walk_steps(env, begin, steps.end, stage, [&](int64_t k0, int buffer) {
    const E* ks = k_tile(buffer);
    const E* vs = ks + kCols * S;
    float s[M][kCols / 8][4];
    zero(s);
    if constexpr (kFragmentsInRegisters) {
      if (k0 == begin) {
        KILN_FLASH_UNROLL
        for (int i = 0; i < M; ++i) {
          KILN_FLASH_UNROLL
          for (int step = 0; step < kSteps; ++step)
            load_a<T>(env, qf[i][step], qw + 16 * i * S, S, step, lane);
        }
      }
      product_a_xt<T, D>(env, s, qf, ks, S, lane);
    } else {
      product_shared_xt<T, D>(env, s, qw, S, ks, S, lane);
    }
    const bool test = needs_mask_test(p, q0, R, k0);
    KILN_FLASH_UNROLL
    for (int i = 0; i < M; ++i) {
      KILN_FLASH_UNROLL
      for (int nt = 0; nt < kCols / 8; ++nt) {
        KILN_FLASH_UNROLL
        for (int e = 0; e < 4; ++e) {
          const int64_t row = first_row + 16 * i + g + 8 * (e / 2);
          const int64_t j = k0 + nt * 8 + 2 * t + (e & 1);
          if constexpr (kTerms) {
            float slope = 1;
            s[i][nt][e] = test && !attends(p, bh, row, j)
                              ? -INFINITY
                              : score_log2<T>(p, bh, row, j, s[i][nt][e], slope);
          } else {
            s[i][nt][e] = test && !attends(p, bh, row, j) ? -INFINITY : s[i][nt][e] * p.scale_log2;
          }
        }
      }
    }
    KILN_FLASH_UNROLL
    for (int i = 0; i < M; ++i) {
      KILN_FLASH_UNROLL
      for (int r = 0; r < 2; ++r) {
        float top = m[i][r];
        KILN_FLASH_UNROLL
        for (int nt = 0; nt < kCols / 8; ++nt)
          top = fmaxf(top, fmaxf(s[i][nt][2 * r], s[i][nt][2 * r + 1]));
        top = fmaxf(top, env.shfl_xor(top, 1));
        top = fmaxf(top, env.shfl_xor(top, 2));
        // A row with no visible key yet keeps m = -inf; 0 stands in so that no -inf - -inf is
        // made.
        const float ref = top == -INFINITY ? 0.0f : top;
        const float correction = env.exp2(m[i][r] - ref);
        m[i][r] = top;
        float sum = 0;
        KILN_FLASH_UNROLL
        for (int nt = 0; nt < kCols / 8; ++nt) {
          KILN_FLASH_UNROLL
          for (int e = 2 * r; e < 2 * r + 2; ++e) sum += s[i][nt][e] = env.exp2(s[i][nt][e] - ref);
        }
        l[i][r] = l[i][r] * correction + sum;
        KILN_FLASH_UNROLL
        for (int dt = 0; dt < D / 8; ++dt) {
          o[i][dt][2 * r] *= correction;
          o[i][dt][2 * r + 1] *= correction;
        }
      }
    }
    product_c_y<T, D>(env, o, s, vs, lane);
  });
  KILN_FLASH_UNROLL
  for (int i = 0; i < M; ++i) {
    float inverse[2];
    KILN_FLASH_UNROLL
    for (int r = 0; r < 2; ++r) {
      const int64_t row = first_row + 16 * i + g + 8 * r;
      l[i][r] += env.shfl_xor(l[i][r], 1);
      l[i][r] += env.shfl_xor(l[i][r], 2);
      inverse[r] = l[i][r] > 0 ? 1 / l[i][r] : 0.0f;
      if (t == 0 && row < a.queries)
        p.lse_out[bh * a.queries + row] = l[i][r] > 0 ? m[i][r] * kLn2 + logf(l[i][r]) : -INFINITY;
    }
    write_rows<T, D>(env, p.out, o[i], p, bh, first_row + 16 * i, a.queries, inverse, lane);
  }
}

/// dq of query rows [q0, q0 + kQueryRows<M>) of one (b, h); grid as forward_block<T, D, M>.
template <typename T, int D, int M, bool kTerms, class Env>
KILN_FLASH_FN void dq_block(Env& env, const Params& p, int64_t block, void* shared) {
  using E = Element<T>;
  constexpr int R = kQueryRows<M>;
  const AttentionShape& a = p.a;
  const QueryBlock place = query_block(a, block, R);
  const int64_t bh = place.bh, q0 = place.q0;  // plain variables: lambdas below capture them
  constexpr int S = D + kVector<T>;
  E* qs = static_cast<E*>(shared);
  E* dos = qs + R * S;
  E* kv = dos + R * S;  // per buffer: k, then v
  auto k_tile = [&](int buffer) { return kv + buffer * 2 * kCols * S; };
  const int warp = env.thread() / 32, lane = env.thread() % 32, g = lane / 4, t = lane % 4;
  const int64_t first_row = q0 + warp * 16 * M;  // this warp's: m-tile i from 16 i on

  auto stage = [&](int64_t k0, int buffer) {
    stage_keys_values<T, D>(env, k_tile(buffer), p, bh, k0);
  };
  const KeySpan steps = a.keys_reached(q0, R, kCols);  // begin: a step's first key
  const int64_t begin = steps.begin;  // a plain variable: the lambdas below capture it
  stage_rows<T, D, R>(env, qs, elements<T>(p.q), p, bh, q0, a.queries);
  stage_rows<T, D, R>(env, dos, elements<T>(p.dout), p, bh, q0, a.queries);
  if (begin < steps.end) stage(begin, 0);  // as in forward_block
  env.commit_copies();

  float lse2[M][2], delta[M][2];
  KILN_FLASH_UNROLL
  for (int i = 0; i < M; ++i) {
    KILN_FLASH_UNROLL
    for (int r = 0; r < 2; ++r) {
      // +inf for rows past the end: every probability 2^(x - inf) is 0. (A row that sees no key
      // has lse -inf; each of its scores is masked, so no 2^(x + inf) is made.)
      const int64_t row = first_row + 16 * i + g + 8 * r;
      const bool live = row < a.queries;
      if constexpr (kTerms)
        lse2[i][r] = live ? lse_log2(p.lse[bh * a.queries + row]) : INFINITY;
      else
        lse2[i][r] = live ? p.lse[bh * a.queries + row] * kLog2e : INFINITY;
      delta[i][r] = live ? p.delta[bh * a.queries + row] : 0.0f;
    }
  }
  // At 16-bit depth 64 (f32 depth 32), 16 rows a warp, this warp's q and dout fragments stay in
  // registers; past it they would take 64 registers more than there are (the sums need 64 and
  // the two score tiles 64): they are read from the shared tiles at each step instead, and
  // always with 32 rows a warp (sums and score tiles 192 registers at depth 64: ptxas spills 44
  // bytes even so).
  constexpr int kSteps = D / kStepK<T>;
  constexpr bool kFragmentsInRegisters = M == 1 && kSteps <= 4;
  const E* qw = qs + warp * 16 * M * S;
  const E* dw = dos + warp * 16 * M * S;
  uint32_t qf[M][kFragmentsInRegisters ? kSteps : 1][4];
  uint32_t df[M][kFragmentsInRegisters ? kSteps : 1][4];
  float acc[M][D / 8][4];
  zero(acc);
  walk_steps(env, begin, steps.end, stage, [&](int64_t k0, int buffer) {
    const E* ks = k_tile(buffer);
    const E* vs = ks + kCols * S;
    float s[M][kCols / 8][4], dp[M][kCols / 8][4];
    zero(s);
    zero(dp);
    if constexpr (kFragmentsInRegisters) {
      if (k0 == begin) {
        KILN_FLASH_UNROLL
        for (int i = 0; i < M; ++i) {
          KILN_FLASH_UNROLL
          for (int step = 0; step < kSteps; ++step) {
            load_a<T>(env, qf[i][step], qw + 16 * i * S, S, step, lane);
            load_a<T>(env, df[i][step], dw + 16 * i * S, S, step, lane);
          }
        }
      }
      product_a_xt<T, D>(env, s, qf, ks, S, lane);
      product_a_xt<T, D>(env, dp, df, vs, S, lane);
    } else {
      product_shared_xt<T, D>(env, s, qw, S, ks, S, lane);
      product_shared_xt<T, D>(env, dp, dw, S, vs, S, lane);
    }
    const bool test = needs_mask_test(p, q0, R, k0);
    KILN_FLASH_UNROLL
    for (int i = 0; i < M; ++i) {
      KILN_FLASH_UNROLL
      for (int nt = 0; nt < kCols / 8; ++nt) {
        KILN_FLASH_UNROLL
        for (int e = 0; e < 4; ++e) {
          const int r = e / 2;
          const int64_t row = first_row + 16 * i + g + 8 * r;
          const int64_t j = k0 + nt * 8 + 2 * t + (e & 1);
          if constexpr (kTerms) {
            float slope = 1;
            const float prob =
                test && !attends(p, bh, row, j)
                    ? 0.0f
                    : env.exp2(score_log2<T>(p, bh, row, j, s[i][nt][e], slope) - lse2[i][r]);
            s[i][nt][e] = prob * (dp[i][nt][e] - delta[i][r]) * slope;  // ds
          } else {
            const float prob = test && !attends(p, bh, row, j)
                                   ? 0.0f
                                   : env.exp2(s[i][nt][e] * p.scale_log2 - lse2[i][r]);
            s[i][nt][e] = prob * (dp[i][nt][e] - delta[i][r]);  // ds
          }
        }
      }
    }
    product_c_y<T, D>(env, acc, s, ks, lane);
  });
  const float scale[2] = {p.scale, p.scale};
  KILN_FLASH_UNROLL
  for (int i = 0; i < M; ++i)
    write_rows<T, D>(env, p.dq, acc[i], p, bh, first_row + 16 * i, a.queries, scale, lane);
}

/// Writes this warp's C tiles of dS^T (rows: its 16 keys; columns: the step's queries) into the
/// shared tile `ds` as dS, rows queries and columns keys, rounded as the products take them. For
/// tf32 the keys of each group of 8 go in load_b's order: key 2i in column i, 2i + 1 in i + 4.
template <typename T, class Env>
KILN_FLASH_FN void store_gradient_tile(Env& env, Element<T>* ds, const float (&dst)[kCols / 8][4],
                                       int warp, int lane) {
  const int g = lane / 4, t = lane % 4;
  KILN_FLASH_UNROLL
  for (int nt = 0; nt < kCols / 8; ++nt) {
    KILN_FLASH_UNROLL
    for (int e = 0; e < 4; ++e) {
      const int query = nt * 8 + 2 * t + (e & 1), key = warp * 16 + g + 8 * (e / 2);
      if constexpr (kTf32<T>) {
        const int column = (key & ~7) | (key & 7) >> 1 | (key & 1) << 2;
        ds[query * kGradientStride<T> + column] = dst[nt][e];
      } else {
        ds[query * kGradientStride<T> + key] =
            static_cast<uint16_t>(env.template pack<T>(dst[nt][e], 0.0f) & 0xffffu);
      }
    }
  }
}

/// Adds this warp's 16 rows of one key block's dS K (acc) to dq rows q0 + 16 warp + ... The key
/// blocks that see a query block take turns in the order of their index: block j waits until
/// the counter of the query block says j, so each row of dq is summed in the same order on
/// every run. The first writes f32 sums, the next ones add to them (through L2: another
/// multiprocessor wrote them), the last writes dq itself (times scale, in T).
template <typename T, int D, class Env>
KILN_FLASH_FN void add_to_dq(Env& env, const Params& p, const float (&acc)[D / 8][4], int64_t bh,
                             int64_t q0, int64_t key_block, int warp, int lane) {
  const AttentionShape& a = p.a;
  const int64_t q_block = q0 / kRows, k_blocks = blocks_of(a.keys);
  // The key blocks that see the query block, in turn: all, from the one holding its first row's
  // first key with a window (kRows == kCols: dkv_block's query steps are the query blocks), to
  // q_block when causal. Turns count from the first.
  // (The turns take the query offset to be 0: attention.cu sums dq so only without one.)
  const int64_t first = a.first_key(q0) / kRows;
  const int64_t last = a.causal && q_block < k_blocks - 1 ? q_block : k_blocks - 1;
  int* turn = p.dq_turns + bh * blocks_of(a.queries) + q_block;
  if (env.thread() == 0) env.wait_turn(turn, static_cast<int>(key_block - first));
  env.sync();
  const int g = lane / 4, t = lane % 4;
  KILN_FLASH_UNROLL
  for (int r = 0; r < 2; ++r) {
    const int64_t row = q0 + warp * 16 + g + 8 * r;
    if (row >= a.queries) continue;
    float* sums = p.dq_sums + (bh * a.queries + row) * D + 2 * t;
    Element<T>* out = static_cast<Element<T>*>(p.dq) + a.row_offset(bh, row, a.queries, D) + 2 * t;
    KILN_FLASH_UNROLL
    for (int dt = 0; dt < D / 8; ++dt) {
      float lo = acc[dt][2 * r], hi = acc[dt][2 * r + 1];
      if (key_block > first) {
        lo += env.load_through_l2(sums + dt * 8);
        hi += env.load_through_l2(sums + dt * 8 + 1);
      }
      if (key_block < last) {
        env.store_through_l2(sums + dt * 8, lo);
        env.store_through_l2(sums + dt * 8 + 1, hi);
      } else if constexpr (kTf32<T>) {
        out[dt * 8] = lo * p.scale;
        out[dt * 8 + 1] = hi * p.scale;
      } else {
        store32(out + dt * 8, env.template pack<T>(lo * p.scale, hi * p.scale));
      }
    }
  }
  if (key_block < last) {
    env.fence();  // this thread's sums are visible to the device before the turn passes
    env.sync();
    if (env.thread() == 0) env.pass_turn(turn, static_cast<int>(key_block - first) + 1);
  }
}

/// dk and dv of key rows [k0, k0 + kRows) of one (b, h). Grid: blocks_of(keys) per (b, h).
/// With kDq, dq too (the dq kernel's three products become one: 5 in all, as with an atomic
/// dq, and still the same bits on every run): each step's dS goes through shared memory, each
/// warp multiplies 16 of its query rows by this block's keys, and add_to_dq sums the key blocks'
/// parts in turn. Needs every key block of a (b, h) before this one running or done when it
/// waits: on the GPU `block` is the order the blocks started in (a ticket), not their grid
/// index, so that holds whatever order the hardware starts them in.
template <typename T, int D, bool kDq, bool kTerms, class Env>
KILN_FLASH_FN void dkv_block(Env& env, const Params& p, int64_t block, void* shared) {
  using E = Element<T>;
  const AttentionShape& a = p.a;
  const int64_t k_blocks = blocks_of(a.keys);
  const int64_t bh = block / k_blocks, k0 = block % k_blocks * kRows;
  constexpr int S = D + kVector<T>;
  E* ks = static_cast<E*>(shared);
  E* vs = ks + kRows * S;
  E* qd = vs + kRows * S;  // per buffer: q, then dout
  auto q_tile = [&](int buffer) { return qd + buffer * 2 * kCols * S; };
  // Per buffer, per query of the step: lse, then delta (0 and 0 past the queries).
  float* stats = reinterpret_cast<float*>(qd + 4 * kCols * S);
  E* ds = reinterpret_cast<E*>(stats + 2 * 2 * kCols);  // kDq: the step's dS
  const int64_t key_block = block % k_blocks;
  const int warp = env.thread() / 32, lane = env.thread() % 32, g = lane / 4, t = lane % 4;
  const int64_t keys[2] = {k0 + warp * 16 + g, k0 + warp * 16 + g + 8};

  auto stage = [&](int64_t q0, int buffer) {
    stage_rows<T, D>(env, q_tile(buffer), elements<T>(p.q), p, bh, q0, a.queries);
    stage_rows<T, D>(env, q_tile(buffer) + kCols * S, elements<T>(p.dout), p, bh, q0, a.queries);
    // Copied like the tiles, so no thread waits for them here. A query past the end gets lse 0
    // and delta 0: its q and dout rows are zeros, so its probability 2^(0 - 0) = 1 multiplies
    // zeros (dv, dk) and its score gradient 1 (0 - 0) is 0.
    float* step_stats = stats + buffer * 2 * kCols;
    for (int c = env.thread(); c < 2 * kCols; c += kThreads) {
      const int64_t query = q0 + c % kCols;
      const bool live = query < a.queries;
      env.copy4_async(step_stats + c,
                      (c < kCols ? p.lse : p.delta) + bh * a.queries + (live ? query : 0), live);
    }
  };
  // The queries that reach these keys: from k0 with causal masking (kRows == kCols, so the
  // query steps stay aligned to blocks), up to the last key's window.
  const int64_t last_key = (k0 + kRows < a.keys ? k0 + kRows : a.keys) - 1;
  const int64_t first = a.first_query(k0), end = a.query_end(last_key);
  stage_rows<T, D>(env, ks, elements<T>(p.k), p, bh, k0, a.keys, true);
  stage_rows<T, D>(env, vs, elements<T>(p.v), p, bh, k0, a.keys, true);
  if (first < end) stage(first, 0);  // as in forward_block
  env.commit_copies();

  const E* kw = ks + warp * 16 * S;  // this warp's 16 keys (A fragments read in place)
  const E* vw = vs + warp * 16 * S;
  float dk[1][D / 8][4], dv[1][D / 8][4];  // one m-tile of 16 rows
  zero(dk);
  zero(dv);
  walk_steps(env, first, end, stage, [&](int64_t q0, int buffer) {
    const E* qs = q_tile(buffer);
    const E* dos = qs + kCols * S;
    const float* lse = stats + buffer * 2 * kCols;
    const float* delta = lse + kCols;
    // Transposed scores: rows are this warp's keys, columns the step's queries.
    float st[1][kCols / 8][4], dpt[1][kCols / 8][4];
    zero(st);
    zero(dpt);
    product_shared_xt<T, D>(env, st, kw, S, qs, S, lane);
    product_shared_xt<T, D>(env, dpt, vw, S, dos, S, lane);
    const bool test = p.mask != nullptr || (a.causal && a.position(q0) < k0 + kRows - 1) ||
                      (a.window > 0 && a.position(q0 + kCols - 1) - a.window >= k0);
    KILN_FLASH_UNROLL
    for (int nt = 0; nt < kCols / 8; ++nt) {
      KILN_FLASH_UNROLL
      for (int e = 0; e < 4; ++e) {
        const int c = nt * 8 + 2 * t + (e & 1);
        if constexpr (kTerms) {
          float slope = 1;
          const float prob =
              test && !attends(p, bh, q0 + c, keys[e / 2])
                  ? 0.0f
                  : env.exp2(score_log2<T>(p, bh, q0 + c, keys[e / 2], st[0][nt][e], slope) -
                             lse_log2(lse[c]));
          st[0][nt][e] = prob;
          dpt[0][nt][e] = prob * (dpt[0][nt][e] - delta[c]) * slope;  // ds^T
        } else {
          // (Without terms a row that sees no key has every score masked: no lse_log2 needed.)
          const float prob = test && !attends(p, bh, q0 + c, keys[e / 2])
                                 ? 0.0f
                                 : env.exp2(st[0][nt][e] * p.scale_log2 - lse[c] * kLog2e);
          st[0][nt][e] = prob;
          dpt[0][nt][e] = prob * (dpt[0][nt][e] - delta[c]);  // ds^T
        }
      }
    }
    product_c_y<T, D>(env, dv, st, dos, lane);
    product_c_y<T, D>(env, dk, dpt, qs, lane);
    if constexpr (kDq) {
      store_gradient_tile<T>(env, ds, dpt[0], warp, lane);
      env.sync();
      float dq[1][D / 8][4];
      zero(dq);
      product_shared_y<T, D>(env, dq, ds + warp * 16 * kGradientStride<T>, kGradientStride<T>, ks,
                             lane);
      add_to_dq<T, D>(env, p, dq[0], bh, q0, key_block, warp, lane);
    }
  });
  const float one[2] = {1, 1}, scale[2] = {p.scale, p.scale};
  write_rows<T, D>(env, p.dk, dk[0], p, bh, k0 + warp * 16, a.keys, scale, lane);
  write_rows<T, D>(env, p.dv, dv[0], p, bh, k0 + warp * 16, a.keys, one, lane);
}

}  // namespace kiln::ops::flash
