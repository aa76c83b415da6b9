// Muon (torch.optim.Muon) against torch 2.15: a two-layer network whose matrices Muon trains and
// whose bias AdamW (named "adamw") trains, as torch's recipe pairs them. With the Newton-Schulz
// iteration in f64 (torch's function patched to skip its bf16 cast) and in bf16 (as torch runs
// it), Kiln matches to 1e-12.
#include <vector>

#include "test_util.h"

namespace kiln {
namespace {

using testing::expect_error;

// W1 [4, 3] (tall: iterated as its transpose), W2 [2, 4] (wide), b [2]; x [5, 3], y [5, 2];
// loss = sum((tanh(x W1^T) W2^T + b - y)^2).
struct MuonCase {
  Graph g;
  Value w1 = g.variable("w1", {4, 3}, init::zeros(), f64);
  Value w2 = g.variable("w2", {2, 4}, init::zeros(), f64);
  Value b = g.variable("b", {2}, init::zeros(), f64);
  Value loss;

  MuonCase() {
    Value x = g.constant(Tensor::from_vector<double>(
        {1.0, -0.5, 0.25, 0.5, 0.75, -1.0, -0.25, 0.5, 1.5, 2.0, -1.0, 0.5, 0.3, 0.2, -0.1},
        {5, 3}));
    Value y = g.constant(Tensor::from_vector<double>(
        {0.5, -0.25, 1.0, 0.5, -0.5, 0.75, 0.25, 0.25, -1.0, 0.1}, {5, 2}));
    Value h = tanh(matmul(x, w1, false, true));
    loss = sum(square(matmul(h, w2, false, true) + b - y));
  }
  // The three variables after `steps` steps of Muon on w1, w2 and AdamW (lr 0.05, weight decay
  // 0.01) on b.
  // With `micro_batches` > 1 both optimizers accumulate that many runs per step.
  std::vector<std::vector<double>> train(const optim::MuonOptions& options, int steps,
                                         int micro_batches = 1) {
    optim::Muon muon(options);
    optim::AdamW adamw({.lr = 0.05, .weight_decay = 0.01});
    muon.with_gradient_accumulation(micro_batches);
    adamw.with_gradient_accumulation(micro_batches);
    Value step =
        group(g, {muon.minimize(loss, {w1, w2}), adamw.named("adamw").minimize(loss, {b})});
    Session s(g);
    s.set_variable(
        w1, Tensor::from_vector<double>(
                {0.3, -0.2, 0.5, 0.1, 0.4, -0.3, -0.6, 0.2, 0.1, 0.25, -0.35, 0.45}, {4, 3}));
    s.set_variable(
        w2, Tensor::from_vector<double>({0.2, -0.1, 0.3, 0.4, -0.5, 0.6, 0.1, -0.2}, {2, 4}));
    s.set_variable(b, Tensor::from_vector<double>({0.1, -0.2}));
    for (int i = 0; i < steps * micro_batches; ++i) s.run({}, {}, {step});
    EXPECT_EQ(s.variable_value(g.value("global_step")).item<int64_t>(), steps);
    return {s.variable_value(w1).to_vector<double>(), s.variable_value(w2).to_vector<double>(),
            s.variable_value(b).to_vector<double>()};
  }
};

void expect_near(const std::vector<std::vector<double>>& got,
                 const std::vector<std::vector<double>>& torch, double tolerance) {
  ASSERT_EQ(got.size(), torch.size());
  for (size_t v = 0; v < got.size(); ++v) {
    ASSERT_EQ(got[v].size(), torch[v].size());
    for (size_t i = 0; i < got[v].size(); ++i)
      EXPECT_NEAR(got[v][i], torch[v][i], tolerance) << "variable " << v << " element " << i;
  }
}

TEST(Muon, MatchesTorchWithTheIterationInF64) {
  {
    SCOPED_TRACE("defaults (Nesterov, momentum 0.95, weight decay 0.1, 5 steps), 4 steps");
    expect_near(
        MuonCase().train({.lr = 0.05, .ns_dtype = f64}, 4),
        {{0.30061058836022675, -0.2856129145187835, 0.3850675245605838, 0.2712192467860075,
          0.3131540417708435, -0.23449837953930122, -0.47043899680357554, 0.3184976746600341,
          0.033535159585183015, 0.3598408727643236, -0.3832639264666103, 0.3099308227204139},
         {0.15033544029178283, 0.008915726353130494, 0.12902477112878227, 0.35141884922800964,
          -0.39795335826911965, 0.5902280450338377, -0.017515803642431837, -0.11128627813728359},
         {-0.07195110676355974, -0.002956838622133688}},
        1e-12);
  }
  {
    SCOPED_TRACE("heavy-ball momentum 0.8, weight decay 0.05, 3 iterations, match_rms_adamw");
    expect_near(
        MuonCase().train({.lr = 0.05,
                          .weight_decay = 0.05,
                          .momentum = 0.8,
                          .nesterov = false,
                          .ns_steps = 3,
                          .adjust_lr = optim::MuonLrAdjustment::match_rms_adamw,
                          .ns_dtype = f64},
                         4),
        {{0.2943215968133404, -0.2405149231239087, 0.4614522160975096, 0.1506261250620234,
          0.35966367514789144, -0.2792070299481243, -0.5481749006320449, 0.26969934670182305,
          0.07914077376845874, 0.2797784710114127, -0.3736527666242313, 0.40336123088163534},
         {0.18118574346833652, -0.0632560731912985, 0.23239085155975311, 0.3797133088339818,
          -0.4621103748551972, 0.5918234080422754, 0.05507494943294234, -0.16791917450253796},
         {-0.06396097670088163, -0.0015801447317389111}},
        1e-12);
  }
  {
    SCOPED_TRACE("OneCycleLR (rate and momentum cycled), spectral_unclamped, 5 steps");
    expect_near(
        MuonCase().train({.lr = 0.05,
                          .adjust_lr = optim::MuonLrAdjustment::spectral_unclamped,
                          .ns_dtype = f64,
                          .schedule = optim::Schedule::one_cycle(10)},
                         5),
        {{0.3033186955727511, -0.26309134679503865, 0.4039809261442277, 0.24334987717621392,
          0.3272762277964806, -0.2432095153472729, -0.48573800656169475, 0.3051688569507142,
          0.04848860786656515, 0.34337617023509626, -0.38438752954686717, 0.3360016231127024},
         {0.17241550360373314, -0.03844526021728858, 0.19777289479590465, 0.3713073571142241,
          -0.4370521264063507, 0.587828628647042, 0.033561714079784755, -0.14621447890708078},
         {-0.07594040314573959, 0.04615445163612308}},
        1e-12);
  }
}

// In bf16, as torch runs the iteration: Kiln rounds where torch's bf16 tensors round (addmm
// once), so it gives torch's weights to 1e-12 (they differ from the f64 iteration's by up to
// 1.2e-3 after these 4 steps; products and sums each rounded alone were 1.5e-3 off torch's).
TEST(Muon, MatchesTorchInBf16) {
  expect_near(
      MuonCase().train({.lr = 0.05}, 4),
      {{0.3018206675253105, -0.2855188512606578, 0.38530790256524977, 0.271300882889065,
        0.31395536221082365, -0.23656717306334374, -0.46971396610852156, 0.3175809257810793,
        0.03302626638250061, 0.36094522268064755, -0.382976053595761, 0.3099140637334825},
       {0.15117296076953124, 0.008562129588378911, 0.12949955768261714, 0.35187500200781247,
        -0.39729712127197264, 0.5904046318149718, -0.01808181373144531, -0.11119973664843752},
       {-0.07212791087173917, -0.0029579033052275078}},
      2e-4);
}

// Gradient accumulation gates Muon's buffer and weights: two micro-batches of the same data
// per step give the bits of one batch per step (the mean of two equal gradients is exact).
TEST(Muon, AccumulatesGradients) {
  const optim::MuonOptions options{.lr = 0.05};
  const auto once = MuonCase().train(options, 3);
  EXPECT_EQ(MuonCase().train(options, 3, 2), once);
  EXPECT_NE(MuonCase().train(options, 2), once);  // the steps count
}

TEST(Muon, RefusesWhatItCannotTrain) {
  {
    MuonCase c;
    expect_error<GraphError>([&] { optim::Muon().minimize(c.loss); },
                             {"Muon trains matrices only; b is [2]", "AdamW"});
  }
  expect_error<GraphError>([] { optim::Muon m({.momentum = 1}); },
                           {"Muon needs 0 <= momentum < 1", "got 1, 0.1 and 1e-07"});
  expect_error<GraphError>([] { optim::Muon m({.ns_steps = 0}); },
                           {"1 to 99 Newton-Schulz steps, got 0"});
  expect_error<GraphError>([] { optim::Muon m({.ns_dtype = i64}); },
                           {"Newton-Schulz dtype must be floating point, got i64"});
}

}  // namespace
}  // namespace kiln
