// Recompute segments (gradient checkpointing): gradients() differentiates a copy of each
// segment built in the backward pass. The gradients must equal those of the same model without
// segments bit for bit, dropout must draw the same mask in the copy, writes to variables must
// happen once, and the planned memory of a training step must shrink.
#include <memory>

#include "kiln/framework/graph_io.h"
#include "kiln/kiln.h"
#include "kiln/runtime/plan.h"
#include "test_util.h"

namespace kiln {
namespace {

using testing::expect_error;

// A residual MLP of pre-norm blocks: x + W2 dropout(gelu(W1 layer_norm(x))), trained on
// mean((y - target)^2). With `segments` each block is a recompute segment, saving what
// `policy` picks.
struct ResidualMlp {
  Graph g;
  Value x, target, loss;
  std::vector<Value> params, grads;
  std::vector<std::unique_ptr<nn::Module>> layers;

  ResidualMlp(bool segments, int blocks, int64_t batch, int64_t width, double drop,
              RecomputePolicy policy = {}) {
    x = g.placeholder("x", f32, {batch, width});
    target = g.placeholder("target", f32, {batch, width});
    Value h = x;
    for (int b = 0; b < blocks; ++b) {
      const std::string name = "block" + std::to_string(b);
      auto& norm = add<nn::LayerNorm>(name + "_norm", Shape{width});
      auto& up = add<nn::Linear>(name + "_up", width, 4 * width);
      auto& down = add<nn::Linear>(name + "_down", 4 * width, width);
      auto block = [&, drop](const Value& in) {
        return in + down(dropout(gelu(up(norm(in))), drop, true, 7));
      };
      h = segments ? recompute(block, h, policy) : block(h);
    }
    loss = mse_loss(h, target);
    params = g.variables(true);
    grads = gradients(loss, params);
  }

