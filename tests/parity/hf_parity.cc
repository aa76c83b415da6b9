// Hugging Face parity of kiln::nn's LLaMA-family blocks: for each model hf_parity.py wrote
// (transformers' own LlamaForCausalLM with LLaMA 3.1's rope scaling, Qwen3ForCausalLM with
// per-head query and key norms and YaRN, MistralForCausalLM with a sliding window,
// GemmaForCausalLM with GeGLU and one key-value head; all with grouped key-value heads), builds
// the same model from Embedding, TransformerBlock (RMS norms, SwiGLU or GeGLU, no biases, rotary
// embedding), RMSNorm and Linear, loads its weights by their state-dict names (Linear weights
// transposed: Kiln's are [in, out]; gate_proj and up_proj side by side in ffn_in; Gemma's norm
// weights w as 1 + w, its embeddings times sqrt(hidden) in the graph), and compares the logits
// of the same token ids with transformers' (f64) within a tolerance of f32 rounding.
//
//   hf_parity DIR    (DIR holds hf_parity.py's llama3/, qwen3/, mistral/, gemma/)
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <map>
#include <string>

#include "kiln/kiln.h"

namespace kiln {
namespace {

using Config = std::map<std::string, std::string>;

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
  RotaryOptions rotary{.base = real(c, "theta")};
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

// Builds, loads and runs one model; returns the largest difference of its logits from
// transformers' over their largest magnitude.
double compare(const std::filesystem::path& dir) {
  const Config c = read_config(dir);
  const int64_t layers = integer(c, "layers"), dim = integer(c, "hidden"),
                heads = integer(c, "heads"), vocab = integer(c, "vocab");
  auto weight = [&](const std::string& name) { return load_npy((dir / (name + ".npy")).string()); };
  // A norm's weight: Gemma's RMSNorm scales by 1 + w.
  const double norm_offset = real(c, "norm_offset");
  auto norm_weight = [&](const std::string& name) {
    Tensor w = weight(name);
    for (int64_t i = 0; i < w.numel(); ++i) w.data<float>()[i] += static_cast<float>(norm_offset);
    return w;
  };
  const Tensor ids = load_npy((dir / "ids.npy").string());
  const Tensor want = load_npy((dir / "logits.npy").string());

  Graph g;
  Value tokens = g.placeholder("ids", i64, ids.shape());
  nn::Embedding embed(g, "embed", vocab, dim);
  nn::TransformerBlock::Options options{
      .ffn_dim = integer(c, "ffn"),
      .dropout = 0,
      .activation = c.at("activation") == "geglu" ? nn::TransformerBlock::Activation::geglu
                                                  : nn::TransformerBlock::Activation::swiglu,
      .norm_eps = real(c, "eps"),
      .norm = nn::TransformerBlock::Norm::rms,
      .bias = false,
      .kv_heads = integer(c, "kv_heads"),
      .rotary = rotary_of(c),
      .qk_norm = integer(c, "qk_norm") != 0,
      .window = integer(c, "window")};
  std::vector<std::unique_ptr<nn::TransformerBlock>> blocks;
  Value h = embed(tokens) * real(c, "embed_scale");
  for (int64_t i = 0; i < layers; ++i) {
    blocks.push_back(
        std::make_unique<nn::TransformerBlock>(g, str("layer", i), dim, heads, options));
    blocks.back()->eval();
    h = (*blocks.back())(h);
  }
  nn::RMSNorm norm(g, "norm", Shape{dim}, real(c, "eps"));
  nn::Linear head(g, "head", dim, vocab, {.bias = false});
  Value logits = head(norm(h));

  Session session(g);
  session.initialize_variables();
  session.set_variable(embed.weight, weight("model.embed_tokens.weight"));
  for (int64_t i = 0; i < layers; ++i) {
    nn::TransformerBlock& b = *blocks[static_cast<size_t>(i)];
    const std::string at = str("model.layers.", i, ".");
    session.set_variable(static_cast<nn::RMSNorm&>(b.norm1).weight,
                         norm_weight(at + "input_layernorm.weight"));
    session.set_variable(static_cast<nn::RMSNorm&>(b.norm2).weight,
                         norm_weight(at + "post_attention_layernorm.weight"));
    for (const auto& [linear, name] : std::initializer_list<std::pair<nn::Linear*, const char*>>{
             {&b.attention.query, "self_attn.q_proj.weight"},
             {&b.attention.key, "self_attn.k_proj.weight"},
             {&b.attention.value, "self_attn.v_proj.weight"},
             {&b.attention.output, "self_attn.o_proj.weight"},
             {&b.ffn_out, "mlp.down_proj.weight"}})
      session.set_variable(linear->weight, transposed(weight(at + name)));
    session.set_variable(b.ffn_in.weight,
                         side_by_side(transposed(weight(at + "mlp.gate_proj.weight")),
                                      transposed(weight(at + "mlp.up_proj.weight"))));
    if (b.attention.query_norm != nullptr) {
      session.set_variable(b.attention.query_norm->weight,
                           norm_weight(at + "self_attn.q_norm.weight"));
      session.set_variable(b.attention.key_norm->weight,
                           norm_weight(at + "self_attn.k_norm.weight"));
    }
  }
  session.set_variable(norm.weight, norm_weight("model.norm.weight"));
  session.set_variable(head.weight, transposed(weight("lm_head.weight")));
  const Tensor got = session.run({{tokens, ids}}, {logits})[0];
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
    for (const char* model : {"llama3", "qwen3", "mistral", "gemma"}) {
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
