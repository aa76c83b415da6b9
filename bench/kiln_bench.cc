// Kiln's side of the benchmarks (bench/run.sh runs this and bench/torch_bench.py together).
//
//   kiln_bench CASE [--threads N]     prints "CASE <seconds per iteration> [extra]"
//
// Cases: mlp_step, mlp_memory, optimizer_step_<sgd|adam|amsgrad|adamax|nadam|radam|adagrad|
// adadelta|adafactor|muon|rmsprop|rprop|asgd|sgd_one_cycle> (by hand: one update of a 4M-element
// weight under each optimizer), matmul, dispatch, chain_fused, chain_unfused, cnn_step,
// transformer_step, llama_step, lstm_step, decode_step, decode_long_step, attention_step, gru_step,
// upsample_step, ctc_step and lbfgs_step (the last five by hand: not in run.sh; also by hand:
// stack_step, stack_recompute_step and stack_products_step, four transformer blocks trained
// without recompute segments, with them, and with segments that keep the products
// (save_products()), which print the plan's arena bytes too;
// lstm_scan_step and gru_scan_step, the LSTM and GRU steps with a sequence length unknown when the
// graph is built, and attention_step_alibi, attention_step_softcap, attention_window_step_mask and
// decode_long_step_late, the same step at position 2,000), attention_window_step, peak_flops (the
// processor's measured f32 FMA peak, for the matmul's share). Flags: --no-fusion, --no-passes (the
// graph passes a Session runs), --inter N (SessionOptions::inter_op_threads), --trace FILE (a
// Chrome trace of the runs).
#include <kiln/kiln.h>
#include <sys/resource.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <functional>
#include <memory>
#include <thread>

#if defined(__x86_64__)
#include <immintrin.h>
#endif

#include "bench/mlp_model.h"
#include "bench/nn_models.h"
#include "kiln/ops/math/blas.h"

using namespace kiln;

