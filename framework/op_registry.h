// The op registry: every op's schema (inputs, attributes), shape/dtype inference and kernels.
// An op is defined in one place, ops/<family>/<op>.cc, with KILN_OP(name)...; see DESIGN.md.
#pragma once

#include <algorithm>
#include <array>
#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <vector>

#include "kiln/framework/attr.h"
#include "kiln/framework/device.h"
#include "kiln/framework/error.h"

namespace kiln {

class KernelContext;
class GradContext;
class Value;

/// What inference knows about one output: its dtype and its (possibly partly unknown) shape.
struct TensorType {
  DType dtype = DType::f32;
  Shape shape{};
  bool operator==(const TensorType&) const = default;
};

/// A declared attribute: its name, its type, and its default (none = required).
struct AttrSpec {
  std::string name;
  AttrType type;
  std::optional<AttrValue> default_value;
};

class OpDef;

/// What an op's inference function sees: input types and attributes of the node being built.
class InferContext {
 public:
  InferContext(const OpDef& op, const std::string& node_name, const std::vector<TensorType>& inputs,
               const AttrMap& attrs)
      : op_(op), node_name_(node_name), inputs_(inputs), attrs_(attrs) {}

  int num_inputs() const { return static_cast<int>(inputs_.size()); }
  const TensorType& input(int i) const { return inputs_[i]; }
  DType dtype(int i) const { return inputs_[i].dtype; }
  const Shape& shape(int i) const { return inputs_[i].shape; }
  /// The attribute `name`; its presence and type were checked against the schema.
  template <typename T>
  const T& attr(const std::string& name) const {
    return std::get<T>(attrs_.at(name));
  }
  const OpDef& op() const { return op_; }
  const std::string& node_name() const { return node_name_; }
  const AttrMap& attrs() const { return attrs_; }
  /// "[matmul] dense1/matmul" — the prefix of every message about this node.
  std::string where() const;
  /// Throws kiln::GraphError("[op] node: " + the pieces).
  template <typename... Args>
  [[noreturn]] void fail(Args&&... args) const {
    throw GraphError(str(where(), ": ", std::forward<Args>(args)...));
  }
  /// Fails unless input `i` has one of `allowed` dtypes.
  void expect_dtype(int i, std::span<const DType> allowed) const;
  void expect_dtype(int i, std::initializer_list<DType> allowed) const {
    expect_dtype(i, std::span<const DType>(allowed.begin(), allowed.size()));
  }
  /// Fails unless inputs `i` and `j` have the same dtype.
  void expect_same_dtype(int i, int j) const;
  /// Validates a possibly negative axis against `rank`, returning it in [0, rank).
  int64_t axis(int64_t axis, int64_t rank) const;
  /// a + b and a * b for dims and sizes taken from attributes or shapes, failing (instead of
  /// overflowing) when the result does not fit in int64.
  int64_t checked_add(int64_t a, int64_t b) const;
  int64_t checked_mul(int64_t a, int64_t b) const;

 private:
  const OpDef& op_;
  const std::string& node_name_;
  const std::vector<TensorType>& inputs_;
  const AttrMap& attrs_;
};

/// Infers the types of a node's outputs from its inputs and attributes, or fails.
using InferFn = std::function<std::vector<TensorType>(const InferContext&)>;
/// Builds the gradients of a node's inputs from the gradients of its outputs, as graph nodes.
/// Returns one Value per input; an undefined Value means "no gradient flows to this input".
using GradFn = std::function<std::vector<Value>(GradContext&)>;
/// Runs one node on one device. Inputs are valid and outputs have their inferred shapes.
using KernelFn = void (*)(KernelContext&);

/// Where an op's output 0 comes from, for the planner and the executors.
enum class OutputSource {
  computed,   ///< its kernel computes it into memory the plan provides (most ops)
  feed,       ///< a run's feed (placeholder): compile_plan refuses a plan that needs it unfed
  attribute,  ///< the attribute "value" (constant): never computed, uploaded once per plan
  state,      ///< the session's storage for the node (variable): never in the arena
};

/// How autocast (mixed precision) treats an op's floating inputs.
enum class Precision {
  follow_inputs,  ///< runs in the widest floating dtype among its inputs (the default)
  low,            ///< f16/bf16-safe and faster there (products): inputs cast to the compute type
  keep_f32,       ///< loses accuracy in 16 bits (exp, log, reductions, softmax): inputs stay f32
};

/// An op's definition. Built fluently and registered with KILN_OP.
///
/// Besides its schema, an op declares what it is (its traits), where it is registered, as
/// TensorFlow's OpDefBuilder::SetIsStateful() does: passes, the memory planner, the executors
/// and autocast read these instead of keeping lists of op names.
class OpDef {
 public:
  explicit OpDef(std::string name) : name_(std::move(name)) {}

