// Learning-rate (and momentum) schedules against torch.optim.lr_scheduler's rates.
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

TEST(Optimizers, SchedulesAndClipping) {
  Graph g;
  Value step = g.placeholder("step", i64, {});
  Value cosine = optim::learning_rate(g, 1.0, optim::Schedule::cosine(10, 0.1), step, f64);
  Value decay = optim::learning_rate(g, 1.0, optim::Schedule::step_decay(3, 0.5), step, f64);
  Value warm = optim::learning_rate(g, 2.0, optim::Schedule::constant().with_warmup(4), step, f64);
  Session s(g);
  for (int64_t t : {0, 1, 5, 10, 20}) {
    auto out = s.run({{step, Tensor::scalar<int64_t>(t)}}, {cosine, decay, warm});
    double c = 0.1 + 0.45 * (1 + std::cos(M_PI * std::min<int64_t>(t, 10) / 10));
    EXPECT_NEAR(out[0].item<double>(), c, 1e-12) << t;
    EXPECT_NEAR(out[1].item<double>(), std::pow(0.5, t / 3), 1e-12) << t;
    EXPECT_NEAR(out[2].item<double>(), 2.0 * std::min(1.0, (t + 1) / 4.0), 1e-12) << t;
  }
  Value a = g.constant(Tensor::from_vector<double>({3, 0}));
  Value b = g.constant(Tensor::from_vector<double>({0, 4}));
  Value norm;
  auto clipped = optim::clip_by_global_norm({a, b}, 1.0, &norm);
  auto out = s.run({}, {clipped[0], clipped[1], norm});
  EXPECT_NEAR(out[2].item<double>(), 5, 1e-6);
  EXPECT_NEAR(out[0].element(0), 0.6, 1e-6);
  EXPECT_NEAR(out[1].element(1), 0.8, 1e-6);
  auto loose = optim::clip_by_global_norm({a, b}, 100.0);
  EXPECT_NEAR(s.run({}, {loose[0]})[0].element(0), 3, 1e-9);
  {
    // Other norms (torch.nn.utils.clip_grad_norm_'s norm_type, f64: computed in f64), max_norm 1:
    // torch's norm and clipped gradients.
    Value u = g.constant(Tensor::from_vector<double>({1.5, -2.0, 0.25}));
    Value w = g.constant(Tensor::from_vector<double>({0.5, 3.0, -1.0, 0.125}).reshaped({2, 2}));
    struct Norm {
      double type, torch_norm;
      std::vector<double> torch_u, torch_w;
    };
    const std::vector<Norm> norms = {
        {INFINITY,
         3.0,
         {0.4999998333333889, -0.6666664444445185, 0.08333330555556481},
         {0.16666661111112963, 0.9999996666667778, -0.33333322222225925, 0.041666652777782406}},
        {1.0,
         8.375,
         {0.17910445622633359, -0.23880594163511146, 0.029850742704388932},
         {0.059701485408777864, 0.35820891245266717, -0.11940297081755573, 0.014925371352194466}},
        {3.0,
         3.40614741716146,
         {0.44038010570603275, -0.5871734742747103, 0.07339668428433879},
         {0.14679336856867758, 0.8807602114120655, -0.29358673713735517, 0.036698342142169396}},
        {2.0,
         4.071624368725582,
         {0.36840324542665365, -0.4912043272355382, 0.061400540904442275},
         {0.12280108180888455, 0.7368064908533073, -0.2456021636177691, 0.030700270452221137}}};
    for (const Norm& n : norms) {
      SCOPED_TRACE(n.type);
      Value total;
      auto scaled = optim::clip_by_global_norm({u, w}, 1.0, &total, n.type);
      EXPECT_EQ(total.dtype(), f64);
      auto got = s.run({}, {scaled[0], scaled[1], total});
      EXPECT_NEAR(got[2].item<double>(), n.torch_norm, 1e-14);
      testing::expect_near(n.torch_u, got[0], 1e-15, 1e-14, "u");
      testing::expect_near(n.torch_w, got[1], 1e-15, 1e-14, "w");
    }
    for (double bad : {0.0, -1.0, std::nan("")})
      expect_error<GraphError>([&] { optim::clip_by_global_norm({u}, 1.0, nullptr, bad); },
                               {"norm_type > 0"});
    // As an option: SGD on sum(p^2) / 2 from {5, -0.5}, its gradient clipped to a largest
    // element of 1, three steps as torch's.
    Graph h;
    Value p = h.variable("p", {2}, init::zeros(), f64);
    Value train = optim::SGD({.lr = 0.5, .clip_norm = 1, .clip_norm_type = INFINITY})
                      .minimize(sum(square(p)) * 0.5);
    Session t(h);
    t.set_variable(p, Tensor::from_vector<double>({5, -0.5}));
    for (int i = 0; i < 3; ++i) t.run({}, {}, {train});
    testing::expect_near({3.500000336111026, -0.3500000336111026}, t.variable_value(p), 1e-15,
                         1e-14, "SGD");
  }
  auto clamped = optim::clip_by_value({a, b}, 3.5);
  auto values = s.run({}, {clamped[0], clamped[1]});
  EXPECT_EQ(values[0].to_vector<double>(), (std::vector<double>{3, 0}));
  EXPECT_EQ(values[1].to_vector<double>(), (std::vector<double>{0, 3.5}));
  expect_error<GraphError>([&] { optim::clip_by_value({a}, 0); }, {"limit > 0, got 0"});
  // As an option: SGD on sum(p^2) / 2 with gradients p = {5, -0.5} clamped to 1.
  Graph h;
  Value p = h.variable("p", {2}, init::zeros(), f64);
  Value train = optim::SGD({.lr = 0.5, .clip_value = 1}).minimize(sum(square(p)) * 0.5);
  Session t(h);
  t.set_variable(p, Tensor::from_vector<double>({5, -0.5}));
  t.run({}, {}, {train});
  EXPECT_EQ(t.variable_value(p).to_vector<double>(), (std::vector<double>{4.5, -0.25}));
}

