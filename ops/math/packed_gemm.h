// Kiln's own single-threaded f32 gemm: small_gemm's register-blocked micro-kernel over packed
// panels of A and B (packed_gemm.cc). One of the CPU product paths blas.h can take
// (KILN_CPU_GEMM=kiln).
#pragma once

#include <cstdint>

namespace kiln::ops {

/// Terms of the sum packed_sgemm takes per slice: a product with k at most this is one pass over
/// C, each element written once (C is read first only with beta 1).
constexpr int64_t kPackedGemmDepth = 256;

/// Whether this build has packed_sgemm (x86-64 with AVX-512, or AVX2 and FMA: small_gemm.h).
bool packed_sgemm_available();

/// C = op(A) op(B) + beta C, row-major, on the calling thread: A' = A [m, k] (rows lda apart) or,
/// with ta, A stored [k, m]; B' = B [k, n] (rows ldb apart) or, with tb, B stored [n, k]; beta 0
/// or 1. Every element of C is its own chain of FMAs over p = 0..k-1 in order (after beta C), so
/// an element's bits do not depend on m, n or how a caller cuts C into blocks: the product is
/// the same on any number of threads. Only where packed_sgemm_available().
void packed_sgemm(bool ta, bool tb, int64_t m, int64_t n, int64_t k, const float* a, int64_t lda,
                  const float* b, int64_t ldb, float* c, int64_t ldc, float beta);

}  // namespace kiln::ops
