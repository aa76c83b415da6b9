// Tests that need a CUDA GPU (CTest label `gpu`). They skip, saying so, where none is usable.
#include "gpu_test_util.h"

#include <functional>
#include <string>

#ifdef KILN_WITH_CUDA
#include <cuda_runtime_api.h>
#include <dlfcn.h>

#include "kiln/framework/cuda/cuda_check.h"
#include "kiln/framework/cuda/cuda_libraries.h"
#include "kiln/framework/cuda/runtime_compile.h"
#include "kiln/ops/math/fused.h"
#include "kiln/ops/math/fused_codegen.h"
#include "kiln/ops/nn/attention_cudnn.h"
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

// Every fused-attention problem form Kiln sends cuDNN, with a name: f16 and bf16, depths 64 and
// 128, both layouts, causal or not (queries fewer than keys when not), both backward forms.
void for_each_cudnn_attention_form(
    const std::function<void(const ops::cuda_attention::CudnnAttention&, const std::string&)>&
        check) {
  for (DType dtype : {bf16, f16})
    for (int64_t depth : {int64_t{64}, int64_t{128}})
      for (bool bthd : {false, true})
        for (bool causal : {false, true})
          for (bool deterministic : {false, true})
            check({.dtype = dtype,
                   .batch = 2,
                   .heads = 3,
                   .queries = causal ? 256 : 200,
                   .keys = causal ? 256 : 333,
                   .depth = depth,
                   .bthd = bthd,
                   .causal = causal,
                   .scale = 0.125f,
                   .deterministic = deterministic},
                  str(dtype, " depth ", depth, bthd ? " bthd" : " bhtd", causal ? " causal" : "",
                      deterministic ? " deterministic" : ""));
}

// cuDNN checks each tensor and operation of the fused-attention graphs as it is finalized (their
// shapes, strides and types against one another): no GPU needed, so a graph cuDNN would refuse
// fails here, not first at a lend.
TEST(Gpu, CudnnAttentionGraphsAreWellFormed) {
  using ops::cuda_attention::cudnn_attention_operations;
  using ops::cuda_attention::CudnnAttention;
  for_each_cudnn_attention_form([](const CudnnAttention& problem, const std::string& where) {
    // The causal mask adds four operations: two index generators, a compare, a select.
    const int64_t mask = problem.causal ? 4 : 0;
    int64_t forward = 0, backward = 0;
    ASSERT_NO_THROW(forward = cudnn_attention_operations(problem, false)) << where;
    ASSERT_NO_THROW(backward = cudnn_attention_operations(problem, true)) << where;
    EXPECT_EQ(forward, 10 + mask) << where;
    EXPECT_EQ(backward, (problem.deterministic ? 17 : 18) + mask) << where;
  });
  // A refusal names cuDNN, the descriptor and cuDNN's status. (Not an empty problem: cuDNN 9.19's
  // matmul divides by a zero extent, SIGFPE. Kiln never sends one: cudnn_problem refuses them.)
  CudnnAttention negative{.batch = -1, .heads = 1, .queries = 8, .keys = 8, .depth = 64};
  testing::expect_error<DeviceError>([&] { cudnn_attention_operations(negative, false); },
                                     {"cuDNN tensor descriptor", "CUDNN_STATUS_BAD_PARAM"});
}

// An H200 as cuDNN describes a device (its device-properties JSON; cuDNN names a missing key).
constexpr const char* kH200 = R"({"deviceName": "NVIDIA H200", "cudaDeviceId": 0,
  "deviceVer": 900, "driverVer": 13000, "multiProcessorCount": 132, "warpSize": 32,
  "maxGridSize": [2147483647, 65535, 65535], "maxBlockSize": [1024, 1024, 64],
  "maxThreadsPerBlock": 1024, "maxThreadsPerSM": 2048, "maxCtasPerSM": 32,
  "regsPerBlock": 65536, "maxRegistersPerSM": 65536, "maxSharedMemoryPerBlock": 49152,
  "maxSharedMemoryPerBlockOptin": 232448, "reservedSharedMemoryPerBlock": 1024,
  "l2CacheSize": 52428800, "totalGlobalMem": 150754820096, "smClockRateKHz": 1980000,
  "memClockRateKHz": 3201000, "pciDeviceId": 0, "isTccDriver": 0, "supportCoopLaunch": 1})";

