// Optimizers as graph ops: minimize(loss) adds gradients, fused update ops and a step counter
// to the graph and returns one train target. Everything lands in the graph, so a saved
// training graph trains without the code that built it.
#pragma once

#include <functional>
#include <map>
#include <optional>
#include <string>
#include <vector>

#include "kiln/framework/graph.h"
#include "kiln/ops/state.h"

namespace kiln::optim {

/// A learning-rate schedule, evaluated inside the graph from the step counter t (0-based), as
/// the torch.optim.lr_scheduler of the same name stepped once per optimizer step. Each factor
/// scales every parameter group's own learning rate alike.
struct Schedule {
  enum class Kind {
    constant,
    step_decay,
    multi_step,
    exponential,
    linear,
    polynomial,
    cosine,
    one_cycle,
    reduce_on_plateau,
    sequential,
    cosine_restarts,
    cyclic,
    custom,
    constant_factor,
    chained,
    swa
  };
  /// How a cyclic schedule's height changes from cycle to cycle (CyclicLR's modes).
  enum class CyclicMode {
    triangular,   ///< every cycle alike
    triangular2,  ///< the height halves each cycle
    exp_range     ///< the height times gamma^t
  };
  Kind kind = Kind::constant;
  int64_t step_size = 1;              ///< step_decay: lr * gamma^floor(t / step_size)
  double gamma = 0.1;                 ///< step_decay, multi_step, exponential (lr * gamma^t)
  std::vector<int64_t> milestones{};  ///< multi_step: lr * gamma^(number of milestones <= t)
  /// sequential (SequentialLR): phases[i] from milestones[i - 1] (0 for the first) on, counting
  /// its own steps from there. chained (ChainedScheduler): every phase at once, their factors
  /// multiplied.
  std::vector<Schedule> phases{};
  /// cosine_restarts (CosineAnnealingWarmRestarts): cosine from lr to min_lr over periods of
  /// total_steps, total_steps * period_mult, ... steps, restarting at lr after each.
  int64_t period_mult = 1;
  /// custom (LambdaLR): lr * factor(t), t the step as a scalar of the rate's dtype; the ops
  /// factor builds are part of the graph, so a saved graph keeps the schedule.
  std::function<Value(const Value&)> factor{};
  /// linear: lr * (start + (end - start) min(t, T) / T); polynomial: lr (1 - min(t, T) / T)^power
  double start_factor = 1, end_factor = 1, power = 1;
  /// cosine: min_lr + (lr - min_lr) (1 + cos(pi min(t, T) / T)) / 2; constant_factor:
  /// lr * gamma while t < T
  int64_t total_steps = 1;
  double min_lr = 0;
  /// one_cycle (OneCycleLR; lr is the peak): from lr / div_factor up to lr over the first
  /// pct_start T steps, then down to lr / div_factor / final_div_factor at step T - 1, where it
  /// stays. With three_phase it first comes back down to lr / div_factor at step
  /// 2 pct_start T - 2, then falls to the final rate. Each phase anneals by a half cosine, or
  /// linearly with anneal_linear.
  double pct_start = 0.3, div_factor = 25, final_div_factor = 1e4;
  bool three_phase = false, anneal_linear = false;
  /// cyclic (CyclicLR; lr is max_lr, min_lr its base_lr): cycles of cycle_up steps rising
  /// linearly from min_lr to lr and cycle_down steps falling back, the height above min_lr
  /// scaled by cyclic_mode (exp_range: gamma^t).
  int64_t cycle_up = 2000, cycle_down = 2000;
  CyclicMode cyclic_mode = CyclicMode::triangular;
  /// one_cycle and cyclic (on by default, as torch's cycle_momentum): the optimizer's momentum
  /// (SGD's and RMSProp's momentum, beta1 of Adam's family) moves against the rate, from
  /// max_momentum where the rate is lowest to base_momentum where it peaks, through the same
  /// phases. An optimizer without momentum turns it on; Adagrad, Rprop and ASGD, which have
  /// none, refuse.
  bool cycle_momentum = false;
  double base_momentum = 0.85, max_momentum = 0.95;
  /// Whether the schedule cycles the momentum (one_cycle or cyclic with cycle_momentum).
  bool cycles_momentum() const {
    return (kind == Kind::one_cycle || kind == Kind::cyclic) && cycle_momentum;
  }
  /// reduce_on_plateau (ReduceLROnPlateau): lr * gamma^(reductions), at least min_lr. Each run
  /// of observe_metric() compares the metric with the best so far (lower is better, or higher
  /// with maximize; better means beyond best (1 -+ threshold), or best -+ threshold when not
  /// threshold_relative); after more than `patience` observations in a row without
  /// improvement the rate is reduced once, and `cooldown` observations pass before counting
  /// again.
  /// ... and a reduction that would change the rate by plateau_eps or less is skipped (torch's
  /// eps), as is every later one then.
  int64_t patience = 10, cooldown = 0;
  double threshold = 1e-4, plateau_eps = 1e-8;
  bool threshold_relative = true, maximize = false;
  /// swa (SWALR): from the rate r0 the phase starts at to swa_lr over total_steps steps (cosine,
  /// or linear with anneal_linear): swa_lr a + r0 (1 - a), a = (1 - cos(pi min(t, T) / T)) / 2
  /// (linear: min(t, T) / T; T = 0: a = 1). r0 is the optimizer's rate, or within `sequential`
  /// the rate the phase before gives at the milestone, as SWALR anneals from the rate it finds.
  double swa_lr = 0;
  int64_t warmup_steps = 0;  ///< linear warm-up: the scheduled lr times min(1, (t + 1) / W)

