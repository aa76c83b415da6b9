// Per-element optimizer rules shared by the CPU loops and the CUDA kernels of every fused update
// (sgd_update, adam_update and their product forms matmul_sgd_update and matmul_adam_update,
// adadelta_update, adagrad_update, adamax_update, amsgrad_update, asgd_update, nadam_update,
// radam_update, rmsprop_momentum_update, rmsprop_update and rprop_update), so the two devices run
// one formula. Formulas follow torch.optim. Each rule has:
//   - kSlots, its state tensors after the variable; kHasStep, whether the op takes the i64 step
//     count after lr (or takes_step(ctx), where that depends on the attributes); kScalars, the f64
//     scalar inputs it reads after that (NAdam's running product); a constructor from the node's
//     attributes (on the host; the rule is then copied to the device by value);
//   - kCyclesMomentum: whether the op may take this step's momentum (SGD's and RMSProp's
//     momentum, beta1 of Adam's family) as an f64 scalar input, attribute momentum_input (a
//     schedule that cycles momentum, as OneCycleLR); set_momentum(value) then overrides the
//     attribute before writes() and coefficients();
//   - writes(j): whether slot j is real state (false: the optimizer passed a stand-in, which the
//     update must not write);
//   - coefficients(lr, step, scalars): the step's scalars from lr, the 0-based step count and
//     the kScalars inputs, in double
//     (1 - b^t loses everything in f32 for b close to 1). The CPU computes them once per kernel,
//     the GPU in each thread from device scalars, so a captured CUDA Graph replays each step's;
//   - apply(k, p, s, g): one element, p the variable, s[kSlots] its slots, g the gradient.
#pragma once

#include <cmath>
#include <cstdint>

#include "kiln/framework/dtype.h"
#include "kiln/framework/kernel.h"

namespace kiln::ops {

/// Whether an update on `Rule` takes the i64 step count after lr: always with kHasStep; else
/// where the rule says so from the node's attributes (Rule::takes_step; SGD with dampening).
template <typename Rule>
bool takes_step(const KernelContext& ctx) {
  if constexpr (requires { Rule::takes_step(ctx); })
    return Rule::takes_step(ctx);
  else
    return Rule::kHasStep;
}

/// SGD: d = g + wd p; with momentum b = mu b + (1 - dampening) d and d = b (Nesterov: d + mu b);
/// p -= lr d. The first step sets b = d whatever the dampening (torch's buffer starts as a copy
/// of d): with dampening the op takes the step count to know it.
/// Without momentum the slot is a stand-in (the optimizer passes the variable itself).
struct SgdRule {
  static constexpr int kSlots = 1, kScalars = 0;
  static constexpr bool kHasStep = false, kCyclesMomentum = true;
  double momentum, weight_decay, dampening;
  bool nesterov;

  explicit SgdRule(const KernelContext& ctx)
      : momentum(ctx.attr<double>("momentum")),
        weight_decay(ctx.attr<double>("weight_decay")),
        dampening(ctx.attr<double>("dampening")),
        nesterov(ctx.attr<bool>("nesterov")) {}
  /// Whether the node takes the step count after lr (only to dampen after the first step).
  static bool takes_step(const KernelContext& ctx) { return ctx.attr<double>("dampening") != 0; }
  KILN_HOST_DEVICE void set_momentum(double value) { momentum = value; }
  KILN_HOST_DEVICE bool writes(int) const { return momentum != 0; }

  template <typename T>
  struct Coefficients {
    T lr, momentum, decay, undamped;  // undamped: 1 - dampening, 1 at the first step
  };
  template <typename T>
  KILN_HOST_DEVICE Coefficients<T> coefficients(T lr, int64_t step, const double*) const {
    return {lr, static_cast<T>(momentum), static_cast<T>(weight_decay),
            static_cast<T>(step == 0 ? 1 : 1 - dampening)};
  }
  template <typename T>
  KILN_HOST_DEVICE void apply(const Coefficients<T>& k, T& p, T* s, T g) const {
    T d = g + k.decay * p;
    if (momentum != 0) {
      // Without dampening d is added as is: the bits of the undamped rule, FMA or not.
      s[0] = k.momentum * s[0] + (dampening != 0 ? k.undamped * d : d);
      d = nesterov ? d + k.momentum * s[0] : s[0];
    }
    p -= k.lr * d;
  }
};

/// Adagrad: clr = lr / (1 + step lr_decay);  d = g + wd p;  s += d^2;  p -= clr d / (sqrt(s) +
/// eps).
struct AdagradRule {
  static constexpr int kSlots = 1, kScalars = 0;
  static constexpr bool kHasStep = true, kCyclesMomentum = false;
  double lr_decay, eps, weight_decay;

