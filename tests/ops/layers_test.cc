// kiln::nn layers (ops/layers.h): variable names and initialization, shared variables across
// calls, the train/eval switch in one graph, attention against the direct formula, and the
// errors a user can hit.
#include <cmath>
#include <functional>
#include <vector>

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

// MultiHeadAttention's output by the direct formula, in f64: the projections, per head the
// softmax of q k^T / sqrt(depth) over the keys query i may attend (j <= i when causal, and
// keeps(b, j)), each probability times drop(b, h, i, j) (the dropout mask's value; 1 without
// dropout), times v, then the output projection. A query with no key to attend gets zeros.
std::vector<double> direct_attention(
    Session& s, const nn::MultiHeadAttention& mha, const Tensor& in, int64_t heads, bool causal,
    const std::function<bool(int64_t, int64_t)>& keeps,
    const std::function<double(int64_t, int64_t, int64_t, int64_t)>& drop) {
  const int64_t B = in.shape()[0], T = in.shape()[1], D = in.shape()[2], depth = D / heads;
  auto project = [&](const nn::Linear& l, int64_t b, int64_t t, int64_t o) {
    Tensor w = s.variable_value(l.weight), bias = s.variable_value(l.bias);
    double sum = bias.element(o);
    for (int64_t i = 0; i < D; ++i) sum += in.element((b * T + t) * D + i) * w.element(i * D + o);
    return sum;
  };
  Tensor wo = s.variable_value(mha.output.weight), bo = s.variable_value(mha.output.bias);
  std::vector<double> out(static_cast<size_t>(B * T * D));
  for (int64_t b = 0; b < B; ++b) {
    std::vector<double> attended(static_cast<size_t>(T * D));
    for (int64_t h = 0; h < heads; ++h)
      for (int64_t i = 0; i < T; ++i) {
        std::vector<double> p(static_cast<size_t>(T), 0.0);
        double total = 0;
        for (int64_t j = 0; j < T; ++j) {
          if ((causal && j > i) || !keeps(b, j)) continue;
          double dot = 0;
          for (int64_t c = h * depth; c < (h + 1) * depth; ++c)
            dot += project(mha.query, b, i, c) * project(mha.key, b, j, c);
          p[j] = std::exp(dot / std::sqrt(static_cast<double>(depth)));
          total += p[j];
        }
        for (int64_t c = h * depth; c < (h + 1) * depth; ++c)
          for (int64_t j = 0; j < T; ++j)
            if (p[j] > 0)
              attended[i * D + c] += p[j] / total * drop(b, h, i, j) * project(mha.value, b, j, c);
      }
    for (int64_t i = 0; i < T; ++i)
      for (int64_t o = 0; o < D; ++o) {
        double want = bo.element(o);
        for (int64_t c = 0; c < D; ++c) want += attended[i * D + c] * wo.element(c * D + o);
        out[(b * T + i) * D + o] = want;
      }
  }
  return out;
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
  const std::vector<double> want = direct_attention(
      s, mha, in, H, true, [](int64_t, int64_t) { return true; },
      [](int64_t, int64_t, int64_t, int64_t) { return 1.0; });
  for (int64_t i = 0; i < B * T * D; ++i) EXPECT_NEAR(got.element(i), want[i], 1e-5) << i;
}

