// Layer, RMS, group, batch and instance norm (ops/nn/normalization.cc) against f64 formulas
// (PyTorch's definitions), their gradients against finite differences, the running statistics,
// statistics, and the errors a user can hit building convolution, pooling and normalization.
#include <cmath>
#include <limits>

#include "autograd/gradcheck.h"
#include "test_util.h"

namespace kiln {
namespace {

using testing::check_gradients;
using testing::expect_error;
using testing::r64;

// (x - mean) / sqrt(var + eps) of each group of `size` consecutive elements (center) or
// x / sqrt(mean(x^2) + eps).
std::vector<double> normalized_rows(const Tensor& x, int64_t size, double eps, bool center) {
  std::vector<double> out;
  for (int64_t row = 0; row < x.numel() / size; ++row) {
    double mean = 0, squares = 0;
    for (int64_t i = 0; i < size; ++i) mean += x.element(row * size + i) / size;
    if (!center) mean = 0;
    for (int64_t i = 0; i < size; ++i)
      squares += std::pow(x.element(row * size + i) - mean, 2) / size;
    for (int64_t i = 0; i < size; ++i)
      out.push_back((x.element(row * size + i) - mean) / std::sqrt(squares + eps));
  }
  return out;
}

TEST(Normalization, LayerAndRmsNormMatchTheirDefinitions) {
  Tensor x = r64({3, 4, 5}, -2, 3, 1), w = r64({4, 5}, 0.5, 1.5, 2), b = r64({4, 5}, -1, 1, 3);
  Graph g;
  Value vx = g.placeholder("x", f64, {3, 4, 5});
  Value vw = g.constant(w), vb = g.constant(b);
  const auto ln = testing::run1(g, layer_norm(vx, 2, vw, vb, 1e-5), {{vx, x}}).to_vector<double>();
  const auto rms = testing::run1(g, rms_norm(vx, 1, Value(), 1e-6), {{vx, x}}).to_vector<double>();
  const std::vector<double> want_ln = normalized_rows(x, 20, 1e-5, true);
  const std::vector<double> want_rms = normalized_rows(x, 5, 1e-6, false);
  for (int64_t i = 0; i < 60; ++i) {
    EXPECT_NEAR(ln[i], want_ln[i] * w.element(i % 20) + b.element(i % 20), 1e-12) << i;
    EXPECT_NEAR(rms[i], want_rms[i], 1e-12) << i;
  }
  check_gradients(
      [](Graph&, const std::vector<Value>& v) { return layer_norm(v[0], 2, v[1], v[2]); },
      {x, w, b}, "layer_norm");
  check_gradients([](Graph&, const std::vector<Value>& v) { return rms_norm(v[0], 1, v[1]); },
                  {x, r64({5}, 0.5, 1.5, 4)}, "rms_norm");
}

// Layer norm's weight and bias (affine "elements") take their gradients from normalize_backward;
// where x needs none (a graph input), the node leaves dx out (input_gradient false), with the
// same parameter gradients. 150 rows: several of the CPU kernel's blocks of 64 rows.
TEST(Normalization, ParameterGradientsAloneWhereXNeedsNone) {
  Tensor x = r64({150, 6}, -2, 3, 11), w = r64({6}, 0.5, 1.5, 12), b = r64({6}, -1, 1, 13);
  Graph g;
  Value vx = g.placeholder("x", f64, {150, 6});
  Value vw = g.placeholder("w", f64, {6}), vb = g.placeholder("b", f64, {6});
  Value loss = sum(square(layer_norm(vx, 1, vw, vb)) * g.constant(r64({150, 6}, -1, 1, 14)));
  std::vector<Value> all = gradients(loss, {vx, vw, vb});
  std::vector<Value> params = gradients(loss, {vw, vb});
  int without_dx = 0;
  for (int32_t id = 0; id < g.num_nodes(); ++id)
    if (g.node(id).op_name() == "normalize_backward") {
      const bool dx = g.node(id).attr<bool>("input_gradient");
      without_dx += !dx;
      EXPECT_EQ(g.node(id).num_outputs(), dx ? 3 : 2);
      EXPECT_EQ(g.node(id).attr<std::string>("affine"), "elements");
    }
  EXPECT_EQ(without_dx, 1);
  Session s(g);
  auto got = s.run({{vx, x}, {vw, w}, {vb, b}}, {all[1], all[2], params[0], params[1]});
  EXPECT_TRUE(equal_bits(got[0], got[2]));
  EXPECT_TRUE(equal_bits(got[1], got[3]));
  check_gradients(
      [](Graph& cg, const std::vector<Value>& v) {
        return layer_norm(cg.constant(r64({150, 6}, -2, 3, 11)), 1, v[0], v[1]);
      },
      {w, b}, "layer_norm parameters");
}

TEST(Normalization, GroupNormNormalizesEachGroupOfEachExample) {
  Tensor x = r64({2, 6, 3, 2}, -2, 3, 5), w = r64({6}, 0.5, 1.5, 6), b = r64({6}, -1, 1, 7);
  Graph g;
  Value vx = g.placeholder("x", f64, {-1, 6, 3, 2});
  const auto got = testing::run1(g, group_norm(vx, 3, g.constant(w), g.constant(b)), {{vx, x}})
                       .to_vector<double>();
  // Groups of 2 channels x 6 positions = 12 consecutive elements.
  const std::vector<double> want = normalized_rows(x, 12, 1e-5, true);
  for (int64_t i = 0; i < x.numel(); ++i) {
    const int64_t channel = i / 6 % 6;
    EXPECT_NEAR(got[i], want[i] * w.element(channel) + b.element(channel), 1e-12) << i;
  }
  check_gradients(
      [](Graph&, const std::vector<Value>& v) { return group_norm(v[0], 2, v[1], v[2]); },
      {x, w, b}, "group_norm");
}

TEST(Normalization, BatchNormTrainsOnBatchStatisticsAndKeepsRunningOnes) {
  const Shape shape{4, 3, 2, 2};
  Tensor x = r64(shape, -2, 3, 8);
  Graph g;
  Value vx = g.placeholder("x", f64, shape);
  Value mean = g.variable("running_mean", {3}, init::zeros(), f64, false);
  Value var = g.variable("running_var", {3}, init::constant(1), f64, false);
  Value train = batch_norm(vx, mean, var, Value(), Value(), true, 0.1);
  Value eval = batch_norm(vx, mean, var, Value(), Value(), false);
  Session s(g, {.intra_op_threads = 2});
  const auto y = s.run({{vx, x}}, {train})[0].to_vector<double>();
  // Per channel: M = 16 elements (4 examples x 4 positions).
  std::vector<double> batch_mean(3, 0), batch_var(3, 0);
  auto at = [&](int64_t n, int64_t c, int64_t p) { return x.element((n * 3 + c) * 4 + p); };
  for (int64_t c = 0; c < 3; ++c) {
    for (int64_t n = 0; n < 4; ++n)
      for (int64_t p = 0; p < 4; ++p) batch_mean[c] += at(n, c, p) / 16;
    for (int64_t n = 0; n < 4; ++n)
      for (int64_t p = 0; p < 4; ++p) batch_var[c] += std::pow(at(n, c, p) - batch_mean[c], 2) / 16;
    for (int64_t n = 0; n < 4; ++n)
      for (int64_t p = 0; p < 4; ++p)
        EXPECT_NEAR(y[(n * 3 + c) * 4 + p],
                    (at(n, c, p) - batch_mean[c]) / std::sqrt(batch_var[c] + 1e-5), 1e-12);
  }
  // One training step moved the running statistics 10% toward the batch's (variance unbiased).
  const auto rm = s.run({}, {mean})[0].to_vector<double>();
  const auto rv = s.run({}, {var})[0].to_vector<double>();
  for (int64_t c = 0; c < 3; ++c) {
    EXPECT_NEAR(rm[c], 0.1 * batch_mean[c], 1e-12);
    EXPECT_NEAR(rv[c], 0.9 + 0.1 * batch_var[c] * 16 / 15, 1e-10);
  }
  // Evaluation reads them and changes nothing.
  const auto e = s.run({{vx, x}}, {eval})[0].to_vector<double>();
  for (int64_t c = 0; c < 3; ++c)
    EXPECT_NEAR(e[c * 4], (at(0, c, 0) - rm[c]) / std::sqrt(rv[c] + 1e-5), 1e-12);
  EXPECT_EQ(s.run({}, {mean})[0].to_vector<double>(), rm);
  check_gradients(
      [](Graph&, const std::vector<Value>& v) {
        return batch_norm(v[0], Value(), Value(), v[1], v[2], true);
      },
      {x, r64({3}, 0.5, 1.5, 9), r64({3}, -1, 1, 10)}, "batch_norm");
}

// Instance norm with running statistics (PyTorch's track_running_stats): training normalizes
// each instance and moves the running statistics toward the mean over the examples of the
// instance statistics (variances unbiased over the positions); evaluation reads them.
TEST(Normalization, InstanceNormKeepsRunningStatisticsOfTheInstances) {
  const Shape shape{4, 3, 5};
  Tensor x = r64(shape, -2, 3, 11);
  Graph g;
  Value vx = g.placeholder("x", f64, shape);
  Value mean = g.variable("running_mean", {3}, init::zeros(), f64, false);
  Value var = g.variable("running_var", {3}, init::constant(1), f64, false);
  Value train = instance_norm(vx, mean, var, Value(), Value(), true, 0.2);
  Value eval = instance_norm(vx, mean, var, Value(), Value(), false);
  Session s(g, {.intra_op_threads = 2});
  const auto y = s.run({{vx, x}}, {train})[0];
  testing::expect_near(normalized_rows(x, 5, 1e-5, true), y, 1e-12, 1e-12, "instance_norm");
  std::vector<double> want_mean(3, 0), want_var(3, 0.8);
  for (int64_t n = 0; n < 4; ++n)
    for (int64_t c = 0; c < 3; ++c) {
      double m = 0, v = 0;
      for (int64_t p = 0; p < 5; ++p) m += x.element((n * 3 + c) * 5 + p) / 5;
      for (int64_t p = 0; p < 5; ++p) v += std::pow(x.element((n * 3 + c) * 5 + p) - m, 2) / 4;
      want_mean[c] += 0.2 * m / 4;
      want_var[c] += 0.2 * v / 4;
    }
  testing::expect_near(want_mean, s.run({}, {mean})[0], 1e-12, 1e-12, "running mean");
  testing::expect_near(want_var, s.run({}, {var})[0], 1e-10, 1e-12, "running variance");
  const auto e = s.run({{vx, x}}, {eval})[0];
  for (int64_t c = 0; c < 3; ++c)
    EXPECT_NEAR(e.element(c * 5), (x.element(c * 5) - want_mean[c]) / std::sqrt(want_var[c] + 1e-5),
                1e-12);
  expect_error<GraphError>([&] { instance_norm(vx, {}, {}, {}, {}, false); },
                           {"instance_norm: without the input's statistics, running ones"});
  expect_error<GraphError>([&] { instance_norm(vx, mean, {}); },
                           {"instance_norm: give both running statistics or neither"});
  expect_error<GraphError>([&] { instance_norm(vx, {}, {}, g.constant(Tensor::zeros(f64, {4}))); },
                           {"instance_norm:", "is [4], x [4, 3, 5] has 3 channels"});
  expect_error<GraphError>([&] { instance_norm(vx, mean, var, {}, {}, true, 1.5); },
                           {"instance_norm: momentum 1.5 must be in [0, 1]"});
  // The layer: statistics only when tracked; evaluation then reads them.
  nn::InstanceNorm1d plain(g, "plain", 3);
  nn::InstanceNorm1d tracked(g, "tracked", 3, nn::InstanceNormOptions{.track_running_stats = true});
  EXPECT_FALSE(plain.running_mean.defined());
  ASSERT_TRUE(tracked.running_var.defined());
  EXPECT_EQ(tracked.running_var.name(), "tracked/running_var");
  EXPECT_TRUE(tracked.parameters().empty());  // running statistics are not trainable
}

TEST(Normalization, SecondDerivativesThroughNormalizeAreRefusedByName) {
  Graph g;
  Value x = g.placeholder("x", f64, {3, 4});
  Value dx = gradients(sum(square(layer_norm(x))), {x})[0];
  expect_error<GraphError>([&] { gradients(sum(dx), {x}); }, {"normalize_backward", "no gradient"});
}

// Max pooling's gradient and selection go to each window's first maximum in row-major order,
// and a NaN wins, on the tiled fast path (2x2 and 3x3 windows that tile the input) and on the
// general one (overlapping, padded), for f32 and f64. Values come from a small set, so windows
// hold many ties, NaNs and infinities.
TEST(Pooling, MaxPoolRoutesToTheFirstMaximumAndNaNWins) {
  struct Geometry {
    Shape x;
    Pool2dOptions window;
  };
  const std::vector<Geometry> geometries = {
      {{2, 3, 6, 8}, {.kernel_size = {2, 2}}},   // tiled
      {{1, 2, 7, 6}, {.kernel_size = {2, 2}}},   // tiled 2x2, row left
      {{1, 2, 5, 38}, {.kernel_size = {2, 2}}},  // 19 windows a row: 16 per vector, then 3
      {{1, 2, 7, 9}, {.kernel_size = {3, 3}}},   // tiled, row left
      {{1, 2, 6, 7}, {.kernel_size = {3, 2}, .stride = {2, 1}, .padding = {1, 1}}}};  // general
  const double kInf = std::numeric_limits<double>::infinity();
  const double pool_values[] = {0, 1, 2, 2, -1, -kInf, kInf, NAN};
  for (DType dtype : {f32, f64})
    for (const Geometry& geo : geometries) {
      SCOPED_TRACE(str(dtype, " ", geo.x));
      std::vector<double> xs(static_cast<size_t>(geo.x.numel()));
      uint32_t state = 7;
      for (double& e : xs) {
        state = state * 1664525u + 1013904223u;
        e = pool_values[(state >> 24) % 8];
      }
      Tensor x = Tensor::from_vector<double>(xs, geo.x);
      if (dtype == f32)
        x = Tensor::from_vector<float>(std::vector<float>(xs.begin(), xs.end()), geo.x);
      Graph g;
      Value vx = g.placeholder("x", dtype, geo.x);
      Value y = max_pool2d(vx, geo.window);
      const Shape ys = y.shape();
      Tensor dy = testing::random_tensor(dtype, ys, 1, 2, 11);
      Value vdy = g.placeholder("dy", dtype, ys);
      Value vv = g.placeholder("v", dtype, geo.x);
      Value dx = gradients(sum(y * vdy), {vx})[0];
      const auto stride = geo.window.stride[0] > 0 ? geo.window.stride : geo.window.kernel_size;
      Value selected =
          g.add("max_pool2d_select", {vx, vv},
                {{"kernel_size",
                  std::vector<int64_t>{geo.window.kernel_size[0], geo.window.kernel_size[1]}},
                 {"stride", std::vector<int64_t>{stride[0], stride[1]}},
                 {"padding", std::vector<int64_t>{geo.window.padding[0], geo.window.padding[1]}}});
      Tensor v = testing::random_tensor(dtype, geo.x, -1, 1, 12);
      // Where each maximum is; dy put back there is dx, except where windows share a maximum:
      // there dx sums them and unpooling keeps the last, as PyTorch's max_unpool2d.
      const Value indices = max_pool2d_with_indices(vx, geo.window).second;
      const Value unpooled = max_unpool2d(vdy, indices, geo.window, {geo.x[2], geo.x[3]});
      Session session(g);
      auto out = session.run({{vx, x}, {vdy, dy}, {vv, v}}, {y, dx, selected, indices, unpooled});

      // The reference: scan each window row-major, keep the first maximum or the first NaN.
      const auto& k = geo.window.kernel_size;
      const auto& st = stride;
      const auto& pad = geo.window.padding;
      std::vector<double> want_dx(static_cast<size_t>(x.numel()), 0.0), want_unpooled = want_dx;
      for (int64_t p = 0; p < ys[0] * ys[1]; ++p)
        for (int64_t i = 0; i < ys[2]; ++i)
          for (int64_t j = 0; j < ys[3]; ++j) {
            int64_t at = -1;
            for (int64_t a = 0; a < k[0]; ++a)
              for (int64_t b = 0; b < k[1]; ++b) {
                const int64_t h = i * st[0] - pad[0] + a, w = j * st[1] - pad[1] + b;
                if (h < 0 || h >= geo.x[2] || w < 0 || w >= geo.x[3]) continue;
                const int64_t idx = (p * geo.x[2] + h) * geo.x[3] + w;
                if (at < 0) {
                  at = idx;
                } else if (!std::isnan(x.element(at)) &&
                           (std::isnan(x.element(idx)) || x.element(idx) > x.element(at))) {
                  at = idx;
                }
              }
            const int64_t o = (p * ys[2] + i) * ys[3] + j;
            const double want = x.element(at);
            const double got = out[0].element(o);
            EXPECT_TRUE(std::isnan(want) ? std::isnan(got) : got == want)
                << "y at " << o << ": " << got << ", expected " << want;
            EXPECT_EQ(out[2].element(o), v.element(at)) << "select at " << o;
            EXPECT_EQ(out[3].element(o), at - p * geo.x[2] * geo.x[3]) << "index at " << o;
            want_dx[static_cast<size_t>(at)] += dy.element(o);
            want_unpooled[static_cast<size_t>(at)] = dy.element(o);
          }
      for (int64_t i = 0; i < x.numel(); ++i) {
        EXPECT_NEAR(out[1].element(i), want_dx[static_cast<size_t>(i)], 1e-6) << "dx at " << i;
        EXPECT_EQ(out[4].element(i), want_unpooled[static_cast<size_t>(i)])
            << "unpooled dy at " << i;
      }
    }
}

// max_unpool2d: PyTorch's default output size, and the errors a user can hit: indices of the
// wrong dtype or shape, a size that is not positive, an index outside the plane (at run time).
TEST(Pooling, MaxUnpoolSizesAndErrors) {
  Graph g;
  Value x = g.placeholder("x", f32, {-1, 2, 2, 3});
  Value at = g.placeholder("at", i64, {-1, 2, 2, 3});
  EXPECT_EQ(max_unpool2d(x, at, {.kernel_size = {2, 2}}).shape(), Shape({-1, 2, 4, 6}));
  EXPECT_EQ(
      max_unpool2d(x, at, {.kernel_size = {3, 2}, .stride = {2, 2}, .padding = {1, 0}}).shape(),
      Shape({-1, 2, 3, 6}));
  EXPECT_EQ(max_unpool2d(x, at, {}, {5, 7}).shape(), Shape({-1, 2, 5, 7}));
  expect_error<GraphError>(
      [&] {
        max_unpool2d(x, g.placeholder("i32", i32, {-1, 2, 2, 3}));
      },
      {"[max_unpool2d]", "i32"});
  expect_error<GraphError>(
      [&] {
        max_unpool2d(x, g.placeholder("flat", i64, {-1, 2, 6}));
      },
      {"[max_unpool2d]", "indices [?, 2, 6] must be shaped like x [?, 2, 2, 3]"});
  expect_error<GraphError>(
      [&] {
        max_unpool2d(x, at, {}, {0, 4});
      },
      {"[max_unpool2d]", "output_size must be 2 values"});
  // PyTorch's bound: strictly within a stride (2) of the default 4 x 6.
  expect_error<GraphError>(
      [&] {
        max_unpool2d(x, at, {}, {6, 6});
      },
      {"[max_unpool2d] output_size (6, 6)", "height must lie in (2, 6)"});
  expect_error<GraphError>([&] { max_unpool2d(x, at, {}, {3, 4}); }, {"width must lie in (4, 8)"});
  Value y = max_unpool2d(x, at, {}, {3, 5});
  Tensor places = Tensor::from_vector<int64_t>({0, 1, 2, 3, 3, 0, 1, 1, 2, 15, 0, 0}, {1, 2, 2, 3});
  expect_error<Error>(
      [&] {
        testing::run1(g, y, {{x, Tensor::full(f32, {1, 2, 2, 3}, 1)}, {at, places}});
      },
      {"max_unpool2d", "index 15 (at position 9) is out of range for an output plane of 3 x 5"});
}

TEST(Normalization, BadShapesAndSettingsAreGraphErrors) {
  Graph g;
  Value x = g.placeholder("x", f32, {-1, 6, 8, 8});
  Value w = g.placeholder("w", f32, {4, 3, 3, 3});
  expect_error<GraphError>([&] { conv2d(x, w); }, {"[conv2d]", "takes 3 channels per group", "6"});
  expect_error<GraphError>(
      [&] {
        conv2d(x, g.placeholder("w2", f32, {4, 6, 9, 9}));
      },
      {"[conv2d]", "smaller than the 9-wide dilated kernel"});
  expect_error<GraphError>(
      [&] {
        conv2d(x, g.placeholder("w3", f32, {4, 3, 3, 3}), {.groups = 4});
      },
      {"[conv2d]", "divide by groups 4"});
  expect_error<GraphError>(
      [&] {
        conv2d(x, w, {.stride = {0, 1}});
      },
      {"stride (0, 1) must be in [1, 16777216]"});
  expect_error<GraphError>(
      [&] {
        max_pool2d(x, {.kernel_size = {3, 3}, .padding = {2, 2}});
      },
      {"[max_pool2d]", "at most half the window"});
  expect_error<GraphError>(
      [&] {
        avg_pool2d(x, {.kernel_size = {9, 9}});
      },
      {"[avg_pool2d]", "smaller than the window"});
  // Dilation: max pooling only; its span must fit; every window must hold an input element
  // (2 taps 7 apart, padding 1: the window over -1 and 6 of a 6-wide input holds none).
  expect_error<GraphError>(
      [&] {
        avg_pool2d(x, {.kernel_size = {2, 2}, .dilation = {2, 1}});
      },
      {"[avg_pool2d] takes no dilation", "(2, 1)"});
  expect_error<GraphError>(
      [&] {
        max_pool2d(x, {.kernel_size = {3, 3}, .dilation = {4, 1}});
      },
      {"[max_pool2d]", "smaller than the window (3, 3, dilation 4, 1)"});
  expect_error<GraphError>(
      [&] {
        max_pool2d(x, {.kernel_size = {2, 2}, .dilation = {0, 1}});
      },
      {"[max_pool2d]", "dilation (0, 1) must be in [1, 16777216]"});
  expect_error<GraphError>(
      [&] {
        max_pool2d(
            g.placeholder("narrow", f32, {1, 1, 8, 6}),
            {.kernel_size = {2, 2}, .stride = {1, 1}, .padding = {1, 1}, .dilation = {1, 7}});
      },
      {"[max_pool2d]", "window 0 along the width", "holds no input element", "dilation 7"});
  expect_error<GraphError>([&] { normalize(x, {1, 3}); }, {"[normalize]", "adjacent"});
  expect_error<GraphError>([&] { layer_norm(x, 5); }, {"layer_norm", "normalized_dims 5"});
  // Affine "elements" (layer norm's weight and bias): shaped like the normalized dims, last.
  int made = 0;
  auto elements = [&](std::vector<int64_t> axes, Shape scale, std::string affine) {
    ++made;
    g.add_node(
        "normalize",
        {x, g.placeholder(str("s", made), f32, scale), g.placeholder(str("t", made), f32, scale)},
        {{"axes", axes}, {"eps", 1e-5}, {"center", true}, {"affine", affine}});
  };
  expect_error<GraphError>(
      [&] {
        elements({0, 1}, {2, 6}, "elements");
      },
      {"[normalize]", "normalized dims last", "axes [0, 1]"});
  expect_error<GraphError>(
      [&] {
        elements({2, 3}, {5, 6}, "elements");
      },
      {"[normalize]", "input 1 is [5, 6]", "scale and shift's dims are"});
  expect_error<GraphError>(
      [&] {
        Normalized n = normalize(x, {2, 3});
        g.add_node("normalize_backward", {x, n.mean, n.rstd, x},
                   {{"axes", std::vector<int64_t>{2, 3}}, {"input_gradient", false}});
      },
      {"[normalize_backward]", "without input_gradient it needs scale"});
  expect_error<GraphError>(
      [&] {
        elements({2, 3}, {5, 5}, "channels");
      },
      {"[normalize]", "affine must be statistics or elements"});
  expect_error<GraphError>([&] { group_norm(x, 4); }, {"group_norm", "6 channels", "4 groups"});
  Value c4 = g.variable("c4", {4}, init::zeros());
  expect_error<GraphError>([&] { batch_norm(x, c4, c4, Value(), Value(), true); },
                           {"batch_norm", "[4]", "6 channels"});
  expect_error<GraphError>(
      [&] {
        conv_transpose2d(x, g.placeholder("t", f32, {6, 2, 3, 3}), {}, {1, 0});
      },
      {"conv_transpose2d", "output_padding 1"});
}

// BatchNorm2d with PyTorch's options, against torch 2.15 (f64, printed to 9 digits): momentum
// std::nullopt (PyTorch's None) averages three training batches equally (num_batches_tracked
// counts them) and evaluation reads that average; affine false with track_running_stats false
// has no variables and normalizes by the batch in evaluation too.
TEST(Normalization, BatchNormLayerOptionsFollowPyTorch) {
  auto batch = [](int k) {  // sin(0.37 (k + 1) i + k), i = 0 ... 23, as [2, 3, 2, 2]
    std::vector<float> v(24);
    for (int i = 0; i < 24; ++i) v[i] = static_cast<float>(std::sin(i * 0.37 * (k + 1) + k));
    return Tensor::from_vector<float>(v, {2, 3, 2, 2});
  };
  auto expect_near = [](const std::vector<float>& got, const std::vector<double>& torch,
                        double tolerance, const char* what) {
    ASSERT_EQ(got.size(), torch.size()) << what;
    for (size_t i = 0; i < got.size(); ++i) EXPECT_NEAR(got[i], torch[i], tolerance) << what << i;
  };
  Graph g;
  Value x = g.placeholder("x", f32, {2, 3, 2, 2});
  nn::BatchNorm2d average(g, "average", 3, std::nullopt);
  Value train = average(x);
  average.eval();
  Value eval = average(x);
  Session s(g);
  for (int k = 0; k < 3; ++k) s.run({{x, batch(k)}}, {train});
  EXPECT_EQ(s.variable_value(average.num_batches_tracked).item<int64_t>(), 3);
  expect_near(s.variable_value(average.running_mean).to_vector<float>(),
              {-0.174243932, 0.265744104, 0.142945614}, 1e-6, "running_mean");
  expect_near(s.variable_value(average.running_var).to_vector<float>(),
              {0.55372955, 0.424052642, 0.588971566}, 1e-6, "running_var");
  expect_near(s.run({{x, batch(3)}}, {eval})[0].to_vector<float>(),
              {0.423798349, -1.07355942,   -0.192632105, 1.46447588,   0.334564946, -1.67931361,
               -1.38126025, 0.686668269,   0.807957931,  -0.934888307, -1.31623692, 0.357454322,
               1.50122402,  -0.0968195602, -1.09293259,  0.32447261,   1.12711588,  -0.232891498,
               -1.9115123,  -0.855911471,  1.02052646,   0.412575571,  -1.28445198, -0.984245571},
              1e-5, "eval");

  Graph h;
  Value y = h.placeholder("y", f32, {2, 3, 2, 2});
  nn::BatchNorm2d plain(h, "plain", 3, 0.1, 1e-5, /*affine=*/false,
                        /*track_running_stats=*/false);
  plain.eval();
  Value normalized = plain(y);
  EXPECT_TRUE(h.variables().empty());
  EXPECT_FALSE(plain.weight.defined() || plain.running_mean.defined());
  Session t(h);
  expect_near(t.run({{y, batch(4)}}, {normalized})[0].to_vector<float>(),
              {-1.13994048,  -0.641691434, 1.43967596,    -0.205782192, -1.17419877,  0.812011536,
               0.734642211,  -1.20892363,  -0.0518577095, 1.55227271,   -0.737914566, -1.07973843,
               1.27368017,   0.307713518,  -1.49723818,   0.463582639,  1.05041123,   -0.99401427,
               -0.494521596, 1.27459329,   -0.222866064,  -1.39352255,  1.05675867,   0.876867942},
              1e-5, "no running statistics");

  expect_error<GraphError>([&] { nn::BatchNorm2d bad(h, "bad", 3, 1.5); },
                           {"[nn] BatchNorm2d bad: momentum 1.5 must be in [0, 1]"});
  expect_error<GraphError>(
      [&] {
        Value count = h.variable("count", Shape{}, init::zeros(), f32, false);
        batch_norm(y, Value(), Value(), Value(), Value(), true, 0.1, 1e-5, count);
      },
      {"batch_norm: num_batches_tracked without running statistics"});
}

}  // namespace
}  // namespace kiln
