// The op-case table: every registered op's test cases, written once. Each case says how to
// build a small graph around the op (inputs, their value ranges, attributes), in which dtypes
// it runs, and whether gradients and PyTorch apply. Every check reads it:
//   - forward against an f64 reference, where the case has one (tests/cases/op_cases_test.cc);
//   - gradients against finite differences in f64 (tests/autograd/gradients_test.cc);
//   - PyTorch parity, forward and gradients (tests/parity/);
//   - the GPU against the CPU in f64, f32, f16 and bf16 (tests/gpu/cuda_ops_test.cc).
// A registered op without a case fails OpCases.EveryRegisteredOpHasACase: a new op adds its
// line here (ggml's test-backend-ops is the model).
#pragma once

#include <kiln/kiln.h>

#include <functional>
#include <random>
#include <string>
#include <vector>

namespace kiln::testing {

/// A case's graph under construction. Inputs are placeholders fed with values drawn from the
/// case's seed and rounded through `storage`, so a 16-bit GPU graph and its f32 CPU reference
/// see the same numbers.
class CaseGraph {
 public:
  CaseGraph(DType dtype, DType storage, uint32_t seed);

  /// The dtype every drawn value is rounded through.
  DType storage() const { return storage_; }
  /// A floating input (differentiable), uniform in [low, high).
  Value input(const Shape& shape, double low = -1, double high = 1);
  /// An i64 input holding `values` (indices, labels).
  Value ints(const std::vector<int64_t>& values, const Shape& shape);
  /// A rank-0 constant of the case dtype.
  Value scalar(double value);
  /// A variable of the case dtype initialized uniform in [low, high) (seeded).
  Value variable(const Shape& shape, double low = -1, double high = 1);
  DType dtype() const { return dtype_; }

  Graph g;
  FeedList feeds;
  std::vector<Value> float_inputs;

 private:
  DType dtype_, storage_;
  std::mt19937 rng_;
  int variables_ = 0;
};

/// f64 forward reference of a case: its output's elements from the fed inputs (feed order).
using Reference = std::function<std::vector<double>(const std::vector<Tensor>& inputs)>;

struct OpCase {
  /// The registered op this case covers.
  std::string op;
  /// Unique label ("matmul_ta", "sum_axes02_keep").
  std::string name;
  std::function<Value(CaseGraph&)> build;
  /// Dtypes the case runs in (the GPU table runs each; finite differences need f64).
  std::vector<DType> dtypes = {f64, f32, f16, bf16};
  /// Gradients of sum(y * r) with respect to the float inputs are checked (finite
  /// differences, PyTorch, GPU).
  bool gradients = true;
  /// PyTorch rebuilds the case (tests/parity/torch_parity.py knows every op in it).
  bool parity = true;
  /// Finite differences: step and relative tolerance; a step <= 0 skips them (an op that
  /// breaks the gradient on purpose, as stop_gradient does).
  double fd_step = 1e-6, fd_rtol = 1e-6;
  /// PyTorch parity tolerance (rtol = atol) where tighter than the suite's default; 0: default.
  double parity_tolerance = 0;
  /// The op in PyTorch terms, for an op tests/parity/torch_parity.py does not know: a Python
  /// expression over `a` (the first input), `args` (all inputs), `attrs` (strings by name),
  /// `torch` and `F` (torch.nn.functional), e.g. "F.softsign(a)". Empty: the script's own.
  std::string torch;
  Reference reference;
};

/// Adds the convolution, pooling and normalization cases (tests/cases/nn_cases.cc).
void add_nn_cases(const std::function<void(OpCase)>& add);
/// Adds the normalization cases (tests/cases/nn_cases.cc).
void add_normalization_cases(const std::function<void(OpCase)>& add);
/// Adds the attention cases (tests/cases/attention_cases.cc).
void add_attention_cases(const std::function<void(OpCase)>& add);
/// Adds the rotary embedding cases (tests/cases/attention_cases.cc).
void add_rotary_cases(const std::function<void(OpCase)>& add);

/// Adds the cases of the losses with kernels of their own: ctc_loss (tests/cases/loss_cases.cc).
void add_loss_cases(const std::function<void(OpCase)>& add);

/// Adds the fused optimizer updates' cases (tests/cases/update_cases.cc).
void add_update_cases(const std::function<void(OpCase)>& add);

/// Adds the fused recurrent cells' cases (tests/cases/recurrent_cases.cc).
void add_recurrent_cases(const std::function<void(OpCase)>& add);

/// Every case, in a fixed order.
const std::vector<OpCase>& op_cases();

/// Runs y on `device` and, with `with_gradients` and a floating y, the gradients of sum(y * r)
/// with respect to the case's float inputs (r fixed, uniform in [-1, 1)): y first, then those.
std::vector<Tensor> run_case(CaseGraph& c, const Value& y, Device device, bool with_gradients);

/// Runs case `oc` in `dtype` on `device` and on the CPU (in f32 for a 16-bit dtype, on the same
/// rounded inputs), forward values and gradients, and compares them under
/// relative_tolerance(dtype). Adds each disagreement to `failures`; returns the values checked.
int compare_with_cpu(const OpCase& oc, DType dtype, Device device,
                     std::vector<std::string>& failures);

/// A stable seed for a case (the same on every run and machine).
uint32_t case_seed(const std::string& name);

/// Implementations agree when |a - b| <= rtol (|b| + 0.1 max|b|): relative to each value,
/// with a floor of 10% of the tensor's largest magnitude for values near 0 (a difference of
/// large terms, as in softmax's gradient, keeps the rounding error of the terms, not of the
/// result). rtol per dtype: f64 1e-9, f32 5e-5, f16 1e-2, bf16 5e-2 (a few roundings to 11
/// and 8 significant bits). A bf16 softmax output of 0.01 (largest 0.3) may be off by 0.002;
/// the absolute tolerance used before allowed 0.06.
double relative_tolerance(DType dtype);
/// The first disagreement of `got` with `want` under relative_tolerance(`as`), or "".
std::string compare_relative(const Tensor& got, const Tensor& want, DType as);

}  // namespace kiln::testing