// cuDNN loads the kernels it compiles for a plan through libcuda.so.1: the driver, else the
// toolkit's stub (found by that soname once loaded), whose loads fail. False: neither.
bool load_cuda_driver_or_stub() {
  if (dlopen("libcuda.so.1", RTLD_NOW | RTLD_GLOBAL) != nullptr) return true;
  return dlopen(KILN_CUDA_STUB_DIR "/libcuda.so", RTLD_NOW | RTLD_GLOBAL) != nullptr;
}

// cuDNN plans every fused-attention graph form Kiln sends for an H200 without one present
// (deviceless planning): its engines recognize the graph as attention (SDPA_FWD or SDPA_BWD)
// and their kernels compile for sm_90. Without a driver only loading those kernels fails.
// A device cuDNN's fused attention does not run on (sm_70) gets no engine, and says so.
TEST(Gpu, CudnnPlansEveryAttentionGraphForAnH200) {
  using ops::cuda_attention::cudnn_attention_plan_for_device;
  using ops::cuda_attention::CudnnAttention;
  if (cuda::cudnn().cudnnGetVersion() < 90800)
    GTEST_SKIP() << "cuDNN " << cuda::cudnn().cudnnGetVersion() << " plans only for its GPU";
  if (!load_cuda_driver_or_stub())
    GTEST_SKIP() << "neither libcuda.so.1 nor " KILN_CUDA_STUB_DIR "/libcuda.so loads";
  // Another cuDNN may want other keys in a device's description: that skips, saying which.
  try {
    cudnn_attention_plan_for_device(
        {.batch = 1, .heads = 1, .queries = 64, .keys = 64, .depth = 64}, false, kH200);
  } catch (const DeviceError& e) {
    if (std::string(e.what()).find("device properties") == std::string::npos) throw;
    GTEST_SKIP() << "cuDNN " << cuda::cudnn().cudnnGetVersion()
                 << " takes not this description of an H200: " << e.what();
  }
  const auto planned = [](const std::string& result) {
    return result.empty() ||
           result.find("CUDNN_STATUS_EXECUTION_FAILED_CUDA_DRIVER") != std::string::npos;
  };
  for_each_cudnn_attention_form([&](const CudnnAttention& problem, const std::string& where) {
    // The forward has no deterministic form: once per problem.
    if (!problem.deterministic) {
      const std::string forward = cudnn_attention_plan_for_device(problem, false, kH200);
      EXPECT_TRUE(planned(forward)) << "forward, " << where << ": " << forward;
    }
    const std::string backward = cudnn_attention_plan_for_device(problem, true, kH200);
    EXPECT_TRUE(planned(backward)) << "backward, " << where << ": " << backward;
  });
  // The benchmark's problem (bench/gpu_bench.cc: [4, 16, 2048, 64] bf16, causal).
  const CudnnAttention benchmark{
      .batch = 4, .heads = 16, .queries = 2048, .keys = 2048, .depth = 64, .causal = true};
  for (bool backward : {false, true}) {
    const std::string result = cudnn_attention_plan_for_device(benchmark, backward, kH200);
    EXPECT_TRUE(planned(result)) << "the benchmark's problem: " << result;
  }
  std::string volta = kH200;
  volta.replace(volta.find("\"deviceVer\": 900"), 16, "\"deviceVer\": 700");
  const CudnnAttention problem{.batch = 2, .heads = 3, .queries = 256, .keys = 256, .depth = 64};
  const std::string refused = cudnn_attention_plan_for_device(problem, false, volta);
  EXPECT_FALSE(planned(refused)) << refused;
  EXPECT_NE(refused.find("offers no engine that supports the graph"), std::string::npos) << refused;
}

TEST(Gpu, CudaErrorsNameTheCall) {
  KILN_REQUIRE_GPU();
  testing::expect_error<DeviceError>([] { KILN_CUDA_CHECK(cudaSetDevice(1 << 20), "node x"); },
                                     {"[cuda] node x", "cudaSetDevice", "cudaErrorInvalidDevice"});
}
#endif

}  // namespace
}  // namespace kiln
