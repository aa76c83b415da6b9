// A small MLP and its data, shared by the data-parallel tests in one process and on several:
// each training graph is built the same way, with or without the data-parallel transform.
#pragma once

#include <kiln/kiln.h>

#include <random>

namespace kiln::testing {

/// A 3-layer MLP classifier, its training target and the pieces the tests look at.
struct DpModel {
  Graph g;
  Value x, y, loss, train, accumulate, sync;
  std::vector<Value> variables;
  std::vector<Value> averages;  ///< with `average`: each variable's moving average
  distributed::DataParallel dp;
};

struct DpModelOptions {
  bool data_parallel = true;
  int64_t bucket_bytes = 25 * 1024 * 1024;
  int64_t first_bucket_bytes = 1024 * 1024;
  int64_t accumulation_steps = 1;
  bool shard_optimizer_state = false;
  bool shard_gradients = false;  ///< ZeRO stage 2
  double clip_norm = 0;          ///< Adam's clip_norm
  bool loss_scaling = false;     ///< Adam with_loss_scaling (its defaults)
  bool average = false;  ///< an ExponentialMovingAverage of the weights joins the training step
  std::optional<DType> compression{};                       ///< data_parallel's
  std::optional<distributed::PowerSgdOptions> power_sgd{};  ///< data_parallel's
  /// Without data_parallel: each gradient rounded to this dtype and back (what compression does
  /// to the gradients at world size 1).
  std::optional<DType> round_gradients_to{};
};

/// Builds the model; with data_parallel, gradients go through distributed::data_parallel.
inline void build_dp_model(DpModel& m, const DpModelOptions& options = {}) {
  Graph& g = m.g;
  m.x = g.placeholder("x", f32, {-1, 12});
  m.y = g.placeholder("y", i64, {-1});
  Value h = m.x;
  const int64_t widths[] = {12, 32, 16, 5};
  for (int layer = 0; layer < 3; ++layer) {
    NameScope scope(g, str("dense", layer + 1));
    Value w = g.variable("w", {widths[layer], widths[layer + 1]}, init::he_normal(layer + 1));
    Value b = g.variable("b", {widths[layer + 1]}, init::uniform(-0.1, 0.1, layer + 11));
    h = matmul(h, w) + b;
    if (layer < 2) h = relu(h);
  }
  m.loss = mean(softmax_cross_entropy(h, m.y));
  optim::Adam adam({.lr = 1e-2, .clip_norm = options.clip_norm});
  if (options.loss_scaling) adam.with_loss_scaling();
  auto grads = adam.compute_gradients(m.loss);
  for (const auto& p : grads) m.variables.push_back(p.variable);
  if (options.data_parallel) {
    m.dp =
        distributed::data_parallel(grads, {.bucket_bytes = options.bucket_bytes,
                                           .first_bucket_bytes = options.first_bucket_bytes,
                                           .accumulation_steps = options.accumulation_steps,
                                           .shard_optimizer_state = options.shard_optimizer_state,
                                           .shard_gradients = options.shard_gradients,
                                           .compression = options.compression,
                                           .power_sgd = options.power_sgd});
    m.train = m.dp.apply(adam);
    m.accumulate = m.dp.accumulate;
    m.sync = distributed::broadcast_variables(g);
  } else {
    if (options.round_gradients_to)
      for (auto& p : grads)
        p.gradient = cast(cast(p.gradient, *options.round_gradients_to), p.gradient.dtype());
    m.train = adam.apply_gradients(grads);
  }
  if (options.average) {
    optim::ExponentialMovingAverage ema(0.9, false, "ema");
    m.train = group(g, {m.train, ema.apply(g, m.variables, &adam)});
    for (const Value& v : m.variables) m.averages.push_back(ema.average(v));
  }
}

/// A classifier whose first layer is batch norm (x [N, 6, 5] -> BatchNorm1d or SyncBatchNorm ->
/// relu -> Linear(30, 4)): SyncBatchNorm's data-parallel training against BatchNorm on the
/// whole batch in one process.
struct BnModel {
  Graph g;
  Value x, y, loss, out, train, sync;
  std::unique_ptr<nn::BatchNorm> bn;
  std::vector<Value> variables;  ///< trainable, then the running statistics
};

inline void build_bn_model(BnModel& m, bool sync_batch_norm, bool data_parallel) {
  Graph& g = m.g;
  m.x = g.placeholder("x", f32, {-1, 6, 5});
  m.y = g.placeholder("y", i64, {-1});
  if (sync_batch_norm)
    m.bn = std::make_unique<distributed::SyncBatchNorm>(g, "bn", 6);
  else
    m.bn = std::make_unique<nn::BatchNorm1d>(g, "bn", 6);
  m.out = (*m.bn)(m.x);
  nn::Linear head(g, "head", 30, 4);
  m.loss = mean(softmax_cross_entropy(head(reshape(relu(m.out), Shape{-1, 30})), m.y));
  optim::Adam adam({.lr = 1e-2});
  auto grads = adam.compute_gradients(m.loss);
  for (const auto& p : grads) m.variables.push_back(p.variable);
  m.variables.push_back(m.bn->running_mean);
  m.variables.push_back(m.bn->running_var);
  if (data_parallel) {
    m.train = distributed::data_parallel(grads).apply(adam);
    m.sync = distributed::broadcast_variables(g);
  } else {
    m.train = adam.apply_gradients(grads);
  }
}

/// `n` examples for the batch-norm model: x [n, 6, 5] with each channel's own offset and
/// scale (so the statistics matter), labels in [0, 4).
inline std::pair<Tensor, Tensor> bn_batch(int64_t n, uint32_t seed) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> z(0, 1);
  std::vector<float> xs(static_cast<size_t>(n * 30));
  for (size_t i = 0; i < xs.size(); ++i) {
    const int64_t channel = static_cast<int64_t>(i / 5) % 6;
    xs[i] = 0.5f * channel - 1 + (1 + 0.3f * channel) * z(rng);
  }
  std::vector<int64_t> ys(static_cast<size_t>(n));
  for (int64_t& v : ys) v = static_cast<int64_t>(rng() % 4);
  return {Tensor::from_vector<float>(xs, {n, 6, 5}), Tensor::from_vector<int64_t>(ys, {n})};
}

