// CUDA kernels of attention and attention_backward (ops/nn/attention.cc), flash-style: the
// score matrix is never stored. f16, bf16 and f32 (3xTF32) at depths 32, 64 and 128 run on
// tensor cores (attention_flash.h, the kernels' bodies, shared with a CPU emulation that tests
// them; KILN_CUDA_ATTENTION=wide gives the forward and dq kernels 32 query rows a warp); every
// other problem (f64, other depths, tensors not 16-byte aligned), and any problem
// with KILN_CUDA_ATTENTION=rows, runs the kernels below (KILN_CUDA_ATTENTION=cudnn runs what
// cuDNN's fused attention takes through it: attention_cudnn.cu): one warp
// per query row (forward, dq) or key row (dk, dv); each lane holds depth / 32 of the row's
// elements, so depth is at most 32 * kChunks.
//   forward: online softmax over the keys, m the running maximum and l the running sum:
//            m' = max(m, s), l = l e^(m - m') + e^(s - m'), o = o e^(m - m') + e^(s - m') v
//   backward: p = e^(s - lse), D = dout . out, ds = p (dout . v - D),
//            dq = scale sum_j ds k_j, dk = scale sum_i ds q_i, dv = sum_i p dout_i
//            (with a softcap c, s = c tanh(scale q . k / c) + bias, and scale (1 - tanh^2) for
//            scale: Problem::score's slope)
// Rows are found through AttentionShape::row_offset, so both layouts ([B, H, T, D] and
// [B, T, H, D]) run the same kernels. Every sum runs in a fixed order (no atomics): the same bits
// on every run. Arithmetic is f32 for 16-bit and f32 inputs and f64 for f64.
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <algorithm>
#include <cfloat>
#include <cstdlib>
#include <cstring>
#include <map>
#include <mutex>
#include <optional>
#include <set>
#include <utility>

#include "kiln/ops/cuda/map.cuh"
#include "kiln/ops/nn/attention.h"
#include "kiln/ops/nn/attention_cudnn.h"
#include "kiln/ops/nn/attention_flash.h"

namespace kiln::ops::cuda_attention {

using namespace kiln::ops::cuda;

constexpr int kChunks = 8;  // depth <= 256

template <typename C>
__device__ C warp_sum(C v) {
  for (int offset = 16; offset > 0; offset /= 2) v += __shfl_xor_sync(0xffffffffu, v, offset);
  return v;
}

struct Problem {
  AttentionShape a;  // with the reach: causal, window (its query offset: read_query_offset)
  double scale;
  const bool* mask;
  // An additive bias of the scores instead of the bool mask (of the inputs' dtype T).
  const void* bias;
  double softcap;  // 0: none
  // The op's query offset input in device memory (or nullptr: 0), read by each kernel (a CUDA
  // Graph replays the step with whatever position it is given).
  const int64_t* query_offset;

  // Sets a's query offset from the input: the first thing a kernel does.
  __device__ void read_query_offset() {
    if (query_offset != nullptr) a.set_query_offset(*query_offset);
  }

