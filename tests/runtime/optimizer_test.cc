// The optimizers against torch.optim: formulas written out, and numbers torch printed.
#include <cmath>
#include <functional>
#include <map>
#include <memory>

#include "optimizer_case.h"
#include "test_util.h"

namespace kiln {
namespace {

using testing::expect_error;
using testing::OptimizerCase;
using testing::TorchCase;

TEST(Optimizers, PlainSgdMatchesTheFormula) {
  OptimizerCase c;
  c.expect_same(c.kiln(optim::SGD({.lr = c.kLr})), c.reference([&](auto& p, auto& g, int) {
    for (int i = 0; i < 3; ++i) p[i] -= c.kLr * g[i];
  }));
}

TEST(Optimizers, SgdWithWeightDecayMatchesTheFormula) {
  OptimizerCase c;
  c.expect_same(c.kiln(optim::SGD({.lr = c.kLr, .weight_decay = 0.05})),
                c.reference([&](auto& p, auto& g, int) {
                  for (int i = 0; i < 3; ++i) p[i] -= c.kLr * (g[i] + 0.05 * p[i]);
                }));
}

// Plain (heavy-ball) momentum, the benchmark's optimizer: buf = mu buf + d, p -= lr buf.
TEST(Optimizers, SgdMomentumMatchesTheFormula) {
  OptimizerCase c;
  std::vector<double> buf(3, 0);
  c.expect_same(c.kiln(optim::SGD({.lr = c.kLr, .momentum = 0.8, .weight_decay = 0.01})),
                c.reference([&](auto& p, auto& g, int) {
                  for (int i = 0; i < 3; ++i) {
                    const double d = g[i] + 0.01 * p[i];
                    buf[i] = 0.8 * buf[i] + d;
                    p[i] -= c.kLr * buf[i];
                  }
                }));
}

// Nesterov: the step looks ahead along the buffer, p -= lr (d + mu buf).
TEST(Optimizers, SgdNesterovMatchesTheFormula) {
  OptimizerCase c;
  std::vector<double> buf(3, 0);
  c.expect_same(
      c.kiln(optim::SGD({.lr = c.kLr, .momentum = 0.9, .nesterov = true, .weight_decay = 0.01})),
      c.reference([&](auto& p, auto& g, int) {
        for (int i = 0; i < 3; ++i) {
          const double d = g[i] + 0.01 * p[i];
          buf[i] = 0.9 * buf[i] + d;
          p[i] -= c.kLr * (d + 0.9 * buf[i]);
        }
      }));
}

// Adam with L2 weight decay (added to the gradient) and AdamW (decoupled: p shrinks first).
TEST(Optimizers, AdamAndAdamWMatchTheFormulas) {
  OptimizerCase c;
  const double b1 = 0.8, b2 = 0.95, eps = 1e-3, wd = 0.1;
  for (bool decoupled : {false, true}) {
    std::vector<double> m(3, 0), v(3, 0);
    const optim::AdamOptions options{
        .lr = c.kLr, .beta1 = b1, .beta2 = b2, .eps = eps, .weight_decay = wd};
    auto got = decoupled ? c.kiln(optim::AdamW(options)) : c.kiln(optim::Adam(options));
    c.expect_same(got, c.reference([&](auto& p, auto& g, int t) {
      for (int i = 0; i < 3; ++i) {
        const double d = g[i] + (decoupled ? 0 : wd * p[i]);
        if (decoupled) p[i] *= 1 - c.kLr * wd;
        m[i] = b1 * m[i] + (1 - b1) * d;
        v[i] = b2 * v[i] + (1 - b2) * d * d;
        p[i] -= c.kLr * (m[i] / (1 - std::pow(b1, t))) /
                (std::sqrt(v[i] / (1 - std::pow(b2, t))) + eps);
      }
    }));
  }
}

TEST(Optimizers, RmsPropMatchesTheFormula) {
  OptimizerCase c;
  for (double wd : {0.0, 0.05}) {
    std::vector<double> sq(3, 0);
    c.expect_same(
        c.kiln(optim::RMSProp({.lr = c.kLr, .alpha = 0.9, .eps = 1e-3, .weight_decay = wd})),
        c.reference([&](auto& p, auto& g, int) {
          for (int i = 0; i < 3; ++i) {
            const double d = g[i] + wd * p[i];
            sq[i] = 0.9 * sq[i] + 0.1 * d * d;
            p[i] -= c.kLr * d / (std::sqrt(sq[i]) + 1e-3);
          }
        }));
  }
}

// The optimizers and variants whose update rule is shared by both devices, against the
// parameters torch.optim (1.13, f64) gives for this case, printed to 17 digits. RAdam runs ten
// steps with beta2 0.8, so its rectified term (from step 8) shows.
TEST(Optimizers, MoreOptimizersMatchTorchOptim) {
  OptimizerCase c;
  const optim::AdamOptions adam{
      .lr = 0.1, .beta1 = 0.8, .beta2 = 0.95, .eps = 1e-3, .weight_decay = 0.1, .amsgrad = true};
  auto same = [&](std::vector<double> got, std::vector<double> torch, const char* what) {
    SCOPED_TRACE(what);
    c.expect_same(got, torch);
  };
  same(c.kiln(optim::Adam(adam)), {0.7903237481201686, -0.7011397252160911, 1.7007055098365864},
       "Adam amsgrad");
  same(c.kiln(optim::AdamW(adam)), {0.77575558620219, -0.6744869684570542, 1.6444089343368073},
       "AdamW amsgrad");
  optim::AdamOptions adamax = adam;
  adamax.amsgrad = false;
  same(c.kiln(optim::Adamax(adamax)), {0.7711848696677001, -0.693850537539606, 1.6953352028592445},
       "Adamax");
  optim::AdamOptions radam = adamax;
  radam.beta1 = 0.7;
  radam.beta2 = 0.8;
  same(c.kiln(optim::RAdam(radam), 10),
       {0.9096999030179655, 0.25085633451527084, 0.19915481068222332}, "RAdam");
  same(c.kiln(optim::Adagrad({.lr = 0.1,
                              .lr_decay = 0.3,
                              .weight_decay = 0.05,
                              .initial_accumulator_value = 0.2,
                              .eps = 1e-3})),
       {0.6391419253447552, -0.8155754519022205, 1.812815757140998}, "Adagrad");
  const optim::RMSPropOptions rms{.lr = 0.1, .alpha = 0.9, .eps = 1e-3, .weight_decay = 0.05};
  optim::RMSPropOptions momentum = rms, centered = rms, both = rms;
  momentum.momentum = both.momentum = 0.7;
  centered.centered = both.centered = true;
  same(c.kiln(optim::RMSProp(momentum)), {1.2310044234560138, 0.19152076142276, 0.7768969894527045},
       "RMSprop momentum");
  same(c.kiln(optim::RMSProp(centered)),
       {0.9464982729438419, -0.24800319756566766, 1.2250477843715493}, "RMSprop centered");
  same(c.kiln(optim::RMSProp(both)), {1.243582322489111, 0.28392010904754733, 0.6758346523199319},
       "RMSprop momentum centered");
  // NAdam against torch 2.15, whose running product mu_1 ... mu_t is an f32 tensor (Kiln's is
  // f64): hence 2e-9. (torch 1.13 multiplies mu into the next step's product twice, a bug
  // fixed since.) momentum_decay 0.05, so the momentum schedule moves within three steps.
  for (bool decoupled : {false, true}) {
    SCOPED_TRACE(decoupled ? "NAdam decoupled" : "NAdam");
    const auto got = c.kiln(optim::NAdam(adamax, 0.05, decoupled));
    const std::vector<double> torch =
        decoupled
            ? std::vector<double>{0.7391000695290504, -0.6987526057842575, 1.6673706711862584}
            : std::vector<double>{0.7481992227722151, -0.7251526298135527, 1.7231438785123887};
    for (int i = 0; i < 3; ++i) EXPECT_NEAR(got[i], torch[i], 2e-9) << i;
  }
  expect_error<GraphError>([&] { optim::RAdam r(adam); }, {"RAdam has no amsgrad variant"});
  {
    Graph g;
    Value p = g.variable("p", {2}, init::zeros());
    Value loss = sum(square(p));
    optim::NAdam().minimize(loss);
    EXPECT_TRUE(g.find_node("nadam_mu_product"));
    expect_error<GraphError>([&] { optim::NAdam().minimize(loss); },
                             {"already has a NAdam update", "parameter groups"});
  }
  expect_error<GraphError>([&] { optim::Adagrad a({.lr_decay = -1}); },
                           {"Adagrad needs lr_decay >= 0", "got -1"});
}

// Adadelta against torch 2.15 (f64): non-default rho, eps and weight decay; torch's defaults;
// maximize over 4 steps; under StepLR(2, 0.5) over 5 steps (lr scales the step Adadelta makes).
TEST(Optimizers, AdadeltaMatchesTorch) {
  OptimizerCase c;
  c.expect_same(c.kiln(optim::Adadelta({.lr = 0.5, .rho = 0.8, .eps = 1e-3, .weight_decay = 0.05})),
                {0.6052049846086852, -0.8898829084497425, 1.8894827988364198});
  c.expect_same(c.kiln(optim::Adadelta()),
                {0.5096741329351463, -0.9903007617144737, 1.9902979985521612});
  c.expect_same(c.kiln(optim::Adadelta({.lr = 2, .rho = 0.7, .eps = 1e-2, .maximize = true}), 4),
                {-1.4711974277223616, -2.7990344623938523, 3.748982759205046});
  c.expect_same(
      c.kiln(
          optim::Adadelta(
              {.lr = 1, .rho = 0.8, .eps = 1e-2, .schedule = optim::Schedule::step_decay(2, 0.5)}),
          5),
      {0.9430786902151852, -0.2977971423407524, 1.2724954273966007});
  expect_error<GraphError>([&] { optim::Adadelta a({.rho = 1.5}); },
                           {"Adadelta needs rho in [0, 1] and eps >= 0", "got rho 1.5"});
  expect_error<GraphError>(
      [&] { c.kiln(optim::Adadelta({.schedule = optim::Schedule::one_cycle(10)})); },
      {"Adadelta has no momentum for the schedule to cycle"});
  // A graph file's attributes are checked when it is loaded, as the builder's options are.
  Graph g;
  Value w = g.variable("w", {2}, init::zeros());
  Value s = g.variable("s", {2}, init::zeros()), u = g.variable("u", {2}, init::zeros());
  expect_error<GraphError>(
      [&] {
        g.add("adadelta_update", {w, s, u, w * 2.0, g.scalar(1.0, f32)}, {{"rho", std::nan("")}});
      },
      {"adadelta_update", "rho must be in [0, 1], got nan"});
}

// Gradients computed and applied in two steps, with a change in between (what a data-parallel
// transform does with an all-reduce): halving every gradient is plain SGD at half the rate.
TEST(Optimizers, ComputeThenApplyWithAChangeBetween) {
  auto train = [](bool two_steps) {
    Graph g;
    Value x = g.placeholder("x", f32, {4, 3});
    Value w = g.variable("w", {3, 2}, init::glorot_uniform(5));
    Value loss = mean(square(matmul(x, w)));
    Value step;
    if (two_steps) {
      optim::SGD sgd({.lr = 0.1});
      auto pairs = sgd.compute_gradients(loss);
      EXPECT_EQ(pairs.size(), 1u);
      EXPECT_EQ(pairs[0].variable.name(), "w");
      for (auto& p : pairs) p.gradient = p.gradient * 0.5;
      step = sgd.apply_gradients(pairs);
    } else {
      step = optim::SGD({.lr = 0.05}).minimize(loss);
    }
    Session s(g);
    Tensor in = testing::random_tensor(f32, {4, 3}, -1, 1, 9);
    for (int i = 0; i < 3; ++i) s.run({{x, in}}, {}, {step});
    return s.variable_value(w).to_vector<float>();
  };
  const auto halved = train(true), half_rate = train(false);
  ASSERT_EQ(halved.size(), half_rate.size());
  for (size_t i = 0; i < halved.size(); ++i) EXPECT_FLOAT_EQ(halved[i], half_rate[i]);

  Graph g;
  Value w = g.variable("w", {3}, init::zeros());
  optim::SGD sgd;
  expect_error<GraphError>(
      [&] {
        sgd.apply_gradients({{g.constant(Tensor::zeros(f32, {2})), w}});
      },
      {"[optim] apply_gradients", "gradient of w is f32[2]", "f32[3]"});
  expect_error<GraphError>(
      [&] {
        sgd.apply_gradients({{w * 1.0, w * 2.0}});
      },
      {"is not a variable"});
  expect_error<GraphError>([&] { sgd.apply_gradients({}); }, {"of no gradients"});
}
// Rprop and ASGD against torch 2.15 (f64): Rprop over 8 steps, so step sizes grow, shrink on a
// sign flip and hit both bounds, with its state; ASGD with t0 2, so the average starts moving.
TEST(Optimizers, RpropAndAsgdMatchTorch) {
  OptimizerCase c;
  auto expect = [&](const std::vector<double>& got, const std::vector<double>& torch) {
    for (size_t i = 0; i < torch.size(); ++i) EXPECT_NEAR(got[i], torch[i], 1e-14) << i;
  };
  {
    SCOPED_TRACE("Rprop");
    Graph g;
    Value p = g.variable("p", {3}, init::zeros(), f64);
    Value loss = sum(square(p - g.constant(Tensor::from_vector<double>(c.target)))) * 0.5;
    Value train = optim::Rprop({.lr = 0.4,
                                .eta_minus = 0.3,
                                .eta_plus = 1.5,
                                .step_size_min = 0.05,
                                .step_size_max = 0.9})
                      .minimize(loss);
    Session s(g);
    s.set_variable(p, Tensor::from_vector<double>(c.p0));
    for (int i = 0; i < 8; ++i) s.run({}, {}, {train});
    expect(s.variable_value(p).to_vector<double>(),
           {0.7665, 0.5175000000000002, -1.0250000000000001});
    expect(s.variable_value(g.value("p/rprop_step_size")).to_vector<double>(),
           {0.1215, 0.6075, 0.405});
    expect(s.variable_value(g.value("p/rprop_prev")).to_vector<double>(),
           {-0.355, 0.12500000000000022, -0.43000000000000016});
  }
  expect(c.kiln(optim::Rprop({.lr = 0.4, .maximize = true}), 4),
         {-1.6471999999999998, -3.1471999999999998, 4.1472});
  // ASGD for 6 steps: its parameters and their average against torch's.
  auto expect_asgd = [&](const optim::ASGDOptions& options, const std::vector<double>& torch_p,
                         const std::vector<double>& torch_average) {
    Graph g;
    Value p = g.variable("p", {3}, init::zeros(), f64);
    Value loss = sum(square(p - g.constant(Tensor::from_vector<double>(c.target)))) * 0.5;
    optim::ASGD asgd(options);
    Value train = asgd.minimize(loss);
    Session s(g);
    s.set_variable(p, Tensor::from_vector<double>(c.p0));
    for (int i = 0; i < 6; ++i) s.run({}, {}, {train});
    expect(s.variable_value(p).to_vector<double>(), torch_p);
    expect(s.variable_value(asgd.average(p)).to_vector<double>(), torch_average);
    expect_error<GraphError>([&] { asgd.average(g.constant(Tensor::scalar<double>(1))); },
                             {"ASGD has no average of", "minimize must train it first"});
  };
  expect_asgd({.lr = 0.1, .lambd = 0.1, .t0 = 2, .weight_decay = 0.05},
              {0.6894739686270873, -0.041484629298263354, 0.5287903612484971},
              {0.6660163549503609, -0.16015255730993827, 0.7109318321501377});
  // Under a schedule (StepLR(2, 0.5)): torch's step t reads the step size eta it computed at the
  // end of step t - 1 from that step's rate.
  expect_asgd({.lr = 0.1,
               .lambd = 0.01,
               .t0 = 2,
               .weight_decay = 0.05,
               .schedule = optim::Schedule::step_decay(2, 0.5)},
              {0.6666823629894887, -0.269434749450326, 0.8935128244102025},
              {0.6563712951203422, -0.3146279405363728, 0.961960764307516});
  for (const char* name : {"Rprop", "ASGD"}) {
    const optim::Schedule cycle = optim::Schedule::one_cycle(10);
    expect_error<GraphError>(
        [&] {
          if (std::string(name) == "Rprop") c.kiln(optim::Rprop({.schedule = cycle}));
          if (std::string(name) == "ASGD") c.kiln(optim::ASGD({.schedule = cycle}));
        },
        {str(name, " has no momentum for the schedule to cycle")});
  }
  expect_error<GraphError>([&] { optim::Rprop r({.eta_minus = 1.5}); },
                           {"Rprop needs 0 < eta_minus < 1 < eta_plus, got 1.5 and 1.2"});
  expect_error<GraphError>(
      [&] {
        Graph g;
        Value w = g.variable("w", {2}, init::zeros());
        optim::Rprop r;
        r.with_param_groups({{.variables = {w}, .weight_decay = 0.1}});
        r.minimize(sum(square(w)));
      },
      {"Rprop has no weight decay", "w's parameter group sets 0.1"});
}

// maximize (torch's): the updates ascend. Against torch 2.15's parameters after 3 steps (f64);
// compute_gradients + apply_gradients (which negates the gradients) and minimize (which
// differentiates -loss) give the same bits.
TEST(Optimizers, MaximizeAscendsAsTorch) {
  OptimizerCase c;
  const std::vector<TorchCase> cases = {
      {"SGD Nesterov",
       [] {
         return std::make_unique<optim::SGD>(optim::SGDOptions{
             .lr = 0.1, .momentum = 0.9, .nesterov = true, .weight_decay = 0.05, .maximize = true});
       },
       {0.0048114700624999765, -2.8392716826249997, 4.735327117750001}},
      {"AdamW amsgrad",
       [] {
         return std::make_unique<optim::AdamW>(optim::AdamOptions{.lr = 0.1,
                                                                  .beta1 = 0.8,
                                                                  .beta2 = 0.95,
                                                                  .eps = 1e-3,
                                                                  .weight_decay = 0.1,
                                                                  .maximize = true,
                                                                  .amsgrad = true});
       },
       {0.18736024348422342, -1.2677496392751137, 2.237883430715464}},
      {"Adagrad",
       [] {
         return std::make_unique<optim::Adagrad>(optim::AdagradOptions{
             .lr = 0.1, .lr_decay = 0.3, .weight_decay = 0.05, .maximize = true});
       },
       {0.3013279628638884, -1.1929270868030413, 2.192145896182603}},
      {"RMSprop centered",
       [] {
         return std::make_unique<optim::RMSProp>(optim::RMSPropOptions{.lr = 0.1,
                                                                       .alpha = 0.9,
                                                                       .eps = 1e-3,
                                                                       .weight_decay = 0.05,
                                                                       .maximize = true,
                                                                       .centered = true});
       },
       {-0.4118257815163322, -1.8529275939779029, 2.8414128361395963}},
      {"NAdam",  // torch's product in f32, as above
       [] {
         return std::make_unique<optim::NAdam>(
             optim::AdamOptions{
                 .lr = 0.1, .beta1 = 0.8, .beta2 = 0.95, .eps = 1e-3, .maximize = true},
             4e-3);
       },
       {0.2039964442301579, -1.2850383442184001, 2.283573972888154},
       2e-9}};
  for (const TorchCase& k : cases) {
    SCOPED_TRACE(k.name);
    const std::vector<double> got = k.expect_matches(c, OptimizerCase::kSteps);
    // The two-step form: the true gradients, negated by apply_gradients.
    Graph g;
    Value p = g.variable("p", {3}, init::zeros(), f64);
    Value loss = sum(square(p - g.constant(Tensor::from_vector<double>(c.target)))) * 0.5;
    std::unique_ptr<optim::Optimizer> optimizer = k.make();
    const auto pairs = optimizer->compute_gradients(loss);
    Value train = optimizer->apply_gradients(pairs);
    Session s(g);
    s.set_variable(p, Tensor::from_vector<double>(c.p0));
    EXPECT_NEAR(s.run({}, {pairs[0].gradient})[0].to_vector<double>()[0], c.p0[0] - c.target[0],
                1e-15);  // the true gradient
    for (int i = 0; i < OptimizerCase::kSteps; ++i) s.run({}, {}, {train});
    EXPECT_EQ(s.variable_value(p).to_vector<double>(), got);
  }
}

// Two optimizers in one graph, run in turns (a GAN's discriminator and generator): named, each
// counts its own steps, so each trains its variables exactly as it would alone (Adam's bias
// corrections and the schedule read its own count). Unnamed, they share global_step, which
// advances on both turns.
TEST(Optimizers, NamedOptimizersCountTheirOwnSteps) {
  const optim::AdamOptions options{
      .lr = 0.1, .beta1 = 0.5, .schedule = optim::Schedule::exponential(0.7)};
  // a and b are trained on two losses by their own Adam each, in turns, for 4 rounds.
  auto train = [&](bool named, bool only_first) {
    Graph g;
    Value a = g.variable("a", {3}, init::constant(0.5), f64);
    Value b = g.variable("b", {2}, init::constant(-1.0), f64);
    Value loss_a = sum(square(a - 2.0)), loss_b = sum(square(b * b - 0.5));
    optim::Adam first(options), second(options);
    if (named) {
      first.named("discriminator");
      second.named("generator");
    }
    Value train_a = first.minimize(loss_a, {a});
    Value train_b = only_first ? Value() : second.minimize(loss_b, {b});
    Session s(g);
    for (int round = 0; round < 4; ++round) {
      s.run({}, {}, {train_a});
      if (train_b.defined()) s.run({}, {}, {train_b});
    }
    std::vector<double> out = s.variable_value(a).to_vector<double>();
    if (named) {
      EXPECT_EQ(s.variable_value(g.value("discriminator/step")).item<int64_t>(), 4);
      EXPECT_EQ(s.variable_value(g.value("generator/step")).item<int64_t>(), 4);
      EXPECT_FALSE(g.find_node("global_step"));
      EXPECT_TRUE(g.find_node("a/discriminator/adam_m"));
      EXPECT_TRUE(g.find_node("b/generator/adam_v"));
    }
    return out;
  };
  const std::vector<double> alone = train(/*named=*/false, /*only_first=*/true);
  const std::vector<double> named = train(/*named=*/true, /*only_first=*/false);
  for (int i = 0; i < 3; ++i) EXPECT_EQ(named[i], alone[i]) << i;
  // Sharing global_step, the first optimizer's count runs twice as fast: its result differs.
  EXPECT_GT(std::abs(train(false, false)[0] - alone[0]), 1e-3);

  // Two optimizers on one variable keep separate slots when named.
  Graph g;
  Value w = g.variable("w", {2}, init::zeros(), f64);
  optim::NAdam one, two;
  one.named("one").minimize(sum(square(w - 1.0)));
  two.named("two").minimize(sum(square(w + 1.0)));
  EXPECT_TRUE(g.find_node("one/nadam_mu_product") && g.find_node("two/nadam_mu_product"));
  EXPECT_TRUE(g.find_node("w/one/nadam_m") && g.find_node("w/two/nadam_m"));
  // A second NAdam of the same name would share the running product: refused.
  optim::NAdam again;
  expect_error<GraphError>([&] { again.named("one").minimize(sum(w)); },
                           {"already has a NAdam update", "one/nadam_mu_product", "named()"});
  expect_error<GraphError>([&] { optim::SGD().named("/x"); },
                           {"must be non-empty and not begin or end with '/'", "got '/x'"});
}

// SGD's dampening: the buffer takes (1 - dampening) of each gradient after the first step, which
// copies it (torch 2.15's parameters, f64, printed to 17 digits).
TEST(Optimizers, SgdDampeningMatchesTorch) {
  OptimizerCase c;
  const std::vector<TorchCase> cases = {
      {"momentum 0.9, dampening 0.5",
       [] {
         return std::make_unique<optim::SGD>(
             optim::SGDOptions{.lr = 0.1, .momentum = 0.9, .dampening = 0.5});
       },
       {1.2104619076413086, 1.8418476305652343, -2.262771445847852}},
      {"with weight decay",
       [] {
         return std::make_unique<optim::SGD>(
             optim::SGDOptions{.lr = 0.1, .momentum = 0.8, .weight_decay = 0.05, .dampening = 0.3});
       },
       {1.073404197478253, 1.4746917996429871, -1.74221686775281}},
      {"under OneCycleLR (momentum cycled)",
       [] {
         return std::make_unique<optim::SGD>(
             optim::SGDOptions{.lr = 0.1,
                               .momentum = 0.9,
                               .dampening = 0.5,
                               .schedule = optim::Schedule::one_cycle(10)});
       },
       {0.8961181067585018, 0.5844724270340076, -0.3767086405510111}},
      {"no momentum: dampening does nothing",
       [] { return std::make_unique<optim::SGD>(optim::SGDOptions{.lr = 0.1, .dampening = 0.5}); },
       {0.82566077995, 0.3026431198, 0.046035320300000016}}};
  for (const TorchCase& k : cases) {
    SCOPED_TRACE(k.name);
    k.expect_matches(c, 10);
  }
  // Ascent, 4 steps.
  const std::vector<double> ascended =
      c.kiln(optim::SGD({.lr = 0.1, .momentum = 0.9, .dampening = 0.5, .maximize = true}), 4);
  const std::vector<double> torch_ascended{0.15844375, -2.366225, 4.0493375};
  for (int i = 0; i < 3; ++i) EXPECT_NEAR(ascended[i], torch_ascended[i], 1e-13) << i;
  expect_error<GraphError>([] { optim::SGD({.dampening = 1.5}); }, {"0 <= dampening <= 1", "1.5"});
  expect_error<GraphError>(
      [] { optim::SGD({.momentum = 0.9, .nesterov = true, .dampening = 0.1}); },
      {"Nesterov", "dampening 0", "0.1"});
  Graph g;
  Value p = g.variable("p", {3}, init::zeros(), f64);
  expect_error<GraphError>(
      [&] { sgd_update(p, p, p, g.scalar(0.1, f64), 0.9, false, 0, {}, {}, 0.5); },
      {"[sgd_update]", "dampening 0.5", "step"});
  // A graph file's node whose attributes ask for an input it lacks (dampening: the step;
  // momentum_input: the momentum) is refused when it is loaded, before anything reads past them.
  Value lr = g.scalar(0.1, f64);
  expect_error<GraphError>(
      [&] {
        g.add("sgd_update", {p, p, p, lr}, {{"dampening", 0.5}});
      },
      {"sgd_update", "takes 5 inputs or more, got 4"});
  expect_error<GraphError>(
      [&] {
        g.add("adam_update", {p, p, p, p, lr, g.scalar(0, i64)}, {{"momentum_input", true}});
      },
      {"adam_update", "takes 7 inputs or more, got 6"});
}

// Parameter groups: each variable's update uses its group's rate and weight decay; the
// schedule scales every group. Plain SGD, so the reference is p -= lr_t (g + wd p) per group.
TEST(Optimizers, ParamGroupsHaveTheirOwnRateAndDecay) {
  Graph g;
  Value w = g.variable("w", {2, 2}, init::zeros(), f64);
  Value b = g.variable("b", {2}, init::zeros(), f64);
  Value frozen = g.variable("frozen", {2}, init::zeros(), f64);
  const std::vector<double> w0 = {0.5, -1, 2, 0.25}, b0 = {1, -2};
  Value loss = (sum(square(w - 1.0)) + sum(square(b + 0.5)) + sum(square(frozen))) * 0.5;
  const auto groups = optim::decay_matrices_only({w, b});
  ASSERT_EQ(groups.size(), 2u);
  EXPECT_EQ(groups[0].variables[0].name(), "w");
  EXPECT_EQ(groups[1].variables[0].name(), "b");
  EXPECT_EQ(groups[1].weight_decay, 0.0);
  optim::SGD sgd({.lr = 0.1, .weight_decay = 0.2, .schedule = optim::Schedule::exponential(0.5)});
  std::vector<optim::ParamGroup> with_rates = groups;
  with_rates[1].lr = 0.3;
  Value train = sgd.with_param_groups(with_rates).minimize(loss);  // frozen: in no group
  Session s(g);
  s.set_variable(w, Tensor::from_vector<double>(w0, {2, 2}));
  s.set_variable(b, Tensor::from_vector<double>(b0));
  s.set_variable(frozen, Tensor::from_vector<double>({3, 3}));
  std::vector<double> rw = w0, rb = b0;
  for (int t = 0; t < 3; ++t) {
    s.run({}, {}, {train});
    const double factor = std::pow(0.5, t);
    for (double& p : rw) p -= 0.1 * factor * ((p - 1) + 0.2 * p);
    for (double& p : rb) p -= 0.3 * factor * (p + 0.5);
  }
  auto got_w = s.variable_value(w).to_vector<double>(),
       got_b = s.variable_value(b).to_vector<double>();
  for (int i = 0; i < 4; ++i) EXPECT_NEAR(got_w[i], rw[i], 1e-14) << i;
  for (int i = 0; i < 2; ++i) EXPECT_NEAR(got_b[i], rb[i], 1e-14) << i;
  EXPECT_EQ(s.variable_value(frozen).to_vector<double>(), (std::vector<double>{3, 3}));

  optim::SGD other;
  expect_error<GraphError>(
      [&] {
        other.with_param_groups({{{w}}, {{b, w}}});
      },
      {"w is in two parameter groups", "group 1"});
  expect_error<GraphError>(
      [&] {
        other.with_param_groups({{{w}}, {}});
      },
      {"parameter group 1 has no variables"});
  expect_error<GraphError>(
      [&] {
        other.with_param_groups({{{w}, -1.0}});
      },
      {"parameter group 0", "must be > 0, got -1"});
  expect_error<GraphError>([&] { other.with_param_groups({{{w * 2.0}}}); }, {"is not a variable"});
  other.with_param_groups({{{w}}});
  expect_error<GraphError>(
      [&] {
        other.apply_gradients({{b * 1.0, b}});
      },
      {"b is in none of the 1 parameter groups"});
}

// A parameter group's momentum, betas and eps: its variables train bit for bit as under an
// optimizer given those settings as options (a path checked against torch above), while the
// other group keeps the optimizer's own.
TEST(Optimizers, ParamGroupsHaveTheirOwnMomentumBetasAndEps) {
  using Make = std::function<std::unique_ptr<optim::Optimizer>(const optim::ParamGroup&)>;
  struct Case {
    const char* name;
    optim::ParamGroup settings;
    Make make;  // the optimizer with `settings` as its options (none set: its defaults)
  };
  auto adam_options = [](const optim::ParamGroup& s) {
    return optim::AdamOptions{.lr = 0.01,
                              .beta1 = s.beta1.value_or(0.9),
                              .beta2 = s.beta2.value_or(0.999),
                              .eps = s.eps.value_or(1e-8),
                              .weight_decay = 0.05};
  };
  const std::vector<Case> cases = {
      {"SGD",
       {.momentum = 0.9},
       [](const optim::ParamGroup& s) {
         return std::make_unique<optim::SGD>(
             optim::SGDOptions{.lr = 0.1, .momentum = s.momentum.value_or(0)});
       }},
      {"Adam",
       {.beta1 = 0.8, .beta2 = 0.95, .eps = 1e-3},
       [&](const optim::ParamGroup& s) { return std::make_unique<optim::Adam>(adam_options(s)); }},
      {"AdamW amsgrad",
       {.beta2 = 0.9, .eps = 1e-4},
       [&](const optim::ParamGroup& s) {
         optim::AdamOptions o = adam_options(s);
         o.amsgrad = true;
         return std::make_unique<optim::AdamW>(o);
       }},
      {"Adamax",
       {.beta1 = 0.5, .eps = 1e-2},
       [&](const optim::ParamGroup& s) {
         return std::make_unique<optim::Adamax>(adam_options(s));
       }},
      {"RAdam",
       {.beta1 = 0.7, .beta2 = 0.9},
       [&](const optim::ParamGroup& s) { return std::make_unique<optim::RAdam>(adam_options(s)); }},
      {"NAdam",
       {.beta2 = 0.9, .eps = 1e-3},
       [&](const optim::ParamGroup& s) { return std::make_unique<optim::NAdam>(adam_options(s)); }},
      {"Adagrad",
       {.eps = 0.5},
       [](const optim::ParamGroup& s) {
         return std::make_unique<optim::Adagrad>(
             optim::AdagradOptions{.lr = 0.1, .eps = s.eps.value_or(1e-10)});
       }},
      {"Adadelta",
       {.eps = 1e-2},
       [](const optim::ParamGroup& s) {
         return std::make_unique<optim::Adadelta>(
             optim::AdadeltaOptions{.eps = s.eps.value_or(1e-6)});
       }},
      {"RMSProp",
       {.momentum = 0.5, .eps = 1e-2},
       [](const optim::ParamGroup& s) {
         return std::make_unique<optim::RMSProp>(optim::RMSPropOptions{
             .eps = s.eps.value_or(1e-8), .momentum = s.momentum.value_or(0)});
       }},
      {"Muon",
       {.momentum = 0.5, .eps = 1e-3},
       [](const optim::ParamGroup& s) {
         return std::make_unique<optim::Muon>(optim::MuonOptions{
             .lr = 0.02, .momentum = s.momentum.value_or(0.95), .eps = s.eps.value_or(1e-7)});
       }},
  };
  const std::vector<double> w0 = {0.5, -1, 2, 0.25, 1.5, -0.5}, b0 = {1, -2, 0.5, 3, -1, 0};
  // Three steps of `opt` on w, b or both (w in the first group, b in the second, when `groups`
  // are given), the loss 0.5 |w - 1|^2 + |b + 0.5|^2: the values each variable ends with.
  auto train = [&](optim::Optimizer& opt, bool with_w, bool with_b,
                   std::vector<optim::ParamGroup> groups = {}) {
    Graph g;
    Value w, b, loss = g.scalar(0.0, f64);
    if (with_w) {
      w = g.variable("w", {2, 3}, init::zeros(), f64);
      loss = loss + sum(square(w - 1.0)) * 0.5;
    }
    if (with_b) {
      b = g.variable("b", {2, 3}, init::zeros(), f64);
      loss = loss + sum(square(b + 0.5));
    }
    if (!groups.empty()) {
      groups[0].variables = {w};
      groups[1].variables = {b};
      opt.with_param_groups(groups);
    }
    Value step = opt.minimize(loss);
    Session s(g);
    if (with_w) s.set_variable(w, Tensor::from_vector<double>(w0, {2, 3}));
    if (with_b) s.set_variable(b, Tensor::from_vector<double>(b0, {2, 3}));
    for (int t = 0; t < 3; ++t) s.run({}, {}, {step});
    std::map<std::string, std::vector<double>> out;
    if (with_w) out["w"] = s.variable_value(w).to_vector<double>();
    if (with_b) out["b"] = s.variable_value(b).to_vector<double>();
    return out;
  };
  for (const Case& c : cases) {
    SCOPED_TRACE(c.name);
    auto grouped = c.make({});
    const auto got = train(*grouped, true, true, {c.settings, {}});
    auto w_reference = c.make(c.settings), b_reference = c.make({});
    const std::vector<double> want_w = train(*w_reference, true, false).at("w");
    const std::vector<double> want_b = train(*b_reference, false, true).at("b");
    EXPECT_EQ(got.at("w"), want_w);
    EXPECT_EQ(got.at("b"), want_b);
    // The settings matter: w trained with the defaults ends elsewhere.
    auto plain = c.make({});
    EXPECT_NE(train(*plain, true, false).at("w"), want_w);
  }

  // What a group may not set, and values out of range.
  Graph g;
  Value w = g.variable("w", {2, 3}, init::zeros(), f64);
  expect_error<GraphError>(
      [&] { optim::Adam().with_param_groups({{.variables = {w}, .momentum = 0.9}}); },
      {"parameter group 0 sets momentum, which Adam has not"});
  expect_error<GraphError>(
      [&] { optim::NAdam().with_param_groups({{.variables = {w}, .beta1 = 0.8}}); },
      {"parameter group 0 sets beta1, which NAdam has not per group", "momentum product"});
  expect_error<GraphError>(
      [&] { optim::Rprop().with_param_groups({{.variables = {w}, .eps = 1e-3}}); },
      {"sets eps, which Rprop has not"});
  expect_error<GraphError>(
      [&] { optim::SGD().with_param_groups({{.variables = {w}, .beta2 = 0.9}}); },
      {"sets beta2, which SGD has not"});
  expect_error<GraphError>(
      [&] { optim::Adam().with_param_groups({{.variables = {w}, .beta2 = 1.0}}); },
      {"parameter group 0: beta2 must be in [0, 1), got 1"});
  expect_error<GraphError>(
      [&] { optim::RMSProp().with_param_groups({{.variables = {w}, .eps = -1.0}}); },
      {"parameter group 0: eps must be >= 0, got -1"});
  expect_error<GraphError>(
      [&] { optim::Muon().with_param_groups({{.variables = {w}, .momentum = 1.0}}); },
      {"Muon's momentum must be < 1, got 1"});
  expect_error<GraphError>(
      [&] {
        optim::SGD({.momentum = 0.9, .nesterov = true})
            .with_param_groups({{.variables = {w}, .momentum = 0.0}});
      },
      {"parameter group 0", "Nesterov momentum needs a momentum > 0"});
  expect_error<GraphError>(
      [&] {
        optim::SGD({.schedule = optim::Schedule::one_cycle(100)})
            .with_param_groups({{.variables = {w}, .momentum = 0.5}});
      },
      {"parameter group 0 sets momentum, which the schedule cycles"});
}

// SparseAdam against torch 2.15's (f64, nn.Embedding(sparse=True)): three steps that look up
// different rows. A row not looked up keeps its moments and does not move (Adam would move it
// on its momentum); one never looked up stays as it was.
TEST(Optimizers, SparseAdamMovesOnlyTheRowsLookedUp) {
  Graph g;
  Value table = g.variable("table", {5, 3}, init::zeros(), f64);
  Value ids = g.placeholder("ids", i64, {-1});
  Value loss = sum(square(embedding(table, ids) - 1.0)) * 0.5;
  Value train =
      optim::SparseAdam({.lr = 0.1, .beta1 = 0.8, .beta2 = 0.9, .eps = 1e-6}).minimize(loss);
  Session s(g);
  s.set_variable(table,
                 Tensor::from_vector<double>(
                     {0.5, -1, 2, 0.25, 1.5, -0.5, 1, -2, 0.5, 3, -1, 0, 0.1, 0.2, 0.3}, {5, 3}));
  for (const std::vector<int64_t>& step :
       std::vector<std::vector<int64_t>>{{0, 2, 2}, {1, 2}, {0, 3}})
    s.run({{ids, Tensor::from_vector<int64_t>(step)}}, {}, {train});
  // torch.optim.SparseAdam(lr=0.1, betas=(0.8, 0.9), eps=1e-6), the same steps.
  const std::vector<double> torch = {0.6869859534892049,
                                     -0.8120584855634538,
                                     1.8122912184685713,  //
                                     0.3265777257426816,
                                     1.4234224356963183,
                                     -0.4234221128176378,  //
                                     1.0,
                                     -1.807697968094728,
                                     0.6892544336922761,  //
                                     2.9325325753919453,
                                     -0.9325325753919455,
                                     0.0674673179330271,  //
                                     0.1,
                                     0.2,
                                     0.3};
  const std::vector<double> got = s.variable_value(table).to_vector<double>();
  for (size_t i = 0; i < torch.size(); ++i) EXPECT_NEAR(got[i], torch[i], 1e-14) << i;
  // Row 3's moments began at its one step; row 4's never did.
  const std::vector<double> m =
      s.variable_value(g.value("table/sparse_adam_m")).to_vector<double>();
  EXPECT_EQ(std::vector<double>(m.begin() + 12, m.end()), (std::vector<double>{0, 0, 0}));
  EXPECT_NEAR(m[9], 0.2 * 2, 1e-15);  // (1 - beta1) g, g = 3 - 1

  expect_error<GraphError>(
      [&] { optim::SparseAdam().with_param_groups({{.variables = {table}, .weight_decay = 0.1}}); },
      {"parameter group 0 sets weight_decay 0.1, which SparseAdam has not"});
  Value scalar = g.variable("offset", {}, init::zeros(), f64);
  expect_error<GraphError>([&] { optim::SparseAdam().minimize(square(scalar)); },
                           {"SparseAdam moves rows of a table", "offset is a scalar"});
  expect_error<GraphError>([&] { optim::SparseAdam({.beta2 = 1.0}); },
                           {"SparseAdam needs betas in [0, 1)", "beta2 1"});
}

// The moving average read in the training run itself: the first run copies the weights SGD
// just made, later runs move towards them (torch's AveragedModel.update_parameters after each
// optimizer.step()); with warm-up the decay is min(decay, (1 + n) / (10 + n)).
TEST(Optimizers, ExponentialMovingAverageFollowsTheTrainedWeights) {
  for (bool warmup : {false, true}) {
    SCOPED_TRACE(warmup ? "warmup" : "fixed decay");
    Graph g;
    Value w = g.variable("w", {2}, init::zeros(), f64);
    Value loss = sum(square(w - 1.0)) * 0.5;
    optim::SGD sgd({.lr = 0.25});
    Value train = sgd.minimize(loss);
    optim::ExponentialMovingAverage ema(0.5, warmup);
    Value average = ema.apply(g, {}, &sgd);
    EXPECT_EQ(ema.average(w).name(), "w/ema");
    Session s(g);
    s.set_variable(w, Tensor::from_vector<double>({2, -2}));
    std::vector<double> p = {2, -2}, shadow(2);
    for (int n = 0; n < 4; ++n) {
      s.run({}, {}, {train, average});
      const double d = warmup ? std::min(0.5, (1.0 + n) / (10.0 + n)) : 0.5;
      for (int i = 0; i < 2; ++i) {
        p[i] -= 0.25 * (p[i] - 1);
        shadow[i] = n == 0 ? p[i] : d * shadow[i] + (1 - d) * p[i];
      }
      const auto got = s.variable_value(ema.average(w)).to_vector<double>();
      for (int i = 0; i < 2; ++i) EXPECT_NEAR(got[i], shadow[i], 1e-15) << n << " " << i;
    }
    EXPECT_EQ(s.variable_value(g.value("ema/num_updates")).item<int64_t>(), 4);
    EXPECT_NE(s.variable_value(w).to_vector<double>(), shadow);
    // Evaluate with the averages, then train on from the weights as they were.
    expect_error<GraphError>([&] { ema.restore_weights(); }, {"needs swap_in_averages first"});
    const Value swap = ema.swap_in_averages(), restore = ema.restore_weights();
    const Tensor trained = s.variable_value(w);
    s.run({}, {}, {swap});
    EXPECT_EQ(s.variable_value(w).to_vector<double>(), shadow);
    s.run({}, {}, {restore});
    EXPECT_TRUE(equal_bits(s.variable_value(w), trained));
    EXPECT_TRUE(g.find_node("w/ema_backup"));
    EXPECT_FALSE(s.variable_values().count("w/ema_backup"));  // not checkpointed
    s.run({}, {}, {ema.copy_to_variables()});
    EXPECT_EQ(s.variable_value(w).to_vector<double>(), shadow);

    expect_error<GraphError>([&] { ema.apply(g); }, {"'ema' was already applied"});
    expect_error<GraphError>([&] { ema.average(g.value("global_step")); },
                             {"has no average of global_step"});
  }
  Graph g;
  Value step = g.variable("count", {}, init::zeros(), i64);
  expect_error<GraphError>([&] { optim::ExponentialMovingAverage(0.9).apply(g, {step}); },
                           {"count is i64, not floating point"});
  expect_error<GraphError>([&] { optim::ExponentialMovingAverage(1.5); }, {"got 1.5"});
}

// Gradient accumulation over micro-batches against torch's loss / N backward() N times, then
// step(): least squares on two rows a micro-batch (torch 2.15's parameters, f64).
TEST(Optimizers, GradientAccumulationStepsOnTheMeanAsTorch) {
  auto micro_batch = [](int r) {
    std::vector<double> x, y;
    for (int i = 0; i < 2; ++i) {
      for (int j = 0; j < 3; ++j) x.push_back(std::sin(r * 7 + i * 3 + j));
      y.push_back(std::cos(r + i));
    }
    return std::make_pair(Tensor::from_vector<double>(x).reshaped({2, 3}),
                          Tensor::from_vector<double>(y));
  };
  struct Case {
    const char* name;
    std::function<std::unique_ptr<optim::Optimizer>()> make;
    int64_t micro_batches;
    int runs;
    std::vector<double> torch;
  };
  const std::vector<Case> cases = {
      {"SGD momentum, 3 micro-batches",
       [] { return std::make_unique<optim::SGD>(optim::SGDOptions{.lr = 0.1, .momentum = 0.9}); },
       3,
       6,
       {0.7119438342634946, -0.9981643624241776, 1.7900397641664152}},
      {"Adam, 3 micro-batches",
       [] { return std::make_unique<optim::Adam>(optim::AdamOptions{.lr = 0.05}); },
       3,
       6,
       {0.5996407960834608, -0.9677834274122359, 1.9016005315124678}},
      {"SGD clipped to norm 0.5 (the mean's norm), 2 micro-batches",
       [] { return std::make_unique<optim::SGD>(optim::SGDOptions{.lr = 0.1, .clip_norm = 0.5}); },
       2,
       4,
       {0.5570277384021178, -1.0053078363914907, 1.9372365891148957}}};
  const std::vector<double> p0{0.5, -1.0, 2.0};
  for (const Case& k : cases) {
    SCOPED_TRACE(k.name);
    Graph g;
    Value x = g.placeholder("x", f64, {2, 3}), y = g.placeholder("y", f64, {2});
    Value p = g.variable("p", {3}, init::zeros(), f64);
    std::unique_ptr<optim::Optimizer> optimizer = k.make();
    optimizer->with_gradient_accumulation(k.micro_batches);
    Value train = optimizer->minimize(mean(square(sum(x * p, {1}) - y)));
    optim::ExponentialMovingAverage ema(0.5);
    Value step = group(g, {train, ema.apply(g, {p}, optimizer.get())});
    Session s(g);
    s.set_variable(p, Tensor::from_vector<double>(p0));
    std::vector<double> last_step = p0;
    for (int r = 0; r < k.runs; ++r) {
      const auto [xs, ys] = micro_batch(r);
      s.run({{x, xs}, {y, ys}}, {}, {step});
      const bool steps = (r + 1) % k.micro_batches == 0;
      const std::vector<double> now = s.variable_value(p).to_vector<double>();
      // Only the run that completes the micro-batches moves the weights, the counter and the
      // average (which its first step sets to the weights).
      EXPECT_EQ(now != last_step, steps) << "run " << r;
      EXPECT_EQ(s.variable_value(g.value("global_step")).item<int64_t>(),
                (r + 1) / k.micro_batches);
      EXPECT_EQ(s.variable_value(g.value("ema/num_updates")).item<int64_t>(),
                (r + 1) / k.micro_batches);
      if (steps && r + 1 == k.micro_batches) {
        EXPECT_EQ(s.variable_value(ema.average(p)).to_vector<double>(), now);
      }
      last_step = now;
    }
    testing::expect_near(k.torch, s.variable_value(p), 1e-13, 1e-14, "p");
    // The accumulators are clear after a step.
    EXPECT_EQ(s.variable_value(g.value("p/grad_sum")).to_vector<double>(),
              (std::vector<double>{0, 0, 0}));
  }
  expect_error<GraphError>([] { optim::SGD().with_gradient_accumulation(0); },
                           {"micro_batches >= 1, got 0"});
  // A checkpoint taken between micro-batches holds the sums and the count: the restored session
  // finishes the step as the uninterrupted one does, bit for bit.
  Graph g;
  Value x = g.placeholder("x", f64, {2, 3}), y = g.placeholder("y", f64, {2});
  Value p = g.variable("p", {3}, init::uniform(-1, 1, 4), f64);
  Value train = optim::Adam({.lr = 0.05})
                    .with_gradient_accumulation(3)
                    .minimize(mean(square(sum(x * p, {1}) - y)));
  auto run = [&](Session& s, int r) {
    const auto [xs, ys] = micro_batch(r);
    s.run({{x, xs}, {y, ys}}, {}, {train});
  };
  Session straight(g), stopped(g);
  for (int r = 0; r < 5; ++r) run(straight, r);
  for (int r = 0; r < 4; ++r) run(stopped, r);
  stopped.save_checkpoint(testing::tmp("accumulating.ckpt"));
  Session resumed(g);
  resumed.restore_checkpoint(testing::tmp("accumulating.ckpt"));
  EXPECT_EQ(resumed.variable_value(g.value("accumulated_micro_batches")).item<int64_t>(), 1);
  run(resumed, 4);
  EXPECT_TRUE(equal_bits(resumed.variable_value(p), straight.variable_value(p)));
  run(resumed, 5);
  run(straight, 5);
  EXPECT_TRUE(equal_bits(resumed.variable_value(p), straight.variable_value(p)));
  EXPECT_EQ(straight.variable_value(g.value("global_step")).item<int64_t>(), 2);
}

// With loss scaling, a micro-batch that overflows spoils its whole step: the step is skipped and
// the scale backs off once, at the run that would step.
TEST(Optimizers, GradientAccumulationWithLossScalingSkipsASpoiledStep) {
  Graph g;
  Value x = g.placeholder("x", f32, {3});
  Value p = g.variable("p", {3}, init::constant(1), f32);
  optim::SGD sgd({.lr = 0.1});
  sgd.with_loss_scaling({.initial = 8, .growth_interval = 1000}).with_gradient_accumulation(2);
  Value train = sgd.minimize(sum(x * p));
  Session s(g);
  auto run = [&](float v) {
    s.run({{x, Tensor::from_vector<float>({v, v, v})}}, {}, {train});
    return std::make_pair(s.variable_value(p).to_vector<float>()[0],
                          s.variable_value(g.value("loss_scale")).item<float>());
  };
  const float first = 1.0f - 0.1f * 2, second = first - 0.1f * 2;  // steps on the mean, 2
  EXPECT_EQ(run(1), std::make_pair(1.0f, 8.0f));                   // accumulates
  EXPECT_EQ(run(3), std::make_pair(first, 8.0f));                  // steps
  EXPECT_EQ(run(INFINITY), std::make_pair(first, 8.0f));           // overflows; the scale waits
  EXPECT_EQ(run(1), std::make_pair(first, 4.0f));  // the step is skipped, backs off once
  EXPECT_EQ(s.variable_value(g.value("global_step")).item<int64_t>(), 1);
  EXPECT_EQ(run(1), std::make_pair(first, 4.0f));  // a fresh accumulation
  EXPECT_EQ(run(3), std::make_pair(second, 4.0f));
}

}  // namespace
}  // namespace kiln
