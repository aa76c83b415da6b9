// Kiln's side of the GPU benchmarks (tools/gpu-check runs it beside bench/torch_gpu_bench.py).
//
//   kiln_gpu_bench CASE     prints "CASE <seconds per iteration> [key=value ...]"
//
// Cases:
//   matmul_bf16     C = A B, bf16 8192^3 (operands are variables, C an intermediate)
//   chain_fused     an 8-op elementwise chain over 256M f32 (one generated kernel), with the
//                   bandwidth it reaches (x read once, y written once)
//   mlp_step        one training step of the 784-256-128-10 MLP with Adam, batch 128, the batch
//                   fed from the host and the loss fetched; add --graphs for CUDA Graphs
//   cnn_step        the CNN of bench/nn_models.h, batch 64, Adam, as mlp_step (--graphs too;
//                   --tf32: SessionOptions::allow_tf32, f32 convolutions and products in TF32;
//                   --nondeterministic: SessionOptions::deterministic off, cuDNN's first choice
//                   of algorithm whatever its determinism, as PyTorch's default)
//   attention_bf16  fused attention forward + backward, bf16, [4, 16, 2048, 64], causal
//   llama_step      the CPU benchmark's LLaMA-style block (RMS norm, SwiGLU, rotary, 2 of 4
//                   heads for keys and values) training step, f32, batch 16 of 128 x 256 held
//                   on the device, Adam (--graphs too)
//   decode_step     one token through 4 blocks with KV caches held on the device (--graphs too)
//   decode_long_step  the same at position 100 of 2,048-entry caches
// Each iteration is a Session::run, so it includes the host round trip (launch and sync).
// KILN_BENCH_STEPS=N: 2 warm-up iterations and N timed ones (for a profiler); KILN_BENCH_TRACE:
// see gpu_options.
#include <kiln/kiln.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <random>

#include "bench/nn_models.h"

using namespace kiln;

