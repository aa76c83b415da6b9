// Every op on the GPU against the CPU (CTest label `gpu`): one table of cases, each run in f32,
// f64, f16 and bf16 where the op takes them, forward values and the gradients of sum(y * r).
// 16-bit cases are checked against the CPU in f32 on the same (rounded) inputs; the tolerance
// per dtype is in one place, kTolerance.
#include "gpu_test_util.h"
#include "special_values.h"
#include "unary_ranges.h"

namespace kiln {
namespace {

// |gpu - cpu| <= tolerance * max(1, |cpu|), per dtype of the GPU graph.
double tolerance_of(DType dtype) {
  switch (dtype) {
    case DType::f64:
      return 1e-9;
    case DType::f32:
      return 5e-5;
    case DType::f16:
      return 1.5e-2;
    case DType::bf16:
      return 6e-2;
    default:
      return 0;  // integers and bools match exactly
  }
}

// A case's graph, built once for the GPU (in `dtype`) and once for the CPU (in f32 where dtype
// is 16-bit). Inputs are drawn from the same seed and rounded through `dtype`, so both sides
// see the same numbers.
class CaseGraph {
 public:
  CaseGraph(DType dtype, DType storage, uint32_t seed)
      : dtype_(dtype), storage_(storage), rng_(seed) {}

  Value input(const Shape& shape, double low = -1, double high = 1) {
    std::uniform_real_distribution<double> dist(low, high);
    Tensor rounded = Tensor::empty(storage_, shape);
    dispatch_all(storage_, [&](auto tag) {
      using T = decltype(tag);
      for (int64_t i = 0; i < rounded.numel(); ++i) rounded.data<T>()[i] = convert<T>(dist(rng_));
    });
    Tensor value = Tensor::empty(dtype_, shape);
    dispatch_all(dtype_, [&](auto tag) {
      using T = decltype(tag);
      for (int64_t i = 0; i < value.numel(); ++i)
        value.data<T>()[i] = convert<T>(rounded.element(i));
    });
    Value v = g.placeholder(str("x", feeds.size()), dtype_, shape);
    feeds.emplace_back(v, value);
    float_inputs.push_back(v);
    return v;
  }
  Value ints(const std::vector<int64_t>& values, const Shape& shape) {
    Value v = g.placeholder(str("i", feeds.size()), i64, shape);
    feeds.emplace_back(v, Tensor::from_vector(values, shape));
    return v;
  }
  Value scalar(double value) { return g.scalar(value, dtype_); }
  DType dtype() const { return dtype_; }

  Graph g;
  FeedList feeds;
  std::vector<Value> float_inputs;

