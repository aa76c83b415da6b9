// Graph, Node and Value: the static computation graph that users build.
#pragma once

#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

#include "kiln/framework/attr.h"
#include "kiln/framework/op_registry.h"
#include "kiln/framework/tensor.h"
#include "kiln/framework/variables.h"

namespace kiln {

class Graph;
class Node;

/// A reference to output `index` of node `node` inside a graph (no graph pointer).
struct OutputRef {
  int32_t node = -1;
  int32_t index = 0;
  bool operator==(const OutputRef&) const = default;
  auto operator<=>(const OutputRef&) const = default;
};

/// Hash of an OutputRef, for unordered containers.
struct OutputRefHash {
  size_t operator()(OutputRef r) const {
    return std::hash<int64_t>()((int64_t{r.node} << 32) | static_cast<uint32_t>(r.index));
  }
};

/// A cheap handle to one output of one node: the graph, the node and the output index.
/// Its dtype and shape are known from the moment the node is built.
class Value {
 public:
  Value() = default;
  Value(Graph* graph, OutputRef ref) : graph_(graph), ref_(ref) {}

  bool defined() const { return graph_ != nullptr; }
  Graph* graph() const { return graph_; }
  OutputRef ref() const { return ref_; }
  int32_t node_id() const { return ref_.node; }
  int32_t index() const { return ref_.index; }
  const Node& node() const;
  DType dtype() const;
  const Shape& shape() const;
  /// The node name, with ":index" for outputs other than the first.
  std::string name() const;

  /// True when both handles refer to the same output of the same graph. (`a == b` is the
  /// elementwise comparison, a bool Value: ops/math.h.)
  bool same_as(const Value& other) const { return graph_ == other.graph_ && ref_ == other.ref_; }

  /// x[i]: the slice at index i of dim 0, that dim dropped (negative i counts from the end),
  /// as PyTorch's and NumPy's x[i].
  Value operator[](int64_t index) const;
  /// x[begin:end:step] along `axis` (Python semantics: negative bounds count from the end, out
  /// of range ones clamp), the other dims whole.
  Value slice(int64_t axis, int64_t begin, int64_t end = kSliceEnd, int64_t step = 1) const;
  /// This value under the name `name` in the current scope (an identity node named exactly
  /// so; a name already taken is a GraphError): what signatures, fetches and kiln-run's output
  /// files call it.
  Value named(const std::string& name) const;

 private:
  Graph* graph_ = nullptr;
  OutputRef ref_;
};

/// Which nodes of a recompute segment keep their outputs for the backward pass instead of
/// being computed again there (selective checkpointing: jax.checkpoint's policy, torch's
/// create_selective_checkpoint_contexts). Asked once per node as the node is built inside an
/// open segment (its op, name and attributes are known); true saves it. Saved nodes are still
/// differentiated as part of the segment: their gradients read the recomputed inputs and the
/// saved outputs. See save_products() and save_ops() in autograd/gradients.h.
using RecomputePolicy = std::function<bool(const Node&)>;

/// One operation in a graph. Nodes are created by Graph::add_node and never change after.
class Node {
 public:
  int32_t id() const { return id_; }
  const OpDef& op() const { return *op_; }
  const std::string& op_name() const { return op_->name(); }
  /// Unique, hierarchical name: "dense1/matmul".
  const std::string& name() const { return name_; }
  const std::vector<OutputRef>& inputs() const { return inputs_; }
  const std::vector<TensorType>& outputs() const { return outputs_; }
  int num_outputs() const { return static_cast<int>(outputs_.size()); }
  const AttrMap& attrs() const { return attrs_; }
  /// The attribute `name`; the schema guarantees it exists with type T.
  template <typename T>
  const T& attr(const std::string& name) const {
    return std::get<T>(attrs_.at(name));
  }
  /// The recompute segment the node was built in (RecomputeScope), or -1: gradients() builds
  /// such nodes again in the backward pass instead of keeping their outputs alive.
  int32_t recompute_segment() const { return recompute_segment_; }
  /// Whether its segment's policy keeps the node's outputs for the backward pass: the copy
  /// gradients() builds reads them instead of computing them again (see RecomputePolicy).
  bool recompute_saved() const { return recompute_saved_; }
  /// "" when the node may run anywhere, else a device such as "cuda:1".

