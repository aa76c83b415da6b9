// Tests that need a CUDA GPU (CTest label `gpu`). They skip, saying so, where none is usable.
#include "test_util.h"

#ifdef KILN_WITH_CUDA
#include <cuda_runtime_api.h>

#include "framework/cuda/cuda_check.h"
#endif

namespace kiln {
namespace {

#define KILN_REQUIRE_GPU()                                             \
  do {                                                                 \
    if (cuda_availability().device_count == 0)                         \
      GTEST_SKIP() << "no usable GPU: " << cuda_availability().reason; \
  } while (0)

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

TEST(Gpu, CudaErrorsNameTheCall) {
  KILN_REQUIRE_GPU();
  testing::expect_error<DeviceError>([] { KILN_CUDA_CHECK(cudaSetDevice(1 << 20), "node x"); },
                                     {"[cuda] node x", "cudaSetDevice", "cudaErrorInvalidDevice"});
}
#endif

}  // namespace
}  // namespace kiln