  /// Declares the next input.
  OpDef& input(std::string name);
  /// Declares that the last input takes `min_count` or more values (concat's "values").
  OpDef& variadic_input(std::string name, int min_count = 1);
  /// Declares a required attribute.
  OpDef& attr(std::string name, AttrType type);
  /// Declares an optional attribute with its default.
  template <typename T>
  OpDef& attr(std::string name, T default_value) {
    // Plain int and float literals stand for the attribute types int64_t and double.
    if constexpr (std::is_integral_v<T> && !std::is_same_v<T, bool>) {
      return attr(std::move(name), static_cast<int64_t>(default_value), AttrType::integer);
    } else if constexpr (std::is_floating_point_v<T>) {
      return attr(std::move(name), static_cast<double>(default_value), AttrType::real);
    } else {
      return attr(std::move(name), AttrValue(std::move(default_value)), attr_type_of<T>());
    }
  }
  OpDef& infer(InferFn fn);
  OpDef& attr(std::string name, AttrValue default_value, AttrType type) {
    attrs_.push_back({std::move(name), type, std::move(default_value)});
    return *this;
  }
  /// Registers the kernel for `device`. `dtypes` lists the dtypes it handles (of input 0, or of
  /// output 0 for ops without inputs); empty means every dtype inference accepts.
  OpDef& kernel(DeviceKind device, KernelFn fn, std::vector<DType> dtypes = {});
  /// Marks an op that maps each output element from the same element of its inputs.
  OpDef& elementwise();
  /// Sets the gradient function (see GradFn).
  OpDef& grad(GradFn fn);
  /// Declares that no gradient flows through this op (comparisons, argmax, integer
  /// sources, stop_gradient): autograd treats its inputs as constants, without error.
  OpDef& no_gradient();
  /// Marks an op that writes into the storage of input `index` (a variable): the plan runs it
  /// after every other reader of that input in the same run.
  OpDef& mutates_input(int index);
  /// Marks an op whose outputs may be views of input 0's storage (reshape, identity; split's
  /// pieces of a contiguous run): memory planning keeps input 0's buffer alive, and never
  /// overwrites it in place, while any output is used.
  OpDef& may_alias_input();
  /// may_alias_input() where output 0 may view input 0 only when both have the same number of
  /// elements (sum_to, broadcast_like: a view when nothing is summed or stretched, a new tensor
  /// otherwise), so a plan whose shapes say otherwise does not keep input 0 alive for it.
  OpDef& may_alias_input_of_same_size();
  /// Trait: output 0 may be computed in input 0's buffer when this step is that buffer's last
  /// use and the sizes match (memory planning decides; elementwise ops may take any input's).
  /// The kernel must then work with output 0 and input 0 at one address (an in-place
  /// all-reduce).
  OpDef& may_overwrite_input();
  /// Trait: along axis 0 (attribute "axis"), output 0 is the inputs laid end to end (concat).
  /// The planner may then have an input's producer write straight into its place in the
  /// output (a gradient into its bucket); the kernel must skip an input already in place.
  OpDef& concatenates_inputs();
  /// Trait: nodes of this op are distinct even with equal inputs and attributes (they hold
  /// state, have effects, or are a target): never constant-folded, merged by CSE or hoisted.
  OpDef& stateful();
  /// Trait: draws new random numbers on every run (a dropout mask). Implies stateful. The
  /// registry appends an input "counter": the graph's random counter (an i64 scalar variable,
  /// see random_counter() in ops/array.h), which every run that executes such an op advances
  /// by one after it has been read; the kernel draws from Philox under (seed attribute,
  /// counter), so runs are reproducible and a restored checkpoint continues the sequence. It
  /// also appends a string attribute "draw_as": the node name the draws are keyed by, when not
  /// the node's own (random_key(node) in ops/array/philox.h); a recomputed copy sets it.
  OpDef& random();
  /// Trait: a collective (all-reduce, broadcast, ...): scheduled on the communication stream,
  /// with events both ways; passes treat it as a barrier (never folded, merged or moved across).
  OpDef& communication();
  /// Trait: the kernels read only the dtype and shape of input `index`, never its values
  /// (numel, full_like; the "like" input of reshape_like). Constant folding then needs only that
  /// input's shape, not a constant: numel(x) of a known shape is a constant.
  OpDef& reads_only_type_of(int index);
  /// Trait: where output 0 comes from (default: computed by the kernel).
  OpDef& output_source(OutputSource source);
  /// Trait: how autocast treats the op (default: follow_inputs).
  OpDef& precision(Precision policy);

