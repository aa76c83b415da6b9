#include "kiln/framework/graph.h"

#include <algorithm>
#include <charconv>

namespace kiln {

const Node& Value::node() const {
  KILN_CHECK(defined(), GraphError, "[graph] use of an undefined Value");
  return graph_->node(ref_.node);
}

DType Value::dtype() const {
  return node().outputs()[ref_.index].dtype;
}

const Shape& Value::shape() const {
  return node().outputs()[ref_.index].shape;
}

std::string Value::name() const {
  return ref_.index == 0 ? node().name() : str(node().name(), ":", ref_.index);
}

Value Graph::placeholder(const std::string& name, DType dtype, const Shape& shape) {
  return add("placeholder", {}, {{"dtype", dtype}, {"shape", shape}},
             {.name = name, .exact_name = true});
}

Value Graph::constant(const Tensor& value, const std::string& name) {
  KILN_CHECK(value.defined(), GraphError, "[constant] ", name, ": the tensor is undefined");
  return add("constant", {}, {{"value", value.clone()}}, {.name = name});
}

Value Graph::variable(const std::string& name, const Shape& shape, const Initializer& initializer,
                      DType dtype, bool trainable) {
  return variable(name, shape, initializer, {.dtype = dtype, .trainable = trainable});
}

Value Graph::variable(const std::string& name, const Shape& shape, const Initializer& initializer,
                      const VariableOptions& options) {
  AttrMap attrs{{"dtype", options.dtype},           {"shape", shape},
                {"init", initializer.kind},         {"init_args", initializer.args},
                {"seed", initializer.seed},         {"trainable", options.trainable},
                {"persistent", options.persistent}, {"rank_local", options.rank_local}};
  if (initializer.value.defined()) attrs["init_value"] = initializer.value;
  return add("variable", {}, std::move(attrs), {.name = name, .exact_name = true});
}

std::vector<Value> Graph::variables(bool trainable_only) {
  std::vector<Value> out;
  for (const auto& node : nodes_)
    if (node->op().source() == OutputSource::state &&
        (!trainable_only || node->attr<bool>("trainable")))
      out.emplace_back(this, OutputRef{node->id(), 0});
  return out;
}

Value Graph::scalar(double value, DType dtype) {
  return constant(Tensor::full(dtype, Shape{}, value), "scalar");
}

namespace {

// Converts attribute values whose C++ type differs from the schema's in a lossless,
// unsurprising way (an int where a float is declared, ints where a shape is declared).
bool coerce_attr(AttrValue& value, AttrType wanted) {
  AttrType have = attr_type(value);
  if (have == wanted) return true;
  if (wanted == AttrType::real && have == AttrType::integer) {
    value = static_cast<double>(std::get<int64_t>(value));
    return true;
  }
  if (wanted == AttrType::shape && have == AttrType::integers) {
    value = Shape(std::get<std::vector<int64_t>>(value));
    return true;
  }
  if (wanted == AttrType::reals && have == AttrType::integers) {
    const auto& ints = std::get<std::vector<int64_t>>(value);
    value = std::vector<double>(ints.begin(), ints.end());
    return true;
  }
  return false;
}

}  // namespace

std::vector<Value> Graph::add_node(const std::string& op_name, const std::vector<Value>& inputs,
                                   AttrMap attrs, const NodeOptions& options) {
  const OpDef* op = OpRegistry::global().find(op_name);
  KILN_CHECK(op != nullptr, GraphError, "[graph] unknown op '", op_name, "'");
  const std::string& local = options.name.empty() ? op_name : options.name;
  KILN_CHECK(local.find(':') == std::string::npos, GraphError, "[", op_name, "] node name '", local,
             "' contains ':', which is reserved for output indices");
  std::string name = (options.absolute_name ? std::string() : scope_prefix_) + local;
  auto fail = [&](auto&&... args) {
    throw GraphError(str("[", op_name, "] ", name, ": ", args...));
  };

  // Inputs: the count the schema declares, each a defined value of this graph.
  size_t fixed = op->inputs().size() - (op->variadic() ? 1 : 0);
  if (op->variadic()) {
    if (inputs.size() < fixed + static_cast<size_t>(op->variadic_min()))
      fail("takes at least ", fixed + op->variadic_min(), " inputs, got ", inputs.size());
  } else if (inputs.size() != fixed) {
    fail("takes ", fixed, " inputs, got ", inputs.size());
  }
  std::vector<TensorType> input_types;
  std::vector<OutputRef> refs;
  for (size_t i = 0; i < inputs.size(); ++i) {
    const Value& v = inputs[i];
    if (!v.defined()) fail("input ", i, " is an undefined Value");
    if (v.graph() != this) fail("input ", i, " (", v.name(), ") belongs to another graph");
    input_types.push_back(v.node().outputs()[v.index()]);
    refs.push_back(v.ref());
  }
  // An op that writes into an input may only write into a variable's state.
  for (int i : op->mutated_inputs())
    if (i < static_cast<int>(inputs.size()) &&
        inputs[i].node().op().source() != OutputSource::state)
      fail("input '", op->inputs()[i], "' must be a variable, got ", inputs[i].name(), " (",
           inputs[i].node().op_name(), ")");
  // A random op draws under the graph's random counter: an i64 scalar variable.
  if (op->is_random()) {
    const Value& counter = inputs.back();
    if (counter.node().op().source() != OutputSource::state || counter.dtype() != DType::i64 ||
        counter.shape().rank() != 0)
      fail("input 'counter' must be an i64 scalar variable (random_counter(graph)), got ",
           counter.name(), " (", counter.node().op_name(), ", ", counter.dtype(), counter.shape(),
           ")");
  }

  // Attributes: only declared ones, each of its declared type; defaults fill the rest.
  for (auto& [key, value] : attrs) {
    const AttrSpec* spec = op->find_attr(key);
    if (!spec) fail("unknown attribute '", key, "'");
    if (!coerce_attr(value, spec->type))
      fail("attribute '", key, "' must be ", attr_type_name(spec->type), ", got ",
           attr_type_name(attr_type(value)));
  }
  for (const AttrSpec& spec : op->attrs()) {
    if (attrs.count(spec.name)) continue;
    if (!spec.default_value) fail("missing required attribute '", spec.name, "'");
    attrs.emplace(spec.name, *spec.default_value);
  }

  std::vector<TensorType> outputs = op->infer_fn()(InferContext(*op, name, input_types, attrs));
  // Every value's known dims make at most 2^48 bytes (256 TiB, beyond any machine), so that
  // kernels, later inference and the memory planner can add and multiply sizes and byte counts
  // without overflow, whatever a graph file says.
  for (size_t i = 0; i < outputs.size(); ++i) {
    constexpr int64_t kMaxValueBytes = int64_t{1} << 48;
    int64_t bytes = static_cast<int64_t>(dtype_size(outputs[i].dtype));
    for (int64_t d : outputs[i].shape) {
      if (d < -1) fail("output ", i, " would have shape ", outputs[i].shape, " (a dim below -1)");
      if (d > 0 && bytes > kMaxValueBytes / d)
        fail("output ", i, " would be ", outputs[i].dtype, outputs[i].shape,
             ": more than 2^48 bytes");
      if (d > 0) bytes *= d;
    }
  }

  auto node = std::make_unique<Node>();
  node->id_ = num_nodes();
  node->op_ = op;
  node->name_ = unique_name(name, options.exact_name);
  node->inputs_ = std::move(refs);
  node->outputs_ = std::move(outputs);
  node->attrs_ = std::move(attrs);
  node->recompute_segment_ = recompute_segment_;
  if (recompute_segment_ >= 0 && recompute_policy_)
    node->recompute_saved_ = recompute_policy_(*node);
  by_name_.emplace(node->name_, node->id_);
  nodes_.push_back(std::move(node));

  const Node& made = *nodes_.back();
  std::vector<Value> values;
  for (int32_t i = 0; i < made.num_outputs(); ++i)
    values.emplace_back(this, OutputRef{made.id(), i});
  return values;
}

void Graph::begin_recompute(RecomputePolicy policy) {
  if (recompute_depth_++ > 0) return;
  recompute_segment_ = recompute_segments_++;
  recompute_policy_ = std::move(policy);
}

void Graph::end_recompute() {
  KILN_CHECK(recompute_depth_ > 0, GraphError, "[graph] end_recompute() without begin_recompute()");
  if (--recompute_depth_ > 0) return;
  recompute_segment_ = -1;
  recompute_policy_ = nullptr;
}

Value Graph::add(const std::string& op, const std::vector<Value>& inputs, AttrMap attrs,
                 const NodeOptions& options) {
  std::vector<Value> outputs = add_node(op, inputs, std::move(attrs), options);
  KILN_DASSERT(outputs.size() == 1);
  return outputs[0];
}

void Graph::rewrite_node(int32_t id, const std::string& op_name, const std::vector<Value>& inputs,
                         AttrMap attrs) {
  Node& node = *nodes_.at(static_cast<size_t>(id));
  const OpDef& op = OpRegistry::global().get(op_name);
  std::vector<TensorType> types;
  std::vector<OutputRef> refs;
  for (const Value& v : inputs) {
    KILN_CHECK(v.graph() == this && v.node_id() < id, GraphError, "[graph] rewrite of '",
               node.name(), "' would read ", v.name(), ", which does not come before it");
    types.push_back(v.node().outputs()[v.index()]);
    refs.push_back(v.ref());
  }
  for (const AttrSpec& spec : op.attrs())
    if (!attrs.count(spec.name) && spec.default_value)
      attrs.emplace(spec.name, *spec.default_value);
  std::vector<TensorType> outputs = op.infer_fn()(InferContext(op, node.name(), types, attrs));
  KILN_CHECK(outputs == node.outputs_, GraphError, "[graph] rewrite of '", node.name(), "' as ",
             op_name, " changes its output types");
  node.op_ = &op;
  node.inputs_ = std::move(refs);
  node.attrs_ = std::move(attrs);
}

void Graph::replace_uses(const std::unordered_map<OutputRef, OutputRef, OutputRefHash>& map) {
  if (map.empty()) return;
  auto resolve = [&](OutputRef r) {
    // Follow chains (a -> b -> c) so one call settles them all.
    for (auto it = map.find(r); it != map.end(); it = map.find(r)) r = it->second;
    return r;
  };
  for (auto& node : nodes_)
    for (OutputRef& in : node->inputs_) {
      in = resolve(in);
      KILN_DASSERT(in.node < node->id_);
    }
  for (auto& [name, sig] : signatures_)
    for (auto* list : {&sig.inputs, &sig.outputs, &sig.targets})
      for (Value& v : *list) v = Value(this, resolve(v.ref()));
}

int32_t Graph::remove_unreachable() {
  std::vector<char> live(nodes_.size(), 0);
  std::vector<int32_t> stack;
  for (const auto& [name, sig] : signatures_)
    for (const auto* list : {&sig.inputs, &sig.outputs, &sig.targets})
      for (const Value& v : *list) stack.push_back(v.node_id());
  while (!stack.empty()) {
    int32_t id = stack.back();
    stack.pop_back();
    if (live[id]) continue;
    live[id] = 1;
    for (OutputRef in : nodes_[id]->inputs_) stack.push_back(in.node);
  }
  std::vector<int32_t> new_id(nodes_.size(), -1);
  std::vector<std::unique_ptr<Node>> kept;
  for (size_t id = 0; id < nodes_.size(); ++id) {
    if (!live[id]) {
      by_name_.erase(nodes_[id]->name_);
      continue;
    }
    new_id[id] = static_cast<int32_t>(kept.size());
    kept.push_back(std::move(nodes_[id]));
  }
  const int32_t removed = static_cast<int32_t>(nodes_.size() - kept.size());
  nodes_ = std::move(kept);
  renumber(new_id);
  return removed;
}

void Graph::move_before(int32_t first, int32_t position) {
  const int32_t n = num_nodes();
  KILN_CHECK(0 <= position && position <= first && first <= n, GraphError,
             "[graph] cannot move nodes ", first, "..", n - 1, " before node ", position);
  for (int32_t id = first; id < n; ++id)
    for (OutputRef in : nodes_[id]->inputs_)
      KILN_CHECK(in.node < position || in.node >= first, GraphError, "[graph] cannot move '",
                 nodes_[id]->name_, "' before '", nodes_[position]->name_, "': it reads '",
                 nodes_[in.node]->name_, "', which comes after");
  // New order: [0, position), [first, n), [position, first).
  std::vector<int32_t> new_id(nodes_.size());
  for (int32_t id = 0; id < n; ++id)
    new_id[id] = id < position ? id : id >= first ? position + (id - first) : id + (n - first);
  std::rotate(nodes_.begin() + position, nodes_.begin() + first, nodes_.end());
  renumber(new_id);
}

void Graph::renumber(const std::vector<int32_t>& new_id) {
  for (auto& node : nodes_) {
    node->id_ = new_id[node->id_];
    for (OutputRef& in : node->inputs_) in.node = new_id[in.node];
    by_name_[node->name_] = node->id_;
  }
  for (auto& [name, sig] : signatures_)
    for (auto* list : {&sig.inputs, &sig.outputs, &sig.targets})
      for (Value& v : *list) v = Value(this, OutputRef{new_id[v.node_id()], v.index()});
}

std::vector<std::vector<std::pair<int32_t, int32_t>>> Graph::consumers() const {
  std::vector<std::vector<std::pair<int32_t, int32_t>>> out(nodes_.size());
  for (const auto& node : nodes_)
    for (size_t i = 0; i < node->inputs_.size(); ++i)
      out[node->inputs_[i].node].emplace_back(node->id_, static_cast<int32_t>(i));
  return out;
}

std::string Graph::unique_name(const std::string& base, bool exact) {
  if (!by_name_.count(base)) return base;
  if (exact) throw GraphError(str("[graph] the name '", base, "' is already used by another node"));
  int32_t& counter = name_counters_[base];
  std::string candidate;
  do {
    candidate = str(base, "_", ++counter);
  } while (by_name_.count(candidate));
  return candidate;
}

const Node* Graph::find_node(std::string_view name) const {
  auto it = by_name_.find(std::string(name));
  return it == by_name_.end() ? nullptr : nodes_[it->second].get();
}

Value Graph::value(std::string_view name) {
  std::string_view node_name = name;
  int32_t index = 0;
  if (size_t colon = name.rfind(':'); colon != std::string_view::npos) {
    node_name = name.substr(0, colon);
    std::string_view digits = name.substr(colon + 1);
    auto [end, ec] = std::from_chars(digits.data(), digits.data() + digits.size(), index);
    KILN_CHECK(ec == std::errc() && end == digits.data() + digits.size() && index >= 0, GraphError,
               "[graph] bad value name '", name, "' (expected node or node:index)");
  }
  const Node* node = find_node(node_name);
  KILN_CHECK(node != nullptr, GraphError, "[graph] no node named '", node_name, "'");
  KILN_CHECK(index < node->num_outputs(), GraphError, "[graph] node '", node_name, "' has ",
             node->num_outputs(), " output(s); there is no output ", index);
  return Value(this, OutputRef{node->id(), index});
}

std::vector<Value> Graph::placeholders() {
  std::vector<Value> out;
  for (const auto& node : nodes_)
    if (node->op().source() == OutputSource::feed) out.emplace_back(this, OutputRef{node->id(), 0});
  return out;
}

void Graph::push_scope(const std::string& scope) {
  KILN_CHECK(!scope.empty() && scope.find(':') == std::string::npos, GraphError,
             "[graph] bad name scope '", scope, "'");
  scopes_.push_back(scope_prefix_);
  scope_prefix_ += scope + "/";
}

void Graph::pop_scope() {
  KILN_CHECK(!scopes_.empty(), GraphError, "[graph] pop_scope without a matching push_scope");
  scope_prefix_ = scopes_.back();
  scopes_.pop_back();
}

void Graph::add_signature(Signature signature) {
  KILN_CHECK(!signature.name.empty(), GraphError, "[graph] a signature needs a name");
  for (const auto* list : {&signature.inputs, &signature.outputs, &signature.targets})
    for (const Value& v : *list)
      KILN_CHECK(v.defined() && v.graph() == this, GraphError, "[graph] signature '",
                 signature.name, "' names a value of another graph");
  std::string name = signature.name;
  signatures_[name] = std::move(signature);
}

const Signature& Graph::signature(const std::string& name) const {
  auto it = signatures_.find(name);
  if (it == signatures_.end()) {
    std::string known;
    for (const auto& [key, _] : signatures_) known += (known.empty() ? "" : ", ") + key;
    throw GraphError(str("[graph] no signature named '", name,
                         "' (the graph has: ", known.empty() ? "none" : known, ")"));
  }
  return it->second;
}

Graph& common_graph(const std::string& op, std::initializer_list<const Value*> values) {
  Graph* graph = nullptr;
  for (const Value* v : values) {
    KILN_CHECK(v->defined(), GraphError, "[", op, "] an input is an undefined Value");
    KILN_CHECK(graph == nullptr || v->graph() == graph, GraphError, "[", op,
               "] inputs belong to different graphs (", v->name(), ")");
    graph = v->graph();
  }
  return *graph;
}

}  // namespace kiln
