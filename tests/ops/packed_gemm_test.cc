// Kiln's own f32 gemm (ops/math/packed_gemm.h): against an f64 reference over every layout and
// the edges of its blocks, and bit for bit against itself however C is cut.
#include <gtest/gtest.h>

#include <algorithm>
#include <array>
#include <bit>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <random>
#include <string>
#include <vector>

#include "kiln/ops/math/blas.h"
#include "kiln/ops/math/packed_gemm.h"

namespace kiln {
namespace {

struct Problem {
  bool ta, tb;
  int64_t m, n, k;
  int64_t pad;  // extra elements per row of A, B and C (leading dimensions past the minimum)
  std::vector<float> a, b;
  int64_t lda() const { return (ta ? m : k) + pad; }
  int64_t ldb() const { return (tb ? k : n) + pad; }
  int64_t ldc() const { return n + pad; }
  float a_at(int64_t i, int64_t p) const { return ta ? a[p * lda() + i] : a[i * lda() + p]; }
  float b_at(int64_t p, int64_t j) const { return tb ? b[j * ldb() + p] : b[p * ldb() + j]; }
};

Problem make_problem(bool ta, bool tb, int64_t m, int64_t n, int64_t k, int64_t pad,
                     unsigned seed) {
  Problem pr{ta, tb, m, n, k, pad, {}, {}};
  std::mt19937 rng(seed);
  std::uniform_real_distribution<float> uniform(-1, 1);
  pr.a.resize((ta ? k : m) * pr.lda());
  pr.b.resize((tb ? n : k) * pr.ldb());
  for (float& x : pr.a) x = uniform(rng);
  for (float& x : pr.b) x = uniform(rng);
  return pr;
}

// C = A' B' (+ C) through packed_sgemm, C starting from `c0` (its padding kept as NaN).
std::vector<float> product(const Problem& pr, float beta, float c0) {
  std::vector<float> c(pr.m * pr.ldc(), std::nanf(""));
  for (int64_t i = 0; i < pr.m; ++i) std::fill_n(c.begin() + i * pr.ldc(), pr.n, c0);
  ops::packed_sgemm(pr.ta, pr.tb, pr.m, pr.n, pr.k, pr.a.data(), pr.lda(), pr.b.data(), pr.ldb(),
                    c.data(), pr.ldc(), beta);
  return c;
}

TEST(PackedGemm, MatchesAnF64ReferenceForEveryLayoutAndBlockEdge) {
  if (!ops::packed_sgemm_available()) GTEST_SKIP() << "this build has no AVX-512 or AVX2 kernel";
  // Sizes on and off the panels (6 rows, 16 or 64 columns), the row blocks (144), the slices
  // of the sum (256) and the column blocks (4,096).
  const std::vector<std::array<int64_t, 3>> sizes = {{1, 1, 1},      {6, 16, 8},     {7, 83, 29},
                                                     {145, 65, 257}, {37, 300, 600}, {13, 4100, 5}};
  int case_number = 0;
  for (const auto& [m, n, k] : sizes)
    for (bool ta : {false, true})
      for (bool tb : {false, true})
        for (float beta : {0.0f, 1.0f}) {
          const int64_t pad = case_number % 3;
          const Problem pr = make_problem(ta, tb, m, n, k, pad, 11 + case_number++);
          SCOPED_TRACE(testing::Message() << m << "x" << n << "x" << k << " ta " << ta << " tb "
                                          << tb << " beta " << beta << " pad " << pad);
          const std::vector<float> c = product(pr, beta, 0.5f);
          for (int64_t i = 0; i < m; ++i) {
            for (int64_t j = 0; j < n; ++j) {
              double expected = beta * 0.5, bound = beta * 0.5;
              for (int64_t p = 0; p < k; ++p) {
                expected += double(pr.a_at(i, p)) * pr.b_at(p, j);
                bound += std::fabs(double(pr.a_at(i, p)) * pr.b_at(p, j));
              }
              // Each FMA rounds once: at most (k + 1) units of 2^-24 of the sum of |terms|.
              ASSERT_NEAR(c[i * pr.ldc() + j], expected, (k + 1) * 6e-8 * bound + 1e-30)
                  << "element " << i << ", " << j;
            }
            for (int64_t j = n; j < pr.ldc(); ++j)
              ASSERT_TRUE(std::isnan(c[i * pr.ldc() + j]))
                  << "padding written at " << i << ", " << j;
          }
        }
}

TEST(PackedGemm, AnElementDoesNotDependOnHowCIsCut) {
  if (!ops::packed_sgemm_available()) GTEST_SKIP() << "this build has no AVX-512 or AVX2 kernel";
  for (bool ta : {false, true})
    for (bool tb : {false, true}) {
      SCOPED_TRACE(testing::Message() << "ta " << ta << " tb " << tb);
      const Problem pr = make_problem(ta, tb, 157, 203, 531, 0, 7);
      const std::vector<float> whole = product(pr, 0.0f, 0.0f);
      // The same C in blocks of uneven rows and columns, each its own call on sub-matrices.
      std::vector<float> cut(whole.size(), 0.0f);
      for (int64_t i0 = 0, rows = 5; i0 < pr.m; i0 += rows, rows = rows * 3 % 67 + 1)
        for (int64_t j0 = 0, cols = 9; j0 < pr.n; j0 += cols, cols = cols * 5 % 97 + 1) {
          const int64_t r = std::min(rows, pr.m - i0), cc = std::min(cols, pr.n - j0);
          const float* a = ta ? pr.a.data() + i0 : pr.a.data() + i0 * pr.lda();
          const float* b = tb ? pr.b.data() + j0 * pr.ldb() : pr.b.data() + j0;
          ops::packed_sgemm(ta, tb, r, cc, pr.k, a, pr.lda(), b, pr.ldb(),
                            cut.data() + i0 * pr.ldc() + j0, pr.ldc(), 0.0f);
        }
      for (size_t e = 0; e < whole.size(); ++e)
        ASSERT_EQ(std::bit_cast<uint32_t>(whole[e]), std::bit_cast<uint32_t>(cut[e]))
            << "element " << e / pr.ldc() << ", " << e % pr.ldc();
    }
}

TEST(PackedGemm, AnEmptySumZeroesOrKeepsC) {
  if (!ops::packed_sgemm_available()) GTEST_SKIP() << "this build has no AVX-512 or AVX2 kernel";
  const Problem pr = make_problem(false, false, 3, 5, 0, 1, 3);
  for (float beta : {0.0f, 1.0f}) {
    const std::vector<float> c = product(pr, beta, 2.5f);
    for (int64_t i = 0; i < pr.m; ++i)
      for (int64_t j = 0; j < pr.n; ++j) EXPECT_EQ(c[i * pr.ldc() + j], beta * 2.5f);
  }
}

// The f32 library without KILN_CPU_GEMM: oneDNN on AVX-512, OpenBLAS only where it runs FMA
// kernels (ctest's gemm_library_without_fma_kernels runs this with OPENBLAS_CORETYPE=Prescott,
// OpenBLAS's SSE3 kernels, which must leave f32 on oneDNN), and there the mixed path (Kiln's own
// gemm for OpenBLAS's one-slice products with beta 0) where the build has Kiln's; never Kiln's
// own alone.
TEST(GemmLibrary, TheDefaultFollowsTheProcessor) {
  const char* chosen = std::getenv("KILN_CPU_GEMM");
  if (chosen && *chosen) GTEST_SKIP() << "KILN_CPU_GEMM=" << chosen << " chooses";
  const ops::F32Gemm library = ops::f32_gemm_library();
  EXPECT_NE(library, ops::F32Gemm::kiln);
  if (library != ops::F32Gemm::onednn) {
    EXPECT_EQ(library, ops::packed_sgemm_available() ? ops::F32Gemm::mixed : ops::F32Gemm::openblas)
        << ops::f32_gemm_name(library);
  }
#if defined(__x86_64__)
  if (__builtin_cpu_supports("avx512f")) {
    EXPECT_EQ(library, ops::F32Gemm::onednn);
  }
#endif
  const char* core = std::getenv("OPENBLAS_CORETYPE");
  if (core && std::string(core) == "Prescott") {
    ASSERT_EQ(std::string(openblas_get_corename()), "Prescott");
    EXPECT_EQ(library, ops::F32Gemm::onednn) << ops::f32_gemm_name(library);
  }
}

// The mixed path sends a product to Kiln's gemm exactly when OpenBLAS would zero C first and the
// sum is one of Kiln's slices (beta 0, k <= kPackedGemmDepth), to OpenBLAS otherwise: each
// product's bits are those of the library it was sent to.
TEST(GemmLibrary, TheMixedPathSendsOneSliceProductsWithBetaZeroToKilnsGemm) {
  if (ops::f32_gemm_library() != ops::F32Gemm::mixed)
    GTEST_SKIP() << "f32 products run on " << ops::f32_gemm_name(ops::f32_gemm_library());
  struct Case {
    int64_t k;
    float beta;
    bool kiln;
  };
  const int64_t depth = ops::kPackedGemmDepth;
  ops::single_threaded_blas();  // as Kiln calls OpenBLAS (its threads may round differently)
  for (const Case& cs :
       {Case{depth, 0.0f, true}, Case{37, 0.0f, true}, Case{depth + 1, 0.0f, false},
        Case{depth, 1.0f, false}, Case{37, 1.0f, false}})
    for (bool ta : {false, true}) {
      SCOPED_TRACE(testing::Message() << "k " << cs.k << " beta " << cs.beta << " ta " << ta);
      const Problem pr = make_problem(ta, true, 29, 70, cs.k, 0, 5);
      const std::vector<float> kiln = product(pr, cs.beta, 0.25f);
      std::vector<float> openblas(pr.m * pr.ldc(), 0.25f), routed(pr.m * pr.ldc(), 0.25f);
      cblas_sgemm(CblasRowMajor, ta ? CblasTrans : CblasNoTrans, CblasTrans, 29, 70,
                  static_cast<int>(cs.k), 1.0f, pr.a.data(), static_cast<int>(pr.lda()),
                  pr.b.data(), static_cast<int>(pr.ldb()), cs.beta, openblas.data(),
                  static_cast<int>(pr.ldc()));
      ops::gemm(ta, true, 29, 70, static_cast<int>(cs.k), pr.a.data(), static_cast<int>(pr.lda()),
                pr.b.data(), static_cast<int>(pr.ldb()), routed.data(), static_cast<int>(pr.ldc()),
                cs.beta);
      const std::vector<float>& expected = cs.kiln ? kiln : openblas;
      bool libraries_differ = false;
      for (size_t e = 0; e < routed.size(); ++e) {
        ASSERT_EQ(std::bit_cast<uint32_t>(routed[e]), std::bit_cast<uint32_t>(expected[e]))
            << "element " << e / pr.ldc() << ", " << e % pr.ldc();
        libraries_differ |= kiln[e] != openblas[e];
      }
      // The two libraries round some element differently, so the check above says which ran.
      EXPECT_TRUE(libraries_differ || cs.k < 64);
    }
}

}  // namespace
}  // namespace kiln
