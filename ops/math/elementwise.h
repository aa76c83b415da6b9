// The elementwise op tables: one row per op with its dtype class and its scalar math.
// The functors are __host__ __device__, so the CPU loops and the CUDA kernels share the math.
#pragma once

#include <cmath>
#include <cstdint>
#include <type_traits>

#include "kiln/framework/dtype.h"

namespace kiln::ops {

// Floating-point helpers of the expressions below, written once as X-macro rows so that they
// are both compiled here and, as text, part of the kernels the GPU fusion compiles at run time
// (ops/math/fused_codegen.cc).
//   sigmoid_of       y = 1 / (1 + e^-x), evaluated so that neither branch overflows
//   gelu_derivative  d/dx gelu(x) = Phi(x) + x phi(x), Phi the standard normal CDF and phi
//                    its density
#define KILN_FLOAT_HELPERS(X)                                       \
  X(template <typename T> KILN_HOST_DEVICE T sigmoid_of(T x) {      \
    using std::exp;                                                 \
    if (x >= T(0)) return T(1) / (T(1) + exp(-x));                  \
    T e = exp(x);                                                   \
    return e / (T(1) + e);                                          \
  })                                                                \
  X(template <typename T> KILN_HOST_DEVICE T gelu_derivative(T x) { \
    using std::erfc, std::exp;                                      \
    const T cdf = T(0.5) * erfc(-x * T(0.70710678118654752440));    \
    const T pdf = exp(T(-0.5) * x * x) * T(0.39894228040143267794); \
    return cdf + x * pdf;                                           \
  })
#define KILN_EMIT_SOURCE(...) __VA_ARGS__
KILN_FLOAT_HELPERS(KILN_EMIT_SOURCE)

// Integer arithmetic wraps around (two's complement), as in PyTorch and NumPy, instead of being
// undefined on overflow: signed values go through their unsigned type.
template <typename T>
KILN_HOST_DEVICE T wrapping_neg(T x) {
  if constexpr (std::is_integral_v<T> && std::is_signed_v<T>)
    return static_cast<T>(std::make_unsigned_t<T>(0) - static_cast<std::make_unsigned_t<T>>(x));
  else
    return -x;
}
template <typename T>
KILN_HOST_DEVICE T wrapping_add(T a, T b) {
  if constexpr (std::is_integral_v<T> && std::is_signed_v<T>)
    return static_cast<T>(static_cast<std::make_unsigned_t<T>>(a) +
                          static_cast<std::make_unsigned_t<T>>(b));
  else
    return static_cast<T>(a + b);
}
template <typename T>
KILN_HOST_DEVICE T wrapping_sub(T a, T b) {
  if constexpr (std::is_integral_v<T> && std::is_signed_v<T>)
    return static_cast<T>(static_cast<std::make_unsigned_t<T>>(a) -
                          static_cast<std::make_unsigned_t<T>>(b));
  else
    return static_cast<T>(a - b);
}
template <typename T>
KILN_HOST_DEVICE T wrapping_mul(T a, T b) {
  if constexpr (std::is_integral_v<T> && std::is_signed_v<T>)
    return static_cast<T>(static_cast<std::make_unsigned_t<T>>(a) *
                          static_cast<std::make_unsigned_t<T>>(b));
  else if constexpr (std::is_integral_v<T>)
    return static_cast<T>(static_cast<unsigned>(a) *
                          static_cast<unsigned>(b));  // u8: no int overflow
  else
    return a * b;
}

// Integer division truncates toward zero; dividing by zero gives 0 instead of trapping.
template <typename T>
KILN_HOST_DEVICE T divide(T a, T b) {
  if constexpr (std::is_integral_v<T>) {
    if (b == T(0)) return T(0);
    if constexpr (std::is_signed_v<T>) {
      if (b == T(-1)) return wrapping_neg(a);  // avoids the INT_MIN / -1 trap
    }
    return static_cast<T>(a / b);
  } else {
    return a / b;
  }
}

// a^b; for integers by repeated squaring, with a negative exponent giving 0 (or +-1 for +-1).
template <typename T>
KILN_HOST_DEVICE T power(T a, T b) {
  if constexpr (std::is_integral_v<T>) {
    if constexpr (std::is_signed_v<T>) {
      if (b < 0) return a == T(1) ? T(1) : a == T(-1) ? (b % 2 ? T(-1) : T(1)) : T(0);
    }
    T result = 1;
    while (b) {
      if (b & 1) result = wrapping_mul(result, a);
      a = wrapping_mul(a, a);
      b = static_cast<T>(b >> 1);
    }
    return result;
  } else {
    using std::pow;
    return pow(a, b);
  }
}

// NaN rule, for every row of these tables: a NaN operand gives a NaN result, as in PyTorch,
// except where IEEE 754 and PyTorch define a number (pow(x, 0) = pow(1, y) = 1; comparisons
// give false, not_equal true). So relu, maximum and minimum let NaN through rather than
// swallowing it, and sign(NaN) is NaN (NumPy's and JAX's answer; PyTorch gives 0 there). The
// tests check each op with NaN and +-Inf (tests/ops/elementwise_test.cc, tests/gpu/).
//
// Each row: X(name, dtype class, expression in x of type T).
//   neg     y = -x
//   sign    y = -1, 0 or 1 (NaN for NaN)
//   abs     y = |x|
//   square  y = x^2
//   relu    y = max(x, 0), NaN for NaN: written "x < 0 ? 0 : x" so NaN (for which every
//           comparison is false) takes the x branch; relu(-0) = -0 as in PyTorch
//   gelu    y = x/2 (1 + erf(x / sqrt 2)) = x/2 erfc(-x / sqrt 2), the exact GELU (torch's
//           default); the erfc form avoids cancellation for large negative x.
//   gelu_tanh y = x/2 (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3))), GELU's tanh approximation
//           (torch's approximate="tanh", GPT-2's), computed as x sigmoid(2 sqrt(2/pi) (...))
//           since 1 + tanh(u) = 2 sigmoid(2u): no cancellation for large negative x
//   silu    y = x sigmoid(x) (swish)
//   erf     y = 2/sqrt(pi) integral_0^x e^-t^2 dt
//   log1p   y = ln(1 + x), accurate for small x
//   softplus y = ln(1 + e^x) = max(x, 0) + ln(1 + e^-|x|), which overflows for no x (NaN
//           takes the x branch of max, as in relu)
//   expm1   y = e^x - 1, accurate for small x (ELU's negative side)
#define KILN_UNARY_OPS(X)                                                      \
  X(neg, signed_, wrapping_neg(x))                                             \
  X(sign, signed_, x != x ? x : static_cast<T>((x > T(0)) - (x < T(0))))       \
  X(abs, signed_, x < T(0) ? wrapping_neg(x) : x)                              \
  X(square, numeric, wrapping_mul(x, x))                                       \
  X(relu, signed_, x < T(0) ? T(0) : x)                                        \
  X(exp, floating, exp(x))                                                     \
  X(log, floating, log(x))                                                     \
  X(sqrt, floating, sqrt(x))                                                   \
  X(rsqrt, floating, T(1) / sqrt(x))                                           \
  X(tanh, floating, tanh(x))                                                   \
  X(sigmoid, floating, sigmoid_of(x))                                          \
  X(gelu, floating, T(0.5) * x * erfc(-x * T(0.70710678118654752440)))         \
  X(sin, floating, sin(x))                                                     \
  X(cos, floating, cos(x))                                                     \
  X(gelu_tanh, floating,                                                       \
    sigmoid_of(T(1.59576912160573071176) * (x + T(0.044715) * x * x * x)) * x) \
  X(silu, floating, sigmoid_of(x) * x)                                         \
  X(erf, floating, erf(x))                                                     \
  X(log1p, floating, log1p(x))                                                 \
  X(softplus, floating, (x < T(0) ? T(0) : x) + log1p(exp(x < T(0) ? x : -x))) \
  X(expm1, floating, expm1(x))

// Each row: X(name, dtype class, expression in a and b of type T). maximum and minimum
// propagate NaN from either side, as torch.maximum does. gelu_grad(x, dy) = dy * gelu'(x) is
// gelu's gradient.
#define KILN_BINARY_OPS(X)                       \
  X(add, numeric, wrapping_add(a, b))            \
  X(sub, numeric, wrapping_sub(a, b))            \
  X(mul, numeric, wrapping_mul(a, b))            \
  X(div, numeric, divide(a, b))                  \
  X(pow, numeric, power(a, b))                   \
  X(maximum, numeric, (a != a || a > b) ? a : b) \
  X(minimum, numeric, (a != a || a < b) ? a : b) \
  X(gelu_grad, floating, gelu_derivative(a) * b)

// Each row: X(name, expression in a and b) giving bool.
#define KILN_COMPARE_OPS(X) \
  X(equal, a == b)          \
  X(not_equal, a != b)      \
  X(less, a < b)            \
  X(less_equal, a <= b)     \
  X(greater, a > b)         \
  X(greater_equal, a >= b)

// Functors: neg_fn{}(x), add_fn{}(a, b), less_fn{}(a, b).
#define KILN_DEFINE_UNARY_FUNCTOR(name, cls, expr)                                             \
  struct name##_fn {                                                                           \
    template <typename T>                                                                      \
    KILN_HOST_DEVICE T operator()(T x) const {                                                 \
      using std::exp, std::log, std::sqrt, std::tanh, std::erfc, std::sin, std::cos, std::erf, \
          std::log1p, std::expm1;                                                              \
      return static_cast<T>(expr);                                                             \
    }                                                                                          \
  };
#define KILN_DEFINE_BINARY_FUNCTOR(name, cls, expr) \
  struct name##_fn {                                \
    template <typename T>                           \
    KILN_HOST_DEVICE T operator()(T a, T b) const { \
      return static_cast<T>(expr);                  \
    }                                               \
  };
#define KILN_DEFINE_COMPARE_FUNCTOR(name, expr)        \
  struct name##_fn {                                   \
    template <typename T>                              \
    KILN_HOST_DEVICE bool operator()(T a, T b) const { \
      return expr;                                     \
    }                                                  \
  };
KILN_UNARY_OPS(KILN_DEFINE_UNARY_FUNCTOR)
KILN_BINARY_OPS(KILN_DEFINE_BINARY_FUNCTOR)
KILN_COMPARE_OPS(KILN_DEFINE_COMPARE_FUNCTOR)
#undef KILN_DEFINE_UNARY_FUNCTOR
#undef KILN_DEFINE_BINARY_FUNCTOR
#undef KILN_DEFINE_COMPARE_FUNCTOR

}  // namespace kiln::ops
