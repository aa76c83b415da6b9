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
  bool average = false;  ///< an ExponentialMovingAverage of the weights joins the training step
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
  optim::Adam adam({.lr = 1e-2});
  auto grads = adam.compute_gradients(m.loss);
  for (const auto& p : grads) m.variables.push_back(p.variable);
  if (options.data_parallel) {
    m.dp =
        distributed::data_parallel(grads, {.bucket_bytes = options.bucket_bytes,
                                           .first_bucket_bytes = options.first_bucket_bytes,
                                           .accumulation_steps = options.accumulation_steps,
                                           .shard_optimizer_state = options.shard_optimizer_state});
    m.train = m.dp.apply(adam);
    m.accumulate = m.dp.accumulate;
    m.sync = distributed::broadcast_variables(g);
  } else {
    m.train = adam.apply_gradients(grads);
  }
  if (options.average) {
    optim::ExponentialMovingAverage ema(0.9, false, "ema");
    m.train = group(g, {m.train, ema.apply(g, m.variables, &adam)});
    for (const Value& v : m.variables) m.averages.push_back(ema.average(v));
  }
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
