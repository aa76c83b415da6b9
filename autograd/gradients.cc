// Reverse-mode differentiation over the graph. Node ids are a topological order (Graph's
// invariant), so one backward sweep in decreasing id order visits every node after all of
// its consumers, when its output gradients are complete.
#include "kiln/autograd/gradients.h"

#include <unordered_map>
#include <unordered_set>

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

using Partials = std::unordered_map<OutputRef, std::vector<Value>, OutputRefHash>;
using GradientMap = std::unordered_map<OutputRef, Value, OutputRefHash>;
using RefMap = std::unordered_map<OutputRef, OutputRef, OutputRefHash>;

// How an inner sweep differentiates the copies of a segment's saved nodes. The copy of a saved
// node is built (its inputs are the recomputed ones its gradient reads) but never run: the
// copies after it read the saved outputs through stand-ins, gradients reaching a stand-in go
// on to the copy, and the copy's gradient function is given the stand-ins as its outputs.
struct SavedNodes {
  RefMap copy_of_stand_in;  // stand-in for a saved output -> that output of the saved copy
  std::unordered_map<int32_t, std::vector<Value>> stand_ins;  // saved copy's id -> its outputs
};

// Whether a recompute segment builds `node` again for the backward pass. Sources (variables,
// placeholders, constants) are read, not computed, and a write to a variable must happen once;
// every other op is repeated (a random one draws as the node it repeats).
bool repeated_in_backward(const Node& node) {
  return node.op().source() == OutputSource::computed && !node.op().writes_state();
}

// One reverse sweep. Partial gradients seeded at some outputs flow down, node by node in
// decreasing id order, to `targets`, whose totals are collected. In the outer sweep (the one
// gradients() starts) a node of a recompute segment is not differentiated itself: reaching the
// segment, the sweep builds a copy of it and differentiates the copy in an inner sweep, which
// stops at the copy's inputs.
class Sweep {
 public:
  Sweep(Graph& g, const std::vector<OutputRef>& targets, int32_t top, SavedNodes saved = {})
      : g_(g),
        saved_(std::move(saved)),
        top_(top),
        lowest_(top + 1),
        from_target_(top + 1, 0),
        is_target_(top + 1, 0),
        blocks_(top + 1, 0),
        reached_from_(top + 1, -1) {
    for (OutputRef t : targets)
      if (t.node <= top) {
        from_target_[t.node] = is_target_[t.node] = 1;
        lowest_ = std::min(lowest_, t.node);
      }
    for (int32_t id = lowest_; id <= top; ++id) {
      if (from_target_[id]) continue;
      for (OutputRef in : g.node(id).inputs())
        if (from_target_[through(in).node]) {
          from_target_[id] = 1;
          break;
        }
    }
  }

  bool depends_on_target(int32_t id) const { return id <= top_ && from_target_[id]; }
  void seed(OutputRef at, const Value& dy) {
    if (depends_on_target(at.node)) partials_[at].push_back(dy);
  }

  // Runs the sweep. `only`, when given, marks the one set of nodes differentiated (an inner
  // sweep's copies); every other node is a leaf. Returns each target's total gradient.
  GradientMap run(const std::vector<char>* only = nullptr) {
    for (int32_t id = top_; id >= lowest_; --id) {
      if (!from_target_[id]) continue;
      const Node& node = g_.node(id);
      const bool in_segment = !only && node.recompute_segment() >= 0 && repeated_in_backward(node);
      if (is_target_[id] && !in_segment) {
        for (int32_t i = 0; i < node.num_outputs(); ++i)
          if (auto it = partials_.find(OutputRef{id, i}); it != partials_.end()) {
            result_[it->first] = sum_of(g_, it->second);
            it->second = {result_[it->first]};  // summed once, if the sweep goes on below
          }
      }
      if (only && !(*only)[id]) continue;
      if (in_segment) {
        if (segments_done_.insert(node.recompute_segment()).second)
          backprop_segment(node.recompute_segment(), id);
        continue;
      }
      differentiate(node);
    }
    return std::move(result_);
  }

  const std::vector<char>& blocks() const { return blocks_; }
  const std::vector<int32_t>& reached_from() const { return reached_from_; }

 private:
  // Where a gradient reaching `in` goes: to the saved copy `in` stands in for, else to `in`.
  OutputRef through(OutputRef in) const {
    auto it = saved_.copy_of_stand_in.find(in);
    return it == saved_.copy_of_stand_in.end() ? in : it->second;
  }

