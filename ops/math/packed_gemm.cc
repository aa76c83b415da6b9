// packed_sgemm: the classic blocking of a gemm around a register-blocked micro-kernel (the
// scheme of GotoBLAS and BLIS, written here for small_gemm's kernel).
//
// For each block of kColumnBlock columns of C and each slice of kDepth of the sum, the slice of
// B is packed into panels of small_gemm::kColumns columns ([kDepth, kColumns], rows contiguous:
// one panel is 16 KiB with AVX2, and sits in L1 while the micro-kernel sweeps a block of A's
// rows past it). For each block of kRowBlock rows, the slice of A is packed into panels of
// small_gemm::kRows rows ([kDepth, kRows], the rows of a column contiguous: 144 x 256 floats,
// 144 KiB, stay in L2). Each micro-kernel call adds one slice's terms to a 6-row tile of C,
// loading what the previous slices left there, so every element is one FMA chain over p in
// order, however C, k or the blocks are cut.
#include "kiln/ops/math/packed_gemm.h"

#include <algorithm>
#include <vector>

#include "kiln/framework/error.h"
#include "kiln/ops/math/small_gemm.h"

namespace kiln::ops {

#if defined(KILN_HAS_SMALL_GEMM)

bool packed_sgemm_available() {
  return true;
}

namespace {

constexpr int64_t kPanelRows = small_gemm::kRows;
constexpr int64_t kPanelColumns = small_gemm::kColumns;
constexpr int64_t kLanes = small_gemm::Simd::kLanes;
constexpr int64_t kDepth = kPackedGemmDepth;  // terms of the sum per slice
constexpr int64_t kRowBlock = 144;            // rows of A packed at once (24 panels of 6)
constexpr int64_t kColumnBlock = 4096;        // columns of B packed at once

// Rows [i0, i0 + rows) and terms [p0, p0 + depth) of A' into panels of kPanelRows rows: panel q
// holds A'[i0 + q kPanelRows + r, p0 + p] at q kPanelRows depth + p kPanelRows + r. A short last
// panel is left short (the micro-kernel for fewer rows reads only those).
void pack_a(bool ta, const float* a, int64_t lda, int64_t i0, int64_t rows, int64_t p0,
            int64_t depth, float* dst) {
  for (int64_t q0 = 0; q0 < rows; q0 += kPanelRows) {
    const int64_t panel_rows = std::min(kPanelRows, rows - q0);
    float* d = dst + q0 * depth;
    if (ta) {  // A stored [k, m]: a panel's rows of one term are contiguous
      const float* src = a + p0 * lda + i0 + q0;
      if (panel_rows == kPanelRows) {  // a copy of constant length, inlined (no call per term)
        for (int64_t p = 0; p < depth; ++p)
          std::copy_n(src + p * lda, kPanelRows, d + p * kPanelRows);
      } else {
        for (int64_t p = 0; p < depth; ++p)
          std::copy_n(src + p * lda, panel_rows, d + p * kPanelRows);
      }
    } else {
      // A [m, k]: kLanes x kLanes blocks transposed in registers where kLanes rows are there to
      // read (the rows past the panel's are read and dropped), the rest element by element.
      const float* src = a + (i0 + q0) * lda + p0;
      int64_t p = 0;
      if (q0 + kLanes <= rows) {
        alignas(64) float block[kLanes * kLanes];
        for (; p + kLanes <= depth; p += kLanes) {
          small_gemm::transpose_block(src + p, lda, block, kLanes);
          for (int64_t t = 0; t < kLanes; ++t)
            std::copy_n(block + t * kLanes, kPanelRows, d + (p + t) * kPanelRows);
        }
      }
      for (int64_t r = 0; r < panel_rows; ++r)
        for (int64_t t = p; t < depth; ++t) d[t * kPanelRows + r] = src[r * lda + t];
    }
  }
}

// Terms [p0, p0 + depth) and columns [j0, j0 + cols) of B' into panels of kPanelColumns
// columns: panel q holds B'[p0 + p, j0 + q kPanelColumns + j] at q kPanelColumns depth +
// p kPanelColumns + j. Columns past a short last panel are never read (the micro-kernel masks
// them).
void pack_b(bool tb, const float* b, int64_t ldb, int64_t p0, int64_t depth, int64_t j0,
            int64_t cols, float* dst) {
  for (int64_t q0 = 0; q0 < cols; q0 += kPanelColumns) {
    const int64_t panel_cols = std::min(kPanelColumns, cols - q0);
    float* d = dst + q0 * depth;
    if (!tb) {
      const float* src = b + p0 * ldb + j0 + q0;
      for (int64_t p = 0; p < depth; ++p)
        small_gemm::copy_row(src + p * ldb, panel_cols, d + p * kPanelColumns);
      continue;
    }
    // B stored [n, k]: B'[p, j] = b[j ldb + p], transposed in blocks of kLanes x kLanes.
    const float* src = b + (j0 + q0) * ldb + p0;
    const int64_t full_cols = panel_cols / kLanes * kLanes, full_depth = depth / kLanes * kLanes;
    for (int64_t j = 0; j < full_cols; j += kLanes)
      for (int64_t p = 0; p < full_depth; p += kLanes)
        small_gemm::transpose_block(src + j * ldb + p, ldb, d + p * kPanelColumns + j,
                                    kPanelColumns);
    for (int64_t j = 0; j < panel_cols; ++j)
      for (int64_t p = j < full_cols ? full_depth : 0; p < depth; ++p)
        d[p * kPanelColumns + j] = src[j * ldb + p];
  }
}

// The packing buffers of this thread, kept between calls (as attention's: freeing them would
// make glibc trim its heap on every call).
struct PackBuffers {
  std::vector<float> a, b;

