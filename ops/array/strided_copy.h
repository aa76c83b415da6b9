// A strided copy: the index arithmetic under transpose, slice, concat, split and the
// reductions' permute. Each function runs on the kernel's device (CPU loops, or one CUDA
// kernel on the step's stream), so the ops built on them have one kernel for both devices.
#pragma once

#include <vector>

#include "kiln/framework/kernel.h"

namespace kiln::ops {

/// out[i0, i1, ...] = src[offset + i0 * strides[0] + i1 * strides[1] + ...] for every index of
/// `out` (allocated, same dtype as src). Strides and offset are in elements.
void strided_copy(const KernelContext& ctx, const Tensor& src, int64_t offset,
                  const std::vector<int64_t>& strides, Tensor& out);

/// The inverse: dst[offset + i0 * strides[0] + ...] = src[i0, i1, ...] for every index of `src`
/// (dst allocated, same dtype). Elements of dst not addressed are left as they are.
void strided_scatter(const KernelContext& ctx, const Tensor& src, Tensor& dst, int64_t offset,
                     const std::vector<int64_t>& strides);

/// Output 0 = input 0 seen with the output's planned shape, no copy: the kernel of reshape,
/// identity and the other view ops, on every device.
void view_kernel(KernelContext& ctx);

/// Sets every byte of `t` to zero on the kernel's device.
void fill_zero(const KernelContext& ctx, Tensor& t);

/// The CUDA side of strided_copy (kScatter false) and strided_scatter (true): word-sized
/// elements of `word_bytes`, `dims` of the dense side, `strides` and `offset` of the strided
/// side, all in elements. Defined in strided_copy.cu.
void strided_copy_cuda(const KernelContext& ctx, bool scatter, size_t word_bytes, const void* src,
                       void* dst, int64_t offset, const std::vector<int64_t>& dims,
                       const std::vector<int64_t>& strides);

}  // namespace kiln::ops