  // Sums the gradients that reached `node`'s outputs and passes them to its inputs through
  // the op's gradient function.
  void differentiate(const Node& node) {
    const int32_t id = node.id();
    std::vector<Value> grad_outputs(node.num_outputs());
    bool any = false;
    for (int32_t i = 0; i < node.num_outputs(); ++i) {
      auto it = partials_.find(OutputRef{id, i});
      if (it == partials_.end()) continue;
      grad_outputs[i] = sum_of(g_, it->second);
      any = true;
      partials_.erase(it);
    }
    if (!any) return;
    // Inputs that need a gradient: floating, and depending on some target.
    std::vector<int> wanted;
    bool input_from_target = false;
    for (size_t i = 0; i < node.inputs().size(); ++i) {
      OutputRef in = through(node.inputs()[i]);
      input_from_target |= from_target_[in.node] != 0;
      if (from_target_[in.node] && is_floating(g_.node(in.node).outputs()[in.index].dtype))
        wanted.push_back(static_cast<int>(i));
    }
    // Where a target's paths are cut when no gradient flows on (named in the error when a
    // target ends up without a gradient).
    if (wanted.empty() || node.op().has_no_gradient()) {
      blocks_[id] = input_from_target;
      return;
    }
    if (!node.op().grad_fn())
      throw GraphError(str("[autograd] op '", node.op_name(), "' (node '", node.name(),
                           "') has no gradient; path from y: ", path_to(g_, id, reached_from_)));
    GradList grads;
    {
      // Backward nodes are named after their node inside the "gradients/" scope (a copy made
      // for a recompute segment already carries that prefix).
      const std::string& prefix = g_.scope();
      const bool scoped = node.name().compare(0, prefix.size(), prefix) == 0;
      NameScope node_scope(g_, scoped ? node.name().substr(prefix.size()) : node.name());
      std::vector<bool> wanted_inputs(node.inputs().size(), false);
      for (int i : wanted) wanted_inputs[static_cast<size_t>(i)] = true;
      GradContext ctx(g_, node, std::move(grad_outputs), std::move(wanted_inputs));
      if (auto it = saved_.stand_ins.find(id); it != saved_.stand_ins.end())
        ctx.use_outputs(it->second);
      grads = node.op().grad_fn()(ctx);
    }
    KILN_DASSERT(grads.size() == node.inputs().size());
    bool passed = false;
    for (int i : wanted) {
      if (i >= static_cast<int>(grads.size()) || !grads[i].defined()) continue;
      OutputRef in = through(node.inputs()[i]);
      partials_[in].push_back(grads[i]);
      if (reached_from_[in.node] < 0) reached_from_[in.node] = id;
      passed = true;
    }
    if (!passed) blocks_[id] = 1;  // piecewise constant (sign, round)
  }