// The schedules added after cosine, at steps before, on and after their breakpoints. The
// one-cycle values are PyTorch's OneCycleLR (max_lr 2, 20 steps, pct_start 0.3) printed by
// torch 1.13; the others are its closed forms, which torch's schedulers match to 1e-16.
// ConstantLR and ChainedScheduler: torch 2.15's rates at every step (lr 0.1).
TEST(Optimizers, ConstantFactorAndChainedMatchPyTorch) {
  using optim::Schedule;
  Graph g;
  Value step = g.placeholder("step", i64, {});
  const std::vector<std::pair<Schedule, std::vector<double>>> cases = {
      {Schedule::constant_factor(0.25, 3), {0.025, 0.025, 0.025, 0.1, 0.1, 0.1}},
      {Schedule::chained({Schedule::constant_factor(0.1, 2), Schedule::exponential(0.9)}),
       {0.010000000000000002, 0.009000000000000003, 0.08100000000000003, 0.07290000000000003,
        0.06561000000000003, 0.059049000000000025}},
      {Schedule::chained({Schedule::linear(0.5, 1, 4), Schedule::step_decay(3, 0.5),
                          Schedule::polynomial(10, 2)}),
       {0.05, 0.050625, 0.048, 0.021437499999999998, 0.018000000000000002, 0.012500000000000002,
        0.004000000000000002, 0.002250000000000002, 0.001, 0.000125, 0.0, 0.0}},
      {Schedule::chained({Schedule::multi_step({2, 5}, 0.5), Schedule::cosine(8)}),
       {0.1, 0.09619397662556434, 0.04267766952966369, 0.03456708580912725, 0.025,
        0.007716457095436379, 0.0036611652351681567, 0.0009515058436089159, 0.0}},
      // SequentialLR of ConstantLR(0.5, 2) and ExponentialLR(0.8) at milestone 3.
      {Schedule::sequential({Schedule::constant_factor(0.5, 2), Schedule::exponential(0.8)}, {3}),
       {0.05, 0.05, 0.1, 0.1, 0.08000000000000002, 0.06400000000000002, 0.051200000000000016}}};
  Session s(g);
  for (size_t i = 0; i < cases.size(); ++i) {
    Value lr = optim::learning_rate(g, 0.1, cases[i].first, step, f64);
    const std::vector<double>& torch = cases[i].second;
    for (size_t t = 0; t < torch.size(); ++t)
      EXPECT_NEAR(
          s.run({{step, Tensor::scalar<int64_t>(static_cast<int64_t>(t))}}, {lr})[0].item<double>(),
          torch[t], 1e-15)
          << "case " << i << " step " << t;
  }
  // Schedules that set the rate outright do not chain (torch's result would not be a product).
  // (Not a structured binding: clang before 16 cannot capture one in a lambda.)
  for (const std::pair<Schedule, const char*>& refused :
       std::vector<std::pair<Schedule, const char*>>{
           {Schedule::one_cycle(10), "(one_cycle) sets the rate outright"},
           {Schedule::cosine(10, 0.01), "min_lr above 0"},
           {Schedule::custom([](const Value& t) { return t; }), "LambdaLR"},
           {Schedule::reduce_on_plateau(), "observe_metric"}})
    expect_error<GraphError>(
        [&] {
          optim::learning_rate(
              g, 0.1, Schedule::chained({Schedule::exponential(0.9), refused.first}), step, f64);
        },
        {"[optim] chained: schedule 1", refused.second});
  expect_error<GraphError>([&] { optim::learning_rate(g, 0.1, Schedule::chained({}), step, f64); },
                           {"chained needs schedules"});
  expect_error<GraphError>(
      [&] { optim::learning_rate(g, 0.1, Schedule::constant_factor(1.5, 3), step, f64); },
      {"0 < factor <= 1", "1.5"});
  // In training: SGD under the chained schedule moves as torch's (two steps of lr 0.01, 0.009).
  OptimizerCase c;
  const std::vector<double> trained =
      c.kiln(optim::SGD({.lr = 0.1,
                         .schedule = Schedule::chained(
                             {Schedule::constant_factor(0.1, 2), Schedule::exponential(0.9)})}),
             2);
  std::vector<double> want = c.p0;
  for (double rate : {0.010000000000000002, 0.009000000000000003})
    for (int i = 0; i < 3; ++i) want[i] -= rate * (want[i] - c.target[i]);
  for (int i = 0; i < 3; ++i) EXPECT_NEAR(trained[i], want[i], 1e-15) << i;
}

