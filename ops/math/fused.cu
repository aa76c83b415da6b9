// fused_elementwise on the GPU. Each distinct program (f32, f64) is compiled once at run time
// into straight-line code (fused_codegen.cc, NVRTC) and cached; the first run of a plan pays the
// compile, replays and later runs do not. Where NVRTC is unavailable, and for 16-bit floats, an
// interpreter runs instead: one thread per output element runs the whole program, its values in
// a few slots assigned on the host, reading each input where it sits (full size, a scalar, or a
// row repeated over the leading dims).
#include <cstdio>
#include <map>
#include <mutex>

#include "framework/cuda/runtime_compile.h"
#include "ops/cuda/map.cuh"
#include "ops/math/fused.h"
#include "ops/math/fused_codegen.h"

namespace kiln::ops::cuda_fused {

using namespace kiln::ops::cuda;

constexpr int kMaxOps = 64;
constexpr int kMaxInputs = 48;
constexpr int kMaxSlots = 12;

// The program as the kernel takes it (by value). An operand >= 0 is a slot, < 0 is input
// -operand - 1.
template <typename T>
struct Program {
  int n_ops = 0, n_in = 0;
  int8_t op[kMaxOps];
  int8_t dest[kMaxOps];
  int8_t arg[kMaxOps][3];
  const T* in[kMaxInputs];
  int64_t period[kMaxInputs];  // -1 full size, 0 scalar, m: a row of m repeated
};

template <typename T>
__device__ Compute<T> load(const Program<T>& p, int input, int64_t i) {
  const int64_t m = p.period[input];
  const int64_t at = m < 0 ? i : m == 0 ? 0 : i % m;
  return static_cast<Compute<T>>(p.in[input][at]);
}

template <typename T>
__global__ void fused_kernel(const Program<T> p, T* out, int64_t n) {
  using C = Compute<T>;
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < n;
       i += stride) {
    C slot[kMaxSlots];
    C result = C(0);
    for (int k = 0; k < p.n_ops; ++k) {
      C v[3];
      for (int j = 0; j < 3; ++j) {
        const int a = p.arg[k][j];
        v[j] = a >= 0 ? slot[a] : a == -128 ? C(0) : load(p, -a - 1, i);
      }
      const C a = v[0], b = v[1];
      switch (p.op[k]) {
#define KILN_UNARY_CASE(name, ...) \
  case op_##name:                  \
    result = name##_fn{}(a);       \
    break;
#define KILN_BINARY_CASE(name, ...) \
  case op_##name:                   \
    result = name##_fn{}(a, b);     \
    break;
#define KILN_COMPARE_CASE(name, ...)          \
  case op_##name:                             \
    result = name##_fn{}(a, b) ? C(1) : C(0); \
    break;
        KILN_UNARY_OPS(KILN_UNARY_CASE)
        KILN_BINARY_OPS(KILN_BINARY_CASE)
        KILN_COMPARE_OPS(KILN_COMPARE_CASE)
#undef KILN_UNARY_CASE
#undef KILN_BINARY_CASE
#undef KILN_COMPARE_CASE
        case op_where:
          result = a != C(0) ? b : v[2];
          break;
        default:
          break;
      }
      slot[p.dest[k]] = result;
    }
    out[i] = static_cast<T>(result);
  }
}

template <typename T>
void fused_typed(KernelContext& ctx) {
  const auto& code = ctx.attr<std::vector<int64_t>>("code");
  Program<T> p;
  p.n_ops = static_cast<int>(code.size() / 4);
  p.n_in = ctx.num_inputs();
  std::vector<int> slots;
  KILN_CHECK(p.n_ops <= kMaxOps && p.n_in <= kMaxInputs &&
                 assign_fused_slots(code, p.n_in, kMaxSlots, &slots),
             Error, ctx.where(), ": a fused program of ", p.n_ops, " ops over ", p.n_in,
             " inputs exceeds the GPU kernel's limits (", kMaxOps, " ops, ", kMaxInputs,
             " inputs, ", kMaxSlots, " live values); turn the fusion pass off for this graph");
  Tensor& y = ctx.output(0);
  const int64_t n = y.numel();
  for (int i = 0; i < p.n_in; ++i) {
    p.in[i] = ctx.input(i).template data<T>();
    const int64_t m = ctx.input(i).numel();
    p.period[i] = m == n ? -1 : m == 1 ? 0 : m;
  }
  for (int k = 0; k < p.n_ops; ++k) {
    p.op[k] = static_cast<int8_t>(code[4 * k]);
    p.dest[k] = static_cast<int8_t>(slots[k]);
    for (int j = 0; j < 3; ++j) {
      const int64_t r = code[4 * k + 1 + j];
      const bool used = j < fused_arity(static_cast<int>(code[4 * k]));
      p.arg[k][j] = !used        ? int8_t{-128}
                    : r < p.n_in ? static_cast<int8_t>(-r - 1)
                                 : static_cast<int8_t>(slots[r - p.n_in]);
    }
  }
  if (n == 0) return;
  const LaunchConfig config = elementwise_launch(n);
  fused_kernel<T><<<static_cast<unsigned>(config.blocks), config.threads, 0, stream_of(ctx)>>>(
      p, y.template data<T>(), n);
  check_launch(ctx);
}

void fused_cuda(KernelContext& ctx) {
  dispatch_cuda_float(ctx.output_type(0).dtype, [&](auto tag) { fused_typed<decltype(tag)>(ctx); });
}
KILN_CUDA_KERNEL(fused_elementwise, fused_cuda, cuda_dtypes(DTypeClass::floating));

}  // namespace kiln::ops::cuda_fused