  static Schedule constant() { return {}; }
  static Schedule step_decay(int64_t step_size, double gamma);
  /// StepLR with several steps: gamma once more at each milestone (ascending steps).
  static Schedule multi_step(std::vector<int64_t> milestones, double gamma);
  static Schedule exponential(double gamma);
  /// ConstantLR: lr * factor (0 < factor <= 1) for the first total_steps steps, then lr.
  static Schedule constant_factor(double factor, int64_t total_steps);
  /// LinearLR: the factor goes linearly from start_factor to end_factor over total_steps.
  static Schedule linear(double start_factor, double end_factor, int64_t total_steps);
  /// PolynomialLR: decays to 0 at total_steps as (1 - t / T)^power.
  static Schedule polynomial(int64_t total_steps, double power = 1);
  static Schedule cosine(int64_t total_steps, double min_lr = 0);
  /// OneCycleLR with its defaults (two phases, cosine, momentum cycled between 0.85 and 0.95);
  /// three_phase, anneal_linear and the momentum fields are set on the result.
  static Schedule one_cycle(int64_t total_steps, double pct_start = 0.3, double div_factor = 25,
                            double final_div_factor = 1e4);
  /// CyclicLR between min_lr and the optimizer's rate, momentum cycled between 0.8 and 0.9 (as
  /// torch's defaults); step_size_down 0 means step_size_up.
  static Schedule cyclic(double min_lr, int64_t step_size_up, int64_t step_size_down = 0,
                         CyclicMode mode = CyclicMode::triangular, double gamma = 1);
  /// ReduceLROnPlateau; the other fields (maximize, threshold_relative, cooldown) are set on
  /// the result. Fed by observe_metric().
  static Schedule reduce_on_plateau(double factor = 0.1, int64_t patience = 10,
                                    double threshold = 1e-4, double min_lr = 0);
  /// SequentialLR: `phases` one after another, phase i + 1 starting at step milestones[i]
  /// (ascending; one fewer than the phases). A warm-up then a cosine decay over the rest:
  /// sequential({linear(0.01, 1, W), cosine(T - W)}, {W}).
  static Schedule sequential(std::vector<Schedule> phases, std::vector<int64_t> milestones);
  /// ChainedScheduler: the product of the schedules' factors, all stepped together
  /// (chained({constant_factor(0.1, 2), exponential(0.9)}): 0.1 lr, 0.09 lr, 0.81 lr, ...). As in
  /// torch, only schedules that multiply the rate chain: constant, constant_factor, step_decay,
  /// multi_step, exponential, linear, polynomial, cosine to min_lr 0 (within its total_steps)
  /// and chained; the others set the rate outright, and are refused.
  static Schedule chained(std::vector<Schedule> schedules);
  static Schedule cosine_restarts(int64_t first_period, int64_t period_mult = 1, double min_lr = 0);
  static Schedule custom(std::function<Value(const Value&)> factor);
  /// SWALR (stochastic weight averaging's rate): anneals to swa_lr over anneal_steps, then holds
  /// it; usually the last phase of a sequential schedule, from the step averaging starts:
  /// sequential({cosine(T), swa(0.05, 10)}, {swa_start}).
  static Schedule swa(double swa_lr, int64_t anneal_steps = 10, bool anneal_linear = false);
  /// This schedule with a linear warm-up over the first `steps` steps.
  Schedule with_warmup(int64_t steps) const;
};

/// Variables trained with their own hyperparameters (a torch.optim parameter group); a field
/// left unset takes the optimizer's option. A group that sets a field its optimizer does not
/// have (momentum for Adam, beta1 for NAdam, whose momentum product is one for all groups) is
/// a GraphError, as is one that sets a momentum or beta1 a schedule cycles.
struct ParamGroup {
  std::vector<Value> variables{};
  std::optional<double> lr{};
  std::optional<double> weight_decay{};
  std::optional<double> momentum{};  ///< SGD's, RMSProp's and Muon's momentum (>= 0)
  std::optional<double> beta1{};     ///< the Adam family's first-moment decay, in [0, 1)
  std::optional<double> beta2{};     ///< the Adam family's second-moment decay, in [0, 1)
  /// The Adam family's, Adagrad's, Adadelta's, RMSProp's and Muon's eps (>= 0).
  std::optional<double> eps{};
};

/// The usual split for weight decay (as GPT-2's and ViT's recipes): the matrices and kernels
/// (rank >= 2) decay with the optimizer's weight decay; the vectors and scalars (biases, norm
/// scales and shifts) do not. Empty groups are left out.
std::vector<ParamGroup> decay_matrices_only(const std::vector<Value>& variables);

struct SGDOptions {
  double lr = 0.01;
  double momentum = 0;
  bool nesterov = false;
  double weight_decay = 0;
  /// The buffer takes (1 - dampening) of each gradient after the first step (torch's
  /// dampening; Nesterov needs 0).
  double dampening = 0;
  Schedule schedule{};
  double clip_norm = 0;       ///< > 0: scale gradients so their global norm is at most this
  double clip_norm_type = 2;  ///< that norm: 2 (L2), 1, any p > 0, or INFINITY (the largest |g|)
  double clip_value = 0;  ///< > 0: clamp each gradient element to [-clip_value, clip_value] first
  bool maximize = false;  ///< ascend: every update follows the negated gradient (torch's maximize)
};

struct AdamOptions {
  double lr = 1e-3;
  double beta1 = 0.9;
  double beta2 = 0.999;
  double eps = 1e-8;
  double weight_decay = 0;  ///< Adam: L2 added to the gradient; AdamW: decoupled decay
  Schedule schedule{};
  double clip_norm = 0;
  double clip_norm_type = 2;  ///< the norm clip_norm bounds: 2, 1, any p > 0, or INFINITY
  double clip_value = 0;
  bool maximize = false;
  bool amsgrad = false;  ///< Adam and AdamW: the denominator from the largest v so far
};

struct AdagradOptions {
  double lr = 0.01;
  double lr_decay = 0;  ///< the rate at step t is lr / (1 + t lr_decay), then the schedule's
  double weight_decay = 0;
  double initial_accumulator_value = 0;
  double eps = 1e-10;
  Schedule schedule{};
  double clip_norm = 0;
  double clip_norm_type = 2;  ///< the norm clip_norm bounds: 2, 1, any p > 0, or INFINITY
  double clip_value = 0;
  bool maximize = false;
};

struct AdadeltaOptions {
  double lr = 1.0;   ///< scales the step Adadelta computes (torch's default 1: the step as is)
  double rho = 0.9;  ///< the decay of both running averages, in [0, 1]
  double eps = 1e-6;
  double weight_decay = 0;
  Schedule schedule{};
  double clip_norm = 0;
  double clip_norm_type = 2;  ///< the norm clip_norm bounds: 2, 1, any p > 0, or INFINITY
  double clip_value = 0;
  bool maximize = false;
};

struct RMSPropOptions {
  double lr = 0.01;
  double alpha = 0.99;
  double eps = 1e-8;
  double weight_decay = 0;
  Schedule schedule{};
  double clip_norm = 0;
  double clip_norm_type = 2;  ///< the norm clip_norm bounds: 2, 1, any p > 0, or INFINITY
  double clip_value = 0;
  bool maximize = false;
  double momentum = 0;    ///< > 0: b = momentum b + g / denominator, p -= lr b
  bool centered = false;  ///< the denominator from the variance, sqrt(s - mean(g)^2) + eps
};

struct RpropOptions {
  double lr = 0.01;  ///< every element's first step size; the schedule has no effect after it
  double eta_minus = 0.5, eta_plus = 1.2;
  double step_size_min = 1e-6, step_size_max = 50;
  Schedule schedule{};
  double clip_norm = 0;
  double clip_norm_type = 2;  ///< the norm clip_norm bounds: 2, 1, any p > 0, or INFINITY
  double clip_value = 0;
  bool maximize = false;
};

struct ASGDOptions {
  double lr = 0.01;
  double lambd = 1e-4;  ///< the decay term, and how fast eta decays
  double alpha = 0.75;  ///< eta's power
  double t0 = 1e6;      ///< the step the averaging starts at
  double weight_decay = 0;
  Schedule schedule{};
  double clip_norm = 0;
  double clip_norm_type = 2;  ///< the norm clip_norm bounds: 2, 1, any p > 0, or INFINITY
  double clip_value = 0;
  bool maximize = false;
};

/// Dynamic loss scaling (for f16 training, as torch.cuda.amp.GradScaler): the loss is
/// multiplied by a scale S before differentiation and the gradients divided by it, so small
/// gradients survive f16. A step whose gradients hold an inf or NaN is skipped (no variable,
/// slot or step counter changes) and S is multiplied by `backoff`; after `growth_interval`
/// good steps in a row S is multiplied by `growth`. S lives in the variable "loss_scale".
struct LossScaleOptions {
  double initial = 65536;
  double growth = 2;
  double backoff = 0.5;
  int64_t growth_interval = 2000;
};

/// A gradient and the variable it belongs to (TensorFlow's (gradient, variable) pairs).
struct GradientAndVariable {
  Value gradient{};
  Value variable{};
};

/// How apply_gradients combines what every rank holds when the gradients themselves are
/// sharded (ZeRO stage 2): each rank has only the gradients of the variables it owns, so the
/// quantities over every gradient (clipping's global norm, loss scaling's overflow probe) are
/// computed over those and combined over the ranks by these, which add graph ops (all-reduces).
struct OverRanks {
  std::function<Value(const Value&)> sum;  ///< a scalar's sum over every rank
  std::function<Value(const Value&)> max;  ///< a scalar's maximum over every rank
};

/// Base of the optimizers.
class Optimizer {
 public:
  virtual ~Optimizer() = default;
  /// Turns on dynamic loss scaling for the next minimize().
  Optimizer& with_loss_scaling(LossScaleOptions options = {}) {
    loss_scale_ = options;
    scaling_ = true;
    return *this;
  }
  /// Accumulates gradients over `micro_batches` runs before each step (torch: that many
  /// backward() calls, each on loss / micro_batches, before one step()): every run adds its
  /// gradients to the variables "<var>/grad_sum" and counts it ("accumulated_micro_batches"); the
  /// run that completes the count steps with their mean (clipping, loss scaling's overflow
  /// check and the step counter see only that) and clears them. The other runs change no
  /// variable, slot or step. An ExponentialMovingAverage given this optimizer moves only on
  /// the runs that step. micro_batches < 1 is a GraphError; 1 turns it off. Data-parallel runs
  /// accumulate with DataParallelOptions::accumulation_steps instead, which all-reduces only in
  /// the run that steps (this one would all-reduce every micro-batch).
  Optimizer& with_gradient_accumulation(int64_t micro_batches);
  /// The micro-batches per step (1: no gradient accumulation).
  int64_t micro_batches() const { return micro_batches_; }
  /// With gradient accumulation, after apply_gradients: the bool scalar that is true in the run
  /// that steps; else undefined (every run steps).
  const Value& steps_now() const { return steps_now_; }
  /// Gives each group's variables the group's hyperparameters. From then on
  /// minimize() and compute_gradients() with no variables train the groups' variables (in
  /// group order), and apply_gradients() refuses a variable that is in no group. A variable in
  /// two groups, an empty group or a rate <= 0 is a GraphError.
  Optimizer& with_param_groups(std::vector<ParamGroup> groups);
  /// Gives the optimizer a name: its own step counter "<name>/step" in place of the graph's
  /// "global_step", its slots "<var>/<name>/<slot>" and its other state under "<name>/". So
  /// several optimizers train in one graph (a GAN's generator and discriminator, run in turns),
  /// each counting its own steps for its bias corrections and schedule, as each torch.optim
  /// optimizer does. Unnamed optimizers share "global_step", and optimizers of one name share
  /// "<name>/step" (both advance it).
  Optimizer& named(std::string name);
  /// The step counter this optimizer advances (an i64 scalar variable): "<name>/step", or
  /// "global_step" when unnamed; made on first use.
  Value step_counter(Graph& graph) const;
  /// The one-line form: apply_gradients(compute_gradients(loss, vars)). With the option
  /// `maximize` it ascends the loss instead (torch's maximize); the gradients of -loss are
  /// computed then, which are the negated gradients exactly.
  Value minimize(const Value& loss, std::vector<Value> vars = {});
  /// Step one: the gradients of `loss` with respect to `vars` (default: every trainable
  /// variable), as graph values. With loss scaling the loss is multiplied by the scale before
  /// differentiation and each gradient divided by it again, so what is returned is the true
  /// gradient (computed in the scaled range). Variables the loss does not depend on are left
  /// out (and so never updated); none at all is a GraphError. A transform may change the
  /// gradients before step two (an all-reduce, an average over micro-batches).
  std::vector<GradientAndVariable> compute_gradients(const Value& loss,
                                                     std::vector<Value> vars = {});
  /// Step two: optional global-norm clipping, the scheduled learning rate, one fused update
  /// per variable and the increment of the "global_step" variable; with loss scaling, the
  /// update is skipped when any gradient is not finite and the scale adapts (both decided on
  /// the gradients as given here, so every rank of a data-parallel run decides alike). With
  /// `maximize` the gradients are negated first. Returns one target that runs all of it.
  Value apply_gradients(const std::vector<GradientAndVariable>& gradients);
  /// apply_gradients for a shard of the variables (ZeRO stage 1, as torch's
  /// ZeroRedundancyOptimizer): clipping, loss scaling's overflow check, the schedule and the
  /// step counter see every gradient, but only the variables with `owned[i]` are updated, and
  /// only they get slots. The others keep their values in this step (data_parallel's sharded
  /// state gathers them from the ranks that own them). `owned` has one flag per gradient.
  Value apply_gradients(const std::vector<GradientAndVariable>& gradients,
                        const std::vector<bool>& owned);
  /// apply_gradients for sharded gradients (ZeRO stage 2): only the gradients of the variables
  /// with `owned[i]` need be defined (the others are ignored); clipping's norm and loss
  /// scaling's overflow check are built over them and combined with `over_ranks`, so every rank
  /// clips by the same norm and skips the same steps. Gradient accumulation in the optimizer
  /// (with_gradient_accumulation) is refused: accumulate before the gradients are sharded.
  Value apply_gradients(const std::vector<GradientAndVariable>& gradients,
                        const std::vector<bool>& owned, const OverRanks& over_ranks);
  /// The value of `variable` after the step the last apply_gradients() made, computed in the
  /// same run as that step (its update op's output): what reads the trained weights in the
  /// run that trains them. Undefined when that step does not update the variable.
  Value updated(const Value& variable) const;
  /// Records `value` as updated(variable): for a transform that gives a variable its new value
  /// outside this optimizer's update (data_parallel gathers the variables other ranks update),
  /// so what reads the trained weights in the same run (an ExponentialMovingAverage) reads it.
  void set_updated(const Value& variable, const Value& value);