TEST(Optimizers, MoreSchedulesMatchPyTorch) {
  Graph g;
  Value step = g.placeholder("step", i64, {});
  auto lr = [&](double base, const optim::Schedule& schedule) {
    return optim::learning_rate(g, base, schedule, step, f64);
  };
  Value multi = lr(1.0, optim::Schedule::multi_step({3, 7, 12}, 0.5));
  Value expo = lr(2.0, optim::Schedule::exponential(0.9));
  Value linear = lr(1.0, optim::Schedule::linear(0.25, 0.75, 8));
  Value poly = lr(1.0, optim::Schedule::polynomial(10, 2.0));
  Value cycle = lr(2.0, optim::Schedule::one_cycle(20));
  using optim::Schedule;
  Value phases =
      lr(2.0, Schedule::sequential({Schedule::linear(0.1, 1, 5), Schedule::cosine(10, 0.01),
                                    Schedule::exponential(0.5)},
                                   {5, 15}));
  Value restarts = lr(2.0, Schedule::cosine_restarts(3, 1, 0.1));
  Value growing = lr(2.0, Schedule::cosine_restarts(3, 2, 0.1));
  Value inverse = lr(2.0, Schedule::custom([](const Value& t) { return 1.0 / (t * 0.5 + 1.0); }));
  // CosineAnnealingWarmRestarts(T_0 3, eta_min 0.1) with T_mult 1 and 2, lr 2: torch's rates.
  const std::vector<double> torch_restarts = {2.0, 1.525, 0.5750000000000002};
  const std::map<int64_t, double> torch_growing = {{0, 2.0},
                                                   {2, 0.5750000000000002},
                                                   {3, 2.0},
                                                   {4, 1.872724133595217},
                                                   {8, 0.22727586640478323},
                                                   {9, 2.0},
                                                   {14, 1.2958780928473947},
                                                   {20, 0.13237046502538521},
                                                   {21, 2.0},
                                                   {30, 1.4135492607468354},
                                                   {45, 2.0},
                                                   {93, 2.0}};
  // SequentialLR of LinearLR(0.1, total 5), CosineAnnealingLR(10, 0.01), ExponentialLR(0.5) at
  // milestones 5 and 15, lr 2: torch's rates.
  const std::map<int64_t, double> torch_phases = {{0, 0.2},
                                                  {4, 1.6399999999999997},
                                                  {5, 2.0},
                                                  {6, 1.951301233713678},
                                                  {14, 0.058698766286322236},
                                                  {15, 2.0},
                                                  {16, 1.0},
                                                  {19, 0.125}};
  const std::map<int64_t, double> torch_cycle = {
      {0, 0.08},      {1, 0.2633436854},   {5, 2.0},    {6, 1.97492801247},
      {12, 1.000004}, {18, 0.02507998753}, {19, 8e-06}, {30, 8e-06}};
  Session s(g);
  for (int64_t t : {0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 12, 14, 15, 16, 18, 19, 20, 21, 30, 45, 93}) {
    auto out = s.run({{step, Tensor::scalar<int64_t>(t)}},
                     {multi, expo, linear, poly, cycle, phases, restarts, growing, inverse});
    const double td = static_cast<double>(t);
    EXPECT_NEAR(out[0].item<double>(), std::pow(0.5, (t >= 3) + (t >= 7) + (t >= 12)), 1e-12) << t;
    EXPECT_NEAR(out[1].item<double>(), 2.0 * std::pow(0.9, td), 1e-12) << t;
    EXPECT_NEAR(out[2].item<double>(), 0.25 + 0.5 * std::min(td, 8.0) / 8, 1e-12) << t;
    EXPECT_NEAR(out[3].item<double>(), std::pow(1 - std::min(td, 10.0) / 10, 2), 1e-12) << t;
    if (torch_cycle.count(t)) {
      EXPECT_NEAR(out[4].item<double>(), torch_cycle.at(t), 1e-10) << t;
    }
    if (torch_phases.count(t)) {
      EXPECT_NEAR(out[5].item<double>(), torch_phases.at(t), 1e-12) << t;
    }
    EXPECT_NEAR(out[6].item<double>(), torch_restarts[t % 3], 1e-12) << t;
    if (torch_growing.count(t)) {
      EXPECT_NEAR(out[7].item<double>(), torch_growing.at(t), 1e-12) << t;
    }
    EXPECT_NEAR(out[8].item<double>(), 2.0 / (td * 0.5 + 1), 1e-12) << t;
  }
  expect_error<GraphError>(
      [&] {
        lr(1.0, optim::Schedule::multi_step({5, 3}, 0.1));
      },
      {"ascending", "milestone 1 is 3"});
  expect_error<GraphError>([&] { lr(1.0, optim::Schedule::polynomial(0)); },
                           {"polynomial schedule needs total_steps > 0, got 0"});
  expect_error<GraphError>(
      [&] { lr(1.0, optim::Schedule::one_cycle(2)); },
      {"one_cycle", "with total_steps 2", "phase 1 would run from step 0 to -0.4"});
  expect_error<GraphError>(
      [&] {
        lr(1.0, Schedule::sequential({Schedule::constant(), Schedule::constant()}, {}));
      },
      {"one milestone fewer than its phases; got 2 phases and 0 milestones"});
  expect_error<GraphError>(
      [&] {
        lr(1.0, Schedule::sequential(
                    {Schedule::constant(), Schedule::constant(), Schedule::constant()}, {4, 2}));
      },
      {"ascending; milestone 1 is 2"});
  expect_error<GraphError>(
      [&] { lr(1.0, Schedule::custom([](const Value& t) { return cast(t, f32); })); },
      {"factor must be a f64 scalar", "got f32"});
}

