// Row-major gemm for the CPU kernels that share the matmul path (matmul, convolution,
// attention): C = A' B' + beta C, where A' is A or A^T (ta) and B' is B or B^T (tb).
//
// f32 goes through oneDNN's sgemm (or OpenBLAS's with KILN_CPU_GEMM=openblas), f64 through
// OpenBLAS. oneDNN picks its kernels from the
// processor's feature flags; Debian's OpenBLAS 0.3.21 picks them from the CPU model, and on
// virtual machines that report a generic "Intel Xeon Processor" it falls back to its SSE3
// ("Prescott") kernels: 28 GFLOP/s per core where oneDNN's AVX-512 kernel runs 160 (bench/
// RESULTS.md, 2026-12-01). On processors OpenBLAS does know the two are level per core.
#pragma once

#include <cblas.h>
#include <oneapi/dnnl/dnnl.h>

#include <cstdlib>
#include <string>

#include "kiln/framework/error.h"

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

/// One OpenBLAS thread per call (the f64 products): parallelism comes from Kiln's pool (set once,
/// before the first product; OpenBLAS's own workers then stay asleep).
inline void single_threaded_blas() {
  static const bool done = [] {
    openblas_set_num_threads(1);
    return true;
  }();
  (void)done;
}

/// Whether f32 products go through OpenBLAS instead of oneDNN: KILN_CPU_GEMM=openblas (default
/// onednn), so the parity suite checks both product paths (ctest's torch_parity_openblas).
inline bool f32_gemm_on_openblas() {
  static const bool openblas = [] {
    const char* value = std::getenv("KILN_CPU_GEMM");
    const std::string name = value ? value : "onednn";
    KILN_CHECK(name == "onednn" || name == "openblas", Error, "KILN_CPU_GEMM='", name,
               "': use onednn or openblas");
    return name == "openblas";
  }();
  return openblas;
}

inline void gemm(bool ta, bool tb, int m, int n, int k, const float* a, int lda, const float* b,
                 int ldb, float* c, int ldc, float beta = 0.0f) {
  if (f32_gemm_on_openblas()) {
    single_threaded_blas();
    cblas_sgemm(CblasRowMajor, ta ? CblasTrans : CblasNoTrans, tb ? CblasTrans : CblasNoTrans, m, n,
                k, 1.0f, a, lda, b, ldb, beta, c, ldc);
    return;
  }
  one_onednn_thread();
  const dnnl_status_t status =
      dnnl_sgemm(ta ? 'T' : 'N', tb ? 'T' : 'N', m, n, k, 1.0f, a, lda, b, ldb, beta, c, ldc);
  KILN_CHECK(status == dnnl_success, Error, "[kernel] oneDNN sgemm ", m, "x", k, "x", n,
             " failed with status ", static_cast<int>(status));
}
inline void gemm(bool ta, bool tb, int m, int n, int k, const double* a, int lda, const double* b,
                 int ldb, double* c, int ldc, double beta = 0.0) {
  cblas_dgemm(CblasRowMajor, ta ? CblasTrans : CblasNoTrans, tb ? CblasTrans : CblasNoTrans, m, n,
              k, 1.0, a, lda, b, ldb, beta, c, ldc);
}

}  // namespace kiln::ops
