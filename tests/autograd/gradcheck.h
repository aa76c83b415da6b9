// Finite-difference gradient checking in f64.
#pragma once

#include "test_util.h"

namespace kiln::testing {

/// Builds y = build(inputs) in f64, takes L = sum(y * r) for a fixed random r, and compares
/// autograd's dL/d(input) with central differences (L(x + h) - L(x - h)) / 2h, element by
/// element. Returns the number of elements compared.
inline int check_gradients(const std::function<Value(Graph&, const std::vector<Value>&)>& build,
                           const std::vector<Tensor>& inputs, const std::string& what,
                           double rtol = 1e-6, double atol = 1e-8, double h = 1e-6) {
  Graph g;
  std::vector<Value> xs;
  for (size_t i = 0; i < inputs.size(); ++i)
    xs.push_back(g.placeholder(str("x", i), inputs[i].dtype(), inputs[i].shape()));
  Value y = build(g, xs);
  Value weights = g.placeholder("r", f64, y.shape());
  Value loss = sum(y * weights);
  std::vector<Value> differentiable;
  for (const Value& x : xs)
    if (is_floating(x.dtype())) differentiable.push_back(x);
  std::vector<Value> grads = gradients(loss, differentiable, {.materialize_unused = true});
  Session s(g, {.intra_op_threads = 1});
  Tensor r = random_tensor(f64, y.shape().is_known() ? y.shape() : Shape{}, -1, 1, 77);
  FeedList feeds;
  for (size_t i = 0; i < inputs.size(); ++i) feeds.emplace_back(xs[i], inputs[i]);
  if (!y.shape().is_known()) {
    r = random_tensor(f64, s.run(feeds, {y})[0].shape(), -1, 1, 77);
  }
  feeds.emplace_back(weights, r);
  std::vector<Tensor> analytic = s.run(feeds, grads);
  int compared = 0;
  size_t k = 0;
  for (size_t i = 0; i < inputs.size(); ++i) {
    if (!is_floating(inputs[i].dtype())) continue;
    const Tensor& grad = analytic[k++];
    EXPECT_EQ(grad.shape(), inputs[i].shape()) << what;
    for (int64_t e = 0; e < inputs[i].numel(); ++e) {
      auto loss_at = [&](double delta) {
        FeedList shifted = feeds;
        Tensor moved = inputs[i].clone();
        moved.data<double>()[e] += delta;
        shifted[i].second = moved;
        return s.run(shifted, {loss})[0].item<double>();
      };
      double numeric = (loss_at(h) - loss_at(-h)) / (2 * h);
      double got = grad.element(e);
      EXPECT_NEAR(got, numeric, atol + rtol * std::abs(numeric) + 1e-5 * std::abs(numeric))
          << what << ": d/dx" << i << "[" << e << "]";
      ++compared;
    }
  }
  return compared;
}

}  // namespace kiln::testing
