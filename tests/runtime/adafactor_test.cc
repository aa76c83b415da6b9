// Adafactor (torch.optim.Adafactor) against torch 2.15 (f64): vectors (the unfactored second
// moment) on the optimizer tests' toy problem, and a matrix and a batch of matrices (factored
// over their last two axes) with a vector beside them; to 1e-13.
#include <vector>

#include "optimizer_case.h"
#include "test_util.h"

namespace kiln {
namespace {

using testing::expect_error;
using testing::OptimizerCase;

TEST(Adafactor, VectorsMatchTorch) {
  OptimizerCase c;
  c.expect_same(c.kiln(optim::Adafactor({.lr = 0.5, .weight_decay = 0.05})),
                {1.0065127864413455, 0.3261755015902628, 0.5174609185813305});
  c.expect_same(c.kiln(optim::Adafactor({.lr = 0.3,
                                         .beta2_decay = -0.5,
                                         .eps1 = 1e-3,
                                         .eps2 = 0.1,
                                         .d = 1.2,
                                         .maximize = true}),
                       4),
                {-2.1177295502324016, -3.446526716659623, 4.401291916025391});
  // Under StepLR(2, 0.5): the schedule's rate caps the relative step.
  c.expect_same(
      c.kiln(optim::Adafactor({.lr = 0.8, .schedule = optim::Schedule::step_decay(2, 0.5)}), 5),
      {0.9844095021140462, 0.7661620862781661, -0.05645221853594238});
}

// W [3, 4], B [2, 3, 4] and v [3]; loss = sum((W - 0.3)^2 k) / 2 (k = 1 ... 12, so rows and
// columns differ) + sum(B^3) / 3 + sum(v^2). The slots of W are [3, 1] and [1, 4].
std::vector<std::vector<double>> train_matrices(const optim::AdafactorOptions& options, int steps) {
  Graph g;
  Value w = g.variable("W", {3, 4}, init::zeros(), f64);
  Value b = g.variable("B", {2, 3, 4}, init::zeros(), f64);
  Value v = g.variable("v", {3}, init::zeros(), f64);
  Value k =
      g.constant(Tensor::from_vector<double>({1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12}, {3, 4}));
  Value loss = sum(square(w - 0.3) * k) * 0.5 + sum(square(b) * b) / 3.0 + sum(square(v));
  Value train = optim::Adafactor(options).minimize(loss);
  EXPECT_EQ(g.value("W/adafactor_row_var").shape(), Shape({3, 1}));
  EXPECT_EQ(g.value("B/adafactor_col_var").shape(), Shape({2, 1, 4}));
  EXPECT_EQ(g.value("v/adafactor_variance").shape(), Shape({3}));
  Session s(g);
  s.set_variable(w,
                 Tensor::from_vector<double>(
                     {0.5, -1.0, 2.0, 0.25, 1.5, 0.0, -0.5, -2.0, 0.75, 1.25, -1.5, 0.1}, {3, 4}));
  s.set_variable(
      b, Tensor::from_vector<double>(
             {-0.8912073600614354, -0.8414709848078965,  -0.7833269096274835,  -0.7173560908995228,
              -0.6442176872376911, -0.5646424733950355,  -0.479425538604203,   -0.3894183423086505,
              -0.2955202066613396, -0.19866933079506127, -0.09983341664682824, 0.0,
              0.09983341664682824, 0.19866933079506116,  0.2955202066613396,   0.3894183423086504,
              0.479425538604203,   0.5646424733950355,   0.644217687237691,    0.7173560908995228,
              0.7833269096274833,  0.8414709848078965,   0.8912073600614354,   0.9320390859672264},
             {2, 3, 4}));
  s.set_variable(v, Tensor::from_vector<double>({0.5, -1.0, 2.0}));
  for (int i = 0; i < steps; ++i) s.run({}, {}, {train});
  return {s.variable_value(w).to_vector<double>(), s.variable_value(b).to_vector<double>(),
          s.variable_value(v).to_vector<double>()};
}

void expect_near(const std::vector<std::vector<double>>& got,
                 const std::vector<std::vector<double>>& torch) {
  ASSERT_EQ(got.size(), torch.size());
  for (size_t i = 0; i < got.size(); ++i) {
    ASSERT_EQ(got[i].size(), torch[i].size());
    for (size_t j = 0; j < got[i].size(); ++j)
      EXPECT_NEAR(got[i][j], torch[i][j], 1e-13) << "variable " << i << " element " << j;
  }
}

TEST(Adafactor, MatricesFactorAsTorch) {
  expect_near(
      train_matrices({.lr = 0.5, .weight_decay = 0.02}, 4),
      {{0.32520288401498926, 0.23631544010900724, 0.6281642043041079, 0.29053115381996153,
        0.37313473779229756, 0.2635181660297418, -0.016175576762592098, -0.3518610299169279,
        0.2959941003339363, 0.3043535571987072, -0.11531320394263768, 0.2632875207219495},
       {-2.5552336197965433,  -2.975897569834045,   -3.1568216704372687,  -3.278728124071084,
        -2.9773077025429435,  -2.9714228424007287,  -2.435083308605308,   -1.7705526721765004,
        -3.744648589967023,   -1.30547729533164,    -0.26515968955735836, 0.0,
        0.011201950320635853, 0.013374780811977781, 0.010604627173316814, -0.09030888259449388,
        0.05051208844306389,  0.06104870392512135,  0.07180875124541734,  0.08245375414211861,
        0.10613228000422553,  0.12790989548207687,  0.14989888966797538,  0.1713574305209204},
       {7.075686078474592e-05, -0.03090143239895803, 0.6273544200007997}});
  expect_near(
      train_matrices({.lr = 0.2, .beta2_decay = -0.6, .eps1 = 1e-2, .d = 1.5}, 3),
      {{0.4133379690905697, -0.24006138289508472, 1.297651014397446, 0.27860630729374536,
        0.8294010463349486, 0.1525012574494607, -0.27299589838992705, -1.1802169277255705,
        0.39844241134815606, 0.5921756531840313, -0.7946003163796669, 0.1934089084135862},
       {-1.2649885107506875,  -1.2377155935049242,  -1.197324877640995,  -1.1472753752485705,
        -1.1063285689525835,  -0.9795801936273778,  -0.8308136308877537, -0.6655192012908728,
        -0.9466667626653297,  -0.48134254498361373, -0.1653842826316865, 0.0,
        0.047016829381491855, 0.06461254484995825,  0.07802549489332368, 0.08997942659516833,
        0.2406271632793152,   0.28737480240210855,  0.33282195365949063, 0.37584126411603824,
        0.4501498767236084,   0.5105304519208714,   0.5646280335177701,  0.6115478602830319},
       {0.021951684782412408, -0.39683565049741343, 1.3570150362506748}});
}

TEST(Adafactor, RefusesBadOptions) {
  expect_error<GraphError>([] { optim::Adafactor a({.beta2_decay = 0.5}); },
                           {"Adafactor needs beta2_decay <= 0", "got beta2_decay 0.5"});
  expect_error<GraphError>([] { optim::Adafactor a({.d = 0.5}); }, {"d >= 1", "d 0.5"});
  OptimizerCase c;
  expect_error<GraphError>(
      [&] { c.kiln(optim::Adafactor({.schedule = optim::Schedule::one_cycle(10)})); },
      {"Adafactor has no momentum for the schedule to cycle"});
}

}  // namespace
}  // namespace kiln