  template <typename T, typename... Args>
  T& add(const std::string& name, Args&&... args) {
    layers.push_back(std::make_unique<T>(g, name, std::forward<Args>(args)...));
    return static_cast<T&>(*layers.back());
  }
};

FeedList feeds_for(const ResidualMlp& m, uint32_t seed) {
  return {{m.x, testing::random_tensor(f32, m.x.shape(), -1, 1, seed)},
          {m.target, testing::random_tensor(f32, m.target.shape(), -1, 1, seed + 1)}};
}

TEST(Recompute, GradientsEqualThoseWithoutSegmentsBitForBit) {
  ResidualMlp plain(false, 3, 8, 16, 0.25), segmented(true, 3, 8, 16, 0.25);
  Session ps(plain.g, {.intra_op_threads = 1}), ss(segmented.g, {.intra_op_threads = 1});
  ss.set_variables(ps.variable_values());
  std::vector<Value> plain_fetch{plain.loss}, seg_fetch{segmented.loss};
  plain_fetch.insert(plain_fetch.end(), plain.grads.begin(), plain.grads.end());
  seg_fetch.insert(seg_fetch.end(), segmented.grads.begin(), segmented.grads.end());
  // Two runs: the random counter moves, so each run draws new masks, the same on both sides.
  for (uint32_t run = 0; run < 2; ++run) {
    const std::vector<Tensor> want = ps.run(feeds_for(plain, 10 + run), plain_fetch);
    const std::vector<Tensor> got = ss.run(feeds_for(segmented, 10 + run), seg_fetch);
    ASSERT_EQ(want.size(), got.size());
    for (size_t i = 0; i < want.size(); ++i)
      EXPECT_EQ(testing::values(want[i]), testing::values(got[i]))
          << "run " << run << ", fetch " << seg_fetch[i].name();
  }
  // The backward pass differentiates copies: the segments' inner nodes are built again.
  int copies = 0;
  for (int32_t id = 0; id < segmented.g.num_nodes(); ++id) {
    const Node& node = segmented.g.node(id);
    if (node.name().rfind("gradients/recompute/", 0) != 0) continue;
    ++copies;
    if (node.op_name() == "dropout_mask") {
      EXPECT_EQ("gradients/recompute/" + node.attr<std::string>("draw_as"), node.name());
    }
  }
  EXPECT_GT(copies, 3 * 6);
}

// The nodes a run of `fetches` executes (the pruned graph, before the passes), by name.
std::vector<std::string> executed(const Graph& g, const FeedList& feeds,
                                  const std::vector<Value>& fetches) {
  std::vector<FeedSpec> specs;
  for (const auto& [value, tensor] : feeds)
    specs.push_back({value, {tensor.dtype(), tensor.shape()}});
  std::vector<std::string> names;
  for (int32_t id : prune(g, specs, fetches, {}).order) names.push_back(g.node(id).name());
  return names;
}

// Gradients of `got` equal those of `want` bit for bit over two runs (new dropout masks each).
void expect_same_gradients(ResidualMlp& want, ResidualMlp& got) {
  Session ws(want.g, {.intra_op_threads = 1}), gs(got.g, {.intra_op_threads = 1});
  gs.set_variables(ws.variable_values());
  for (uint32_t run = 0; run < 2; ++run) {
    const std::vector<Tensor> a = ws.run(feeds_for(want, 20 + run), want.grads);
    const std::vector<Tensor> b = gs.run(feeds_for(got, 20 + run), got.grads);
    for (size_t i = 0; i < a.size(); ++i)
      EXPECT_EQ(testing::values(a[i]), testing::values(b[i]))
          << "run " << run << ", " << got.grads[i].name();
  }
}

TEST(Recompute, SavedProductsAreReadNotComputedAgain) {
  ResidualMlp plain(false, 3, 8, 16, 0.25), selective(true, 3, 8, 16, 0.25, save_products());
  expect_same_gradients(plain, selective);
  // The policy marked exactly the products (each Linear's matmul_bias or matmul).
  int saved = 0;
  for (int32_t id = 0; id < selective.g.num_nodes(); ++id) {
    const Node& node = selective.g.node(id);
    EXPECT_EQ(node.recompute_saved(),
              node.recompute_segment() >= 0 && node.op().precision_policy() == Precision::low)
        << node.name();
    saved += node.recompute_saved();
  }
  EXPECT_EQ(saved, 3 * 2);
  // The backward pass recomputes the norm and the activation, but no product: the copy of a
  // saved node is built (its gradient reads the recomputed inputs) and never runs.
  const std::vector<std::string> runs =
      executed(selective.g, feeds_for(selective, 1), selective.grads);
  auto recomputed = [&](const Node& original) {
    return std::count(runs.begin(), runs.end(), "gradients/recompute/" + original.name()) > 0;
  };
  int gelus = 0;
  for (int32_t id = 0; id < selective.g.num_nodes(); ++id) {
    const Node& node = selective.g.node(id);
    if (node.recompute_saved()) {
      EXPECT_FALSE(recomputed(node)) << node.name() << " runs again";
    }
    if (node.op_name() == "gelu" && node.recompute_segment() >= 0) {
      EXPECT_TRUE(recomputed(node)) << node.name();
      ++gelus;
    }
  }
  EXPECT_EQ(gelus, 3);
}

TEST(Recompute, SavedAttentionGivesItsGradientTheSavedOutputs) {
  // Attention's gradient reads its outputs (the result and the logsumexp): with the op saved,
  // they come from the forward pass, the copy never runs, and the gradients match bit for bit.
  auto build = [](Graph& g, bool segments, RecomputePolicy policy, Value& x,
                  std::vector<Value>& grads) {
    x = g.placeholder("x", f32, {2, 8, 16});
    Value h = x;
    for (int l = 0; l < 2; ++l) {
      nn::TransformerBlock block(g, str("block", l), 16, 2, {.ffn_dim = 32, .dropout = 0.1});
      h = segments ? recompute([&](const Value& v) { return block(v); }, h, policy) : block(h);
    }
    grads = gradients(mean(square(h)), g.variables(true));
  };
  Graph pg, sg;
  Value px, sx;
  std::vector<Value> pgrads, sgrads;
  build(pg, false, {}, px, pgrads);
  build(sg, true, save_ops({"attention"}), sx, sgrads);
  Session ps(pg, {.intra_op_threads = 1}), ss(sg, {.intra_op_threads = 1});
  ss.set_variables(ps.variable_values());
  const Tensor in = testing::random_tensor(f32, {2, 8, 16}, -1, 1, 4);
  const std::vector<Tensor> want = ps.run({{px, in}}, pgrads), got = ss.run({{sx, in}}, sgrads);
  ASSERT_EQ(want.size(), got.size());
  for (size_t i = 0; i < want.size(); ++i)
    EXPECT_EQ(testing::values(want[i]), testing::values(got[i])) << sgrads[i].name();
  int saved = 0, attention_copies = 0, matmul_copies = 0;
  for (int32_t id = 0; id < sg.num_nodes(); ++id) saved += sg.node(id).recompute_saved();
  EXPECT_EQ(saved, 2);
  const std::vector<std::string> runs = executed(sg, {{sx, in}}, sgrads);
  for (int32_t id = 0; id < sg.num_nodes(); ++id) {
    const Node& node = sg.node(id);
    if (node.recompute_segment() < 0 ||
        !std::count(runs.begin(), runs.end(), "gradients/recompute/" + node.name()))
      continue;
    attention_copies += node.op_name() == "attention";
    matmul_copies += node.op_name() == "matmul" || node.op_name() == "matmul_bias";
  }
  EXPECT_EQ(attention_copies, 0);
  EXPECT_GT(matmul_copies, 0) << "the products are not saved by this policy";
}

TEST(Recompute, PlannedMemoryOfATrainingStepShrinks) {
  // Eight blocks of width 64 over a batch of 256: the plain step keeps every block's
  // [256, 256] hidden values for the backward pass; with segments only the blocks' inputs
  // stay, and one block's values at a time are rebuilt.
  ResidualMlp plain(false, 8, 256, 64, 0.1), segmented(true, 8, 256, 64, 0.1);
  Session ps(plain.g), ss(segmented.g);
  const int64_t plain_bytes = ps.plan(feeds_for(plain, 1), plain.grads, {}).arena_bytes;
  const int64_t seg_bytes = ss.plan(feeds_for(segmented, 1), segmented.grads, {}).arena_bytes;
  std::printf("[recompute] planned arena: %lld bytes plain, %lld with segments\n",
              static_cast<long long>(plain_bytes), static_cast<long long>(seg_bytes));
  EXPECT_LT(seg_bytes * 5, plain_bytes * 2) << "segments should keep under 40% of the memory";
  // Saving the products keeps more than recomputing everything, less than keeping everything.
  ResidualMlp selective(true, 8, 256, 64, 0.1, save_products());
  Session sels(selective.g);
  const int64_t sel_bytes = sels.plan(feeds_for(selective, 1), selective.grads, {}).arena_bytes;
  std::printf("[recompute] %lld bytes saving the products\n", static_cast<long long>(sel_bytes));
  EXPECT_LT(seg_bytes, sel_bytes);
  EXPECT_LT(sel_bytes, plain_bytes);
  // And the step still computes the same gradients.
  ss.set_variables(ps.variable_values());
  const Tensor want = ps.run(feeds_for(plain, 3), {plain.grads[0]})[0];
  const Tensor got = ss.run(feeds_for(segmented, 3), {segmented.grads[0]})[0];
  EXPECT_EQ(testing::values(want), testing::values(got));
}

TEST(Recompute, BatchNormStatisticsAreUpdatedOnce) {
  // A batch norm in training mode writes its running averages in the forward pass; the copy
  // must not write them again.
  auto build = [](Graph& g, bool segments, Value& x, Value& loss, nn::BatchNorm1d*& norm,
                  std::unique_ptr<nn::BatchNorm1d>& owner) {
    x = g.placeholder("x", f32, {6, 3});
    owner = std::make_unique<nn::BatchNorm1d>(g, "bn", 3, 0.3);
    norm = owner.get();
    auto f = [&](const Value& v) { return tanh((*norm)(v * 2.0)); };
    Value y = segments ? recompute(f, x) : f(x);
    loss = sum(y * y);
  };
  Graph pg, sg;
  Value px, sx, ploss, sloss;
  nn::BatchNorm1d *pn, *sn;
  std::unique_ptr<nn::BatchNorm1d> po, so;
  build(pg, false, px, ploss, pn, po);
  build(sg, true, sx, sloss, sn, so);
  const std::vector<Value> pgrads = gradients(ploss, {px, pn->weight});
  const std::vector<Value> sgrads = gradients(sloss, {sx, sn->weight});
  Session ps(pg), ss(sg);
  const Tensor in = testing::random_tensor(f32, {6, 3}, -2, 2, 5);
  const auto want = ps.run({{px, in}}, pgrads);
  const auto got = ss.run({{sx, in}}, sgrads);
  EXPECT_EQ(testing::values(want[0]), testing::values(got[0]));
  EXPECT_EQ(testing::values(want[1]), testing::values(got[1]));
  EXPECT_EQ(testing::values(ps.variable_value(pn->running_mean)),
            testing::values(ss.variable_value(sn->running_mean)));
  EXPECT_EQ(testing::values(ps.variable_value(pn->running_var)),
            testing::values(ss.variable_value(sn->running_var)));
}

TEST(Recompute, TargetsAndLossInsideASegmentAndSavedGraphs) {
  // x built inside the segment (a hidden value) and y computed there too.
  Graph g;
  Value x = g.placeholder("x", f64, {4});
  Value w = g.variable("w", {4}, init::constant(0.5), {.dtype = f64});
  Value hidden, loss;
  recompute(
      [&](const std::vector<Value>& in) -> std::vector<Value> {
        hidden = sin(in[0] * w);
        loss = sum(hidden * hidden * in[0]);
        return {loss};
      },
      {x});
  const std::vector<Value> grads = gradients(loss, {x, w, hidden});
  // d/dhidden = 2 hidden x; d/dw = 2 hidden cos(x w) x * x; d/dx = hidden^2 + 2 hidden cos(xw) w x.
  const std::vector<double> xs{0.3, -1.2, 2.0, 0.7};
  Session s(g);
  const auto out = s.run({{x, Tensor::from_vector<double>(xs, {4})}}, grads);
  for (size_t i = 0; i < xs.size(); ++i) {
    const double h = std::sin(xs[i] * 0.5), c = std::cos(xs[i] * 0.5);
    EXPECT_NEAR(out[0].element(static_cast<int64_t>(i)), h * h + 2 * h * c * 0.5 * xs[i], 1e-12);
    EXPECT_NEAR(out[1].element(static_cast<int64_t>(i)), 2 * h * c * xs[i] * xs[i], 1e-12);
    EXPECT_NEAR(out[2].element(static_cast<int64_t>(i)), 2 * h * xs[i], 1e-12);
  }
  // The copies are ordinary nodes: a saved graph runs the same backward pass.
  const std::string path = testing::tmp("recompute_graph.kiln");
  g.add_signature({"grads", {x}, grads, {}});
  save_graph(g, path);
  std::unique_ptr<Graph> loaded = load_graph(path);
  Session ls(*loaded);
  const auto again = ls.run_signature("grads", {Tensor::from_vector<double>(xs, {4})});
  for (size_t k = 0; k < grads.size(); ++k)
    EXPECT_EQ(testing::values(again[k]), testing::values(out[k]));
}

TEST(Recompute, SegmentsSurviveASavedGraph) {
  // A forward graph saved with its segments (and the nodes its policy saves), loaded
  // elsewhere, and differentiated there.
  Graph g;
  Value x = g.placeholder("x", f64, {5});
  Value w = g.variable("w", {5}, init::constant(0.25), {.dtype = f64});
  Value y =
      recompute([&](const Value& in) { return sin(tanh(in * w) * 3.0); }, x, save_ops({"tanh"}));
  Value loss = sum(y * x).named("loss");
  g.add_signature({"forward", {x}, {loss}, {}});
  const std::string path = testing::tmp("recompute_forward.kiln");
  save_graph(g, path);
  std::unique_ptr<Graph> loaded = load_graph(path);
  int marked = 0;
  for (int32_t id = 0; id < loaded->num_nodes(); ++id) {
    EXPECT_EQ(loaded->node(id).name(), g.node(id).name()) << "loaded in the saved order";
    marked += loaded->node(id).recompute_segment() >= 0;
    EXPECT_EQ(loaded->node(id).recompute_segment() >= 0, g.node(id).recompute_segment() >= 0)
        << g.node(id).name();
    EXPECT_EQ(loaded->node(id).recompute_saved(), g.node(id).op_name() == "tanh")
        << g.node(id).name();
  }
  EXPECT_GE(marked, 4);
  const Value loaded_w = loaded->value("w");
  const Value dw = gradients(loaded->value("loss"), {loaded_w})[0];
  int copies = 0;
  for (int32_t id = 0; id < loaded->num_nodes(); ++id)
    copies += loaded->node(id).name().rfind("gradients/recompute/", 0) == 0;
  EXPECT_GE(copies, 4);
  const Value want = gradients(loss, {w})[0];
  const Tensor in = testing::random_tensor(f64, {5}, -1, 1, 3);
  Session s(g), ls(*loaded);
  EXPECT_EQ(testing::values(ls.run({{loaded->value("x"), in}}, {dw})[0]),
            testing::values(s.run({{x, in}}, {want})[0]));
}

TEST(Recompute, Errors) {
  Graph g;
  Value x = g.placeholder("x", f64, {3});
  expect_error<GraphError>([&] { recompute([](const std::vector<Value>& v) { return v; }, {}); },
                           {"[recompute]", "at least one input"});
  expect_error<GraphError>(
      [&] {
        save_ops({"matmul", "no_such_op"});
      },
      {"[recompute]", "'no_such_op' is not a registered op"});
  expect_error<GraphError>(
      [&] {
        RecomputeScope scope(g);
        gradients(sum(x * x), {x});
      },
      {"[autograd]", "inside a RecomputeScope"});
  // A variable the segment both reads and writes: the copy would read the new value.
  Value v = g.variable("v", {3}, init::constant(1.0), {.dtype = f64});
  Value y = recompute(
      [&](const Value& in) {
        Value read = in * v;
        return after(read, {assign(v, read)});
      },
      x);
  expect_error<GraphError>([&] { gradients(sum(y), {x}); },
                           {"[recompute]", "reads variable 'v'", "writes", "outside the segment"});
  EXPECT_EQ(g.open_recompute_segment(), -1);
  // A nested scope joins the open segment and its policy (here: none), ignoring its own.
  {
    RecomputeScope outer(g);
    RecomputeScope inner(g, save_ops({"exp"}));
    const Value e = exp(x);
    EXPECT_EQ(e.node().recompute_segment(), g.open_recompute_segment());
    EXPECT_FALSE(e.node().recompute_saved());
  }
  EXPECT_FALSE(exp(x).node().recompute_saved()) << "outside any segment";
}

}  // namespace
}  // namespace kiln