  explicit AdagradRule(const KernelContext& ctx)
      : lr_decay(ctx.attr<double>("lr_decay")),
        eps(ctx.attr<double>("eps")),
        weight_decay(ctx.attr<double>("weight_decay")) {}
  KILN_HOST_DEVICE bool writes(int) const { return true; }

  template <typename T>
  struct Coefficients {
    T rate, eps, decay;
  };
  template <typename T>
  KILN_HOST_DEVICE Coefficients<T> coefficients(T lr, int64_t step, const double*) const {
    return {static_cast<T>(static_cast<double>(lr) / (1 + static_cast<double>(step) * lr_decay)),
            static_cast<T>(eps), static_cast<T>(weight_decay)};
  }
  template <typename T>
  KILN_HOST_DEVICE void apply(const Coefficients<T>& k, T& p, T* s, T g) const {
    using std::sqrt;
    const T d = g + k.decay * p;
    s[0] += d * d;
    p -= k.rate * d / (sqrt(s[0]) + k.eps);
  }
};

/// Rprop (resilient backpropagation), as torch.optim.Rprop: each element keeps its own step
/// size s (lr at the first step) and the last gradient q. With f = eta_plus where g q > 0,
/// eta_minus where g q < 0, else 1: s = clamp(s f, step_size_min, step_size_max); where f is
/// eta_minus the gradient counts as 0 (no move, and q = 0); p -= sign(g) s; q = g.
struct RpropRule {
  static constexpr int kSlots = 2, kScalars = 0;  // q, s
  static constexpr bool kHasStep = true, kCyclesMomentum = false;
  double eta_minus, eta_plus, step_size_min, step_size_max;

  explicit RpropRule(const KernelContext& ctx)
      : eta_minus(ctx.attr<double>("eta_minus")),
        eta_plus(ctx.attr<double>("eta_plus")),
        step_size_min(ctx.attr<double>("step_size_min")),
        step_size_max(ctx.attr<double>("step_size_max")) {}
  KILN_HOST_DEVICE bool writes(int) const { return true; }

  template <typename T>
  struct Coefficients {
    T initial, eta_minus, eta_plus, low, high;  // initial: lr on the first step, else 0
  };
  template <typename T>
  KILN_HOST_DEVICE Coefficients<T> coefficients(T lr, int64_t step, const double*) const {
    return {step == 0 ? lr : T(0), static_cast<T>(eta_minus), static_cast<T>(eta_plus),
            static_cast<T>(step_size_min), static_cast<T>(step_size_max)};
  }
  template <typename T>
  KILN_HOST_DEVICE void apply(const Coefficients<T>& k, T& p, T* s, T g) const {
    const T trend = g * s[0];
    const T factor = trend > T(0) ? k.eta_plus : trend < T(0) ? k.eta_minus : T(1);
    const T size = (k.initial != T(0) ? k.initial : s[1]) * factor;
    s[1] = size < k.low ? k.low : size > k.high ? k.high : size;
    const T d = factor == k.eta_minus ? T(0) : g;
    p -= (d > T(0) ? s[1] : d < T(0) ? -s[1] : T(0));
    s[0] = d;
  }
};

/// ASGD (averaged SGD), as torch.optim.ASGD: at step t (0-based) eta = lr / (1 + lambd lr t)^alpha
/// and mu = 1 / max(1, t - t0); d = g + wd p; p = p (1 - lambd eta) - eta d; the average
/// a += (p - a) mu (a = p while mu is 1).
struct AsgdRule {
  static constexpr int kSlots = 1, kScalars = 0;  // a
  static constexpr bool kHasStep = true, kCyclesMomentum = false;
  double lambd, alpha, t0, weight_decay;

