// Trains an MLP on Fashion-MNIST, saves the training graph and checkpoints, and reports the
// test accuracy. With --resume it continues from the saved graph file and checkpoint alone.
//
//   fashion_mnist_mlp [--data DIR] [--out DIR] [--epochs N] [--batch N] [--threads N]
//                     [--resume] [--stop-after EPOCHS] [--trace FILE.json]
//                     [--device best|cpu|cuda|cuda:N] [--cuda-graphs] [--amp bf16|f16]
// --amp trains with matrix products in bf16 or f16 and f32 master weights (autocast; f16 with
// dynamic loss scaling); evaluation stays in f32. 16-bit compute needs a GPU.
//
// Data-parallel on several processes, with the same global batch (each rank trains on
// batch / world_size examples of its own shard, and the gradients are averaged):
//   kiln-launch --nproc-per-node 2 fashion_mnist_mlp --epochs 10
// (or under torchrun --no-python / srun). Rank 0 prints, saves the graph and checkpoints.
#include "fashion_mnist_trainer.h"

using namespace kiln;

int main(int argc, char** argv) {
  // 784 -> 256 -> 128 -> 10 with ReLU, He-initialized.
  auto model = [](Graph& g, const Value& x) {
    auto dense = [&](const std::string& name, Value in, int64_t units, int64_t seed) {
      NameScope scope(g, name);
      Value w = g.variable("w", {in.shape()[1], units}, init::he_normal(seed));  // "<name>/w"
      Value b = g.variable("b", {units}, init::zeros());
      return matmul(in, w) + b;
    };
    Value h1 = relu(dense("dense1", x, 256, 1));
    Value h2 = relu(dense("dense2", h1, 128, 2));
    Value logits = dense("logits", h2, 10, 3);
    return examples::Logits{logits, logits};
  };
  return examples::train_fashion_mnist(argc, argv, "fashion_mnist_mlp", model);
}
