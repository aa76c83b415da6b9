#include "kiln/framework/kernel.h"

#include <algorithm>

#include "kiln/framework/cuda/device_memory.h"
#include "kiln/framework/graph.h"

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

namespace {

bool is_half(DType d) {
  return d == DType::f16 || d == DType::bf16;
}

// dst[i] = convert<To>(src[i]) for every element, over the pool (one of the two is 16-bit).
void convert_elements(const KernelContext& ctx, const Tensor& src, Tensor& dst) {
  dispatch_all(src.dtype(), [&](auto from_tag) {
    using From = decltype(from_tag);
    dispatch_all(dst.dtype(), [&](auto to_tag) {
      using To = decltype(to_tag);
      const From* in = src.data<From>();
      To* out = dst.data<To>();
      ctx.parallel_for(src.numel(), 2, [&](int64_t begin, int64_t end) {
        for (int64_t i = begin; i < end; ++i) out[i] = convert<To>(in[i]);
      });
    });
  });
}

DType kernel_dtype(std::span<const TensorType> inputs, const Node& node) {
  return inputs.empty() ? node.outputs()[0].dtype : inputs[0].dtype;
}

}  // namespace

KernelFn choose_kernel(const Node& node, std::span<const TensorType> input_types,
                       DeviceKind device) {
  const OpDef& op = node.op();
  KernelFn kernel = op.kernel_for(device, kernel_dtype(input_types, node));
  if (device != DeviceKind::cpu || op.writes_state()) return kernel;
  // The 16-bit float dtype among the node's values, if any; the kernel must take it.
  DType half = DType::f32;
  for (const TensorType& t : input_types)
    if (is_half(t.dtype)) half = t.dtype;
  for (const TensorType& t : node.outputs())
    if (is_half(t.dtype)) half = t.dtype;
  if (half == DType::f32 || (kernel && op.kernel_for(device, half))) return kernel;
  std::vector<TensorType> widened(input_types.begin(), input_types.end());
  for (TensorType& t : widened)
    if (is_half(t.dtype)) t.dtype = DType::f32;
  const DType wide = widened.empty() ? DType::f32 : kernel_dtype(widened, node);
  return op.kernel_for(device, wide) ? widen_to_f32 : nullptr;
}

void widen_to_f32(KernelContext& ctx) {
  const Node& node = ctx.node();
  std::vector<Tensor> inputs;
  inputs.reserve(static_cast<size_t>(ctx.num_inputs()));
  for (int i = 0; i < ctx.num_inputs(); ++i) {
    const Tensor& in = ctx.input(i);
    if (!is_half(in.dtype())) {
      inputs.push_back(in);
      continue;
    }
    Tensor wide = Tensor::empty(DType::f32, in.shape());
    convert_elements(ctx, in, wide);
    inputs.push_back(std::move(wide));
  }
  std::vector<TensorType> types;
  for (int i = 0; i < ctx.num_outputs(); ++i) {
    TensorType t = ctx.output_type(i);
    if (is_half(t.dtype)) t.dtype = DType::f32;
    types.push_back(std::move(t));
  }
  const DType dtype = inputs.empty() ? types[0].dtype : inputs[0].dtype();
  const KernelFn f32_kernel = node.op().kernel_for(DeviceKind::cpu, dtype);
  KILN_CHECK(f32_kernel != nullptr && f32_kernel != widen_to_f32, Error, ctx.where(),
             ": no CPU kernel for ", dtype, " to widen 16-bit values to");
  std::vector<Tensor> outputs(types.size());
  KernelContext wide = ctx.rebind(inputs, types, outputs);
  f32_kernel(wide);
  for (int i = 0; i < ctx.num_outputs(); ++i) {
    const Tensor& result = wide.output(i);
    if (is_half(ctx.output_type(i).dtype))
      convert_elements(ctx, result, ctx.output(i));
    else
      ctx.set_output(i, result);
  }
}

}  // namespace kiln
