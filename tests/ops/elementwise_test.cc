#include "kiln/ops/math/elementwise.h"
#include "kiln/ops/math/vector_math.h"
#include "special_values.h"
#include "test_util.h"

namespace kiln {
namespace {

using testing::expect_near;
using testing::random_tensor;

struct UnaryCase {
  const char* op;
  std::function<double(double)> reference;
  double low, high;
  bool integers;  // also defined on i32/i64
};

const std::vector<UnaryCase>& unary_cases() {
  static const std::vector<UnaryCase> cases = {
      {"neg", [](double x) { return -x; }, -5, 5, true},
      {"abs", [](double x) { return std::abs(x); }, -5, 5, true},
      {"square", [](double x) { return x * x; }, -5, 5, true},
      {"relu", [](double x) { return x > 0 ? x : 0; }, -5, 5, true},
      {"exp", [](double x) { return std::exp(x); }, -10, 10, false},
      {"log", [](double x) { return std::log(x); }, 1e-3, 100, false},
      {"sqrt", [](double x) { return std::sqrt(x); }, 0, 100, false},
      {"rsqrt", [](double x) { return 1 / std::sqrt(x); }, 1e-3, 100, false},
      {"tanh", [](double x) { return std::tanh(x); }, -8, 8, false},
      {"sigmoid", [](double x) { return 1 / (1 + std::exp(-x)); }, -40, 40, false},
      {"gelu", [](double x) { return 0.5 * x * std::erfc(-x / std::sqrt(2.0)); }, -6, 6, false},
      {"sin", [](double x) { return std::sin(x); }, -10, 10, false},
      {"cos", [](double x) { return std::cos(x); }, -10, 10, false},
      {"gelu_tanh",
       [](double x) {
         return x / (1 + std::exp(-2 * std::sqrt(2 / M_PI) * (x + 0.044715 * x * x * x)));
       },
       -6, 6, false},
      {"silu", [](double x) { return x / (1 + std::exp(-x)); }, -30, 30, false},
      {"erf", [](double x) { return std::erf(x); }, -4, 4, false},
      {"log1p", [](double x) { return std::log1p(x); }, -0.999, 100, false},
      {"softplus", [](double x) { return std::log1p(std::exp(-std::abs(x))) + std::max(x, 0.0); },
       -40, 40, false},
      {"expm1", [](double x) { return std::expm1(x); }, -20, 20, false},
  };
  return cases;
}

TEST(Unary, EveryOpMatchesReferenceOnEveryDtypeAndShape) {
  for (const UnaryCase& c : unary_cases()) {
    std::vector<DType> dtypes = {f32, f64};
    if (c.integers) dtypes.insert(dtypes.end(), {i32, i64});
    for (DType dtype : dtypes) {
      for (const Shape& shape :
           {Shape{}, Shape{0}, Shape{1}, Shape{3, 0, 2}, Shape{7, 13}, Shape{100003}}) {
        Graph g;
        Tensor input = random_tensor(dtype, shape, c.low, c.high, 11);
        Value x = g.placeholder("x", dtype, shape);
        Tensor y = testing::run1(g, g.add(c.op, {x}), {{x, input}});
        ASSERT_EQ(y.dtype(), dtype);
        ASSERT_EQ(y.shape(), shape);
        std::vector<double> expected;
        for (double v : testing::values(input)) {
          // The reference sees the input as stored (rounded to f32 already).
          double r = c.reference(v);
          expected.push_back(dtype == f32 ? static_cast<float>(r) : r);
        }
        double rtol = is_integer(dtype) ? 0 : (dtype == f32 ? 4e-6 : 1e-13);
        expect_near(expected, y, rtol, dtype == f32 ? 1e-37 : 0, str(c.op, " ", dtype, shape));
      }
    }
  }
}

TEST(Unary, SigmoidIsStableAtTheExtremes) {
  Graph g;
  Value x = g.constant(Tensor::from_vector<float>({-1000, -100, 0, 100, 1000}));
  Tensor y = testing::run1(g, sigmoid(x));
  EXPECT_EQ(y.to_vector<float>(), (std::vector<float>{0, std::exp(-100.0f), 0.5f, 1, 1}));
}

struct BinaryCase {
  const char* op;
  std::function<double(double, double)> reference;
  bool compare;
};

const std::vector<BinaryCase>& binary_cases() {
  static const std::vector<BinaryCase> cases = {
      {"add", [](double a, double b) { return a + b; }, false},
      {"sub", [](double a, double b) { return a - b; }, false},
      {"mul", [](double a, double b) { return a * b; }, false},
      {"div", [](double a, double b) { return a / b; }, false},
      {"pow", [](double a, double b) { return std::pow(a, b); }, false},
      {"maximum", [](double a, double b) { return std::max(a, b); }, false},
      {"minimum", [](double a, double b) { return std::min(a, b); }, false},
      {"equal", [](double a, double b) { return double(a == b); }, true},
      {"not_equal", [](double a, double b) { return double(a != b); }, true},
      {"less", [](double a, double b) { return double(a < b); }, true},
      {"less_equal", [](double a, double b) { return double(a <= b); }, true},
      {"greater", [](double a, double b) { return double(a > b); }, true},
      {"greater_equal", [](double a, double b) { return double(a >= b); }, true},
  };
  return cases;
}

// Broadcasting corners: equal shapes, scalars, size-0 and size-1 dims, both sides stretching,
// rank differences, and a large case that runs in parallel.
const std::vector<std::pair<Shape, Shape>>& broadcast_pairs() {
  static const std::vector<std::pair<Shape, Shape>> pairs = {{{}, {}},
                                                             {{5}, {5}},
                                                             {{}, {4}},
                                                             {{4}, {}},
                                                             {{2, 3}, {3}},
                                                             {{2, 1}, {1, 3}},
                                                             {{3, 1, 4}, {2, 1}},
                                                             {{0, 3}, {3}},
                                                             {{1, 0}, {5, 1}},
                                                             {{1}, {1, 1, 1}},
                                                             {{4, 1, 6}, {4, 5, 6}},
                                                             {{300, 257}, {257}},
                                                             {{257, 1}, {257, 300}}};
  return pairs;
}

TEST(Binary, EveryOpMatchesReferenceWithBroadcasting) {
  for (const BinaryCase& c : binary_cases()) {
    for (DType dtype : {f32, f64}) {
      for (const auto& [sa, sb] : broadcast_pairs()) {
        Graph g;
        bool is_pow = std::string(c.op) == "pow";
        Tensor ta = random_tensor(dtype, sa, is_pow ? 0.1 : -3, 3, 5);
        Tensor tb = random_tensor(dtype, sb, is_pow ? -2 : -3, 3, 6);
        if (c.compare) {  // whole numbers, so that == and <= see ties
          ta = testing::floor_values(ta);
          tb = testing::floor_values(tb);
        }
        Value a = g.placeholder("a", dtype, sa), b = g.placeholder("b", dtype, sb);
        Tensor y = testing::run1(g, g.add(c.op, {a, b}), {{a, ta}, {b, tb}});
        Shape out;
        ASSERT_TRUE(broadcast_shapes(sa, sb, &out));
        ASSERT_EQ(y.shape(), out);
        ASSERT_EQ(y.dtype(), c.compare ? boolean : dtype);
        std::vector<double> expected;
        for (int64_t i = 0; i < out.numel(); ++i) {
          std::vector<int64_t> idx = testing::unravel(i, out);
          double r = c.reference(ta.element(testing::broadcast_source(idx, sa)),
                                 tb.element(testing::broadcast_source(idx, sb)));
          expected.push_back(dtype == f32 && !c.compare ? static_cast<float>(r) : r);
        }
        expect_near(expected, y, dtype == f32 ? 4e-6 : 1e-13, 0, str(c.op, " ", sa, " ", sb));
      }
    }
  }
}

TEST(Binary, IntegerSemantics) {
  Graph g;
  Value a = g.constant(Tensor::from_vector<int32_t>({7, -7, 5, 3, -2, 2}));
  Value b = g.constant(Tensor::from_vector<int32_t>({2, 2, 0, 4, 3, -1}));
  Session s(g);
  auto out = s.run({}, {a / b, pow(a, b), maximum(a, b), a - b, less(a, b)});
  EXPECT_EQ(out[0].to_vector<int32_t>(), (std::vector<int32_t>{3, -3, 0, 0, 0, -2}));  // / 0 -> 0
  EXPECT_EQ(out[1].to_vector<int32_t>(), (std::vector<int32_t>{49, 49, 1, 81, -8, 0}));
  EXPECT_EQ(out[2].to_vector<int32_t>(), (std::vector<int32_t>{7, 2, 5, 4, 3, 2}));
  EXPECT_EQ(out[3].to_vector<int32_t>(), (std::vector<int32_t>{5, -9, 5, -1, -5, 3}));
  EXPECT_EQ(out[4].to_vector<int32_t>(), (std::vector<int32_t>{0, 1, 0, 1, 1, 0}));
  Value u = g.constant(Tensor::from_vector<uint8_t>({250, 3}));
  Value v = g.constant(Tensor::from_vector<uint8_t>({10, 4}));
  EXPECT_EQ(testing::run1(g, u + v).to_vector<int>(), (std::vector<int>{4, 7}));  // wraps
  Value m = g.constant(Tensor::from_vector<int32_t>({INT32_MIN}));
  Value neg1 = g.constant(Tensor::from_vector<int32_t>({-1}));
  EXPECT_EQ(testing::run1(g, m / neg1).to_vector<int32_t>()[0], INT32_MIN);  // wraps, no SIGFPE
  // Signed overflow wraps around (two's complement), as in NumPy and PyTorch.
  Value big = g.constant(Tensor::from_vector<int32_t>({INT32_MAX, INT32_MIN}));
  Value one = g.constant(Tensor::from_vector<int32_t>({1}));
  EXPECT_EQ(testing::run1(g, big + one).to_vector<int32_t>(),
            (std::vector<int32_t>{INT32_MIN, INT32_MIN + 1}));
  EXPECT_EQ(testing::run1(g, -big).to_vector<int32_t>(),
            (std::vector<int32_t>{-INT32_MAX, INT32_MIN}));
  // INT_MIN * (INT_MIN - 1) = -2^31 (2^31 - 1) = 2^31 (mod 2^32) = INT_MIN
  EXPECT_EQ(testing::run1(g, big * (big - one)).to_vector<int32_t>()[1], INT32_MIN);
}

TEST(Binary, MaximumAndMinimumPropagateNaN) {
  Graph g;
  float nan = std::nanf("");
  Value a = g.constant(Tensor::from_vector<float>({nan, 1, nan}));
  Value b = g.constant(Tensor::from_vector<float>({1, nan, nan}));
  for (const Value& y : {maximum(a, b), minimum(a, b)})
    for (float v : testing::run1(g, y).to_vector<float>()) EXPECT_TRUE(std::isnan(v));
}

TEST(Binary, ScalarOperatorsUseTheValueDtype) {
  Graph g;
  Value x = g.constant(Tensor::from_vector<double>({1, 2, 4}));
  Tensor y = testing::run1(g, (2.0 * x + 1.0) / 2.0 - 1.0 / x);
  EXPECT_EQ(y.dtype(), f64);
  EXPECT_EQ(y.to_vector<double>(), (std::vector<double>{0.5, 2.0, 4.25}));
  Value i = g.constant(Tensor::from_vector<int64_t>({1, 2}));
  EXPECT_EQ(testing::run1(g, i * 3.0).to_vector<int64_t>(), (std::vector<int64_t>{3, 6}));
}

TEST(Where, SelectsWithThreeWayBroadcast) {
  Graph g;
  Value c = g.constant(Tensor::from_vector<bool>({true, false, true}, {3, 1}));
  Value a = g.constant(Tensor::from_vector<float>({1, 2}, {1, 2}));
  Value b = g.constant(Tensor::from_vector<float>({-1}));
  Tensor y = testing::run1(g, where(c, a, b));
  EXPECT_EQ(y.shape(), Shape({3, 2}));
  EXPECT_EQ(y.to_vector<float>(), (std::vector<float>{1, 2, -1, -1, 1, 2}));
  Value x = g.constant(Tensor::from_vector<float>({-2, 3, -1}));
  EXPECT_EQ(testing::run1(g, where(greater(x, g.scalar(0, f32)), x, -x)).to_vector<float>(),
            (std::vector<float>{2, 3, 1}));
}

// A f32 or f64 tensor holding `values`.
Tensor floats(DType dtype, const std::vector<double>& values, const Shape& shape) {
  if (dtype == f64) return Tensor::from_vector<double>(values, shape);
  return Tensor::from_vector<float>(std::vector<float>(values.begin(), values.end()), shape);
}

// Every unary op at NaN and +-inf, alone and inside a fused chain (the fused kernel runs the
// same functors), in f32 and f64.
TEST(NaNRule, EveryUnaryOpPropagatesNaNAndHandlesInfinities) {
  std::vector<std::string> covered;
  for (const auto& c : testing::special_unary_cases()) covered.push_back(c.op);
#define KILN_EXPECT_COVERED(name, ...)                                       \
  EXPECT_NE(std::find(covered.begin(), covered.end(), #name), covered.end()) \
      << #name << " has no case";
  KILN_UNARY_OPS(KILN_EXPECT_COVERED)
#undef KILN_EXPECT_COVERED
  for (const auto& c : testing::special_unary_cases())
    for (DType dtype : {f32, f64}) {
      Graph g;
      Value x = g.placeholder("x", dtype, {3});
      Value zero = g.placeholder("zero", dtype, {3});
      Value alone = g.add(c.op, {x});
      Value fused = g.add(c.op, {x}) + zero;  // two elementwise ops: one fused kernel
      const Tensor input = floats(dtype, {testing::kNaN, testing::kInf, -testing::kInf}, {3});
      Session s(g);
      std::vector<Tensor> out =
          s.run({{x, input}, {zero, Tensor::zeros(dtype, {3})}}, {alone, fused});
      ASSERT_EQ(s.plan({{x, input}, {zero, input}}, {fused}).steps.size(), 1u) << "not fused";
      const double expected[] = {c.at_nan, c.at_pos_inf, c.at_neg_inf};
      for (const Tensor& y : out)
        for (int i = 0; i < 3; ++i)
          EXPECT_TRUE(testing::same_special(expected[i], y.element(i)))
              << c.op << "(" << input.element(i) << ") is " << y.element(i) << " in " << dtype
              << ", expected " << expected[i];
    }
}

TEST(NaNRule, EveryBinaryOpFollowsIeeeWithNaNAndInfinities) {
  const std::vector<double>& v = testing::special_operands();
  const int64_t n = static_cast<int64_t>(v.size());
  // Every pair: a is [n, 1], b is [1, n], broadcast to [n, n].
  for (DType dtype : {f32, f64}) {
    const Tensor ta = floats(dtype, v, {n, 1}), tb = floats(dtype, v, {1, n});
    for (const std::string& op : testing::special_binary_ops()) {
      Graph g;
      Value a = g.placeholder("a", dtype, {n, 1}), b = g.placeholder("b", dtype, {1, n});
      Tensor y = testing::run1(g, g.add(op, {a, b}), {{a, ta}, {b, tb}});
      for (int64_t i = 0; i < n; ++i)
        for (int64_t j = 0; j < n; ++j) {
          const double exact = testing::special_binary_reference(op, v[i], v[j]);
          const double expected = dtype == f32 ? static_cast<float>(exact) : exact;
          EXPECT_TRUE(testing::same_special(expected, y.element(i * n + j)))
              << op << "(" << v[i] << ", " << v[j] << ") is " << y.element(i * n + j) << " in "
              << dtype << ", expected " << expected;
        }
    }
  }
}

TEST(NaNRule, ReductionsSoftmaxAndMatmulBiasReluPropagateNaN) {
  Graph g;
  const float nan = std::nanf("");
  Value x = g.placeholder("x", f32, {2, 3});
  Tensor input = Tensor::from_vector<float>({1, nan, 2, -1, -2, -3}, {2, 3});
  Session s(g);
  auto out = s.run({{x, input}}, {max(x, {1}), min(x, {1}), sum(x, {1}), mean(x, {1}), argmax(x, 1),
                                  softmax(x, 1), log_softmax(x, 1)});
  EXPECT_TRUE(std::isnan(out[0].element(0)) && out[0].element(1) == -1);
  EXPECT_TRUE(std::isnan(out[1].element(0)) && out[1].element(1) == -3);
  EXPECT_TRUE(std::isnan(out[2].element(0)) && std::isnan(out[3].element(0)));
  EXPECT_EQ(out[4].element(0), 1);  // argmax points at the NaN, as torch.argmax
  for (int j = 0; j < 3; ++j)
    EXPECT_TRUE(std::isnan(out[5].element(j)) && std::isnan(out[6].element(j)));
  EXPECT_FALSE(std::isnan(out[5].element(3)));

  // relu(x w + b), folded into one matmul_bias by the epilogue pass: the NaN row stays NaN.
  Value w = g.constant(Tensor::from_vector<float>({1, 0, 0, 1, 0, 0}, {3, 2}));
  Value b = g.constant(Tensor::from_vector<float>({-10, -10}));
  Value h = relu(matmul(x, w) + b);
  Tensor y = s.run({{x, input}}, {h})[0];
  const Plan& plan = s.plan({{x, input}}, {h});
  EXPECT_EQ(plan.graph->node(plan.steps.back().node).op_name(), "matmul_bias");
  EXPECT_TRUE(std::isnan(y.element(0)) && std::isnan(y.element(1)));  // NaN in the row's products
  EXPECT_EQ(y.element(2), 0);                                         // -11 -> 0
  EXPECT_EQ(y.element(3), 0);
}

// A CPU kernel without 16-bit support runs widened: f32 arithmetic on the f16 values, one
// rounding of the result.
TEST(Elementwise, CpuKernelsRunHalfPrecisionWidened) {
  Graph g;
  Value x = g.placeholder("h", f16, {3});
  Value y = exp(x);
  Session s(g);
  Tensor in = Tensor::empty(f16, {3});
  const float values[] = {0.0f, 1.0f, -2.5f};
  for (int64_t i = 0; i < 3; ++i) in.data<Half>()[i] = convert<Half>(values[i]);
  Tensor out = s.run({{x, in}}, {y})[0];
  ASSERT_EQ(out.dtype(), f16);
  for (int64_t i = 0; i < 3; ++i) {
    const float v = convert<float>(in.data<Half>()[i]);
    EXPECT_EQ(convert<float>(out.data<Half>()[i]), convert<float>(convert<Half>(std::exp(v))));
  }
}

}  // namespace
}  // namespace kiln

// The CPU's vectorizable f32 exp and erfc (ops/math/vector_math.h) against libm in double, over
// every range they serve, and their special values.
// The row helpers of attention's CPU kernel, at lengths around their 16 lanes (0, a tail only,
// whole lanes, lanes and a tail), against plain loops in double.
TEST(VectorMath, RowMaxAndScaledExponentialsMatchPlainLoops) {
  for (int64_t n : {0, 1, 7, 16, 33, 130}) {
    std::vector<float> x(static_cast<size_t>(n));
    for (int64_t j = 0; j < n; ++j)
      x[j] = j % 11 == 5 ? -INFINITY : std::sin(0.7f * static_cast<float>(j)) * 9;
    double want_max = -INFINITY;
    for (float e : x) want_max = std::max<double>(want_max, e);
    EXPECT_EQ(kiln::ops::max_of(x.data(), n), want_max) << "n " << n;
    const float scale = 0.125f, shift = 0.3f;
    std::vector<float> y = x;
    const float sum = kiln::ops::exp_scaled_shifted(y.data(), n, scale, shift);
    double want_sum = 0;
    for (int64_t j = 0; j < n; ++j) {
      const double want = std::exp(static_cast<double>(scale) * x[j] - shift);
      want_sum += want;
      EXPECT_NEAR(y[j], want, 4e-7 * want) << "n " << n << ", j " << j;
    }
    EXPECT_NEAR(sum, want_sum, 1e-6 * want_sum) << "n " << n;
  }
  const float nan_after_first[3] = {1.0f, NAN, 2.0f};  // as std::max: a later NaN is passed over
  EXPECT_EQ(kiln::ops::max_of(nan_after_first, 3), 2.0f);
}

// The GELU's array forms (blocks computed stage by stage) give the element forms' bits (a NaN's
// sign aside), in whole blocks and tails, over the whole range and at the special values.
TEST(VectorMath, GeluArrayFormsGiveTheElementFormsBits) {
  std::vector<float> x, dy;
  for (float v = -14.0f; v < 14.0f; v += 0.0131f) x.push_back(v);
  const float inf = std::numeric_limits<float>::infinity();
  for (float v : {NAN, inf, -inf, 0.0f, -0.0f, 1e-40f, -1e-40f, 3e38f, -3e38f, 1e20f, -1e20f})
    x.push_back(v);
  for (size_t i = 0; i < x.size(); ++i) dy.push_back(i % 5 == 3 ? -inf : 0.25f * (i % 9) - 1);
  // Bits, with every NaN alike (its sign may differ with how a compiler orders the operands).
  auto bits = [](float v) { return v != v ? uint32_t{0x7fc00000} : std::bit_cast<uint32_t>(v); };
  const kiln::ops::gelu_cpu_fn gelu;
  const kiln::ops::gelu_grad_cpu_fn grad;
  for (size_t start : {size_t{0}, size_t{3}})
    for (int64_t n : {0, 5, 128, 300, static_cast<int>(x.size() - 3)}) {
      std::vector<float> y(static_cast<size_t>(n)), dx(static_cast<size_t>(n));
      gelu.apply(y.data(), n, x.data() + start);
      grad.apply(dx.data(), n, x.data() + start, dy.data() + start);
      for (int64_t i = 0; i < n; ++i) {
        const float v = x[start + i], d = dy[start + i];
        ASSERT_EQ(bits(y[i]), bits(gelu(v))) << "gelu(" << v << "), n " << n;
        ASSERT_EQ(bits(dx[i]), bits(grad(v, d))) << "gelu_grad(" << v << ", " << d << ")";
      }
    }
}

TEST(VectorMath, ExpAndErfcMatchLibmWithinTheirBounds) {
  double worst_exp_ulp = 0;
  for (float x = -103.9f; x < 88.7f; x += 0.00037f) {
    const double want = std::exp(static_cast<double>(x));
    if (want < std::numeric_limits<float>::min()) continue;  // subnormal: ulps mean little
    const float w = static_cast<float>(want);
    const double ulp = std::nextafter(w, INFINITY) - w;
    worst_exp_ulp = std::max(worst_exp_ulp, std::abs(kiln::ops::exp_f32(x) - want) / ulp);
  }
  EXPECT_LE(worst_exp_ulp, 2.0);
  // erfc_f32, and erfc_f32_from_gaussian given e^(-x^2) as the GELU gradient computes it.
  double worst_near[2] = {}, worst_tail[2] = {};
  for (float x = -9.5f; x < 9.5f; x += 0.0001f) {
    const double want = std::erfc(static_cast<double>(x));
    if (want < std::numeric_limits<float>::min()) continue;
    const float got[2] = {kiln::ops::erfc_f32(x),
                          kiln::ops::erfc_f32_from_gaussian(x, kiln::ops::exp_f32(-x * x))};
    for (int f = 0; f < 2; ++f) {
      double& worst = std::abs(x) < 5 ? worst_near[f] : worst_tail[f];
      worst = std::max(worst, std::abs(got[f] - want) / want);
    }
  }
  // The rounding of the exponent's argument (about 17 at x = 4) dominates: exp_f32 by Estrin's
  // scheme or Horner's rule, the worst case lands either side of 1.2e-6.
  EXPECT_LE(worst_near[0], 1.3e-6);
  EXPECT_LE(worst_tail[0], 5e-6);
  EXPECT_LE(worst_near[1], 1.3e-6);
  EXPECT_LE(worst_tail[1], 5e-6);
  const float inf = std::numeric_limits<float>::infinity();
  EXPECT_EQ(kiln::ops::exp_f32(inf), inf);
  EXPECT_EQ(kiln::ops::exp_f32(-inf), 0.0f);
  EXPECT_EQ(kiln::ops::exp_f32(89.0f), inf);
  EXPECT_GT(kiln::ops::exp_f32(-103.0f), 0.0f);  // subnormal, not flushed
  EXPECT_TRUE(std::isnan(kiln::ops::exp_f32(NAN)));
  EXPECT_EQ(kiln::ops::erfc_f32(inf), 0.0f);
  EXPECT_EQ(kiln::ops::erfc_f32(-inf), 2.0f);
  EXPECT_EQ(kiln::ops::erfc_f32(0.0f), 1.0f);
  EXPECT_TRUE(std::isnan(kiln::ops::erfc_f32(NAN)));
  EXPECT_EQ(kiln::ops::erfc_f32_from_gaussian(inf, 0.0f), 0.0f);
  EXPECT_EQ(kiln::ops::erfc_f32_from_gaussian(-inf, 0.0f), 2.0f);
  EXPECT_EQ(kiln::ops::erfc_f32_from_gaussian(0.0f, 1.0f), 1.0f);
  EXPECT_TRUE(std::isnan(kiln::ops::erfc_f32_from_gaussian(NAN, NAN)));
}

// The CPU loops' f32 tanh and sigmoid against libm in f64, in ulps of the f32 result, over the
// whole range that is not saturated, both sides of tanh's switch at |x| = 0.4 included; and
// their special values.
TEST(VectorMath, TanhAndSigmoidMatchLibmWithinTheirBounds) {
  auto ulps = [](float got, double want) {
    const float w = static_cast<float>(want);
    const double ulp = std::nextafter(std::abs(w), INFINITY) - std::abs(w);
    return std::abs(got - want) / ulp;
  };
  double worst_tanh = 0, worst_sigmoid = 0;
  for (float x = -20.0f; x < 20.0f; x += 0.000123f) {
    worst_tanh = std::max(worst_tanh, ulps(kiln::ops::tanh_f32(x), std::tanh(double{x})));
    worst_sigmoid =
        std::max(worst_sigmoid, ulps(kiln::ops::sigmoid_f32(x), 1 / (1 + std::exp(-double{x}))));
  }
  for (float x = 1e-30f; x < 0.5f; x *= 1.01f)  // tiny arguments: tanh x = x to the last bit
    worst_tanh = std::max(worst_tanh, ulps(kiln::ops::tanh_f32(x), std::tanh(double{x})));
  EXPECT_LE(worst_tanh, 4.0);
  EXPECT_LE(worst_sigmoid, 4.0);
  const float inf = std::numeric_limits<float>::infinity();
  EXPECT_EQ(kiln::ops::tanh_f32(inf), 1.0f);
  EXPECT_EQ(kiln::ops::tanh_f32(-inf), -1.0f);
  EXPECT_TRUE(std::signbit(kiln::ops::tanh_f32(-0.0f)));
  EXPECT_TRUE(std::isnan(kiln::ops::tanh_f32(NAN)));
  EXPECT_EQ(kiln::ops::sigmoid_f32(inf), 1.0f);
  EXPECT_EQ(kiln::ops::sigmoid_f32(-inf), 0.0f);
  EXPECT_EQ(kiln::ops::sigmoid_f32(0.0f), 0.5f);
  EXPECT_GT(kiln::ops::sigmoid_f32(-100.0f), 0.0f);  // e^-100, subnormal-free and not flushed
  EXPECT_TRUE(std::isnan(kiln::ops::sigmoid_f32(NAN)));
}
