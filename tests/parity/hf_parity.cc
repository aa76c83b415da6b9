// Hugging Face parity of kiln::nn's LLaMA-family blocks: for each model hf_parity.py wrote
// (transformers' own LlamaForCausalLM with LLaMA 3.1's rope scaling, Qwen3ForCausalLM with
// per-head query and key norms and YaRN, MistralForCausalLM with a sliding window,
// Qwen2ForCausalLM with biases on the q, k, v projections only,
// GemmaForCausalLM with GeGLU and one key-value head, Gemma3ForCausalLM with norms around both
// branches, a local and a global layer and its own attention scale, Gemma2ForCausalLM with
// soft-capped attention scores and logits besides, GPTNeoXForCausalLM with
// parallel attention and FFN, LayerNorms, biases and rotary embedding of half of each head,
// PhiForCausalLM with both branches after one shared norm and a head with a bias,
// BloomForCausalLM with ALiBi over six heads and a norm after the embedding), builds
// the same model from Embedding, TransformerBlock, RMSNorm or LayerNorm and Linear, loads its
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
      .post_norms = integer(c, "post_norms") != 0};
  m.tokens = m.g.placeholder("ids", i64, ids);
  m.embed = std::make_unique<nn::Embedding>(m.g, "embed", vocab, dim);
  Value h = (*m.embed)(m.tokens) * real(c, "embed_scale");
  if (c.at("family") == "bloom") {
    m.embed_norm = std::make_unique<nn::LayerNorm>(m.g, "embed_norm", Shape{dim}, real(c, "eps"));
    h = (*m.embed_norm)(h);
  }
  const int64_t heads = integer(c, "heads"), length = ids[1];
  const Value bias = alibi ? alibi_bias(m.g, heads, length, length) : Value();
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
    s.set_variable(static_cast<nn::RMSNorm&>(b.norm1).weight,
                   norm_weight(at + "input_layernorm.weight"));
    if (b.attention_output_norm != nullptr) {  // Gemma 3's norms around both branches
      s.set_variable(static_cast<nn::RMSNorm&>(*b.attention_output_norm).weight,
                     norm_weight(at + "post_attention_layernorm.weight"));
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

// Builds, loads and runs one model; returns the largest difference of its logits from
// transformers' over their largest magnitude.
double compare(const std::filesystem::path& dir) {
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
  const Tensor ids = reference.at("ids");
  const Tensor want = reference.at("logits");
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
  const Tensor got = session.run({{m.tokens, ids}}, {m.logits})[0];
  KILN_CHECK(got.numel() == want.numel(), Error, "[hf_parity] ", dir.string(), ": logits ",
             got.shape(), " against transformers' ", want.shape());
  double largest = 0, error = 0;
  for (int64_t i = 0; i < got.numel(); ++i) {
    largest = std::max(largest, std::abs(want.element(i)));
    error = std::max(error, std::abs(got.element(i) - want.element(i)));
  }
  return error / largest;
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
    for (const char* model : {"llama3", "qwen3", "mistral", "qwen2", "gemma", "gemma3", "gemma2",
                              "neox", "phi", "bloom"}) {
      const double error = kiln::compare(std::filesystem::path(argv[1]) / model);
      const bool ok = error <= kTolerance;
      failures += !ok;
      std::printf("[hf-parity] %s: logits differ by %.2e of the largest (tolerance %.0e) %s\n",
                  model, error, kTolerance, ok ? "ok" : "MISMATCH");
    }
  } catch (const std::exception& e) {
    std::fprintf(stderr, "[hf-parity] %s\n", e.what());
    return 1;
  }
  return failures == 0 ? 0 : 1;
}
