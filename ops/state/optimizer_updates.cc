// Fused optimizer updates: each reads the gradient and the slots once and writes the
// variable and slots once, in one parallel loop. Formulas in ops/state.h; they follow
// torch.optim (SGD, Adam/AdamW and AMSGrad, Adamax, NAdam, RAdam, Adadelta, Adagrad, RMSprop,
// Rprop, ASGD) so results can be compared step by step. Each update's per-element rule is in
// element_rules.h, shared with the CUDA kernels and, for SGD and Adam, with the product updates.
#include <algorithm>
#include <cmath>
#include <type_traits>
#include <utility>

#include "kiln/framework/kernel.h"
#include "kiln/ops/dtypes.h"
#include "kiln/ops/math/blocked_product.h"
#include "kiln/ops/state.h"
#include "kiln/ops/state/element_rules.h"

namespace kiln {
namespace ops {
namespace {

// Checks an update's inputs: var, its slots and the gradient with the variable's shape (with
// `product`, the gradient is op(a) op(b) of two matrices, inputs a and b, and must be the
// variable's shape), lr (and step) scalars, `num_scalars` f64 scalars, this step's momentum (an
// f64 scalar) where the op `cycles_momentum` and its attribute momentum_input is set, an optional
// bool apply_if last.
std::vector<TensorType> infer_update(const InferContext& ctx, int num_slots, bool has_step,
                                     bool product = false, int num_scalars = 0,
                                     bool cycles_momentum = true) {
  if (cycles_momentum && ctx.attr<bool>("momentum_input")) ++num_scalars;
  // The count first: which inputs there must be depends on attributes (SGD's dampening takes a
  // step, momentum_input a scalar) that the schema's fixed inputs do not cover.
  const int gradient = num_slots + 1, lr = gradient + (product ? 2 : 1);
  const int scalars = lr + 1 + (has_step ? 1 : 0), fixed = scalars + num_scalars;
  if (ctx.num_inputs() < fixed)
    ctx.fail("takes ", fixed, " inputs or more, got ", ctx.num_inputs());
  if (ctx.num_inputs() > fixed + 1) ctx.fail("takes at most one apply_if input");
  ctx.expect_dtype(0, {f32, f64});
  for (int i = 1; i < gradient + (product ? 2 : 1); ++i) ctx.expect_same_dtype(0, i);
  for (int i = 1; i < (product ? gradient : gradient + 1); ++i)
    if (!ctx.shape(i).compatible_with(ctx.shape(0)))
      ctx.fail("input ", i, " is ", ctx.shape(i), ", the variable is ", ctx.shape(0));
  if (product) {
    const Shape &a = ctx.shape(gradient), &b = ctx.shape(gradient + 1), &var = ctx.shape(0);
    const bool ta = ctx.attr<bool>("transpose_a"), tb = ctx.attr<bool>("transpose_b");
    if (a.rank() != 2 || b.rank() != 2 || var.rank() != 2)
      ctx.fail("the gradient's factors and the variable must be matrices; a is ", a, ", b is ", b,
               ", the variable ", var);
    const Shape c{ta ? a[1] : a[0], tb ? b[0] : b[1]};
    const int64_t ka = ta ? a[0] : a[1], kb = tb ? b[1] : b[0];
    if ((ka >= 0 && kb >= 0 && ka != kb) || !c.compatible_with(var))
      ctx.fail("the gradient a", (ta ? "^T" : ""), " b", (tb ? "^T" : ""), " with a ", a, " and b ",
               b, " is not the variable's shape ", var);
  }
  ctx.expect_same_dtype(0, lr);
  if (ctx.shape(lr).rank() != 0) ctx.fail("lr must be a scalar, got ", ctx.shape(lr));
  if (has_step) {
    ctx.expect_dtype(lr + 1, {i64});
    if (ctx.shape(lr + 1).rank() != 0) ctx.fail("step must be a scalar");
  }
  for (int i = scalars; i < fixed; ++i) {
    ctx.expect_dtype(i, {f64});
    if (ctx.shape(i).rank() != 0) ctx.fail("input ", i, " must be a scalar, got ", ctx.shape(i));
  }
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

// An update's kernel: its rule over every element (defined below, after RuleUpdate).
template <typename Rule>
void update_cpu(KernelContext& ctx);
// The product form of SGD's and Adam's updates (the gradient op(a) op(b), below).
template <typename Rule>
void product_update_cpu(KernelContext& ctx);

// SGD with dampening takes the step count after lr (its first step is not dampened).
bool dampens(const InferContext& ctx) {
  const double dampening = ctx.attr<double>("dampening");
  if (!(dampening >= 0 && dampening <= 1)) ctx.fail("dampening must be in [0, 1], got ", dampening);
  return dampening != 0;
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
    .attr("dampening", 0.0)
    .attr("momentum_input", false)
    .mutates_input(0)
    .mutates_input(1)
    .no_gradient()
    .infer([](const InferContext& ctx) { return infer_update(ctx, 1, dampens(ctx)); })
    .kernel(DeviceKind::cpu, update_cpu<SgdRule>, {f32, f64});

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
    .attr("momentum_input", false)
    .attr("decoupled", false)
    .mutates_input(0)
    .mutates_input(1)
    .mutates_input(2)
    .no_gradient()
    .infer([](const InferContext& ctx) { return infer_update(ctx, 2, true); })
    .kernel(DeviceKind::cpu, update_cpu<AdamRule>, {f32, f64});

// ---- The updates whose gradient is a product, made by the matmul_epilogue pass on the CPU
// from an update whose gradient is a matmul that nothing else reads (a Linear layer's weight
// gradient, x^T dy). Each block of op(a) op(b) is computed into the thread's scratch (~512 KiB,
// in L2) and applied to the variable and its slots at once, by the same rule as the plain
// update: the gradient is never written whole and read back. Inputs as the plain update's with
// the gradient replaced by a and b; the attributes add transpose_a and transpose_b.

KILN_OP(matmul_sgd_update)
    .input("var")
    .input("buf")
    .input("a")
    .input("b")
    .input("lr")
    .variadic_input("apply_if", 0)
    .attr("momentum", 0.0)
    .attr("nesterov", false)
    .attr("weight_decay", 0.0)
    .attr("dampening", 0.0)
    .attr("momentum_input", false)
    .attr("transpose_a", false)
    .attr("transpose_b", false)
    .mutates_input(0)
    .mutates_input(1)
    .no_gradient()
    .infer([](const InferContext& ctx) { return infer_update(ctx, 1, dampens(ctx), true); })
    .kernel(DeviceKind::cpu, product_update_cpu<SgdRule>, {f32, f64});

KILN_OP(matmul_adam_update)
    .input("var")
    .input("m")
    .input("v")
    .input("a")
    .input("b")
    .input("lr")
    .input("step")
    .variadic_input("apply_if", 0)
    .attr("beta1", 0.9)
    .attr("beta2", 0.999)
    .attr("eps", 1e-8)
    .attr("weight_decay", 0.0)
    .attr("momentum_input", false)
    .attr("decoupled", false)
    .attr("transpose_a", false)
    .attr("transpose_b", false)
    .mutates_input(0)
    .mutates_input(1)
    .mutates_input(2)
    .no_gradient()
    .infer([](const InferContext& ctx) { return infer_update(ctx, 2, true, true); })
    .kernel(DeviceKind::cpu, product_update_cpu<AdamRule>, {f32, f64});

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
    .infer([](const InferContext& ctx) { return infer_update(ctx, 1, false, false, 0, false); })
    .kernel(DeviceKind::cpu, update_cpu<RmspropRule>, {f32, f64});

// Adadelta takes no step count (its rule does not depend on it).
KILN_OP(adadelta_update)
    .input("var")
    .input("square_avg")
    .input("acc_delta")
    .input("grad")
    .input("lr")
    .variadic_input("apply_if", 0)
    .attr("rho", 0.9)
    .attr("eps", 1e-6)
    .attr("weight_decay", 0.0)
    .mutates_input(0)
    .mutates_input(1)
    .mutates_input(2)
    .no_gradient()
    .infer([](const InferContext& ctx) {
      const double rho = ctx.attr<double>("rho"), eps = ctx.attr<double>("eps");
      if (!(rho >= 0 && rho <= 1)) ctx.fail("rho must be in [0, 1], got ", rho);
      if (!(eps >= 0)) ctx.fail("eps must be >= 0, got ", eps);
      return infer_update(ctx, 2, false, false, 0, false);
    })
    .kernel(DeviceKind::cpu, update_cpu<AdadeltaRule>, {f32, f64});

// ---- The kernels: every update runs its rule from element_rules.h (one formula for both
// devices) over contiguous runs of elements.

constexpr int64_t kRun = 512;  // elements per run: the stand-in scratch runs fit in L1

// `count` elements of one rule's update, every pointer its own storage (restrict: the loop
// vectorizes). Slots past Rule::kSlots are null and untouched.
template <typename Rule, typename K, typename T>
void apply_run(const Rule& rule, const K& k, int64_t count, T* __restrict p, const T* __restrict g,
               T* __restrict s0, T* __restrict s1, T* __restrict s2) {
  constexpr int kSlots = Rule::kSlots;
  for (int64_t i = 0; i < count; ++i) {
    T s[kSlots];
    s[0] = s0[i];
    if constexpr (kSlots > 1) s[1] = s1[i];
    if constexpr (kSlots > 2) s[2] = s2[i];
    rule.apply(k, p[i], s, g[i]);
    s0[i] = s[0];
    if constexpr (kSlots > 1) s1[i] = s[1];
    if constexpr (kSlots > 2) s2[i] = s[2];
  }
}

// One update in flight: the rule, its step's coefficients, the variable and its slots (null for
// a stand-in: the variable itself passed where the rule keeps no state).
template <typename Rule, typename T>
struct RuleUpdate {
  using Coefficients = decltype(std::declval<Rule>().coefficients(T(), 0, nullptr));
  const Rule& rule;
  Coefficients k;
  T* p;
  T* slots[3];

  /// Elements [at, at + count) with the gradient g (count elements), in runs of kRun. A
  /// stand-in slot reads and writes a scratch run of its own instead (restrict pointers must not
  /// share one); the rule does not change it, so `scratch` zeroed once stays zero.
  void apply(int64_t at, const T* g, int64_t count, T (&scratch)[3][kRun]) const {
    for (int64_t done = 0; done < count; done += kRun) {
      T* run[3];
      for (int j = 0; j < 3; ++j)
        run[j] = j >= Rule::kSlots ? nullptr : slots[j] ? slots[j] + at + done : scratch[j];
      apply_run(rule, k, std::min(kRun, count - done), p + at + done, g + done, run[0], run[1],
                run[2]);
    }
  }
};

// Whether the node takes this step's momentum as an input (attribute momentum_input).
template <typename Rule, typename Context>
bool takes_momentum(const Context& ctx) {
  if constexpr (Rule::kCyclesMomentum) return ctx.template attr<bool>("momentum_input");
  return false;
}

// The inputs of an update with rule Rule: var, the kSlots slots, the gradient (one tensor, or with
// `product` the two factors), lr, the step when the rule has one, the rule's kScalars f64
// scalars, the momentum when the node takes it (-1: not), apply_if.
template <typename Rule>
struct UpdateInputs {
  int gradient, lr, step, scalars, momentum, apply_if;
  UpdateInputs(const KernelContext& ctx, bool product)
      : gradient(Rule::kSlots + 1),
        lr(gradient + (product ? 2 : 1)),
        step(takes_step<Rule>(ctx) ? lr + 1 : -1),
        scalars(lr + 1 + (step >= 0 ? 1 : 0)),
        momentum(takes_momentum<Rule>(ctx) ? scalars + Rule::kScalars : -1),
        apply_if(scalars + Rule::kScalars + (momentum >= 0 ? 1 : 0)) {}
};

// Runs `body(update)` with the node's RuleUpdate, unless apply_if says to skip the step. The
// variable is the output, updated in place.
template <typename Rule, typename Body>
void with_rule_update(KernelContext& ctx, bool product, const Body& body) {
  static_assert(Rule::kSlots >= 1 && Rule::kSlots <= 3);
  const UpdateInputs<Rule> in(ctx, product);
  ctx.set_output(0, ctx.input(0));
  if (!applies(ctx, in.apply_if)) return;
  Rule rule(ctx);
  if constexpr (Rule::kCyclesMomentum)
    if (in.momentum >= 0) rule.set_momentum(*ctx.input(in.momentum).template data<double>());
  double scalars[Rule::kScalars + 1];
  for (int j = 0; j < Rule::kScalars; ++j)
    scalars[j] = *ctx.input(in.scalars + j).template data<double>();
  dispatch_float(ctx.input(0).dtype(), [&](auto tag) {
    using T = decltype(tag);
    const int64_t step = in.step >= 0 ? *ctx.input(in.step).template data<int64_t>() : 0;
    RuleUpdate<Rule, T> update{
        rule,
        rule.coefficients(*ctx.input(in.lr).template data<T>(), step, scalars),
        mutable_data<T>(ctx.input(0)),
        {}};
    for (int j = 0; j < Rule::kSlots; ++j)
      update.slots[j] = rule.writes(j) ? mutable_data<T>(ctx.input(1 + j)) : nullptr;
    body(update, in);
  });
}

template <typename Rule>
void update_cpu(KernelContext& ctx) {
  with_rule_update<Rule>(ctx, false, [&](const auto& update, const UpdateInputs<Rule>& in) {
    using T = std::remove_pointer_t<decltype(update.p)>;
    const T* g = ctx.input(in.gradient).template data<T>();
    ctx.parallel_for(ctx.input(0).numel(), 4 + 2 * Rule::kSlots, [&](int64_t begin, int64_t end) {
      T scratch[3][kRun] = {};
      update.apply(begin, g + begin, end - begin, scratch);
    });
  });
}

// The gradient op(a) op(b) (inputs `in.gradient` and the next) is computed block by block into
// the thread's scratch and each block applied at once: the gradient is never written whole.
template <typename Rule>
void product_update_cpu(KernelContext& ctx) {
  with_rule_update<Rule>(ctx, true, [&](const auto& update, const UpdateInputs<Rule>& in) {
    using T = std::remove_pointer_t<decltype(update.p)>;
    const Shape& var = ctx.input(0).shape();
    const int64_t n = var[1];
    blocked_product<T>(ctx, ctx.input(in.gradient), ctx.input(in.gradient + 1),
                       ctx.attr<bool>("transpose_a"), ctx.attr<bool>("transpose_b"), var, nullptr,
                       [&](int64_t, int64_t row0, int64_t rows, int64_t col0, int64_t cols,
                           T* gradient, int64_t ld) {
                         T scratch[3][kRun] = {};
                         for (int64_t r = 0; r < rows; ++r)
                           update.apply((row0 + r) * n + col0, gradient + r * ld, cols, scratch);
                       });
  });
}

// The definition of an element update with its schema: var, `slots`, grad, lr, step, `scalars`,
// (with `cycles_momentum`, the attribute momentum_input and then this step's momentum), apply_if.
// The caller adds the rule's attributes and the kernel.
OpDef element_update(const char* name, std::initializer_list<const char*> slots,
                     std::initializer_list<const char*> scalars = {}, bool cycles_momentum = true) {
  OpDef op(name);
  op.input("var");
  for (const char* slot : slots) op.input(slot);
  op.input("grad").input("lr").input("step");
  for (const char* scalar : scalars) op.input(scalar);
  op.variadic_input("apply_if", 0);
  const int num_slots = static_cast<int>(slots.size()),
            num_scalars = static_cast<int>(scalars.size());
  for (int i = 0; i <= num_slots; ++i) op.mutates_input(i);
  op.no_gradient().infer([num_slots, num_scalars, cycles_momentum](const InferContext& ctx) {
    return infer_update(ctx, num_slots, true, false, num_scalars, cycles_momentum);
  });
  if (cycles_momentum) op.attr("momentum_input", false);
  return op;
}

[[maybe_unused]] static OpRegistrar adagrad_registrar =
    element_update("adagrad_update", {"sum"}, {}, /*cycles_momentum=*/false)
        .attr("lr_decay", 0.0)
        .attr("eps", 1e-10)
        .attr("weight_decay", 0.0)
        .kernel(DeviceKind::cpu, update_cpu<AdagradRule>, {f32, f64});

[[maybe_unused]] static OpRegistrar rprop_registrar =
    element_update("rprop_update", {"prev", "step_size"}, {}, /*cycles_momentum=*/false)
        .attr("eta_minus", 0.5)
        .attr("eta_plus", 1.2)
        .attr("step_size_min", 1e-6)
        .attr("step_size_max", 50.0)
        .kernel(DeviceKind::cpu, update_cpu<RpropRule>, {f32, f64});

[[maybe_unused]] static OpRegistrar asgd_registrar =
    element_update("asgd_update", {"ax"}, {}, /*cycles_momentum=*/false)
        .attr("lambd", 1e-4)
        .attr("alpha", 0.75)
        .attr("t0", 1e6)
        .attr("weight_decay", 0.0)
        .kernel(DeviceKind::cpu, update_cpu<AsgdRule>, {f32, f64});

[[maybe_unused]] static OpRegistrar amsgrad_registrar =
    element_update("amsgrad_update", {"m", "v", "v_max"})
        .attr("beta1", 0.9)
        .attr("beta2", 0.999)
        .attr("eps", 1e-8)
        .attr("weight_decay", 0.0)
        .attr("decoupled", false)
        .kernel(DeviceKind::cpu, update_cpu<AmsgradRule>, {f32, f64});

[[maybe_unused]] static OpRegistrar adamax_registrar =
    element_update("adamax_update", {"m", "u"})
        .attr("beta1", 0.9)
        .attr("beta2", 0.999)
        .attr("eps", 1e-8)
        .attr("weight_decay", 0.0)
        .attr("decoupled", false)
        .kernel(DeviceKind::cpu, update_cpu<AdamaxRule>, {f32, f64});

[[maybe_unused]] static OpRegistrar radam_registrar =
    element_update("radam_update", {"m", "v"})
        .attr("beta1", 0.9)
        .attr("beta2", 0.999)
        .attr("eps", 1e-8)
        .attr("weight_decay", 0.0)
        .attr("decoupled", false)
        .kernel(DeviceKind::cpu, update_cpu<RadamRule>, {f32, f64});

[[maybe_unused]] static OpRegistrar nadam_registrar =
    element_update("nadam_update", {"m", "v"}, {"mu_product"})
        .attr("beta1", 0.9)
        .attr("beta2", 0.999)
        .attr("eps", 1e-8)
        .attr("weight_decay", 0.0)
        .attr("decoupled", false)
        .attr("momentum_decay", 4e-3)
        .kernel(DeviceKind::cpu, update_cpu<NadamRule>, {f32, f64});

[[maybe_unused]] static OpRegistrar rmsprop_momentum_registrar =
    element_update("rmsprop_momentum_update", {"sq", "grad_avg", "buf"})
        .attr("alpha", 0.99)
        .attr("eps", 1e-8)
        .attr("weight_decay", 0.0)
        .attr("momentum", 0.0)
        .attr("centered", false)
        .kernel(DeviceKind::cpu, update_cpu<RmspropMomentumRule>, {f32, f64});

}  // namespace
}  // namespace ops

namespace {
AttrMap adam_attrs(const AdamHyperparameters& hyper) {
  return {{"beta1", hyper.beta1},
          {"beta2", hyper.beta2},
          {"eps", hyper.eps},
          {"weight_decay", hyper.weight_decay},
          {"decoupled", hyper.decoupled}};
}
// The inputs of an update, with apply_if last when given.
std::vector<Value> with_apply_if(std::vector<Value> inputs, const Value& apply_if) {
  if (apply_if.defined()) inputs.push_back(apply_if);
  return inputs;
}
// The inputs of an update that may take this step's momentum: then `momentum` and apply_if
// where given; `attrs` gains momentum_input.
std::vector<Value> with_momentum(std::vector<Value> inputs, const Value& momentum,
                                 const Value& apply_if, AttrMap& attrs) {
  attrs["momentum_input"] = momentum.defined();
  if (momentum.defined()) inputs.push_back(momentum);
  return with_apply_if(std::move(inputs), apply_if);
}
}  // namespace

Value sgd_update(const Value& var, const Value& buf, const Value& grad, const Value& lr,
                 double momentum, bool nesterov, double weight_decay, const Value& apply_if,
                 const Value& momentum_now, double dampening, const Value& step) {
  AttrMap attrs{{"momentum", momentum},
                {"nesterov", nesterov},
                {"weight_decay", weight_decay},
                {"dampening", dampening}};
  KILN_CHECK(dampening == 0 || step.defined(), GraphError, "[sgd_update] dampening ", dampening,
             " needs the step count");
  std::vector<Value> inputs{var, buf, grad, lr};
  if (dampening != 0) inputs.push_back(step);
  inputs = with_momentum(std::move(inputs), momentum_now, apply_if, attrs);
  return common_graph("sgd_update", {&var, &buf, &grad, &lr}).add("sgd_update", inputs, attrs);
}

Value adam_update(const Value& var, const Value& m, const Value& v, const Value& grad,
                  const Value& lr, const Value& step, double beta1, double beta2, double eps,
                  double weight_decay, bool decoupled, const Value& apply_if,
                  const Value& momentum_now) {
  AttrMap attrs = adam_attrs({beta1, beta2, eps, weight_decay, decoupled});
  std::vector<Value> inputs =
      with_momentum({var, m, v, grad, lr, step}, momentum_now, apply_if, attrs);
  return common_graph("adam_update", {&var, &m, &v, &grad, &lr, &step})
      .add("adam_update", inputs, attrs);
}

Value rmsprop_update(const Value& var, const Value& sq, const Value& grad, const Value& lr,
                     double alpha, double eps, double weight_decay, const Value& apply_if) {
  return common_graph("rmsprop_update", {&var, &sq, &grad, &lr})
      .add("rmsprop_update", with_apply_if({var, sq, grad, lr}, apply_if),
           {{"alpha", alpha}, {"eps", eps}, {"weight_decay", weight_decay}});
}

Value adadelta_update(const Value& var, const Value& square_avg, const Value& acc_delta,
                      const Value& grad, const Value& lr, double rho, double eps,
                      double weight_decay, const Value& apply_if) {
  return common_graph("adadelta_update", {&var, &square_avg, &acc_delta, &grad, &lr})
      .add("adadelta_update", with_apply_if({var, square_avg, acc_delta, grad, lr}, apply_if),
           {{"rho", rho}, {"eps", eps}, {"weight_decay", weight_decay}});
}

Value adagrad_update(const Value& var, const Value& sum, const Value& grad, const Value& lr,
                     const Value& step, double lr_decay, double eps, double weight_decay,
                     const Value& apply_if) {
  return common_graph("adagrad_update", {&var, &sum, &grad, &lr, &step})
      .add("adagrad_update", with_apply_if({var, sum, grad, lr, step}, apply_if),
           {{"lr_decay", lr_decay}, {"eps", eps}, {"weight_decay", weight_decay}});
}

Value rprop_update(const Value& var, const Value& prev, const Value& step_size, const Value& grad,
                   const Value& lr, const Value& step, double eta_minus, double eta_plus,
                   double step_size_min, double step_size_max, const Value& apply_if) {
  return common_graph("rprop_update", {&var, &prev, &step_size, &grad, &lr, &step})
      .add("rprop_update", with_apply_if({var, prev, step_size, grad, lr, step}, apply_if),
           {{"eta_minus", eta_minus},
            {"eta_plus", eta_plus},
            {"step_size_min", step_size_min},
            {"step_size_max", step_size_max}});
}

Value asgd_update(const Value& var, const Value& ax, const Value& grad, const Value& lr,
                  const Value& step, double lambd, double alpha, double t0, double weight_decay,
                  const Value& apply_if) {
  return common_graph("asgd_update", {&var, &ax, &grad, &lr, &step})
      .add("asgd_update", with_apply_if({var, ax, grad, lr, step}, apply_if),
           {{"lambd", lambd}, {"alpha", alpha}, {"t0", t0}, {"weight_decay", weight_decay}});
}

Value amsgrad_update(const Value& var, const Value& m, const Value& v, const Value& v_max,
                     const Value& grad, const Value& lr, const Value& step,
                     const AdamHyperparameters& hyper, const Value& apply_if,
                     const Value& momentum_now) {
  AttrMap attrs = adam_attrs(hyper);
  std::vector<Value> inputs =
      with_momentum({var, m, v, v_max, grad, lr, step}, momentum_now, apply_if, attrs);
  return common_graph("amsgrad_update", {&var, &m, &v, &v_max, &grad, &lr, &step})
      .add("amsgrad_update", inputs, attrs);
}

Value adamax_update(const Value& var, const Value& m, const Value& u, const Value& grad,
                    const Value& lr, const Value& step, const AdamHyperparameters& hyper,
                    const Value& apply_if, const Value& momentum_now) {
  AttrMap attrs = adam_attrs(hyper);
  std::vector<Value> inputs =
      with_momentum({var, m, u, grad, lr, step}, momentum_now, apply_if, attrs);
  return common_graph("adamax_update", {&var, &m, &u, &grad, &lr, &step})
      .add("adamax_update", inputs, attrs);
}

Value radam_update(const Value& var, const Value& m, const Value& v, const Value& grad,
                   const Value& lr, const Value& step, const AdamHyperparameters& hyper,
                   const Value& apply_if, const Value& momentum_now) {
  AttrMap attrs = adam_attrs(hyper);
  std::vector<Value> inputs =
      with_momentum({var, m, v, grad, lr, step}, momentum_now, apply_if, attrs);
  return common_graph("radam_update", {&var, &m, &v, &grad, &lr, &step})
      .add("radam_update", inputs, attrs);
}

Value nadam_update(const Value& var, const Value& m, const Value& v, const Value& grad,
                   const Value& lr, const Value& step, const Value& mu_product,
                   const AdamHyperparameters& hyper, double momentum_decay, const Value& apply_if,
                   const Value& momentum_now) {
  AttrMap attrs = adam_attrs(hyper);
  attrs["momentum_decay"] = momentum_decay;
  std::vector<Value> inputs =
      with_momentum({var, m, v, grad, lr, step, mu_product}, momentum_now, apply_if, attrs);
  return common_graph("nadam_update", {&var, &m, &v, &grad, &lr, &step, &mu_product})
      .add("nadam_update", inputs, attrs);
}

Value rmsprop_momentum_update(const Value& var, const Value& sq, const Value& grad_avg,
                              const Value& buf, const Value& grad, const Value& lr,
                              const Value& step, double alpha, double eps, double weight_decay,
                              double momentum, bool centered, const Value& apply_if,
                              const Value& momentum_now) {
  AttrMap attrs{{"alpha", alpha},
                {"eps", eps},
                {"weight_decay", weight_decay},
                {"momentum", momentum},
                {"centered", centered}};
  std::vector<Value> inputs =
      with_momentum({var, sq, grad_avg, buf, grad, lr, step}, momentum_now, apply_if, attrs);
  return common_graph("rmsprop_momentum_update", {&var, &sq, &grad_avg, &buf, &grad, &lr, &step})
      .add("rmsprop_momentum_update", inputs, attrs);
}

}  // namespace kiln
