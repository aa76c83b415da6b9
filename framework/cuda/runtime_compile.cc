#include "kiln/framework/cuda/runtime_compile.h"

#include <cuda_runtime_api.h>
#include <nvrtc.h>

#include "kiln/framework/cuda/cuda_check.h"
#include "kiln/framework/cuda/cuda_libraries.h"

namespace kiln {

std::string compile_cuda_source(const std::string& source, int arch) {
  nvrtcProgram program = nullptr;
  nvrtcResult status = cuda::nvrtc().nvrtcCreateProgram(&program, source.c_str(),
                                                        "kiln_generated.cu", 0, nullptr, nullptr);
  if (status != NVRTC_SUCCESS)
    throw DeviceError(
        str("[nvrtc] cannot create a program: ", cuda::nvrtc().nvrtcGetErrorString(status)));
  const std::string arch_flag = str("--gpu-architecture=sm_", arch);
  const char* options[] = {arch_flag.c_str(), "-std=c++17"};
  status = cuda::nvrtc().nvrtcCompileProgram(program, 2, options);
  std::string log;
  size_t log_size = 0;
  if (cuda::nvrtc().nvrtcGetProgramLogSize(program, &log_size) == NVRTC_SUCCESS && log_size > 1) {
    log.resize(log_size);
    cuda::nvrtc().nvrtcGetProgramLog(program, log.data());
  }
  std::string cubin;
  size_t cubin_size = 0;
  if (status == NVRTC_SUCCESS &&
      cuda::nvrtc().nvrtcGetCUBINSize(program, &cubin_size) == NVRTC_SUCCESS) {
    cubin.resize(cubin_size);
    cuda::nvrtc().nvrtcGetCUBIN(program, cubin.data());
  }
  cuda::nvrtc().nvrtcDestroyProgram(&program);
  if (status != NVRTC_SUCCESS || cubin.empty())
    throw DeviceError(str("[nvrtc] compiling a generated kernel for sm_", arch,
                          " failed: ", cuda::nvrtc().nvrtcGetErrorString(status), "\n", log));
  return cubin;
}

void* load_cuda_kernel(const std::string& source, const std::string& name, Device device) {
  int major = 0, minor = 0;
  KILN_CUDA_CHECK(cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, device.index),
                  name);
  KILN_CUDA_CHECK(cudaDeviceGetAttribute(&minor, cudaDevAttrComputeCapabilityMinor, device.index),
                  name);
  const std::string cubin = compile_cuda_source(source, major * 10 + minor);
  cudaLibrary_t library = nullptr;  // kept loaded for the life of the process
  KILN_CUDA_CHECK(
      cudaLibraryLoadData(&library, cubin.data(), nullptr, nullptr, 0, nullptr, nullptr, 0), name);
  cudaKernel_t kernel = nullptr;
  KILN_CUDA_CHECK(cudaLibraryGetKernel(&kernel, library, name.c_str()), name);
  return reinterpret_cast<void*>(kernel);
}

}  // namespace kiln
