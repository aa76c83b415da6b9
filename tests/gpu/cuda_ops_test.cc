// Every op on the GPU against the CPU (CTest label `gpu`): one table of cases, each run in f32,
// f64, f16 and bf16 where the op takes them, forward values and the gradients of sum(y * r).
// 16-bit cases are checked against the CPU in f32 on the same (rounded) inputs; the tolerance
// per dtype is in one place, kTolerance.
#include "cases/op_cases.h"
#include "gpu_test_util.h"
#include "special_values.h"

namespace kiln {
namespace {

using testing::CaseGraph;
using testing::OpCase;

TEST(CudaOps, EveryOpCaseMatchesTheCpu) {
  KILN_REQUIRE_GPU();
  int checked = 0;
  std::vector<std::string> failures;
  for (const OpCase& oc : testing::op_cases())
    for (DType dtype : oc.dtypes)
      checked += testing::compare_with_cpu(oc, dtype, Device::cuda(0), failures);
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

// The tensor-core attention kernels (attention_flash.h) against the warp-per-row ones
// (KILN_CUDA_ATTENTION=rows) at sizes the op table does not reach: many key steps, partial
// blocks, every depth, causal masking with heads read in place, and with a float bias and a
// softcap (score terms); and the same bits run to run.
TEST(CudaOps, FlashAttentionMatchesTheRowKernels) {
  KILN_REQUIRE_GPU();
  for (bool terms : {false, true})
    for (DType dtype : {bf16, f16, f32})
      for (int64_t depth : {int64_t{32}, int64_t{64}, int64_t{128}}) {
        Graph g;
        const Shape q_shape{2, 300, 3, depth}, k_shape{2, 333, 3, depth},
            bias_shape{1, 3, 300, 333};
        Value q = g.placeholder("q", f32, q_shape), k = g.placeholder("k", f32, k_shape),
              v = g.placeholder("v", f32, k_shape), r = g.placeholder("r", f32, q_shape);
        Value bias = g.placeholder("bias", f32, bias_shape);
        Value out = scaled_dot_product_attention(cast(q, dtype), cast(k, dtype), cast(v, dtype),
                                                 {.mask = terms ? cast(bias, dtype) : Value{},
                                                  .causal = true,
                                                  .softcap = terms ? 4.0 : 0.0,
                                                  .layout = "bthd"});
        std::vector<Value> fetch = gradients(sum(cast(out, f32) * r), {q, k, v});
        fetch.insert(fetch.begin(), cast(out, f32));
        FeedList feeds = {{q, testing::random_tensor(f32, q_shape, -2, 2, 1)},
                          {k, testing::random_tensor(f32, k_shape, -2, 2, 2)},
                          {v, testing::random_tensor(f32, k_shape, -1, 1, 3)},
                          {r, testing::random_tensor(f32, q_shape, -1, 1, 4)}};
        if (terms) feeds.push_back({bias, testing::random_tensor(f32, bias_shape, -3, 3, 5)});
        // KILN_CUDA_ATTENTION is read at each run: "" (a dq kernel of its own), "summed_dq" (dq
        // summed in the dk/dv kernel's turns), "wide" (32 query rows a warp in the forward and dq
        // kernels: each row's sums in the same order as "", so the same bits), "rows" (the
        // warp-per-row kernels: the reference).
        auto run_with = [&](const char* choice) {
          ::setenv("KILN_CUDA_ATTENTION", choice, 1);
          Session session(g, {.device = Device::cuda(0)});
          std::vector<std::vector<Tensor>> runs = {session.run(feeds, fetch),
                                                   session.run(feeds, fetch)};
          ::unsetenv("KILN_CUDA_ATTENTION");
          return runs;
        };
        const std::vector<Tensor> want = run_with("rows")[0];
        std::vector<Tensor> by_default;
        for (const char* choice : {"", "summed_dq", "wide"}) {
          const std::vector<std::vector<Tensor>> got = run_with(choice);
          if (by_default.empty()) by_default = got[0];
          const char* names[] = {"out", "dq", "dk", "dv"};
          for (size_t i = 0; i < want.size(); ++i) {
            const std::vector<double> expected = testing::values(want[i]);
            double size = 0;
            for (double e : expected) size = std::max(size, std::abs(e));
            // f32 runs on 3xTF32: close to f32 arithmetic, not the same bits as the row kernels.
            const double tolerance = dtype == bf16 ? 2e-2 : dtype == f16 ? 4e-3 : 2e-5;
            const std::string where = str(names[i], " in ", dtype, " at depth ", depth,
                                          terms ? " with a bias and a softcap" : "",
                                          " (KILN_CUDA_ATTENTION=", choice, ")");
            testing::expect_near(expected, got[0][i], 0, tolerance * size, where);
            EXPECT_EQ(testing::values(got[0][i]), testing::values(got[1][i]))
                << where << " differs run to run";
            if (std::string(choice) == "wide") {
              EXPECT_EQ(testing::values(got[0][i]), testing::values(by_default[i]))
                  << where << " differs from the default kernels' bits";
            }
          }
        }
      }
}

// cuDNN's fused attention (KILN_CUDA_ATTENTION=cudnn,strict: an error, not Kiln's kernels, where
// cuDNN has no plan) against Kiln's flash kernels: both layouts, causal and not, queries fewer
// than keys, depths 64 and 128, f16 and bf16; out, dq, dk and dv. The forward and the
// deterministic backward (SessionOptions::deterministic, the default) repeat their bits; the
// other backward sums dq with atomics, so only closeness is asked of it.
TEST(CudaOps, CudnnAttentionMatchesTheFlashKernels) {
  KILN_REQUIRE_GPU();
  for (DType dtype : {bf16, f16})
    for (int64_t depth : {int64_t{64}, int64_t{128}})
      for (bool causal : {true, false})
        for (const char* layout : {"bthd", "bhtd"}) {
          Graph g;
          const int64_t tq = causal ? 256 : 200, tk = causal ? 256 : 333;
          const bool bthd = std::string(layout) == "bthd";
          const Shape q_shape = bthd ? Shape{2, tq, 3, depth} : Shape{2, 3, tq, depth};
          const Shape k_shape = bthd ? Shape{2, tk, 3, depth} : Shape{2, 3, tk, depth};
          Value q = g.placeholder("q", f32, q_shape), k = g.placeholder("k", f32, k_shape),
                v = g.placeholder("v", f32, k_shape), r = g.placeholder("r", f32, q_shape);
          Value out = scaled_dot_product_attention(cast(q, dtype), cast(k, dtype), cast(v, dtype),
                                                   {.causal = causal, .layout = layout});
          std::vector<Value> fetch = gradients(sum(cast(out, f32) * r), {q, k, v});
          fetch.insert(fetch.begin(), cast(out, f32));
          const FeedList feeds = {{q, testing::random_tensor(f32, q_shape, -2, 2, 1)},
                                  {k, testing::random_tensor(f32, k_shape, -2, 2, 2)},
                                  {v, testing::random_tensor(f32, k_shape, -1, 1, 3)},
                                  {r, testing::random_tensor(f32, q_shape, -1, 1, 4)}};
          auto run_with = [&](const char* choice, bool deterministic = true) {
            ::setenv("KILN_CUDA_ATTENTION", choice, 1);
            Session session(g, {.device = Device::cuda(0), .deterministic = deterministic});
            std::vector<std::vector<Tensor>> runs = {session.run(feeds, fetch),
                                                     session.run(feeds, fetch)};
            ::unsetenv("KILN_CUDA_ATTENTION");
            return runs;
          };
          const std::vector<Tensor> want = run_with("")[0];
          for (bool deterministic : {true, false}) {
            const std::vector<std::vector<Tensor>> got = run_with("cudnn,strict", deterministic);
            const char* names[] = {"out", "dq", "dk", "dv"};
            for (size_t i = 0; i < want.size(); ++i) {
              const std::vector<double> expected = testing::values(want[i]);
              double size = 0;
              for (double e : expected) size = std::max(size, std::abs(e));
              const double tolerance = dtype == bf16 ? 2e-2 : 4e-3;
              const std::string where =
                  str(names[i], " in ", dtype, " at depth ", depth, ", ", layout,
                      causal ? ", causal" : "", deterministic ? "" : " (not deterministic)");
              testing::expect_near(expected, got[0][i], 0, tolerance * size, where);
              if (i == 0 || deterministic) {
                EXPECT_EQ(testing::values(got[0][i]), testing::values(got[1][i]))
                    << where << " differs run to run";
              }
            }
          }
        }
}

// SessionOptions::allow_tf32: without it f32 products and convolutions are f32 (the CPU's
// values to f32 rounding); with it they run on TF32 tensor cores, near the CPU's values but
// visibly not f32 (TF32 keeps 10 of the inputs' 23 mantissa bits).
TEST(CudaOps, Tf32OnlyWhereTheSessionAllowsIt) {
  KILN_REQUIRE_GPU();
  Graph g;
  const Shape a_shape{512, 768}, b_shape{768, 384}, x_shape{8, 64, 32, 32}, w_shape{64, 64, 3, 3};
  Value a = g.placeholder("a", f32, a_shape), b = g.placeholder("b", f32, b_shape);
  Value x = g.placeholder("x", f32, x_shape), w = g.placeholder("w", f32, w_shape);
  const std::vector<Value> fetch = {matmul(a, b), conv2d(x, w, {.padding = {1, 1}})};
  const FeedList feeds = {{a, testing::random_tensor(f32, a_shape, -1, 1, 1)},
                          {b, testing::random_tensor(f32, b_shape, -1, 1, 2)},
                          {x, testing::random_tensor(f32, x_shape, -1, 1, 3)},
                          {w, testing::random_tensor(f32, w_shape, -1, 1, 4)}};
  const std::vector<Tensor> cpu = Session(g).run(feeds, fetch);
  const std::vector<Tensor> strict = Session(g, {.device = Device::cuda(0)}).run(feeds, fetch);
  const std::vector<Tensor> tf32 =
      Session(g, {.device = Device::cuda(0), .allow_tf32 = true}).run(feeds, fetch);
  const char* names[] = {"matmul", "conv2d"};
  for (size_t i = 0; i < fetch.size(); ++i) {
    const std::vector<double> want = testing::values(cpu[i]), got = testing::values(tf32[i]);
    double size = 0, largest_error = 0;
    for (size_t j = 0; j < want.size(); ++j) {
      size = std::max(size, std::abs(want[j]));
      largest_error = std::max(largest_error, std::abs(got[j] - want[j]));
    }
    testing::expect_near(want, strict[i], 0, 1e-5 * size, str(names[i], " in f32"));
    // Sums of 576 or 768 products of inputs rounded to 2^-11: errors near 1e-3 of the size.
    EXPECT_LT(largest_error, 1e-2 * size) << names[i] << " with TF32";
    EXPECT_GT(largest_error, 1e-5 * size) << names[i] << " with TF32 allowed is still f32";
  }
}

// SessionOptions::deterministic: on (the default) convolutions repeat their bits run to run;
// off, cuDNN's first choice whatever its determinism (as PyTorch's default) still computes the
// convolution and its gradients to f32 accuracy.
TEST(CudaOps, ConvolutionsRepeatTheirBitsUnlessToldNotTo) {
  KILN_REQUIRE_GPU();
  Graph g;
  const Shape x_shape{16, 32, 28, 28}, w_shape{64, 32, 3, 3};
  Value x = g.placeholder("x", f32, x_shape), w = g.placeholder("w", f32, w_shape);
  Value y = conv2d(x, w, {.padding = {1, 1}});
  Value r = g.placeholder("r", f32, y.shape());
  std::vector<Value> fetch = gradients(sum(y * r), {x, w});
  fetch.insert(fetch.begin(), y);
  const FeedList feeds = {{x, testing::random_tensor(f32, x_shape, -1, 1, 1)},
                          {w, testing::random_tensor(f32, w_shape, -1, 1, 2)},
                          {r, testing::random_tensor(f32, y.shape(), -1, 1, 3)}};
  const std::vector<Tensor> cpu = Session(g).run(feeds, fetch);
  const char* names[] = {"conv2d", "its input gradient", "its filter gradient"};
  for (bool deterministic : {true, false}) {
    Session s(g, {.device = Device::cuda(0), .deterministic = deterministic});
    const std::vector<Tensor> first = s.run(feeds, fetch), second = s.run(feeds, fetch);
    for (size_t i = 0; i < fetch.size(); ++i) {
      const std::vector<double> want = testing::values(cpu[i]);
      double size = 0;
      for (double v : want) size = std::max(size, std::abs(v));
      const std::string where = str(names[i], deterministic ? "" : " (not deterministic)");
      testing::expect_near(want, first[i], 0, 1e-5 * size, where);
      if (deterministic) {
        EXPECT_EQ(testing::values(first[i]), testing::values(second[i]))
            << where << " differs run to run";
      }
    }
  }
}

}  // namespace
}  // namespace kiln
