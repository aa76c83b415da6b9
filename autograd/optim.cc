#include "kiln/autograd/optim.h"

#include <cmath>
#include <set>

#include "kiln/autograd/gradients.h"
#include "kiln/autograd/optim_state.h"
#include "kiln/ops/array.h"
#include "kiln/ops/math.h"
#include "kiln/ops/state.h"

namespace kiln::optim {

Value global_step(Graph& graph) {
  if (const Node* node = graph.find_node("global_step")) {
    KILN_CHECK(node->op().source() == OutputSource::state, GraphError,
               "[optim] the node 'global_step' is not a variable");
    return graph.value("global_step");
  }
  return graph.variable("global_step", Shape{}, init::zeros(), i64, /*trainable=*/false);
}

Value state_variable(Graph& graph, const std::string& name, DType dtype, const Shape& shape,
                     double initial, bool persistent, bool rank_local) {
  return graph.add(
      "variable", {},
      {{"dtype", dtype},
       {"shape", shape},
       {"init", std::string(initial == 0 ? "zeros" : "constant")},
       {"init_args", initial == 0 ? std::vector<double>{} : std::vector<double>{initial}},
       {"seed", int64_t{0}},
       {"trainable", false},
       {"persistent", persistent},
       {"rank_local", rank_local}},
      {.name = name, .exact_name = true, .absolute_name = true});
}

Value assign_unless_skipped(const Value& state, const Value& moved, const Value& apply_if) {
  return assign(state, apply_if.defined() ? where(apply_if, moved, state) : moved);
}

std::vector<ParamGroup> decay_matrices_only(const std::vector<Value>& variables) {
  ParamGroup decayed, kept{.weight_decay = 0.0};
  for (const Value& v : variables) (v.shape().rank() >= 2 ? decayed : kept).variables.push_back(v);
  std::vector<ParamGroup> groups;
  for (ParamGroup* group : {&decayed, &kept})
    if (!group->variables.empty()) groups.push_back(std::move(*group));
  return groups;
}

std::vector<Value> clip_by_value(const std::vector<Value>& grads, double limit) {
  KILN_CHECK(limit > 0, GraphError, "[optim] clip_by_value needs a limit > 0, got ", limit);
  std::vector<Value> out;
  for (const Value& g : grads) out.push_back(minimum(maximum(g, -limit), limit));
  return out;
}

namespace {

// The p-norm of every element of `grads` together, in `acc` (p = norm_type; INFINITY: the
// largest |g|). With `over_ranks`, `grads` are this rank's share and the norm is of every
// rank's: the sums of |g|^p (or the maxima) are combined before the root.
Value global_norm(const std::vector<Value>& grads, double norm_type, DType acc,
                  const OverRanks* over_ranks, Graph& graph) {
  // Each gradient's share: sum |g|^p (p = 2: g^2; p = 1: |g|), or max |g| for p = inf.
  const bool largest = std::isinf(norm_type);
  std::vector<Value> parts;
  for (const Value& gradient : grads) {
    // 16-bit gradients widened first: their squares and powers overflow early.
    const Value g =
        gradient.dtype() == f32 || gradient.dtype() == f64 ? gradient : cast(gradient, f32);
    Value magnitude = norm_type == 2 ? Value() : abs(g);
    parts.push_back(cast(largest          ? max(magnitude)
                         : norm_type == 2 ? sum(square(g))
                         : norm_type == 1 ? sum(magnitude)
                                          : sum(pow(magnitude, norm_type)),
                         acc));
  }
  Value total = parts.empty() ? graph.scalar(0, acc) : parts[0];  // |g| >= 0: 0 is neutral
  for (size_t i = 1; largest && i < parts.size(); ++i) total = maximum(total, parts[i]);
  if (!largest && parts.size() > 1) total = add_n(parts);
  if (over_ranks) total = largest ? over_ranks->max(total) : over_ranks->sum(total);
  if (largest || norm_type == 1) return total;
  return norm_type == 2 ? sqrt(total) : pow(total, 1 / norm_type);
}

// The gradients scaled by min(1, max_norm / (norm + 1e-6)), as torch.nn.utils.clip_grad_norm_.
std::vector<Value> clip_to_norm(const std::vector<Value>& grads, double max_norm,
                                const Value& norm) {
  Graph& graph = *norm.graph();
  const DType acc = norm.dtype();
  Value scale = minimum(graph.scalar(max_norm, acc) / (norm + 1e-6), graph.scalar(1, acc));
  std::vector<Value> out;
  for (const Value& g : grads) out.push_back(g * cast(scale, g.dtype()));
  return out;
}

void check_clip_norm(double max_norm, double norm_type) {
  KILN_CHECK(max_norm > 0, GraphError, "[optim] max_norm must be > 0, got ", max_norm);
  KILN_CHECK(norm_type > 0, GraphError,
             "[optim] clip_by_global_norm needs a norm_type > 0 (or INFINITY), got ", norm_type);
}

// f64 where some gradient is f64, else f32: the dtype a norm over `values` is computed in.
DType norm_dtype(const std::vector<Value>& values) {
  for (const Value& v : values)
    if (v.dtype() == f64) return f64;
  return f32;
}

}  // namespace

std::vector<Value> clip_by_global_norm(const std::vector<Value>& grads, double max_norm,
                                       Value* norm, double norm_type) {
  KILN_CHECK(!grads.empty(), GraphError, "[optim] clip_by_global_norm of no gradients");
  check_clip_norm(max_norm, norm_type);
  Value total = global_norm(grads, norm_type, norm_dtype(grads), nullptr, *grads[0].graph());
  if (norm) *norm = total;
  return clip_to_norm(grads, max_norm, total);
}

Value Optimizer::slot(const Value& var, const std::string& suffix, double initial) const {
  // Named after the variable wherever minimize() was called from: "dense1/w/adam_m".
  return state_variable(*var.graph(), var.node().name() + "/" + state_name(suffix), var.dtype(),
                        var.shape(), initial, /*persistent=*/true, slots_rank_local_);
}

Value Optimizer::shaped_slot(const Value& var, const std::string& suffix,
                             const Shape& shape) const {
  return state_variable(*var.graph(), var.node().name() + "/" + state_name(suffix), var.dtype(),
                        shape, 0, /*persistent=*/true, slots_rank_local_);
}

void Optimizer::refuse_cycled_momentum(const char* optimizer) const {
  KILN_CHECK(!momentum_now_.defined(), GraphError, "[optim] ", optimizer,
             " has no momentum for the schedule to cycle; set the schedule's cycle_momentum = "
             "false");
}

void Optimizer::check_group_fields(const ParamGroup& group, size_t index, const char* optimizer,
                                   unsigned readable) const {
  const bool cycled = schedule_.cycles_momentum();
  auto check = [&](const std::optional<double>& value, GroupField field, const char* what,
                   bool below_one, bool momentum) {
    if (!value) return;
    KILN_CHECK(readable & field, GraphError, "[optim] parameter group ", index, " sets ", what,
               ", which ", optimizer, " has not");
    KILN_CHECK(*value >= 0 && (!below_one || *value < 1), GraphError, "[optim] parameter group ",
               index, ": ", what, " must be ", below_one ? "in [0, 1)" : ">= 0", ", got ", *value);
    KILN_CHECK(!momentum || !cycled, GraphError, "[optim] parameter group ", index, " sets ", what,
               ", which the schedule cycles (cycle_momentum): set one or the other");
  };
  check(group.momentum, kMomentum, "momentum", false, true);
  check(group.beta1, kBeta1, "beta1", true, true);
  check(group.beta2, kBeta2, "beta2", true, false);
  check(group.eps, kEps, "eps", false, false);
}

Optimizer& Optimizer::named(std::string name) {
  KILN_CHECK(!name.empty() && name.front() != '/' && name.back() != '/', GraphError,
             "[optim] an optimizer's name must be non-empty and not begin or end with '/', got '",
             name, "'");
  name_ = std::move(name);
  return *this;
}

Value Optimizer::step_counter(Graph& graph) const {
  if (name_.empty()) return global_step(graph);
  if (graph.find_node(state_name("step"))) return graph.value(state_name("step"));
  return state_variable(graph, state_name("step"), i64, Shape{}, 0);
}

Optimizer& Optimizer::with_param_groups(std::vector<ParamGroup> groups) {
  KILN_CHECK(!groups.empty(), GraphError, "[optim] with_param_groups of no groups");
  std::set<std::string> seen;
  for (size_t i = 0; i < groups.size(); ++i) {
    const ParamGroup& group = groups[i];
    KILN_CHECK(!group.variables.empty(), GraphError, "[optim] parameter group ", i,
               " has no variables");
    KILN_CHECK(!group.lr || *group.lr > 0, GraphError, "[optim] parameter group ", i,
               ": learning rate must be > 0, got ", group.lr.value_or(0));
    check_group(group, i);
    for (const Value& v : group.variables) {
      KILN_CHECK(v.defined() && v.node().op().source() == OutputSource::state, GraphError,
                 "[optim] parameter group ", i, ": ", v.defined() ? v.name() : std::string("?"),
                 " is not a variable");
      KILN_CHECK(seen.insert(v.name()).second, GraphError, "[optim] ", v.name(),
                 " is in two parameter groups (the second is group ", i, ")");
    }
  }
  groups_ = std::move(groups);
  return *this;
}

Value Optimizer::minimize(const Value& loss, std::vector<Value> vars) {
  if (!maximize_) return apply(compute_gradients(loss, std::move(vars)), false);
  // Ascent: every gradient rule is linear in the incoming gradient, and negation is exact, so
  // the gradients of -loss are the negated gradients bit for bit; unlike negating each one
  // after, this keeps a weight gradient's product foldable into its update (matmul_epilogue).
  KILN_CHECK(loss.defined(), GraphError, "[optim] minimize of an undefined loss");
  return apply(compute_gradients(-loss, std::move(vars)), false);
}

namespace {
// The loss scale S of a graph (made on first use).
Value loss_scale_variable(Graph& graph, const LossScaleOptions& options) {
  if (graph.find_node("loss_scale")) return graph.value("loss_scale");
  return graph.variable("loss_scale", {}, init::constant(options.initial), f32,
                        /*trainable=*/false);
}
}  // namespace

std::vector<GradientAndVariable> Optimizer::compute_gradients(const Value& loss,
                                                              std::vector<Value> vars) {
  KILN_CHECK(loss.defined(), GraphError, "[optim] minimize of an undefined loss");
  Graph& graph = *loss.graph();
  if (vars.empty())
    for (const ParamGroup& group : groups_)
      vars.insert(vars.end(), group.variables.begin(), group.variables.end());
  if (vars.empty()) vars = graph.variables(/*trainable_only=*/true);
  KILN_CHECK(!vars.empty(), GraphError, "[optim] the graph has no trainable variables");
  for (const Value& v : vars)
    KILN_CHECK(v.graph() == &graph && v.node().op().source() == OutputSource::state, GraphError,
               "[optim] ", v.name(), " is not a variable of the loss's graph");
  KILN_CHECK(loss.shape().rank() == 0 || (loss.shape().is_known() && loss.shape().numel() == 1),
             GraphError, "[optim] the loss must be a scalar, got ", loss.shape(),
             " (take its mean or sum)");
  // Variables the loss does not depend on get no update (as PyTorch's optimizers skip
  // parameters whose gradient is None): momentum and weight decay leave them alone.
  const GradientOptions allow{.allow_unused = true};
  std::vector<Value> grads;
  if (scaling_) {
    Value scale = loss_scale_variable(graph, loss_scale_);
    grads = gradients(loss * cast(scale, loss.dtype()), vars, allow);
    NameScope scope(graph, "loss_scaling");
    for (Value& g : grads)
      if (g.defined()) g = g / cast(scale, g.dtype());
  } else {
    grads = gradients(loss, vars, allow);
  }
  std::vector<GradientAndVariable> pairs;
  for (size_t i = 0; i < vars.size(); ++i)
    if (grads[i].defined()) pairs.push_back({grads[i], vars[i]});
  KILN_CHECK(!pairs.empty(), GraphError, "[optim] the loss ", loss.name(),
             " depends on none of the ", vars.size(),
             " variables to train (first: ", vars[0].name(), ")");
  return pairs;
}

Value Optimizer::apply_gradients(const std::vector<GradientAndVariable>& pairs) {
  return apply(pairs, maximize_);
}

Value Optimizer::apply_gradients(const std::vector<GradientAndVariable>& pairs,
                                 const std::vector<bool>& owned) {
  KILN_CHECK(owned.size() == pairs.size(), GraphError, "[optim] apply_gradients: ", owned.size(),
             " ownership flags for ", pairs.size(), " gradients");
  return apply(pairs, maximize_, owned);
}

Value Optimizer::apply_gradients(const std::vector<GradientAndVariable>& pairs,
                                 const std::vector<bool>& owned, const OverRanks& over_ranks) {
  KILN_CHECK(owned.size() == pairs.size(), GraphError, "[optim] apply_gradients: ", owned.size(),
             " ownership flags for ", pairs.size(), " gradients");
  KILN_CHECK(over_ranks.sum && over_ranks.max, GraphError,
             "[optim] apply_gradients of sharded gradients needs both of over_ranks' functions");
  KILN_CHECK(micro_batches_ == 1, GraphError, "[optim] the optimizer accumulates ", micro_batches_,
             " micro-batches (with_gradient_accumulation), but each rank holds only its share of "
             "the gradients: accumulate before they are sharded (data_parallel's "
             "accumulation_steps)");
  return apply(pairs, maximize_, owned, &over_ranks);
}

Value Optimizer::apply(const std::vector<GradientAndVariable>& pairs, bool negate,
                       const std::vector<bool>& owned, const OverRanks* over_ranks) {
  KILN_CHECK(!pairs.empty(), GraphError, "[optim] apply_gradients of no gradients");
  Graph& graph = *pairs[0].variable.graph();
  std::vector<Value> grads, vars;
  for (size_t i = 0; i < pairs.size(); ++i) {
    const GradientAndVariable& p = pairs[i];
    if (over_ranks && !owned[i]) {  // another rank holds this gradient
      KILN_CHECK(p.variable.defined() && p.variable.graph() == &graph, GraphError,
                 "[optim] apply_gradients: a variable is undefined or of another graph");
      grads.emplace_back();
      vars.push_back(p.variable);
      continue;
    }
    KILN_CHECK(p.variable.defined() && p.variable.graph() == &graph &&
                   p.variable.node().op().source() == OutputSource::state,
               GraphError, "[optim] apply_gradients: ",
               p.variable.defined() ? p.variable.name() : std::string("?"),
               " is not a variable of the graph");
    KILN_CHECK(p.gradient.defined() && p.gradient.graph() == &graph, GraphError,
               "[optim] apply_gradients: the gradient of ", p.variable.name(),
               " is undefined or from another graph");
    KILN_CHECK(p.gradient.dtype() == p.variable.dtype() &&
                   p.gradient.shape().compatible_with(p.variable.shape()),
               GraphError, "[optim] apply_gradients: the gradient of ", p.variable.name(), " is ",
               p.gradient.dtype(), p.gradient.shape(), ", the variable ", p.variable.dtype(),
               p.variable.shape());
    grads.push_back(p.gradient);
    vars.push_back(p.variable);
  }
  Value step = step_counter(graph);
  std::vector<Value> updates;
  steps_now_ = {};
  if (micro_batches_ > 1) {
    // Sum this run's gradients into the accumulators; the run that completes the count steps
    // with their mean and clears them.
    const double count_to = static_cast<double>(micro_batches_);
    Value count = state_variable(graph, state_name("accumulated_micro_batches"), i64, Shape{}, 0);
    NameScope scope(graph, "gradient_accumulation");
    Value counted = count + graph.scalar(1, i64);
    steps_now_ = equal(counted, graph.scalar(count_to, i64));
    updates.push_back(assign(count, where(steps_now_, graph.scalar(0, i64), counted)));
    for (size_t i = 0; i < grads.size(); ++i) {
      Value sum = slot(vars[i], "grad_sum");
      Value total = sum + grads[i];
      updates.push_back(assign(sum, where(steps_now_, 0.0, total)));
      grads[i] = total / count_to;
    }
  }
  Value apply_if = steps_now_;  // with accumulation, this run steps; with loss scaling, and
                                // the gradients are finite
  if (scaling_) {
    Value scale = loss_scale_variable(graph, loss_scale_);
    Value good = graph.find_node("loss_scale_good_steps")
                     ? graph.value("loss_scale_good_steps")
                     : graph.variable("loss_scale_good_steps", {}, init::zeros(), i64, false);
    NameScope scope(graph, "loss_scaling");
    // One overflow check over all of them: inf * 0 and NaN * 0 are NaN, so the sum of g * 0
    // is NaN exactly when some element of some g is not finite.
    std::vector<Value> probes;
    for (const Value& g : grads)
      if (g.defined()) probes.push_back(cast(sum(g * 0.0), f32));
    Value probe = probes.empty()       ? graph.scalar(0, f32)
                  : probes.size() == 1 ? probes[0]
                                       : add_n(probes);
    if (over_ranks) probe = over_ranks->sum(probe);  // NaN on every rank if NaN on any
    Value finite = equal(probe, probe);
    // S grows after growth_interval good steps in a row, shrinks at every overflow.
    Value next_good = good + graph.scalar(1, i64);
    Value grow =
        equal(next_good, graph.scalar(static_cast<double>(loss_scale_.growth_interval), i64));
    Value new_scale =
        where(finite, where(grow, scale * loss_scale_.growth, scale), scale * loss_scale_.backoff);
    Value new_good =
        where(finite, where(grow, graph.scalar(0, i64), next_good), graph.scalar(0, i64));
    if (steps_now_.defined()) {  // the scale adapts once per step, as GradScaler.update()
      new_scale = where(steps_now_, new_scale, scale);
      new_good = where(steps_now_, new_good, good);
      apply_if = where(steps_now_, finite, 0.0);
    } else {
      apply_if = finite;
    }
    updates.push_back(assign(scale, new_scale));
    updates.push_back(assign(good, new_good));
  }
  NameScope scope(graph, "optimizer");
  // With sharded gradients only this rank's are defined; the transforms apply to those.
  std::vector<Value> held;
  for (const Value& g : grads)
    if (g.defined()) held.push_back(negate ? -g : g);
  if (clip_value_ > 0) held = clip_by_value(held, clip_value_);
  if (clip_norm_ > 0) {
    check_clip_norm(clip_norm_, clip_norm_type_);
    // The norm's dtype from every variable, so that the ranks combine alike.
    const Value norm = global_norm(held, clip_norm_type_, norm_dtype(vars), over_ranks, graph);
    held = clip_to_norm(held, clip_norm_, norm);
  }
  for (size_t i = 0, h = 0; i < grads.size(); ++i)
    if (grads[i].defined()) grads[i] = held[h++];
  momentum_now_ = scheduled_momentum(graph, schedule_, step);
  for (Value& advance : prepare_step(graph, step, apply_if)) updates.push_back(advance);
  // Each variable's group (none: the optimizer's own settings); one schedule per rate and dtype.
  std::map<std::string, const ParamGroup*> group_of;
  for (const ParamGroup& group : groups_)
    for (const Value& v : group.variables) group_of[v.name()] = &group;
  std::map<std::pair<DType, double>, Value> lr_by_dtype_and_rate;
  const Value rate_step = schedule_step(step);
  updated_.clear();
  // With a shard of the variables, the slots the updates make exist on this rank only.
  slots_rank_local_ = !owned.empty();
  for (size_t i = 0; i < vars.size(); ++i) {
    const ParamGroup* group = nullptr;
    if (!groups_.empty()) {
      auto found = group_of.find(vars[i].name());
      KILN_CHECK(found != group_of.end(), GraphError, "[optim] apply_gradients: ", vars[i].name(),
                 " is in none of the ", groups_.size(), " parameter groups");
      group = found->second;
    }
    const double base_lr = group && group->lr ? *group->lr : lr_;
    GroupSettings settings{.weight_decay = weight_decay()};
    if (group) {
      settings = {group->weight_decay.value_or(weight_decay()), group->momentum, group->beta1,
                  group->beta2, group->eps};
    }
    // Every rank makes the same schedule state, whichever variables it updates.
    Value& lr = lr_by_dtype_and_rate[{vars[i].dtype(), base_lr}];
    if (!lr.defined()) lr = learning_rate(graph, base_lr, schedule_, rate_step, vars[i].dtype());
    if (!owned.empty() && !owned[i]) continue;  // another rank updates it
    updates.push_back(update(vars[i], grads[i], lr, step, settings, apply_if));
    updated_[vars[i].name()] = updates.back();
  }
  slots_rank_local_ = false;
  // A skipped step does not count.
  updates.push_back(
      assign_add(step, apply_if.defined() ? cast(apply_if, i64) : graph.scalar(1, i64)));
  return group(graph, updates);
}

Optimizer& Optimizer::with_gradient_accumulation(int64_t micro_batches) {
  KILN_CHECK(micro_batches >= 1, GraphError,
             "[optim] gradient accumulation needs micro_batches >= 1, got ", micro_batches);
  micro_batches_ = micro_batches;
  return *this;
}

Value Optimizer::updated(const Value& variable) const {
  auto found = updated_.find(variable.name());
  return found == updated_.end() ? Value{} : found->second;
}

void Optimizer::set_updated(const Value& variable, const Value& value) {
  KILN_CHECK(variable.defined() && value.defined() && value.graph() == variable.graph() &&
                 value.dtype() == variable.dtype() && value.shape() == variable.shape(),
             GraphError, "[optim] set_updated: the value must be of the variable's graph, dtype ",
             "and shape");
  updated_[variable.name()] = value;
}

ExponentialMovingAverage::ExponentialMovingAverage(double decay, bool warmup, std::string name)
    : decay_(decay), warmup_(warmup), name_(std::move(name)) {
  KILN_CHECK(decay >= 0 && decay <= 1, GraphError,
             "[optim] ExponentialMovingAverage needs 0 <= decay <= 1, got ", decay);
  KILN_CHECK(!name_.empty(), GraphError, "[optim] ExponentialMovingAverage needs a name");
}

ExponentialMovingAverage::ExponentialMovingAverage(std::string name, bool equal)
    : decay_(0), warmup_(false), equal_(equal), name_(std::move(name)) {
  KILN_CHECK(!name_.empty(), GraphError, "[optim] StochasticWeightAveraging needs a name");
}

Value ExponentialMovingAverage::apply(Graph& graph, std::vector<Value> variables,
                                      const Optimizer* trained_by) {
  KILN_CHECK(shadows_.empty(), GraphError, "[optim] ", kind(), " '", name_,
             "' was already applied; make one per set of variables");
  if (variables.empty()) variables = graph.variables(/*trainable_only=*/true);
  KILN_CHECK(!variables.empty(), GraphError, "[optim] ", kind(), " of no variables");
  Value count = state_variable(graph, name_ + "/num_updates", i64, Shape{}, 0);
  const Value steps = trained_by ? trained_by->steps_now() : Value();  // undefined: every run
  NameScope scope(graph, name_);
  Value first = equal(count, graph.scalar(0, i64));
  // In f64, cast to each variable's dtype: the shadow's weight (decay), or for the equal
  // average the new weights' 1 / (n + 1) (shadow + (var - shadow) / (n + 1), torch's lerp).
  Value rate = graph.scalar(decay_, f64);
  if (equal_) rate = 1.0 / (cast(count, f64) + 1.0);
  if (warmup_) {
    Value n = cast(count, f64);
    rate = minimum(rate, (n + 1.0) / (n + 10.0));
  }
  std::vector<Value> moves;
  for (const Value& var : variables) {
    KILN_CHECK(
        var.defined() && var.graph() == &graph && var.node().op().source() == OutputSource::state,
        GraphError, "[optim] ", kind(), ": ", var.defined() ? var.name() : std::string("?"),
        " is not a variable of the graph");
    KILN_CHECK(is_floating(var.dtype()), GraphError, "[optim] ", kind(), ": ", var.name(), " is ",
               var.dtype(), ", not floating point");
    Value shadow =
        state_variable(graph, var.node().name() + "/" + name_, var.dtype(), var.shape(), 0);
    Value current =
        trained_by && trained_by->updated(var).defined() ? trained_by->updated(var) : var;
    Value d = cast(rate, var.dtype());
    Value moved =
        where(first, current,
              equal_ ? shadow + (current - shadow) * d : shadow * d + current * (1.0 - d));
    // Under gradient accumulation the average moves only in the runs that step.
    if (steps.defined()) moved = where(steps, moved, shadow);
    moves.push_back(assign(shadow, moved));
    shadows_.emplace_back(var, shadow);
  }
  moves.push_back(assign_add(count, steps.defined() ? cast(steps, i64) : graph.scalar(1, i64)));
  return group(graph, moves);
}

Value ExponentialMovingAverage::average(const Value& variable) const {
  for (const auto& [var, shadow] : shadows_)
    if (var.name() == variable.name()) return shadow;
  throw GraphError(str("[optim] ", kind(), " '", name_, "' has no average of ",
                       variable.defined() ? variable.name() : std::string("?")));
}

Value ExponentialMovingAverage::copy_to_variables() const {
  KILN_CHECK(!shadows_.empty(), GraphError, "[optim] ", kind(), " '", name_,
             "': copy_to_variables before apply");
  std::vector<Value> copies;
  for (const auto& [var, shadow] : shadows_) copies.push_back(assign(var, shadow));
  return group(*shadows_[0].first.graph(), copies);
}

Value ExponentialMovingAverage::swap_in_averages() {
  KILN_CHECK(!shadows_.empty(), GraphError, "[optim] ", kind(), " '", name_,
             "': swap_in_averages before apply");
  Graph& graph = *shadows_[0].first.graph();
  if (backups_.empty())
    for (const auto& [var, shadow] : shadows_)
      backups_.push_back(state_variable(graph, var.node().name() + "/" + name_ + "_backup",
                                        var.dtype(), var.shape(), 0, /*persistent=*/false));
  // The planner runs each backup's read of var before var's overwrite in the same run.
  std::vector<Value> swaps;
  for (size_t i = 0; i < shadows_.size(); ++i) {
    swaps.push_back(assign(backups_[i], shadows_[i].first));
    swaps.push_back(assign(shadows_[i].first, shadows_[i].second));
  }
  return group(graph, swaps);
}

Value ExponentialMovingAverage::restore_weights() const {
  KILN_CHECK(!backups_.empty(), GraphError, "[optim] ", kind(), " '", name_,
             "': restore_weights needs swap_in_averages first");
  std::vector<Value> restores;
  for (size_t i = 0; i < shadows_.size(); ++i)
    restores.push_back(assign(shadows_[i].first, backups_[i]));
  return group(*shadows_[0].first.graph(), restores);
}

SGD::SGD(SGDOptions options) : Optimizer(options), options_(options) {
  KILN_CHECK(options.dampening >= 0 && options.dampening <= 1, GraphError,
             "[optim] SGD needs 0 <= dampening <= 1, got ", options.dampening);
  KILN_CHECK(!options.nesterov || options.dampening == 0, GraphError,
             "[optim] SGD with Nesterov momentum needs dampening 0, got ", options.dampening);
}

Value SGD::update(const Value& var, const Value& grad, const Value& lr, const Value& step,
                  const GroupSettings& group, const Value& apply_if) {
  // Without momentum there is no buffer: var stands in for it and is not touched as one.
  const double momentum = group.momentum.value_or(options_.momentum);
  const bool has_momentum = momentum != 0 || momentum_now().defined();
  Value buf = has_momentum ? slot(var, "momentum") : var;
  return sgd_update(var, buf, grad, lr, momentum, options_.nesterov, group.weight_decay, apply_if,
                    momentum_now(), options_.dampening, step);
}

void SGD::check_group(const ParamGroup& group, size_t index) const {
  check_group_fields(group, index, "SGD", kMomentum);
  KILN_CHECK(!options_.nesterov || group.momentum.value_or(1) > 0, GraphError,
             "[optim] parameter group ", index, ": Nesterov momentum needs a momentum > 0, got 0");
}

AdamFamilyOptimizer::AdamFamilyOptimizer(AdamOptions options, bool decoupled, const char* name,
                                         bool allows_amsgrad)
    : Optimizer(options), options_(options), decoupled_(decoupled), name_(name) {
  KILN_CHECK(allows_amsgrad || !options.amsgrad, GraphError, "[optim] ", name,
             " has no amsgrad variant (Adam and AdamW do)");
}

Value Adam::update(const Value& var, const Value& grad, const Value& lr, const Value& step,
                   const GroupSettings& group, const Value& apply_if) {
  Value m = slot(var, "adam_m");  // made in this order, whatever the compiler's argument order
  Value v = slot(var, "adam_v");
  if (options_.amsgrad)
    return amsgrad_update(var, m, v, slot(var, "adam_v_max"), grad, lr, step,
                          hyperparameters(group), apply_if, momentum_now());
  const AdamHyperparameters h = hyperparameters(group);
  return adam_update(var, m, v, grad, lr, step, h.beta1, h.beta2, h.eps, h.weight_decay, decoupled_,
                     apply_if, momentum_now());
}

Value Adamax::update(const Value& var, const Value& grad, const Value& lr, const Value& step,
                     const GroupSettings& group, const Value& apply_if) {
  Value m = slot(var, "adamax_m");
  Value u = slot(var, "adamax_u");
  return adamax_update(var, m, u, grad, lr, step, hyperparameters(group), apply_if, momentum_now());
}

Value RAdam::update(const Value& var, const Value& grad, const Value& lr, const Value& step,
                    const GroupSettings& group, const Value& apply_if) {
  Value m = slot(var, "radam_m");
  Value v = slot(var, "radam_v");
  return radam_update(var, m, v, grad, lr, step, hyperparameters(group), apply_if, momentum_now());
}

NAdam::NAdam(AdamOptions options, double momentum_decay, bool decoupled_weight_decay)
    : AdamFamilyOptimizer(options, decoupled_weight_decay, "NAdam", false),
      momentum_decay_(momentum_decay) {
  group_beta1_ = false;
  KILN_CHECK(momentum_decay >= 0, GraphError, "[optim] NAdam needs momentum_decay >= 0, got ",
             momentum_decay);
}

std::vector<Value> NAdam::prepare_step(Graph& graph, const Value& step, const Value& apply_if) {
  const std::string name = state_name("nadam_mu_product");
  KILN_CHECK(!graph.find_node(name), GraphError,
             "[optim] the graph already has a NAdam update (its variable ", name,
             "); train several variable sets with one NAdam and parameter groups, or name each "
             "NAdam (named())");
  Value product = state_variable(graph, name, f64, Shape{}, 1);
  // mu_t = b1 (1 - 0.5 0.96^(t psi)) at t = step + 1, in f64 as torch's Python floats.
  Value t = cast(step, f64) + 1.0;
  // beta1 is this step's where the schedule cycles it.
  Value beta1 = momentum_now().defined() ? momentum_now() : graph.scalar(options_.beta1, f64);
  Value mu = beta1 * (1.0 - 0.5 * pow(0.96, t * momentum_decay_));
  mu_product_ = product * mu;
  return {assign_unless_skipped(product, mu_product_, apply_if)};
}

Value NAdam::update(const Value& var, const Value& grad, const Value& lr, const Value& step,
                    const GroupSettings& group, const Value& apply_if) {
  Value m = slot(var, "nadam_m");
  Value v = slot(var, "nadam_v");
  return nadam_update(var, m, v, grad, lr, step, mu_product_, hyperparameters(group),
                      momentum_decay_, apply_if, momentum_now());
}

Adagrad::Adagrad(AdagradOptions options) : Optimizer(options), options_(options) {
  KILN_CHECK(options.lr_decay >= 0 && options.initial_accumulator_value >= 0, GraphError,
             "[optim] Adagrad needs lr_decay >= 0 and initial_accumulator_value >= 0, got ",
             options.lr_decay, " and ", options.initial_accumulator_value);
}

Value Adagrad::update(const Value& var, const Value& grad, const Value& lr, const Value& step,
                      const GroupSettings& group, const Value& apply_if) {
  refuse_cycled_momentum("Adagrad");
  return adagrad_update(var, slot(var, "adagrad_sum", options_.initial_accumulator_value), grad, lr,
                        step, options_.lr_decay, group.eps.value_or(options_.eps),
                        group.weight_decay, apply_if);
}

Adadelta::Adadelta(AdadeltaOptions options) : Optimizer(options), options_(options) {
  KILN_CHECK(options.rho >= 0 && options.rho <= 1 && options.eps >= 0, GraphError,
             "[optim] Adadelta needs rho in [0, 1] and eps >= 0, got rho ", options.rho,
             " and eps ", options.eps);
}

Value Adadelta::update(const Value& var, const Value& grad, const Value& lr, const Value&,
                       const GroupSettings& group, const Value& apply_if) {
  refuse_cycled_momentum("Adadelta");
  return adadelta_update(var, slot(var, "adadelta_square_avg"), slot(var, "adadelta_acc_delta"),
                         grad, lr, options_.rho, group.eps.value_or(options_.eps),
                         group.weight_decay, apply_if);
}

RMSProp::RMSProp(RMSPropOptions options) : Optimizer(options), options_(options) {}

Value RMSProp::update(const Value& var, const Value& grad, const Value& lr, const Value& step,
                      const GroupSettings& group, const Value& apply_if) {
  const double momentum = group.momentum.value_or(options_.momentum);
  const double eps = group.eps.value_or(options_.eps);
  const bool has_momentum = momentum != 0 || momentum_now().defined();
  if (!has_momentum && !options_.centered)
    return rmsprop_update(var, slot(var, "rms"), grad, lr, options_.alpha, eps, group.weight_decay,
                          apply_if);
  // Only the slots the variant keeps: var stands in for the others, which the update leaves.
  Value sq = slot(var, "rms");
  Value grad_avg = options_.centered ? slot(var, "rms_grad_avg") : var;
  Value buf = has_momentum ? slot(var, "rms_momentum") : var;
  return rmsprop_momentum_update(var, sq, grad_avg, buf, grad, lr, step, options_.alpha, eps,
                                 group.weight_decay, momentum, options_.centered, apply_if,
                                 momentum_now());
}

Rprop::Rprop(RpropOptions options) : Optimizer(options), options_(options) {
  KILN_CHECK(0 < options.eta_minus && options.eta_minus < 1 && options.eta_plus > 1, GraphError,
             "[optim] Rprop needs 0 < eta_minus < 1 < eta_plus, got ", options.eta_minus, " and ",
             options.eta_plus);
  KILN_CHECK(0 <= options.step_size_min && options.step_size_min <= options.step_size_max,
             GraphError, "[optim] Rprop needs 0 <= step_size_min <= step_size_max, got ",
             options.step_size_min, " and ", options.step_size_max);
}

Value Rprop::update(const Value& var, const Value& grad, const Value& lr, const Value& step,
                    const GroupSettings& group, const Value& apply_if) {
  refuse_cycled_momentum("Rprop");
  KILN_CHECK(group.weight_decay == 0, GraphError, "[optim] Rprop has no weight decay; ", var.name(),
             "'s parameter group sets ", group.weight_decay);
  Value prev = slot(var, "rprop_prev");
  Value step_size = slot(var, "rprop_step_size");
  return rprop_update(var, prev, step_size, grad, lr, step, options_.eta_minus, options_.eta_plus,
                      options_.step_size_min, options_.step_size_max, apply_if);
}

ASGD::ASGD(ASGDOptions options) : Optimizer(options), options_(options) {
  KILN_CHECK(options.lambd >= 0 && options.alpha >= 0, GraphError,
             "[optim] ASGD needs lambd >= 0 and alpha >= 0, got ", options.lambd, " and ",
             options.alpha);
}

Value ASGD::update(const Value& var, const Value& grad, const Value& lr, const Value& step,
                   const GroupSettings& group, const Value& apply_if) {
  refuse_cycled_momentum("ASGD");
  return asgd_update(var, slot(var, "asgd_ax"), grad, lr, step, options_.lambd, options_.alpha,
                     options_.t0, group.weight_decay, apply_if);
}

Value ASGD::schedule_step(const Value& step) const {
  // torch's ASGD computes the step size eta at the end of each step from that step's rate and
  // uses it in the next: step t's update reads the rate of step t - 1 (step 0's, its own).
  Graph& graph = *step.graph();
  return maximum(step - graph.scalar(1, i64), graph.scalar(0, i64));
}

Value ASGD::average(const Value& variable) const {
  KILN_CHECK(variable.defined(), GraphError, "[optim] ASGD::average of an undefined value");
  const std::string name = variable.node().name() + "/" + state_name("asgd_ax");
  KILN_CHECK(variable.graph()->find_node(name), GraphError, "[optim] ASGD has no average of ",
             variable.name(), " (no ", name, "): minimize must train it first");
  return variable.graph()->value(name);
}

}  // namespace kiln::optim