// Cross-attention to a memory of another width (memory_dim, PyTorch's kdim = vdim) over a key
// mask, and attention_weights: each row of the weights sums to 1 over the keys it may see and
// is 0 on the others, and the weights times the values, through the output projection, are the
// layer's output. A [T, S] float mask (rank 2, broadcast) hides keys with -inf too. With a
// softcap both paths cap the scores (the fused op's kernel, the weights' composition).
TEST(Layers, MultiHeadAttentionWeightsAndAMemoryOfAnotherWidth) {
  for (bool float_mask : {false, true})
    for (double softcap : {0.0, 0.4}) {
      SCOPED_TRACE(str("float_mask ", float_mask, ", softcap ", softcap));
      Graph g;
      const int64_t B = 2, T = 5, S = 7, D = 8, H = 2, M = 12;
      Value x = g.placeholder("x", f32, {B, T, D}),
            memory = g.placeholder("memory", f32, {B, S, M});
      nn::MultiHeadAttention mha(g, "cross", D, H, {.memory_dim = M, .softcap = softcap});
      auto hidden = [&](int64_t i, int64_t j) { return (i + j) % 3 == 0 && j != i; };
      Tensor mask_values = Tensor::empty(float_mask ? f32 : boolean, {T, S});
      for (int64_t i = 0; i < T * S; ++i) {
        if (float_mask)
          mask_values.data<float>()[i] = hidden(i / S, i % S) ? -INFINITY : 0.25f * (i % 3);
        else
          mask_values.data<bool>()[i] = !hidden(i / S, i % S);
      }
      Value mask = g.constant(mask_values);
      Value y = mha.attend(x, memory, mask);
      Value weights = mha.attention_weights(x, memory, mask);
      EXPECT_EQ(weights.shape(), Shape({B, H, T, S}));
      Value v = transpose(reshape(mha.value(memory), {B, S, H, D / H}), {0, 2, 1, 3});
      Value rebuilt =
          mha.output(reshape(transpose(matmul(weights, v), {0, 2, 1, 3}), {B, T, D}));  // [B, T, D]
      Session s(g);
      const auto out = s.run({{x, testing::random_tensor(f32, {B, T, D}, -1, 1, 30)},
                              {memory, testing::random_tensor(f32, {B, S, M}, -1, 1, 31)}},
                             {y, weights, rebuilt});
      for (int64_t row = 0; row < B * H * T; ++row) {
        const int64_t i = row % T;
        double total = 0;
        for (int64_t j = 0; j < S; ++j) {
          const double w = out[1].element(row * S + j);
          if (hidden(i, j)) {
            EXPECT_EQ(w, 0.0) << "row " << row << " key " << j;
          }
          total += w;
        }
        EXPECT_NEAR(total, 1.0, 1e-5) << "row " << row;
      }
      for (int64_t i = 0; i < B * T * D; ++i)
        EXPECT_NEAR(out[0].element(i), out[2].element(i), 1e-5) << i;
    }
  Graph g;
  nn::MultiHeadAttention mha(g, "cross", 8, 2, {.memory_dim = 12});
  Value x = g.placeholder("x", f32, {2, 5, 8});
  expect_error<GraphError>([&] { mha(x); },
                           {"[nn] MultiHeadAttention cross", "memory [batch, length, 12]"});
  mha.eval();
  expect_error<GraphError>(
      [&] { mha.attend_cached(x, mha.cache_placeholders(8), g.placeholder("p", i64, {})); },
      {"[nn] MultiHeadAttention cross", "memory_dim (12) equal to dim (8)"});
  expect_error<GraphError>([&] { nn::MultiHeadAttention(g, "bad", 8, 2, {.memory_dim = -1}); },
                           {"[nn] MultiHeadAttention bad", "memory_dim -1"});
  expect_error<GraphError>([&] { nn::MultiHeadAttention(g, "capped", 8, 2, {.softcap = -1}); },
                           {"[nn] MultiHeadAttention capped", "softcap -1 must be positive"});
  Value q = g.placeholder("q", f32, {2, 2, 5, 4});
  expect_error<GraphError>([&] { scaled_dot_product_attention(q, q, q, {.softcap = -2}); },
                           {"[attention]", "softcap -2 must be positive"});
}

// Attention dropout (MultiHeadAttention's Options::dropout) drops probabilities in training
// mode: the output is the direct formula with this run's mask (read back from the graph), a new
// mask every run and the same first mask in a fresh session; evaluation mode is the fused op's
// plain attention. The causal and key masks still hold: a query with no key gets zeros (the
// output projection's bias), in both modes, not NaN. The key mask is bool, or a float bias of
// 0 and -inf.
TEST(Layers, AttentionDropoutActsOnTheProbabilitiesInTrainingOnly) {
  for (bool as_bias : {false, true}) {
    SCOPED_TRACE(str("as_bias ", as_bias));
    Graph g;
    const int64_t B = 2, T = 4, D = 8, H = 2;
    Value x = g.placeholder("x", f32, {B, T, D});
    Value keep = g.placeholder("keep", as_bias ? f32 : boolean, {B, 1, 1, T});
    nn::MultiHeadAttention mha(g, "mha", D, H, {.causal = true, .dropout = 0.5});
    Value trained = mha.attend(x, keep);
    mha.eval();
    Value evaluated = mha.attend(x, keep);
    Value mask;  // the one dropout_mask node: [B, H, T, T], 0 or 1 / (1 - 0.5)
    for (int32_t id = 0; id < g.num_nodes(); ++id)
      if (g.node(id).op_name() == "dropout_mask") {
        ASSERT_FALSE(mask.defined());
        mask = g.value(OutputRef{id, 0});
      }
    ASSERT_TRUE(mask.defined());
    EXPECT_EQ(mask.shape(), Shape({B, H, T, T}));

    Tensor keep_values = Tensor::empty(as_bias ? f32 : boolean, {B, 1, 1, T});
    auto keeps = [&](int64_t b, int64_t j) {
      return b * T + j != 1 && b * T + j < T;
    };  // b 1: none
    for (int64_t j = 0; j < B * T; ++j) {
      if (as_bias)
        keep_values.data<float>()[j] = keeps(j / T, j % T) ? 0.0f : -INFINITY;
      else
        keep_values.data<bool>()[j] = keeps(j / T, j % T);
    }
    const Tensor in = testing::random_tensor(f32, {B, T, D}, -1, 1, 8);
    Session s(g);
    const auto first = s.run({{x, in}, {keep, keep_values}}, {trained, evaluated, mask});
    int64_t dropped = 0;
    for (int64_t i = 0; i < first[2].numel(); ++i) {
      ASSERT_TRUE(first[2].element(i) == 0.0 || first[2].element(i) == 2.0) << first[2].element(i);
      dropped += first[2].element(i) == 0.0;
    }
    EXPECT_GT(dropped, 16);  // of 64, at rate 0.5
    EXPECT_LT(dropped, 48);
    const std::vector<double> with_mask = direct_attention(
        s, mha, in, H, true, keeps, [&](int64_t b, int64_t h, int64_t i, int64_t j) {
          return first[2].element(((b * H + h) * T + i) * T + j);
        });
    const std::vector<double> plain = direct_attention(
        s, mha, in, H, true, keeps, [](int64_t, int64_t, int64_t, int64_t) { return 1.0; });
    double change = 0;
    for (int64_t i = 0; i < B * T * D; ++i) {
      EXPECT_NEAR(first[0].element(i), with_mask[i], 1e-5) << i;
      EXPECT_NEAR(first[1].element(i), plain[i], 1e-5) << i;
      change = std::max(change, std::abs(with_mask[i] - plain[i]));
    }
    EXPECT_GT(change, 1e-2);
    const Tensor bias = s.variable_value(mha.output.bias);
    for (int64_t i = T * D; i < B * T * D; ++i) {  // batch 1 keeps no key
      EXPECT_NEAR(first[0].element(i), bias.element(i % D), 1e-6) << i;
      EXPECT_NEAR(first[1].element(i), bias.element(i % D), 1e-6) << i;
    }

    const auto second = s.run({{x, in}, {keep, keep_values}}, {mask});
    double mask_change = 0;
    for (int64_t i = 0; i < second[0].numel(); ++i)
      mask_change = std::max(mask_change, std::abs(second[0].element(i) - first[2].element(i)));
    EXPECT_EQ(mask_change, 2.0);  // a new mask
    Session fresh(g);
    const Tensor again = fresh.run({{x, in}, {keep, keep_values}}, {mask})[0];
    for (int64_t i = 0; i < again.numel(); ++i) EXPECT_EQ(again.element(i), first[2].element(i));
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
                               g.placeholder("memory", f32, {-1, -1, 12}), Value());
      },
      {"[nn] MultiHeadAttention block/attention", "memory [batch, length, 16]", "[?, ?, 12]"});
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

