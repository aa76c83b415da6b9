// What every CUDA kernel file of Kiln shares: dtype dispatch, the compute type of 16-bit
// floats, a grid-stride launcher, and device-side data-error reports.
#pragma once

#include <cuda_runtime.h>

#include "kiln/framework/cuda/cuda_check.h"
#include "kiln/framework/cuda/device_memory.h"
#include "kiln/framework/kernel.h"
#include "kiln/ops/launch_config.h"

namespace kiln::ops::cuda {

/// The kernel's stream.
inline cudaStream_t stream_of(const KernelContext& ctx) {
  return static_cast<cudaStream_t>(ctx.stream());
}

/// Arithmetic type of a storage type: f16 and bf16 compute (and accumulate) in f32.
template <typename T>
struct ComputeOf {
  using type = T;
};
template <>
struct ComputeOf<Half> {
  using type = float;
};
template <>
struct ComputeOf<BFloat16> {
  using type = float;
};
template <typename T>
using Compute = typename ComputeOf<T>::type;

template <typename T>
inline constexpr bool is_float_v =
    std::is_floating_point_v<T> || std::is_same_v<T, Half> || std::is_same_v<T, BFloat16>;

/// Calls fn(T{}) for the floating dtypes.
template <typename Fn>
decltype(auto) dispatch_cuda_float(DType dtype, Fn&& fn) {
  switch (dtype) {
    case DType::f32:
      return fn(float{});
    case DType::f64:
      return fn(double{});
    case DType::f16:
      return fn(Half{});
    case DType::bf16:
      return fn(BFloat16{});
    default:
      break;
  }
  throw Error(str("[kernel] expected a floating dtype, got ", dtype));
}

/// Throws naming the node when the last launch failed.
inline void check_launch(const KernelContext& ctx) {
  KILN_CUDA_CHECK(cudaGetLastError(), ctx.where());
}

template <typename F>
__global__ void for_each_kernel(int64_t n, F f) {
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < n; i += stride)
    f(i);
}

/// Runs f(i) for every i in [0, n) on the kernel's stream (f is a __device__ lambda).
template <typename F>
void for_each(const KernelContext& ctx, int64_t n, F f) {
  if (n <= 0) return;
  const LaunchConfig config = elementwise_launch(n);
  for_each_kernel<<<static_cast<unsigned>(config.blocks), config.threads, 0, stream_of(ctx)>>>(n,
                                                                                               f);
  check_launch(ctx);
}

/// Data errors found on the device. A kernel that finds one writes it once (the first wins)
/// into the executor's error block; the executor raises it, naming the step's node, after the
/// run: {step + 1, kind, value, position, low, high}.
/// communication_failed is written by the host (the NCCL watchdog in
/// distributed/nccl_collectives.cc): {step + 1, 3, rank, timeout in ms, NCCL result}.
enum class DataErrorKind : int64_t {
  index_out_of_range = 1,
  label_out_of_range = 2,
  communication_failed = 3,
  start_out_of_range = 4,   ///< a dynamic window's start (dynamic_slice): value, 0, [low, high)
  length_out_of_range = 5,  ///< a sequence length (ctc_loss): value, sequence, [low, high)
  label_is_blank = 6        ///< a target label that is the blank (ctc_loss): value, position
};

struct ErrorReporter {
  unsigned long long* block = nullptr;
  int64_t step = 0;
  __device__ void report(DataErrorKind kind, int64_t value, int64_t position, int64_t low,
                         int64_t high) const {
    if (atomicCAS(block, 0ull, static_cast<unsigned long long>(step + 1)) == 0ull) {
      block[1] = static_cast<unsigned long long>(kind);
      block[2] = static_cast<unsigned long long>(value);
      block[3] = static_cast<unsigned long long>(position);
      block[4] = static_cast<unsigned long long>(low);
      block[5] = static_cast<unsigned long long>(high);
      __threadfence_system();
    }
  }
};

inline ErrorReporter error_reporter(const KernelContext& ctx) {
  return {reinterpret_cast<unsigned long long*>(ctx.cuda()->error_block), ctx.cuda()->step};
}

}  // namespace kiln::ops::cuda
