// Model-level PyTorch parity of the layer library (kiln::nn): fifteen models built as a user
// would, trained three steps, every parameter, statistic, loss and evaluation output written as
// .npy for tests/parity/torch_layer_parity.py, which rebuilds both in PyTorch (f64) from the same
// initial values and compares; and five layers' PyTorch state_dicts (ported, below).
//   cnn: Conv2d (stride, padding) -> BatchNorm2d -> ReLU -> max pool -> Conv2d (no bias,
//        dilation, groups) -> GELU -> global average pool -> Linear; cross entropy with label
//        smoothing; SGD with momentum and weight decay; then the evaluation-mode logits (running
//        statistics).
//   lm:  Embedding -> MultiHeadAttention over a key-padding mask (residual) -> cross-attention to
//        a memory with its own padding (residual) -> TransformerBlock
//        (causal, tanh GELU) -> RMSNorm -> Linear without bias; cross entropy with an ignored
//        label; AdamW with a clipped gradient norm.
//   llama: Embedding -> two LLaMA-style TransformerBlocks (RMS norm, SwiGLU, no biases, rotary
//        embedding: rotate-half in the first, with a sliding window of 4; interleaved pairs of
//        half the head in the second, which also RMS-normalizes queries and keys per head as
//        Qwen3; 4 query heads over 2 key-value heads) -> RMSNorm -> Linear without bias; cross
//        entropy. The
//        script writes rotary embedding as Hugging Face's rotate_half and Meta's complex
//        products, and the grouped heads as repeat_interleave. AdamW.
//   vit: a vision transformer as a user's own Module: Conv2d 4x4 patches, a class token broadcast
//        over an unknown batch, a position table, two pre-norm TransformerBlocks (exact GELU),
//        LayerNorm and a Linear head on the class token; cross entropy with label smoothing;
//        AdamW with a clipped norm; then the logits of another batch size. The script builds it
//        from PyTorch's modules (nn.Conv2d, nn.TransformerEncoderLayer, nn.Parameter).
//   ae:  Conv2d (stride 2) -> GroupNorm -> SiLU, then ConvTranspose2d (stride 2, output padding,
//        groups) back to the input's size and a Linear head on the pooled code; Huber loss of the
//        reconstruction plus binary cross entropy with logits of the head; RMSProp with weight
//        decay.
//   encoder: an outside port of PyTorch's own modules (the script loads Kiln's initial values
//        into nn.Embedding(padding_idx=0) and nn.TransformerEncoderLayer): Embedding with a
//        padding index -> post-norm TransformerBlock (ReLU) over the key-padding mask the ids
//        give -> mean over the real tokens -> Linear; cross entropy; Adam with L2 weight decay;
//        then the trained attention's probabilities (attention_weights, need_weights).
//   text_cnn: PyTorch's modules again (nn.Sequential of Embedding... Conv1d, ReLU, Flatten,
//        Linear): Embedding -> Conv1d (padding) -> ReLU -> Conv1d (stride, dilation, groups, no
//        bias) -> ConvTranspose1d (stride, padding, dilation, groups, output padding) -> Flatten
//        -> Linear; cross entropy; SGD with Nesterov momentum and weight decay.
//   pool: PyTorch's modules (one nn.Sequential): Conv2d -> AdaptiveMaxPool2d to 5 x 4 and
//        AdaptiveAvgPool2d to 3 x 2 (uneven, overlapping windows from 7 x 5) -> Flatten -> Linear
//        -> BatchNorm1d -> ReLU -> Unflatten to [N, 2, 6] -> MaxPool1d (stride 2, padding 1) ->
//        AvgPool1d (padding not counted) -> AdaptiveAvgPool1d (4 into 3) -> AdaptiveMaxPool1d
//        (3 into 2) -> Flatten -> Linear; cross entropy; SGD with plain momentum; then the
//        evaluation-mode logits (BatchNorm1d's running statistics).
//   decoder: PyTorch's nn.TransformerDecoderLayer (post-norm, ReLU) with Kiln's values loaded:
//        Embedding -> TransformerDecoderBlock (causal self-attention, cross-attention to a memory
//        over its key-padding mask) -> Linear; cross entropy; AdamW with non-default betas.
//   recurrent: PyTorch's nn.LSTM, nn.GRU and nn.RNN with Kiln's values loaded: Embedding -> LSTM
//        (two layers, bidirectional, batch first, given h0 and c0) -> GRU (batch first, over
//        sequences of lengths 7, 4 and 2: PyTorch's packed sequences) -> RNN
//        (ReLU, no bias, time-major), and the GRU's output -> an LSTM with proj_size 3
//        (bidirectional, the same lengths); a Linear on the first LSTM's last backward c_n, the
//        GRU's and RNN's h_n and the projected LSTM's backward h_n; cross entropy; Adam (eps 1e-6).
//   recurrent_open: the same over ids [B, ?]: a sequence length unknown when the graph is
//        built, so each layer is recurrence ops (ops/nn/recurrence.cc).
//   activations: a chain of Linear layers, each followed by one of ELU (alpha 0.7), SELU, CELU
//        (alpha 0.5), PReLU (a slope per feature), Hardswish, Mish, Softsign, ReLU6,
//        Hardsigmoid, Hardtanh and LogSigmoid; cross entropy plus L1, smooth L1, KL divergence
//        and cosine similarity against a target; SGD with Nesterov momentum.
//   segment: PyTorch's modules (nn.Sequential): Conv2d with reflect padding -> InstanceNorm2d
//        (affine) -> ReLU -> ReplicationPad2d -> Conv2d with circular padding -> ConstantPad2d
//        (0.5) -> ReflectionPad2d -> Conv2d, per-pixel logits over an unknown batch; a side
//        branch Conv1d (replicate padding) -> InstanceNorm1d on the height mean; per-pixel
//        nll_loss of log_softmax and cross entropy (class weights, label smoothing, ignored
//        pixels), binary cross entropy of a sigmoid and with logits (pos_weight), MSE of the side
//        branch; Adam.
//   losses: Linear -> tanh -> Linear, [8, 5] outputs into every loss of losses.h with each
//        reduction (none weighted by hand, sum, mean, batch_mean), class weights, pos_weight,
//        ignored labels, p-norms, triplet swap, full Poisson and Gaussian likelihoods (variances
//        per element and per row, some clamped at eps); SGD with plain momentum.
//   volume: PyTorch's modules (one nn.Sequential): Conv3d (stride, padding) -> BatchNorm3d ->
//        ReLU -> MaxPool3d (padding, dilation, ceil_mode) -> Conv3d (groups, dilation, replicate
//        padding)
//        -> InstanceNorm3d (affine, running statistics) -> ConvTranspose3d (stride, output_padding)
//        -> AvgPool3d (padding not counted) -> AdaptiveMaxPool3d -> AdaptiveAvgPool3d (uneven
//        windows) -> Flatten -> Linear; cross entropy; Adam; then the evaluation-mode logits.
//   ported: Module::torch_state_dict, checked by PyTorch's own load_state_dict(strict=True):
//        random values in a Sequential (Conv2d, BatchNorm2d, ReLU, Flatten, Linear), a post-norm
//        TransformerBlock, a TransformerDecoderBlock, a MultiHeadAttention over a memory of
//        another width (kdim/vdim) and a bidirectional two-layer LSTM with proj_size; each one's
//        state_dict and evaluation-mode output, which the script's torch.nn modules must give.
//   cells: PyTorch's LSTMCell (h given, c zeros), GRUCell and ReLU RNNCell without bias in a
//        loop of four steps, each fed the one before's h and carrying its own state; Adam.
//   lbfgs: Linear -> tanh -> Linear, cross entropy and an L2 penalty, trained by optim::LBFGS with
//   the strong
//        Wolfe line search (4 iterations a step, 3 pairs kept): torch.optim.LBFGS's steps.
//   update_bn: optim::BatchNormUpdate (torch.optim.swa_utils.update_bn) on a Conv1d ->
//        BatchNorm1d (momentum 0.3) -> ReLU -> Flatten -> Linear -> BatchNorm1d (momentum None)
//        over three batches: the state_dicts before and after, which torch's update_bn on the
//        same nn.Sequential must reproduce.
//   interpolate: F.interpolate's modes (nearest, nearest-exact, (bi/tri)linear with and
//        without align_corners, bicubic) by size and by scale factor, up and down, over 1-D, 2-D
//        and 3-D inputs: each output and the gradient of sum(y r) for a random r.
//
//   layer_parity DIR [--device cpu|cuda]   (tools/gpu-check runs it on the GPU)
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <limits>
#include <map>
#include <random>

