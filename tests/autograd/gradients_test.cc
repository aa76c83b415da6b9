#include <chrono>

#include "autograd/gradcheck.h"
#include "framework/gradient.h"
#include "framework/kernel.h"

namespace kiln {
namespace {

using testing::check_gradients;
using testing::random_tensor;

Tensor r64(const Shape& s, double lo = -1, double hi = 1, uint32_t seed = 1) {
  return random_tensor(f64, s, lo, hi, seed);
}

using Build = std::function<Value(Graph&, const std::vector<Value>&)>;

struct OpCase {
  std::string name;
  Build build;
  std::vector<Tensor> inputs;
  double h = 1e-6;  // finite-difference step (larger where the op rounds through f32)
  double rtol = 1e-6;
};

std::vector<OpCase> op_cases() {
  auto unary = [](const char* op, double lo, double hi) {
    return OpCase{op,
                  [op](Graph& g, const std::vector<Value>& x) { return g.add(op, {x[0]}); },
                  {r64({3, 4}, lo, hi)}};
  };
  std::vector<OpCase> cases = {
      unary("neg", -2, 2),  unary("abs", 0.1, 2),    unary("square", -2, 2), unary("relu", 0.1, 2),
      unary("exp", -2, 2),  unary("log", 0.5, 3),    unary("sqrt", 0.5, 3),  unary("rsqrt", 0.5, 3),
      unary("tanh", -2, 2), unary("sigmoid", -3, 3), unary("gelu", -3, 3),   unary("sin", -3, 3),
      unary("cos", -3, 3),
  };
  cases.push_back(
      {"abs (negative side)", [](Graph&, auto& x) { return abs(x[0]); }, {r64({5}, -2, -0.1)}});
  cases.push_back(
      {"relu (negative side)", [](Graph&, auto& x) { return relu(x[0]); }, {r64({5}, -2, -0.1)}});
  for (const char* op : {"add", "sub", "mul", "div", "maximum", "minimum"}) {
    cases.push_back({std::string(op) + " broadcast",
                     [op](Graph& g, auto& x) {
                       return g.add(op, {x[0], x[1]});
                     },
                     {r64({2, 3, 4}, 0.5, 2, 2), r64({3, 1}, 0.5, 2, 3)}});
    cases.push_back({std::string(op) + " scalar",
                     [op](Graph& g, auto& x) {
                       return g.add(op, {x[0], x[1]});
                     },
                     {r64({}, 0.5, 2, 4), r64({4}, 0.5, 2, 5)}});
  }
  for (const char* act : {"none", "relu"})
    cases.push_back({std::string("matmul_bias ") + act,
                     [act](Graph& g, auto& x) {
                       return g.add("matmul_bias", {x[0], x[1], x[2]},
                                    {{"transpose_b", true}, {"activation", std::string(act)}});
                     },
                     {r64({3, 4}, -1, 1, 6), r64({5, 4}, -1, 1, 7), r64({5}, -1, 1, 8)}});
  cases.push_back({"pow",
                   [](Graph&, auto& x) { return pow(x[0], x[1]); },
                   {r64({3, 2}, 0.5, 2), r64({2}, -1.5, 2)}});
  cases.push_back(
      {"where",
       [](Graph& g, auto& x) { return where(greater(x[0], g.scalar(0, f64)), x[1], x[2]); },
       {r64({4, 1}), r64({4, 3}), r64({3})}});
  cases.push_back(
      {"matmul", [](Graph&, auto& x) { return matmul(x[0], x[1]); }, {r64({3, 4}), r64({4, 2})}});
  cases.push_back({"matmul ta",
                   [](Graph&, auto& x) { return matmul(x[0], x[1], true); },
                   {r64({4, 3}), r64({4, 2})}});
  cases.push_back({"matmul tb",
                   [](Graph&, auto& x) { return matmul(x[0], x[1], false, true); },
                   {r64({3, 4}), r64({2, 4})}});
  cases.push_back({"matmul ta tb",
                   [](Graph&, auto& x) { return matmul(x[0], x[1], true, true); },
                   {r64({4, 3}), r64({2, 4})}});
  cases.push_back({"matmul vector @ matrix",
                   [](Graph&, auto& x) { return matmul(x[0], x[1]); },
                   {r64({4}), r64({4, 3})}});
  cases.push_back({"matmul matrix @ vector",
                   [](Graph&, auto& x) { return matmul(x[0], x[1]); },
                   {r64({3, 4}), r64({4})}});
  cases.push_back({"matmul batch broadcast",
                   [](Graph&, auto& x) { return matmul(x[0], x[1]); },
                   {r64({2, 3, 4}), r64({4, 2})}});
  for (bool keep : {false, true}) {
    std::string k = keep ? " keepdims" : "";
    cases.push_back({"sum" + k,
                     [keep](Graph&, auto& x) {
                       return sum(x[0], {0, 2}, keep);
                     },
                     {r64({2, 3, 4})}});
    cases.push_back(
        {"mean" + k, [keep](Graph&, auto& x) { return mean(x[0], {1}, keep); }, {r64({2, 3, 4})}});
    cases.push_back(
        {"max" + k, [keep](Graph&, auto& x) { return max(x[0], {-1}, keep); }, {r64({3, 5})}});
    cases.push_back(
        {"min" + k, [keep](Graph&, auto& x) { return min(x[0], {}, keep); }, {r64({3, 5})}});
  }
  cases.push_back({"reshape",
                   [](Graph&, auto& x) {
                     return reshape(x[0], {4, -1});
                   },
                   {r64({2, 6})}});
  cases.push_back({"transpose",
                   [](Graph&, auto& x) {
                     return transpose(x[0], {2, 0, 1});
                   },
                   {r64({2, 3, 4})}});
  cases.push_back({"broadcast_to",
                   [](Graph&, auto& x) {
                     return broadcast_to(x[0], {2, 3, 4});
                   },
                   {r64({3, 1})}});
  cases.push_back({"concat",
                   [](Graph&, auto& x) {
                     return concat({x[0], x[1], x[0]}, 1);
                   },
                   {r64({2, 3}), r64({2, 1})}});
  cases.push_back({"split",
                   [](Graph&, auto& x) {
                     auto p = split(x[0], {1, 2, 1}, 1);
                     return p[0] * 2.0 + sum(p[2], {1}, true);  // the middle piece is unused
                   },
                   {r64({3, 4})}});
  cases.push_back({"slice",
                   [](Graph&, auto& x) {
                     return slice(x[0], {1, 0}, {kSliceEnd, 5}, {1, 2});
                   },
                   {r64({3, 5})}});
  cases.push_back(
      {"gather (repeats)",
       [](Graph& g, auto& x) {
         return gather(x[0], g.constant(Tensor::from_vector<int64_t>({2, 0, 2, -1})), 1);
       },
       {r64({2, 3})}});
  cases.push_back({"cast",
                   [](Graph&, auto& x) { return cast(cast(x[0], f32), f64) * x[0]; },
                   {r64({4})},
                   1e-2,
                   1e-4});
  cases.push_back({"identity", [](Graph&, auto& x) { return identity(x[0]) * x[0]; }, {r64({4})}});
  cases.push_back({"expand_dims",
                   [](Graph&, auto& x) {
                     return expand_dims(x[0], {0, 2}) * 3.0;
                   },
                   {r64({2, 3})}});
  cases.push_back({"add_n",
                   [](Graph&, auto& x) {
                     return add_n({x[0], x[0] * x[0], x[0]});
                   },
                   {r64({3})}});
  return cases;
}

TEST(Gradients, EveryDifferentiableOpMatchesFiniteDifferences) {
  int compared = 0;
  for (const OpCase& c : op_cases())
    compared += check_gradients(c.build, c.inputs, c.name, c.rtol, 1e-8, c.h);
  EXPECT_GT(compared, 300);
  std::printf("[gradcheck] compared %d partial derivatives over %zu op cases\n", compared,
              op_cases().size());
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
  std::vector<Value> grads = gradients(y, {x, z});
  Session s(g);
  Tensor in = Tensor::from_vector<double>({1.5, -2, 3});
  auto out = s.run({{x, in}, {z, in}}, grads);
  EXPECT_EQ(out[0].to_vector<double>(), in.to_vector<double>());  // only the x factor
  EXPECT_EQ(out[1].to_vector<double>(), (std::vector<double>{0, 0, 0}));
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
  auto out = s.run({{x, Tensor::from_vector<double>({1, 2})}}, {gradients(y, {x}, dy)[0]});
  EXPECT_EQ(out[0].to_vector<double>(), (std::vector<double>{30, 500}));
  testing::expect_error<GraphError>([&] { gradients(y, {x}, g.constant(Tensor::zeros(f64, {3}))); },
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
