// The toy problem the optimizer and schedule tests train: three parameters pulled toward a
// target, with Kiln's result compared against formulas or torch's printed numbers.
#pragma once

#include <functional>
#include <memory>
#include <vector>

#include "test_util.h"

namespace kiln::testing {

// Every optimizer variant against the torch.optim formulas written out by hand, for three
// steps (so that slots carry over), with non-default hyperparameters (so that swapping two of
// them, or dropping one, shows). loss = sum((p - target)^2) / 2, so grad = p - target.
struct OptimizerCase {
  const std::vector<double> p0 = {0.5, -1.0, 2.0}, target = {1.0, 1.0, -1.0};
  static constexpr int kSteps = 3;
  static constexpr double kLr = 0.1;

  // Kiln's parameters after `steps` steps of `optimizer`.
  std::vector<double> kiln(optim::Optimizer&& optimizer, int steps = kSteps) const {
    Graph g;
    Value p = g.variable("p", {3}, init::zeros(), f64);
    Value loss = sum(square(p - g.constant(Tensor::from_vector<double>(target)))) * 0.5;
    Value train = optimizer.minimize(loss);
    Session s(g);
    s.set_variable(p, Tensor::from_vector<double>(p0));
    for (int i = 0; i < steps; ++i) s.run({}, {}, {train});
    EXPECT_EQ(s.variable_value(g.value("global_step")).item<int64_t>(), steps);
    return s.variable_value(p).to_vector<double>();
  }
  // The reference: `step(p, grad, t)` updates p in place at step t = 1, 2, ...
  template <typename Step>
  std::vector<double> reference(Step step) const {
    std::vector<double> p = p0;
    for (int t = 1; t <= kSteps; ++t) {
      std::vector<double> grad(3);
      for (int i = 0; i < 3; ++i) grad[i] = p[i] - target[i];
      step(p, grad, t);
    }
    return p;
  }
  void expect_same(const std::vector<double>& got, const std::vector<double>& want) const {
    for (int i = 0; i < 3; ++i) EXPECT_NEAR(got[i], want[i], 1e-13) << i;
    EXPECT_NE(want, p0);  // the case moves the parameters at all
  }
};

// An optimizer and the parameters torch printed for OptimizerCase after some steps.
struct TorchCase {
  const char* name;
  std::function<std::unique_ptr<optim::Optimizer>()> make;
  std::vector<double> torch;
  double tolerance = 1e-13;

  // Kiln's parameters after `steps` steps, checked against torch's; returned.
  std::vector<double> expect_matches(const OptimizerCase& c, int steps) const {
    const std::vector<double> got = c.kiln(std::move(*make()), steps);
    for (int i = 0; i < 3; ++i) EXPECT_NEAR(got[i], torch[i], tolerance) << i;
    return got;
  }
};

}  // namespace kiln::testing