// OneCycleLR and CyclicLR cycle the momentum (SGD's, RMSProp's) or beta1 (Adam's family)
// against the rate by default, as torch does: the parameters after 10 steps (torch 2.15, f64,
// printed to 17 digits; max_lr 0.1; CyclicLR's base_lr 0.01). SGD and RMSProp without momentum
// get it, as torch's scheduler gives it to them.
TEST(Optimizers, CycledMomentumMatchesTorch) {
  using optim::Schedule;
  OptimizerCase c;
  Schedule cycle = Schedule::one_cycle(10);
  Schedule linear3 = Schedule::one_cycle(10, 0.25);
  linear3.three_phase = linear3.anneal_linear = true;
  const Schedule cyclic = Schedule::cyclic(0.01, 2, 3, Schedule::CyclicMode::triangular2);
  const optim::AdamOptions adam{
      .lr = 0.1, .beta1 = 0.9, .beta2 = 0.95, .eps = 1e-3, .weight_decay = 0.1};
  auto with = [](optim::AdamOptions options, const Schedule& schedule) {
    options.schedule = schedule;
    return options;
  };
  const std::vector<TorchCase> cases = {
      {"SGD (no momentum of its own), one cycle",
       [&] {
         return std::make_unique<optim::SGD>(optim::SGDOptions{.lr = 0.1, .schedule = cycle});
       },
       {1.0757491569400373, 1.3029966277601484, -1.4544949416402222}},
      {"SGD Nesterov, three linear phases",
       [&] {
         return std::make_unique<optim::SGD>(optim::SGDOptions{.lr = 0.1,
                                                               .momentum = 0.9,
                                                               .nesterov = true,
                                                               .weight_decay = 0.05,
                                                               .schedule = linear3});
       },
       {0.7117896837807322, -0.08596031210420878, 0.6177936426941693}},
      {"SGD, cyclic triangular2",
       [&] {
         return std::make_unique<optim::SGD>(
             optim::SGDOptions{.lr = 0.1, .momentum = 0.9, .schedule = cyclic});
       },
       {1.0255691944769316, 1.1022767779077267, -1.1534151668615897}},
      {"Adam, one cycle",
       [&] { return std::make_unique<optim::Adam>(with(adam, cycle)); },
       {0.8764738988024072, -0.5962047081488089, 1.5948012551398063}},
      {"AdamW, cyclic",
       [&] { return std::make_unique<optim::AdamW>(with(adam, cyclic)); },
       {0.8653796336158998, -0.5529034664949584, 1.5088239450107508}},
      {"RAdam, one cycle",
       [&] {
         return std::make_unique<optim::RAdam>(
             optim::AdamOptions{.lr = 0.1, .beta2 = 0.8, .eps = 1e-3, .schedule = cycle});
       },
       {0.694070728941845, -0.34544697451552686, 1.0384479823898476}},
      {"RMSprop (no momentum of its own), one cycle",
       [&] {
         return std::make_unique<optim::RMSProp>(
             optim::RMSPropOptions{.lr = 0.1, .alpha = 0.9, .eps = 1e-3, .schedule = cycle});
       },
       {1.388625976515722, 1.566762225956065, -0.8569619197525912}},
      // torch keeps NAdam's running product in f32 (see above).
      {"NAdam, one cycle",
       [&] {
         optim::AdamOptions options = with(adam, cycle);
         options.weight_decay = 0;
         return std::make_unique<optim::NAdam>(options, 0.05);
       },
       {0.7993051504675817, -0.6589155718100973, 1.6547785101673023},
       1e-8}};
  for (const TorchCase& k : cases) {
    SCOPED_TRACE(k.name);
    k.expect_matches(c, 10);
  }
  // Without cycling, the same SGD run differs: the momentum really moved.
  Schedule fixed = cycle;
  fixed.cycle_momentum = false;
  EXPECT_GT(
      std::abs(c.kiln(optim::SGD({.lr = 0.1, .schedule = fixed}), 10)[0] - 1.0757491569400373),
      1e-3);
  {
    Graph g;
    Value step = g.placeholder("step", i64, {});
    Value momentum = optim::scheduled_momentum(g, cycle, step);
    Session s(g);
    // torch's momentum at steps 0, 1, 2 and 9 (0.95 down to 0.85 at the peak, back up).
    for (auto [t, want] : std::vector<std::pair<int64_t, double>>{
             {0, 0.95}, {1, 0.8999999999999999}, {2, 0.85}, {5, 0.8888739533021842}, {9, 0.95}})
      EXPECT_NEAR(s.run({{step, Tensor::scalar<int64_t>(t)}}, {momentum})[0].item<double>(), want,
                  1e-15)
          << t;
    EXPECT_FALSE(optim::scheduled_momentum(g, Schedule::cosine(10), step).defined());
  }
  expect_error<GraphError>(
      [&] { c.kiln(optim::Adagrad({.schedule = cycle})); },
      {"Adagrad has no momentum for the schedule to cycle", "cycle_momentum = false"});
  Schedule inverted = cycle;
  inverted.base_momentum = 0.99;
  expect_error<GraphError>([&] { c.kiln(optim::SGD({.schedule = inverted})); },
                           {"0 <= base_momentum <= max_momentum < 1; got 0.99 and 0.95"});
}

