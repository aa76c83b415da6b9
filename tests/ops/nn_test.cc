#include "autograd/gradcheck.h"
#include "test_util.h"

namespace kiln {
namespace {

TEST(Softmax, MatchesReferenceOnAnyAxisAndIsStable) {
  for (DType dtype : {f32, f64}) {
    for (int64_t axis : {0, 1, 2, -1}) {
      Graph g;
      Tensor in = testing::random_tensor(dtype, {3, 4, 5}, -20, 20, 3);
      Value x = g.constant(in);
      Session s(g);
      auto out = s.run({}, {softmax(x, axis), log_softmax(x, axis)});
      const Shape& shape = in.shape();
      int64_t a = axis < 0 ? axis + 3 : axis;
      std::vector<double> expected_sm, expected_lsm;
      for (int64_t i = 0; i < in.numel(); ++i) {
        std::vector<int64_t> idx = testing::unravel(i, shape);
        double m = -INFINITY, total = 0;
        std::vector<int64_t> j = idx;
        for (j[a] = 0; j[a] < shape[a]; ++j[a])
          m = std::max(m, in.element((j[0] * 4 + j[1]) * 5 + j[2]));
        for (j[a] = 0; j[a] < shape[a]; ++j[a])
          total += std::exp(in.element((j[0] * 4 + j[1]) * 5 + j[2]) - m);
        expected_sm.push_back(std::exp(in.element(i) - m) / total);
        expected_lsm.push_back(in.element(i) - m - std::log(total));
      }
      double tol = dtype == f32 ? 1e-5 : 1e-12;
      testing::expect_near(expected_sm, out[0], tol, tol, str("softmax axis ", axis));
      testing::expect_near(expected_lsm, out[1], tol, tol, str("log_softmax axis ", axis));
    }
  }
  Graph g;
  Value big = g.constant(Tensor::from_vector<float>({1000, 1000, -1000}));
  auto y = testing::run1(g, softmax(big)).to_vector<float>();
  EXPECT_FLOAT_EQ(y[0], 0.5f);
  EXPECT_FLOAT_EQ(y[2], 0.0f);
}

// Logits near 1e4 in f32: log_softmax and the cross-entropy must keep f32's relative accuracy
// (computing x - (m + log s) rounds m + log s to a spacing of 1e-3 and was off by 2.8e-4).
TEST(Softmax, LogSoftmaxKeepsF32AccuracyOnLargeLogits) {
  Graph g;
  const std::vector<float> row = {10000.0f, 10000.5f, 9999.25f, 10001.0f, 9998.0f};
  Value x = g.constant(Tensor::from_vector<float>(row, {1, 5}));
  Value labels = g.constant(Tensor::from_vector<int64_t>({3}));
  Session s(g);
  auto out = s.run({}, {log_softmax(x), softmax_cross_entropy(x, labels)});
  double m = 10001.0, total = 0;
  for (float v : row) total += std::exp(double(v) - m);
  for (int i = 0; i < 5; ++i) {
    const double expected = (double(row[i]) - m) - std::log(total);
    EXPECT_NEAR(out[0].element(i), expected, 2e-7 * std::abs(expected))
        << "log_softmax[" << i << "]";
  }
  const double loss = std::log(total);  // label 3 holds the max
  EXPECT_NEAR(out[1].element(0), loss, 2e-7 * loss) << "softmax_cross_entropy";
}

TEST(CrossEntropy, MatchesReferenceAndRejectsBadLabels) {
  Graph g;
  Tensor logits = testing::random_tensor(f64, {4, 6}, -5, 5, 9);
  Value z = g.constant(logits);
  Value y = g.constant(Tensor::from_vector<int32_t>({0, 5, 2, 2}));
  Tensor loss = testing::run1(g, softmax_cross_entropy(z, y));
  ASSERT_EQ(loss.shape(), Shape({4}));
  std::vector<int> labels = {0, 5, 2, 2};
  for (int i = 0; i < 4; ++i) {
    double m = -INFINITY, s = 0;
    for (int c = 0; c < 6; ++c) m = std::max(m, logits.element(i * 6 + c));
    for (int c = 0; c < 6; ++c) s += std::exp(logits.element(i * 6 + c) - m);
    EXPECT_NEAR(loss.element(i), m + std::log(s) - logits.element(i * 6 + labels[i]), 1e-12);
  }
  Value bad = g.constant(Tensor::from_vector<int64_t>({0, 6, 1, 1}));
  testing::expect_error([&] { testing::run1(g, softmax_cross_entropy(z, bad)); },
                        {"[softmax_cross_entropy]", "label 6 at position 1", "[0, 6)"});
  testing::expect_error<GraphError>(
      [&] {
        softmax_cross_entropy(z, g.constant(Tensor::from_vector<int64_t>({1, 2})));
      },
      {"batch sizes differ"});
  testing::expect_error<GraphError>([&] { softmax_cross_entropy(z, z); }, {"labels", "f64"});
}

// PyTorch's documented im2col: column l = (bi, bj) (row-major over the oh x ow blocks), row
// c kh kw + i kw + j holds padded x[n, c, bi s0 + i d0, bj s1 + j d1] (0 in the padding); fold
// adds each column element back where unfold took it. Every option together and apart, an
// unknown batch, finite-difference gradients of both, and the errors.
TEST(Unfold, BlocksAreColumnsAndFoldAddsThemBack) {
  struct Case {
    Shape x;
    UnfoldOptions options;
  };
  const std::vector<Case> cases = {
      {{2, 3, 5, 6}, {.kernel_size = {2, 3}}},
      {{1, 2, 7, 6},
       {.kernel_size = {3, 2}, .dilation = {2, 1}, .padding = {1, 2}, .stride = {2, 3}}},
      {{2, 1, 4, 4}, {.kernel_size = {2, 2}, .stride = {2, 2}}},  // blocks that tile: fold inverts
      {{1, 2, 3, 5}, {.kernel_size = {1, 1}, .padding = {1, 0}}},
  };
  for (size_t k = 0; k < cases.size(); ++k) {
    const Case& c = cases[k];
    const UnfoldOptions& o = c.options;
    SCOPED_TRACE(str("case ", k));
    const int64_t n = c.x[0], ch = c.x[1], h = c.x[2], w = c.x[3];
    const int64_t kh = o.kernel_size[0], kw = o.kernel_size[1];
    const int64_t oh = (h + 2 * o.padding[0] - o.dilation[0] * (kh - 1) - 1) / o.stride[0] + 1;
    const int64_t ow = (w + 2 * o.padding[1] - o.dilation[1] * (kw - 1) - 1) / o.stride[1] + 1;
    const Tensor in = testing::r64(c.x, -1, 1, static_cast<uint32_t>(60 + k));
    const Tensor cols_in =
        testing::r64({n, ch * kh * kw, oh * ow}, -1, 1, static_cast<uint32_t>(70 + k));
    Graph g;
    Value x = g.placeholder("x", f64, {-1, ch, h, w});
    Value cols = g.placeholder("cols", f64, {-1, ch * kh * kw, oh * ow});
    const Value unfolded = unfold(x, o), folded = fold(cols, {h, w}, o);
    EXPECT_EQ(unfolded.shape(), Shape({-1, ch * kh * kw, oh * ow}));
    EXPECT_EQ(folded.shape(), Shape({-1, ch, h, w}));
    Session s(g);
    const auto got =
        s.run({{x, in}, {cols, cols_in}}, {unfolded, folded, fold(unfolded, {h, w}, o)});
    std::vector<double> want_unfolded(static_cast<size_t>(n * ch * kh * kw * oh * ow), 0.0);
    std::vector<double> want_folded(static_cast<size_t>(in.numel()), 0.0);
    for (int64_t b = 0; b < n; ++b)
      for (int64_t cc = 0; cc < ch; ++cc)
        for (int64_t i = 0; i < kh; ++i)
          for (int64_t j = 0; j < kw; ++j)
            for (int64_t bi = 0; bi < oh; ++bi)
              for (int64_t bj = 0; bj < ow; ++bj) {
                const int64_t row = cc * kh * kw + i * kw + j, col = bi * ow + bj;
                const size_t at = static_cast<size_t>((b * ch * kh * kw + row) * oh * ow + col);
                const int64_t y = bi * o.stride[0] + i * o.dilation[0] - o.padding[0];
                const int64_t xx = bj * o.stride[1] + j * o.dilation[1] - o.padding[1];
                if (y < 0 || y >= h || xx < 0 || xx >= w) continue;
                const size_t pixel = static_cast<size_t>(((b * ch + cc) * h + y) * w + xx);
                want_unfolded[at] = in.element(static_cast<int64_t>(pixel));
                want_folded[pixel] += cols_in.element(static_cast<int64_t>(at));
              }
    testing::expect_near(want_unfolded, got[0], 0, 0, "unfold");
    testing::expect_near(want_folded, got[1], 1e-15, 1e-15, "fold");
    if (k == 2) testing::expect_near(testing::values(in), got[2], 0, 0, "fold of unfold");
    testing::check_gradients([&](Graph&, const std::vector<Value>& v) { return unfold(v[0], o); },
                             {testing::r64(c.x, -1, 1, 80)}, str("unfold ", k));
    testing::check_gradients(
        [&](Graph&, const std::vector<Value>& v) {
          return fold(v[0], {h, w}, o);
        },
        {testing::r64({1, ch * kh * kw, oh * ow}, -1, 1, 81)}, str("fold ", k));
  }
  // As layers (PyTorch's Unfold, Fold, Unflatten): tiling blocks fold back to the image.
  {
    Graph g;
    nn::Sequential blocks(g, "blocks");
    const UnfoldOptions tiles{.kernel_size = {2, 2}, .stride = {2, 2}};
    blocks.add<nn::Unfold>("unfold", tiles);
    blocks.add<nn::Unflatten>("split", 1, std::vector<int64_t>{2, -1});
    blocks.add<nn::Flatten>("merge", 1, 2);
    blocks.add<nn::Fold>("fold", std::array<int64_t, 2>{4, 6}, tiles);
    Value x = g.placeholder("x", f64, {-1, 2, 4, 6});
    const Value y = blocks(x);
    EXPECT_EQ(y.shape(), Shape({-1, 2, 4, 6}));
    const Tensor in = testing::r64({3, 2, 4, 6}, -1, 1, 90);
    testing::expect_near(testing::values(in), testing::run1(g, y, {{x, in}}), 0, 0, "layers");
  }
  Graph g;
  Value x = g.placeholder("x", f32, {2, 3, 5, 6});
  testing::expect_error<GraphError>(
      [&] {
        unfold(g.placeholder("flat", f32, {2, 3, 5}), {});
      },
      {"[unfold] flat", "[N, C, H, W]", "[2, 3, 5]"});
  testing::expect_error<GraphError>(
      [&] {
        unfold(x, {.kernel_size = {6, 1}});
      },
      {"[unfold] x", "a block spans 6 along the height", "the padded 5"});
  testing::expect_error<GraphError>(
      [&] {
        unfold(x, {.kernel_size = {2, 2}, .stride = {0, 1}});
      },
      {"stride 0", "along the height"});
  testing::expect_error<GraphError>(
      [&] {
        fold(g.placeholder("cols", f32, {2, 12, 19}), {5, 6}, {.kernel_size = {2, 2}});
      },
      {"[fold] cols", "[N, C 4, 20] (4 x 5 blocks of 2 x 2)", "[2, 12, 19]"});
  testing::expect_error<GraphError>(
      [&] {
        fold(g.placeholder("c2", f32, {2, 12, 20}), {0, 6}, {.kernel_size = {2, 2}});
      },
      {"[fold] c2", "output_size (0, 6) must be positive"});
}

// PyTorch's MaxPool1d(return_indices=True) and MaxUnpool1d: indices are positions along L (the
// window's first maximum; padding never wins), and unpooling puts each maximum back there.
TEST(Pool1d, IndicesArePositionsAlongTheSequenceAndUnpoolingPutsMaximaBack) {
  constexpr int64_t kN = 2, kC = 3, kL = 11;
  const nn::Pool1dOptions options{.kernel_size = 3, .stride = 2, .padding = 1};
  Graph g;
  Value x = g.placeholder("x", f32, {-1, kC, kL});
  nn::MaxPool1d pool(g, "pool", options);
  nn::MaxUnpool1d unpool(g, "unpool", options);
  const std::pair<Value, Value> both = pool.with_indices(x);
  const Value pooled = both.first, indices = both.second;
  const Value restored = unpool.unpool(pooled, indices),
              longer = unpool.unpool(pooled, indices, 12);
  EXPECT_EQ(restored.shape(), Shape({-1, kC, kL}));
  EXPECT_EQ(longer.shape(), Shape({-1, kC, 12}));
  const Tensor in = testing::random_tensor(f32, {kN, kC, kL}, -2, 2, 95);
  const auto got = Session(g).run({{x, in}}, {pooled, indices, restored, longer, pool(x)});
  constexpr int64_t kOut = 6;  // floor((11 + 2 - 3) / 2) + 1
  ASSERT_EQ(got[1].shape(), Shape({kN, kC, kOut}));
  std::vector<float> want_restored(static_cast<size_t>(kN * kC * kL), 0.0f);
  for (int64_t row = 0; row < kN * kC; ++row)
    for (int64_t o = 0; o < kOut; ++o) {
      int64_t best = -1;
      for (int64_t t = o * 2 - 1; t < o * 2 + 2; ++t)
        if (t >= 0 && t < kL &&
            (best < 0 || in.element(row * kL + t) > in.element(row * kL + best)))
          best = t;
      const int64_t at = row * kOut + o;
      EXPECT_EQ(got[1].to_vector<int64_t>()[static_cast<size_t>(at)], best) << row << " " << o;
      EXPECT_EQ(got[0].element(at), in.element(row * kL + best));
      EXPECT_EQ(got[4].element(at), in.element(row * kL + best));
      want_restored[static_cast<size_t>(row * kL + best)] =
          static_cast<float>(in.element(row * kL + best));
    }
  EXPECT_EQ(got[2].to_vector<float>(), want_restored);
  for (int64_t row = 0; row < kN * kC; ++row)
    for (int64_t l = 0; l < 12; ++l)
      EXPECT_EQ(got[3].element(row * 12 + l),
                l < kL ? want_restored[static_cast<size_t>(row * kL + l)] : 0.0f);
  // PyTorch 1.13's values for a maximum two windows share: it is put back once, not summed.
  {
    Graph h;
    Value seq = h.constant(Tensor::from_vector<float>({1, 5, 2, 0, 3, 4, 1}, {1, 1, 7}));
    nn::MaxPool1d shared(h, "pool", options);
    nn::MaxUnpool1d back(h, "unpool", options);
    const std::pair<Value, Value> found = shared.with_indices(seq);
    const auto out =
        Session(h).run({}, {found.first, found.second, back.unpool(found.first, found.second)});
    EXPECT_EQ(out[0].to_vector<float>(), (std::vector<float>{5, 5, 4, 4}));
    EXPECT_EQ(out[1].to_vector<int64_t>(), (std::vector<int64_t>{1, 1, 5, 5}));
    EXPECT_EQ(out[2].to_vector<float>(), (std::vector<float>{0, 5, 0, 0, 0, 4, 0}));
  }
  testing::expect_error<GraphError>([&] { unpool(pooled); },
                                    {"[nn] MaxUnpool1d unpool", "call unpool(x, indices)"});
  testing::expect_error<GraphError>([&] { unpool.unpool(pooled, indices, 14); },
                                    {"output_size (1, 14)"});
  testing::expect_error<GraphError>([&] { unpool.unpool(pooled, expand_dims(indices, 2)); },
                                    {"[nn] MaxUnpool1d unpool", "indices [N, C, L]"});
}

}  // namespace
}  // namespace kiln
