// Reverse-mode differentiation over the graph. Node ids are a topological order (Graph's
// invariant), so one backward sweep in decreasing id order visits every node after all of
// its consumers, when its output gradients are complete.
#include "kiln/autograd/gradients.h"

#include <unordered_map>

#include "kiln/framework/gradient.h"

namespace kiln {

namespace {

// "y <- a <- b": the consumers through which the gradient reached `id`, back to y.
std::string path_to(const Graph& g, int32_t id, const std::vector<int32_t>& reached_from) {
  std::string path = g.node(id).name();
  for (int32_t at = reached_from[id]; at >= 0; at = reached_from[at])
    path = g.node(at).name() + " <- " + path;
  return path;
}

// Why x gets no gradient from y: no path at all, or every path is cut at a node that passes
// no gradient (the one nearest y that x reaches is named, with its path from y).
std::string why_unused(const Graph& g, const Value& x, const Value& y,
                       const std::vector<char>& blocks, const std::vector<int32_t>& reached_from) {
  const int32_t n = y.node_id() + 1;
  std::vector<char> reached(n, 0);
  if (x.node_id() < n) reached[x.node_id()] = 1;
  for (int32_t id = x.node_id() + 1; id < n; ++id)
    for (OutputRef in : g.node(id).inputs()) reached[id] |= reached[in.node];
  if (!reached[y.node_id()]) return "no path leads from it to y";
  for (int32_t id = y.node_id(); id > x.node_id(); --id)
    if (reached[id] && blocks[id])
      return str(
          "its paths to y pass no gradient (through integer or bool values, "
          "stop_gradient or a piecewise-constant op), as at '",
          g.node(id).name(), "' (", g.node(id).op_name(), "): y <- ", path_to(g, id, reached_from));
  return "its paths to y pass no gradient";
}

Value sum_of(Graph& g, std::vector<Value>& parts) {
  if (parts.size() == 1) return parts[0];
  return g.add("add_n", parts);
}

}  // namespace

std::vector<Value> gradients(const Value& y, const std::vector<Value>& xs,
                             const GradientOptions& options) {
  const Value& dy = options.dy;
  KILN_CHECK(y.defined(), GraphError, "[autograd] y is an undefined Value");
  Graph& g = *y.graph();
  KILN_CHECK(is_floating(y.dtype()), GraphError, "[autograd] cannot differentiate ", y.name(),
             " of dtype ", y.dtype());
  for (const Value& x : xs) {
    KILN_CHECK(x.defined() && x.graph() == &g, GraphError, "[autograd] an x is not a value of ",
               y.name(), "'s graph");
    KILN_CHECK(is_floating(x.dtype()), GraphError,
               "[autograd] cannot differentiate with respect to ", x.name(), " of dtype ",
               x.dtype());
  }
  if (dy.defined()) {
    KILN_CHECK(dy.graph() == &g && dy.dtype() == y.dtype() && dy.shape().compatible_with(y.shape()),
               GraphError, "[autograd] dy (", dy.dtype(), dy.shape(), ") does not match y ",
               y.name(), " (", y.dtype(), y.shape(), ")");
  }

  // Nodes that depend on some x (a forward sweep; ids are topological).
  const int32_t n = y.node_id() + 1;
  std::vector<char> from_x(n, 0);
  int32_t lowest = n;
  for (const Value& x : xs) {
    if (x.node_id() < n) from_x[x.node_id()] = 1;
    lowest = std::min(lowest, x.node_id());
  }
  for (int32_t id = lowest; id < n; ++id) {
    if (from_x[id]) continue;
    for (OutputRef in : g.node(id).inputs())
      if (from_x[in.node]) {
        from_x[id] = 1;
        break;
      }
  }

  // Accumulated partial gradients per output, and who passed the gradient down (for paths).
  std::unordered_map<int64_t, std::vector<Value>> partials;
  auto key = [](OutputRef r) { return (int64_t{r.node} << 20) | r.index; };
  std::vector<int32_t> reached_from(n, -1);

  NameScope scope(g, "gradients");
  if (from_x[y.node_id()]) {
    partials[key(y.ref())].push_back(
        dy.defined() ? dy : g.add("full_like", {y}, {{"value", 1.0}}, {.name = "dy"}));
  }
  std::unordered_map<int64_t, Value> result;  // x ref -> its total gradient
  // Nodes that an x reaches through an input but that pass no gradient on (for messages).
  std::vector<char> blocks(n, 0);
  std::vector<char> is_x(n, 0);
  for (const Value& x : xs)
    if (x.node_id() < n) is_x[x.node_id()] = 1;

  for (int32_t id = y.node_id(); id >= lowest; --id) {
    if (!from_x[id]) continue;
    const Node& node = g.node(id);
    std::vector<Value> grad_outputs(node.num_outputs());
    bool any = false;
    for (int32_t i = 0; i < node.num_outputs(); ++i) {
      auto it = partials.find(key(OutputRef{id, i}));
      if (it == partials.end()) continue;
      grad_outputs[i] = sum_of(g, it->second);
      any = true;
      partials.erase(it);
      if (is_x[id]) result[key(OutputRef{id, i})] = grad_outputs[i];
    }
    if (!any) continue;
    // Inputs that need a gradient: floating, and depending on some x.
    std::vector<int> wanted;
    for (size_t i = 0; i < node.inputs().size(); ++i) {
      OutputRef in = node.inputs()[i];
      if (from_x[in.node] && is_floating(g.node(in.node).outputs()[in.index].dtype))
        wanted.push_back(static_cast<int>(i));
    }
    // Whether an x reaches this node through an input: if then no gradient flows on, the
    // node is where x's paths are cut (named when an x ends up without a gradient).
    bool input_from_x = false;
    for (OutputRef in : node.inputs()) input_from_x |= from_x[in.node] != 0;
    if (wanted.empty() || node.op().has_no_gradient()) {
      blocks[id] = input_from_x;
      continue;
    }
    if (!node.op().grad_fn())
      throw GraphError(str("[autograd] op '", node.op_name(), "' (node '", node.name(),
                           "') has no gradient; path from y: ", path_to(g, id, reached_from)));
    GradList grads;
    {
      NameScope node_scope(g, node.name());
      std::vector<bool> wanted_inputs(node.inputs().size(), false);
      for (int i : wanted) wanted_inputs[static_cast<size_t>(i)] = true;
      GradContext ctx(g, node, std::move(grad_outputs), std::move(wanted_inputs));
      grads = node.op().grad_fn()(ctx);
    }
    KILN_DASSERT(grads.size() == node.inputs().size());
    bool passed = false;
    for (int i : wanted) {
      if (i >= static_cast<int>(grads.size()) || !grads[i].defined()) continue;
      OutputRef in = node.inputs()[i];
      partials[key(in)].push_back(grads[i]);
      if (reached_from[in.node] < 0) reached_from[in.node] = id;
      passed = true;
    }
    if (!passed) blocks[id] = 1;  // piecewise constant (sign, round)
  }

  std::vector<Value> out;
  for (const Value& x : xs) {
    auto it = result.find(key(x.ref()));
    if (it != result.end()) {
      out.push_back(it->second);
      continue;
    }
    auto pending = partials.find(key(x.ref()));  // x below `lowest` is impossible; y == x
    if (pending != partials.end()) {
      out.push_back(sum_of(g, pending->second));
    } else if (options.materialize_unused) {
      out.push_back(g.add("full_like", {x}, {{"value", 0.0}}));
    } else if (options.allow_unused) {
      out.push_back(Value());
    } else {
      throw GraphError(str("[autograd] y '", y.name(), "' does not depend on x '", x.name(),
                           "': ", why_unused(g, x, y, blocks, reached_from),
                           ". Set allow_unused (undefined gradient) or materialize_unused (zeros)"
                           " in GradientOptions if that is intended"));
    }
  }
  return out;
}
Value stop_gradient(const Value& x) {
  return common_graph("stop_gradient", {&x}).add("stop_gradient", {x});
}

}  // namespace kiln
