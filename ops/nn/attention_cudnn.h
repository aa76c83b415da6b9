// Attention through cuDNN's fused flash attention (ops/nn/attention_cudnn.cu): the forward and
// backward of attention and attention_backward (ops/nn/attention.cc) as cuDNN operation graphs,
// which cuDNN recognizes and runs as one fused kernel each. Chosen with KILN_CUDA_ATTENTION, a
// comma-separated list: "cudnn" (Kiln's flash kernels where cuDNN has no plan, said once on
// stderr), plus "strict" (a DeviceError instead: the tests' and the benchmark's choice). Not the
// default: written on a machine without a GPU, it has not run yet.
#pragma once

#include <cstdint>
#include <string>

#include "kiln/framework/kernel.h"

namespace kiln::ops::cuda_attention {

/// An attention problem cuDNN's fused kernels take: f16 or bf16 q, k, v and out with one depth
/// (a multiple of 8, at most 128), as many key-value heads as query heads, no mask, bias, softcap
/// or window, and a causal mask (if any) aligned top-left (query offset 0), which is PyTorch's
/// is_causal. The caller checks that; see cudnn_attention_takes in attention.cu.
struct CudnnAttention {
  DType dtype = DType::bf16;
  int64_t batch = 0, heads = 0, queries = 0, keys = 0, depth = 0;
  /// q, k, v, out and their gradients [B, T, H, D] ("bthd"), else [B, H, T, D].
  bool bthd = false;
  bool causal = false;
  float scale = 1;
  /// The backward's deterministic form (SessionOptions::deterministic, the default): dq = ds k
  /// straight into dq, through a workspace of the scores' size (2 bytes each), instead of f32
  /// sums added with atomics.
  bool deterministic = false;
};

/// Builds the problem's operation graph for the forward or the backward, each tensor and
/// operation finalized by cuDNN (which checks their shapes, strides and types against one
/// another), without making a plan: that needs libcudnn but no GPU, so hosts without one check
/// the graphs too. Returns the number of operations; throws kiln::DeviceError with cuDNN's
/// reason for the first descriptor it refuses.
int64_t cudnn_attention_operations(const CudnnAttention& problem, bool backward);

/// cuDNN's plan for the problem's forward or backward graph on a device it is told of instead
/// of one it runs on (cuDNN 9.8's deviceless planning): `device_json` describes the device in
/// cuDNN's JSON (see tests/gpu/gpu_test.cc for an H200's). Asks heuristic A for the engine
/// configurations that support the graph on that device and makes the first one's plan,
/// which compiles its kernels (NVRTC) and loads them (the CUDA driver). Returns "" for a plan,
/// else cuDNN's reasons: on a host whose libcuda.so.1 is the toolkit's stub, a plan's last step
/// fails with CUDNN_STATUS_EXECUTION_FAILED_CUDA_DRIVER, after the graph was taken and compiled.
/// Throws kiln::DeviceError where cuDNN refuses the description or a descriptor of the graph.
std::string cudnn_attention_plan_for_device(const CudnnAttention& problem, bool backward,
                                            const std::string& device_json);

/// Whether KILN_CUDA_ATTENTION, a comma-separated list of choices read on every call (tests
/// switch it), holds `word`: "cudnn", "strict", or one of Kiln's own kernels' forms ("wide",
/// "summed_dq", "rows"; see attention.cu), which also apply where cuDNN is asked for but refuses.
bool attention_choice_holds(const char* word);

/// out = softmax(scale q k^T [causal]) v and lse [B, H, Tq] (f32, natural log: what Kiln's own
/// kernels write, and cuDNN's softmax statistics). False where cuDNN offers no plan for the
/// problem (the caller runs its own kernels); throws kiln::DeviceError with cuDNN's reason where
/// KILN_CUDA_ATTENTION holds "strict".
bool cudnn_attention_forward(KernelContext& ctx, const CudnnAttention& problem, const void* q,
                             const void* k, const void* v, void* out, float* lse);

/// dq, dk, dv from q, k, v, the forward's out and lse, and dout; false or a DeviceError as
/// cudnn_attention_forward. Unless `problem.deterministic`, cuDNN sums dq in f32 with atomics:
/// its bits may differ run to run.
bool cudnn_attention_backward(KernelContext& ctx, const CudnnAttention& problem, const void* q,
                              const void* k, const void* v, const void* out, const float* lse,
                              const void* dout, void* dq, void* dk, void* dv);

}  // namespace kiln::ops::cuda_attention
