// The CPU product behind matmul, matmul_bias and the optimizer updates that take their gradient
// as a product: C = op(A) op(B) cut into blocks of C spread over the pool, one single-threaded
// gemm (ops/math/blas.h) per block, and an epilogue run on each block right after its gemm
// wrote it, while it is still in cache.
#pragma once

#include <algorithm>
#include <cstring>
#include <type_traits>
#include <vector>

#include "kiln/framework/kernel.h"
#include "kiln/ops/math/blas.h"
#include "kiln/ops/math/matmul_batch.h"

namespace kiln::ops {

/// With an epilogue, blocks of C hold about this many bytes (they stay in L2 between the gemm
/// and the epilogue); without one, the extent is cut into one block per thread.
constexpr int64_t kEpilogueBlockBytes = 512 << 10;

/// With an epilogue, blocks are also cut across (in columns when the rows are cut) to at most
/// this many elements: a block of 128 rows of 1024 columns (k = 256) ran oneDNN's sgemm at 88
/// GFLOP/s per core, 256 x 512 at 106 (the packed panels of A and B are reused over more of
/// the block). The cut depends on the sizes only, never on the number of threads.
constexpr int64_t kEpilogueBlockAcross = 512;

/// The two above for OpenBLAS's sgemm (f32 on processors without AVX-512: blas.cc), which packs
/// its operands again for every call: with the transformer's first FFN product (2048 x 1024, k =
/// 256, bias epilogue) on two Zen 3 cores, blocks of 256 x 512 ran at 131-144 GFLOP/s median and
/// 512 x 1024 at 151-159. So with it blocks are not cut across, and hold about 2 MiB.
constexpr int64_t kOpenBlasEpilogueBlockBytes = 2 << 20;

/// The epilogue of a plain product: nothing.
struct NoEpilogue {
  template <typename T>
  void operator()(int64_t, int64_t, int64_t, int64_t, int64_t, T*, int64_t) const {}
};

/// What a block of C holds before its gemm: zeros (the gemm overwrites it: beta 0).
struct ZeroStart {
  template <typename T>
  void operator()(int64_t, int64_t, int64_t, int64_t, int64_t, T*, int64_t) const {}
};

/// C = op(A) op(B) for A `a` ([..., M, K], or [..., K, M] with ta) and B `b` ([..., K, N], or
/// [..., N, K] with tb), batch dims broadcast; `c_shape` is C's shape ([..., M, N]).
///
/// Each pool task is one batch entry and a block of C's rows (or of its columns, when C is wide
/// and short); with an epilogue the blocks are cut across too (kEpilogueBlockAcross).
/// epilogue(entry, row0, rows, col0, cols, block, ld) runs on each block after its gemm, `block`
/// pointing at element (row0, col0) with rows `ld` apart. With `c` the blocks are written into C
/// (row-major, [..., M, N]); with c == nullptr each is written into a scratch buffer of the
/// calling thread, and the epilogue is the only reader of the product (the optimizer updates:
/// the gradient is never stored whole). In f32 with oneDNN's AVX-512 sgemm an element of C does
/// not depend on how C is cut, so results are the same for any number of threads and with or
/// without an epilogue; its AVX2 sgemm, and OpenBLAS's dgemm (f64), may round an element of a
/// block of another shape differently (the last bit).
///
/// With `initial` (same arguments as the epilogue), each block is first filled by it and the gemm
/// adds the product to what it wrote (beta 1): a bias added that way costs no pass over C after
/// the product, and OpenBLAS's gemm then skips its own pass zeroing C.
template <typename T, typename Epilogue = NoEpilogue, typename Start = ZeroStart>
void blocked_product(const KernelContext& ctx, const Tensor& a, const Tensor& b, bool ta, bool tb,
                     const Shape& c_shape, T* c, const Epilogue& epilogue = {},
                     [[maybe_unused]] const Start& initial = {}) {
  constexpr bool has_epilogue = !std::is_same_v<Epilogue, NoEpilogue>;
  constexpr bool has_start = !std::is_same_v<Start, ZeroStart>;
  single_threaded_blas();
  const Shape& as = a.shape();
  const Shape& bs = b.shape();
  const int64_t m = c_shape[-2], n = c_shape[-1], k = ta ? as[-2] : as[-1];
  const int64_t entries = c_shape.numel() / std::max<int64_t>(m * n, 1);
  if (c_shape.numel() == 0) return;
  KILN_CHECK(c != nullptr || has_epilogue, Error, ctx.where(), ": a product nobody reads");
  KILN_CHECK(m < (int64_t{1} << 31) && n < (int64_t{1} << 31) && k < (int64_t{1} << 31), Error,
             ctx.where(), ": matrix dims ", m, "x", k, "x", n, " exceed BLAS's 32-bit limit");
  Shape out_batch(std::vector<int64_t>(c_shape.begin(), c_shape.end() - 2));
  const std::vector<int64_t> a_off =
      batch_offsets(out_batch, Shape(std::vector<int64_t>(as.begin(), as.end() - 2)));
  const std::vector<int64_t> b_off =
      batch_offsets(out_batch, Shape(std::vector<int64_t>(bs.begin(), bs.end() - 2)));
  const T* pa = a.data<T>();
  const T* pb = b.data<T>();
  const int lda = static_cast<int>(as[-1]), ldb = static_cast<int>(bs[-1]);
  const int64_t threads = ctx.pool().num_threads();
  const bool by_rows = m >= n;
  const int64_t extent = by_rows ? m : n, across = by_rows ? n : m;
  const int64_t want = std::max<int64_t>(1, threads / std::max<int64_t>(entries, 1));
  int64_t pieces = want, across_block = across;
  if constexpr (has_epilogue) {
    const bool openblas = std::is_same_v<T, float> && f32_gemm_openblas();
    const int64_t block_bytes = openblas ? kOpenBlasEpilogueBlockBytes : kEpilogueBlockBytes;
    const int64_t across_max = openblas ? across : kEpilogueBlockAcross;
    const int64_t across_pieces = (across + across_max - 1) / across_max;
    across_block = (across + across_pieces - 1) / across_pieces;
    // Enough blocks of at most ~block_bytes, a multiple of `want` so no thread gets more of them
    // than another.
    const int64_t bytes = extent * across_block * static_cast<int64_t>(sizeof(T));
    const int64_t needed = (bytes + block_bytes - 1) / block_bytes;
    pieces = (needed + want - 1) / want * want;
  }
  const int64_t block = std::max<int64_t>(16, (extent + pieces - 1) / pieces);
  const int64_t blocks = (extent + block - 1) / block;
  const int64_t across_blocks = (across + across_block - 1) / across_block;
  const int64_t per_entry = blocks * across_blocks;
  ctx.pool().parallel_for(entries * per_entry, 1, [&](int64_t t0, int64_t t1) {
    thread_local std::vector<T> scratch;
    for (int64_t t = t0; t < t1; ++t) {
      const int64_t i = t / per_entry, start = (t % per_entry / across_blocks) * block;
      const int64_t across0 = (t % across_blocks) * across_block;
      const int64_t len = std::min(block, extent - start);
      const int64_t across_len = std::min(across_block, across - across0);
      const int64_t row0 = by_rows ? start : across0, rows = by_rows ? len : across_len;
      const int64_t col0 = by_rows ? across0 : start, cols = by_rows ? across_len : len;
      T* out = c ? c + i * m * n + row0 * n + col0 : nullptr;
      int64_t ld = n;
      if (!c) {
        if (scratch.size() < static_cast<size_t>(rows * cols)) scratch.resize(rows * cols);
        out = scratch.data();
        ld = cols;
      }
      if constexpr (has_start) initial(i, row0, rows, col0, cols, out, ld);
      if (k == 0) {
        if constexpr (!has_start)
          for (int64_t r = 0; r < rows; ++r) std::fill_n(out + r * ld, cols, T(0));
      } else {
        const T* ab = pa + a_off[i] * m * k;
        const T* bb = pb + b_off[i] * k * n;
        // Rows [row0, row0 + rows) of op(A): row r is at r * lda, or column r when transposed;
        // columns [col0, col0 + cols) of op(B) likewise.
        const T* a_rows = ab + (ta ? row0 : row0 * lda);
        const T* b_cols = bb + (tb ? col0 * ldb : col0);
        gemm(ta, tb, static_cast<int>(rows), static_cast<int>(cols), static_cast<int>(k), a_rows,
             lda, b_cols, ldb, out, static_cast<int>(ld), has_start ? T(1) : T(0));
      }
      epilogue(i, row0, rows, col0, cols, out, ld);
    }
  });
}

}  // namespace kiln::ops
