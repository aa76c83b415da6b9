#include "test_util.h"

namespace kiln {
namespace {

// Reference: C[b, i, j] = sum_k A[b, i, k] B[b, k, j] with broadcast batch dims, in f64.
std::vector<double> reference_matmul(const Tensor& a, const Tensor& b, bool ta, bool tb,
                                     const Shape& out) {
  const Shape& as = a.shape();
  const Shape& bs = b.shape();
  int64_t m = out[-2], n = out[-1], k = ta ? as[-2] : as[-1];
  Shape batch(std::vector<int64_t>(out.begin(), out.end() - 2));
  Shape a_batch(std::vector<int64_t>(as.begin(), as.end() - 2));
  Shape b_batch(std::vector<int64_t>(bs.begin(), bs.end() - 2));
  std::vector<double> c;
  for (int64_t bi = 0; bi < batch.numel(); ++bi) {
    std::vector<int64_t> idx = testing::unravel(bi, batch);
    int64_t ao = testing::broadcast_source(idx, a_batch) * as[-2] * as[-1];
    int64_t bo = testing::broadcast_source(idx, b_batch) * bs[-2] * bs[-1];
    for (int64_t i = 0; i < m; ++i)
      for (int64_t j = 0; j < n; ++j) {
        double acc = 0;
        for (int64_t p = 0; p < k; ++p)
          acc += a.element(ao + (ta ? p * m + i : i * k + p)) *
                 b.element(bo + (tb ? j * k + p : p * n + j));
        c.push_back(acc);
      }
  }
  return c;
}

TEST(Matmul, MatchesReferenceForShapesFlagsAndBatches) {
  struct Case {
    Shape a, b;
    bool ta, tb;
  };
  std::vector<Case> cases = {{{3, 4}, {4, 5}, false, false},
                             {{4, 3}, {4, 5}, true, false},
                             {{3, 4}, {5, 4}, false, true},
                             {{4, 3}, {5, 4}, true, true},
                             {{1, 1}, {1, 1}, false, false},
                             {{1, 7}, {7, 1}, false, false},
                             {{0, 4}, {4, 5}, false, false},
                             {{3, 0}, {0, 5}, false, false},
                             {{2, 3, 4}, {2, 4, 5}, false, false},
                             {{2, 3, 4}, {4, 5}, false, false},
                             {{3, 4}, {6, 4, 2}, false, false},
                             {{2, 1, 3, 4}, {1, 5, 4, 2}, false, false},
                             {{2, 4, 3}, {2, 2, 4}, true, true},
                             {{67, 129}, {129, 33}, false, false},
                             // One row of C (gemv on OpenBLAS): every flag pair, batches, and a
                             // transposed A whose row is a strided column.
                             {{1, 9}, {9, 5}, false, false},
                             {{9, 1}, {9, 5}, true, false},
                             {{1, 9}, {5, 9}, false, true},
                             {{9, 1}, {5, 9}, true, true},
                             {{3, 1, 6}, {6, 4}, false, false},
                             {{33, 17}, {33, 300}, true, false}};
  for (DType dtype : {f32, f64}) {
    for (const Case& c : cases) {
      Graph g;
      Tensor ta = testing::random_tensor(dtype, c.a, -1, 1, 1);
      Tensor tb = testing::random_tensor(dtype, c.b, -1, 1, 2);
      Value a = g.placeholder("a", dtype, c.a), b = g.placeholder("b", dtype, c.b);
      Tensor y = testing::run1(g, matmul(a, b, c.ta, c.tb), {{a, ta}, {b, tb}});
      std::vector<double> expected = reference_matmul(ta, tb, c.ta, c.tb, y.shape());
      testing::expect_near(expected, y, dtype == f32 ? 1e-5 : 1e-12, dtype == f32 ? 1e-5 : 1e-12,
                           str("matmul ", dtype, c.a, c.b, c.ta, c.tb));
    }
  }
}

TEST(Matmul, VectorsFollowNumpy) {
  Graph g;
  Tensor m = Tensor::from_vector<double>({1, 2, 3, 4, 5, 6}, {2, 3});
  Tensor v3 = Tensor::from_vector<double>({1, -1, 2}), v2 = Tensor::from_vector<double>({3, 4});
  Value vm = g.constant(m), a = g.constant(v3), b = g.constant(v2);
  Session s(g);
  auto out = s.run({}, {matmul(vm, a), matmul(b, vm), matmul(a, a), matmul(vm, b, true)});
  EXPECT_EQ(out[0].shape(), Shape({2}));
  EXPECT_EQ(out[0].to_vector<double>(), (std::vector<double>{5, 11}));
  EXPECT_EQ(out[1].shape(), Shape({3}));
  EXPECT_EQ(out[1].to_vector<double>(), (std::vector<double>{19, 26, 33}));
  EXPECT_EQ(out[2].shape(), Shape({}));
  EXPECT_EQ(out[2].item<double>(), 6);
  EXPECT_EQ(out[3].to_vector<double>(), (std::vector<double>{19, 26, 33}));
  Value batch = g.placeholder("batch", f64, {-1, 2, 3});
  EXPECT_EQ(matmul(batch, a).shape(), Shape({-1, 2}));
  testing::expect_error<GraphError>([&] { matmul(a, b); }, {"inner dimensions differ"});
}

// matmul_bias with k = 0 is the bias in every row, and with a large k (several of OpenBLAS's
// slices of k: the bias is where its gemm starts) the product plus the bias, f32 and f64.
// A bias [N] or an addend [M, N], at k = 0 (the bias or the addend alone) and deep products.
TEST(Matmul, MatmulBiasAtEmptyAndDeepProducts) {
  for (DType dtype : {f32, f64})
    for (int64_t k : {0, 1500})
      for (bool addend : {false, true})
        for (int64_t m : {70, 1}) {  // 1: one row (gemv on OpenBLAS), starting at the bias
          Graph g;
          Tensor a = testing::random_tensor(dtype, {m, k}, -1, 1, 3);
          Tensor b = testing::random_tensor(dtype, {k, 40}, -1, 1, 4);
          Tensor bias = testing::random_tensor(dtype, addend ? Shape{m, 40} : Shape{40}, -1, 1, 5);
          Value y = g.add("matmul_bias", {g.constant(a), g.constant(b), g.constant(bias)});
          std::vector<double> want;
          for (int64_t i = 0; i < m; ++i)
            for (int64_t j = 0; j < 40; ++j) {
              double sum = bias.element(addend ? i * 40 + j : j);
              for (int64_t p = 0; p < k; ++p) sum += a.element(i * k + p) * b.element(p * 40 + j);
              want.push_back(sum);
            }
          testing::expect_near(
              want, testing::run1(g, y), dtype == f32 ? 1e-4 : 1e-12, 1e-4,
              str("matmul_bias m ", m, " k ", k, " ", dtype, addend ? " addend" : " bias"));
        }
  // Any other bias shape is refused, naming the two it may have.
  Graph g;
  Value a = g.placeholder("a", f32, {6, 4}), b = g.placeholder("b", f32, {4, 5});
  for (const Shape& bad : {Shape{6}, Shape{5, 6}, Shape{1, 5}, Shape{6, 5, 1}}) {
    Value bias = g.placeholder(str("bias_", bad.rank(), "_", bad[0]), f32, bad);
    testing::expect_error<GraphError>(
        [&] {
          g.add("matmul_bias", {a, b, bias});
        },
        {"[matmul_bias]", "bias must be [5] or [6, 5]", str(bad)});
  }
}

TEST(Matmul, ShapesAndErrors) {
  Graph g;
  Value a = g.placeholder("a", f32, {-1, 3, 4});
  Value b = g.placeholder("b", f32, {4, 2});
  EXPECT_EQ(matmul(a, b).shape(), Shape({-1, 3, 2}));
  EXPECT_EQ(matmul(b, b, true, false).shape(), Shape({2, 2}));
  testing::expect_error<GraphError>([&] { matmul(a, a); }, {"[matmul]", "inner dimensions"});
  Value scalar = g.placeholder("scalar", f32, {});
  testing::expect_error<GraphError>([&] { matmul(scalar, b); }, {"rank >= 2", "[]"});
  Value i = g.placeholder("i", i32, {4, 4});
  testing::expect_error<GraphError>([&] { matmul(i, i); }, {"[matmul]", "i32"});
  Value c = g.placeholder("c", f32, {2, 3, 4});
  Value d = g.placeholder("d", f32, {5, 4, 2});
  testing::expect_error<GraphError>([&] { matmul(c, d); }, {"batch dims", "[2]", "[5]"});
  // A batch size fed at run time that does not fit is reported with the feeds.
  Value x = g.placeholder("x", f32, {-1, 4});
  Value w = g.placeholder("w", f32, {-1, 2});
  Session s(g);
  testing::expect_error<GraphError>(
      [&] {
        s.run({{x, Tensor::zeros(f32, {2, 4})}, {w, Tensor::zeros(f32, {3, 2})}}, {matmul(x, w)});
      },
      {"[matmul]", "inner dimensions differ", "[2, 4]", "[3, 2]", "with x f32[2, 4]"});
}

}  // namespace
}  // namespace kiln
