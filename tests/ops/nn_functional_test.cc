// The functions of ops/nn/functional.cc: forward against f64 formulas (PyTorch's definitions),
// gradients against finite differences, NaN, and their errors.
#include <cmath>

#include "autograd/gradcheck.h"
#include "special_values.h"
#include "test_util.h"

namespace kiln {
namespace {

using testing::check_gradients;
using testing::expect_error;
using testing::kInf;
using testing::kNaN;
using testing::r64;

// Elementwise f(x) of a random x against `want` element by element.
void expect_elementwise(const std::function<Value(const Value&)>& f,
                        const std::function<double(double)>& want, const std::string& what) {
  Graph g;
  Tensor in = r64({40}, -3, 3, 5);
  Value x = g.placeholder("x", f64, {40});
  const auto got = testing::run1(g, f(x), {{x, in}}).to_vector<double>();
  for (int64_t i = 0; i < 40; ++i)
    EXPECT_NEAR(got[i], want(in.element(i)), 1e-12) << what << " at " << in.element(i);
  check_gradients([&](Graph&, const std::vector<Value>& v) { return f(v[0]); }, {in}, what);
}

TEST(NnFunctional, ActivationsMatchTheirDefinitions) {
  expect_elementwise([](const Value& x) { return leaky_relu(x, 0.1); },
                     [](double x) { return x >= 0 ? x : 0.1 * x; }, "leaky_relu");
  expect_elementwise([](const Value& x) { return clamp(x, -1, 2); },
                     [](double x) { return std::min(std::max(x, -1.0), 2.0); }, "clamp");
  Graph g;
  Value x = g.constant(Tensor::from_vector<float>({std::nanf(""), -INFINITY, INFINITY}));
  const auto leaky = testing::run1(g, leaky_relu(x)).to_vector<float>();
  EXPECT_TRUE(std::isnan(leaky[0]));
  EXPECT_EQ(leaky[1], -INFINITY);
  EXPECT_EQ(leaky[2], INFINITY);
  const auto clamped = testing::run1(g, clamp(x, -1, 1)).to_vector<float>();
  EXPECT_TRUE(std::isnan(clamped[0]));  // as torch.clamp
  EXPECT_EQ(clamped[1], -1);
  EXPECT_EQ(clamped[2], 1);
  expect_error<GraphError>([&] { clamp(x, 2, 1); }, {"[clamp]", "low 2 is above high 1"});
}

// The activations PyTorch has beyond the table's ops: forward against their f64 definitions,
// gradients against finite differences, and PyTorch's answers at NaN and +-inf (printed by
// torch 1.13: hardswish(-inf), mish(-inf) and softsign(+-inf) are NaN there too).
TEST(NnFunctional, MoreActivationsMatchPyTorchsDefinitions) {
  const double alpha = 1.6732632423543772, scale = 1.0507009873554805;
  auto hardsigmoid_of = [](double x) { return std::min(std::max(x / 6 + 0.5, 0.0), 1.0); };
  auto softplus_of = [](double x) { return std::max(x, 0.0) + std::log1p(std::exp(-std::abs(x))); };
  struct Case {
    const char* name;
    std::function<Value(const Value&)> f;
    std::function<double(double)> want;
    double at_pos_inf, at_neg_inf;
  };
  const std::vector<Case> cases = {
      {"elu", [](const Value& x) { return elu(x, 0.7); },
       [](double x) { return x > 0 ? x : 0.7 * std::expm1(x); }, kInf, -0.7},
      {"selu", [](const Value& x) { return selu(x); },
       [&](double x) { return scale * (x > 0 ? x : alpha * std::expm1(x)); }, kInf, -scale * alpha},
      {"celu", [](const Value& x) { return celu(x, 0.5); },
       [](double x) { return x > 0 ? x : 0.5 * std::expm1(x / 0.5); }, kInf, -0.5},
      {"hardtanh", [](const Value& x) { return hardtanh(x, -1.5, 2); },
       [](double x) { return std::min(std::max(x, -1.5), 2.0); }, 2, -1.5},
      {"relu6", [](const Value& x) { return relu6(x * 3.0); },
       [](double x) { return std::min(std::max(3 * x, 0.0), 6.0); }, 6, 0},
      {"hardsigmoid", [](const Value& x) { return hardsigmoid(x * 2.0); },
       [&](double x) { return hardsigmoid_of(2 * x); }, 1, 0},
      {"hardswish", [](const Value& x) { return hardswish(x * 2.0); },
       [&](double x) { return 2 * x * hardsigmoid_of(2 * x); }, kInf, kNaN},
      {"mish", [](const Value& x) { return mish(x); },
       [&](double x) { return x * std::tanh(softplus_of(x)); }, kInf, kNaN},
      {"logsigmoid", [](const Value& x) { return logsigmoid(x); },
       [&](double x) { return -softplus_of(-x); }, 0, -kInf},
      {"softsign", [](const Value& x) { return softsign(x); },
       [](double x) { return x / (1 + std::abs(x)); }, kNaN, kNaN},
  };
  for (const Case& c : cases) {
    expect_elementwise(c.f, c.want, c.name);
    Graph g;
    Value x = g.constant(Tensor::from_vector<float>({std::nanf(""), INFINITY, -INFINITY}));
    const auto got = testing::run1(g, c.f(x)).to_vector<float>();
    EXPECT_TRUE(std::isnan(got[0])) << c.name << "(NaN) = " << got[0];
    for (int k : {1, 2}) {
      const double want = k == 1 ? c.at_pos_inf : c.at_neg_inf;
      if (std::isnan(want))
        EXPECT_TRUE(std::isnan(got[k])) << c.name << " at " << (k == 1 ? "+inf" : "-inf");
      else
        EXPECT_FLOAT_EQ(got[k], want) << c.name << " at " << (k == 1 ? "+inf" : "-inf");
    }
  }
  // ELU and CELU's exponential reads min(x, 0): no inf * 0 in the gradient at large x.
  Graph g;
  Value big = g.placeholder("big", f32, {2});
  const Value grad = gradients(sum(elu(big) + celu(big, 0.1)), {big})[0];
  const std::vector<float> got =
      testing::run1(g, grad, {{big, Tensor::from_vector<float>({100, -1})}}).to_vector<float>();
  EXPECT_EQ(got[0], 2);
  EXPECT_NEAR(got[1], std::exp(-1.0) + std::exp(-10.0), 1e-7);  // e^x + e^(x / 0.1)
  expect_error<GraphError>([&] { celu(big, 0); }, {"[celu]", "alpha must not be 0"});
}

// prelu: one slope, or one per channel (axis 1) of [N, C], [N, C, L] and [N, C, H, W]; the
// slope's gradient sums x dy over x < 0; PReLU's weight starts at init; bad weights are errors.
TEST(NnFunctional, PreluLearnsASlopePerChannel) {
  for (const Shape& shape : {Shape{4, 3}, Shape{2, 3, 5}, Shape{2, 3, 2, 3}}) {
    const Tensor in = r64(shape, -3, 3, 7);
    const Tensor slopes = Tensor::from_vector<double>({0.1, -0.5, 2.0});
    Graph g;
    Value x = g.placeholder("x", f64, shape), w = g.placeholder("w", f64, {3});
    const auto got = testing::run1(g, prelu(x, w), {{x, in}, {w, slopes}}).to_vector<double>();
    const int64_t inner = in.numel() / (shape[0] * 3);
    for (int64_t i = 0; i < in.numel(); ++i) {
      const double v = in.element(i), slope = slopes.element(i / inner % 3);
      EXPECT_DOUBLE_EQ(got[i], v >= 0 ? v : slope * v) << shape << " at " << i;
    }
    check_gradients([](Graph&, const std::vector<Value>& v) { return prelu(v[0], v[1]); },
                    {in, slopes}, str("prelu ", shape));
    check_gradients([](Graph&, const std::vector<Value>& v) { return prelu(v[0], v[1]); },
                    {in, Tensor::from_vector<double>({0.3})}, str("prelu shared ", shape));
  }
  Graph g;
  Value x = g.placeholder("x", f32, {2, 4, 5});
  nn::PReLU shared(g, "shared"), channels(g, "channels", 4, 0.1);
  Session s(g);
  EXPECT_EQ(s.variable_value(shared.weight).to_vector<float>(), std::vector<float>({0.25f}));
  EXPECT_EQ(s.variable_value(channels.weight).to_vector<float>(), std::vector<float>(4, 0.1f));
  EXPECT_EQ(channels(x).shape(), x.shape());
  expect_error<GraphError>([&] { prelu(x, g.placeholder("w3", f32, {3})); },
                           {"[prelu]", "weight must be [1] or [4]", "got [3]", "[2, 4, 5]"});
  expect_error<GraphError>([&] { nn::PReLU(g, "none", 0); },
                           {"[nn] PReLU none", "num_parameters 0"});
}

// interpolate (tests/parity compares every mode with F.interpolate): an unknown batch gives the
// known batch's results on both paths (nearest by a whole factor is a broadcast, no product;
// others are products), f64 and bf16 agree with f32, and bad arguments are errors.
TEST(NnFunctional, InterpolateRunsAtAnyBatchInEveryFloatType) {
  const Tensor x2 = testing::random_tensor(f32, {2, 3, 5, 4}, -2, 2, 31);
  const std::vector<InterpolateOptions> options = {
      {.scale_factor = {2}},
      {.size = {7, 9}, .mode = InterpolateMode::linear},
      {.size = {3, 6}, .mode = InterpolateMode::cubic, .align_corners = true}};
  for (size_t k = 0; k < options.size(); ++k) {
    Graph g;
    Value known = g.placeholder("known", f32, {2, 3, 5, 4});
    Value unknown = g.placeholder("unknown", f32, {-1, 3, 5, 4});
    const Value wide = cast(known, f64), half = cast(known, bf16);
    const Value y = interpolate(known, options[k]);
    int64_t products = 0;
    for (int32_t id = 0; id < g.num_nodes(); ++id) products += g.node(id).op_name() == "matmul";
    EXPECT_EQ(products, k == 0 ? 0 : 2) << k;
    const std::vector<Value> ys = {y, interpolate(unknown, options[k]),
                                   interpolate(wide, options[k]),
                                   cast(interpolate(half, options[k]), f32)};
    EXPECT_EQ(ys[1].shape()[0], -1);
    Session s(g);
    const auto got = s.run({{known, x2}, {unknown, x2}}, ys);
    const std::vector<double> want = testing::values(got[0]);
    EXPECT_EQ(testing::values(got[1]), want) << k;
    testing::expect_near(want, got[2], 1e-6, 1e-6, str("f64 ", k));
    testing::expect_near(want, got[3], 3e-2, 3e-2, str("bf16 ", k));
    const Tensor one = testing::random_tensor(f32, {1, 3, 5, 4}, -2, 2, 32);
    EXPECT_EQ(s.run({{unknown, one}}, {ys[1]})[0].shape()[0], 1);
  }
  // An audio-sized dim (16,000 -> 32,000: a dense weight matrix would hold 512M entries) gathers
  // its two taps instead: a ramp's linear interpolation with align_corners is the ramp again.
  {
    Graph g;
    Value x = g.placeholder("x", f64, {-1, 1, 16000});
    Value y =
        interpolate(x, {.size = {32000}, .mode = InterpolateMode::linear, .align_corners = true});
    std::vector<double> ramp(16000);
    for (size_t j = 0; j < ramp.size(); ++j) ramp[j] = static_cast<double>(j);
    const std::vector<double> got =
        testing::values(testing::run1(g, y, {{x, Tensor::from_vector(ramp, {1, 1, 16000})}}));
    ASSERT_EQ(got.size(), 32000u);
    double worst = 0;
    for (size_t i = 0; i < got.size(); ++i)
      worst = std::max(worst, std::abs(got[i] - static_cast<double>(i) * 15999 / 31999));
    EXPECT_LT(worst, 1e-9);
  }
  Graph g;
  Value x = g.placeholder("x", f32, {2, 3, 5, 4});
  expect_error<GraphError>(
      [&] {
        interpolate(g.placeholder("flat", f32, {2, 3}), {.size = {4}});
      },
      {"[interpolate]", "[N, C, L], [N, C, H, W] or [N, C, D, H, W]", "[2, 3]"});
  expect_error<GraphError>(
      [&] {
        interpolate(g.placeholder("ids", i64, {2, 3, 4}), {.size = {4}});
      },
      {"[interpolate]", "must be floating", "i64"});
  expect_error<GraphError>(
      [&] {
        interpolate(g.placeholder("open", f32, {2, 3, -1, 4}), {.size = {4}});
      },
      {"[interpolate]", "every dim but the batch must be known", "[2, 3, ?, 4]"});
  expect_error<GraphError>([&] { interpolate(x, {}); },
                           {"give either size or scale_factor, not neither"});
  expect_error<GraphError>([&] { interpolate(x, {.size = {4}, .scale_factor = {2}}); },
                           {"not both"});
  expect_error<GraphError>(
      [&] {
        interpolate(x, {.size = {4, 4, 4}});
      },
      {"size needs 1 or 2 values", "[2, 3, 5, 4]"});
  expect_error<GraphError>([&] { interpolate(x, {.scale_factor = {0}}); },
                           {"scale_factor 0 must be positive"});
  expect_error<GraphError>([&] { interpolate(x, {.scale_factor = {0.1}}); },
                           {"output size 0 along dim 2"});
  expect_error<GraphError>([&] { interpolate(x, {.size = {4}, .align_corners = true}); },
                           {"align_corners is for linear and cubic, not nearest"});
  expect_error<GraphError>(
      [&] {
        interpolate(x, {.size = {4}, .mode = InterpolateMode::nearest_exact, .antialias = true});
      },
      {"antialias is for linear and cubic, not nearest_exact"});
}

// Antialiased shrinking averages what the stretched filter covers: halving a ramp with the
// linear filter weighs inputs 2i - 1 .. 2i + 2 by 1/8, 3/8, 3/8, 1/8, so inside it gives
// 2i + 1/2, and at the edge the cut window is renormalized; a constant stays constant in every
// mode and dim (PyTorch's own values: torch_layer_parity's table).
TEST(NnFunctional, AntialiasedShrinkingAveragesTheStretchedFilter) {
  Graph g;
  Value ramp = g.placeholder("ramp", f64, {1, 1, 12});
  std::vector<double> values(12);
  for (size_t j = 0; j < values.size(); ++j) values[j] = static_cast<double>(j);
  const Value halved =
      interpolate(ramp, {.size = {6}, .mode = InterpolateMode::linear, .antialias = true});
  const std::vector<double> got =
      testing::values(testing::run1(g, halved, {{ramp, Tensor::from_vector(values, {1, 1, 12})}}));
  ASSERT_EQ(got.size(), 6u);
  EXPECT_NEAR(got[0], (0 * 0.75 + 1 * 0.75 + 2 * 0.25) / 1.75, 1e-12);
  for (int i = 1; i < 5; ++i) EXPECT_NEAR(got[static_cast<size_t>(i)], 2 * i + 0.5, 1e-12) << i;
  // Without antialias two inputs are sampled (of squares: their mean), not four averaged.
  std::vector<double> squares(12);
  for (size_t j = 0; j < squares.size(); ++j) squares[j] = static_cast<double>(j * j);
  const Value plain = interpolate(ramp, {.size = {6}, .mode = InterpolateMode::linear});
  const Tensor squared = Tensor::from_vector(squares, {1, 1, 12});
  EXPECT_NEAR(testing::values(testing::run1(g, plain, {{ramp, squared}}))[1], (4.0 + 9.0) / 2,
              1e-12);
  EXPECT_NEAR(testing::values(testing::run1(g, halved, {{ramp, squared}}))[1],
              (1.0 + 3 * 4.0 + 3 * 9.0 + 16.0) / 8, 1e-12);
  for (InterpolateMode mode : {InterpolateMode::linear, InterpolateMode::cubic}) {
    Graph h;
    Value image = h.constant(Tensor::full(f64, {1, 2, 9, 7, 5}, 3.25));
    const Value y = interpolate(image, {.size = {4, 3, 8}, .mode = mode, .antialias = true});
    for (double v : testing::values(testing::run1(h, y))) EXPECT_NEAR(v, 3.25, 1e-12);
  }
}

TEST(NnFunctional, LossesMatchTheirDefinitions) {
  Tensor a = r64({6, 5}, -3, 3, 1), b = r64({6, 5}, -3, 3, 2), t = r64({6, 5}, 0, 1, 3);
  double mse = 0, huber = 0;
  std::vector<double> bce;
  for (int64_t i = 0; i < 30; ++i) {
    const double d = a.element(i) - b.element(i), ad = std::abs(d);
    mse += d * d / 30;
    huber += (ad < 1.5 ? 0.5 * d * d : 1.5 * (ad - 0.75)) / 30;
    const double s = 1 / (1 + std::exp(-a.element(i)));
    bce.push_back(-(t.element(i) * std::log(s) + (1 - t.element(i)) * std::log(1 - s)));
  }
  Graph g;
  Value va = g.placeholder("a", f64, {6, 5}), vb = g.placeholder("b", f64, {6, 5});
  Value vt = g.placeholder("t", f64, {6, 5});
  FeedList feeds = {{va, a}, {vb, b}, {vt, t}};
  EXPECT_NEAR(testing::run1(g, mse_loss(va, vb), feeds).item<double>(), mse, 1e-12);
  EXPECT_NEAR(testing::run1(g, huber_loss(va, vb, 1.5), feeds).item<double>(), huber, 1e-12);
  testing::expect_near(bce, testing::run1(g, binary_cross_entropy_with_logits(va, vt), feeds),
                       1e-12, 1e-12, "bce");
  // Stable where the naive form is not: a logit of 800 with target 0 costs 800, not inf.
  Value big = g.constant(Tensor::from_vector<double>({800, -800}));
  Value zero = g.constant(Tensor::from_vector<double>({0, 0}));
  EXPECT_EQ(testing::run1(g, binary_cross_entropy_with_logits(big, zero)).to_vector<double>(),
            (std::vector<double>{800, 0}));
  check_gradients([](Graph&, const std::vector<Value>& v) { return mse_loss(v[0], v[1]); }, {a, b},
                  "mse");
  // L1, smooth L1, KL divergence (probabilities and log probabilities, zeros in the target) and
  // cosine similarity against their definitions, and their gradients.
  double l1 = 0, smooth = 0;
  std::vector<double> kl, kl_log, cosine(6, 0.0), norms_a(6, 0.0), norms_b(6, 0.0);
  for (int64_t i = 0; i < 30; ++i) {
    const double d = std::abs(a.element(i) - b.element(i));
    l1 += d / 30;
    smooth += (d < 0.5 ? 0.5 * d * d / 0.5 : d - 0.25) / 30;
    const double target = i % 7 == 0 ? 0.0 : t.element(i);
    kl.push_back(target == 0 ? 0.0 : target * (std::log(target) - a.element(i)));
    kl_log.push_back(std::exp(b.element(i)) * (b.element(i) - a.element(i)));
    cosine[i / 5] += a.element(i) * b.element(i);
    norms_a[i / 5] += a.element(i) * a.element(i);
    norms_b[i / 5] += b.element(i) * b.element(i);
  }
  for (int64_t r = 0; r < 6; ++r) cosine[r] /= std::sqrt(norms_a[r] * norms_b[r]);
  std::vector<double> with_zeros = testing::values(t);
  for (size_t i = 0; i < with_zeros.size(); i += 7) with_zeros[i] = 0;
  const Tensor tz = Tensor::from_vector<double>(with_zeros, {6, 5});
  Value vz = g.placeholder("tz", f64, {6, 5});
  feeds.push_back({vz, tz});
  EXPECT_NEAR(testing::run1(g, l1_loss(va, vb), feeds).item<double>(), l1, 1e-12);
  EXPECT_NEAR(testing::run1(g, smooth_l1_loss(va, vb, 0.5), feeds).item<double>(), smooth, 1e-12);
  EXPECT_NEAR(testing::run1(g, smooth_l1_loss(va, vb, 0), feeds).item<double>(), l1, 1e-12);
  testing::expect_near(kl, testing::run1(g, kl_div(va, vz), feeds), 1e-12, 1e-12, "kl_div");
  testing::expect_near(kl_log, testing::run1(g, kl_div(va, vb, true), feeds), 1e-12, 1e-12,
                       "kl_div log target");
  testing::expect_near(cosine, testing::run1(g, cosine_similarity(va, vb), feeds), 1e-12, 1e-12,
                       "cosine_similarity");
  check_gradients([](Graph&, const std::vector<Value>& v) { return l1_loss(v[0], v[1]); }, {a, b},
                  "l1");
  check_gradients(
      [](Graph&, const std::vector<Value>& v) { return smooth_l1_loss(v[0], v[1], 0.5); }, {a, b},
      "smooth l1");
  // In the target where it is positive (at 0, t log t has no derivative); in log_input everywhere.
  check_gradients([](Graph&, const std::vector<Value>& v) { return kl_div(v[0], v[1]); }, {a, t},
                  "kl_div");
  check_gradients(
      [&](Graph& graph, const std::vector<Value>& v) { return kl_div(v[0], graph.constant(tz)); },
      {a}, "kl_div with zeros in the target");
  check_gradients([](Graph&, const std::vector<Value>& v) { return kl_div(v[0], v[1], true); },
                  {a, b}, "kl_div log target");
  check_gradients(
      [](Graph&, const std::vector<Value>& v) { return cosine_similarity(v[0], v[1], 1); }, {a, b},
      "cosine_similarity");
  // A zero vector: cosine 0 and a finite gradient (PyTorch's eps clamp).
  Value zero_row = g.constant(Tensor::from_vector<double>({0, 0, 0}, {1, 3}));
  Value some_row = g.placeholder("row", f64, {1, 3});
  const std::vector<Value> at_zero = {
      cosine_similarity(zero_row, some_row),
      gradients(sum(cosine_similarity(some_row * 0.0, some_row)), {some_row})[0]};
  Session s(g);
  const auto zero_got =
      s.run({{some_row, Tensor::from_vector<double>({1, 2, 3}, {1, 3})}}, at_zero);
  EXPECT_EQ(zero_got[0].item<double>(), 0);
  for (double v : testing::values(zero_got[1])) EXPECT_TRUE(std::isfinite(v));
  expect_error<GraphError>([&] { smooth_l1_loss(va, vb, -1); }, {"[smooth_l1_loss]", "beta -1"});
  expect_error<GraphError>([&] { cosine_similarity(va, vb, 1, 0); },
                           {"[cosine_similarity]", "eps 0 must be positive"});
  check_gradients([](Graph&, const std::vector<Value>& v) { return huber_loss(v[0], v[1], 1.5); },
                  {a, b}, "huber");
  check_gradients(
      [](Graph&, const std::vector<Value>& v) {
        return binary_cross_entropy_with_logits(v[0], v[1]);
      },
      {a, t}, "bce with logits");
  expect_error<GraphError>([&] { huber_loss(va, vb, 0); }, {"[huber_loss]", "delta 0"});
}

TEST(NnFunctional, NllLossWeighsAndIgnoresOverTrailingDims) {
  // log_probs [N=2, C=3, L=4]; labels [2, 4] with two ignored (-1) and class weights.
  Tensor x = testing::random_tensor(f64, {2, 3, 4}, -3, 0, 21);
  const std::vector<int64_t> y = {2, 0, -1, 1, 1, 1, 2, -1};
  const std::vector<double> w = {0.5, 2.0, 1.5};
  double weighted = 0, weights = 0, plain = 0, counted = 0;
  for (int64_t n = 0; n < 2; ++n)
    for (int64_t l = 0; l < 4; ++l) {
      const int64_t label = y[n * 4 + l];
      if (label < 0) continue;
      const double picked = x.element((n * 3 + label) * 4 + l);
      weighted -= w[label] * picked;
      weights += w[label];
      plain -= picked;
      counted += 1;
    }
  Graph g;
  Value vx = g.placeholder("x", f64, {-1, 3, 4});
  Value vy = g.constant(Tensor::from_vector<int64_t>(y, {2, 4}));
  Value vw = g.constant(Tensor::from_vector<double>(w));
  EXPECT_NEAR(testing::run1(g, nll_loss(vx, vy, -1), {{vx, x}}).item<double>(), plain / counted,
              1e-12);
  EXPECT_NEAR(testing::run1(g, nll_loss(vx, vy, -1, vw), {{vx, x}}).item<double>(),
              weighted / weights, 1e-12);
  check_gradients(
      [&](Graph& graph, const std::vector<Value>& v) {
        return nll_loss(v[0], graph.constant(Tensor::from_vector<int64_t>(y, {2, 4})), -1,
                        graph.constant(Tensor::from_vector<double>(w)));
      },
      {x}, "nll_loss");
  // With log_softmax over the class dim it is cross_entropy (one trailing dim of 1 here).
  Tensor z = testing::random_tensor(f64, {5, 4}, -3, 3, 22);
  Value vz = g.constant(z);
  Value labels = g.constant(Tensor::from_vector<int64_t>({3, 0, -100, 2, 1}));
  Session s(g);
  const auto both = s.run({}, {nll_loss(log_softmax(vz, 1), labels), cross_entropy(vz, labels)});
  EXPECT_NEAR(both[0].item<double>(), both[1].item<double>(), 1e-12);
  // Labels: out of range (not ignored) fails when run, naming the value; shapes when built.
  Value bad = g.constant(Tensor::from_vector<int64_t>({3, 0, 4, 2, 1}));
  expect_error<Error>([&] { testing::run1(g, nll_loss(vz, bad)); },
                      {"[take_along_axis] nll_loss/", "index 4", "out of range [0, 4)"});
  Value negative = g.constant(Tensor::from_vector<int64_t>({3, 0, -2, 2, 1}));
  expect_error<Error>([&] { testing::run1(g, nll_loss(vz, negative)); }, {"index -2"});
  expect_error<GraphError>(
      [&] {
        nll_loss(vz, g.constant(Tensor::from_vector<int64_t>({1, 2})));
      },
      {"[nll_loss]", "do not match"});
  expect_error<GraphError>([&] { nll_loss(vz, vz); }, {"[nll_loss]", "labels must be i32 or i64"});
  expect_error<GraphError>([&] { nll_loss(vz, labels, -100, vw); }, {"[nll_loss] weight [3]"});
}

// Per-pixel cross entropy ([N, C, L] logits), with and without class weights and label
// smoothing, against PyTorch's formula in f64.
TEST(NnFunctional, CrossEntropyPerPixelWithClassWeightsAndSmoothing) {
  constexpr int64_t kN = 2, kC = 3, kL = 4;
  const Tensor z = testing::random_tensor(f64, {kN, kC, kL}, -3, 3, 51);
  const std::vector<int64_t> y = {2, 0, -1, 1, 1, 1, 2, -1};
  const std::vector<double> w = {0.5, 2.0, 1.5};
  auto expected = [&](bool weighted, double e) {
    double loss = 0, total = 0;
    for (int64_t n = 0; n < kN; ++n)
      for (int64_t l = 0; l < kL; ++l) {
        const int64_t label = y[n * kL + l];
        if (label < 0) continue;
        double lse = 0;
        for (int64_t c = 0; c < kC; ++c) lse += std::exp(z.element((n * kC + c) * kL + l));
        lse = std::log(lse);
        auto nll = [&](int64_t c) { return lse - z.element((n * kC + c) * kL + l); };
        const double wy = weighted ? w[label] : 1.0;
        double smooth = 0;
        for (int64_t c = 0; c < kC; ++c) smooth += (weighted ? w[c] : 1.0) * nll(c);
        loss += (1 - e) * wy * nll(label) + e / kC * smooth;
        total += wy;
      }
    return loss / total;
  };
  Graph g;
  Value logits = g.placeholder("z", f64, {-1, kC, kL});
  Value labels = g.constant(Tensor::from_vector<int64_t>(y, {kN, kL}));
  Value weight = g.constant(Tensor::from_vector<double>(w));
  Session s(g);
  const auto got = s.run({{logits, z}},
                         {cross_entropy(logits, labels, -1), cross_entropy(logits, labels, -1, 0.2),
                          cross_entropy(logits, labels, -1, 0, weight),
                          cross_entropy(logits, labels, -1, 0.2, weight)});
  EXPECT_NEAR(got[0].item<double>(), expected(false, 0), 1e-12);
  EXPECT_NEAR(got[1].item<double>(), expected(false, 0.2), 1e-12);
  EXPECT_NEAR(got[2].item<double>(), expected(true, 0), 1e-12);
  EXPECT_NEAR(got[3].item<double>(), expected(true, 0.2), 1e-12);
  for (bool weighted : {false, true})
    check_gradients(
        [&](Graph& graph, const std::vector<Value>& v) {
          return cross_entropy(v[0], graph.constant(Tensor::from_vector<int64_t>(y, {kN, kL})), -1,
                               0.2,
                               weighted ? graph.constant(Tensor::from_vector<double>(w)) : Value());
        },
        {z}, weighted ? "weighted cross entropy" : "per-pixel cross entropy");
  expect_error<GraphError>([&] { cross_entropy(logits, labels, -1, 1.5, weight); },
                           {"[cross_entropy] label_smoothing 1.5"});
  expect_error<GraphError>([&] { cross_entropy(logits, g.constant(Tensor::zeros(i64, {2}))); },
                           {"[cross_entropy] labels [2]", "without its class dim 1"});
}

TEST(NnFunctional, BinaryCrossEntropyOnProbabilitiesAndWithPosWeight) {
  Tensor p = r64({3, 4}, 0.02, 0.98, 31), t = r64({3, 4}, 0, 1, 32), x = r64({3, 4}, -4, 4, 33);
  Tensor pw = r64({4}, 0.5, 3, 34);
  std::vector<double> bce, weighted;
  for (int64_t i = 0; i < 12; ++i) {
    const double pi = p.element(i), ti = t.element(i), xi = x.element(i),
                 s = 1 / (1 + std::exp(-xi));
    bce.push_back(-(ti * std::log(pi) + (1 - ti) * std::log(1 - pi)));
    weighted.push_back(-(pw.element(i % 4) * ti * std::log(s) + (1 - ti) * std::log(1 - s)));
  }
  Graph g;
  Value vp = g.placeholder("p", f64, {3, 4}), vt = g.placeholder("t", f64, {3, 4});
  Value vx = g.placeholder("x", f64, {3, 4}), vw = g.placeholder("w", f64, {4});
  FeedList feeds = {{vp, p}, {vt, t}, {vx, x}, {vw, pw}};
  testing::expect_near(bce, testing::run1(g, binary_cross_entropy(vp, vt), feeds), 1e-12, 1e-12,
                       "bce");
  testing::expect_near(weighted,
                       testing::run1(g, binary_cross_entropy_with_logits(vx, vt, vw), feeds), 1e-12,
                       1e-12, "bce with logits and pos_weight");
  check_gradients(
      [](Graph&, const std::vector<Value>& v) { return binary_cross_entropy(v[0], v[1]); }, {p, t},
      "bce");
  check_gradients(
      [](Graph&, const std::vector<Value>& v) {
        return binary_cross_entropy_with_logits(v[0], v[1], v[2]);
      },
      {x, t, pw}, "bce with logits and pos_weight");
  // Probabilities of exactly 0 and 1: each log clamps at -100 (PyTorch's), gradients finite.
  Value edge = g.placeholder("edge", f64, {4});
  Value target = g.constant(Tensor::from_vector<double>({1, 0, 0, 1}));
  Session s(g);
  const auto got = s.run({{edge, Tensor::from_vector<double>({0, 1, 0, 1})}},
                         {binary_cross_entropy(edge, target),
                          gradients(sum(binary_cross_entropy(edge, target)), {edge})[0]});
  EXPECT_EQ(got[0].to_vector<double>(), (std::vector<double>{100, 100, 0, 0}));
  for (double v : testing::values(got[1])) EXPECT_TRUE(std::isfinite(v)) << v;
}

TEST(NnFunctional, SqueezeAndStack) {
  Graph g;
  Value x = g.placeholder("x", f32, {1, 3, 1, 2});
  EXPECT_EQ(squeeze(x).shape(), Shape({3, 2}));
  EXPECT_EQ(squeeze(x, {-2}).shape(), Shape({1, 3, 2}));
  expect_error<GraphError>([&] { squeeze(x, {1}); }, {"[squeeze]", "dim 1", "is not 1"});
  expect_error<GraphError>([&] { squeeze(x, {4}); }, {"[squeeze]", "axis 4"});
  Value a = g.constant(Tensor::from_vector<float>({1, 2, 3}));
  Value b = g.constant(Tensor::from_vector<float>({4, 5, 6}));
  Value rows = stack({a, b}), cols = stack({a, b}, -1);
  EXPECT_EQ(rows.shape(), Shape({2, 3}));
  EXPECT_EQ(cols.shape(), Shape({3, 2}));
  EXPECT_EQ(testing::run1(g, cols).to_vector<float>(), (std::vector<float>{1, 4, 2, 5, 3, 6}));
  expect_error<GraphError>([&] { stack({a, b}, 2); }, {"[stack]", "axis 2"});
  check_gradients(
      [](Graph&, const std::vector<Value>& v) {
        return stack({v[0], squeeze(v[1])}, 1);
      },
      {r64({4}, -1, 1, 8), r64({4, 1}, -1, 1, 9)}, "stack of squeeze");
}

TEST(NnFunctional, LogsumexpAndPad) {
  Tensor in = r64({3, 4}, -3, 3, 4);
  Graph g;
  Value x = g.placeholder("x", f64, {3, 4});
  const auto rows = testing::run1(g, logsumexp(x, {1}), {{x, in}}).to_vector<double>();
  ASSERT_EQ(rows.size(), 3u);
  for (int64_t r = 0; r < 3; ++r) {
    double total = 0;
    for (int64_t c = 0; c < 4; ++c) total += std::exp(in.element(r * 4 + c));
    EXPECT_NEAR(rows[r], std::log(total), 1e-12);
  }
  EXPECT_EQ(logsumexp(x).shape(), Shape({}));
  EXPECT_EQ(logsumexp(x, {0}, true).shape(), Shape({1, 4}));
  // No overflow at 1000, and -inf for a row of -inf.
  Value extreme =
      g.constant(Tensor::from_vector<double>({1000, 1000, -INFINITY, -INFINITY}, {2, 2}));
  const auto e = testing::run1(g, logsumexp(extreme, {1})).to_vector<double>();
  EXPECT_NEAR(e[0], 1000 + std::log(2.0), 1e-9);
  EXPECT_EQ(e[1], -INFINITY);
  check_gradients([](Graph&, const std::vector<Value>& v) { return logsumexp(v[0], {1}); }, {in},
                  "logsumexp");
  // pad: (1, 2) on the last dim, (0, 1) on the one before.
  Value small = g.constant(Tensor::from_vector<float>({1, 2, 3, 4}, {2, 2}));
  Tensor padded = testing::run1(g, pad(small, {{1, 2}, {0, 1}}, -1));
  EXPECT_EQ(padded.shape(), Shape({3, 5}));
  EXPECT_EQ(padded.to_vector<float>(),
            (std::vector<float>{-1, 1, 2, -1, -1, -1, 3, 4, -1, -1, -1, -1, -1, -1, -1}));
  check_gradients(
      [](Graph&, const std::vector<Value>& v) {
        return pad(v[0], {{2, 1}});
      },
      {r64({2, 3}, -1, 1, 6)}, "pad");
  expect_error<GraphError>([&] { pad(small, {{-1, 0}}); }, {"[pad]", "must not be negative"});
  expect_error<GraphError>([&] { pad(small, {{0, 0}, {0, 0}, {0, 0}}); }, {"[pad]", "rank 2"});
}

// PyTorch's documented layout: out[n, c, h r + i, w r + j] = in[n, c r^2 + i r + j, h, w].
TEST(NnFunctional, PixelShuffleMovesChannelsIntoPixelsAndBack) {
  constexpr int64_t kN = 2, kC = 3, kR = 2, kH = 3, kW = 4;
  const Tensor in = r64({kN, kC * kR * kR, kH, kW}, -1, 1, 41);
  Graph g;
  Value x = g.placeholder("x", f64, {-1, kC * kR * kR, kH, kW});
  nn::PixelShuffle shuffle(g, "shuffle", kR);
  nn::PixelUnshuffle unshuffle(g, "unshuffle", kR);
  const Value y = shuffle(x);
  EXPECT_EQ(y.shape(), Shape({-1, kC, kH * kR, kW * kR}));
  Session s(g);
  const auto got = s.run({{x, in}}, {y, unshuffle(y)});
  for (int64_t n = 0; n < kN; ++n)
    for (int64_t c = 0; c < kC; ++c)
      for (int64_t i = 0; i < kR; ++i)
        for (int64_t j = 0; j < kR; ++j)
          for (int64_t h = 0; h < kH; ++h)
            for (int64_t w = 0; w < kW; ++w) {
              const int64_t from =
                  ((n * kC * kR * kR + c * kR * kR + i * kR + j) * kH + h) * kW + w;
              const int64_t to = ((n * kC + c) * kH * kR + h * kR + i) * kW * kR + w * kR + j;
              ASSERT_EQ(got[0].element(to), in.element(from)) << n << c << i << j << h << w;
            }
  EXPECT_EQ(testing::values(got[1]), testing::values(in));
  check_gradients([](Graph&, const std::vector<Value>& v) { return pixel_shuffle(v[0], 2); },
                  {r64({1, 4, 2, 3}, -1, 1, 42)}, "pixel_shuffle");
  expect_error<GraphError>(
      [&] {
        pixel_shuffle(g.placeholder("odd", f32, {1, 6, 2, 2}), 2);
      },
      {"[pixel_shuffle] odd", "[N, C 4, H, W]", "[1, 6, 2, 2]"});
  expect_error<GraphError>(
      [&] {
        pixel_unshuffle(g.placeholder("tall", f32, {1, 2, 3, 4}), 2);
      },
      {"[pixel_unshuffle] tall", "divisible by 2"});
  expect_error<GraphError>([&] { pixel_shuffle(x, 0); }, {"factor 0"});
}

TEST(NnFunctional, PadModesMirrorRepeatAndWrapOverAnUnknownBatch) {
  // One row 1..4 (batch unknown when built), 3 before and 2 after (reflect reaches at most 3).
  Graph g;
  Value x = g.placeholder("x", f32, {-1, 4});
  const Tensor row = Tensor::from_vector<float>({1, 2, 3, 4, 5, 6, 7, 8}, {2, 4});
  const std::vector<std::pair<int64_t, int64_t>> widths = {{3, 2}};
  Session s(g);
  const auto got =
      s.run({{x, row}}, {pad(x, widths, PadMode::reflect), pad(x, widths, PadMode::replicate),
                         pad(x, widths, PadMode::circular), pad(x, widths, PadMode::constant, 9)});
  EXPECT_EQ(got[0].to_vector<float>(),
            (std::vector<float>{4, 3, 2, 1, 2, 3, 4, 3, 2, 8, 7, 6, 5, 6, 7, 8, 7, 6}));
  EXPECT_EQ(got[1].to_vector<float>(),
            (std::vector<float>{1, 1, 1, 1, 2, 3, 4, 4, 4, 5, 5, 5, 5, 6, 7, 8, 8, 8}));
  EXPECT_EQ(got[2].to_vector<float>(),
            (std::vector<float>{2, 3, 4, 1, 2, 3, 4, 1, 2, 6, 7, 8, 5, 6, 7, 8, 5, 6}));
  EXPECT_EQ(got[3].to_vector<float>(),
            (std::vector<float>{9, 9, 9, 1, 2, 3, 4, 9, 9, 9, 9, 9, 5, 6, 7, 8, 9, 9}));
  for (const Tensor& t : got) EXPECT_EQ(t.shape(), Shape({2, 9}));
  // Replicate has no limit (PyTorch's ReplicationPad): 6 past an edge of 4.
  EXPECT_EQ(testing::run1(g, pad(x, {{0, 6}}, PadMode::replicate), {{x, row}}).to_vector<float>(),
            (std::vector<float>{1, 2, 3, 4, 4, 4, 4, 4, 4, 4, 5, 6, 7, 8, 8, 8, 8, 8, 8, 8}));
  // Two dims at once, each mode's gradient (the reflected and wrapped elements add up).
  for (PadMode mode : {PadMode::reflect, PadMode::replicate, PadMode::circular, PadMode::constant})
    check_gradients(
        [mode](Graph&, const std::vector<Value>& v) {
          return pad(v[0], {{2, 1}, {1, 2}}, mode);
        },
        {r64({2, 3, 4}, -1, 1, 7)}, "pad mode " + std::to_string(static_cast<int>(mode)));
  // An unknown batch with an empty padded dim has nothing to copy a slab's shape from.
  Value empty = g.placeholder("empty", f32, {-1, 0});
  expect_error<GraphError>([&] { pad(empty, {{1, 1}}); }, {"[pad]", "(constant)", "is empty"});
  expect_error<GraphError>(
      [&] {
        pad(x, {{4, 0}}, PadMode::reflect);
      },
      {"[pad] x (reflect)", "widths (4, 0) for dim 1 of size 4", "at most 3"});
  expect_error<GraphError>(
      [&] {
        pad(x, {{0, 5}}, PadMode::circular);
      },
      {"(circular)", "at most 4"});
  expect_error<GraphError>(
      [&] {
        pad(x, {{0, 0}, {1, 1}}, PadMode::replicate);
      },
      {"(replicate)", "dim 0 of [?, 4] is padded, so it must be known"});
  // Conv2d's padding_mode pads first; transposed convolutions take zeros only.
  Value image = g.placeholder("image", f64, {1, 1, 3, 3});
  Value ones = g.constant(Tensor::full(f64, {1, 1, 3, 3}, 1.0));
  const Tensor nine = Tensor::from_vector<double>({1, 2, 3, 4, 5, 6, 7, 8, 9}, {1, 1, 3, 3});
  const Tensor summed =
      testing::run1(g, conv2d(image, ones, {.padding = {1, 1}, .padding_mode = PadMode::circular}),
                    {{image, nine}});
  // Every circular 3 x 3 window of a 3 x 3 image holds all nine values.
  EXPECT_EQ(summed.to_vector<double>(), std::vector<double>(9, 45));
  expect_error<GraphError>(
      [&] { conv_transpose2d(image, ones, {.padding_mode = PadMode::reflect}); },
      {"conv_transpose2d", "padding_mode must be zeros"});
}

}  // namespace
}  // namespace kiln

