// Elementwise binary ops with broadcasting (rows of KILN_BINARY_OPS and KILN_COMPARE_OPS),
// `where`, and the Value operators.
#include "kiln/framework/gradient.h"
#include "kiln/framework/kernel.h"
#include "kiln/ops/array.h"
#include "kiln/ops/dtypes.h"
#include "kiln/ops/math.h"
#include "kiln/ops/math/elementwise.h"
#include "kiln/ops/math/elementwise_cpu.h"
#include "kiln/ops/math/vector_math.h"

namespace kiln {
namespace ops {
namespace {

Shape broadcast_or_fail(const InferContext& ctx, const Shape& a, const Shape& b) {
  Shape out;
  if (!broadcast_shapes(a, b, &out)) ctx.fail("shapes ", a, " and ", b, " do not broadcast");
  return out;
}

std::vector<TensorType> infer_binary(const InferContext& ctx, DTypeClass cls, bool compare) {
  ctx.expect_dtype(0, dtypes_of(cls));
  ctx.expect_same_dtype(0, 1);
  return {{compare ? DType::boolean : ctx.dtype(0),
           broadcast_or_fail(ctx, ctx.shape(0), ctx.shape(1))}};
}

template <typename F, bool kCompare>
void binary_cpu(KernelContext& ctx) {
  const Tensor& a = ctx.input(0);
  const Tensor& b = ctx.input(1);
  Tensor& y = ctx.output(0);
  dispatch_cpu(a.dtype(), [&](auto tag) {
    using T = decltype(tag);
    if constexpr (kCompare) {
      elementwise_loop(ctx, y.data<bool>(), y.shape(), F{}, {a.shape(), b.shape()}, a.data<T>(),
                       b.data<T>());
    } else if constexpr (!std::is_same_v<T, bool>) {
      elementwise_loop(ctx, y.data<T>(), y.shape(), cpu_form(F{}), {a.shape(), b.shape()},
                       a.data<T>(), b.data<T>());
    }
  });
}

// Gradients. a and b broadcast to y, so each partial is summed back to its input's shape.
Value unbroadcast(const Value& grad, const Value& like) {
  if (grad.shape() == like.shape() && like.shape().is_known()) return grad;
  return sum_to(grad, like);
}
Value zero(const Value& like) {
  return like.graph()->scalar(0, like.dtype());
}

// y = a + b       da = dy, db = dy
GradList grad_add(GradContext& c) {
  Value dy = c.grad_output();
  return {unbroadcast(dy, c.input(0)), unbroadcast(dy, c.input(1))};
}
// y = a - b       da = dy, db = -dy
GradList grad_sub(GradContext& c) {
  Value dy = c.grad_output();
  return {unbroadcast(dy, c.input(0)), unbroadcast(-dy, c.input(1))};
}
// y = a b         da = dy b, db = dy a
GradList grad_mul(GradContext& c) {
  Value dy = c.grad_output(), a = c.input(0), b = c.input(1);
  return {unbroadcast(dy * b, a), unbroadcast(dy * a, b)};
}
// y = a / b       da = dy / b, db = -dy a / b^2 = -dy y / b
GradList grad_div(GradContext& c) {
  Value dy = c.grad_output(), a = c.input(0), b = c.input(1);
  return {unbroadcast(dy / b, a), unbroadcast(-(dy * c.output()) / b, b)};
}
// y = a^b         da = dy b a^(b-1)  (0 where b == 0)
//                 db = dy y ln a     (0 where a == 0, as torch)
GradList grad_pow(GradContext& c) {
  Value dy = c.grad_output(), a = c.input(0), b = c.input(1);
  Value da = where(equal(b, zero(b)), zero(a), dy * b * pow(a, b - 1.0));
  Value db = where(equal(a, zero(a)), zero(b), dy * c.output() * log(a));
  return {unbroadcast(da, a), unbroadcast(db, b)};
}
// y = max(a, b)   the gradient goes to the larger input; ties split it in half (as torch)
GradList grad_extreme(GradContext& c, bool is_max) {
  Value dy = c.grad_output(), a = c.input(0), b = c.input(1);
  Value a_wins = is_max ? greater(a, b) : less(a, b);
  Value b_wins = is_max ? greater(b, a) : less(b, a);
  Value tie = where(equal(a, b), dy * 0.5, zero(dy));
  return {unbroadcast(where(a_wins, dy, tie), a), unbroadcast(where(b_wins, dy, tie), b)};
}
GradList grad_maximum(GradContext& c) {
  return grad_extreme(c, true);
}
GradList grad_minimum(GradContext& c) {
  return grad_extreme(c, false);
}
// y = gelu'(x) dy, gelu'(x) = Phi(x) + x phi(x)
// dx = dy' dy gelu''(x) = dy' dy phi(x) (2 - x^2)      d(dy) = dy' gelu'(x)
GradList grad_gelu_grad(GradContext& c) {
  Value x = c.input(0), dy = c.input(1), up = c.grad_output();
  Value pdf = exp(square(x) * -0.5) * 0.39894228040143267794;
  Value second = pdf * (2.0 - square(x));
  return {unbroadcast(up * dy * second, x), unbroadcast(c.graph().add("gelu_grad", {x, up}), dy)};
}

// Autocast policy per op: pow loses accuracy in 16 bits and stays f32.
constexpr Precision precision_add = Precision::follow_inputs;
constexpr Precision precision_sub = Precision::follow_inputs;
constexpr Precision precision_mul = Precision::follow_inputs;
constexpr Precision precision_div = Precision::follow_inputs;
constexpr Precision precision_pow = Precision::keep_f32;
constexpr Precision precision_maximum = Precision::follow_inputs;
constexpr Precision precision_minimum = Precision::follow_inputs;
constexpr Precision precision_gelu_grad = Precision::follow_inputs;

#define KILN_REGISTER_BINARY(name, cls, expr)                                               \
  KILN_OP(name)                                                                             \
      .input("a")                                                                           \
      .input("b")                                                                           \
      .elementwise()                                                                        \
      .precision(precision_##name)                                                          \
      .grad(grad_##name)                                                                    \
      .infer([](const InferContext& c) { return infer_binary(c, DTypeClass::cls, false); }) \
      .kernel(DeviceKind::cpu, binary_cpu<name##_fn, false>, cpu_dtypes_of(DTypeClass::cls));
KILN_BINARY_OPS(KILN_REGISTER_BINARY)
#undef KILN_REGISTER_BINARY

#define KILN_REGISTER_COMPARE(name, expr)                                                  \
  KILN_OP(name)                                                                            \
      .input("a")                                                                          \
      .input("b")                                                                          \
      .elementwise()                                                                       \
      .no_gradient()                                                                       \
      .infer([](const InferContext& c) { return infer_binary(c, DTypeClass::any, true); }) \
      .kernel(DeviceKind::cpu, binary_cpu<name##_fn, true>, cpu_dtypes_of(DTypeClass::any));
KILN_COMPARE_OPS(KILN_REGISTER_COMPARE)
#undef KILN_REGISTER_COMPARE

// y = cond ? a : b, all three broadcast together.
KILN_OP(where)
    .input("cond")
    .input("a")
    .input("b")
    .elementwise()
    .infer([](const InferContext& ctx) -> std::vector<TensorType> {
      ctx.expect_dtype(0, {DType::boolean});
      ctx.expect_same_dtype(1, 2);
      Shape ab = broadcast_or_fail(ctx, ctx.shape(1), ctx.shape(2));
      return {{ctx.dtype(1), broadcast_or_fail(ctx, ctx.shape(0), ab)}};
    })
    // y = cond ? a : b     da = dy where cond, db = dy where not cond
    .grad([](GradContext& c) -> GradList {
      Value cond = c.input(0), a = c.input(1), b = c.input(2), dy = c.grad_output();
      return {Value(), unbroadcast(where(cond, dy, zero(dy)), a),
              unbroadcast(where(cond, zero(dy), dy), b)};
    })
    .kernel(
        DeviceKind::cpu,
        [](KernelContext& ctx) {
          const Tensor& c = ctx.input(0);
          const Tensor& a = ctx.input(1);
          const Tensor& b = ctx.input(2);
          Tensor& y = ctx.output(0);
          dispatch_cpu(a.dtype(), [&](auto tag) {
            using T = decltype(tag);
            elementwise_loop(
                ctx, y.data<T>(), y.shape(), [](bool p, T u, T v) { return p ? u : v; },
                {c.shape(), a.shape(), b.shape()}, c.data<bool>(), a.data<T>(), b.data<T>());
          });
        },
        cpu_dtypes_of(DTypeClass::any));

}  // namespace
}  // namespace ops

#define KILN_BINARY_BUILDER(name, ...)                       \
  Value name(const Value& a, const Value& b) {               \
    return common_graph(#name, {&a, &b}).add(#name, {a, b}); \
  }
KILN_BINARY_OPS(KILN_BINARY_BUILDER)
KILN_COMPARE_OPS(KILN_BINARY_BUILDER)
#undef KILN_BINARY_BUILDER

Value where(const Value& cond, const Value& a, const Value& b) {
  return common_graph("where", {&cond, &a, &b}).add("where", {cond, a, b});
}

Value scalar_like(const Value& like, double value) {
  KILN_CHECK(like.defined(), GraphError, "[scalar] operator on an undefined Value");
  return like.graph()->scalar(value, like.dtype());
}

#define KILN_SCALAR_FORMS(name, ...)     \
  Value name(const Value& a, double b) { \
    return name(a, scalar_like(a, b));   \
  }                                      \
  Value name(double a, const Value& b) { \
    return name(scalar_like(b, a), b);   \
  }
KILN_SCALAR_FORMS(add)
KILN_SCALAR_FORMS(sub)
KILN_SCALAR_FORMS(mul)
KILN_SCALAR_FORMS(div)
KILN_SCALAR_FORMS(pow)
KILN_SCALAR_FORMS(maximum)
KILN_SCALAR_FORMS(minimum)
KILN_COMPARE_OPS(KILN_SCALAR_FORMS)
#undef KILN_SCALAR_FORMS

Value where(const Value& cond, const Value& a, double b) {
  return where(cond, a, scalar_like(a, b));
}
Value where(const Value& cond, double a, const Value& b) {
  return where(cond, scalar_like(b, a), b);
}

// Operators over Values and numbers alike: op(a, b) is function(a, b).
#define KILN_OPERATOR(op, function)                   \
  Value operator op(const Value& a, const Value& b) { \
    return function(a, b);                            \
  }                                                   \
  Value operator op(const Value& a, double b) {       \
    return function(a, b);                            \
  }                                                   \
  Value operator op(double a, const Value& b) {       \
    return function(a, b);                            \
  }
KILN_OPERATOR(+, add)
KILN_OPERATOR(-, sub)
KILN_OPERATOR(*, mul)
KILN_OPERATOR(/, div)
KILN_OPERATOR(==, equal)
KILN_OPERATOR(!=, not_equal)
KILN_OPERATOR(<, less)
KILN_OPERATOR(<=, less_equal)
KILN_OPERATOR(>, greater)
KILN_OPERATOR(>=, greater_equal)
#undef KILN_OPERATOR

#define KILN_COMPOUND(op, function)              \
  Value& operator op(Value& a, const Value& b) { \
    return a = function(a, b);                   \
  }                                              \
  Value& operator op(Value& a, double b) {       \
    return a = function(a, b);                   \
  }
KILN_COMPOUND(+=, add)
KILN_COMPOUND(-=, sub)
KILN_COMPOUND(*=, mul)
KILN_COMPOUND(/=, div)
#undef KILN_COMPOUND

}  // namespace kiln