  __device__ int64_t mask_offset(int64_t bh, int64_t i, int64_t j) const {
    const int64_t b = bh / a.heads, h = bh % a.heads;
    return b * a.mask_strides[0] + h * a.mask_strides[1] + i * a.mask_strides[2] +
           j * a.mask_strides[3];
  }
  // Whether query i of (b, h) attends to key j.
  __device__ bool attends(int64_t bh, int64_t i, int64_t j) const {
    if (!a.reaches(i, j)) return false;
    return mask == nullptr || mask[mask_offset(bh, i, j)];
  }
  // The score of query i and key j of (b, h) from their dot product: scale dot, capped to
  // softcap tanh(scale dot / softcap) with a softcap (+ bias). `slope`, when given, receives
  // d score / d dot: scale, times 1 - tanh^2 under a softcap.
  template <typename T, typename C>
  __device__ C score(C dot, int64_t bh, int64_t i, int64_t j, C* slope = nullptr) const {
    C s = dot * static_cast<C>(scale);
    if (slope != nullptr) *slope = static_cast<C>(scale);
    if (softcap > 0) {
      const C cap = static_cast<C>(softcap), t = tanh(s / cap);
      s = cap * t;
      if (slope != nullptr) *slope = static_cast<C>(scale) * (C(1) - t * t);
    }
    if (bias == nullptr) return s;
    return s + static_cast<C>(static_cast<const T*>(bias)[mask_offset(bh, i, j)]);
  }
};

// Loads row[c] for this lane's chunks (0 past the depth).
template <typename T, typename C>
__device__ void load(const T* row, int64_t depth, int lane, C (&out)[kChunks]) {
#pragma unroll
  for (int t = 0; t < kChunks; ++t) {
    const int64_t c = lane + 32 * t;
    out[t] = c < depth ? static_cast<C>(row[c]) : C(0);
  }
}

template <typename T, typename C>
__device__ C dot(const C (&x)[kChunks], const T* row, int64_t depth, int lane) {
  C sum = 0;
#pragma unroll
  for (int t = 0; t < kChunks; ++t) {
    const int64_t c = lane + 32 * t;
    if (c < depth) sum += x[t] * static_cast<C>(row[c]);
  }
  return warp_sum(sum);
}

template <typename T, typename S>
__global__ void forward_kernel(Problem pr, const T* q, const T* k, const T* v, T* out, S* lse) {
  using C = Compute<T>;
  pr.read_query_offset();
  const AttentionShape& a = pr.a;
  const int64_t row = blockIdx.x * static_cast<int64_t>(blockDim.x / 32) + threadIdx.x / 32;
  const int lane = threadIdx.x % 32;
  if (row >= a.batch * a.heads * a.queries) return;
  const int64_t bh = row / a.queries, i = row % a.queries;
  C qi[kChunks], o[kChunks];
  load(q + a.row_offset(bh, i, a.queries, a.depth), a.depth, lane, qi);
#pragma unroll
  for (int t = 0; t < kChunks; ++t) o[t] = 0;
  C m = -INFINITY, l = 0;
  for (int64_t j = a.first_key(i); j < a.key_end(i); ++j) {
    if (!pr.attends(bh, i, j)) continue;
    const C s = pr.score<T>(dot(qi, k + a.kv_row_offset(bh, j, a.depth), a.depth, lane), bh, i, j);
    if (s == -INFINITY) continue;  // a bias of -inf hides the key (and keeps m - m_new finite)
    const C m_new = s > m ? s : m;
    const C correction = exp(m - m_new), e = exp(s - m_new);
    l = l * correction + e;
    const T* vj = v + a.kv_row_offset(bh, j, a.value_depth);
#pragma unroll
    for (int t = 0; t < kChunks; ++t) {
      const int64_t c = lane + 32 * t;
      o[t] = o[t] * correction + (c < a.value_depth ? e * static_cast<C>(vj[c]) : C(0));
    }
    m = m_new;
  }
  const C inv = l > 0 ? C(1) / l : C(0);
  T* out_row = out + a.row_offset(bh, i, a.queries, a.value_depth);
#pragma unroll
  for (int t = 0; t < kChunks; ++t) {
    const int64_t c = lane + 32 * t;
    if (c < a.value_depth) out_row[c] = static_cast<T>(o[t] * inv);
  }
  if (lane == 0) lse[row] = l > 0 ? static_cast<S>(m + log(l)) : static_cast<S>(-INFINITY);
}

// D[row] = dout[row] . out[row], row = bh * queries + i ([B, H, Tq] as lse).
template <typename T, typename S>
__global__ void delta_kernel(AttentionShape a, const T* dout, const T* out, S* delta) {
  using C = Compute<T>;
  const int64_t row = blockIdx.x * static_cast<int64_t>(blockDim.x / 32) + threadIdx.x / 32;
  const int lane = threadIdx.x % 32;
  if (row >= a.batch * a.heads * a.queries) return;
  const int64_t at = a.row_offset(row / a.queries, row % a.queries, a.queries, a.value_depth);
  C d[kChunks];
  load(dout + at, a.value_depth, lane, d);
  const C sum = dot(d, out + at, a.value_depth, lane);
  if (lane == 0) delta[row] = static_cast<S>(sum);
}

// dq: one warp per query row.
template <typename T, typename S>
__global__ void dq_kernel(Problem pr, const T* q, const T* k, const T* v, const S* lse,
                          const S* delta, const T* dout, T* dq) {
  using C = Compute<T>;
  pr.read_query_offset();
  const AttentionShape& a = pr.a;
  const int64_t row = blockIdx.x * static_cast<int64_t>(blockDim.x / 32) + threadIdx.x / 32;
  const int lane = threadIdx.x % 32;
  if (row >= a.batch * a.heads * a.queries) return;
  const int64_t bh = row / a.queries, i = row % a.queries;
  C qi[kChunks], di[kChunks], acc[kChunks];
  load(q + a.row_offset(bh, i, a.queries, a.depth), a.depth, lane, qi);
  load(dout + a.row_offset(bh, i, a.queries, a.value_depth), a.value_depth, lane, di);
#pragma unroll
  for (int t = 0; t < kChunks; ++t) acc[t] = 0;
  const C l = static_cast<C>(lse[row]), d = static_cast<C>(delta[row]);
  if (l != -INFINITY)
    for (int64_t j = a.first_key(i); j < a.key_end(i); ++j) {
      if (!pr.attends(bh, i, j)) continue;
      const T* kj = k + a.kv_row_offset(bh, j, a.depth);
      C slope;
      const C p = exp(pr.score<T>(dot(qi, kj, a.depth, lane), bh, i, j, &slope) - l);
      const C ds =
          p * (dot(di, v + a.kv_row_offset(bh, j, a.value_depth), a.value_depth, lane) - d) * slope;
#pragma unroll
      for (int t = 0; t < kChunks; ++t) {
        const int64_t c = lane + 32 * t;
        if (c < a.depth) acc[t] += ds * static_cast<C>(kj[c]);
      }
    }
  T* dq_row = dq + a.row_offset(bh, i, a.queries, a.depth);
#pragma unroll
  for (int t = 0; t < kChunks; ++t) {
    const int64_t c = lane + 32 * t;
    if (c < a.depth) dq_row[c] = static_cast<T>(acc[t]);
  }
}

// dk and dv: one warp per key row of each query head (per query head with grouped heads).
template <typename T, typename S>
__global__ void dkv_kernel(Problem pr, const T* q, const T* k, const T* v, const S* lse,
                           const S* delta, const T* dout, T* dk, T* dv) {
  using C = Compute<T>;
  pr.read_query_offset();
  const AttentionShape& a = pr.a;
  const int64_t key = blockIdx.x * static_cast<int64_t>(blockDim.x / 32) + threadIdx.x / 32;
  const int lane = threadIdx.x % 32;
  if (key >= a.batch * a.heads * a.keys) return;
  const int64_t bh = key / a.keys, j = key % a.keys;
  C kj[kChunks], vj[kChunks], dk_acc[kChunks], dv_acc[kChunks];
  const int64_t k_at = a.row_offset(bh, j, a.keys, a.depth);  // of dk and dv
  const int64_t v_at = a.row_offset(bh, j, a.keys, a.value_depth);
  load(k + a.kv_row_offset(bh, j, a.depth), a.depth, lane, kj);
  load(v + a.kv_row_offset(bh, j, a.value_depth), a.value_depth, lane, vj);
#pragma unroll
  for (int t = 0; t < kChunks; ++t) dk_acc[t] = dv_acc[t] = 0;
  for (int64_t i = a.first_query(j); i < a.query_end(j); ++i) {
    if (!pr.attends(bh, i, j)) continue;
    const int64_t row = bh * a.queries + i;
    const C l = static_cast<C>(lse[row]);
    if (l == -INFINITY) continue;
    const T* qi = q + a.row_offset(bh, i, a.queries, a.depth);
    const T* di = dout + a.row_offset(bh, i, a.queries, a.value_depth);
    C slope;
    const C p = exp(pr.score<T>(dot(kj, qi, a.depth, lane), bh, i, j, &slope) - l);
    const C ds = p * (dot(vj, di, a.value_depth, lane) - static_cast<C>(delta[row])) * slope;
#pragma unroll
    for (int t = 0; t < kChunks; ++t) {
      const int64_t c = lane + 32 * t;
      if (c < a.depth) dk_acc[t] += ds * static_cast<C>(qi[c]);
      if (c < a.value_depth) dv_acc[t] += p * static_cast<C>(di[c]);
    }
  }
#pragma unroll
  for (int t = 0; t < kChunks; ++t) {
    const int64_t c = lane + 32 * t;
    if (c < a.depth) dk[k_at + c] = static_cast<T>(dk_acc[t]);
    if (c < a.value_depth) dv[v_at + c] = static_cast<T>(dv_acc[t]);
  }
}

Problem problem_of(const KernelContext& ctx, int first) {
  const int inputs = ctx.num_inputs();
  const int mask_input = attention_extras(inputs, first, ctx.input(inputs - 1).dtype()).mask;
  const bool has_mask = mask_input >= 0;
  Problem pr;
  pr.a = attention_shape(ctx, first);
  KILN_CHECK(pr.a.depth <= 32 * kChunks && pr.a.value_depth <= 32 * kChunks, Error, ctx.where(),
             ": the CUDA kernel takes depths up to ", 32 * kChunks, ", got ", pr.a.depth, " and ",
             pr.a.value_depth);
  const double scale = ctx.attr<double>("scale");
  pr.scale = scale > 0 ? scale : 1 / std::sqrt(static_cast<double>(pr.a.depth));
  const bool bias = has_mask && ctx.input(mask_input).dtype() != DType::boolean;
  pr.mask = has_mask && !bias ? ctx.input(mask_input).data<bool>() : nullptr;
  pr.bias = bias ? ctx.input(mask_input).raw_data() : nullptr;
  pr.softcap = ctx.attr<double>("softcap");
  const int offset = attention_extras(inputs, first, ctx.input(inputs - 1).dtype()).query_offset;
  pr.query_offset = offset >= 0 ? ctx.input(offset).data<int64_t>() : nullptr;
  return pr;
}

template <typename T>
using Stats = std::conditional_t<std::is_same_v<T, double>, double, float>;

template <typename K, typename... Args>
void launch_rows(const KernelContext& ctx, int64_t rows, K kernel, Args... args) {
  if (rows == 0) return;
  const LaunchConfig config = warp_per_row_launch(rows);
  kernel<<<static_cast<unsigned>(config.blocks), config.threads, 0, stream_of(ctx)>>>(args...);
  check_launch(ctx);
}

// ---- Tensor cores (attention_flash.h).

// What attention_flash.h's bodies need of a thread block, on the GPU.
struct DeviceEnv {
  __device__ int thread() const { return static_cast<int>(threadIdx.x); }
  __device__ void sync() const { __syncthreads(); }
  __device__ float shfl_xor(float v, int lane_mask) const {
    return __shfl_xor_sync(0xffffffffu, v, lane_mask);
  }
  // 2^x by the multifunction unit alone (MUFU.EX2): exp2f's ex2.approx.f32 adds instructions
  // that keep subnormal results, which here are probabilities under 2^-126 (flushed to 0).
  __device__ float exp2(float x) const {
    float y;
    asm("ex2.approx.ftz.f32 %0, %1;\n" : "=f"(y) : "f"(x));
    return y;
  }
  // Two values rounded to T, `lo` in the low 16 bits (the element with the lower index).
  template <typename T>
  __device__ uint32_t pack(float lo, float hi) const {
    uint32_t bits;
    if constexpr (std::is_same_v<T, BFloat16>) {
      const __nv_bfloat162 v = __floats2bfloat162_rn(lo, hi);
      memcpy(&bits, &v, sizeof(bits));
    } else {
      const __half2 v = __floats2half2_rn(lo, hi);
      memcpy(&bits, &v, sizeof(bits));
    }
    return bits;
  }
  // d += a b: one warp-wide 16 x 8 x 16 product, f32 sums.
  // cp.async of 16 bytes from global to shared memory; src-size 0 (read false) writes zeros and
  // reads nothing. L2 only (.cg): a tile is read once per block.
  __device__ void copy16_async(void* to, const void* from, bool read) const {
    const auto address = static_cast<uint32_t>(__cvta_generic_to_shared(to));
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(address), "l"(from),
                 "r"(read ? 16 : 0));
  }
  // The same for 4 bytes (.ca: the 4-byte form caches in L1 too).
  __device__ void copy4_async(void* to, const void* from, bool read) const {
    const auto address = static_cast<uint32_t>(__cvta_generic_to_shared(to));
    asm volatile("cp.async.ca.shared.global [%0], [%1], 4, %2;\n" ::"r"(address), "l"(from),
                 "r"(read ? 4 : 0));
  }
  __device__ void commit_copies() const { asm volatile("cp.async.commit_group;\n" ::); }
  template <int kPending>
  __device__ void wait_copies() const {
    asm volatile("cp.async.wait_group %0;\n" ::"n"(kPending));
  }
  // ldmatrix .x4: four 8 x 8 matrices; lane 8 m + r gives row r of matrix m (attention_flash.h).
  template <bool kTransposed>
  __device__ void load_matrices(uint32_t (&x)[4], const void* row) const {
    const auto address = static_cast<uint32_t>(__cvta_generic_to_shared(row));
    if constexpr (kTransposed)
      asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0, %1, %2, %3}, [%4];\n"
                   : "=r"(x[0]), "=r"(x[1]), "=r"(x[2]), "=r"(x[3])
                   : "r"(address));
    else
      asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0, %1, %2, %3}, [%4];\n"
                   : "=r"(x[0]), "=r"(x[1]), "=r"(x[2]), "=r"(x[3])
                   : "r"(address));
  }
  template <typename T>
  __device__ void mma(float (&d)[4], const uint32_t (&a)[4], uint32_t b0, uint32_t b1) const {
    if constexpr (std::is_same_v<T, BFloat16>)
      asm("mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0, %1, %2, %3}, "
          "{%4, %5, %6, %7}, {%8, %9}, {%0, %1, %2, %3};\n"
          : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
          : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
    else
      asm("mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0, %1, %2, %3}, "
          "{%4, %5, %6, %7}, {%8, %9}, {%0, %1, %2, %3};\n"
          : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
          : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
  }
  // x rounded to tf32 (to nearest, ties away from zero), the 13 low bits zero.
  __device__ uint32_t to_tf32(float x) const {
    uint32_t bits;
    asm("cvt.rna.tf32.f32 %0, %1;\n" : "=r"(bits) : "f"(x));
    return bits;
  }
  // Spins until *turn == value (a volatile read goes to L2 each time); what the block that set
  // it wrote before its fence is visible after.
  __device__ void wait_turn(int* turn, int value) const {
    while (*static_cast<volatile int*>(turn) != value) __nanosleep(32);
    __threadfence();
  }
  __device__ void pass_turn(int* turn, int value) const { atomicExch(turn, value); }
  __device__ void fence() const { __threadfence(); }
  // Global f32 sums another multiprocessor wrote: through L2 (.cg), never from a stale L1 line.
  __device__ float load_through_l2(const float* at) const { return __ldcg(at); }
  __device__ void store_through_l2(float* at, float v) const { __stcg(at, v); }
  // d += a b: one warp-wide 16 x 8 x 8 product on tf32, f32 sums.
  __device__ void mma_tf32(float (&d)[4], const uint32_t (&a)[4], uint32_t b0, uint32_t b1) const {
    asm("mma.sync.aligned.m16n8k8.row.col.f32.tf32.tf32.f32 {%0, %1, %2, %3}, "
        "{%4, %5, %6, %7}, {%8, %9}, {%0, %1, %2, %3};\n"
        : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
  }
};

extern __shared__ __align__(16) unsigned char flash_shared[];

// __launch_bounds__(kThreads, 1): one block per multiprocessor is enough, so ptxas may use up to
// 255 registers (left to itself it capped the bf16 depth-32 forward at 128 and spilled).

// kOffset: the problem has a query offset input, read here into the shape the body reads (a
// kernel of its own, so the kernels without one are what they were). kTerms: the scores have a
// bias or a softcap (flash::has_score_terms): kernels of their own, made only with 16 query rows
// a warp, no query offset and dq a kernel of its own, so that the others are what they were
// (with the terms' code in them ptxas spilled more in the tight ones: the bf16 depth-64
// query-offset forward 2,268 bytes instead of 976).
template <typename T, int D, int M, bool kOffset, bool kTerms = false>
__global__ void __launch_bounds__(flash::kThreads, 1) flash_forward_kernel(flash::Params p) {
  DeviceEnv env;
  if constexpr (kOffset) p.a.set_query_offset(*p.query_offset);
  flash::forward_block<T, D, M, kTerms>(env, p, blockIdx.x, flash_shared);
}

template <typename T, int D, int M, bool kTerms = false>
__global__ void __launch_bounds__(flash::kThreads, 1) flash_dq_kernel(flash::Params p) {
  DeviceEnv env;
  flash::dq_block<T, D, M, kTerms>(env, p, blockIdx.x, flash_shared);
}

template <typename T, int D, bool kDq, bool kTerms = false>
__global__ void __launch_bounds__(flash::kThreads, 1) flash_dkv_kernel(flash::Params p) {
  DeviceEnv env;
  int64_t block = blockIdx.x;
  if constexpr (kDq) {
    // With dq summed in turns, a block's place is the order it started in (a ticket), not its
    // grid index: every block it waits for has a lower ticket, so has started and holds its
    // multiprocessor, whatever order the hardware dispatched the grid in.
    __shared__ int ticket;
    if (threadIdx.x == 0) ticket = atomicAdd(p.block_tickets, 1);
    __syncthreads();
    block = ticket;
  }
  flash::dkv_block<T, D, kDq, kTerms>(env, p, block, flash_shared);
}

// Whether dq is a kernel of its own (the default) rather than summed in the dk/dv kernel's turns
// (KILN_CUDA_ATTENTION=summed_dq, where every query block reaches a key: else no dk/dv block
// would write its dq). On the H200
// (2026-12-04, [4, 16, 2048, 64] bf16 causal) the turns serialize the key blocks of a head: the
// dk/dv/dq kernel took 3.78 ms, the dq and dk/dv kernels apart 2.1 ms less.
bool separate_dq(const Problem& problem) {
  return !flash::every_query_block_reaches_a_key(problem.a) ||
         !attention_choice_holds("summed_dq") || problem.bias != nullptr || problem.softcap > 0;
}

// Calls fn(std::integral_constant<int, M>) with the m-tiles per warp of the query-side kernels:
// 2 (32 query rows a warp, 128 a block) with KILN_CUDA_ATTENTION=wide where T and D allow it
// (flash::kWideQueryBlocks) and the scores have no bias or softcap (those kernels are compiled
// without them), else 1. Not measured on a GPU yet, so not the default.
template <typename T, int D, typename Fn>
void by_query_tiles(const Problem& problem, Fn&& fn) {
  if constexpr (flash::kWideQueryBlocks<T, D>) {
    if (attention_choice_holds("wide") && problem.bias == nullptr && problem.softcap <= 0) {
      fn(std::integral_constant<int, 2>{});
      return;
    }
  }
  fn(std::integral_constant<int, 1>{});
}

// Launches a flash kernel of `blocks` blocks; raises its dynamic shared memory limit first (once
// per kernel and device: past 48 KiB a kernel must ask).
void launch_flash(const KernelContext& ctx, void (*kernel)(flash::Params), int64_t blocks,
                  size_t shared_bytes, const flash::Params& p) {
  if (blocks == 0) return;
  KILN_CHECK(blocks < (int64_t{1} << 31), Error, ctx.where(), ": ", blocks,
             " blocks exceed the grid's limit");
  {
    static std::mutex mutex;
    static std::set<std::pair<const void*, int>> raised;
    const int device = ctx.cuda()->device.index;
    std::lock_guard<std::mutex> lock(mutex);
    if (raised.insert({reinterpret_cast<const void*>(kernel), device}).second) {
      KILN_CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                           static_cast<int>(shared_bytes)),
                      ctx.where());
    }
  }
  kernel<<<static_cast<unsigned>(blocks), flash::kThreads, shared_bytes, stream_of(ctx)>>>(p);
  check_launch(ctx);
}

