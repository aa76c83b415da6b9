#include <limits>
#include <numeric>

#include "test_util.h"

namespace kiln {
namespace {

using testing::expect_error;

// The op that computes v.
const std::string& op_of(const Value& v) {
  return v.graph()->node(v.node_id()).op_name();
}

Tensor iota_tensor(DType dtype, const Shape& shape) {
  Tensor t = Tensor::empty(dtype, shape);
  dispatch_all(dtype, [&](auto tag) {
    using T = decltype(tag);
    for (int64_t i = 0; i < t.numel(); ++i) t.data<T>()[i] = convert<T>(i);
  });
  return t;
}

TEST(Reshape, InfersMinusOneAndSharesData) {
  Graph g;
  Value x = g.placeholder("x", f32, {-1, 6});
  Value y = reshape(x, {-1, 3, 2});
  EXPECT_EQ(y.shape(), Shape({-1, 3, 2}));
  Tensor in = iota_tensor(f32, {2, 6});
  Tensor out = testing::run1(g, y, {{x, in}});
  EXPECT_EQ(out.shape(), Shape({2, 3, 2}));
  EXPECT_EQ(out.to_vector<float>(), in.to_vector<float>());
  EXPECT_EQ(reshape(g.constant(Tensor::zeros(f32, {0, 4})), {-1, 2}).shape(), Shape({0, 2}));
  expect_error<GraphError>(
      [&] {
        reshape(g.constant(Tensor::zeros(f32, {0, 4})), {0, -1});
      },
      {"[reshape]", "cannot reshape"});
  Session s(g);
  expect_error<GraphError>(
      [&] {
        s.run({{x, Tensor::zeros(f32, {1, 6})}}, {reshape(x, {4, -1})});
      },
      {"[reshape]", "[1, 6]", "6 elements"});
}

// torch.flatten's dims: [N, C, H, W] -> [N, C H W] by default, any run of dims, negative axes;
// an unknown dim in the merged run makes it unknown; unknown dims outside the run stay so.
TEST(Flatten, MergesARunOfDimsAsTorch) {
  Graph g;
  Value x = g.placeholder("x", f32, {-1, 3, 4, 5});
  EXPECT_EQ(flatten(x).shape(), Shape({-1, 60}));
  EXPECT_EQ(flatten(x, 1, 2).shape(), Shape({-1, 12, 5}));
  EXPECT_EQ(flatten(x, -2).shape(), Shape({-1, 3, 20}));
  EXPECT_EQ(flatten(x, 0, 1).shape(), Shape({-1, 4, 5}));
  EXPECT_EQ(flatten(x, 2, 2).shape(), Shape({-1, 3, 4, 5}));
  EXPECT_EQ(flatten(x, 0).shape(), Shape({-1}));
  Tensor in = iota_tensor(f32, {2, 3, 4, 5});
  Tensor out = testing::run1(g, flatten(x), {{x, in}});
  EXPECT_EQ(out.shape(), Shape({2, 60}));
  EXPECT_EQ(out.to_vector<float>(), in.to_vector<float>());
  EXPECT_EQ(flatten(g.constant(Tensor::scalar(2.0f)), 0).shape(), Shape({1}));

  Value two_unknown = g.placeholder("y", f32, {-1, -1, 4, 3});
  EXPECT_EQ(flatten(two_unknown, 0, 1).shape(), Shape({-1, 4, 3}));
  EXPECT_EQ(op_of(flatten(two_unknown, 0, 1)), "reshape");  // a reshape where one does
  const Value heads = flatten(two_unknown, 2);
  EXPECT_EQ(heads.shape(), Shape({-1, -1, 12}));
  EXPECT_EQ(op_of(heads), "flatten");
  Session s(g);
  for (const Shape& fed : {Shape{2, 5, 4, 3}, Shape{1, 1, 4, 3}, Shape{3, 0, 4, 3}}) {
    const Tensor y = iota_tensor(f32, fed);
    const Tensor merged = s.run({{two_unknown, y}}, {heads})[0];
    EXPECT_EQ(merged.shape(), Shape({fed[0], fed[1], 12}));
    EXPECT_EQ(merged.to_vector<float>(), y.to_vector<float>());
  }
  expect_error<FeedError>(
      [&] {
        s.run({{two_unknown, Tensor::zeros(f32, {2, 5, 3, 4})}}, {heads});
      },
      {"placeholder 'y'", "[2, 5, 3, 4]"});
  expect_error<GraphError>([&] { flatten(x, 3, 1); },
                           {"[flatten] x", "start_axis 3", "end_axis 1"});
  expect_error<GraphError>([&] { flatten(x, 4); }, {"[flatten] start_axis", "axis 4", "rank 4"});
}

// torch.unflatten: one dim split into sizes, one of them inferred; the other dims are kept known
// or not, so [?, ?, 12] splits into heads where a reshape (one unknown dim) cannot.
TEST(Unflatten, SplitsOneDimAsTorch) {
  Graph g;
  Value x = g.placeholder("x", f32, {-1, -1, 12});
  const Value split = unflatten(x, -1, {3, -1});
  EXPECT_EQ(split.shape(), Shape({-1, -1, 3, 4}));
  EXPECT_EQ(op_of(split), "unflatten");
  Value batch_known = g.placeholder("b", f32, {2, -1, 12});
  EXPECT_EQ(unflatten(batch_known, 2, {2, 2, 3}).shape(), Shape({2, -1, 2, 2, 3}));
  EXPECT_EQ(op_of(unflatten(batch_known, 2, {2, 2, 3})), "reshape");
  EXPECT_EQ(unflatten(batch_known, 1, {-1, 2}).shape(), Shape({2, -1, 2, 12}));
  EXPECT_EQ(unflatten(g.constant(Tensor::scalar(2.0f)), 0, {1, 1}).shape(), Shape({1, 1}));
  // The split dim unknown: sizes as given (checked when the graph runs), or one unknown.
  const Value rows = unflatten(x, 1, {-1, 2});
  EXPECT_EQ(rows.shape(), Shape({-1, -1, 2, 12}));
  // Gradients flow back as a reshape to x's shape of this run.
  const Value loss = sum(split * split);
  const Value dx = gradients(loss, {x})[0];
  Session s(g);
  for (const Shape& fed : {Shape{2, 5, 12}, Shape{1, 1, 12}, Shape{4, 0, 12}}) {
    const Tensor in = iota_tensor(f32, fed);
    const auto got = s.run({{x, in}}, {split, dx});
    EXPECT_EQ(got[0].shape(), Shape({fed[0], fed[1], 3, 4}));
    EXPECT_EQ(got[0].to_vector<float>(), in.to_vector<float>());
    EXPECT_EQ(got[1].shape(), fed);
    std::vector<float> twice = in.to_vector<float>();
    for (float& v : twice) v *= 2;
    EXPECT_EQ(got[1].to_vector<float>(), twice);
  }
  EXPECT_EQ(s.run({{x, iota_tensor(f32, {3, 4, 12})}}, {rows})[0].shape(), Shape({3, 2, 2, 12}));
  expect_error<GraphError>(
      [&] {
        s.run({{x, Tensor::zeros(f32, {3, 5, 12})}}, {rows});
      },
      {"[unflatten]", "dim 1 (5) cannot be split into [-1, 2]"});
  expect_error<GraphError>(
      [&] {
        unflatten(x, 2, {5, -1});
      },
      {"[unflatten]", "[?, ?, 12]", "dim 2 (12) cannot be split into [5, -1]"});
  expect_error<GraphError>(
      [&] {
        unflatten(x, 2, {3, 3});
      },
      {"dim 2 (12) cannot be split into [3, 3] (9 elements)"});
  expect_error<GraphError>(
      [&] {
        unflatten(x, 2, {-1, -1});
      },
      {"sizes [-1, -1]", "one -1 and no other negative size"});
  expect_error<GraphError>([&] { unflatten(x, 2, {}); }, {"sizes for dim 2 are empty"});
  expect_error<GraphError>([&] { unflatten(x, 3, {1}); }, {"[unflatten] x axis", "axis 3"});
  expect_error<GraphError>(
      [&] {
        unflatten(x, 2, {int64_t{1} << 40, int64_t{1} << 40});
      },
      {"overflows int64"});
}

TEST(Transpose, EveryPermutationOfRank3AndLarge2D) {
  Tensor in = iota_tensor(f64, {2, 3, 4});
  std::vector<int64_t> perm = {0, 1, 2};
  do {
    Graph g;
    Tensor out = testing::run1(g, transpose(g.constant(in), perm));
    Shape expected_shape{in.shape()[perm[0]], in.shape()[perm[1]], in.shape()[perm[2]]};
    ASSERT_EQ(out.shape(), expected_shape);
    std::vector<int64_t> strides = in.shape().strides();
    for (int64_t i = 0; i < out.numel(); ++i) {
      std::vector<int64_t> idx = testing::unravel(i, expected_shape);
      int64_t src =
          idx[0] * strides[perm[0]] + idx[1] * strides[perm[1]] + idx[2] * strides[perm[2]];
      ASSERT_EQ(out.element(i), src) << attr_to_string(perm);
    }
  } while (std::next_permutation(perm.begin(), perm.end()));
  Graph g;
  Tensor big = iota_tensor(i32, {301, 517});
  Tensor t = testing::run1(g, transpose(g.constant(big)));
  ASSERT_EQ(t.shape(), Shape({517, 301}));
  for (int64_t i = 0; i < 517; i += 37)
    for (int64_t j = 0; j < 301; j += 13) ASSERT_EQ(t.element(i * 301 + j), j * 517 + i);
  EXPECT_EQ(testing::run1(g, transpose(g.constant(Tensor::zeros(u8, {0, 3})))).shape(),
            Shape({3, 0}));
}

TEST(BroadcastTo, StretchesSizeOneDimsAndPrependsDims) {
  Graph g;
  Value x = g.constant(Tensor::from_vector<int64_t>({1, 2, 3}, {3, 1}));
  Tensor y = testing::run1(g, broadcast_to(x, {2, 3, 2}));
  EXPECT_EQ(y.to_vector<int64_t>(), (std::vector<int64_t>{1, 1, 2, 2, 3, 3, 1, 1, 2, 2, 3, 3}));
  Value b = g.constant(Tensor::from_vector<bool>({true, false}));
  EXPECT_EQ(testing::run1(g, broadcast_to(b, {2, 2})).to_vector<int>(),
            (std::vector<int>{1, 0, 1, 0}));
  expect_error<GraphError>([&] { broadcast_to(x, {3}); }, {"cannot broadcast [3, 1] to [3]"});
}

TEST(Concat, JoinsAlongAnyAxisIncludingEmptyPieces) {
  Graph g;
  Tensor a = iota_tensor(f32, {2, 3}), b = iota_tensor(f32, {2, 1}), c = iota_tensor(f32, {2, 0});
  Value va = g.constant(a), vb = g.constant(b), vc = g.constant(c);
  Tensor y = testing::run1(g, concat({va, vc, vb}, 1));
  EXPECT_EQ(y.shape(), Shape({2, 4}));
  EXPECT_EQ(y.to_vector<float>(), (std::vector<float>{0, 1, 2, 0, 3, 4, 5, 1}));
  Tensor z = testing::run1(g, concat({va, va}, -2));
  EXPECT_EQ(z.shape(), Shape({4, 3}));
  EXPECT_EQ(z.to_vector<float>(), (std::vector<float>{0, 1, 2, 3, 4, 5, 0, 1, 2, 3, 4, 5}));
  Value p = g.placeholder("p", f32, {-1, 3});
  EXPECT_EQ(concat({p, va}, 0).shape(), Shape({-1, 3}));
  expect_error<GraphError>([&] { concat({va, vb}, 0); }, {"[concat]", "dim 1 differs"});
  expect_error<GraphError>(
      [&] {
        concat({va, g.constant(Tensor::zeros(i32, {2, 3}))}, 0);
      },
      {"f32", "i32"});
}

TEST(Split, SizesAndEqualPieces) {
  Graph g;
  Value x = g.constant(iota_tensor(i32, {2, 5}));
  std::vector<Value> parts = split(x, {2, 0, 3}, 1);
  ASSERT_EQ(parts.size(), 3u);
  Session s(g);
  auto out = s.run({}, parts);
  EXPECT_EQ(out[0].to_vector<int>(), (std::vector<int>{0, 1, 5, 6}));
  EXPECT_EQ(out[1].shape(), Shape({2, 0}));
  EXPECT_EQ(out[2].to_vector<int>(), (std::vector<int>{2, 3, 4, 7, 8, 9}));
  auto rows = split(x, 2, 0);
  EXPECT_EQ(s.run({}, {rows[1]})[0].to_vector<int>(), (std::vector<int>{5, 6, 7, 8, 9}));
  expect_error<GraphError>([&] { split(x, 3, 1); }, {"3 equal pieces"});
  // split then concat is the identity.
  EXPECT_TRUE(equal_bits(s.run({}, {concat(parts, 1)})[0], s.run({}, {x})[0]));
}

TEST(Slice, PythonSemantics) {
  Graph g;
  Tensor in = iota_tensor(f32, {4, 5});
  Value x = g.constant(in);
  Session s(g);
  auto check = [&](std::vector<int64_t> b, std::vector<int64_t> e, std::vector<int64_t> st,
                   Shape shape, std::vector<float> expected) {
    Tensor y = s.run({}, {slice(x, b, e, st)})[0];
    EXPECT_EQ(y.shape(), shape);
    EXPECT_EQ(y.to_vector<float>(), expected);
  };
  check({1}, {3}, {}, {2, 5}, {5, 6, 7, 8, 9, 10, 11, 12, 13, 14});
  check({0, 1}, {kSliceEnd, kSliceEnd}, {2, 2}, {2, 2}, {1, 3, 11, 13});
  check({-1, -2}, {kSliceEnd, kSliceEnd}, {}, {1, 2}, {18, 19});
  check({-100, 3}, {100, 100}, {3, 1}, {2, 2}, {3, 4, 18, 19});  // clamped
  check({3, 0}, {1, 5}, {}, {0, 5}, {});                         // empty
  // A step as large as int64 allows (a graph file may hold one): one element per axis, and no
  // step times stride overflows (UBSan failed on it in fuzz_graph_run).
  const int64_t huge = std::numeric_limits<int64_t>::max();
  check({1, 2}, {kSliceEnd, kSliceEnd}, {huge, huge}, {1, 1}, {7});
  Value p = g.placeholder("p", f32, {-1, 5});
  EXPECT_EQ(slice(p, {0, 1}, {2, 3}).shape(), Shape({-1, 2}));
}

TEST(Gather, AnyAxisNegativeIndicesAndRangeErrors) {
  Graph g;
  Tensor in = iota_tensor(f32, {3, 4});
  Value params = g.constant(in);
  Value rows = g.constant(Tensor::from_vector<int64_t>({2, 0, -1, 2}, {2, 2}));
  Tensor y = testing::run1(g, gather(params, rows, 0));
  EXPECT_EQ(y.shape(), Shape({2, 2, 4}));
  EXPECT_EQ(y.to_vector<float>(),
            (std::vector<float>{8, 9, 10, 11, 0, 1, 2, 3, 8, 9, 10, 11, 8, 9, 10, 11}));
  Value cols = g.constant(Tensor::from_vector<int32_t>({3, 1}));
  Tensor z = testing::run1(g, gather(params, cols, 1));
  EXPECT_EQ(z.to_vector<float>(), (std::vector<float>{3, 1, 7, 5, 11, 9}));
  Value bad = g.constant(Tensor::from_vector<int32_t>({1, 4}));
  expect_error([&] { testing::run1(g, gather(params, bad, 1)); },
               {"[gather]", "index 4", "axis 1 of size 4"});
  Value empty = g.constant(Tensor::zeros(i64, {0}));
  EXPECT_EQ(testing::run1(g, gather(params, empty, 0)).shape(), Shape({0, 4}));
}

// torch.gather's semantics: indices of params' rank, the result shaped like them; any dtype
// (integers and bool too); indices outside [0, n) fail naming the value and position.
TEST(TakeAlongAxis, PicksPerRowAndChecksEveryIndex) {
  Graph g;
  Value params = g.constant(iota_tensor(f32, {3, 4}));  // rows 0..3, 4..7, 8..11
  Value picks = g.constant(Tensor::from_vector<int64_t>({3, 3, 0, 1, 2, 1, 0, 0, 0}, {3, 3}));
  Tensor y = testing::run1(g, take_along_axis(params, picks, 1));
  EXPECT_EQ(y.shape(), Shape({3, 3}));
  EXPECT_EQ(y.to_vector<float>(), (std::vector<float>{3, 3, 0, 5, 6, 5, 8, 8, 8}));
  Value down = g.constant(Tensor::from_vector<int32_t>({2, 0, 1, 2}, {1, 4}));
  EXPECT_EQ(testing::run1(g, take_along_axis(params, down, 0)).to_vector<float>(),
            (std::vector<float>{8, 1, 6, 11}));
  Value flags = g.constant(Tensor::from_vector<int64_t>({7, -2, 9}, {3}));
  EXPECT_EQ(
      testing::run1(
          g, take_along_axis(flags, g.constant(Tensor::from_vector<int64_t>({2, 2, 1, 0}, {4})), 0))
          .to_vector<int64_t>(),
      (std::vector<int64_t>{9, 9, -2, 7}));
  Value negative = g.constant(Tensor::from_vector<int64_t>({0, -1, 0}, {3, 1}));
  expect_error([&] { testing::run1(g, take_along_axis(params, negative, 1)); },
               {"[take_along_axis]", "index -1 (at position 1 of indices [3, 1])",
                "out of range [0, 4) for axis 1"});
  Value past = g.constant(Tensor::from_vector<int64_t>({0, 4, 0}, {3, 1}));
  expect_error([&] { testing::run1(g, take_along_axis(params, past, 1)); }, {"index 4"});
  expect_error<GraphError>([&] { take_along_axis(params, flags, 0); },
                           {"[take_along_axis]", "rank of params"});
  expect_error<GraphError>([&] { take_along_axis(params, picks, 0); },
                           {"differ in dim 1", "only dim 0"});
  expect_error<GraphError>([&] { take_along_axis(params, params, 0); }, {"indices", "f32"});
}

// A window read and written at a start fed at run time: one plan for every start, i32 or i64
// starts, any dtype, and every start that does not fit refused naming the node and the range.
TEST(DynamicSlice, ReadsAndWritesAWindowAtAFedStart) {
  Graph g;
  Value x = g.placeholder("x", f32, {2, 5, 3});
  Value start = g.placeholder("start", i64, {});
  Value window = dynamic_slice(x, start, 2, 1);
  Value written = dynamic_update_slice(x, g.constant(Tensor::full(f32, {2, 2, 3}, -1)), start, 1);
  Session s(g);
  const Tensor in = iota_tensor(f32, {2, 5, 3});  // row r of block b holds 15 b + 3 r + (0..2)
  for (int64_t at = 0; at <= 3; ++at) {
    auto out = s.run({{x, in}, {start, Tensor::scalar<int64_t>(at)}}, {window, written});
    std::vector<float> want_window, want_written = in.to_vector<float>();
    for (int64_t b = 0; b < 2; ++b)
      for (int64_t r = at; r < at + 2; ++r)
        for (int64_t k = 0; k < 3; ++k) {
          want_window.push_back(static_cast<float>(15 * b + 3 * r + k));
          want_written[static_cast<size_t>(15 * b + 3 * r + k)] = -1;
        }
    EXPECT_EQ(out[0].to_vector<float>(), want_window) << "start " << at;
    EXPECT_EQ(out[1].to_vector<float>(), want_written) << "start " << at;
  }
  EXPECT_EQ(s.num_compiled_plans(), 1u);
  for (int64_t at : {int64_t{4}, int64_t{-1}})
    expect_error(
        [&] {
          s.run({{x, in}, {start, Tensor::scalar<int64_t>(at)}}, {window});
        },
        {"[dynamic_slice]", str("start ", at, " is out of range"), "within [0, 5)", "[0, 3]"});
  expect_error(
      [&] {
        s.run({{x, in}, {start, Tensor::scalar<int64_t>(9)}}, {written});
      },
      {"[dynamic_update_slice]", "start 9"});

  // An i32 [1] start, integers along the last axis, and a write whose x lives on (so it is
  // not computed in x's buffer) next to one whose x dies.
  Value codes = g.constant(Tensor::from_vector<int64_t>({1, 2, 3, 4, 5, 6}, {2, 3}));
  Value at2 = g.constant(Tensor::from_vector<int32_t>({2}));
  EXPECT_EQ(testing::run1(g, dynamic_slice(codes, at2, 1, -1)).to_vector<int64_t>(),
            (std::vector<int64_t>{3, 6}));
  Value y = g.placeholder("y", f32, {4});
  Value twice = y * 2.0;
  Value kept = dynamic_update_slice(twice, g.constant(Tensor::full(f32, {1}, 9)), at2, 0);
  Value both = kept + twice;
  EXPECT_EQ(
      testing::run1(g, both, {{y, Tensor::from_vector<float>({1, 2, 3, 4})}}).to_vector<float>(),
      (std::vector<float>{4, 8, 15, 16}));
  EXPECT_EQ(
      testing::run1(g, kept, {{y, Tensor::from_vector<float>({1, 2, 3, 4})}}).to_vector<float>(),
      (std::vector<float>{2, 4, 9, 8}));

  // Build-time errors name the op and the shapes.
  expect_error<GraphError>([&] { dynamic_slice(x, start, 6, 1); },
                           {"[dynamic_slice]", "length 6 exceeds dim 1"});
  expect_error<GraphError>([&] { dynamic_slice(x, x, 1, 1); }, {"[dynamic_slice]", "start"});
  expect_error<GraphError>([&] { dynamic_slice(x, codes, 1, 1); }, {"integer scalar", "[2, 3]"});
  expect_error<GraphError>(
      [&] {
        dynamic_update_slice(x, g.constant(Tensor::zeros(f32, {2, 6, 3})), start, 1);
      },
      {"[dynamic_update_slice]", "does not fit", "[2, 6, 3]"});
  expect_error<GraphError>(
      [&] {
        dynamic_update_slice(x, g.constant(Tensor::zeros(f32, {2, 1, 4})), start, 1);
      },
      {"does not fit"});
  expect_error<GraphError>(
      [&] {
        dynamic_update_slice(x, g.constant(Tensor::zeros(f32, {1, 3})), start, 1);
      },
      {"rank of x"});
}

TEST(Cast, AllPairsOfDtypes) {
  Tensor in = Tensor::from_vector<double>({-2.75, -1, 0, 0.5, 3.25, 200});
  for (DType to : {f32, f64, f16, bf16, i32, i64, u8, boolean}) {
    Graph g;
    Tensor y = testing::run1(g, cast(g.constant(in), to));
    ASSERT_EQ(y.dtype(), to);
    for (int64_t i = 0; i < in.numel(); ++i) {
      double v = in.element(i);
      double expected =
          dispatch_all(to, [&](auto tag) { return convert<double>(convert<decltype(tag)>(v)); });
      EXPECT_EQ(y.element(i), expected) << to << " " << v;
    }
    // And back to f64 from every dtype.
    Tensor back = testing::run1(g, cast(cast(g.constant(in), to), f64));
    for (int64_t i = 0; i < in.numel(); ++i) EXPECT_EQ(back.element(i), y.element(i));
  }
}

// Float to integer is defined for every value (a plain C++ cast is undefined out of range):
// truncation, NaN -> 0, saturation at int64's range, low bits for narrower types.
TEST(Cast, FloatsOutsideTheIntegerRangeHaveDefinedResults) {
  Graph g;
  Tensor in =
      Tensor::from_vector<double>({NAN, INFINITY, -INFINITY, 1e30, -1e30, -3.0, 300.5, 3e9, -2.5});
  Session s(g);
  auto out =
      s.run({}, {cast(g.constant(in), i64), cast(g.constant(in), i32), cast(g.constant(in), u8)});
  EXPECT_EQ(out[0].to_vector<int64_t>(),
            (std::vector<int64_t>{0, INT64_MAX, INT64_MIN, INT64_MAX, INT64_MIN, -3, 300,
                                  3000000000, -2}));
  EXPECT_EQ(out[1].to_vector<int32_t>(),
            (std::vector<int32_t>{0, -1, 0, -1, 0, -3, 300, -1294967296, -2}));
  EXPECT_EQ(out[2].to_vector<int>(), (std::vector<int>{0, 255, 0, 255, 0, 253, 44, 0, 254}));
}

TEST(Sources, FillIotaConstantIdentity) {
  Graph g;
  EXPECT_EQ(testing::run1(g, fill(g, {2, 2}, 7.5, f64)).to_vector<double>(),
            (std::vector<double>{7.5, 7.5, 7.5, 7.5}));
  EXPECT_EQ(testing::run1(g, fill(g, {3}, 1, boolean)).to_vector<int>(),
            (std::vector<int>{1, 1, 1}));
  EXPECT_EQ(testing::run1(g, iota(g, {2, 3}, 1, i32)).to_vector<int>(),
            (std::vector<int>{0, 1, 2, 0, 1, 2}));
  EXPECT_EQ(testing::run1(g, iota(g, {2, 3}, 0)).to_vector<float>(),
            (std::vector<float>{0, 0, 0, 1, 1, 1}));
  Tensor c = Tensor::from_vector<int64_t>({4, 5});
  EXPECT_TRUE(equal_bits(testing::run1(g, identity(g.constant(c))), c));
  EXPECT_EQ(testing::run1(g, fill(g, {0, 3}, 1)).numel(), 0);
}

}  // namespace
}  // namespace kiln
