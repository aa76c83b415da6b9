// Symbolic differentiation: gradients are more nodes in the same graph.
#pragma once

#include <functional>
#include <string>
#include <vector>

#include "kiln/framework/graph.h"

namespace kiln {

/// Options of gradients().
struct GradientOptions {
  /// The gradient flowing into y: ones shaped like y when undefined (so for a scalar loss the
  /// result is dloss/dx).
  Value dy{};
  /// An x that y does not depend on through differentiable ops gets an undefined Value instead
  /// of an error (PyTorch's allow_unused, which gives None).
  bool allow_unused = false;
  /// Such an x gets zeros shaped like it instead (PyTorch's materialize_grads); implies
  /// allow_unused.
  bool materialize_unused = false;
};

/// d(sum(dy * y)) / d(xs): for each x, a Value of x's shape and dtype in y's graph. The
/// backward nodes are built from each op's gradient function, partial gradients that meet are
/// summed, and only nodes on a path from some x to y are differentiated.
///
/// Throws kiln::GraphError when a node on the path has no gradient function, naming its op and
/// the path from y to it; when y or an x is not floating point; and when y does not depend on
/// an x (or only through integer, bool or stop_gradient paths, which the message names) unless
/// `options` allow it.
std::vector<Value> gradients(const Value& y, const std::vector<Value>& xs,
                             const GradientOptions& options = {});

/// fn(inputs), built so that gradients() recomputes it in the backward pass instead of keeping
/// what it computes inside alive until then (torch.utils.checkpoint, jax.checkpoint,
/// tf.recompute_grad): activation memory for a step then holds only the segments' inputs and
/// outputs, at the price of running each segment's forward twice. The results are the same
/// bit for bit: the copy runs the same kernels on the same values, and its random ops (dropout)
/// draw the same numbers. Writes to variables inside (a batch norm's running statistics)
/// happen once. Every node fn builds joins the segment (see RecomputeScope in graph.h).
/// `policy` picks nodes whose outputs are kept rather than recomputed (selective
/// checkpointing): recompute(fn, inputs, save_products()) keeps the products, the costly part,
/// and recomputes the cheap elementwise and normalization ops that hold most of the memory.
std::vector<Value> recompute(const std::function<std::vector<Value>(const std::vector<Value>&)>& fn,
                             const std::vector<Value>& inputs, RecomputePolicy policy = {});
/// recompute() of a one-input, one-output fn: `h = recompute([&](const Value& v) { return
/// block(v); }, h);`
Value recompute(const std::function<Value(const Value&)>& fn, const Value& x,
                RecomputePolicy policy = {});

/// The policy that saves the products: the ops autocast runs in 16 bits (Precision::low:
/// matmul, convolution, attention), whose recomputation costs the most per byte kept
/// (jax.checkpoint_policies.dots_saveable; torch's selective checkpointing saving mm and
/// attention).
RecomputePolicy save_products();
/// The policy that saves the nodes of the named ops ("attention", "matmul"), as torch's
/// selective checkpointing lists ops to save. An op name that is not registered is a GraphError.
RecomputePolicy save_ops(const std::vector<std::string>& op_names);

/// x in the forward pass; no gradient flows back through it.
Value stop_gradient(const Value& x);

}  // namespace kiln
