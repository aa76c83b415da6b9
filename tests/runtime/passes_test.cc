#include <random>

#include "kiln/runtime/passes/passes.h"
#include "kiln/runtime/plan.h"
#include "test_util.h"

namespace kiln {
namespace {

// Op histogram of a plan's optimized graph.
std::map<std::string, int> ops_of(const Plan& plan) {
  std::map<std::string, int> count;
  for (int32_t id = 0; id < plan.graph->num_nodes(); ++id) ++count[plan.graph->node(id).op_name()];
  return count;
}

SessionOptions only(bool PassOptions::*flag) {
  SessionOptions o;
  o.passes = {.constant_folding = false,
              .common_subexpression_elimination = false,
              .algebraic_simplification = false,
              .product_sum_merging = false,
              .matmul_epilogue = false,
              .elementwise_fusion = false,
              .dead_code_elimination = false,
              .in_place = false};
  if (flag) o.passes.*flag = true;
  o.passes.dead_code_elimination = true;
  return o;
}

TEST(Passes, ConstantFoldingComputesConstantSubgraphsOnce) {
  Graph g;
  Value x = g.placeholder("x", f32, {3});
  Value c = exp(g.constant(Tensor::from_vector<float>({0, 1, 2}))) * 2.0 + iota(g, {3});
  Value y = x + c;
  Tensor in = Tensor::from_vector<float>({1, 1, 1});
  Session off(g, only(nullptr)), on(g, only(&PassOptions::constant_folding));
  const Plan& before = off.plan({{x, in}}, {y});
  const Plan& after = on.plan({{x, in}}, {y});
  EXPECT_EQ(ops_of(before)["exp"], 1);
  EXPECT_EQ(ops_of(after)["exp"], 0);
  EXPECT_EQ(ops_of(after)["add"], 1);  // only x + c is left
  EXPECT_EQ(ops_of(after)["constant"], 1);
  testing::expect_near(testing::values(off.run({{x, in}}, {y})[0]), on.run({{x, in}}, {y})[0], 1e-7,
                       0, "folded");
  // Variables and random seeds stay as they are: a variable is state, not a constant.
  Value v = g.variable("v", {3}, init::constant(1));
  const Plan& with_var = on.plan({}, {v * 2.0});
  EXPECT_EQ(ops_of(with_var)["variable"], 1);
  EXPECT_EQ(ops_of(with_var)["mul"], 1);
}

// Ops that read only the shape of an input (numel, full_like; the "like" input of
// broadcast_like, reshape_like and sum_to) fold once the plan knows the shape: mean's gradient
// 1 / numel(x) and the broadcast of a folded value are constants, while a node that reads a
// computed value (sum_to of x * 2) stays. A feed of another batch size compiles a plan of its
// own, with its own count.
TEST(Passes, ShapeOnlyInputsFoldOnceTheirShapeIsKnown) {
  Graph g;
  Value x = g.placeholder("x", f32, {-1, 3});
  Value scaled = x * 2.0;
  Value count = numel(scaled);
  Value ones = full_like(scaled, 1.0);
  Value summed = sum_to(scaled, g.constant(Tensor::from_vector<float>({0, 0, 0})));
  // [1, 3] reshaped like summed [3], then broadcast like scaled [batch, 3].
  Value spread = broadcast_like(
      reshape_like(g.constant(Tensor::from_vector<float>({1, 2, 3}, {1, 3})), summed), scaled);
  const std::vector<Value> fetch = {count, ones, spread, summed};
  Session off(g, only(nullptr)), on(g, only(&PassOptions::constant_folding));
  for (int64_t batch : {2, 5}) {
    const FeedList feeds = {{x, testing::random_tensor(f32, {batch, 3}, -1, 1, 7)}};
    const Plan& before = off.plan(feeds, fetch);
    const Plan& after = on.plan(feeds, fetch);
    EXPECT_EQ(ops_of(before)["numel"], 1);
    for (const char* op : {"numel", "full_like", "broadcast_like", "reshape_like"})
      EXPECT_EQ(ops_of(after)[op], 0) << op << " at batch " << batch;
    EXPECT_EQ(ops_of(after)["sum_to"], 1);  // reads x * 2, which is not a constant
    EXPECT_EQ(ops_of(after)["mul"], 1);
    const std::vector<Tensor> want = off.run(feeds, fetch), got = on.run(feeds, fetch);
    EXPECT_EQ(got[0].item<double>(), 3.0 * batch);
    for (size_t i = 0; i < fetch.size(); ++i) {
      EXPECT_EQ(got[i].shape(), want[i].shape()) << i;
      EXPECT_EQ(testing::values(got[i]), testing::values(want[i])) << i;
    }
  }
}

TEST(Passes, MatmulEpilogueFoldsTheBiasAndTheRelu) {
  Graph g;
  Value x = g.placeholder("x", f32, {5, 7});
  Value w = g.placeholder("w", f32, {7, 3});
  Value b = g.placeholder("b", f32, {3});
  Value inference = relu(matmul(x, w) + b);  // bias and relu fold
  Value shared = matmul(x, w, false, false) + b;
  Value training = relu(shared) * sigmoid(shared);  // the sum has two readers: bias only
  FeedList feeds = {{x, testing::random_tensor(f32, {5, 7}, -1, 1, 1)},
                    {w, testing::random_tensor(f32, {7, 3}, -1, 1, 2)},
                    {b, testing::random_tensor(f32, {3}, -1, 1, 3)}};
  Session off(g, only(nullptr)), on(g, only(&PassOptions::matmul_epilogue));
  const Plan& folded = on.plan(feeds, {inference});
  EXPECT_EQ(ops_of(folded)["matmul_bias"], 1);
  EXPECT_EQ(ops_of(folded)["relu"], 0);
  EXPECT_EQ(ops_of(folded)["matmul"], 0);
  EXPECT_EQ(folded.graph->node(folded.steps.back().node).attr<std::string>("activation"), "relu");
  const Plan& bias_only = on.plan(feeds, {training});
  EXPECT_EQ(ops_of(bias_only)["matmul_bias"], 1);
  EXPECT_EQ(ops_of(bias_only)["relu"], 1);
  for (const Value& y : {inference, training})
    EXPECT_TRUE(equal_bits(off.run(feeds, {y})[0], on.run(feeds, {y})[0]));
  // A fetched product is kept as it is.
  Value product = matmul(x, w);
  EXPECT_EQ(ops_of(on.plan(feeds, {product, product + b}))["matmul_bias"], 0);
  // In a training graph relu's gradient reads relu's output, not the sum, so the relu still
  // joins the product, and the gradients match the unfused graph's.
  Value loss = sum(square(relu(matmul(x, w) + b)));
  std::vector<Value> grads = gradients(loss, {w, b});
  const Plan& train = on.plan(feeds, {loss, grads[0], grads[1]});
  EXPECT_EQ(ops_of(train)["relu"], 0);
  int with_relu = 0;
  for (int32_t id = 0; id < train.graph->num_nodes(); ++id) {
    const Node& node = train.graph->node(id);
    with_relu += node.op_name() == "matmul_bias" && node.attr<std::string>("activation") == "relu";
  }
  EXPECT_EQ(with_relu, 1);
  std::vector<Tensor> expected = off.run(feeds, {loss, grads[0], grads[1]});
  std::vector<Tensor> got = on.run(feeds, {loss, grads[0], grads[1]});
  for (size_t i = 0; i < got.size(); ++i) EXPECT_TRUE(equal_bits(expected[i], got[i])) << i;
}

// On the CPU an add of a matrix of the product's shape (a residual, a recurrent step's input
// projection, a gradient reaching a value two ways: add_n of two) folds too: the gemm starts
// from it. On a GPU the pass leaves it to the elementwise kernels.
TEST(Passes, MatmulEpilogueStartsTheProductFromAnAddendOnTheCpu) {
  auto build = [](Graph& g) {
    Value x = g.placeholder("x", f32, {5, 7});
    Value w = g.placeholder("w", f32, {7, 3});
    Value r = g.placeholder("r", f32, {5, 3});
    Value y = matmul(x, w) + r;
    Value z = relu(r + matmul(x, w));  // the product on the right; the relu joins
    // x reaches the loss two ways: its gradient is add_n(dy W^T, 2 x).
    Value loss = sum(square(matmul(x, w))) + sum(square(x));
    return std::vector<Value>{x, w, r, y, z, gradients(loss, {x})[0]};
  };
  Graph g;
  const std::vector<Value> v = build(g);
  FeedList feeds = {{v[0], testing::random_tensor(f32, {5, 7}, -1, 1, 1)},
                    {v[1], testing::random_tensor(f32, {7, 3}, -1, 1, 2)},
                    {v[2], testing::random_tensor(f32, {5, 3}, -1, 1, 3)}};
  Session off(g, only(nullptr)), on(g, only(&PassOptions::matmul_epilogue));
  auto addends = [](const Plan& plan) {
    int count = 0;
    for (int32_t id = 0; id < plan.graph->num_nodes(); ++id) {
      const Node& node = plan.graph->node(id);
      count += node.op_name() == "matmul_bias" && node.outputs()[0].shape.rank() == 2 &&
               plan.graph->value(node.inputs()[2]).shape().rank() == 2;
    }
    return count;
  };
  const Plan& sums = on.plan(feeds, {v[3], v[4]});
  EXPECT_EQ(addends(sums), 2);
  EXPECT_EQ(ops_of(sums)["add"], 0);
  EXPECT_EQ(ops_of(sums)["relu"], 0);
  const Plan& gradient = on.plan(feeds, {v[5]});
  EXPECT_EQ(ops_of(gradient)["add_n"], 0);
  EXPECT_GE(addends(gradient), 1);
  // The sum is rounded once per term from the addend on, not after the product: to rounding.
  for (const Value& out : {v[3], v[4], v[5]})
    testing::expect_near(testing::values(off.run(feeds, {out})[0]), on.run(feeds, {out})[0], 1e-6,
                         1e-6, out.name());
  Graph gpu_graph;
  build(gpu_graph);
  make_matmul_epilogue(DeviceKind::cuda)->run(gpu_graph);
  int folded = 0;
  for (int32_t id = 0; id < gpu_graph.num_nodes(); ++id)
    folded += gpu_graph.node(id).op_name() == "matmul_bias";
  EXPECT_EQ(folded, 0) << "an addend folded on a GPU";
}

// On the CPU an SGD or Adam update joins the product that makes its gradient (the weight
// gradient of a linear layer): the same bits as the update after a stored gradient, for every
// optimizer variant, row and column blocks (several per thread, and a remainder), transposed
// factors, f32 and f64 (to rounding: below), 1 and 2 threads, three steps so the slots carry
// over.
TEST(Passes, OptimizerUpdatesJoinTheWeightGradientsProduct) {
  struct Layer {
    int64_t batch, in, out;
    bool transposed;  // y = x W^T with W [out, in] (the gradient is dy^T x), else y = x W
  };
  // Weights of 1.3 MB (row blocks), 540 KB (column blocks: wide and short), 2.9 MB with 700
  // columns (blocks cut in rows and columns), 5 MB (row blocks of ~2 MiB with OpenBLAS's sgemm,
  // which cuts no columns: several per thread and a remainder), and small ones. The last one's
  // batch makes x and dy larger than dW: its update stays apart (the fused one would keep them
  // alive until the updates run).
  const std::vector<Layer> layers = {
      {24, 1100, 300, false}, {17, 64, 2100, false}, {6, 1030, 700, false}, {8, 2101, 600, false},
      {2, 7, 3, true},        {9, 700, 30, true},    {40, 16, 8, false}};
  std::vector<std::pair<std::string, std::function<Value(Value)>>> optimizers = {
      {"sgd", [](Value loss) { return optim::SGD({.lr = 0.1}).minimize(loss); }},
      {"sgd momentum",
       [](Value loss) {
         return optim::SGD({.lr = 0.05, .momentum = 0.9, .weight_decay = 0.01}).minimize(loss);
       }},
      // Dampened after the first step: the step count is an input.
      {"sgd dampening",
       [](Value loss) {
         return optim::SGD({.lr = 0.05, .momentum = 0.9, .dampening = 0.3}).minimize(loss);
       }},
      {"nesterov",
       [](Value loss) {
         return optim::SGD({.lr = 0.05, .momentum = 0.8, .nesterov = true}).minimize(loss);
       }},
      {"adam",
       [](Value loss) { return optim::Adam({.lr = 0.01, .weight_decay = 0.1}).minimize(loss); }},
      {"adamw",
       [](Value loss) { return optim::AdamW({.lr = 0.01, .weight_decay = 0.1}).minimize(loss); }},
      // Ascent differentiates -loss: the weight gradient stays a product the update folds.
      {"adam maximize",
       [](Value loss) { return optim::Adam({.lr = 0.01, .maximize = true}).minimize(loss); }},
      // This step's momentum (beta1) as an input: the schedule cycles it.
      {"sgd one cycle",
       [](Value loss) {
         return optim::SGD({.lr = 0.05, .schedule = optim::Schedule::one_cycle(20)}).minimize(loss);
       }},
      {"adam cyclic", [](Value loss) {
         return optim::Adam({.lr = 0.01, .schedule = optim::Schedule::cyclic(0.001, 2)})
             .minimize(loss);
       }}};
  // f32 (oneDNN's sgemm) computes an element of C the same however C is cut in rows and columns
  // with its AVX-512 kernels; its AVX2 kernels may round an element of a block of another shape
  // differently (one thread: the fused 64 x 2100 gradient in two blocks, the unfused one whole).
  // These layers' steps diverge (lr 0.1 on a sum over 7,200 squares), which turns a last-bit
  // difference into a large one within three steps, so there the comparison is after one step
  // and to f32 rounding. f64 (OpenBLAS's dgemm) may round an element at a block's edge
  // differently, and three steps carry that on (3.7e-11 relative on the 2101 x 600 layer).
  constexpr bool kF32CutInvariant =
#if defined(__AVX512F__)
      true;
#else
      false;
#endif
  int fused = 0;
  for (DType dtype : {f32, f64})
    for (const Layer& layer : layers)
      for (const auto& [optimizer, minimize] : optimizers) {
        SCOPED_TRACE(str(optimizer, " ", dtype, " ", layer.in, "x", layer.out));
        Graph g;
        Value x = g.placeholder("x", dtype, {layer.batch, layer.in});
        const Shape w_shape =
            layer.transposed ? Shape{layer.out, layer.in} : Shape{layer.in, layer.out};
        Value w = g.variable("w", w_shape, init::uniform(-0.1, 0.1, 3), dtype);
        Value y = matmul(x, w, false, layer.transposed);
        Value train = minimize(sum(square(y - 0.5)));
        FeedList feeds = {{x, testing::random_tensor(dtype, {layer.batch, layer.in}, -1, 1, 5)}};
        std::vector<Tensor> results;
        // Unfused and fused on 2 threads, then unfused and fused on 1.
        for (int variant = 0; variant < 4; ++variant) {
          const bool fuse = variant % 2 == 1;
          SessionOptions options = only(fuse ? &PassOptions::matmul_epilogue : nullptr);
          options.intra_op_threads = variant < 2 ? 2 : 1;
          Session s(g, options);
          const Plan& plan = s.plan(feeds, {}, {train});
          const int products =
              ops_of(plan)["matmul_sgd_update"] + ops_of(plan)["matmul_adam_update"];
          const bool fits = layer.batch * (layer.in + layer.out) <= layer.in * layer.out;
          EXPECT_EQ(products, fuse && fits ? 1 : 0);
          fused += products;
          const int steps = dtype == f32 && !kF32CutInvariant ? 1 : 3;
          for (int step = 0; step < steps; ++step) s.run(feeds, {}, {train});
          results.push_back(s.variable_value(w));
        }
        EXPECT_FALSE(equal_bits(results[0], Session(g).variable_value(w)));  // training moved w
        // Fused against unfused on as many threads (see kF32CutInvariant).
        for (int variant : {1, 3})
          if (dtype == f32 && kF32CutInvariant)
            EXPECT_TRUE(equal_bits(results[variant - 1], results[variant]))
                << "variant " << variant;
          else if (dtype == f32)
            testing::expect_near(testing::values(results[variant - 1]), results[variant], 1e-5,
                                 1e-6, str("variant ", variant));
          else
            testing::expect_near(testing::values(results[variant - 1]), results[variant], 1e-10,
                                 1e-13, str("variant ", variant));
      }
  EXPECT_EQ(fused, 2 * 6 * static_cast<int>(optimizers.size()) * 2);
  // For a GPU the update stays after the product: the product updates have CPU kernels only.
  for (DeviceKind device : {DeviceKind::cuda, DeviceKind::cpu}) {
    Graph g;
    Value x = g.placeholder("x", f32, {1, 3});  // x and dy: 5 elements, dW: 6
    Value w = g.variable("w", {3, 2}, init::uniform(-0.1, 0.1, 3));
    Value train = optim::SGD({.lr = 0.1}).minimize(sum(matmul(x, w)));
    g.add_signature({.name = "train", .inputs = {x}, .targets = {train}});
    PassOptions options;
    options.device = device;
    optimize_graph(g, options);
    int products = 0;
    for (int32_t id = 0; id < g.num_nodes(); ++id)
      products += g.node(id).op_name() == "matmul_sgd_update";
    EXPECT_EQ(products, device == DeviceKind::cpu ? 1 : 0);
  }
  // Written by hand (as a graph file could hold it), a product update whose factors do not make
  // the variable's shape is refused when it is built, naming the shapes.
  Graph g;
  Value var = g.variable("var", {3, 2}, init::zeros());
  Value a = g.placeholder("a", f32, {4, 3}), b = g.placeholder("b", f32, {4, 5});
  testing::expect_error<GraphError>(
      [&] {
        g.add("matmul_sgd_update", {var, var, a, b, g.scalar(0.1, f32)}, {{"transpose_a", true}});
      },
      {"[matmul_sgd_update]", "[4, 3]", "[4, 5]", "not the variable's shape [3, 2]"});
  testing::expect_error<GraphError>(
      [&] {
        g.add("matmul_sgd_update", {var, var, b, b, g.scalar(0.1, f32)});
      },
      {"[matmul_sgd_update]", "with a [4, 5] and b [4, 5]"});
}

// A weight used at every step (an unrolled recurrence's W) gets add_n of one product per use
// from autograd; the pass makes it one product over the concatenated contractions: the same
// gradient to rounding, no add_n left, and the optimizer update then folds into it. A sum with
// a term that is not a product keeps an add_n of the merged product and that term; products
// with other transposes stay terms.
TEST(Passes, SumsOfProductsBecomeOneProduct) {
  Graph g;
  Value w = g.variable("w", {60, 40}, init::uniform(-0.2, 0.2, 3));
  std::vector<Value> xs;
  Value loss;
  for (int t = 0; t < 5; ++t) {
    xs.push_back(g.placeholder(str("x", t), f32, {3, 60}));
    Value term = sum(square(tanh(matmul(xs.back(), w))));  // dW_t = x_t^T dY_t
    loss = t == 0 ? term : loss + term;
  }
  FeedList feeds;
  for (int t = 0; t < 5; ++t)
    feeds.emplace_back(xs[t], testing::random_tensor(f32, {3, 60}, -1, 1, 10 + t));
  const Value grad = gradients(loss, {w})[0];
  Session off(g, only(nullptr)), on(g, only(&PassOptions::product_sum_merging));
  EXPECT_EQ(ops_of(off.plan(feeds, {grad}))["add_n"], 1);
  const Plan& merged = on.plan(feeds, {grad});
  EXPECT_EQ(ops_of(merged)["add_n"], 0);
  EXPECT_EQ(ops_of(merged)["concat"], 2);
  int deep = 0;  // the merged product contracts over the 5 x 3 rows of every x_t
  for (int32_t id = 0; id < merged.graph->num_nodes(); ++id) {
    const Node& node = merged.graph->node(id);
    if (node.op_name() == "matmul" && node.inputs().size() == 2)
      deep += merged.graph->value(node.inputs()[0]).shape() == Shape{15, 60};
  }
  EXPECT_EQ(deep, 1);
  testing::expect_near(testing::values(off.run(feeds, {grad})[0]), on.run(feeds, {grad})[0], 1e-5,
                       1e-6, "merged gradient");

  // w also used elementwise: its gradient's sum keeps that term beside the merged product; a
  // use as w^T (x [3, 40] times w^T) gives a product with other transposes, which stays a term.
  Value extra = g.placeholder("extra", f32, {3, 40});
  Value both = loss + sum(w * w) + sum(matmul(extra, w, false, true));
  FeedList more = feeds;
  more.emplace_back(extra, testing::random_tensor(f32, {3, 40}, -1, 1, 20));
  const Value grad2 = gradients(both, {w})[0];
  const Plan& mixed = on.plan(more, {grad2});
  EXPECT_EQ(ops_of(mixed)["add_n"], 1);
  EXPECT_EQ(ops_of(mixed)["concat"], 2);
  testing::expect_near(testing::values(off.run(more, {grad2})[0]), on.run(more, {grad2})[0], 1e-5,
                       1e-6, "merged gradient beside other terms");

  // In training, Adam's update joins the merged product (the passes as a Session runs them;
  // its operands, 15 x 60 and 15 x 40, are smaller than the 60 x 40 gradient).
  Value step = optim::Adam({.lr = 0.01}).minimize(loss);
  Session all(g);
  const Plan& trained = all.plan(feeds, {}, {step});
  EXPECT_EQ(ops_of(trained)["add_n"], 0);
  EXPECT_EQ(ops_of(trained)["matmul_adam_update"], 1);
}

TEST(Passes, CommonSubexpressionsAreMergedButVariablesAreNot) {
  Graph g;
  Value x = g.placeholder("x", f32, {4});
  Value y = exp(x) + exp(x) * sigmoid(x) + sigmoid(x);
  Value a = g.variable("a", {4}, init::zeros()), b = g.variable("b", {4}, init::zeros());
  Value z = a + b;
  Session off(g, only(nullptr)), on(g, only(&PassOptions::common_subexpression_elimination));
  Tensor in = testing::random_tensor(f32, {4}, -1, 1, 2);
  EXPECT_EQ(ops_of(off.plan({{x, in}}, {y, z}))["exp"], 2);
  const Plan& after = on.plan({{x, in}}, {y, z});
  EXPECT_EQ(ops_of(after)["exp"], 1);
  EXPECT_EQ(ops_of(after)["sigmoid"], 1);
  EXPECT_EQ(ops_of(after)["variable"], 2);  // two variables with equal attributes stay two
  EXPECT_TRUE(equal_bits(off.run({{x, in}}, {y})[0], on.run({{x, in}}, {y})[0]));
}

TEST(Passes, DeadCodeIsRemoved) {
  Graph g;
  Value x = g.placeholder("x", f32, {4});
  Value used = relu(x);
  std::vector<Value> parts = split(x * 2.0, 2, 0);  // only part 0 is fetched
  Session s(g, only(nullptr));
  const Plan& plan = s.plan({{x, Tensor::zeros(f32, {4})}}, {used, parts[0]});
  EXPECT_EQ(ops_of(plan)["split"], 1);
  EXPECT_EQ(plan.graph->num_nodes(), 5);  // feed, relu, scalar, mul, split
}

TEST(Passes, AlgebraicSimplificationRemovesNoOps) {
  Graph g;
  Value x = g.placeholder("x", f32, {2, 3});
  Value y = transpose(transpose(x, {1, 0}), {1, 0});     // the identity
  y = reshape(reshape(y, {3, 2}), {6});                  // one reshape
  y = identity(y) * 1.0 + 0.0;                           // nothing
  y = cast(y, f32) - 0.0;                                // nothing
  Value z = sum_to(y, g.placeholder("like", f32, {6}));  // same shape: nothing
  Session off(g, only(nullptr)), on(g, only(&PassOptions::algebraic_simplification));
  Tensor in = testing::random_tensor(f32, {2, 3}, -1, 1, 3), like = Tensor::zeros(f32, {6});
  FeedList feeds = {{x, in}, {g.value("like"), like}};
  auto counts = ops_of(on.plan(feeds, {z}));
  EXPECT_EQ(counts["transpose"], 0);
  EXPECT_EQ(counts["reshape"], 1);
  EXPECT_EQ(counts["mul"] + counts["add"] + counts["sub"] + counts["cast"] + counts["identity"] +
                counts["sum_to"],
            0);
  EXPECT_TRUE(equal_bits(off.run(feeds, {z})[0], on.run(feeds, {z})[0]));
  Value t = transpose(transpose(x, {1, 0}), {1, 0});
  Value u = transpose(transpose(g.placeholder("c", f32, {2, 3, 4}), {1, 0, 2}), {0, 2, 1});
  auto counts2 = ops_of(on.plan({{x, in}, {g.value("c"), Tensor::zeros(f32, {2, 3, 4})}}, {t, u}));
  EXPECT_EQ(counts2["transpose"], 1);  // the second pair composes into one
}

// relu's gradient behind a max-pool of a relu folds into the pool's gradient (positive_only):
// the same bits, one pass fewer; on tiled and padded windows, with ties at 0, NaN and infinities.
TEST(Passes, ReluGradientFoldsIntoTheMaxPoolGradient) {
  for (const Pool2dOptions& window :
       {Pool2dOptions{.kernel_size = {2, 2}}, Pool2dOptions{.kernel_size = {3, 3}},
        Pool2dOptions{.kernel_size = {3, 2}, .stride = {2, 1}, .padding = {1, 1}}}) {
    Graph g;
    Value z = g.placeholder("z", f32, {2, 3, 6, 8});
    Value pooled = max_pool2d(relu(z), window);
    Value dy = g.placeholder("dy", f32, pooled.shape());
    Value dz = gradients(sum(pooled * dy), {z})[0];
    std::vector<float> values(2 * 3 * 6 * 8);
    const float specials[] = {0.0f, -0.0f, -1.5f, 2.0f, NAN, INFINITY, -INFINITY, 0.5f};
    for (size_t i = 0; i < values.size(); ++i)  // mostly random, a special value in every 5th
      values[i] =
          i % 5 == 0 ? specials[(i / 5) % 8] : static_cast<float>((i * 7919) % 200) / 100.0f - 1.2f;
    Tensor zin = Tensor::from_vector<float>(values, {2, 3, 6, 8});
    Tensor din = testing::random_tensor(f32, pooled.shape(), 0.5, 2, 7);
    FeedList feeds = {{z, zin}, {dy, din}};
    Session off(g, only(nullptr)), on(g, only(&PassOptions::algebraic_simplification));
    auto counts = ops_of(on.plan(feeds, {dz}));
    EXPECT_EQ(counts["where"] + counts["greater"], 0);
    EXPECT_EQ(counts["max_pool2d_backward"], 1);
    EXPECT_EQ(ops_of(off.plan(feeds, {dz}))["where"], 1);
    EXPECT_TRUE(equal_bits(off.run(feeds, {dz})[0], on.run(feeds, {dz})[0]))
        << "kernel " << window.kernel_size[0] << "x" << window.kernel_size[1];
  }
}

// A convolution's per-channel bias (as nn::Conv2d adds it) joins the convolution: same bits.
TEST(Passes, ConvolutionBiasJoinsTheConvolution) {
  for (int64_t channels : {2, 16}) {  // im2col + gemm, and oneDNN (8 or more channels)
    Graph g;
    Value x = g.placeholder("x", f32, {3, channels, 7, 6});
    Value w = g.placeholder("w", f32, {5, channels, 3, 3});
    Value b = g.placeholder("b", f32, {5});
    Value y = relu(conv2d(x, w, {.padding = {1, 1}}) + reshape(b, {1, 5, 1, 1}));
    FeedList feeds = {{x, testing::random_tensor(f32, {3, channels, 7, 6}, -1, 1, 1)},
                      {w, testing::random_tensor(f32, {5, channels, 3, 3}, -1, 1, 2)},
                      {b, testing::random_tensor(f32, {5}, -1, 1, 3)}};
    Session off(g, only(nullptr)), on(g, only(&PassOptions::matmul_epilogue));
    auto counts = ops_of(on.plan(feeds, {y}));
    EXPECT_EQ(counts["add"], 0);
    EXPECT_EQ(counts["conv2d"], 1);
    EXPECT_TRUE(equal_bits(off.run(feeds, {y})[0], on.run(feeds, {y})[0])) << channels;
  }
}

// A relu that alone reads batch norm's y joins the normalize op (forward and, through relu's
// gradient, which reads relu's output, the training graph): the same bits, on affine and plain
// normalizations, with NaN, infinities and signed zeros in x. A y with another reader keeps its
// relu.
TEST(Passes, ReluJoinsTheNormalizationItAloneReads) {
  for (bool affine : {true, false}) {
    Graph g;
    Value x = g.placeholder("x", f32, {4, 3, 5, 6});
    Value scale = g.placeholder("scale", f32, {3});
    Value shift = g.placeholder("shift", f32, {3});
    Normalized n =
        affine ? normalize(x, {0, 2, 3}, 1e-5, true, scale, shift) : normalize(x, {0, 2, 3});
    Value pooled = max_pool2d(relu(n.y), {.kernel_size = {2, 2}});
    Value dy = g.placeholder("dy", f32, pooled.shape());
    std::vector<Value> wrt = {x};
    if (affine) wrt.insert(wrt.end(), {scale, shift});
    std::vector<Value> grads = gradients(sum(pooled * dy), wrt);
    std::vector<Value> fetch = {pooled};
    fetch.insert(fetch.end(), grads.begin(), grads.end());
    std::vector<float> values(4 * 3 * 5 * 6);
    const float specials[] = {0.0f, -0.0f, NAN, INFINITY, -INFINITY};
    for (size_t i = 0; i < values.size(); ++i)
      values[i] = static_cast<float>((i * 7919) % 200) / 100.0f - 1.2f;
    FeedList feeds = {{x, Tensor::from_vector<float>(values, {4, 3, 5, 6})},
                      {scale, testing::random_tensor(f32, {3}, 0.5, 2, 2)},
                      {shift, testing::random_tensor(f32, {3}, -1, 1, 3)},
                      {dy, testing::random_tensor(f32, pooled.shape(), -1, 1, 4)}};
    SessionOptions both = only(&PassOptions::matmul_epilogue);
    both.passes.algebraic_simplification = true;  // relu's gradient into the pool's first
    Session off(g, only(nullptr)), on(g, both);
    const Plan& folded = on.plan(feeds, fetch);
    EXPECT_EQ(ops_of(folded)["relu"], 0) << affine;
    int with_relu = 0;
    for (int32_t id = 0; id < folded.graph->num_nodes(); ++id) {
      const Node& node = folded.graph->node(id);
      if (node.op_name() == "normalize")
        with_relu += node.attr<std::string>("activation") == "relu";
    }
    EXPECT_EQ(with_relu, 1) << affine;
    std::vector<Tensor> want = off.run(feeds, fetch), got = on.run(feeds, fetch);
    for (size_t i = 0; i < want.size(); ++i)
      EXPECT_TRUE(equal_bits(want[i], got[i])) << "affine " << affine << ", output " << i;
    // Special values (one channel's statistics turn NaN): still the same bits.
    for (size_t i = 0; i < values.size(); i += 17) values[i] = specials[(i / 17) % 5];
    feeds[0].second = Tensor::from_vector<float>(values, {4, 3, 5, 6});
    want = off.run(feeds, fetch);
    got = on.run(feeds, fetch);
    for (size_t i = 0; i < want.size(); ++i)
      EXPECT_TRUE(equal_bits(want[i], got[i])) << "special, affine " << affine << ", output " << i;
  }
  // y read by the relu and by something else: the relu stays.
  Graph g;
  Value x = g.placeholder("x", f32, {4, 3, 5, 6});
  Value y = normalize(x, {0, 2, 3}).y;
  Value z = relu(y) + y;
  FeedList feeds = {{x, testing::random_tensor(f32, {4, 3, 5, 6}, -1, 1, 5)}};
  Session on(g, only(&PassOptions::matmul_epilogue));
  EXPECT_EQ(ops_of(on.plan(feeds, {z}))["relu"], 1);
}

TEST(Passes, ElementwiseFusionMakesOneKernel) {
  Graph g;
  Value x = g.placeholder("x", f32, {64, 32});
  Value b = g.placeholder("b", f32, {32});
  Value col = g.placeholder("col", f32, {64, 1});
  Value h = relu(x * 2.0 + b);  // scalar and row inputs: fusable
  Value shared = tanh(h);       // read twice: stays materialized
  Value y = shared * sigmoid(shared) - where(greater(x, g.scalar(0, f32)), x, -x);
  Value c = exp(x + col) * 3.0;  // a column input: the add cannot fuse
  Tensor xin = testing::random_tensor(f32, {64, 32}, -2, 2, 4);
  Tensor bin = testing::random_tensor(f32, {32}, -1, 1, 5);
  Tensor cin = testing::random_tensor(f32, {64, 1}, -1, 1, 6);
  FeedList feeds = {{x, xin}, {b, bin}, {col, cin}};
  Session off(g, only(nullptr)), on(g, only(&PassOptions::elementwise_fusion));
  const Plan& plan = on.plan(feeds, {y, c});
  auto counts = ops_of(plan);
  EXPECT_EQ(counts["fused_elementwise"], 3) << "relu(x*2+b); y; exp(.)*3";
  EXPECT_EQ(counts["tanh"], 0);
  EXPECT_EQ(counts["add"], 1);  // x + col
  EXPECT_EQ(counts["where"] + counts["greater"] + counts["sigmoid"] + counts["relu"], 0);
  auto a = off.run(feeds, {y, c}), f = on.run(feeds, {y, c});
  testing::expect_near(testing::values(a[0]), f[0], 1e-6, 1e-6, "fused y");
  testing::expect_near(testing::values(a[1]), f[1], 1e-6, 1e-6, "fused c");
}

// A broadcast the fused kernel can do as it reads (a scalar, a trailing row) is read through:
// the broadcast value is never written. A column's broadcast stays.
TEST(Passes, ElementwiseFusionReadsThroughBroadcasts) {
  Graph g;
  Value x = g.placeholder("x", f32, {64, 32});
  Value col = g.placeholder("col", f32, {64, 1});
  Value spread_mean = broadcast_like(mean(x), x);               // a mean's gradient, say
  Value spread_row = broadcast_to(sum(x, {0}), Shape{64, 32});  // a row over the batch
  Value y = exp(x * spread_mean) + spread_row;
  Value z = tanh(x) * broadcast_like(col, x);
  Tensor xin = testing::random_tensor(f32, {64, 32}, -1, 1, 7);
  Tensor cin = testing::random_tensor(f32, {64, 1}, -1, 1, 8);
  FeedList feeds = {{x, xin}, {col, cin}};
  Session off(g, only(nullptr)), on(g, only(&PassOptions::elementwise_fusion));
  auto counts = ops_of(on.plan(feeds, {y, z}));
  EXPECT_EQ(counts["fused_elementwise"], 2);
  EXPECT_EQ(counts["broadcast_to"], 0);
  EXPECT_EQ(counts["broadcast_like"], 1) << "the column's";
  auto a = off.run(feeds, {y, z}), f = on.run(feeds, {y, z});
  testing::expect_near(testing::values(a[0]), f[0], 1e-6, 1e-6, "through a scalar and a row");
  testing::expect_near(testing::values(a[1]), f[1], 1e-6, 1e-6, "beside a column");
}

// A variable that the graph updates is read inside a fused group only where every update
// reads the group's result (so runs after it): running statistics, v <- 0.9 v + 0.1 mean(x),
// become one kernel. exp(w 2) + (w after its update) needs w both before and after the
// update: the read of w stays apart, so it still runs before the update.
TEST(Passes, FusionReadsAnUpdatedVariableOnlyBeforeItsUpdates) {
  Graph g;
  Value x = g.placeholder("x", f32, {8, 4});
  Value running = g.variable("running", {4}, init::constant(1));
  Value blended = running * 0.9 + mean(x, {0}) * 0.1;
  Value update = assign(running, blended);
  Value w = g.variable("w", {4}, init::constant(2));
  Value bumped = assign_add(w, g.constant(Tensor::from_vector<float>({10, 20, 30, 40})));
  Value both = exp(w * 0.5) + bumped;
  const FeedList feeds = {{x, testing::random_tensor(f32, {8, 4}, -1, 1, 9)}};
  const std::vector<Value> fetch = {blended, both};
  Session off(g, only(nullptr)), on(g, only(&PassOptions::elementwise_fusion));
  auto counts = ops_of(on.plan(feeds, fetch, {update}));
  EXPECT_EQ(counts["fused_elementwise"], 2);
  EXPECT_EQ(counts["mul"], 1) << "w * 0.5 stays apart; running * 0.9 joins its group";
  for (int run = 0; run < 2; ++run) {
    const std::vector<Tensor> want = off.run(feeds, fetch, {update});
    const std::vector<Tensor> got = on.run(feeds, fetch, {update});
    testing::expect_near(testing::values(want[0]), got[0], 1e-6, 1e-7, "running statistics");
    testing::expect_near(testing::values(want[1]), got[1], 1e-6, 1e-7, "w before its update");
  }
  EXPECT_EQ(testing::values(on.variable_value(running)),
            testing::values(off.variable_value(running)));
}

TEST(Passes, FetchedIntermediatesAreKept) {
  Graph g;
  Value x = g.placeholder("x", f64, {5});
  Value mid = exp(x) + 1.0;
  Value y = log(mid) * 2.0;
  Session s(g);
  Tensor in = testing::random_tensor(f64, {5}, -1, 1, 9);
  auto out = s.run({{x, in}}, {y, mid});
  for (int i = 0; i < 5; ++i) {
    double m = std::exp(in.element(i)) + 1;
    EXPECT_NEAR(out[1].element(i), m, 1e-15);
    EXPECT_NEAR(out[0].element(i), 2 * std::log(m), 1e-14);
  }
}

// Random graphs: every combination of passes gives the same results as no passes.
TEST(Passes, RandomGraphsGiveTheSameResultsWithAndWithoutPasses) {
  std::mt19937 rng(42);
  const char* unary[] = {"tanh", "sigmoid", "neg", "square", "exp", "relu", "abs", "sin"};
  const char* binary[] = {"add", "sub", "mul", "maximum", "minimum"};
  for (int trial = 0; trial < 60; ++trial) {
    Graph g;
    Value x = g.placeholder("x", f64, {-1, 8});
    Value r = g.placeholder("r", f64, {8});
    std::vector<Value> pool = {x, r, g.constant(testing::random_tensor(f64, {8}, -1, 1, trial))};
    for (int s = 0; s < 12; ++s) {
      Value a = pool[rng() % pool.size()];
      Value v;
      switch (rng() % 5) {
        case 0:
        case 1:
          v = g.add(unary[rng() % 8], {a});
          break;
        case 2:
        case 3: {
          Value b = pool[rng() % pool.size()];
          Shape out;
          v = broadcast_shapes(a.shape(), b.shape(), &out) ? g.add(binary[rng() % 5], {a, b})
                                                           : a * 1.0;
          break;
        }
        default:
          v = a.shape().rank() == 2 ? sum(a, {1}, true) + 0.0 : transpose(transpose(a));
          break;
      }
      pool.push_back(v);
    }
    std::vector<Value> fetches = {pool.back(), pool[pool.size() / 2]};
    Tensor xin = testing::random_tensor(f64, {3, 8}, -1, 1, 100 + trial);
    Tensor rin = testing::random_tensor(f64, {8}, -1, 1, 200 + trial);
    FeedList feeds = {{x, xin}, {r, rin}};
    Session plain(g, only(nullptr)), optimized(g);
    auto a = plain.run(feeds, fetches), b = optimized.run(feeds, fetches);
    for (size_t i = 0; i < a.size(); ++i)
      testing::expect_near(testing::values(a[i]), b[i], 1e-12, 1e-12, str("trial ", trial));
  }
}

}  // namespace
}  // namespace kiln