// InstanceNorm: each channel of each example normalized over its positions, affine only when
// asked (PyTorch's default off), the same in evaluation mode; errors name the layer.
TEST(Layers, InstanceNormNormalizesEachChannelOfEachExample) {
  Graph g;
  Value x = g.placeholder("x", f32, {-1, 3, 4, 5});
  nn::InstanceNorm2d plain(g, "plain", 3);
  nn::InstanceNorm2d affine(g, "affine", 3, 1e-5, true);
  EXPECT_TRUE(plain.parameters().empty());
  ASSERT_EQ(affine.parameters().size(), 2u);
  plain.eval();
  Session s(g);
  const Tensor in = testing::random_tensor(f32, {2, 3, 4, 5}, -3, 5, 8);
  const Tensor out = s.run({{x, in}}, {plain(x)})[0];
  for (int64_t plane = 0; plane < 6; ++plane) {
    double sum = 0, squares = 0;
    for (int64_t i = plane * 20; i < (plane + 1) * 20; ++i) {
      sum += out.element(i);
      squares += out.element(i) * out.element(i);
    }
    EXPECT_NEAR(sum / 20, 0, 1e-5) << plane;
    EXPECT_NEAR(squares / 20, 1, 1e-3) << plane;
  }
  EXPECT_EQ(s.variable_value(affine.weight).to_vector<float>(), std::vector<float>(3, 1.0f));
  nn::InstanceNorm1d line(g, "line", 3);
  expect_error<GraphError>([&] { line(x); }, {"[nn] InstanceNorm1d line", "[N, 3, L]"});
  expect_error<GraphError>(
      [&] {
        plain(g.placeholder("z", f32, {2, 4, 3, 3}));
      },
      {"[nn] InstanceNorm2d plain", "[N, 3, H, W]", "[2, 4, 3, 3]"});
  expect_error<GraphError>([&] { nn::InstanceNorm2d(g, "none", 0); },
                           {"[nn] InstanceNorm2d none", "0 channels"});
}

