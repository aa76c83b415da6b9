// The loss functions of losses.h, built from other ops: their gradients are those ops'
// gradients, and fusion merges their elementwise parts. Each computes its per-element losses
// and ends with reduce_loss, or, where weights or ignored labels decide what "mean" divides by,
// with reduce_counted.
#include <cmath>
#include <limits>
#include <numbers>
#include <utility>
#include <vector>

#include "kiln/ops/array.h"
#include "kiln/ops/math.h"
#include "kiln/ops/nn.h"

namespace kiln {

const char* reduction_name(Reduction reduction) {
  switch (reduction) {
    case Reduction::none:
      return "none";
    case Reduction::mean:
      return "mean";
    case Reduction::sum:
      return "sum";
    case Reduction::batch_mean:
      return "batch_mean";
  }
  return "?";
}

Value reduce_loss(const Value& losses, Reduction reduction) {
  switch (reduction) {
    case Reduction::none:
      return losses;
    case Reduction::mean:
      return mean(losses);
    case Reduction::sum:
      return sum(losses);
    case Reduction::batch_mean:
      KILN_CHECK(losses.shape().rank() >= 1, GraphError, "[reduce_loss] ", losses.name(),
                 ": batch_mean divides by dim 0, and the losses are a scalar");
      // sum / N = the sum of the means over dim 0 (N known at run time).
      return sum(mean(losses, {0}));
  }
  throw GraphError(str("[reduce_loss] unknown reduction ", static_cast<int>(reduction)));
}

namespace {

// Per-element losses of which `counted` (same shape) says how much each counts: 0 for an
// ignored label, else 1 or its class weight. `mean` divides the sum by the sum counted.
Value reduce_counted(const Value& losses, const Value& counted, Reduction reduction) {
  if (reduction == Reduction::mean) return sum(losses) / sum(counted);
  return reduce_loss(losses, reduction);
}

// y in x's dtype: the labels of the margin losses may be given as integers.
Value as_dtype_of(const Value& y, const Value& x) {
  return y.dtype() == x.dtype() ? y : cast(y, x.dtype());
}

// logits [N, C, d1, ...] as rows [N d1 ..., C] (the class dim moved last) and labels [N, d1,
// ...] as [N d1 ...], for softmax_cross_entropy, which takes rows.
std::pair<Value, Value> as_rows(const Value& logits, const Value& labels) {
  const Shape& x = logits.shape();
  const int64_t rank = x.rank();
  KILN_CHECK(x[1] >= 0, GraphError, "[cross_entropy] logits ", x,
             " need a known class dim 1 to be read as rows");
  KILN_CHECK(labels.shape().rank() == rank - 1, GraphError, "[cross_entropy] labels ",
             labels.shape(), " must be logits ", x, " without its class dim 1");
  std::vector<int64_t> last(static_cast<size_t>(rank));
  last[0] = 0;
  for (int64_t d = 2; d < rank; ++d) last[static_cast<size_t>(d - 1)] = d;
  last.back() = 1;
  return {reshape(transpose(logits, last), {-1, x[1]}), reshape(labels, {-1})};
}

}  // namespace

Value cross_entropy(const Value& logits, const Value& labels, int64_t ignore_index,
                    double label_smoothing, const Value& weight, Reduction reduction) {
  KILN_CHECK(logits.shape().rank() >= 2, GraphError, "[cross_entropy] logits ", logits.shape(),
             " must be [N, C, ...]");
  if (weight.defined()) {
    // PyTorch's weighted form: (1 - e) nll_loss(log p, y, weight) + e / C times the smoothing
    // term -sum_c w_c log p_c of each counted element, reduced as the nll part (its mean divided
    // by the same sum of w[y]).
    const Value log_probs = log_softmax(logits, 1);
    const Value nll = nll_loss(log_probs, labels, ignore_index, weight, reduction);
    if (label_smoothing == 0) return nll;
    KILN_CHECK(label_smoothing > 0 && label_smoothing <= 1, GraphError,
               "[cross_entropy] label_smoothing ", label_smoothing, " must be in [0, 1]");
    Graph& graph = *logits.graph();
    std::vector<int64_t> along_classes(static_cast<size_t>(logits.shape().rank()), 1);
    along_classes[1] = -1;
    const Value ignore = graph.scalar(static_cast<double>(ignore_index), labels.dtype());
    const Value kept = not_equal(labels, ignore);
    const Value safe = where(kept, labels, graph.scalar(0, labels.dtype()));
    const Value smooth = where(kept, -sum(log_probs * reshape(weight, Shape(along_classes)), {1}),
                               scalar_like(log_probs, 0));
    const Value counted = gather(weight, safe, 0) * cast(kept, log_probs.dtype());
    const double classes = static_cast<double>(logits.shape()[1]);
    return nll * (1 - label_smoothing) +
           reduce_counted(smooth, counted, reduction) * (label_smoothing / classes);
  }
  const bool per_row = logits.shape().rank() == 2;
  const auto [rows, row_labels] = per_row ? std::pair{logits, labels} : as_rows(logits, labels);
  const Value losses = softmax_cross_entropy(rows, row_labels, ignore_index, label_smoothing);
  const Value ignore = rows.graph()->scalar(static_cast<double>(ignore_index), labels.dtype());
  const Value counted = cast(not_equal(row_labels, ignore), losses.dtype());
  if (reduction == Reduction::none || reduction == Reduction::batch_mean)
    return reduce_loss(per_row ? losses : reshape_like(losses, labels), reduction);
  return reduce_counted(losses, counted, reduction);
}

// -log_probs[n, y[n, ...], ...] picked by take_along_axis over the class axis (which checks
// every label not ignored: ignored ones are read as class 0, and their loss is 0 by `where`, so
// even a log probability of -inf there gives no NaN), weighted by weight[y].
Value nll_loss(const Value& log_probs, const Value& labels, int64_t ignore_index,
               const Value& weight, Reduction reduction) {
  const Shape& x = log_probs.shape();
  const Shape& y = labels.shape();
  KILN_CHECK(labels.dtype() == i32 || labels.dtype() == i64, GraphError,
             "[nll_loss] labels must be i32 or i64, got ", labels.dtype());
  KILN_CHECK(x.rank() >= 2 && y.rank() == x.rank() - 1, GraphError, "[nll_loss] log_probs ", x,
             " must be [N, C, ...] and labels ", y, " [N, ...]");
  for (int64_t d = 0; d < y.rank(); ++d) {
    const int64_t xd = x[d == 0 ? 0 : d + 1];
    KILN_CHECK(xd < 0 || y[d] < 0 || xd == y[d], GraphError, "[nll_loss] labels ", y,
               " do not match log_probs ", x, " (log_probs without its class dim 1)");
  }
  Graph& graph = *log_probs.graph();
  const NameScope scope(graph, "nll_loss");  // a bad label's error names the loss
  const Value ignore = graph.scalar(static_cast<double>(ignore_index), labels.dtype());
  const Value kept = not_equal(labels, ignore);
  const Value safe = where(kept, labels, graph.scalar(0, labels.dtype()));
  const Value picked = squeeze(take_along_axis(log_probs, expand_dims(safe, {1}), 1), {1});
  Value counted = cast(kept, log_probs.dtype());
  Value losses = -picked;
  if (weight.defined()) {
    KILN_CHECK(weight.shape().rank() == 1 &&
                   (x[1] < 0 || weight.shape()[0] < 0 || weight.shape()[0] == x[1]),
               GraphError, "[nll_loss] weight ", weight.shape(), " must be [C] for log_probs ", x);
    const Value label_weight = gather(weight, safe, 0);
    counted = counted * label_weight;
    losses = losses * label_weight;
  }
  return reduce_counted(where(kept, losses, scalar_like(losses, 0)), counted, reduction);
}

Value mse_loss(const Value& a, const Value& b, Reduction reduction) {
  return reduce_loss(square(a - b), reduction);
}

Value l1_loss(const Value& a, const Value& b, Reduction reduction) {
  return reduce_loss(abs(a - b), reduction);
}

// d = |a - b|;  0.5 d^2 where d < delta, delta (d - delta / 2) beyond
Value huber_loss(const Value& a, const Value& b, double delta, Reduction reduction) {
  KILN_CHECK(delta > 0, GraphError, "[huber_loss] delta ", delta, " must be positive");
  const Value d = abs(a - b);
  return reduce_loss(
      where(less(d, scalar_like(d, delta)), square(d) * 0.5, (d - delta * 0.5) * delta), reduction);
}

// d = |a - b|;  0.5 d^2 / beta where d < beta, d - beta / 2 beyond
Value smooth_l1_loss(const Value& a, const Value& b, double beta, Reduction reduction) {
  KILN_CHECK(beta >= 0, GraphError, "[smooth_l1_loss] beta ", beta, " must not be negative");
  if (beta == 0) return l1_loss(a, b, reduction);
  const Value d = abs(a - b);
  return reduce_loss(where(less(d, scalar_like(d, beta)), square(d) * (0.5 / beta), d - beta * 0.5),
                     reduction);
}

// -(y log s + (1 - y) log(1 - s)), s = sigmoid x, = softplus(x) - x y: no log of 0, no overflow.
// With pos_weight w: (1 - t) x + (1 + (w - 1) t) softplus(-x).
Value binary_cross_entropy_with_logits(const Value& logits, const Value& targets,
                                       const Value& pos_weight, const Value& weight,
                                       Reduction reduction) {
  Value losses;
  if (pos_weight.defined()) {
    const Value one = scalar_like(logits, 1);
    losses = (one - targets) * logits + (one + (pos_weight - one) * targets) * softplus(-logits);
  } else {
    losses = softplus(logits) - logits * targets;
  }
  return reduce_loss(weight.defined() ? losses * weight : losses, reduction);
}

// -(t log p + (1 - t) log(1 - p)) with each log at least -100 (PyTorch's clamp). A log of 0
// reads log(1) through `where` and takes -100, so its gradient is 0, not 0 * inf.
Value binary_cross_entropy(const Value& probs, const Value& targets, const Value& weight,
                           Reduction reduction) {
  const Value zero = scalar_like(probs, 0), one = scalar_like(probs, 1);
  auto clamped_log = [&](const Value& v) {
    const Value positive = greater(v, zero);
    return maximum(where(positive, log(where(positive, v, one)), scalar_like(v, -100)),
                   scalar_like(v, -100));
  };
  const Value losses = -(targets * clamped_log(probs) + (one - targets) * clamped_log(one - probs));
  return reduce_loss(weight.defined() ? losses * weight : losses, reduction);
}

// t (log t - x), 0 where t is 0. log reads max(t, tiny) there, so the untaken branch's gradient
// is 0 times a finite number, not 0 * inf.
Value kl_div(const Value& log_input, const Value& target, bool log_target, Reduction reduction) {
  if (log_target) return reduce_loss(exp(target) * (target - log_input), reduction);
  const Value positive = greater(target, scalar_like(target, 0));
  const Value safe = where(positive, target, scalar_like(target, 1));
  return reduce_loss(where(positive, target * (log(safe) - log_input), scalar_like(target, 0)),
                     reduction);
}

// max(0, margin - y (x1 - x2))
Value margin_ranking_loss(const Value& x1, const Value& x2, const Value& y, double margin,
                          Reduction reduction) {
  return reduce_loss(relu(-as_dtype_of(y, x1) * (x1 - x2) + margin), reduction);
}

// where(y != -1, x, 0) + where(y != 1, max(0, margin - x), 0): PyTorch's form, so a label that is
// neither +1 nor -1 gets both terms there too.
Value hinge_embedding_loss(const Value& x, const Value& y, double margin, Reduction reduction) {
  const Value zero = scalar_like(x, 0);
  const Value hinge = where(not_equal(y, scalar_like(y, 1)), relu(-x + margin), zero);
  return reduce_loss(hinge + where(not_equal(y, scalar_like(y, -1)), x, zero), reduction);
}

// log(1 + e^(-y x)) = softplus(-y x)
Value soft_margin_loss(const Value& x, const Value& y, Reduction reduction) {
  return reduce_loss(softplus(-as_dtype_of(y, x) * x), reduction);
}

// per example: mean over c of w_c (-(y log sigmoid(x) + (1 - y) log sigmoid(-x)))
Value multilabel_soft_margin_loss(const Value& x, const Value& y, const Value& weight,
                                  Reduction reduction) {
  KILN_CHECK(x.shape().rank() == 2, GraphError, "[multilabel_soft_margin_loss] x ", x.shape(),
             " must be [N, C]");
  const Value t = as_dtype_of(y, x);
  Value losses = -(t * logsigmoid(x) + (scalar_like(t, 1) - t) * logsigmoid(-x));
  if (weight.defined()) losses = losses * weight;
  return reduce_loss(mean(losses, {1}), reduction);
}

// per example n with label y: sum over classes i != y of w_y max(0, margin - x[y] + x[i])^p / C
Value multi_margin_loss(const Value& x, const Value& y, int64_t p, double margin,
                        const Value& weight, Reduction reduction) {
  const Shape& s = x.shape();
  KILN_CHECK(s.rank() == 2 && s[1] >= 0, GraphError, "[multi_margin_loss] x ", s,
             " must be [N, C] with C known");
  KILN_CHECK(y.dtype() == i32 || y.dtype() == i64, GraphError,
             "[multi_margin_loss] labels must be i32 or i64, got ", y.dtype());
  KILN_CHECK(y.shape().rank() == 1, GraphError, "[multi_margin_loss] labels ", y.shape(),
             " must be [N] for x ", s);
  KILN_CHECK(p == 1 || p == 2, GraphError, "[multi_margin_loss] p is ", p, ": only 1 and 2");
  const NameScope scope(*x.graph(), "multi_margin_loss");  // a bad label's error names the loss
  const Value label = expand_dims(y, {1});                 // [N, 1]
  const Value x_label = take_along_axis(x, label, 1);
  Value terms = relu(x - x_label + margin);
  if (p == 2) terms = square(terms);
  const Value others = not_equal(iota(*x.graph(), Shape{1, s[1]}, 1, y.dtype()), label);
  terms = where(others, terms, scalar_like(terms, 0));
  Value losses = mean(terms, {1});
  if (weight.defined()) {
    KILN_CHECK(weight.shape().rank() == 1 && (weight.shape()[0] < 0 || weight.shape()[0] == s[1]),
               GraphError, "[multi_margin_loss] weight ", weight.shape(), " must be [C] for x ", s);
    losses = losses * gather(weight, y, 0);
  }
  return reduce_loss(losses, reduction);
}

// cos = sum(x1 x2) / sqrt((|x1|^2 + 1e-12) (|x2|^2 + 1e-12)) over the last dim;
// where(y == 1, 1 - cos, 0) + where(y == -1, max(0, cos - margin), 0)
Value cosine_embedding_loss(const Value& x1, const Value& x2, const Value& y, double margin,
                            Reduction reduction) {
  KILN_CHECK(x1.shape().rank() == 1 || x1.shape().rank() == 2, GraphError,
             "[cosine_embedding_loss] x1 ", x1.shape(), " must be [N, D] or [D]");
  constexpr double kEpsilon = 1e-12;
  const Value dot = sum(x1 * x2, {-1});
  const Value norms = (sum(square(x1), {-1}) + kEpsilon) * (sum(square(x2), {-1}) + kEpsilon);
  const Value cos = dot / sqrt(norms);
  const Value zero = scalar_like(cos, 0);
  const Value similar = where(equal(y, scalar_like(y, 1)), -cos + 1.0, zero);
  return reduce_loss(similar + where(equal(y, scalar_like(y, -1)), relu(cos - margin), zero),
                     reduction);
}

// |x1 - x2 + eps|_p over the last dim
Value pairwise_distance(const Value& x1, const Value& x2, double p, double eps, bool keepdim) {
  KILN_CHECK(p > 0, GraphError, "[pairwise_distance] p ", p, " must be positive");
  const Value d = abs(x1 - x2 + eps);
  if (std::isinf(p)) return max(d, {-1}, keepdim);
  if (p == 1) return sum(d, {-1}, keepdim);
  if (p == 2) return sqrt(sum(square(d), {-1}, keepdim));
  return pow(sum(pow(d, p), {-1}, keepdim), 1 / p);
}

// max(0, d(a, p) - d(a, n) + margin)
Value triplet_margin_loss(const Value& anchor, const Value& positive, const Value& negative,
                          double margin, double p, double eps, bool swap, Reduction reduction) {
  const Value to_positive = pairwise_distance(anchor, positive, p, eps);
  Value to_negative = pairwise_distance(anchor, negative, p, eps);
  if (swap) to_negative = minimum(to_negative, pairwise_distance(positive, negative, p, eps));
  return reduce_loss(relu(to_positive - to_negative + margin), reduction);
}

// log input: e^x - t x; else x - t log(x + eps). full: + t log t - t + log(2 pi t) / 2 where t > 1
// (Stirling's log t!), log reading 1 elsewhere so the untaken branch stays finite.
Value poisson_nll_loss(const Value& input, const Value& target, bool log_input, bool full,
                       double eps, Reduction reduction) {
  Value losses = log_input ? exp(input) - target * input : input - target * log(input + eps);
  if (full) {
    const Value counted = greater(target, scalar_like(target, 1));
    const Value t = where(counted, target, scalar_like(target, 1));
    const Value stirling = t * log(t) - t + log(t * (2 * std::numbers::pi)) * 0.5;
    losses = losses + where(counted, stirling, scalar_like(stirling, 0));
  }
  return reduce_loss(losses, reduction);
}

// 0.5 (log v + (x - t)^2 / v), v = max(var, eps) in value with var's gradient (v = var +
// stop_gradient(max(var, eps) - var)); + 0.5 log(2 pi) when full.
Value gaussian_nll_loss(const Value& input, const Value& target, const Value& var, bool full,
                        double eps, Reduction reduction) {
  KILN_CHECK(eps > 0, GraphError, "[gaussian_nll_loss] eps ", eps, " must be positive");
  const Shape& x = input.shape();
  const Shape& v = var.shape();
  Value variance = var;
  if (v.rank() == x.rank() - 1) {
    variance = expand_dims(var, {-1});  // one variance per row
  } else {
    KILN_CHECK(v.rank() == x.rank(), GraphError, "[gaussian_nll_loss] var ", v,
               " must be shaped like input ", x, ", or like it with its last dim 1 or removed");
    for (int64_t d = 0; d < x.rank(); ++d) {
      const bool last_one = d == x.rank() - 1 && v[d] == 1;
      KILN_CHECK(last_one || v[d] < 0 || x[d] < 0 || v[d] == x[d], GraphError,
                 "[gaussian_nll_loss] var ", v, " must be shaped like input ", x,
                 ", or like it with its last dim 1 or removed");
    }
  }
  const Value clamped = maximum(variance, scalar_like(variance, eps));
  variance = variance + variance.graph()->add("stop_gradient", {clamped - variance});
  Value losses = (log(variance) + square(input - target) / variance) * 0.5;
  if (full) losses = losses + 0.5 * std::log(2 * std::numbers::pi);
  return reduce_loss(losses, reduction);
}

}  // namespace kiln