namespace kiln {
namespace {

// A pass that counts its runs and reports a change on the first `changes` of them.
class CountingPass final : public Pass {
 public:
  CountingPass(int* runs, int changes) : runs_(runs), changes_(changes) {}
  const char* name() const override { return "counting"; }
  bool run(Graph&) override { return ++*runs_ <= changes_; }

 private:
  int* runs_;
  int changes_;
};

// Points every reader of the first add's output at the add's input b, whose shape differs.
class BrokenPass final : public Pass {
 public:
  const char* name() const override { return "broken_rewrite"; }
  bool run(Graph& graph) override {
    for (int32_t id = 0; id < graph.num_nodes(); ++id)
      if (graph.node(id).op_name() == "add") {
        graph.replace_uses({{OutputRef{id, 0}, graph.node(id).inputs()[1]}});
        return true;
      }
    return false;
  }
};

TEST(PassPipeline, RunsPassesInOrderAndRepeatsFixedPointGroups) {
  Graph g;
  Value x = g.placeholder("x", f32, {3});
  g.add_signature({"s", {x}, {neg(x)}, {}});
  int outer = 0, inner = 0;
  PassPipeline pipeline("test", /*verify=*/true);
  pipeline.add_pass<CountingPass>(&outer, 1);
  auto& fixed = pipeline.add_pass<FixedPointPipeline>("fixed", 8, true);
  fixed.add_pass<CountingPass>(&inner, 3);
  EXPECT_TRUE(pipeline.run(g));
  EXPECT_EQ(outer, 1);
  EXPECT_EQ(inner, 4);  // three rounds that changed something, then one that did not
  EXPECT_EQ(pipeline.changed(), std::vector<std::string>{"counting"});
  EXPECT_FALSE(pipeline.run(g));  // the outer pass now reports no change; the group neither
}

TEST(PassPipeline, TheInvariantCheckerNamesThePassThatBrokeTheGraph) {
  Graph g;
  Value a = g.placeholder("a", f32, {4, 3});
  Value b = g.placeholder("b", f32, {3});
  Value y = exp(a + b);
  g.add_signature({"s", {a, b}, {y}, {}});
  PassPipeline pipeline("test", /*verify=*/true);
  pipeline.add_pass<BrokenPass>();
  testing::expect_error([&] { pipeline.run(g); }, {"[passes] after broken_rewrite", "(exp)",
                                                   "records outputs f32[4, 3]", "now give f32[3]"});
  EXPECT_TRUE(verify_passes_by_default()) << "CTest sets KILN_VERIFY_PASSES=1";
}

TEST(PassPipeline, ARegisteredPassRunsInEveryCompilationWhileRegistered) {
  Graph g;
  Value x = g.placeholder("x", f32, {3});
  Value y = x * 2.0;
  int runs = 0;
  {
    PassRegistration registration(PassStage::after_fusion, [&](const PassOptions&) {
      return std::make_unique<CountingPass>(&runs, 1);
    });
    Session s(g);
    s.run({{x, Tensor::full(f32, {3}, 1.0)}}, {y});
    EXPECT_EQ(runs, 1);
    const Plan& plan = s.plan({{x, Tensor::full(f32, {3}, 1.0)}}, {y});
    EXPECT_NE(std::find(plan.passes_applied.begin(), plan.passes_applied.end(), "counting"),
              plan.passes_applied.end());
  }
  Session s(g);
  s.run({{x, Tensor::full(f32, {3}, 1.0)}}, {y});
  EXPECT_EQ(runs, 1);  // unregistered with its handle
}

}  // namespace
}  // namespace kiln
