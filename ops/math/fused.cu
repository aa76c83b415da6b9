// fused_elementwise on the GPU. Each distinct program (f32, f64) is compiled once at run time
// into straight-line code (fused_codegen.cc, NVRTC) and cached; the first run of a plan pays the
// compile, replays and later runs do not. Where NVRTC is unavailable, and for 16-bit floats, an
// interpreter runs instead: one thread per output element runs the whole program, its values in
// a few slots assigned on the host, reading each input where it sits (full size, a scalar, or a
// row repeated over the leading dims).
#include <cstdio>
#include <cstdlib>
#include <map>
#include <mutex>

#include "kiln/framework/cuda/runtime_compile.h"
#include "kiln/ops/cuda/map.cuh"
#include "kiln/ops/math/fused.h"
#include "kiln/ops/math/fused_codegen.h"

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

// The compiled kernel for a program (nullptr when it could not be compiled: the interpreter
// runs it). Compiled once per process, device and program (NVRTC targets the device's
// architecture), shared by every executor.
// KILN_FUSED_INTERPRETER=1 forces the interpreter (tests compare the two).
void* compiled_kernel(const KernelContext& ctx, const std::string& source) {
  if (const char* forced = std::getenv("KILN_FUSED_INTERPRETER"); forced && *forced == '1')
    return nullptr;
  static std::mutex mutex;
  static std::map<std::string, void*> kernels;
  std::lock_guard<std::mutex> lock(mutex);
  const std::string key = str(ctx.cuda()->device, '\n', source);
  auto it = kernels.find(key);
  if (it != kernels.end()) return it->second;
  void* kernel = nullptr;
  try {
    kernel = load_cuda_kernel(source, "kiln_fused", ctx.cuda()->device);
  } catch (const std::exception& e) {
    static bool warned = false;
    if (!warned)
      std::fprintf(stderr, "kiln: %s: fused kernels are interpreted: %s\n", ctx.where().c_str(),
                   e.what());
    warned = true;
  }
  return kernels.emplace(key, kernel).first->second;
}

// Runs the program as a generated kernel; false when none could be made.
template <typename T>
bool run_generated(KernelContext& ctx) {
  const int n_in = ctx.num_inputs();
  if (n_in > kMaxFusedInputs) return false;
  Tensor& y = ctx.output(0);
  FusedArgs<T> args{};
  std::vector<FusedRead> reads(n_in);
  args.n = y.numel();
  args.out = y.template data<T>();
  for (int i = 0; i < n_in; ++i) {
    const int64_t m = ctx.input(i).numel();
    args.in[i] = ctx.input(i).template data<T>();
    args.period[i] = m;
    reads[i] = m == args.n ? FusedRead::full : m == 1 ? FusedRead::scalar : FusedRead::row;
  }
  // 16-byte steps where every full-size operand allows them.
  constexpr int64_t lanes = 16 / sizeof(T);
  auto aligned16 = [](const void* p) { return reinterpret_cast<uintptr_t>(p) % 16 == 0; };
  bool vectorize = args.n % lanes == 0 && aligned16(args.out);
  for (int i = 0; i < n_in; ++i)
    if (reads[i] == FusedRead::full) vectorize &= aligned16(args.in[i]);
  args.vector_width = vectorize ? lanes : 1;
  void* kernel = compiled_kernel(
      ctx, fused_cuda_source(ctx.attr<std::vector<int64_t>>("code"), reads, dtype_of<T>()));
  if (!kernel) return false;
  if (args.n == 0) return true;
  // A grid of a few waves; each thread strides over the rest (fewer, longer-lived blocks).
  static const int64_t max_blocks = [&] {
    int sms = 0;
    cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, ctx.cuda()->device.index);
    return std::max<int64_t>(sms, 1) * 16;
  }();
  const LaunchConfig config =
      elementwise_launch(args.n, static_cast<int>(args.vector_width) * 4, max_blocks);
  void* params[] = {&args};
  KILN_CUDA_CHECK(cudaLaunchKernel(kernel, dim3(static_cast<unsigned>(config.blocks)),
                                   dim3(config.threads), params, 0, stream_of(ctx)),
                  ctx.where());
  return true;
}

void fused_cuda(KernelContext& ctx) {
  const DType dtype = ctx.output_type(0).dtype;
  if (dtype == DType::f32 && run_generated<float>(ctx)) return;
  if (dtype == DType::f64 && run_generated<double>(ctx)) return;
  dispatch_cuda_float(dtype, [&](auto tag) { fused_typed<decltype(tag)>(ctx); });
}
KILN_CUDA_KERNEL(fused_elementwise, fused_cuda, cuda_dtypes(DTypeClass::floating));

}  // namespace kiln::ops::cuda_fused