// OneCycleLR's three-phase and linear variants and CyclicLR's three modes against the rates
// torch 2.15 printed (max_lr 2; cycle_momentum off, which Kiln does not model).
TEST(Optimizers, OneCycleVariantsAndCyclicMatchPyTorch) {
  using optim::Schedule;
  Graph g;
  Value step = g.placeholder("step", i64, {});
  auto lr = [&](const Schedule& schedule) {
    return optim::learning_rate(g, 2.0, schedule, step, f64);
  };
  auto one_cycle = [](bool three_phase, bool linear, double pct_start) {
    Schedule s = Schedule::one_cycle(20, pct_start);
    s.three_phase = three_phase;
    s.anneal_linear = linear;
    return s;
  };
  using Mode = Schedule::CyclicMode;
  const std::vector<Value> rates = {lr(one_cycle(true, false, 0.3)),
                                    lr(one_cycle(false, true, 0.3)),
                                    lr(one_cycle(true, true, 0.25)),
                                    lr(Schedule::cyclic(0.1, 3, 5)),
                                    lr(Schedule::cyclic(0.1, 4, 0, Mode::triangular2)),
                                    lr(Schedule::cyclic(0.1, 2, 3, Mode::exp_range, 0.9))};
  // torch's rates at the steps around each phase's and cycle's ends (OneCycle to step 19).
  const std::vector<std::map<int64_t, double>> torch_rates = {{{0, 0.08000000000000007},
                                                               {1, 0.2633436854000506},
                                                               {4, 1.8166563145999495},
                                                               {5, 2.0},
                                                               {6, 1.8166563145999495},
                                                               {9, 0.26334368540005054},
                                                               {10, 0.08},
                                                               {12, 0.07064271354698665},
                                                               {16, 0.020006000000000013},
                                                               {18, 0.0024200539390468114},
                                                               {19, 8e-06}},
                                                              {{0, 0.08},
                                                               {1, 0.464},
                                                               {4, 1.616},
                                                               {5, 2.0},
                                                               {6, 1.8571434285714286},
                                                               {12, 1.0000040000000001},
                                                               {18, 0.14286457142857145},
                                                               {19, 8.000000000008e-06}},
                                                              {{0, 0.08},
                                                               {3, 1.52},
                                                               {4, 2.0},
                                                               {5, 1.52},
                                                               {8, 0.08000000000000007},
                                                               {9, 0.072728},
                                                               {15, 0.029095999999999997},
                                                               {19, 7.999999999994123e-06}},
                                                              {{0, 0.1},
                                                               {1, 0.7333333333333333},
                                                               {3, 2.0},
                                                               {4, 1.62},
                                                               {7, 0.48},
                                                               {8, 0.1},
                                                               {9, 0.7333333333333333},
                                                               {19, 2.0},
                                                               {21, 1.24},
                                                               {45, 1.24},
                                                               {93, 1.24}},
                                                              {{0, 0.1},
                                                               {4, 2.0},
                                                               {7, 0.575},
                                                               {8, 0.1},
                                                               {9, 0.3375},
                                                               {12, 1.05},
                                                               {19, 0.45624999999999993},
                                                               {30, 0.21875},
                                                               {45, 0.14453125},
                                                               {93, 0.10069580078125001}},
                                                              {{0, 0.1},
                                                               {1, 0.9549999999999997},
                                                               {2, 1.6389999999999998},
                                                               {4, 0.5155299999999999},
                                                               {5, 0.1},
                                                               {7, 1.00876411},
                                                               {12, 0.6366161193139},
                                                               {18, 0.2901198713761991},
                                                               {21, 0.2039480396749369},
                                                               {93, 0.10007034216318555}}};
  Session s(g);
  for (int64_t t : {0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 12, 15, 16, 18, 19, 21, 30, 45, 93}) {
    auto out = s.run({{step, Tensor::scalar<int64_t>(t)}}, rates);
    for (size_t i = 0; i < rates.size(); ++i) {
      if (!torch_rates[i].count(t)) continue;
      EXPECT_NEAR(out[i].item<double>(), torch_rates[i].at(t), 1e-12)
          << "schedule " << i << " t " << t;
    }
    // OneCycle stays at its final rate after total_steps (torch refuses to step on).
    if (t > 19) {
      for (size_t i = 0; i < 3; ++i) EXPECT_NEAR(out[i].item<double>(), 8e-06, 1e-17) << i;
    }
  }
  expect_error<GraphError>(
      [&] { lr(one_cycle(true, false, 0.6)); },
      {"one_cycle (three phases)", "pct_start 0.6 phase 3 would run from step 22 to 19"});
  expect_error<GraphError>([&] { lr(Schedule::cyclic(0.1, 0, 3)); },
                           {"cyclic needs step sizes > 0, got up 0 and down 3"});
  expect_error<GraphError>([&] { lr(Schedule::cyclic(3.0, 2)); },
                           {"0 <= min_lr < the learning rate; min_lr is 3, the rate 2"});
}

