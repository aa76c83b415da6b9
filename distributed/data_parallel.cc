// The data-parallel transform: bucketed gradient averaging, micro-batch accumulation and the
// broadcast of variables from one rank.
#include "kiln/distributed/data_parallel.h"

#include <algorithm>
#include <map>

#include "kiln/distributed/collectives.h"
#include "kiln/distributed/distributed.h"
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

// The sharded step (ZeRO stage 1): this rank updates the variables it owns; then, per dtype,
// every rank's new values are packed (padded to the longest rank's part) and all-gathered, and
// each rank assigns the parts of the variables it does not own. The gathers follow every
// bucket's all-reduce in node order on every rank, so the ranks queue their collectives alike.
//
// The ranks' graphs differ here (each updates its own variables), and the schedule orders the
// collectives that wait for others only by what they read: a rank that gathers a constant (it
// owns nothing of a dtype) could queue that gather before another dtype's. So each collective
// made here runs after the one made before it (the first after the last bucket's), and every
// rank queues them in the order they are made.
Value apply_sharded(const DataParallel& dp, optim::Optimizer& optimizer) {
  const std::vector<optim::GradientAndVariable>& gradients = dp.gradients;
  std::vector<bool> owned(gradients.size());
  for (size_t i = 0; i < owned.size(); ++i) owned[i] = dp.owners[i] == dp.rank;
  Value last_collective = dp.buckets.back().collectives.back();
  auto in_turn = [&](const Value& x) { return after(x, {last_collective}); };
  Value step;
  if (dp.gradients_sharded) {
    // Clipping's norm and loss scaling's probe, summed (or maxed) over every rank's share.
    auto over_ranks = [&](ReduceOp op) {
      return [&, op](const Value& x) { return last_collective = all_reduce(in_turn(x), op); };
    };
    step = optimizer.apply_gradients(
        gradients, owned, {.sum = over_ranks(ReduceOp::sum), .max = over_ranks(ReduceOp::max)});
  } else {
    step = optimizer.apply_gradients(gradients, owned);
  }
  Graph& graph = *step.graph();
  NameScope scope(graph, "data_parallel/gather_variables");
  std::vector<Value> targets = {step};
  // Every bucket's all-reduce runs on every rank, even one whose averages only other ranks
  // read: the ranks must call the same collectives.
  for (const GradientBucket& bucket : dp.buckets)
    targets.insert(targets.end(), bucket.collectives.begin(), bucket.collectives.end());
  std::map<DType, std::vector<size_t>> by_dtype;
  for (size_t i = 0; i < gradients.size(); ++i)
    by_dtype[gradients[i].variable.dtype()].push_back(i);
  const auto world = static_cast<size_t>(dp.world_size);
  for (const auto& [dtype, members] : by_dtype) {
    std::vector<std::vector<size_t>> of_rank(world);
    std::vector<int64_t> elements(world, 0);
    for (size_t i : members) {
      of_rank[dp.owners[i]].push_back(i);
      elements[dp.owners[i]] += gradients[i].variable.shape().numel();
    }
    const int64_t longest = *std::max_element(elements.begin(), elements.end());
    if (longest == 0) continue;
    std::vector<Value> mine;
    for (size_t i : of_rank[dp.rank]) mine.push_back(optimizer.updated(gradients[i].variable));
    if (const int64_t padding = longest - elements[dp.rank]; padding > 0)
      mine.push_back(graph.constant(Tensor::full(dtype, Shape({padding}), 0.0)));
    last_collective = all_gather(in_turn(pack(mine)), dp.world_size);
    // Run even where nothing reads it (this rank owns the dtype's only variables): the others'
    // gathers wait for this rank's part.
    targets.push_back(last_collective);
    Value gathered = reshape(last_collective, Shape({dp.world_size * longest}));
    std::vector<int64_t> parts;  // each rank's part and its padding
    for (size_t r = 0; r < world; ++r) {
      parts.push_back(elements[r]);
      parts.push_back(longest - elements[r]);
    }
    std::vector<Value> pieces = split(gathered, parts, 0);
    for (size_t r = 0; r < world; ++r) {
      if (static_cast<int64_t>(r) == dp.rank || of_rank[r].empty()) continue;
      std::vector<Value> vars;
      for (size_t i : of_rank[r]) vars.push_back(gradients[i].variable);
      std::vector<Value> values = unpack(pieces[2 * r], vars);
      for (size_t j = 0; j < vars.size(); ++j) {
        targets.push_back(assign(vars[j], values[j]));
        optimizer.set_updated(vars[j], values[j]);
      }
    }
  }
  return group(graph, targets);
}