  // Recompute segment `segment`, reached at `top`, its highest repeated node that depends on
  // a target. Every reader outside the segment has a higher id, so the gradients at the
  // segment's outputs are complete. Builds the segment again, each input from outside read
  // through after(input, those gradients) so the copy runs only once the backward pass has
  // got here; differentiates the copy; and hands the gradients at its inputs back to this
  // sweep. No backward node reads the original nodes' outputs, so they die in the forward pass,
  // except those of the nodes the segment's policy saves: the copy reads those instead of
  // computing them again.
  void backprop_segment(int32_t segment, int32_t top) {
    int32_t first = top;
    while (first > 0 && g_.node(first - 1).recompute_segment() == segment) --first;
    for (int32_t id = 0; id < first; ++id)
      KILN_CHECK(g_.node(id).recompute_segment() != segment, GraphError,
                 "[autograd] recompute segment ", segment, " is not contiguous: node '",
                 g_.node(id).name(), "' belongs to it but '", g_.node(first - 1).name(),
                 "' does not (was the graph reordered before gradients()?)");
    // The gradients at the segment's outputs.
    std::vector<std::pair<OutputRef, Value>> seeds;
    std::vector<Value> deps;
    for (int32_t id = first; id <= top; ++id) {
      if (!repeated_in_backward(g_.node(id))) continue;
      for (int32_t i = 0; i < g_.node(id).num_outputs(); ++i) {
        auto it = partials_.find(OutputRef{id, i});
        if (it == partials_.end()) continue;
        seeds.emplace_back(it->first, sum_of(g_, it->second));
        deps.push_back(seeds.back().second);
        partials_.erase(it);
      }
    }
    if (seeds.empty()) return;

    // What the copy needs: the seeded nodes and what they are computed from inside the
    // segment. Writes to variables are not repeated, so neither is what only feeds them (a
    // batch norm's running averages).
    std::vector<char> needed(static_cast<size_t>(top - first + 1), 0);
    auto inside = [&](int32_t id) {
      return id >= first && id <= top && repeated_in_backward(g_.node(id));
    };
    for (const auto& [at, dy] : seeds) needed[static_cast<size_t>(at.node - first)] = 1;
    std::unordered_map<int32_t, int32_t> written;  // variable node -> the member writing it
    for (int32_t id = top; id >= first; --id) {
      const Node& node = g_.node(id);
      for (int index : node.op().mutated_inputs())
        written.emplace(node.inputs()[static_cast<size_t>(index)].node, id);
      if (!needed[static_cast<size_t>(id - first)]) continue;
      for (OutputRef in : node.inputs())
        if (inside(in.node)) needed[static_cast<size_t>(in.node - first)] = 1;
    }
    for (int32_t id = first; id <= top; ++id) {
      if (!needed[static_cast<size_t>(id - first)]) continue;
      for (OutputRef in : g_.node(id).inputs())
        if (auto it = written.find(in.node); it != written.end())
          throw GraphError(
              str("[recompute] '", g_.node(id).name(), "' reads variable '",
                  g_.node(in.node).name(), "', which '", g_.node(it->second).name(),
                  "' in the same recompute segment writes: the copy built for the backward pass "
                  "would read the written value. Read the variable outside the segment"));
    }

    // The copy. Its inputs from outside: variables as they are (a read of a variable through a
    // view would not order the read before the variable's update), everything else delayed: a
    // copy that read only placeholders and constants could run early, or be merged with its
    // original by common-subexpression elimination. The outputs of saved nodes are read
    // delayed too, through stand-ins (see SavedNodes).
    auto delayed_read = [&](OutputRef in) {
      std::vector<Value> after_inputs{g_.value(in)};
      after_inputs.insert(after_inputs.end(), deps.begin(), deps.end());
      return g_.add("after", after_inputs);
    };
    RefMap copy_of;
    RefMap delayed;       // input from outside -> after(input)
    RefMap stand_in_for;  // output of a saved node -> after(output)
    SavedNodes saved;
    std::vector<std::pair<OutputRef, OutputRef>> inputs_out;  // (inner target, outer value)
    auto input_of_copy = [&](OutputRef in) -> OutputRef {
      if (auto it = stand_in_for.find(in); it != stand_in_for.end()) return it->second;
      if (auto it = copy_of.find(in); it != copy_of.end()) return it->second;
      if (g_.node(in.node).op().source() == OutputSource::state) {
        if (from_target_[in.node] && !delayed.count(in)) {
          delayed[in] = in;
          inputs_out.emplace_back(in, in);
        }
        return in;
      }
      auto [it, made] = delayed.try_emplace(in);
      if (made) {
        it->second = delayed_read(in).ref();
        if (from_target_[in.node]) inputs_out.emplace_back(it->second, in);
      }
      return it->second;
    };
    {
      NameScope scope(g_, "recompute");
      for (int32_t id = first; id <= top; ++id) {
        const Node& node = g_.node(id);
        if (!needed[static_cast<size_t>(id - first)]) continue;
        std::vector<Value> inputs;
        for (OutputRef in : node.inputs()) inputs.push_back(g_.value(input_of_copy(in)));
        AttrMap attrs = node.attrs();
        if (node.op().is_random() && node.attr<std::string>("draw_as").empty())
          attrs["draw_as"] = node.name();  // the same numbers as the original
        const std::vector<Value> outs =
            g_.add_node(node.op_name(), inputs, std::move(attrs), {.name = node.name()});
        for (const Value& out : outs) copy_of[OutputRef{id, out.index()}] = out.ref();
        if (!node.recompute_saved() || outs.empty()) continue;
        std::vector<Value>& stand_ins = saved.stand_ins[outs[0].node_id()];
        for (const Value& out : outs) {
          stand_ins.push_back(delayed_read(OutputRef{id, out.index()}));
          stand_in_for[OutputRef{id, out.index()}] = stand_ins.back().ref();
          saved.copy_of_stand_in[stand_ins.back().ref()] = out.ref();
        }
      }
    }
    // Targets built inside the segment get their gradient at their copy.
    std::vector<OutputRef> inner_targets;
    for (const auto& [inner, outer] : inputs_out) inner_targets.push_back(inner);
    std::vector<std::pair<OutputRef, OutputRef>> targets_inside;  // (outer target, its copy)
    for (int32_t id = first; id <= top; ++id)
      if (is_target_[id] && needed[static_cast<size_t>(id - first)])
        for (int32_t i = 0; i < g_.node(id).num_outputs(); ++i) {
          targets_inside.emplace_back(OutputRef{id, i}, copy_of.at(OutputRef{id, i}));
          inner_targets.push_back(targets_inside.back().second);
        }

    std::vector<char> copies(static_cast<size_t>(g_.num_nodes()), 0);
    for (const auto& [original, copy] : copy_of) copies[static_cast<size_t>(copy.node)] = 1;
    Sweep inner(g_, inner_targets, g_.num_nodes() - 1, std::move(saved));
    for (const auto& [at, dy] : seeds) inner.seed(copy_of.at(at), dy);
    GradientMap grads = inner.run(&copies);
    for (const auto& [inner_ref, outer_ref] : inputs_out)
      if (auto it = grads.find(inner_ref); it != grads.end()) {
        partials_[outer_ref].push_back(it->second);
        if (reached_from_[outer_ref.node] < 0) reached_from_[outer_ref.node] = top;
      }
    for (const auto& [target, copy] : targets_inside)
      if (auto it = grads.find(copy); it != grads.end()) result_[target] = it->second;
  }