// ReduceLROnPlateau fed one metric at a time, against the rates torch's scheduler gives for
// the same metrics (printed by torch 1.13 and 2.15 alike): relative threshold with cool-down
// and a floor, an absolute threshold on a metric to maximize, and eps.
TEST(Optimizers, ReduceOnPlateauMatchesPyTorch) {
  struct Case {
    optim::Schedule schedule;
    std::vector<double> metrics, torch_lr;
  };
  optim::Schedule down = optim::Schedule::reduce_on_plateau(0.5, 2, 0.1, 0.1);
  down.cooldown = 1;
  optim::Schedule up = optim::Schedule::reduce_on_plateau(0.3, 1, 0.5);
  up.maximize = true;
  up.threshold_relative = false;
  // eps: the fourth reduction (0.001 to 0.0001) moves the rate by 0.0009, not more than 1e-3,
  // so it and all after it are skipped; and the third of `floor` (0.25 to its floor 0.2) too.
  optim::Schedule tiny = optim::Schedule::reduce_on_plateau(0.1, 0);
  tiny.plateau_eps = 1e-3;
  optim::Schedule floor = optim::Schedule::reduce_on_plateau(0.5, 0, 1e-4, 0.2);
  floor.plateau_eps = 0.1;
  const std::vector<Case> cases = {
      {down,
       {5, 4, 3.9, 3.8, 3.7, 3.0, 3.0, 3.0, 3.0, 3.0, 2.9, 3.0, 3.0, 3.0, 3.0, 3.0, 3.0, 3.0},
       {1.0, 1.0, 1.0, 1.0, 0.5, 0.5, 0.5, 0.5, 0.25, 0.25, 0.25, 0.25, 0.125, 0.125, 0.125, 0.125,
        0.1, 0.1}},
      {up,
       {1, 2, 2.5, 2.6, 2.7, 2.8, 5, 5, 5, 5, 5, 5},
       {1.0, 1.0, 1.0, 1.0, 1.0, 0.3, 0.3, 0.3, 0.09, 0.09, 0.027, 0.027}},
      {tiny, {5, 5, 5, 5, 5, 5}, {1.0, 0.1, 0.01, 0.001, 0.001, 0.001}},
      {floor, {5, 5, 5, 5, 5, 5}, {1.0, 0.5, 0.25, 0.25, 0.25, 0.25}}};
  for (const Case& c : cases) {
    Graph g;
    Value metric = g.placeholder("val_loss", f32, {});
    Value observe = optim::observe_metric(g, metric, c.schedule);
    Value lr = optim::learning_rate(g, 1.0, c.schedule, g.scalar(0, i64), f64);
    Session s(g);
    for (size_t i = 0; i < c.metrics.size(); ++i) {
      s.run({{metric, Tensor::scalar<float>(static_cast<float>(c.metrics[i]))}}, {}, {observe});
      EXPECT_NEAR(s.run({}, {lr})[0].item<double>(), c.torch_lr[i], 1e-12) << i;
    }
  }
  Graph g;
  expect_error<GraphError>(
      [&] {
        optim::observe_metric(g, g.placeholder("m", f32, {2}),
                              optim::Schedule::reduce_on_plateau());
      },
      {"one-element metric", "[2]"});
  expect_error<GraphError>(
      [&] { optim::observe_metric(g, g.scalar(1, f32), optim::Schedule::cosine(10)); },
      {"needs a reduce_on_plateau schedule"});
  expect_error<GraphError>(
      [&] { optim::observe_metric(g, g.scalar(1, f32), optim::Schedule::reduce_on_plateau(2.0)); },
      {"0 < factor < 1", "got factor 2"});
}