namespace kiln {
namespace {

TEST(NnFunctional, CrossEntropyAveragesTheRowsNotIgnored) {
  Graph g;
  Tensor z = testing::random_tensor(f64, {4, 6}, -3, 3, 11);
  Value logits = g.constant(z);
  Value labels = g.constant(Tensor::from_vector<int64_t>({2, -1, 5, -1}));
  const double got = testing::run1(g, cross_entropy(logits, labels, -1, 0.1)).element(0);
  // Rows 0 and 2, each -sum_c t_c log p_c with t = 0.9 onehot + 0.1 / 6.
  double want = 0;
  for (int64_t row : {0, 2}) {
    const int64_t label = row == 0 ? 2 : 5;
    double lse = 0;
    for (int64_t c = 0; c < 6; ++c) lse += std::exp(z.element(row * 6 + c));
    lse = std::log(lse);
    for (int64_t c = 0; c < 6; ++c)
      want += ((c == label ? 0.9 : 0) + 0.1 / 6) * (lse - z.element(row * 6 + c)) / 2;
  }
  EXPECT_NEAR(got, want, 1e-12);
  // Every row ignored: NaN, as PyTorch.
  Value none = g.constant(Tensor::from_vector<int64_t>({-1, -1, -1, -1}));
  EXPECT_TRUE(std::isnan(testing::run1(g, cross_entropy(logits, none, -1)).element(0)));
  // A label that is neither a class nor ignored is still an error.
  Value bad = g.constant(Tensor::from_vector<int64_t>({2, -1, 6, -1}));
  testing::expect_error<Error>([&] { testing::run1(g, cross_entropy(logits, bad, -1)); },
                               {"label 6 at position 2", "[0, 6)"});
  expect_error<GraphError>([&] { softmax_cross_entropy(logits, labels, -1, 1.5); },
                           {"label_smoothing 1.5"});
}

}  // namespace
}  // namespace kiln