#include "kiln/kiln.h"

namespace kiln {
namespace {

Tensor normal(const Shape& shape, unsigned seed) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> dist(0, 1);
  std::vector<float> v(static_cast<size_t>(shape.numel()));
  for (float& e : v) e = dist(rng);
  return Tensor::from_vector<float>(v, shape);
}

// Writes each feed (<placeholder name>.npy) and the variables before training (init_i.npy,
// their names in variables.txt), calls `step` `steps` times writing the losses each returns
// (losses.txt), then the variables after (final_i.npy).
void record_training(Session& session, const std::vector<Value>& variables, const FeedList& feeds,
                     const std::filesystem::path& dir, int steps,
                     const std::function<std::vector<double>()>& step) {
  for (const auto& [placeholder, value] : feeds)
    save_npy(value, (dir / (placeholder.name() + ".npy")).string());
  session.initialize_variables();
  std::ofstream names(dir / "variables.txt");
  for (size_t i = 0; i < variables.size(); ++i) {
    const Tensor value = session.variable_value(variables[i]);
    names << variables[i].name() << "\n";
    save_npy(value, (dir / str("init_", i, ".npy")).string());
  }
  std::ofstream out(dir / "losses.txt");
  for (int s = 0; s < steps; ++s) {
    for (double loss : step()) {
      char text[32];
      std::snprintf(text, sizeof(text), "%.9g ", loss);
      out << text;
    }
    out << "\n";
  }
  for (size_t i = 0; i < variables.size(); ++i)
    save_npy(session.variable_value(variables[i]), (dir / str("final_", i, ".npy")).string());
}

// record_training() of `steps` runs of the train target `step`, each fetching `losses`.
void train(Session& session, const std::vector<Value>& variables, const FeedList& feeds,
           const std::vector<Value>& losses, const Value& step, const std::filesystem::path& dir,
           int steps) {
  record_training(session, variables, feeds, dir, steps, [&] {
    std::vector<double> values;
    for (const Tensor& t : session.run(feeds, losses, {step})) values.push_back(t.element(0));
    return values;
  });
}

// Trains a classifier with batch norm three steps (train()) and writes its evaluation-mode
// logits (the running statistics at work); its variables include the running `statistics`.
void train_and_evaluate(nn::Sequential& model, const std::vector<const Value*>& statistics,
                        const Value& x, const Value& y, const Tensor& xs, const Tensor& ys,
                        const Value& loss, const Value& step, const std::filesystem::path& dir,
                        Device device) {
  model.eval();
  Value logits = model(x);
  std::vector<Value> variables = model.parameters();
  for (const Value* statistic : statistics) variables.push_back(*statistic);
  Session session(*x.graph(), {.device = device});
  train(session, variables, {{x, xs}, {y, ys}}, {loss}, step, dir, 3);
  save_npy(session.run({{x, xs}}, {logits})[0], (dir / "eval_logits.npy").string());
}

void cnn(const std::filesystem::path& dir, Device device) {
  std::filesystem::create_directories(dir);
  Graph g;
  Value x = g.placeholder("x", f32, {8, 3, 12, 12});
  Value y = g.placeholder("y", i64, {8});
  nn::Sequential model(g, "cnn");
  model.add<nn::Conv2d>("c1", 3, 8, std::array<int64_t, 2>{3, 3},
                        Conv2dOptions{.stride = {2, 2}, .padding = {1, 1}});
  auto& bn = model.add<nn::BatchNorm2d>("bn", 8);
  model.add("relu", [](const Value& v) { return relu(v); });
  model.add<nn::MaxPool2d>("pool", Pool2dOptions{.kernel_size = {2, 2}});
  model.add<nn::Conv2d>("c2", 8, 8, std::array<int64_t, 2>{3, 3},
                        Conv2dOptions{.padding = {2, 2}, .dilation = {2, 2}, .groups = 2},
                        nn::LayerOptions{.bias = false});
  model.add("gelu", [](const Value& v) { return gelu(v); });
  model.add("avg", [](const Value& v) { return global_avg_pool2d(v); });
  model.add<nn::Linear>("fc", 8, 5);
  Value loss = cross_entropy(model(x), y, -100, 0.1);
  optim::SGD sgd({.lr = 0.1, .momentum = 0.9, .weight_decay = 1e-3});
  Value step = sgd.minimize(loss);
  train_and_evaluate(model, {&bn.running_mean, &bn.running_var}, x, y, normal({8, 3, 12, 12}, 1),
                     Tensor::from_vector<int64_t>({0, 1, 2, 3, 4, 0, 1, 2}, {8}), loss, step, dir,
                     device);
}

void lm(const std::filesystem::path& dir, Device device) {
  std::filesystem::create_directories(dir);
  constexpr int64_t kBatch = 3, kLength = 7, kVocab = 11, kDim = 16;
  Graph g;
  Value ids = g.placeholder("ids", i64, {kBatch, kLength});
  Value labels = g.placeholder("labels", i64, {kBatch, kLength});
  Value keep = g.placeholder("keep", boolean, {kBatch, 1, 1, kLength});
  constexpr int64_t kMemory = 4;
  Value memory = g.placeholder("memory", f32, {kBatch, kMemory, kDim});
  Value memory_keep = g.placeholder("memory_keep", boolean, {kBatch, 1, 1, kMemory});
  nn::Embedding embed(g, "embed", kVocab, kDim);
  nn::MultiHeadAttention attention(g, "pad_attention", kDim, 2, {});
  nn::MultiHeadAttention cross(g, "cross_attention", kDim, 4, {});
  nn::TransformerBlock block(g, "block", kDim, 4,
                             {.ffn_dim = 24,
                              .dropout = 0.0,
                              .causal = true,
                              .activation = nn::TransformerBlock::Activation::gelu_tanh});
  nn::RMSNorm norm(g, "norm", Shape{kDim});
  nn::Linear head(g, "head", kDim, kVocab, {.bias = false});
  Value h = embed(ids);
  h = h + attention.attend(h, keep);
  h = h + cross.attend(h, memory, memory_keep);
  Value logits = head(norm(block(h)));
  Value loss = cross_entropy(reshape(logits, {-1, kVocab}), reshape(labels, {-1}), -1);
  optim::AdamW adamw({.lr = 1e-2, .weight_decay = 0.1, .clip_norm = 0.5});
  Value step = adamw.minimize(loss);

  std::vector<Value> variables;
  for (nn::Module* m :
       std::initializer_list<nn::Module*>{&embed, &attention, &cross, &block, &norm, &head})
    for (const Value& v : m->parameters()) variables.push_back(v);
  std::vector<int64_t> id_values, label_values;
  std::vector<uint8_t> keep_values;
  for (int64_t i = 0; i < kBatch * kLength; ++i) {
    id_values.push_back((i * 7 + 3) % kVocab);
    label_values.push_back(i % 5 == 4 ? -1 : (i * 5 + 1) % kVocab);  // -1: ignored
  }
  for (int64_t b = 0; b < kBatch; ++b)
    for (int64_t t = 0; t < kLength; ++t) keep_values.push_back(t < kLength - b);  // padding
  const Tensor id_tensor = Tensor::from_vector<int64_t>(id_values, {kBatch, kLength});
  const Tensor label_tensor = Tensor::from_vector<int64_t>(label_values, {kBatch, kLength});
  Tensor keep_tensor = Tensor::empty(boolean, {kBatch, 1, 1, kLength});
  std::copy(keep_values.begin(), keep_values.end(), keep_tensor.data<bool>());
  const Tensor memory_tensor = normal({kBatch, kMemory, kDim}, 3);
  Tensor memory_keep_tensor = Tensor::empty(boolean, {kBatch, 1, 1, kMemory});
  for (int64_t i = 0; i < kBatch * kMemory; ++i)
    memory_keep_tensor.data<bool>()[i] = i % kMemory < kMemory - i / kMemory % 2;  // padding
  Session session(g, {.device = device});
  train(session, variables,
        {{ids, id_tensor},
         {labels, label_tensor},
         {keep, keep_tensor},
         {memory, memory_tensor},
         {memory_keep, memory_keep_tensor}},
        {loss}, step, dir, 3);
}

void llama(const std::filesystem::path& dir, Device device) {
  std::filesystem::create_directories(dir);
  constexpr int64_t kBatch = 2, kLength = 9, kVocab = 13, kDim = 16;
  Graph g;
  Value ids = g.placeholder("ids", i64, {kBatch, kLength});
  Value labels = g.placeholder("labels", i64, {kBatch, kLength});
  nn::Embedding embed(g, "embed", kVocab, kDim);
  nn::TransformerBlock::Options options{.ffn_dim = 20,
                                        .dropout = 0.0,
                                        .activation = nn::TransformerBlock::Activation::swiglu,
                                        .norm = nn::TransformerBlock::Norm::rms,
                                        .bias = false,
                                        .kv_heads = 2,
                                        .rotary = RotaryOptions{.base = 1000}};
  options.window = 4;  // of the length 9
  nn::TransformerBlock block1(g, "block1", kDim, 4, options);
  options.window = 0;
  options.rotary->interleaved = true;
  options.rotary->dims = 2;  // of the depth 4
  options.qk_norm = true;
  nn::TransformerBlock block2(g, "block2", kDim, 4, options);
  nn::RMSNorm norm(g, "norm", Shape{kDim});
  nn::Linear head(g, "head", kDim, kVocab, {.bias = false});
  Value logits = head(norm(block2(block1(embed(ids)))));
  Value loss = cross_entropy(reshape(logits, {-1, kVocab}), reshape(labels, {-1}));
  optim::AdamW adamw({.lr = 1e-2, .weight_decay = 0.1});
  Value step = adamw.minimize(loss);

  std::vector<Value> variables;
  for (nn::Module* m : std::initializer_list<nn::Module*>{&embed, &block1, &block2, &norm, &head})
    for (const Value& v : m->parameters()) variables.push_back(v);
  std::vector<int64_t> id_values, label_values;
  for (int64_t i = 0; i < kBatch * kLength; ++i) {
    id_values.push_back((i * 5 + 2) % kVocab);
    label_values.push_back((i * 3 + 1) % kVocab);
  }
  Session session(g, {.device = device});
  train(session, variables,
        {{ids, Tensor::from_vector<int64_t>(id_values, {kBatch, kLength})},
         {labels, Tensor::from_vector<int64_t>(label_values, {kBatch, kLength})}},
        {loss}, step, dir, 3);
}

// A vision transformer written as a user writes one: a Module of its own holding a class token
// and a position table beside the library's layers.
class VisionTransformer : public nn::Module {
 public:
  static constexpr int64_t kDim = 16, kPatches = 16, kClasses = 5;
  VisionTransformer(Graph& graph, const std::string& name) : Module(graph, name) {
    patches_ = &make<nn::Conv2d>("patches", 3, kDim, std::array<int64_t, 2>{4, 4},
                                 Conv2dOptions{.stride = {4, 4}});
    cls_ = variable("cls", {1, 1, kDim}, init::truncated_normal(0, 0.02, seed_for("cls")));
    positions_ = variable("positions", {1, kPatches + 1, kDim},
                          init::truncated_normal(0, 0.02, seed_for("positions")));
    for (int i = 0; i < 2; ++i)
      blocks_.push_back(&make<nn::TransformerBlock>(
          str("block", i), kDim, 4,
          nn::TransformerBlock::Options{.ffn_dim = 32, .dropout = 0.0, .causal = false}));
    norm_ = &make<nn::LayerNorm>("norm", Shape{kDim});
    head_ = &make<nn::Linear>("head", kDim, kClasses);
  }

