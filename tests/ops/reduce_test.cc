#include <algorithm>
#include <cmath>
#include <limits>

#include "test_util.h"

namespace kiln {
namespace {

// Reference reduction over `axes` (sorted, distinct), in f64.
std::vector<double> reference_reduce(const Tensor& x, const std::vector<int64_t>& axes,
                                     const std::string& kind, Shape* out_shape) {
  const Shape& s = x.shape();
  std::vector<int64_t> out_dims;
  for (int64_t d = 0; d < s.rank(); ++d)
    if (std::find(axes.begin(), axes.end(), d) == axes.end()) out_dims.push_back(s[d]);
  *out_shape = Shape(out_dims);
  int64_t n_out = out_shape->numel();
  double init = kind == "max" ? -INFINITY : kind == "min" ? INFINITY : 0;
  std::vector<double> acc(n_out, init);
  std::vector<int64_t> count(n_out, 0);
  for (int64_t i = 0; i < x.numel(); ++i) {
    std::vector<int64_t> idx = testing::unravel(i, s);
    int64_t o = 0;
    for (int64_t d = 0; d < s.rank(); ++d)
      if (std::find(axes.begin(), axes.end(), d) == axes.end()) o = o * s[d] + idx[d];
    double v = x.element(i);
    if (kind == "max")
      acc[o] = std::max(acc[o], v);
    else if (kind == "min")
      acc[o] = std::min(acc[o], v);
    else
      acc[o] += v;
    ++count[o];
  }
  if (kind == "mean")
    for (int64_t o = 0; o < n_out; ++o) acc[o] /= static_cast<double>(count[o]);
  return acc;
}

TEST(Reduce, EveryKindEveryAxisSetMatchesReference) {
  const std::vector<std::pair<Shape, std::vector<std::vector<int64_t>>>> cases = {
      {{}, {{}}},
      {{7}, {{}, {0}, {-1}}},
      {{1}, {{0}}},
      {{3, 0, 2}, {{0}, {2}, {0, 2}}},
      {{4, 5, 6}, {{}, {0}, {1}, {2}, {0, 1}, {1, 2}, {0, 2}, {0, 1, 2}, {-1, 0}}},
      {{2, 3, 4, 5}, {{1, 3}, {0, 2}, {0, 3}, {1, 2}}},
      {{100003}, {{0}}},
      {{64, 1000}, {{0}, {1}}},
      {{300, 700}, {{0}}},  // column sums in blocks of rows, a short last block
  };
  for (const char* kind : {"sum", "mean", "max", "min"}) {
    for (DType dtype : {f32, f64, i32, i64}) {
      if (std::string(kind) == "mean" && is_integer(dtype)) continue;
      for (const auto& [shape, axis_sets] : cases) {
        for (const auto& axes : axis_sets) {
          for (bool keepdims : {false, true}) {
            bool empty_extreme = (std::string(kind) == "max" || std::string(kind) == "min") &&
                                 shape.is_known() && shape.numel() == 0;
            if (empty_extreme) continue;
            Graph g;
            Tensor input = testing::random_tensor(dtype, shape, -10, 10, 3);
            Value x = g.placeholder("x", dtype, shape);
            Value y = g.add(kind, {x}, {{"axes", axes}, {"keepdims", keepdims}});
            Tensor out = testing::run1(g, y, {{x, input}});
            std::vector<int64_t> sorted;
            for (int64_t a : axes) sorted.push_back(a < 0 ? a + shape.rank() : a);
            if (axes.empty())
              for (int64_t d = 0; d < shape.rank(); ++d) sorted.push_back(d);
            std::sort(sorted.begin(), sorted.end());
            Shape ref_shape;
            std::vector<double> expected = reference_reduce(input, sorted, kind, &ref_shape);
            if (keepdims) {
              std::vector<int64_t> dims = shape.dims();
              for (int64_t a : sorted) dims[a] = 1;
              ref_shape = Shape(dims);
            }
            ASSERT_EQ(out.shape(), ref_shape) << kind << shape;
            double rtol = dtype == f32 ? 2e-5 : (dtype == f64 ? 1e-12 : 0);
            testing::expect_near(expected, out, rtol, dtype == f32 ? 1e-3 : 1e-9,
                                 str(kind, " ", dtype, shape, " axes ", attr_to_string(axes)));
          }
        }
      }
    }
  }
}

TEST(Reduce, SumOfEmptyIsZeroAndMeanOfEmptyIsNaN) {
  Graph g;
  Value x = g.constant(Tensor::zeros(f32, {0, 3}));
  EXPECT_EQ(testing::run1(g, sum(x, {0})).to_vector<float>(), (std::vector<float>{0, 0, 0}));
  for (float v : testing::run1(g, mean(x, {0})).to_vector<float>()) EXPECT_TRUE(std::isnan(v));
}

TEST(Reduce, LongSumsAreIdenticalForAnyThreadCount) {
  Graph g;
  Tensor input = testing::random_tensor(f32, {1 << 20}, -1, 1, 8);
  Value x = g.placeholder("x", f32, {-1});
  Value total = sum(x);
  Tensor one = testing::run1(g, total, {{x, input}}, 1);
  Tensor two = testing::run1(g, total, {{x, input}}, 2);
  Tensor three = testing::run1(g, total, {{x, input}}, 3);
  EXPECT_TRUE(equal_bits(one, two));
  EXPECT_TRUE(equal_bits(one, three));
  double exact = 0;
  for (double v : testing::values(input)) exact += v;
  EXPECT_NEAR(one.item<double>(), exact, 1e-3);
  // Column sums (a bias's gradient), summed in blocks of rows across the threads.
  Tensor rows = testing::random_tensor(f32, {2000, 300}, -1, 1, 9);
  Value m = g.placeholder("m", f32, {-1, 300});
  Value columns = sum(m, {0});
  Tensor by_one = testing::run1(g, columns, {{m, rows}}, 1);
  EXPECT_TRUE(equal_bits(by_one, testing::run1(g, columns, {{m, rows}}, 2)));
  EXPECT_TRUE(equal_bits(by_one, testing::run1(g, columns, {{m, rows}}, 3)));
}

TEST(Reduce, MaxAndMinPropagateNaN) {
  Graph g;
  Value x = g.constant(Tensor::from_vector<float>({1, std::nanf(""), 3, 4}, {2, 2}));
  EXPECT_TRUE(std::isnan(testing::run1(g, max(x)).item<float>()));
  auto rows = testing::run1(g, min(x, {1})).to_vector<float>();
  EXPECT_TRUE(std::isnan(rows[0]));
  EXPECT_EQ(rows[1], 3);
}

TEST(ArgMax, FirstIndexOnTiesNaNWinsAnyAxis) {
  Graph g;
  Value x = g.constant(Tensor::from_vector<float>({1, 5, 5, 0, 2, 2, 9, -1}, {2, 4}));
  EXPECT_EQ(testing::run1(g, argmax(x, 1)).to_vector<int64_t>(), (std::vector<int64_t>{1, 2}));
  EXPECT_EQ(testing::run1(g, argmin(x, 1)).to_vector<int64_t>(), (std::vector<int64_t>{3, 3}));
  EXPECT_EQ(testing::run1(g, argmax(x, 0)).to_vector<int64_t>(),
            (std::vector<int64_t>{1, 0, 1, 0}));
  Tensor keep = testing::run1(g, argmax(x, -1, true));
  EXPECT_EQ(keep.shape(), Shape({2, 1}));
  Value n = g.constant(Tensor::from_vector<float>({1, std::nanf(""), 7}));
  EXPECT_EQ(testing::run1(g, argmax(n, 0)).item<int64_t>(), 1);
  EXPECT_EQ(testing::run1(g, argmin(n, 0)).item<int64_t>(), 1);
  // Random 3-D input against a reference over the middle axis.
  Tensor input = testing::random_tensor(f64, {3, 17, 5}, -1, 1, 4);
  Value r = g.constant(input);
  Tensor got = testing::run1(g, argmax(r, 1));
  for (int64_t o = 0; o < 3; ++o)
    for (int64_t i = 0; i < 5; ++i) {
      int64_t best = 0;
      for (int64_t j = 1; j < 17; ++j)
        if (input.element((o * 17 + j) * 5 + i) > input.element((o * 17 + best) * 5 + i)) best = j;
      EXPECT_EQ(got.element(o * 5 + i), best);
    }
}

}  // namespace
}  // namespace kiln

