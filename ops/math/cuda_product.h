// One cuBLASLt product, for the CUDA kernels of matmul and of the ops that multiply inside
// their own kernels (recurrence: one product per step). matmul.cu runs it on the lane's handle,
// with the algorithm the heuristic chose for that problem once per executor.
#pragma once

#include <cstdint>

#include "kiln/framework/dtype.h"
#include "kiln/framework/kernel.h"

namespace kiln::ops::cuda_matmul {

/// One (batched) product: C[i] = op(A[i]) op(B[i]) for i < batch, the batch strides in
/// elements (0 broadcasts one matrix).
struct Product {
  DType dtype;
  bool ta, tb;
  int64_t m, n, k;
  const void* a;
  const void* b;
  void* c;
  int32_t batch = 1;
  int64_t a_stride = 0, b_stride = 0;
  /// Epilogue: bias [N] added to every row of C (nullptr: none).
  const void* bias = nullptr;
  /// An [M, N] matrix added to the product (cuBLASLt's C with beta 1; the result goes to `c`,
  /// cuBLASLt's D, of the same layout), nullptr: none. Batch 1 only.
  const void* addend = nullptr;
};

/// Runs `p` on the kernel's stream (row-major operands, as Kiln's tensors).
void run_product(const KernelContext& ctx, const Product& p);

}  // namespace kiln::ops::cuda_matmul