 protected:
  Value forward(const Value& images) override {
    // [B, 3, 16, 16] -> 4x4 patches [B, D, 4, 4] -> tokens [B, 16, D], the batch unknown.
    Value tokens = transpose(flatten((*patches_)(images), 2), {0, 2, 1});
    Value first = slice(tokens, {0, 0}, {std::numeric_limits<int64_t>::max(), 1});
    Value h = concat({broadcast_like(cls_, first), tokens}, 1) + positions_;
    for (nn::TransformerBlock* block : blocks_) h = (*block)(h);
    return (*head_)(
        (*norm_)(squeeze(slice(h, {0, 0}, {std::numeric_limits<int64_t>::max(), 1}), {1})));
  }

 private:
  nn::Conv2d* patches_;
  Value cls_, positions_;
  std::vector<nn::TransformerBlock*> blocks_;
  nn::LayerNorm* norm_;
  nn::Linear* head_;
};

// The ViT trains three AdamW steps on a batch of 6, then gives its logits for a batch of 3 (the
// batch is a placeholder dim).
void vit(const std::filesystem::path& dir, Device device) {
  std::filesystem::create_directories(dir);
  Graph g;
  Value images = g.placeholder("images", f32, {-1, 3, 16, 16});
  Value labels = g.placeholder("labels", i64, {-1});
  VisionTransformer model(g, "vit");
  Value logits = model(images);
  Value loss = cross_entropy(logits, labels, -100, 0.1);
  optim::AdamW adamw({.lr = 3e-3, .weight_decay = 0.05, .clip_norm = 1.0});
  Value step = adamw.minimize(loss);
  Session session(g, {.device = device});
  train(session, model.parameters(),
        {{images, normal({6, 3, 16, 16}, 21)},
         {labels, Tensor::from_vector<int64_t>({0, 4, 2, 1, 3, 2}, {6})}},
        {loss}, step, dir, 3);
  const Tensor other = normal({3, 3, 16, 16}, 22);
  save_npy(other, (dir / "other_images.npy").string());
  save_npy(session.run({{images, other}}, {logits})[0], (dir / "other_logits.npy").string());
}

void autoencoder(const std::filesystem::path& dir, Device device) {
  std::filesystem::create_directories(dir);
  Graph g;
  Value x = g.placeholder("x", f32, {6, 4, 8, 8});
  Value flags = g.placeholder("flags", f32, {6, 3});
  nn::Conv2d encode(g, "encode", 4, 8, {3, 3}, {.stride = {2, 2}, .padding = {1, 1}});
  nn::GroupNorm norm(g, "norm", 4, 8);
  nn::ConvTranspose2d decode(g, "decode", 8, 4, {3, 3},
                             {.stride = {2, 2}, .padding = {1, 1}, .groups = 2}, {1, 1});
  nn::Linear head(g, "head", 8, 3);
  Value code = silu(norm(encode(x)));
  Value loss = huber_loss(decode(code), x, 0.5) +
               mean(binary_cross_entropy_with_logits(head(global_avg_pool2d(code)), flags));
  optim::RMSProp rmsprop({.lr = 1e-2, .alpha = 0.9, .weight_decay = 1e-3});
  Value step = rmsprop.minimize(loss);

  std::vector<Value> variables;
  for (nn::Module* m : std::initializer_list<nn::Module*>{&encode, &norm, &decode, &head})
    for (const Value& v : m->parameters()) variables.push_back(v);
  const Tensor xs = normal({6, 4, 8, 8}, 2);
  std::vector<float> flag_values;
  for (int i = 0; i < 18; ++i) flag_values.push_back(static_cast<float>((i * 7) % 3 == 0));
  const Tensor fs = Tensor::from_vector<float>(flag_values, {6, 3});
  Session session(g, {.device = device});
  train(session, variables, {{x, xs}, {flags, fs}}, {loss}, step, dir, 3);
}

void encoder(const std::filesystem::path& dir, Device device) {
  std::filesystem::create_directories(dir);
  constexpr int64_t kBatch = 4, kLength = 6, kVocab = 13, kDim = 16, kClasses = 3;
  Graph g;
  Value ids = g.placeholder("ids", i64, {kBatch, kLength});
  Value labels = g.placeholder("labels", i64, {kBatch});
  nn::Embedding embed(g, "embed", kVocab, kDim, {}, 0);
  nn::TransformerBlock block(g, "block", kDim, 4,
                             {.ffn_dim = 32,
                              .dropout = 0.0,
                              .causal = false,
                              .activation = nn::TransformerBlock::Activation::relu,
                              .norm_first = false});
  nn::Linear head(g, "head", kDim, kClasses);
  Value real = ids != 0.0;  // id 0 pads
  Value key_padding = expand_dims(expand_dims(real, 1), 1);
  Value h = block.attend(embed(ids), key_padding);
  Value weights = expand_dims(cast(real, f32), -1);
  Value pooled = sum(h * weights, {1}) / sum(weights, {1});
  Value loss = cross_entropy(head(pooled), labels);
  optim::Adam adam({.lr = 1e-2, .weight_decay = 1e-2});
  Value step = adam.minimize(loss);

  std::vector<Value> variables;
  for (nn::Module* m : std::initializer_list<nn::Module*>{&embed, &block, &head})
    for (const Value& v : m->parameters()) variables.push_back(v);
  std::vector<int64_t> id_values;
  for (int64_t b = 0; b < kBatch; ++b)
    for (int64_t t = 0; t < kLength; ++t)
      id_values.push_back(t < kLength - b ? 1 + (b * 5 + t * 3) % (kVocab - 1) : 0);
  const Tensor id_tensor = Tensor::from_vector<int64_t>(id_values, {kBatch, kLength});
  const Tensor label_tensor = Tensor::from_vector<int64_t>({0, 2, 1, 2}, {kBatch});
  // The trained block's attention probabilities (need_weights in PyTorch).
  Value embedded = embed(ids);
  Value probabilities = block.attention.attention_weights(embedded, embedded, key_padding);
  Session session(g, {.device = device});
  train(session, variables, {{ids, id_tensor}, {labels, label_tensor}}, {loss}, step, dir, 3);
  save_npy(session.run({{ids, id_tensor}}, {probabilities})[0],
           (dir / "attention_weights.npy").string());
}

void text_cnn(const std::filesystem::path& dir, Device device) {
  std::filesystem::create_directories(dir);
  constexpr int64_t kBatch = 4, kLength = 10, kVocab = 9, kDim = 6;
  Graph g;
  Value ids = g.placeholder("ids", i64, {kBatch, kLength});
  Value labels = g.placeholder("labels", i64, {kBatch});
  nn::Embedding embed(g, "embed", kVocab, kDim);
  nn::Sequential convs(g, "convs");
  convs.add<nn::Conv1d>("c1", kDim, 12, 3, nn::Conv1dOptions{.padding = 1});
  convs.add("relu", [](const Value& v) { return relu(v); });
  convs.add<nn::Conv1d>("c2", 12, 12, 3, nn::Conv1dOptions{.stride = 2, .dilation = 2, .groups = 3},
                        nn::LayerOptions{.bias = false});
  // [B, 12, 3] -> [B, 4, 8]: (3 - 1) 2 - 2 + 2 (3 - 1) + 1 + 1.
  convs.add<nn::ConvTranspose1d>(
      "up", 12, 4, 3, nn::Conv1dOptions{.stride = 2, .padding = 1, .dilation = 2, .groups = 2}, 1);
  convs.add<nn::Flatten>("flatten");  // [B, 32]
  convs.add<nn::Linear>("head", 32, 3);
  // Embedding rows [B, T, C] -> channels first for the convolutions.
  Value logits = convs(transpose(embed(ids), {0, 2, 1}));
  Value loss = cross_entropy(logits, labels);
  optim::SGD sgd({.lr = 0.05, .momentum = 0.9, .nesterov = true, .weight_decay = 1e-3});
  Value step = sgd.minimize(loss);

  std::vector<Value> variables = embed.parameters();
  for (const Value& v : convs.parameters()) variables.push_back(v);
  std::vector<int64_t> id_values;
  for (int64_t i = 0; i < kBatch * kLength; ++i) id_values.push_back((i * 4 + i / 7) % kVocab);
  const Tensor id_tensor = Tensor::from_vector<int64_t>(id_values, {kBatch, kLength});
  const Tensor label_tensor = Tensor::from_vector<int64_t>({2, 0, 1, 1}, {kBatch});
  Session session(g, {.device = device});
  train(session, variables, {{ids, id_tensor}, {labels, label_tensor}}, {loss}, step, dir, 3);
}

void pool(const std::filesystem::path& dir, Device device) {
  std::filesystem::create_directories(dir);
  Graph g;
  Value x = g.placeholder("x", f32, {6, 2, 7, 5});
  Value y = g.placeholder("y", i64, {6});
  nn::Sequential model(g, "pool");
  model.add<nn::Conv2d>("conv", 2, 4, std::array<int64_t, 2>{3, 3},
                        Conv2dOptions{.padding = {1, 1}});
  // Uneven overlapping windows: 7 x 5 into 5 x 4.
  model.add<nn::AdaptiveMaxPool2d>("adaptive_max", std::array<int64_t, 2>{5, 4});
  model.add<nn::AdaptiveAvgPool2d>("adaptive", std::array<int64_t, 2>{3, 2});
  model.add<nn::Flatten>("flatten");  // [N, 4 * 3 * 2]
  model.add<nn::Linear>("fc", 24, 12);
  auto& bn = model.add<nn::BatchNorm1d>("bn", 12);
  model.add("relu", [](const Value& v) { return relu(v); });
  model.add("unflatten", [](const Value& v) { return reshape(v, {-1, 2, 6}); });
  model.add<nn::MaxPool1d>("max", nn::Pool1dOptions{.kernel_size = 3, .stride = 2, .padding = 1});
  model.add<nn::AvgPool1d>("avg", nn::Pool1dOptions{.kernel_size = 2, .stride = 1, .padding = 1},
                           false);
  model.add<nn::AdaptiveAvgPool1d>("adaptive1d", 3);      // [N, 2, 4] -> [N, 2, 3]
  model.add<nn::AdaptiveMaxPool1d>("adaptive_max1d", 2);  // [N, 2, 3] -> [N, 2, 2]
  model.add<nn::Flatten>("flatten_again");                // [N, 2 * 2]
  model.add<nn::Linear>("head", 4, 3);
  Value loss = cross_entropy(model(x), y);
  optim::SGD sgd({.lr = 0.1, .momentum = 0.9});
  Value step = sgd.minimize(loss);
  train_and_evaluate(model, {&bn.running_mean, &bn.running_var}, x, y, normal({6, 2, 7, 5}, 3),
                     Tensor::from_vector<int64_t>({0, 1, 2, 2, 1, 0}, {6}), loss, step, dir,
                     device);
}

void decoder(const std::filesystem::path& dir, Device device) {
  std::filesystem::create_directories(dir);
  constexpr int64_t kBatch = 3, kLength = 6, kMemory = 5, kVocab = 10, kDim = 16;
  Graph g;
  Value ids = g.placeholder("ids", i64, {kBatch, kLength});
  Value labels = g.placeholder("labels", i64, {kBatch, kLength});
  Value memory = g.placeholder("memory", f32, {kBatch, kMemory, kDim});
  Value memory_keep = g.placeholder("memory_keep", boolean, {kBatch, 1, 1, kMemory});
  nn::Embedding embed(g, "embed", kVocab, kDim);
  nn::TransformerDecoderBlock block(g, "decoder", kDim, 4,
                                    {.ffn_dim = 32,
                                     .dropout = 0,
                                     .causal = true,
                                     .activation = nn::TransformerBlock::Activation::relu,
                                     .norm_first = false});
  nn::Linear head(g, "head", kDim, kVocab);
  Value logits = head(block.decode(embed(ids), memory, {}, memory_keep));
  Value loss = cross_entropy(reshape(logits, {-1, kVocab}), reshape(labels, {-1}));
  optim::AdamW adamw({.lr = 5e-3, .beta1 = 0.8, .beta2 = 0.99, .weight_decay = 0.05});
  Value step = adamw.minimize(loss);

  std::vector<Value> variables = embed.parameters();
  for (const nn::Module* m : std::initializer_list<const nn::Module*>{&block, &head})
    for (const Value& v : m->parameters()) variables.push_back(v);
  std::vector<int64_t> id_values, label_values;
  for (int64_t i = 0; i < kBatch * kLength; ++i) {
    id_values.push_back((i * 3 + i / 5) % kVocab);
    label_values.push_back((i * 7 + 2) % kVocab);
  }
  Tensor keep_values = Tensor::empty(boolean, {kBatch, 1, 1, kMemory});
  for (int64_t b = 0; b < kBatch; ++b)  // batch b keeps the first kMemory - b keys
    for (int64_t j = 0; j < kMemory; ++j)
      keep_values.data<bool>()[b * kMemory + j] = j < kMemory - b;
  Session session(g, {.device = device});
  train(session, variables,
        {{ids, Tensor::from_vector<int64_t>(id_values, {kBatch, kLength})},
         {labels, Tensor::from_vector<int64_t>(label_values, {kBatch, kLength})},
         {memory, normal({kBatch, kMemory, kDim}, 4)},
         {memory_keep, keep_values}},
        {loss}, step, dir, 3);
}

// Module::torch_state_dict of five layers with random values, each written as
// <dir>/<layer>/<key>.npy (keys.txt lists them) beside its evaluation-mode output (output.npy):
// the script loads each into the torch.nn module it stands for with strict=True.
void ported(const std::filesystem::path& dir, Device device) {
  constexpr int64_t kBatch = 2, kLength = 5, kMemory = 7, kDim = 16;
  Graph g;
  Value images = g.placeholder("images", f32, {kBatch, 3, 6, 6});
  Value tokens = g.placeholder("tokens", f32, {kBatch, kLength, kDim});
  Value memory = g.placeholder("memory", f32, {kBatch, kMemory, kDim});
  Value narrow_memory = g.placeholder("narrow_memory", f32, {kBatch, kMemory, 12});
  nn::Sequential cnn(g, "cnn");
  cnn.add<nn::Conv2d>("0", 3, 4, std::array<int64_t, 2>{3, 3}, Conv2dOptions{.padding = {1, 1}});
  cnn.add<nn::BatchNorm2d>("1", 4);
  cnn.add("2", [](const Value& x) { return relu(x); });
  cnn.add<nn::Flatten>("3");
  cnn.add<nn::Linear>("4", 4 * 6 * 6, 5);
  const nn::TransformerBlock::Options post_norm{
      .ffn_dim = 32,
      .dropout = 0,
      .causal = false,
      .activation = nn::TransformerBlock::Activation::relu,
      .norm_first = false};
  nn::TransformerBlock encoder(g, "encoder", kDim, 4, post_norm);
  nn::TransformerDecoderBlock decoder(g, "decoder", kDim, 4, post_norm);
  nn::MultiHeadAttention cross(g, "cross", kDim, 4, {.memory_dim = 12});
  nn::LSTM lstm(g, "lstm", kDim, 8,
                {.num_layers = 2, .batch_first = true, .bidirectional = true, .proj_size = 3});
  // Evaluation mode before the layers are called (a layer reads its mode then).
  for (nn::Module* layer :
       std::initializer_list<nn::Module*>{&cnn, &encoder, &decoder, &cross, &lstm})
    layer->eval();
  const std::vector<std::pair<nn::Module*, Value>> layers = {
      {&cnn, cnn(images)},
      {&encoder, encoder(tokens)},
      {&decoder, decoder.decode(tokens, memory)},
      {&cross, cross.attend(tokens, narrow_memory, {})},
      {&lstm, lstm(tokens)}};
  Session session(g, {.device = device});
  session.initialize_variables();
  unsigned seed = 100;
  for (const auto& [name, value] : session.variable_values()) {
    if (value.dtype() != f32) continue;
    Tensor random = normal(value.shape(), seed++);
    const bool variance = name.find("running_var") != std::string::npos;
    for (float& e : random.data_span<float>()) e = variance ? std::abs(e) + 0.5f : 0.3f * e;
    session.set_variable(g.value(name), random);
  }
  const FeedList feeds = {{images, normal({kBatch, 3, 6, 6}, 1)},
                          {tokens, normal({kBatch, kLength, kDim}, 2)},
                          {memory, normal({kBatch, kMemory, kDim}, 3)},
                          {narrow_memory, normal({kBatch, kMemory, 12}, 4)}};
  for (const auto& [placeholder, value] : feeds) {
    std::filesystem::create_directories(dir);
    save_npy(value, (dir / (placeholder.name() + ".npy")).string());
  }
  const std::map<std::string, Tensor> values = session.variable_values();
  for (const auto& [layer, output] : layers) {
    const std::filesystem::path at = dir / layer->name();
    std::filesystem::create_directories(at);
    std::ofstream keys(at / "keys.txt");
    for (const auto& [key, tensor] : layer->torch_state_dict(values)) {
      keys << key << "\n";
      save_npy(tensor, (at / (key + ".npy")).string());
    }
    save_npy(session.run(feeds, {output})[0], (at / "output.npy").string());
  }
}

// `open`: the ids' length is unknown when the graph is built.
void recurrent(const std::filesystem::path& dir, Device device, bool open = false) {
  std::filesystem::create_directories(dir);
  constexpr int64_t kBatch = 3, kLength = 7, kVocab = 11, kDim = 6;
  Graph g;
  Value ids = g.placeholder("ids", i64, {kBatch, open ? -1 : kLength});
  Value labels = g.placeholder("labels", i64, {kBatch});
  Value h0 = g.placeholder("h0", f32, {4, kBatch, 8});
  Value c0 = g.placeholder("c0", f32, {4, kBatch, 8});
  Value lengths = g.placeholder("lengths", i64, {kBatch});
  nn::Embedding embed(g, "embed", kVocab, kDim);
  nn::LSTM lstm(g, "lstm", kDim, 8, {.num_layers = 2, .batch_first = true, .bidirectional = true});
  nn::GRU gru(g, "gru", 16, 5, {.batch_first = true});
  nn::RNN rnn(g, "rnn", 5, 4, {.bias = false}, nn::RNN::Nonlinearity::relu);
  nn::LSTM projected(g, "projected", 5, 6,
                     {.batch_first = true, .bidirectional = true, .proj_size = 3});
  nn::Linear head(g, "head", 20, 3);
  const nn::RecurrentResult encoded = lstm.run(embed(ids), h0, c0);                 // [B, T, 16]
  const nn::RecurrentResult gated = gru.run(encoded.output, {}, {}, lengths);       // [B, T, 5]
  const nn::RecurrentResult plain = rnn.run(transpose(gated.output, {1, 0, 2}));    // time-major
  const nn::RecurrentResult narrow = projected.run(gated.output, {}, {}, lengths);  // [B, T, 6]
  // The last layer's backward cell, the GRU's and the RNN's last h, the projected backward h.
  Value features =
      concat({squeeze(slice(encoded.cell, {3}, {4}), {0}), squeeze(gated.hidden, {0}),
              squeeze(plain.hidden, {0}), squeeze(slice(narrow.hidden, {1}, {2}), {0})},
             -1);
  Value loss = cross_entropy(head(features), labels);
  // eps 1e-6: with the default 1e-8 Adam's first steps are +-lr for any gradient above ~1e-7,
  // so one of the 1,300 gradients that is that small moved differently by f32 rounding alone.
  optim::Adam adam({.lr = 1e-2, .eps = 1e-6});
  Value step = adam.minimize(loss);

  std::vector<Value> variables;
  for (const nn::Module* m :
       std::initializer_list<const nn::Module*>{&embed, &lstm, &gru, &rnn, &projected, &head})
    for (const Value& v : m->parameters()) variables.push_back(v);
  std::vector<int64_t> id_values;
  for (int64_t i = 0; i < kBatch * kLength; ++i) id_values.push_back((i * 5 + i / 4) % kVocab);
  Session session(g, {.device = device});
  train(session, variables,
        {{ids, Tensor::from_vector<int64_t>(id_values, {kBatch, kLength})},
         {labels, Tensor::from_vector<int64_t>({1, 2, 0}, {kBatch})},
         {h0, normal({4, kBatch, 8}, 5)},
         {c0, normal({4, kBatch, 8}, 6)},
         {lengths, Tensor::from_vector<int64_t>({7, 4, 2}, {kBatch})}},
        {loss}, step, dir, 3);
}

void activations(const std::filesystem::path& dir, Device device) {
  std::filesystem::create_directories(dir);
  constexpr int64_t kWidth = 10;
  Graph g;
  Value x = g.placeholder("x", f32, {8, 6});
  Value y = g.placeholder("y", i64, {8});
  nn::Sequential model(g, "act");
  const std::vector<std::pair<const char*, std::function<Value(const Value&)>>> chain = {
      {"elu", [](const Value& v) { return elu(v, 0.7); }},
      {"selu", [](const Value& v) { return selu(v); }},
      {"celu", [](const Value& v) { return celu(v, 0.5); }},
      {"prelu", {}},
      {"hardswish", [](const Value& v) { return hardswish(v); }},
      {"mish", [](const Value& v) { return mish(v); }},
      {"softsign", [](const Value& v) { return softsign(v * 3.0); }},
      {"relu6", [](const Value& v) { return relu6(v * 4.0); }},
      {"hardsigmoid", [](const Value& v) { return hardsigmoid(v * 4.0); }},
      {"hardtanh", [](const Value& v) { return hardtanh(v * 2.0, -0.5, 0.8); }},
      {"logsigmoid", [](const Value& v) { return logsigmoid(v); }}};
  int64_t in = 6;
  for (size_t i = 0; i < chain.size(); ++i) {
    model.add<nn::Linear>(str("fc", i), in, kWidth);
    in = kWidth;
    if (chain[i].second)
      model.add(chain[i].first, chain[i].second);
    else
      model.add<nn::PReLU>(chain[i].first, kWidth, 0.2);
  }
  model.add<nn::Linear>("head", kWidth, 3);
  Value target = g.placeholder("target", f32, {8, 3});
  const Value logits = model(x);
  Value loss = cross_entropy(logits, y) + l1_loss(logits, target) * 0.1 +
               smooth_l1_loss(logits, target, 0.5) * 0.1 +
               mean(kl_div(log_softmax(logits), softmax(target))) * 0.1 +
               mean(cosine_similarity(logits, target)) * 0.1;
  optim::SGD sgd({.lr = 0.2, .momentum = 0.9, .nesterov = true});
  Value step = sgd.minimize(loss);
  Session session(g, {.device = device});
  train(session, model.parameters(),
        {{x, normal({8, 6}, 9)},
         {y, Tensor::from_vector<int64_t>({0, 1, 2, 0, 1, 2, 2, 1}, {8})},
         {target, normal({8, 3}, 10)}},
        {loss}, step, dir, 3);
}

void segment(const std::filesystem::path& dir, Device device) {
  std::filesystem::create_directories(dir);
  Graph g;
  // The batch is unknown when the graph is built: every pad mode follows it.
  Value x = g.placeholder("x", f32, {-1, 3, 9, 8});
  Value y = g.placeholder("y", i64, {-1, 11, 14});
  Value t = g.placeholder("t", f32, {-1, 11, 14});
  Value side_target = g.placeholder("side_target", f32, {-1, 4, 14});
  nn::Sequential model(g, "seg");
  // The convolutions before an instance norm have no bias: the norm cancels one (its gradient
  // is rounding noise, which Adam's sign-like first steps would amplify), as in PyTorch models.
  model.add<nn::Conv2d>("reflect_conv", 3, 6, std::array<int64_t, 2>{3, 3},
                        Conv2dOptions{.padding = {1, 1}, .padding_mode = PadMode::reflect},
                        nn::LayerOptions{.bias = false});
  model.add<nn::InstanceNorm2d>("norm", 6, 1e-5, /*affine=*/true);
  model.add("relu", [](const Value& v) { return relu(v); });
  model.add<nn::Pad>("replicate", std::vector<std::pair<int64_t, int64_t>>{{1, 2}, {0, 1}},
                     PadMode::replicate);  // [N, 6, 10, 11]
  model.add<nn::Conv2d>("circular_conv", 6, 6, std::array<int64_t, 2>{3, 3},
                        Conv2dOptions{.padding = {1, 2}, .padding_mode = PadMode::circular});
  model.add<nn::Pad>("constant", std::vector<std::pair<int64_t, int64_t>>{{0, 1}, {1, 0}},
                     PadMode::constant, 0.5);  // [N, 6, 11, 14]
  model.add<nn::Pad>("reflect", std::vector<std::pair<int64_t, int64_t>>{{1, 1}, {1, 1}},
                     PadMode::reflect);
  model.add<nn::Conv2d>("head", 6, 4, std::array<int64_t, 2>{3, 3});  // [N, 4, 11, 14]
  const Value logits = model(x);
  nn::Conv1d side_conv(g, "side_conv", 4, 4, 3, {.padding = 1, .padding_mode = PadMode::replicate},
                       nn::LayerOptions{.bias = false});
  nn::InstanceNorm1d side_norm(g, "side_norm", 4);
  const Value side = side_norm(side_conv(mean(logits, {2})));
  const Value class_weight = g.constant(Tensor::from_vector<float>({0.5f, 1, 2, 1.5f}));
  std::vector<float> positive(14);
  for (size_t i = 0; i < positive.size(); ++i) positive[i] = 0.5f + 0.25f * static_cast<float>(i);
  const Value pos_weight = g.constant(Tensor::from_vector<float>(positive));
  auto channel = [&](int64_t c) { return squeeze(logits.slice(1, c, c + 1), {1}); };
  Value loss = nll_loss(log_softmax(logits, 1), y, -1, class_weight) +
               cross_entropy(logits, y, -1, 0.1, class_weight) * 0.5 +
               cross_entropy(logits, y, -1, 0.2) * 0.5 +
               mean(binary_cross_entropy(sigmoid(channel(0)), t)) * 0.1 +
               mean(binary_cross_entropy_with_logits(channel(1), t, pos_weight)) * 0.1 +
               mse_loss(side, side_target) * 0.1;
  optim::Adam adam({.lr = 1e-2});
  Value step = adam.minimize(loss);
  std::vector<Value> variables = model.parameters();
  for (const Value& v : side_conv.parameters()) variables.push_back(v);
  // Labels 0..3 with some ignored (-1); targets in [0, 1].
  std::vector<int64_t> labels(3 * 11 * 14);
  for (size_t i = 0; i < labels.size(); ++i) labels[i] = i % 7 == 3 ? -1 : (i * 5 + i / 14) % 4;
  std::mt19937 rng(12);
  std::uniform_real_distribution<float> unit(0, 1);
  std::vector<float> targets(3 * 11 * 14);
  for (float& v : targets) v = unit(rng);
  Session session(g, {.device = device});
  train(session, variables,
        {{x, normal({3, 3, 9, 8}, 13)},
         {y, Tensor::from_vector<int64_t>(labels, {3, 11, 14})},
         {t, Tensor::from_vector<float>(targets, {3, 11, 14})},
         {side_target, normal({3, 4, 14}, 14)}},
        {loss}, step, dir, 3);
}

void losses(const std::filesystem::path& dir, Device device) {
  std::filesystem::create_directories(dir);
  Graph g;
  Value x = g.placeholder("x", f32, {8, 6});
  Value y = g.placeholder("y", i64, {8});
  Value sign = g.placeholder("sign", f32, {8});
  Value unit = g.placeholder("unit", f32, {8, 5});
  Value target = g.placeholder("target", f32, {8, 5});
  Value other = g.placeholder("other", f32, {8, 5});
  Value counts = g.placeholder("counts", f32, {8, 5});
  nn::Sequential model(g, "loss");
  model.add<nn::Linear>("fc", 6, 10);
  model.add("tanh", [](const Value& v) { return tanh(v); });
  model.add<nn::Linear>("head", 10, 5);
  const Value h = model(x);
  const Value class_weight = g.constant(Tensor::from_vector<float>({0.5f, 1, 2, 1.5f, 0.8f}));
  const Value pos_weight = g.constant(Tensor::from_vector<float>({1, 2, 0.5f, 3, 1.5f}));
  const Value example_weight =
      g.constant(Tensor::from_vector<float>({1, 0.5f, 2, 1, 0.25f, 1.5f, 1, 0.75f}));
  auto column = [&](int64_t c) { return squeeze(h.slice(1, c, c + 1), {1}); };
  const Reduction none = Reduction::none, total = Reduction::sum, batch = Reduction::batch_mean;
  Value loss =
      cross_entropy(h, y, -100, 0.1, class_weight, total) * 0.05 +
      sum(cross_entropy(h, y, 2, 0, {}, none) * example_weight) * 0.1 +
      nll_loss(log_softmax(h, 1), y, 2, class_weight, total) * 0.05 +
      mse_loss(h, target, total) * 0.01 + l1_loss(h, target, batch) * 0.1 +
      huber_loss(h, target, 0.5, batch) * 0.1 + mean(smooth_l1_loss(h, target, 0.3, none)) +
      binary_cross_entropy_with_logits(h, unit, pos_weight, class_weight, Reduction::mean) +
      binary_cross_entropy(sigmoid(h), unit, class_weight, total) * 0.02 +
      kl_div(log_softmax(h, 1), softmax(target, 1), false, batch) +
      margin_ranking_loss(column(0), column(1), sign, 0.2) +
      hinge_embedding_loss(column(2), sign, 1.0) + soft_margin_loss(column(3), sign) +
      multilabel_soft_margin_loss(h, unit, class_weight) + multi_margin_loss(h, y) +
      multi_margin_loss(h, y, 2, 0.5, class_weight, total) * 0.1 +
      cosine_embedding_loss(h, target, sign, 0.1) + triplet_margin_loss(h, target, other) +
      triplet_margin_loss(h, target, other, 0.5, 1, 1e-6, true, total) * 0.1 +
      triplet_margin_loss(h, target, other, 2, 3, 1e-6, false) + poisson_nll_loss(h, counts) * 0.1 +
      poisson_nll_loss(softplus(h) + 0.1, counts, false, true, 1e-8, total) * 0.01 +
      gaussian_nll_loss(h, target, softplus(other), false, 0.3) * 0.1 +
      gaussian_nll_loss(h, target, square(column(4)), true, 0.05, total) * 0.01;
  optim::SGD sgd({.lr = 0.05, .momentum = 0.9});
  Value step = sgd.minimize(loss);
  std::vector<float> unit_values(40), count_values(40);
  std::mt19937 rng(15);
  std::uniform_real_distribution<float> uniform(0, 1);
  for (float& v : unit_values) v = uniform(rng);
  for (size_t i = 0; i < count_values.size(); ++i) count_values[i] = static_cast<float>(i * 7 % 5);
  Session session(g, {.device = device});
  train(session, model.parameters(),
        {{x, normal({8, 6}, 16)},
         {y, Tensor::from_vector<int64_t>({0, 2, 4, 1, 3, 2, 0, 4}, {8})},
         {sign, Tensor::from_vector<float>({1, -1, -1, 1, 1, -1, 1, -1})},
         {unit, Tensor::from_vector<float>(unit_values, {8, 5})},
         {target, normal({8, 5}, 17)},
         {other, normal({8, 5}, 18)},
         {counts, Tensor::from_vector<float>(count_values, {8, 5})}},
        {loss}, step, dir, 3);
}

// The cells in a loop of one's own: an LSTMCell over the steps of x, a GRUCell fed its h and
// a bias-free ReLU RNNCell fed the GRU's, each carrying its state; the RNN's last h classified.
void cells(const std::filesystem::path& dir, Device device) {
  std::filesystem::create_directories(dir);
  constexpr int64_t kLength = 4, kBatch = 3, kIn = 5;
  Graph g;
  Value x = g.placeholder("x", f32, {kLength, kBatch, kIn});
  Value y = g.placeholder("y", i64, {kBatch});
  Value h0 = g.placeholder("h0", f32, {kBatch, 6});
  nn::LSTMCell lstm(g, "lstm", kIn, 6);
  nn::GRUCell gru(g, "gru", 6, 7);
  nn::RNNCell rnn(g, "rnn", 7, 4, {.bias = false}, nn::RNN::Nonlinearity::relu);
  nn::Linear head(g, "head", 4, 3);
  LSTMCellState state{h0, {}};  // h given, c zeros
  Value gru_h, rnn_h;
  for (int64_t t = 0; t < kLength; ++t) {
    state = lstm.step(squeeze(slice(x, {t}, {t + 1}), {0}), state.h, state.c);
    gru_h = gru.step(state.h, gru_h);
    rnn_h = rnn.step(gru_h, rnn_h);
  }
  Value loss = cross_entropy(head(rnn_h), y);
  optim::Adam adam({.lr = 1e-2, .eps = 1e-6});
  Value step = adam.minimize(loss);
  std::vector<Value> variables;
  for (const nn::Module* m : std::initializer_list<const nn::Module*>{&lstm, &gru, &rnn, &head})
    for (const Value& v : m->parameters()) variables.push_back(v);
  Session session(g, {.device = device});
  train(session, variables,
        {{x, normal({kLength, kBatch, kIn}, 31)},
         {y, Tensor::from_vector<int64_t>({2, 0, 1}, {kBatch})},
         {h0, normal({kBatch, 6}, 32)}},
        {loss}, step, dir, 3);
}

// A classifier trained by L-BFGS with the strong Wolfe line search: each step evaluates the
// loss several times (the script's torch.optim.LBFGS must take the same steps).
void lbfgs(const std::filesystem::path& dir, Device device) {
  std::filesystem::create_directories(dir);
  Graph g;
  Value x = g.placeholder("x", f32, {16, 6});
  Value y = g.placeholder("y", i64, {16});
  nn::Sequential model(g, "lbfgs");
  model.add<nn::Linear>("fc", 6, 8);
  model.add("tanh", [](const Value& v) { return tanh(v); });
  model.add<nn::Linear>("head", 8, 3);
  // An L2 penalty on the weights keeps the problem well conditioned: without it (the data are
  // separable) L-BFGS amplifies f32's rounding a hundredfold within three steps, for torch's own
  // f32 as for Kiln's, and the f64 reference would measure that rather than the algorithm.
  Value loss = cross_entropy(model(x), y);
  for (const Value& w : model.parameters())
    if (w.shape().rank() == 2) loss = loss + 0.01 * sum(square(w));
  optim::LBFGS optimizer(
      loss, model.parameters(),
      {.max_iter = 4, .history_size = 3, .line_search = optim::LineSearch::strong_wolfe});
  Session session(g, {.device = device});
  const FeedList feeds = {
      {x, normal({16, 6}, 21)},
      {y, Tensor::from_vector<int64_t>({0, 1, 2, 2, 1, 0, 0, 2, 1, 1, 2, 0, 1, 0, 2, 2}, {16})}};
  record_training(session, model.parameters(), feeds, dir, 3,
                  [&] { return std::vector<double>{optimizer.step(session, feeds)}; });
}

// Writes a layer's PyTorch state_dict into DIR/<prefix>_<key>.npy, the keys in <prefix>_keys.txt.
void write_state_dict(const nn::Module& layer, const std::map<std::string, Tensor>& values,
                      const std::filesystem::path& dir, const std::string& prefix) {
  std::ofstream keys(dir / (prefix + "_keys.txt"));
  for (const auto& [key, tensor] : layer.torch_state_dict(values)) {
    keys << key << "\n";
    save_npy(tensor, (dir / (prefix + "_" + key + ".npy")).string());
  }
}

// optim::BatchNormUpdate over three batches, from random running statistics: the state_dicts
// before and after, which torch.optim.swa_utils.update_bn must turn one into the other.
void update_bn(const std::filesystem::path& dir, Device device) {
  std::filesystem::create_directories(dir);
  Graph g;
  Value x = g.placeholder("x", f32, {5, 4, 3});
  nn::Sequential model(g, "update_bn");
  model.add<nn::Conv1d>("0", 4, 6, 2);
  model.add<nn::BatchNorm1d>("1", 6, 0.3);
  model.add("2", [](const Value& v) { return relu(v); });
  model.add<nn::Flatten>("3");
  model.add<nn::Linear>("4", 12, 3);
  model.add<nn::BatchNorm1d>("5", 3, std::nullopt);  // momentum None: its own batch count
  model.eval();
  optim::BatchNormUpdate update(model, x);
  Session session(g, {.device = device});
  session.initialize_variables();
  unsigned seed = 40;
  for (const auto& [name, value] : session.variable_values()) {
    if (value.dtype() != f32) continue;
    Tensor random = normal(value.shape(), seed++);
    for (float& e : random.data_span<float>()) e = 0.5f * e + (name.ends_with("var") ? 2.0f : 0.0f);
    session.set_variable(g.value(name), random);
  }
  write_state_dict(model, session.variable_values(), dir, "before");
  std::vector<FeedList> batches;
  for (unsigned b = 0; b < 3; ++b) {
    batches.push_back({{x, normal({5, 4, 3}, 50 + b)}});
    save_npy(batches.back()[0].second, (dir / str("batch_", b, ".npy")).string());
  }
  update.run(session, batches);
  write_state_dict(model, session.variable_values(), dir, "after");
}

void volume(const std::filesystem::path& dir, Device device) {
  std::filesystem::create_directories(dir);
  Graph g;
  Value x = g.placeholder("x", f32, {-1, 2, 7, 6, 5});
  Value y = g.placeholder("y", i64, {-1});
  nn::Sequential model(g, "vol");
  model.add<nn::Conv3d>("conv", 2, 4, std::array<int64_t, 3>{3, 3, 2},
                        Conv3dOptions{.stride = {1, 2, 1}, .padding = {1, 1, 1}},
                        nn::LayerOptions{.bias = false});  // [N, 4, 7, 3, 6]; the norm's shift
                                                           // replaces a bias
  auto& bn = model.add<nn::BatchNorm3d>("bn", 4);
  model.add("relu", [](const Value& v) { return relu(v); });
  model.add<nn::MaxPool3d>("max", Pool3dOptions{.kernel_size = {2, 2, 2},
                                                .stride = {2, 2, 2},
                                                .padding = {1, 1, 0},
                                                .ceil_mode = true,
                                                .dilation = {2, 1, 2}});  // [N, 4, 4, 2, 3]
  model.add<nn::Conv3d>("grouped", 4, 4, std::array<int64_t, 3>{2, 2, 2},
                        Conv3dOptions{.padding = {1, 1, 1},
                                      .dilation = {2, 1, 1},
                                      .groups = 2,
                                      .padding_mode = PadMode::replicate},
                        nn::LayerOptions{.bias = false});  // [N, 4, 4, 3, 4]
  auto& norm = model.add<nn::InstanceNorm3d>(
      "norm", 4, nn::InstanceNormOptions{.affine = true, .track_running_stats = true});
  model.add<nn::ConvTranspose3d>("up", 4, 3, std::array<int64_t, 3>{2, 3, 2},
                                 Conv3dOptions{.stride = {2, 2, 1}, .padding = {1, 1, 0}},
                                 std::array<int64_t, 3>{1, 1, 0});  // [N, 3, 7, 6, 5]
  model.add<nn::AvgPool3d>(
      "avg", Pool3dOptions{.kernel_size = {3, 2, 3}, .stride = {2, 1, 2}, .padding = {1, 1, 1}},
      false);                                                                         // [N,3,4,7,3]
  model.add<nn::AdaptiveMaxPool3d>("adaptive_max", std::array<int64_t, 3>{3, 5, 2});  // [N,3,3,5,2]
  model.add<nn::AdaptiveAvgPool3d>("adaptive", std::array<int64_t, 3>{3, 2, 2});      // [N,3,3,2,2]
  model.add<nn::Flatten>("flatten");
  model.add<nn::Linear>("head", 36, 3);
  Value loss = cross_entropy(model(x), y);
  optim::Adam adam({.lr = 1e-2});
  Value step = adam.minimize(loss);
  train_and_evaluate(model,
                     {&bn.running_mean, &bn.running_var, &norm.running_mean, &norm.running_var}, x,
                     y, normal({4, 2, 7, 6, 5}, 19),
                     Tensor::from_vector<int64_t>({0, 2, 1, 2}, {4}), loss, step, dir, device);
}

// One interpolate call of the table below (torch_layer_parity.py holds the same table).
struct Resize {
  Shape x;
  InterpolateMode mode;
  std::vector<int64_t> size;
  std::vector<double> scale_factor;
  bool align_corners = false;
  bool antialias = false;
};

void interpolation(const std::filesystem::path& dir, Device device) {
  std::filesystem::create_directories(dir);
  using M = InterpolateMode;
  const std::vector<Resize> table = {
      {{2, 3, 5}, M::nearest, {12}, {}},
      {{2, 3, 5}, M::linear, {}, {2.5}},
      {{2, 3, 5}, M::linear, {9}, {}, true},
      {{2, 3, 5}, M::nearest_exact, {7}, {}},
      {{2, 3, 5, 4}, M::nearest, {}, {2}},
      {{2, 3, 5, 4}, M::nearest, {}, {1.5}},
      {{2, 3, 5, 4}, M::linear, {7, 9}, {}},
      {{2, 3, 5, 4}, M::linear, {}, {2}, true},
      {{2, 3, 5, 4}, M::linear, {3, 2}, {}},
      {{2, 3, 5, 4}, M::cubic, {8, 6}, {}},
      {{2, 3, 5, 4}, M::cubic, {10, 3}, {}, true},
      {{2, 3, 5, 4}, M::cubic, {}, {1.7, 0.6}},
      {{2, 3, 5, 4}, M::nearest_exact, {3, 9}, {}},
      {{1, 2, 3, 4, 2}, M::linear, {5, 6, 3}, {}},
      {{1, 2, 3, 4, 2}, M::nearest, {}, {2, 1, 3}},
      // 576 elements after the first axis: a product per leading entry, not the axis moved last.
      {{1, 2, 2, 24, 24}, M::linear, {3, 30, 20}, {}},
      // Dims whose dense weights would pass 2^20 entries: the taps gathered.
      {{1, 2, 1200}, M::linear, {2500}, {}},
      {{1, 1, 1030, 4}, M::cubic, {2100, 5}, {}},
      {{1, 1, 1100}, M::nearest, {1500}, {}},
      // Antialiased (PyTorch has it for 2-D): shrinking (the filter stretched), by a factor,
      // growing, with align_corners.
      {{2, 3, 12, 10}, M::linear, {5, 4}, {}, false, true},
      {{2, 3, 12, 10}, M::cubic, {5, 7}, {}, false, true},
      {{2, 3, 12, 10}, M::linear, {}, {0.4, 0.7}, false, true},
      {{2, 3, 5, 4}, M::linear, {8, 6}, {}, false, true},
      {{2, 3, 5, 4}, M::cubic, {9, 3}, {}, false, true},
      {{2, 3, 12, 10}, M::cubic, {4, 3}, {}, true, true},
  };
  std::ofstream cases(dir / "cases.txt");
  for (size_t k = 0; k < table.size(); ++k) {
    const Resize& r = table[k];
    Graph g;
    Value x = g.placeholder("x", f32, r.x);
    Value y = interpolate(x, {.size = r.size,
                              .scale_factor = r.scale_factor,
                              .mode = r.mode,
                              .align_corners = r.align_corners,
                              .antialias = r.antialias});
    Value weights = g.placeholder("r", f32, y.shape());
    Value dx = gradients(sum(y * weights), {x})[0];
    Session session(g, {.device = device});
    const Tensor xs = normal(r.x, 20 + static_cast<unsigned>(k));
    const Tensor rs = normal(y.shape(), 40 + static_cast<unsigned>(k));
    const std::vector<Tensor> got = session.run({{x, xs}, {weights, rs}}, {y, dx});
    for (const auto& [name, t] :
         {std::pair<const char*, const Tensor&>{"x", xs}, {"r", rs}, {"y", got[0]}, {"dx", got[1]}})
      save_npy(t, (dir / str(name, "_", k, ".npy")).string());
    cases << k << "\n";
  }
}

}  // namespace
}  // namespace kiln

