// Which library runs the f32 products (blas.h's f32_gemm_library), chosen once per process.
#include "kiln/ops/math/blas.h"

#include <cctype>
#include <cstdlib>
#include <string>

#include "kiln/framework/error.h"

namespace kiln::ops {

namespace {

// Whether OpenBLAS runs AVX2+FMA (or wider) sgemm kernels here: Debian's OpenBLAS picks its
// kernels from the CPU model (or OPENBLAS_CORETYPE) and falls back to SSE kernels ("Prescott",
// 28 GFLOP/s per core) on models it does not know.
bool openblas_has_fma_kernels() {
  std::string core = openblas_get_corename();
  for (char& ch : core) ch = static_cast<char>(std::tolower(static_cast<unsigned char>(ch)));
  for (const char* fma : {"haswell", "zen", "skylakex", "cooperlake", "sapphirerapids"})
    if (core == fma) return true;
  return false;
}

// Without KILN_CPU_GEMM, by measurement: oneDNN on processors with AVX-512 (Zen 4: its AVX-512
// sgemm ran 84-113 GFLOP/s per core on the transformer's shapes against 74-100 for packed panels,
// and its elements do not depend on how C is cut), OpenBLAS on the others where it has FMA
// kernels (Zen 3, AVX2: oneDNN's AVX2 sgemm ran the transformer's FFN products and weight
// gradients at 27-35 GFLOP/s per core inside the step against OpenBLAS's 50-60; the transformer
// step's fastest of five went 134.5 -> 111.6 ms, the MLP step's 5.06 -> 4.04; bench/RESULTS.md,
// twelfth session), oneDNN otherwise. Where OpenBLAS is taken and this build has Kiln's gemm,
// the mixed path (blas.h): Kiln's for the one-slice products OpenBLAS would zero C for first
// (transformer step 67.2 -> 66.6 ms, MLP step 2.78 -> 2.71; fifteenth session).
F32Gemm default_library() {
#if defined(__x86_64__) || defined(__i386__)
  if (__builtin_cpu_supports("avx512f")) return F32Gemm::onednn;
#endif
  if (!openblas_has_fma_kernels()) return F32Gemm::onednn;
  return packed_sgemm_available() ? F32Gemm::mixed : F32Gemm::openblas;
}

}  // namespace

F32Gemm f32_gemm_library() {
  static const F32Gemm library = [] {
    const char* value = std::getenv("KILN_CPU_GEMM");
    if (!value || !*value) return default_library();
    const std::string name = value;
    KILN_CHECK(name == "kiln" || name == "onednn" || name == "openblas" || name == "mixed", Error,
               "KILN_CPU_GEMM='", name, "': use kiln, onednn, openblas or mixed");
    KILN_CHECK((name != "kiln" && name != "mixed") || packed_sgemm_available(), Error,
               "KILN_CPU_GEMM='", name, "': this build has no AVX-512 or AVX2 micro-kernel");
    return name == "kiln"     ? F32Gemm::kiln
           : name == "onednn" ? F32Gemm::onednn
           : name == "mixed"  ? F32Gemm::mixed
                              : F32Gemm::openblas;
  }();
  return library;
}

const char* f32_gemm_name(F32Gemm library) {
  switch (library) {
    case F32Gemm::kiln:
      return "kiln";
    case F32Gemm::onednn:
      return "onednn";
    case F32Gemm::openblas:
      return "openblas";
    case F32Gemm::mixed:
      return "mixed";
  }
  return "?";
}

}  // namespace kiln::ops