  static PackBuffers& of_this_thread() {
    thread_local PackBuffers buffers;
    return buffers;
  }
};

}  // namespace

void packed_sgemm(bool ta, bool tb, int64_t m, int64_t n, int64_t k, const float* a, int64_t lda,
                  const float* b, int64_t ldb, float* c, int64_t ldc, float beta) {
  if (m <= 0 || n <= 0) return;
  if (k <= 0) {
    if (beta == 0.0f)
      for (int64_t i = 0; i < m; ++i) std::fill_n(c + i * ldc, n, 0.0f);
    return;
  }
  PackBuffers& buffers = PackBuffers::of_this_thread();
  const int64_t depth_max = std::min(kDepth, k);
  const int64_t padded_rows = (std::min(kRowBlock, m) + kPanelRows - 1) / kPanelRows * kPanelRows;
  float* a_packed = small_gemm::at_least(buffers.a, padded_rows * depth_max);
  const int64_t column_block = std::min(kColumnBlock, n);
  const int64_t padded_columns = (column_block + kPanelColumns - 1) / kPanelColumns * kPanelColumns;
  float* b_packed = small_gemm::at_least(buffers.b, padded_columns * depth_max);
  for (int64_t j0 = 0; j0 < n; j0 += kColumnBlock) {
    const int64_t cols = std::min(kColumnBlock, n - j0);
    for (int64_t p0 = 0; p0 < k; p0 += kDepth) {
      const int64_t depth = std::min(kDepth, k - p0);
      const bool accumulate = p0 > 0 || beta != 0.0f;
      pack_b(tb, b, ldb, p0, depth, j0, cols, b_packed);
      for (int64_t i0 = 0; i0 < m; i0 += kRowBlock) {
        const int64_t rows = std::min(kRowBlock, m - i0);
        pack_a(ta, a, lda, i0, rows, p0, depth, a_packed);
        for (int64_t q = 0; q < cols; q += kPanelColumns) {
          const int64_t panel_cols = std::min(kPanelColumns, cols - q);
          const int vectors = static_cast<int>((panel_cols + kLanes - 1) / kLanes);
          const small_gemm::Simd::Mask last =
              small_gemm::Simd::first(panel_cols - kLanes * (vectors - 1));
          const float* b_panel = b_packed + q * depth;
          for (int64_t r = 0; r < rows; r += kPanelRows) {
            const int panel_rows = static_cast<int>(std::min(kPanelRows, rows - r));
            small_gemm::detail::tile_for(panel_rows, vectors, panel_cols)(
                depth, a_packed + r * depth, 1, kPanelRows, b_panel, kPanelColumns,
                c + (i0 + r) * ldc + j0 + q, ldc, last, accumulate);
          }
        }
      }
    }
  }
}

#else

bool packed_sgemm_available() {
  return false;
}

void packed_sgemm(bool, bool, int64_t, int64_t, int64_t, const float*, int64_t, const float*,
                  int64_t, float*, int64_t, float) {
  throw Error("packed_sgemm: this build has no register-blocked micro-kernel (AVX-512 or AVX2)");
}

#endif  // KILN_HAS_SMALL_GEMM

}  // namespace kiln::ops
