// Graph passes: rewrites of a plan's private copy of the graph, run before scheduling.
// Each pass is a small unit with a name and a `run(Graph&) -> changed` contract; passes
// never change results beyond floating-point reassociation.
#pragma once

#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "kiln/framework/device.h"
#include "kiln/framework/graph.h"

namespace kiln {

/// One graph rewrite.
class Pass {
 public:
  virtual ~Pass() = default;
  virtual const char* name() const = 0;
  /// Rewrites `graph` in place; returns true when anything changed. The graph's signatures
  /// name what must be kept (fetches, targets).
  virtual bool run(Graph& graph) = 0;
};

/// Removes nodes that no signature needs.
std::unique_ptr<Pass> make_dead_code_elimination();
/// Replaces nodes whose inputs are all constants by the constant they compute (outputs of up
/// to 1M elements; never variables, placeholders or ops that write state).
std::unique_ptr<Pass> make_constant_folding();
/// Merges nodes that compute the same op with the same attributes on the same inputs.
std::unique_ptr<Pass> make_common_subexpression_elimination();
/// Removes no-ops and folds pairs: x*1, x+0, x-0, x/1, -(-x), identity, stop_gradient,
/// reshapes/broadcasts/casts/sum_to that change nothing, transpose∘transpose, reshape∘reshape.
std::unique_ptr<Pass> make_algebraic_simplification();
/// Turns trees of elementwise ops of one float dtype into one fused_elementwise node that
/// reads its inputs once and writes its output once.
std::unique_ptr<Pass> make_elementwise_fusion();

/// Turns add_n over matrix products that only it reads (same transposes, dtype and shape) into
/// one product over the concatenated contractions: sum_i A_i B_i = [A_1 .. A_k] [B_1; ..; B_k].
/// Autograd makes such sums for a weight used at every step of an unrolled recurrence.
std::unique_ptr<Pass> make_product_sum_merging();

/// Folds a bias add (and a relu that only it feeds) into the matmul before it: matmul_bias,
/// which cuBLASLt runs as one product with an epilogue. For the CPU (`device`), also an add of
/// a matrix of the product's shape (the gemm starts from it), and an SGD or
/// Adam update into the matmul that makes its gradient and that nothing else reads:
/// matmul_sgd_update, matmul_adam_update (the update applied to each block of the product while
/// it is in cache).
std::unique_ptr<Pass> make_matmul_epilogue(DeviceKind device = DeviceKind::cpu);

/// Whether pipelines check the graph's invariants after every pass by default: in debug
/// builds, and wherever the environment sets KILN_VERIFY_PASSES=1 (CTest sets it for every test).
bool verify_passes_by_default();

/// Which passes a Session runs (all on by default).
struct PassOptions {
  bool constant_folding = true;
  bool common_subexpression_elimination = true;
  bool algebraic_simplification = true;
  bool product_sum_merging = true;
  bool matmul_epilogue = true;
  bool elementwise_fusion = true;
  bool dead_code_elimination = true;
  /// Let an elementwise op write into an input buffer that dies at it (memory planning).
  bool in_place = true;
  /// Check the graph's invariants (verify_graph) after every pass.
  bool verify = verify_passes_by_default();
  /// The device the plan runs on (compile_plan sets it): rewrites into ops that have a kernel
  /// only there check it.
  DeviceKind device = DeviceKind::cpu;
};

/// Checks what every pass must keep true: each input of a node refers to an existing output
/// of a node with a lower id (defined before use), each node's recorded output types are what
/// its op infers from its inputs now (shapes and dtypes consistent), and each signature names
/// existing values. Throws kiln::Error naming `after` (the pass just run) and the node.
void verify_graph(const Graph& graph, const std::string& after);

/// Passes run in order, as one pass (XLA's HloPassPipeline). With `verify`, verify_graph runs
/// after each pass, so a broken rewrite is named where it happens.
class PassPipeline : public Pass {
 public:
  explicit PassPipeline(std::string name, bool verify = verify_passes_by_default())
      : name_(std::move(name)), verify_(verify) {}
  const char* name() const override { return name_.c_str(); }
  /// Adds a pass made from `args`; returns it.
  template <typename T, typename... Args>
  T& add_pass(Args&&... args) {
    auto pass = std::make_unique<T>(std::forward<Args>(args)...);
    T& ref = *pass;
    add_pass(std::move(pass));
    return ref;
  }
  /// Adds `pass` at the end.
  Pass& add_pass(std::unique_ptr<Pass> pass);
  /// Runs every pass once, in order; true when any changed the graph.
  bool run(Graph& graph) override;
  /// Names of the passes (nested pipelines: their passes) that changed the graph so far.
  const std::vector<std::string>& changed() const { return changed_; }
  size_t size() const { return passes_.size(); }

 protected:
  bool run_once(Graph& graph);

 private:
  std::string name_;
  bool verify_;
  std::vector<std::unique_ptr<Pass>> passes_;
  std::vector<std::string> changed_;
};

/// A pipeline run again until none of its passes changes the graph, at most `max_rounds`
/// times (XLA's HloPassFix).
class FixedPointPipeline final : public PassPipeline {
 public:
  FixedPointPipeline(std::string name, int max_rounds = 8, bool verify = verify_passes_by_default())
      : PassPipeline(std::move(name), verify), max_rounds_(max_rounds) {}
  bool run(Graph& graph) override;

 private:
  int max_rounds_;
};

/// Where a registered pass runs in the default pipeline.
enum class PassStage {
  cleanup,        ///< with simplification, folding, CSE and DCE, repeated to a fixed point
  before_fusion,  ///< once, after the clean-ups, before matmul epilogues and fusion
  after_fusion,   ///< once, last
};

/// Makes a pass for a pipeline built with `options` (or nullptr: not this time).
using PassFactory = std::function<std::unique_ptr<Pass>(const PassOptions&)>;

/// Adds a pass to every default pipeline made while the returned handle lives: how modules
/// outside runtime/ (distributed/) put their transforms into compilation without editing it.
class PassRegistration {
 public:
  PassRegistration(PassStage stage, PassFactory factory);
  ~PassRegistration();
  PassRegistration(const PassRegistration&) = delete;
  PassRegistration& operator=(const PassRegistration&) = delete;

 private:
  int64_t id_;
};

/// The pipeline compile_plan runs: [cleanup to a fixed point: algebraic simplification,
/// constant folding, CSE, DCE, registered cleanup passes], registered before_fusion passes,
/// matmul epilogues, elementwise fusion + DCE, registered after_fusion passes; each as enabled
/// in `options`.
std::unique_ptr<PassPipeline> make_default_pipeline(const PassOptions& options);

/// Runs make_default_pipeline(options) on `graph`; returns the names of passes that changed it.
std::vector<std::string> optimize_graph(Graph& graph, const PassOptions& options);

}  // namespace kiln
