// Hugging Face parity of kiln::nn's LLaMA-family blocks: for each model hf_parity.py wrote
// (transformers' own LlamaForCausalLM with LLaMA 3.1's rope scaling, Qwen3ForCausalLM with
// per-head query and key norms and YaRN, MistralForCausalLM with a sliding window,
// Qwen2ForCausalLM with biases on the q, k, v projections only,
// GemmaForCausalLM with GeGLU and one key-value head, Gemma3ForCausalLM with norms around both
// branches, a local and a global layer and its own attention scale, Gemma2ForCausalLM with
// soft-capped attention scores and logits besides, Olmo2ForCausalLM with norms after each
// branch only and q and k norms across heads, GPTNeoXForCausalLM with
// parallel attention and FFN, LayerNorms, biases and rotary embedding of half of each head,
// PhiForCausalLM with both branches after one shared norm and a head with a bias,
// BloomForCausalLM with ALiBi over six heads and a norm after the embedding; LlamaForCausalLM
// read past its trained length with dynamic NTK and with LongRoPE; and
// T5ForConditionalGeneration, v1.1's and v1.0's, with learned relative position biases and
// heads of their own depth), builds the same model from Embedding, TransformerBlock (and
// TransformerDecoderBlock, RelativePositionBias), RMSNorm or LayerNorm and Linear, loads its
// weights from the model.safetensors that save_pretrained wrote (f32, or bf16 for Mistral and
// Gemma, cast to f32), by their state-dict names (Linear weights transposed: Kiln's are [in, out];
// gate_proj and up_proj side by side in ffn_in; Gemma's norm weights w as 1 + w, its embeddings
// times sqrt(hidden) in the graph; NeoX's fused query_key_value split by head), and compares the
// logits of the same token ids with transformers' (f64) within a tolerance of f32 rounding.
//
//   hf_parity DIR    (DIR holds hf_parity.py's model folders: llama3/, qwen3/, ..., neox/)
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <functional>
#include <map>
#include <memory>
#include <sstream>
#include <string>

#include "kiln/kiln.h"