// Owners for sharded gradients, balanced within each bucket: a bucket is reduce-scattered in
// equal parts, each padded to the longest, so a bucket whose bytes one rank owns would send
// zeros for the others. In each bucket the largest gradient goes first, each to the rank
// holding the fewest of the bucket's bytes so far, ties to the rank holding the fewest bytes
// overall, then the lowest; so the ranks stay balanced overall too. The same on every rank.
std::vector<int64_t> partition_buckets(const std::vector<optim::GradientAndVariable>& gradients,
                                       const std::vector<std::vector<size_t>>& buckets,
                                       int64_t world_size) {
  std::vector<int64_t> owners(gradients.size(), 0);
  std::vector<int64_t> held(static_cast<size_t>(world_size), 0);
  for (const std::vector<size_t>& members : buckets) {
    std::vector<size_t> order = members;
    std::stable_sort(order.begin(), order.end(), [&](size_t a, size_t b) {
      return bytes_of(gradients[a].variable) > bytes_of(gradients[b].variable);
    });
    std::vector<int64_t> in_bucket(held.size(), 0);
    for (size_t i : order) {
      size_t best = 0;
      for (size_t r = 1; r < held.size(); ++r)
        if (std::pair(in_bucket[r], held[r]) < std::pair(in_bucket[best], held[best])) best = r;
      owners[i] = static_cast<int64_t>(best);
      in_bucket[best] += bytes_of(gradients[i].variable);
      held[best] += bytes_of(gradients[i].variable);
    }
  }
  return owners;
}

// Whether PowerSGD compresses a gradient of `shape`, viewed as n x m (its first dim by the
// rest): it must be a matrix or more, and shrink by the rate, n m > rate (n + m) rank.
bool power_sgd_compresses(const Shape& shape, const PowerSgdOptions& options) {
  if (shape.rank() < 2 || shape.numel() == 0) return false;
  const auto n = static_cast<double>(shape[0]);
  const double m = static_cast<double>(shape.numel()) / n;
  return n * m > options.min_compression_rate * (n + m) * static_cast<double>(options.rank);
}

// p's columns made orthonormal in turn (modified Gram-Schmidt, as the hook's): each column is
// normalized (its norm + epsilon), then its projection taken off every later column.
Value orthonormal_columns(const Value& p, int64_t rank, double epsilon) {
  std::vector<Value> columns =
      rank == 1 ? std::vector<Value>{p} : split(p, std::vector<int64_t>(rank, 1), 1);
  for (size_t i = 0; i < columns.size(); ++i) {
    columns[i] = columns[i] / (sqrt(sum(square(columns[i]))) + epsilon);
    for (size_t j = i + 1; j < columns.size(); ++j)
      columns[j] = columns[j] - sum(columns[i] * columns[j]) * columns[i];
  }
  return rank == 1 ? columns[0] : concat(columns, 1);
}

