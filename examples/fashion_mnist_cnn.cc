// Trains a convolutional network on Fashion-MNIST (two conv + batch norm + max-pool blocks and
// a classifier with dropout, built from kiln::nn layers), saves the training graph and
// checkpoints, and reports the test accuracy. The saved graph holds both modes: "train" runs
// batch norm on batch statistics (updating the running ones) and dropout; "eval" and "predict"
// use the running statistics and no dropout.
//
//   fashion_mnist_cnn [--data DIR] [--out DIR] [--epochs N] [--batch N] [--threads N]
//                     [--resume] [--stop-after EPOCHS] [--trace FILE.json]
//                     [--device best|cpu|cuda|cuda:N] [--cuda-graphs] [--amp bf16|f16]
// Data-parallel under kiln-launch / torchrun / srun as fashion_mnist_mlp.
#include "fashion_mnist_trainer.h"

using namespace kiln;

int main(int argc, char** argv) {
  auto model = [](Graph& g, const Value& images) {
    // Made once, called in each mode; the graph keeps what the layers built after they go.
    nn::Sequential net(g, "cnn");
    auto block = [&](const std::string& name, int64_t in, int64_t out) {
      net.add<nn::Conv2d>(name + "_conv", in, out, std::array<int64_t, 2>{3, 3},
                          Conv2dOptions{.padding = {1, 1}});
      net.add<nn::BatchNorm2d>(name + "_norm", out);
      net.add(name + "_relu", [](const Value& x) { return relu(x); });
      net.add(name + "_pool", [](const Value& x) { return max_pool2d(x); });
    };
    block("block1", 1, 32);   // [N, 32, 14, 14]
    block("block2", 32, 64);  // [N, 64, 7, 7]
    net.add("flatten", [](const Value& x) { return reshape(x, {-1, 64 * 7 * 7}); });
    net.add<nn::Dropout>("dropout1", 0.25);
    net.add<nn::Linear>("fc1", 64 * 7 * 7, 128);
    net.add("fc1_relu", [](const Value& x) { return relu(x); });
    net.add<nn::Dropout>("dropout2", 0.25);
    net.add<nn::Linear>("fc2", 128, 10);

    Value x = reshape(images, {-1, 1, 28, 28});
    Value train_logits = net(x);
    net.eval();
    Value eval_logits = net(x);
    return examples::Logits{train_logits, eval_logits};
  };
  return examples::train_fashion_mnist(argc, argv, "fashion_mnist_cnn", model,
                                       {.epochs = 10, .batch = 64, .lr = 2e-3});
}
