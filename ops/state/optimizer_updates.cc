// Fused optimizer updates: each reads the gradient and the slots once and writes the
// variable and slots once, in one parallel loop. Formulas in ops/state.h; they follow
// torch.optim (SGD, Adam/AdamW, RMSprop) so results can be compared step by step.
#include <cmath>

#include "kiln/framework/kernel.h"
#include "kiln/ops/dtypes.h"
#include "kiln/ops/state.h"

namespace kiln {
namespace ops {
namespace {

// Checks that every input after the first has the variable's shape, and lr/step are scalars.
std::vector<TensorType> infer_update(const InferContext& ctx, int num_slots, bool has_step) {
  ctx.expect_dtype(0, {f32, f64});
  for (int i = 1; i <= num_slots + 1; ++i) {  // slots, then the gradient
    ctx.expect_same_dtype(0, i);
    if (!ctx.shape(i).compatible_with(ctx.shape(0)))
      ctx.fail("input ", i, " is ", ctx.shape(i), ", the variable is ", ctx.shape(0));
  }
  const int lr = num_slots + 2;
  ctx.expect_same_dtype(0, lr);
  if (ctx.shape(lr).rank() != 0) ctx.fail("lr must be a scalar, got ", ctx.shape(lr));
  if (has_step) {
    ctx.expect_dtype(lr + 1, {i64});
    if (ctx.shape(lr + 1).rank() != 0) ctx.fail("step must be a scalar");
  }
  const int fixed = lr + 1 + (has_step ? 1 : 0);
  if (ctx.num_inputs() > fixed + 1) ctx.fail("takes at most one apply_if input");
  if (ctx.num_inputs() == fixed + 1) {
    ctx.expect_dtype(fixed, {DType::boolean});
    if (ctx.shape(fixed).rank() != 0)
      ctx.fail("apply_if must be a bool scalar, got ", ctx.shape(fixed));
  }
  return {ctx.input(0)};
}

template <typename T>
T* mutable_data(const Tensor& t) {
  return t.data<T>();
}

// False when the update's optional apply_if input (after its `fixed` inputs) says to skip it.
bool applies(const KernelContext& ctx, int fixed) {
  return ctx.num_inputs() <= fixed || *ctx.input(fixed).data<bool>();
}

void sgd_cpu(KernelContext& ctx) {
  ctx.set_output(0, ctx.input(0));
  if (!applies(ctx, 4)) return;
  const double momentum = ctx.attr<double>("momentum"), wd = ctx.attr<double>("weight_decay");
  const bool nesterov = ctx.attr<bool>("nesterov");
  auto run = [&](auto tag) {
    using T = decltype(tag);
    T* p = mutable_data<T>(ctx.input(0));
    T* buf = mutable_data<T>(ctx.input(1));
    const T* g = ctx.input(2).data<T>();
    const T lr = *ctx.input(3).data<T>();
    const T mu = static_cast<T>(momentum), decay = static_cast<T>(wd);
    ctx.parallel_for(ctx.input(0).numel(), 4, [&](int64_t b, int64_t e) {
      for (int64_t i = b; i < e; ++i) {
        T d = g[i] + decay * p[i];
        if (momentum != 0) {
          buf[i] = mu * buf[i] + d;
          d = nesterov ? d + mu * buf[i] : buf[i];
        }
        p[i] -= lr * d;
      }
    });
  };
  dispatch_float(ctx.input(0).dtype(), run);
}

KILN_OP(sgd_update)
    .input("var")
    .input("buf")
    .input("grad")
    .input("lr")
    .variadic_input("apply_if", 0)
    .attr("momentum", 0.0)
    .attr("nesterov", false)
    .attr("weight_decay", 0.0)
    .mutates_input(0)
    .mutates_input(1)
    .no_gradient()
    .infer([](const InferContext& ctx) { return infer_update(ctx, 1, false); })
    .kernel(DeviceKind::cpu, sgd_cpu, {f32, f64});

void adam_cpu(KernelContext& ctx) {
  ctx.set_output(0, ctx.input(0));
  if (!applies(ctx, 6)) return;
  const double b1 = ctx.attr<double>("beta1"), b2 = ctx.attr<double>("beta2");
  const double eps = ctx.attr<double>("eps"), wd = ctx.attr<double>("weight_decay");
  const bool decoupled = ctx.attr<bool>("decoupled");
  const double t = static_cast<double>(*ctx.input(5).data<int64_t>()) + 1;  // no int overflow
  // Bias corrections in double: 1 - b^t loses everything in f32 for b close to 1.
  const double c1 = 1 - std::pow(b1, t), c2 = 1 - std::pow(b2, t);
  auto run = [&](auto tag) {
    using T = decltype(tag);
    T* p = mutable_data<T>(ctx.input(0));
    T* m = mutable_data<T>(ctx.input(1));
    T* v = mutable_data<T>(ctx.input(2));
    const T* g = ctx.input(3).data<T>();
    const double lr = static_cast<double>(*ctx.input(4).data<T>());
    const T step = static_cast<T>(lr / c1), root_c2 = static_cast<T>(std::sqrt(c2));
    const T beta1 = static_cast<T>(b1), beta2 = static_cast<T>(b2), e = static_cast<T>(eps);
    const T l2 = decoupled ? T(0) : static_cast<T>(wd);
    const T shrink = decoupled ? static_cast<T>(1 - lr * wd) : T(1);
    ctx.parallel_for(ctx.input(0).numel(), 8, [&](int64_t b, int64_t end) {
      for (int64_t i = b; i < end; ++i) {
        const T d = g[i] + l2 * p[i];
        m[i] = beta1 * m[i] + (T(1) - beta1) * d;
        v[i] = beta2 * v[i] + (T(1) - beta2) * d * d;
        p[i] = p[i] * shrink - step * m[i] / (std::sqrt(v[i]) / root_c2 + e);
      }
    });
  };
  dispatch_float(ctx.input(0).dtype(), run);
}

KILN_OP(adam_update)
    .input("var")
    .input("m")
    .input("v")
    .input("grad")
    .input("lr")
    .input("step")
    .variadic_input("apply_if", 0)
    .attr("beta1", 0.9)
    .attr("beta2", 0.999)
    .attr("eps", 1e-8)
    .attr("weight_decay", 0.0)
    .attr("decoupled", false)
    .mutates_input(0)
    .mutates_input(1)
    .mutates_input(2)
    .no_gradient()
    .infer([](const InferContext& ctx) { return infer_update(ctx, 2, true); })
    .kernel(DeviceKind::cpu, adam_cpu, {f32, f64});

void rmsprop_cpu(KernelContext& ctx) {
  ctx.set_output(0, ctx.input(0));
  if (!applies(ctx, 4)) return;
  const double alpha = ctx.attr<double>("alpha"), eps = ctx.attr<double>("eps");
  const double wd = ctx.attr<double>("weight_decay");
  auto run = [&](auto tag) {
    using T = decltype(tag);
    T* p = mutable_data<T>(ctx.input(0));
    T* s = mutable_data<T>(ctx.input(1));
    const T* g = ctx.input(2).data<T>();
    const T lr = *ctx.input(3).data<T>();
    const T a = static_cast<T>(alpha), e = static_cast<T>(eps), decay = static_cast<T>(wd);
    ctx.parallel_for(ctx.input(0).numel(), 6, [&](int64_t b, int64_t end) {
      for (int64_t i = b; i < end; ++i) {
        const T d = g[i] + decay * p[i];
        s[i] = a * s[i] + (T(1) - a) * d * d;
        p[i] -= lr * d / (std::sqrt(s[i]) + e);
      }
    });
  };
  dispatch_float(ctx.input(0).dtype(), run);
}

KILN_OP(rmsprop_update)
    .input("var")
    .input("sq")
    .input("grad")
    .input("lr")
    .variadic_input("apply_if", 0)
    .attr("alpha", 0.99)
    .attr("eps", 1e-8)
    .attr("weight_decay", 0.0)
    .mutates_input(0)
    .mutates_input(1)
    .no_gradient()
    .infer([](const InferContext& ctx) { return infer_update(ctx, 1, false); })
    .kernel(DeviceKind::cpu, rmsprop_cpu, {f32, f64});

}  // namespace
}  // namespace ops

namespace {
// The inputs of an update, with apply_if last when given.
std::vector<Value> with_apply_if(std::vector<Value> inputs, const Value& apply_if) {
  if (apply_if.defined()) inputs.push_back(apply_if);
  return inputs;
}
}  // namespace

Value sgd_update(const Value& var, const Value& buf, const Value& grad, const Value& lr,
                 double momentum, bool nesterov, double weight_decay, const Value& apply_if) {
  return common_graph("sgd_update", {&var, &buf, &grad, &lr})
      .add("sgd_update", with_apply_if({var, buf, grad, lr}, apply_if),
           {{"momentum", momentum}, {"nesterov", nesterov}, {"weight_decay", weight_decay}});
}

Value adam_update(const Value& var, const Value& m, const Value& v, const Value& grad,
                  const Value& lr, const Value& step, double beta1, double beta2, double eps,
                  double weight_decay, bool decoupled, const Value& apply_if) {
  return common_graph("adam_update", {&var, &m, &v, &grad, &lr, &step})
      .add("adam_update", with_apply_if({var, m, v, grad, lr, step}, apply_if),
           {{"beta1", beta1},
            {"beta2", beta2},
            {"eps", eps},
            {"weight_decay", weight_decay},
            {"decoupled", decoupled}});
}

Value rmsprop_update(const Value& var, const Value& sq, const Value& grad, const Value& lr,
                     double alpha, double eps, double weight_decay, const Value& apply_if) {
  return common_graph("rmsprop_update", {&var, &sq, &grad, &lr})
      .add("rmsprop_update", with_apply_if({var, sq, grad, lr}, apply_if),
           {{"alpha", alpha}, {"eps", eps}, {"weight_decay", weight_decay}});
}

}  // namespace kiln