 protected:
  Optimizer(double lr, Schedule schedule, double clip_norm, double clip_norm_type,
            double clip_value, bool maximize)
      : lr_(lr),
        schedule_(schedule),
        clip_norm_(clip_norm),
        clip_norm_type_(clip_norm_type),
        clip_value_(clip_value),
        maximize_(maximize) {}
  /// The settings every options struct has: lr, schedule, clip_norm, clip_norm_type,
  /// clip_value and maximize.
  template <typename Options>
  explicit Optimizer(const Options& options)
      : Optimizer(options.lr, options.schedule, options.clip_norm, options.clip_norm_type,
                  options.clip_value, options.maximize) {}
  /// One variable's settings: its weight decay (its group's, else the optimizer's), and the
  /// other fields its group sets (an unset one: the optimizer's option).
  struct GroupSettings {
    double weight_decay = 0;
    std::optional<double> momentum{}, beta1{}, beta2{}, eps{};
  };
  /// The update op for one variable with its group's settings; it applies only where
  /// `apply_if` (when defined) is true.
  virtual Value update(const Value& var, const Value& grad, const Value& lr, const Value& step,
                       const GroupSettings& group, const Value& apply_if) = 0;
  /// The optimizer's own weight decay (a group's default).
  virtual double weight_decay() const = 0;
  /// The ParamGroup fields besides lr and weight decay an optimizer reads.
  enum GroupField : unsigned { kMomentum = 1, kBeta1 = 2, kBeta2 = 4, kEps = 8 };
  /// Checks parameter group `index` (a GraphError naming it): by default it may set no field
  /// besides lr and weight decay.
  virtual void check_group(const ParamGroup& group, size_t index) const {
    check_group_fields(group, index, "this optimizer", 0);
  }
  /// For check_group: `optimizer` (its name) reads only the fields in `readable`; the values
  /// are in range, and a momentum (or beta1, its momentum) is not one the schedule cycles.
  void check_group_fields(const ParamGroup& group, size_t index, const char* optimizer,
                          unsigned readable) const;
  /// The step whose scheduled rate the update at `step` reads (ASGD: the step before).
  virtual Value schedule_step(const Value& step) const { return step; }
  /// Makes the state every variable's update reads, once per apply_gradients and before the
  /// updates (NAdam's running momentum product), and returns the ops that advance it; they
  /// advance only where `apply_if` (when defined) is true.
  virtual std::vector<Value> prepare_step(Graph&, const Value& /*step*/,
                                          const Value& /*apply_if*/) {
    return {};
  }
  /// A non-trainable variable "<var>/<suffix>" ("<var>/<name>/<suffix>" when named) shaped like
  /// var, every element `initial`.
  Value slot(const Value& var, const std::string& suffix, double initial = 0) const;
  /// As slot(), shaped `shape` (statistics of var rather than per element: Adafactor's).
  Value shaped_slot(const Value& var, const std::string& suffix, const Shape& shape) const;
  /// `base` under the optimizer's name ("<name>/<base>"), or `base` when unnamed.
  std::string state_name(const std::string& base) const {
    return name_.empty() ? base : name_ + "/" + base;
  }
  /// apply_gradients, the gradients negated first when `negate`; with `owned` non-empty, only
  /// the variables it flags are updated; with `over_ranks`, only their gradients are defined.
  Value apply(const std::vector<GradientAndVariable>& gradients, bool negate,
              const std::vector<bool>& owned = {}, const OverRanks* over_ranks = nullptr);
  /// This step's momentum when the schedule cycles it (an f64 scalar, set by apply_gradients
  /// before prepare_step and the updates), else undefined.
  const Value& momentum_now() const { return momentum_now_; }
  /// For an optimizer without momentum: a GraphError when the schedule cycles it.
  void refuse_cycled_momentum(const char* optimizer) const;