// Conv1d: PyTorch's layout [out, in / groups, K] and fan-in, and each output the direct sum
// over its group's channels and the dilated, strided window (zeros outside); the pooling and
// Flatten layers are their functions.
// PyTorch's padding="same": the output as large as the input, dilation (K - 1) padding per dim
// with the odd one after (PyTorch pads so; checked against F.conv2d(padding="same") and F.pad),
// in the padding mode, for Conv1d, conv2d and conv3d; gradients through the pad; strides and
// transposed convolutions refused.
TEST(Layers, PaddingSameKeepsTheSizeAndPutsTheOddPaddingAfter) {
  Graph g;
  Value x = g.placeholder("x", f64, {1, 2, 7, 9});
  Value filter = g.placeholder("filter", f64, {3, 2, 4, 3});
  // Height: 1 (4 - 1) = 3, 1 before and 2 after; width: 2 (3 - 1) = 4, 2 and 2.
  std::vector<Value> same, by_hand;
  for (PadMode mode : {PadMode::constant, PadMode::reflect}) {
    same.push_back(conv2d(x, filter, {.dilation = {1, 2}, .padding_mode = mode, .same = true}));
    by_hand.push_back(conv2d(pad(x, {{2, 2}, {1, 2}}, mode), filter, {.dilation = {1, 2}}));
  }
  // Even totals only: the op's own symmetric padding.
  Value odd_filter = g.placeholder("odd_filter", f64, {3, 2, 3, 5});
  same.push_back(conv2d(x, odd_filter, {.same = true}));
  by_hand.push_back(conv2d(x, odd_filter, {.padding = {1, 2}}));
  Value volume = g.placeholder("volume", f64, {1, 2, 4, 5, 6});
  Value volume_filter = g.placeholder("volume_filter", f64, {2, 2, 2, 3, 4});
  same.push_back(conv3d(volume, volume_filter, {.same = true}));
  by_hand.push_back(conv3d(pad(volume, {{1, 2}, {1, 1}, {0, 1}}), volume_filter));
  Value line = g.placeholder("line", f32, {2, 4, 9});  // the layer's variables are f32
  nn::Conv1d conv(g, "conv", 4, 6, 4, {.dilation = 3, .same = true});
  same.push_back(conv(line));  // 3 (4 - 1) = 9: 4 before, 5 after
  by_hand.push_back(conv2d(expand_dims(pad(line, {{4, 5}}), 2), reshape(conv.weight, {6, 4, 1, 4}),
                           {.dilation = {1, 3}}) +
                    reshape(conv.bias, {1, 6, 1, 1}));
  by_hand.back() = squeeze(by_hand.back(), 2);
  EXPECT_EQ(same[0].shape(), (Shape{1, 3, 7, 9}));
  EXPECT_EQ(same[3].shape(), (Shape{1, 2, 4, 5, 6}));
  EXPECT_EQ(same[4].shape(), (Shape{2, 6, 9}));
  std::vector<Value> fetches = same;
  fetches.insert(fetches.end(), by_hand.begin(), by_hand.end());
  const std::vector<Value> grads = gradients(sum(square(same[0])), {x, filter});
  const std::vector<Value> grads_by_hand = gradients(sum(square(by_hand[0])), {x, filter});
  fetches.insert(fetches.end(), {grads[0], grads[1], grads_by_hand[0], grads_by_hand[1]});
  Session s(g);
  const auto out = s.run({{x, testing::random_tensor(f64, {1, 2, 7, 9}, -1, 1, 1)},
                          {filter, testing::random_tensor(f64, {3, 2, 4, 3}, -1, 1, 2)},
                          {odd_filter, testing::random_tensor(f64, {3, 2, 3, 5}, -1, 1, 3)},
                          {volume, testing::random_tensor(f64, {1, 2, 4, 5, 6}, -1, 1, 4)},
                          {volume_filter, testing::random_tensor(f64, {2, 2, 2, 3, 4}, -1, 1, 5)},
                          {line, testing::random_tensor(f32, {2, 4, 9}, -1, 1, 6)}},
                         fetches);
  const size_t n = same.size();
  for (size_t i = 0; i < n + 2; ++i) {
    const Tensor& got = out[i < n ? i : 2 * n + (i - n)];
    const Tensor& want = out[i < n ? n + i : 2 * n + 2 + (i - n)];
    ASSERT_EQ(got.shape(), want.shape()) << i;
    for (int64_t e = 0; e < got.numel(); ++e)
      ASSERT_NEAR(got.element(e), want.element(e), got.dtype() == f64 ? 1e-12 : 1e-5)
          << "case " << i << " at " << e;
  }
  expect_error<GraphError>(
      [&] {
        conv2d(x, filter, {.stride = {2, 1}, .same = true});
      },
      {"[conv2d] padding \"same\" takes stride 1", "stride 2"});
  expect_error<GraphError>(
      [&] {
        conv2d(x, filter, {.padding = {1, 0}, .same = true});
      },
      {"[conv2d]", "padding 1"});
  expect_error<GraphError>(
      [&] {
        conv_transpose2d(x, g.placeholder("t", f64, {2, 3, 3, 3}), {.same = true});
      },
      {"conv_transpose2d", "not transposed ones"});
}

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
  nn::ConvTranspose1d up(g, "up", 4, 6, 3, {.stride = 2});
  EXPECT_EQ(up(x).shape(), Shape({2, 6, 19}));  // (9 - 1) 2 + 3
  expect_error<GraphError>(
      [&] {
        up(g.placeholder("flat_up", f32, {2, 4}));
      },
      {"[nn] ConvTranspose1d up", "[N, 4, L]", "[2, 4]"});
  expect_error<GraphError>([&] { nn::ConvTranspose1d(g, "odd_up", 4, 5, 3, {.groups = 2}); },
                           {"[nn] ConvTranspose1d odd_up", "4 -> 5", "groups 2"});
  expect_error<GraphError>(
      [&] {
        nn::Conv2d(g, "flat", 4, 4, {3, -1});
      },
      {"[nn] Conv2d flat", "kernel size -1", "positive"});
}

