// The CUDA part of the framework: availability, checked calls, streams and events.
#include <cuda_runtime_api.h>

#include "framework/cuda/cuda_check.h"
#include "framework/device.h"

namespace kiln {

namespace {
std::string describe_missing_gpu(cudaError_t status) {
  switch (status) {
    case cudaErrorNoDevice:
      return "the CUDA driver reports no GPU on this machine";
    case cudaErrorInsufficientDriver:
      return str("the CUDA driver is older than the runtime Kiln was built with (runtime ",
                 CUDART_VERSION, ")");
    case cudaErrorInitializationError:
    case cudaErrorStubLibrary:
      return "no CUDA driver is installed (libcuda.so is missing)";
    default:
      return str("the CUDA runtime failed: ", cudaGetErrorName(status), ": ",
                 cudaGetErrorString(status));
  }
}
}  // namespace

const CudaAvailability& cuda_availability() {
  static const CudaAvailability availability = [] {
    CudaAvailability result;
    int count = 0;
    cudaError_t status = cudaGetDeviceCount(&count);
    if (status != cudaSuccess) {
      cudaGetLastError();  // clear the sticky error so later calls start clean
      result.reason = describe_missing_gpu(status);
    } else if (count == 0) {
      result.reason = "the CUDA driver reports no GPU on this machine";
    } else {
      result.device_count = count;
    }
    return result;
  }();
  return availability;
}

namespace cuda {

void throw_cuda_error(cudaError_t status, const char* call, const std::string& context) {
  throw DeviceError(str("[cuda] ", context, context.empty() ? "" : ": ", call,
                        " failed: ", cudaGetErrorName(status), ": ", cudaGetErrorString(status)));
}

Stream::Stream() {
  KILN_CUDA_CHECK(cudaStreamCreateWithFlags(&stream_, cudaStreamNonBlocking), "stream");
}
Stream::~Stream() {
  if (stream_) cudaStreamDestroy(stream_);
}
void Stream::synchronize() const {
  KILN_CUDA_CHECK(cudaStreamSynchronize(stream_), "stream");
}

Event::Event() {
  KILN_CUDA_CHECK(cudaEventCreateWithFlags(&event_, cudaEventDisableTiming), "event");
}
Event::~Event() {
  if (event_) cudaEventDestroy(event_);
}
void Event::record(const Stream& stream) {
  KILN_CUDA_CHECK(cudaEventRecord(event_, stream.get()), "event");
}
void Event::wait_on(const Stream& stream) const {
  KILN_CUDA_CHECK(cudaStreamWaitEvent(stream.get(), event_, 0), "event");
}

}  // namespace cuda
}  // namespace kiln
