// scaled_dot_product_attention's edges: its errors, empty dimensions, rows with nothing to
// attend, masks of lower rank, sliding windows and query offsets against their masks written out,
// and the bias gradient built only where read.
#include <cmath>
#include <limits>

#include "test_util.h"

namespace kiln {
namespace {

using testing::expect_error;

TEST(NnFunctional, AttentionErrorsNameTheShapes) {
  Graph g;
  Value q = g.placeholder("q", f32, {2, 3, 5, 8});
  Value k = g.placeholder("k", f32, {2, 3, 7, 8});
  Value v = g.placeholder("v", f32, {2, 3, 7, 4});
  expect_error<GraphError>(
      [&] {
        scaled_dot_product_attention(reshape(q, {6, 5, 8}), k, v);
      },
      {"[attention]", "[batch, heads, length, depth]", "[6, 5, 8]"});
  expect_error<GraphError>(
      [&] {
        scaled_dot_product_attention(q, g.placeholder("k2", f32, {2, 3, 7, 6}), v);
      },
      {"[attention]", "different depths"});
  expect_error<GraphError>(
      [&] {
        scaled_dot_product_attention(q, k, v,
                                     {.mask = g.placeholder("m", DType::boolean, {2, 1, 1, 5})});
      },
      {"[attention]", "does not broadcast", "dim 3"});
  expect_error<GraphError>([&] { scaled_dot_product_attention(q, k, v, {.layout = "btdh"}); },
                           {"[attention]", "layout must be bhtd", "'btdh'"});
  // In layout bthd the heads are dim 2 and the length dim 1: read so, q [2, 3, 5, 8] has 5 heads
  // of length 3 and k 7 heads; a mask is held against the scores [B, H, Tq, Tk] = [2, 5, 3, 3].
  expect_error<GraphError>([&] { scaled_dot_product_attention(q, k, v, {.layout = "bthd"}); },
                           {"[attention]", "dividing q's", "k [2, 3, 7, 8]"});
  // Grouped-query attention: k and v may have fewer heads, the same number, dividing q's.
  expect_error<GraphError>(
      [&] {
        scaled_dot_product_attention(q, g.placeholder("k3", f32, {2, 2, 7, 8}),
                                     g.placeholder("v3", f32, {2, 2, 7, 4}));
      },
      {"[attention]", "dividing q's", "q [2, 3, 5, 8]", "k [2, 2, 7, 8]"});
  expect_error<GraphError>(
      [&] {
        scaled_dot_product_attention(q, g.placeholder("k4", f32, {2, 1, 7, 8}), v);
      },
      {"[attention]", "the same number of heads", "v [2, 3, 7, 4]"});

  expect_error<GraphError>(
      [&] {
        scaled_dot_product_attention(
            q, q, q, {.mask = g.placeholder("m2", DType::boolean, {2, 1, 5, 3}), .layout = "bthd"});
      },
      {"[attention]", "does not broadcast", "[2, 5, 3, 3]", "dim 2"});
  expect_error<GraphError>(
      [&] {
        scaled_dot_product_attention(reshape(q, {6, 5, 8}), k, v, {.layout = "bthd"});
      },
      {"[attention]", "[batch, length, heads, depth]"});
  // A mask whose dims are known only when the graph runs is checked then.
  Value mask = g.placeholder("mask", DType::boolean, {-1, 1, 1, -1});
  Value out = scaled_dot_product_attention(q, k, v, {.mask = mask});
  Session s(g);
  FeedList feeds = {{q, Tensor::zeros(f32, {2, 3, 5, 8})},
                    {k, Tensor::zeros(f32, {2, 3, 7, 8})},
                    {v, Tensor::zeros(f32, {2, 3, 7, 4})},
                    {mask, Tensor::full(DType::boolean, {2, 1, 1, 6}, 1)}};
  expect_error<Error>([&] { s.run(feeds, {out}); },
                      {"[attention]", "the mask [2, 1, 1, 6] does not broadcast", "[2, 3, 5, 7]"});
  // Heads known only when the graph runs are checked then.
  Value qh = g.placeholder("qh", f32, {2, -1, 5, 8}), kh = g.placeholder("kh", f32, {2, -1, 7, 8});
  Value vh = g.placeholder("vh", f32, {2, -1, 7, 4});
  Value grouped = scaled_dot_product_attention(qh, kh, vh);
  Session s2(g);
  expect_error<Error>(
      [&] {
        s2.run({{qh, Tensor::zeros(f32, {2, 3, 5, 8})},
                {kh, Tensor::zeros(f32, {2, 2, 7, 8})},
                {vh, Tensor::zeros(f32, {2, 2, 7, 4})}},
               {grouped});
      },
      {"[attention]", "dividing q's", "k [2, 2, 7, 8]"});
}

// Empty problems: no keys (every row attends to nothing: out 0, logsumexp -inf, gradients 0),
// no heads, no queries; the f32 kernel (tiles with AVX-512) and f64 (the gemm path) alike.
TEST(NnFunctional, AttentionOverEmptyDimsIsEmptyOrZero) {
  for (DType dtype : {f32, f64}) {
    SCOPED_TRACE(str(dtype));
    for (const auto& [q_shape, kv_length] :
         {std::pair{Shape{2, 3, 4, 5}, int64_t{0}}, std::pair{Shape{2, 0, 4, 5}, int64_t{6}},
          std::pair{Shape{0, 3, 4, 5}, int64_t{6}}, std::pair{Shape{2, 3, 0, 5}, int64_t{6}}}) {
      Graph g;
      const Shape k_shape{q_shape[0], q_shape[1], kv_length, 5};
      const Shape v_shape{q_shape[0], q_shape[1], kv_length, 3};
      Value q = g.placeholder("q", dtype, q_shape), k = g.placeholder("k", dtype, k_shape);
      Value v = g.placeholder("v", dtype, v_shape);
      std::vector<Value> out = g.add_node("attention", {q, k, v}, {{"causal", true}});
      std::vector<Value> grads = gradients(sum(out[0]) + sum(q), {q, k, v});
      Session s(g);
      std::vector<Tensor> r = s.run({{q, Tensor::full(dtype, q_shape, 0.5)},
                                     {k, Tensor::full(dtype, k_shape, 0.5)},
                                     {v, Tensor::full(dtype, v_shape, 0.5)}},
                                    {out[0], out[1], grads[0], grads[1], grads[2]});
      EXPECT_EQ(r[0].shape(), (Shape{q_shape[0], q_shape[1], q_shape[2], 3}));
      for (int64_t e = 0; e < r[0].numel(); ++e) EXPECT_EQ(r[0].element(e), 0.0);
      for (int64_t e = 0; e < r[1].numel(); ++e) EXPECT_EQ(r[1].element(e), -INFINITY);
      for (int64_t e = 0; e < r[2].numel(); ++e) EXPECT_EQ(r[2].element(e), 1.0);  // sum(q)
      EXPECT_EQ(r[3].shape(), k_shape);
      EXPECT_EQ(r[4].shape(), v_shape);
    }
  }
}

// A query row whose keys are all masked attends to nothing: its output is 0, its logsumexp
// -inf, and no NaN reaches any gradient; the other rows are a softmax over their visible keys.
// The mask is bool, or a bias of 0 and -inf (whose gradient is 0 where it hides a key).
TEST(NnFunctional, AttentionRowWithNothingToAttendIsZero) {
  for (bool as_bias : {false, true}) {
    SCOPED_TRACE(str("as_bias ", as_bias));
    Graph g;
    const int64_t tq = 3, tk = 20;  // 20 keys: the CPU kernel's 16-lane loops and their tails
    Tensor qt = Tensor::zeros(f32, {1, 1, tq, 2}), kt = Tensor::zeros(f32, {1, 1, tk, 2});
    Tensor vt = Tensor::zeros(f32, {1, 1, tk, 1}),
           mt = Tensor::zeros(DType::boolean, {1, 1, tq, tk});
    for (int64_t i = 0; i < tq * 2; ++i) qt.data<float>()[i] = 0.3f * static_cast<float>(i) - 0.5f;
    for (int64_t j = 0; j < tk; ++j) {
      kt.data<float>()[2 * j] = std::sin(static_cast<float>(j));
      kt.data<float>()[2 * j + 1] = std::cos(static_cast<float>(j));
      vt.data<float>()[j] = static_cast<float>(j);
      mt.data<bool>()[0 * tk + j] = j % 3 != 0;  // row 0 sees two keys in three
      mt.data<bool>()[2 * tk + j] = true;        // row 2 all; row 1 none
    }
    Tensor bt = Tensor::empty(f32, mt.shape());
    for (int64_t i = 0; i < mt.numel(); ++i)
      bt.data<float>()[i] = mt.data<bool>()[i] ? 0 : -INFINITY;
    Value q = g.constant(qt), k = g.constant(kt), v = g.constant(vt);
    Value mask = g.constant(as_bias ? bt : mt);
    std::vector<Value> out =
        g.add_node("attention", {q, k, v, mask}, {{"causal", false}, {"scale", 0.0}});
    std::vector<Value> wrt{q, k, v};
    if (as_bias) wrt.push_back(mask);
    std::vector<Value> grads = gradients(sum(out[0] * out[0]), wrt);
    Session s(g);
    std::vector<Value> fetches{out[0], out[1]};
    fetches.insert(fetches.end(), grads.begin(), grads.end());
    std::vector<Tensor> r = s.run({}, fetches);
    EXPECT_EQ(r[0].data<float>()[1], 0.0f);
    EXPECT_EQ(r[1].data<float>()[1], -INFINITY);
    for (int64_t row : {0, 2}) {
      double m = -INFINITY, sum = 0, weighted = 0;
      std::vector<double> s_row(static_cast<size_t>(tk), -INFINITY);
      for (int64_t j = 0; j < tk; ++j)
        if (mt.data<bool>()[row * tk + j]) {
          s_row[j] = (qt.data<float>()[2 * row] * kt.data<float>()[2 * j] +
                      qt.data<float>()[2 * row + 1] * kt.data<float>()[2 * j + 1]) /
                     std::sqrt(2.0);
          m = std::max(m, s_row[j]);
        }
      for (int64_t j = 0; j < tk; ++j) {
        const double e = std::exp(s_row[j] - m);
        sum += e;
        weighted += e * j;
      }
      EXPECT_NEAR(r[0].data<float>()[row], weighted / sum, 1e-4) << "row " << row;
      EXPECT_NEAR(r[1].data<float>()[row], m + std::log(sum), 1e-5) << "row " << row;
    }
    for (size_t i = 2; i < r.size(); ++i)
      for (int64_t e = 0; e < r[i].numel(); ++e)
        ASSERT_TRUE(std::isfinite(r[i].data<float>()[e]))
            << "gradient " << i - 2 << "[" << e << "]";
    EXPECT_EQ(r[2].data<float>()[2], 0.0f);  // dq of the row that attends to nothing
    EXPECT_EQ(r[2].data<float>()[3], 0.0f);
    if (as_bias) {  // the bias's gradient: 0 where it hides a key, not so everywhere else
      double seen = 0;
      for (int64_t e = 0; e < tq * tk; ++e) {
        if (!mt.data<bool>()[e]) {
          EXPECT_EQ(r[5].data<float>()[e], 0.0f) << e;
        }
        seen = std::max(seen, std::abs(double(r[5].data<float>()[e])));
      }
      EXPECT_GT(seen, 1e-3);
    }
  }
}

// Masks of rank 1 to 3 broadcast from the right (PyTorch's attn_mask [Tq, Tk]): the same as
// the 4-D mask with leading 1s, bool or float.
TEST(NnFunctional, AttentionMasksOfLowerRankBroadcastFromTheRight) {
  Graph g;
  Value q = g.placeholder("q", f32, {2, 3, 5, 8}), k = g.placeholder("k", f32, {2, 3, 7, 8});
  Value v = g.placeholder("v", f32, {2, 3, 7, 4});
  const Tensor keep = testing::random_tensor(f32, {5, 7}, 0, 1, 4);
  Tensor keep_bool = Tensor::empty(boolean, {5, 7}), bias = Tensor::empty(f32, {5, 7});
  for (int64_t i = 0; i < 35; ++i) {
    keep_bool.data<bool>()[i] = i % 7 == 0 || keep.data<float>()[i] > 0.3f;
    bias.data<float>()[i] = keep.data<float>()[i] - 0.5f;
  }
  std::vector<Value> pairs;
  for (const Tensor& m : {keep_bool, bias}) {
    Value mask = g.constant(m);
    pairs.push_back(scaled_dot_product_attention(q, k, v, {.mask = mask}));
    pairs.push_back(scaled_dot_product_attention(q, k, v, {.mask = reshape(mask, {1, 1, 5, 7})}));
  }
  Value row_mask = g.constant(Tensor::full(boolean, {7}, 1));  // rank 1: [Tk]
  pairs.push_back(scaled_dot_product_attention(q, k, v, {.mask = row_mask}));
  pairs.push_back(scaled_dot_product_attention(q, k, v));
  const auto out = Session(g).run({{q, testing::random_tensor(f32, {2, 3, 5, 8}, -1, 1, 5)},
                                   {k, testing::random_tensor(f32, {2, 3, 7, 8}, -1, 1, 6)},
                                   {v, testing::random_tensor(f32, {2, 3, 7, 4}, -1, 1, 7)}},
                                  pairs);
  for (size_t p = 0; p < out.size(); p += 2)
    for (int64_t i = 0; i < out[p].numel(); ++i)
      ASSERT_EQ(out[p].element(i), out[p + 1].element(i)) << "pair " << p / 2 << " at " << i;
}

// A sliding window is the bool mask j > i - window joined to the causal flag and to the mask
// given (bool, or a bias that becomes -inf outside the window), the kernels leaving out what no
// row of a block reaches: the results and gradients of that mask written out, on the gemm path
// (f64) and the f32 tiles, with blocks and tiles whose reach starts past key 0 and (not causal,
// more queries than keys past the window) rows that reach no key (out 0, gradient 0).
TEST(NnFunctional, AttentionSlidingWindowMatchesItsMaskWrittenOut) {
  constexpr int64_t kQueries = 150, kKeys = 100;
  for (DType dtype : {f64, f32})
    for (bool causal : {false, true})
      for (int given : {0, 1, 2})  // no mask, a bool key mask, a bias
        for (int64_t window : {int64_t{1}, int64_t{17}, int64_t{70}}) {
          SCOPED_TRACE(str(dtype, ", causal ", causal, ", given ", given, ", window ", window));
          Graph g;
          Value q = g.placeholder("q", dtype, {2, kQueries, 2, 4});
          Value k = g.placeholder("k", dtype, {2, kKeys, 2, 4});
          Value v = g.placeholder("v", dtype, {2, kKeys, 2, 3});
          Tensor keys_kept = Tensor::empty(boolean, {2, 1, 1, kKeys});
          Tensor bias = testing::random_tensor(dtype, {2, 1, 1, kKeys}, -1, 1, 9);
          for (int64_t j = 0; j < 2 * kKeys; ++j) keys_kept.data<bool>()[j] = j % 5 != 2;
          Value mask = given == 0 ? Value() : g.constant(given == 1 ? keys_kept : bias);
          Value windowed = scaled_dot_product_attention(
              q, k, v, {.mask = mask, .causal = causal, .window = window, .layout = "bthd"});
          // Written out: [2, 1, kQueries, kKeys].
          Tensor written = Tensor::empty(boolean, {2, 1, kQueries, kKeys});
          std::vector<double> written_bias(static_cast<size_t>(written.numel()));
          for (int64_t b = 0; b < 2; ++b)
            for (int64_t i = 0; i < kQueries; ++i)
              for (int64_t j = 0; j < kKeys; ++j) {
                const int64_t at = (b * kQueries + i) * kKeys + j;
                const bool in_window = j > i - window;
                written_bias[static_cast<size_t>(at)] =
                    in_window ? bias.element(b * kKeys + j) : -INFINITY;
                written.data<bool>()[at] =
                    in_window && (given == 0 || keys_kept.data<bool>()[b * kKeys + j]);
              }
          if (given == 2) written = Tensor::from_vector(written_bias, written.shape()).cast(dtype);
          Value by_hand = scaled_dot_product_attention(
              q, k, v, {.mask = g.constant(written), .causal = causal, .layout = "bthd"});
          Value weights = g.constant(testing::random_tensor(dtype, {2, kQueries, 2, 3}, -1, 1, 13));
          std::vector<Value> fetches{windowed, by_hand};
          for (const Value& out : {windowed, by_hand})
            for (const Value& grad : gradients(sum(out * weights), {q, k, v}))
              fetches.push_back(grad);
          const auto out =
              Session(g).run({{q, testing::random_tensor(dtype, {2, kQueries, 2, 4}, -1, 1, 10)},
                              {k, testing::random_tensor(dtype, {2, kKeys, 2, 4}, -1, 1, 11)},
                              {v, testing::random_tensor(dtype, {2, kKeys, 2, 3}, -1, 1, 12)}},
                             fetches);
          const double tolerance = dtype == f64 ? 1e-13 : 2e-6;
          for (size_t pair : {0, 2, 3, 4}) {
            const Tensor& got = out[pair];
            const Tensor& want = out[pair < 2 ? 1 : pair + 3];
            for (int64_t e = 0; e < got.numel(); ++e)
              ASSERT_NEAR(got.element(e), want.element(e), tolerance)
                  << "output " << pair << " at " << e;
          }
          if (!causal && window < 50) {  // rows from keys + window - 1 on reach no key
            for (int64_t c = 0; c < 3; ++c)
              ASSERT_EQ(out[0].element(((kQueries - 1) * 2 + 1) * 3 + c), 0.0);
          }
        }
  // The lengths may be unknown as the graph is built; a window must be positive.
  Graph g;
  Value q = g.placeholder("q", f32, {2, 3, -1, 4});
  Value open = scaled_dot_product_attention(q, q, q, {.causal = true, .window = 2});
  const Tensor x = testing::random_tensor(f32, {2, 3, 5, 4}, -1, 1, 14);
  const Tensor got = Session(g).run({{q, x}}, {open})[0];
  EXPECT_EQ(got.shape(), (Shape{2, 3, 5, 4}));
  Value p = g.placeholder("p", f32, {2, 3, 5, 4});
  expect_error<GraphError>([&] { scaled_dot_product_attention(p, p, p, {.window = -1}); },
                           {"[attention]", "sliding window (-1) must be positive"});
}

// A query offset fed when the graph runs: query i stands at key position offset + i. One plan
// serves every offset, each equal to its reach written out as a mask (values and gradients,
// a bias's too), on the f64 gemm path and the f32 tiles; offsets far out of range reach what
// the nearest in range does, and rows that reach nothing give zeros.
TEST(NnFunctional, AttentionQueryOffsetMatchesItsMaskWrittenOut) {
  constexpr int64_t kQueries = 90, kKeys = 140;
  for (DType dtype : {f64, f32})
    for (int64_t window : {int64_t{0}, int64_t{25}})
      for (bool with_bias : {false, true}) {
        SCOPED_TRACE(str(dtype, ", window ", window, ", bias ", with_bias));
        Graph g;
        Value q = g.placeholder("q", dtype, {2, kQueries, 2, 4});
        Value k = g.placeholder("k", dtype, {2, kKeys, 2, 4});
        Value v = g.placeholder("v", dtype, {2, kKeys, 2, 3});
        Value offset = g.placeholder("offset", i64, {});
        Value written =
            g.placeholder("written", with_bias ? dtype : boolean, {2, 1, kQueries, kKeys});
        Value bias = g.placeholder("bias", dtype, {2, 1, 1, kKeys});
        Value at_offset = scaled_dot_product_attention(q, k, v,
                                                       {.mask = with_bias ? bias : Value(),
                                                        .causal = true,
                                                        .window = window,
                                                        .layout = "bthd",
                                                        .query_offset = offset});
        Value by_hand = scaled_dot_product_attention(q, k, v, {.mask = written, .layout = "bthd"});
        Value weights = g.constant(testing::random_tensor(dtype, {2, kQueries, 2, 3}, -1, 1, 13));
        std::vector<Value> fetches{at_offset, by_hand};
        const std::vector<Value> wrt =
            with_bias ? std::vector<Value>{q, k, v, bias} : std::vector<Value>{q, k, v};
        for (const Value& grad : gradients(sum(at_offset * weights), wrt)) fetches.push_back(grad);
        std::vector<Value> written_wrt{q, k, v};
        if (with_bias) written_wrt.push_back(written);
        for (const Value& grad : gradients(sum(by_hand * weights), written_wrt))
          fetches.push_back(grad);
        Session session(g);
        const Tensor bias_values = testing::random_tensor(dtype, {2, 1, 1, kKeys}, -1, 1, 9);
        for (int64_t given :
             {std::numeric_limits<int64_t>::min(), int64_t{-150}, int64_t{-40}, int64_t{0},
              int64_t{50}, int64_t{137}, int64_t{1000}, std::numeric_limits<int64_t>::max()}) {
          SCOPED_TRACE(str("offset ", given));
          // The reach at the offset (in wide arithmetic: the extremes stay exact).
          Tensor mask = Tensor::empty(boolean, {2, 1, kQueries, kKeys});
          std::vector<double> mask_bias(static_cast<size_t>(mask.numel()));
          for (int64_t b = 0; b < 2; ++b)
            for (int64_t i = 0; i < kQueries; ++i)
              for (int64_t j = 0; j < kKeys; ++j) {
                const int64_t at = (b * kQueries + i) * kKeys + j;
                const __int128 position = static_cast<__int128>(given) + i;
                const bool reached = j <= position && (window == 0 || j > position - window);
                mask.data<bool>()[at] = reached;
                mask_bias[static_cast<size_t>(at)] =
                    reached ? bias_values.element(b * kKeys + j) : -INFINITY;
              }
          const Tensor written_value =
              with_bias ? Tensor::from_vector(mask_bias, mask.shape()).cast(dtype) : mask;
          const auto out =
              session.run({{q, testing::random_tensor(dtype, {2, kQueries, 2, 4}, -1, 1, 10)},
                           {k, testing::random_tensor(dtype, {2, kKeys, 2, 4}, -1, 1, 11)},
                           {v, testing::random_tensor(dtype, {2, kKeys, 2, 3}, -1, 1, 12)},
                           {offset, Tensor::scalar<int64_t>(given)},
                           {written, written_value},
                           {bias, bias_values}},
                          fetches);
          const double tolerance = dtype == f64 ? 1e-13 : 2e-6;
          const size_t grads = wrt.size();
          for (size_t pair = 0; pair <= grads; ++pair) {
            const Tensor& got = out[pair == 0 ? 0 : 1 + pair];
            const Tensor& want = out[pair == 0 ? 1 : 1 + grads + pair];
            ASSERT_EQ(got.shape().rank(), 4);
            // The bias's gradient: the written one's summed over the queries.
            const bool summed = pair == 4;
            for (int64_t e = 0; e < got.numel(); ++e) {
              double expected = 0;
              if (!summed) {
                expected = want.element(e);
              } else {
                const int64_t b = e / kKeys, j = e % kKeys;
                for (int64_t i = 0; i < kQueries; ++i)
                  expected += want.element((b * kQueries + i) * kKeys + j);
              }
              ASSERT_NEAR(got.element(e), expected, tolerance) << "output " << pair << " at " << e;
            }
          }
        }
      }
  // The offset is an integer scalar of the graph; an attention node takes at most a mask and
  // then an offset.
  Graph g;
  Value q = g.placeholder("q", f32, {1, 2, 3, 4});
  expect_error<GraphError>(
      [&] { scaled_dot_product_attention(q, q, q, {.query_offset = g.placeholder("o", f32, {})}); },
      {"[attention]", "query offset must be an integer scalar", "f32"});
  expect_error<GraphError>(
      [&] {
        scaled_dot_product_attention(q, q, q, {.query_offset = g.placeholder("o2", i64, {2})});
      },
      {"[attention]", "integer scalar", "[2]"});
  Value offset = g.placeholder("o3", i64, {});
  Value mask = g.placeholder("m", boolean, {1, 1, 3, 3});
  expect_error<GraphError>(
      [&] {
        g.add_node("attention", {q, q, q, offset, mask}, {});
      },
      {"attention", "at most a mask", "and a query offset", "in that order"});
  expect_error<GraphError>(
      [&] {
        g.add_node("attention", {q, q, q, mask, mask}, {});
      },
      {"attention", "at most a mask"});
  expect_error<GraphError>(
      [&] {
        g.add_node("attention", {q, q, q, g.placeholder("o4", i64, {1})}, {});
      },
      {"attention", "query offset must be an int64 scalar", "[1]"});
  // With an i32 offset the builder casts: the same result as the i64 one.
  Value o32 = g.placeholder("o32", i32, {});
  Value o64 = g.placeholder("o64", i64, {});
  Value a32 = scaled_dot_product_attention(q, q, q, {.causal = true, .query_offset = o32});
  Value a64 = scaled_dot_product_attention(q, q, q, {.causal = true, .query_offset = o64});
  const Tensor x = testing::random_tensor(f32, {1, 2, 3, 4}, -1, 1, 3);
  const auto out = Session(g).run(
      {{q, x}, {o32, Tensor::scalar<int32_t>(-1)}, {o64, Tensor::scalar<int64_t>(-1)}}, {a32, a64});
  for (int64_t e = 0; e < out[0].numel(); ++e) EXPECT_EQ(out[0].element(e), out[1].element(e));
  // At -1 query 0 reaches no key: zeros.
  EXPECT_EQ(out[0].element(0), 0.0);
}

// A float mask's gradient is the score matrix the fused op avoids: it is built only when read
// (none of it for a constant bias), and a bias of another dtype than q's is an error.
TEST(NnFunctional, AttentionBiasGradientIsBuiltOnlyWhenRead) {
  auto products = [](Graph& g) {
    int count = 0;
    for (int32_t id = 0; id < g.num_nodes(); ++id) count += g.node(id).op_name() == "matmul";
    return count;
  };
  Graph g;
  Value q = g.placeholder("q", f32, {2, 3, 5, 8}), k = g.placeholder("k", f32, {2, 3, 7, 8});
  Value v = g.placeholder("v", f32, {2, 3, 7, 4});
  Value alibi = g.constant(testing::random_tensor(f32, {1, 3, 5, 7}, -1, 0, 3));
  Value learned = g.variable("relative_bias", {1, 3, 5, 7}, init::zeros());
  Value fixed = sum(scaled_dot_product_attention(q, k, v, {.mask = alibi}));
  gradients(fixed, {q, k, v});
  EXPECT_EQ(products(g), 0);
  gradients(sum(scaled_dot_product_attention(q, k, v, {.mask = learned, .causal = true})),
            {learned});
  EXPECT_GE(products(g), 2);  // q k^T and dout v^T
  expect_error<GraphError>(
      [&] {
        scaled_dot_product_attention(q, k, v, {.mask = g.placeholder("m", f64, {1, 3, 5, 7})});
      },
      {"[attention]", "bool (true: attend) or an additive bias of q's dtype f32, got f64"});
}

}  // namespace
}  // namespace kiln