// MaxPool1d and AvgPool1d (PyTorch's): each output the max or mean of its window of the
// sequence, padding never the max and counted in the mean only with count_include_pad; a
// stride of 0 is the kernel size; MaxPool1d's dilation spaces its taps. A sequence that is not
// [N, C, L] names the layer.
// PyTorch's MaxPool2d(return_indices=True) then MaxUnpool2d: each window's maximum goes back to
// where it was, zeros elsewhere; the unpooling layer needs the indices.
TEST(Layers, MaxUnpoolPutsEachMaximumBackWhereThePoolFoundIt) {
  Graph g;
  Value x = g.placeholder("x", f32, {1, 1, 4, 4});
  nn::MaxPool2d pool(g, "pool", {.kernel_size = {2, 2}});
  nn::MaxUnpool2d unpool(g, "unpool", {.kernel_size = {2, 2}});
  // Plain Values, not a structured binding: lambdas capture them (clang 14 cannot capture
  // bindings).
  const std::pair<Value, Value> both = pool.with_indices(x);
  const Value pooled = both.first, indices = both.second;
  Value restored = unpool.unpool(pooled, indices);
  EXPECT_EQ(restored.shape(), Shape({1, 1, 4, 4}));
  EXPECT_EQ(unpool.unpool(pooled, indices, {5, 5}).shape(), Shape({1, 1, 5, 5}));
  const std::vector<float> in = {3, 1, 0, 7,  //
                                 2, 0, 6, 5,  //
                                 9, 8, 1, 1,  //
                                 4, 9, 2, 3};
  auto out = Session(g).run({{x, Tensor::from_vector(in, {1, 1, 4, 4})}}, {indices, restored});
  EXPECT_EQ(out[0].to_vector<int64_t>(), (std::vector<int64_t>{0, 3, 8, 15}));
  EXPECT_EQ(out[1].to_vector<float>(), (std::vector<float>{3, 0, 0, 7,  //
                                                           0, 0, 0, 0,  //
                                                           9, 0, 0, 0,  //
                                                           0, 0, 0, 3}));
  expect_error<GraphError>([&] { unpool(pooled); },
                           {"[nn] MaxUnpool2d unpool", "call unpool(x, indices)"});
  expect_error<GraphError>(
      [&] {
        unpool.unpool(pooled, indices, {6, 4});
      },
      {"output_size (6, 4)", "height must lie in (2, 6)"});
}

TEST(Layers, OneDimensionalPoolsAreTheirWindowsMaxAndMean) {
  Graph g;
  Value x = g.placeholder("x", f32, {2, 3, 7});
  const nn::Pool1dOptions window{.kernel_size = 3, .stride = 2, .padding = 1};
  nn::MaxPool1d max_layer(g, "max", window);
  nn::AvgPool1d with_pad(g, "with_pad", window), without_pad(g, "without_pad", window, false);
  nn::MaxPool1d halves(g, "halves", {.kernel_size = 2});
  nn::MaxPool1d spaced(g, "spaced", {.kernel_size = 2, .stride = 1, .dilation = 3});
  std::vector<Value> y = {max_layer(x), with_pad(x), without_pad(x), halves(x), spaced(x)};
  EXPECT_EQ(y[0].shape(), Shape({2, 3, 4}));  // (7 + 2 - 3) / 2 + 1
  EXPECT_EQ(y[3].shape(), Shape({2, 3, 3}));
  EXPECT_EQ(y[4].shape(), Shape({2, 3, 4}));  // 7 - (3 (2 - 1) + 1) + 1
  Session s(g);
  const Tensor in = testing::random_tensor(f32, {2, 3, 7}, -2, 2, 9);
  const auto out = s.run({{x, in}}, y);
  for (int64_t row = 0; row < 6; ++row) {
    auto at = [&](int64_t l) { return in.element(row * 7 + l); };
    for (int64_t o = 0; o < 4; ++o) {
      double top = -1e30, sum = 0;
      int64_t count = 0;
      for (int64_t l = o * 2 - 1; l < o * 2 + 2; ++l) {
        if (l < 0 || l >= 7) continue;
        top = std::max(top, at(l));
        sum += at(l);
        ++count;
      }
      EXPECT_EQ(out[0].element(row * 4 + o), top) << row << " " << o;
      EXPECT_NEAR(out[1].element(row * 4 + o), sum / 3, 1e-6) << row << " " << o;
      EXPECT_NEAR(out[2].element(row * 4 + o), sum / count, 1e-6) << row << " " << o;
    }
    for (int64_t o = 0; o < 3; ++o)
      EXPECT_EQ(out[3].element(row * 3 + o), std::max(at(2 * o), at(2 * o + 1)));
    for (int64_t o = 0; o < 4; ++o)
      EXPECT_EQ(out[4].element(row * 4 + o), std::max(at(o), at(o + 3)));
  }
  expect_error<GraphError>(
      [&] {
        max_layer(g.placeholder("flat", f32, {2, 7}));
      },
      {"[nn] MaxPool1d max", "[N, C, L]", "[2, 7]"});
}

