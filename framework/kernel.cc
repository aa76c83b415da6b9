#include "framework/kernel.h"

#include <algorithm>

namespace kiln {

Tensor& KernelContext::output(int i) {
  Tensor& out = outputs_[i];
  if (!out.defined()) out = Tensor::empty(output_types_[i].dtype, output_types_[i].shape);
  return out;
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

void KernelContext::parallel_for(int64_t n, int64_t cost,
                                 const std::function<void(int64_t, int64_t)>& fn) const {
  constexpr int64_t kWorkPerRange = 32768;
  int64_t grain = std::max<int64_t>(1, kWorkPerRange / std::max<int64_t>(cost, 1));
  pool_.parallel_for(n, grain, fn);
}

}  // namespace kiln
