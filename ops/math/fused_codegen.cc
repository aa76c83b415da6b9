#include "kiln/ops/math/fused_codegen.h"

#include <sstream>

#include "kiln/framework/error.h"
#include "kiln/ops/math/elementwise.h"
#include "kiln/ops/math/fused.h"

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
  // eval(x0, x1, ...): the program over one element's input values.
  src << "template <typename T> KILN_HOST_DEVICE T eval(";
  for (int i = 0; i < n_in; ++i) src << (i ? ", " : "") << "const T x" << i;
  src << ") {\n";
  auto operand = [&](int64_t r) { return r >= n_in ? str("r", r - n_in) : str("x", r); };
  for (int k = 0; k < n_ops; ++k) {
    const int op = static_cast<int>(code[4 * k]);
    src << "  const T r" << k << " = ";
    if (op == op_where)
      src << "(" << operand(code[4 * k + 1]) << " != T(0)) ? " << operand(code[4 * k + 2]) << " : "
          << operand(code[4 * k + 3]) << ";\n";
    else if (fused_arity(op) == 1)
      src << "op_" << kOps[op].name << "<T>(" << operand(code[4 * k + 1]) << ");\n";
    else
      src << "op_" << kOps[op].name << "<T>(" << operand(code[4 * k + 1]) << ", "
          << operand(code[4 * k + 2]) << ");\n";
  }
  src << "  return r" << n_ops - 1 << ";\n}\n";
  // The kernel: when vector_width is 16 / sizeof(T) (the host checked alignment and that n is a
  // multiple), each thread moves 16 bytes per full input per step; the scalar loop does the
  // rest (all of it otherwise).
  const char* vec = dtype == DType::f32 ? "float4" : "double2";
  const int lanes = dtype == DType::f32 ? 4 : 2;
  const char* lane_names[] = {"x", "y", "z", "w"};
  src << "struct FusedArgs { const " << type << "* in[" << kMaxFusedInputs << "]; long long period["
      << kMaxFusedInputs << "]; " << type << "* out; long long n; long long vector_width; };\n"
      << "extern \"C\" __global__ void __launch_bounds__(256) kiln_fused(const FusedArgs a) {\n"
      << "  typedef " << type << " T;\n";
  for (int i = 0; i < n_in; ++i)
    if (reads[i] == FusedRead::scalar) src << "  const T s" << i << " = a.in[" << i << "][0];\n";
  // The vector loop handles kUnroll groups per trip, all loads first: enough bytes in flight
  // per thread to keep the memory system busy (one load at a time leaves it mostly idle).
  constexpr int kUnroll = 4;
  src << "  const long long stride = (long long)gridDim.x * blockDim.x;\n"
      << "  const long long first = blockIdx.x * (long long)blockDim.x + threadIdx.x;\n"
      << "  long long done = 0;\n"
      << "  if (a.vector_width == " << lanes << ") {\n"
      << "    const long long groups = a.n / " << lanes << ";\n"
      << "    for (long long g0 = first; g0 < groups; g0 += " << kUnroll << " * stride) {\n";
  for (int i = 0; i < n_in; ++i)
    if (reads[i] == FusedRead::full)
      src << "      " << vec << " v" << i << "[" << kUnroll << "];\n";
  src << "#pragma unroll\n"
      << "      for (int u = 0; u < " << kUnroll << "; ++u) {\n"
      << "        const long long g = g0 + u * stride;\n"
      << "        if (g < groups) {\n";
  for (int i = 0; i < n_in; ++i)
    if (reads[i] == FusedRead::full)
      src << "          v" << i << "[u] = reinterpret_cast<const " << vec << "*>(a.in[" << i
          << "])[g];\n";
  src << "        }\n      }\n"
      << "#pragma unroll\n"
      << "      for (int u = 0; u < " << kUnroll << "; ++u) {\n"
      << "        const long long g = g0 + u * stride;\n"
      << "        if (g >= groups) break;\n"
      << "        " << vec << " o;\n";
  for (int l = 0; l < lanes; ++l) {
    src << "        o." << lane_names[l] << " = eval<T>(";
    for (int i = 0; i < n_in; ++i) {
      src << (i ? ", " : "");
      if (reads[i] == FusedRead::full)
        src << "v" << i << "[u]." << lane_names[l];
      else if (reads[i] == FusedRead::scalar)
        src << "s" << i;
      else
        src << "a.in[" << i << "][(g * " << lanes << " + " << l << ") % a.period[" << i << "]]";
    }
    src << ");\n";
  }
  src << "        reinterpret_cast<" << vec << "*>(a.out)[g] = o;\n      }\n    }\n"
      << "    done = groups * " << lanes << ";\n  }\n"
      << "  for (long long i = done + first; i < a.n; i += stride)\n"
      << "    a.out[i] = eval<T>(";
  for (int i = 0; i < n_in; ++i) {
    src << (i ? ", " : "");
    if (reads[i] == FusedRead::full)
      src << "a.in[" << i << "][i]";
    else if (reads[i] == FusedRead::scalar)
      src << "s" << i;
    else
      src << "a.in[" << i << "][i % a.period[" << i << "]]";
  }
  src << ");\n}\n";
  return src.str();
}

}  // namespace kiln::ops