// PowerSGD for the bucket's gradients at positions `low_rank` (of `members` / `values`): the
// P's of all of them in one all-reduce, their Q's in another. Sets their averaged gradients in
// dp.gradients; the new Q and error of each go to `state_updates`.
void add_power_sgd(DataParallel& dp, GradientBucket& bucket, const std::vector<size_t>& members,
                   const std::vector<Value>& values, const std::vector<size_t>& low_rank,
                   const PowerSgdOptions& options, std::vector<Value>& state_updates) {
  Graph& graph = *values[0].graph();
  const int64_t r = options.rank;
  std::vector<Value> matrices, qs, errors, ps;
  for (size_t j : low_rank) {
    const Value& var = dp.gradients[members[j]].variable;
    const Value& g = values[j];
    const int64_t n = g.shape()[0], m = g.shape().numel() / n;
    const std::string name = var.node().name();
    Value error = graph.variable(name + "/power_sgd_error", Shape({n, m}), init::zeros(),
                                 {.dtype = g.dtype(), .trainable = false, .rank_local = true});
    // The same start on every rank: the seed and the variable's place in the gradients.
    Value q = graph.variable(name + "/power_sgd_q", Shape({m, r}),
                             init::normal(0, 1, options.seed + static_cast<int64_t>(members[j])),
                             g.dtype(), false);
    matrices.push_back(reshape(g, Shape({n, m})) + error);
    ps.push_back(matmul(matrices.back(), q));
    qs.push_back(q);
    errors.push_back(error);
  }
  // Summed, not averaged: the columns are normalized next.
  bucket.collectives.push_back(all_reduce(pack(ps), ReduceOp::sum));
  std::vector<Value> summed_ps = unpack(bucket.collectives.back(), ps);
  std::vector<Value> new_qs;
  for (size_t k = 0; k < low_rank.size(); ++k) {
    summed_ps[k] = orthonormal_columns(summed_ps[k], r, options.orthogonalization_epsilon);
    new_qs.push_back(matmul(matrices[k], summed_ps[k], /*transpose_a=*/true));
  }
  bucket.collectives.push_back(all_reduce(pack(new_qs), ReduceOp::avg));
  std::vector<Value> averaged_qs = unpack(bucket.collectives.back(), new_qs);
  for (size_t k = 0; k < low_rank.size(); ++k) {
    const size_t j = low_rank[k];
    Value approximation = matmul(summed_ps[k], averaged_qs[k], false, /*transpose_b=*/true);
    state_updates.push_back(assign(errors[k], matrices[k] - approximation));
    state_updates.push_back(assign(qs[k], averaged_qs[k]));
    dp.gradients[members[j]].gradient = reshape(approximation, values[j].shape());
    bucket.low_rank.push_back(dp.gradients[members[j]].variable);
  }
}

// Whether a bucket of `dtype` travels in the compression's dtype (a narrower float).
bool compresses(DType dtype, const std::optional<DType>& compression) {
  return compression && is_floating(dtype) && dtype_size(dtype) > dtype_size(*compression);
}

