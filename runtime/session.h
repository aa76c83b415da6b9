// Session: compiles a graph once per (fetches, targets, feed shapes) into a Plan and runs it.
#pragma once

#include <list>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <utility>
#include <vector>

#include "kiln/framework/graph.h"
#include "kiln/framework/parallel.h"
#include "kiln/runtime/cuda_executor.h"
#include "kiln/runtime/numerics.h"
#include "kiln/runtime/plan.h"

namespace kiln {

/// How a Session runs.
struct SessionOptions {
  /// Where the graph runs. Use Device::best() for a GPU when one is present.
  Device device = Device::cpu();
  /// Threads for intra-op parallel loops (and BLAS); 0 = one per core.
  int intra_op_threads = 0;
  /// Graph passes run when a plan is compiled (each can be turned off).
  PassOptions passes{};
  /// Streams the plan spreads independent branches over, each run by its own thread on the
  /// CPU. Total CPU threads = inter_op_threads - 1 + intra_op_threads: the defaults (1 and
  /// one per core) never oversubscribe the cores.
  int inter_op_threads = 1;
  /// On a GPU: how many CUDA streams a plan's independent branches are spread over.
  int cuda_streams = 2;
  /// On a GPU: capture each plan's whole step as a CUDA Graph on its second run and replay it
  /// after that (one launch per step instead of one per node). Results are identical.
  bool cuda_graphs = false;
  /// On a GPU: f32 matrix products and convolutions may run on tensor cores in TF32 (inputs
  /// rounded to 10 mantissa bits, sums in f32: about 1e-3 relative error, several times the
  /// speed). Off by default: f32 is f32, bit for bit the same kind of sums as the CPU's.
  /// PyTorch's torch.backends.cudnn.allow_tf32 (on there by default, for convolutions) and
  /// torch.backends.cuda.matmul.allow_tf32 together. f16/bf16 use tensor cores either way;
  /// attention's f32 kernels keep f32 accuracy (three TF32 products each) either way.
  bool allow_tf32 = false;
  /// On a GPU: every run of a plan gives the same bits. cuDNN's deterministic convolution
  /// algorithms come first, and cuDNN's fused attention (KILN_CUDA_ATTENTION=cudnn) takes its
  /// backward without atomics. Off: cuDNN's heuristic's first choice, as PyTorch's default
  /// (torch.backends.cudnn.deterministic = False), faster where an algorithm that adds with
  /// atomics wins. Kiln's own kernels and the CPU give the same bits either way.
  bool deterministic = true;
  /// How many compiled plans the session keeps (least recently used ones go first; each holds
  /// its arena, so this bounds memory). Every distinct feed shape compiles a plan of its own:
  /// feed a fixed batch size (pad the last batch, or drop it) to compile once.
  size_t max_cached_plans = 32;
  /// Check every compiled memory plan with the validator (tests; O(buffers^2)).
  bool validate_memory_plan = false;
  /// Stops a run at the first NaN (or, with nan_or_inf, also infinity) that a feed holds or a
  /// step computes, with a NumericsError naming the node, its op, the element and the value,
  /// as TensorFlow's check_numerics and PyTorch's anomaly mode do. For debugging: every output
  /// is scanned (on a GPU, copied to the host after its step), CUDA Graphs are not used, and
  /// the passes that merge nodes (elementwise fusion, matmul epilogues) are off so that the
  /// node named is one of the graph's own. Dynamic loss scaling's skipped overflow steps are
  /// reported too: they are infinities.
  NumericsCheck check_numerics = NumericsCheck::off;
  /// When set, every run's per-node timings are collected and written to this file in the
  /// Chrome trace format (open it in Perfetto or chrome://tracing) when the session ends.
  std::string trace_path{};
};

/// Values fed to placeholders (or to any other value, which then is not computed).
using FeedList = std::vector<std::pair<Value, Tensor>>;

/// The variables a checkpoint holds: every variable of `graph` but those made with
/// persistent = false (a KV cache), in node order.
std::vector<Value> persistent_variables(const Graph& graph);

/// Runs a graph. The graph must outlive the session; nodes added to the graph after the
/// session was made can be run too. One run at a time per session (runs are serialized).
class Session {
 public:
  /// Throws kiln::DeviceError when options.device cannot be used, saying why.
  explicit Session(const Graph& graph, SessionOptions options = {});
  ~Session();
  /// The graph it runs.
  const Graph& graph() const { return graph_; }

  /// Computes `fetches` (returned in order) and runs `targets` for their effects, given
  /// `feeds`. Throws kiln::FeedError for a missing feed or one whose dtype or shape
  /// contradicts its placeholder (naming it), kiln::GraphError when the fed shapes make a node
  /// invalid, kiln::Error for data errors such as a gather index out of range.
  std::vector<Tensor> run(const FeedList& feeds, const std::vector<Value>& fetches,
                          const std::vector<Value>& targets = {});

