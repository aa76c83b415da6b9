// cuBLASLt, NVRTC and cuDNN, opened on first use (dlopen) instead of linked: loading libcublasLt
// alone costs a process about 140 MB of resident memory, which programs that never run a product on
// a GPU (every CPU session) should not pay. Calls read `blaslt().cublasLtMatmul(...)`.
#pragma once

#include <cublasLt.h>
#include <cudnn.h>
#include <nvrtc.h>

#include <string>

namespace kiln::cuda {

// clang-format off
#define KILN_BLASLT_FUNCTIONS(X)          \
  X(cublasLtCreate)                       \
  X(cublasLtDestroy)                      \
  X(cublasLtGetStatusName)                \
  X(cublasLtGetStatusString)              \
  X(cublasLtMatmul)                       \
  X(cublasLtMatmulAlgoGetHeuristic)       \
  X(cublasLtMatmulDescCreate)             \
  X(cublasLtMatmulDescDestroy)            \
  X(cublasLtMatmulDescSetAttribute)       \
  X(cublasLtMatmulPreferenceCreate)       \
  X(cublasLtMatmulPreferenceDestroy)      \
  X(cublasLtMatmulPreferenceSetAttribute) \
  X(cublasLtMatrixLayoutCreate)           \
  X(cublasLtMatrixLayoutDestroy)          \
  X(cublasLtMatrixLayoutSetAttribute)

#define KILN_NVRTC_FUNCTIONS(X) \
  X(nvrtcCreateProgram)         \
  X(nvrtcCompileProgram)        \
  X(nvrtcGetProgramLogSize)     \
  X(nvrtcGetProgramLog)         \
  X(nvrtcGetCUBINSize)          \
  X(nvrtcGetCUBIN)              \
  X(nvrtcDestroyProgram)        \
  X(nvrtcGetErrorString)

#define KILN_CUDNN_FUNCTIONS(X)                     \
  X(cudnnCreate)                                    \
  X(cudnnDestroy)                                   \
  X(cudnnSetStream)                                 \
  X(cudnnGetErrorString)                            \
  X(cudnnCreateTensorDescriptor)                    \
  X(cudnnSetTensor4dDescriptor)                     \
  X(cudnnDestroyTensorDescriptor)                   \
  X(cudnnCreateFilterDescriptor)                    \
  X(cudnnSetFilter4dDescriptor)                     \
  X(cudnnDestroyFilterDescriptor)                   \
  X(cudnnCreateConvolutionDescriptor)               \
  X(cudnnSetConvolution2dDescriptor)                \
  X(cudnnSetConvolutionGroupCount)                  \
  X(cudnnSetConvolutionMathType)                    \
  X(cudnnDestroyConvolutionDescriptor)              \
  X(cudnnGetConvolutionForwardAlgorithm_v7)         \
  X(cudnnGetConvolutionForwardWorkspaceSize)        \
  X(cudnnConvolutionForward)                        \
  X(cudnnGetConvolutionBackwardDataAlgorithm_v7)    \
  X(cudnnGetConvolutionBackwardDataWorkspaceSize)   \
  X(cudnnConvolutionBackwardData)                   \
  X(cudnnGetConvolutionBackwardFilterAlgorithm_v7)  \
  X(cudnnGetConvolutionBackwardFilterWorkspaceSize) \
  X(cudnnConvolutionBackwardFilter)                 \
  X(cudnnGetVersion)                                \
  X(cudnnGetLastErrorString)                        \
  X(cudnnBackendCreateDescriptor)                   \
  X(cudnnBackendDestroyDescriptor)                  \
  X(cudnnBackendSetAttribute)                       \
  X(cudnnBackendGetAttribute)                       \
  X(cudnnBackendFinalize)                           \
  X(cudnnBackendExecute)
// clang-format on

#define KILN_LIBRARY_MEMBER(f) decltype(&::f) f = nullptr;

/// cuBLASLt's entry points.
struct BlasLtApi {
  KILN_BLASLT_FUNCTIONS(KILN_LIBRARY_MEMBER)
};
/// NVRTC's entry points.
struct NvrtcApi {
  KILN_NVRTC_FUNCTIONS(KILN_LIBRARY_MEMBER)
};

/// cuDNN's entry points (the legacy convolution API and the graph (backend) API of fused
/// attention, through libcudnn.so's dispatcher).
struct CudnnApi {
  KILN_CUDNN_FUNCTIONS(KILN_LIBRARY_MEMBER)
};

/// Opens a CUDA library by soname (the loader's search: LD_LIBRARY_PATH, RUNPATH, the system's
/// cache), else from the toolkit Kiln was built against; throws kiln::DeviceError naming it.
void* open_cuda_library(const std::string& soname);
/// The address of `name` in `library`; throws kiln::DeviceError naming both when absent.
void* cuda_library_symbol(void* library, const char* name, const std::string& soname);

/// Loaded on first call; throws kiln::DeviceError naming the library (and dlerror) when it
/// cannot be opened, and tries again on the next call.
const BlasLtApi& blaslt();
const NvrtcApi& nvrtc();
const CudnnApi& cudnn();

}  // namespace kiln::cuda
