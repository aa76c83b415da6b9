// Plan: a graph compiled for one set of fetches, targets and feed shapes.
#pragma once

#include <cstdint>
#include <string>
#include <unordered_map>
#include <vector>

#include "kiln/framework/graph.h"
#include "kiln/framework/lane_resources.h"
#include "kiln/framework/parallel.h"
#include "kiln/runtime/numerics.h"
#include "kiln/runtime/passes/passes.h"

namespace kiln {

/// One node to execute: its kernel, where its inputs are, where its outputs go.
struct PlanStep {
  int32_t node = -1;
  KernelFn kernel = nullptr;
  std::vector<int32_t> input_slots;
  std::vector<int32_t> output_slots;
  /// The outputs' concrete dtypes and shapes.
  std::vector<TensorType> output_types;
  /// Slots whose last reader is this step: freed once it has run.
  std::vector<int32_t> release_after;
  /// The stream (lane) the step runs on, and the steps on other streams it must wait for (one
  /// event each: every cross-stream edge, data or "read before update").
  int32_t stream = 0;
  std::vector<int32_t> waits;
};

/// Who makes and who reads each slot of a plan, computed once (analyze_liveness) and used by
/// memory planning, its validator and the release points.
struct Liveness {
  /// The step that produces each slot (-1: a feed).
  std::vector<int32_t> producer;
  /// Every step that reads each slot, directly or through a view of it (an output that may
  /// alias it), in step order.
  std::vector<std::vector<int32_t>> users;
  /// The last step that reads each slot directly (-1: none).
  std::vector<int32_t> last_read;
};

/// The compiled form of a run: steps in a topological order over value slots.
struct Plan {
  std::string key;
  /// The plan's own graph: the needed part of the session's graph, with fed values as
  /// placeholders ("feed#i", concrete shapes), after the graph passes. Steps refer to it.
  std::unique_ptr<Graph> graph;
  /// Names of the passes that changed the graph.
  std::vector<std::string> passes_applied;
  /// Concrete type of every slot.
  std::vector<TensorType> slot_types;
  int32_t num_slots = 0;
  /// Slot of each feed, in the order of the FeedList the plan was compiled for.
  std::vector<int32_t> feed_slots;
  std::vector<PlanStep> steps;
  /// Slot of each fetch, in order.
  std::vector<int32_t> fetch_slots;

  // ---- Scheduling (runtime/schedule.cc)
  int32_t num_streams = 1;
  /// The kind of each stream: compute streams first (0, 1, ...), then a communication stream
  /// when some step is a collective.
  std::vector<StreamKind> stream_kinds = {StreamKind::compute};

  // ---- Liveness (runtime/memory_plan.cc)
  Liveness liveness;

  // ---- Memory planning (runtime/memory_plan.cc)
  /// Byte offset of each slot's buffer in the arena; -1 for slots outside it (feeds,
  /// fetches, variables, constants, state updates).
  std::vector<int64_t> slot_offset;
  /// For a slot computed in place: the input slot whose buffer it takes over (else -1).
  std::vector<int32_t> in_place_of;
  /// For a slot written straight into its place inside a concatenation's output (a gradient
  /// in its bucket): that output's slot (else -1).
  std::vector<int32_t> packed_into;
  /// Arena size: the planned peak of intermediate memory.
  int64_t arena_bytes = 0;
  /// What the same buffers would take without reuse.
  int64_t unshared_bytes = 0;
};

/// What compile_plan knows about a feed: the value it replaces and its concrete type, and,
/// when a run feeds a tensor, that tensor (checked to be defined and on the host).
struct FeedSpec {
  Value value;
  TensorType type;
  const Tensor* tensor = nullptr;
};

/// The one check of feeds, run by every run (before the plan-cache lookup) and by compile_plan:
/// each feed is a value of `graph`, fed once, a defined host tensor, of the value's dtype and a
/// shape compatible with the value's. Throws kiln::FeedError naming the placeholder (or value)
/// and both dtypes or shapes.
void check_feeds(const Graph& graph, const std::vector<FeedSpec>& feeds);

/// Step order relations under a plan's streams and waits: "u completes before p starts".
class HappensBefore {
 public:
  explicit HappensBefore(const Plan& plan);
  bool before(int32_t u, int32_t p) const;