  explicit AsgdRule(const KernelContext& ctx)
      : lambd(ctx.attr<double>("lambd")),
        alpha(ctx.attr<double>("alpha")),
        t0(ctx.attr<double>("t0")),
        weight_decay(ctx.attr<double>("weight_decay")) {}
  KILN_HOST_DEVICE bool writes(int) const { return true; }

  template <typename T>
  struct Coefficients {
    T eta, keep, mu, decay;
  };
  template <typename T>
  KILN_HOST_DEVICE Coefficients<T> coefficients(T lr_value, int64_t step, const double*) const {
    using std::pow;
    const double lr = static_cast<double>(lr_value), t = static_cast<double>(step);
    const double eta = lr / pow(1 + lambd * lr * t, alpha);
    const double over = t - t0;
    return {static_cast<T>(eta), static_cast<T>(1 - lambd * eta),
            static_cast<T>(1 / (over > 1 ? over : 1)), static_cast<T>(weight_decay)};
  }
  template <typename T>
  KILN_HOST_DEVICE void apply(const Coefficients<T>& k, T& p, T* s, T g) const {
    const T d = g + k.decay * p;
    p *= k.keep;
    p -= k.eta * d;
    s[0] = k.mu == T(1) ? p : s[0] + (p - s[0]) * k.mu;
  }
};

/// The moment updates and bias corrections Adam's variants share: L2 decay in the gradient, or
/// decoupled (p *= 1 - lr wd first, as AdamW); t = step + 1, c1 = 1 - b1^t, c2 = 1 - b2^t.
struct AdamFamily {
  static constexpr int kScalars = 0;
  static constexpr bool kHasStep = true, kCyclesMomentum = true;
  double beta1, beta2, eps, weight_decay;
  bool decoupled;

  explicit AdamFamily(const KernelContext& ctx)
      : beta1(ctx.attr<double>("beta1")),
        beta2(ctx.attr<double>("beta2")),
        eps(ctx.attr<double>("eps")),
        weight_decay(ctx.attr<double>("weight_decay")),
        decoupled(ctx.attr<bool>("decoupled")) {}
  KILN_HOST_DEVICE void set_momentum(double value) { beta1 = value; }
  KILN_HOST_DEVICE bool writes(int) const { return true; }

