// State ops: reading and writing variables, and the fused optimizer updates.
#pragma once

#include "kiln/framework/graph.h"

namespace kiln {

/// Writes `value` into variable `var` when run; returns var (the updated state).
Value assign(const Value& var, const Value& value);
/// Adds `delta` to variable `var` when run; returns var.
Value assign_add(const Value& var, const Value& delta);
/// Writes `update` over variable `var`'s window along `axis` from `start` (an integer scalar
/// tensor) in place, when run: dynamic_update_slice into the variable's storage, only the
/// window touched (a KV cache held in the session). Returns var. A start with no room for the
/// update is an error naming the node.
Value assign_slice(const Value& var, const Value& update, const Value& start, int64_t axis);

/// Fused update ops (one kernel reads and writes each element once). `lr` is a scalar of the
/// variable's dtype; `step` is the i64 step counter before this step. With `apply_if` (a bool
/// scalar) the update happens only where it is true: dynamic loss scaling skips steps whose
/// gradients overflowed. With `momentum_now` (an f64 scalar; all but rmsprop_update,
/// adadelta_update, adagrad_update, rprop_update and asgd_update) it replaces the momentum (SGD's
/// and RMSProp's) or beta1 (Adam's family) at this step: a schedule that cycles momentum, as
/// OneCycleLR. Each returns var.
///   SGD:     g' = g + wd p;  b = mu b + (1 - dampening) g' (b = g' at step 0);
///            p -= lr (nesterov ? g' + mu b : b)
///            (mu = 0: p -= lr g'; `buf` is unused and may be undefined). With dampening the
///            op reads `step` (the i64 step count, 0 at the first step).
Value sgd_update(const Value& var, const Value& buf, const Value& grad, const Value& lr,
                 double momentum, bool nesterov, double weight_decay, const Value& apply_if = {},
                 const Value& momentum_now = {}, double dampening = 0, const Value& step = {});
///   Adam:    g' = g + wd p (L2) or p *= 1 - lr wd (decoupled, AdamW);
///            m = b1 m + (1-b1) g';  v = b2 v + (1-b2) g'^2;  t = step + 1
///            p -= lr (m / (1-b1^t)) / (sqrt(v / (1-b2^t)) + eps)
Value adam_update(const Value& var, const Value& m, const Value& v, const Value& grad,
                  const Value& lr, const Value& step, double beta1, double beta2, double eps,
                  double weight_decay, bool decoupled, const Value& apply_if = {},
                  const Value& momentum_now = {});
///   RMSProp: g' = g + wd p;  s = a s + (1-a) g'^2;  p -= lr g' / (sqrt(s) + eps)
Value rmsprop_update(const Value& var, const Value& sq, const Value& grad, const Value& lr,
                     double alpha, double eps, double weight_decay, const Value& apply_if = {});

///   Adadelta: g' = g + wd p;  s = rho s + (1-rho) g'^2;  delta = sqrt(u + eps) / sqrt(s + eps) g';
///            u = rho u + (1-rho) delta^2;  p -= lr delta  (`square_avg` s, `acc_delta` u)
Value adadelta_update(const Value& var, const Value& square_avg, const Value& acc_delta,
                      const Value& grad, const Value& lr, double rho, double eps,
                      double weight_decay, const Value& apply_if = {});

/// The updates whose per-element rule is shared by both devices (ops/state/element_rules.h).
/// Each takes the variable, its slots, the gradient, lr and the step counter before this step.
///   Adagrad: clr = lr / (1 + step lr_decay);  g' = g + wd p;  s += g'^2;
///            p -= clr g' / (sqrt(s) + eps)
Value adagrad_update(const Value& var, const Value& sum, const Value& grad, const Value& lr,
                     const Value& step, double lr_decay, double eps, double weight_decay,
                     const Value& apply_if = {});
///   Rprop:   per element step size s (lr on step 0) and last gradient q: f = eta_plus where
///            g q > 0, eta_minus where g q < 0, else 1; s = clamp(s f, step_size_min,
///            step_size_max); g' = 0 where f = eta_minus, else g; p -= sign(g') s; q = g'
Value rprop_update(const Value& var, const Value& prev, const Value& step_size, const Value& grad,
                   const Value& lr, const Value& step, double eta_minus = 0.5,
                   double eta_plus = 1.2, double step_size_min = 1e-6, double step_size_max = 50,
                   const Value& apply_if = {});
///   ASGD:    eta = lr / (1 + lambd lr step)^alpha, mu = 1 / max(1, step - t0); g' = g + wd p;
///            p = p (1 - lambd eta) - eta g';  ax += (p - ax) mu (ax = p while mu = 1)
Value asgd_update(const Value& var, const Value& ax, const Value& grad, const Value& lr,
                  const Value& step, double lambd = 1e-4, double alpha = 0.75, double t0 = 1e6,
                  double weight_decay = 0, const Value& apply_if = {});
/// Adam's hyperparameters, shared by the AMSGrad, Adamax and RAdam updates: weight decay as L2
/// in the gradient, or decoupled (p *= 1 - lr wd first).
struct AdamHyperparameters {
  double beta1 = 0.9, beta2 = 0.999, eps = 1e-8, weight_decay = 0;
  bool decoupled = false;
};
///   AMSGrad: Adam with v_max = max(v_max, v) in the denominator in place of v.
Value amsgrad_update(const Value& var, const Value& m, const Value& v, const Value& v_max,
                     const Value& grad, const Value& lr, const Value& step,
                     const AdamHyperparameters& hyper, const Value& apply_if = {},
                     const Value& momentum_now = {});
///   Adamax:  m as Adam;  u = max(b2 u, |g'| + eps);  p -= lr / (1-b1^t) m / u
Value adamax_update(const Value& var, const Value& m, const Value& u, const Value& grad,
                    const Value& lr, const Value& step, const AdamHyperparameters& hyper,
                    const Value& apply_if = {}, const Value& momentum_now = {});
///   RAdam:   m, v as Adam; the adaptive term rectified once rho_t > 5 (element_rules.h)
Value radam_update(const Value& var, const Value& m, const Value& v, const Value& grad,
                   const Value& lr, const Value& step, const AdamHyperparameters& hyper,
                   const Value& apply_if = {}, const Value& momentum_now = {});
///   NAdam:   m, v as Adam; mu_t = b1 (1 - 0.5 0.96^(t momentum_decay)), `mu_product` the f64
///            scalar mu_1 ... mu_t (this step's included);
///            p -= lr ((1-mu_t) / (1-P_t) g' + mu_{t+1} / (1 - P_t mu_{t+1}) m) / (sqrt(v/c2) +
///            eps)
Value nadam_update(const Value& var, const Value& m, const Value& v, const Value& grad,
                   const Value& lr, const Value& step, const Value& mu_product,
                   const AdamHyperparameters& hyper, double momentum_decay = 4e-3,
                   const Value& apply_if = {}, const Value& momentum_now = {});
///   RMSProp with momentum mu and/or centered: s as rmsprop_update; centered: a = alpha a +
///   (1-alpha) g' and the denominator sqrt(s - a^2) + eps; momentum: b = mu b + g' / denominator,
///   p -= lr b. `grad_avg` (not centered) and `buf` (mu = 0) may then be var itself, unused.
Value rmsprop_momentum_update(const Value& var, const Value& sq, const Value& grad_avg,
                              const Value& buf, const Value& grad, const Value& lr,
                              const Value& step, double alpha, double eps, double weight_decay,
                              double momentum, bool centered, const Value& apply_if = {},
                              const Value& momentum_now = {});

}  // namespace kiln
