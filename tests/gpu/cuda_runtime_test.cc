// The CUDA executor (CTest label `gpu`): training against the CPU, optimizers, streams under
// stress, CUDA Graph replay, checkpoints, and the errors a user can hit on a GPU.
#include <fstream>

#include "cases/op_cases.h"
#include "gpu_test_util.h"

namespace kiln {
namespace {

// A small MLP with `optimizer`; returns the train target and the loss.
struct Mlp {
  Graph g;
  Value x, y, loss, train;
};

std::unique_ptr<Mlp> make_mlp(const std::function<Value(const Value&)>& minimize) {
  auto m = std::make_unique<Mlp>();
  Graph& g = m->g;
  m->x = g.placeholder("x", f32, {-1, 20});
  m->y = g.placeholder("y", i64, {-1});
  Value w1 = g.variable("w1", {20, 32}, init::he_normal(1));
  Value b1 = g.variable("b1", {32}, init::uniform(-0.1, 0.1, 2));
  Value w2 = g.variable("w2", {32, 5}, init::glorot_uniform(3));
  Value logits = matmul(gelu(matmul(m->x, w1) + b1), w2);
  m->loss = mean(softmax_cross_entropy(logits, m->y));
  m->train = minimize(m->loss);
  return m;
}

std::pair<Tensor, Tensor> batch(int step) {
  std::mt19937 rng(static_cast<uint32_t>(step));
  std::uniform_real_distribution<float> dist(-1, 1);
  Tensor x = Tensor::empty(f32, {16, 20});
  Tensor y = Tensor::empty(i64, {16});
  for (int64_t i = 0; i < x.numel(); ++i) x.data<float>()[i] = dist(rng);
  for (int64_t i = 0; i < 16; ++i) y.data<int64_t>()[i] = static_cast<int64_t>(rng() % 5);
  return {x, y};
}

// Losses of `steps` training steps and the final variables.
std::pair<std::vector<double>, std::vector<Tensor>> train(Mlp& m, SessionOptions options,
                                                          int steps) {
  Session s(m.g, options);
  std::vector<double> losses;
  for (int i = 0; i < steps; ++i) {
    auto [x, y] = batch(i);
    losses.push_back(s.run({{m.x, x}, {m.y, y}}, {m.loss}, {m.train})[0].item<double>());
  }
  std::vector<Tensor> vars;
  for (const char* name : {"w1", "b1", "w2"}) vars.push_back(s.variable_value(m.g.value(name)));
  if (options.cuda_graphs) {
    EXPECT_GE(s.graph_replays(), steps - 2);
  }
  return {losses, vars};
}

TEST(CudaRuntime, EveryOptimizerTrainsLikeTheCpu) {
  KILN_REQUIRE_GPU();
  std::vector<std::pair<std::string, std::function<Value(const Value&)>>> optimizers = {
      {"sgd", [](const Value& l) { return optim::SGD({.lr = 0.1}).minimize(l); }},
      {"sgd_nesterov",
       [](const Value& l) {
         return optim::SGD({.lr = 0.05, .momentum = 0.9, .nesterov = true, .weight_decay = 1e-3})
             .minimize(l);
       }},
      {"adam", [](const Value& l) { return optim::Adam({.lr = 1e-2}).minimize(l); }},
      {"adamw", [](const Value& l) { return optim::AdamW({.lr = 1e-2}).minimize(l); }},
      {"rmsprop", [](const Value& l) { return optim::RMSProp({.lr = 1e-3}).minimize(l); }},
      {"adadelta", [](const Value& l) { return optim::Adadelta({.lr = 0.5}).minimize(l); }},
      {"adafactor", [](const Value& l) { return optim::Adafactor({.lr = 1e-2}).minimize(l); }},
      {"sparse_adam", [](const Value& l) { return optim::SparseAdam({.lr = 1e-2}).minimize(l); }},
  };
  for (const auto& [name, minimize] : optimizers) {
    auto cpu = make_mlp(minimize);
    auto gpu = make_mlp(minimize);
    auto [cpu_losses, cpu_vars] = train(*cpu, {.device = Device::cpu()}, 6);
    auto [gpu_losses, gpu_vars] = train(*gpu, {.device = Device::cuda(0)}, 6);
    for (size_t i = 0; i < cpu_losses.size(); ++i)
      EXPECT_NEAR(gpu_losses[i], cpu_losses[i], 1e-4 * (1 + std::abs(cpu_losses[i])))
          << name << " step " << i;
    for (size_t v = 0; v < cpu_vars.size(); ++v)
      testing::expect_near(testing::values(cpu_vars[v]), gpu_vars[v], 1e-4, 1e-4, name);
    EXPECT_LT(gpu_losses.back(), gpu_losses.front()) << name;
  }
}

// bf16 autocast, and f16 autocast with dynamic loss scaling, train like f32 (within 16-bit
// rounding) with f32 master weights; the same with CUDA Graphs.
TEST(CudaRuntime, MixedPrecisionTrainsLikeF32) {
  KILN_REQUIRE_GPU();
  auto f32_mlp = make_mlp([](const Value& l) { return optim::Adam({.lr = 1e-2}).minimize(l); });
  auto [reference, ref_vars] = train(*f32_mlp, {.device = Device::cuda(0)}, 8);
  for (DType low : {bf16, f16}) {
    for (bool graphs : {false, true}) {
      auto mixed = make_mlp([low](const Value& l) {
        optim::Adam adam({.lr = 1e-2});
        if (low == f16) adam.with_loss_scaling({.initial = 1024});
        return adam.minimize(autocast(l, low));
      });
      auto [losses, vars] = train(*mixed, {.device = Device::cuda(0), .cuda_graphs = graphs}, 8);
      EXPECT_EQ(vars[0].dtype(), f32);
      for (size_t i = 0; i < losses.size(); ++i)
        EXPECT_NEAR(losses[i], reference[i], 0.05 * (1 + std::abs(reference[i])))
            << low << " step " << i;
      EXPECT_LT(losses.back(), losses.front()) << low;
    }
  }
}

TEST(CudaRuntime, CudaGraphReplayEqualsPlainExecution) {
  KILN_REQUIRE_GPU();
  auto minimize = [](const Value& l) { return optim::Adam({.lr = 1e-2}).minimize(l); };
  auto plain_mlp = make_mlp(minimize);
  auto graph_mlp = make_mlp(minimize);
  auto [plain_losses, plain_vars] = train(*plain_mlp, {.device = Device::cuda(0)}, 12);
  auto [graph_losses, graph_vars] =
      train(*graph_mlp, {.device = Device::cuda(0), .cuda_graphs = true}, 12);
  EXPECT_EQ(plain_losses, graph_losses);  // bit for bit: the same kernels on the same data
  for (size_t v = 0; v < plain_vars.size(); ++v)
    EXPECT_TRUE(equal_bits(plain_vars[v], graph_vars[v])) << "variable " << v;
}

TEST(CudaRuntime, CudaGraphsSeeVariablesSetFromTheHost) {
  KILN_REQUIRE_GPU();
  Graph g;
  Value v = g.variable("v", {4}, init::zeros());
  Value x = g.placeholder("x", f32, {4});
  Value y = v * x;
  Session s(g, {.device = Device::cuda(0), .cuda_graphs = true});
  Tensor ones = Tensor::full(f32, {4}, 1.0);
  for (int i = 0; i < 3; ++i) s.run({{x, ones}}, {y});
  s.set_variable(v, Tensor::from_vector<float>({1, 2, 3, 4}));
  EXPECT_EQ(s.run({{x, ones}}, {y})[0].to_vector<float>(), (std::vector<float>{1, 2, 3, 4}));
  EXPECT_EQ(s.run({{x, ones}}, {y})[0].to_vector<float>(), (std::vector<float>{1, 2, 3, 4}));
}

// Cached decoding replayed as a CUDA Graph: the position is fed (a different one every step)
// and read on the device by the cache write and the mask, so one captured graph serves every
// step; the outputs and caches follow the CPU's.
TEST(CudaRuntime, CachedDecodingReplaysOneGraphForEveryPosition) {
  KILN_REQUIRE_GPU();
  Graph g;
  nn::TransformerBlock block(g, "block", 16, 2, {.ffn_dim = 32, .dropout = 0});
  block.eval();
  nn::KVCache cache = block.attention.cache_placeholders(8);
  Value token = g.placeholder("token", f32, {2, 1, 16});
  Value position = g.placeholder("position", i64, {});
  auto step = block.attend_cached(token, cache, position);
  Session cpu(g), gpu(g, {.device = Device::cuda(0), .cuda_graphs = true});
  const Tensor zeros = Tensor::zeros(f32, {2, 8, 2, 8});
  std::vector<Tensor> cpu_cache = {zeros, zeros}, gpu_cache = {zeros, zeros};
  for (int64_t at = 0; at < 8; ++at) {
    const Tensor x = testing::random_tensor(f32, {2, 1, 16}, -1, 1, static_cast<uint32_t>(at));
    auto run = [&](Session& s, std::vector<Tensor>& kv) {
      auto out = s.run({{token, x},
                        {position, Tensor::scalar<int64_t>(at)},
                        {cache.keys, kv[0]},
                        {cache.values, kv[1]}},
                       {step.output, step.cache.keys, step.cache.values});
      kv = {out[1], out[2]};
      return out[0];
    };
    const Tensor want = run(cpu, cpu_cache), got = run(gpu, gpu_cache);
    EXPECT_EQ(testing::compare_relative(got, want, f32), "") << "position " << at;
    EXPECT_EQ(testing::compare_relative(gpu_cache[0], cpu_cache[0], f32), "") << at;
  }
  EXPECT_GE(gpu.graph_replays(), 6);
}

// Many independent branches over large buffers, spread over 4 streams, with the arena reusing
// memory between them: a missing event shows up as a wrong sum.
TEST(CudaRuntime, ManyStreamsGiveTheOneStreamResult) {
  KILN_REQUIRE_GPU();
  Graph g;
  Value x = g.placeholder("x", f32, {1 << 18});
  std::vector<Value> branches;
  for (int b = 0; b < 12; ++b) {
    Value v = x * g.scalar(1.0 + b, f32);
    for (int k = 0; k < 6 + b % 5; ++k) v = (k % 2 ? tanh(v) : v * v) + g.scalar(0.01 * k, f32);
    branches.push_back(sum(v));
  }
  Value total = add_n(branches);
  Tensor input = testing::random_tensor(f32, {1 << 18}, -1, 1, 5);
  PassOptions no_fusion;
  no_fusion.elementwise_fusion = false;  // keep many small kernels, so streams really interleave
  Session one(g, {.device = Device::cuda(0), .passes = no_fusion, .cuda_streams = 1});
  Session four(g, {.device = Device::cuda(0), .passes = no_fusion, .cuda_streams = 4});
  const Tensor want = one.run({{x, input}}, {total})[0];
  EXPECT_GT(four.plan({{x, input}}, {total}).num_streams, 1);
  for (int run = 0; run < 20; ++run)
    ASSERT_TRUE(equal_bits(four.run({{x, input}}, {total})[0], want)) << "run " << run;
}

TEST(CudaRuntime, CheckpointsRoundTripThroughTheGpu) {
  KILN_REQUIRE_GPU();
  auto m = make_mlp([](const Value& l) { return optim::Adam({.lr = 1e-2}).minimize(l); });
  const std::string path = testing::tmp("gpu.ckpt");
  Tensor before;
  {
    Session s(m->g, {.device = Device::cuda(0)});
    auto [x, y] = batch(0);
    s.run({{m->x, x}, {m->y, y}}, {}, {m->train});
    s.save_checkpoint(path);
    before = s.variable_value(m->g.value("w1"));
  }
  Session cpu(m->g, {.device = Device::cpu()});
  cpu.restore_checkpoint(path);
  EXPECT_TRUE(equal_bits(cpu.variable_value(m->g.value("w1")), before));
  Session gpu(m->g, {.device = Device::cuda(0)});
  gpu.restore_checkpoint(path);
  EXPECT_TRUE(equal_bits(gpu.variable_value(m->g.value("w1")), before));
}

TEST(CudaRuntime, DataErrorsNameTheNode) {
  KILN_REQUIRE_GPU();
  Graph g;
  Value params = g.placeholder("params", f32, {5, 3});
  Value idx = g.placeholder("idx", i64, {3});
  Value picked = gather(params, idx);
  Value labels = g.placeholder("labels", i64, {2});
  Value loss = softmax_cross_entropy(g.placeholder("logits", f32, {2, 4}), labels);
  Session s(g, {.device = Device::cuda(0)});
  testing::expect_error<Error>(
      [&] {
        s.run(
            {{params, Tensor::zeros(f32, {5, 3})}, {idx, Tensor::from_vector<int64_t>({1, 7, 0})}},
            {picked});
      },
      {"[gather]", "index 7 at position 1", "[-5, 5)"});
  testing::expect_error<Error>(
      [&] {
        s.run({{g.value("logits"), Tensor::zeros(f32, {2, 4})},
               {labels, Tensor::from_vector<int64_t>({0, 4})}},
              {loss});
      },
      {"[softmax_cross_entropy]", "label 4 at position 1", "[0, 4)"});
  // An unpooling index outside its 3 x 5 plane (the tenth value's).
  Value x = g.placeholder("x", f32, {1, 2, 2, 3}), places = g.placeholder("at", i64, {1, 2, 2, 3});
  Value unpooled = max_unpool2d(x, places, {}, {3, 5});
  Session unpooling(g, {.device = Device::cuda(0)});
  testing::expect_error<Error>(
      [&] {
        unpooling.run({{x, Tensor::full(f32, {1, 2, 2, 3}, 1)},
                       {places, Tensor::from_vector<int64_t>({0, 1, 2, 3, 3, 0, 1, 1, 2, 15, 0, 0},
                                                             {1, 2, 2, 3})}},
                      {unpooled});
      },
      {"[max_unpool2d]", "index 15 at position 9", "[0, 15)"});
  // A cache write past the cache's end: start 7 of a window of 2 in 8 rows.
  Value cache = g.placeholder("cache", f32, {1, 8, 4}), row = g.placeholder("row", f32, {1, 2, 4});
  Value position = g.placeholder("position", i64, {});
  Value cached = dynamic_update_slice(cache, row, position, 1);
  Session caching(g, {.device = Device::cuda(0)});
  testing::expect_error<Error>(
      [&] {
        caching.run({{cache, Tensor::zeros(f32, {1, 8, 4})},
                     {row, Tensor::full(f32, {1, 2, 4}, 1)},
                     {position, Tensor::scalar<int64_t>(7)}},
                    {cached});
      },
      {"[dynamic_update_slice]", "window start 7 at position 0", "[0, 7)"});
  // The session is still usable after a data error.
  auto ok = s.run(
      {{params, Tensor::full(f32, {5, 3}, 2.0)}, {idx, Tensor::from_vector<int64_t>({1, 4, -1})}},
      {picked});
  EXPECT_EQ(ok[0].to_vector<float>(), std::vector<float>(9, 2.0f));
}

TEST(CudaRuntime, OutOfMemorySaysHowMuchAndWhere) {
  KILN_REQUIRE_GPU();
  Graph g;
  Value huge = fill(g, {int64_t{1} << 40}, 1.0, f32);  // 4 TiB
  Session s(g, {.device = Device::cuda(0)});
  testing::expect_error<DeviceError>([&] { s.run({}, {huge}); },
                                     {"out of GPU memory", "asked for", "free of", "fill"});
  // An intermediate too large: the arena's message names its largest buffer's node.
  Value x = g.placeholder("x", f32, {1});
  Value total = sum(broadcast_to(x, {int64_t{1} << 40}));
  testing::expect_error<DeviceError>(
      [&] {
        s.run({{x, Tensor::full(f32, {1}, 1.0)}}, {total});
      },
      {"out of GPU memory", "arena", "broadcast_to"});
}

// A trace of a GPU session holds each step's GPU time (timing events on its stream).
TEST(CudaRuntime, TracesTimeTheKernelsOnTheGpu) {
  KILN_REQUIRE_GPU();
  Graph g;
  Value x = g.placeholder("x", f32, {512, 512});
  Value y = tanh(matmul(x, x));
  const std::string path = testing::tmp("gpu_trace.json");
  {
    Session s(g, {.device = Device::cuda(0), .trace_path = path});
    FeedList feeds = {{x, testing::random_tensor(f32, {512, 512}, -1, 1, 3)}};
    for (int i = 0; i < 2; ++i) s.run(feeds, {y});
  }
  std::ifstream file(path);
  const std::string json((std::istreambuf_iterator<char>(file)), std::istreambuf_iterator<char>());
  EXPECT_NE(json.find("\"cat\": \"matmul\""), std::string::npos) << json;
  // Two runs of every step, each with a duration; the matmul's is measurably above zero.
  int events = 0;
  double longest = 0;
  for (size_t at = json.find("\"dur\": "); at != std::string::npos;
       at = json.find("\"dur\": ", at + 1), ++events)
    longest = std::max(longest, std::stod(json.substr(at + 7)));
  EXPECT_GE(events, 4);
  EXPECT_GT(longest, 1.0);  // microseconds
}

TEST(CudaRuntime, FeedsMustMatchOnTheGpuToo) {
  KILN_REQUIRE_GPU();
  Graph g;
  Value x = g.placeholder("x", f32, {-1, 3});
  Session s(g, {.device = Device::cuda(0)});
  testing::expect_error<FeedError>(
      [&] {
        s.run({{x, Tensor::zeros(f32, {2, 4})}}, {x * x});
      },
      {"'x'", "[?, 3]", "[2, 4]"});
  EXPECT_EQ(s.run({{x, Tensor::full(f32, {2, 3}, 3.0)}}, {x * x})[0].to_vector<float>(),
            std::vector<float>(6, 9.0f));
}

TEST(CudaRuntime, CheckNumericsStopsAtTheNodeOnTheGpu) {
  KILN_REQUIRE_GPU();
  Graph g;
  Value x = g.placeholder("x", f32, {2, 2});
  Value w = g.variable("w", {2}, init::constant(1.0));
  Value loss = sum((log(x) * 2.0 + 1.0) * w);
  Value train = optim::SGD({.lr = 0.1}).minimize(loss);
  Session s(g,
            {.device = Device::cuda(0), .cuda_graphs = true, .check_numerics = NumericsCheck::nan});
  testing::expect_error<NumericsError>(
      [&] {
        s.run({{x, Tensor::from_vector<float>({1, 2, -3, 4}, {2, 2})}}, {loss}, {train});
      },
      {"node 'log' (log), output 0", "NaN at [1, 0]"});
  EXPECT_EQ(s.variable_value(w).to_vector<float>(), (std::vector<float>{1, 1}));
  for (int i = 0; i < 3; ++i)
    s.run({{x, Tensor::from_vector<float>({1, 2, 3, 4}, {2, 2})}}, {loss}, {train});
  EXPECT_EQ(s.graph_replays(), 0);  // checking runs are never captured
}

// Evicted plans release their device state, and a plan compiled again runs correctly (the
// executor's per-plan state is keyed by the plan's address, which a new plan may reuse).
TEST(CudaRuntime, EvictedPlansAreForgottenByTheExecutor) {
  KILN_REQUIRE_GPU();
  Graph g;
  Value x = g.placeholder("x", f32, {-1, 3});
  Value y = sum(x * 2.0, {1});
  Session s(g, {.device = Device::cuda(0), .cuda_graphs = true, .max_cached_plans = 2});
  for (int round = 0; round < 3; ++round)
    for (int64_t batch = 1; batch <= 5; ++batch)
      for (int repeat = 0; repeat < 3; ++repeat) {
        Tensor out = s.run({{x, Tensor::full(f32, {batch, 3}, 1.0 + round)}}, {y})[0];
        ASSERT_EQ(out.shape(), Shape({batch}));
        EXPECT_EQ(out.element(batch - 1), 6.0 * (1 + round));
      }
  EXPECT_EQ(s.num_compiled_plans(), 2u);
  EXPECT_EQ(s.num_compilations(), 15);
}

}  // namespace
}  // namespace kiln