// A regression x [N, 6] -> W [6, 4] + b -> y [N, 4] (mean squared error), trained by SGD; with
// `power_sgd` its gradients go through data_parallel with PowerSGD. (Not a softmax classifier:
// its W gradient's columns sum to zero, rank 3 at most, and a projection of rank 4 would add a
// direction made of rounding.)
struct PowerSgdModel {
  Graph g;
  Value x, y, w, b, train;
  std::vector<optim::GradientAndVariable> grads;
  distributed::DataParallel dp;
  /// With `power_sgd`, or `data_parallel` alone: through data_parallel; else plain SGD.
  explicit PowerSgdModel(std::optional<distributed::PowerSgdOptions> power_sgd,
                         bool data_parallel = false, double lr = 0.1) {
    x = g.placeholder("x", f32, {-1, 6});
    y = g.placeholder("y", f32, {-1, 4});
    w = g.variable("w", {6, 4}, init::normal(0, 0.5, 1));
    b = g.variable("b", {4}, init::zeros());
    Value loss = mean(square(matmul(x, w) + b - y));
    optim::SGD sgd({.lr = lr});
    grads = sgd.compute_gradients(loss);
    if (power_sgd || data_parallel) {
      dp = distributed::data_parallel(grads, {.power_sgd = power_sgd});
      train = dp.apply(sgd);
    } else {
      train = sgd.apply_gradients(grads);
    }
  }
  Value variable_named(const std::string& suffix) {
    for (const Value& v : g.variables())
      if (v.node().name().ends_with(suffix)) return v;
    throw Error("no variable " + suffix);
  }
};

/// `n` examples for PowerSgdModel (the same on every rank for a seed).
inline std::pair<Tensor, Tensor> power_sgd_batch(uint32_t seed, int64_t n = 8) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> z(0, 1);
  std::vector<float> xs(static_cast<size_t>(n * 6)), ys(static_cast<size_t>(n * 4));
  for (float& v : xs) v = z(rng);
  for (float& v : ys) v = z(rng);
  return {Tensor::from_vector<float>(xs, {n, 6}), Tensor::from_vector<float>(ys, {n, 4})};
}

/// A global batch of `n` examples (the same on every rank for a seed).
inline std::pair<Tensor, Tensor> dp_batch(int64_t n, uint32_t seed) {
  std::mt19937 rng(seed);
  std::uniform_real_distribution<float> u(-1, 1);
  std::vector<float> xs(static_cast<size_t>(n * 12));
  std::vector<int64_t> ys(static_cast<size_t>(n));
  for (float& v : xs) v = u(rng);
  for (int64_t i = 0; i < n; ++i) ys[i] = static_cast<int64_t>(rng() % 5);
  return {Tensor::from_vector<float>(xs, {n, 12}), Tensor::from_vector<int64_t>(ys, {n})};
}

/// Rows [begin, end) of a batch.
inline std::pair<Tensor, Tensor> dp_rows(const std::pair<Tensor, Tensor>& batch, int64_t begin,
                                         int64_t end) {
  std::vector<int64_t> rows;
  for (int64_t i = begin; i < end; ++i) rows.push_back(i);
  return data::Dataset(batch.first, batch.second).gather(rows);
}

}  // namespace kiln::testing
