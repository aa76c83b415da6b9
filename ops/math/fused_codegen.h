// CUDA C++ source for a fused_elementwise program: the GPU compiles each distinct program once
// at run time (NVRTC), so a fused chain runs as straight-line code, not an interpreter.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "kiln/framework/dtype.h"

namespace kiln::ops {

/// How a fused kernel reads one input: element i, element 0 (a scalar), or element i % m (a
/// row of the output's trailing dims, repeated).
enum class FusedRead { full, scalar, row };

/// Most inputs a generated fused kernel takes.
inline constexpr int kMaxFusedInputs = 48;

/// The parameter block of a generated kernel, passed by value; the source declares the same
/// layout. period[i] is m for FusedRead::row inputs. vector_width: 16 / sizeof(T) when every
/// full-size input and the output are 16-byte aligned and n is a multiple of it (each thread
/// then moves 16 bytes at a time), else 1.
template <typename T>
struct FusedArgs {
  const T* in[kMaxFusedInputs];
  int64_t period[kMaxFusedInputs];
  T* out;
  int64_t n;
  int64_t vector_width;
};

/// Source of `extern "C" __global__ void kiln_fused(FusedArgs)` computing `code`
/// (fused_elementwise's program: 4 ints per instruction) over inputs read as `reads`, in `dtype`
/// (f32 or f64). The ops' math is the text of the KILN_*_OPS rows and KILN_FLOAT_HELPERS, so it is
/// the CPU's.
std::string fused_cuda_source(const std::vector<int64_t>& code, const std::vector<FusedRead>& reads,
                              DType dtype);

}  // namespace kiln::ops
