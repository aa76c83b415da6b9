// Variables: trainable state that lives in a Session, and how it is initialized.
#pragma once

#include <cstdint>
#include <map>
#include <mutex>
#include <string>
#include <vector>

#include "kiln/framework/tensor.h"

namespace kiln {

/// How a variable gets its first value. Stored on the variable node, so a saved graph
/// initializes its variables the same way. Every random initializer is seeded and counter
/// based: the same seed gives the same tensor on every machine and thread count.
struct Initializer {
  /// "zeros", "constant", "uniform", "normal", "normal_zero_row", "truncated_normal",
  /// "glorot_uniform", "glorot_normal", "he_uniform", "he_normal", "tensor".
  std::string kind = "zeros";
  /// Parameters of `kind` (value; low, high; mean, stddev; mean, stddev, row).
  std::vector<double> args{};
  int64_t seed = 0;
  /// The starting value itself (kind "tensor"): saved in the graph with the variable.
  Tensor value{};
};

namespace init {
Initializer zeros();
Initializer constant(double value);
/// Uniform in [low, high).
Initializer uniform(double low, double high, int64_t seed);
Initializer normal(double mean, double stddev, int64_t seed);
/// normal(), except that row `row` (of the first dim) is zeros: an embedding table whose padding
/// id reads zeros, as PyTorch's Embedding with padding_idx starts. The other rows are normal()'s.
Initializer normal_with_zero_row(double mean, double stddev, int64_t row, int64_t seed);
/// Normal, redrawn where it falls more than two standard deviations from the mean.
Initializer truncated_normal(double mean, double stddev, int64_t seed);
/// Glorot/Xavier: uniform in +-sqrt(6 / (fan_in + fan_out)).
Initializer glorot_uniform(int64_t seed);
/// Glorot/Xavier: normal with stddev sqrt(2 / (fan_in + fan_out)).
Initializer glorot_normal(int64_t seed);
/// He/Kaiming for ReLU: uniform in +-sqrt(6 / fan_in).
Initializer he_uniform(int64_t seed);
/// He/Kaiming for ReLU: normal with stddev sqrt(2 / fan_in).
Initializer he_normal(int64_t seed);
/// Exactly `value` (copied; its dtype and shape must be the variable's). The graph file keeps
/// it, so starting weights made elsewhere (a NumPy array, another framework) travel with it.
Initializer from_tensor(const Tensor& value);
}  // namespace init

/// The values of a session's variables, by variable node name. Thread-safe.
class VariableStore {
 public:
  bool contains(const std::string& name) const;
  /// The tensor of variable `name`; kernels that update it write into its storage.
  Tensor get(const std::string& name) const;
  void set(const std::string& name, Tensor value);
  std::vector<std::string> names() const;
  /// Counts set() calls: a change means some variable may now live in new storage (GPU
  /// executors re-record captured graphs that hold the old addresses).
  uint64_t generation() const;

 private:
  mutable std::mutex mutex_;
  uint64_t generation_ = 0;
  std::map<std::string, Tensor> values_;
};

}  // namespace kiln
