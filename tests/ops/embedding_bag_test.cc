// embedding_bag and nn::EmbeddingBag: every mode over 2-D ids and over offsets (empty bags,
// include_last_offset, per-sample weights, a padding id), outputs and table gradients against
// PyTorch 1.13's F.embedding_bag, finite differences, and the errors a user can hit.
#include <cmath>

#include "autograd/gradcheck.h"
#include "test_util.h"

namespace kiln {
namespace {

using testing::check_gradients;
using testing::expect_error;

constexpr int64_t kV = 6, kD = 3;

// w[i, j] = 0.3 i - 0.2 j + 0.05 i j, the table the PyTorch values were computed from.
Tensor bag_table() {
  std::vector<double> v;
  for (int64_t i = 0; i < kV; ++i)
    for (int64_t j = 0; j < kD; ++j)
      v.push_back(0.3 * static_cast<double>(i) - 0.2 * static_cast<double>(j) +
                  0.05 * static_cast<double>(i * j));
  return Tensor::from_vector<double>(v, {kV, kD});
}

struct TorchBag {
  const char* name;
  std::vector<double> out, grad;  // the bags, and d sum(out * r) / d table
};

// PyTorch 1.13 (r = [[0.5, -1, 2], [1.5, 0.25, -0.75], [-0.5, 1, 0.125]]):
//   ids2 = [[1, 4, 2, 4], [5, 0, 0, 3], [0, 0, 0, 0]]
//   F.embedding_bag(ids2, w, mode="sum"), (.., mode="mean", padding_idx=0),
//   (.., mode="max", padding_idx=0);
//   ids1 = [1, 4, 2, 4, 5, 0, 3, 2], psw = [0.5, -1, 2, 1.5, 0.25, -0.75, 3, 9]
//   F.embedding_bag(ids1, w, [0, 3, 3], mode="sum", per_sample_weights=psw),
//   F.embedding_bag(ids1, w, [0, 3, 3, 8], mode="mean", padding_idx=4,
//                   include_last_offset=True);
//   (PyTorch 2.15) F.embedding_bag(ids1, w, [0, 3, 3], mode="max"),
//   F.embedding_bag(ids1, w, [0, 3, 3, 8], mode="max", padding_idx=5, include_last_offset=True).
TEST(EmbeddingBag, EveryModeIsTorchs) {
  const TorchBag torch[] = {
      {"sum2",
       {3.3, 3.05, 2.8, 2.4, 2.0, 1.6, 0.0, -0.8, -1.6},
       {1.0, 4.5, -1.0, 0.5, -1.0, 2.0, 0.5, -1.0, 2.0, 1.5, 0.25, -0.75, 1.0, -2.0, 4.0, 1.5, 0.25,
        -0.75}},
      {"mean2_pad",
       {0.825, 0.7625, 0.7, 1.2, 1.2, 1.2, 0.0, 0.0, 0.0},
       {0.0, 0.0, 0.0, 0.125, -0.25, 0.5, 0.125, -0.25, 0.5, 0.75, 0.125, -0.375, 0.25, -0.5, 1.0,
        0.75, 0.125, -0.375}},
      {"max2_pad",
       {1.2, 1.2, 1.2, 1.5, 1.55, 1.6, 0.0, 0.0, 0.0},
       {0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.5, -1.0, 2.0, 1.5, 0.25,
        -0.75}},
      {"sum1_psw",
       {0.15, -0.125, -0.4, 0.0, 0.0, 0.0, 10.274999999999999, 9.3875, 8.5},
       {0.375, -0.75, -0.09375, 0.25, -0.5, 1.0, -3.5, 7.0, 5.125, -1.5, 3.0, 0.375, -1.25, 2.5,
        -1.8125, -0.125, 0.25, 0.03125}},
      {"mean1_last_pad",
       {0.45, 0.325, 0.2, 0.0, 0.0, 0.0, 0.75, 0.675, 0.6},
       {-0.125, 0.25, 0.03125, 0.25, -0.5, 1.0, 0.125, -0.25, 1.03125, -0.125, 0.25, 0.03125, 0.0,
        0.0, 0.0, -0.125, 0.25, 0.03125}},
      {"max1",
       {1.2, 1.2, 1.2, 0.0, 0.0, 0.0, 1.5, 1.55, 1.6},
       {0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.5, -1.0, 2.0, -0.5, 1.0,
        0.125}},
      {"max1_last_pad",
       {1.2, 1.2, 1.2, 0.0, 0.0, 0.0, 1.2, 1.2, 1.2},
       {0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 2.125, 0.0, 0.0,
        0.0}},
  };
  Graph g;
  Value table = g.placeholder("table", f64, {kV, kD});
  Value ids2 =
      g.constant(Tensor::from_vector<int64_t>({1, 4, 2, 4, 5, 0, 0, 3, 0, 0, 0, 0}, {3, 4}));
  Value ids1 = g.constant(Tensor::from_vector<int32_t>({1, 4, 2, 4, 5, 0, 3, 2}));
  Value psw = g.constant(Tensor::from_vector<double>({0.5, -1, 2, 1.5, 0.25, -0.75, 3, 9}));
  Value r = g.constant(
      Tensor::from_vector<double>({0.5, -1, 2, 1.5, 0.25, -0.75, -0.5, 1, 0.125}, {3, 3}));
  const Value bags[] = {
      embedding_bag(table, ids2, {.mode = BagMode::sum}),
      embedding_bag(table, ids2, {.mode = BagMode::mean, .padding_index = 0}),
      embedding_bag(table, ids2, {.mode = BagMode::max, .padding_index = 0}),
      embedding_bag(table, ids1,
                    {.mode = BagMode::sum,
                     .offsets = g.constant(Tensor::from_vector<int32_t>({0, 3, 3})),
                     .per_sample_weights = psw}),
      embedding_bag(table, ids1,
                    {.mode = BagMode::mean,
                     .offsets = g.constant(Tensor::from_vector<int64_t>({0, 3, 3, 8})),
                     .padding_index = 4,
                     .include_last_offset = true}),
      embedding_bag(
          table, ids1,
          {.mode = BagMode::max, .offsets = g.constant(Tensor::from_vector<int64_t>({0, 3, 3}))}),
      embedding_bag(table, ids1,
                    {.mode = BagMode::max,
                     .offsets = g.constant(Tensor::from_vector<int64_t>({0, 3, 3, 8})),
                     .padding_index = 5,
                     .include_last_offset = true}),
  };
  Session s(g);
  for (size_t i = 0; i < std::size(torch); ++i) {
    Value dtable = gradients(sum(bags[i] * r), {table})[0];
    const auto got = s.run({{table, bag_table()}}, {bags[i], dtable});
    EXPECT_EQ(got[0].shape(), Shape({3, kD})) << torch[i].name;
    testing::expect_near(torch[i].out, got[0], 1e-12, 1e-12, torch[i].name);
    testing::expect_near(torch[i].grad, got[1], 1e-12, 1e-12, str(torch[i].name, " gradient"));
  }
}

// With include_last_offset, ids past the last offset are in no bag: bag 2 of ids1 with offsets
// [0, 3, 3, 7] is ids 4, 5, 0, 3 with the padding 4 left out, as without the eighth id.
// (PyTorch 1.13 leaves that id's row out of the sum but counts it in the mean's divisor: 0.6,
// 0.55, 0.5, where with the ids cut at 7 it gives 0.8, 0.7333, 0.6667.)
TEST(EmbeddingBag, IdsPastTheLastOffsetAreInNoBag) {
  Graph g;
  Value table = g.constant(bag_table());
  const auto bags = [&](std::vector<int64_t> ids) {
    return embedding_bag(table, g.constant(Tensor::from_vector<int64_t>(ids)),
                         {.offsets = g.constant(Tensor::from_vector<int64_t>({0, 3, 3, 7})),
                          .padding_index = 4,
                          .include_last_offset = true});
  };
  Session s(g);
  const auto got = s.run({}, {bags({1, 4, 2, 4, 5, 0, 3, 2}), bags({1, 4, 2, 4, 5, 0, 3})});
  testing::expect_near({0.45, 0.325, 0.2, 0, 0, 0, 0.8, 2.2 / 3, 2.0 / 3}, got[0], 1e-12, 1e-12,
                       "trailing id");
  testing::expect_near(testing::values(got[1]), got[0], 0, 0, "cut at the last offset");
}

// Finite differences in the table and the per-sample weights, bags of unknown count and length.
TEST(EmbeddingBag, GradientsMatchFiniteDifferences) {
  Tensor table = testing::r64({5, 4}, -1, 1, 3);
  Tensor weights = testing::r64({7}, -1, 1, 4);
  const auto ids1 = [](Graph& g) {
    return g.constant(Tensor::from_vector<int64_t>({0, 3, 3, 1, 4, 2, 3}));
  };
  const auto offsets = [](Graph& g) {
    return g.constant(Tensor::from_vector<int64_t>({0, 2, 2, 5}));
  };
  check_gradients(
      [&](Graph& g, const std::vector<Value>& v) {
        return embedding_bag(
            v[0], ids1(g),
            {.mode = BagMode::sum, .offsets = offsets(g), .per_sample_weights = v[1]});
      },
      {table, weights}, "sum with weights");
  check_gradients(
      [&](Graph& g, const std::vector<Value>& v) {
        return embedding_bag(v[0], ids1(g), {.offsets = offsets(g), .padding_index = 3});
      },
      {table}, "mean with padding");
  check_gradients(
      [&](Graph& g, const std::vector<Value>& v) {
        Value ids = g.constant(Tensor::from_vector<int64_t>({0, 3, 1, 4, 2, 2, 3, 0}, {2, 4}));
        return embedding_bag(v[0], ids, {.mode = BagMode::max});
      },
      {table}, "max");
  check_gradients(
      [&](Graph& g, const std::vector<Value>& v) {
        return embedding_bag(v[0], ids1(g),
                             {.mode = BagMode::max, .offsets = offsets(g), .padding_index = 1});
      },
      {table}, "max over offsets");
}

TEST(EmbeddingBag, TheLayerOwnsItsTableAndTakesOffsets) {
  Graph g;
  nn::EmbeddingBag bag(g, "bag", kV, kD, BagMode::sum, {}, 2);
  ASSERT_EQ(bag.parameters().size(), 1u);
  EXPECT_EQ(bag.weight.name(), "bag/weight");
  Value ids = g.placeholder("ids", i64, {-1});
  Value offsets = g.placeholder("offsets", i64, {-1});
  Value flat = bag.bags(ids, offsets);
  Value ids2 = g.placeholder("ids2", i64, {-1, 2});
  Value rows = bag(ids2);
  Session s(g);
  const auto got = s.run({{ids, Tensor::from_vector<int64_t>({1, 2, 5, 3})},
                          {offsets, Tensor::from_vector<int64_t>({0, 3})},
                          {ids2, Tensor::from_vector<int64_t>({1, 5, 2, 3}, {2, 2})}},
                         {flat, rows, bag.weight});
  const Tensor& w = got[2];
  for (int64_t j = 0; j < kD; ++j) {
    EXPECT_EQ(w.element(2 * kD + j), 0.0);  // the padding row starts at zeros
    EXPECT_NEAR(got[0].element(j), w.element(kD + j) + w.element(5 * kD + j), 1e-6);
    EXPECT_NEAR(got[0].element(kD + j), w.element(3 * kD + j), 1e-6);
    EXPECT_NEAR(got[1].element(j), got[0].element(j), 1e-6);
    EXPECT_NEAR(got[1].element(kD + j), w.element(3 * kD + j), 1e-6);
  }
}

TEST(EmbeddingBag, BadArgumentsAndOffsetsNameTheValues) {
  Graph g;
  Value table = g.placeholder("table", f32, {kV, kD});
  Value ids1 = g.placeholder("ids", i64, {-1});
  Value ids2 = g.placeholder("ids2", i64, {2, 3});
  Value offsets = g.placeholder("offsets", i64, {-1});
  expect_error<GraphError>([&] { embedding_bag(table, ids1); },
                           {"[embedding_bag]", "1-D ids need offsets"});
  expect_error<GraphError>([&] { embedding_bag(table, ids2, {.offsets = offsets}); },
                           {"[embedding_bag]", "2-D ids [2, 3] are the bags"});
  expect_error<GraphError>([&] { embedding_bag(reshape(table, {18}), ids2); },
                           {"[embedding_bag]", "the table must be [rows, dim], got [18]"});
  expect_error<GraphError>([&] { embedding_bag(table, cast(ids2, f32)); },
                           {"[embedding_bag]", "ids must be integers, got f32"});
  expect_error<GraphError>(
      [&] {
        embedding_bag(table, ids2, {.per_sample_weights = g.placeholder("w", f32, {2, 3})});
      },
      {"[embedding_bag]", "per_sample_weights need mode sum"});
  expect_error<GraphError>(
      [&] {
        embedding_bag(table, ids2,
                      {.mode = BagMode::sum, .per_sample_weights = g.placeholder("w2", f32, {3})});
      },
      {"[embedding_bag]", "per_sample_weights f32 [3] must be shaped like the ids [2, 3]"});
  expect_error<GraphError>([&] { embedding_bag(table, ids2, {.padding_index = 6}); },
                           {"[embedding_bag]", "padding index 6 is not a row of the table [6, 3]"});
  expect_error<GraphError>([&] { nn::EmbeddingBag(g, "b", kV, kD, BagMode::sum, {}, 9); },
                           {"[nn] EmbeddingBag b: padding index 9 is outside [0, 6)"});

  // Offsets are data: checked when the graph runs.
  Value bags = embedding_bag(table, ids1, {.offsets = offsets});
  Session s(g);
  const auto run = [&](std::vector<int64_t> o) {
    s.run({{table, Tensor::from_vector<float>(std::vector<float>(18, 1.0f), {kV, kD})},
           {ids1, Tensor::from_vector<int64_t>({0, 1, 2, 3})},
           {offsets, Tensor::from_vector<int64_t>(o)}},
          {bags});
  };
  EXPECT_NO_THROW(run({0, 4, 4}));  // empty bags at the end
  Value maxima = embedding_bag(table, ids1, {.mode = BagMode::max, .offsets = offsets});
  const Tensor got =
      Session(g).run({{table, Tensor::from_vector<float>(std::vector<float>(18, 1.0f), {kV, kD})},
                      {ids1, Tensor::from_vector<int64_t>({0, 1, 2, 3})},
                      {offsets, Tensor::from_vector<int64_t>({0, 0, 4})}},
                     {maxima})[0];
  testing::expect_near({0, 0, 0, 1, 1, 1, 0, 0, 0}, got, 0, 0, "empty bags of max");
  expect_error(
      [&] {
        Session(g).run({{table, Tensor::from_vector<float>(std::vector<float>(18, 1.0f), {kV, kD})},
                        {ids1, Tensor::from_vector<int64_t>({0, 1, 2, 3})},
                        {offsets, Tensor::from_vector<int64_t>({0, 3, 2})}},
                       {maxima});
      },
      {"[bag_argmax]", "offset 2 at position 2 is outside [3, 4]"});
  expect_error(
      [&] {
        run({1, 2});
      },
      {"[segment_ids]", "offset 1 at position 0 is outside [0, 0]", "the first bag starts at 0"});
  expect_error(
      [&] {
        run({0, 3, 2});
      },
      {"[segment_ids]", "offset 2 at position 2 is outside [3, 4]"});
  expect_error([&] { run({0, 5}); }, {"[segment_ids]", "offset 5 at position 1 is outside [0, 4]"});
  expect_error([&] { run({}); }, {"[segment_ids]", "4 ids and no offsets"});
}

// Rows 1 and 2 are equal: a bag of both has two maxima in every column. PyTorch's gradient goes
// to the first of the bag (its max indices); Kiln's does so for 2-D ids and for offsets alike.
TEST(EmbeddingBag, AMaximumTiedBetweenRowsSendsItsGradientToTheFirst) {
  Graph g;
  Value table = g.placeholder("table", f64, {3, 2});
  Value ids2 = g.constant(Tensor::from_vector<int64_t>({2, 1, 1, 2}, {2, 2}));
  Value ids1 = g.constant(Tensor::from_vector<int64_t>({2, 1, 1, 2}));
  Value offsets = g.constant(Tensor::from_vector<int64_t>({0, 2}));
  // Weights per bag and column, so each bag's gradient is told apart.
  Value weights = g.constant(Tensor::from_vector<double>({1, 2, 10, 20}, {2, 2}));
  const auto table_gradient = [&](const Value& bags) {
    return gradients(sum(bags * weights), {table})[0];
  };
  const std::vector<Value> fetches = {
      table_gradient(embedding_bag(table, ids2, {.mode = BagMode::max})),
      table_gradient(embedding_bag(table, ids1, {.mode = BagMode::max, .offsets = offsets}))};
  const auto got =
      Session(g).run({{table, Tensor::from_vector<double>({0, 0, 1, 1, 1, 1}, {3, 2})}}, fetches);
  // Bag 0 is [2, 1]: row 2 gets (1, 2); bag 1 is [1, 2]: row 1 gets (10, 20).
  testing::expect_near({0, 0, 10, 20, 1, 2}, got[0], 0, 0, "2-D ids");
  testing::expect_near({0, 0, 10, 20, 1, 2}, got[1], 0, 0, "offsets");
}

}  // namespace
}  // namespace kiln
