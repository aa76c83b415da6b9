// Writes the seed corpora of the fuzz targets (tests/fuzz/corpus/<target>/): graph files that
// between them use every op, attribute type and signature kind (including the plan-only ops a
// compiled plan holds: fused_elementwise, matmul_bias), checkpoints (small_v1.ckpt and
// partial_v1.ckpt, kept in the corpus, are version 1 files from before) and .npy files. Run it
// again after adding ops:  build/tests/fuzz_make_corpus tests/fuzz/corpus
#include <kiln/kiln.h>

#include <cstdio>
#include <filesystem>

#include "kiln/runtime/checkpoint.h"

using namespace kiln;

namespace {

// An MLP trained by `optimizer`: train and predict signatures, batch unknown.
void mlp(Graph& g, const std::function<Value(const Value&)>& minimize) {
  Value x = g.placeholder("x", f32, {-1, 6});
  Value y = g.placeholder("y", i64, {-1});
  Value w1 = g.variable("w1", {6, 8}, init::he_normal(1));
  Value b1 = g.variable("b1", {8}, init::zeros());
  Value w2 = g.variable("w2", {8, 3}, init::glorot_uniform(2));
  Value logits = matmul(relu(matmul(x, w1) + b1), w2);
  Value loss = mean(softmax_cross_entropy(logits, y));
  g.add_signature({"train", {x, y}, {loss}, {minimize(loss)}});
  g.add_signature({"predict", {x}, {softmax(logits, 1), argmax(logits, 1)}, {}});
}

// Every other op family: shapes, indexing, reductions, comparisons, casts, sources, state.
void op_zoo(Graph& g) {
  Value x = g.placeholder("x", f32, {-1, 4});
  Value idx = g.placeholder("idx", i32, {3});
  Value t = transpose(reshape(x, {2, -1}), {1, 0});
  Value parts = concat(split(x, {1, 3}, 1), 1);
  Value picked = gather(x, idx, 1);
  Value sliced = slice(x, {0, 1}, {kSliceEnd, 4}, {1, 2});
  Value r = sum(x, {0}) + mean(x, {1}, true) * max(x) - min(x, {0, 1});
  Value am = cast(argmin(x, 1), f32);
  Value cmp = where(greater(x, fill(g, {4}, 0.5)), exp(x), log(abs(x) + 1.0));
  Value e = sqrt(square(x) + 1.0) * rsqrt(abs(x) + 1.0) + tanh(x) + sigmoid(x) + gelu(x) + sin(x) +
            cos(x) + sign(x) + neg(x) + pow(abs(x) + 1.0, x) + maximum(x, zeros_like(x)) +
            minimum(x, zeros_like(x));
  Value noise = random_uniform(g, {4}, -1, 1, 7) + random_normal(g, {4}, 0, 1, 8) +
                iota(g, {4}, 0, f32) + cast(iota(g, {4}, 0, i64), f32);
  Value ls = log_softmax(x, 1);
  Value bl = broadcast_to(expand_dims(noise, {0}), {3, 4});
  Value sq = sum_to(x, g.constant(Tensor::zeros(f32, {1, 4})));
  Value counter = g.variable("counter", {}, init::zeros(), i64, false);
  Value v = g.variable("v", {4}, init::uniform(-1, 1, 3));
  Value step = assign_add(counter, g.scalar(1, i64));
  Value write = assign(v, noise);
  g.add_signature({"zoo",
                   {x, idx},
                   {t,
                    parts,
                    picked,
                    sliced,
                    r,
                    am,
                    cmp,
                    e,
                    ls,
                    bl,
                    sq,
                    numel(x),
                    zeros_like(x),
                    add_n({x, x, x}),
                    equal(x, x),
                    not_equal(x, x),
                    less(x, x),
                    less_equal(x, x),
                    greater_equal(x, x),
                    stop_gradient(x)},
                   {step, write}});
  Value loss = sum(e * cmp) + sum(picked) + sum(ls);
  std::vector<Value> grads = gradients(loss, {x});
  g.add_signature({"grad", {x, idx}, {grads[0]}, {}});
}

// The neural-network ops of issue 12 in a small training graph: convolution (and its
// transpose), batch norm with running statistics (after, assign), both pools, dropout, layer
// norm, attention with a mask, cross entropy with ignore_index and smoothing; the first layers
// form a recompute segment that keeps its convolution's output (a saved node's stand-in).
void nn_zoo(Graph& g) {
  Value x = g.placeholder("x", f32, {-1, 2, 6, 6});
  Value y = g.placeholder("y", i64, {-1});
  nn::Sequential net(g, "net");
  net.add<nn::Conv2d>("conv", 2, 4, std::array<int64_t, 2>{3, 3},
                      Conv2dOptions{.padding = {1, 1}, .groups = 2});
  net.add<nn::BatchNorm2d>("norm", 4);
  net.add<nn::Dropout>("drop", 0.2);
  net.add("pool", [](const Value& v) {
    return avg_pool2d(max_pool2d(relu(v)), {.kernel_size = {1, 1}});
  });
  // A recompute segment: the training graph holds its copy (after, draw_as on the dropout).
  Value h = recompute([&](const Value& v) { return net(v); }, x, save_products());  // [N,4,3,3]
  Value up =
      conv_transpose2d(h, g.variable("up", {4, 2, 2, 2}, init::he_normal(4)), {.stride = {2, 2}});
  Value seq = layer_norm(reshape(up, {-1, 2, 36}), 1);  // [N, 2, 36]: 2 tokens of 36
  Value qkv = expand_dims(seq, {1});                    // [N, 1, 2, 36]
  Value mask = g.constant(Tensor::full(DType::boolean, {1, 1, 2, 2}, 1));
  Value att = scaled_dot_product_attention(qkv, qkv, qkv, {.mask = mask, .causal = true});
  Value logits = reshape(att, {-1, 72});
  Value w = g.variable("w", {72, 3}, init::glorot_uniform(5));
  Value loss = cross_entropy(matmul(logits, w), y, -1, 0.1);
  g.add_signature({"train", {x, y}, {loss}, {optim::Adam({.lr = 1e-2}).minimize(loss)}});
  net.eval();
  g.add_signature({"predict", {x}, {net(x)}, {}});
}

// A compiled plan's own graph (fused_elementwise, matmul_bias, feed placeholders), saved as a
// graph file with its "__plan__" signature.
void save_plan_graph(const Graph& g, const FeedList& feeds, const std::string& signature,
                     const std::string& path) {
  Session s(g);
  const Signature& sig = g.signature(signature);
  const Plan& plan = s.plan(feeds, sig.outputs, sig.targets);
  save_graph(*plan.graph, path);
}

}  // namespace