namespace kiln {
namespace {

// Integers wrap (as integer add does), NaN and inf carry forward, long f32 sums add in double,
// and every line of a [outer, n, inner] view is its own scan whatever the thread split.
TEST(Cumsum, IntegersWrapNaNCarriesAndLongFloatSumsStayExact) {
  Graph g;
  Value ints = g.constant(
      Tensor::from_vector<int32_t>({std::numeric_limits<int32_t>::max(), 1, -5, 7}, {4}));
  EXPECT_EQ(testing::run1(g, cumsum(ints, 0)).to_vector<int32_t>(),
            (std::vector<int32_t>{
                std::numeric_limits<int32_t>::max(), std::numeric_limits<int32_t>::min(),
                std::numeric_limits<int32_t>::max() - 4, std::numeric_limits<int32_t>::min() + 2}));
  Value longs = g.constant(Tensor::from_vector<int64_t>({3, -1, 4, 1, -5, 9}, {2, 3}));
  EXPECT_EQ(testing::run1(g, cumsum(longs, 1, true, true)).to_vector<int64_t>(),
            (std::vector<int64_t>{3, 4, 0, 4, 9, 0}));
  Value special = g.constant(Tensor::from_vector<float>({1, NAN, 2, INFINITY, -INFINITY}, {5}));
  const auto s = testing::run1(g, cumsum(special, 0)).to_vector<float>();
  EXPECT_EQ(s[0], 1);
  for (size_t i = 1; i < s.size(); ++i) EXPECT_TRUE(std::isnan(s[i])) << i;
  // 2^24 + 1 + 1 + ...: an f32 accumulator would stay at 2^24.
  std::vector<float> ones(1000, 1.0f);
  ones[0] = 16777216.0f;
  Value many = g.constant(Tensor::from_vector<float>(ones, {1000}));
  EXPECT_EQ(testing::run1(g, cumsum(many, 0)).to_vector<float>().back(), 16777216.0f + 1000.0f);
  // [outer 3, n 50, inner 37] against a direct scan, for any thread count.
  const Tensor x = testing::random_tensor(f64, {3, 50, 37}, -1, 1, 3);
  Value vx = g.placeholder("x", f64, {3, 50, 37});
  const Tensor y = testing::run1(g, cumsum(vx, 1), {{vx, x}});
  for (int64_t o = 0; o < 3; ++o)
    for (int64_t k = 0; k < 37; ++k) {
      double acc = 0;
      for (int64_t j = 0; j < 50; ++j) {
        acc += x.element((o * 50 + j) * 37 + k);
        ASSERT_EQ(y.element((o * 50 + j) * 37 + k), acc) << o << " " << j << " " << k;
      }
    }
  testing::expect_error<GraphError>([&] { cumsum(g.scalar(1.0, f32), 0); },
                                    {"[cumsum]", "rank >= 1"});
  testing::expect_error<GraphError>([&] { cumsum(longs, 2); }, {"[cumsum]", "axis 2"});
  testing::expect_error<GraphError>([&] { cumsum(cast(longs, DType::boolean), 0); },
                                    {"[cumsum]", "bool"});
}

}  // namespace
}  // namespace kiln

