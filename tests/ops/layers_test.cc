// kiln::nn layers (ops/layers.h): variable names and initialization, shared variables across
// calls, the train/eval switch in one graph, attention against the direct formula, and the
// errors a user can hit.
#include <cmath>

#include "test_util.h"

namespace kiln {
namespace {

using testing::expect_error;

TEST(Layers, VariablesAreNamedUnderTheLayerAndInitializedAsPyTorch) {
  Graph g;
  nn::Sequential net(g, "net");
  nn::Linear& fc = net.add<nn::Linear>("fc", 400, 30);
  net.add<nn::BatchNorm2d>("bn", 30);
  net.add("relu", [](const Value& x) { return relu(x); });
  std::vector<std::string> names;
  for (const Value& v : net.parameters()) names.push_back(v.name());
  EXPECT_EQ(names, (std::vector<std::string>{"net/fc/weight", "net/fc/bias", "net/bn/weight",
                                             "net/bn/bias"}));
  EXPECT_NE(g.find_node("net/bn/running_mean"), nullptr);  // state, not a parameter
  Session s(g);
  Tensor w = s.variable_value(fc.weight);
  double bound = 0, mean = 0;
  for (int64_t i = 0; i < w.numel(); ++i) {
    bound = std::max(bound, std::abs(w.element(i)));
    mean += w.element(i) / w.numel();
  }
  EXPECT_LE(bound, 1 / std::sqrt(400.0));  // uniform in +-1/sqrt(fan_in)
  EXPECT_GT(bound, 0.9 / std::sqrt(400.0));
  EXPECT_NEAR(mean, 0, 0.005);
  // A second model of the same names starts from the same values: seeds come from names.
  Graph g2;
  nn::Linear again(g2, "fc", 400, 30);
  Session s2(g2);
  EXPECT_NE(s2.variable_value(again.weight).to_vector<float>(), w.to_vector<float>());
  Graph g3;
  nn::Sequential net3(g3, "net");
  nn::Linear& fc3 = net3.add<nn::Linear>("fc", 400, 30);
  Session s3(g3);
  EXPECT_EQ(s3.variable_value(fc3.weight).to_vector<float>(), w.to_vector<float>());
}

TEST(Layers, TrainAndEvalModesLiveSideBySideInOneGraph) {
  Graph g;
  Value x = g.placeholder("x", f32, {-1, 3, 4, 4});
  nn::Sequential net(g, "net");
  net.add<nn::BatchNorm2d>("bn", 3);
  net.add<nn::Dropout>("drop", 0.5);
  Value train = net(x);
  net.eval();
  Value eval = net(x);
  EXPECT_FALSE(net.training());
  Session s(g);
  Tensor in = testing::random_tensor(f32, {8, 3, 4, 4}, 1, 3, 1);
  // Training: batch statistics (mean 0 per channel before dropout), dropout zeros about half.
  Tensor t = s.run({{x, in}}, {train})[0];
  int64_t zeros = 0;
  for (int64_t i = 0; i < t.numel(); ++i) zeros += t.element(i) == 0;
  EXPECT_GT(zeros, t.numel() / 4);
  EXPECT_LT(zeros, t.numel() * 3 / 4);
  // Evaluation: running statistics after one update (mean 0.1 batch mean, var 0.9 + 0.1 var),
  // no dropout, and the same output every run.
  Tensor e1 = s.run({{x, in}}, {eval})[0], e2 = s.run({{x, in}}, {eval})[0];
  EXPECT_EQ(e1.to_vector<float>(), e2.to_vector<float>());
  Tensor mean = s.variable_value(g.value("net/bn/running_mean"));
  double batch_mean0 = 0;
  for (int64_t n = 0; n < 8; ++n)
    for (int64_t p = 0; p < 16; ++p) batch_mean0 += in.element((n * 3) * 16 + p) / 128;
  EXPECT_NEAR(mean.element(0), 0.1 * batch_mean0, 1e-5);
  const double var0 = s.variable_value(g.value("net/bn/running_var")).element(0);
  EXPECT_NEAR(e1.element(0), (in.element(0) - mean.element(0)) / std::sqrt(var0 + 1e-5), 1e-4);
}

TEST(Layers, MultiHeadAttentionIsTheDirectFormulaPerHead) {
  Graph g;
  const int64_t B = 2, T = 5, D = 8, H = 2;
  Value x = g.placeholder("x", f32, {B, T, D});
  nn::MultiHeadAttention mha(g, "mha", D, H, {.causal = true});
  Value y = mha(x);
  Session s(g);
  Tensor in = testing::random_tensor(f32, {B, T, D}, -1, 1, 2);
  Tensor got = s.run({{x, in}}, {y})[0];
  // The same with plain ops: projections, per-head causal softmax(q k^T / sqrt(d)) v.
  auto project = [&](const nn::Linear& l, int64_t b, int64_t t, int64_t o) {
    Tensor w = s.variable_value(l.weight), bias = s.variable_value(l.bias);
    double sum = bias.element(o);
    for (int64_t i = 0; i < D; ++i) sum += in.element((b * T + t) * D + i) * w.element(i * D + o);
    return sum;
  };
  const int64_t depth = D / H;
  for (int64_t b = 0; b < B; ++b) {
    std::vector<double> attended(static_cast<size_t>(T * D));
    for (int64_t h = 0; h < H; ++h)
      for (int64_t i = 0; i < T; ++i) {
        std::vector<double> p;
        double total = 0;
        for (int64_t j = 0; j <= i; ++j) {
          double dot = 0;
          for (int64_t c = h * depth; c < (h + 1) * depth; ++c)
            dot += project(mha.query, b, i, c) * project(mha.key, b, j, c);
          p.push_back(std::exp(dot / std::sqrt(static_cast<double>(depth))));
          total += p.back();
        }
        for (int64_t c = h * depth; c < (h + 1) * depth; ++c)
          for (int64_t j = 0; j <= i; ++j)
            attended[i * D + c] += p[j] / total * project(mha.value, b, j, c);
      }
    Tensor wo = s.variable_value(mha.output.weight), bo = s.variable_value(mha.output.bias);
    for (int64_t i = 0; i < T; ++i)
      for (int64_t o = 0; o < D; ++o) {
        double want = bo.element(o);
        for (int64_t c = 0; c < D; ++c) want += attended[i * D + c] * wo.element(c * D + o);
        EXPECT_NEAR(got.element((b * T + i) * D + o), want, 1e-5) << b << " " << i << " " << o;
      }
  }
}

TEST(Layers, ATransformerBlockTrainsAndItsErrorsNameTheLayer) {
  Graph g;
  Value x = g.placeholder("x", f32, {-1, 6, 16});
  nn::TransformerBlock block(g, "block", 16, 4, {.ffn_dim = 32, .dropout = 0});
  Value loss = mean(square(block(x) - x * 0.5));
  Value step = optim::Adam({.lr = 1e-2}).minimize(loss);
  Session s(g);
  Tensor in = testing::random_tensor(f32, {4, 6, 16}, -1, 1, 3);
  const double first = s.run({{x, in}}, {loss})[0].element(0);
  for (int i = 0; i < 60; ++i) s.run({{x, in}}, {}, {step});
  EXPECT_LT(s.run({{x, in}}, {loss})[0].element(0), first * 0.5);
  EXPECT_EQ(block.parameters().size(), 16u);  // 2 norms x 2, 4 projections x 2, 2 FFN x 2

  expect_error<GraphError>([&] { nn::MultiHeadAttention(g, "bad", 10, 3, {}); },
                           {"[nn] MultiHeadAttention bad", "dim 10", "3 heads"});
  expect_error<GraphError>(
      [&] {
        block(g.placeholder("y", f32, {-1, 6, 8}));
      },
      {"block/norm1", "[?, 6, 8]", "[16]"});
  expect_error<GraphError>(
      [&] {
        block.attention.attend(g.placeholder("q", f32, {-1, 6, 16}),
                               g.placeholder("memory", f32, {-1, -1, 16}), Value());
      },
      {"[nn] MultiHeadAttention block/attention", "memory [batch, length, 16]", "[?, ?, 16]"});
  expect_error<GraphError>([&] { nn::Linear(g, "a/b", 2, 2); }, {"without '/'"});
  nn::Linear original(g, "dup", 2, 2);
  expect_error<GraphError>([&] { nn::Linear(g, "dup", 2, 2); }, {"'dup/weight' is already used"});
  expect_error<GraphError>([&] { nn::Dropout(g, "d", 1.0); }, {"rate 1", "[0, 1)"});
}

// ConvTranspose2d: PyTorch's weight layout [in, out / groups, KH, KW], its fan-in (out / groups
// KH KW) for the bound, output_padding in the shape; GroupNorm: weight 1, bias 0, and each
// group of each example normalized. Both name the layer in their errors.
TEST(Layers, ConvTranspose2dAndGroupNormFollowPyTorch) {
  Graph g;
  Value x = g.placeholder("x", f32, {-1, 6, 5, 5});
  nn::ConvTranspose2d up(g, "up", 6, 4, {3, 3}, {.stride = {2, 2}, .padding = {1, 1}, .groups = 2},
                         {1, 1});
  nn::GroupNorm norm(g, "norm", 2, 4);
  Value y = norm(up(x));
  EXPECT_EQ(up.weight.shape(), Shape({6, 2, 3, 3}));
  EXPECT_EQ(y.shape(), Shape({-1, 4, 10, 10}));  // (5 - 1) 2 - 2 + 3 + 1
  Session s(g);
  const Tensor w = s.variable_value(up.weight);
  double bound = 0;
  for (int64_t i = 0; i < w.numel(); ++i) bound = std::max(bound, std::abs(w.element(i)));
  EXPECT_LE(bound, 1 / std::sqrt(18.0));  // fan-in 2 * 3 * 3, not 6 * 3 * 3
  EXPECT_GT(bound, 0.9 / std::sqrt(18.0));
  EXPECT_EQ(s.variable_value(norm.weight).to_vector<float>(), std::vector<float>(4, 1.0f));
  const Tensor out = s.run({{x, testing::random_tensor(f32, {3, 6, 5, 5}, -2, 2, 4)}}, {y})[0];
  for (int64_t n = 0; n < 3; ++n)
    for (int64_t group = 0; group < 2; ++group) {
      double sum = 0, squares = 0;
      const int64_t first = (n * 4 + group * 2) * 100;  // two channels of 10 x 10
      for (int64_t i = first; i < first + 200; ++i) {
        sum += out.element(i);
        squares += out.element(i) * out.element(i);
      }
      EXPECT_NEAR(sum / 200, 0, 1e-5);
      EXPECT_NEAR(squares / 200, 1, 1e-3);
    }

  expect_error<GraphError>(
      [&] {
        nn::ConvTranspose2d(g, "t", 6, 5, {3, 3}, {.groups = 2});
      },
      {"[nn] ConvTranspose2d t", "6 -> 5", "groups 2"});
  expect_error<GraphError>([&] { nn::GroupNorm(g, "gn", 3, 4); },
                           {"[nn] GroupNorm gn", "4 channels", "3 groups"});
  expect_error<GraphError>(
      [&] {
        norm(g.placeholder("z", f32, {2, 6, 3, 3}));
      },
      {"[nn] GroupNorm norm", "[N, 4, ...]", "[2, 6, 3, 3]"});
}

// Conv1d: PyTorch's layout [out, in / groups, K] and fan-in, and each output the direct sum
// over its group's channels and the dilated, strided window (zeros outside); the pooling and
// Flatten layers are their functions.
TEST(Layers, Conv1dIsTheDirectSumAndPoolingLayersAreTheirFunctions) {
  Graph g;
  Value x = g.placeholder("x", f32, {2, 4, 9});
  nn::Conv1d conv(g, "conv", 4, 6, 3, {.stride = 2, .padding = 2, .dilation = 2, .groups = 2});
  Value y = conv(x);
  EXPECT_EQ(conv.weight.shape(), Shape({6, 2, 3}));
  EXPECT_EQ(y.shape(), Shape({2, 6, 5}));  // (9 + 4 - 4 - 1) / 2 + 1
  Value images = g.placeholder("images", f32, {2, 3, 4, 4});
  nn::MaxPool2d max_layer(g, "max", {.kernel_size = {2, 2}});
  nn::AvgPool2d avg_layer(g, "avg", {.kernel_size = {3, 3}, .stride = {1, 1}, .padding = {1, 1}},
                          false);
  nn::Flatten flat(g, "flat");
  std::vector<Value> layered = {max_layer(images), avg_layer(images), flat(images)};
  std::vector<Value> direct = {
      max_pool2d(images, {.kernel_size = {2, 2}}),
      avg_pool2d(images, {.kernel_size = {3, 3}, .stride = {1, 1}, .padding = {1, 1}}, false),
      reshape(images, {2, 48})};
  EXPECT_EQ(layered[2].shape(), Shape({2, 48}));
  Session s(g);
  const Tensor in = testing::random_tensor(f32, {2, 4, 9}, -1, 1, 7);
  const Tensor out = s.run({{x, in}}, {y})[0];
  const Tensor w = s.variable_value(conv.weight), b = s.variable_value(conv.bias);
  double bound = 0;
  for (int64_t i = 0; i < w.numel(); ++i) bound = std::max(bound, std::abs(w.element(i)));
  EXPECT_LE(bound, 1 / std::sqrt(6.0));  // fan-in 2 * 3
  EXPECT_GT(bound, 0.8 / std::sqrt(6.0));
  for (int64_t n = 0; n < 2; ++n)
    for (int64_t o = 0; o < 6; ++o)
      for (int64_t l = 0; l < 5; ++l) {
        double want = b.element(o);
        const int64_t group = o / 3;
        for (int64_t c = 0; c < 2; ++c)
          for (int64_t k = 0; k < 3; ++k) {
            const int64_t at = l * 2 - 2 + k * 2;
            if (at < 0 || at >= 9) continue;
            want += w.element((o * 2 + c) * 3 + k) * in.element((n * 4 + group * 2 + c) * 9 + at);
          }
        EXPECT_NEAR(out.element((n * 6 + o) * 5 + l), want, 1e-5) << n << " " << o << " " << l;
      }
  const Tensor image_values = testing::random_tensor(f32, {2, 3, 4, 4}, -1, 1, 8);
  std::vector<Value> both = layered;
  both.insert(both.end(), direct.begin(), direct.end());
  const auto pooled = s.run({{images, image_values}}, both);
  for (size_t i = 0; i < 3; ++i)
    EXPECT_EQ(pooled[i].to_vector<float>(), pooled[i + 3].to_vector<float>()) << i;

  expect_error<GraphError>(
      [&] {
        conv(g.placeholder("wide", f32, {2, 5, 9}));
      },
      {"[nn] Conv1d conv", "[N, 4, L]", "[2, 5, 9]"});
  expect_error<GraphError>([&] { nn::Conv1d(g, "odd", 4, 5, 3, {.groups = 2}); },
                           {"[nn] Conv1d odd", "4 -> 5", "groups 2"});
  expect_error<GraphError>([&] { nn::Conv1d(g, "empty", 4, 4, 0); },
                           {"[nn] Conv1d empty", "kernel size 0", "positive"});
  expect_error<GraphError>(
      [&] {
        nn::Conv2d(g, "flat", 4, 4, {3, -1});
      },
      {"[nn] Conv2d flat", "kernel size -1", "positive"});
}

// Embedding's padding index (PyTorch's padding_idx): that id reads zeros, and training never
// changes its row while the rows read do change.
TEST(Layers, EmbeddingPaddingIndexReadsZerosAndGetsNoGradient) {
  Graph g;
  Value ids = g.placeholder("ids", i64, {2, 3});
  nn::Embedding embed(g, "embed", 5, 4, {}, 0);
  Value out = embed(ids);
  Value loss = sum(square(out - 1.0));
  Value step = optim::SGD({.lr = 0.1}).minimize(loss);
  Session s(g);
  const Tensor id_values = Tensor::from_vector<int64_t>({0, 2, 0, 3, 0, 2}, {2, 3});
  const Tensor before = s.variable_value(embed.weight);
  // The padding row starts at zeros, as PyTorch's; the other rows are the table without one.
  Graph plain_graph;
  nn::Embedding plain(plain_graph, "embed", 5, 4);
  const Tensor plain_rows = Session(plain_graph).variable_value(plain.weight);
  for (int64_t i = 0; i < 20; ++i)
    EXPECT_EQ(before.element(i), i < 4 ? 0.0 : plain_rows.element(i)) << i;
  const Tensor rows = s.run({{ids, id_values}}, {out})[0];
  for (int64_t i : {0, 2, 4})  // positions holding id 0
    for (int64_t c = 0; c < 4; ++c) EXPECT_EQ(rows.element(i * 4 + c), 0.0);
  for (int64_t c = 0; c < 4; ++c) EXPECT_EQ(rows.element(4 + c), before.element(2 * 4 + c));
  for (int i = 0; i < 3; ++i) s.run({{ids, id_values}}, {}, {step});
  const Tensor after = s.variable_value(embed.weight);
  for (int64_t c = 0; c < 4; ++c) {
    EXPECT_EQ(after.element(c), before.element(c));                  // the padding row
    EXPECT_NE(after.element(2 * 4 + c), before.element(2 * 4 + c));  // a row read
    EXPECT_EQ(after.element(4 * 4 + c), before.element(4 * 4 + c));  // a row not read
  }
  expect_error<GraphError>([&] { nn::Embedding(g, "e", 5, 4, {}, 5); },
                           {"[nn] Embedding e", "padding index 5", "[0, 5)"});
  // The initializer checks its row itself (a graph file's row is untrusted).
  expect_error<GraphError>(
      [&] {
        g.variable("table", {3, 2}, init::normal_with_zero_row(0, 1, 3, 1));
      },
      {"normal_zero_row", "row 3", "[3, 2]"});
}

// A post-norm block (PyTorch's TransformerEncoderLayer default) ends in its second layer norm:
// every position's output has mean 0 and variance 1 while the norms are at their initial
// values. Under a key-padding mask, the real positions' outputs do not depend on the padded
// positions' inputs; without it they do.
TEST(Layers, PostNormBlockAndItsPaddingMask) {
  Graph g;
  Value x = g.placeholder("x", f32, {2, 5, 8});
  Value keep = g.placeholder("keep", boolean, {2, 1, 1, 5});
  nn::TransformerBlock block(g, "block", 8, 2,
                             {.ffn_dim = 16,
                              .dropout = 0,
                              .causal = false,
                              .activation = nn::TransformerBlock::Activation::relu,
                              .norm_first = false});
  Value masked = block.attend(x, keep), unmasked = block(x);
  Session s(g);
  Tensor keep_values = Tensor::empty(boolean, {2, 1, 1, 5});
  for (int64_t i = 0; i < 10; ++i) keep_values.data<bool>()[i] = i % 5 < 3;  // 2 padded each
  const Tensor in = testing::random_tensor(f32, {2, 5, 8}, -2, 2, 6);
  Tensor changed = in.clone();
  for (int64_t b = 0; b < 2; ++b)
    for (int64_t i = (b * 5 + 3) * 8; i < (b * 5 + 5) * 8; ++i) changed.data<float>()[i] += 1;
  const auto first = s.run({{x, in}, {keep, keep_values}}, {masked, unmasked});
  const auto second = s.run({{x, changed}, {keep, keep_values}}, {masked, unmasked});
  double unmasked_change = 0;
  for (int64_t b = 0; b < 2; ++b)
    for (int64_t t = 0; t < 5; ++t) {
      double sum = 0, squares = 0;
      for (int64_t c = 0; c < 8; ++c) {
        const int64_t i = (b * 5 + t) * 8 + c;
        sum += first[0].element(i);
        squares += first[0].element(i) * first[0].element(i);
        if (t >= 3) continue;
        EXPECT_NEAR(second[0].element(i), first[0].element(i), 1e-5) << b << " " << t;
        unmasked_change =
            std::max(unmasked_change, std::abs(second[1].element(i) - first[1].element(i)));
      }
      EXPECT_NEAR(sum / 8, 0, 1e-5);
      EXPECT_NEAR(squares / 8, 1, 1e-3);  // layer norm's eps 1e-5
    }
  EXPECT_GT(unmasked_change, 1e-3);
}

// LayerNorm and RMSNorm without affine parameters (PyTorch's elementwise_affine=False): no
// variables, and the plain normalization; a normalized shape must be known.
TEST(Layers, NormsWithoutAffineHaveNoParameters) {
  Graph g;
  Value x = g.placeholder("x", f32, {2, 3, 4});
  nn::LayerNorm plain(g, "plain", Shape{3, 4}, 1e-5, false);
  nn::RMSNorm rms(g, "rms", Shape{4}, 1e-6, false);
  EXPECT_TRUE(plain.parameters().empty());
  EXPECT_TRUE(rms.parameters().empty());
  Value y = plain(x), z = rms(x);
  Session s(g);
  const Tensor in = testing::random_tensor(f32, {2, 3, 4}, -2, 2, 5);
  const auto out = s.run({{x, in}}, {y, z});
  for (int64_t b = 0; b < 2; ++b) {
    double mean = 0, var = 0;
    for (int64_t i = 0; i < 12; ++i) mean += in.element(b * 12 + i) / 12;
    for (int64_t i = 0; i < 12; ++i) var += std::pow(in.element(b * 12 + i) - mean, 2) / 12;
    for (int64_t i = 0; i < 12; ++i)
      EXPECT_NEAR(out[0].element(b * 12 + i),
                  (in.element(b * 12 + i) - mean) / std::sqrt(var + 1e-5), 1e-5);
  }
  for (int64_t row = 0; row < 6; ++row) {
    double squares = 0;
    for (int64_t i = 0; i < 4; ++i) squares += std::pow(in.element(row * 4 + i), 2) / 4;
    for (int64_t i = 0; i < 4; ++i)
      EXPECT_NEAR(out[1].element(row * 4 + i), in.element(row * 4 + i) / std::sqrt(squares + 1e-6),
                  1e-5);
  }
  expect_error<GraphError>(
      [&] {
        nn::LayerNorm(g, "ln", Shape{-1, 4});
      },
      {"[nn] LayerNorm ln", "normalized shape [?, 4]", "known positive"});
  expect_error<GraphError>([&] { nn::RMSNorm(g, "r", Shape{}); },
                           {"[nn] RMSNorm r", "normalized shape []"});
}

}  // namespace
}  // namespace kiln