// Stochastic weight averaging as torch.optim.swa_utils: SGD (momentum 0.5) under CosineAnnealingLR
// (T 10) until swa_start, then SWALR, which anneals from the rate it finds there; the equal
// average of the weights after each step from swa_start on (AveragedModel.update_parameters).
// The rate of every step, the weights and their average against torch 2.15 (f64), for cosine
// and linear annealing and for anneal_steps 0 (swa_lr at once).
TEST(Optimizers, StochasticWeightAveragingMatchesTorch) {
  struct Case {
    int64_t swa_start;
    double swa_lr;
    int64_t anneal_steps;
    bool linear;
    int steps;
    std::vector<double> rates, weights, average;
  };
  const std::vector<Case> cases = {
      {4,
       0.05,
       3,
       false,
       10,
       {0.1, 0.09755282581475769, 0.09045084971874738, 0.07938926261462367, 0.06545084971874739,
        0.06158813728906054, 0.05386271242968685, 0.05, 0.05, 0.05},
       {0.8861187800011034, 0.5444751200044141, -0.31671268000662134},
       {0.8389978344803186, 0.3559913379212747, -0.033987006881912196}},
      {3,
       0.02,
       4,
       true,
       9,
       {0.1, 0.09755282581475769, 0.09045084971874738, 0.07938926261462367, 0.06454194696096775,
        0.04969463130731184, 0.03484731565365592, 0.02, 0.02},
       {0.8351633901284251, 0.34065356051369977, -0.010980340770549985},
       {0.8002747367819852, 0.20109894712794074, 0.1983515793080886}},
      {2,
       0.03,
       0,
       false,
       5,
       {0.1, 0.09755282581475769, 0.03, 0.03, 0.03},
       {0.6830309777390086, -0.26787608904396587, 0.9018141335659485},
       {0.6617587531541826, -0.3529649873832695, 1.0294474810749041}},
  };
  const OptimizerCase c;
  for (const Case& k : cases) {
    SCOPED_TRACE(k.swa_start);
    Graph g;
    Value p = g.variable("p", {3}, init::zeros(), f64);
    Value loss = sum(square(p - g.constant(Tensor::from_vector<double>(c.target)))) * 0.5;
    const optim::Schedule schedule = optim::Schedule::sequential(
        {optim::Schedule::cosine(10), optim::Schedule::swa(k.swa_lr, k.anneal_steps, k.linear)},
        {k.swa_start});
    optim::SGD sgd({.lr = 0.1, .momentum = 0.5, .schedule = schedule});
    Value train = sgd.minimize(loss);
    optim::StochasticWeightAveraging swa;
    Value average = swa.apply(g, {p}, &sgd);
    Value rate = optim::learning_rate(g, 0.1, schedule, g.value("global_step"), f64);
    Session s(g);
    s.set_variable(p, Tensor::from_vector<double>(c.p0));
    for (int i = 0; i < k.steps; ++i) {
      EXPECT_NEAR(s.run({}, {rate})[0].item<double>(), k.rates[i], 1e-15) << "step " << i;
      if (i >= k.swa_start)
        s.run({}, {}, {train, average});
      else
        s.run({}, {}, {train});
    }
    const auto weights = s.variable_value(p).to_vector<double>();
    const auto averaged = s.variable_value(swa.average(p)).to_vector<double>();
    for (int i = 0; i < 3; ++i) {
      EXPECT_NEAR(weights[i], k.weights[i], 1e-14) << i;
      EXPECT_NEAR(averaged[i], k.average[i], 1e-14) << i;
    }
    EXPECT_EQ(s.variable_value(g.value("swa/num_updates")).item<int64_t>(), k.steps - k.swa_start);
  }
  {
    // Alone, swa anneals from the optimizer's rate: linearly, halfway at step 1 of 2.
    Graph g;
    Value step = g.placeholder("step", i64, {});
    Value rate = optim::learning_rate(g, 0.1, optim::Schedule::swa(0.05, 2, true), step, f64);
    Session s(g);
    for (auto [t, want] : std::vector<std::pair<int64_t, double>>{{0, 0.1}, {1, 0.075}, {5, 0.05}})
      EXPECT_NEAR(s.run({{step, Tensor::scalar<int64_t>(t)}}, {rate})[0].item<double>(), want,
                  1e-15)
          << t;
  }
  expect_error<GraphError>([&] { c.kiln(optim::SGD({.schedule = optim::Schedule::swa(0)})); },
                           {"swa needs swa_lr > 0 and anneal_steps >= 0", "swa_lr 0"});
  expect_error<GraphError>(
      [&] {
        c.kiln(optim::SGD({.schedule = optim::Schedule::chained({optim::Schedule::swa(0.1)})}));
      },
      {"chained: schedule 0 (swa, SWALR) moves the rate toward swa_lr"});
  {
    Graph g;
    Value w = g.variable("w", {2}, init::zeros());
    optim::StochasticWeightAveraging twice;
    twice.apply(g, {w});
    expect_error<GraphError>([&] { twice.apply(g, {w}); },
                             {"StochasticWeightAveraging 'swa' was already applied"});
  }
}

}  // namespace
}  // namespace kiln