namespace {

double now() {
  return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count();
}

// Seconds per call of fn: the median and the best of `reps` timed calls, after `warmup` untimed
// calls and at least 0.3 s of warm-up in all (threads started at load time, such as BLAS
// workers, settle by then).
struct Timing {
  double median, best;
};
Timing time_calls(const std::function<void()>& fn, int warmup, int reps) {
  const double warm_until = now() + 0.3;
  for (int i = 0; i < warmup || now() < warm_until; ++i) fn();
  std::vector<double> t;
  for (int i = 0; i < reps; ++i) {
    double start = now();
    fn();
    t.push_back(now() - start);
  }
  std::sort(t.begin(), t.end());
  return {t[t.size() / 2], t.front()};
}

// The median seconds per call (time_calls).
double time_it(const std::function<void()>& fn, int warmup, int reps) {
  return time_calls(fn, warmup, reps).median;
}

// The MLP 784-512-512-10 training step with SGD + momentum (the case).
struct Mlp {
  Graph g;
  Value x, y, loss, train;
  explicit Mlp(SessionOptions* options = nullptr) {
    (void)options;
    x = g.placeholder("x", f32, {-1, 784});
    y = g.placeholder("y", i64, {-1});
    loss = bench::mlp_loss(g, x, y);
    train = optim::SGD({.lr = 0.01, .momentum = 0.9}).minimize(loss);
  }
};

std::pair<Tensor, Tensor> mlp_batch(int64_t batch) {
  Tensor xb = Tensor::empty(f32, {batch, 784});
  for (int64_t i = 0; i < xb.numel(); ++i)
    xb.data<float>()[i] = static_cast<float>((i * 7919) % 255) / 255.0f;
  Tensor yb = Tensor::empty(i64, {batch});
  for (int64_t i = 0; i < batch; ++i) yb.data<int64_t>()[i] = i % 10;
  return {xb, yb};
}

// Deterministic inputs in [0, 1) and labels.
Tensor ramp(const Shape& shape) {
  Tensor t = Tensor::empty(f32, shape);
  for (int64_t i = 0; i < t.numel(); ++i)
    t.data<float>()[i] = static_cast<float>((i * 7919) % 255) / 255.0f;
  return t;
}

// The CNN step of issue 12 (bench/nn_models.h), batch 64; Adam.
double cnn_step(const SessionOptions& options) {
  Graph g;
  Value x = g.placeholder("x", f32, {-1, 1, 28, 28});
  Value y = g.placeholder("y", i64, {-1});
  Value train = optim::Adam({.lr = 1e-3}).minimize(bench::cnn_loss(g, x, y));
  Session s(g, options);
  Tensor xb = ramp({64, 1, 28, 28});
  Tensor yb = Tensor::empty(i64, {64});
  for (int64_t i = 0; i < 64; ++i) yb.data<int64_t>()[i] = i % 10;
  return time_it([&] { s.run({{x, xb}, {y, yb}}, {}, {train}); }, 3, 20);
}

// A transformer block's training step (bench/nn_models.h: `loss_of`, the GPT-style block or
// the LLaMA-style one), sequence 128, batch 16; Adam.
double block_step(const SessionOptions& options, Value (*loss_of)(Graph&, const Value&)) {
  Graph g;
  Value x = g.placeholder("x", f32, {-1, 128, 256});
  Value train = optim::Adam({.lr = 1e-4}).minimize(loss_of(g, x));
  Session s(g, options);
  Tensor xb = ramp({16, 128, 256});
  return time_it([&] { s.run({{x, xb}}, {}, {train}); }, 3, 20);
}

// A training step of four of transformer_step's blocks in a row on x [16, 128, 256], each
// block a recompute segment when `segments`; `arena_bytes` gets the planned intermediate memory.
// `segments`: each block a recompute segment; `save_matmuls`: the segments keep the products.
double stack_step(const SessionOptions& options, bool segments, bool save_matmuls,
                  int64_t& arena_bytes) {
  Graph g;
  Value x = g.placeholder("x", f32, {-1, 128, 256});
  Value h = x;
  for (int l = 0; l < 4; ++l) {
    nn::TransformerBlock block(g, str("block", l), 256, 4, {.ffn_dim = 1024, .dropout = 0});
    auto run_block = [&](const Value& v) { return block(v); };
    h = segments ? recompute(run_block, h, save_matmuls ? save_products() : RecomputePolicy{})
                 : block(h);
  }
  Value train = optim::Adam({.lr = 1e-4}).minimize(mean(square(h)));
  Session s(g, options);
  const FeedList feeds{{x, ramp({16, 128, 256})}};
  arena_bytes = s.plan(feeds, {}, {train}).arena_bytes;
  return time_it([&] { s.run(feeds, {}, {train}); }, 2, 10);
}

// One token of generation through a KV cache: 4 pre-norm blocks (d 256, 4 heads, FFN 1024),
// batch 1, the token at position 200 of a 256-entry cache per block (fed in, the new cache
// fetched: the char model's sampler's way).
double decode_step(const SessionOptions& options) {
  Graph g;
  Value token = g.placeholder("token", f32, {1, 1, 256});
  Value position = g.placeholder("position", i64, {});
  std::vector<std::pair<nn::KVCache, nn::KVCache>> caches;
  Value out = bench::decode_output(
      g, token, position,
      [](int, nn::MultiHeadAttention& attention) { return attention.cache_placeholders(256); },
      &caches);
  FeedList feeds = {{token, ramp({1, 1, 256})}, {position, Tensor::scalar<int64_t>(200)}};
  std::vector<Value> fetches = {out};
  for (const auto& [fed, next] : caches) {
    feeds.emplace_back(fed.keys, ramp({1, 256, 4, 64}));
    feeds.emplace_back(fed.values, ramp({1, 256, 4, 64}));
    fetches.insert(fetches.end(), {next.keys, next.values});
  }
  Session s(g, options);
  return time_it([&] { s.run(feeds, fetches); }, 10, 200);
}

// One token through the same 4 blocks at `position_at` of 2,048-entry caches held in the
// session (variables the step writes in place: no cache crosses the session's edge), as a
// generator with a long context allocated does. The attention multiplies the position + 1
// entries written so far, so a step early in the cache costs what a short cache's does.
double decode_long_step(const SessionOptions& options, int64_t position_at) {
  Graph g;
  Value token = g.placeholder("token", f32, {1, 1, 256});
  Value position = g.placeholder("position", i64, {});
  Value out = bench::decode_output_in_variables(g, token, position, 2048);
  Session s(g, options);
  const FeedList feeds = {{token, ramp({1, 1, 256})},
                          {position, Tensor::scalar<int64_t>(position_at)}};
  return time_it([&] { s.run(feeds, {out}); }, 10, 200);
}

// An LSTM (or GRU) layer's training step (bench/nn_models.h), sequence 32, batch 32; Adam.
// `scanned`: the sequence length unknown when the graph is built (x [32, ?, 128]), so the layer
// is one recurrence op each way instead of 32 unrolled steps (lstm_scan_step, by hand).
double lstm_step(const SessionOptions& options, bool gru = false, bool scanned = false) {
  Graph g;
  Value x = g.placeholder("x", f32, scanned ? Shape{32, -1, 128} : Shape{-1, 32, 128});
  Value train =
      optim::Adam({.lr = 1e-3}).minimize(gru ? bench::gru_loss(g, x) : bench::lstm_loss(g, x));
  Session s(g, options);
  Tensor xb = ramp({32, 32, 128});
  return time_it([&] { s.run({{x, xb}}, {}, {train}); }, 3, 20);
}

// interpolate forward and backward, [16, 64, 32, 32] to 64 x 64: nearest (a broadcast) and
// bilinear (two products), the input gradients of sum(y * dy).
double upsample_step(const SessionOptions& options) {
  Graph g;
  const Shape shape{16, 64, 32, 32};
  Value x = g.placeholder("x", f32, shape), dy = g.placeholder("dy", f32, {16, 64, 64, 64});
  Value nearest = interpolate(x, {.scale_factor = {2}});
  Value bilinear = interpolate(x, {.scale_factor = {2}, .mode = InterpolateMode::linear});
  const std::vector<Value> grads = gradients(sum(mul(nearest + bilinear, dy)), {x});
  Session s(g, options);
  Tensor xb = ramp(shape), db = ramp({16, 64, 64, 64});
  return time_it([&] { s.run({{x, xb}, {dy, db}}, {nearest, bilinear, grads[0]}); }, 3, 20);
}

// CTC loss forward and backward: log_softmax of [200, 32, 32] logits (time first), targets
// [32, 40] of labels 1..31 (no two neighbours equal), input lengths 165..200, target lengths
// 30..40, PyTorch's mean; the loss and the logits' gradient (by hand, beside torch_bench.py
// ctc_step).
double ctc_step(const SessionOptions& options) {
  constexpr int64_t kT = 200, kN = 32, kC = 32, kS = 40;
  Graph g;
  Value x = g.placeholder("x", f32, {kT, kN, kC});
  std::vector<int64_t> targets, input_lengths, target_lengths;
  for (int64_t n = 0; n < kN; ++n) {
    for (int64_t i = 0; i < kS; ++i) targets.push_back(1 + (n * 7 + i * 3) % (kC - 1));
    input_lengths.push_back(kT - (n % 8) * 5);
    target_lengths.push_back(kS - n % 11);
  }
  Value loss = ctc_loss(log_softmax(x, -1), g.constant(Tensor::from_vector(targets, {kN, kS})),
                        g.constant(Tensor::from_vector(input_lengths)),
                        g.constant(Tensor::from_vector(target_lengths)));
  Value dx = gradients(loss, {x})[0];
  Session s(g, options);
  Tensor xb = ramp({kT, kN, kC});
  return time_it([&] { s.run({{x, xb}}, {loss, dx}); }, 3, 20);
}

// optim::LBFGS's step (strong Wolfe, history 10, at most 20 iterations) on a full batch: an MLP
// 64 -> 256 (tanh) -> 10 over 2,048 examples, every timed step from the same start (the variables
// and the history put back first). Each evaluation is a session run of the loss and gradients,
// then the host's work in f64 (the two-loop recursion, the line search). Beside torch_bench.py
// lbfgs_step, which starts from the same values; `evaluations` gets the count of one step.
double lbfgs_step(const SessionOptions& options, int64_t& evaluations) {
  constexpr int64_t kExamples = 2048, kIn = 64, kHidden = 256, kClasses = 10;
  Graph g;
  Value x = g.placeholder("x", f32, {kExamples, kIn});
  Value y = g.placeholder("y", i64, {kExamples});
  Value w1 = g.variable("w1", {kIn, kHidden}, init::zeros());
  Value b1 = g.variable("b1", {kHidden}, init::zeros());
  Value w2 = g.variable("w2", {kHidden, kClasses}, init::zeros());
  Value b2 = g.variable("b2", {kClasses}, init::zeros());
  Value loss = cross_entropy(matmul(tanh(matmul(x, w1) + b1), w2) + b2, y);
  optim::LBFGS lbfgs(
      loss, {},
      {.max_iter = 20, .history_size = 10, .line_search = optim::LineSearch::strong_wolfe});
  Session s(g, options);
  s.initialize_variables();
  auto centered = [](const Shape& shape, float scale) {  // (ramp - 0.5) scale, as torch_bench's
    Tensor t = ramp(shape);
    for (float& v : t.data_span<float>()) v = (v - 0.5f) * scale;
    return t;
  };
  s.set_variable(w1, centered({kIn, kHidden}, 0.25f));
  s.set_variable(w2, centered({kHidden, kClasses}, 0.25f));
  std::vector<int64_t> labels(kExamples);
  for (int64_t i = 0; i < kExamples; ++i) labels[static_cast<size_t>(i)] = i * 7 % kClasses;
  const FeedList feeds{{x, centered({kExamples, kIn}, 1)},
                       {y, Tensor::from_vector<int64_t>(labels, {kExamples})}};
  const std::map<std::string, Tensor> start = s.variable_values();
  const std::map<std::string, Tensor> fresh = lbfgs.state();
  const double seconds = time_it(
      [&] {
        s.set_variables(start);
        lbfgs.load_state(fresh);
        lbfgs.step(s, feeds);
      },
      1, 10);
  evaluations = lbfgs.evaluations();
  return seconds;
}

// One training step of a [4096, 1024] f32 weight w on sum((w - 1)^2) under `optimizer`,
// torch.optim's defaults: the update ops' memory traffic, 4M elements (by hand, beside
// torch_bench.py optimizer_step_<name>). The optimum is 1, not 0: weights shrinking to 0 would
// become subnormal and time the processor's slow path. Zero for an unknown name.
double optimizer_step(const SessionOptions& options, const std::string& optimizer) {
  std::unique_ptr<optim::Optimizer> make;
  if (optimizer == "sgd") make = std::make_unique<optim::SGD>(optim::SGDOptions{.lr = 1e-3});
  if (optimizer == "adam") make = std::make_unique<optim::Adam>();
  if (optimizer == "amsgrad")
    make = std::make_unique<optim::Adam>(optim::AdamOptions{.amsgrad = true});
  if (optimizer == "adamax") make = std::make_unique<optim::Adamax>();
  if (optimizer == "nadam") make = std::make_unique<optim::NAdam>();
  if (optimizer == "radam") make = std::make_unique<optim::RAdam>();
  if (optimizer == "adagrad") make = std::make_unique<optim::Adagrad>();
  if (optimizer == "adadelta") make = std::make_unique<optim::Adadelta>();
  if (optimizer == "muon") make = std::make_unique<optim::Muon>();
  if (optimizer == "adafactor") make = std::make_unique<optim::Adafactor>();
  if (optimizer == "rmsprop") make = std::make_unique<optim::RMSProp>();
  if (optimizer == "rprop") make = std::make_unique<optim::Rprop>();
  if (optimizer == "asgd") make = std::make_unique<optim::ASGD>();
  if (optimizer == "sgd_one_cycle")  // this step's momentum an input of the update
    make = std::make_unique<optim::SGD>(
        optim::SGDOptions{.lr = 1e-3, .schedule = optim::Schedule::one_cycle(1000)});
  if (!make) return 0;
  Graph g;
  Value w = g.variable("w", {4096, 1024}, init::uniform(-1, 1, 1));
  Value train = make->minimize(sum(square(w - 1.0)));
  Session s(g, options);
  return time_it([&] { s.run({}, {}, {train}); }, 3, 20);
}

// The transformer step's attention alone, forward and backward: causal, [16, 128, 4, 64] in
// layout bthd (the heads of the block's projections), the gradients of sum(out * dout).
// Causal attention forward and backward, [16, 128, 4, 64] in bthd; `variant` "alibi" adds an
// ALiBi bias [4, 128, 128], "softcap" caps the scores at 30: the per-row paths those take in
// place of the f32 tiles (not in run.sh: a comparison of Kiln's own paths).
double attention_step(const SessionOptions& options, const std::string& variant = "") {
  Graph g;
  const Shape shape{16, 128, 4, 64};
  Value q = g.placeholder("q", f32, shape), k = g.placeholder("k", f32, shape);
  Value v = g.placeholder("v", f32, shape), dout = g.placeholder("dout", f32, shape);
  Value out = scaled_dot_product_attention(
      q, k, v,
      {.mask = variant == "alibi" ? alibi_bias(g, 4, 128, 128) : Value(),
       .causal = true,
       .softcap = variant == "softcap" ? 30.0 : 0.0,
       .layout = "bthd"});
  const std::vector<Value> grads = gradients(sum(mul(out, dout)), {q, k, v});
  Session s(g, options);
  Tensor qb = ramp(shape), kb = ramp(shape), vb = ramp(shape), db = ramp(shape);
  return time_it([&] { s.run({{q, qb}, {k, kb}, {v, vb}, {dout, db}}, grads); }, 3, 50);
}

// Sliding-window attention forward and backward, Mistral's shape of it scaled down: causal,
// window 256 over [2, 2048, 4, 64] in bthd. `as_mask` gives the window as the bool mask it
// equals, which the kernels compute in full (a plain causal pass): the work the window's own
// attribute skips (not in run.sh: a comparison of Kiln's own paths).
double attention_window_step(const SessionOptions& options, bool as_mask) {
  constexpr int64_t kLength = 2048, kWindow = 256;
  Graph g;
  const Shape shape{2, kLength, 4, 64};
  Value q = g.placeholder("q", f32, shape), k = g.placeholder("k", f32, shape);
  Value v = g.placeholder("v", f32, shape), dout = g.placeholder("dout", f32, shape);
  AttentionOptions attention{.causal = true, .layout = "bthd"};
  if (as_mask)
    attention.mask = greater(iota(g, Shape{1, 1, 1, kLength}, 3, i64),
                             iota(g, Shape{1, 1, kLength, 1}, 2, i64) - double(kWindow));
  else
    attention.window = kWindow;
  Value out = scaled_dot_product_attention(q, k, v, attention);
  const std::vector<Value> grads = gradients(sum(mul(out, dout)), {q, k, v});
  Session s(g, options);
  Tensor qb = ramp(shape), kb = ramp(shape), vb = ramp(shape), db = ramp(shape);
  return time_it([&] { s.run({{q, qb}, {k, kb}, {v, vb}, {dout, db}}, grads); }, 2, 10);
}

long peak_rss_kib() {
  rusage usage{};
  getrusage(RUSAGE_SELF, &usage);
  return usage.ru_maxrss;
}

// ---- The processor's peak: register-only FMA chains, the most its FMA units can issue.
// Twelve independent accumulators per thread cover the FMA latency (4 cycles) on two pipes;
// each FMA is 2 flops per lane. Compiled for AVX-512 and AVX2 whatever -march says, and chosen
// by what the processor reports, so a portable build measures the same peak.
#if defined(__x86_64__)
constexpr int kChains = 12;

// One function per ISA (a target attribute does not reach into lambdas or templates it calls).
#define KILN_FMA_CHAINS(V, SET, FMA)                                                     \
  V acc[kChains];                                                                        \
  for (int c = 0; c < kChains; ++c) acc[c] = SET(1.0f + 0.001f * static_cast<float>(c)); \
  const V a = SET(0.9999999f), b = SET(1e-7f);                                           \
  for (int64_t i = 0; i < iterations; ++i)                                               \
    for (int c = 0; c < kChains; ++c) acc[c] = FMA(acc[c], a, b);                        \
  float out = 0; /* every chain feeds the result, so none is optimized away */           \
  for (int c = 0; c < kChains; ++c) out += reinterpret_cast<const float*>(&acc[c])[0];   \
  return out;

__attribute__((target("avx512f"))) float fma_avx512(int64_t iterations) {
  KILN_FMA_CHAINS(__m512, _mm512_set1_ps, _mm512_fmadd_ps)
}
__attribute__((target("avx2,fma"))) float fma_avx2(int64_t iterations) {
  KILN_FMA_CHAINS(__m256, _mm256_set1_ps, _mm256_fmadd_ps)
}
#undef KILN_FMA_CHAINS
#endif

// GFLOP/s of `threads` threads each running FMA chains (best of 5 rounds); lanes: f32 per vector.
double peak_gflops(int threads, int* lanes) {
#if defined(__x86_64__)
  const bool avx512 = __builtin_cpu_supports("avx512f");
  if (!avx512 && !__builtin_cpu_supports("fma")) return 0;
  *lanes = avx512 ? 16 : 8;
  const int64_t iterations = 20'000'000;
  double best = 0;
  for (int round = 0; round < 5; ++round) {
    std::vector<std::thread> pool;
    std::vector<float> sink(static_cast<size_t>(threads));
    const double start = now();
    for (int t = 0; t < threads; ++t)
      pool.emplace_back([&, t] {
        sink[static_cast<size_t>(t)] = avx512 ? fma_avx512(iterations) : fma_avx2(iterations);
      });
    for (std::thread& th : pool) th.join();
    const double seconds = now() - start;
    const double flops = 2.0 * kChains * *lanes * static_cast<double>(iterations) * threads;
    best = std::max(best, flops / seconds / 1e9);
    if (sink[0] == 12345.0f) std::printf(" ");  // keep the results observable
  }
  return best;
#else
  (void)threads;
  *lanes = 0;
  return 0;
#endif
}

}  // namespace

