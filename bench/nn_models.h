// The benchmarks' issue-12 models (and an LSTM), shared by the CPU (kiln_bench) and GPU
// (kiln_gpu_bench) sides; bench/torch_bench.py and torch_gpu_bench.py build the same in PyTorch.
#pragma once

#include <kiln/kiln.h>

#include <functional>
#include <tuple>
#include <utility>
#include <vector>

namespace kiln::bench {

/// The CNN step's loss: x [batch, 1, 28, 28], two blocks of conv 3x3 (32 and 64 channels) +
/// batch norm + ReLU + max-pool 2, then FC 3136 -> 128 -> ReLU -> 10; mean cross entropy.
inline Value cnn_loss(Graph& g, const Value& x, const Value& y) {
  nn::Sequential net(g, "cnn");
  for (auto [name, in, out] : {std::tuple{"block1", 1, 32}, std::tuple{"block2", 32, 64}}) {
    net.add<nn::Conv2d>(str(name, "_conv"), in, out, std::array<int64_t, 2>{3, 3},
                        Conv2dOptions{.padding = {1, 1}});
    net.add<nn::BatchNorm2d>(str(name, "_norm"), out);
    net.add(str(name, "_act"), [](const Value& v) { return max_pool2d(relu(v)); });
  }
  net.add("flatten", [](const Value& v) { return reshape(v, {-1, 64 * 7 * 7}); });
  net.add<nn::Linear>("fc1", 64 * 7 * 7, 128);
  net.add("fc1_relu", [](const Value& v) { return relu(v); });
  net.add<nn::Linear>("fc2", 128, 10);
  return mean(softmax_cross_entropy(net(x), y));
}

/// The transformer step's loss: a pre-norm block (d 256, 4 heads, FFN 1024, causal, no
/// dropout) on x [batch, 128, 256]; mean(square(block(x))).
inline Value transformer_loss(Graph& g, const Value& x) {
  nn::TransformerBlock block(g, "block", 256, 4, {.ffn_dim = 1024, .dropout = 0});
  return mean(square(block(x)));
}

/// The LLaMA-style step's loss: transformer_loss's block as LLaMA builds it (RMS norms, a SwiGLU
/// FFN of 704, no biases, rotary embedding, 2 key-value heads for the 4 query heads) on x
/// [batch, 128, 256]; mean(square(block(x))).
inline Value llama_loss(Graph& g, const Value& x) {
  nn::TransformerBlock block(g, "block", 256, 4,
                             {.ffn_dim = 704,
                              .dropout = 0,
                              .activation = nn::TransformerBlock::Activation::swiglu,
                              .norm = nn::TransformerBlock::Norm::rms,
                              .bias = false,
                              .kv_heads = 2,
                              .rotary = RotaryOptions{}});
  return mean(square(block(x)));
}

/// The LSTM step's loss: one LSTM layer (input 128, hidden 256, batch first; PyTorch's nn.LSTM)
/// over x [batch, 32, 128]; mean(square(output)).
inline Value lstm_loss(Graph& g, const Value& x) {
  nn::LSTM lstm(g, "lstm", 128, 256, {.batch_first = true});
  return mean(square(lstm(x)));
}

/// The GRU step's loss: lstm_loss with PyTorch's nn.GRU in place of the LSTM.
inline Value gru_loss(Graph& g, const Value& x) {
  nn::GRU gru(g, "gru", 128, 256, {.batch_first = true});
  return mean(square(gru(x)));
}

/// The decode step's model: one token [1, 1, 256] through 4 pre-norm blocks (d 256, 4 heads,
/// FFN 1024, evaluation mode) with KV caches, at `position`. `cache_of(l, block)` gives block
/// l's cache (placeholders to feed, or variables); `next` receives each block's cache and the
/// one the step gives back. Returns the output.
inline Value decode_output(Graph& g, const Value& token, const Value& position,
                           const std::function<nn::KVCache(int, nn::MultiHeadAttention&)>& cache_of,
                           std::vector<std::pair<nn::KVCache, nn::KVCache>>* next) {
  Value h = token;
  for (int l = 0; l < 4; ++l) {
    nn::TransformerBlock block(g, str("block", l), 256, 4, {.ffn_dim = 1024, .dropout = 0});
    block.eval();
    const nn::KVCache cache = cache_of(l, block.attention);
    auto step = block.attend_cached(h, cache, position);
    h = step.output;
    next->emplace_back(cache, step.cache);
  }
  return h;
}

/// decode_output over caches held in the session (MultiHeadAttention::cache_variables, batch
/// 1, `length` entries) that the step writes in place, so nothing but the token, the position
/// and the output crosses the session's edge.
inline Value decode_output_in_variables(Graph& g, const Value& token, const Value& position,
                                        int64_t length) {
  std::vector<std::pair<nn::KVCache, nn::KVCache>> caches;
  return decode_output(
      g, token, position,
      [length](int, nn::MultiHeadAttention& attention) {
        return attention.cache_variables(1, length);
      },
      &caches);
}

}  // namespace kiln::bench
