// A GPT-style character model trained on Debian's fortunes: token and position embeddings,
// pre-norm transformer blocks with causal attention and dropout, a final layer norm and a
// linear head. Prints the validation loss in nats per character and samples text. With
// --llama, LLaMA's block instead: RMS norms, a SwiGLU FFN (hidden 8/3 dim, rounded up to 32),
// no biases, rotary position embedding in the attention (no position table), and --kv-heads
// key-value heads (grouped-query attention; default: half the heads).
//
//   char_transformer [--data DIR] [--out DIR] [--steps N] [--batch N] [--context N]
//                    [--dim N] [--heads N] [--layers N] [--llama [--kv-heads N]]
//                    [--lr X] [--eval-every N]
//                    [--threads N] [--device best|cpu|cuda] [--seed N] [--trace FILE.json]
//                    [--logdir DIR]
//   char_transformer --sample N [--out DIR] [--prompt TEXT] [--temperature X] [--seed N]
//                    [--no-cache]
// The second form needs only the saved graph and checkpoint: the vocabulary is a constant in
// the graph. Sampling runs the model with a KV cache: "prefill" runs a window from position 0
// and gives every block's keys and values, "decode" one character at the next position. When
// the context is full, the last half is prefilled again (positions are absolute: the cached
// entries cannot move), so a character sees between context/2 and context characters before
// it. --no-cache runs "predict" over the last `context` characters for every character
// instead (context times the work).
//
// Data: every fortune file, concatenated in name order; the first 90% trains, the rest
// validates. Training windows start at positions drawn by splitmix64 from --seed, so
// bench/char_transformer_torch.py trains the same model on the same batches.
#include <kiln/kiln.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <memory>
#include <optional>
#include <sstream>

using namespace kiln;

