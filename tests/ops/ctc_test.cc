// ctc_loss beyond its op cases (tests/cases/loss_cases.cc: brute-force reference, finite
// differences, PyTorch's per-sequence losses): the reductions and the gradient of the mean
// against PyTorch 1.13's values, the unbatched form, infinite losses, and every error a user
// can hit, at build time and when the graph runs.
#include <cmath>

#include "test_util.h"

namespace kiln {
namespace {

using testing::expect_error;

constexpr int64_t kT = 7, kN = 3, kC = 4;

// x[t, n, c] = 2 sin(0.7 t + 1.3 n + 0.37 c): the inputs the PyTorch values were computed from.
Tensor ctc_logits() {
  std::vector<double> v;
  for (int64_t t = 0; t < kT; ++t)
    for (int64_t n = 0; n < kN; ++n)
      for (int64_t c = 0; c < kC; ++c)
        v.push_back(2 * std::sin(0.7 * static_cast<double>(t) + 1.3 * static_cast<double>(n) +
                                 0.37 * static_cast<double>(c)));
  return Tensor::from_vector<double>(v, {kT, kN, kC});
}

// PyTorch 1.13:
//   lp = F.log_softmax(x, -1); targets [[1, 2, 2], [3, 1, 0], [2, 0, 0]] (int32),
//   input_lengths [7, 5, 6], target_lengths [3, 2, 1] (int32);
//   F.ctc_loss(lp, targets, input_lengths, target_lengths, reduction=...) and the gradient of
//   the mean in x.
// Concatenated targets [1, 2, 2, 3, 1, 2] (PyTorch's 1-D form) give the same values.
class CtcTargets : public ::testing::TestWithParam<bool> {};

TEST_P(CtcTargets, ReductionsAndTheGradientOfTheMeanAreTorchs) {
  const bool concatenated = GetParam();
  Graph g;
  Value x = g.placeholder("x", f64, {kT, -1, kC});
  Value targets =
      g.constant(concatenated ? Tensor::from_vector<int32_t>({1, 2, 2, 3, 1, 2})
                              : Tensor::from_vector<int32_t>({1, 2, 2, 3, 1, 0, 2, 0, 0}, {3, 3}));
  Value input_lengths = g.constant(Tensor::from_vector<int32_t>({7, 5, 6}));
  Value target_lengths = g.constant(Tensor::from_vector<int32_t>({3, 2, 1}));
  Value lp = log_softmax(x, -1);
  const auto loss = [&](Reduction reduction) {
    return ctc_loss(lp, targets, input_lengths, target_lengths, 0, reduction);
  };
  Value mean_loss = loss(Reduction::mean);
  Value dx = gradients(mean_loss, {x})[0];
  Session s(g);
  const auto got =
      s.run({{x, ctc_logits()}}, {loss(Reduction::none), loss(Reduction::sum), mean_loss, dx});
  testing::expect_near({5.365237764688335, 3.3879940758870015, 5.200171606861046}, got[0], 1e-12,
                       1e-12, "none");
  EXPECT_NEAR(got[1].item<double>(), 13.953403447436383, 1e-12);
  // mean: (5.365 / 3 + 3.388 / 2 + 5.200 / 1) / 3
  EXPECT_NEAR(got[2].item<double>(), 2.894193744344664, 1e-12);
  const std::vector<double> torch_dx = {-0.009192354354534683,
                                        -0.07557499942963287,
                                        0.03314987211879641,
                                        0.051617481665371154,
                                        0.003011269285011323,
                                        0.05093085659096455,
                                        0.0414363933882805,
                                        -0.09537851926425636,
                                        -0.14757795048251318,
                                        0.0897491678858524,
                                        0.03609356053043328,
                                        0.02173522206622753,
                                        -0.00029831516065822826,
                                        -0.019028373061969424,
                                        -0.013465100887909458,
                                        0.03279178911053711,
                                        -0.016321901101390188,
                                        0.014238607095133355,
                                        0.027085948879315345,
                                        -0.02500265487305851,
                                        -0.13523060858928743,
                                        0.08377649985993406,
                                        0.01742507514149185,
                                        0.03402903358786151,
                                        -0.006600141252512113,
                                        0.02048453822155826,
                                        -0.029669360280460536,
                                        0.015784963311414386,
                                        -0.005876924261256847,
                                        -0.012088791468883397,
                                        0.02128320275524235,
                                        -0.0033174870251021053,
                                        -0.11199356279525642,
                                        0.07610362339791378,
                                        -0.0433142414649905,
                                        0.07920418086233312,
                                        -0.01879507377476358,
                                        0.030431494586052935,
                                        -0.01986678141590843,
                                        0.00823036060461907,
                                        -0.004226833903018391,
                                        -0.02965716023977066,
                                        0.02510954493828531,
                                        0.00877444920450374,
                                        -0.04716188754968522,
                                        0.055924010696896696,
                                        -0.15511453169022363,
                                        0.14635240854301215,
                                        -0.022760544744712962,
                                        0.029092401550331066,
                                        -0.014001745705914084,
                                        0.0076698889002959824,
                                        -0.03924359122377564,
                                        -0.04047765443733302,
                                        0.035369804545656885,
                                        0.04435144111545177,
                                        -0.010612714326387319,
                                        0.04294683748557751,
                                        -0.21209407402077188,
                                        0.17975995086158167,
                                        -0.019556859787742794,
                                        0.027551075801926766,
                                        -0.02226022768371,
                                        0.014266011669526027,
                                        0.0,
                                        0.0,
                                        0.0,
                                        0.0,
                                        -0.05298417605818569,
                                        0.04846242749127912,
                                        -0.1609419915459638,
                                        0.1654637401128704,
                                        -0.005054565501170136,
                                        0.02371763319405111,
                                        -0.05153483135149214,
                                        0.032871763658611164,
                                        0.0,
                                        0.0,
                                        0.0,
                                        0.0,
                                        0.0,
                                        0.0,
                                        0.0,
                                        0.0};
  testing::expect_near(torch_dx, got[3], 1e-12, 1e-12, "d mean / dx");
}

INSTANTIATE_TEST_SUITE_P(Ctc, CtcTargets, ::testing::Values(false, true),
                         [](const ::testing::TestParamInfo<bool>& info) {
                           return info.param ? "Concatenated" : "Padded";
                         });

// log_probs [T, C], targets [S] and scalar lengths are one sequence: the batched loss of it.
TEST(Ctc, UnbatchedIsOneSequence) {
  Graph g;
  Tensor x = ctc_logits();
  Value lp = log_softmax(g.constant(x), -1);
  Value first = reshape(slice(lp, {0, 0, 0}, {kT, 1, kC}), {kT, kC});
  Value targets = g.constant(Tensor::from_vector<int64_t>({1, 2, 2}));
  Value input_length = g.scalar(7, i64), target_length = g.scalar(3, i64);
  Session s(g);
  for (Reduction reduction : {Reduction::none, Reduction::sum, Reduction::mean}) {
    const Tensor got =
        s.run({}, {ctc_loss(first, targets, input_length, target_length, 0, reduction)})[0];
    EXPECT_EQ(got.shape(), Shape{}) << reduction_name(reduction);
    EXPECT_NEAR(got.item<double>(),
                reduction == Reduction::mean ? 5.365237764688335 / 3 : 5.365237764688335, 1e-12)
        << reduction_name(reduction);
  }
}

// Too few steps for the target (the repeated 2 needs a blank between): +inf and a NaN gradient
// over the sequence's steps, as PyTorch; with zero_infinity, 0 and a gradient of 0. The other
// sequence is unchanged either way.
TEST(Ctc, AnImpossibleAlignmentIsInfiniteOrZeroed) {
  Graph g;
  Value x = g.placeholder("x", f64, {kT, kN, kC});
  Value targets = g.constant(Tensor::from_vector<int64_t>({1, 2, 2, 3, 1, 0, 2, 2, 0}, {3, 3}));
  Value input_lengths = g.constant(Tensor::from_vector<int64_t>({3, 5, 2}));
  Value target_lengths = g.constant(Tensor::from_vector<int64_t>({3, 2, 2}));
  Value lp = log_softmax(x, -1);
  for (bool zero_infinity : {false, true}) {
    Value losses =
        ctc_loss(lp, targets, input_lengths, target_lengths, 0, Reduction::none, zero_infinity);
    Value dx = gradients(sum(slice(losses, {0}, {1})), {x})[0];
    Session s(g);
    const auto got = s.run({{x, ctc_logits()}}, {losses, dx});
    EXPECT_EQ(got[0].element(0), zero_infinity ? 0.0 : INFINITY);
    EXPECT_NEAR(got[0].element(1), 3.3879940758870015, 1e-12);
    EXPECT_EQ(got[0].element(2), zero_infinity ? 0.0 : INFINITY);
    for (int64_t t = 0; t < kT; ++t)
      for (int64_t c = 0; c < kC; ++c) {
        const double d = got[1].element((t * kN) * kC + c);
        if (zero_infinity || t >= 3)
          EXPECT_EQ(d, 0.0) << t << " " << c;
        else
          EXPECT_TRUE(std::isnan(d)) << t << " " << c;
      }
  }
}

// A class masked out (log probability -inf) where no path needs it leaves the loss finite and
// every gradient finite, 0 at the masked entry (PyTorch's is NaN there: it subtracts -inf from
// -inf).
TEST(Ctc, AMaskedClassGetsAZeroGradient) {
  Graph g;
  Value x = g.placeholder("x", f64, {kT, kN, kC});
  Value targets = g.constant(Tensor::from_vector<int64_t>({1, 2, 2, 3, 1, 0, 2, 0, 0}, {3, 3}));
  Value input_lengths = g.constant(Tensor::from_vector<int64_t>({7, 5, 6}));
  Value target_lengths = g.constant(Tensor::from_vector<int64_t>({3, 2, 1}));
  Value lp = log_softmax(x, -1);
  Value loss = ctc_loss(lp, targets, input_lengths, target_lengths, 0, Reduction::sum);
  const std::vector<Value> grads = gradients(loss, {x, lp});
  Tensor logits = ctc_logits();
  logits.data<double>()[2] = -INFINITY;  // step 0, sequence 0, class 2: the first label is 1
  const auto got = Session(g).run({{x, logits}}, {loss, grads[0], grads[1]});
  EXPECT_TRUE(std::isfinite(got[0].item<double>()));
  for (int i : {1, 2})
    for (int64_t e = 0; e < got[i].numel(); ++e)
      ASSERT_TRUE(std::isfinite(got[i].element(e))) << i << " " << e;
  EXPECT_EQ(got[2].element(2), 0.0);
}

TEST(Ctc, BadInputsNameTheSequenceAndTheValues) {
  Graph g;
  Value lp = g.placeholder("lp", f32, {5, 2, 4});
  Value targets = g.placeholder("targets", i64, {2, 3});
  Value lengths = g.placeholder("lengths", i64, {2});
  Value target_lengths = g.placeholder("target_lengths", i64, {2});
  expect_error<GraphError>(
      [&] {
        ctc_loss(reshape(lp, {5, 2, 2, 2}), targets, lengths, target_lengths);
      },
      {"[ctc_loss]", "log_probs must be [time, batch, classes], got [5, 2, 2, 2]"});
  expect_error<GraphError>(
      [&] {
        ctc_loss(lp, reshape(targets, {1, 2, 3}), lengths, target_lengths);
      },
      {"[ctc_loss]",
       "targets must be [batch, longest target] (padded) or [sum of target lengths] "
       "(concatenated), got [1, 2, 3]"});
  expect_error<GraphError>(
      [&] { ctc_loss(lp, targets, g.placeholder("three", i64, {3}), target_lengths); },
      {"[ctc_loss]", "batch sizes differ: log_probs [5, 2, 4], input_lengths [3]"});
  expect_error<GraphError>([&] { ctc_loss(lp, targets, lengths, target_lengths, 4); },
                           {"[ctc_loss]", "blank 4 is not a class of log_probs [5, 2, 4]"});
  expect_error<GraphError>([&] { ctc_loss(lp, targets, cast(lengths, f32), target_lengths); },
                           {"[ctc_loss]", "targets and lengths must be integers, got f32"});

  // Data errors, when the graph runs, on the CPU (the GPU reports the same through its
  // error block).
  Tensor x = Tensor::from_vector<float>(std::vector<float>(40, -1.0f), {5, 2, 4});
  const auto run = [&](std::vector<int64_t> t, std::vector<int64_t> in, std::vector<int64_t> tl) {
    Session s(g);
    s.run({{lp, x},
           {targets, Tensor::from_vector<int64_t>(t, {2, 3})},
           {lengths, Tensor::from_vector<int64_t>(in)},
           {target_lengths, Tensor::from_vector<int64_t>(tl)}},
          {ctc_loss(lp, targets, lengths, target_lengths, 0, Reduction::sum)});
  };
  EXPECT_NO_THROW(run({1, 2, 3, 3, 3, 9}, {5, 4}, {3, 2}));  // past the length is unread
  expect_error(
      [&] {
        run({1, 0, 3, 3, 3, 3}, {5, 4}, {3, 2});
      },
      {"[ctc_loss]", "label 0 at position 1 of sequence 0 is the blank"});
  expect_error(
      [&] {
        run({1, 2, 3, 3, 4, 0}, {5, 4}, {3, 2});
      },
      {"[ctc_loss]", "label 4 at position 1 of sequence 1 is outside [0, 4)"});
  expect_error(
      [&] {
        run({1, 2, 3, 3, 3, 3}, {5, 6}, {3, 2});
      },
      {"[ctc_loss]", "input length 6 of sequence 1 is outside [0, 5]"});
  expect_error(
      [&] {
        run({1, 2, 3, 3, 3, 3}, {-1, 4}, {3, 2});
      },
      {"[ctc_loss]", "input length -1 of sequence 0 is outside [0, 5]"});
  expect_error(
      [&] {
        run({1, 2, 3, 3, 3, 3}, {5, 4}, {4, 2});
      },
      {"[ctc_loss]", "target length 4 of sequence 0 is outside [0, 3]"});
  // Concatenated targets: each length is checked against the labels the sequences before it
  // leave, the lengths must sum to the labels there are (as PyTorch's), and labels are named by
  // their position in their sequence.
  Value joined = g.placeholder("joined", i64, {-1});
  const auto run_joined = [&](std::vector<int64_t> t, std::vector<int64_t> tl) {
    const auto count = static_cast<int64_t>(t.size());
    Session s(g);
    s.run({{lp, x},
           {joined, Tensor::from_vector<int64_t>(t, {count})},
           {lengths, Tensor::from_vector<int64_t>({5, 4})},
           {target_lengths, Tensor::from_vector<int64_t>(tl)}},
          {ctc_loss(lp, joined, lengths, target_lengths, 0, Reduction::sum)});
  };
  EXPECT_NO_THROW(run_joined({1, 2, 3, 3, 3}, {3, 2}));
  expect_error(
      [&] {
        run_joined({1, 2, 3, 3, 3, 1}, {3, 2});
      },
      {"[ctc_loss]",
       "the target lengths sum to 5, but the concatenated targets hold 6 "
       "labels (they must be equal)"});
  expect_error(
      [&] {
        run_joined({1, 2, 3, 3, 3}, {3, 3});
      },
      {"[ctc_loss]",
       "target length 3 of sequence 1 is outside [0, 2]: the 5 "
       "concatenated labels less the 3 of the sequences before it"});
  expect_error(
      [&] {
        run_joined({1, 2, 3, 3, 3}, {-1, 3});
      },
      {"[ctc_loss]", "target length -1 of sequence 0 is outside [0, 5]"});
  expect_error(
      [&] {
        run_joined({1, 2, 3, 3, 0}, {3, 2});
      },
      {"[ctc_loss]", "label 0 at position 1 of sequence 1 is the blank"});
  // The blank is checked against the classes known only when the graph runs.
  Value open = g.placeholder("open", f32, {5, 2, -1});
  Session s(g);
  expect_error(
      [&] {
        s.run({{open, x},
               {targets, Tensor::from_vector<int64_t>({1, 2, 3, 3, 3, 3}, {2, 3})},
               {lengths, Tensor::from_vector<int64_t>({5, 4})},
               {target_lengths, Tensor::from_vector<int64_t>({3, 2})}},
              {ctc_loss(open, targets, lengths, target_lengths, 7)});
      },
      {"[ctc_loss]", "blank 7 is not a class of log_probs [5, 2, 4]"});
}

// The gradient's own gradient exists in dloss, not in the log probabilities (as PyTorch).
TEST(Ctc, TheSecondDerivativeIsRefusedClearly) {
  Graph g;
  Value x = g.placeholder("x", f64, {kT, kN, kC});
  Value targets = g.constant(Tensor::from_vector<int64_t>({1, 2, 2, 3, 1, 0, 2, 0, 0}, {3, 3}));
  Value input_lengths = g.constant(Tensor::from_vector<int64_t>({7, 5, 6}));
  Value target_lengths = g.constant(Tensor::from_vector<int64_t>({3, 2, 1}));
  Value loss = ctc_loss(x, targets, input_lengths, target_lengths, 0, Reduction::sum);
  Value dx = gradients(loss, {x})[0];
  expect_error<GraphError>([&] { gradients(sum(dx * dx), {x}); },
                           {"[ctc_loss_grad]", "second derivative of ctc_loss", "not implemented"});
}

}  // namespace
}  // namespace kiln