flash::Params flash_params(const Problem& problem) {
  flash::Params p;
  p.a = problem.a;
  p.scale = static_cast<float>(problem.scale);
  p.scale_log2 = static_cast<float>(problem.scale) * flash::kLog2e;
  p.mask = problem.mask;
  p.bias = problem.bias;
  p.softcap = static_cast<float>(problem.softcap);
  p.query_offset = problem.query_offset;
  return p;
}

template <typename T, int D>
void flash_forward(KernelContext& ctx, const Problem& problem) {
  flash::Params p = flash_params(problem);
  p.q = ctx.input(0).data<T>();
  p.k = ctx.input(1).data<T>();
  p.v = ctx.input(2).data<T>();
  p.out = ctx.output(0).raw_data();
  p.lse_out = static_cast<float*>(ctx.output(1).raw_data());
  const int64_t blocks = problem.a.batch * problem.a.heads * flash::blocks_of(problem.a.queries);
  if (flash::has_score_terms(p)) {  // 16 query rows a warp, no query offset (use_flash)
    launch_flash(ctx, flash_forward_kernel<T, D, 1, false, true>, blocks,
                 flash::forward_shared_bytes<T, D, 1>(), p);
    return;
  }
  if (p.query_offset != nullptr) {  // 16 query rows a warp only
    launch_flash(ctx, flash_forward_kernel<T, D, 1, true>, blocks,
                 flash::forward_shared_bytes<T, D, 1>(), p);
    return;
  }
  by_query_tiles<T, D>(problem, [&](auto tiles) {
    constexpr int M = tiles.value;
    launch_flash(ctx, flash_forward_kernel<T, D, M, false>,
                 problem.a.batch * problem.a.heads *
                     flash::blocks_of(problem.a.queries, flash::kQueryRows<M>),
                 flash::forward_shared_bytes<T, D, M>(), p);
  });
}