 private:
  DType dtype_, storage_;
  std::mt19937 rng_;
};

struct OpCase {
  std::string name;
  std::function<Value(CaseGraph&)> build;
  std::vector<DType> dtypes = {f32, f64, f16, bf16};
  bool gradients = true;
};

Value op(CaseGraph& c, const std::string& name, const std::vector<Value>& inputs,
         AttrMap attrs = {}) {
  return c.g.add(name, inputs, std::move(attrs));
}

std::vector<OpCase> op_cases() {
  std::vector<OpCase> cases;
  for (const testing::UnaryRange& u : testing::unary_ranges())
    cases.push_back({u.op, [u](CaseGraph& c) {
                       return op(c, u.op, {c.input({3, 70}, u.low, u.high)});
                     }});
  for (const char* name : {"add", "sub", "mul", "div", "maximum", "minimum"})
    cases.push_back({name, [name](CaseGraph& c) {
                       return op(c, name, {c.input({2, 3, 40}, 0.2, 2), c.input({3, 1}, 0.2, 2)});
                     }});
  cases.push_back({"pow", [](CaseGraph& c) {
                     return op(c, "pow", {c.input({3, 40}, 0.3, 2), c.input({40}, -1.5, 2)});
                   }});
  cases.push_back({"gelu_grad",
                   [](CaseGraph& c) {
                     return op(c, "gelu_grad", {c.input({50}), c.input({50})});
                   },
                   {f32, f64, f16, bf16},
                   false});
  for (const char* name : {"equal", "not_equal", "less", "less_equal", "greater", "greater_equal"})
    cases.push_back({name,
                     [name](CaseGraph& c) {
                       Value a = c.input({4, 30});
                       // Half the pairs equal, so equal/not_equal see both answers.
                       Value b = where(greater(c.input({4, 30}), c.scalar(0)), a, c.input({30}));
                       return op(c, name, {a, b});
                     },
                     {f32, f64, f16, bf16},
                     false});
  cases.push_back({"where", [](CaseGraph& c) {
                     Value cond = greater(c.input({4, 1}), c.scalar(0));
                     return op(c, "where", {cond, c.input({4, 30}), c.input({30})});
                   }});
  cases.push_back({"cast",
                   [](CaseGraph& c) { return cast(cast(c.input({60}, -50, 50), i32), c.dtype()); },
                   {f32, f64, f16, bf16},
                   false});
  cases.push_back({"add_n", [](CaseGraph& c) {
                     std::vector<Value> in;
                     for (int i = 0; i < 10; ++i) in.push_back(c.input({5, 7}));
                     return op(c, "add_n", in);
                   }});
  for (int t = 0; t < 4; ++t)
    cases.push_back({str("matmul_t", t), [t](CaseGraph& c) {
                       const bool ta = t & 1, tb = t & 2;
                       Value a = c.input(ta ? Shape{2, 40, 33} : Shape{2, 33, 40});
                       Value w = c.input(tb ? Shape{50, 40} : Shape{40, 50});
                       return op(c, "matmul", {a, w}, {{"transpose_a", ta}, {"transpose_b", tb}});
                     }});
  for (const char* act : {"none", "relu"})
    cases.push_back({str("matmul_bias_", act), [act](CaseGraph& c) {
                       return op(c, "matmul_bias",
                                 {c.input({33, 40}), c.input({50, 40}), c.input({50})},
                                 {{"transpose_b", true}, {"activation", std::string(act)}});
                     }});
  cases.push_back({"matmul_batch", [](CaseGraph& c) {
                     return matmul(c.input({3, 1, 8, 16}), c.input({2, 16, 9}));
                   }});
  for (const char* name : {"sum", "mean", "max", "min"}) {
    for (auto axes : {std::vector<int64_t>{0, 2}, std::vector<int64_t>{1}, std::vector<int64_t>{2},
                      std::vector<int64_t>{}})
      for (bool keep : {false, true})
        cases.push_back(
            {str(name, "_axes", axes.size(), axes.empty() ? 9 : axes[0], "_keep", keep),
             [name, axes, keep](CaseGraph& c) {
               return op(c, name, {c.input({6, 50, 7})}, {{"axes", axes}, {"keepdims", keep}});
             }});
  }
  for (const char* name : {"argmax", "argmin"})
    cases.push_back({name,
                     [name](CaseGraph& c) {
                       return op(c, name, {c.input({5, 40, 3})}, {{"axis", int64_t{1}}});
                     },
                     {f32, f64, f16, bf16},
                     false});
  cases.push_back({"reshape", [](CaseGraph& c) { return reshape(c.input({4, 6}), {3, -1}); }});
  cases.push_back({"transpose", [](CaseGraph& c) {
                     return transpose(c.input({5, 6, 7}), {2, 0, 1});
                   }});
  cases.push_back({"broadcast_to", [](CaseGraph& c) {
                     return broadcast_to(c.input({3, 1}), {4, 3, 5});
                   }});
  cases.push_back({"expand_dims", [](CaseGraph& c) {
                     return expand_dims(c.input({3, 4}), {0, 2});
                   }});
  cases.push_back({"concat", [](CaseGraph& c) {
                     return concat({c.input({4, 3, 2}), c.input({4, 1, 2}), c.input({4, 5, 2})}, 1);
                   }});
  cases.push_back(
      {"split", [](CaseGraph& c) {
         std::vector<Value> parts = split(c.input({4, 9, 3}), std::vector<int64_t>{2, 3, 4}, 1);
         return parts[1] * parts[2].graph()->scalar(2.0, c.dtype()) + sum(parts[2], {1}, true) +
                sum(parts[0], {1}, true);
       }});
  cases.push_back({"slice", [](CaseGraph& c) {
                     return slice(c.input({9, 12}), {1, -9}, {8, 12}, {2, 3});
                   }});
  cases.push_back({"gather", [](CaseGraph& c) {
                     Value idx = c.ints({4, 0, -1, 2, 4, 1}, {2, 3});
                     return gather(c.input({5, 3, 6}), idx, 1 - 1);
                   }});
  cases.push_back({"gather_axis1", [](CaseGraph& c) {
                     return gather(c.input({3, 7, 4}), c.ints({6, 0, 6}, {3}), 1);
                   }});
  for (int64_t axis : {int64_t{1}, int64_t{-1}})
    for (const char* name : {"softmax", "log_softmax"})
      cases.push_back({str(name, "_axis", axis), [name, axis](CaseGraph& c) {
                         return op(c, name, {c.input({3, 40, 5}, -3, 3)}, {{"axis", axis}});
                       }});
  cases.push_back({"softmax_cross_entropy", [](CaseGraph& c) {
                     Value labels = c.ints({3, 0, 39, 4, 17}, {5});
                     return softmax_cross_entropy(c.input({5, 40}, -3, 3), labels);
                   }});
  cases.push_back({"fused_chain", [](CaseGraph& c) {  // the fusion pass makes one kernel
                     Value a = c.input({64, 33}), b = c.input({33}), s = c.input({64, 1});
                     return tanh(a * b + s) * sigmoid(a) - relu(a - b);
                   }});
  cases.push_back({"iota",
                   [](CaseGraph& c) {
                     return iota(c.g, {4, 5, 6}, 1, c.dtype());
                   },
                   {f32, f64, f16, bf16},
                   false});
  cases.push_back({"fill",
                   [](CaseGraph& c) {
                     return fill(c.g, {7, 3}, 2.5, c.dtype());
                   },
                   {f32, f64, f16, bf16},
                   false});
  for (const char* name : {"random_uniform", "random_normal"})
    cases.push_back({name,
                     [name](CaseGraph& c) {
                       return std::string(name) == "random_uniform"
                                  ? random_uniform(c.g, {40, 50}, -2, 3, 7, c.dtype())
                                  : random_normal(c.g, {40, 50}, 1, 2, 7, c.dtype());
                     },
                     {f32, f64},
                     false});
  return cases;
}

// Runs y (and the gradients of sum(y * r)) on `device`.
std::vector<Tensor> run_case(CaseGraph& c, const Value& y, Device device, bool with_gradients) {
  std::vector<Value> fetches = {y};
  FeedList feeds = c.feeds;
  if (with_gradients && is_floating(y.dtype())) {
    Value r = c.g.placeholder("r", y.dtype(), y.shape());
    Tensor weights = Tensor::empty(y.dtype(), y.shape());
    std::mt19937 rng(99);
    std::uniform_real_distribution<double> dist(-1, 1);
    dispatch_all(y.dtype(), [&](auto tag) {
      using T = decltype(tag);
      for (int64_t i = 0; i < weights.numel(); ++i) weights.data<T>()[i] = convert<T>(dist(rng));
    });
    feeds.emplace_back(r, weights);
    std::vector<Value> grads = gradients(sum(y * r), c.float_inputs);
    for (const Value& g : grads)
      if (g.defined()) fetches.push_back(g);
  }
  Session session(c.g, {.device = device});
  return session.run(feeds, fetches);
}

TEST(CudaOps, EveryOpMatchesTheCpu) {
  KILN_REQUIRE_GPU();
  int checked = 0;
  std::vector<std::string> failures;
  for (const OpCase& oc : op_cases()) {
    for (DType dtype : oc.dtypes) {
      const bool half = dtype == f16 || dtype == bf16;
      const uint32_t seed = static_cast<uint32_t>(std::hash<std::string>{}(oc.name));
      CaseGraph gpu(dtype, dtype, seed), cpu(half ? f32 : dtype, dtype, seed);
      std::vector<Tensor> got, want;
      try {
        got = run_case(gpu, oc.build(gpu), Device::cuda(0), oc.gradients);
        want = run_case(cpu, oc.build(cpu), Device::cpu(), oc.gradients);
      } catch (const std::exception& e) {
        failures.push_back(str(oc.name, " ", dtype, ": ", e.what()));
        continue;
      }
      ASSERT_EQ(got.size(), want.size()) << oc.name;
      const double tol = tolerance_of(got[0].dtype());
      for (size_t k = 0; k < got.size(); ++k) {
        ASSERT_EQ(got[k].shape(), want[k].shape()) << oc.name << " " << dtype << " output " << k;
        std::vector<double> g = got[k].to_vector<double>(), w = want[k].to_vector<double>();
        for (size_t i = 0; i < g.size(); ++i) {
          const double allowed = tolerance_of(got[k].dtype()) * std::max(1.0, std::abs(w[i]));
          if (!(std::abs(g[i] - w[i]) <= allowed) && !(std::isnan(g[i]) && std::isnan(w[i]))) {
            failures.push_back(str(oc.name, " ", dtype, (k ? " gradient " : " output "), k,
                                   " element ", i, ": gpu ", g[i], " cpu ", w[i], " (tol ", tol,
                                   ")"));
            break;
          }
          ++checked;
        }
      }
    }
  }
  for (const std::string& f : failures) ADD_FAILURE() << f;
  std::printf("cuda op table: %d values checked against the CPU, %zu failures\n", checked,
              failures.size());
}

// The generated kernels and the interpreter (where NVRTC is missing) compute the same values,
// in both read modes (16-byte steps, and element by element with an odd count).
TEST(CudaOps, GeneratedFusedKernelsMatchTheInterpreter) {
  KILN_REQUIRE_GPU();
  for (int64_t n : {int64_t{4096}, int64_t{4099}}) {
    Graph g;
    Value a = g.placeholder("a", f32, {n, 3}), b = g.placeholder("b", f32, {3});
    Value y = where(greater(a, b), tanh(a * b + 0.5), -sigmoid(a) / (abs(b) + 1.0));
    FeedList feeds = {{a, testing::random_tensor(f32, {n, 3}, -2, 2, 1)},
                      {b, testing::random_tensor(f32, {3}, -2, 2, 2)}};
    Session generated(g, {.device = Device::cuda(0)});
    const Tensor want = generated.run(feeds, {y})[0];
    ::setenv("KILN_FUSED_INTERPRETER", "1", 1);
    Session interpreted(g, {.device = Device::cuda(0)});
    const Tensor got = interpreted.run(feeds, {y})[0];
    ::unsetenv("KILN_FUSED_INTERPRETER");
    const Plan& plan = generated.plan(feeds, {y});
    EXPECT_EQ(plan.graph->node(plan.steps.back().node).op_name(), "fused_elementwise");
    testing::expect_near(testing::values(want), got, 1e-6, 1e-6, str("n = ", n));
  }
}

// The NaN rule on the GPU: every unary and binary op with NaN and +-inf gives what the CPU
// tests require (tests/special_values.h), alone and fused (generated kernel and interpreter),
// in f32, f64, f16 and bf16; matmul_bias with relu (cuBLASLt bias epilogue, then relu's own
// functor) keeps a NaN row NaN.
TEST(CudaOps, NaNAndInfinitiesFollowTheRule) {
  KILN_REQUIRE_GPU();
  int checked = 0;
  for (const char* interpreter : {"0", "1"}) {
    ::setenv("KILN_FUSED_INTERPRETER", interpreter, 1);
    for (DType dtype : {f32, f64, f16, bf16}) {
      for (const auto& c : testing::special_unary_cases()) {
        Graph g;
        Value x = g.placeholder("x", f32, {3});
        Value zero = g.placeholder("zero", dtype, {3});
        Value xd = cast(x, dtype);
        Value alone = g.add(c.op, {xd});
        Value fused = g.add(c.op, {xd}) + zero;
        Session s(g, {.device = Device::cuda(0)});
        auto out = s.run({{x, Tensor::from_vector<float>({NAN, INFINITY, -INFINITY})},
                          {zero, Tensor::zeros(dtype, {3})}},
                         {alone, fused});
        const double expected[] = {c.at_nan, c.at_pos_inf, c.at_neg_inf};
        for (const Tensor& y : out)
          for (int i = 0; i < 3; ++i, ++checked)
            EXPECT_TRUE(testing::same_special(expected[i], y.element(i)))
                << c.op << " in " << dtype << " at element " << i << " gave " << y.element(i)
                << " (interpreter " << interpreter << ")";
      }
      const std::vector<double>& v = testing::special_operands();
      const int64_t n = static_cast<int64_t>(v.size());
      std::vector<float> values(v.begin(), v.end());
      for (const std::string& op : testing::special_binary_ops()) {
        Graph g;
        Value a = g.placeholder("a", f32, {n, 1}), b = g.placeholder("b", f32, {1, n});
        Value y = g.add(op, {cast(a, dtype), cast(b, dtype)});
        Session s(g, {.device = Device::cuda(0)});
        Tensor got = s.run({{a, Tensor::from_vector<float>(values, {n, 1})},
                            {b, Tensor::from_vector<float>(values, {1, n})}},
                           {y})[0];
        for (int64_t i = 0; i < n; ++i)
          for (int64_t j = 0; j < n; ++j, ++checked) {
            const double exact = testing::special_binary_reference(op, v[i], v[j]);
            const double expected = dispatch_all(got.dtype(), [&](auto tag) {
              return convert<double>(convert<decltype(tag)>(exact));
            });
            EXPECT_TRUE(testing::same_special(expected, got.element(i * n + j)))
                << op << "(" << v[i] << ", " << v[j] << ") in " << dtype << " gave "
                << got.element(i * n + j);
          }
      }
    }
  }
  ::unsetenv("KILN_FUSED_INTERPRETER");
  Graph g;
  Value x = g.placeholder("x", f32, {2, 3});
  Value w = g.constant(Tensor::from_vector<float>({1, 0, 0, 1, 0, 0}, {3, 2}));
  Value h = relu(matmul(x, w) + g.constant(Tensor::from_vector<float>({-10, -10})));
  Session s(g, {.device = Device::cuda(0)});
  const FeedList feeds = {{x, Tensor::from_vector<float>({1, NAN, 2, -1, -2, -3}, {2, 3})}};
  Tensor y = s.run(feeds, {h})[0];
  const Plan& plan = s.plan(feeds, {h});
  EXPECT_EQ(plan.graph->node(plan.steps.back().node).op_name(), "matmul_bias");
  EXPECT_TRUE(std::isnan(y.element(0)) && std::isnan(y.element(1)));
  EXPECT_EQ(y.element(2), 0);
  std::printf("cuda NaN rule: %d values checked\n", checked);
}

}  // namespace
}  // namespace kiln