// BatchNorm1d normalizes [N, C] and [N, C, L] per channel (over the batch, and the length) and
// updates its running statistics as PyTorch (momentum 0.1, unbiased variance); the 1-D and 2-D
// layers refuse the other's ranks by name. AdaptiveAvgPool2d and AdaptiveAvgPool1d average
// PyTorch's windows, uneven and overlapping ones (7 rows into 3: [0, 3), [2, 5), [4, 7)).
TEST(Layers, BatchNorm1dAndAdaptiveAveragePoolingFollowPyTorch) {
  Graph g;
  Value flat = g.placeholder("flat", f32, {4, 3});
  Value sequence = g.placeholder("sequence", f32, {2, 3, 5});
  nn::BatchNorm1d bn(g, "bn", 3), bn_sequence(g, "bn_sequence", 3);
  Value images = g.placeholder("images", f32, {2, 2, 7, 5});
  nn::AdaptiveAvgPool2d pool(g, "pool", {3, 2});
  nn::AdaptiveAvgPool1d pool1d(g, "pool1d", 3);
  std::vector<Value> y = {bn(flat), bn_sequence(sequence), pool(images), pool1d(sequence)};
  EXPECT_EQ(y[2].shape(), Shape({2, 2, 3, 2}));
  Session s(g);
  const Tensor flat_in = testing::random_tensor(f32, {4, 3}, -2, 2, 10);
  const Tensor sequence_in = testing::random_tensor(f32, {2, 3, 5}, -2, 2, 11);
  const Tensor image_in = testing::random_tensor(f32, {2, 2, 7, 5}, -2, 2, 12);
  const auto out = s.run({{flat, flat_in}, {sequence, sequence_in}, {images, image_in}}, y);
  // Per channel c: the elements at (n, l), normalized with the batch's biased variance.
  auto check_channel = [&](const Tensor& in, const Tensor& got, const nn::BatchNorm& layer,
                           int64_t n_count, int64_t length, int64_t c) {
    auto at = [&](int64_t n, int64_t l) { return (n * 3 + c) * length + l; };
    double mean = 0, var = 0;
    const double count = static_cast<double>(n_count * length);
    for (int64_t n = 0; n < n_count; ++n)
      for (int64_t l = 0; l < length; ++l) mean += in.element(at(n, l)) / count;
    for (int64_t n = 0; n < n_count; ++n)
      for (int64_t l = 0; l < length; ++l) var += std::pow(in.element(at(n, l)) - mean, 2) / count;
    for (int64_t n = 0; n < n_count; ++n)
      for (int64_t l = 0; l < length; ++l)
        EXPECT_NEAR(got.element(at(n, l)), (in.element(at(n, l)) - mean) / std::sqrt(var + 1e-5),
                    1e-5)
            << layer.path() << " " << c;
    EXPECT_NEAR(s.variable_value(layer.running_mean).element(c), 0.1 * mean, 1e-6);
    EXPECT_NEAR(s.variable_value(layer.running_var).element(c),
                0.9 + 0.1 * var * count / (count - 1), 1e-5);
  };
  for (int64_t c = 0; c < 3; ++c) {
    check_channel(flat_in, out[0], bn, 4, 1, c);
    check_channel(sequence_in, out[1], bn_sequence, 2, 5, c);
  }
  auto window = [](int64_t i, int64_t in, int64_t count) {
    return std::pair<int64_t, int64_t>{i * in / count, ((i + 1) * in + count - 1) / count};
  };
  for (int64_t plane = 0; plane < 4; ++plane)
    for (int64_t i = 0; i < 3; ++i)
      for (int64_t j = 0; j < 2; ++j) {
        const auto [r0, r1] = window(i, 7, 3);
        const auto [c0, c1] = window(j, 5, 2);
        double sum = 0;
        for (int64_t r = r0; r < r1; ++r)
          for (int64_t c = c0; c < c1; ++c) sum += image_in.element((plane * 7 + r) * 5 + c);
        EXPECT_NEAR(out[2].element((plane * 3 + i) * 2 + j), sum / ((r1 - r0) * (c1 - c0)), 1e-6)
            << plane << " " << i << " " << j;
      }

  for (int64_t row = 0; row < 6; ++row)  // 5 into 3: [0, 2), [1, 4), [3, 5)
    for (int64_t i = 0; i < 3; ++i) {
      const auto [l0, l1] = window(i, 5, 3);
      double sum = 0;
      for (int64_t l = l0; l < l1; ++l) sum += sequence_in.element(row * 5 + l);
      EXPECT_NEAR(out[3].element(row * 3 + i), sum / (l1 - l0), 1e-6) << row << " " << i;
    }

  expect_error<GraphError>([&] { bn(images); },
                           {"[nn] BatchNorm1d bn", "expects [N, 3] or [N, 3, L]", "[2, 2, 7, 5]"});
  nn::BatchNorm2d bn2d(g, "bn2d", 3);
  expect_error<GraphError>([&] { bn2d(flat); },
                           {"[nn] BatchNorm2d bn2d", "[N, 3, H, W]", "[4, 3]"});
  expect_error<GraphError>(
      [&] {
        bn(g.placeholder("wide", f32, {4, 5}));
      },
      {"[nn] BatchNorm1d bn", "[N, 3]", "[4, 5]"});
  expect_error<GraphError>(
      [&] {
        pool(g.placeholder("unknown", f32, {2, 2, -1, 5}));
      },
      {"[nn] AdaptiveAvgPool2d pool", "H and W known", "[2, 2, ?, 5]"});
  expect_error<GraphError>(
      [&] {
        nn::AdaptiveAvgPool2d(g, "none", {0, 2});
      },
      {"[nn] AdaptiveAvgPool2d none", "output size 0x2"});
  expect_error<GraphError>([&] { pool1d(images); },
                           {"[nn] AdaptiveAvgPool1d pool1d", "[N, C, L]", "[2, 2, 7, 5]"});
}