template <typename T, int D>
void flash_backward(KernelContext& ctx, const Problem& problem, const float* delta) {
  flash::Params p = flash_params(problem);
  p.q = ctx.input(0).data<T>();
  p.k = ctx.input(1).data<T>();
  p.v = ctx.input(2).data<T>();
  p.lse = ctx.input(4).data<float>();
  p.dout = ctx.input(5).data<T>();
  p.delta = delta;
  p.dq = ctx.output(0).raw_data();
  p.dk = ctx.output(1).raw_data();
  p.dv = ctx.output(2).raw_data();
  const int64_t heads = problem.a.batch * problem.a.heads;
  const int64_t q_blocks = flash::blocks_of(problem.a.queries);
  if (!separate_dq(problem)) {
    // dq summed in the dk/dv kernel: f32 sums, one turn counter per (b h, query block), then
    // the block ticket counter.
    const size_t sums = sizeof(float) * heads * problem.a.queries * D;
    const size_t counters = sizeof(int) * (heads * q_blocks + 1);
    std::shared_ptr<Storage> scratch = ctx.scratch(sums + counters);
    p.dq_sums = static_cast<float*>(scratch->data());
    p.dq_turns = reinterpret_cast<int*>(static_cast<char*>(scratch->data()) + sums);
    p.block_tickets = p.dq_turns + heads * q_blocks;
    KILN_CUDA_CHECK(cudaMemsetAsync(p.dq_turns, 0, counters, stream_of(ctx)), ctx.where());
    launch_flash(ctx, flash_dkv_kernel<T, D, true>, heads * flash::blocks_of(problem.a.keys),
                 flash::dkvq_shared_bytes<T, D>(), p);
    return;
  }
  if (flash::has_score_terms(p)) {  // 16 query rows a warp, dq apart (separate_dq)
    launch_flash(ctx, flash_dq_kernel<T, D, 1, true>, heads * q_blocks,
                 flash::dq_shared_bytes<T, D, 1>(), p);
    launch_flash(ctx, flash_dkv_kernel<T, D, false, true>, heads * flash::blocks_of(problem.a.keys),
                 flash::dkv_shared_bytes<T, D>(), p);
    return;
  }
  by_query_tiles<T, D>(problem, [&](auto tiles) {
    constexpr int M = tiles.value;
    launch_flash(ctx, flash_dq_kernel<T, D, M>,
                 heads * flash::blocks_of(problem.a.queries, flash::kQueryRows<M>),
                 flash::dq_shared_bytes<T, D, M>(), p);
  });
  launch_flash(ctx, flash_dkv_kernel<T, D, false>, heads * flash::blocks_of(problem.a.keys),
               flash::dkv_shared_bytes<T, D>(), p);
}

