// The op-case table itself: every registered op has a case, every case builds, runs and
// contains its op, and the cases with an f64 reference match it.
#include <filesystem>
#include <set>

#include "cases/op_cases.h"
#include "test_util.h"

namespace kiln::testing {
namespace {

TEST(OpCases, EveryRegisteredOpHasACase) {
  std::set<std::string> covered, names;
  for (const OpCase& c : op_cases()) {
    covered.insert(c.op);
    EXPECT_TRUE(names.insert(c.name).second) << "two cases are called " << c.name;
    EXPECT_NE(OpRegistry::global().find(c.op), nullptr) << c.name << ": no op " << c.op;
  }
  std::string missing;
  for (const OpDef* op : OpRegistry::global().all())
    if (!covered.count(op->name())) missing += " " + op->name();
  EXPECT_TRUE(missing.empty()) << "registered ops without a case in tests/cases/op_cases.cc:"
                               << missing;
}

// Each case on the CPU in its widest dtype: it builds, runs, and its op is in the plan (or,
// for ops the passes make, in the optimized plan); a reference, when given, agrees.
TEST(OpCases, EveryCaseRunsAndMatchesItsReference) {
  int referenced = 0;
  for (const OpCase& oc : op_cases()) {
    for (DType dtype : {f64, f32}) {
      if (std::find(oc.dtypes.begin(), oc.dtypes.end(), dtype) == oc.dtypes.end()) continue;
      SCOPED_TRACE(str(oc.name, " ", dtype));
      CaseGraph c(dtype, dtype, case_seed(oc.name));
      Value y = oc.build(c);
      bool in_graph = false;
      for (int32_t id = 0; id < c.g.num_nodes(); ++id) in_graph |= c.g.node(id).op_name() == oc.op;
      Session s(c.g);
      const Plan& plan = s.plan(c.feeds, {y});
      bool in_plan = false;
      for (int32_t id = 0; id < plan.graph->num_nodes(); ++id)
        in_plan |= plan.graph->node(id).op_name() == oc.op;
      EXPECT_TRUE(in_graph || in_plan) << "the case never makes a " << oc.op << " node";
      Tensor out = s.run(c.feeds, {y})[0];
      if (!oc.reference) continue;
      std::vector<Tensor> inputs;
      for (const auto& feed : c.feeds) inputs.push_back(feed.second);
      const std::vector<double> want = oc.reference(inputs);
      ASSERT_EQ(static_cast<int64_t>(want.size()), out.numel());
      Tensor expected = Tensor::empty(f64, out.shape());
      for (size_t i = 0; i < want.size(); ++i) expected.data<double>()[i] = want[i];
      const std::string problem = compare_relative(out, expected, dtype);
      EXPECT_TRUE(problem.empty()) << problem;
      ++referenced;
    }
  }
  EXPECT_GT(referenced, 40);
}

// Every case in f16 and bf16 on the CPU against itself in f32 on the same rounded inputs,
// forward values and gradients: ops without a 16-bit CPU kernel run widen_to_f32, so autocast
// graphs run on the CPU. (The GPU runs the same comparison in tests/gpu/cuda_ops_test.cc.)
TEST(OpCases, EveryCaseRunsIn16BitsOnTheCpu) {
  int checked = 0;
  std::vector<std::string> failures;
  for (const OpCase& oc : op_cases())
    for (DType dtype : {f16, bf16})
      if (std::find(oc.dtypes.begin(), oc.dtypes.end(), dtype) != oc.dtypes.end())
        checked += compare_with_cpu(oc, dtype, Device::cpu(), failures);
  for (const std::string& f : failures) ADD_FAILURE() << f;
  EXPECT_GT(checked, 10000);
  std::printf("16-bit op table on the CPU: %d values checked against f32, %zu failures\n", checked,
              failures.size());
}

// The f32 CPU kernels that are a second implementation against f64 on the same f32 inputs,
// forward values and gradients: oneDNN's convolutions (f64 runs im2col + OpenBLAS) over every
// convolution case (strides, padding, dilation, groups, odd batches), and attention's
// register-blocked tiles (f64 runs the gemm path) over every attention case.
TEST(OpCases, SecondF32KernelsMatchTheF64Kernels) {
  int checked = 0;
  std::vector<std::string> failures;
  for (const OpCase& oc : op_cases()) {
    if (oc.op.rfind("conv2d", 0) != 0 && oc.op.rfind("attention", 0) != 0) continue;
    const uint32_t seed = case_seed(oc.name);
    CaseGraph f32_case(f32, f32, seed), f64_case(f64, f32, seed);
    const std::vector<Tensor> got =
        run_case(f32_case, oc.build(f32_case), Device::cpu(), oc.gradients);
    const std::vector<Tensor> want =
        run_case(f64_case, oc.build(f64_case), Device::cpu(), oc.gradients);
    ASSERT_EQ(got.size(), want.size()) << oc.name;
    for (size_t k = 0; k < got.size(); ++k) {
      const std::string problem = compare_relative(got[k], want[k], f32);
      if (!problem.empty())
        failures.push_back(str(oc.name, k ? " gradient " : " output ", k, ": ", problem));
      checked += static_cast<int>(got[k].numel());
    }
  }
  for (const std::string& f : failures) ADD_FAILURE() << f;
  EXPECT_GT(checked, 10000);
}

// The threads this process has (Linux: one entry per thread in /proc/self/task).
int process_threads() {
  int count = 0;
  for ([[maybe_unused]] const auto& entry : std::filesystem::directory_iterator("/proc/self/task"))
    ++count;
  return count;
}

// oneDNN runs on Kiln's pool, one thread per call: a convolution must not start an OpenMP team
// of its own beside the pool (it did when its primitive was made before the calling thread's
// OpenMP setting was: the team then oversubscribed the cores on every call).
TEST(OpCases, OneDnnConvolutionsStartNoThreadsBesideThePool) {
  const int before = process_threads();
  Graph g;
  Value x = g.placeholder("x", f32, {16, 16, 12, 12});
  Value w = g.placeholder("w", f32, {16, 16, 3, 3});
  Value y = conv2d(x, w, {.padding = {1, 1}});
  std::vector<Value> grads = gradients(sum(y * y), {x, w});
  Session session(g, {.intra_op_threads = 2});
  const Tensor xt = random_tensor(f32, {16, 16, 12, 12}, -1, 1, 3);
  const Tensor wt = random_tensor(f32, {16, 16, 3, 3}, -1, 1, 4);
  for (int run = 0; run < 3; ++run) session.run({{x, xt}, {w, wt}}, {y, grads[0], grads[1]});
  // The pool's one worker (the caller is the other thread) and at most one inter-op thread.
  EXPECT_LE(process_threads() - before, 2);
}

}  // namespace
}  // namespace kiln::testing