// AdaptiveMaxPool2d and AdaptiveMaxPool1d take PyTorch's windows (7 into 3: [0, 3), [2, 5),
// [4, 7)); a NaN wins its windows; the gradient of tied values goes to each window's first one,
// so an element two windows share and both pick gets both gradients; bad sizes are errors.
TEST(Layers, AdaptiveMaxPoolingTakesUnevenWindowsAndRoutesToTheFirstMaximum) {
  Graph g;
  Value images = g.placeholder("images", f32, {1, 1, 7, 5});
  Value sequence = g.placeholder("sequence", f32, {1, 2, 7});
  nn::AdaptiveMaxPool2d pool(g, "pool", {3, 2});
  nn::AdaptiveMaxPool1d pool1d(g, "pool1d", 3);
  const Value pooled = pool(images), pooled1d = pool1d(sequence);
  EXPECT_EQ(pooled.shape(), Shape({1, 1, 3, 2}));
  EXPECT_EQ(pooled1d.shape(), Shape({1, 2, 3}));
  const std::vector<Value> grads = gradients(sum(pooled) + sum(pooled1d), {images, sequence});
  Session s(g);
  std::vector<float> ramp(35);
  for (int64_t i = 0; i < 35; ++i) ramp[i] = static_cast<float>(i % 5 + 10 * (i / 5 % 3));
  const std::vector<float> line = {1, 5, 2, 5, NAN, 0, 3, 2, 2, 2, 2, 2, 2, 2};
  const auto out = s.run({{images, Tensor::from_vector(ramp, {1, 1, 7, 5})},
                          {sequence, Tensor::from_vector(line, {1, 2, 7})}},
                         {pooled, pooled1d, grads[0], grads[1]});
  // Rows 0-2, 2-4, 4-6 and columns 0-2, 2-4 of (row % 3) * 10 + column.
  EXPECT_EQ(out[0].to_vector<float>(), std::vector<float>({22, 24, 22, 24, 22, 24}));
  const std::vector<float> y1 = out[1].to_vector<float>();
  EXPECT_EQ(y1[0], 5);
  EXPECT_TRUE(std::isnan(y1[1]) && std::isnan(y1[2]));  // [2, 5) and [4, 7) hold the NaN
  EXPECT_EQ(std::vector<float>(y1.begin() + 3, y1.end()), std::vector<float>({2, 2, 2}));
  // Images: (2, 2) wins windows (0, 0) and (1, 0), (2, 4) wins (0, 1) and (1, 1).
  std::vector<float> want(35, 0);
  want[2 * 5 + 2] = 2;
  want[2 * 5 + 4] = 2;
  want[5 * 5 + 2] = 1;  // rows 4-6: row 5 (row % 3 == 2) wins alone
  want[5 * 5 + 4] = 1;
  EXPECT_EQ(out[2].to_vector<float>(), want);
  // Sequence: 5 at 1 for [0, 3), the NaN for [2, 5) and [4, 7); ties: 2 at 7, 9, 11.
  EXPECT_EQ(out[3].to_vector<float>(),
            std::vector<float>({0, 1, 0, 0, 2, 0, 0, 1, 0, 1, 0, 1, 0, 0}));

  expect_error<GraphError>(
      [&] {
        pool(g.placeholder("unknown", f32, {1, 1, -1, 5}));
      },
      {"[adaptive_max_pool2d]", "needs known C and H, W >= 1", "[1, 1, ?, 5]"});
  expect_error<GraphError>(
      [&] {
        nn::AdaptiveMaxPool2d(g, "none", {2, 0});
      },
      {"[nn] AdaptiveMaxPool2d none", "output size 2x0"});
  expect_error<GraphError>([&] { nn::AdaptiveMaxPool1d(g, "zero", 0); },
                           {"[nn] AdaptiveMaxPool1d zero", "output size 0"});
  expect_error<GraphError>([&] { pool1d(images); },
                           {"[nn] AdaptiveMaxPool1d pool1d", "[N, C, L]", "[1, 1, 7, 5]"});
  expect_error<GraphError>(
      [&] {
        g.add("adaptive_max_pool2d", {images}, {{"output_size", std::vector<int64_t>{3}}});
      },
      {"[adaptive_max_pool2d]", "output_size must be 2 values"});
  expect_error<GraphError>(
      [&] {
        g.add("adaptive_max_pool2d_backward", {images, g.placeholder("dy", f32, {1, 1, 2, 2})},
              {{"output_size", std::vector<int64_t>{3, 2}}});
      },
      {"[adaptive_max_pool2d_backward]", "input 1 is [1, 1, 2, 2], expected [1, 1, 3, 2]"});
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

// A block drops where PyTorch's TransformerEncoderLayer(dropout=p) does when all three rates
// are set: the attention probabilities, the FFN's activations, and both outputs before their
// residual sums; with the default attention and activation rates (0), only the two outputs, and
// attention stays the fused op. Evaluation mode adds no dropout at all.
TEST(Layers, BlockDropoutsSitWherePyTorchsEncoderLayerHasThem) {
  Graph g;
  Value x = g.placeholder("x", f32, {2, 5, 8});
  auto ops_of = [&](int32_t from, const std::string& op) {
    std::vector<Shape> shapes;
    for (int32_t id = from; id < g.num_nodes(); ++id)
      if (g.node(id).op_name() == op) shapes.push_back(g.node(id).outputs()[0].shape);
    return shapes;
  };
  nn::TransformerBlock all(g, "all", 8, 2,
                           {.ffn_dim = 16,
                            .dropout = 0.1,
                            .attention_dropout = 0.1,
                            .activation_dropout = 0.1,
                            .norm_first = false});
  int32_t start = g.num_nodes();
  all(x);
  EXPECT_EQ(ops_of(start, "dropout_mask"),
            (std::vector<Shape>{{2, 2, 5, 5}, {2, 5, 8}, {2, 5, 16}, {2, 5, 8}}));
  EXPECT_TRUE(ops_of(start, "attention").empty());
  all.eval();
  start = g.num_nodes();
  all(x);
  EXPECT_TRUE(ops_of(start, "dropout_mask").empty());
  EXPECT_EQ(ops_of(start, "attention").size(), 1u);

  nn::TransformerBlock residual_only(g, "residual_only", 8, 2, {.ffn_dim = 16, .dropout = 0.1});
  start = g.num_nodes();
  residual_only(x);
  EXPECT_EQ(ops_of(start, "dropout_mask"), (std::vector<Shape>{{2, 5, 8}, {2, 5, 8}}));
  EXPECT_EQ(ops_of(start, "attention").size(), 1u);
}

// TransformerDecoderBlock wires its sublayers as PyTorch's TransformerDecoderLayer, post-norm and
// pre-norm: the block equals the residual sums built by hand from its own sublayers. Self-attention
// is causal and cross-attention honours the memory's key mask: changing a later token or a masked
// memory row changes nothing it must not. Called without a memory, it says so.
TEST(Layers, DecoderBlockWiresItsSublayersAsPyTorchsDecoderLayer) {
  for (const bool norm_first : {false, true}) {
    Graph g;
    Value x = g.placeholder("x", f32, {2, 4, 8});
    Value memory = g.placeholder("memory", f32, {2, 3, 8});
    Value keep = g.placeholder("keep", boolean, {2, 1, 1, 3});
    nn::TransformerDecoderBlock block(g, "dec", 8, 2,
                                      {.ffn_dim = 16,
                                       .dropout = 0.5,  // evaluation mode below: no dropout
                                       .attention_dropout = 0.5,
                                       .activation_dropout = 0.5,
                                       .causal = true,
                                       .norm_first = norm_first});
    block.eval();
    Value y = block.decode(x, memory, {}, keep);
    auto sa = [&](const Value& v) { return block.self_attention.attend(v, Value()); };
    auto ca = [&](const Value& v) { return block.cross_attention.attend(v, memory, keep); };
    auto ffn = [&](const Value& v) { return block.ffn_out(gelu(block.ffn_in(v))); };
    Value by_hand;
    if (norm_first) {
      Value h = x + sa(block.norm1(x));
      h = h + ca(block.norm2(h));
      by_hand = h + ffn(block.norm3(h));
    } else {
      Value h = block.norm1(x + sa(x));
      h = block.norm2(h + ca(h));
      by_hand = block.norm3(h + ffn(h));
    }
    Session s(g);
    Tensor keep_values = Tensor::empty(boolean, {2, 1, 1, 3});
    for (int64_t i = 0; i < 6; ++i) keep_values.data<bool>()[i] = i != 2 && i != 5;  // row 2 off
    const Tensor in = testing::random_tensor(f32, {2, 4, 8}, -1, 1, 13);
    const Tensor mem = testing::random_tensor(f32, {2, 3, 8}, -1, 1, 14);
    Tensor later = in.clone(), masked = mem.clone();
    for (int64_t b = 0; b < 2; ++b)
      for (int64_t c = 0; c < 8; ++c) {
        later.data<float>()[(b * 4 + 3) * 8 + c] += 1;   // the last token
        masked.data<float>()[(b * 3 + 2) * 8 + c] += 1;  // the masked memory row
      }
    auto run = [&](const Tensor& tokens, const Tensor& rows) {
      return s.run({{x, tokens}, {memory, rows}, {keep, keep_values}}, {y, by_hand});
    };
    const auto base = run(in, mem), moved = run(later, mem), hidden = run(in, masked);
    double later_change = 0;
    for (int64_t i = 0; i < 64; ++i) {
      EXPECT_NEAR(base[0].element(i), base[1].element(i), 1e-6) << norm_first << " " << i;
      EXPECT_NEAR(hidden[0].element(i), base[0].element(i), 1e-6) << norm_first << " " << i;
      if (i % 32 < 24)  // tokens 0-2 of each sequence
        EXPECT_NEAR(moved[0].element(i), base[0].element(i), 1e-6) << norm_first << " " << i;
      else
        later_change = std::max(later_change, std::abs(moved[0].element(i) - base[0].element(i)));
    }
    EXPECT_GT(later_change, 1e-3);
    expect_error<GraphError>([&] { block(x); },
                             {"[nn] TransformerDecoderBlock dec", "call decode(x, memory)"});
    expect_error<GraphError>(
        [&] {
          block.decode(x, g.placeholder("narrow", f32, {2, 3, 4}));
        },
        {"[nn] MultiHeadAttention dec/cross_attention", "memory [batch, length, 8]"});
  }
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
