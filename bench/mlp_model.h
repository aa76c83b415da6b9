// The benchmarks' MLP 784-512-512-10 (ReLU, He-normal weights, zero biases): its mean
// softmax cross-entropy loss on x [batch, 784] and labels y [batch].
#pragma once

#include <kiln/kiln.h>

namespace kiln::bench {

inline Value mlp_loss(Graph& g, const Value& x, const Value& y) {
  auto dense = [&](const std::string& name, Value in, int64_t units, int64_t seed) {
    Value w = g.variable(name + "/w", {in.shape()[1], units}, init::he_normal(seed));
    Value b = g.variable(name + "/b", {units}, init::zeros());
    return matmul(in, w) + b;
  };
  Value h = relu(dense("l1", x, 512, 1));
  h = relu(dense("l2", h, 512, 2));
  return mean(softmax_cross_entropy(dense("l3", h, 10, 3), y));
}

}  // namespace kiln::bench
