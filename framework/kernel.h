// KernelContext: what a kernel sees when it runs one node.
#pragma once

#include <span>

#include "kiln/framework/graph.h"
#include "kiln/framework/lane_resources.h"
#include "kiln/framework/parallel.h"
#include "kiln/framework/tensor.h"

namespace kiln {

/// What a kernel running on a GPU needs besides its tensors: the stream its work is queued on.
/// Library handles are lane resources (KernelContext::lane_resource).
struct CudaStepContext {
  Device device = Device::cuda(0);
  void* stream = nullptr;  ///< cudaStream_t
  /// Host memory the GPU can write (pinned): where kernels report data errors (an index out
  /// of range), read by the executor after the run. See ops/cuda/cuda_common.cuh.
  int64_t* error_block = nullptr;
  /// Index of the step being queued (named in data errors).
  int32_t step = -1;
  /// f32 products (matmul, convolution) may round their inputs to TF32 on tensor cores
  /// (SessionOptions::allow_tf32).
  bool allow_tf32 = false;
  /// Library kernels (cuDNN's) must give the same bits on every run
  /// (SessionOptions::deterministic).
  bool deterministic = true;
};

/// What an executor gives a kernel besides its tensors; all optional (constant folding runs
/// kernels with none of them).
struct KernelEnvironment {
  VariableStore* variables = nullptr;
  const CudaStepContext* cuda = nullptr;
  LaneResources* lane = nullptr;
  KernelCache* cache = nullptr;
};

/// The inputs, outputs, attributes and thread pool of one node being executed.
/// Outputs are allocated on first access with the shape the plan inferred; a kernel that
/// produces a view of an input or an attribute (reshape, constant) may set_output instead.
class KernelContext {
 public:
  KernelContext(const Node& node, std::span<const Tensor> inputs,
                std::span<const TensorType> output_types, std::span<Tensor> outputs,
                ThreadPool& pool, KernelEnvironment environment = {})
      : node_(node),
        inputs_(inputs),
        output_types_(output_types),
        outputs_(outputs),
        pool_(pool),
        variables_(environment.variables),
        cuda_(environment.cuda),
        lane_(environment.lane),
        cache_(environment.cache) {}

  const Node& node() const { return node_; }
  int num_inputs() const { return static_cast<int>(inputs_.size()); }
  const Tensor& input(int i) const { return inputs_[i]; }
  int num_outputs() const { return static_cast<int>(outputs_.size()); }
  /// Output `i`, allocated with its planned shape on first access (on the kernel's device).
  Tensor& output(int i);
  /// The planned (concrete) type of output `i`.
  const TensorType& output_type(int i) const { return output_types_[i]; }
  /// Makes `tensor` output `i` (it must have the planned dtype and shape).
  void set_output(int i, Tensor tensor);
  template <typename T>
  const T& attr(const std::string& name) const {
    return node_.attr<T>(name);
  }
  /// "[op] node" for error messages raised while running (data-dependent errors only).
  std::string where() const { return str("[", node_.op_name(), "] ", node_.name()); }

  ThreadPool& pool() const { return pool_; }
  /// The GPU context when the node runs on a GPU, else nullptr.
  const CudaStepContext* cuda() const { return cuda_; }
  /// The stream of a GPU kernel (a cudaStream_t); throws on the CPU.
  void* stream() const;
  /// Scratch device memory on this kernel's stream for the duration of the step (freed
  /// stream-ordered when the returned storage is released).
  std::shared_ptr<Storage> scratch(size_t nbytes) const;
  /// The session's variables (for the variable op); throws when the executor has none.
  VariableStore& variables() const;
  /// This lane's T (see LaneResources), made on first use; throws when run outside a lane.
  template <typename T>
  T& lane_resource() const {
    KILN_CHECK(lane_ != nullptr, Error, where(), ": no lane resources here");
    return lane_->get<T>();
  }
  /// The executor's cache of kernel choices; throws when run outside an executor.
  KernelCache& cache() const;
  /// Whether there is one (constant folding runs kernels without).
  bool has_cache() const { return cache_ != nullptr; }
  /// The start of a KernelCache key: device, op, every input's dtype and shape, then `what`
  /// (the attributes the choice depends on).
  std::string cache_key(const std::string& what) const;
  /// pool().parallel_for with a grain chosen so each range holds about 32K units of work
  /// (`cost` units per item).
  void parallel_for(int64_t n, int64_t cost, const std::function<void(int64_t, int64_t)>& fn) const;
  /// The same node, pool and environment over other tensors (a kernel that runs another
  /// kernel on converted inputs: widen_to_f32).
  KernelContext rebind(std::span<const Tensor> inputs, std::span<const TensorType> output_types,
                       std::span<Tensor> outputs) const {
    return KernelContext(node_, inputs, output_types, outputs, pool_,
                         {variables_, cuda_, lane_, cache_});
  }

 private:
  const Node& node_;
  std::span<const Tensor> inputs_;
  std::span<const TensorType> output_types_;
  std::span<Tensor> outputs_;
  ThreadPool& pool_;
  VariableStore* variables_;
  const CudaStepContext* cuda_;
  LaneResources* lane_;
  KernelCache* cache_;
};

/// The kernel that runs `node` on `device` (input_types: its inputs' planned types), or nullptr
/// when there is none. The op's kernel for its dtype (input 0's, or output 0's for an op
/// without inputs) — except on the CPU for a node with f16 or bf16 values whose op has no CPU
/// kernel taking them: then widen_to_f32.
KernelFn choose_kernel(const Node& node, std::span<const TensorType> input_types,
                       DeviceKind device);

/// Runs the node's f32 CPU kernel on f32 copies of its 16-bit float inputs and rounds its
/// 16-bit outputs from the f32 results: the arithmetic of the GPU's 16-bit kernels (f32 inside,
/// one rounding per output), so autocast graphs run on the CPU. Ops that write state never
/// widen (they would write the copy).
void widen_to_f32(KernelContext& ctx);

}  // namespace kiln