// Calls fn(std::integral_constant<int, D>) for a depth the flash kernels take.
template <typename Fn>
void by_flash_depth(int64_t depth, Fn&& fn) {
  if (depth == 32)
    fn(std::integral_constant<int, 32>{});
  else if (depth == 64)
    fn(std::integral_constant<int, 64>{});
  else
    fn(std::integral_constant<int, 128>{});
}

// The most shared memory a block may have on `device` (past 48 KiB, once the kernel asks).
int shared_memory_limit(int device) {
  static std::mutex mutex;
  static std::map<int, int> limits;
  std::lock_guard<std::mutex> lock(mutex);
  auto found = limits.find(device);
  if (found != limits.end()) return found->second;
  int limit = 0;
  if (cudaDeviceGetAttribute(&limit, cudaDevAttrMaxSharedMemoryPerBlockOptin, device) !=
      cudaSuccess)
    limit = 48 * 1024;
  return limits[device] = limit;
}

// Whether `problem` runs on the flash kernels: their dtypes and depths, every tensor 16-byte
// aligned (their rows are read in 16-byte pieces), shared memory enough for the largest of them
// (the dk/dv/dq kernel: f32 at depth 128 takes 216 KiB, over an A100's 163; or the wide dq
// kernel), and not turned off.
bool use_flash(const KernelContext& ctx, const Problem& problem,
               std::initializer_list<const void*> tensors) {
  const DType dtype = ctx.input(0).dtype();
  if (attention_choice_holds("rows") || !flash::supports(dtype, problem.a)) return false;
  // The query-offset forward (cached decoding) has no kernel with a bias or softcap: its
  // registers are tight (see flash_forward_kernel).
  if (problem.query_offset != nullptr && (problem.bias != nullptr || problem.softcap > 0))
    return false;
  for (const void* t : tensors)
    if (reinterpret_cast<uintptr_t>(t) % 16 != 0) return false;
  size_t need = 0;
  by_flash_depth(problem.a.depth, [&](auto depth) {
    constexpr int D = depth.value;
    if (dtype == DType::f32) {
      need = flash::dkvq_shared_bytes<float, D>();
    } else {
      need = flash::dkvq_shared_bytes<Half, D>();
      by_query_tiles<Half, D>(problem, [&](auto tiles) {
        need = std::max(need, flash::dq_shared_bytes<Half, D, tiles.value>());
      });
    }
  });
  return need <= static_cast<size_t>(shared_memory_limit(ctx.cuda()->device.index));
}

