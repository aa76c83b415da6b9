// NaN and infinities through the elementwise ops: what each op must give (Kiln's rule, written
// in ops/math/elementwise.h: NaN in, NaN out, as in PyTorch). Shared by the CPU tests and the
// GPU op table, so both devices are held to the same answers.
#pragma once

#include <cmath>
#include <limits>
#include <string>
#include <vector>

namespace kiln::testing {

inline constexpr double kNaN = std::numeric_limits<double>::quiet_NaN();
inline constexpr double kInf = std::numeric_limits<double>::infinity();

/// A unary op's results at NaN, +inf and -inf (PyTorch's, except sign(NaN): NaN, not 0).
struct SpecialUnaryCase {
  const char* op;
  double at_nan, at_pos_inf, at_neg_inf;
};

inline const std::vector<SpecialUnaryCase>& special_unary_cases() {
  static const std::vector<SpecialUnaryCase> cases = {
      {"neg", kNaN, -kInf, kInf},      {"sign", kNaN, 1, -1},      {"abs", kNaN, kInf, kInf},
      {"square", kNaN, kInf, kInf},    {"relu", kNaN, kInf, 0},    {"exp", kNaN, kInf, 0},
      {"log", kNaN, kInf, kNaN},       {"sqrt", kNaN, kInf, kNaN}, {"rsqrt", kNaN, 0, kNaN},
      {"tanh", kNaN, 1, -1},           {"sigmoid", kNaN, 1, 0},    {"gelu", kNaN, kInf, kNaN},
      {"sin", kNaN, kNaN, kNaN},       {"cos", kNaN, kNaN, kNaN},  {"silu", kNaN, kInf, kNaN},
      {"gelu_tanh", kNaN, kInf, kNaN}, {"erf", kNaN, 1, -1},       {"log1p", kNaN, kInf, kNaN},
      {"softplus", kNaN, kInf, 0},     {"expm1", kNaN, kInf, -1},
  };
  return cases;
}

/// Operands every binary op is tried on, pairwise.
inline const std::vector<double>& special_operands() {
  static const std::vector<double> values = {kNaN, kInf, -kInf, 0.0, 1.0, -2.5};
  return values;
}

/// The binary ops with NaN and infinity operands: IEEE 754 arithmetic (as PyTorch), maximum
/// and minimum NaN whenever an operand is, comparisons false with NaN (not_equal true).
inline double special_binary_reference(const std::string& op, double a, double b) {
  const bool nan = std::isnan(a) || std::isnan(b);
  if (op == "add") return a + b;
  if (op == "sub") return a - b;
  if (op == "mul") return a * b;
  if (op == "div") return a / b;
  if (op == "pow") return std::pow(a, b);
  if (op == "maximum") return nan ? kNaN : (a > b ? a : b);
  if (op == "minimum") return nan ? kNaN : (a < b ? a : b);
  if (op == "equal") return !nan && a == b;
  if (op == "not_equal") return nan || a != b;
  if (op == "less") return !nan && a < b;
  if (op == "less_equal") return !nan && a <= b;
  if (op == "greater") return !nan && a > b;
  if (op == "greater_equal") return !nan && a >= b;
  return kNaN;
}

/// The binary ops special_binary_reference knows (gelu_grad, gradient-only, is not a user op).
inline const std::vector<std::string>& special_binary_ops() {
  static const std::vector<std::string> ops = {
      "add",   "sub",       "mul",  "div",        "pow",     "maximum",      "minimum",
      "equal", "not_equal", "less", "less_equal", "greater", "greater_equal"};
  return ops;
}

/// True when `actual` is `expected`, NaN matching NaN and infinities by sign.
inline bool same_special(double expected, double actual) {
  if (std::isnan(expected)) return std::isnan(actual);
  return expected == actual;
}

}  // namespace kiln::testing
