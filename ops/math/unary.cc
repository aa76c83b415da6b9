// Elementwise unary ops, one registration per row of KILN_UNARY_OPS (ops/math/elementwise.h).
#include "kiln/framework/gradient.h"
#include "kiln/framework/kernel.h"
#include "kiln/ops/dtypes.h"
#include "kiln/ops/math.h"
#include "kiln/ops/math/elementwise.h"
#include "kiln/ops/math/elementwise_cpu.h"
#include "kiln/ops/math/vector_math.h"

namespace kiln {
namespace ops {
namespace {

template <typename F>
void unary_cpu(KernelContext& ctx) {
  const Tensor& x = ctx.input(0);
  Tensor& y = ctx.output(0);
  dispatch_cpu(x.dtype(), [&](auto tag) {
    using T = decltype(tag);
    if constexpr (!std::is_same_v<T, bool>) {
      elementwise_loop(ctx, y.data<T>(), y.shape(), cpu_form(F{}), {x.shape()}, x.data<T>());
    }
  });
}

std::vector<TensorType> infer_unary(const InferContext& ctx, DTypeClass cls) {
  ctx.expect_dtype(0, dtypes_of(cls));
  return {ctx.input(0)};
}

// Gradients: x is the input, y the output, dy = dL/dy.
Value zero(const Value& like) {
  return like.graph()->scalar(0, like.dtype());
}
// y = -x          dx = -dy
GradList grad_neg(GradContext& c) {
  return {-c.grad_output()};
}
// y = sign(x)     dx = 0 (almost everywhere)
GradList grad_sign(GradContext&) {
  return {Value()};
}
// y = |x|         dx = dy sign(x)
GradList grad_abs(GradContext& c) {
  return {c.grad_output() * sign(c.input(0))};
}
// y = x^2         dx = 2 x dy
GradList grad_square(GradContext& c) {
  return {c.grad_output() * (c.input(0) * 2.0)};
}
// y = max(x, 0)   dx = dy where x > 0, tested on y: y > 0 exactly when x > 0 (NaN and -0 give
// false both ways). Reading y, not x, leaves relu the pre-activation's only reader, so the
// matmul_epilogue pass folds it into the product that makes x in training graphs too.
GradList grad_relu(GradContext& c) {
  Value y = c.output();
  return {where(greater(y, zero(y)), c.grad_output(), zero(y))};
}
// y = e^x         dx = dy y
GradList grad_exp(GradContext& c) {
  return {c.grad_output() * c.output()};
}
// y = ln x        dx = dy / x
GradList grad_log(GradContext& c) {
  return {c.grad_output() / c.input(0)};
}
// y = sqrt x      dx = dy / (2 y)
GradList grad_sqrt(GradContext& c) {
  return {c.grad_output() / (c.output() * 2.0)};
}
// y = x^-1/2      dx = -1/2 x^-3/2 dy = -1/2 y^3 dy
GradList grad_rsqrt(GradContext& c) {
  Value y = c.output();
  return {c.grad_output() * (y * y * y * -0.5)};
}
// y = tanh x      dx = dy (1 - y^2)
GradList grad_tanh(GradContext& c) {
  Value y = c.output();
  return {c.grad_output() * (1.0 - y * y)};
}
// y = sigmoid x   dx = dy y (1 - y)
GradList grad_sigmoid(GradContext& c) {
  Value y = c.output();
  return {c.grad_output() * (y * (1.0 - y))};
}
// y = gelu x      dx = dy (Phi(x) + x phi(x))
GradList grad_gelu(GradContext& c) {
  return {c.graph().add("gelu_grad", {c.input(0), c.grad_output()})};
}
// y = sin x       dx = dy cos x
GradList grad_sin(GradContext& c) {
  return {c.grad_output() * cos(c.input(0))};
}
// y = cos x       dx = -dy sin x
GradList grad_cos(GradContext& c) {
  return {-(c.grad_output() * sin(c.input(0)))};
}

// y = x/2 (1 + t), t = tanh(u), u = c (x + a x^3), c = sqrt(2/pi), a = 0.044715
// With s = sigmoid(2u): (1 + t)/2 = s and (1 - t^2)/4 = s (1 - s), so
//   dx = dy (s + 2 x s (1 - s) c (1 + 3 a x^2)).
// The sigmoid form keeps its precision in 16 bits: where x is very negative, 1 + t cancels
// (t near -1) while s is small and exact to its own rounding.
GradList grad_gelu_tanh(GradContext& c) {
  Value x = c.input(0);
  constexpr double k = 0.79788456080286535588, a = 0.044715;
  Value s = sigmoid((x + x * x * x * a) * (2 * k));
  Value slope = s + x * s * (1.0 - s) * ((x * x * (3 * a) + 1.0) * (2 * k));
  return {c.grad_output() * slope};
}
// y = x s, s = sigmoid x        dx = dy s (1 + x (1 - s))
GradList grad_silu(GradContext& c) {
  Value x = c.input(0), s = sigmoid(x);
  return {c.grad_output() * (s * (1.0 + x * (1.0 - s)))};
}
// y = erf x       dx = dy 2/sqrt(pi) e^-x^2
GradList grad_erf(GradContext& c) {
  Value x = c.input(0);
  return {c.grad_output() * (exp(-(x * x)) * 1.12837916709551257390)};
}
// y = ln(1 + x)   dx = dy / (1 + x)
GradList grad_log1p(GradContext& c) {
  return {c.grad_output() / (c.input(0) + 1.0)};
}
// y = softplus x  dx = dy sigmoid(x)
GradList grad_softplus(GradContext& c) {
  return {c.grad_output() * sigmoid(c.input(0))};
}
// y = e^x - 1  dx = dy e^x
GradList grad_expm1(GradContext& c) {
  return {c.grad_output() * exp(c.input(0))};
}

// Autocast policy per op: exp, log and the roots lose accuracy in 16 bits and stay f32.
constexpr Precision precision_neg = Precision::follow_inputs;
constexpr Precision precision_sign = Precision::follow_inputs;
constexpr Precision precision_abs = Precision::follow_inputs;
constexpr Precision precision_square = Precision::follow_inputs;
constexpr Precision precision_relu = Precision::follow_inputs;
constexpr Precision precision_exp = Precision::keep_f32;
constexpr Precision precision_log = Precision::keep_f32;
constexpr Precision precision_sqrt = Precision::keep_f32;
constexpr Precision precision_rsqrt = Precision::keep_f32;
constexpr Precision precision_tanh = Precision::follow_inputs;
constexpr Precision precision_sigmoid = Precision::follow_inputs;
constexpr Precision precision_gelu = Precision::follow_inputs;
constexpr Precision precision_sin = Precision::follow_inputs;
constexpr Precision precision_cos = Precision::follow_inputs;
constexpr Precision precision_gelu_tanh = Precision::follow_inputs;
constexpr Precision precision_silu = Precision::follow_inputs;
constexpr Precision precision_erf = Precision::follow_inputs;
constexpr Precision precision_log1p = Precision::keep_f32;
constexpr Precision precision_softplus = Precision::keep_f32;
constexpr Precision precision_expm1 = Precision::keep_f32;

#define KILN_REGISTER_UNARY(name, cls, expr)                                        \
  KILN_OP(name)                                                                     \
      .input("x")                                                                   \
      .elementwise()                                                                \
      .precision(precision_##name)                                                  \
      .grad(grad_##name)                                                            \
      .infer([](const InferContext& c) { return infer_unary(c, DTypeClass::cls); }) \
      .kernel(DeviceKind::cpu, unary_cpu<name##_fn>, cpu_dtypes_of(DTypeClass::cls));
KILN_UNARY_OPS(KILN_REGISTER_UNARY)
#undef KILN_REGISTER_UNARY

}  // namespace
}  // namespace ops

#define KILN_UNARY_BUILDER(name, cls, expr)           \
  Value name(const Value& x) {                        \
    return common_graph(#name, {&x}).add(#name, {x}); \
  }
KILN_UNARY_OPS(KILN_UNARY_BUILDER)
#undef KILN_UNARY_BUILDER

Value operator-(const Value& x) {
  return neg(x);
}

}  // namespace kiln
