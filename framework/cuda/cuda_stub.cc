// Stands in for framework/cuda/cuda_runtime.cu in a build without CUDA.
#include "kiln/framework/cuda/device_memory.h"
#include "kiln/framework/device.h"

namespace kiln {

const CudaAvailability& cuda_availability() {
  static const CudaAvailability availability{0, "Kiln was built without CUDA (KILN_CUDA=OFF)"};
  return availability;
}

namespace {
[[noreturn]] void no_cuda(const std::string& what) {
  throw DeviceError(str("[cuda] ", what, ": Kiln was built without CUDA (KILN_CUDA=OFF)"));
}
}  // namespace

std::shared_ptr<Storage> allocate_device(Device, size_t, void*, const std::string& what) {
  no_cuda(what);
}
std::shared_ptr<Storage> allocate_pinned(size_t) {
  no_cuda("pinned memory");
}
void copy_bytes(void*, const void*, size_t, void*, const std::string& what) {
  no_cuda(what);
}
void zero_device_bytes(void*, size_t, void*, const std::string& what) {
  no_cuda(what);
}
void synchronize_stream(void*, const std::string& what) {
  no_cuda(what);
}

}  // namespace kiln
