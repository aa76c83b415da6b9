// The CUDA part of the framework: availability, checked calls, streams and events.
#include <cuda_runtime_api.h>

#include "kiln/framework/cuda/cuda_check.h"
#include "kiln/framework/cuda/device_memory.h"
#include "kiln/framework/device.h"

namespace kiln {

namespace {
std::string describe_missing_gpu(cudaError_t status) {
  switch (status) {
    case cudaErrorNoDevice:
      return "the CUDA driver reports no GPU on this machine";
    case cudaErrorInsufficientDriver:
      // Also what the runtime says when no driver is installed at all.
      return str("no CUDA driver, or one older than the CUDA ", CUDART_VERSION / 1000, ".",
                 CUDART_VERSION % 1000 / 10, " runtime Kiln was built with");
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
  cudaGetLastError();  // reported here: the next check must not see it again
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

namespace {

// Device memory from the pool; freed on the stream it was allocated on, so a free is ordered
// after the work queued there before it.
class DeviceStorage final : public Storage {
 public:
  DeviceStorage(void* data, size_t nbytes, Device device, cudaStream_t stream)
      : Storage(data, nbytes, device), stream_(stream) {}
  ~DeviceStorage() override {
    if (data()) cudaFreeAsync(data(), stream_);
  }

 private:
  cudaStream_t stream_;
};

class PinnedStorage final : public Storage {
 public:
  PinnedStorage(void* data, size_t nbytes) : Storage(data, nbytes, Device::cpu()) {}
  ~PinnedStorage() override {
    if (data()) cudaFreeHost(data());
  }
};

std::string mib(size_t bytes) {
  return str(static_cast<double>(bytes) / (1 << 20), " MiB");
}

}  // namespace

std::shared_ptr<Storage> allocate_device(Device device, size_t nbytes, void* stream,
                                         const std::string& what) {
  KILN_CUDA_CHECK(cudaSetDevice(device.index), what);
  void* p = nullptr;
  auto s = static_cast<cudaStream_t>(stream);
  // A zero-byte tensor still gets a distinct, valid (if unusable) allocation.
  cudaError_t status = cudaMallocAsync(&p, nbytes ? nbytes : 1, s);
  if (status == cudaErrorMemoryAllocation) {
    cudaGetLastError();
    size_t free_bytes = 0, total_bytes = 0;
    cudaMemGetInfo(&free_bytes, &total_bytes);
    throw DeviceError(str("[cuda] ", what, ": out of GPU memory on ", device, ": asked for ",
                          mib(nbytes), ", ", mib(free_bytes), " free of ", mib(total_bytes)));
  }
  if (status != cudaSuccess) cuda::throw_cuda_error(status, "cudaMallocAsync", what);
  return std::make_shared<DeviceStorage>(p, nbytes, device, s);
}

std::shared_ptr<Storage> allocate_pinned(size_t nbytes) {
  void* p = nullptr;
  cudaError_t status = cudaMallocHost(&p, nbytes ? nbytes : 1);
  if (status != cudaSuccess) {
    cudaGetLastError();
    throw DeviceError(str("[cuda] cannot allocate ", mib(nbytes),
                          " of pinned host memory: ", cudaGetErrorString(status)));
  }
  return std::make_shared<PinnedStorage>(p, nbytes);
}

void copy_bytes(void* dst, const void* src, size_t nbytes, void* stream, const std::string& what) {
  if (nbytes == 0) return;
  if (stream == nullptr) {
    KILN_CUDA_CHECK(cudaMemcpy(dst, src, nbytes, cudaMemcpyDefault), what);
  } else {
    KILN_CUDA_CHECK(
        cudaMemcpyAsync(dst, src, nbytes, cudaMemcpyDefault, static_cast<cudaStream_t>(stream)),
        what);
  }
}

void zero_device_bytes(void* dst, size_t nbytes, void* stream, const std::string& what) {
  if (nbytes == 0) return;
  KILN_CUDA_CHECK(cudaMemsetAsync(dst, 0, nbytes, static_cast<cudaStream_t>(stream)), what);
}

void synchronize_stream(void* stream, const std::string& what) {
  KILN_CUDA_CHECK(cudaStreamSynchronize(static_cast<cudaStream_t>(stream)), what);
}

}  // namespace kiln