 private:
  double lr_;
  Schedule schedule_;
  double clip_norm_, clip_norm_type_;
  double clip_value_;
  bool maximize_;
  LossScaleOptions loss_scale_;
  bool scaling_ = false;
  std::vector<ParamGroup> groups_;
  std::map<std::string, Value> updated_;  ///< by variable name, from the last apply_gradients
  Value momentum_now_;
  int64_t micro_batches_ = 1;
  Value steps_now_;  ///< with gradient accumulation: this run completes the micro-batches
  std::string name_;
  bool slots_rank_local_ = false;  ///< slot() makes rank-local variables (a sharded update)
};

class SGD : public Optimizer {
 public:
  explicit SGD(SGDOptions options = {});

 private:
  Value update(const Value& var, const Value& grad, const Value& lr, const Value& step,
               const GroupSettings& group, const Value& apply_if) override;
  double weight_decay() const override { return options_.weight_decay; }
  void check_group(const ParamGroup& group, size_t index) const override;
  SGDOptions options_;
};

/// The base of the optimizers AdamOptions configure (Adam's family): the options, and weight
/// decay as L2 in the gradient or decoupled (AdamW-style).
class AdamFamilyOptimizer : public Optimizer {
 protected:
  /// `name`: the optimizer, for the error when amsgrad is set and `allows_amsgrad` is false.
  AdamFamilyOptimizer(AdamOptions options, bool decoupled, const char* name, bool allows_amsgrad);
  double weight_decay() const override { return options_.weight_decay; }
  void check_group(const ParamGroup& group, size_t index) const override {
    KILN_CHECK(group_beta1_ || !group.beta1, GraphError, "[optim] parameter group ", index,
               " sets beta1, which ", name_,
               " has not per group (its momentum product is one for all groups)");
    check_group_fields(group, index, name_, kBeta1 | kBeta2 | kEps);
  }
  /// The update ops' hyperparameters with a group's settings.
  AdamHyperparameters hyperparameters(const GroupSettings& group) const {
    return {group.beta1.value_or(options_.beta1), group.beta2.value_or(options_.beta2),
            group.eps.value_or(options_.eps), group.weight_decay, decoupled_};
  }
  AdamOptions options_;
  bool decoupled_;
  const char* name_;
  bool group_beta1_ = true;  ///< whether a parameter group may set beta1
};

class Adam : public AdamFamilyOptimizer {
 public:
  explicit Adam(AdamOptions options = {}, bool decoupled_weight_decay = false)
      : AdamFamilyOptimizer(options, decoupled_weight_decay, "Adam", true) {}