int main(int argc, char** argv) {
  if (argc != 2) {
    std::fprintf(stderr, "usage: fuzz_make_corpus CORPUS_DIR\n");
    return 2;
  }
  const std::string root = argv[1];
  for (const char* target :
       {"graph_binary", "graph_text", "graph_run", "checkpoint", "npy", "safetensors"})
    std::filesystem::create_directories(root + "/" + target);
  auto both = [&](const Graph& g, const std::string& name) {
    for (const char* target : {"graph_binary", "graph_run"})
      save_graph(g, str(root, "/", target, "/", name, ".pb"));
    save_graph(g, str(root, "/graph_text/", name, ".pbtxt"));
  };

  Graph adam, sgd, rmsprop, zoo, nn_graph;
  mlp(adam, [](const Value& loss) {
    return optim::Adam({.lr = 1e-2, .schedule = optim::Schedule::cosine(100), .clip_norm = 1})
        .minimize(loss);
  });
  mlp(sgd, [](const Value& loss) {
    return optim::SGD({.lr = 0.1, .momentum = 0.9, .weight_decay = 1e-4}).minimize(loss);
  });
  mlp(rmsprop, [](const Value& loss) {
    return optim::RMSProp({.lr = 1e-2}).with_loss_scaling().minimize(loss);
  });
  // The optimizers with shared per-element rules, parameter groups, a phased schedule and the
  // moving average: their update ops, state and attributes in graph files.
  Graph nadam, rmsprop_centered;
  mlp(nadam, [](const Value& loss) {
    Graph& g = *loss.graph();
    optim::NAdam optimizer(
        {.lr = 1e-2,
         .weight_decay = 0.01,
         .schedule = optim::Schedule::sequential(
             {optim::Schedule::linear(0.1, 1, 10), optim::Schedule::cosine(90)}, {10})});
    optimizer.with_param_groups(optim::decay_matrices_only(g.variables(true)));
    Value train = optimizer.minimize(loss);
    optim::ExponentialMovingAverage ema(0.99, /*warmup=*/true);
    return group(g, {train, ema.apply(g, {}, &optimizer)});
  });
  mlp(rmsprop_centered, [](const Value& loss) {
    return optim::RMSProp({.lr = 1e-2, .clip_value = 1, .momentum = 0.9, .centered = true})
        .with_loss_scaling()
        .minimize(loss);
  });
  // Schedules that cycle the momentum: the updates take this step's momentum as an input.
  Graph sgd_cycle, adam_cyclic;
  mlp(sgd_cycle, [](const Value& loss) {
    optim::Schedule schedule = optim::Schedule::one_cycle(100, 0.25);
    schedule.three_phase = schedule.anneal_linear = true;
    return optim::SGD({.lr = 0.1, .momentum = 0.9, .nesterov = true, .schedule = schedule})
        .minimize(loss);
  });
  mlp(adam_cyclic, [](const Value& loss) {
    return optim::AdamW({.lr = 1e-2,
                         .schedule = optim::Schedule::cyclic(
                             1e-3, 10, 20, optim::Schedule::CyclicMode::exp_range, 0.99)})
        .minimize(loss);
  });
  // SGD with dampening: its updates take the step count.
  Graph sgd_dampened;
  mlp(sgd_dampened, [](const Value& loss) {
    return optim::SGD({.lr = 0.1, .momentum = 0.9, .dampening = 0.1}).minimize(loss);
  });
  both(sgd_cycle, "mlp_sgd_one_cycle_momentum");
  both(sgd_dampened, "mlp_sgd_dampening");
  both(adam_cyclic, "mlp_adamw_cyclic_momentum");
  both(nadam, "mlp_nadam_groups_ema");
  both(rmsprop_centered, "mlp_rmsprop_centered_scaled");
  op_zoo(zoo);
  nn_zoo(nn_graph);
  both(nn_graph, "nn_zoo");
  both(adam, "mlp_adam");
  both(sgd, "mlp_sgd");
  both(rmsprop, "mlp_rmsprop_scaled");
  both(zoo, "op_zoo");

  const FeedList mlp_feeds = {{adam.value("x"), Tensor::zeros(f32, {2, 6})},
                              {adam.value("y"), Tensor::zeros(i64, {2})}};
  save_plan_graph(adam, mlp_feeds, "train", root + "/graph_run/plan_mlp_train.pb");
  save_plan_graph(adam, mlp_feeds, "train", root + "/graph_binary/plan_mlp_train.pb");
  save_plan_graph(adam, {mlp_feeds[0]}, "predict", root + "/graph_text/plan_mlp_predict.pbtxt");
  const FeedList zoo_feeds = {{zoo.value("x"), Tensor::zeros(f32, {2, 4})},
                              {zoo.value("idx"), Tensor::zeros(i32, {3})}};
  save_plan_graph(zoo, zoo_feeds, "zoo", root + "/graph_run/plan_zoo.pb");
  save_plan_graph(zoo, zoo_feeds, "grad", root + "/graph_run/plan_zoo_grad.pb");

  Graph ckpt;
  Value w = ckpt.variable("w", {3, 2}, init::glorot_uniform(5));
  ckpt.variable("global_step", {}, init::zeros(), i64, false);
  Session s(ckpt);
  s.run({}, {w});
  s.save_checkpoint(root + "/checkpoint/small.ckpt");
  write_checkpoint({{"w", Tensor::zeros(f32, {3, 2})}}, root + "/checkpoint/partial.ckpt");

  save_npy(Tensor::from_vector<float>({1, 2, 3, 4, 5, 6}, {2, 3}), root + "/npy/f32_2x3.npy");
  save_npy(Tensor::from_vector<int64_t>({7, -8}), root + "/npy/i64_2.npy");
  save_npy(Tensor::scalar<double>(0.5), root + "/npy/f64_scalar.npy");
  save_npy(Tensor::zeros(boolean, {2, 0, 2}), root + "/npy/bool_empty.npy");
  save_safetensors({{"a.weight", Tensor::from_vector<float>({1, 2, 3, 4, 5, 6}, {2, 3})},
                    {"b", Tensor::from_vector<int64_t>({7, -8})},
                    {"c", Tensor::full(bf16, {3}, 0.5)},
                    {"d", Tensor::zeros(boolean, {2, 0, 2})},
                    {"e", Tensor::full(f16, {1, 2}, -2)}},
                   root + "/safetensors/mixed.safetensors", {{"format", "pt"}});
  save_safetensors({}, root + "/safetensors/empty.safetensors");
  std::printf("wrote the seed corpora under %s\n", root.c_str());
  return 0;
}