// A bucket reduce-scattered to the owners (ZeRO stage 2): laid out as [rank 0's gradients,
// zeros, rank 1's, zeros, ...], each rank's part padded to the longest one, rounded up to 64
// bytes so every part starts aligned (the packing then writes in place, as in all-reduced
// buckets). The reduce_scatter gives this rank its part averaged; only its variables'
// gradients are defined in `dp.gradients`.
void add_scattered_bucket(DataParallel& dp, GradientBucket& bucket,
                          const std::vector<size_t>& members, const std::vector<Value>& values,
                          const std::optional<DType>& compression) {
  Graph& graph = *values[0].graph();
  const auto world = static_cast<size_t>(dp.world_size);
  std::vector<std::vector<size_t>> of_rank(world);  // positions in `members`, in bucket order
  std::vector<int64_t> elements(world, 0);
  for (size_t j = 0; j < members.size(); ++j) {
    const int64_t owner = dp.owners[members[j]];
    of_rank[owner].push_back(j);
    elements[owner] += values[j].shape().numel();
  }
  const int64_t per_line = 64 / static_cast<int64_t>(dtype_size(bucket.dtype));
  const int64_t longest =
      (*std::max_element(elements.begin(), elements.end()) + per_line - 1) / per_line * per_line;
  std::vector<Value> pieces;
  for (size_t r = 0; r < world; ++r) {
    for (size_t j : of_rank[r]) pieces.push_back(values[j]);
    if (const int64_t padding = longest - elements[r]; padding > 0)
      pieces.push_back(graph.constant(Tensor::full(bucket.dtype, Shape({padding}), 0.0)));
  }
  Value packed = pack(pieces);
  const bool compressed = compresses(bucket.dtype, compression);
  if (compressed) {
    bucket.wire_dtype = *compression;
    packed = cast(packed, bucket.wire_dtype);
  }
  bucket.reduced = reduce_scatter(packed, ReduceOp::avg, dp.world_size);
  bucket.collectives = {bucket.reduced};
  bucket.scattered = true;
  for (size_t i : members) dp.gradients[i].gradient = Value();
  const std::vector<size_t>& mine = of_rank[static_cast<size_t>(dp.rank)];
  if (!mine.empty()) {
    Value part = compressed ? cast(bucket.reduced, bucket.dtype) : bucket.reduced;
    const int64_t own = elements[static_cast<size_t>(dp.rank)];
    if (own < longest) part = split(part, {own, longest - own}, 0)[0];
    std::vector<Value> like;
    for (size_t j : mine) like.push_back(values[j]);
    std::vector<Value> averaged = unpack(part, like);
    for (size_t k = 0; k < mine.size(); ++k) dp.gradients[members[mine[k]]].gradient = averaged[k];
  }
  dp.buckets.push_back(std::move(bucket));
}

}  // namespace

std::vector<int64_t> partition_variables(const std::vector<Value>& variables, int64_t world_size) {
  KILN_CHECK(world_size >= 1, GraphError, "[data_parallel] world_size ", world_size,
             " must be at least 1");
  std::vector<size_t> order(variables.size());
  for (size_t i = 0; i < order.size(); ++i) order[i] = i;
  std::stable_sort(order.begin(), order.end(), [&](size_t a, size_t b) {
    return bytes_of(variables[a]) > bytes_of(variables[b]);
  });
  std::vector<int64_t> owners(variables.size()), held(static_cast<size_t>(world_size), 0);
  for (size_t i : order) {
    const auto least = std::min_element(held.begin(), held.end()) - held.begin();
    owners[i] = least;
    held[least] += bytes_of(variables[i]);
  }
  return owners;
}