 private:
  Value update(const Value& var, const Value& grad, const Value& lr, const Value& step,
               const GroupSettings& group, const Value& apply_if) override;
};

/// Adam with decoupled weight decay (Loshchilov & Hutter); torch.optim.AdamW's default decay.
class AdamW : public Adam {
 public:
  explicit AdamW(AdamOptions options = {.weight_decay = 0.01}) : Adam(options, true) {}
};

/// Adamax (Adam with the infinity norm: u = max(b2 u, |g| + eps)); amsgrad is refused. Its
/// default rate is torch's 2e-3; options given without lr take AdamOptions' 1e-3.
class Adamax : public AdamFamilyOptimizer {
 public:
  explicit Adamax(AdamOptions options = {.lr = 2e-3})
      : AdamFamilyOptimizer(options, false, "Adamax", false) {}

 private:
  Value update(const Value& var, const Value& grad, const Value& lr, const Value& step,
               const GroupSettings& group, const Value& apply_if) override;
};

/// RAdam (rectified Adam), with L2 or (decoupled_weight_decay) AdamW-style decay; amsgrad is
/// refused.
class RAdam : public AdamFamilyOptimizer {
 public:
  explicit RAdam(AdamOptions options = {}, bool decoupled_weight_decay = false)
      : AdamFamilyOptimizer(options, decoupled_weight_decay, "RAdam", false) {}

