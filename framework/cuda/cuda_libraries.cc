#include "kiln/framework/cuda/cuda_libraries.h"

#include <cuda_runtime_api.h>
#include <dlfcn.h>

#include <string>

#include "kiln/framework/error.h"

namespace kiln::cuda {

void* open_cuda_library(const std::string& soname) {
  void* handle = dlopen(soname.c_str(), RTLD_NOW | RTLD_LOCAL);
  if (!handle) {
    const std::string first_error = dlerror();
    handle =
        dlopen((std::string(KILN_CUDA_LIBRARY_DIR) + "/" + soname).c_str(), RTLD_NOW | RTLD_LOCAL);
    if (!handle)
      throw DeviceError(str("[cuda] cannot load ", soname, ": ", first_error,
                            " (also looked in " KILN_CUDA_LIBRARY_DIR ")"));
  }
  return handle;
}

void* cuda_library_symbol(void* library, const char* name, const std::string& soname) {
  void* p = dlsym(library, name);
  if (!p) throw DeviceError(str("[cuda] ", soname, " has no symbol ", name));
  return p;
}

namespace {

#define KILN_LOAD_SYMBOL(f) \
  api.f = reinterpret_cast<decltype(api.f)>(cuda_library_symbol(library, #f, soname));

BlasLtApi load_blaslt() {
  const std::string soname = str("libcublasLt.so.", CUBLAS_VER_MAJOR);
  void* library = open_cuda_library(soname);
  BlasLtApi api;
  KILN_BLASLT_FUNCTIONS(KILN_LOAD_SYMBOL)
  return api;
}

NvrtcApi load_nvrtc() {
  const std::string soname = str("libnvrtc.so.", CUDART_VERSION / 1000);
  void* library = open_cuda_library(soname);
  NvrtcApi api;
  KILN_NVRTC_FUNCTIONS(KILN_LOAD_SYMBOL)
  return api;
}

CudnnApi load_cudnn() {
  const std::string soname = str("libcudnn.so.", CUDNN_MAJOR);
  void* library = open_cuda_library(soname);
  CudnnApi api;
  KILN_CUDNN_FUNCTIONS(KILN_LOAD_SYMBOL)
  return api;
}

}  // namespace

const BlasLtApi& blaslt() {
  static const BlasLtApi api = load_blaslt();  // a throw leaves it for the next call
  return api;
}

const NvrtcApi& nvrtc() {
  static const NvrtcApi api = load_nvrtc();
  return api;
}

const CudnnApi& cudnn() {
  static const CudnnApi api = load_cudnn();
  return api;
}

}  // namespace kiln::cuda