namespace {

struct Args {
  std::string data = "/usr/share/games/fortunes";
  std::string out = "out";
  int64_t steps = 4000, batch = 32, context = 128, dim = 128, heads = 4, layers = 4;
  bool llama = false;              // LLaMA's block (RMS norm, SwiGLU, rotary, grouped heads)
  int64_t kv_heads = 0;            // with llama: key-value heads (0: heads / 2, or 1)
  std::string recompute = "none";  // training blocks recomputed in the backward pass: all, products
  double lr = 2e-3, dropout = 0.1;
  int64_t eval_every = 250, eval_batches = 32;
  int threads = 0;
  uint64_t seed = 0;
  Device device = Device::best();
  int64_t sample = 0;  // > 0: sample this many characters from the saved model
  std::string prompt = "\n";
  double temperature = 0.8;
  bool cache = true;   // sample through the KV cache ("prefill"/"decode"), else "predict"
  std::string trace;   // write a Chrome trace of every step here
  std::string logdir;  // TensorBoard event files (default: <out>/logs)
};

constexpr const char* kUsage =
    "usage: char_transformer trains a GPT-style character model on Debian's fortunes, prints\n"
    "val_loss (nats/char) and a sample; or samples from the saved model.\n"
    "  char_transformer [--data DIR] [--out DIR] [--steps N] [--batch N] [--context N]\n"
    "                   [--dim N] [--heads N] [--layers N] [--lr X] [--dropout X]\n"
    "                   [--llama  (RMS norm, SwiGLU, rotary, grouped heads) [--kv-heads N]]\n"
    "                   [--recompute none|all|products  (gradient checkpointing of the blocks;\n"
    "                    products: keep the matmuls' and attention's outputs)]\n"
    "                   [--eval-every N] [--eval-batches N] [--threads N]\n"
    "                   [--device best|cpu|cuda|cuda:N] [--seed N] [--trace FILE.json]\n"
    "                   [--logdir DIR  (TensorBoard; default <out>/logs)]\n"
    "  char_transformer --sample N [--out DIR] [--prompt TEXT] [--temperature X] [--seed N]\n"
    "                   [--no-cache  (recompute the whole window per character)]\n";

Args parse(int argc, char** argv) {
  Args a;
  for (int i = 1; i < argc; ++i) {
    const std::string k = argv[i];
    auto value = [&]() -> std::string {
      if (i + 1 >= argc) throw Error(str("[args] ", k, " needs a value"));
      return argv[++i];
    };
    auto integer = [&] { return std::stoll(value()); };
    if (k == "--data")
      a.data = value();
    else if (k == "--out")
      a.out = value();
    else if (k == "--steps")
      a.steps = integer();
    else if (k == "--batch")
      a.batch = integer();
    else if (k == "--context")
      a.context = integer();
    else if (k == "--dim")
      a.dim = integer();
    else if (k == "--heads")
      a.heads = integer();
    else if (k == "--layers")
      a.layers = integer();
    else if (k == "--llama")
      a.llama = true;
    else if (k == "--recompute")
      a.recompute = value();
    else if (k == "--kv-heads")
      a.kv_heads = integer();
    else if (k == "--lr")
      a.lr = std::stod(value());
    else if (k == "--dropout")
      a.dropout = std::stod(value());
    else if (k == "--eval-every")
      a.eval_every = integer();
    else if (k == "--eval-batches")
      a.eval_batches = integer();
    else if (k == "--threads")
      a.threads = static_cast<int>(integer());
    else if (k == "--seed")
      a.seed = static_cast<uint64_t>(integer());
    else if (k == "--device") {
      const std::string d = value();
      a.device = d == "best" ? Device::best() : Device::parse(d);
    } else if (k == "--sample")
      a.sample = integer();
    else if (k == "--prompt")
      a.prompt = value();
    else if (k == "--no-cache")
      a.cache = false;
    else if (k == "--temperature")
      a.temperature = std::stod(value());
    else if (k == "--trace")
      a.trace = value();
    else if (k == "--logdir")
      a.logdir = value();
    else if (k == "--help" || k == "-h") {
      std::printf("%s", kUsage);
      std::exit(0);
    } else
      throw Error(str("[args] unknown option ", k, " (--help lists them)"));
  }
  if (a.steps < 1 || a.batch < 1 || a.context < 2 || a.eval_every < 1 || a.eval_batches < 1)
    throw Error(
        "[args] --steps, --batch, --eval-every, --eval-batches must be >= 1, --context >= 2");
  if (a.kv_heads != 0 && !a.llama) throw Error("[args] --kv-heads goes with --llama");
  if (a.recompute != "none" && a.recompute != "all" && a.recompute != "products")
    throw Error(str("[args] --recompute takes none, all or products, got '", a.recompute, "'"));
  if (a.llama && a.kv_heads == 0) a.kv_heads = a.heads % 2 == 0 ? a.heads / 2 : 1;
  return a;
}

// splitmix64: the window positions, reproduced by the PyTorch script.
struct SplitMix {
  uint64_t state;
  uint64_t next() {
    uint64_t z = (state += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
  }
};

// The corpus as vocabulary indices, and the vocabulary (the bytes present, ascending).
struct Corpus {
  std::vector<uint8_t> vocab;
  std::vector<int64_t> ids;
};

Corpus load_corpus(const std::string& dir) {
  std::vector<std::filesystem::path> files;
  for (const auto& entry : std::filesystem::directory_iterator(dir)) {
    const std::string ext = entry.path().extension().string();
    if (entry.is_regular_file() && ext != ".dat" && ext != ".u8") files.push_back(entry.path());
  }
  std::sort(files.begin(), files.end());
  if (files.empty()) throw Error(str("[data] no fortune files in ", dir));
  std::string text;
  for (const auto& f : files) {
    std::ifstream in(f, std::ios::binary);
    std::stringstream s;
    s << in.rdbuf();
    text += s.str();
  }
  Corpus c;
  std::vector<int64_t> index(256, -1);
  for (unsigned char ch : text) index[ch] = 0;
  for (int b = 0; b < 256; ++b)
    if (index[b] == 0) {
      index[b] = static_cast<int64_t>(c.vocab.size());
      c.vocab.push_back(static_cast<uint8_t>(b));
    }
  c.ids.reserve(text.size());
  for (unsigned char ch : text) c.ids.push_back(index[ch]);
  return c;
}

// `count` windows of context + 1 ids from ids[begin, end): inputs [count, T], targets [count, T].
std::pair<Tensor, Tensor> windows(const std::vector<int64_t>& ids, int64_t begin, int64_t end,
                                  int64_t count, int64_t context, SplitMix& rng) {
  Tensor x = Tensor::zeros(i64, {count, context}), y = Tensor::zeros(i64, {count, context});
  const uint64_t span = static_cast<uint64_t>(end - begin - context - 1);
  for (int64_t b = 0; b < count; ++b) {
    const int64_t start = begin + static_cast<int64_t>(rng.next() % span);
    for (int64_t t = 0; t < context; ++t) {
      x.data<int64_t>()[b * context + t] = ids[start + t];
      y.data<int64_t>()[b * context + t] = ids[start + t + 1];
    }
  }
  return {x, y};
}

void build_graph(Graph& g, const Args& a, const Corpus& corpus) {
  const int64_t vocab = static_cast<int64_t>(corpus.vocab.size()), T = a.context;
  Value ids = g.placeholder("ids", i64, {-1, T});
  Value targets = g.placeholder("targets", i64, {-1, T});
  Tensor vocab_bytes = Tensor::zeros(u8, {vocab});
  std::copy(corpus.vocab.begin(), corpus.vocab.end(), vocab_bytes.data<uint8_t>());
  Value vocab_table = g.constant(vocab_bytes, "vocab");

  nn::Embedding tokens(g, "tokens", vocab, a.dim);
  // GPT's learned positions; LLaMA's rotary embedding turns queries and keys instead.
  std::optional<nn::Embedding> positions;
  if (!a.llama) positions.emplace(g, "positions", T, a.dim);
  // The token embeddings of ids [B, n] at positions first.. (an i64 scalar, or 0 if undefined).
  auto embed = [&](const Value& step_ids, int64_t n, const Value& first) {
    if (!positions) return tokens(step_ids);
    Value at = iota(g, Shape{n}, 0, i64);
    return tokens(step_ids) + (*positions)(first.defined() ? at + first : at);
  };
  nn::Dropout embedding_dropout(g, "embedding_dropout", a.dropout);
  nn::TransformerBlock::Options options{.dropout = a.dropout, .causal = true};
  if (a.llama) {
    options.ffn_dim = (8 * a.dim / 3 + 31) / 32 * 32;
    options.activation = nn::TransformerBlock::Activation::swiglu;
    options.norm = nn::TransformerBlock::Norm::rms;
    options.bias = false;
    options.kv_heads = a.kv_heads;
    options.rotary = RotaryOptions{};
  }
  std::vector<std::unique_ptr<nn::TransformerBlock>> blocks;
  for (int64_t l = 0; l < a.layers; ++l)
    blocks.push_back(
        std::make_unique<nn::TransformerBlock>(g, str("block", l), a.dim, a.heads, options));
  std::unique_ptr<nn::Module> final_norm;
  if (a.llama)
    final_norm = std::make_unique<nn::RMSNorm>(g, "final_norm", Shape{a.dim}, 1e-5);
  else
    final_norm = std::make_unique<nn::LayerNorm>(g, "final_norm", Shape{a.dim});
  nn::Linear head(g, "head", a.dim, vocab, {.bias = !a.llama});
  auto logits_of = [&](bool training) {
    embedding_dropout.train(training);
    for (auto& b : blocks) b->train(training);
    Value h = embedding_dropout(embed(ids, T, Value()));
    for (auto& b : blocks) {
      auto block = [&](const Value& v) { return (*b)(v); };
      if (!training || a.recompute == "none")
        h = block(h);
      else
        h = recompute(block, h, a.recompute == "products" ? save_products() : RecomputePolicy{});
    }
    return head((*final_norm)(h));  // [B, T, vocab]
  };
  auto loss_of = [&](const Value& logits) {
    return cross_entropy(reshape(logits, {-1, vocab}), reshape(targets, {-1}));
  };
  Value train_loss = loss_of(logits_of(true));
  Value eval_logits = logits_of(false);
  Value eval_loss = loss_of(eval_logits);
  optim::Adam adam(
      {.lr = a.lr, .schedule = optim::Schedule::cosine(a.steps, a.lr / 10), .clip_norm = 1.0});
  Value step = adam.minimize(train_loss);
  g.add_signature({"train", {ids, targets}, {train_loss}, {step}});
  g.add_signature({"learning_rate",
                   {},
                   {optim::learning_rate(g, a.lr, optim::Schedule::cosine(a.steps, a.lr / 10),
                                         optim::global_step(g))},
                   {}});
  g.add_signature({"eval", {ids, targets}, {eval_loss}, {}});
  g.add_signature({"predict", {ids}, {eval_logits}, {}});

  // Generation through a KV cache (evaluation mode): tokens [B, n] at positions [position,
  // position + n), every block's cache in and out. "prefill" takes a whole window (padded at
  // the end: the entries written for padding lie past the prompt and are overwritten before
  // anything reads them), "decode" one token.
  Value position = g.placeholder("position", i64, {});
  std::vector<nn::KVCache> caches;
  for (auto& b : blocks) caches.push_back(b->attention.cache_placeholders(T));
  auto add_cached = [&](const std::string& name, const Value& step_ids, int64_t n) {
    Value h = embed(step_ids, n, position);
    std::vector<Value> inputs = {step_ids, position}, outputs;
    for (size_t l = 0; l < blocks.size(); ++l) {
      auto step = blocks[l]->attend_cached(h, caches[l], position);
      h = step.output;
      inputs.insert(inputs.end(), {caches[l].keys, caches[l].values});
      outputs.insert(outputs.end(), {step.cache.keys, step.cache.values});
    }
    outputs.insert(outputs.begin(), head((*final_norm)(h)));  // [B, n, vocab]
    g.add_signature({name, inputs, outputs, {}});
  };
  add_cached("prefill", g.placeholder("prefill_ids", i64, {-1, T}), T);
  add_cached("decode", g.placeholder("decode_ids", i64, {-1, 1}), 1);
  g.add_signature({"vocabulary", {}, {vocab_table}, {}});
}

// Mean validation loss over fixed windows of the validation split (the same every time).
double validate(Session& sess, const Corpus& c, const Args& a) {
  const int64_t split = static_cast<int64_t>(c.ids.size()) * 9 / 10;
  SplitMix rng{a.seed + 1};
  double total = 0;
  for (int64_t b = 0; b < a.eval_batches; ++b) {
    auto [x, y] =
        windows(c.ids, split, static_cast<int64_t>(c.ids.size()), a.batch, a.context, rng);
    total += sess.run_signature("eval", {x, y})[0].item<double>();
  }
  return total / static_cast<double>(a.eval_batches);
}

// A character drawn from logits `row` [V] at `temperature` (inverse CDF on one splitmix draw).
int64_t draw(const float* row, int64_t V, double temperature, SplitMix& rng) {
  std::vector<double> p(static_cast<size_t>(V));
  const double m = *std::max_element(row, row + V);
  double total = 0;
  for (int64_t v = 0; v < V; ++v) total += p[v] = std::exp((row[v] - m) / temperature);
  double u = static_cast<double>(rng.next() >> 11) / 9007199254740992.0 * total;
  for (int64_t v = 0; v < V; ++v)
    if ((u -= p[v]) < 0) return v;
  return V - 1;
}

// Runs the model for sampling: the next character's logits after the context so far.
class Sampler {
 public:
  Sampler(const Graph& g, Session& sess, bool cache)
      : sess_(sess), T_(g.signature("predict").inputs[0].shape()[1]), cache_(cache) {
    if (!cache_) return;
    if (!g.signatures().count("decode"))
      throw Error(
          "[sample] the saved graph has no \"decode\" signature (saved before the KV "
          "cache): sample with --no-cache, or train again");
    const Signature& decode = g.signature("decode");
    for (size_t i = 2; i < decode.inputs.size(); ++i) {  // caches [?, T, heads, depth]
      const Shape& shape = decode.inputs[i].shape();
      empty_.push_back(
          Tensor::zeros(decode.inputs[i].dtype(), Shape({1, shape[1], shape[2], shape[3]})));
    }
  }

