// Stands in for framework/cuda/cuda_runtime.cu in a build without CUDA.
#include "framework/device.h"

namespace kiln {

const CudaAvailability& cuda_availability() {
  static const CudaAvailability availability{0, "Kiln was built without CUDA (KILN_CUDA=OFF)"};
  return availability;
}

}  // namespace kiln
