// Math ops: elementwise, matmul, reductions. Each builds a node in its inputs' graph.
#pragma once

#include <cstdint>
#include <vector>

#include "kiln/framework/graph.h"

namespace kiln {

// ---- Elementwise unary (float ops take f32/f64/f16/bf16; neg, abs, relu, square also ints).
Value neg(const Value& x);      ///< -x
Value sign(const Value& x);     ///< -1, 0 or 1
Value abs(const Value& x);      ///< |x|
Value square(const Value& x);   ///< x * x
Value relu(const Value& x);     ///< max(x, 0)
Value exp(const Value& x);      ///< e^x
Value log(const Value& x);      ///< natural logarithm
Value sqrt(const Value& x);     ///< square root
Value rsqrt(const Value& x);    ///< 1 / sqrt(x)
Value tanh(const Value& x);     ///< hyperbolic tangent
Value sigmoid(const Value& x);  ///< 1 / (1 + e^-x)
Value gelu(const Value& x);     ///< x/2 (1 + erf(x / sqrt 2)), the exact GELU
/// x/2 (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3))): GELU's tanh approximation
Value gelu_tanh(const Value& x);
Value silu(const Value& x);      ///< x sigmoid(x) (swish)
Value erf(const Value& x);       ///< the error function
Value log1p(const Value& x);     ///< ln(1 + x), accurate near 0
Value softplus(const Value& x);  ///< ln(1 + e^x), computed without overflow
Value expm1(const Value& x);     ///< e^x - 1, accurate near 0
Value sin(const Value& x);       ///< sine
Value cos(const Value& x);       ///< cosine

// ---- Elementwise binary, broadcasting by NumPy rules. Both inputs must have the same dtype.
Value add(const Value& a, const Value& b);         ///< a + b
Value sub(const Value& a, const Value& b);         ///< a - b
Value mul(const Value& a, const Value& b);         ///< a * b
Value div(const Value& a, const Value& b);         ///< a / b (integers: toward zero; / 0 gives 0)
Value pow(const Value& a, const Value& b);         ///< a ^ b
Value maximum(const Value& a, const Value& b);     ///< larger of a and b (NaN wins)
Value minimum(const Value& a, const Value& b);     ///< smaller of a and b (NaN wins)
Value equal(const Value& a, const Value& b);       ///< a == b, as bool
Value not_equal(const Value& a, const Value& b);   ///< a != b, as bool
Value less(const Value& a, const Value& b);        ///< a < b, as bool
Value less_equal(const Value& a, const Value& b);  ///< a <= b, as bool
Value greater(const Value& a, const Value& b);     ///< a > b, as bool
Value greater_equal(const Value& a, const Value& b);  ///< a >= b, as bool
/// The sum of tensors of one dtype and shape.
Value add_n(const std::vector<Value>& values);
/// cond ? a : b elementwise; cond is bool; all three broadcast together.
Value where(const Value& cond, const Value& a, const Value& b);

/// A rank-0 constant of like's dtype holding `value` (in like's graph).
Value scalar_like(const Value& like, double value);

// Scalar forms: a C++ number on either side becomes a scalar of the other operand's dtype, as
// a Python number does in PyTorch (x + 1.0 in an f32 graph is f32): pow(x, 2.0),
// maximum(x, 0.0), less(x, 0.5). Two Values of different dtypes are still an error.
Value add(const Value& a, double b);
Value add(double a, const Value& b);
Value sub(const Value& a, double b);
Value sub(double a, const Value& b);
Value mul(const Value& a, double b);
Value mul(double a, const Value& b);
Value div(const Value& a, double b);
Value div(double a, const Value& b);
Value pow(const Value& a, double b);
Value pow(double a, const Value& b);
Value maximum(const Value& a, double b);
Value maximum(double a, const Value& b);
Value minimum(const Value& a, double b);
Value minimum(double a, const Value& b);
Value equal(const Value& a, double b);
Value equal(double a, const Value& b);
Value not_equal(const Value& a, double b);
Value not_equal(double a, const Value& b);
Value less(const Value& a, double b);
Value less(double a, const Value& b);
Value less_equal(const Value& a, double b);
Value less_equal(double a, const Value& b);
Value greater(const Value& a, double b);
Value greater(double a, const Value& b);
Value greater_equal(const Value& a, double b);
Value greater_equal(double a, const Value& b);
/// cond ? a : b with a number for either branch.
Value where(const Value& cond, const Value& a, double b);
Value where(const Value& cond, double a, const Value& b);

// Operators: arithmetic, and elementwise comparisons giving bool Values (a > 0.5, a == b;
// Value::same_as compares handles). A number on one side takes the Value's dtype.
Value operator-(const Value& x);
Value operator+(const Value& a, const Value& b);
Value operator-(const Value& a, const Value& b);
Value operator*(const Value& a, const Value& b);
Value operator/(const Value& a, const Value& b);
Value operator+(const Value& a, double b);
Value operator-(const Value& a, double b);
Value operator*(const Value& a, double b);
Value operator/(const Value& a, double b);
Value operator+(double a, const Value& b);
Value operator-(double a, const Value& b);
Value operator*(double a, const Value& b);
Value operator/(double a, const Value& b);
Value operator==(const Value& a, const Value& b);
Value operator!=(const Value& a, const Value& b);
Value operator<(const Value& a, const Value& b);
Value operator<=(const Value& a, const Value& b);
Value operator>(const Value& a, const Value& b);
Value operator>=(const Value& a, const Value& b);
Value operator==(const Value& a, double b);
Value operator!=(const Value& a, double b);
Value operator<(const Value& a, double b);
Value operator<=(const Value& a, double b);
Value operator>(const Value& a, double b);
Value operator>=(const Value& a, double b);
Value operator==(double a, const Value& b);
Value operator!=(double a, const Value& b);
Value operator<(double a, const Value& b);
Value operator<=(double a, const Value& b);
Value operator>(double a, const Value& b);
Value operator>=(double a, const Value& b);
/// Compound forms rebind the handle to a new node (graph values never change): after
/// `x += y`, x names the sum; the old value is untouched.
Value& operator+=(Value& a, const Value& b);
Value& operator-=(Value& a, const Value& b);
Value& operator*=(Value& a, const Value& b);
Value& operator/=(Value& a, const Value& b);
Value& operator+=(Value& a, double b);
Value& operator-=(Value& a, double b);
Value& operator*=(Value& a, double b);
Value& operator/=(Value& a, double b);

// ---- Matrix products.
/// a @ b over the last two dims, with batch dims broadcast: a is [..., M, K] (or [..., K, M]
/// with transpose_a), b is [..., K, N] (or [..., N, K] with transpose_b); f32 or f64. A vector
/// operand follows NumPy: a [K] is a row, b [K] a column, and that dim is dropped from the
/// result ([K] @ [K] is a scalar).
Value matmul(const Value& a, const Value& b, bool transpose_a = false, bool transpose_b = false);

// ---- Reductions over `axes` (empty = all axes; negative axes count from the end).
Value sum(const Value& x, Axes axes = {}, bool keepdims = false);
/// Mean; floating dtypes only.
Value mean(const Value& x, Axes axes = {}, bool keepdims = false);
Value max(const Value& x, Axes axes = {}, bool keepdims = false);
Value min(const Value& x, Axes axes = {}, bool keepdims = false);
/// Index (i64) of the largest element along `axis`; the first one on ties.
Value argmax(const Value& x, int64_t axis, bool keepdims = false);
/// Index (i64) of the smallest element along `axis`; the first one on ties.
Value argmin(const Value& x, int64_t axis, bool keepdims = false);

/// Values picked along an axis and their i64 indices (topk, sort).
struct Sorted {
  Value values, indices;
};
/// The k largest elements along `axis` (the smallest with largest = false), first to last, and
/// their indices (PyTorch's topk, sorted). NaN counts as larger than every number; equal values
/// keep their index order. The values' gradient goes back to where each came from.
Sorted topk(const Value& x, int64_t k, int64_t axis = -1, bool largest = true);
/// x sorted along `axis` (ascending, or descending) and the indices that sort it, stable
/// (torch.sort(stable=True)); NaN last ascending, first descending.
Sorted sort(const Value& x, int64_t axis = -1, bool descending = false);
/// The indices that sort x along `axis` (torch.argsort(stable=True)).
Value argsort(const Value& x, int64_t axis = -1, bool descending = false);
/// Running sums along `axis` (PyTorch's cumsum, TensorFlow's cumsum with its flags): y[j] =
/// x[0] + ... + x[j]; `exclusive` leaves x[j] out (y[0] = 0), `reverse` sums from the end.
/// Floating (added in double on the CPU) or i32/i64 (wrapping).
Value cumsum(const Value& x, int64_t axis, bool exclusive = false, bool reverse = false);

}  // namespace kiln
