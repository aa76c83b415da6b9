// A register-blocked f32 product for small operands already in cache (attention's tiles), with
// AVX-512 or AVX2: C (=, or +=) A B for C [m, n], A [m, k] read through any two strides, B [k, n]
// with rows `ldb` apart. No packing and no call overhead: a library gemm spends more on those
// than on the arithmetic of a 6 x 128 x 64 product.
//
// The micro-kernel keeps a tile of up to 6 rows x kColumns of C in registers (AVX-512: 6 x 64 in
// 24 of the 32 zmm registers; AVX2: 6 x 16 in 12 of the 16 ymm, two left for B's row and one for
// A's broadcast) and walks k: per step it loads one row of B (kVectors vectors, the last masked
// to n) and broadcasts one element of A per row. C's tiles are visited column block by column
// block, so one block of B (k x kColumns) serves every row tile while it sits in L1.
//
// Every C element is the sum over p in order 0..k-1 of a[i, p] b[p, j], one FMA per term (the
// accumulated C first, when accumulating): the result does not depend on how m and n are tiled,
// nor on the vector width.
#pragma once

#if (defined(__AVX512F__) && defined(__AVX512DQ__)) || (defined(__AVX2__) && defined(__FMA__))
/// Defined where this build has small_gemm (x86-64 with AVX-512 F and DQ, or AVX2 and FMA).
#define KILN_HAS_SMALL_GEMM 1
#include <immintrin.h>

#include <cstdint>
#include <vector>

