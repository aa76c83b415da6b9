#include "kiln/autograd/lbfgs.h"

#include <algorithm>
#include <cmath>

#include "kiln/autograd/gradients.h"

namespace kiln::optim {
namespace {

double dot(const std::vector<double>& a, const std::vector<double>& b) {
  double sum = 0;
  for (size_t i = 0; i < a.size(); ++i) sum += a[i] * b[i];
  return sum;
}

double max_abs(const std::vector<double>& a) {
  double largest = 0;
  for (double v : a) largest = std::max(largest, std::abs(v));
  return largest;
}

// The minimizer of the cubic through (x1, f1) and (x2, f2) with slopes g1 and g2, clamped to
// [lo, hi]; the interval's midpoint when the cubic has no minimum (its discriminant < 0).
double cubic_minimum(double x1, double f1, double g1, double x2, double f2, double g2, double lo,
                     double hi) {
  const double d1 = g1 + g2 - 3 * (f1 - f2) / (x1 - x2);
  const double d2_square = d1 * d1 - g1 * g2;
  if (d2_square < 0) return (lo + hi) / 2;
  const double d2 = std::sqrt(d2_square);
  const double at = x1 <= x2 ? x2 - (x2 - x1) * ((g2 + d2 - d1) / (g2 - g1 + 2 * d2))
                             : x1 - (x1 - x2) * ((g1 + d2 - d1) / (g1 - g2 + 2 * d2));
  return std::min(std::max(at, lo), hi);
}

double cubic_minimum(double x1, double f1, double g1, double x2, double f2, double g2) {
  return cubic_minimum(x1, f1, g1, x2, f2, g2, std::min(x1, x2), std::max(x1, x2));
}

// One end of the line search's bracket: a step length with its loss, gradient and slope.
struct Probe {
  double t = 0, f = 0, gtd = 0;
  std::vector<double> grad;
};

Tensor state_scalar(double v) {
  return Tensor::scalar<double>(v);
}

Tensor state_rows(const std::deque<std::vector<double>>& rows, int64_t size) {
  std::vector<double> flat;
  flat.reserve(rows.size() * static_cast<size_t>(size));
  for (const std::vector<double>& row : rows) flat.insert(flat.end(), row.begin(), row.end());
  return Tensor::from_vector<double>(flat, Shape{static_cast<int64_t>(rows.size()), size});
}

}  // namespace

LBFGS::LBFGS(const Value& loss, std::vector<Value> variables, LBFGSOptions options)
    : options_(options), loss_(loss) {
  KILN_CHECK(options.lr > 0, GraphError, "[lbfgs] lr must be > 0, got ", options.lr);
  KILN_CHECK(options.max_iter >= 1, GraphError, "[lbfgs] max_iter must be >= 1, got ",
             options.max_iter);
  KILN_CHECK(options.max_eval >= 0, GraphError,
             "[lbfgs] max_eval must be >= 1 (or 0: max_iter * 5 / 4), got ", options.max_eval);
  KILN_CHECK(options.history_size >= 1, GraphError, "[lbfgs] history_size must be >= 1, got ",
             options.history_size);
  KILN_CHECK(options.tolerance_grad >= 0 && options.tolerance_change >= 0, GraphError,
             "[lbfgs] the tolerances must be >= 0, got tolerance_grad ", options.tolerance_grad,
             " and tolerance_change ", options.tolerance_change);
  if (options_.max_eval == 0) options_.max_eval = std::max<int64_t>(1, options.max_iter * 5 / 4);
  KILN_CHECK(loss.defined(), GraphError, "[lbfgs] the loss is undefined");
  KILN_CHECK(is_floating(loss.dtype()), GraphError, "[lbfgs] the loss '", loss.name(),
             "' must be floating point, got ", loss.dtype());
  KILN_CHECK(loss.shape().rank() == 0 || (loss.shape().is_known() && loss.shape().numel() == 1),
             GraphError, "[lbfgs] the loss '", loss.name(), "' must be a scalar, got ",
             loss.shape(), " (take its mean or sum)");
  Graph& graph = *loss.graph();
  if (variables.empty()) variables = graph.variables(/*trainable_only=*/true);
  KILN_CHECK(!variables.empty(), GraphError, "[lbfgs] the graph has no trainable variables");
  for (const Value& v : variables) {
    KILN_CHECK(v.defined() && v.graph() == &graph && v.node().op().source() == OutputSource::state,
               GraphError, "[lbfgs] ", v.defined() ? v.name() : "an undefined value",
               " is not a variable of the loss's graph");
    KILN_CHECK(v.dtype() == f32 || v.dtype() == f64, GraphError, "[lbfgs] variable '", v.name(),
               "' is ", v.dtype(), ": L-BFGS trains f32 and f64 variables");
    KILN_CHECK(v.shape().is_known(), GraphError, "[lbfgs] variable '", v.name(),
               "' has the unknown shape ", v.shape());
  }
  // As torch skips parameters whose gradient is None, variables the loss does not reach are
  // left out: their part of every direction would be 0.
  const std::vector<Value> grads = gradients(loss, variables, {.allow_unused = true});
  for (size_t i = 0; i < variables.size(); ++i) {
    if (!grads[i].defined()) continue;
    variables_.push_back(variables[i]);
    gradients_.push_back(grads[i]);
    size_ += variables[i].shape().numel();
  }
  KILN_CHECK(!variables_.empty(), GraphError, "[lbfgs] the loss '", loss.name(),
             "' depends on none of the ", variables.size(), " variables");
}

LBFGS::Evaluation LBFGS::evaluate(Session& session, const FeedList& feeds) {
  std::vector<Value> fetches{loss_};
  fetches.insert(fetches.end(), gradients_.begin(), gradients_.end());
  const std::vector<Tensor> out = session.run(feeds, fetches);
  Evaluation eval;
  eval.loss = out[0].to(Device::cpu()).element(0);
  eval.grad.reserve(static_cast<size_t>(size_));
  for (size_t i = 1; i < out.size(); ++i) {
    const Tensor g = out[i].to(Device::cpu()).cast(f64);
    const std::span<double> values = g.data_span<double>();
    eval.grad.insert(eval.grad.end(), values.begin(), values.end());
  }
  return eval;
}

void LBFGS::read_variables(Session& session) {
  x_.clear();
  x_.reserve(static_cast<size_t>(size_));
  for (const Value& v : variables_) {
    const Tensor value = session.variable_value(v).to(Device::cpu()).cast(f64);
    const std::span<double> values = value.data_span<double>();
    x_.insert(x_.end(), values.begin(), values.end());
  }
}

std::vector<double> LBFGS::point(const std::vector<double>& x, double t,
                                 const std::vector<double>& d) const {
  std::vector<double> next(x.size());
  size_t offset = 0;
  for (const Value& v : variables_) {
    const size_t end = offset + static_cast<size_t>(v.shape().numel());
    // The point as the variable holds it: an f32 variable rounds every update (torch's
    // in-place p.add_(d, alpha=t)), so x is exactly what the session computes with.
    for (size_t i = offset; i < end; ++i)
      next[i] = v.dtype() == f32 ? static_cast<float>(x[i] + t * d[i]) : x[i] + t * d[i];
    offset = end;
  }
  return next;
}

void LBFGS::write_variables(Session& session, std::vector<double> x) {
  size_t offset = 0;
  for (const Value& v : variables_) {
    const auto begin = x.begin() + static_cast<std::ptrdiff_t>(offset);
    offset += static_cast<size_t>(v.shape().numel());
    const std::vector<double> part(begin, x.begin() + static_cast<std::ptrdiff_t>(offset));
    session.set_variable(v, Tensor::from_vector<double>(part, v.shape()).cast(v.dtype()));
  }
  x_ = std::move(x);
}

std::vector<double> LBFGS::direction(const std::vector<double>& grad) const {
  // Two-loop recursion (Nocedal & Wright, algorithm 7.4): q = -g pushed back through the
  // history newest first, scaled by the initial inverse Hessian h_diag I, then forward again.
  const size_t k = old_dirs_.size();
  std::vector<double> q(grad.size()), alpha(k);
  for (size_t i = 0; i < grad.size(); ++i) q[i] = -grad[i];
  for (size_t j = k; j-- > 0;) {
    alpha[j] = dot(old_steps_[j], q) * rho_[j];
    const std::vector<double>& y = old_dirs_[j];
    for (size_t i = 0; i < q.size(); ++i) q[i] -= alpha[j] * y[i];
  }
  for (double& v : q) v *= h_diag_;
  for (size_t j = 0; j < k; ++j) {
    const double beta = dot(old_dirs_[j], q) * rho_[j];
    const std::vector<double>& s = old_steps_[j];
    for (size_t i = 0; i < q.size(); ++i) q[i] += (alpha[j] - beta) * s[i];
  }
  return q;
}

double LBFGS::strong_wolfe(Session& session, const FeedList& feeds, const std::vector<double>& x,
                           double t, const std::vector<double>& d, double gtd, Evaluation& eval,
                           int64_t& evaluations) {
  constexpr double c1 = 1e-4, c2 = 0.9;  // sufficient decrease; curvature
  constexpr int64_t max_steps = 25;
  const double f = eval.loss, d_norm = max_abs(d);
  // Evaluates x + t d (the variables stay there: the caller writes the point chosen).
  auto probe = [&](double at) {
    write_variables(session, point(x, at, d));
    Evaluation e = evaluate(session, feeds);
    ++evaluations;
    Probe p{.t = at, .f = e.loss, .gtd = dot(e.grad, d), .grad = std::move(e.grad)};
    return p;
  };
  Probe previous{.t = 0, .f = f, .gtd = gtd, .grad = eval.grad};
  Probe current = probe(t);
  // Phase one: grow the step until it brackets a point satisfying both conditions.
  std::vector<Probe> bracket;
  bool done = false;
  int64_t steps = 0;
  while (steps < max_steps) {
    if (current.f > f + c1 * current.t * gtd || (steps > 1 && current.f >= previous.f)) {
      bracket = {previous, current};
      break;
    }
    if (std::abs(current.gtd) <= -c2 * gtd) {
      bracket = {current};
      done = true;
      break;
    }
    if (current.gtd >= 0) {
      bracket = {previous, current};
      break;
    }
    // Extrapolate: the cubic's minimum, at least 1% beyond t and at most 10 t.
    const double next =
        cubic_minimum(previous.t, previous.f, previous.gtd, current.t, current.f, current.gtd,
                      current.t + 0.01 * (current.t - previous.t), current.t * 10);
    previous = std::move(current);
    current = probe(next);
    ++steps;
  }
  if (steps == max_steps) bracket = {Probe{.t = 0, .f = f, .gtd = gtd, .grad = eval.grad}, current};
  // Phase two (zoom): shrink the bracket around the point; `low` is its end of lower loss.
  size_t low = 0, high = 1;
  auto order = [&] {
    low = bracket[0].f <= bracket.back().f ? 0 : 1;
    high = 1 - low;
  };
  if (bracket.size() == 2) order();
  bool insufficient_progress = false;
  while (!done && steps < max_steps) {
    const double lo = std::min(bracket[0].t, bracket[1].t),
                 hi = std::max(bracket[0].t, bracket[1].t);
    if ((hi - lo) * d_norm < options_.tolerance_change) break;
    double next = cubic_minimum(bracket[0].t, bracket[0].f, bracket[0].gtd, bracket[1].t,
                                bracket[1].f, bracket[1].gtd);
    // A point within 10% of an end makes little progress: the second time in a row (or when
    // it is at or outside an end), move it to 10% inside the nearer end.
    const double margin = 0.1 * (hi - lo);
    if (std::min(hi - next, next - lo) < margin) {
      if (insufficient_progress || next >= hi || next <= lo) {
        next = std::abs(next - hi) < std::abs(next - lo) ? hi - margin : lo + margin;
        insufficient_progress = false;
      } else {
        insufficient_progress = true;
      }
    } else {
      insufficient_progress = false;
    }
    current = probe(next);
    ++steps;
    if (current.f > f + c1 * current.t * gtd || current.f >= bracket[low].f) {
      bracket[high] = std::move(current);
      order();
    } else {
      if (std::abs(current.gtd) <= -c2 * gtd) {
        done = true;
      } else if (current.gtd * (bracket[high].t - bracket[low].t) >= 0) {
        bracket[high] = bracket[low];
      }
      bracket[low] = std::move(current);
    }
  }
  Probe& chosen = bracket.size() == 1 ? bracket[0] : bracket[low];
  eval.loss = chosen.f;
  eval.grad = std::move(chosen.grad);
  return chosen.t;
}

double LBFGS::step(Session& session, const FeedList& feeds) {
  read_variables(session);
  Evaluation eval = evaluate(session, feeds);
  const double initial_loss = eval.loss;
  int64_t evaluations = 1;
  ++evaluations_;
  if (max_abs(eval.grad) <= options_.tolerance_grad) return initial_loss;  // optimal already

  for (int64_t iteration = 1; iteration <= options_.max_iter; ++iteration) {
    ++iterations_;
    if (iterations_ == 1) {
      d_.resize(eval.grad.size());
      for (size_t i = 0; i < d_.size(); ++i) d_[i] = -eval.grad[i];
      old_dirs_.clear();
      old_steps_.clear();
      rho_.clear();
      h_diag_ = 1;
    } else {
      // The newest pair: y the change of gradient, s the step taken (t d).
      std::vector<double> y(eval.grad.size()), s(eval.grad.size());
      for (size_t i = 0; i < y.size(); ++i) {
        y[i] = eval.grad[i] - prev_grad_[i];
        s[i] = d_[i] * t_;
      }
      const double ys = dot(y, s);
      if (ys > 1e-10) {  // keep only pairs of positive curvature
        if (static_cast<int64_t>(old_dirs_.size()) == options_.history_size) {
          old_dirs_.pop_front();
          old_steps_.pop_front();
          rho_.pop_front();
        }
        h_diag_ = ys / dot(y, y);
        old_dirs_.push_back(std::move(y));
        old_steps_.push_back(std::move(s));
        rho_.push_back(1 / ys);
      }
      d_ = direction(eval.grad);
    }
    prev_grad_ = eval.grad;
    prev_loss_ = eval.loss;
    // The first iteration ever has no curvature to scale it: a step of at most lr / |g|_1.
    t_ = options_.lr;
    if (iterations_ == 1) {
      double g_l1 = 0;
      for (double v : eval.grad) g_l1 += std::abs(v);
      t_ *= std::min(1.0, 1 / g_l1);
    }
    const double gtd = dot(eval.grad, d_);
    if (gtd > -options_.tolerance_change) break;  // not a descent direction (any more)

    int64_t probes = 0;
    if (options_.line_search == LineSearch::strong_wolfe) {
      const std::vector<double> x = x_;
      t_ = strong_wolfe(session, feeds, x, t_, d_, gtd, eval, probes);
      write_variables(session, point(x, t_, d_));
    } else {
      write_variables(session, point(x_, t_, d_));
      if (iteration != options_.max_iter) {
        eval = evaluate(session, feeds);
        probes = 1;
      }
    }
    evaluations += probes;
    evaluations_ += probes;

    if (iteration == options_.max_iter || evaluations >= options_.max_eval) break;
    if (max_abs(eval.grad) <= options_.tolerance_grad) break;
    if (max_abs(d_) * std::abs(t_) <= options_.tolerance_change) break;
    if (std::abs(eval.loss - prev_loss_) < options_.tolerance_change) break;
  }
  return initial_loss;
}

std::map<std::string, Tensor> LBFGS::state() const {
  std::map<std::string, Tensor> state;
  state["old_dirs"] = state_rows(old_dirs_, size_);
  state["old_steps"] = state_rows(old_steps_, size_);
  state["rho"] = Tensor::from_vector<double>(std::vector<double>(rho_.begin(), rho_.end()),
                                             Shape{static_cast<int64_t>(rho_.size())});
  state["d"] = Tensor::from_vector<double>(d_, Shape{static_cast<int64_t>(d_.size())});
  state["prev_flat_grad"] =
      Tensor::from_vector<double>(prev_grad_, Shape{static_cast<int64_t>(prev_grad_.size())});
  state["t"] = state_scalar(t_);
  state["h_diag"] = state_scalar(h_diag_);
  state["prev_loss"] = state_scalar(prev_loss_);
  state["n_iter"] = Tensor::scalar<int64_t>(iterations_);
  state["func_evals"] = Tensor::scalar<int64_t>(evaluations_);
  return state;
}

void LBFGS::load_state(const std::map<std::string, Tensor>& state) {
  auto entry = [&](const std::string& name, DType dtype) -> const Tensor& {
    const auto it = state.find(name);
    KILN_CHECK(it != state.end(), FeedError, "[lbfgs] the state has no '", name, "'");
    KILN_CHECK(it->second.dtype() == dtype, FeedError, "[lbfgs] the state's '", name, "' is ",
               it->second.dtype(), ", expected ", dtype);
    return it->second;
  };
  for (const char* name : {"n_iter", "func_evals"})
    KILN_CHECK(entry(name, i64).numel() == 1, FeedError, "[lbfgs] the state's '", name,
               "' must be a scalar, got ", entry(name, i64).shape());
  const int64_t iterations = entry("n_iter", i64).to(Device::cpu()).item<int64_t>();
  KILN_CHECK(iterations >= 0, FeedError, "[lbfgs] the state's 'n_iter' is ", iterations,
             ": expected a count >= 0");
  const Tensor& rho = entry("rho", f64);
  KILN_CHECK(rho.rank() == 1 && rho.numel() <= options_.history_size, FeedError,
             "[lbfgs] the state's 'rho' is ", rho.shape(), ": expected [k], k <= history_size ",
             options_.history_size);
  const int64_t k = rho.numel();
  const Shape rows{k, size_};
  for (const char* name : {"old_dirs", "old_steps"})
    KILN_CHECK(entry(name, f64).shape() == rows, FeedError, "[lbfgs] the state's '", name, "' is ",
               entry(name, f64).shape(), ", expected ", rows, " (", k,
               " pairs over the variables' ", size_, " elements)");
  // Before the first iteration the direction and gradient are still empty.
  const Shape flat{iterations == 0 ? 0 : size_};
  for (const char* name : {"d", "prev_flat_grad"})
    KILN_CHECK(entry(name, f64).shape() == flat, FeedError, "[lbfgs] the state's '", name, "' is ",
               entry(name, f64).shape(), ", expected ", flat);
  for (const char* name : {"t", "h_diag", "prev_loss"})
    KILN_CHECK(entry(name, f64).numel() == 1, FeedError, "[lbfgs] the state's '", name,
               "' must be a scalar, got ", entry(name, f64).shape());

  auto vector = [&](const char* name) {
    return entry(name, f64).to(Device::cpu()).to_vector<double>();
  };
  auto rows_of = [&](const char* name) {
    const std::vector<double> flat_rows = vector(name);
    std::deque<std::vector<double>> out;
    for (int64_t j = 0; j < k; ++j)
      out.emplace_back(flat_rows.begin() + j * size_, flat_rows.begin() + (j + 1) * size_);
    return out;
  };
  old_dirs_ = rows_of("old_dirs");
  old_steps_ = rows_of("old_steps");
  const std::vector<double> rho_values = vector("rho");
  rho_.assign(rho_values.begin(), rho_values.end());
  d_ = vector("d");
  prev_grad_ = vector("prev_flat_grad");
  t_ = vector("t")[0];
  h_diag_ = vector("h_diag")[0];
  prev_loss_ = vector("prev_loss")[0];
  iterations_ = iterations;
  evaluations_ = entry("func_evals", i64).to(Device::cpu()).item<int64_t>();
}

}  // namespace kiln::optim