namespace kiln {
namespace {

using Config = std::map<std::string, std::string>;
using Loader = std::function<Tensor(const std::string&)>;

Config read_config(const std::filesystem::path& dir) {
  Config config;
  std::ifstream in(dir / "config.txt");
  KILN_CHECK(in.good(), FileError, "[hf_parity] cannot read ", (dir / "config.txt").string());
  std::string key, value;
  while (in >> key >> value) config[key] = value;
  return config;
}

int64_t integer(const Config& c, const std::string& key) {
  KILN_CHECK(c.count(key) > 0, Error, "[hf_parity] config.txt lacks ", key);
  return std::stoll(c.at(key));
}
double real(const Config& c, const std::string& key) {
  KILN_CHECK(c.count(key) > 0, Error, "[hf_parity] config.txt lacks ", key);
  return std::stod(c.at(key));
}

// The rotary embedding a configuration describes (transformers' rope_parameters).
RotaryOptions rotary_of(const Config& c) {
  RotaryOptions rotary{.base = real(c, "theta"), .dims = integer(c, "rotary_dims")};
  const std::string& kind = c.at("rope");
  RotaryScaling& s = rotary.scaling;
  if (kind == "llama3" || kind == "yarn") {
    s.kind = kind == "llama3" ? RotaryScaling::Kind::llama3 : RotaryScaling::Kind::yarn;
    s.factor = real(c, "factor");
    s.original_length = integer(c, "original");
    s.low_frequency_factor = real(c, "low");
    s.high_frequency_factor = real(c, "high");
  }
  if (kind == "dynamic" || kind == "longrope") {
    s.kind = kind == "dynamic" ? RotaryScaling::Kind::dynamic : RotaryScaling::Kind::longrope;
    s.factor = real(c, "factor");
    s.original_length = integer(c, "original");
    auto reals = [&](const std::string& key) {  // "1.0,2.0,..."
      std::vector<double> out;
      std::stringstream list(c.at(key));
      for (std::string item; std::getline(list, item, ',');) out.push_back(std::stod(item));
      return out;
    };
    if (kind == "longrope") {
      s.short_factors = reals("short");
      s.long_factors = reals("long");
    }
  }
  return rotary;
}

Tensor transposed(const Tensor& w) {  // [out, in] -> [in, out]
  const int64_t rows = w.shape()[0], cols = w.shape()[1];
  Tensor t = Tensor::empty(f32, {cols, rows});
  for (int64_t r = 0; r < rows; ++r)
    for (int64_t c = 0; c < cols; ++c)
      t.data<float>()[c * rows + r] = w.data<float>()[r * cols + c];
  return t;
}

// Columns of a and then of b, both [rows, *].
Tensor side_by_side(const Tensor& a, const Tensor& b) {
  const int64_t rows = a.shape()[0], ca = a.shape()[1], cb = b.shape()[1];
  Tensor t = Tensor::empty(f32, {rows, ca + cb});
  for (int64_t r = 0; r < rows; ++r) {
    std::copy_n(a.data<float>() + r * ca, ca, t.data<float>() + r * (ca + cb));
    std::copy_n(b.data<float>() + r * cb, cb, t.data<float>() + r * (ca + cb) + ca);
  }
  return t;
}

// The rows [first, first + count) of w [rows, cols] taken every `period` rows in runs of
// `run` (GPT-NeoX's fused query_key_value interleaves heads: [heads, 3, head_size] rows).
Tensor every_run(const Tensor& w, int64_t first, int64_t run, int64_t period, int64_t runs) {
  const int64_t cols = w.shape().rank() == 2 ? w.shape()[1] : 1;
  Tensor out =
      Tensor::empty(f32, w.shape().rank() == 2 ? Shape{run * runs, cols} : Shape{run * runs});
  for (int64_t r = 0; r < runs; ++r)
    std::copy_n(w.data<float>() + (r * period + first) * cols, run * cols,
                out.data<float>() + r * run * cols);
  return out;
}

// A model of either family, built from kiln::nn as the configuration says.
struct Model {
  Graph g;
  Value tokens, logits;
  std::unique_ptr<nn::Embedding> embed;
  std::unique_ptr<nn::LayerNorm> embed_norm;  // BLOOM's, after the embedding
  std::vector<std::unique_ptr<nn::TransformerBlock>> blocks;
  std::unique_ptr<nn::Module> norm;  // RMSNorm or LayerNorm
  std::unique_ptr<nn::Linear> head;
};

// Entry `layer` of a comma-separated per-layer list ("10000,1000000"), or `fallback` for "-".
double per_layer(const Config& c, const std::string& key, int64_t layer, double fallback) {
  const std::string& list = c.at(key);
  if (list == "-") return fallback;
  size_t at = 0;
  for (int64_t i = 0; i < layer; ++i) at = list.find(',', at) + 1;
  return std::stod(list.substr(at, list.find(',', at) - at));
}

void build(Model& m, const Config& c, const Shape& ids) {
  const int64_t dim = integer(c, "hidden"), vocab = integer(c, "vocab");
  const bool layer_norm = c.at("norm") == "layer";
  const bool alibi = c.at("rope") == "alibi";  // BLOOM: a bias of the scores, no rotary
  using Activation = nn::TransformerBlock::Activation;
  const std::string& activation = c.at("activation");
  nn::TransformerBlock::Options options{
      .ffn_dim = integer(c, "ffn"),
      .dropout = 0,
      .activation = activation == "geglu"       ? Activation::geglu
                    : activation == "gelu"      ? Activation::gelu
                    : activation == "gelu_tanh" ? Activation::gelu_tanh
                                                : Activation::swiglu,
      .norm_eps = real(c, "eps"),
      .norm = layer_norm ? nn::TransformerBlock::Norm::layer : nn::TransformerBlock::Norm::rms,
      .bias = integer(c, "bias") != 0,
      .kv_heads = integer(c, "kv_heads"),
      .rotary = alibi ? std::nullopt : std::optional<RotaryOptions>(rotary_of(c)),
      .qk_norm = integer(c, "qk_norm") != 0,
      .window = integer(c, "window"),
      .parallel = integer(c, "parallel") != 0,
      .qkv_bias = integer(c, "qkv_bias") != 0 || integer(c, "bias") != 0,
      .attention_scale = real(c, "attention_scale"),
      .attention_softcap = real(c, "attention_softcap"),
      .post_norms = integer(c, "post_norms") != 0,
      .input_norms = integer(c, "input_norms") != 0,
      .qk_norm_across_heads = integer(c, "qk_norm_across_heads") != 0};
  m.tokens = m.g.placeholder("ids", i64, ids);
  m.embed = std::make_unique<nn::Embedding>(m.g, "embed", vocab, dim);
  Value h = (*m.embed)(m.tokens) * real(c, "embed_scale");
  if (c.at("family") == "bloom") {
    m.embed_norm = std::make_unique<nn::LayerNorm>(m.g, "embed_norm", Shape{dim}, real(c, "eps"));
    h = (*m.embed_norm)(h);
  }
  const int64_t heads = integer(c, "heads");
  // BLOOM's bias over the positions of the ids fed (the build's length, or any).
  const Value positions = alibi ? positions_along(m.tokens, 1) : Value();
  const Value bias = alibi ? alibi_bias(heads, positions, positions) : Value();
  for (int64_t i = 0; i < integer(c, "layers"); ++i) {
    // Gemma 3's layers differ: sliding-window or global, each kind with its rope base.
    if (!alibi) options.rotary->base = per_layer(c, "thetas", i, real(c, "theta"));
    options.window = static_cast<int64_t>(per_layer(c, "windows", i, real(c, "window")));
    m.blocks.push_back(
        std::make_unique<nn::TransformerBlock>(m.g, str("layer", i), dim, heads, options));
    m.blocks.back()->eval();
    h = m.blocks.back()->attend(h, bias);
  }
  if (layer_norm)
    m.norm = std::make_unique<nn::LayerNorm>(m.g, "norm", Shape{dim}, real(c, "eps"));
  else
    m.norm = std::make_unique<nn::RMSNorm>(m.g, "norm", Shape{dim}, real(c, "eps"));
  m.head = std::make_unique<nn::Linear>(m.g, "head", dim, vocab,
                                        nn::LayerOptions{.bias = integer(c, "head_bias") != 0});
  m.logits = (*m.head)((*m.norm)(h));
  if (const double cap = real(c, "final_softcap"); cap > 0)  // Gemma 2's capped logits
    m.logits = tanh(m.logits / cap) * cap;
}

// Loads a LLaMA-family state dict (LLaMA, Qwen3, Mistral, Gemma).
void load_llama_family(Session& s, Model& m, const Config& c, const Loader& weight) {
  // A norm's weight: Gemma's RMSNorm scales by 1 + w.
  const float norm_offset = static_cast<float>(real(c, "norm_offset"));
  auto norm_weight = [&](const std::string& name) {
    Tensor w = weight(name);
    for (int64_t i = 0; i < w.numel(); ++i) w.data<float>()[i] += norm_offset;
    return w;
  };
  s.set_variable(m.embed->weight, weight("model.embed_tokens.weight"));
  for (size_t i = 0; i < m.blocks.size(); ++i) {
    nn::TransformerBlock& b = *m.blocks[i];
    const std::string at = str("model.layers.", i, ".");
    const bool input_norms = integer(c, "input_norms") != 0;  // OLMo 2's has none
    if (input_norms)
      s.set_variable(static_cast<nn::RMSNorm&>(b.norm1).weight,
                     norm_weight(at + "input_layernorm.weight"));
    if (b.attention_output_norm != nullptr) {  // norms after both branches (Gemma 2, 3; OLMo 2)
      s.set_variable(static_cast<nn::RMSNorm&>(*b.attention_output_norm).weight,
                     norm_weight(at + "post_attention_layernorm.weight"));
      if (input_norms)
        s.set_variable(static_cast<nn::RMSNorm&>(b.norm2).weight,
                       norm_weight(at + "pre_feedforward_layernorm.weight"));
      s.set_variable(static_cast<nn::RMSNorm&>(*b.ffn_output_norm).weight,
                     norm_weight(at + "post_feedforward_layernorm.weight"));
    } else {
      s.set_variable(static_cast<nn::RMSNorm&>(b.norm2).weight,
                     norm_weight(at + "post_attention_layernorm.weight"));
    }
    for (const auto& [linear, name] : std::initializer_list<std::pair<nn::Linear*, const char*>>{
             {&b.attention.query, "self_attn.q_proj.weight"},
             {&b.attention.key, "self_attn.k_proj.weight"},
             {&b.attention.value, "self_attn.v_proj.weight"},
             {&b.attention.output, "self_attn.o_proj.weight"},
             {&b.ffn_out, "mlp.down_proj.weight"}})
      s.set_variable(linear->weight, transposed(weight(at + name)));
    if (integer(c, "qkv_bias") != 0)  // Qwen2's
      for (const auto& [linear, name] : std::initializer_list<std::pair<nn::Linear*, const char*>>{
               {&b.attention.query, "self_attn.q_proj.bias"},
               {&b.attention.key, "self_attn.k_proj.bias"},
               {&b.attention.value, "self_attn.v_proj.bias"}})
        s.set_variable(linear->bias, weight(at + name));
    s.set_variable(b.ffn_in.weight, side_by_side(transposed(weight(at + "mlp.gate_proj.weight")),
                                                 transposed(weight(at + "mlp.up_proj.weight"))));
    if (b.attention.query_norm != nullptr) {
      s.set_variable(b.attention.query_norm->weight, norm_weight(at + "self_attn.q_norm.weight"));
      s.set_variable(b.attention.key_norm->weight, norm_weight(at + "self_attn.k_norm.weight"));
    }
  }
  s.set_variable(static_cast<nn::RMSNorm&>(*m.norm).weight, norm_weight("model.norm.weight"));
  s.set_variable(m.head->weight, transposed(weight("lm_head.weight")));
}

// A LayerNorm's weight and bias from NAME.weight and NAME.bias.
void set_layer_norm(Session& s, nn::Module& norm, const Loader& weight, const std::string& name) {
  auto& layer = static_cast<nn::LayerNorm&>(norm);
  s.set_variable(layer.weight, weight(name + ".weight"));
  s.set_variable(layer.bias, weight(name + ".bias"));
}

// A Linear's weight (PyTorch's [out, in], transposed) and bias from NAME.weight and NAME.bias.
void set_biased_linear(Session& s, nn::Linear& linear, const Loader& weight,
                       const std::string& name) {
  s.set_variable(linear.weight, transposed(weight(name + ".weight")));
  s.set_variable(linear.bias, weight(name + ".bias"));
}

// Where a fused-qkv family keeps its weights.
struct FusedQkvNames {
  std::string embed, embed_norm, layers, attention, final_norm, head;
};
const FusedQkvNames kNeoxNames{"gpt_neox.embed_in.weight",  "",
                               "gpt_neox.layers.",          "attention.",
                               "gpt_neox.final_layer_norm", "embed_out.weight"};
// BLOOM ties its head to the embedding: the file holds that matrix once.
const FusedQkvNames kBloomNames{"transformer.word_embeddings.weight",
                                "transformer.word_embeddings_layernorm",
                                "transformer.h.",
                                "self_attention.",
                                "transformer.ln_f",
                                "transformer.word_embeddings.weight"};

// Loads a GPT-NeoX or BLOOM state dict: LayerNorms with biases, the query_key_value projection
// fused and interleaved by head, biases on every Linear.
void load_fused_qkv(Session& s, Model& m, const Config& c, const Loader& weight,
                    const FusedQkvNames& names) {
  const int64_t heads = integer(c, "heads"), depth = integer(c, "hidden") / heads;
  const auto set_norm = [&](nn::Module& norm, const std::string& name) {
    set_layer_norm(s, norm, weight, name);
  };
  const auto set_linear = [&](nn::Linear& linear, const std::string& name) {
    set_biased_linear(s, linear, weight, name);
  };
  s.set_variable(m.embed->weight, weight(names.embed));
  if (m.embed_norm) set_norm(*m.embed_norm, names.embed_norm);
  for (size_t i = 0; i < m.blocks.size(); ++i) {
    nn::TransformerBlock& b = *m.blocks[i];
    const std::string at = str(names.layers, i, ".");
    set_norm(b.norm1, at + "input_layernorm");
    set_norm(b.norm2, at + "post_attention_layernorm");
    const Tensor qkv = weight(at + names.attention + "query_key_value.weight");
    const Tensor qkv_bias = weight(at + names.attention + "query_key_value.bias");
    for (const auto& [linear, part] : std::initializer_list<std::pair<nn::Linear*, int64_t>>{
             {&b.attention.query, 0}, {&b.attention.key, 1}, {&b.attention.value, 2}}) {
      s.set_variable(linear->weight,
                     transposed(every_run(qkv, part * depth, depth, 3 * depth, heads)));
      s.set_variable(linear->bias, every_run(qkv_bias, part * depth, depth, 3 * depth, heads));
    }
    set_linear(b.attention.output, at + names.attention + "dense");
    set_linear(b.ffn_in, at + "mlp.dense_h_to_4h");
    set_linear(b.ffn_out, at + "mlp.dense_4h_to_h");
  }
  set_norm(*m.norm, names.final_norm);
  s.set_variable(m.head->weight, transposed(weight(names.head)));
}

// Loads a Phi-2 state dict: one LayerNorm feeding both branches (the block's two norms get its
// weights), q, k, v and dense projections with biases, fc1 and fc2, a head with a bias.
void load_phi(Session& s, Model& m, const Loader& weight) {
  const auto set_norm = [&](nn::Module& norm, const std::string& name) {
    set_layer_norm(s, norm, weight, name);
  };
  const auto set_linear = [&](nn::Linear& linear, const std::string& name) {
    set_biased_linear(s, linear, weight, name);
  };
  s.set_variable(m.embed->weight, weight("model.embed_tokens.weight"));
  for (size_t i = 0; i < m.blocks.size(); ++i) {
    nn::TransformerBlock& b = *m.blocks[i];
    const std::string at = str("model.layers.", i, ".");
    set_norm(b.norm1, at + "input_layernorm");
    set_norm(b.norm2, at + "input_layernorm");
    set_linear(b.attention.query, at + "self_attn.q_proj");
    set_linear(b.attention.key, at + "self_attn.k_proj");
    set_linear(b.attention.value, at + "self_attn.v_proj");
    set_linear(b.attention.output, at + "self_attn.dense");
    set_linear(b.ffn_in, at + "mlp.fc1");
    set_linear(b.ffn_out, at + "mlp.fc2");
  }
  set_norm(*m.norm, "model.final_layernorm");
  set_linear(*m.head, "lm_head");
}

// T5 (transformers' T5ForConditionalGeneration) from kiln::nn: the shared Embedding; an encoder
// of TransformerBlocks and a decoder of TransformerDecoderBlocks, pre-norm with RMSNorm, no
// biases, scores unscaled (attention_scale 1), heads of head_dim; a RelativePositionBias per
// stack (bidirectional for the encoder, one-directional and causal for the decoder) added in
// every layer; the padding mask on the encoder's self-attention and the cross-attention; the
// head the shared embedding, after v1.0's scaling by dim^-0.5 where the config has it.
struct T5Model {
  Graph g;
  Value ids, mask, decoder_ids, memory, logits;
  std::unique_ptr<nn::Embedding> embed;
  std::unique_ptr<nn::RelativePositionBias> encoder_bias, decoder_bias;
  std::vector<std::unique_ptr<nn::TransformerBlock>> encoder;
  std::vector<std::unique_ptr<nn::TransformerDecoderBlock>> decoder;
  std::unique_ptr<nn::RMSNorm> encoder_norm, decoder_norm;
  std::unique_ptr<nn::Linear> head;
};

// T5's blocks: pre-norm RMSNorm, no biases, unscaled scores, heads of head_dim; causal for the
// decoder's.
nn::TransformerBlock::Options t5_block_options(const Config& c, bool causal) {
  using Block = nn::TransformerBlock;
  return {.ffn_dim = integer(c, "ffn"),
          .dropout = 0,
          .causal = causal,
          .activation =
              c.at("activation") == "geglu" ? Block::Activation::geglu : Block::Activation::relu,
          .norm_eps = real(c, "eps"),
          .norm = Block::Norm::rms,
          .bias = false,
          .attention_scale = 1.0,
          .head_dim = integer(c, "head_dim")};
}

// A T5 stack's relative position bias: bidirectional for the encoder, not for the decoder.
nn::RelativePositionBias::Options t5_relative(const Config& c, bool bidirectional) {
  return {.buckets = integer(c, "buckets"),
          .max_distance = integer(c, "max_distance"),
          .bidirectional = bidirectional};
}

void build_t5(T5Model& m, const Config& c, const Shape& ids, const Shape& decoder_ids) {
  const int64_t dim = integer(c, "hidden"), heads = integer(c, "heads");
  const double eps = real(c, "eps");
  using Block = nn::TransformerBlock;
  Block::Options options = t5_block_options(c, false);
  m.ids = m.g.placeholder("ids", i64, ids);
  m.mask = m.g.placeholder("mask", i64, ids);
  m.decoder_ids = m.g.placeholder("decoder_ids", i64, decoder_ids);
  m.embed = std::make_unique<nn::Embedding>(m.g, "shared", integer(c, "vocab"), dim);
  // The encoder's keys a query may read, [B, 1, 1, S]: not padding.
  const Value keep = expand_dims(not_equal(m.mask, 0.0), {1, 2});
  m.encoder_bias =
      std::make_unique<nn::RelativePositionBias>(m.g, "encoder_bias", heads, t5_relative(c, true));
  // bias(T, T) where the lengths are known, else the bias of the lengths each run feeds.
  const Value encoder_mask = attention_mask_and((*m.encoder_bias)(m.ids), keep);
  Value h = (*m.embed)(m.ids);
  for (int64_t i = 0; i < integer(c, "layers"); ++i) {
    m.encoder.push_back(std::make_unique<Block>(m.g, str("encoder", i), dim, heads, options));
    m.encoder.back()->eval();
    h = m.encoder.back()->attend(h, encoder_mask);
  }
  m.encoder_norm = std::make_unique<nn::RMSNorm>(m.g, "encoder_norm", Shape{dim}, eps);
  m.memory = (*m.encoder_norm)(h);
  m.decoder_bias =
      std::make_unique<nn::RelativePositionBias>(m.g, "decoder_bias", heads, t5_relative(c, false));
  const Value decoder_mask = (*m.decoder_bias)(m.decoder_ids);
  options.causal = true;
  Value d = (*m.embed)(m.decoder_ids);
  for (int64_t i = 0; i < integer(c, "decoder_layers"); ++i) {
    m.decoder.push_back(
        std::make_unique<nn::TransformerDecoderBlock>(m.g, str("decoder", i), dim, heads, options));
    m.decoder.back()->eval();
    d = m.decoder.back()->decode(d, m.memory, decoder_mask, keep);
  }
  m.decoder_norm = std::make_unique<nn::RMSNorm>(m.g, "decoder_norm", Shape{dim}, eps);
  d = (*m.decoder_norm)(d);
  if (integer(c, "scale_output") != 0) d = d * (1 / std::sqrt(static_cast<double>(dim)));
  m.head = std::make_unique<nn::Linear>(m.g, "head", dim, integer(c, "vocab"),
                                        nn::LayerOptions{.bias = false});
  m.logits = (*m.head)(d);
}

// Loads a T5 state dict: q, k, v, o and the FFN's wi (or wi_0 and wi_1 side by side, GeGLU's
// gate and up) and wo, transposed; each stack's relative_attention_bias from its first block.
void load_t5(Session& s, T5Model& m, const Loader& weight) {
  const auto set_linear = [&](nn::Linear& linear, const std::string& name) {
    s.set_variable(linear.weight, transposed(weight(name + ".weight")));
  };
  const auto set_attention = [&](nn::MultiHeadAttention& attention, const std::string& at) {
    set_linear(attention.query, at + "q");
    set_linear(attention.key, at + "k");
    set_linear(attention.value, at + "v");
    set_linear(attention.output, at + "o");
  };
  const auto set_ffn = [&](nn::Linear& in, nn::Linear& out, const std::string& at) {
    if (in.weight.shape()[1] == out.weight.shape()[0])
      set_linear(in, at + "wi");
    else
      s.set_variable(in.weight, side_by_side(transposed(weight(at + "wi_0.weight")),
                                             transposed(weight(at + "wi_1.weight"))));
    set_linear(out, at + "wo");
  };
  const auto set_norm = [&](nn::Module& norm, const std::string& name) {
    s.set_variable(static_cast<nn::RMSNorm&>(norm).weight, weight(name));
  };
  s.set_variable(m.embed->weight, weight("shared.weight"));
  s.set_variable(m.head->weight, transposed(weight("shared.weight")));
  s.set_variable(m.encoder_bias->weight,
                 weight("encoder.block.0.layer.0.SelfAttention.relative_attention_bias.weight"));
  s.set_variable(m.decoder_bias->weight,
                 weight("decoder.block.0.layer.0.SelfAttention.relative_attention_bias.weight"));
  for (size_t i = 0; i < m.encoder.size(); ++i) {
    nn::TransformerBlock& b = *m.encoder[i];
    const std::string at = str("encoder.block.", i, ".layer.");
    set_norm(b.norm1, at + "0.layer_norm.weight");
    set_attention(b.attention, at + "0.SelfAttention.");
    set_norm(b.norm2, at + "1.layer_norm.weight");
    set_ffn(b.ffn_in, b.ffn_out, at + "1.DenseReluDense.");
  }
  for (size_t i = 0; i < m.decoder.size(); ++i) {
    nn::TransformerDecoderBlock& b = *m.decoder[i];
    const std::string at = str("decoder.block.", i, ".layer.");
    set_norm(b.norm1, at + "0.layer_norm.weight");
    set_attention(b.self_attention, at + "0.SelfAttention.");
    set_norm(b.norm2, at + "1.layer_norm.weight");
    set_attention(b.cross_attention, at + "1.EncDecAttention.");
    set_norm(b.norm3, at + "2.layer_norm.weight");
    set_ffn(b.ffn_in, b.ffn_out, at + "2.DenseReluDense.");
  }
  set_norm(*m.encoder_norm, "encoder.final_layer_norm.weight");
  set_norm(*m.decoder_norm, "decoder.final_layer_norm.weight");
}

// The logits of T5's decoder stepped one token at a time through KV caches: the graph of a
// step (the layers named as build_t5's, their variables from `values`), each layer's memory
// projected once (project_memory), the self-attention's bias RelativePositionBias::bias_at.
Tensor t5_cached_logits(const Config& c, const std::map<std::string, Tensor>& values,
                        const Tensor& memory, const Tensor& mask, const Tensor& decoder_ids) {
  const int64_t dim = integer(c, "hidden"), heads = integer(c, "heads");
  const int64_t batch = decoder_ids.shape()[0], length = decoder_ids.shape()[1];
  const int64_t vocab = integer(c, "vocab");
  Graph g;
  Value token = g.placeholder("token", i64, {batch, 1});
  Value position = g.placeholder("position", i64, {});
  Value memory_in = g.placeholder("memory", f32, memory.shape());
  Value mask_in = g.placeholder("mask", i64, mask.shape());
  nn::Embedding embed(g, "shared", vocab, dim);
  nn::RelativePositionBias decoder_bias(g, "decoder_bias", heads, t5_relative(c, false));
  const Value keep = reshape(not_equal(mask_in, 0.0), {-1, 1, 1, mask.shape()[1]});
  const Value self_mask = decoder_bias.bias_at(position, 1, length);
  Value h = embed(token);
  std::vector<std::unique_ptr<nn::TransformerDecoderBlock>> blocks;
  std::vector<nn::KVCache> caches, next;
  for (int64_t i = 0; i < integer(c, "decoder_layers"); ++i) {
    blocks.push_back(std::make_unique<nn::TransformerDecoderBlock>(g, str("decoder", i), dim, heads,
                                                                   t5_block_options(c, true)));
    nn::TransformerDecoderBlock& block = *blocks.back();
    block.eval();
    caches.push_back(block.self_attention.cache_placeholders(length));
    const auto step = block.decode_cached(h, block.project_memory(memory_in), caches.back(),
                                          position, keep, self_mask);
    h = step.output;
    next.push_back(step.cache);
  }
  nn::RMSNorm norm(g, "decoder_norm", Shape{dim}, real(c, "eps"));
  h = norm(h);
  if (integer(c, "scale_output") != 0) h = h * (1 / std::sqrt(static_cast<double>(dim)));
  nn::Linear head(g, "head", dim, vocab, nn::LayerOptions{.bias = false});
  const Value logits = head(h);
  Session session(g);
  std::map<std::string, Tensor> own;  // the full model's variables this graph has
  for (const Value& v : g.variables()) own[v.name()] = values.at(v.name());
  session.set_variables(own);
  std::vector<Tensor> state;  // each layer's keys and values, zeros to start
  for (const nn::KVCache& cache : caches) {
    const Shape shape{batch, length, cache.keys.shape()[2], cache.keys.shape()[3]};
    state.push_back(Tensor::zeros(f32, shape));
    state.push_back(Tensor::zeros(f32, shape));
  }
  std::vector<Value> fetches{logits};
  for (const nn::KVCache& n : next) fetches.insert(fetches.end(), {n.keys, n.values});
  Tensor all = Tensor::empty(f32, {batch, length, vocab});
  for (int64_t t = 0; t < length; ++t) {
    Tensor ids = Tensor::empty(i64, {batch, 1});
    for (int64_t b = 0; b < batch; ++b)
      ids.data<int64_t>()[b] = decoder_ids.data<int64_t>()[b * length + t];
    FeedList feeds = {
        {token, ids}, {position, Tensor::scalar<int64_t>(t)}, {memory_in, memory}, {mask_in, mask}};
    for (size_t l = 0; l < caches.size(); ++l) {
      feeds.emplace_back(caches[l].keys, state[2 * l]);
      feeds.emplace_back(caches[l].values, state[2 * l + 1]);
    }
    const std::vector<Tensor> out = session.run(feeds, fetches);
    for (int64_t b = 0; b < batch; ++b)
      std::copy_n(out[0].data<float>() + b * vocab, vocab,
                  all.data<float>() + (b * length + t) * vocab);
    std::copy(out.begin() + 1, out.end(), state.begin());
  }
  return all;
}

// T5's logits for the reference's inputs: the whole decoder at once, and stepped through KV
// caches (t5_cached_logits).
std::vector<std::pair<std::string, Tensor>> t5_logits(const Config& c, const Loader& weight,
                                                      const SafetensorsFile& reference) {
  T5Model m;
  build_t5(m, c, reference.at("ids").shape(), reference.at("decoder_ids").shape());
  Session session(m.g);
  session.initialize_variables();
  load_t5(session, m, weight);
  const FeedList feeds = {{m.ids, reference.at("ids")},
                          {m.mask, reference.at("mask")},
                          {m.decoder_ids, reference.at("decoder_ids")}};
  const std::vector<Tensor> out = session.run(feeds, {m.logits, m.memory});
  // The same model built for any batch and lengths (the relative position biases then computed
  // from the lengths fed).
  T5Model any;
  build_t5(any, c, {-1, -1}, {-1, -1});
  Session any_session(any.g);
  any_session.set_variables(session.variable_values());
  const Tensor any_length = any_session.run({{any.ids, reference.at("ids")},
                                             {any.mask, reference.at("mask")},
                                             {any.decoder_ids, reference.at("decoder_ids")}},
                                            {any.logits})[0];
  return {
      {"", out[0]},
      {" built for any batch and length", any_length},
      {" cached decoding", t5_cached_logits(c, session.variable_values(), out[1],
                                            reference.at("mask"), reference.at("decoder_ids"))}};
}

// A decoder-only model's logits for the reference's ids.
std::vector<std::pair<std::string, Tensor>> decoder_only_logits(const Config& c,
                                                                const Loader& weight,
                                                                const SafetensorsFile& reference) {
  const Tensor ids = reference.at("ids");
  Model m;
  build(m, c, ids.shape());
  Session session(m.g);
  session.initialize_variables();
  if (c.at("family") == "neox")
    load_fused_qkv(session, m, c, weight, kNeoxNames);
  else if (c.at("family") == "bloom")
    load_fused_qkv(session, m, c, weight, kBloomNames);
  else if (c.at("family") == "phi")
    load_phi(session, m, weight);
  else
    load_llama_family(session, m, c, weight);
  std::vector<std::pair<std::string, Tensor>> ways;
  ways.emplace_back("", session.run({{m.tokens, ids}}, {m.logits})[0]);
  // The same model built for ids [?, ?]: the heads split with unflatten, the rotary table, the
  // ALiBi bias and the causal or window reach from the length fed.
  Model any;
  build(any, c, {-1, -1});
  Session any_session(any.g);
  any_session.set_variables(session.variable_values());
  ways.emplace_back(" built for any batch and length",
                    any_session.run({{any.tokens, ids}}, {any.logits})[0]);
  return ways;
}

// Builds, loads and runs one model; returns, for each way it was run (T5's also through KV
// caches), the largest difference of its logits from transformers' over their largest magnitude.
std::vector<std::pair<std::string, double>> compare(const std::filesystem::path& dir) {
  const Config c = read_config(dir);
  // As a user loads a checkpoint: by name from what save_pretrained wrote, bf16 cast to f32.
  const std::filesystem::path index = dir / "model.safetensors.index.json";
  const SafetensorsFile file = load_safetensors(
      (std::filesystem::exists(index) ? index : dir / "model.safetensors").string());
  KILN_CHECK(
      c.at("family") != "llama" || dir.filename() != "llama3" || std::filesystem::exists(index),
      Error, "[hf_parity] ", dir.string(), ": LLaMA's weights were to come in shards");
  const Loader weight = [&](const std::string& name) { return file.at(name).cast(f32); };
  KILN_CHECK(file.tensors.begin()->second.dtype() == (c.at("weights") == "bf16" ? bf16 : f32),
             Error, "[hf_parity] ", dir.string(), ": weights not stored as ", c.at("weights"));
  const SafetensorsFile reference = load_safetensors((dir / "reference.safetensors").string());
  const Tensor want = reference.at("logits");
  std::vector<std::pair<std::string, double>> errors;
  for (const auto& [way, got] : c.at("family") == "t5"
                                    ? t5_logits(c, weight, reference)
                                    : decoder_only_logits(c, weight, reference)) {
    KILN_CHECK(got.numel() == want.numel(), Error, "[hf_parity] ", dir.string(), way, ": logits ",
               got.shape(), " against transformers' ", want.shape());
    double largest = 0, error = 0;
    for (int64_t i = 0; i < got.numel(); ++i) {
      largest = std::max(largest, std::abs(want.element(i)));
      error = std::max(error, std::abs(got.element(i) - want.element(i)));
    }
    errors.emplace_back(way, error / largest);
  }
  return errors;
}

}  // namespace
}  // namespace kiln

int main(int argc, char** argv) {
  if (argc != 2) {
    std::fprintf(stderr, "usage: hf_parity DIR\n");
    return 2;
  }
  // f32 against f64 through two blocks: ~1e-6 of the largest logit; a wrong scaling, norm,
  // window or head mapping is off by far more (each was checked to fail).
  constexpr double kTolerance = 2e-5;
  int failures = 0;
  try {
    for (const char* model :
         {"llama3", "qwen3", "mistral", "qwen2", "gemma", "gemma3", "gemma2", "olmo2", "neox",
          "phi", "bloom", "t5", "t5_relu", "llama_dynamic", "llama_longrope"}) {
      for (const auto& [way, error] : kiln::compare(std::filesystem::path(argv[1]) / model)) {
        const bool ok = error <= kTolerance;
        failures += !ok;
        std::printf("[hf-parity] %s%s: logits differ by %.2e of the largest (tolerance %.0e) %s\n",
                    model, way.c_str(), error, kTolerance, ok ? "ok" : "MISMATCH");
      }
    }
  } catch (const std::exception& e) {
    std::fprintf(stderr, "[hf-parity] %s\n", e.what());
    return 1;
  }
  return failures == 0 ? 0 : 1;
}