int main(int argc, char** argv) {
  const bool device_given = argc == 4 && std::string(argv[2]) == "--device";
  if (argc != 2 && !device_given) {
    std::fprintf(stderr, "usage: layer_parity DIR [--device cpu|cuda]\n");
    return 2;
  }
  try {
    const std::filesystem::path dir = argv[1];
    const kiln::Device device = device_given ? kiln::Device::parse(argv[3]) : kiln::Device::cpu();
    kiln::cnn(dir / "cnn", device);
    kiln::lm(dir / "lm", device);
    kiln::llama(dir / "llama", device);
    kiln::vit(dir / "vit", device);
    kiln::autoencoder(dir / "ae", device);
    kiln::encoder(dir / "encoder", device);
    kiln::text_cnn(dir / "text_cnn", device);
    kiln::pool(dir / "pool", device);
    kiln::decoder(dir / "decoder", device);
    kiln::recurrent(dir / "recurrent", device);
    kiln::recurrent(dir / "recurrent_open", device, /*open=*/true);
    kiln::cells(dir / "cells", device);
    kiln::activations(dir / "activations", device);
    kiln::segment(dir / "segment", device);
    kiln::losses(dir / "losses", device);
    kiln::volume(dir / "volume", device);
    kiln::lbfgs(dir / "lbfgs", device);
    kiln::update_bn(dir / "update_bn", device);
    kiln::ported(dir / "ported", device);
    kiln::interpolation(dir / "interpolate", device);
    std::printf(
        "layer_parity: wrote the cnn, lm, llama, vit, ae, encoder, text_cnn, pool, decoder, "
        "recurrent, recurrent_open, cells, "
        "activations, segment, losses, volume, lbfgs, update_bn and ported models' runs and the "
        "interpolate "
        "table on "
        "%s to "
        "%s\n",
        kiln::str(device).c_str(), argv[1]);
  } catch (const std::exception& e) {
    std::fprintf(stderr, "layer_parity: %s\n", e.what());
    return 1;
  }
  return 0;
}