 private:
  Value update(const Value& var, const Value& grad, const Value& lr, const Value& step,
               const GroupSettings& group, const Value& apply_if) override;
};

/// NAdam (Adam with Nesterov momentum), with L2 or (decoupled_weight_decay) AdamW-style decay.
/// Its running product of the momentum schedule is the f64 scalar variable "nadam_mu_product"
/// ("<name>/nadam_mu_product" when named: one unnamed NAdam per graph); amsgrad is refused.
class NAdam : public AdamFamilyOptimizer {
 public:
  explicit NAdam(AdamOptions options = {.lr = 2e-3}, double momentum_decay = 4e-3,
                 bool decoupled_weight_decay = false);

 private:
  Value update(const Value& var, const Value& grad, const Value& lr, const Value& step,
               const GroupSettings& group, const Value& apply_if) override;
  std::vector<Value> prepare_step(Graph& graph, const Value& step, const Value& apply_if) override;
  double momentum_decay_;
  Value mu_product_;  ///< mu_1 ... mu_t of this step, made by prepare_step
};

class Adagrad : public Optimizer {
 public:
  explicit Adagrad(AdagradOptions options = {});

 private:
  Value update(const Value& var, const Value& grad, const Value& lr, const Value& step,
               const GroupSettings& group, const Value& apply_if) override;
  double weight_decay() const override { return options_.weight_decay; }
  void check_group(const ParamGroup& group, size_t index) const override {
    check_group_fields(group, index, "Adagrad", kEps);
  }
  AdagradOptions options_;
};

/// Adadelta (Zeiler 2012, torch.optim.Adadelta): each element's step is the running RMS of its
/// past steps over the running RMS of its gradients, times lr. Slots "adadelta_square_avg" and
/// "adadelta_acc_delta".
class Adadelta : public Optimizer {
 public:
  explicit Adadelta(AdadeltaOptions options = {});

 private:
  Value update(const Value& var, const Value& grad, const Value& lr, const Value& step,
               const GroupSettings& group, const Value& apply_if) override;
  double weight_decay() const override { return options_.weight_decay; }
  void check_group(const ParamGroup& group, size_t index) const override {
    check_group_fields(group, index, "Adadelta", kEps);
  }
  AdadeltaOptions options_;
};

class RMSProp : public Optimizer {
 public:
  explicit RMSProp(RMSPropOptions options = {});

 private:
  Value update(const Value& var, const Value& grad, const Value& lr, const Value& step,
               const GroupSettings& group, const Value& apply_if) override;
  double weight_decay() const override { return options_.weight_decay; }
  void check_group(const ParamGroup& group, size_t index) const override {
    check_group_fields(group, index, "RMSProp", kMomentum | kEps);
  }
  RMSPropOptions options_;
};

/// Rprop (resilient backpropagation, torch.optim.Rprop): each element moves by its own step size,
/// grown while its gradient keeps its sign and shrunk when it flips; only the gradients' signs
/// count. For full-batch training. Has no weight decay (a group setting one is refused).
class Rprop : public Optimizer {
 public:
  explicit Rprop(RpropOptions options = {});

 private:
  Value update(const Value& var, const Value& grad, const Value& lr, const Value& step,
               const GroupSettings& group, const Value& apply_if) override;
  double weight_decay() const override { return 0; }
  void check_group(const ParamGroup& group, size_t index) const override {
    check_group_fields(group, index, "Rprop", 0);
  }
  RpropOptions options_;
};

/// ASGD (averaged SGD, torch.optim.ASGD): SGD with a decaying rate whose iterates are averaged
/// from step t0 on; average(var) is the averaged weight, to evaluate or export with. Where a
/// schedule is set, eta at step t uses that step's rate (torch's uses the previous step's).
class ASGD : public Optimizer {
 public:
  explicit ASGD(ASGDOptions options = {});
  /// The running average of `variable` (its slot "<var>/asgd_ax", after a minimize that trains
  /// it); a GraphError when there is none.
  Value average(const Value& variable) const;

 private:
  Value update(const Value& var, const Value& grad, const Value& lr, const Value& step,
               const GroupSettings& group, const Value& apply_if) override;
  double weight_decay() const override { return options_.weight_decay; }
  void check_group(const ParamGroup& group, size_t index) const override {
    check_group_fields(group, index, "ASGD", 0);
  }
  Value schedule_step(const Value& step) const override;
  ASGDOptions options_;
};

struct AdafactorOptions {
  double lr = 1e-2;            ///< caps the relative step size: rho_t = min(lr, 1 / sqrt(t))
  double beta2_decay = -0.8;   ///< the second moments' rate at step t is t^beta2_decay (<= 0)
  std::optional<double> eps1;  ///< floor of the variance estimate's root (default: the
                               ///< variable dtype's machine epsilon)
  double eps2 = 1e-3;          ///< floor of the variable's RMS, which scales the step
  double d = 1;                ///< the update's RMS is clipped to d (>= 1)
  double weight_decay = 0;     ///< decoupled: p *= 1 - lr weight_decay
  Schedule schedule{};
  double clip_norm = 0;
  double clip_norm_type = 2;  ///< the norm clip_norm bounds: 2, 1, any p > 0, or INFINITY
  double clip_value = 0;
  bool maximize = false;
};

/// Adafactor (Shazeer and Stern 2018; torch.optim.Adafactor): second moments without first
/// moments, and for a variable of rank >= 2 factored over its last two axes [..., R, C]: a row
/// variance r [..., R, 1] and a column variance c [..., 1, C] stand for the [R, C] one (v = r c
/// / mean(r)), so the state is R + C numbers per matrix instead of R C. At step t (from 1),
/// with w = t^beta2_decay: r, c (or v for vectors) move towards the mean g^2 by w;
/// u = g / sqrt(max(v, eps1^2)); the step is max(eps2, RMS(p)) min(lr, 1 / sqrt(t)) u /
/// max(1, RMS(u) / d). Slots "<var>/adafactor_row_var" and "<var>/adafactor_col_var"
/// (factored), or "<var>/adafactor_variance".
class Adafactor : public Optimizer {
 public:
  explicit Adafactor(AdafactorOptions options = {});

