// The data-parallel transform: bucketed gradient averaging, micro-batch accumulation and the
// broadcast of variables from one rank.
#include "kiln/distributed/data_parallel.h"

#include <algorithm>
#include <map>

#include "kiln/distributed/collectives.h"
#include "kiln/ops/array.h"
#include "kiln/ops/math.h"
#include "kiln/ops/state.h"

namespace kiln::distributed {

namespace {

// Values flattened and concatenated along dim 0 (one value: just flattened).
Value pack(const std::vector<Value>& values) {
  std::vector<Value> flat;
  for (const Value& v : values) flat.push_back(reshape(v, Shape({v.shape().numel()})));
  return flat.size() == 1 ? flat[0] : concat(flat, 0);
}

// The inverse of pack: pieces of `packed` shaped like `like`.
std::vector<Value> unpack(const Value& packed, const std::vector<Value>& like) {
  if (like.size() == 1) return {reshape(packed, like[0].shape())};
  std::vector<int64_t> sizes;
  for (const Value& v : like) sizes.push_back(v.shape().numel());
  std::vector<Value> pieces = split(packed, sizes, 0);
  for (size_t i = 0; i < pieces.size(); ++i) pieces[i] = reshape(pieces[i], like[i].shape());
  return pieces;
}

int64_t bytes_of(const Value& v) {
  return v.shape().numel() * static_cast<int64_t>(dtype_size(v.dtype()));
}

}  // namespace

DataParallel data_parallel(const std::vector<optim::GradientAndVariable>& gradients,
                           const DataParallelOptions& options) {
  KILN_CHECK(!gradients.empty(), GraphError, "[data_parallel] no gradients to average");
  KILN_CHECK(options.bucket_bytes > 0, GraphError, "[data_parallel] bucket_bytes ",
             options.bucket_bytes, " must be positive");
  KILN_CHECK(options.first_bucket_bytes > 0, GraphError, "[data_parallel] first_bucket_bytes ",
             options.first_bucket_bytes, " must be positive");
  KILN_CHECK(options.accumulation_steps >= 1, GraphError, "[data_parallel] accumulation_steps ",
             options.accumulation_steps, " must be at least 1");
  Graph& graph = *gradients[0].variable.graph();
  for (const optim::GradientAndVariable& p : gradients) {
    KILN_CHECK(p.gradient.defined() && p.variable.defined() && p.gradient.graph() == &graph &&
                   p.variable.graph() == &graph,
               GraphError, "[data_parallel] every gradient and variable must be of one graph (",
               p.variable.defined() ? p.variable.name() : std::string("?"), ")");
    KILN_CHECK(p.variable.shape().is_known() && p.gradient.shape() == p.variable.shape(),
               GraphError, "[data_parallel] the gradient of ", p.variable.name(), " is ",
               p.gradient.shape(), ", the variable ", p.variable.shape());
  }
  NameScope scope(graph, "data_parallel");
  DataParallel result;

  // Micro-batches: this step's gradient is (accumulated + own) / k.
  std::vector<Value> local(gradients.size());
  const int64_t k = options.accumulation_steps;
  std::vector<Value> accumulations, resets;
  for (size_t i = 0; i < gradients.size(); ++i) {
    local[i] = gradients[i].gradient;
    if (k == 1) continue;
    const Value& var = gradients[i].variable;
    Value acc = graph.variable(var.name() + "/grad_accumulator", var.shape(), init::zeros(),
                               var.dtype(), /*trainable=*/false);
    accumulations.push_back(assign_add(acc, local[i]));
    local[i] = (acc + local[i]) / static_cast<double>(k);
    resets.push_back(assign(acc, zeros_like(acc)));
  }
  if (k > 1) {
    result.accumulate = group(graph, accumulations);
    result.reset = group(graph, resets);
  }

  // Backward order: autograd adds the nodes of later layers first, so a gradient made by a
  // lower node id exists earlier (node ids are a topological order of the graph).
  std::vector<size_t> order(gradients.size());
  for (size_t i = 0; i < order.size(); ++i) order[i] = i;
  std::stable_sort(order.begin(), order.end(), [&](size_t a, size_t b) {
    return gradients[a].gradient.node_id() < gradients[b].gradient.node_id();
  });

  // Buckets, one open per dtype, closed once they hold bucket_bytes (the first one:
  // first_bucket_bytes).
  std::map<DType, std::vector<size_t>> open;
  std::map<DType, int64_t> open_bytes;
  std::vector<std::vector<size_t>> closed;
  for (size_t i : order) {
    const DType dtype = gradients[i].gradient.dtype();
    open[dtype].push_back(i);
    open_bytes[dtype] += bytes_of(gradients[i].gradient);
    const int64_t cap = closed.empty() ? std::min(options.first_bucket_bytes, options.bucket_bytes)
                                       : options.bucket_bytes;
    if (open_bytes[dtype] >= cap) {
      closed.push_back(std::move(open[dtype]));
      open.erase(dtype);
      open_bytes.erase(dtype);
    }
  }
  // What is left, in the order of each one's last gradient.
  std::vector<std::vector<size_t>> rest;
  for (auto& [dtype, members] : open) rest.push_back(std::move(members));
  std::sort(rest.begin(), rest.end(), [&](const auto& a, const auto& b) {
    return gradients[a.back()].gradient.node_id() < gradients[b.back()].gradient.node_id();
  });
  for (auto& members : rest) closed.push_back(std::move(members));

  // Within a bucket, gradients whose size is a multiple of 64 bytes go first: each then
  // starts at an aligned place in the bucket, where the memory planner has its producer write
  // it directly (no packing copy); the odd-sized rest (biases, mostly) are copied in after them.
  for (std::vector<size_t>& members : closed)
    std::stable_partition(members.begin(), members.end(),
                          [&](size_t i) { return bytes_of(gradients[i].gradient) % 64 == 0; });

  result.gradients = gradients;
  for (const std::vector<size_t>& members : closed) {
    GradientBucket bucket;
    std::vector<Value> values;
    for (size_t i : members) {
      values.push_back(local[i]);
      bucket.variables.push_back(gradients[i].variable);
      bucket.bytes += bytes_of(local[i]);
    }
    bucket.dtype = values[0].dtype();
    bucket.reduced = all_reduce(pack(values), ReduceOp::avg);
    std::vector<Value> averaged = unpack(bucket.reduced, values);
    for (size_t j = 0; j < members.size(); ++j) result.gradients[members[j]].gradient = averaged[j];
    result.buckets.push_back(std::move(bucket));
  }
  return result;
}

Value DataParallel::apply(optim::Optimizer& optimizer) const {
  KILN_CHECK(!reset.defined() || optimizer.micro_batches() == 1, GraphError,
             "[data_parallel] the optimizer accumulates ", optimizer.micro_batches(),
             " micro-batches itself (with_gradient_accumulation) and data_parallel accumulates "
             "too (accumulation_steps): accumulate in one place, data_parallel's, which "
             "all-reduces only in the run that steps");
  Value update = optimizer.apply_gradients(gradients);
  if (!reset.defined()) return update;
  return group(*update.graph(), {update, reset});
}

Value broadcast_variables(Graph& graph, int64_t root) {
  KILN_CHECK(root >= 0, GraphError, "[broadcast_variables] root ", root, " is negative");
  std::map<DType, std::vector<Value>> by_dtype;
  for (const Value& var : graph.variables()) by_dtype[var.dtype()].push_back(var);
  KILN_CHECK(!by_dtype.empty(), GraphError, "[broadcast_variables] the graph has no variables");
  NameScope scope(graph, "broadcast_variables");
  std::vector<Value> assigns;
  for (const auto& [dtype, vars] : by_dtype) {
    std::vector<Value> values = unpack(broadcast(pack(vars), root), vars);
    for (size_t i = 0; i < vars.size(); ++i) assigns.push_back(assign(vars[i], values[i]));
  }
  return group(graph, assigns);
}

}  // namespace kiln::distributed
