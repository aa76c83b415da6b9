// The optimizers built from graph ops (products, reductions, elementwise) rather than one fused
// update op, because their step needs more than each element's own state: Muon orthogonalizes
// the whole matrix, Adafactor factors its variance over rows and columns and scales by norms,
// SparseAdam moves only the rows whose gradient is not all zero. They run wherever those ops
// do.
#include <algorithm>
#include <cmath>
#include <limits>

#include "kiln/autograd/optim.h"
#include "kiln/autograd/optim_state.h"
#include "kiln/ops/array.h"
#include "kiln/ops/math.h"
#include "kiln/ops/state.h"

namespace kiln::optim {

Muon::Muon(MuonOptions options) : Optimizer(options), options_(options) {
  KILN_CHECK(options.momentum >= 0 && options.momentum < 1 && options.weight_decay >= 0 &&
                 options.eps >= 0,
             GraphError,
             "[optim] Muon needs 0 <= momentum < 1, weight_decay >= 0 and eps >= 0, got ",
             options.momentum, ", ", options.weight_decay, " and ", options.eps);
  KILN_CHECK(options.ns_steps >= 1 && options.ns_steps < 100, GraphError,
             "[optim] Muon needs 1 to 99 Newton-Schulz steps, got ", options.ns_steps);
  KILN_CHECK(is_floating(options.ns_dtype), GraphError,
             "[optim] Muon's Newton-Schulz dtype must be floating point, got ", options.ns_dtype);
}

namespace {
// The rate's factor for a [rows, cols] matrix.
double lr_ratio(MuonLrAdjustment adjust, double rows, double cols) {
  switch (adjust) {
    case MuonLrAdjustment::original:
      return std::sqrt(std::max(1.0, rows / cols));
    case MuonLrAdjustment::match_rms_adamw:
      return 0.2 * std::sqrt(std::max(rows, cols));
    case MuonLrAdjustment::spectral_unclamped:
      return std::sqrt(rows / cols);
  }
  return 1;
}

// The quintic Newton-Schulz iteration on u [rows, cols]. With X the wide orientation (rows <=
// cols; a tall u is iterated as its transpose, so A is the smaller Gram matrix):
// X = u / max(||u||_F, eps), then ns_steps times A = X X^T, X = a X + (b A + c A A) X. For a
// tall u the same steps read X^T: A = X^T X and X = a X + X (b A + c A A) (A is symmetric).
// A 16-bit ns_dtype computes in f32 and rounds where torch's bf16 tensors round: u's cast, the
// norm, X after the division, A, b A + c A A (torch's addmm rounds once) and each new X.
Value newton_schulz(const Value& u, const MuonOptions& o) {
  const bool tall = u.shape()[0] > u.shape()[1];
  const DType work = o.ns_dtype == f64 ? f64 : f32;
  auto rounded = [&](const Value& v) {
    return o.ns_dtype == work ? v : cast(cast(v, o.ns_dtype), work);
  };
  Value x = rounded(cast(u, work));
  Value norm = rounded(sqrt(sum(square(x))));
  x = rounded(x / rounded(maximum(norm, o.eps)));
  for (int i = 0; i < o.ns_steps; ++i) {
    Value gram = rounded(tall ? matmul(x, x, true, false) : matmul(x, x, false, true));
    Value poly = rounded(gram * o.ns_b + matmul(gram, gram) * o.ns_c);
    x = rounded(x * o.ns_a + (tall ? matmul(x, poly) : matmul(poly, x)));
  }
  return cast(x, u.dtype());
}
}  // namespace

Value Muon::update(const Value& var, const Value& grad, const Value& lr, const Value&,
                   const GroupSettings& group, const Value& apply_if) {
  const Shape& shape = var.shape();
  KILN_CHECK(shape.rank() == 2 && shape[0] > 0 && shape[1] > 0, GraphError,
             "[optim] Muon trains matrices only; ", var.name(), " is ", shape,
             ": train it with another optimizer (AdamW, named()), as torch's Muon recipe does");
  Graph& graph = *var.graph();
  const DType dtype = var.dtype();
  Value mu = momentum_now().defined()
                 ? cast(momentum_now(), dtype)
                 : graph.scalar(group.momentum.value_or(options_.momentum), dtype);
  // torch's lerps: B = B + (1 - mu)(G - B); Nesterov U = B - (B - G)(1 - mu).
  Value buf = slot(var, "muon_momentum");
  Value blended = buf + (grad - buf) * (1.0 - mu);
  // The buffer's assign is read back, so the variable's update runs after it.
  Value moved = assign_unless_skipped(buf, blended, apply_if);
  Value u = options_.nesterov ? moved - (moved - grad) * (1.0 - mu) : moved;
  MuonOptions iteration = options_;
  iteration.eps = group.eps.value_or(options_.eps);
  Value orthogonal = newton_schulz(u, iteration);
  const double ratio =
      lr_ratio(options_.adjust_lr, static_cast<double>(shape[0]), static_cast<double>(shape[1]));
  Value stepped = var * (1.0 - lr * group.weight_decay) - orthogonal * (lr * ratio);
  return assign_unless_skipped(var, stepped, apply_if);
}

Adafactor::Adafactor(AdafactorOptions options) : Optimizer(options), options_(options) {
  KILN_CHECK(options.beta2_decay <= 0 && options.eps1.value_or(0) >= 0 && options.eps2 >= 0 &&
                 options.d >= 1 && options.weight_decay >= 0,
             GraphError,
             "[optim] Adafactor needs beta2_decay <= 0, eps1 and eps2 >= 0, d >= 1 and "
             "weight_decay >= 0; got beta2_decay ",
             options.beta2_decay, ", eps1 ", options.eps1.value_or(0), ", eps2 ", options.eps2,
             ", d ", options.d, ", weight_decay ", options.weight_decay);
}

namespace {
// sqrt(mean(x^2)) over all of x.
Value root_mean_square(const Value& x) {
  return sqrt(mean(square(x)));
}
}  // namespace

Value Adafactor::update(const Value& var, const Value& grad, const Value& lr, const Value& step,
                        const GroupSettings& group, const Value& apply_if) {
  refuse_cycled_momentum("Adafactor");
  const Shape& shape = var.shape();
  KILN_CHECK(shape.is_known(), GraphError, "[optim] Adafactor needs ", var.name(), "'s shape, got ",
             shape);
  const DType dtype = var.dtype();
  // The step's scalars, in f64 as torch's Python floats: t counts from 1.
  Value t = cast(step, f64) + 1.0;
  Value rate = cast(pow(t, options_.beta2_decay), dtype);  // 1 - beta2_t
  Value relative_step = minimum(lr, cast(rsqrt(t), dtype));
  Value scale = maximum(root_mean_square(var), options_.eps2) * relative_step;
  // torch's default eps1: the dtype's machine epsilon (torch.finfo(dtype).eps).
  const double eps1 = options_.eps1  ? *options_.eps1
                      : dtype == f64 ? std::numeric_limits<double>::epsilon()
                      : dtype == f32 ? std::numeric_limits<float>::epsilon()
                                     : std::ldexp(1.0, dtype == bf16 ? -7 : -10);
  Value squared = square(grad), variance;
  if (shape.rank() >= 2) {
    // Factored over the last two axes: r = mean over columns, c = mean over rows of g^2.
    Shape rows = shape, cols = shape;
    rows[-1] = 1;
    cols[-2] = 1;
    Value row_var = shaped_slot(var, "adafactor_row_var", rows);
    Value col_var = shaped_slot(var, "adafactor_col_var", cols);
    Value r = assign_unless_skipped(row_var, row_var + (mean(squared, -1, true) - row_var) * rate,
                                    apply_if);
    Value c = assign_unless_skipped(col_var, col_var + (mean(squared, -2, true) - col_var) * rate,
                                    apply_if);
    // v = r c / mean(r): the rank-one estimate whose row and column means are r and c.
    variance = r * c / maximum(mean(r, -2, true), eps1);
  } else {
    Value v = slot(var, "adafactor_variance");
    variance = assign_unless_skipped(v, v + (squared - v) * rate, apply_if);
  }
  Value u = rsqrt(maximum(variance, eps1 * eps1)) * grad;
  Value clipped = maximum(root_mean_square(u) / options_.d, 1.0);
  Value stepped = var * (1.0 - lr * group.weight_decay) - u * (scale / clipped);
  return assign_unless_skipped(var, stepped, apply_if);
}

SparseAdam::SparseAdam(SparseAdamOptions options) : Optimizer(options), options_(options) {
  KILN_CHECK(options.beta1 >= 0 && options.beta1 < 1 && options.beta2 >= 0 && options.beta2 < 1 &&
                 options.eps >= 0,
             GraphError, "[optim] SparseAdam needs betas in [0, 1) and eps >= 0, got beta1 ",
             options.beta1, ", beta2 ", options.beta2, " and eps ", options.eps);
}

void SparseAdam::check_group(const ParamGroup& group, size_t index) const {
  check_group_fields(group, index, "SparseAdam", kBeta1 | kBeta2 | kEps);
  KILN_CHECK(group.weight_decay.value_or(0) == 0, GraphError, "[optim] parameter group ", index,
             " sets weight_decay ", group.weight_decay.value_or(0),
             ", which SparseAdam has not (as torch's)");
}

Value SparseAdam::update(const Value& var, const Value& grad, const Value& lr, const Value& step,
                         const GroupSettings& group, const Value& apply_if) {
  refuse_cycled_momentum("SparseAdam");
  const Shape& shape = var.shape();
  KILN_CHECK(shape.rank() >= 1, GraphError,
             "[optim] SparseAdam moves rows of a table (rank >= 1); ", var.name(), " is a scalar");
  const DType dtype = var.dtype();
  const double beta1 = group.beta1.value_or(options_.beta1);
  const double beta2 = group.beta2.value_or(options_.beta2);
  const double eps = group.eps.value_or(options_.eps);
  // The touched rows: [rows, 1, ...], true where the row's gradient has an element other than
  // 0 (NaN counts, so it reaches the row as it would in torch).
  std::vector<int64_t> row_axes;
  for (int64_t axis = 1; axis < shape.rank(); ++axis) row_axes.push_back(axis);
  Value touched = not_equal(row_axes.empty() ? abs(grad) : max(abs(grad), row_axes, true), 0.0);
  Value m = slot(var, "sparse_adam_m");
  Value v = slot(var, "sparse_adam_v");
  // torch's order: the moments' changes first, then the moments.
  Value m_new =
      assign_unless_skipped(m, where(touched, m + (grad - m) * (1.0 - beta1), m), apply_if);
  Value v_new =
      assign_unless_skipped(v, where(touched, v + (square(grad) - v) * (1.0 - beta2), v), apply_if);
  // The bias corrections in f64, as torch's Python floats; t counts from 1.
  Value t = cast(step, f64) + 1.0;
  Value correction1 = cast(1.0 - pow(beta1, t), dtype);
  Value correction2 = cast(sqrt(1.0 - pow(beta2, t)), dtype);
  Value step_size = lr * correction2 / correction1;
  Value stepped = where(touched, var - m_new / (sqrt(v_new) + eps) * step_size, var);
  return assign_unless_skipped(var, stepped, apply_if);
}

}  // namespace kiln::optim
