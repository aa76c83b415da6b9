// L-BFGS (torch.optim.LBFGS): the one optimizer driven from the host. Each of its steps
// evaluates the loss and gradients several times (a line search, several iterations), which a
// graph without loops cannot express, so it runs a Session the way torch's step runs its
// closure, as TensorFlow 1's ScipyOptimizerInterface drove its session. The gradients are graph
// nodes, made once; the direction's algebra runs on the host in f64.
#pragma once

#include <cstdint>
#include <deque>
#include <map>
#include <string>
#include <vector>

#include "kiln/framework/graph.h"
#include "kiln/framework/tensor.h"
#include "kiln/runtime/session.h"

namespace kiln::optim {

/// How L-BFGS chooses the step length along its direction.
enum class LineSearch {
  none,         ///< a fixed step: lr (the very first iteration: lr * min(1, 1 / |g|_1))
  strong_wolfe  ///< a line search until the strong Wolfe conditions hold (c1 1e-4, c2 0.9)
};

/// torch.optim.LBFGS's options, with its defaults.
struct LBFGSOptions {
  double lr = 1;
  int64_t max_iter = 20;         ///< iterations per step()
  int64_t max_eval = 0;          ///< evaluations per step(); 0: max_iter * 5 / 4 (torch's default)
  double tolerance_grad = 1e-7;  ///< a step ends once max |g| <= this
  double tolerance_change = 1e-9;  ///< ... or the loss or the parameters change less than this
  int64_t history_size = 100;      ///< correction pairs (s, y) kept
  LineSearch line_search = LineSearch::none;
};

/// Minimizes a scalar loss over variables by L-BFGS, as torch.optim.LBFGS: `step` is torch's
/// step(closure), each evaluation one run of the session computing the loss and gradients at
/// the feeds given. The constructor adds the gradients to the graph (a Session made before
/// runs them too):
///
///     optim::LBFGS lbfgs(loss, {}, {.line_search = optim::LineSearch::strong_wolfe});
///     Session session(graph);
///     for (int i = 0; i < 10; ++i) lbfgs.step(session, {{x, data}, {y, labels}});
///
/// Every evaluation runs on the whole batch fed: L-BFGS is for full-batch problems (its
/// curvature pairs assume the same function at every step, as torch's do). Variables must be f32 or
/// f64; each update is rounded to the variable's dtype, as torch updates the parameters in place.
/// The history lives here, not in the graph: state() and load_state() save and restore it (with the
/// session's checkpoint, a resumed run continues bit for bit).
class LBFGS {
 public:
  /// Adds the gradients of `loss` (a floating scalar) with respect to `variables` (default:
  /// every trainable variable of its graph; those the loss does not depend on are left out) to
  /// the loss's graph. Throws kiln::GraphError for a bad option, a loss that is not a floating
  /// scalar, a variable of another graph or of another dtype than f32 and f64, or when the
  /// loss depends on none of the variables.
  LBFGS(const Value& loss, std::vector<Value> variables = {}, LBFGSOptions options = {});

  /// One optimizer step: up to max_iter iterations and max_eval evaluations, each evaluation
  /// a run of `session` with `feeds`. Returns the loss before the step (torch's return value).
  /// The session's errors (a bad feed, a NaN check) propagate; the variables then hold the
  /// last point written.
  double step(Session& session, const FeedList& feeds = {});

  /// Evaluations of the loss so far (torch's state "func_evals").
  int64_t evaluations() const { return evaluations_; }
  /// Iterations so far (torch's state "n_iter").
  int64_t iterations() const { return iterations_; }
  /// The variables trained, in the order of the flat vectors.
  const std::vector<Value>& variables() const { return variables_; }

  /// The optimizer's state as f64 tensors by name: the history ("old_dirs", "old_steps" [k, n],
  /// "rho" [k]), the last direction "d" and step length "t", "h_diag", "prev_flat_grad",
  /// "prev_loss", and the counts. Save it beside the checkpoint (save_safetensors).
  std::map<std::string, Tensor> state() const;
  /// Restores what state() returned, for the same variables. Checks everything first and
  /// throws kiln::FeedError naming the entry and the values when a tensor is missing or does
  /// not fit; the state is unchanged then.
  void load_state(const std::map<std::string, Tensor>& state);

 private:
  struct Evaluation {
    double loss = 0;
    std::vector<double> grad;
  };
  Evaluation evaluate(Session& session, const FeedList& feeds);
  // Reads the variables into x_ (the session may have changed them since the last step).
  void read_variables(Session& session);
  // x + t d, each element rounded to its variable's dtype.
  std::vector<double> point(const std::vector<double>& x, double t,
                            const std::vector<double>& d) const;
  // Writes x into the session's variables and keeps it as x_.
  void write_variables(Session& session, std::vector<double> x);
  // The next direction from the gradient and the history (the two-loop recursion).
  std::vector<double> direction(const std::vector<double>& grad) const;
  // The step length along d from x (loss f, gradient g, directional derivative gtd) satisfying
  // the strong Wolfe conditions, and `eval` at the point chosen. The session's variables are
  // left at the last point probed. Returns the step length.
  double strong_wolfe(Session& session, const FeedList& feeds, const std::vector<double>& x,
                      double t, const std::vector<double>& d, double gtd, Evaluation& eval,
                      int64_t& evaluations);

  LBFGSOptions options_;
  Value loss_;
  std::vector<Value> variables_;
  std::vector<Value> gradients_;
  int64_t size_ = 0;  // elements of all variables
  std::vector<double> x_;

  // torch's state, carried from step to step.
  std::deque<std::vector<double>> old_dirs_, old_steps_;  // y and s pairs, oldest first
  std::deque<double> rho_;                                // 1 / (y . s)
  std::vector<double> d_, prev_grad_;
  double t_ = 0, h_diag_ = 1, prev_loss_ = 0;
  int64_t evaluations_ = 0, iterations_ = 0;
};

}  // namespace kiln::optim