 private:
  friend class Graph;
  int32_t id_ = -1;
  int32_t recompute_segment_ = -1;
  bool recompute_saved_ = false;
  const OpDef* op_ = nullptr;
  std::string name_;
  std::vector<OutputRef> inputs_;
  std::vector<TensorType> outputs_;
  AttrMap attrs_;
};

/// A named entry point into a graph: what to feed, what to fetch, what to run for effect.
struct Signature {
  std::string name{};
  std::vector<Value> inputs{};
  std::vector<Value> outputs{};
  std::vector<Value> targets{};
};

/// How Graph::variable makes a variable.
struct VariableOptions {
  /// The element type.
  DType dtype = DType::f32;
  /// Updated by optimizers by default (a parameter); false for state such as running statistics.
  bool trainable = true;
  /// Saved by Session::save_checkpoint, restored by restore_checkpoint and listed by
  /// variable_values(). false: scratch state the session keeps between runs but no file holds
  /// (PyTorch's non-persistent buffer), such as a KV cache; a restore leaves its value alone.
  bool persistent = true;
  /// This process's own state in a data-parallel job, not a replica of the other ranks' (the
  /// slots of the variables this rank updates under sharded optimizer state): the other ranks
  /// may not have it, and distributed::broadcast_variables leaves it alone.
  bool rank_local = false;
};

/// Options for Graph::add_node.
struct NodeOptions {
  /// The node's name inside the current scope; empty = derived from the op name. When taken,
  /// a suffix "_1", "_2", ... makes it unique, unless `exact_name` is set (then it is an error).
  std::string name{};
  bool exact_name = false;
  /// Ignore the current name scope (optimizer slots are named after their variable).
  bool absolute_name = false;
};

/// A static computation graph. Nodes are only ever appended, and every input of a node exists
/// before the node, so node ids are a topological order. A Graph is neither copied nor moved:
/// Values point at it.
class Graph {
 public:
  Graph() = default;
  Graph(const Graph&) = delete;
  Graph& operator=(const Graph&) = delete;

  /// An input fed at run time. A dim of -1 in `shape` is known only then.
  Value placeholder(const std::string& name, DType dtype, const Shape& shape);
  /// A constant holding `value` (copied into the graph).
  Value constant(const Tensor& value, const std::string& name = "");
  /// A variable: state that lives in the Session, starts as `initializer` says, and is changed
  /// by optimizer and assign ops. `trainable` variables are what optimizers update by default.
  Value variable(const std::string& name, const Shape& shape, const Initializer& initializer,
                 DType dtype = DType::f32, bool trainable = true);
  /// variable() with every option named: `g.variable("cache", shape, init::zeros(),
  /// {.trainable = false, .persistent = false})`.
  Value variable(const std::string& name, const Shape& shape, const Initializer& initializer,
                 const VariableOptions& options);
  /// Every variable, in creation order (trainable_only: only those marked trainable).
  std::vector<Value> variables(bool trainable_only = false);
  /// A rank-0 constant of `dtype` holding `value`.
  Value scalar(double value, DType dtype);

  /// Adds a node of op `op`, checks its inputs and attributes against the schema, infers its
  /// outputs, and returns them. Throws kiln::GraphError with the op, node name and shapes.
  std::vector<Value> add_node(const std::string& op, const std::vector<Value>& inputs,
                              AttrMap attrs = {}, const NodeOptions& options = {});
  /// add_node for a single-output op.
  Value add(const std::string& op, const std::vector<Value>& inputs, AttrMap attrs = {},
            const NodeOptions& options = {});

  int32_t num_nodes() const { return static_cast<int32_t>(nodes_.size()); }
  const Node& node(int32_t id) const { return *nodes_.at(static_cast<size_t>(id)); }
  /// The node called `name`, or nullptr.
  const Node* find_node(std::string_view name) const;
  /// The value called "node" or "node:index"; throws kiln::GraphError when there is none.
  Value value(std::string_view name);
  Value value(OutputRef ref) { return Value(this, ref); }
  /// Every placeholder, in creation order.
  std::vector<Value> placeholders();

  // ---- Rewriting, for graph passes (runtime/passes) working on a plan's private copy. These
  // keep the invariant that every input of a node has a lower id.

