// The losses of ops/losses.h: reductions (none, sum, mean, batch_mean) against the per-element
// losses, the per-element losses against f64 formulas written from PyTorch's definitions,
// gradients against finite differences, and the errors a user can hit. (Cross entropy's and
// binary cross entropy's mean forms are in nn_functional_test.cc; the PyTorch comparison of
// every loss is the layer parity suite's "losses" model.)
#include <cmath>
#include <numbers>

#include "autograd/gradcheck.h"
#include "test_util.h"

namespace kiln {
namespace {

using testing::check_gradients;
using testing::expect_error;
using testing::r64;

double total(const std::vector<double>& v) {
  double s = 0;
  for (double e : v) s += e;
  return s;
}

// Labels of +1 and -1.
Tensor signs(int64_t n, uint32_t seed) {
  Tensor r = r64({n}, -1, 1, seed);
  std::vector<double> v;
  for (int64_t i = 0; i < n; ++i) v.push_back(r.element(i) < 0 ? -1.0 : 1.0);
  return Tensor::from_vector<double>(v);
}

// For each loss of two [4, 5] tensors: `none` keeps the per-element losses, `sum` adds them,
// `mean` divides by 20 and `batch_mean` by 4; the default is PyTorch's (mean) or, for the
// per-element forms, none.
TEST(Losses, ReductionsAddAverageOrKeepTheElementLosses) {
  Tensor a = r64({4, 5}, -2, 2, 1), b = r64({4, 5}, -2, 2, 2);
  Tensor p = r64({4, 5}, 0.05, 0.95, 3), t = r64({4, 5}, 0, 1, 4);
  struct Case {
    const char* name;
    std::function<Value(const Value&, const Value&, Reduction)> loss;
    Reduction default_reduction;
    bool probabilities;  // the inputs are p and t, not a and b
  };
  const std::vector<Case> cases = {
      {"mse_loss", [](auto x, auto y, auto r) { return mse_loss(x, y, r); }, Reduction::mean},
      {"l1_loss", [](auto x, auto y, auto r) { return l1_loss(x, y, r); }, Reduction::mean},
      {"huber_loss", [](auto x, auto y, auto r) { return huber_loss(x, y, 0.7, r); },
       Reduction::mean},
      {"smooth_l1_loss", [](auto x, auto y, auto r) { return smooth_l1_loss(x, y, 0.6, r); },
       Reduction::mean},
      {"bce_with_logits",
       [](auto x, auto y, auto r) { return binary_cross_entropy_with_logits(x, y, {}, {}, r); },
       Reduction::none, true},
      {"bce", [](auto x, auto y, auto r) { return binary_cross_entropy(x, y, {}, r); },
       Reduction::none, true},
      {"kl_div", [](auto x, auto y, auto r) { return kl_div(log(x), y, false, r); },
       Reduction::none, true},
      {"soft_margin_loss", [](auto x, auto y, auto r) { return soft_margin_loss(x, y, r); },
       Reduction::mean},
      {"poisson_nll_loss",
       [](auto x, auto y, auto r) { return poisson_nll_loss(x, y, true, false, 1e-8, r); },
       Reduction::mean},
  };
  for (const Case& c : cases) {
    Graph g;
    Value x = g.placeholder("x", f64, {-1, 5}), y = g.placeholder("y", f64, {-1, 5});
    const FeedList feeds = {{x, c.probabilities ? p : a}, {y, c.probabilities ? t : b}};
    Session s(g);
    const auto got =
        s.run(feeds, {c.loss(x, y, Reduction::none), c.loss(x, y, Reduction::sum),
                      c.loss(x, y, Reduction::mean), c.loss(x, y, Reduction::batch_mean),
                      c.default_reduction == Reduction::mean ? mean(c.loss(x, y, Reduction::none))
                                                             : c.loss(x, y, Reduction::none)});
    ASSERT_EQ(got[0].shape(), Shape({4, 5})) << c.name;
    const std::vector<double> each = testing::values(got[0]);
    const double sum_of = total(each);
    EXPECT_NEAR(got[1].item<double>(), sum_of, 1e-12) << c.name;
    EXPECT_NEAR(got[2].item<double>(), sum_of / 20, 1e-12) << c.name;
    EXPECT_NEAR(got[3].item<double>(), sum_of / 4, 1e-12) << c.name;
    // The one-argument-shorter call is the default reduction.
    const Value plain = c.name == std::string("mse_loss")           ? mse_loss(x, y)
                        : c.name == std::string("l1_loss")          ? l1_loss(x, y)
                        : c.name == std::string("bce")              ? binary_cross_entropy(x, y)
                        : c.name == std::string("kl_div")           ? kl_div(log(x), y)
                        : c.name == std::string("soft_margin_loss") ? soft_margin_loss(x, y)
                                                                    : Value();
    if (plain.defined())
      testing::expect_near(testing::values(got[4]), s.run(feeds, {plain})[0], 1e-12, 1e-12,
                           str(c.name, " default reduction"));
  }
  Graph g;
  expect_error<GraphError>([&] { reduce_loss(g.scalar(1.0, f64), Reduction::batch_mean); },
                           {"[reduce_loss]", "batch_mean divides by dim 0"});
  EXPECT_STREQ(reduction_name(Reduction::batch_mean), "batch_mean");
}

// Per-pixel cross entropy and nll_loss with class weights and ignored labels, each reduction,
// against the f64 formulas (PyTorch's): none gives w[y] (-log p[y]) per element (0 where
// ignored, even where that element's log probability of class 0 is -inf), sum adds them, mean
// divides by the sum of w[y] counted; smoothing adds e / C sum_c w_c (-log p_c) per element.
TEST(Losses, CrossEntropyAndNllReduceOverWeightedCountedElements) {
  constexpr int64_t kN = 2, kC = 3, kD = 4;
  Tensor z = r64({kN, kC, kD}, -3, 3, 11);
  z.data<double>()[1] = -INFINITY;  // class 0 of element (0, 1), which is ignored
  const std::vector<int64_t> labels = {2, -1, 0, 1, 1, 2, -1, 0};
  const std::vector<double> w = {0.5, 2, 1.5};
  const double e = 0.2;
  std::vector<double> nll, smoothed;
  double counted = 0;
  for (int64_t n = 0; n < kN; ++n)
    for (int64_t d = 0; d < kD; ++d) {
      const int64_t y = labels[static_cast<size_t>(n * kD + d)];
      if (y < 0) {
        nll.push_back(0);
        smoothed.push_back(0);
        continue;
      }
      double m = -INFINITY, s = 0, spread = 0;
      for (int64_t c = 0; c < kC; ++c) m = std::max(m, z.element((n * kC + c) * kD + d));
      for (int64_t c = 0; c < kC; ++c) s += std::exp(z.element((n * kC + c) * kD + d) - m);
      auto log_p = [&](int64_t c) { return z.element((n * kC + c) * kD + d) - m - std::log(s); };
      for (int64_t c = 0; c < kC; ++c) spread += w[c] * -log_p(c);
      const double wy = w[static_cast<size_t>(y)];
      nll.push_back(wy * -log_p(y));
      smoothed.push_back(spread);
      counted += wy;
    }
  Graph g;
  Value logits = g.placeholder("z", f64, {-1, kC, kD});
  Value y = g.constant(Tensor::from_vector<int64_t>(labels, {kN, kD}));
  Value weight = g.constant(Tensor::from_vector<double>(w));
  Session s(g);
  const FeedList feeds = {{logits, z}};
  auto run = [&](const Value& v) { return s.run(feeds, {v})[0]; };
  const Tensor none = run(nll_loss(log_softmax(logits, 1), y, -1, weight, Reduction::none));
  EXPECT_EQ(none.shape(), Shape({kN, kD}));
  testing::expect_near(nll, none, 1e-12, 1e-12, "nll_loss none");
  EXPECT_NEAR(run(nll_loss(log_softmax(logits, 1), y, -1, weight, Reduction::sum)).item<double>(),
              total(nll), 1e-12);
  EXPECT_NEAR(run(nll_loss(log_softmax(logits, 1), y, -1, weight)).item<double>(),
              total(nll) / counted, 1e-12);
  std::vector<double> ce(nll.size());
  for (size_t i = 0; i < ce.size(); ++i) ce[i] = (1 - e) * nll[i] + e / kC * smoothed[i];
  testing::expect_near(ce, run(cross_entropy(logits, y, -1, e, weight, Reduction::none)), 1e-12,
                       1e-12, "weighted smoothed cross_entropy none");
  EXPECT_NEAR(run(cross_entropy(logits, y, -1, e, weight, Reduction::sum)).item<double>(),
              total(ce), 1e-12);
  EXPECT_NEAR(run(cross_entropy(logits, y, -1, e, weight)).item<double>(),
              (1 - e) * total(nll) / counted + e / kC * total(smoothed) / counted, 1e-12);
  // Unweighted: the fused kernel's rows back in the labels' shape, the mean over counted ones.
  // (Element (0, 1) has a -inf logit and is ignored: its loss is 0, not NaN.)
  const Tensor plain = run(cross_entropy(logits, y, -1, 0, {}, Reduction::none));
  EXPECT_EQ(plain.shape(), Shape({kN, kD}));
  std::vector<double> unweighted(nll.size());
  for (size_t i = 0; i < nll.size(); ++i)
    unweighted[i] = labels[i] < 0 ? 0 : nll[i] / w[static_cast<size_t>(labels[i])];
  testing::expect_near(unweighted, plain, 1e-12, 1e-12, "cross_entropy none");
  EXPECT_NEAR(run(cross_entropy(logits, y, -1)).item<double>(), total(unweighted) / 6, 1e-12);
  EXPECT_NEAR(run(cross_entropy(logits, y, -1, 0, {}, Reduction::batch_mean)).item<double>(),
              total(unweighted) / kN, 1e-12);
  const Tensor dz =
      run(gradients(cross_entropy(logits, y, -1, e, weight, Reduction::sum), {logits})[0]);
  for (double v : testing::values(dz)) EXPECT_TRUE(std::isfinite(v)) << v;
}

// The margin, ranking and likelihood losses against their definitions (PyTorch's), element by
// element, and their gradients against finite differences.
TEST(Losses, MarginRankingAndLikelihoodLossesMatchTheirDefinitions) {
  constexpr int64_t kN = 6, kD = 4;
  const Tensor x1 = r64({kN}, -2, 2, 21), x2 = r64({kN}, -2, 2, 22), y = signs(kN, 23);
  const Tensor a = r64({kN, kD}, -1, 1, 24), p = r64({kN, kD}, -1, 1, 25),
               n = r64({kN, kD}, -1, 1, 26);
  const Tensor rate = r64({kN, kD}, 0.2, 3, 27), counts = r64({kN, kD}, 0, 4, 28);
  const Tensor var = r64({kN}, 0.1, 2, 29);
  auto row = [](const Tensor& t, int64_t i, int64_t j) { return t.element(i * kD + j); };
  auto distance = [&](const Tensor& u, const Tensor& v, int64_t i, double power) {
    double s = 0;
    for (int64_t j = 0; j < kD; ++j)
      s += std::pow(std::abs(row(u, i, j) - row(v, i, j) + 1e-6), power);
    return std::pow(s, 1 / power);
  };
  std::vector<double> ranking, hinge, cosine, triplet, triplet_p3, poisson, gaussian;
  for (int64_t i = 0; i < kN; ++i) {
    const double yi = y.element(i), d = x1.element(i) - x2.element(i);
    ranking.push_back(std::max(0.0, -yi * d + 0.3));
    hinge.push_back(yi == 1 ? x1.element(i) : std::max(0.0, 1.5 - x1.element(i)));
    double dot = 0, na = 1e-12, np = 1e-12;
    for (int64_t j = 0; j < kD; ++j) {
      dot += row(a, i, j) * row(p, i, j);
      na += row(a, i, j) * row(a, i, j);
      np += row(p, i, j) * row(p, i, j);
    }
    const double cos = dot / std::sqrt(na * np);
    cosine.push_back(yi == 1 ? 1 - cos : std::max(0.0, cos - 0.1));
    triplet.push_back(std::max(0.0, distance(a, p, i, 2) - distance(a, n, i, 2) + 1));
    triplet_p3.push_back(std::max(
        0.0, distance(a, p, i, 3) - std::min(distance(a, n, i, 3), distance(p, n, i, 3)) + 0.5));
    for (int64_t j = 0; j < kD; ++j) {
      const double r = row(rate, i, j), t = row(counts, i, j);
      const double stirling =
          t > 1 ? t * std::log(t) - t + 0.5 * std::log(2 * std::numbers::pi * t) : 0;
      poisson.push_back(r - t * std::log(r + 1e-8) + stirling);
      const double v = var.element(i), err = row(a, i, j) - row(p, i, j);
      gaussian.push_back(0.5 * (std::log(v) + err * err / v) +
                         0.5 * std::log(2 * std::numbers::pi));
    }
  }
  Graph g;
  auto c = [&](const Tensor& t) { return g.constant(t); };
  const Reduction none = Reduction::none;
  Session s(g);
  auto expect = [&](const std::vector<double>& want, const Value& got, const char* what) {
    testing::expect_near(want, s.run({}, {got})[0], 1e-10, 1e-12, what);
  };
  expect(ranking, margin_ranking_loss(c(x1), c(x2), c(y), 0.3, none), "margin_ranking_loss");
  expect(hinge, hinge_embedding_loss(c(x1), c(y), 1.5, none), "hinge_embedding_loss");
  expect(cosine, cosine_embedding_loss(c(a), c(p), c(y), 0.1, none), "cosine_embedding_loss");
  expect(triplet, triplet_margin_loss(c(a), c(p), c(n), 1, 2, 1e-6, false, none),
         "triplet_margin_loss");
  expect(triplet_p3, triplet_margin_loss(c(a), c(p), c(n), 0.5, 3, 1e-6, true, none),
         "triplet_margin_loss p 3 with swap");
  expect(poisson, poisson_nll_loss(c(rate), c(counts), false, true, 1e-8, none),
         "poisson_nll_loss full, rates");
  expect(gaussian, gaussian_nll_loss(c(a), c(p), c(var), true, 1e-6, none),
         "gaussian_nll_loss full, one variance per row");

  using Inputs = std::vector<Value>;
  check_gradients(
      [](Graph&, const Inputs& v) { return margin_ranking_loss(v[0], v[1], v[2], 0.3); },
      {x1, x2, y}, "margin_ranking_loss");
  check_gradients([](Graph&, const Inputs& v) { return hinge_embedding_loss(v[0], v[1], 1.5); },
                  {x1, y}, "hinge_embedding_loss");
  check_gradients(
      [](Graph&, const Inputs& v) { return cosine_embedding_loss(v[0], v[1], v[2], 0.1); },
      {a, p, y}, "cosine_embedding_loss");
  check_gradients(
      [](Graph&, const Inputs& v) {
        return triplet_margin_loss(v[0], v[1], v[2], 0.5, 3, 1e-6, true, Reduction::sum);
      },
      {a, p, n}, "triplet_margin_loss");
  check_gradients([](Graph&, const Inputs& v) { return poisson_nll_loss(v[0], v[1], false, true); },
                  {rate, counts}, "poisson_nll_loss");
  check_gradients(
      [](Graph&, const Inputs& v) { return gaussian_nll_loss(v[0], v[1], v[2], false); },
      {a, p, var}, "gaussian_nll_loss");
}

// Multi-class and multi-label margins: per example over the classes, with class weights.
TEST(Losses, MultiMarginAndMultiLabelSoftMarginAverageOverClasses) {
  constexpr int64_t kN = 5, kC = 4;
  const Tensor x = r64({kN, kC}, -1.5, 1.5, 31), targets = r64({kN, kC}, 0, 1, 32);
  const std::vector<int64_t> labels = {3, 0, 2, 1, 3};
  const std::vector<double> w = {1, 0.5, 2, 1.5};
  std::vector<double> margin2, soft;
  for (int64_t i = 0; i < kN; ++i) {
    const int64_t yi = labels[static_cast<size_t>(i)];
    double h = 0, l = 0;
    for (int64_t c = 0; c < kC; ++c) {
      const double v = x.element(i * kC + c), t = targets.element(i * kC + c);
      if (c != yi) h += std::pow(std::max(0.0, 0.8 - x.element(i * kC + yi) + v), 2);
      l += -w[c] *
           (t * std::log(1 / (1 + std::exp(-v))) + (1 - t) * std::log(1 / (1 + std::exp(v))));
    }
    margin2.push_back(h * w[static_cast<size_t>(yi)] / kC);
    soft.push_back(l / kC);
  }
  Graph g;
  Value vx = g.placeholder("x", f64, {-1, kC});
  Value y = g.constant(Tensor::from_vector<int64_t>(labels));
  Value weight = g.constant(Tensor::from_vector<double>(w));
  Session s(g);
  const FeedList feeds = {{vx, x}};
  testing::expect_near(margin2,
                       s.run(feeds, {multi_margin_loss(vx, y, 2, 0.8, weight, Reduction::none)})[0],
                       1e-12, 1e-12, "multi_margin_loss p 2 weighted");
  testing::expect_near(soft,
                       s.run(feeds, {multilabel_soft_margin_loss(vx, g.constant(targets), weight,
                                                                 Reduction::none)})[0],
                       1e-12, 1e-12, "multilabel_soft_margin_loss weighted");
  check_gradients(
      [&](Graph& graph, const std::vector<Value>& v) {
        return multi_margin_loss(v[0], graph.constant(Tensor::from_vector<int64_t>(labels)), 1, 1.0,
                                 {}, Reduction::none);
      },
      {x}, "multi_margin_loss p 1");
  check_gradients(
      [](Graph&, const std::vector<Value>& v) { return multilabel_soft_margin_loss(v[0], v[1]); },
      {x, targets}, "multilabel_soft_margin_loss");
  // A label outside [0, C) is an error when the graph runs.
  Value bad = g.constant(Tensor::from_vector<int64_t>({0, 1, 4, 0, 0}));
  expect_error([&] { s.run(feeds, {multi_margin_loss(vx, bad)}); },
               {"multi_margin_loss/", "index 4", "out of range [0, 4)"});
}

TEST(Losses, BadArgumentsNameTheLossAndTheValues) {
  Graph g;
  Value x = g.placeholder("x", f32, {3, 4}), y = g.placeholder("y", i64, {3});
  expect_error<GraphError>([&] { multi_margin_loss(x, y, 3); },
                           {"[multi_margin_loss] p is 3", "only 1 and 2"});
  expect_error<GraphError>([&] { multi_margin_loss(x, cast(y, f32)); },
                           {"[multi_margin_loss] labels must be i32 or i64"});
  expect_error<GraphError>([&] { multi_margin_loss(x, y, 1, 1, g.placeholder("w", f32, {3})); },
                           {"[multi_margin_loss] weight [3] must be [C] for x [3, 4]"});
  expect_error<GraphError>(
      [&] {
        multi_margin_loss(g.placeholder("u", f32, {3, -1}), y);
      },
      {"[multi_margin_loss]", "with C known"});
  expect_error<GraphError>([&] { multilabel_soft_margin_loss(reshape(x, {12}), reshape(x, {12})); },
                           {"[multilabel_soft_margin_loss] x [12] must be [N, C]"});
  expect_error<GraphError>(
      [&] {
        gaussian_nll_loss(x, x, g.placeholder("v", f32, {3, 2}));
      },
      {"[gaussian_nll_loss] var [3, 2] must be shaped like input [3, 4]"});
  expect_error<GraphError>([&] { gaussian_nll_loss(x, x, x, false, 0); },
                           {"[gaussian_nll_loss] eps 0 must be positive"});
  expect_error<GraphError>([&] { pairwise_distance(x, x, 0); },
                           {"[pairwise_distance] p 0 must be positive"});
  expect_error<GraphError>(
      [&] {
        cosine_embedding_loss(reshape(x, {1, 3, 4}), x, y);
      },
      {"[cosine_embedding_loss] x1 [1, 3, 4] must be [N, D] or [D]"});
  expect_error<GraphError>([&] { huber_loss(x, x, 0, Reduction::sum); },
                           {"[huber_loss] delta 0 must be positive"});
}

}  // namespace
}  // namespace kiln