DataParallel data_parallel(const std::vector<optim::GradientAndVariable>& gradients,
                           const DataParallelOptions& options) {
  KILN_CHECK(!gradients.empty(), GraphError, "[data_parallel] no gradients to average");
  KILN_CHECK(options.bucket_bytes > 0, GraphError, "[data_parallel] bucket_bytes ",
             options.bucket_bytes, " must be positive");
  KILN_CHECK(options.first_bucket_bytes > 0, GraphError, "[data_parallel] first_bucket_bytes ",
             options.first_bucket_bytes, " must be positive");
  KILN_CHECK(options.accumulation_steps >= 1, GraphError, "[data_parallel] accumulation_steps ",
             options.accumulation_steps, " must be at least 1");
  KILN_CHECK(!options.compression || *options.compression == f16 || *options.compression == bf16,
             GraphError, "[data_parallel] compression to ", options.compression.value_or(f32),
             ": only f16 and bf16 are 16-bit floats to send gradients in");
  if (const auto& power = options.power_sgd) {
    KILN_CHECK(power->rank >= 1, GraphError, "[data_parallel] power_sgd's rank ", power->rank,
               " must be at least 1");
    KILN_CHECK(power->min_compression_rate >= 0 && power->orthogonalization_epsilon >= 0,
               GraphError, "[data_parallel] power_sgd's min_compression_rate ",
               power->min_compression_rate, " and orthogonalization_epsilon ",
               power->orthogonalization_epsilon, " must not be negative");
    KILN_CHECK(!options.compression && !options.shard_gradients, GraphError,
               "[data_parallel] power_sgd compresses the gradients itself: not with ",
               options.compression ? "compression" : "shard_gradients");
  }
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
  if (auto group = default_group()) {
    result.rank = group->rank();
    result.world_size = group->world_size();
  }
  result.gradients_sharded = options.shard_gradients;
  if (options.shard_gradients) {
    result.owners = partition_buckets(gradients, closed, result.world_size);
  } else if (options.shard_optimizer_state) {
    std::vector<Value> variables;
    for (const optim::GradientAndVariable& p : gradients) variables.push_back(p.variable);
    result.owners = partition_variables(variables, result.world_size);
  }
  std::vector<Value> power_updates;  // PowerSGD's new Q's and errors
  for (const std::vector<size_t>& members : closed) {
    GradientBucket bucket;
    std::vector<Value> values;
    for (size_t i : members) {
      values.push_back(local[i]);
      bucket.variables.push_back(gradients[i].variable);
      bucket.bytes += bytes_of(local[i]);
    }
    bucket.dtype = bucket.wire_dtype = values[0].dtype();
    if (options.shard_gradients) {
      add_scattered_bucket(result, bucket, members, values, options.compression);
      continue;
    }
    // With PowerSGD, the matrices it compresses leave the bucket's all-reduce.
    std::vector<size_t> whole, low_rank;
    for (size_t j = 0; j < members.size(); ++j)
      (options.power_sgd && power_sgd_compresses(values[j].shape(), *options.power_sgd) ? low_rank
                                                                                        : whole)
          .push_back(j);
    if (!whole.empty()) {
      std::vector<Value> sent;
      for (size_t j : whole) sent.push_back(values[j]);
      Value packed = pack(sent);
      const bool compressed = compresses(bucket.dtype, options.compression);
      if (compressed) {
        bucket.wire_dtype = *options.compression;
        packed = cast(packed, bucket.wire_dtype);
      }
      bucket.reduced = all_reduce(packed, ReduceOp::avg);
      bucket.collectives.push_back(bucket.reduced);
      std::vector<Value> averaged =
          unpack(compressed ? cast(bucket.reduced, bucket.dtype) : bucket.reduced, sent);
      for (size_t k = 0; k < whole.size(); ++k)
        result.gradients[members[whole[k]]].gradient = averaged[k];
    }
    if (!low_rank.empty())
      add_power_sgd(result, bucket, members, values, low_rank, *options.power_sgd, power_updates);
    result.buckets.push_back(std::move(bucket));
  }
  if (!power_updates.empty()) result.power_sgd_state = group(graph, power_updates);
  return result;
}

Value DataParallel::apply(optim::Optimizer& optimizer) const {
  KILN_CHECK(!reset.defined() || optimizer.micro_batches() == 1, GraphError,
             "[data_parallel] the optimizer accumulates ", optimizer.micro_batches(),
             " micro-batches itself (with_gradient_accumulation) and data_parallel accumulates "
             "too (accumulation_steps): accumulate in one place, data_parallel's, which "
             "all-reduces only in the run that steps");
  Value update =
      owners.empty() ? optimizer.apply_gradients(gradients) : apply_sharded(*this, optimizer);
  std::vector<Value> targets = {update};
  if (reset.defined()) targets.push_back(reset);
  if (power_sgd_state.defined()) targets.push_back(power_sgd_state);
  return targets.size() == 1 ? update : group(*update.graph(), targets);
}

Value broadcast_variables(Graph& graph, int64_t root) {
  KILN_CHECK(root >= 0, GraphError, "[broadcast_variables] root ", root, " is negative");
  std::map<DType, std::vector<Value>> by_dtype;
  for (const Value& var : graph.variables())
    if (!var.node().attr<bool>("rank_local")) by_dtype[var.dtype()].push_back(var);
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