  /// Runs signature `name` with `inputs` in the signature's input order; returns its outputs.
  std::vector<Tensor> run_signature(const std::string& name, const std::vector<Tensor>& inputs);

  /// The current value of variable `var` (a copy); initializes it first if needed.
  Tensor variable_value(const Value& var);
  /// Overwrites variable `var` (dtype and shape must match).
  void set_variable(const Value& var, const Tensor& value);
  /// Every persistent variable's current value by name (host copies; initialized first where
  /// needed): PyTorch's state_dict. `save_safetensors(session.variable_values(), path)` exports
  /// them.
  std::map<std::string, Tensor> variable_values();
  /// The same of only `variables` (persistent variables of the graph): one rank's part of a
  /// checkpoint. Throws kiln::GraphError for a value that is not one.
  std::map<std::string, Tensor> variable_values(const std::vector<Value>& variables);
  /// Overwrites the variables named in `values` (others keep theirs): PyTorch's load_state_dict
  /// with strict=False for names the map lacks. Each name must be a variable of the graph whose
  /// dtype and shape the tensor has (cast() a bf16 file's tensors first); every check passes
  /// before any variable changes. Throws kiln::FeedError naming the variable and the values.
  void set_variables(const std::map<std::string, Tensor>& values);
  /// Gives every variable of the graph its initial value (where it has none yet).
  void initialize_variables();
  /// Writes every persistent variable of the graph (weights, optimizer slots, step counter,
  /// running statistics; not a KV cache) to `path` atomically. Throws kiln::FileError.
  void save_checkpoint(const std::string& path);
  /// save_checkpoint of only `variables` (persistent variables of the graph; each at most
  /// once): one rank's part of a checkpoint that several ranks write. Throws kiln::FileError,
  /// or kiln::GraphError for a value that is not a persistent variable of the graph.
  void save_checkpoint(const std::string& path, const std::vector<Value>& variables);
  /// Loads every persistent variable of the graph from `path` (the others keep their values;
  /// a file that holds one anyway is accepted). All checks (file, version, CRCs, that each
  /// variable is present with its dtype and shape, and with `strict` that the file has no
  /// others) pass before any variable changes. Throws kiln::FileError naming the problem.
  void restore_checkpoint(const std::string& path, bool strict = true);
  /// restore_checkpoint from several files, each variable from the first that holds it: the
  /// per-rank checkpoints of a run with sharded optimizer state (each holds the weights and its
  /// rank's slots), restored at another world size or unsharded. A variable in none of them is
  /// a FileError naming them all; with `strict`, so is an entry of any file that is not a
  /// variable of the graph (pass false where the files hold other ranks' slots).
  void restore_checkpoints(const std::vector<std::string>& paths, bool strict = true);

  /// The plan for these feeds, fetches and targets (compiled on first use), to inspect. The
  /// reference stays valid until the session evicts the plan (max_cached_plans).
  const Plan& plan(const FeedList& feeds, const std::vector<Value>& fetches,
                   const std::vector<Value>& targets = {});

  /// Writes the per-node timings collected so far (collected when options.trace_path is set)
  /// as a Chrome trace to `path`.
  void write_trace(const std::string& path);

  /// How many runs replayed a captured CUDA Graph (0 on the CPU).
  int64_t graph_replays() const { return cuda_ ? cuda_->graph_replays() : 0; }
  /// Number of plans the session holds now (one per fetch set and feed shapes, at most
  /// options().max_cached_plans).
  size_t num_compiled_plans() const { return plans_.size(); }
  /// Number of plans compiled since the session was made (evicted ones included): a number
  /// that keeps growing during training means recompiles (varying feed shapes).
  int64_t num_compilations() const { return compilations_; }
  const SessionOptions& options() const { return options_; }

 private:
  const Plan& plan_for(const FeedList& feeds, const std::vector<Value>& fetches,
                       const std::vector<Value>& targets);

  /// Throws GraphError naming `what` for a value of `variables` that is not a persistent
  /// variable of the graph.
  void check_persistent(const std::string& what, const std::vector<Value>& variables) const;
  const Graph& graph_;
  SessionOptions options_;
  std::unique_ptr<ThreadPool> pool_;
  std::unique_ptr<CudaExecutor> cuda_;  // GPU sessions only; holds per-plan device state
  // Plans by key, with their place in the recency list (most recent first).
  struct CachedPlan {
    std::unique_ptr<Plan> plan;
    std::list<std::string>::iterator recency;
  };
  std::map<std::string, CachedPlan> plans_;
  std::list<std::string> recency_;
  int64_t compilations_ = 0;
  VariableStore variables_;
  CpuExecutorState cpu_state_;  // the arena, lanes and kernel cache of every CPU plan
  std::vector<TraceEvent> trace_;
  std::mutex mutex_;
};

}  // namespace kiln
