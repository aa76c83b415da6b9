// Optimizers as graph ops: minimize(loss) adds gradients, fused update ops and a step counter
// to the graph and returns one train target. Everything lands in the graph, so a saved
// training graph trains without the code that built it.
#pragma once

#include <vector>

#include "kiln/framework/graph.h"

namespace kiln::optim {

/// A learning-rate schedule, evaluated inside the graph from the step counter t (0-based).
struct Schedule {
  enum class Kind { constant, step_decay, cosine };
  Kind kind = Kind::constant;
  int64_t step_size = 1;  ///< step_decay: lr * gamma^floor(t / step_size)
  double gamma = 0.1;
  int64_t total_steps = 1;  ///< cosine: min_lr + (lr - min_lr) (1 + cos(pi min(t, T) / T)) / 2
  double min_lr = 0;
  int64_t warmup_steps = 0;  ///< linear warm-up: the scheduled lr times min(1, (t + 1) / W)

  static Schedule constant() { return {}; }
  static Schedule step_decay(int64_t step_size, double gamma);
  static Schedule cosine(int64_t total_steps, double min_lr = 0);
  /// This schedule with a linear warm-up over the first `steps` steps.
  Schedule with_warmup(int64_t steps) const;
};

struct SGDOptions {
  double lr = 0.01;
  double momentum = 0;
  bool nesterov = false;
  double weight_decay = 0;
  Schedule schedule{};
  double clip_norm = 0;  ///< > 0: scale gradients so their global L2 norm is at most this
};

struct AdamOptions {
  double lr = 1e-3;
  double beta1 = 0.9;
  double beta2 = 0.999;
  double eps = 1e-8;
  double weight_decay = 0;  ///< Adam: L2 added to the gradient; AdamW: decoupled decay
  Schedule schedule{};
  double clip_norm = 0;
};

struct RMSPropOptions {
  double lr = 0.01;
  double alpha = 0.99;
  double eps = 1e-8;
  double weight_decay = 0;
  Schedule schedule{};
  double clip_norm = 0;
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
  /// The one-line form: apply_gradients(compute_gradients(loss, vars)).
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
  /// the gradients as given here, so every rank of a data-parallel run decides alike).
  /// Returns one target that runs all of it.
  Value apply_gradients(const std::vector<GradientAndVariable>& gradients);

 protected:
  Optimizer(double lr, Schedule schedule, double clip_norm)
      : lr_(lr), schedule_(schedule), clip_norm_(clip_norm) {}
  /// The update op for one variable; it applies only where `apply_if` (when defined) is true.
  virtual Value update(const Value& var, const Value& grad, const Value& lr, const Value& step,
                       const Value& apply_if) = 0;
  /// A zero-initialized, non-trainable variable "<var>/<suffix>" shaped like var.
  static Value slot(const Value& var, const std::string& suffix);

 private:
  double lr_;
  Schedule schedule_;
  double clip_norm_;
  LossScaleOptions loss_scale_;
  bool scaling_ = false;
};

class SGD : public Optimizer {
 public:
  explicit SGD(SGDOptions options = {});

 private:
  Value update(const Value& var, const Value& grad, const Value& lr, const Value& step,
               const Value& apply_if) override;
  SGDOptions options_;
};

class Adam : public Optimizer {
 public:
  explicit Adam(AdamOptions options = {}, bool decoupled_weight_decay = false);

 private:
  Value update(const Value& var, const Value& grad, const Value& lr, const Value& step,
               const Value& apply_if) override;
  AdamOptions options_;
  bool decoupled_;
};

/// Adam with decoupled weight decay (Loshchilov & Hutter); torch.optim.AdamW's default decay.
class AdamW : public Adam {
 public:
  explicit AdamW(AdamOptions options = {.weight_decay = 0.01}) : Adam(options, true) {}
};

class RMSProp : public Optimizer {
 public:
  explicit RMSProp(RMSPropOptions options = {});

 private:
  Value update(const Value& var, const Value& grad, const Value& lr, const Value& step,
               const Value& apply_if) override;
  RMSPropOptions options_;
};

/// The graph's step counter: the i64 scalar variable "global_step", made on first use.
Value global_step(Graph& graph);
/// The learning rate at step `step` (an i64 scalar) as a scalar of `dtype`.
Value learning_rate(Graph& graph, double base_lr, const Schedule& schedule, const Value& step,
                    DType dtype = f32);
/// The gradients scaled by min(1, max_norm / ||grads||) (one global L2 norm); `norm` receives
/// the norm before clipping.
std::vector<Value> clip_by_global_norm(const std::vector<Value>& grads, double max_norm,
                                       Value* norm = nullptr);

}  // namespace kiln::optim