  const std::string& name() const { return name_; }
  const std::vector<std::string>& inputs() const { return inputs_; }
  bool variadic() const { return variadic_min_ >= 0; }
  int variadic_min() const { return variadic_min_; }
  const std::vector<AttrSpec>& attrs() const { return attrs_; }
  const AttrSpec* find_attr(const std::string& name) const;
  const InferFn& infer_fn() const { return infer_; }
  /// The kernel for `device` that handles `dtype`, or nullptr.
  KernelFn kernel_for(DeviceKind device, DType dtype) const;
  /// Whether a kernel is registered for `device`, and the dtypes it was registered for (empty:
  /// every dtype inference accepts).
  bool has_kernel(DeviceKind device) const {
    return kernels_[static_cast<size_t>(device)].fn != nullptr;
  }
  const std::vector<DType>& kernel_dtypes(DeviceKind device) const {
    return kernels_[static_cast<size_t>(device)].dtypes;
  }
  bool is_elementwise() const { return elementwise_; }
  const GradFn& grad_fn() const { return grad_; }
  bool has_no_gradient() const { return no_gradient_; }
  const std::vector<int>& mutated_inputs() const { return mutated_inputs_; }
  bool may_alias() const { return may_alias_; }
  /// Whether a node of this op with these concrete input and output types may return a view of
  /// input 0 (may_alias(), narrowed by may_alias_input_of_same_size() where the element counts
  /// are known to differ).
  bool may_alias(const std::vector<TensorType>& inputs,
                 const std::vector<TensorType>& outputs) const;
  bool may_overwrite_input() const { return may_overwrite_; }
  bool concatenates() const { return concatenates_; }
  /// Whether the kernels read only input `index`'s type (reads_only_type_of).
  bool reads_only_type(int index) const {
    return std::find(type_only_inputs_.begin(), type_only_inputs_.end(), index) !=
           type_only_inputs_.end();
  }
  bool is_stateful() const { return stateful_ || random_ || communication_ || writes_state(); }
  bool is_random() const { return random_; }
  bool is_communication() const { return communication_; }
  OutputSource source() const { return source_; }
  Precision precision_policy() const { return precision_; }
  /// Writes into an input's storage (optimizer updates, assign).
  bool writes_state() const { return !mutated_inputs_.empty(); }
  /// Output 0 is storage the plan's arena does not hold: a variable, a constant's value, or
  /// the variable an update writes into.
  bool external_output() const {
    return source_ == OutputSource::state || source_ == OutputSource::attribute || writes_state();
  }

 private:
  std::string name_;
  std::vector<std::string> inputs_;
  int variadic_min_ = -1;
  std::vector<AttrSpec> attrs_;
  InferFn infer_;
  struct KernelEntry {
    KernelFn fn = nullptr;
    std::vector<DType> dtypes;
  };
  std::array<KernelEntry, 2> kernels_{};
  bool elementwise_ = false;
  GradFn grad_;
  bool no_gradient_ = false;
  std::vector<int> mutated_inputs_;
  bool may_alias_ = false;
  bool alias_needs_same_size_ = false;
  bool may_overwrite_ = false;
  bool concatenates_ = false;
  std::vector<int> type_only_inputs_;
  bool stateful_ = false, random_ = false, communication_ = false;
  OutputSource source_ = OutputSource::computed;
  Precision precision_ = Precision::follow_inputs;
};

/// All registered ops, by name.
class OpRegistry {
 public:
  static OpRegistry& global();
  /// Adds an op; a second op with the same name is a programming error (throws).
  void add(OpDef op);
  /// The op called `name`, or nullptr.
  const OpDef* find(const std::string& name) const;
  /// The op called `name`; throws kiln::GraphError naming it when there is none.
  const OpDef& get(const std::string& name) const;
  std::vector<const OpDef*> all() const;
  /// Adds a kernel to op `op_name` from another file (the CUDA kernels in .cu files). The op
  /// may be registered before or after: static initialization order across files is unknown,
  /// so a kernel for an op not yet registered waits until it is.
  void add_kernel(const std::string& op_name, DeviceKind device, KernelFn fn,
                  std::vector<DType> dtypes = {});

 private:
  struct PendingKernel {
    std::string op;
    DeviceKind device;
    KernelFn fn;
    std::vector<DType> dtypes;
  };
  std::map<std::string, std::unique_ptr<OpDef>> ops_;
  std::vector<PendingKernel> pending_;
};

/// Registers a kernel for an op defined elsewhere at static-initialization time.
struct KernelRegistrar {
  KernelRegistrar(const char* op, DeviceKind device, KernelFn fn, std::vector<DType> dtypes = {}) {
    OpRegistry::global().add_kernel(op, device, fn, std::move(dtypes));
  }
};

/// Registers an op at static-initialization time (used by KILN_OP).
struct OpRegistrar {
  OpRegistrar(OpDef& op) { OpRegistry::global().add(std::move(op)); }
  OpRegistrar(OpDef&& op) { OpRegistry::global().add(std::move(op)); }
};

}  // namespace kiln

#define KILN_CONCAT_INNER(a, b) a##b
#define KILN_CONCAT(a, b) KILN_CONCAT_INNER(a, b)
/// Defines and registers an op: KILN_OP(softmax).input("x").attr<int64_t>("axis", -1)...;
#define KILN_OP(name)                                                                        \
  [[maybe_unused]] static ::kiln::OpRegistrar KILN_CONCAT(kiln_op_registrar_, __COUNTER__) = \
      ::kiln::OpDef(#name)
/// Registers the CUDA kernel of an op defined in a .cc file:
/// KILN_CUDA_KERNEL(relu, relu_cuda, {DType::f32, DType::f16});
#define KILN_CUDA_KERNEL(name, ...)                            \
  [[maybe_unused]] static ::kiln::KernelRegistrar KILN_CONCAT( \
      kiln_kernel_registrar_, __COUNTER__)(#name, ::kiln::DeviceKind::cuda, __VA_ARGS__)
