#include <chrono>

#include "autograd/gradcheck.h"
#include "cases/op_cases.h"
#include "kiln/framework/gradient.h"
#include "kiln/framework/kernel.h"

namespace kiln {
namespace {

using testing::check_gradients;
using testing::random_tensor;

Tensor r64(const Shape& s, double lo = -1, double hi = 1, uint32_t seed = 1) {
  return random_tensor(f64, s, lo, hi, seed);
}

// Finite differences over the op-case table (tests/cases/op_cases.cc), in f64: the gradients
// of sum(y * r) with respect to every float input, element by element (at most 48 elements per
// input, spread over it, so large cases stay quick).
int check_case(const testing::OpCase& oc) {
  testing::CaseGraph c(f64, f64, testing::case_seed(oc.name));
  Value y = oc.build(c);
  Graph& g = c.g;
  Value weights = g.placeholder("r", f64, y.shape());
  Value loss = sum(y * weights);
  std::vector<Value> grads = gradients(loss, c.float_inputs, {.materialize_unused = true});
  Session s(g, {.intra_op_threads = 1});
  FeedList feeds = c.feeds;
  feeds.emplace_back(weights, random_tensor(f64, y.shape(), -1, 1, 77));
  std::vector<Tensor> analytic = s.run(feeds, grads);
  int compared = 0;
  for (size_t k = 0; k < c.float_inputs.size(); ++k) {
    size_t feed = 0;
    while (!feeds[feed].first.same_as(c.float_inputs[k])) ++feed;
    const Tensor& input = feeds[feed].second;
    const int64_t n = input.numel(), stride = std::max<int64_t>(1, n / 48);
    EXPECT_EQ(analytic[k].shape(), input.shape()) << oc.name;
    for (int64_t e = 0; e < n; e += stride) {
      auto loss_at = [&](double delta) {
        FeedList shifted = feeds;
        Tensor moved = input.clone();
        moved.data<double>()[e] += delta;
        shifted[feed].second = moved;
        return s.run(shifted, {loss})[0].item<double>();
      };
      const double numeric = (loss_at(oc.fd_step) - loss_at(-oc.fd_step)) / (2 * oc.fd_step);
      EXPECT_NEAR(analytic[k].element(e), numeric,
                  1e-8 + oc.fd_rtol * std::abs(numeric) + 1e-5 * std::abs(numeric))
          << oc.name << ": d/dx" << k << "[" << e << "]";
      ++compared;
    }
  }
  return compared;
}

TEST(Gradients, EveryDifferentiableOpCaseMatchesFiniteDifferences) {
  int compared = 0, cases = 0;
  for (const testing::OpCase& oc : testing::op_cases()) {
    const bool has_f64 = std::find(oc.dtypes.begin(), oc.dtypes.end(), f64) != oc.dtypes.end();
    if (!oc.gradients || oc.fd_step <= 0 || !has_f64) continue;
    compared += check_case(oc);
    ++cases;
  }
  std::printf("[gradcheck] compared %d partial derivatives over %d op cases\n", compared, cases);
  EXPECT_GT(cases, 80);
}

TEST(Gradients, CompositesAndUnknownBatchDims) {
  // A softmax classifier head with a batch dim unknown when the graph is built.
  check_gradients(
      [](Graph& g, const std::vector<Value>& x) {
        Value batch = reshape(x[0], {-1, 4});
        Value logits = matmul(batch, x[1]) + x[2];
        Value shifted = logits - stop_gradient(max(logits, {1}, true));
        Value logp = shifted - log(sum(exp(shifted), {1}, true));
        (void)g;
        return mean(gelu(logp) * tanh(logits), {0});
      },
      {r64({5, 4}), r64({4, 3}), r64({3})}, "softmax composite");
}

TEST(Gradients, SecondDerivativeOfAComposite) {
  // f(x) = sum(tanh(x) x^2) ; check d/dx of g = df/dx by finite differences of g.
  check_gradients(
      [](Graph& g, const std::vector<Value>& x) {
        (void)g;
        Value f = sum(tanh(x[0]) * square(x[0]) + sin(x[0] * x[1]));
        return gradients(f, {x[0]})[0];
      },
      {r64({4}), r64({4})}, "second derivative");
  // And a closed form: d2/dx2 of x^3 is 6x.
  Graph g;
  Value x = g.placeholder("x", f64, {3});
  Value d1 = gradients(sum(x * x * x), {x})[0];
  Value d2 = gradients(sum(d1), {x})[0];
  Session s(g);
  Tensor in = Tensor::from_vector<double>({1, -2, 0.5});
  EXPECT_EQ(s.run({{x, in}}, {d2})[0].to_vector<double>(), (std::vector<double>{6, -12, 3}));
}

TEST(Gradients, StopGradientIntegerPathsAndUnrelatedInputs) {
  Graph g;
  Value x = g.placeholder("x", f64, {3});
  Value z = g.placeholder("z", f64, {3});
  Value through_int = cast(cast(x, i32), f64);
  Value y = sum(stop_gradient(x) * x + through_int);
  std::vector<Value> grads = gradients(y, {x, z}, {.materialize_unused = true});
  Session s(g);
  Tensor in = Tensor::from_vector<double>({1.5, -2, 3});
  auto out = s.run({{x, in}, {z, in}}, grads);
  EXPECT_EQ(out[0].to_vector<double>(), in.to_vector<double>());  // only the x factor
  EXPECT_EQ(out[1].to_vector<double>(), (std::vector<double>{0, 0, 0}));
  // As PyTorch: an unused x is an error unless allowed; allowed, its gradient is undefined.
  testing::expect_error<GraphError>(
      [&] {
        gradients(y, {x, z});
      },
      {"[autograd]", "does not depend on x 'z'", "no path", "allow_unused"});
  std::vector<Value> allowed = gradients(y, {x, z}, {.allow_unused = true});
  EXPECT_TRUE(allowed[0].defined());
  EXPECT_FALSE(allowed[1].defined());
  // A path that passes no gradient is named in the message.
  Value only_int = sum(cast(cast(z, i32), f64) + stop_gradient(z));
  testing::expect_error<GraphError>([&] { gradients(only_int, {z}); },
                                    {"does not depend on x 'z'", "pass no gradient", "y <- "});
  testing::expect_error<GraphError>([&] { gradients(argmax(x, 0), {x}); }, {"[autograd]", "i64"});
  Value i = g.placeholder("i", i32, {3});
  testing::expect_error<GraphError>([&] { gradients(y, {i}); }, {"with respect to", "i32"});
}

// An op without a gradient function, to test the error.
KILN_OP(test_no_grad)
    .input("x")
    .infer([](const InferContext& c) { return std::vector<TensorType>{c.input(0)}; })
    .kernel(DeviceKind::cpu, [](KernelContext& c) { c.set_output(0, c.input(0)); });

TEST(Gradients, MissingGradientNamesOpAndPath) {
  Graph g;
  Value x = g.placeholder("x", f32, {2});
  Value hidden = g.add("test_no_grad", {exp(x)}, {}, {.name = "mystery"});
  Value loss = sum(relu(hidden));
  testing::expect_error<GraphError>(
      [&] { gradients(loss, {x}); },
      {"op 'test_no_grad'", "node 'mystery'", "sum <- relu <- mystery"});
}

TEST(Gradients, DyAndMultipleUses) {
  Graph g;
  Value x = g.placeholder("x", f64, {2});
  Value y = x * x + x;  // dy/dx = 2x + 1, summed from three uses of x
  Value dy = g.constant(Tensor::from_vector<double>({10, 100}));
  Session s(g);
  auto out = s.run({{x, Tensor::from_vector<double>({1, 2})}}, {gradients(y, {x}, {.dy = dy})[0]});
  EXPECT_EQ(out[0].to_vector<double>(), (std::vector<double>{30, 500}));
  testing::expect_error<GraphError>(
      [&] { gradients(y, {x}, {.dy = g.constant(Tensor::zeros(f64, {3}))}); },
      {"dy", "does not match"});
}

TEST(Gradients, TenThousandNodeChainBuildsQuickly) {
  Graph g;
  Value x = g.placeholder("x", f32, {8});
  Value y = x;
  for (int i = 0; i < 10000; ++i) y = (i % 2) ? tanh(y) : y * 0.999;
  auto start = std::chrono::steady_clock::now();
  Value grad = gradients(sum(y), {x})[0];
  double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  std::printf("[autograd] gradients of a %d-node chain built in %.3f s\n", g.num_nodes(), seconds);
  // A structural bound (quadratic behaviour would take minutes), not a benchmark.
  EXPECT_LT(seconds, 2.0);
  Session s(g);
  Tensor out = s.run({{x, Tensor::full(f32, {8}, 0.5)}}, {grad})[0];
  EXPECT_GT(out.element(0), 0);
}

}  // namespace
}  // namespace kiln
