// Compiling CUDA C++ at run time (NVRTC) and loading the result, for generated kernels.
#pragma once

#include <string>

#include "kiln/framework/device.h"

namespace kiln {

/// NVRTC: compiles `source` to a CUBIN for compute capability `arch` (90 = sm_90). Throws
/// kiln::DeviceError with the compiler's log. Needs no GPU.
std::string compile_cuda_source(const std::string& source, int arch);

/// Compiles `source` for `device`'s architecture and loads its kernel `name`. Returns a
/// cudaKernel_t (as void*), launched with cudaLaunchKernel. Throws kiln::DeviceError.
void* load_cuda_kernel(const std::string& source, const std::string& name, Device device);

}  // namespace kiln