  Graph& g_;
  const SavedNodes saved_;
  int32_t top_;
  int32_t lowest_;
  std::vector<char> from_target_;  // the node depends on a target (or is one)
  std::vector<char> is_target_;
  std::vector<char> blocks_;  // a target reaches it through an input, but no gradient flows on
  std::vector<int32_t> reached_from_;  // the consumer that first passed a gradient down
  Partials partials_;
  GradientMap result_;
  std::unordered_set<int32_t> segments_done_;
};

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
  KILN_CHECK(g.open_recompute_segment() < 0, GraphError, "[autograd] gradients of ", y.name(),
             " taken inside a RecomputeScope: close the scope first (the backward nodes would "
             "join the segment)");

  std::vector<OutputRef> targets;
  for (const Value& x : xs) targets.push_back(x.ref());
  Sweep sweep(g, targets, y.node_id());
  NameScope scope(g, "gradients");
  if (sweep.depends_on_target(y.node_id()))
    sweep.seed(y.ref(),
               dy.defined() ? dy : g.add("full_like", {y}, {{"value", 1.0}}, {.name = "dy"}));
  const GradientMap result = sweep.run();

  std::vector<Value> out;
  for (const Value& x : xs) {
    if (auto it = result.find(x.ref()); it != result.end()) {
      out.push_back(it->second);
    } else if (options.materialize_unused) {
      out.push_back(g.add("full_like", {x}, {{"value", 0.0}}));
    } else if (options.allow_unused) {
      out.push_back(Value());
    } else {
      throw GraphError(str("[autograd] y '", y.name(), "' does not depend on x '", x.name(),
                           "': ", why_unused(g, x, y, sweep.blocks(), sweep.reached_from()),
                           ". Set allow_unused (undefined gradient) or materialize_unused (zeros)"
                           " in GradientOptions if that is intended"));
    }
  }
  return out;
}

std::vector<Value> recompute(const std::function<std::vector<Value>(const std::vector<Value>&)>& fn,
                             const std::vector<Value>& inputs, RecomputePolicy policy) {
  KILN_CHECK(!inputs.empty(), GraphError, "[recompute] needs at least one input");
  Graph& g = *inputs[0].graph();
  for (const Value& v : inputs)
    KILN_CHECK(v.defined() && v.graph() == &g, GraphError,
               "[recompute] every input must be a defined value of one graph");
  RecomputeScope scope(g, std::move(policy));
  return fn(inputs);
}

Value recompute(const std::function<Value(const Value&)>& fn, const Value& x,
                RecomputePolicy policy) {
  KILN_CHECK(x.defined(), GraphError, "[recompute] of an undefined Value");
  RecomputeScope scope(*x.graph(), std::move(policy));
  return fn(x);
}

RecomputePolicy save_products() {
  return [](const Node& node) { return node.op().precision_policy() == Precision::low; };
}

RecomputePolicy save_ops(const std::vector<std::string>& op_names) {
  std::unordered_set<const OpDef*> ops;
  for (const std::string& name : op_names) {
    const OpDef* op = OpRegistry::global().find(name);
    KILN_CHECK(op != nullptr, GraphError, "[recompute] save_ops: '", name,
               "' is not a registered op");
    ops.insert(op);
  }
  return [ops = std::move(ops)](const Node& node) { return ops.count(&node.op()) > 0; };
}

Value stop_gradient(const Value& x) {
  return common_graph("stop_gradient", {&x}).add("stop_gradient", {x});
}

}  // namespace kiln
