#include "kiln/framework/op_registry.h"

#include <sstream>

namespace kiln {

std::string InferContext::where() const {
  return str("[", op_.name(), "] ", node_name_);
}

void InferContext::expect_dtype(int i, std::span<const DType> allowed) const {
  for (DType d : allowed)
    if (inputs_[i].dtype == d) return;
  std::ostringstream list;
  for (DType d : allowed) list << (list.tellp() > 0 ? ", " : "") << d;
  const std::string& input_name =
      i < static_cast<int>(op_.inputs().size()) ? op_.inputs()[i] : op_.inputs().back();
  fail("input '", input_name, "' has dtype ", inputs_[i].dtype, "; expected one of ", list.str());
}

void InferContext::expect_same_dtype(int i, int j) const {
  if (inputs_[i].dtype != inputs_[j].dtype)
    fail("dtypes differ: ", inputs_[i].dtype, " and ", inputs_[j].dtype,
         " (cast one of them first)");
}

int64_t InferContext::axis(int64_t axis, int64_t rank) const {
  if (axis < -rank || axis >= rank) fail("axis ", axis, " is out of range for rank ", rank);
  return axis < 0 ? axis + rank : axis;
}

int64_t InferContext::checked_add(int64_t a, int64_t b) const {
  int64_t sum = 0;
  if (__builtin_add_overflow(a, b, &sum)) fail("sizes overflow: ", a, " + ", b);
  return sum;
}

int64_t InferContext::checked_mul(int64_t a, int64_t b) const {
  int64_t product = 0;
  if (__builtin_mul_overflow(a, b, &product)) fail("sizes overflow: ", a, " * ", b);
  return product;
}

OpDef& OpDef::input(std::string name) {
  inputs_.push_back(std::move(name));
  return *this;
}

OpDef& OpDef::variadic_input(std::string name, int min_count) {
  inputs_.push_back(std::move(name));
  variadic_min_ = min_count;
  return *this;
}

OpDef& OpDef::attr(std::string name, AttrType type) {
  attrs_.push_back({std::move(name), type, std::nullopt});
  return *this;
}

OpDef& OpDef::infer(InferFn fn) {
  infer_ = std::move(fn);
  return *this;
}

OpDef& OpDef::kernel(DeviceKind device, KernelFn fn, std::vector<DType> dtypes) {
  kernels_[static_cast<size_t>(device)] = {fn, std::move(dtypes)};
  return *this;
}

OpDef& OpDef::elementwise() {
  elementwise_ = true;
  return *this;
}

OpDef& OpDef::grad(GradFn fn) {
  grad_ = std::move(fn);
  return *this;
}

OpDef& OpDef::no_gradient() {
  no_gradient_ = true;
  return *this;
}

OpDef& OpDef::reads_only_type_of(int index) {
  type_only_inputs_.push_back(index);
  return *this;
}

OpDef& OpDef::mutates_input(int index) {
  mutated_inputs_.push_back(index);
  return *this;
}

OpDef& OpDef::concatenates_inputs() {
  concatenates_ = true;
  return *this;
}

OpDef& OpDef::may_overwrite_input() {
  may_overwrite_ = true;
  return *this;
}

OpDef& OpDef::may_alias_input() {
  may_alias_ = true;
  return *this;
}

OpDef& OpDef::may_alias_input_of_same_size() {
  may_alias_ = alias_needs_same_size_ = true;
  return *this;
}

bool OpDef::may_alias(const std::vector<TensorType>& inputs,
                      const std::vector<TensorType>& outputs) const {
  if (!may_alias_ || inputs.empty()) return false;
  if (!alias_needs_same_size_ || outputs.empty()) return true;
  const Shape& in = inputs[0].shape;
  const Shape& out = outputs[0].shape;
  return !in.is_known() || !out.is_known() || in.numel() == out.numel();
}

OpDef& OpDef::stateful() {
  stateful_ = true;
  return *this;
}

OpDef& OpDef::random() {
  random_ = true;
  return *this;
}

OpDef& OpDef::communication() {
  communication_ = true;
  return *this;
}

OpDef& OpDef::output_source(OutputSource source) {
  source_ = source;
  return *this;
}

OpDef& OpDef::precision(Precision policy) {
  precision_ = policy;
  return *this;
}

const AttrSpec* OpDef::find_attr(const std::string& name) const {
  for (const AttrSpec& spec : attrs_)
    if (spec.name == name) return &spec;
  return nullptr;
}

KernelFn OpDef::kernel_for(DeviceKind device, DType dtype) const {
  const KernelEntry& entry = kernels_[static_cast<size_t>(device)];
  if (entry.dtypes.empty()) return entry.fn;
  for (DType d : entry.dtypes)
    if (d == dtype) return entry.fn;
  return nullptr;
}

OpRegistry& OpRegistry::global() {
  static OpRegistry registry;
  return registry;
}

void OpRegistry::add(OpDef op) {
  KILN_CHECK(op.infer_fn() != nullptr, Error, "[registry] op '", op.name(),
             "' has no inference function");
  // A random op's last input is the graph's random counter (see OpDef::random).
  if (op.is_random()) {
    KILN_CHECK(!op.variadic(), Error, "[registry] random op '", op.name(), "' cannot be variadic");
    op.input("counter");
    // The name the op draws under when not its own (a recomputed copy names its original).
    if (!op.find_attr("draw_as")) op.attr("draw_as", std::string());
  }
  std::string name = op.name();
  auto [it, inserted] = ops_.emplace(name, std::make_unique<OpDef>(std::move(op)));
  KILN_CHECK(inserted, Error, "[registry] op '", name, "' is registered twice");
  for (auto p = pending_.begin(); p != pending_.end();) {
    if (p->op == name) {
      it->second->kernel(p->device, p->fn, std::move(p->dtypes));
      p = pending_.erase(p);
    } else {
      ++p;
    }
  }
}

void OpRegistry::add_kernel(const std::string& op_name, DeviceKind device, KernelFn fn,
                            std::vector<DType> dtypes) {
  auto it = ops_.find(op_name);
  if (it != ops_.end())
    it->second->kernel(device, fn, std::move(dtypes));
  else
    pending_.push_back({op_name, device, fn, std::move(dtypes)});
}

const OpDef* OpRegistry::find(const std::string& name) const {
  auto it = ops_.find(name);
  return it == ops_.end() ? nullptr : it->second.get();
}

const OpDef& OpRegistry::get(const std::string& name) const {
  const OpDef* op = find(name);
  KILN_CHECK(op != nullptr, GraphError, "[registry] unknown op '", name, "'");
  return *op;
}

std::vector<const OpDef*> OpRegistry::all() const {
  std::vector<const OpDef*> out;
  for (const auto& [name, op] : ops_) out.push_back(op.get());
  return out;
}

}  // namespace kiln
