// Plan: a graph compiled for one set of fetches, targets and feed shapes.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "framework/graph.h"
#include "framework/parallel.h"
#include "runtime/passes/passes.h"

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
};

/// What compile_plan knows about a feed: the value it replaces and its concrete type.
struct FeedSpec {
  Value value;
  TensorType type;
};

/// Compiles a plan: prunes the graph to what the fetches and targets need (stopping at fed
/// values), checks every feed against its value (dtype, shape) and every needed placeholder
/// for a feed, copies the needed nodes into the plan's graph with concrete shapes, runs the
/// graph passes, picks each node's kernel for `device`, and computes when each slot dies.
/// Throws kiln::FeedError / GraphError / Error.
Plan compile_plan(const Graph& graph, const std::vector<FeedSpec>& feeds,
                  const std::vector<Value>& fetches, const std::vector<Value>& targets,
                  DeviceKind device, const PassOptions& passes = {});

/// The cache key of a plan: fetch and target ids, fed values and their shapes.
std::string plan_key(const std::vector<FeedSpec>& feeds, const std::vector<Value>& fetches,
                     const std::vector<Value>& targets);

/// Runs `plan` on the CPU with `feeds` (in the plan's feed order); returns the fetches.
/// Fetched tensors that share storage with a variable are copied, so later updates of the
/// variable do not change what the caller holds.
std::vector<Tensor> execute_on_cpu(const Plan& plan, const std::vector<Tensor>& feeds,
                                   ThreadPool& pool,
                                   VariableStore& variables);

}  // namespace kiln
