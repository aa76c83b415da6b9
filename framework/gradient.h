// GradContext: what an op's gradient function sees while autograd builds the backward graph.
#pragma once

#include <vector>

#include "kiln/framework/graph.h"

namespace kiln {

/// One Value per input of a node: its gradient, or an undefined Value for none.
using GradList = std::vector<Value>;

/// The node being differentiated, its inputs and outputs as Values, and dL/d(outputs).
class GradContext {
 public:
  /// `wanted`: per input, whether autograd will use its gradient (empty: all of them).
  GradContext(Graph& graph, const Node& node, std::vector<Value> grad_outputs,
              std::vector<bool> wanted = {})
      : graph_(graph),
        node_(node),
        grad_outputs_(std::move(grad_outputs)),
        wanted_(std::move(wanted)) {}

  Graph& graph() const { return graph_; }
  const Node& node() const { return node_; }
  int num_inputs() const { return static_cast<int>(node_.inputs().size()); }
  Value input(int i) const { return graph_.value(node_.inputs()[i]); }
  /// Output `i` of the node, or the value standing in for it (use_outputs()).
  Value output(int i = 0) const {
    return outputs_.empty() ? graph_.value(OutputRef{node_.id(), i})
                            : outputs_[static_cast<size_t>(i)];
  }
  /// Makes output() return `outputs` (one per output of the node) instead of the node's own:
  /// a recompute segment's copy of a saved node is differentiated from the saved values, so
  /// the copy itself never runs.
  void use_outputs(std::vector<Value> outputs) { outputs_ = std::move(outputs); }
  /// True when some path from y reaches output `i`.
  bool has_grad_output(int i) const { return grad_outputs_[i].defined(); }
  /// dL/d(output i); zeros shaped like the output when no gradient reached it.
  Value grad_output(int i = 0);
  /// Whether the gradient of input `i` is used (an op whose backward computes several at once
  /// may leave out those nobody reads; the others are dropped anyway).
  bool wants_grad_input(int i) const { return wanted_.empty() || wanted_[static_cast<size_t>(i)]; }
  template <typename T>
  const T& attr(const std::string& name) const {
    return node_.attr<T>(name);
  }

 private:
  Graph& graph_;
  const Node& node_;
  std::vector<Value> grad_outputs_;
  std::vector<bool> wanted_;
  std::vector<Value> outputs_;  // empty: the node's own
};

}  // namespace kiln