  // Logits [V] for the character after `context`, which has grown by one character since the
  // last call (or is new).
  Tensor next(const std::vector<int64_t>& context) {
    const int64_t size = static_cast<int64_t>(context.size());
    if (!cache_) {
      const int64_t keep = std::min(size, T_);
      return logits_row(sess_.run_signature("predict", {window(context, keep)}), keep - 1);
    }
    std::vector<Tensor> outputs;
    int64_t at = 0;
    if (position_ > 0 && position_ < T_ && size == seen_ + 1) {
      std::vector<Tensor> inputs = {Tensor::from_vector<int64_t>({context.back()}, {1, 1}),
                                    Tensor::scalar<int64_t>(position_)};
      inputs.insert(inputs.end(), caches_.begin(), caches_.end());
      outputs = sess_.run_signature("decode", inputs);
      ++position_;
    } else {
      // The start, or the cache is full: prefill the last T characters (T/2 once full).
      const int64_t keep = std::min(size, position_ == 0 ? T_ : T_ / 2);
      std::vector<Tensor> inputs = {window(context, keep), Tensor::scalar<int64_t>(0)};
      inputs.insert(inputs.end(), empty_.begin(), empty_.end());
      outputs = sess_.run_signature("prefill", inputs);
      position_ = keep;
      at = keep - 1;
    }
    seen_ = size;
    caches_.assign(outputs.begin() + 1, outputs.end());
    return logits_row(outputs, at);
  }