namespace kiln::ops::small_gemm {

/// v's data, v grown to at least n elements (contents undefined): the per-thread packing buffers
/// of packed_gemm.cc and attention_tiled.cc.
inline float* at_least(std::vector<float>& v, int64_t n) {
  if (v.size() < static_cast<size_t>(n)) v.resize(static_cast<size_t>(n));
  return v.data();
}

/// The vector operations the micro-kernel uses, for the widest ISA of this build.
struct Simd {
#if defined(__AVX512F__) && defined(__AVX512DQ__)
  using Vec = __m512;
  using Mask = __mmask16;  // lanes [0, n) of a partial vector
  static constexpr int kLanes = 16, kVectors = 4;
  static Vec zero() {
    return _mm512_setzero_ps();
  }
  static Vec load(const float* p) {
    return _mm512_loadu_ps(p);
  }
  static Vec load_first(const float* p, Mask m) {
    return _mm512_maskz_loadu_ps(m, p);
  }
  static void store(float* p, Vec v) {
    _mm512_storeu_ps(p, v);
  }
  static void store_first(float* p, Mask m, Vec v) {
    _mm512_mask_storeu_ps(p, m, v);
  }
  static Vec broadcast(float x) {
    return _mm512_set1_ps(x);
  }
  static Vec fma(Vec a, Vec b, Vec c) {
    return _mm512_fmadd_ps(a, b, c);
  }
  static Vec add(Vec a, Vec b) {
    return _mm512_add_ps(a, b);
  }
  /// a > b ? a : b lane by lane: b where either is NaN. (The zero-masked form keeping every
  /// lane: GCC 12 reports the plain form's undefined pass-through as maybe-uninitialized.)
  static Vec max(Vec a, Vec b) {
    return _mm512_maskz_max_ps(0xFFFF, a, b);
  }
  /// Lanes [0, n) of p (Mask from first(n)), `fill` in the others.
  static Vec load_first_or(const float* p, Mask m, float fill) {
    return _mm512_mask_loadu_ps(_mm512_set1_ps(fill), m, p);
  }
  // The lanes folded in halves: 256 bits, 128, 64, 32. Not _mm512_reduce_add_ps: GCC 12
  // builds it on an extract whose pass-through is an "undefined" vector, which -O3 inlining
  // reports as maybe-uninitialized (an error under -Werror); extractf32x8's is zeros.
  static float reduce_add(Vec v) {
    const __m256 h = _mm256_add_ps(_mm512_extractf32x8_ps(v, 0), _mm512_extractf32x8_ps(v, 1));
    __m128 x = _mm_add_ps(_mm256_castps256_ps128(h), _mm256_extractf128_ps(h, 1));
    x = _mm_add_ps(x, _mm_movehl_ps(x, x));
    return _mm_cvtss_f32(_mm_add_ss(x, _mm_movehdup_ps(x)));
  }
  static float reduce_max(Vec v) {
    const __m256 h = _mm256_max_ps(_mm512_extractf32x8_ps(v, 0), _mm512_extractf32x8_ps(v, 1));
    __m128 x = _mm_max_ps(_mm256_castps256_ps128(h), _mm256_extractf128_ps(h, 1));
    x = _mm_max_ps(x, _mm_movehl_ps(x, x));
    return _mm_cvtss_f32(_mm_max_ss(x, _mm_movehdup_ps(x)));
  }
  static Mask first(int64_t n) {
    return static_cast<Mask>((1u << n) - 1);
  }
#else
  using Vec = __m256;
  using Mask = __m256i;  // lanes [0, n) all ones, the rest zero
  static constexpr int kLanes = 8, kVectors = 2;
  static Vec zero() {
    return _mm256_setzero_ps();
  }
  static Vec load(const float* p) {
    return _mm256_loadu_ps(p);
  }
  static Vec load_first(const float* p, Mask m) {
    return _mm256_maskload_ps(p, m);
  }
  static void store(float* p, Vec v) {
    _mm256_storeu_ps(p, v);
  }
  static void store_first(float* p, Mask m, Vec v) {
    _mm256_maskstore_ps(p, m, v);
  }
  static Vec broadcast(float x) {
    return _mm256_set1_ps(x);
  }
  static Vec fma(Vec a, Vec b, Vec c) {
    return _mm256_fmadd_ps(a, b, c);
  }
  static Vec add(Vec a, Vec b) {
    return _mm256_add_ps(a, b);
  }
  /// a > b ? a : b lane by lane: b where either is NaN.
  static Vec max(Vec a, Vec b) {
    return _mm256_max_ps(a, b);
  }
  /// Lanes [0, n) of p (Mask from first(n)), `fill` in the others.
  static Vec load_first_or(const float* p, Mask m, float fill) {
    return _mm256_blendv_ps(_mm256_set1_ps(fill), _mm256_maskload_ps(p, m), _mm256_castsi256_ps(m));
  }
  static float reduce_add(Vec v) {
    __m128 x = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    x = _mm_add_ps(x, _mm_movehl_ps(x, x));
    return _mm_cvtss_f32(_mm_add_ss(x, _mm_movehdup_ps(x)));
  }
  static float reduce_max(Vec v) {
    __m128 x = _mm_max_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    x = _mm_max_ps(x, _mm_movehl_ps(x, x));
    return _mm_cvtss_f32(_mm_max_ss(x, _mm_movehdup_ps(x)));
  }
  static Mask first(int64_t n) {
    return _mm256_cmpgt_epi32(_mm256_set1_epi32(static_cast<int>(n)),
                              _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
  }
#endif
};

/// dst[0, n) = src[0, n) in whole vectors and a masked last one: the packing copies of rows of
/// 6 to 128 floats, where a library copy's call and dispatch cost as much as the copy.
inline void copy_row(const float* src, int64_t n, float* dst) {
  int64_t j = 0;
  for (; j + Simd::kLanes <= n; j += Simd::kLanes) Simd::store(dst + j, Simd::load(src + j));
  if (j < n) {
    const Simd::Mask last = Simd::first(n - j);
    Simd::store_first(dst + j, last, Simd::load_first(src + j, last));
  }
}

/// Rows and columns of C that one micro-kernel call computes (at most).
constexpr int kRows = 6;
constexpr int kVectors = Simd::kVectors;
constexpr int64_t kColumns = int64_t{Simd::kLanes} * kVectors;

#if defined(__AVX512F__)
/// A 16 x 16 block (rows ld apart) transposed into dst (rows ldd apart), in registers: pairs of
// rows interleaved (unpack), then 4 x 4 transposes within each 128-bit lane (shuffle), then
// the lanes exchanged twice (shuffle_f32x4), as one transposes a 4 x 4 matrix of 4 x 4 blocks.
inline void transpose_block(const float* src, int64_t ld, float* dst, int64_t ldd) {
  // The zero-masked forms with every lane kept: GCC 12 warns that the plain forms' undefined
  // pass-through operand is uninitialized.
  constexpr __mmask16 kAll = 0xFFFF;
  __m512 r[16], t[16];
  for (int i = 0; i < 16; ++i) r[i] = _mm512_loadu_ps(src + i * ld);
  for (int i = 0; i < 16; i += 2) {
    t[i] = _mm512_maskz_unpacklo_ps(kAll, r[i], r[i + 1]);
    t[i + 1] = _mm512_maskz_unpackhi_ps(kAll, r[i], r[i + 1]);
  }
  for (int i = 0; i < 16; i += 4) {
    r[i] = _mm512_maskz_shuffle_ps(kAll, t[i], t[i + 2], 0x44);
    r[i + 1] = _mm512_maskz_shuffle_ps(kAll, t[i], t[i + 2], 0xEE);
    r[i + 2] = _mm512_maskz_shuffle_ps(kAll, t[i + 1], t[i + 3], 0x44);
    r[i + 3] = _mm512_maskz_shuffle_ps(kAll, t[i + 1], t[i + 3], 0xEE);
  }
  for (int i = 0; i < 8; ++i) {
    const int j = (i / 4) * 8 + i % 4;
    t[j] = _mm512_maskz_shuffle_f32x4(kAll, r[j], r[j + 4], 0x88);
    t[j + 4] = _mm512_maskz_shuffle_f32x4(kAll, r[j], r[j + 4], 0xDD);
  }
  for (int i = 0; i < 8; ++i) {
    _mm512_storeu_ps(dst + i * ldd, _mm512_maskz_shuffle_f32x4(kAll, t[i], t[i + 8], 0x88));
    _mm512_storeu_ps(dst + (i + 8) * ldd, _mm512_maskz_shuffle_f32x4(kAll, t[i], t[i + 8], 0xDD));
  }
}
#else
/// An 8 x 8 block (rows ld apart) transposed into dst (rows ldd apart), in registers: pairs of
// rows interleaved (unpack), 4 x 4 transposes within each 128-bit lane (shuffle), then the
// lanes exchanged (permute2f128): rows 0-3's lane with rows 4-7's.
inline void transpose_block(const float* src, int64_t ld, float* dst, int64_t ldd) {
  __m256 r[8], t[8];
  for (int i = 0; i < 8; ++i) r[i] = _mm256_loadu_ps(src + i * ld);
  for (int i = 0; i < 8; i += 2) {
    t[i] = _mm256_unpacklo_ps(r[i], r[i + 1]);
    t[i + 1] = _mm256_unpackhi_ps(r[i], r[i + 1]);
  }
  for (int i = 0; i < 8; i += 4) {
    r[i] = _mm256_shuffle_ps(t[i], t[i + 2], 0x44);
    r[i + 1] = _mm256_shuffle_ps(t[i], t[i + 2], 0xEE);
    r[i + 2] = _mm256_shuffle_ps(t[i + 1], t[i + 3], 0x44);
    r[i + 3] = _mm256_shuffle_ps(t[i + 1], t[i + 3], 0xEE);
  }
  for (int i = 0; i < 4; ++i) {
    _mm256_storeu_ps(dst + i * ldd, _mm256_permute2f128_ps(r[i], r[i + 4], 0x20));
    _mm256_storeu_ps(dst + (i + 4) * ldd, _mm256_permute2f128_ps(r[i], r[i + 4], 0x31));
  }
}
#endif

namespace detail {

using Vec = Simd::Vec;
using Mask = Simd::Mask;
constexpr int kLanes = Simd::kLanes;

// C[0..MR) x [0..kLanes NV) (with kMasked, the last vector's lanes cut to `last`) from A (row
// stride rs, column stride cs) and B (row stride ldb). Whole vectors take plain loads and
// stores: on Zen 3 a masked store of 8 lanes costs about 12 cycles where a plain one costs 1,
// and a tile of 6 rows stores 6 (attention's tiles, of depth 64, ran ~15% slower masked).
template <int MR, int NV, bool kMasked>
void tile(int64_t k, const float* a, int64_t rs, int64_t cs, const float* b, int64_t ldb, float* c,
          int64_t ldc, Mask last, bool accumulate) {
  Vec acc[MR][NV];
#pragma GCC unroll 6
  for (int r = 0; r < MR; ++r)
#pragma GCC unroll 4
    for (int v = 0; v < NV; ++v)
      acc[r][v] = !accumulate              ? Simd::zero()
                  : !kMasked || v + 1 < NV ? Simd::load(c + r * ldc + kLanes * v)
                                           : Simd::load_first(c + r * ldc + kLanes * v, last);
  for (int64_t p = 0; p < k; ++p) {
    const float* bp = b + p * ldb;
    Vec bv[NV];
#pragma GCC unroll 4
    for (int v = 0; v < NV; ++v)
      bv[v] = !kMasked || v + 1 < NV ? Simd::load(bp + kLanes * v)
                                     : Simd::load_first(bp + kLanes * v, last);
    const float* ap = a + p * cs;
#pragma GCC unroll 6
    for (int r = 0; r < MR; ++r) {
      const Vec ar = Simd::broadcast(ap[r * rs]);
#pragma GCC unroll 4
      for (int v = 0; v < NV; ++v) acc[r][v] = Simd::fma(ar, bv[v], acc[r][v]);
    }
  }
#pragma GCC unroll 6
  for (int r = 0; r < MR; ++r)
#pragma GCC unroll 4
    for (int v = 0; v < NV; ++v) {
      if (!kMasked || v + 1 < NV)
        Simd::store(c + r * ldc + kLanes * v, acc[r][v]);
      else
        Simd::store_first(c + r * ldc + kLanes * v, last, acc[r][v]);
    }
}

using TileFn = void (*)(int64_t, const float*, int64_t, int64_t, const float*, int64_t, float*,
                        int64_t, Mask, bool);

template <int MR, bool kMasked>
constexpr TileFn tile_of_vectors(int nv) {
  if constexpr (kVectors == 4)
    return nv == 1   ? tile<MR, 1, kMasked>
           : nv == 2 ? tile<MR, 2, kMasked>
           : nv == 3 ? tile<MR, 3, kMasked>
                     : tile<MR, 4, kMasked>;
  else
    return nv == 1 ? tile<MR, 1, kMasked> : tile<MR, 2, kMasked>;
}

template <bool kMasked>
TileFn tile_of_rows(int mr, int nv) {
  switch (mr) {
    case 1:
      return tile_of_vectors<1, kMasked>(nv);
    case 2:
      return tile_of_vectors<2, kMasked>(nv);
    case 3:
      return tile_of_vectors<3, kMasked>(nv);
    case 4:
      return tile_of_vectors<4, kMasked>(nv);
    case 5:
      return tile_of_vectors<5, kMasked>(nv);
    default:
      return tile_of_vectors<6, kMasked>(nv);
  }
}

// The micro-kernel for mr rows (1..kRows), nv vectors (1..kVectors) and `columns` columns
// (masked only where the last vector is not whole).
inline TileFn tile_for(int mr, int nv, int64_t columns) {
  return columns == int64_t{kLanes} * nv ? tile_of_rows<false>(mr, nv) : tile_of_rows<true>(mr, nv);
}

}  // namespace detail

/// C[i, j] (+)= sum_p A[i, p] B[p, j] for i < m, j < n, p < k, where A[i, p] = a[i rs + p cs],
/// B[p, j] = b[p ldb + j] and C[i, j] = c[i ldc + j]; with k = 0, C is zeroed (or kept).
/// A transposed operand is the strides swapped (rs = 1, cs = its row stride).
inline void multiply(int64_t m, int64_t n, int64_t k, const float* a, int64_t rs, int64_t cs,
                     const float* b, int64_t ldb, float* c, int64_t ldc, bool accumulate) {
  for (int64_t j0 = 0; j0 < n; j0 += kColumns) {
    const int64_t columns = n - j0 < kColumns ? n - j0 : kColumns;
    const int nv = static_cast<int>((columns + detail::kLanes - 1) / detail::kLanes);
    const detail::Mask last = Simd::first(columns - detail::kLanes * (nv - 1));
    for (int64_t i0 = 0; i0 < m; i0 += kRows) {
      const int mr = static_cast<int>(m - i0 < kRows ? m - i0 : kRows);
      detail::tile_for(mr, nv, columns)(k, a + i0 * rs, rs, cs, b + j0, ldb, c + i0 * ldc + j0, ldc,
                                        last, accumulate);
    }
  }
}

}  // namespace kiln::ops::small_gemm

#endif  // (__AVX512F__ && __AVX512DQ__) || (__AVX2__ && __FMA__)