namespace kiln {
namespace {

// topk / sort / argsort: PyTorch's order with NaN as the largest value, ties in index order
// (stable), any axis, integers, k = 0, and errors naming k and the shape.
TEST(Topk, OrdersWithNaNLargestAndTiesStable) {
  Graph g;
  Value x = g.constant(Tensor::from_vector<float>({3, NAN, 1, 3, -INFINITY, 7, 1}, {7}));
  const Sorted top = topk(x, 4);
  const Sorted low = topk(x, 3, 0, false);
  const Sorted all = sort(x);
  Session s(g);
  const auto got = s.run(
      {}, {top.values, top.indices, low.values, low.indices, all.indices, argsort(x, 0, true)});
  const auto top_values = got[0].to_vector<float>();
  EXPECT_TRUE(std::isnan(top_values[0]));
  EXPECT_EQ(std::vector<float>(top_values.begin() + 1, top_values.end()),
            (std::vector<float>{7, 3, 3}));
  EXPECT_EQ(got[1].to_vector<int64_t>(), (std::vector<int64_t>{1, 5, 0, 3}));
  EXPECT_EQ(got[2].to_vector<float>(), (std::vector<float>{-INFINITY, 1, 1}));
  EXPECT_EQ(got[3].to_vector<int64_t>(), (std::vector<int64_t>{4, 2, 6}));
  EXPECT_EQ(got[4].to_vector<int64_t>(), (std::vector<int64_t>{4, 2, 6, 0, 3, 5, 1}));
  EXPECT_EQ(got[5].to_vector<int64_t>(), (std::vector<int64_t>{1, 5, 0, 3, 2, 6, 4}));
  // Along axis 0 of [4, 3] integers (an unknown leading dim is fine for sort).
  Value m = g.placeholder("m", i32, {-1, 3});
  const Tensor mv = Tensor::from_vector<int32_t>({5, 0, 2, -1, 9, 2, 5, 4, 8, 7, 1, 2}, {4, 3});
  const Sorted columns = sort(m, 0, true);
  EXPECT_EQ(columns.values.shape(), Shape({-1, 3}));
  const auto sorted = s.run({{m, mv}}, {columns.values, columns.indices});
  EXPECT_EQ(sorted[0].to_vector<int32_t>(),
            (std::vector<int32_t>{7, 9, 8, 5, 4, 2, 5, 1, 2, -1, 0, 2}));
  EXPECT_EQ(sorted[1].to_vector<int64_t>(),
            (std::vector<int64_t>{3, 1, 2, 0, 2, 0, 2, 3, 1, 1, 0, 3}));
  EXPECT_EQ(testing::run1(g, topk(x, 0).values).shape(), Shape({0}));
  testing::expect_error<GraphError>([&] { topk(x, 8); },
                                    {"[topk]", "k 8 is more than the 7 elements along axis 0"});
  testing::expect_error<GraphError>([&] { topk(x, -1); }, {"[topk]", "k -1"});
  testing::expect_error<GraphError>([&] { sort(g.scalar(1.0, f32)); }, {"rank >= 1"});
  testing::expect_error<GraphError>([&] { sort(cast(x, DType::boolean)); }, {"[topk]", "bool"});
}

}  // namespace
}  // namespace kiln