 private:
  // The last `keep` characters of the context as ids [1, T], padded at the end.
  Tensor window(const std::vector<int64_t>& context, int64_t keep) const {
    Tensor x = Tensor::zeros(i64, {1, T_});
    std::copy(context.end() - keep, context.end(), x.data<int64_t>());
    return x;
  }
  // Row `at` of the logits [1, n, V] in outputs[0].
  static Tensor logits_row(const std::vector<Tensor>& outputs, int64_t at) {
    const int64_t V = outputs[0].shape()[2];
    Tensor row = Tensor::empty(f32, {V});
    std::copy_n(outputs[0].data<float>() + at * V, V, row.data<float>());
    return row;
  }

  Session& sess_;
  const int64_t T_;
  const bool cache_;
  std::vector<Tensor> empty_, caches_;
  int64_t position_ = 0;  // the next free cache entry
  int64_t seen_ = 0;      // context characters the cache has seen
};

// Samples `count` characters after the prompt from the saved graph and checkpoint alone.
std::string sample(const Args& a, const std::string& graph_path, const std::string& ckpt_path) {
  std::unique_ptr<Graph> g = load_graph(graph_path);
  Session sess(*g, {.device = a.device, .intra_op_threads = a.threads});
  sess.restore_checkpoint(ckpt_path);
  Tensor vocab = sess.run_signature("vocabulary", {})[0];
  std::vector<int64_t> index(256, -1);
  for (int64_t i = 0; i < vocab.numel(); ++i) index[vocab.data<uint8_t>()[i]] = i;
  std::vector<int64_t> context;
  for (unsigned char ch : a.prompt)
    if (index[ch] >= 0) context.push_back(index[ch]);
  if (context.empty()) context.push_back(0);
  SplitMix rng{a.seed + 7};
  Sampler sampler(*g, sess, a.cache);
  std::string text;
  for (int64_t n = 0; n < a.sample; ++n) {
    const Tensor row = sampler.next(context);
    const int64_t pick = draw(row.data<float>(), row.numel(), a.temperature, rng);
    context.push_back(pick);
    text.push_back(static_cast<char>(vocab.data<uint8_t>()[pick]));
  }
  return text;
}

}  // namespace

int main(int argc, char** argv) {
  try {
    const Args a = parse(argc, argv);
    const std::string graph_path = a.out + "/char_transformer.pb";
    const std::string ckpt_path = a.out + "/char_transformer.ckpt";
    if (a.sample > 0) {
      std::printf("%s%s\n", a.prompt.c_str(), sample(a, graph_path, ckpt_path).c_str());
      return 0;
    }
    std::filesystem::create_directories(a.out);
    const Corpus corpus = load_corpus(a.data);
    const int64_t split = static_cast<int64_t>(corpus.ids.size()) * 9 / 10;
    std::printf("corpus: %zu characters, vocabulary %zu; %lld train / %lld validation\n",
                corpus.ids.size(), corpus.vocab.size(), static_cast<long long>(split),
                static_cast<long long>(corpus.ids.size() - split));
    Graph g;
    build_graph(g, a, corpus);
    save_graph(g, graph_path);
    Session sess(g, {.device = a.device, .intra_op_threads = a.threads, .trace_path = a.trace});
    std::printf(
        "training on %s: %lld %s layers, dim %lld, %lld heads (%lld key-value), context %lld, "
        "batch %lld\n",
        a.device.to_string().c_str(), static_cast<long long>(a.layers),
        a.llama ? "LLaMA-style" : "GPT-style", static_cast<long long>(a.dim),
        static_cast<long long>(a.heads), static_cast<long long>(a.llama ? a.kv_heads : a.heads),
        static_cast<long long>(a.context), static_cast<long long>(a.batch));
    SummaryWriter log(a.logdir.empty() ? a.out + "/logs" : a.logdir);
    log.add_text("run/options",
                 str("steps ", a.steps, ", batch ", a.batch, ", context ", a.context, ", dim ",
                     a.dim, ", heads ", a.heads, ", layers ", a.layers, a.llama ? ", llama" : "",
                     a.llama ? str(", kv heads ", a.kv_heads) : "", ", lr ", a.lr, ", dropout ",
                     a.dropout, ", recompute ", a.recompute, ", device ", a.device),
                 0);
    log.add_graph(g);
    SplitMix rng{a.seed};
    double running = 0, val_loss = 0;
    for (int64_t s = 1; s <= a.steps; ++s) {
      auto [x, y] = windows(corpus.ids, 0, split, a.batch, a.context, rng);
      const double loss = sess.run_signature("train", {x, y})[0].item<double>();
      running = s == 1 ? loss : 0.98 * running + 0.02 * loss;
      if (s % 50 == 0 || s == a.steps) {
        log.add_scalar("train/loss", loss, s);
        log.add_scalar("train/learning_rate",
                       sess.run_signature("learning_rate", {})[0].item<double>(), s);
      }
      if (s % a.eval_every == 0 || s == a.steps) {
        val_loss = validate(sess, corpus, a);
        log.add_scalar("validation/loss", val_loss, s);
        std::printf("step %lld/%lld  train_loss %.4f  val_loss %.4f\n", static_cast<long long>(s),
                    static_cast<long long>(a.steps), running, val_loss);
        std::fflush(stdout);
      }
    }
    sess.save_checkpoint(ckpt_path);
    std::printf("saved graph %s and checkpoint %s\n", graph_path.c_str(), ckpt_path.c_str());
    std::printf("val_loss: %.3f\n", val_loss);
    Args sampling = a;
    sampling.sample = 300;
    const std::string text = sample(sampling, graph_path, ckpt_path);
    std::printf("sample:\n%s%s\n", a.prompt.c_str(), text.c_str());
    log.add_text("sample", "```\n" + a.prompt + text + "\n```", a.steps);
    return 0;
  } catch (const std::exception& e) {
    std::fflush(stdout);
    std::fprintf(stderr, "char_transformer: %s\n", e.what());
    return 1;
  }
}
