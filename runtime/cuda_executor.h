// The CUDA executor: runs a Plan on one GPU, its streams as CUDA streams.
#pragma once

#include <memory>
#include <vector>

#include "kiln/runtime/plan.h"

namespace kiln {

/// How the CUDA executor runs a plan.
struct CudaRunOptions {
  /// Capture the whole step (feeds in, every kernel, fetches out) as a CUDA Graph on the second
  /// run of a plan and replay it from then on. Shapes are static per plan, so the graph is
  /// exact; it is re-recorded when variables were replaced from the host.
  bool cuda_graphs = false;
  /// f32 products and convolutions may use TF32 (SessionOptions::allow_tf32).
  bool allow_tf32 = false;
  /// Library kernels give the same bits on every run (SessionOptions::deterministic).
  bool deterministic = true;
  /// Collect one trace event per step: its GPU start and duration (timing events around it on
  /// its stream). Runs traced this way are not captured as CUDA Graphs.
  std::vector<TraceEvent>* trace = nullptr;
  /// Scan every floating output after its step (the step's stream is synchronized and the
  /// output copied to the host) and stop at the first refused value. Not captured either.
  NumericsCheck check_numerics = NumericsCheck::off;
};

/// Runs plans on GPU `device`: the plan's arena in device memory from the stream-ordered pool,
/// its streams on lanes (map_streams_to_lanes: each a cudaStream with its LaneResources, such as
/// a cuBLASLt handle, made on first use), its waits as cudaEvents; feeds and fetches pass
/// through pinned staging buffers. Kernels' choices live in one KernelCache per executor.
class CudaExecutor {
 public:
  /// Throws kiln::DeviceError saying why when `device` cannot be used (or CUDA is not built).
  static std::unique_ptr<CudaExecutor> create(Device device, int max_streams);
  virtual ~CudaExecutor() = default;

  /// Runs `plan` with host `feeds` (in the plan's feed order); returns host fetches.
  virtual std::vector<Tensor> run(const Plan& plan, const std::vector<Tensor>& feeds,
                                  ThreadPool& pool, VariableStore& variables,
                                  const CudaRunOptions& options) = 0;
  /// Releases what the executor keeps for `plan` (device buffers, staging, captured graph):
  /// the session calls it before it drops the plan.
  virtual void forget(const Plan& plan) = 0;
  /// How many times a captured graph was replayed (for tests and benchmarks).
  virtual int64_t graph_replays() const = 0;
};

}  // namespace kiln
