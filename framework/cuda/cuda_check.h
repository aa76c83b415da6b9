// Checked CUDA runtime calls and the RAII stream wrapper (compiled only when KILN_CUDA is on).
#pragma once

#include <cuda_runtime_api.h>

#include <string>

#include "kiln/framework/error.h"

namespace kiln::cuda {

/// Throws kiln::DeviceError naming the call, the CUDA error and `context` (a node, an op).
void throw_cuda_error(cudaError_t status, const char* call, const std::string& context);

/// An owned cudaStream_t on the current device (non-blocking with respect to stream 0).
class Stream {
 public:
  Stream();
  ~Stream();
  Stream(const Stream&) = delete;
  Stream& operator=(const Stream&) = delete;
  cudaStream_t get() const { return stream_; }
  /// Blocks until all work queued on the stream is done.
  void synchronize() const;

 private:
  cudaStream_t stream_ = nullptr;
};

/// An owned cudaEvent_t without timing, used to order work between streams.
class Event {
 public:
  Event();
  ~Event();
  Event(const Event&) = delete;
  Event& operator=(const Event&) = delete;
  cudaEvent_t get() const { return event_; }
  /// Records the event on `stream`; `waiter.wait(event)` then orders later work after it.
  void record(const Stream& stream);
  /// Makes `stream` wait for the last record() of this event.
  void wait_on(const Stream& stream) const;

 private:
  cudaEvent_t event_ = nullptr;
};

}  // namespace kiln::cuda

/// Checks a CUDA runtime call; `context` names what it was for (a node name, say).
#define KILN_CUDA_CHECK(call, context)                                \
  do {                                                                \
    cudaError_t kiln_status_ = (call);                                \
    if (kiln_status_ != cudaSuccess)                                  \
      ::kiln::cuda::throw_cuda_error(kiln_status_, #call, (context)); \
  } while (0)