int main(int argc, char** argv) {
  if (argc < 2) {
    std::fprintf(stderr, "usage: kiln_bench CASE [--threads N] [--trace FILE]\n");
    return 2;
  }
  std::string name = argv[1];
  int threads = 2;
  for (int i = 2; i + 1 < argc; ++i)
    if (std::string(argv[i]) == "--threads") threads = std::atoi(argv[i + 1]);
  SessionOptions options{.intra_op_threads = threads};
  for (int i = 2; i < argc; ++i) {
    std::string flag = argv[i];
    if (flag == "--no-fusion") options.passes.elementwise_fusion = false;
    if (flag == "--no-passes")
      options.passes = {.constant_folding = false,
                        .common_subexpression_elimination = false,
                        .algebraic_simplification = false,
                        .product_sum_merging = false,
                        .matmul_epilogue = false,
                        .elementwise_fusion = false,
                        .dead_code_elimination = false};
    if (flag == "--trace" && i + 1 < argc) options.trace_path = argv[i + 1];  // Chrome trace
    if (flag == "--inter" && i + 1 < argc) options.inter_op_threads = std::atoi(argv[i + 1]);
  }
  if (name == "chain_unfused") options.passes.elementwise_fusion = false;

  if (name == "mlp_step" || name == "mlp_memory") {
    const long before = peak_rss_kib();  // the process before the model: what the step adds
    Mlp m;
    Session s(m.g, options);
    const std::pair<Tensor, Tensor> batch = mlp_batch(name == "mlp_step" ? 128 : 1024);
    const Tensor &xb = batch.first, &yb = batch.second;  // captured below: not a binding
    auto step = [&] { s.run({{m.x, xb}, {m.y, yb}}, {}, {m.train}); };
    double t = time_it(step, 10, name == "mlp_step" ? 200 : 20);
    std::printf("%s %.9f peak_rss_kib=%ld growth_kib=%ld\n", name.c_str(), t, peak_rss_kib(),
                peak_rss_kib() - before);
  } else if (name == "matmul") {
    const int n = 1024;
    Tensor a = Tensor::full(f32, {n, n}, 0.5), b = Tensor::full(f32, {n, n}, 0.25);
    Graph g;
    Value pa = g.placeholder("a", f32, {n, n}), pb = g.placeholder("b", f32, {n, n});
    Value c = matmul(pa, pb);
    Session s(g, options);
    // The best call too: the share of the processor's peak compares it with peak_flops, which
    // is itself the best of its rounds.
    const Timing t = time_calls([&] { s.run({{pa, a}, {pb, b}}, {c}); }, 3, 20);
    const double flop = 2.0 * n * n * n;
    std::printf("%s %.9f gflops=%.1f best_gflops=%.1f library=%s\n", name.c_str(), t.median,
                flop / t.median / 1e9, flop / t.best / 1e9,
                ops::f32_gemm_name(ops::f32_gemm_library()));
  } else if (name == "dispatch") {
    // 1,500 tiny ops that do not fuse: sum over a size-1 axis between reshapes.
    Graph g;
    Value x = g.placeholder("x", f32, {4});
    Value v = x;
    for (int i = 0; i < 500; ++i) v = reshape(sum(reshape(v, {4, 1}), {1}), {4});
    Session s(g, options);
    Tensor in = Tensor::full(f32, {4}, 1.0);
    double t = time_it([&] { s.run({{x, in}}, {v}); }, 20, 200);
    // Per executed step: the passes (reshape pairs folded away) leave fewer steps than nodes.
    const int nodes = g.num_nodes() - 1;  // all but the placeholder
    const size_t steps = s.plan({{x, in}}, {v}).steps.size();
    std::printf("dispatch %.9f per_step_us=%.3f steps=%zu nodes=%d\n", t, t / steps * 1e6, steps,
                nodes);
  } else if (name == "chain_fused" || name == "chain_unfused") {
    const int64_t n = 16 << 20;
    Graph g;
    Value x = g.placeholder("x", f32, {n});
    Value v = x;
    // 8 cheap elementwise ops (mul add abs sub relu mul add neg): unfused, the chain is bound
    // by memory traffic, which is what fusion removes.
    v = -(relu(abs(v * 1.5 + 0.25) - 0.1) * 0.9 + 1.0);
    Session s(g, options);
    Tensor in = Tensor::full(f32, {n}, 0.1);
    double t = time_it([&] { s.run({{x, in}}, {v}); }, 2, 10);
    std::printf("%s %.9f gbps=%.1f\n", name.c_str(), t, 2.0 * n * 4 / t / 1e9);
  } else if (name == "peak_flops") {
    int lanes = 0;
    const double gflops = peak_gflops(threads, &lanes);
    std::printf("peak_flops %.9f gflops=%.1f lanes=%d threads=%d\n", gflops > 0 ? 1 / gflops : 0.0,
                gflops, lanes, threads);
  } else if (name == "cnn_step") {
    std::printf("cnn_step %.9f\n", cnn_step(options));
  } else if (name == "attention_step") {
    std::printf("attention_step %.9f\n", attention_step(options));
  } else if (name == "attention_window_step" || name == "attention_window_step_mask") {
    std::printf("%s %.9f\n", name.c_str(),
                attention_window_step(options, name == "attention_window_step_mask"));
  } else if (name == "attention_step_alibi" || name == "attention_step_softcap") {
    std::printf("%s %.9f\n", name.c_str(), attention_step(options, name.substr(15)));
  } else if (name == "lstm_step") {
    std::printf("lstm_step %.9f\n", lstm_step(options));
  } else if (name == "upsample_step") {
    std::printf("upsample_step %.9f\n", upsample_step(options));
  } else if (name == "lstm_scan_step") {
    std::printf("lstm_scan_step %.9f\n", lstm_step(options, /*gru=*/false, /*scanned=*/true));
  } else if (name == "gru_scan_step") {
    std::printf("gru_scan_step %.9f\n", lstm_step(options, /*gru=*/true, /*scanned=*/true));
  } else if (name.rfind("optimizer_step_", 0) == 0) {
    const double seconds = optimizer_step(options, name.substr(15));
    if (seconds == 0) {
      std::fprintf(stderr, "kiln_bench: unknown case %s\n", name.c_str());
      return 2;
    }
    std::printf("%s %.9f\n", name.c_str(), seconds);
  } else if (name == "stack_step" || name == "stack_recompute_step" ||
             name == "stack_products_step") {
    int64_t arena_bytes = 0;
    const double seconds =
        stack_step(options, name != "stack_step", name == "stack_products_step", arena_bytes);
    std::printf("%s %.9f arena_mib=%.1f\n", name.c_str(), seconds,
                static_cast<double>(arena_bytes) / (1 << 20));
  } else if (name == "lbfgs_step") {
    int64_t evaluations = 0;
    const double seconds = lbfgs_step(options, evaluations);
    std::printf("lbfgs_step %.9f evaluations=%lld\n", seconds, static_cast<long long>(evaluations));
  } else if (name == "ctc_step") {
    std::printf("ctc_step %.9f\n", ctc_step(options));
  } else if (name == "gru_step") {
    std::printf("gru_step %.9f\n", lstm_step(options, /*gru=*/true));
  } else if (name == "decode_step") {
    std::printf("decode_step %.9f\n", decode_step(options));
  } else if (name == "decode_long_step") {
    std::printf("decode_long_step %.9f\n", decode_long_step(options, 100));
  } else if (name == "decode_long_step_late") {
    std::printf("decode_long_step_late %.9f\n", decode_long_step(options, 2000));
  } else if (name == "transformer_step") {
    std::printf("transformer_step %.9f\n", block_step(options, bench::transformer_loss));
  } else if (name == "llama_step") {
    std::printf("llama_step %.9f\n", block_step(options, bench::llama_loss));
  } else {
    std::fprintf(stderr, "kiln_bench: unknown case %s\n", name.c_str());
    return 2;
  }
  return 0;
}
