// The 3-D convolutions and pools of ops/nn/volumetric.cc: forward against direct f64 loops (the
// definitions PyTorch documents), conv_transpose3d as conv3d's adjoint, gradients against finite
// differences, and the errors. (The PyTorch comparison is the layer parity "volume" model.)
#include <cmath>
#include <limits>

#include "autograd/gradcheck.h"
#include "test_util.h"

namespace kiln {
namespace {

using testing::check_gradients;
using testing::expect_error;
using testing::r64;

// Element (a, b, c, d, e) of a 5-D tensor of shape s, or `outside` where an index is out of range.
double at(const Tensor& t, int64_t a, int64_t b, int64_t c, int64_t d, int64_t e,
          double outside = 0) {
  const Shape& s = t.shape();
  if (c < 0 || d < 0 || e < 0 || c >= s[2] || d >= s[3] || e >= s[4]) return outside;
  return t.element((((a * s[1] + b) * s[2] + c) * s[3] + d) * s[4] + e);
}

// conv3d by its definition: y[n, o, z, i, j] = sum over c in o's group and the taps of
// x[n, c, z s + kz dil - p, ...] w[o, c', kz, ky, kx].
std::vector<double> conv3d_reference(const Tensor& x, const Tensor& w, const Conv3dOptions& o,
                                     Shape* out_shape) {
  const Shape& xs = x.shape();
  const Shape& ws = w.shape();
  int64_t out[3];
  for (int d = 0; d < 3; ++d)
    out[d] = (xs[2 + d] + 2 * o.padding[d] - o.dilation[d] * (ws[2 + d] - 1) - 1) / o.stride[d] + 1;
  *out_shape = Shape{xs[0], ws[0], out[0], out[1], out[2]};
  const int64_t per_group_out = ws[0] / o.groups, per_group_in = ws[1];
  std::vector<double> y;
  for (int64_t n = 0; n < xs[0]; ++n)
    for (int64_t oc = 0; oc < ws[0]; ++oc)
      for (int64_t z = 0; z < out[0]; ++z)
        for (int64_t i = 0; i < out[1]; ++i)
          for (int64_t j = 0; j < out[2]; ++j) {
            double sum = 0;
            const int64_t group = oc / per_group_out;
            for (int64_t c = 0; c < per_group_in; ++c)
              for (int64_t kz = 0; kz < ws[2]; ++kz)
                for (int64_t ky = 0; ky < ws[3]; ++ky)
                  for (int64_t kx = 0; kx < ws[4]; ++kx)
                    sum += at(x, n, group * per_group_in + c,
                              z * o.stride[0] + kz * o.dilation[0] - o.padding[0],
                              i * o.stride[1] + ky * o.dilation[1] - o.padding[1],
                              j * o.stride[2] + kx * o.dilation[2] - o.padding[2]) *
                           at(w, oc, c, kz, ky, kx);
            y.push_back(sum);
          }
  return y;
}

double dot(const Tensor& a, const Tensor& b) {
  double s = 0;
  for (int64_t i = 0; i < a.numel(); ++i) s += a.element(i) * b.element(i);
  return s;
}

TEST(Volumetric, Conv3dMatchesItsDefinitionAndItsTransposeIsItsAdjoint) {
  struct Case {
    Shape x, w;
    Conv3dOptions options;
  };
  const std::vector<Case> cases = {
      {{2, 3, 5, 6, 4}, {4, 3, 3, 2, 3}, {}},
      {{1, 4, 7, 5, 6}, {6, 2, 3, 3, 2}, {.stride = {2, 1, 2}, .padding = {1, 1, 0}, .groups = 2}},
      {{2, 2, 8, 5, 5},
       {3, 2, 2, 3, 3},
       {.stride = {3, 2, 1}, .padding = {2, 1, 1}, .dilation = {2, 1, 2}}},
  };
  for (size_t c = 0; c < cases.size(); ++c) {
    const Case& k = cases[c];
    const Tensor x = r64(k.x, -1, 1, 10 + c), w = r64(k.w, -1, 1, 20 + c);
    Shape y_shape;
    const std::vector<double> want = conv3d_reference(x, w, k.options, &y_shape);
    Graph g;
    Value vx = g.placeholder("x", f64, {-1, k.x[1], k.x[2], k.x[3], k.x[4]});
    Value vw = g.placeholder("w", f64, k.w);
    const Value y = conv3d(vx, vw, k.options);
    EXPECT_EQ(y.shape(), Shape({-1, y_shape[1], y_shape[2], y_shape[3], y_shape[4]})) << c;
    const Tensor got = testing::run1(g, y, {{vx, x}, {vw, w}});
    ASSERT_EQ(got.shape(), y_shape) << c;
    testing::expect_near(want, got, 1e-12, 1e-12, str("conv3d case ", c));
    // <conv3d(x, w), r> = <x, conv_transpose3d(r, w)>, the transposed output sized like x (with
    // output_padding where the stride leaves positions over).
    const Tensor r = r64(y_shape, -1, 1, 30 + c);
    std::array<int64_t, 3> output_padding{};
    for (int d = 0; d < 3; ++d) {
      const int64_t sized = (y_shape[2 + d] - 1) * k.options.stride[d] - 2 * k.options.padding[d] +
                            k.options.dilation[d] * (k.w[2 + d] - 1) + 1;
      output_padding[static_cast<size_t>(d)] = k.x[2 + d] - sized;
    }
    Value vr = g.placeholder("r", f64, y_shape);
    const Tensor back =
        testing::run1(g, conv_transpose3d(vr, vw, k.options, output_padding), {{vr, r}, {vw, w}});
    ASSERT_EQ(back.shape(), k.x) << c;
    EXPECT_NEAR(dot(got, r), dot(x, back), 1e-10) << c;
  }
  using Inputs = std::vector<Value>;
  const Conv3dOptions strided{.stride = {2, 1, 1}, .padding = {1, 0, 1}, .groups = 2};
  check_gradients([&](Graph&, const Inputs& v) { return conv3d(v[0], v[1], strided); },
                  {r64({1, 4, 4, 3, 3}, -1, 1, 40), r64({2, 2, 2, 2, 2}, -1, 1, 41)}, "conv3d");
  check_gradients(
      [&](Graph&, const Inputs& v) {
        return conv_transpose3d(v[0], v[1], strided, {1, 0, 0});
      },
      {r64({1, 4, 2, 2, 3}, -1, 1, 42), r64({4, 1, 2, 2, 2}, -1, 1, 43)}, "conv_transpose3d");
  check_gradients(
      [&](Graph&, const Inputs& v) {
        return conv3d(v[0], v[1], {.padding = {1, 1, 1}, .padding_mode = PadMode::reflect});
      },
      {r64({1, 2, 3, 3, 3}, -1, 1, 44), r64({1, 2, 2, 2, 2}, -1, 1, 45)}, "conv3d reflect");
}

// Pooling by its definition over the windows [i s - p, i s - p + k) of each dim.
TEST(Volumetric, PoolsMatchTheirDefinitions) {
  const Shape xs{2, 3, 5, 6, 7};
  const Tensor x = r64(xs, -2, 2, 50);
  const Pool3dOptions window{
      .kernel_size = {3, 2, 3}, .stride = {2, 2, 2}, .padding = {1, 1, 1}, .ceil_mode = true};
  int64_t out[3];
  for (int d = 0; d < 3; ++d) {
    const int64_t k = window.kernel_size[d], s = window.stride[d], p = window.padding[d];
    out[d] = (xs[2 + d] + 2 * p - k + s - 1) / s + 1;
    if ((out[d] - 1) * s >= xs[2 + d] + p) --out[d];
  }
  std::vector<double> maxima, included, excluded;
  for (int64_t n = 0; n < xs[0]; ++n)
    for (int64_t c = 0; c < xs[1]; ++c)
      for (int64_t z = 0; z < out[0]; ++z)
        for (int64_t i = 0; i < out[1]; ++i)
          for (int64_t j = 0; j < out[2]; ++j) {
            const int64_t start[3] = {z * 2 - 1, i * 2 - 1, j * 2 - 1};
            double best = -INFINITY, sum = 0, inside = 0, padded = 1;
            for (int d = 0; d < 3; ++d)
              padded *= std::min(start[d] + window.kernel_size[d], xs[2 + d] + 1) - start[d];
            for (int64_t a = start[0]; a < start[0] + 3; ++a)
              for (int64_t b = start[1]; b < start[1] + 2; ++b)
                for (int64_t e = start[2]; e < start[2] + 3; ++e) {
                  if (a < 0 || b < 0 || e < 0 || a >= xs[2] || b >= xs[3] || e >= xs[4]) continue;
                  const double v = at(x, n, c, a, b, e);
                  best = std::max(best, v);
                  sum += v;
                  ++inside;
                }
            maxima.push_back(best);
            included.push_back(sum / padded);
            excluded.push_back(sum / inside);
          }
  Graph g;
  Value vx = g.placeholder("x", f64, {-1, 3, 5, 6, 7});
  Session s(g);
  const auto got = s.run(
      {{vx, x}}, {max_pool3d(vx, window), avg_pool3d(vx, window), avg_pool3d(vx, window, false)});
  EXPECT_EQ(got[0].shape(), Shape({2, 3, out[0], out[1], out[2]}));
  testing::expect_near(maxima, got[0], 0, 0, "max_pool3d");
  testing::expect_near(included, got[1], 1e-12, 1e-12, "avg_pool3d counting padding");
  testing::expect_near(excluded, got[2], 1e-12, 1e-12, "avg_pool3d not counting padding");

  // Adaptive: uneven windows [floor(i in / out), ceil((i + 1) in / out)) in each dim; their means
  // and maxima.
  const Tensor small = r64({1, 2, 5, 3, 4}, -1, 1, 51);
  std::vector<double> adaptive, adaptive_max;
  const int64_t in[3] = {5, 3, 4}, to[3] = {3, 2, 3};
  for (int64_t c = 0; c < 2; ++c)
    for (int64_t z = 0; z < to[0]; ++z)
      for (int64_t i = 0; i < to[1]; ++i)
        for (int64_t j = 0; j < to[2]; ++j) {
          auto lo = [&](int d, int64_t o) { return o * in[d] / to[d]; };
          auto hi = [&](int d, int64_t o) { return ((o + 1) * in[d] + to[d] - 1) / to[d]; };
          double sum = 0, count = 0, best = -std::numeric_limits<double>::infinity();
          for (int64_t a = lo(0, z); a < hi(0, z); ++a)
            for (int64_t b = lo(1, i); b < hi(1, i); ++b)
              for (int64_t e = lo(2, j); e < hi(2, j); ++e) {
                sum += at(small, 0, c, a, b, e), ++count;
                best = std::max(best, at(small, 0, c, a, b, e));
              }
          adaptive.push_back(sum / count);
          adaptive_max.push_back(best);
        }
  testing::expect_near(adaptive, testing::run1(g, adaptive_avg_pool(g.constant(small), {3, 2, 3})),
                       1e-12, 1e-12, "adaptive_avg_pool 3-D");
  // In 2-D the adaptive_max_pool2d op's maxima; in 1-D, one dim alone.
  const Value small_value = g.constant(small);
  testing::expect_near(adaptive_max, testing::run1(g, adaptive_max_pool(small_value, {3, 2, 3})), 0,
                       0, "adaptive_max_pool 3-D");
  const Value planes = reshape(small_value, {2, 5, 3, 4});
  testing::expect_near(testing::values(testing::run1(g, adaptive_max_pool2d(planes, {2, 3}))),
                       testing::run1(g, adaptive_max_pool(planes, {2, 3})), 0, 0,
                       "adaptive_max_pool 2-D against adaptive_max_pool2d");
  const Tensor line = Tensor::from_vector<double>({3, -1, 4, 1, -5, 9, 2, 6}, {1, 1, 8});
  // 8 -> 3: windows [0, 3), [2, 6), [5, 8).
  testing::expect_near({4, 9, 9}, testing::run1(g, adaptive_max_pool(g.constant(line), {3})), 0, 0,
                       "adaptive_max_pool 1-D");

  using Inputs = std::vector<Value>;
  const Tensor grad_x = r64({1, 2, 4, 3, 4}, -1, 1, 52);
  check_gradients([&](Graph&, const Inputs& v) { return max_pool3d(v[0], window); }, {grad_x},
                  "max_pool3d");
  check_gradients([&](Graph&, const Inputs& v) { return avg_pool3d(v[0], window, false); },
                  {grad_x}, "avg_pool3d");
  check_gradients(
      [&](Graph&, const Inputs& v) {
        return adaptive_avg_pool(v[0], {3, 2, 3});
      },
      {grad_x}, "adaptive_avg_pool");
  check_gradients(
      [&](Graph&, const Inputs& v) {
        return adaptive_max_pool(v[0], {3, 2, 3});
      },
      {grad_x}, "adaptive_max_pool");
  // NaN propagates through the depth maximum as through max_pool2d.
  Tensor with_nan = x.clone();
  with_nan.data<double>()[0] = std::numeric_limits<double>::quiet_NaN();
  EXPECT_TRUE(std::isnan(s.run({{vx, with_nan}}, {max_pool3d(vx, window)})[0].element(0)));
  EXPECT_TRUE(
      std::isnan(s.run({{vx, with_nan}}, {adaptive_max_pool(vx, {2, 2, 2})})[0].element(0)));
}

// Dilated max pooling (PyTorch's MaxPool3d dilation) by its definition: window (z, i, j) takes
// the inputs at z s - p + t d in each dim, t < k, inside the input; and its gradient.
TEST(Volumetric, DilatedMaxPoolMatchesItsDefinition) {
  const Shape xs{2, 2, 7, 6, 5};
  const Tensor x = r64(xs, -2, 2, 53);
  const Pool3dOptions window{.kernel_size = {2, 3, 2},
                             .stride = {2, 1, 2},
                             .padding = {1, 1, 0},
                             .ceil_mode = true,
                             .dilation = {2, 2, 3}};
  int64_t out[3];
  for (int d = 0; d < 3; ++d) {
    const int64_t k = window.kernel_size[d], s = window.stride[d], p = window.padding[d];
    const int64_t extent = window.dilation[d] * (k - 1) + 1;
    out[d] = (xs[2 + d] + 2 * p - extent + s - 1) / s + 1;
    if ((out[d] - 1) * s >= xs[2 + d] + p) --out[d];
  }
  std::vector<double> maxima;
  for (int64_t n = 0; n < xs[0]; ++n)
    for (int64_t c = 0; c < xs[1]; ++c)
      for (int64_t z = 0; z < out[0]; ++z)
        for (int64_t i = 0; i < out[1]; ++i)
          for (int64_t j = 0; j < out[2]; ++j) {
            const int64_t at_out[3] = {z, i, j};
            int64_t start[3];
            for (int d = 0; d < 3; ++d) start[d] = at_out[d] * window.stride[d] - window.padding[d];
            double best = -INFINITY;
            for (int64_t a = 0; a < window.kernel_size[0]; ++a)
              for (int64_t b = 0; b < window.kernel_size[1]; ++b)
                for (int64_t e = 0; e < window.kernel_size[2]; ++e) {
                  const int64_t tap[3] = {start[0] + a * window.dilation[0],
                                          start[1] + b * window.dilation[1],
                                          start[2] + e * window.dilation[2]};
                  if (tap[0] < 0 || tap[1] < 0 || tap[2] < 0 || tap[0] >= xs[2] ||
                      tap[1] >= xs[3] || tap[2] >= xs[4])
                    continue;
                  best = std::max(best, at(x, n, c, tap[0], tap[1], tap[2]));
                }
            ASSERT_GT(best, -INFINITY) << "the test's window holds no input";
            maxima.push_back(best);
          }
  Graph g;
  Value vx = g.placeholder("x", f64, {-1, 2, 7, 6, 5});
  const Tensor got = testing::run1(g, max_pool3d(vx, window), {{vx, x}});
  EXPECT_EQ(got.shape(), Shape({2, 2, out[0], out[1], out[2]}));
  testing::expect_near(maxima, got, 0, 0, "dilated max_pool3d");
  check_gradients([&](Graph&, const std::vector<Value>& v) { return max_pool3d(v[0], window); },
                  {r64({1, 2, 6, 5, 7}, -1, 1, 54)}, "dilated max_pool3d");

  // A depth window whose taps fall in the padding and past the input; avg_pool3d has no dilation.
  Value small = g.placeholder("small", f32, {1, 1, 2, 4, 4});
  expect_error<GraphError>(
      [&] {
        max_pool3d(small, {.kernel_size = {2, 1, 1},
                           .stride = {1, 1, 1},
                           .padding = {1, 0, 0},
                           .dilation = {3, 1, 1}});
      },
      {"[max_pool3d] window 0 over a dim of 2 holds no input element (kernel 2, dilation 3, "
       "padding 1)"});
  expect_error<GraphError>(
      [&] {
        avg_pool3d(small, {.kernel_size = {1, 2, 2}, .dilation = {1, 2, 1}});
      },
      {"[avg_pool3d] takes no dilation", "got 1, 2, 1"});
  expect_error<GraphError>(
      [&] {
        max_pool3d(small, {.kernel_size = {1, 2, 2}, .dilation = {0, 1, 1}});
      },
      {"[max_pool3d] window 1, stride 1, padding 0, dilation 0: sizes must be positive"});
}

TEST(Volumetric, LayersAndErrors) {
  Graph g;
  Value x = g.placeholder("x", f32, {-1, 4, 6, 8, 8});
  nn::Sequential net(g, "net");
  net.add<nn::Conv3d>("conv", 4, 6, std::array<int64_t, 3>{3, 3, 3},
                      Conv3dOptions{.padding = {1, 1, 1}});
  net.add<nn::BatchNorm3d>("bn", 6);
  net.add<nn::MaxPool3d>("pool", Pool3dOptions{});
  net.add<nn::InstanceNorm3d>("norm", 6);
  net.add<nn::ConvTranspose3d>("up", 6, 2, std::array<int64_t, 3>{2, 2, 2},
                               Conv3dOptions{.stride = {2, 2, 2}});
  net.add<nn::AvgPool3d>("avg", Pool3dOptions{.kernel_size = {3, 3, 3}, .stride = {1, 1, 1}});
  net.add<nn::AdaptiveMaxPool3d>("adaptive_max", std::array<int64_t, 3>{3, 4, 5});
  net.add<nn::AdaptiveAvgPool3d>("adaptive", std::array<int64_t, 3>{2, 1, 3});
  const Value y = net(x);
  EXPECT_EQ(y.shape(), Shape({-1, 2, 2, 1, 3}));
  const Tensor out = testing::run1(g, y, {{x, Tensor::full(f32, {3, 4, 6, 8, 8}, 0.5)}});
  EXPECT_EQ(out.shape(), Shape({3, 2, 2, 1, 3}));
  EXPECT_EQ(net.parameters().size(), 6u);  // conv, bn, up: weight and bias each; no norm affine

  expect_error<GraphError>(
      [&] {
        conv3d(reshape(x, {-1, 4, 48, 8}), x);
      },
      {"[conv3d] x [?, 4, 48, 8] must be [N, C, D, H, W]"});
  Value w = g.placeholder("w", f32, {2, 3, 3, 3, 3});
  expect_error<GraphError>([&] { conv3d(x, w); },
                           {"[conv3d] x [?, 4, 6, 8, 8] has 4 channels", "takes 3"});
  expect_error<GraphError>(
      [&] {
        conv3d(x, g.placeholder("deep", f32, {2, 4, 9, 1, 1}));
      },
      {"[conv3d]", "shallower than the filter"});
  expect_error<GraphError>(
      [&] {
        conv_transpose3d(x, w, {}, {1, 0, 0});
      },
      {"[conv_transpose3d] output_padding 1 must be in [0, max(stride"});
  expect_error<GraphError>([&] { conv_transpose3d(x, w, {.padding_mode = PadMode::reflect}); },
                           {"[conv_transpose3d] padding_mode must be zeros"});
  expect_error<GraphError>(
      [&] {
        max_pool3d(x, {.kernel_size = {2, 2, 2}, .padding = {2, 0, 0}});
      },
      {"[max_pool3d] window 2, stride 2, padding 2", "at most half the window"});
  expect_error<GraphError>(
      [&] {
        avg_pool3d(x, {.kernel_size = {7, 2, 2}});
      },
      {"[avg_pool3d] a dim of 6 is smaller than the window 7"});
  expect_error<GraphError>(
      [&] {
        adaptive_avg_pool(x, {0, 2});
      },
      {"[adaptive_avg_pool] output size [0, 2] must be positive"});
  expect_error<GraphError>(
      [&] {
        adaptive_max_pool(x, {2, -1});
      },
      {"[adaptive_max_pool] output size [2, -1] must be positive"});
  expect_error<GraphError>(
      [&] {
        adaptive_max_pool(g.placeholder("free", f32, {2, 3, -1, 4}), {2, 2});
      },
      {"[adaptive_max_pool] x [2, 3, ?, 4] must have 2 known positive dims to pool"});
  expect_error<GraphError>(
      [&] {
        nn::AdaptiveMaxPool3d(g, "m3", {1, 1, 1})(reshape(x, {-1, 4, 48, 8}));
      },
      {"[nn] AdaptiveMaxPool3d m3: expects [N, C, D, H, W]"});
  expect_error<GraphError>(
      [&] {
        nn::BatchNorm3d(g, "b3", 4)(reshape(x, {-1, 4, 48, 8}));
      },
      {"[nn] BatchNorm3d b3: expects [N, 4, D, H, W]"});
  expect_error<GraphError>(
      [&] {
        nn::Conv3d(g, "c3", 4, 6, std::array<int64_t, 3>{3, 0, 3});
      },
      {"[nn] Conv3d c3: kernel size 0 must be positive"});
}

}  // namespace
}  // namespace kiln