template <typename T>
constexpr bool kTensorCoreType =
    std::is_same_v<T, Half> || std::is_same_v<T, BFloat16> || std::is_same_v<T, float>;

// The problem as cuDNN's fused attention takes it (see CudnnAttention), where KILN_CUDA_ATTENTION
// asks for cuDNN and every tensor is 16-byte aligned; nullopt otherwise.
std::optional<CudnnAttention> cudnn_problem(const KernelContext& ctx, const Problem& problem,
                                            std::initializer_list<const void*> tensors) {
  const DType dtype = ctx.input(0).dtype();
  const AttentionShape& a = problem.a;
  if (!attention_choice_holds("cudnn") || (dtype != DType::f16 && dtype != DType::bf16)) return {};
  if (problem.mask != nullptr || problem.bias != nullptr || problem.softcap > 0 ||
      problem.query_offset != nullptr || a.window > 0 || a.query_offset != 0)
    return {};
  if (a.kv_heads != a.heads || a.value_depth != a.depth || a.depth % 8 != 0 || a.depth > 128 ||
      a.batch * a.heads * a.queries * a.keys == 0)
    return {};
  for (const void* t : tensors)
    if (reinterpret_cast<uintptr_t>(t) % 16 != 0) return {};
  return CudnnAttention{.dtype = dtype,
                        .batch = a.batch,
                        .heads = a.heads,
                        .queries = a.queries,
                        .keys = a.keys,
                        .depth = a.depth,
                        .bthd = a.bthd,
                        .causal = a.causal,
                        .scale = static_cast<float>(problem.scale),
                        .deterministic = ctx.cuda()->deterministic};
}

