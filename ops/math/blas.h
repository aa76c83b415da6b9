// Row-major gemm over OpenBLAS for the CPU kernels that share the matmul path (matmul,
// convolution): C = A' B' + beta C, where A' is A or A^T (ta) and B' is B or B^T (tb).
#pragma once

#include <cblas.h>

namespace kiln::ops {

inline void gemm(bool ta, bool tb, int m, int n, int k, const float* a, int lda, const float* b,
                 int ldb, float* c, int ldc, float beta = 0.0f) {
  cblas_sgemm(CblasRowMajor, ta ? CblasTrans : CblasNoTrans, tb ? CblasTrans : CblasNoTrans, m, n,
              k, 1.0f, a, lda, b, ldb, beta, c, ldc);
}
inline void gemm(bool ta, bool tb, int m, int n, int k, const double* a, int lda, const double* b,
                 int ldb, double* c, int ldc, double beta = 0.0) {
  cblas_dgemm(CblasRowMajor, ta ? CblasTrans : CblasNoTrans, tb ? CblasTrans : CblasNoTrans, m, n,
              k, 1.0, a, lda, b, ldb, beta, c, ldc);
}

/// One OpenBLAS thread per call: parallelism comes from Kiln's pool (set once, before the
/// first product; OpenBLAS's own workers then stay asleep).
inline void single_threaded_blas() {
  static const bool done = [] {
    openblas_set_num_threads(1);
    return true;
  }();
  (void)done;
}

}  // namespace kiln::ops
