// Stands in for runtime/cuda_executor.cc in a build without CUDA.
#include "kiln/runtime/cuda_executor.h"

namespace kiln {

std::unique_ptr<CudaExecutor> CudaExecutor::create(Device device, int) {
  check_device_usable(device);  // throws: this build has no GPU support
  throw DeviceError(str("[session] ", device, " cannot be used: Kiln was built without CUDA"));
}

}  // namespace kiln