  /// The per-step scalars: the learning rate over c1, sqrt(c2), the decays and the moment rates.
  /// `extra` is for the rule's own (RAdam's rectification).
  template <typename T>
  struct Coefficients {
    T rate, root_c2, eps, l2, shrink, beta1, beta2, extra;
  };
  template <typename T>
  KILN_HOST_DEVICE Coefficients<T> common(T lr_value, int64_t step) const {
    using std::pow, std::sqrt;
    const double lr = static_cast<double>(lr_value), t = static_cast<double>(step) + 1;
    const double c1 = 1 - pow(beta1, t), c2 = 1 - pow(beta2, t);
    return {static_cast<T>(lr / c1),
            static_cast<T>(sqrt(c2)),
            static_cast<T>(eps),
            decoupled ? T(0) : static_cast<T>(weight_decay),
            decoupled ? static_cast<T>(1 - lr * weight_decay) : T(1),
            static_cast<T>(beta1),
            static_cast<T>(beta2),
            T(0)};
  }
  /// The coefficients of the rules that need nothing more (AMSGrad, Adamax).
  template <typename T>
  KILN_HOST_DEVICE Coefficients<T> coefficients(T lr, int64_t step, const double*) const {
    return common(lr, step);
  }
  /// v = b2 v + (1 - b2) d^2.
  template <typename T>
  KILN_HOST_DEVICE static void second_moment(const Coefficients<T>& k, T& v, T d) {
    v = k.beta2 * v + (T(1) - k.beta2) * d * d;
  }
  /// d = g + l2 p, then p shrinks; returns d. m = b1 m + (1 - b1) d.
  template <typename T>
  KILN_HOST_DEVICE static T decay_and_first_moment(const Coefficients<T>& k, T& p, T& m, T g) {
    const T d = g + k.l2 * p;
    p *= k.shrink;
    m = k.beta1 * m + (T(1) - k.beta1) * d;
    return d;
  }
};

/// Adam (L2 decay) and AdamW (decoupled): m = b1 m + (1 - b1) d, v = b2 v + (1 - b2) d^2,
/// p = p shrink - lr / c1 m / (sqrt(v) / sqrt(c2) + eps).
struct AdamRule : AdamFamily {
  static constexpr int kSlots = 2;  // m, v
  using AdamFamily::AdamFamily;
  template <typename T>
  KILN_HOST_DEVICE void apply(const Coefficients<T>& k, T& p, T* s, T g) const {
    using std::sqrt;
    const T d = g + k.l2 * p;
    s[0] = k.beta1 * s[0] + (T(1) - k.beta1) * d;
    second_moment(k, s[1], d);
    // One expression, as Adam's kernels always had it (the shrink and the step fuse alike).
    p = p * k.shrink - k.rate * s[0] / (sqrt(s[1]) / k.root_c2 + k.eps);
  }
};

/// Adam with AMSGrad: as Adam, with the denominator from the largest v so far:
/// v_max = max(v_max, v);  p -= lr / c1 m / (sqrt(v_max) / sqrt(c2) + eps).
struct AmsgradRule : AdamFamily {
  static constexpr int kSlots = 3;  // m, v, v_max
  using AdamFamily::AdamFamily;
  template <typename T>
  KILN_HOST_DEVICE void apply(const Coefficients<T>& k, T& p, T* s, T g) const {
    using std::sqrt;
    const T d = decay_and_first_moment(k, p, s[0], g);
    second_moment(k, s[1], d);
    s[2] = s[2] > s[1] ? s[2] : s[1];
    p -= k.rate * s[0] / (sqrt(s[2]) / k.root_c2 + k.eps);
  }
};

/// Adamax (Adam's infinity norm): u = max(b2 u, |d| + eps);  p -= lr / c1 m / u.
struct AdamaxRule : AdamFamily {
  static constexpr int kSlots = 2;  // m, u
  using AdamFamily::AdamFamily;
  template <typename T>
  KILN_HOST_DEVICE void apply(const Coefficients<T>& k, T& p, T* s, T g) const {
    using std::abs;
    const T d = decay_and_first_moment(k, p, s[0], g);
    const T decayed = k.beta2 * s[1], magnitude = abs(d) + k.eps;
    s[1] = decayed > magnitude ? decayed : magnitude;
    p -= k.rate * s[0] / s[1];
  }
};

/// RAdam (Liu et al.): Adam whose adaptive term is switched on, rectified, once the variance of
/// the adaptive rate is tractable. rho_inf = 2 / (1 - b2) - 1, rho_t = rho_inf - 2 t b2^t / c2;
/// for rho_t > 5, r = sqrt((rho_t - 4)(rho_t - 2) rho_inf / ((rho_inf - 4)(rho_inf - 2) rho_t))
/// and p -= lr / c1 m r sqrt(c2) / (sqrt(v) + eps); before that p -= lr / c1 m.
struct RadamRule : AdamFamily {
  static constexpr int kSlots = 2;  // m, v
  using AdamFamily::AdamFamily;
  template <typename T>
  KILN_HOST_DEVICE Coefficients<T> coefficients(T lr, int64_t step, const double*) const {
    using std::pow, std::sqrt;
    Coefficients<T> k = common(lr, step);
    const double t = static_cast<double>(step) + 1, power = pow(beta2, t);
    const double rho_inf = 2 / (1 - beta2) - 1, rho = rho_inf - 2 * t * power / (1 - power);
    k.extra = rho > 5 ? static_cast<T>(sqrt((rho - 4) * (rho - 2) * rho_inf /
                                            ((rho_inf - 4) * (rho_inf - 2) * rho)))
                      : T(0);  // 0: no adaptive term yet
    return k;
  }
  template <typename T>
  KILN_HOST_DEVICE void apply(const Coefficients<T>& k, T& p, T* s, T g) const {
    using std::sqrt;
    const T d = decay_and_first_moment(k, p, s[0], g);
    second_moment(k, s[1], d);
    const T step = k.rate * s[0];
    p -= k.extra == T(0) ? step : step * k.extra * k.root_c2 / (sqrt(s[1]) + k.eps);
  }
};

/// NAdam (Dozat: Adam with Nesterov momentum), as torch.optim.NAdam: the momentum schedule
/// mu_t = b1 (1 - 0.5 0.96^(t psi)), psi = momentum_decay, and P_t = mu_1 ... mu_t (scalar input
/// 0, kept by the optimizer: it has no closed form). With m, v as Adam's and the denominator
/// D = sqrt(v / c2) + eps:
///   p -= lr (1 - mu_t) / (1 - P_t) g' / D + lr mu_{t+1} / (1 - P_t mu_{t+1}) m / D.
struct NadamRule : AdamFamily {
  static constexpr int kSlots = 2, kScalars = 1;  // m, v; P_t
  double momentum_decay;
  explicit NadamRule(const KernelContext& ctx)
      : AdamFamily(ctx), momentum_decay(ctx.attr<double>("momentum_decay")) {}
  /// mu_t.
  KILN_HOST_DEVICE double momentum_at(double t) const {
    using std::pow;
    return beta1 * (1 - 0.5 * pow(0.96, t * momentum_decay));
  }
  template <typename T>
  KILN_HOST_DEVICE Coefficients<T> coefficients(T lr, int64_t step, const double* scalars) const {
    Coefficients<T> k = common(lr, step);
    const double t = static_cast<double>(step) + 1, product = scalars[0];
    const double mu = momentum_at(t), mu_next = momentum_at(t + 1), rate = static_cast<double>(lr);
    k.rate = static_cast<T>(rate * mu_next / (1 - product * mu_next));  // on m
    k.extra = static_cast<T>(rate * (1 - mu) / (1 - product));          // on g'
    return k;
  }
  template <typename T>
  KILN_HOST_DEVICE void apply(const Coefficients<T>& k, T& p, T* s, T g) const {
    using std::sqrt;
    const T d = decay_and_first_moment(k, p, s[0], g);
    second_moment(k, s[1], d);
    const T denominator = sqrt(s[1]) / k.root_c2 + k.eps;
    p -= (k.extra * d + k.rate * s[0]) / denominator;
  }
};

/// Adadelta (Zeiler), as torch.optim.Adadelta: d = g + wd p; s = rho s + (1 - rho) d^2;
/// delta = sqrt(u + eps) / sqrt(s + eps) d; u = rho u + (1 - rho) delta^2; p -= lr delta. The
/// ratio of the two running RMS gives each element its own unit-correct step; lr only scales it.
struct AdadeltaRule {
  static constexpr int kSlots = 2, kScalars = 0;  // s (square_avg), u (acc_delta)
  static constexpr bool kHasStep = false, kCyclesMomentum = false;
  double rho, eps, weight_decay;