// ---- The ops.

void attention_cuda(KernelContext& ctx) {
  const Problem pr = problem_of(ctx, 3);
  if (const std::optional<CudnnAttention> c =
          cudnn_problem(ctx, pr,
                        {ctx.input(0).raw_data(), ctx.input(1).raw_data(), ctx.input(2).raw_data(),
                         ctx.output(0).raw_data(), ctx.output(1).raw_data()});
      c && cudnn_attention_forward(ctx, *c, ctx.input(0).raw_data(), ctx.input(1).raw_data(),
                                   ctx.input(2).raw_data(), ctx.output(0).raw_data(),
                                   static_cast<float*>(ctx.output(1).raw_data())))
    return;
  const bool flash = use_flash(ctx, pr,
                               {ctx.input(0).raw_data(), ctx.input(1).raw_data(),
                                ctx.input(2).raw_data(), ctx.output(0).raw_data()});
  const int64_t rows = pr.a.batch * pr.a.heads * pr.a.queries;
  dispatch_cuda_float(ctx.input(0).dtype(), [&](auto tag) {
    using T = decltype(tag);
    if constexpr (kTensorCoreType<T>) {
      if (flash) {
        by_flash_depth(pr.a.depth, [&](auto depth) { flash_forward<T, depth.value>(ctx, pr); });
        return;
      }
    }
    launch_rows(ctx, rows, forward_kernel<T, Stats<T>>, pr, ctx.input(0).data<T>(),
                ctx.input(1).data<T>(), ctx.input(2).data<T>(),
                static_cast<T*>(ctx.output(0).raw_data()),
                static_cast<Stats<T>*>(ctx.output(1).raw_data()));
  });
}

