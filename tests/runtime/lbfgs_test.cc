// L-BFGS against torch.optim.LBFGS: the parameters, losses and counts torch 2.15 printed after
// each step (f64 to 17 digits), with and without the strong Wolfe line search.
#include "kiln/autograd/lbfgs.h"

#include <cmath>
#include <vector>

#include "kiln/framework/safetensors.h"
#include "kiln/ops/losses.h"
#include "kiln/ops/math.h"
#include "test_util.h"

namespace kiln {
namespace {

using optim::LBFGS;
using optim::LBFGSOptions;
using optim::LineSearch;
using testing::expect_error;

// What torch printed after one step(): the loss it returned, the parameters, func_evals and
// n_iter.
struct TorchStep {
  double loss;
  std::vector<double> params;
  int64_t evaluations, iterations;
};

// The Rosenbrock function from (-1.5, 2).
struct Rosenbrock {
  Graph g;
  Value p = g.variable("p", {2}, init::zeros(), f64);
  Value loss;
  Rosenbrock() {
    Value x = slice(p, {0}, {1}), y = slice(p, {1}, {2});
    loss = sum(square(1.0 - x) + 100.0 * square(y - x * x));
  }
};

// Logistic regression with an L2 penalty over 8 fixed points.
struct Logistic {
  Graph g;
  Value w, b, loss;
  explicit Logistic(DType dtype) {
    std::vector<double> xs, ys;
    for (int i = 0; i < 8; ++i) {
      for (int j = 0; j < 3; ++j) xs.push_back(std::sin(3 * i + j));
      ys.push_back((i * 5) % 3 == 0 ? 1 : 0);
    }
    Value x = g.constant(Tensor::from_vector<double>(xs, {8, 3}).cast(dtype));
    Value y = g.constant(Tensor::from_vector<double>(ys).cast(dtype));
    w = g.variable("w", {3}, init::zeros(), dtype);
    b = g.variable("b", {1}, init::zeros(), dtype);
    Value logits = sum(x * w, {1}) + b;
    loss = mean(binary_cross_entropy_with_logits(logits, y)) + 0.01 * sum(square(w));
  }
  void start(Session& s) const {
    s.set_variable(w, Tensor::from_vector<double>({0.1, -0.2, 0.3}).cast(w.dtype()));
    s.set_variable(b, Tensor::from_vector<double>({0.05}).cast(b.dtype()));
  }
  std::vector<double> params(Session& s) const {
    std::vector<double> out = s.variable_value(w).cast(f64).to_vector<double>();
    out.push_back(s.variable_value(b).cast(f64).element(0));
    return out;
  }
};

void expect_steps(const std::function<double()>& step,
                  const std::function<std::vector<double>()>& params, const LBFGS& lbfgs,
                  const std::vector<TorchStep>& torch, double tolerance) {
  for (size_t k = 0; k < torch.size(); ++k) {
    SCOPED_TRACE(::testing::Message() << "step " << k + 1);
    const double loss = step();
    EXPECT_NEAR(loss, torch[k].loss, tolerance * std::max(1.0, std::abs(torch[k].loss)));
    const std::vector<double> got = params();
    ASSERT_EQ(got.size(), torch[k].params.size());
    for (size_t i = 0; i < got.size(); ++i) EXPECT_NEAR(got[i], torch[k].params[i], tolerance) << i;
    EXPECT_EQ(lbfgs.evaluations(), torch[k].evaluations);
    EXPECT_EQ(lbfgs.iterations(), torch[k].iterations);
  }
}

TEST(LBFGS, StrongWolfeMatchesTorchOnRosenbrock) {
  const std::vector<std::pair<LBFGSOptions, std::vector<TorchStep>>> cases = {
      {{.line_search = LineSearch::strong_wolfe},
       {{12.5, {-0.08511855589860293, -0.028757058413769698}, 25, 19},
        {1.3070983150500495, {0.9995835472529905, 0.9991550319577943}, 50, 38},
        {1.884048137837783e-07, {0.9999979943196398, 0.9999973438921637}, 53, 41}}},
      // A history of 2 pairs (the oldest dropped) and 7 iterations a step.
      {{.max_iter = 7, .history_size = 2, .line_search = LineSearch::strong_wolfe},
       {{12.5, {-1.3905953788106162, 1.915290619927266}, 8, 6},
        {5.749041472754488, {-0.7160312196932839, 0.46754424472812056}, 16, 11},
        {3.1486737606502593, {-0.0613869337106443, -0.022935334452904795}, 24, 17}}}};
  for (const auto& [options, torch] : cases) {
    SCOPED_TRACE(::testing::Message() << "history " << options.history_size);
    Rosenbrock r;
    LBFGS lbfgs(r.loss, {}, options);
    Session s(r.g);
    s.set_variable(r.p, Tensor::from_vector<double>({-1.5, 2.0}));
    expect_steps([&] { return lbfgs.step(s); },
                 [&] { return s.variable_value(r.p).to_vector<double>(); }, lbfgs, torch, 1e-9);
  }
}

TEST(LBFGS, FixedStepMatchesTorch) {
  // lr 0.5, 5 iterations a step, 3 pairs kept: the history wraps from the second step on.
  Logistic m(f64);
  LBFGS lbfgs(m.loss, {m.w, m.b}, {.lr = 0.5, .max_iter = 5, .history_size = 3});
  Session s(m.g);
  m.start(s);
  const std::vector<TorchStep> torch = {
      {0.6861396917647903,
       {-0.23304191174588276, -0.2117585283095996, 0.4368590124683923, -0.48591886965241404},
       5,
       5},
      {0.6345678268264914,
       {-0.46300510097934283, -0.15216894577036097, 0.34175071644531885, -0.49489808763071513},
       10,
       10},
      {0.633547393839819,
       {-0.46846054422336025, -0.1466892365970486, 0.31341189921033374, -0.5028136804336907},
       15,
       15},
      {0.6334699845364861,
       {-0.466894992563212, -0.14313052822857322, 0.31198788728193927, -0.5033651633877506},
       20,
       20}};
  expect_steps([&] { return lbfgs.step(s); }, [&] { return m.params(s); }, lbfgs, torch, 1e-12);
}

TEST(LBFGS, F32VariablesMatchTorch) {
  // f32 parameters, rounded at every update as torch's in-place add rounds them; 3 iterations
  // a step, so max_eval is 3 and the line search's evaluations end the first step after 2.
  // (Near the optimum f32's rounding decides the last digits of both, so the steps compared
  // are early ones.)
  const std::vector<std::pair<LBFGSOptions, std::vector<TorchStep>>> cases = {
      {{.max_iter = 3, .line_search = LineSearch::strong_wolfe},
       {{0.6861396431922913,
         {-0.13730475306510925, -0.19628803431987762, 0.4526699185371399, -0.5042740106582642},
         3,
         2},
        {0.6356262564659119,
         {-0.30592501163482666, -0.2215050607919693, 0.4478146731853485, -0.5321016907691956},
         6,
         4}}},
      {{.lr = 0.5, .max_iter = 3},
       {{0.6861396431922913,
         {-0.03204769641160965, -0.19468925893306732, 0.3906242549419403, -0.2599264085292816},
         3,
         2},
        {0.6463277339935303,
         {-0.1772354245185852, -0.20512594282627106, 0.43617019057273865, -0.44911912083625793},
         6,
         4}}}};
  for (const auto& [options, torch] : cases) {
    SCOPED_TRACE(options.line_search == LineSearch::none ? "fixed step" : "strong Wolfe");
    Logistic m(f32);
    LBFGS lbfgs(m.loss, {}, options);
    Session s(m.g);
    m.start(s);
    expect_steps([&] { return lbfgs.step(s); }, [&] { return m.params(s); }, lbfgs, torch, 2e-6);
    EXPECT_EQ(s.variable_value(m.w).dtype(), f32);
  }
}

TEST(LBFGS, F32UpdatesRoundAsTorchsInPlaceAdd) {
  // Steps of 1e-8 from 1.0 are below half an f32 ulp there: each one is lost, as in torch
  // (which ends its 20 iterations at exactly 1.0). A copy kept unrounded would drift by 2e-7.
  Graph g;
  Value p = g.variable("p", {1}, init::constant(1), f32);
  LBFGS lbfgs(sum(1e-8 * p), {}, {.tolerance_grad = 0, .tolerance_change = 0});
  Session s(g);
  lbfgs.step(s);
  EXPECT_EQ(lbfgs.iterations(), 20);
  EXPECT_EQ(lbfgs.evaluations(), 20);
  EXPECT_EQ(s.variable_value(p).item<float>(), 1.0f);
}

TEST(LBFGS, StopsAtOnceWhenTheGradientIsSmall) {
  Rosenbrock r;
  LBFGS lbfgs(r.loss);
  Session s(r.g);
  s.set_variable(r.p, Tensor::from_vector<double>({1.0, 1.0}));  // the minimum: gradient 0
  EXPECT_EQ(lbfgs.step(s), 0.0);
  EXPECT_EQ(lbfgs.evaluations(), 1);
  EXPECT_EQ(lbfgs.iterations(), 0);
  EXPECT_EQ(s.variable_value(r.p).to_vector<double>(), (std::vector<double>{1.0, 1.0}));
}

TEST(LBFGS, ResumesBitForBitFromItsState) {
  auto make = [] { return std::make_unique<Rosenbrock>(); };
  const LBFGSOptions options{
      .max_iter = 4, .history_size = 3, .line_search = LineSearch::strong_wolfe};
  // Five steps in one go.
  auto whole = make();
  LBFGS straight(whole->loss, {}, options);
  Session s1(whole->g);
  s1.set_variable(whole->p, Tensor::from_vector<double>({-1.5, 2.0}));
  for (int i = 0; i < 5; ++i) straight.step(s1);
  // Two steps, the variables and state saved, three more in a new session and optimizer.
  auto first = make();
  LBFGS before(first->loss, {}, options);
  Session s2(first->g);
  s2.set_variable(first->p, Tensor::from_vector<double>({-1.5, 2.0}));
  for (int i = 0; i < 2; ++i) before.step(s2);
  save_safetensors(before.state(), testing::tmp("lbfgs_resume.safetensors"));
  s2.save_checkpoint(testing::tmp("lbfgs_resume.ckpt"));

  auto second = make();
  LBFGS after(second->loss, {}, options);
  Session s3(second->g);
  s3.restore_checkpoint(testing::tmp("lbfgs_resume.ckpt"));
  after.load_state(load_safetensors(testing::tmp("lbfgs_resume.safetensors")).tensors);
  for (int i = 0; i < 3; ++i) after.step(s3);
  EXPECT_EQ(s3.variable_value(second->p).to_vector<double>(),
            s1.variable_value(whole->p).to_vector<double>());
  EXPECT_EQ(after.evaluations(), straight.evaluations());
  EXPECT_EQ(after.iterations(), straight.iterations());
  EXPECT_NE(s1.variable_value(whole->p).to_vector<double>(), (std::vector<double>{-1.5, 2.0}));
}

TEST(LBFGS, RefusesBadStateAndOptions) {
  Rosenbrock r;
  LBFGS lbfgs(r.loss, {}, {.history_size = 4});
  Session s(r.g);
  s.set_variable(r.p, Tensor::from_vector<double>({-1.5, 2.0}));
  lbfgs.step(s);
  std::map<std::string, Tensor> state = lbfgs.state();
  const std::vector<double> p = s.variable_value(r.p).to_vector<double>();

  std::map<std::string, Tensor> missing = state;
  missing.erase("rho");
  expect_error<FeedError>([&] { lbfgs.load_state(missing); }, {"[lbfgs]", "no 'rho'"});
  std::map<std::string, Tensor> wide = state;
  wide["d"] = Tensor::zeros(f64, {3});
  expect_error<FeedError>([&] { lbfgs.load_state(wide); }, {"'d'", "[3]", "[2]"});
  std::map<std::string, Tensor> long_history = state;
  long_history["rho"] = Tensor::zeros(f64, {5});
  expect_error<FeedError>([&] { lbfgs.load_state(long_history); },
                          {"'rho'", "[5]", "history_size 4"});
  std::map<std::string, Tensor> short_rows = state;
  short_rows["old_dirs"] = Tensor::zeros(f64, {1, 2});
  expect_error<FeedError>([&] { lbfgs.load_state(short_rows); }, {"'old_dirs'", "[1, 2]"});
  std::map<std::string, Tensor> wrong_type = state;
  wrong_type["t"] = Tensor::scalar<float>(1);
  expect_error<FeedError>([&] { lbfgs.load_state(wrong_type); }, {"'t'", "f32", "expected f64"});
  // Nothing was changed by the refused loads: the next step is the one the state gives.
  Rosenbrock twin;
  LBFGS reference(twin.loss, {}, {.history_size = 4});
  Session s2(twin.g);
  s2.set_variable(twin.p, Tensor::from_vector<double>({-1.5, 2.0}));
  reference.step(s2);
  lbfgs.step(s);
  reference.step(s2);
  EXPECT_EQ(s.variable_value(r.p).to_vector<double>(),
            s2.variable_value(twin.p).to_vector<double>());
  EXPECT_NE(s.variable_value(r.p).to_vector<double>(), p);

  expect_error<GraphError>([&] { LBFGS(r.loss, {}, {.lr = 0}); }, {"lr must be > 0", "0"});
  expect_error<GraphError>([&] { LBFGS(r.loss, {}, {.max_iter = 0}); }, {"max_iter", ">= 1"});
  expect_error<GraphError>([&] { LBFGS(r.loss, {}, {.history_size = 0}); },
                           {"history_size", ">= 1"});
  expect_error<GraphError>([&] { LBFGS(r.loss, {}, {.tolerance_grad = -1}); },
                           {"tolerances", "-1"});
  expect_error<GraphError>([&] { LBFGS(r.p, {}); }, {"must be a scalar", "[2]"});
  expect_error<GraphError>([&] { LBFGS(Value{}); }, {"undefined"});
  Graph other;
  Value q = other.variable("q", {2}, init::zeros(), f64);
  expect_error<GraphError>([&] { LBFGS(r.loss, {q}); },
                           {"q", "not a variable of the loss's graph"});
  Value h = r.g.variable("h", {2}, init::zeros(), bf16);
  expect_error<GraphError>([&] { LBFGS(r.loss, {r.p, h}); }, {"'h'", "bf16", "f32 and f64"});
  Value unused = r.g.variable("unused", {2}, init::zeros(), f64);
  expect_error<GraphError>([&] { LBFGS(r.loss, {unused}); },
                           {"depends on none of the 1 variables"});
  Value i = r.g.variable("count", {}, init::zeros(), i64);
  expect_error<GraphError>([&] { LBFGS(i, {}); }, {"floating point"});
}

TEST(LBFGS, LeavesOutVariablesTheLossDoesNotReach) {
  Rosenbrock r;
  Value unused = r.g.variable("unused", {2}, init::constant(1), f64);
  LBFGS lbfgs(r.loss, {r.p, unused});
  ASSERT_EQ(lbfgs.variables().size(), 1u);
  EXPECT_EQ(lbfgs.variables()[0].name(), r.p.name());
  Session s(r.g);
  s.set_variable(r.p, Tensor::from_vector<double>({-1.5, 2.0}));
  lbfgs.step(s);
  EXPECT_EQ(s.variable_value(unused).to_vector<double>(), (std::vector<double>{1.0, 1.0}));
}

TEST(LBFGS, BadFeedNamesThePlaceholder) {
  Graph g;
  Value x = g.placeholder("x", f32, {kUnknownDim, 2});
  Value w = g.variable("w", {2}, init::constant(1), f32);
  LBFGS lbfgs(sum(square(x * w)));
  Session s(g);
  expect_error<FeedError>([&] { lbfgs.step(s, {{x, Tensor::zeros(f32, {3})}}); }, {"'x'"});
  expect_error<FeedError>([&] { lbfgs.step(s); }, {"x"});
}

}  // namespace
}  // namespace kiln