  explicit AdadeltaRule(const KernelContext& ctx)
      : rho(ctx.attr<double>("rho")),
        eps(ctx.attr<double>("eps")),
        weight_decay(ctx.attr<double>("weight_decay")) {}
  KILN_HOST_DEVICE bool writes(int) const { return true; }

  template <typename T>
  struct Coefficients {
    T lr, rho, eps, decay;
  };
  template <typename T>
  KILN_HOST_DEVICE Coefficients<T> coefficients(T lr, int64_t, const double*) const {
    return {lr, static_cast<T>(rho), static_cast<T>(eps), static_cast<T>(weight_decay)};
  }
  template <typename T>
  KILN_HOST_DEVICE void apply(const Coefficients<T>& k, T& p, T* s, T g) const {
    using std::sqrt;
    const T d = g + k.decay * p;
    s[0] = k.rho * s[0] + (T(1) - k.rho) * (d * d);
    // torch's order: sqrt(u + eps) / sqrt(s + eps), then times d.
    const T delta = sqrt(s[1] + k.eps) / sqrt(s[0] + k.eps) * d;
    s[1] = k.rho * s[1] + (T(1) - k.rho) * (delta * delta);
    p -= k.lr * delta;
  }
};

/// Plain RMSProp (rmsprop_update), as torch.optim.RMSprop without momentum or centering:
/// d = g + wd p; s = a s + (1 - a) d^2; p -= lr d / (sqrt(s) + eps).
struct RmspropRule {
  static constexpr int kSlots = 1, kScalars = 0;
  static constexpr bool kHasStep = false, kCyclesMomentum = false;
  double alpha, eps, weight_decay;