 private:
  Value update(const Value& var, const Value& grad, const Value& lr, const Value& step,
               const GroupSettings& group, const Value& apply_if) override;
  double weight_decay() const override { return options_.weight_decay; }
  void check_group(const ParamGroup& group, size_t index) const override {
    check_group_fields(group, index, "Adafactor", 0);
  }
  AdafactorOptions options_;
};

struct SparseAdamOptions {
  double lr = 1e-3;
  double beta1 = 0.9;
  double beta2 = 0.999;
  double eps = 1e-8;
  Schedule schedule{};
  double clip_norm = 0;
  double clip_norm_type = 2;  ///< the norm clip_norm bounds: 2, 1, any p > 0, or INFINITY
  double clip_value = 0;
  bool maximize = false;
};

/// SparseAdam (torch.optim.SparseAdam; "lazy" Adam), for embedding tables: Adam that moves only
/// the rows (slices along axis 0; elements of a vector) this step's gradient touches, and
/// leaves the moments of every other row as they are, where Adam would decay them and move the
/// row on its momentum. At step t (from 1), for each touched row: m = m + (g - m)(1 - b1),
/// v = v + (g^2 - v)(1 - b2), p -= lr sqrt(1 - b2^t) / (1 - b1^t) m / (sqrt(v) + eps). No
/// weight decay (a group setting one is refused), as torch's. Slots "<var>/sparse_adam_m" and
/// "<var>/sparse_adam_v".
///
/// A row is touched when its gradient has an element other than 0, decided on the gradient as
/// apply_gradients sees it (after an all-reduce, so every rank picks the same rows). torch
/// counts every row looked up: a row looked up only where the loss ignores it (its gradient
/// exactly 0) moves there and not here. The step is composed of graph ops over the whole table
/// (it runs wherever they do), so it costs what Adam's does: it changes which rows move, not
/// the work.
class SparseAdam : public Optimizer {
 public:
  explicit SparseAdam(SparseAdamOptions options = {});

 private:
  Value update(const Value& var, const Value& grad, const Value& lr, const Value& step,
               const GroupSettings& group, const Value& apply_if) override;
  double weight_decay() const override { return 0; }
  void check_group(const ParamGroup& group, size_t index) const override;
  SparseAdamOptions options_;
};

/// How Muon scales the rate for a variable of shape [A, B] (torch's adjust_lr_fn).
enum class MuonLrAdjustment {
  original,            ///< lr sqrt(max(1, A / B)) (Keller Jordan's Muon; torch's default)
  match_rms_adamw,     ///< lr 0.2 sqrt(max(A, B)) (Moonshot: reuse AdamW's rate and decay)
  spectral_unclamped,  ///< lr sqrt(A / B) (Bernstein's spectral scaling)
};

struct MuonOptions {
  double lr = 1e-3;
  double weight_decay = 0.1;  ///< decoupled: p *= 1 - lr weight_decay before the step
  double momentum = 0.95;
  bool nesterov = true;
  /// The quintic Newton-Schulz iteration X = a X + (b A + c A^2) X, A = X X^T.
  double ns_a = 3.4445, ns_b = -4.7750, ns_c = 2.0315;
  int ns_steps = 5;   ///< iterations, 1 to 99
  double eps = 1e-7;  ///< the floor of the norm the iteration's input is divided by
  MuonLrAdjustment adjust_lr = MuonLrAdjustment::original;
  /// The dtype the iteration runs in: bf16 as torch's (each product rounded once from f32
  /// sums), or f32/f64 for an exact orthogonalization.
  DType ns_dtype = DType::bf16;
  Schedule schedule{};  ///< may cycle the momentum (one_cycle, cyclic)
  double clip_norm = 0;
  double clip_norm_type = 2;  ///< the norm clip_norm bounds: 2, 1, any p > 0, or INFINITY
  double clip_value = 0;
  bool maximize = false;
};

/// Muon (torch.optim.Muon; Keller Jordan et al.): SGD momentum whose step is orthogonalized.
/// For a matrix W with gradient G: B = mu B + (1 - mu) G; U = Nesterov ? (1 - mu) G + mu B : B;
/// O = NS(U / max(||U||_F, eps)), ns_steps Newton-Schulz iterations that push every singular
/// value of U towards 1 (to about [0.5, 1.5]); W = W (1 - lr wd) - lr' O, lr' the adjusted rate.
/// Only for matrices (rank 2: hidden layers' weights); train embeddings, heads, biases and
/// norms with another optimizer (named(), e.g. AdamW named "adamw"), as torch's recipe does:
/// a variable of another rank is a GraphError naming it. Slot "<var>/muon_momentum".
class Muon : public Optimizer {
 public:
  explicit Muon(MuonOptions options = {});

