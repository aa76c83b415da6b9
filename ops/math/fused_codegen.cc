#include "ops/math/fused_codegen.h"

#include <sstream>

#include "framework/error.h"
#include "ops/math/elementwise.h"
#include "ops/math/fused.h"

namespace kiln::ops {

namespace {

#define KILN_STRINGIFY_SOURCE(...) #__VA_ARGS__ "\n"

// What generated kernels see before their own code: the float cases of the integer-aware
// helpers (the fused kernels compute only f32 and f64), then the shared helpers' text.
constexpr const char* kPrelude =
    "#define KILN_HOST_DEVICE __device__ __forceinline__\n"
    "namespace std { using ::exp; using ::log; using ::sqrt; using ::tanh; using ::erfc;\n"
    "                using ::sin; using ::cos; using ::pow; }\n"
    "template <typename T> KILN_HOST_DEVICE T wrapping_neg(T x) { return -x; }\n"
    "template <typename T> KILN_HOST_DEVICE T wrapping_add(T a, T b) { return a + b; }\n"
    "template <typename T> KILN_HOST_DEVICE T wrapping_sub(T a, T b) { return a - b; }\n"
    "template <typename T> KILN_HOST_DEVICE T wrapping_mul(T a, T b) { return a * b; }\n"
    "template <typename T> KILN_HOST_DEVICE T divide(T a, T b) { return a / b; }\n"
    "template <typename T> KILN_HOST_DEVICE T power(T a, T b) { return std::pow(a, b); "
    "}\n" KILN_FLOAT_HELPERS(KILN_STRINGIFY_SOURCE);

struct OpText {
  const char* name;
  const char* expr;
  int kind;  // 1 unary, 2 binary, 3 compare
};

// Indexed by opcode (the same X-macro order as FusedOpcode).
constexpr OpText kOps[] = {
#define KILN_UNARY_TEXT(name, cls, expr) {#name, #expr, 1},
#define KILN_BINARY_TEXT(name, cls, expr) {#name, #expr, 2},
#define KILN_COMPARE_TEXT(name, expr) {#name, #expr, 3},
    KILN_UNARY_OPS(KILN_UNARY_TEXT) KILN_BINARY_OPS(KILN_BINARY_TEXT)
        KILN_COMPARE_OPS(KILN_COMPARE_TEXT)
#undef KILN_UNARY_TEXT
#undef KILN_BINARY_TEXT
#undef KILN_COMPARE_TEXT
};

}  // namespace

std::string fused_cuda_source(const std::vector<int64_t>& code, const std::vector<FusedRead>& reads,
                              DType dtype) {
  KILN_CHECK(dtype == DType::f32 || dtype == DType::f64, Error,
             "[fused_elementwise] generated GPU kernels compute f32 or f64, not ", dtype);
  KILN_CHECK(reads.size() <= static_cast<size_t>(kMaxFusedInputs), Error, "[fused_elementwise] ",
             reads.size(), " inputs; generated kernels take at most ", kMaxFusedInputs);
  const char* type = dtype == DType::f32 ? "float" : "double";
  const int n_in = static_cast<int>(reads.size());
  const int n_ops = static_cast<int>(code.size() / 4);
  std::ostringstream src;
  src << kPrelude;
  // One function per opcode used, each the table row's expression.
  std::vector<char> emitted(op_count, 0);
  for (int k = 0; k < n_ops; ++k) {
    const int op = static_cast<int>(code[4 * k]);
    if (op == op_where || emitted[op]) continue;
    emitted[op] = 1;
    const OpText& t = kOps[op];
    src << "template <typename T> KILN_HOST_DEVICE T op_" << t.name;
    if (t.kind == 1)
      src << "(T x) { using std::exp, std::log, std::sqrt, std::tanh, std::erfc, std::sin, "
             "std::cos; return static_cast<T>("
          << t.expr << "); }\n";
    else if (t.kind == 2)
      src << "(T a, T b) { return static_cast<T>(" << t.expr << "); }\n";
    else
      src << "(T a, T b) { return (" << t.expr << ") ? T(1) : T(0); }\n";
  }
  src << "struct FusedArgs { const " << type << "* in[" << kMaxFusedInputs << "]; long long period["
      << kMaxFusedInputs << "]; " << type << "* out; long long n; };\n"
      << "extern \"C\" __global__ void __launch_bounds__(256) kiln_fused(const FusedArgs a) {\n"
      << "  typedef " << type << " T;\n";
  for (int i = 0; i < n_in; ++i)
    if (reads[i] == FusedRead::scalar) src << "  const T s" << i << " = a.in[" << i << "][0];\n";
  src << "  const long long stride = (long long)gridDim.x * blockDim.x;\n"
      << "  for (long long i = blockIdx.x * (long long)blockDim.x + threadIdx.x; i < a.n; "
         "i += stride) {\n";
  auto operand = [&](int64_t r) -> std::string {
    if (r >= n_in) return str("r", r - n_in);
    if (reads[r] == FusedRead::scalar) return str("s", r);
    if (reads[r] == FusedRead::full) return str("a.in[", r, "][i]");
    return str("a.in[", r, "][i % a.period[", r, "]]");
  };
  for (int k = 0; k < n_ops; ++k) {
    const int op = static_cast<int>(code[4 * k]);
    src << "    const T r" << k << " = ";
    if (op == op_where)
      src << "(" << operand(code[4 * k + 1]) << " != T(0)) ? " << operand(code[4 * k + 2]) << " : "
          << operand(code[4 * k + 3]) << ";\n";
    else if (fused_arity(op) == 1)
      src << "op_" << kOps[op].name << "<T>(" << operand(code[4 * k + 1]) << ");\n";
    else
      src << "op_" << kOps[op].name << "<T>(" << operand(code[4 * k + 1]) << ", "
          << operand(code[4 * k + 2]) << ");\n";
  }
  src << "    a.out[i] = r" << n_ops - 1 << ";\n  }\n}\n";
  return src.str();
}

}  // namespace kiln::ops
