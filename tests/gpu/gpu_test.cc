// Tests that need a CUDA GPU (CTest label `gpu`). They skip, saying so, where none is usable.
#include "gpu_test_util.h"

#ifdef KILN_WITH_CUDA
#include <cuda_runtime_api.h>

#include "kiln/framework/cuda/cuda_check.h"
#include "kiln/framework/cuda/cuda_libraries.h"
#include "kiln/framework/cuda/runtime_compile.h"
#include "kiln/ops/math/fused.h"
#include "kiln/ops/math/fused_codegen.h"
#endif

namespace kiln {
namespace {

TEST(Gpu, BestDeviceIsTheGpu) {
  KILN_REQUIRE_GPU();
  EXPECT_EQ(Device::best(), Device::cuda(0));
  EXPECT_NO_THROW(check_device_usable(Device::cuda(0)));
}

#ifdef KILN_WITH_CUDA
TEST(Gpu, StreamsAndEventsOrderWork) {
  KILN_REQUIRE_GPU();
  cuda::Stream a, b;
  cuda::Event done;
  int* device = nullptr;
  KILN_CUDA_CHECK(cudaMalloc(reinterpret_cast<void**>(&device), sizeof(int)), "test");
  int value = 42, back = 0;
  KILN_CUDA_CHECK(cudaMemcpyAsync(device, &value, sizeof(int), cudaMemcpyHostToDevice, a.get()),
                  "test");
  done.record(a);
  done.wait_on(b);
  KILN_CUDA_CHECK(cudaMemcpyAsync(&back, device, sizeof(int), cudaMemcpyDeviceToHost, b.get()),
                  "test");
  b.synchronize();
  EXPECT_EQ(back, 42);
  cudaFree(device);
}

// Every op that runs on the CPU runs on the GPU too, for every dtype the CPU kernel takes.
TEST(Gpu, EveryCpuKernelHasACudaKernel) {
  std::vector<std::string> missing;
  for (const OpDef* op : OpRegistry::global().all())
    for (int d = 0; d < 8; ++d)
      if (op->kernel_for(DeviceKind::cpu, DType(d)) && !op->kernel_for(DeviceKind::cuda, DType(d)))
        missing.push_back(str(op->name(), " ", DType(d)));
  EXPECT_TRUE(missing.empty()) << "no CUDA kernel for: " << ::testing::PrintToString(missing);
}

// cuBLASLt, NVRTC and cuDNN are opened on first use; every entry point Kiln calls resolves (no
// GPU needed to load them and ask them for names).
TEST(Gpu, CudaLibrariesLoadOnFirstUse) {
  const cuda::BlasLtApi& lt = cuda::blaslt();
#define KILN_EXPECT_LOADED(f) EXPECT_NE(reinterpret_cast<void*>(lt.f), nullptr) << #f;
  KILN_BLASLT_FUNCTIONS(KILN_EXPECT_LOADED)
#undef KILN_EXPECT_LOADED
  EXPECT_STREQ(lt.cublasLtGetStatusName(CUBLAS_STATUS_NOT_SUPPORTED),
               "CUBLAS_STATUS_NOT_SUPPORTED");
  const cuda::NvrtcApi& nv = cuda::nvrtc();
  EXPECT_STREQ(nv.nvrtcGetErrorString(NVRTC_SUCCESS), "NVRTC_SUCCESS");
  const cuda::CudnnApi& dnn = cuda::cudnn();
#define KILN_EXPECT_LOADED(f) EXPECT_NE(reinterpret_cast<void*>(dnn.f), nullptr) << #f;
  KILN_CUDNN_FUNCTIONS(KILN_EXPECT_LOADED)
#undef KILN_EXPECT_LOADED
  EXPECT_STREQ(dnn.cudnnGetErrorString(CUDNN_STATUS_NOT_SUPPORTED), "CUDNN_STATUS_NOT_SUPPORTED");
}

// NVRTC needs no GPU: every opcode's generated kernel compiles here and in CI.
TEST(Gpu, GeneratedFusedKernelsCompileForEveryOp) {
  std::vector<int64_t> code;
  for (int op = 0; op < ops::op_count; ++op) {
    const int64_t r = 2 + static_cast<int64_t>(code.size() / 4);  // the last value
    if (op == ops::op_where)
      code.insert(code.end(), {op, r - 1, 0, 1});
    else if (ops::fused_arity(op) == 1)
      code.insert(code.end(), {op, r - 1, -1, -1});
    else
      code.insert(code.end(), {op, r - 1, 1, -1});
  }
  for (DType dtype : {f32, f64}) {
    const std::string src =
        ops::fused_cuda_source(code, {ops::FusedRead::full, ops::FusedRead::row}, dtype);
    std::string cubin;
    ASSERT_NO_THROW(cubin = compile_cuda_source(src, 90)) << src;
    EXPECT_GT(cubin.size(), 1000u);
  }
  testing::expect_error<DeviceError>([] { compile_cuda_source("this is not C++", 90); },
                                     {"[nvrtc]", "sm_90"});
}

TEST(Gpu, CudaErrorsNameTheCall) {
  KILN_REQUIRE_GPU();
  testing::expect_error<DeviceError>([] { KILN_CUDA_CHECK(cudaSetDevice(1 << 20), "node x"); },
                                     {"[cuda] node x", "cudaSetDevice", "cudaErrorInvalidDevice"});
}
#endif

}  // namespace
}  // namespace kiln
