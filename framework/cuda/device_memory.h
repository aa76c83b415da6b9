// Device memory as the rest of Kiln sees it (no CUDA headers): allocation from the CUDA
// stream-ordered pool, copies between host and device, pinned host staging.
#pragma once

#include <cstddef>
#include <memory>
#include <string>

#include "kiln/framework/tensor.h"

namespace kiln {

/// Memory on GPU `device` from its default stream-ordered pool (cudaMallocAsync on `stream`,
/// a cudaStream_t; nullptr for the legacy default stream). It is freed with cudaFreeAsync on
/// the same stream. Throws kiln::DeviceError when the GPU is out of memory, saying how much was
/// asked, how much is free and `what` (the node) asked.
std::shared_ptr<Storage> allocate_device(Device device, size_t nbytes, void* stream,
                                         const std::string& what);

/// Page-locked host memory (cudaMallocHost): fast, asynchronous copies to and from a GPU.
std::shared_ptr<Storage> allocate_pinned(size_t nbytes);

/// Copies `nbytes` between any two of host and device memory, queued on `stream` (a
/// cudaStream_t); `stream` nullptr copies synchronously. `what` names the copy in errors.
void copy_bytes(void* dst, const void* src, size_t nbytes, void* stream, const std::string& what);

/// Sets `nbytes` of device memory to zero, queued on `stream`.
void zero_device_bytes(void* dst, size_t nbytes, void* stream, const std::string& what);

/// Blocks until the work queued on `stream` is done; errors name `what`.
void synchronize_stream(void* stream, const std::string& what);

}  // namespace kiln
