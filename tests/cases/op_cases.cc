#include "cases/op_cases.h"

#include <cmath>
#include <random>
#include <tuple>

namespace kiln::testing {

CaseGraph::CaseGraph(DType dtype, DType storage, uint32_t seed)
    : dtype_(dtype), storage_(storage), rng_(seed) {}

Value CaseGraph::input(const Shape& shape, double low, double high) {
  std::uniform_real_distribution<double> dist(low, high);
  Tensor rounded = Tensor::empty(storage_, shape);
  dispatch_all(storage_, [&](auto tag) {
    using T = decltype(tag);
    for (int64_t i = 0; i < rounded.numel(); ++i) rounded.data<T>()[i] = convert<T>(dist(rng_));
  });
  Tensor value = Tensor::empty(dtype_, shape);
  dispatch_all(dtype_, [&](auto tag) {
    using T = decltype(tag);
    for (int64_t i = 0; i < value.numel(); ++i) value.data<T>()[i] = convert<T>(rounded.element(i));
  });
  Value v = g.placeholder(str("x", feeds.size()), dtype_, shape);
  feeds.emplace_back(v, value);
  float_inputs.push_back(v);
  return v;
}

Value CaseGraph::ints(const std::vector<int64_t>& values, const Shape& shape) {
  Value v = g.placeholder(str("i", feeds.size()), i64, shape);
  feeds.emplace_back(v, Tensor::from_vector(values, shape));
  return v;
}

Value CaseGraph::scalar(double value) {
  return g.scalar(value, dtype_);
}

Value CaseGraph::variable(const Shape& shape, double low, double high) {
  return g.variable(str("v", variables_++), shape,
                    init::uniform(low, high, static_cast<int64_t>(rng_() % 1000)), dtype_);
}

std::vector<Tensor> run_case(CaseGraph& c, const Value& y, Device device, bool with_gradients) {
  std::vector<Value> fetches = {y};
  FeedList feeds = c.feeds;
  if (with_gradients && is_floating(y.dtype())) {
    Value r = c.g.placeholder("r", y.dtype(), y.shape());
    Tensor weights = Tensor::empty(y.dtype(), y.shape());
    std::mt19937 rng(99);
    std::uniform_real_distribution<double> dist(-1, 1);
    // Rounded through the case's storage dtype as its inputs are, so a 16-bit run and its
    // f32 reference weigh y alike (a sum over many y, a bias gradient, would differ otherwise).
    Tensor rounded = Tensor::empty(c.storage(), y.shape());
    dispatch_all(c.storage(), [&](auto tag) {
      using S = decltype(tag);
      for (int64_t i = 0; i < rounded.numel(); ++i) rounded.data<S>()[i] = convert<S>(dist(rng));
    });
    dispatch_all(y.dtype(), [&](auto tag) {
      using T = decltype(tag);
      for (int64_t i = 0; i < weights.numel(); ++i)
        weights.data<T>()[i] = convert<T>(rounded.element(i));
    });
    feeds.emplace_back(r, weights);
    std::vector<Value> grads = gradients(sum(y * r), c.float_inputs, {.materialize_unused = true});
    for (const Value& g : grads)
      if (g.defined()) fetches.push_back(g);
  }
  Session session(c.g, {.device = device});
  return session.run(feeds, fetches);
}

int compare_with_cpu(const OpCase& oc, DType dtype, Device device,
                     std::vector<std::string>& failures) {
  const bool half = dtype == f16 || dtype == bf16;
  const uint32_t seed = case_seed(oc.name);
  CaseGraph tested(dtype, dtype, seed), cpu(half ? f32 : dtype, dtype, seed);
  std::vector<Tensor> got, want;
  try {
    got = run_case(tested, oc.build(tested), device, oc.gradients);
    want = run_case(cpu, oc.build(cpu), Device::cpu(), oc.gradients);
  } catch (const std::exception& e) {
    failures.push_back(str(oc.name, " ", dtype, ": ", e.what()));
    return 0;
  }
  if (got.size() != want.size()) {
    failures.push_back(str(oc.name, " ", dtype, ": ", got.size(), " results, want ", want.size()));
    return 0;
  }
  int checked = 0;
  for (size_t k = 0; k < got.size(); ++k) {
    // Relative to each value (inputs were rounded to the 16-bit type on both sides).
    const std::string problem = compare_relative(got[k], want[k], got[k].dtype());
    if (!problem.empty()) {
      failures.push_back(
          str(oc.name, " ", dtype, (k ? " gradient " : " output "), k, ": ", problem));
      continue;
    }
    checked += static_cast<int>(got[k].numel());
  }
  return checked;
}

uint32_t case_seed(const std::string& name) {
  uint32_t h = 2166136261u;  // FNV-1a
  for (unsigned char c : name) h = (h ^ c) * 16777619u;
  return h;
}

double relative_tolerance(DType dtype) {
  switch (dtype) {
    case DType::f64:
      return 1e-9;
    case DType::f32:
      return 5e-5;
    case DType::f16:
      return 1e-2;
    case DType::bf16:
      return 5e-2;
    default:
      return 0;  // integers and bools match exactly
  }
}

std::string compare_relative(const Tensor& got, const Tensor& want, DType as) {
  if (got.shape() != want.shape()) return str("shape ", got.shape(), " vs ", want.shape());
  const std::vector<double> g = got.to_vector<double>(), w = want.to_vector<double>();
  double largest = 0;
  for (double v : w)
    if (std::isfinite(v)) largest = std::max(largest, std::abs(v));
  const double rtol = relative_tolerance(as);
  for (size_t i = 0; i < g.size(); ++i) {
    if (std::isnan(g[i]) && std::isnan(w[i])) continue;
    if (g[i] == w[i]) continue;  // infinities, exact integers
    if (std::abs(g[i] - w[i]) <= rtol * (std::abs(w[i]) + 0.1 * largest)) continue;
    return str("element ", i, ": ", g[i], " vs ", w[i], " (rtol ", rtol, ")");
  }
  return "";
}

namespace {

Value op(CaseGraph& c, const std::string& name, const std::vector<Value>& inputs,
         AttrMap attrs = {}) {
  return c.g.add(name, inputs, std::move(attrs));
}

// f64 references of elementwise ops, with NumPy broadcasting of the inputs.
Reference unary_reference(double (*f)(double)) {
  return [f](const std::vector<Tensor>& in) {
    std::vector<double> out;
    for (int64_t i = 0; i < in[0].numel(); ++i) out.push_back(f(in[0].element(i)));
    return out;
  };
}

Reference binary_reference(double (*f)(double, double)) {
  return [f](const std::vector<Tensor>& in) {
    Shape shape;
    broadcast_shapes(in[0].shape(), in[1].shape(), &shape);
    std::vector<double> out;
    for (int64_t i = 0; i < shape.numel(); ++i) {
      // The element of input k that output element i reads.
      auto at = [&](const Tensor& t) {
        int64_t index = 0, rest = i, stride = 1;
        std::vector<int64_t> coords(shape.rank());
        for (int64_t d = shape.rank() - 1; d >= 0; --d)
          coords[d] = rest % shape[d], rest /= shape[d];
        for (int64_t d = t.rank() - 1, o = shape.rank() - 1; d >= 0; --d, --o) {
          if (t.shape()[d] != 1) index += coords[o] * stride;
          stride *= t.shape()[d];
        }
        return t.element(index);
      };
      out.push_back(f(at(in[0]), at(in[1])));
    }
    return out;
  };
}

double gelu_ref(double x) {
  return 0.5 * x * std::erfc(-x / std::sqrt(2.0));
}
double gelu_grad_ref(double x, double dy) {
  return dy *
         (0.5 * std::erfc(-x / std::sqrt(2.0)) + x * std::exp(-0.5 * x * x) / std::sqrt(2 * M_PI));
}

struct Unary {
  const char* op;
  double low, high;
  double (*f)(double);
};

std::vector<OpCase> make_cases() {
  std::vector<OpCase> cases;
  auto add = [&](OpCase c) { cases.push_back(std::move(c)); };

  // ---- Elementwise unary: ranges inside each domain, away from kinks for finite differences.
  const Unary unary[] = {
      {"neg", -2, 2, [](double x) { return -x; }},
      {"abs", 0.1, 2, [](double x) { return std::abs(x); }},
      {"square", -2, 2, [](double x) { return x * x; }},
      {"relu", 0.1, 2, [](double x) { return x < 0 ? 0 : x; }},
      {"exp", -2, 2, [](double x) { return std::exp(x); }},
      {"log", 0.2, 3, [](double x) { return std::log(x); }},
      {"sqrt", 0.2, 3, [](double x) { return std::sqrt(x); }},
      {"rsqrt", 0.2, 3, [](double x) { return 1 / std::sqrt(x); }},
      {"tanh", -2, 2, [](double x) { return std::tanh(x); }},
      {"sigmoid", -4, 4, [](double x) { return 1 / (1 + std::exp(-x)); }},
      {"gelu", -4, 4, gelu_ref},
      {"sin", -3, 3, [](double x) { return std::sin(x); }},
      {"cos", -3, 3, [](double x) { return std::cos(x); }},
      {"gelu_tanh", -4, 4,
       [](double x) {
         return x / (1 + std::exp(-2 * std::sqrt(2 / M_PI) * (x + 0.044715 * x * x * x)));
       }},
      {"silu", -4, 4, [](double x) { return x / (1 + std::exp(-x)); }},
      {"erf", -2, 2, [](double x) { return std::erf(x); }},
      {"log1p", -0.5, 3, [](double x) { return std::log1p(x); }},
      {"softplus", -4, 4, [](double x) { return std::log1p(std::exp(x)); }},
      {"expm1", -3, 2, [](double x) { return std::expm1(x); }},
      {"sign", 0.1, 2, [](double x) { return double((x > 0) - (x < 0)); }},
  };
  for (const Unary& u : unary)
    add({.op = u.op,
         .name = u.op,
         .build =
             [u](CaseGraph& c) {
               return op(c, u.op, {c.input({3, 20}, u.low, u.high)});
             },
         .reference = unary_reference(u.f)});
  for (const char* name : {"abs", "relu", "sign"})  // the other side of the kink
    add({name, str(name, "_negative"), [name](CaseGraph& c) {
           return op(c, name, {c.input({4, 5}, -2, -0.1)});
         }});

  // ---- Elementwise binary, broadcasting both ways and against a scalar.
  struct Binary {
    const char* op;
    double (*f)(double, double);
  };
  const Binary binary[] = {
      {"add", [](double a, double b) { return a + b; }},
      {"sub", [](double a, double b) { return a - b; }},
      {"mul", [](double a, double b) { return a * b; }},
      {"div", [](double a, double b) { return a / b; }},
      {"maximum", [](double a, double b) { return std::max(a, b); }},
      {"minimum", [](double a, double b) { return std::min(a, b); }},
  };
  for (const Binary& b : binary) {
    add({.op = b.op,
         .name = str(b.op, "_broadcast"),
         .build =
             [b](CaseGraph& c) {
               return op(c, b.op, {c.input({2, 3, 8}, 0.2, 2), c.input({3, 1}, 0.2, 2)});
             },
         .reference = binary_reference(b.f)});
    add({.op = b.op,
         .name = str(b.op, "_scalar"),
         .build =
             [b](CaseGraph& c) {
               return op(c, b.op, {c.input({}, 0.5, 2), c.input({5}, 0.5, 2)});
             },
         .reference = binary_reference(b.f)});
  }
  add({.op = "pow",
       .name = "pow",
       .build =
           [](CaseGraph& c) {
             return op(c, "pow", {c.input({3, 8}, 0.3, 2), c.input({8}, -1.5, 2)});
           },
       .reference = binary_reference([](double a, double b) { return std::pow(a, b); })});
  add({.op = "gelu_grad",
       .name = "gelu_grad",
       .build =
           [](CaseGraph& c) {
             return op(c, "gelu_grad", {c.input({4, 6}, -3, 3), c.input({6})});
           },
       .reference = binary_reference(gelu_grad_ref)});
  for (const char* name : {"equal", "not_equal", "less", "less_equal", "greater", "greater_equal"})
    add({.op = name,
         .name = name,
         .build =
             [name](CaseGraph& c) {
               Value a = c.input({4, 10});
               // Half the pairs equal, so every comparison sees both answers.
               Value b = where(greater(c.input({4, 10}), c.scalar(0)), a, c.input({10}));
               return op(c, name, {a, b});
             },
         .gradients = false});
  add({"where", "where", [](CaseGraph& c) {
         Value cond = greater(c.input({4, 1}), c.scalar(0));
         return op(c, "where", {cond, c.input({4, 6}), c.input({6})});
       }});
  add({.op = "cast",
       .name = "cast_float",
       .build =
           [](CaseGraph& c) {
             // Through f32 and back: exact in f32, the gradient passes through both casts.
             return cast(cast(c.input({12}), f32), c.dtype()) * c.input({12});
           },
       .fd_step = 1e-2,
       .fd_rtol = 1e-4});
  add({.op = "cast",
       .name = "cast_int",
       .build = [](CaseGraph& c) { return cast(cast(c.input({20}, -50, 50), i32), c.dtype()); },
       .gradients = false});
  add({"add_n", "add_n", [](CaseGraph& c) {
         std::vector<Value> in;
         for (int i = 0; i < 5; ++i) in.push_back(c.input({3, 4}));
         return add_n(in);
       }});

  // ---- Products.
  for (int t = 0; t < 4; ++t)
    add({"matmul", str("matmul_t", t), [t](CaseGraph& c) {
           const bool ta = t & 1, tb = t & 2;
           Value a = c.input(ta ? Shape{2, 9, 7} : Shape{2, 7, 9});
           Value w = c.input(tb ? Shape{5, 9} : Shape{9, 5});
           return op(c, "matmul", {a, w}, {{"transpose_a", ta}, {"transpose_b", tb}});
         }});
  add({"matmul", "matmul_batch_broadcast", [](CaseGraph& c) {
         return matmul(c.input({3, 1, 4, 6}), c.input({2, 6, 5}));
       }});
  add({"matmul", "matmul_vector_matrix", [](CaseGraph& c) {
         return matmul(c.input({6}), c.input({6, 4}));
       }});
  for (const char* act : {"none", "relu"})
    add({"matmul_bias", str("matmul_bias_", act), [act](CaseGraph& c) {
           return op(c, "matmul_bias", {c.input({6, 8}), c.input({5, 8}), c.input({5})},
                     {{"transpose_b", true}, {"activation", std::string(act)}});
         }});
  // An addend of C's shape (the epilogue pass's fold of a residual or a recurrent step's sum).
  for (const char* act : {"none", "relu"})
    add({"matmul_bias", str("matmul_bias_addend_", act), [act](CaseGraph& c) {
           return op(c, "matmul_bias", {c.input({8, 6}), c.input({8, 5}), c.input({6, 5})},
                     {{"transpose_a", true}, {"activation", std::string(act)}});
         }});

  // ---- Reductions.
  for (const char* name : {"sum", "mean", "max", "min"})
    for (auto axes : {std::vector<int64_t>{0, 2}, std::vector<int64_t>{1}, std::vector<int64_t>{}})
      for (bool keep : {false, true})
        add({name, str(name, "_axes", axes.size(), "_keep", keep),
             [name, axes, keep](CaseGraph& c) {
               return op(c, name, {c.input({3, 10, 4})}, {{"axes", axes}, {"keepdims", keep}});
             }});
  // Long rows and columns into few outputs: the CUDA kernels split them into pieces reduced
  // apart, then combined (ops/math/reduce.cu). Positive values: sums without cancellation, so
  // 16-bit results compare relative to the value.
  for (const char* name : {"sum", "mean", "max", "min"})
    for (const auto& long_case : {std::tuple{"rows", Shape{3, 9000}, std::vector<int64_t>{1}},
                                  std::tuple{"columns", Shape{700, 6}, std::vector<int64_t>{0}},
                                  std::tuple{"all", Shape{20000}, std::vector<int64_t>{}}})
      add({.op = name,
           .name = str(name, "_long_", std::get<0>(long_case)),
           .build =
               [name, shape = std::get<1>(long_case), axes = std::get<2>(long_case)](CaseGraph& c) {
                 return op(c, name, {c.input(shape, 0.5, 1.5)}, {{"axes", axes}});
               },
           .gradients = false});
  for (const char* name : {"argmax", "argmin"})
    add({.op = name,
         .name = name,
         .build =
             [name](CaseGraph& c) {
               return op(c, name, {c.input({5, 9, 3})}, {{"axis", int64_t{1}}});
             },
         .gradients = false});

  // cumsum along the middle axis of [3, 7, 4], every flag combination, against running sums.
  for (bool exclusive : {false, true})
    for (bool reverse : {false, true})
      add({.op = "cumsum",
           .name = str("cumsum", exclusive ? "_exclusive" : "", reverse ? "_reverse" : ""),
           .build =
               [exclusive, reverse](CaseGraph& c) {
                 return cumsum(c.input({3, 7, 4}), 1, exclusive, reverse);
               },
           .reference =
               [exclusive, reverse](const std::vector<Tensor>& in) {
                 std::vector<double> y(84);
                 for (int64_t o = 0; o < 3; ++o)
                   for (int64_t k = 0; k < 4; ++k) {
                     double acc = 0;
                     for (int64_t step = 0; step < 7; ++step) {
                       const int64_t at = (o * 7 + (reverse ? 6 - step : step)) * 4 + k;
                       if (!exclusive) acc += in[0].element(at);
                       y[static_cast<size_t>(at)] = acc;
                       if (exclusive) acc += in[0].element(at);
                     }
                   }
                 return y;
               }});
  add({"cumsum", "cumsum_last", [](CaseGraph& c) { return cumsum(c.input({5, 6}), -1); }});

  // topk (sort is k = -1): both outputs read, the indices as values.
  auto both = [](const Sorted& s) { return s.values + cast(s.indices, s.values.dtype()) * 0.125; };
  add({"topk", "topk_largest_axis1", [both](CaseGraph& c) {
         return both(topk(c.input({3, 7, 4}), 3, 1));
       }});
  add({"topk", "topk_smallest_last", [both](CaseGraph& c) {
         return both(topk(c.input({4, 9}), 4, -1, false));
       }});
  add({"topk", "sort_descending", [both](CaseGraph& c) {
         return both(sort(c.input({5, 6}), 0, true));
       }});

  // ---- Shapes and data movement.
  add({"reshape", "reshape", [](CaseGraph& c) { return reshape(c.input({4, 6}), {3, -1}); }});
  // flatten() and unflatten() build these ops where a reshape cannot keep two unknown dims;
  // the cases build them directly.
  const Reference same_elements = [](const std::vector<Tensor>& in) {
    return in[0].cast(f64).to_vector<double>();
  };
  add({.op = "flatten",
       .name = "flatten_middle",
       .build =
           [](CaseGraph& c) {
             return op(c, "flatten", {c.input({2, 3, 4, 5})},
                       {{"start_axis", int64_t{1}}, {"end_axis", int64_t{2}}});
           },
       .reference = same_elements});
  add({.op = "unflatten",
       .name = "unflatten_last",
       .build =
           [](CaseGraph& c) {
             return op(c, "unflatten", {c.input({2, 3, 12})},
                       {{"axis", int64_t{-1}}, {"sizes", std::vector<int64_t>{3, -1}}});
           },
       .reference = same_elements});
  add({"transpose", "transpose", [](CaseGraph& c) {
         return transpose(c.input({3, 4, 5}), {2, 0, 1});
       }});
  add({"broadcast_to", "broadcast_to", [](CaseGraph& c) {
         return broadcast_to(c.input({3, 1}), {2, 3, 4});
       }});
  add({"expand_dims", "expand_dims", [](CaseGraph& c) {
         return expand_dims(c.input({3, 4}), {0, 2}) * c.scalar(3);
       }});
  add({"concat", "concat", [](CaseGraph& c) {
         return concat({c.input({4, 3, 2}), c.input({4, 1, 2}), c.input({4, 2, 2})}, 1);
       }});
  add({"split", "split", [](CaseGraph& c) {
         std::vector<Value> parts = split(c.input({4, 9, 3}), std::vector<int64_t>{2, 3, 4}, 1);
         return parts[1] * c.scalar(2) + sum(parts[2], {1}, true) + sum(parts[0], {1}, true);
       }});
  add({"slice", "slice", [](CaseGraph& c) {
         return slice(c.input({9, 12}), {1, -9}, {8, 12}, {2, 3});
       }});
  add({"gather", "gather_axis0", [](CaseGraph& c) {
         return gather(c.input({5, 3, 4}), c.ints({4, 0, -1, 2, 4, 1}, {2, 3}), 0);
       }});
  add({"gather", "gather_axis1", [](CaseGraph& c) {
         return gather(c.input({3, 7, 4}), c.ints({6, 0, 6}, {3}), 1);
       }});
  // Repeated indices (the gradient adds them up) and more picks than the axis holds.
  add({"take_along_axis", "take_along_axis_axis1", [](CaseGraph& c) {
         return take_along_axis(c.input({2, 5, 3}),
                                c.ints({4, 0, 4, 1, 1, 2, 3, 4, 0, 0, 2, 1}, {2, 2, 3}), 1);
       }});
  add({"take_along_axis", "take_along_axis_last", [](CaseGraph& c) {
         return take_along_axis(c.input({3, 2}), c.ints({1, 1, 0, 0, 1, 0, 1, 1, 1}, {3, 3}), -1);
       }});
  // A window at a start known only at run time: an i64 scalar, and an i32 [1].
  add({.op = "dynamic_slice",
       .name = "dynamic_slice_axis1",
       .build =
           [](CaseGraph& c) {
             Value x = c.input({3, 7, 4});  // fed first: the reference reads it as in[0]
             return dynamic_slice(x, c.ints({2}, {}), 3, 1);
           },
       .torch = "torch.narrow(a, int(attrs['axis']), int(args[1]), int(attrs['length']))",
       .reference =
           [](const std::vector<Tensor>& in) {
             std::vector<double> y;
             for (int64_t o = 0; o < 3; ++o)
               for (int64_t j = 2; j < 5; ++j)
                 for (int64_t k = 0; k < 4; ++k) y.push_back(in[0].element((o * 7 + j) * 4 + k));
             return y;
           }});
  add({.op = "dynamic_slice",
       .name = "dynamic_slice_last_i32",
       .build =
           [](CaseGraph& c) {
             return dynamic_slice(c.input({4, 6}), cast(c.ints({4}, {1}), i32), 2, -1);
           },
       .torch = "torch.narrow(a, -1, int(args[1]), int(attrs['length']))"});
  // index_copy: Debian's PyTorch 1.13 slice_scatter refuses any window longer than 1.
  static const char* const kTorchUpdateSlice =
      "a.index_copy(int(attrs['axis']), torch.arange(int(args[2]), int(args[2]) + "
      "args[1].shape[int(attrs['axis'])]), args[1])";
  // The update covers rows 4 and 5 of 7; a second write over the first one's window replaces
  // it (its gradient then reaches x only outside both windows).
  add({.op = "dynamic_update_slice",
       .name = "dynamic_update_slice_axis1",
       .build =
           [](CaseGraph& c) {
             Value x = c.input({3, 7, 4});  // fed in this order: the reference reads in[0], in[1]
             Value update = c.input({3, 2, 4});
             return dynamic_update_slice(x, update, c.ints({4}, {}), 1);
           },
       .torch = kTorchUpdateSlice,
       .reference =
           [](const std::vector<Tensor>& in) {
             std::vector<double> y;
             for (int64_t i = 0; i < in[0].numel(); ++i) y.push_back(in[0].element(i));
             for (int64_t o = 0; o < 3; ++o)
               for (int64_t j = 0; j < 2; ++j)
                 for (int64_t k = 0; k < 4; ++k)
                   y[(o * 7 + 4 + j) * 4 + k] = in[1].element((o * 2 + j) * 4 + k);
             return y;
           }});
  add({.op = "dynamic_update_slice",
       .name = "dynamic_update_slice_twice",
       .build =
           [](CaseGraph& c) {
             Value start = cast(c.ints({0}, {1}), i32);
             Value once = dynamic_update_slice(c.input({5, 3}), c.input({2, 3}), start, 0);
             return dynamic_update_slice(once, c.input({1, 3}), start, 0);
           },
       .torch = kTorchUpdateSlice});
  add({"identity", "identity", [](CaseGraph& c) {
         Value x = c.input({4});
         return identity(x) * x;
       }});
  // stop_gradient breaks the gradient on purpose: PyTorch's detach() agrees, finite
  // differences cannot.
  add({.op = "stop_gradient",
       .name = "stop_gradient",
       .build =
           [](CaseGraph& c) {
             Value x = c.input({4});
             return stop_gradient(x) * x;
           },
       .fd_step = -1});  // fd_step < 0: no finite differences
  add({.op = "numel",
       .name = "numel",
       .build =
           [](CaseGraph& c) {
             return numel(c.input({3, 5}), c.dtype());
           },
       .gradients = false});

  // ---- Internal ops of gradients, each checked directly (so their own gradients, the
  // second derivatives of the ops above, meet finite differences too).
  add({"sum_to", "sum_to", [](CaseGraph& c) {
         return op(c, "sum_to", {c.input({2, 3, 4}), c.input({3, 1})});
       }});
  add({"broadcast_like", "broadcast_like", [](CaseGraph& c) {
         return op(c, "broadcast_like", {c.input({3, 1}), c.input({2, 3, 4})});
       }});
  add({"reshape_like", "reshape_like", [](CaseGraph& c) {
         return op(c, "reshape_like", {c.input({4, 3}), c.input({2, 6})});
       }});
  add({.op = "full_like",
       .name = "full_like",
       .build =
           [](CaseGraph& c) {
             return op(c, "full_like", {c.input({2, 3})}, {{"value", 2.5}});
           },
       .gradients = false});
  add({"slice_grad", "slice_grad", [](CaseGraph& c) {
         return op(c, "slice_grad", {c.input({4, 3}), c.input({9, 12})},
                   {{"begin", std::vector<int64_t>{1, -9}},
                    {"end", std::vector<int64_t>{8, 12}},
                    {"step", std::vector<int64_t>{2, 3}}});
       }});
  add({"gather_grad", "gather_grad", [](CaseGraph& c) {
         Value idx = c.ints({4, 0, 4, 2, 4, 1}, {2, 3});
         return op(c, "gather_grad", {c.input({2, 3, 3, 4}), idx, c.input({5, 3, 4})},
                   {{"axis", int64_t{0}}});
       }});
  add({.op = "segment_ids",
       .name = "segment_ids",
       .build =
           [](CaseGraph& c) {
             // Bags [0, 2), [2, 2) (empty), [2, 7), [7, 8).
             return op(c, "segment_ids",
                       {c.ints({0, 2, 2, 7}, {4}), c.ints({5, 1, 0, 0, 3, 2, 2, 4}, {8})});
           },
       .dtypes = {f64},
       .gradients = false,
       .torch = "torch.searchsorted(a, torch.arange(args[1].numel()), right=True) - 1",
       .reference =
           [](const std::vector<Tensor>&) { return std::vector<double>{0, 0, 2, 2, 2, 2, 2, 3}; }});
  add({.op = "bag_argmax",
       .name = "bag_argmax",
       .build =
           [](CaseGraph& c) {
             // Bags [0, 3), [3, 3) (empty), [3, 6) with row 4 left out; row 6 is in no bag.
             Value kept = c.g.constant(
                 Tensor::from_vector<bool>({true, true, true, true, false, true, true}));
             return op(c, "bag_argmax", {c.input({7, 4}), c.ints({0, 3, 3, 6}, {4}), kept},
                       {{"include_last_offset", true}});
           },
       .gradients = false,
       .parity = false,
       .reference =
           [](const std::vector<Tensor>& in) {
             const int64_t ranges[3][2] = {{0, 3}, {3, 3}, {3, 6}};
             std::vector<double> out;
             for (const auto& range : ranges)
               for (int64_t d = 0; d < 4; ++d) {
                 int64_t best = 7;
                 for (int64_t i = range[0]; i < range[1]; ++i)
                   if (i != 4 &&
                       (best == 7 || in[0].element(i * 4 + d) > in[0].element(best * 4 + d)))
                     best = i;
                 out.push_back(static_cast<double>(best));
               }
             return out;
           }});
  add({"take_along_axis_grad", "take_along_axis_grad", [](CaseGraph& c) {
         Value idx = c.ints({2, 0, 2, 1, 0, 0, 1, 2}, {4, 2});
         return op(c, "take_along_axis_grad", {c.input({4, 2}), idx, c.input({3, 2})},
                   {{"axis", int64_t{0}}});
       }});
  add({"split_like", "split_like", [](CaseGraph& c) {
         std::vector<Value> parts =
             c.g.add_node("split_like", {c.input({4, 9}), c.input({4, 2}), c.input({4, 7})},
                          {{"axis", int64_t{1}}});
         return sum(parts[0], {1}, true) * c.scalar(2) + parts[1];
       }});
  add({"softmax_cross_entropy_grad", "softmax_cross_entropy_grad", [](CaseGraph& c) {
         Value labels = c.ints({3, 0, 9, 4, 7}, {5});
         return op(c, "softmax_cross_entropy_grad",
                   {c.input({5, 10}, -3, 3), labels, c.input({5})});
       }});

  // ---- Softmax and losses, including logits near 1e4 (f32 keeps its relative accuracy).
  for (int64_t axis : {int64_t{1}, int64_t{-1}})
    for (const char* name : {"softmax", "log_softmax"})
      add({name, str(name, "_axis", axis), [name, axis](CaseGraph& c) {
             return op(c, name, {c.input({3, 8, 5}, -3, 3)}, {{"axis", axis}});
           }});
  add({.op = "log_softmax",
       .name = "log_softmax_large_logits",
       .build =
           [](CaseGraph& c) {
             return log_softmax(c.input({4, 6}, 9997, 10003), -1);
           },
       .dtypes = {f64, f32},
       .parity_tolerance = 1e-6});
  add({"softmax_cross_entropy", "softmax_cross_entropy", [](CaseGraph& c) {
         return softmax_cross_entropy(c.input({5, 10}, -3, 3), c.ints({3, 0, 9, 4, 7}, {5}));
       }});
  add({"softmax_cross_entropy", "softmax_cross_entropy_smoothing_ignore", [](CaseGraph& c) {
         return softmax_cross_entropy(c.input({5, 10}, -3, 3), c.ints({3, -100, 9, 4, -100}, {5}),
                                      -100, 0.1);
       }});
  add({"softmax_cross_entropy_grad", "softmax_cross_entropy_grad_smoothing_ignore",
       [](CaseGraph& c) {
         Value labels = c.ints({3, 7, 9, 7, 0}, {5});
         return op(c, "softmax_cross_entropy_grad", {c.input({5, 10}, -3, 3), labels, c.input({5})},
                   {{"ignore_index", int64_t{7}}, {"label_smoothing", 0.2}});
       }});
  add({.op = "softmax_cross_entropy",
       .name = "softmax_cross_entropy_large_logits",
       .build =
           [](CaseGraph& c) {
             return softmax_cross_entropy(c.input({4, 6}, 9997, 10003), c.ints({1, 0, 5, 3}, {4}));
           },
       .dtypes = {f64, f32},
       .parity_tolerance = 1e-6});

  // ---- Fusion: the passes turn this chain into one fused_elementwise kernel.
  add({"fused_elementwise", "fused_chain", [](CaseGraph& c) {
         Value a = c.input({16, 9}), b = c.input({9}), s = c.input({16, 1});
         return tanh(a * b + s) * sigmoid(a) - relu(a - b);
       }});

  // ---- Sources and state: forward only (no float input to differentiate).
  add({"placeholder", "placeholder", [](CaseGraph& c) { return c.input({3, 4}); }});
  add({"constant", "constant", [](CaseGraph& c) {
         Tensor value = Tensor::empty(c.dtype(), {3});
         const double values[] = {1.5, -2, 0.25};
         dispatch_all(c.dtype(), [&](auto tag) {
           for (int i = 0; i < 3; ++i)
             value.data<decltype(tag)>()[i] = convert<decltype(tag)>(values[i]);
         });
         return c.g.constant(value) * c.input({3});
       }});
  add({.op = "fill",
       .name = "fill",
       .build =
           [](CaseGraph& c) {
             return fill(c.g, {7, 3}, 2.5, c.dtype());
           },
       .gradients = false});
  add({.op = "iota",
       .name = "iota",
       .build =
           [](CaseGraph& c) {
             return iota(c.g, {4, 5, 6}, 1, c.dtype());
           },
       .gradients = false});
  add({.op = "random_uniform",
       .name = "random_uniform",
       .build =
           [](CaseGraph& c) {
             return random_uniform(c.g, {40, 50}, -2, 3, 7, c.dtype());
           },
       .dtypes = {f64, f32},
       .gradients = false,
       .parity = false});
  add({.op = "random_normal",
       .name = "random_normal",
       .build =
           [](CaseGraph& c) {
             return random_normal(c.g, {40, 50}, 1, 2, 7, c.dtype());
           },
       .dtypes = {f64, f32},
       .gradients = false,
       .parity = false});
  add({.op = "dropout_mask",
       .name = "dropout_mask",
       .build =
           [](CaseGraph& c) {
             return dropout_mask(c.input({30, 20}), 0.3, 5);
           },
       .gradients = false,
       .parity = false});
  // Collectives, in a process that is its own world (the default): identities, which checks
  // their schemas, shapes, kernels and gradients here; tests/distributed runs them on 2 and 4
  // ranks.
  add({.op = "all_reduce",
       .name = "all_reduce_avg",
       .build =
           [](CaseGraph& c) {
             Value x = c.input({3, 5});
             return distributed::all_reduce(x, distributed::ReduceOp::avg) * x;
           },
       .torch = "a"});
  add({.op = "all_reduce",
       .name = "all_reduce_sum",
       .build = [](CaseGraph& c) { return distributed::all_reduce(c.input({7})); },
       .torch = "a"});
  add({.op = "broadcast",
       .name = "broadcast",
       .build =
           [](CaseGraph& c) {
             return distributed::broadcast(c.input({2, 3}));
           },
       .gradients = false,
       .torch = "a"});
  add({.op = "all_gather",
       .name = "all_gather",
       .build =
           [](CaseGraph& c) {
             return distributed::all_gather(c.input({2, 3}), 1);
           },
       .torch = "a.unsqueeze(0)"});
  add({.op = "reduce_scatter",
       .name = "reduce_scatter",
       .build =
           [](CaseGraph& c) {
             return distributed::reduce_scatter(c.input({4, 3}), distributed::ReduceOp::avg, 1);
           },
       .torch = "a"});
  add({.op = "variable",
       .name = "variable",
       .build =
           [](CaseGraph& c) {
             return c.variable({3, 4}) * c.input({4});
           },
       .dtypes = {f64, f32},
       .parity = false});
  add({.op = "assign",
       .name = "assign",
       .build =
           [](CaseGraph& c) {
             return assign(c.variable({3, 4}), c.input({4}));
           },
       .dtypes = {f64, f32},
       .gradients = false,
       .parity = false});
  add({.op = "assign_add",
       .name = "assign_add",
       .build =
           [](CaseGraph& c) {
             return assign_add(c.variable({3, 4}), c.input({3, 4}));
           },
       .dtypes = {f64, f32},
       .gradients = false,
       .parity = false});
  // Rows 4 and 5 of 7 along axis 1 of the variable, in place.
  add({.op = "assign_slice",
       .name = "assign_slice_axis1",
       .build =
           [](CaseGraph& c) {
             return assign_slice(c.variable({3, 7, 4}), c.input({3, 2, 4}), c.ints({4}, {}), 1);
           },
       .dtypes = {f64, f32},
       .gradients = false,
       .parity = false});
  add({.op = "group",
       .name = "group",
       .build = [](CaseGraph& c) { return group(c.g, {assign(c.variable({2}), c.input({2}))}); },
       .dtypes = {f64, f32},
       .gradients = false,
       .parity = false});
  add_update_cases(add);
  add_nn_cases(add);
  add_normalization_cases(add);
  add_attention_cases(add);
  add_rotary_cases(add);
  add_recurrent_cases(add);
  add_loss_cases(add);
  return cases;
}

}  // namespace

const std::vector<OpCase>& op_cases() {
  static const std::vector<OpCase> cases = make_cases();
  return cases;
}

}  // namespace kiln::testing