void attention_backward_cuda(KernelContext& ctx) {
  const Problem pr = problem_of(ctx, 6);
  if (const std::optional<CudnnAttention> c = cudnn_problem(
          ctx, pr,
          {ctx.input(0).raw_data(), ctx.input(1).raw_data(), ctx.input(2).raw_data(),
           ctx.input(3).raw_data(), ctx.input(4).raw_data(), ctx.input(5).raw_data(),
           ctx.output(0).raw_data(), ctx.output(1).raw_data(), ctx.output(2).raw_data()});
      c && cudnn_attention_backward(
               ctx, *c, ctx.input(0).raw_data(), ctx.input(1).raw_data(), ctx.input(2).raw_data(),
               ctx.input(3).raw_data(), ctx.input(4).data<float>(), ctx.input(5).raw_data(),
               ctx.output(0).raw_data(), ctx.output(1).raw_data(), ctx.output(2).raw_data()))
    return;
  const int64_t rows = pr.a.batch * pr.a.heads * pr.a.queries;
  const int64_t key_rows = pr.a.batch * pr.a.heads * pr.a.keys;
  // With a query offset (a problem for the forward: cached decoding), the per-row kernels: the
  // flash bodies take one, but the summed dq's turns do not, and kernels of their own for it
  // would lengthen the build for what training rarely does.
  const bool flash =
      pr.query_offset == nullptr &&
      use_flash(ctx, pr,
                {ctx.input(0).raw_data(), ctx.input(1).raw_data(), ctx.input(2).raw_data(),
                 ctx.input(3).raw_data(), ctx.input(5).raw_data(), ctx.output(0).raw_data(),
                 ctx.output(1).raw_data(), ctx.output(2).raw_data()});
  dispatch_cuda_float(ctx.input(0).dtype(), [&](auto tag) {
    using T = decltype(tag);
    using S = Stats<T>;
    const T* q = ctx.input(0).data<T>();
    const T* k = ctx.input(1).data<T>();
    const T* v = ctx.input(2).data<T>();
    const T* out = ctx.input(3).data<T>();
    const S* lse = ctx.input(4).data<S>();
    const T* dout = ctx.input(5).data<T>();
    std::shared_ptr<Storage> delta_storage = ctx.scratch(sizeof(S) * std::max<int64_t>(rows, 1));
    S* delta = static_cast<S*>(delta_storage->data());
    launch_rows(ctx, rows, delta_kernel<T, S>, pr.a, dout, out, delta);
    if constexpr (kTensorCoreType<T>) {
      if (flash) {
        by_flash_depth(pr.a.depth,
                       [&](auto depth) { flash_backward<T, depth.value>(ctx, pr, delta); });
        return;
      }
    }
    launch_rows(ctx, rows, dq_kernel<T, S>, pr, q, k, v, lse, static_cast<const S*>(delta), dout,
                static_cast<T*>(ctx.output(0).raw_data()));
    launch_rows(ctx, key_rows, dkv_kernel<T, S>, pr, q, k, v, lse, static_cast<const S*>(delta),
                dout, static_cast<T*>(ctx.output(1).raw_data()),
                static_cast<T*>(ctx.output(2).raw_data()));
  });
}

KILN_CUDA_KERNEL(attention, attention_cuda, cuda_dtypes(DTypeClass::floating));
KILN_CUDA_KERNEL(attention_backward, attention_backward_cuda, cuda_dtypes(DTypeClass::floating));

}  // namespace kiln::ops::cuda_attention
