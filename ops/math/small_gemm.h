// A register-blocked f32 product for small operands already in cache (attention's tiles), with
// AVX-512: C (=, or +=) A B for C [m, n], A [m, k] read through any two strides, B [k, n] with
// rows `ldb` apart. No packing and no call overhead: a library gemm spends more on those than
// on the arithmetic of a 6 x 128 x 64 product.
//
// The micro-kernel keeps a tile of up to 6 rows x 64 columns of C in 24 zmm registers and walks
// k: per step it loads one row of B (4 vectors, the last masked to n) and broadcasts one element
// of A per row, 24 FMAs for 4 loads and 6 broadcasts. C's tiles are visited column block by
// column block, so one block of B (k x 64) serves every row tile while it sits in L1.
//
// Every C element is the sum over p in order 0..k-1 of a[i, p] b[p, j], one FMA per term (the
// accumulated C first, when accumulating): the result does not depend on how m and n are tiled.
#pragma once

#if defined(__AVX512F__)
#include <immintrin.h>

#include <cstdint>

namespace kiln::ops::small_gemm {

/// Rows and columns of C that one micro-kernel call computes (at most).
constexpr int kRows = 6;
constexpr int kVectors = 4;  // of 16 floats: 64 columns

namespace detail {

// C[0..MR) x [0..16 NV) (the last vector's lanes cut to `last`) from A (row stride rs,
// column stride cs) and B (row stride ldb).
template <int MR, int NV>
void tile(int64_t k, const float* a, int64_t rs, int64_t cs, const float* b, int64_t ldb, float* c,
          int64_t ldc, __mmask16 last, bool accumulate) {
  __m512 acc[MR][NV];
#pragma GCC unroll 6
  for (int r = 0; r < MR; ++r)
#pragma GCC unroll 4
    for (int v = 0; v < NV; ++v)
      acc[r][v] = !accumulate  ? _mm512_setzero_ps()
                  : v + 1 < NV ? _mm512_loadu_ps(c + r * ldc + 16 * v)
                               : _mm512_maskz_loadu_ps(last, c + r * ldc + 16 * v);
  for (int64_t p = 0; p < k; ++p) {
    const float* bp = b + p * ldb;
    __m512 bv[NV];
#pragma GCC unroll 4
    for (int v = 0; v < NV; ++v)
      bv[v] = v + 1 < NV ? _mm512_loadu_ps(bp + 16 * v) : _mm512_maskz_loadu_ps(last, bp + 16 * v);
    const float* ap = a + p * cs;
#pragma GCC unroll 6
    for (int r = 0; r < MR; ++r) {
      const __m512 ar = _mm512_set1_ps(ap[r * rs]);
#pragma GCC unroll 4
      for (int v = 0; v < NV; ++v) acc[r][v] = _mm512_fmadd_ps(ar, bv[v], acc[r][v]);
    }
  }
#pragma GCC unroll 6
  for (int r = 0; r < MR; ++r)
#pragma GCC unroll 4
    for (int v = 0; v < NV; ++v) {
      if (v + 1 < NV)
        _mm512_storeu_ps(c + r * ldc + 16 * v, acc[r][v]);
      else
        _mm512_mask_storeu_ps(c + r * ldc + 16 * v, last, acc[r][v]);
    }
}

using TileFn = void (*)(int64_t, const float*, int64_t, int64_t, const float*, int64_t, float*,
                        int64_t, __mmask16, bool);

template <int MR>
constexpr TileFn tile_of_vectors(int nv) {
  return nv == 1 ? tile<MR, 1> : nv == 2 ? tile<MR, 2> : nv == 3 ? tile<MR, 3> : tile<MR, 4>;
}

// The micro-kernel for mr rows (1..6) and nv vectors (1..4).
inline TileFn tile_for(int mr, int nv) {
  switch (mr) {
    case 1:
      return tile_of_vectors<1>(nv);
    case 2:
      return tile_of_vectors<2>(nv);
    case 3:
      return tile_of_vectors<3>(nv);
    case 4:
      return tile_of_vectors<4>(nv);
    case 5:
      return tile_of_vectors<5>(nv);
    default:
      return tile_of_vectors<6>(nv);
  }
}

}  // namespace detail

/// C[i, j] (+)= sum_p A[i, p] B[p, j] for i < m, j < n, p < k, where A[i, p] = a[i rs + p cs],
/// B[p, j] = b[p ldb + j] and C[i, j] = c[i ldc + j]; with k = 0, C is zeroed (or kept).
/// A transposed operand is the strides swapped (rs = 1, cs = its row stride).
inline void multiply(int64_t m, int64_t n, int64_t k, const float* a, int64_t rs, int64_t cs,
                     const float* b, int64_t ldb, float* c, int64_t ldc, bool accumulate) {
  constexpr int64_t kColumns = 16 * kVectors;
  for (int64_t j0 = 0; j0 < n; j0 += kColumns) {
    const int64_t columns = n - j0 < kColumns ? n - j0 : kColumns;
    const int nv = static_cast<int>((columns + 15) / 16);
    const int64_t in_last = columns - 16 * (nv - 1);  // 1..16
    const __mmask16 last = static_cast<__mmask16>((1u << in_last) - 1);
    for (int64_t i0 = 0; i0 < m; i0 += kRows) {
      const int mr = static_cast<int>(m - i0 < kRows ? m - i0 : kRows);
      detail::tile_for(mr, nv)(k, a + i0 * rs, rs, cs, b + j0, ldb, c + i0 * ldc + j0, ldc, last,
                               accumulate);
    }
  }
}

}  // namespace kiln::ops::small_gemm

#endif  // __AVX512F__
