// The per-element arithmetic of the optimizer updates, over a contiguous run of elements, shared
// by the plain updates (sgd_update, adam_update: the gradient a tensor) and the product updates
// (matmul_sgd_update, matmul_adam_update: the gradient a product, one block at a time), so the
// two give the same bits for the same gradient. Formulas follow torch.optim.
#pragma once

#include <cmath>
#include <cstdint>

#include "kiln/framework/kernel.h"

namespace kiln::ops {

/// SGD: d = g + weight_decay p; with momentum, buf = momentum buf + d and d = buf (Nesterov:
/// d + momentum buf); p -= lr d.
template <typename T>
struct SgdRule {
  T lr, momentum, decay;
  bool nesterov, has_momentum;

  /// The node's attributes, and lr from input `lr_input`.
  SgdRule(const KernelContext& ctx, int lr_input)
      : lr(*ctx.input(lr_input).data<T>()),
        momentum(static_cast<T>(ctx.attr<double>("momentum"))),
        decay(static_cast<T>(ctx.attr<double>("weight_decay"))),
        nesterov(ctx.attr<bool>("nesterov")),
        has_momentum(ctx.attr<double>("momentum") != 0) {}

  /// Elements [0, n) of p and buf (slot 0), the gradient g. One loop per variant, each with
  /// the rule's values in locals, so the compiler vectorizes it.
  void operator()(T* __restrict p, T* __restrict buf, const T* __restrict g, int64_t n) const {
    const T rate = lr, mu = momentum, wd = decay;
    if (!has_momentum) {
      for (int64_t i = 0; i < n; ++i) p[i] -= rate * (g[i] + wd * p[i]);
    } else if (!nesterov) {
      for (int64_t i = 0; i < n; ++i) {
        const T b = mu * buf[i] + (g[i] + wd * p[i]);
        buf[i] = b;
        p[i] -= rate * b;
      }
    } else {
      for (int64_t i = 0; i < n; ++i) {
        const T d = g[i] + wd * p[i];
        const T b = mu * buf[i] + d;
        buf[i] = b;
        p[i] -= rate * (d + mu * b);
      }
    }
  }
};

/// Adam (L2 decay in the gradient) and AdamW (decoupled: p shrinks by lr wd first):
/// m = b1 m + (1 - b1) d, v = b2 v + (1 - b2) d^2,
/// p = p shrink - lr / c1 m / (sqrt(v) / sqrt(c2) + eps) with c = 1 - b^t the bias corrections.
template <typename T>
struct AdamRule {
  T step, root_c2, beta1, beta2, eps, l2, shrink;

  /// The node's attributes, lr from input `lr_input` and the step count t - 1 from the next.
  AdamRule(const KernelContext& ctx, int lr_input) {
    const double b1 = ctx.attr<double>("beta1"), b2 = ctx.attr<double>("beta2");
    const double wd = ctx.attr<double>("weight_decay");
    const bool decoupled = ctx.attr<bool>("decoupled");
    // In double: no integer overflow, and 1 - b^t loses everything in f32 for b close to 1.
    const double t = static_cast<double>(*ctx.input(lr_input + 1).data<int64_t>()) + 1;
    const double c1 = 1 - std::pow(b1, t), c2 = 1 - std::pow(b2, t);
    const double lr = static_cast<double>(*ctx.input(lr_input).data<T>());
    step = static_cast<T>(lr / c1);
    root_c2 = static_cast<T>(std::sqrt(c2));
    beta1 = static_cast<T>(b1);
    beta2 = static_cast<T>(b2);
    eps = static_cast<T>(ctx.attr<double>("eps"));
    l2 = decoupled ? T(0) : static_cast<T>(wd);
    shrink = decoupled ? static_cast<T>(1 - lr * wd) : T(1);
  }

  /// Elements [0, n) of p, m (slot 0), v (slot 1), the gradient g.
  void operator()(T* __restrict p, T* __restrict m, T* __restrict v, const T* __restrict g,
                  int64_t n) const {
    const T b1 = beta1, b2 = beta2, rate = step, root = root_c2, e = eps, wd = l2, keep = shrink;
    for (int64_t i = 0; i < n; ++i) {
      const T d = g[i] + wd * p[i];
      const T mi = b1 * m[i] + (T(1) - b1) * d;
      const T vi = b2 * v[i] + (T(1) - b2) * d * d;
      m[i] = mi;
      v[i] = vi;
      p[i] = p[i] * keep - rate * mi / (std::sqrt(vi) / root + e);
    }
  }
};

}  // namespace kiln::ops
