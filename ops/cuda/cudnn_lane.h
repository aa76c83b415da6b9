// The cuDNN handle of a lane, shared by the ops that run through cuDNN: convolutions (legacy
// API, ops/nn/conv.cu) and fused attention (graph API, ops/nn/attention_cudnn.cu). One handle per
// lane, made on first use and bound to the lane's stream.
#pragma once

#include <cudnn.h>

#include "kiln/framework/cuda/cuda_libraries.h"
#include "kiln/framework/error.h"
#include "kiln/framework/lane_resources.h"

namespace kiln::ops::cuda {

/// A lane's cuDNN handle (a lane resource: ctx.lane_resource<CudnnLane>().handle).
struct CudnnLane final : LaneResource {
  explicit CudnnLane(const LaneInfo& lane) {
    if (::kiln::cuda::cudnn().cudnnCreate(&handle) != CUDNN_STATUS_SUCCESS)
      throw DeviceError(str("[cuda] cudnnCreate failed on ", lane.device));
    ::kiln::cuda::cudnn().cudnnSetStream(handle, static_cast<cudaStream_t>(lane.stream));
  }
  ~CudnnLane() override { ::kiln::cuda::cudnn().cudnnDestroy(handle); }
  CudnnLane(const CudnnLane&) = delete;
  CudnnLane& operator=(const CudnnLane&) = delete;
  cudnnHandle_t handle = nullptr;
};

}  // namespace kiln::ops::cuda
