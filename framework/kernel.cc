#include "framework/kernel.h"

#include <algorithm>

#include "framework/cuda/device_memory.h"

namespace kiln {

Tensor& KernelContext::output(int i) {
  Tensor& out = outputs_[i];
  if (!out.defined()) {
    const TensorType& type = output_types_[i];
    if (cuda_) {
      const size_t bytes = static_cast<size_t>(type.shape.numel()) * dtype_size(type.dtype);
      out = Tensor(type.dtype, type.shape,
                   allocate_device(cuda_->device, bytes, cuda_->stream, where()));
    } else {
      out = Tensor::empty(type.dtype, type.shape);
    }
  }
  return out;
}

void* KernelContext::stream() const {
  KILN_CHECK(cuda_ != nullptr, Error, where(), ": a GPU stream was asked for on the CPU");
  return cuda_->stream;
}

std::shared_ptr<Storage> KernelContext::scratch(size_t nbytes) const {
  if (!cuda_) return std::make_shared<HostStorage>(nbytes);
  return allocate_device(cuda_->device, nbytes, cuda_->stream, where());
}

void KernelContext::set_output(int i, Tensor tensor) {
  KILN_DASSERT(tensor.dtype() == output_types_[i].dtype);
  KILN_DASSERT(tensor.shape() == output_types_[i].shape);
  outputs_[i] = std::move(tensor);
}

VariableStore& KernelContext::variables() const {
  KILN_CHECK(variables_ != nullptr, Error, where(), ": no variable store in this executor");
  return *variables_;
}

KernelCache& KernelContext::cache() const {
  KILN_CHECK(cache_ != nullptr, Error, where(), ": no kernel cache here");
  return *cache_;
}

std::string KernelContext::cache_key(const std::string& what) const {
  std::string key = str(cuda_ ? cuda_->device : Device::cpu(), '|', node_.op_name());
  for (const Tensor& t : inputs_) key += str('|', t.dtype(), t.shape());
  return key + '|' + what;
}

void KernelContext::parallel_for(int64_t n, int64_t cost,
                                 const std::function<void(int64_t, int64_t)>& fn) const {
  constexpr int64_t kWorkPerRange = 32768;
  int64_t grain = std::max<int64_t>(1, kWorkPerRange / std::max<int64_t>(cost, 1));
  pool_.parallel_for(n, grain, fn);
}

}  // namespace kiln
