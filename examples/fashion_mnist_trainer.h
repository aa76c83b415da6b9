// The training driver the Fashion-MNIST examples share: arguments, data (sharded over the
// ranks of a launched job), the epoch loop, evaluation, checkpoints and --resume. An example
// gives only its model: a function that builds the training graph with the signatures
// "train" {images, labels} -> {loss}, "eval" {images, labels} -> {loss, correct}, "predict"
// and "sync" (see build_signatures).
#pragma once

#include <kiln/kiln.h>

#include <functional>
#include <string>

namespace kiln::examples {

/// A model's logits [batch, 10] in training and in evaluation mode (the same value for a model
/// without dropout or batch norm).
struct Logits {
  Value train, eval;
};
/// Builds the model on images [batch, 784] (values in [0, 1]).
using ModelFn = std::function<Logits(Graph& g, const Value& images)>;

/// Options of an example's training, with their defaults.
struct TrainDefaults {
  int64_t epochs = 10;
  int64_t batch = 128;
  double lr = 2e-3;
  double weight_decay = 0;  ///< AdamW's decoupled decay; 0: Adam
};

/// Runs the example `name` (files name.pb, name.ckpt in --out): parses argv, builds the graph
/// from `model`, trains, evaluates and saves. Returns the process's exit code.
int train_fashion_mnist(int argc, char** argv, const std::string& name, const ModelFn& model,
                        const TrainDefaults& defaults = {});

}  // namespace kiln::examples
