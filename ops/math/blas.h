// Row-major gemm for the CPU kernels that share the matmul path (matmul, convolution,
// attention): C = A' B' + beta C, where A' is A or A^T (ta) and B' is B or B^T (tb).
//
// f32 goes through Kiln's packed_sgemm, oneDNN's sgemm or OpenBLAS's (f32_gemm_library), f64
// through OpenBLAS. oneDNN picks its kernels from the processor's feature flags; Debian's OpenBLAS
// 0.3.21 picks them from the CPU model, and on virtual machines that report a generic "Intel Xeon
// Processor" it falls back to its SSE3 ("Prescott") kernels: 28 GFLOP/s per core where oneDNN's
// AVX-512 kernel runs 160 (bench/RESULTS.md, 2026-12-01). f32_gemm_library takes OpenBLAS only
// where it has FMA kernels.
#pragma once

#include <cblas.h>
#include <oneapi/dnnl/dnnl.h>

#include <cstdlib>
#include <string>
#include <type_traits>

#include "kiln/framework/error.h"
#include "kiln/ops/math/packed_gemm.h"

// GNU OpenMP's, declared here: its omp.h is private to GCC, and the builds under clang use it too.
extern "C" void omp_set_num_threads(int threads);

namespace kiln::ops {

/// oneDNN's CPU runtime is OpenMP: one thread per call, on whichever pool thread calls (the
/// setting is per calling thread), so no OpenMP team competes with Kiln's pool and a result
/// does not depend on how many threads there are. Call before each oneDNN call.
inline void one_onednn_thread() {
  thread_local const bool once = [] {
    omp_set_num_threads(1);
    return true;
  }();
  (void)once;
}

/// One OpenBLAS thread per call (f64 products, and f32 where OpenBLAS runs them): parallelism comes
/// from Kiln's pool (set once, before the first product; OpenBLAS's own workers then stay asleep).
inline void single_threaded_blas() {
  static const bool done = [] {
    openblas_set_num_threads(1);
    return true;
  }();
  (void)done;
}

/// The library behind f32 products: KILN_CPU_GEMM=onednn, openblas, kiln (packed_gemm.h: Kiln's
/// own micro-kernel over packed panels, where the build has one) or mixed (OpenBLAS, except the
/// products it would start by zeroing C, beta 0, whose sum is one slice of Kiln's, k <=
/// kPackedGemmDepth: those through Kiln's, which writes each element of C once), so the parity
/// suite checks each path (ctest's torch_parity_*); without the variable, the faster one on this
/// kind of processor (blas.cc). Decided once per process.
enum class F32Gemm { kiln, onednn, openblas, mixed };
F32Gemm f32_gemm_library();

/// "kiln", "onednn", "openblas" or "mixed".
const char* f32_gemm_name(F32Gemm library);

/// Whether f32 products go through OpenBLAS (all of them, or all but mixed's shallow ones): it
/// packs its operands again on every call, so products are cut into fewer, larger blocks
/// (blocked_product.h), and a bias is best added by starting C as the bias rows (beta 1).
inline bool f32_gemm_openblas() {
  const F32Gemm library = f32_gemm_library();
  return library == F32Gemm::openblas || library == F32Gemm::mixed;
}

/// One row of C (m = 1, a decode step's products): c = op(B)^T a through OpenBLAS's gemv, which
/// streams B once; its gemm (and Kiln's) would first copy all of B into packed panels for the
/// one row. T is float or double.
template <typename T>
inline void row_times_matrix(bool ta, bool tb, int n, int k, const T* a, int lda, const T* b,
                             int ldb, T* c, T beta) {
  // op(A)'s one row is A's first row, or its first column (stride lda) when transposed. op(B)
  // is B [k, n] (c = B^T a) or B^T with B [n, k] (c = B a).
  const int stride = ta ? lda : 1;
  const CBLAS_TRANSPOSE trans = tb ? CblasNoTrans : CblasTrans;
  const int rows = tb ? n : k, cols = tb ? k : n;
  single_threaded_blas();
  if constexpr (std::is_same_v<T, float>)
    cblas_sgemv(CblasRowMajor, trans, rows, cols, 1.0f, b, ldb, a, stride, beta, c, 1);
  else
    cblas_dgemv(CblasRowMajor, trans, rows, cols, 1.0, b, ldb, a, stride, beta, c, 1);
}

inline void gemm(bool ta, bool tb, int m, int n, int k, const float* a, int lda, const float* b,
                 int ldb, float* c, int ldc, float beta = 0.0f) {
  if (m == 1 && f32_gemm_openblas()) return row_times_matrix(ta, tb, n, k, a, lda, b, ldb, c, beta);
  switch (f32_gemm_library()) {
    case F32Gemm::kiln:
      if (beta == 0.0f || beta == 1.0f)
        return packed_sgemm(ta, tb, m, n, k, a, lda, b, ldb, c, ldc, beta);
      break;  // another beta: oneDNN
    case F32Gemm::mixed:
      // OpenBLAS with beta 0 first zeroes C, then adds the product to it: a pass over C (8 MiB for
      // the transformer's FFN gradient) that Kiln's gemm does not make where one slice is the
      // whole sum (transformer step: the dX products of k = 256 went 6.01 -> 5.68 and 1.52 ->
      // 1.45 ms; bench/RESULTS.md, fifteenth session). Deeper sums stay on OpenBLAS, faster there.
      if (beta == 0.0f && k <= kPackedGemmDepth)
        return packed_sgemm(ta, tb, m, n, k, a, lda, b, ldb, c, ldc, beta);
      [[fallthrough]];
    case F32Gemm::openblas:
      single_threaded_blas();
      cblas_sgemm(CblasRowMajor, ta ? CblasTrans : CblasNoTrans, tb ? CblasTrans : CblasNoTrans, m,
                  n, k, 1.0f, a, lda, b, ldb, beta, c, ldc);
      return;
    case F32Gemm::onednn:
      break;
  }
  one_onednn_thread();
  const dnnl_status_t status =
      dnnl_sgemm(ta ? 'T' : 'N', tb ? 'T' : 'N', m, n, k, 1.0f, a, lda, b, ldb, beta, c, ldc);
  KILN_CHECK(status == dnnl_success, Error, "[kernel] oneDNN sgemm ", m, "x", k, "x", n,
             " failed with status ", static_cast<int>(status));
}
inline void gemm(bool ta, bool tb, int m, int n, int k, const double* a, int lda, const double* b,
                 int ldb, double* c, int ldc, double beta = 0.0) {
  if (m == 1) return row_times_matrix(ta, tb, n, k, a, lda, b, ldb, c, beta);
  cblas_dgemm(CblasRowMajor, ta ? CblasTrans : CblasNoTrans, tb ? CblasTrans : CblasNoTrans, m, n,
              k, 1.0, a, lda, b, ldb, beta, c, ldc);
}

}  // namespace kiln::ops