  /// Makes node `id` an `op` node with `inputs` and `attrs`, keeping its id and name. The
  /// inputs must have lower ids and inference must give the node's current output types.
  void rewrite_node(int32_t id, const std::string& op, const std::vector<Value>& inputs,
                    AttrMap attrs);
  /// Every input and signature value that reads a key of `map` reads the mapped value
  /// instead (each mapped value must come from a lower id than its readers).
  void replace_uses(const std::unordered_map<OutputRef, OutputRef, OutputRefHash>& map);
  /// Removes every node that no signature needs, renumbering the rest (order kept). Returns
  /// the number removed.
  int32_t remove_unreachable();
  /// Moves the nodes from id `first` to the last one (nodes a pass has just added) to just
  /// before node `position`, renumbering the nodes in between. Every input of a moved node must
  /// come before `position` or be moved too (a GraphError names it otherwise).
  void move_before(int32_t first, int32_t position);
  /// Node ids of each output's readers: consumers[id] lists (node, input index) pairs.
  std::vector<std::vector<std::pair<int32_t, int32_t>>> consumers() const;

  /// Opens a name scope: nodes made until pop_scope() are called "scope/...". Prefer NameScope.
  void push_scope(const std::string& scope);
  void pop_scope();
  /// The open scopes as a prefix of node names: "a/b/", or "" outside any.
  const std::string& scope() const { return scope_prefix_; }

  /// Opens a recompute segment: nodes made until end_recompute() form one segment, each
  /// asked of `policy` (if any) whether it is saved. A nested begin joins the open segment and
  /// its policy; its own is ignored. Prefer RecomputeScope.
  void begin_recompute(RecomputePolicy policy = {});
  /// Closes what begin_recompute() opened (the segment ends with the outermost one).
  void end_recompute();
  /// The segment nodes are being added to, or -1.
  int32_t open_recompute_segment() const { return recompute_segment_; }

  /// Adds or replaces a named signature. Its values must belong to this graph.
  void add_signature(Signature signature);
  /// The signature `name`; throws kiln::GraphError listing the known ones when absent.
  const Signature& signature(const std::string& name) const;
  const std::map<std::string, Signature>& signatures() const { return signatures_; }

 private:
  std::string unique_name(const std::string& base, bool exact);
  /// Gives node new_id[id] (nodes_ already in the new order) the id new_id[id] everywhere:
  /// node ids, inputs, names and signatures.
  void renumber(const std::vector<int32_t>& new_id);

  std::vector<std::unique_ptr<Node>> nodes_;
  std::unordered_map<std::string, int32_t> by_name_;
  std::unordered_map<std::string, int32_t> name_counters_;
  std::vector<std::string> scopes_;
  std::string scope_prefix_;
  std::map<std::string, Signature> signatures_;
  int32_t recompute_segment_ = -1;    // open segment, or -1
  int32_t recompute_depth_ = 0;       // nested begin_recompute() calls
  int32_t recompute_segments_ = 0;    // segments opened so far (the next one's number)
  RecomputePolicy recompute_policy_;  // of the open segment
};

/// RAII name scope: { NameScope s(g, "dense1"); ... } names nodes "dense1/...".
class NameScope {
 public:
  NameScope(Graph& graph, const std::string& scope) : graph_(graph) { graph_.push_scope(scope); }
  ~NameScope() { graph_.pop_scope(); }
  NameScope(const NameScope&) = delete;
  NameScope& operator=(const NameScope&) = delete;

 private:
  Graph& graph_;
};

/// RAII recompute segment (torch.utils.checkpoint, jax.checkpoint, tf.recompute_grad): the
/// nodes built inside are computed as usual in the forward pass, but gradients() differentiates
/// a copy of them built from the segment's inputs after the gradient reaches the segment, so
/// their outputs die in the forward pass instead of waiting for the backward one. Only values
/// read from outside the segment (and the ones read after it) stay alive. Random ops draw the
/// same numbers in the copy; variable writes (a batch norm's running statistics) are not
/// repeated. See recompute() in autograd/gradients.h.
class RecomputeScope {
 public:
  /// `policy`: which nodes keep their outputs instead (empty: none; see RecomputePolicy).
  explicit RecomputeScope(Graph& graph, RecomputePolicy policy = {}) : graph_(graph) {
    graph_.begin_recompute(std::move(policy));
  }
  ~RecomputeScope() { graph_.end_recompute(); }
  RecomputeScope(const RecomputeScope&) = delete;
  RecomputeScope& operator=(const RecomputeScope&) = delete;

 private:
  Graph& graph_;
};

/// Throws kiln::GraphError unless every value is defined and all share one graph; returns it.
/// `op` names the caller for the message.
Graph& common_graph(const std::string& op, std::initializer_list<const Value*> values);

}  // namespace kiln