  explicit RmspropRule(const KernelContext& ctx)
      : alpha(ctx.attr<double>("alpha")),
        eps(ctx.attr<double>("eps")),
        weight_decay(ctx.attr<double>("weight_decay")) {}
  KILN_HOST_DEVICE bool writes(int) const { return true; }

  template <typename T>
  struct Coefficients {
    T lr, alpha, eps, decay;
  };
  template <typename T>
  KILN_HOST_DEVICE Coefficients<T> coefficients(T lr, int64_t, const double*) const {
    return {lr, static_cast<T>(alpha), static_cast<T>(eps), static_cast<T>(weight_decay)};
  }
  template <typename T>
  KILN_HOST_DEVICE void apply(const Coefficients<T>& k, T& p, T* s, T g) const {
    using std::sqrt;
    const T d = g + k.decay * p;
    s[0] = k.alpha * s[0] + (T(1) - k.alpha) * d * d;
    p -= k.lr * (d / (sqrt(s[0]) + k.eps));
  }
};

/// RMSProp with momentum or centered (or both), as torch.optim.RMSprop: d = g + wd p;
/// s = a s + (1 - a) d^2; centered: m = a m + (1 - a) d and the denominator
/// sqrt(s - m^2) + eps (else sqrt(s) + eps); with momentum b = mu b + d / denominator and
/// p -= lr b, else p -= lr d / denominator. Slots s, m (a stand-in when not centered) and b (a
/// stand-in without momentum).
struct RmspropMomentumRule {
  static constexpr int kSlots = 3, kScalars = 0;
  static constexpr bool kHasStep = true, kCyclesMomentum = true;
  double alpha, eps, weight_decay, momentum;
  bool centered;

  explicit RmspropMomentumRule(const KernelContext& ctx)
      : alpha(ctx.attr<double>("alpha")),
        eps(ctx.attr<double>("eps")),
        weight_decay(ctx.attr<double>("weight_decay")),
        momentum(ctx.attr<double>("momentum")),
        centered(ctx.attr<bool>("centered")) {}
  KILN_HOST_DEVICE void set_momentum(double value) { momentum = value; }
  KILN_HOST_DEVICE bool writes(int slot) const {
    return slot == 0 || (slot == 1 && centered) || (slot == 2 && momentum != 0);
  }

  template <typename T>
  struct Coefficients {
    T lr, alpha, eps, decay, momentum;
  };
  template <typename T>
  KILN_HOST_DEVICE Coefficients<T> coefficients(T lr, int64_t, const double*) const {
    return {lr, static_cast<T>(alpha), static_cast<T>(eps), static_cast<T>(weight_decay),
            static_cast<T>(momentum)};
  }
  template <typename T>
  KILN_HOST_DEVICE void apply(const Coefficients<T>& k, T& p, T* s, T g) const {
    using std::sqrt;
    const T d = g + k.decay * p;
    s[0] = k.alpha * s[0] + (T(1) - k.alpha) * d * d;
    T variance = s[0];
    if (centered) {
      s[1] = k.alpha * s[1] + (T(1) - k.alpha) * d;
      variance -= s[1] * s[1];
    }
    const T scaled = d / (sqrt(variance) + k.eps);
    if (momentum != 0) {
      s[2] = k.momentum * s[2] + scaled;
      p -= k.lr * s[2];
    } else {
      p -= k.lr * scaled;
    }
  }
};

}  // namespace kiln::ops