 private:
  Value update(const Value& var, const Value& grad, const Value& lr, const Value& step,
               const GroupSettings& group, const Value& apply_if) override;
  double weight_decay() const override { return options_.weight_decay; }
  void check_group(const ParamGroup& group, size_t index) const override {
    check_group_fields(group, index, "Muon", kMomentum | kEps);
    KILN_CHECK(group.momentum.value_or(0) < 1, GraphError, "[optim] parameter group ", index,
               ": Muon's momentum must be < 1, got ", *group.momentum);
  }
  MuonOptions options_;
};

/// Exponential moving averages of variables (tf.train.ExponentialMovingAverage; torch's
/// AveragedModel with an EMA rule, as timm's model EMA): one shadow variable "<var>/<name>" per
/// variable, which the target of apply() moves as
///   shadow = decay shadow + (1 - decay) var
/// and its first run sets to the variable (so restored or set weights start the average, as
/// AveragedModel copies the model). With `warmup` the decay is min(decay, (1 + n) / (10 + n))
/// after n updates (TensorFlow's num_updates), so early averages are not stuck near the start.
/// The shadows and the count "<name>/num_updates" are state, saved in checkpoints.
class ExponentialMovingAverage {
 public:
  explicit ExponentialMovingAverage(double decay, bool warmup = false, std::string name = "ema");
  /// The target that moves the averages of `variables` (default: every trainable variable).
  /// With `trained_by`, a variable that optimizer's last step updates is read as that step
  /// leaves it (Optimizer::updated), so running {train, apply} together averages the new
  /// weights, as PyTorch's update after optimizer.step(); other variables are read as they are.
  Value apply(Graph& graph, std::vector<Value> variables = {},
              const Optimizer* trained_by = nullptr);
  /// The shadow of `variable` (from apply()); a GraphError when it has none.
  Value average(const Value& variable) const;
  /// The target that writes every shadow into its variable: export the averaged weights (the
  /// trained ones are lost; swap_in_averages keeps them).
  Value copy_to_variables() const;
  /// The target that saves each variable into a scratch copy "<var>/<name>_backup" (kept by the
  /// session, not by checkpoints) and writes its average in its place: evaluate with the
  /// averages, then run restore_weights() and train on.
  Value swap_in_averages();
  /// The target that writes the weights swap_in_averages() saved back into the variables.
  Value restore_weights() const;

 protected:
  /// An equal average (StochasticWeightAveraging) when `equal`.
  ExponentialMovingAverage(std::string name, bool equal);
  /// The class's name, for messages.
  const char* kind() const {
    return equal_ ? "StochasticWeightAveraging" : "ExponentialMovingAverage";
  }

 private:
  double decay_;
  bool warmup_;
  bool equal_ = false;  ///< shadow += (var - shadow) / (n + 1): every update weighs the same
  std::string name_;
  std::vector<std::pair<Value, Value>> shadows_;  ///< (variable, shadow)
  std::vector<Value> backups_;                    ///< per shadow, made by swap_in_averages
};

/// Stochastic weight averaging (torch.optim.swa_utils.AveragedModel with its default, equal
/// average): each run of apply()'s target adds the current weights to a running mean,
///   shadow = shadow + (var - shadow) / (n + 1)
/// after n updates (the first copies them). Run it from the step averaging starts, once per
/// step or per epoch as torch's update_parameters, usually under Schedule::swa; then evaluate
/// or export the average as an ExponentialMovingAverage's (swap_in_averages,
/// copy_to_variables). Batch-norm running statistics are variables too: average them (pass
/// them to apply), or recompute them for the averaged weights by running training-mode
/// forwards (torch's update_bn) before exporting.
class StochasticWeightAveraging : public ExponentialMovingAverage {
 public:
  explicit StochasticWeightAveraging(std::string name = "swa")
      : ExponentialMovingAverage(std::move(name), /*equal=*/true) {}
};

/// The target that feeds `metric` (a scalar: a placeholder fed the validation loss once an
/// epoch, say) to the graph's reduce_on_plateau schedule, as ReduceLROnPlateau.step(metric).
/// Its state is the variables "lr_plateau/best", ".../num_bad", ".../cooldown_left" and
/// ".../reductions" (one such schedule per graph; saved in checkpoints).
Value observe_metric(Graph& graph, const Value& metric, const Schedule& schedule);

/// The graph's step counter: the i64 scalar variable "global_step", made on first use.
Value global_step(Graph& graph);
/// The learning rate at step `step` (an i64 scalar) as a scalar of `dtype`. `start_rate` (a
/// scalar of `dtype`): the rate an swa schedule anneals from (default base_lr).
Value learning_rate(Graph& graph, double base_lr, const Schedule& schedule, const Value& step,
                    DType dtype = f32, const Value& start_rate = {});
/// The momentum at step `step` (an f64 scalar) of a schedule that cycles it (one_cycle or
/// cyclic with cycle_momentum); undefined for any other.
Value scheduled_momentum(Graph& graph, const Schedule& schedule, const Value& step);
/// Each gradient with its elements clamped to [-limit, limit] (torch.nn.utils.clip_grad_value_).
std::vector<Value> clip_by_value(const std::vector<Value>& grads, double limit);
/// The gradients scaled by min(1, max_norm / (||grads|| + 1e-6)), ||grads|| the p-norm of all
/// their elements together (p = norm_type: 2, 1, any p > 0, or INFINITY for the largest |g|), as
/// torch.nn.utils.clip_grad_norm_. The norm is computed in f64 where a gradient is f64, else in
/// f32; `norm` receives it (before clipping).
std::vector<Value> clip_by_global_norm(const std::vector<Value>& grads, double max_norm,
                                       Value* norm = nullptr, double norm_type = 2);

}  // namespace kiln::optim