 private:
  std::vector<int32_t> stream_, position_;
  std::vector<std::vector<int32_t>> clock_;  // per step: per stream, last position seen done
};

/// The stages of compile_plan, in order; each is a function of what the ones before made.
///
/// 1. prune: checks the feeds, finds the nodes the fetches and targets need (stopping at fed
///    values) and orders them: the one topological sort (data edges, and every read of a
///    variable before the updates of it). Throws FeedError for an unfed placeholder's need.
struct PrunedGraph {
  std::unordered_map<OutputRef, int32_t, OutputRefHash> fed;  ///< fed value -> feed index
  std::vector<int32_t> order;      ///< needed nodes of the session graph, in execution order
  std::vector<int32_t> reason;     ///< per node: index into `roots` of a root that needs it, or -1
  std::vector<std::string> roots;  ///< "fetch 'x'", "target 'train'" (for messages)
};
PrunedGraph prune(const Graph& graph, const std::vector<FeedSpec>& feeds,
                  const std::vector<Value>& fetches, const std::vector<Value>& targets);
/// 2. specialize_shapes: copies the needed nodes in order into the plan's own graph, fed
///    values as placeholders of the fed (concrete) types, so every shape is known; adds the
///    random counters' advances; the signature "__plan__" names feeds, fetches and targets.
Plan specialize_shapes(const Graph& graph, const PrunedGraph& pruned,
                       const std::vector<FeedSpec>& feeds, const std::vector<Value>& fetches,
                       const std::vector<Value>& targets);
/// 3. passes: optimize_graph (runtime/passes/passes.h) on plan.graph.
/// 4. choose_kernels: one step per node in id order, one slot per value, each step's kernel
///    for `device` and its input dtype. Throws kiln::Error for a missing kernel.
void choose_kernels(Plan& plan, DeviceKind device);
/// 5. schedule_streams (below).
/// 6. analyze_liveness: fills plan.liveness.
void analyze_liveness(Plan& plan);
/// 7. plan_memory (below).
/// 8. mark_releases: each step's release_after from plan.liveness.
void mark_releases(Plan& plan);

/// Assigns each step a stream and records a wait (an event) for every edge between streams:
/// data edges and the edges that keep reads of a variable before its update. Independent
/// branches go to different compute streams (at most `max_streams`); collectives (the
/// communication trait) go to one communication stream, so they overlap later compute, with
/// events both ways.
void schedule_streams(Plan& plan, int max_streams);

/// How an executor runs a plan's streams: each stream's lane, and each lane's kind. Compute
/// streams take compute lanes 0..compute_lanes-1 (in turn when the plan has more streams than
/// the executor lanes); the communication stream (and a copy stream) each get a lane of their
/// own after those.
struct LaneMap {
  std::vector<int32_t> lane_of_stream;
  std::vector<StreamKind> lane_kinds;
};
LaneMap map_streams_to_lanes(const Plan& plan, int compute_lanes);

/// Plans every intermediate buffer into one arena: liveness over the schedule, then first-fit
/// offsets, reusing a buffer only after every reader of it (on any stream) happens before the
/// new producer; with `in_place`, an elementwise op writes into an input buffer that dies at it.
void plan_memory(Plan& plan, bool in_place);

/// Checks the memory plan: no two arena buffers whose lifetimes can overlap share a byte
/// (except an in-place output and the input it replaces). Throws kiln::Error naming both.
void validate_memory_plan(const Plan& plan);

/// Compiles a plan: prunes the graph to what the fetches and targets need (stopping at fed
/// values), checks every feed against its value (dtype, shape) and every needed placeholder
/// for a feed, copies the needed nodes into the plan's graph with concrete shapes, runs the
/// graph passes, picks each node's kernel for `device`, and computes when each slot dies.
/// Throws kiln::FeedError / GraphError / Error.
Plan compile_plan(const Graph& graph, const std::vector<FeedSpec>& feeds,
                  const std::vector<Value>& fetches, const std::vector<Value>& targets,
                  DeviceKind device, const PassOptions& passes = {}, int max_streams = 1);

/// The cache key of a plan: fetch and target ids, fed values and their dtypes and shapes.
std::string plan_key(const std::vector<FeedSpec>& feeds, const std::vector<Value>& fetches,
                     const std::vector<Value>& targets);

/// One executed step, for profiles: node name, op, stream, start and duration in microseconds.
struct TraceEvent {
  std::string name, op;
  int32_t stream = 0;
  double start_us = 0, duration_us = 0;
};

/// Writes `events` as a Chrome trace (JSON; opens in Perfetto and chrome://tracing), one track
/// per stream. Throws kiln::FileError.
void write_chrome_trace(const std::vector<TraceEvent>& events, const std::string& path);

/// What the CPU executor keeps between runs of a session's plans (its runs are serialized).
struct CpuExecutorState {
  /// The arena the plans' intermediates live in: replaced by a larger one when it holds less
  /// than a plan's arena_bytes. One for all plans (nothing a run returns points into it), so
  /// its memory is the largest plan's, not the sum.
  std::shared_ptr<Storage> arena;
  /// Each lane's resources (a oneDNN engine and stream, ...), made when a lane is first used.
  std::vector<std::unique_ptr<LaneResources>> lanes;
  /// Kernel choices (algorithms) made once.
  KernelCache cache;
  /// Lane `index` of kind `kind`, made now if needed.
  LaneResources& lane(int32_t index, StreamKind kind);
};

/// How execute_on_cpu runs a plan.
struct CpuRunOptions {
  /// With more than 1, the plan's streams run on their own threads, waiting at events.
  int inter_op_threads = 1;
  /// When set, one event per step is appended to it.
  std::vector<TraceEvent>* trace = nullptr;
  /// Every floating output is scanned after its step; the first refused value stops the run
  /// (kiln::NumericsError).
  NumericsCheck check = NumericsCheck::off;
  /// What the executor keeps between runs (see CpuExecutorState). Null: fresh for this run.
  CpuExecutorState* state = nullptr;
};

/// Runs `plan` on the CPU with `feeds` (in the plan's feed order); returns the fetches.
/// Fetched tensors that share storage with a variable or the arena are copied, so later
/// updates of the variable (or later runs) do not change what the caller holds.
std::vector<Tensor> execute_on_cpu(const Plan& plan, const std::vector<Tensor>& feeds,
                                   ThreadPool& pool, VariableStore& variables,
                                   const CpuRunOptions& options = {});

}  // namespace kiln
