// CUDA kernels of the fused optimizer updates (formulas in ops/state.h, as the CPU kernels).
// The learning rate and the step counter are device scalars read inside the kernel, so a
// captured CUDA Graph replays with the current values.
#include <span>
#include <vector>

#include "kiln/framework/op_registry.h"
#include "kiln/ops/cuda/map.cuh"
#include "kiln/ops/state/element_rules.h"

namespace kiln::ops::cuda_optim {

using namespace kiln::ops::cuda;

template <typename T>
T* mutable_data(const Tensor& t) {
  return static_cast<T*>(t.raw_data());
}

// The optional apply_if input after the `fixed` ones (nullptr: always apply). Read on the
// device, so a captured graph sees each step's value.
const bool* apply_flag(const KernelContext& ctx, int fixed) {
  return ctx.num_inputs() > fixed ? ctx.input(fixed).data<bool>() : nullptr;
}

// The updates on their rule from element_rules.h: var, Rule::kSlots slots, grad, lr, the step
// (where the rule has one), the rule's f64 scalars, apply_if. Each thread computes the step's
// coefficients from the device scalars.
template <typename T, int kSlots>
struct SlotPointers {
  T* at[kSlots];
};

// Sets this step's momentum where the node takes one (momentum not null).
template <typename Rule>
__device__ void set_momentum(Rule& rule, const double* momentum) {
  if constexpr (Rule::kCyclesMomentum)
    if (momentum) rule.set_momentum(*momentum);
}

template <typename Rule, typename T>
void element_update_typed(KernelContext& ctx) {
  constexpr int kSlots = Rule::kSlots, kGradient = kSlots + 1;
  const Rule rule(ctx);
  T* p = mutable_data<T>(ctx.input(0));
  SlotPointers<T, kSlots> slots;
  for (int j = 0; j < kSlots; ++j) slots.at[j] = mutable_data<T>(ctx.input(1 + j));
  const T* g = ctx.input(kGradient).data<T>();
  const T* lr = ctx.input(kGradient + 1).data<T>();
  const bool has_step = takes_step<Rule>(ctx);
  const int first_scalar = kGradient + 2 + (has_step ? 1 : 0);
  const int64_t* step = has_step ? ctx.input(kGradient + 2).data<int64_t>() : nullptr;
  // The rule's f64 scalars are consecutive inputs but not one allocation: one pointer each.
  SlotPointers<const double, Rule::kScalars + 1> scalars{};
  for (int j = 0; j < Rule::kScalars; ++j)
    scalars.at[j] = ctx.input(first_scalar + j).data<double>();
  // This step's momentum (attribute momentum_input), after the scalars.
  bool takes_momentum = false;
  if constexpr (Rule::kCyclesMomentum) takes_momentum = ctx.attr<bool>("momentum_input");
  const int after_scalars = first_scalar + Rule::kScalars;
  const double* momentum = takes_momentum ? ctx.input(after_scalars).data<double>() : nullptr;
  const bool* apply = apply_flag(ctx, after_scalars + (takes_momentum ? 1 : 0));
  for_each(ctx, ctx.input(0).numel(), [=] __device__(int64_t i) {
    if (apply && !*apply) return;
    Rule now = rule;
    set_momentum(now, momentum);
    double scalar_values[Rule::kScalars + 1];
    for (int j = 0; j < Rule::kScalars; ++j) scalar_values[j] = *scalars.at[j];
    const auto k = now.coefficients(*lr, step ? *step : 0, scalar_values);
    T s[kSlots];
    for (int j = 0; j < kSlots; ++j) s[j] = now.writes(j) ? slots.at[j][i] : T(0);
    now.apply(k, p[i], s, g[i]);
    for (int j = 0; j < kSlots; ++j)
      if (now.writes(j)) slots.at[j][i] = s[j];
  });
}
template <typename Rule>
void element_update_cuda(KernelContext& ctx) {
  dispatch_cuda_float(ctx.input(0).dtype(), [&](auto tag) {
    using T = decltype(tag);
    if constexpr (std::is_floating_point_v<T>) element_update_typed<Rule, T>(ctx);
  });
  ctx.set_output(0, ctx.input(0));
}
KILN_CUDA_KERNEL(sgd_update, element_update_cuda<SgdRule>, {DType::f32, DType::f64});
KILN_CUDA_KERNEL(adam_update, element_update_cuda<AdamRule>, {DType::f32, DType::f64});
KILN_CUDA_KERNEL(adadelta_update, element_update_cuda<AdadeltaRule>, {DType::f32, DType::f64});
KILN_CUDA_KERNEL(adagrad_update, element_update_cuda<AdagradRule>, {DType::f32, DType::f64});
KILN_CUDA_KERNEL(rprop_update, element_update_cuda<RpropRule>, {DType::f32, DType::f64});
KILN_CUDA_KERNEL(asgd_update, element_update_cuda<AsgdRule>, {DType::f32, DType::f64});
KILN_CUDA_KERNEL(amsgrad_update, element_update_cuda<AmsgradRule>, {DType::f32, DType::f64});
KILN_CUDA_KERNEL(adamax_update, element_update_cuda<AdamaxRule>, {DType::f32, DType::f64});
KILN_CUDA_KERNEL(nadam_update, element_update_cuda<NadamRule>, {DType::f32, DType::f64});
KILN_CUDA_KERNEL(radam_update, element_update_cuda<RadamRule>, {DType::f32, DType::f64});
KILN_CUDA_KERNEL(rmsprop_update, element_update_cuda<RmspropRule>, {DType::f32, DType::f64});
KILN_CUDA_KERNEL(rmsprop_momentum_update, element_update_cuda<RmspropMomentumRule>,
                 {DType::f32, DType::f64});

// The product updates (matmul_sgd_update, matmul_adam_update: the gradient given as op(a) op(b),
// inputs a_index and a_index + 1). The matmul_epilogue pass makes them for the CPU only; a graph
// file or a hand-built graph may still hold one, so on a GPU they run as matmul's kernel into
// stream-ordered scratch, then the plain update's kernel on that gradient.
void product_update_cuda(KernelContext& ctx, int a_index, void (*update)(KernelContext&)) {
  const Tensor& var = ctx.input(0);
  const KernelFn product =
      OpRegistry::global().find("matmul")->kernel_for(DeviceKind::cuda, var.dtype());
  KILN_CHECK(product != nullptr, Error, ctx.where(), ": no CUDA matmul kernel for ", var.dtype());
  const TensorType var_type{var.dtype(), var.shape()};
  Tensor gradient[] = {Tensor(var.dtype(), var.shape(), ctx.scratch(var.nbytes()))};
  const Tensor factors[] = {ctx.input(a_index), ctx.input(a_index + 1)};
  KernelContext product_ctx = ctx.rebind(factors, std::span(&var_type, 1), gradient);
  product(product_ctx);
  std::vector<Tensor> inputs;  // the plain update's: the gradient in place of the factors
  for (int i = 0; i < ctx.num_inputs(); ++i)
    if (i != a_index + 1) inputs.push_back(i == a_index ? gradient[0] : ctx.input(i));
  Tensor updated[1];
  KernelContext update_ctx = ctx.rebind(inputs, std::span(&var_type, 1), updated);
  update(update_ctx);
  ctx.set_output(0, updated[0]);
}
void matmul_sgd_cuda(KernelContext& ctx) {
  product_update_cuda(ctx, 2, element_update_cuda<SgdRule>);
}
KILN_CUDA_KERNEL(matmul_sgd_update, matmul_sgd_cuda, {DType::f32, DType::f64});
void matmul_adam_cuda(KernelContext& ctx) {
  product_update_cuda(ctx, 3, element_update_cuda<AdamRule>);
}
KILN_CUDA_KERNEL(matmul_adam_update, matmul_adam_cuda, {DType::f32, DType::f64});

}  // namespace kiln::ops::cuda_optim