namespace {

double now() {
  return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count();
}

// A case's flags: --graphs (CUDA Graphs), --tf32 (SessionOptions::allow_tf32),
// --nondeterministic (SessionOptions::deterministic off).
struct Flags {
  bool graphs = false, tf32 = false, nondeterministic = false;
  /// What the printed case name gets: "_graphs", "_tf32", "_nondeterministic" (in that order)
  /// or nothing.
  std::string suffix() const {
    return str(graphs ? "_graphs" : "", tf32 ? "_tf32" : "",
               nondeterministic ? "_nondeterministic" : "");
  }
};

// The sessions' options: on GPU 0, with the case's flags; with KILN_BENCH_TRACE=PATH, every
// run also times its kernels and the session writes them to PATH as a Chrome trace (a
// diagnosis: the timing printed then includes the tracing).
SessionOptions gpu_options(const Flags& flags) {
  const char* trace = std::getenv("KILN_BENCH_TRACE");
  return {.device = Device::cuda(0),
          .cuda_graphs = flags.graphs,
          .allow_tf32 = flags.tf32,
          .deterministic = !flags.nondeterministic,
          .trace_path = trace ? trace : ""};
}

// Median seconds per call over `reps` calls after `warmup` calls. KILN_BENCH_STEPS=N makes
// that 2 and N (under a profiler, which slows every kernel).
double time_it(const std::function<void()>& fn, int warmup, int reps) {
  if (const char* steps = std::getenv("KILN_BENCH_STEPS")) {
    warmup = 2;
    reps = std::max(1, std::atoi(steps));
  }
  for (int i = 0; i < warmup; ++i) fn();
  std::vector<double> t;
  for (int i = 0; i < reps; ++i) {
    const double start = now();
    fn();
    t.push_back(now() - start);
  }
  std::sort(t.begin(), t.end());
  return t[t.size() / 2];
}

int matmul_bf16(const Flags& flags) {
  constexpr int64_t n = 8192;
  Graph g;
  // Random operands drawn on the GPU (never zeros: they would time faster than real data).
  Value a = g.variable("a", {n, n}, init::zeros(), bf16);
  Value b = g.variable("b", {n, n}, init::zeros(), bf16);
  Value fill = group(g, {assign(a, random_uniform(g, {n, n}, -1, 1, 1, bf16)),
                         assign(b, random_uniform(g, {n, n}, -1, 1, 2, bf16))});
  Value c = matmul(a, b);
  Session s(g, gpu_options(flags));
  s.run({}, {}, {fill});
  const double t = time_it([&] { s.run({}, {}, {c}); }, 3, 20);
  std::printf("matmul_bf16 %.6e tflops=%.1f\n", t, 2.0 * n * n * n / t / 1e12);
  return 0;
}

int chain_fused(const Flags& flags) {
  constexpr int64_t n = int64_t{1} << 28;  // 1 GiB in, 1 GiB out: launch and sync costs stay small
  Graph g;
  Value x = g.variable("x", {n}, init::zeros());
  Value fill = assign(x, random_uniform(g, {n}, -1, 1, 3));
  // The CPU benchmark's chain: 8 ops (mul add abs sub relu mul add neg), one fused kernel.
  Value y = -(relu(abs(x * 1.5 + 0.25) - 0.1) * 0.9 + 1.0);
  Session s(g, gpu_options(flags));
  s.run({}, {}, {fill});
  const Plan& plan = s.plan({}, {}, {y});
  int fused = 0;
  for (const PlanStep& step : plan.steps)
    fused += plan.graph->node(step.node).op_name() == "fused_elementwise";
  const double t = time_it([&] { s.run({}, {}, {y}); }, 3, 30);
  const double bytes = 2.0 * n * sizeof(float);  // x read once, y written once
  std::printf("chain_fused%s %.6e gbps=%.1f fused_kernels=%d steps=%zu\n", flags.suffix().c_str(),
              t, bytes / t / 1e9, fused, plan.steps.size());
  return 0;
}

int mlp_step(const Flags& flags) {
  constexpr int64_t batch = 128;
  Graph g;
  Value x = g.placeholder("x", f32, {batch, 784});
  Value y = g.placeholder("y", i64, {batch});
  auto dense = [&](const std::string& name, Value in, int64_t units, int64_t seed) {
    NameScope scope(g, name);
    Value w = g.variable("w", {in.shape()[1], units}, init::he_normal(seed));
    return matmul(in, w) + g.variable("b", {units}, init::zeros());
  };
  Value logits = dense("l3", relu(dense("l2", relu(dense("l1", x, 256, 1)), 128, 2)), 10, 3);
  Value loss = mean(softmax_cross_entropy(logits, y));
  Value train = optim::Adam({.lr = 1e-3}).minimize(loss);
  Session s(g, gpu_options(flags));
  std::mt19937 rng(0);
  std::uniform_real_distribution<float> dist(0, 1);
  Tensor images = Tensor::empty(f32, {batch, 784});
  Tensor labels = Tensor::empty(i64, {batch});
  for (int64_t i = 0; i < images.numel(); ++i) images.data<float>()[i] = dist(rng);
  for (int64_t i = 0; i < batch; ++i) labels.data<int64_t>()[i] = static_cast<int64_t>(rng() % 10);
  double last = 0;
  const double t = time_it(
      [&] {
        last = s.run({{x, images}, {y, labels}}, {loss}, {train})[0].item<double>();
      },
      20, 300);
  std::printf("mlp_step%s %.6e loss=%.4f replays=%lld\n", flags.suffix().c_str(), t, last,
              static_cast<long long>(s.graph_replays()));
  return 0;
}

int cnn_step(const Flags& flags) {
  constexpr int64_t batch = 64;
  Graph g;
  Value x = g.placeholder("x", f32, {batch, 1, 28, 28});
  Value y = g.placeholder("y", i64, {batch});
  Value loss = bench::cnn_loss(g, x, y);
  Value train = optim::Adam({.lr = 1e-3}).minimize(loss);
  Session s(g, gpu_options(flags));
  std::mt19937 rng(0);
  std::uniform_real_distribution<float> dist(0, 1);
  Tensor images = Tensor::empty(f32, {batch, 1, 28, 28});
  Tensor labels = Tensor::empty(i64, {batch});
  for (int64_t i = 0; i < images.numel(); ++i) images.data<float>()[i] = dist(rng);
  for (int64_t i = 0; i < batch; ++i) labels.data<int64_t>()[i] = static_cast<int64_t>(rng() % 10);
  double last = 0;
  const double t = time_it(
      [&] {
        last = s.run({{x, images}, {y, labels}}, {loss}, {train})[0].item<double>();
      },
      20, 200);
  std::printf("cnn_step%s %.6e loss=%.4f replays=%lld\n", flags.suffix().c_str(), t, last,
              static_cast<long long>(s.graph_replays()));
  return 0;
}

// Forward and backward of attention at sequence 2,048: the gradients of sum(out * r) with
// respect to q, k and v, all bf16 on the GPU.
int attention_bf16(const Flags& flags) {
  const Shape shape{4, 16, 2048, 64};
  Graph g;
  std::vector<Value> qkv;
  std::vector<Value> fills;
  for (int i = 0; i < 3; ++i) {
    qkv.push_back(g.variable(str("qkv", i), shape, init::zeros(), bf16));
    fills.push_back(assign(qkv.back(), random_uniform(g, shape, -1, 1, 10 + i, bf16)));
  }
  Value r = g.variable("r", shape, init::zeros(), bf16);
  fills.push_back(assign(r, random_uniform(g, shape, -1, 1, 20, bf16)));
  Value out = scaled_dot_product_attention(qkv[0], qkv[1], qkv[2], {.causal = true});
  std::vector<Value> grads = gradients(sum(cast(out * r, f32)), qkv);
  Session s(g, gpu_options(flags));
  s.run({}, {}, {group(g, fills)});
  Value all = group(g, grads);
  const double t = time_it([&] { s.run({}, {}, {all}); }, 3, 20);
  // Causal: half the 4 B H T^2 D products of forward (2) and backward (5).
  const double flops = 0.5 * 7 * 2.0 * 4 * 16 * 2048.0 * 2048.0 * 64;
  std::printf("attention_bf16%s %.6e tflops=%.1f\n", flags.suffix().c_str(), t, flops / t / 1e12);
  return 0;
}

// The LLaMA-style block's training step (bench/nn_models.h): x [16, 128, 256] in a variable (on
// the device: nothing crosses to the host but the loss).
int llama_step(const Flags& flags) {
  Graph g;
  Value x = g.variable("x", {16, 128, 256}, init::uniform(-1, 1, 50), f32, /*trainable=*/false);
  Value loss = bench::llama_loss(g, x);
  Value train = optim::Adam({.lr = 1e-4}).minimize(loss);
  Session s(g, gpu_options(flags));
  double last = 0;
  const double t = time_it([&] { last = s.run({}, {loss}, {train})[0].item<double>(); }, 5, 50);
  std::printf("llama_step%s %.6e loss=%.6f replays=%lld\n", flags.suffix().c_str(), t, last,
              static_cast<long long>(s.graph_replays()));
  return 0;
}

// One token of generation through 4 pre-norm blocks (d 256, 4 heads, FFN 1024; the CPU
// benchmark's decode_step), batch 1, at position 200 of 256-entry caches held in the session
// (variables, written in place by the step: nothing crosses to the host but the output);
// decode_long_step at position 100 of 2,048-entry caches. The position is fed, so --graphs
// replays one CUDA Graph for any position.
int decode_step(const Flags& flags, int64_t length = 256, int64_t position_at = 200,
                const char* name = "decode_step") {
  Graph g;
  Value token = g.placeholder("token", f32, {1, 1, 256});
  Value position = g.placeholder("position", i64, {});
  Value h = bench::decode_output_in_variables(g, token, position, length);
  Session s(g, gpu_options(flags));
  const FeedList feeds = {{token, Tensor::full(f32, {1, 1, 256}, 0.5)},
                          {position, Tensor::scalar<int64_t>(position_at)}};
  const double t = time_it([&] { s.run(feeds, {h}); }, 20, 300);
  std::printf("%s%s %.6e replays=%lld\n", name, flags.suffix().c_str(), t,
              static_cast<long long>(s.graph_replays()));
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  if (argc < 2) {
    std::fprintf(stderr,
                 "usage: kiln_gpu_bench matmul_bf16|chain_fused|mlp_step|cnn_step|attention_bf16|"
                 "llama_step|decode_step|decode_long_step "
                 "[--graphs] [--tf32] [--nondeterministic]\n");
    return 2;
  }
  const std::string which = argv[1];
  Flags flags;
  for (int i = 2; i < argc; ++i) {
    if (std::strcmp(argv[i], "--graphs") == 0) {
      flags.graphs = true;
    } else if (std::strcmp(argv[i], "--tf32") == 0) {
      flags.tf32 = true;
    } else if (std::strcmp(argv[i], "--nondeterministic") == 0) {
      flags.nondeterministic = true;
    } else {
      std::fprintf(stderr, "kiln_gpu_bench: unknown flag %s\n", argv[i]);
      return 2;
    }
  }
  try {
    if (which == "matmul_bf16") return matmul_bf16(flags);
    if (which == "chain_fused") return chain_fused(flags);
    if (which == "mlp_step") return mlp_step(flags);
    if (which == "cnn_step") return cnn_step(flags);
    if (which == "attention_bf16") return attention_bf16(flags);
    if (which == "llama_step") return llama_step(flags);
    if (which == "decode_step") return decode_step(flags);
    if (which == "decode_long_step") return decode_step(flags, 2048, 100, "decode_long_step");
    std::fprintf(stderr, "kiln_gpu_bench: unknown case %s\n", which.c_str());
    return 2;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "kiln_gpu_bench %s: %s\n", which.c_str(), e.what());
    return 1;
  }
}
