// normalize: the statistics step shared by batch, layer, group and RMS norm. Over the M
// elements of `axes` (the other dims, K of them in all, each get their own statistics):
//   center:    mean = sum x / M,  var = sum (x - mean)^2 / M,  rstd = 1 / sqrt(var + eps)
//              y = (x - mean) rstd
//   no center: mean = 0,          rstd = 1 / sqrt(sum x^2 / M + eps),  y = x rstd  (RMS norm)
// With the optional inputs scale and shift (both), y = xhat scale + shift in the same pass: with
// the attribute affine "statistics" they are shaped like the statistics (batch norm's
// per-channel weight and bias: scale[k]); with "elements", like the normalized dims, which must
// be the trailing ones (layer and RMS norm's elementwise weight and bias: scale[b] of row k). With
// the attribute activation "relu" (the matmul_epilogue pass folds in a relu that alone reads y, on
// every device), y = relu(that), relu's own rule: NaN stays NaN, -0 stays -0.
// Outputs y (like x), mean and rstd (shaped like the kept dims). The kept dims must be
// adjacent, so x is [A, K, B] with the normalized elements at (a, k, b) for every a and b:
// batch norm over (N, H, W) of [N, C, H, W] is A = N, K = C, B = H W; layer norm over the last
// dims is A = 1.
//
// Gradient (xhat = (x - mean) rstd; g = dy scale, or dy without scale):
//   dx = rstd (g - mean_M(g) - xhat mean_M(g xhat))   (no center: no mean_M(g) term)
//   dscale = sum(dy xhat),  dshift = sum(dy)   over each group ("statistics"), or over the rows
//                                              for each normalized element ("elements")
// all from one pass's two sums per group (per statistics, mean_M(g) = scale mean_M(dy),
// likewise for g xhat): the normalize_backward op, with outputs dx[, dscale, dshift]. Plus, where
// the statistics' own outputs are used, d mean/dx = 1 / M and d rstd/dx = -rstd^2 xhat / M.
#include <cmath>

#include "kiln/framework/gradient.h"
#include "kiln/framework/kernel.h"
#include "kiln/ops/array.h"
#include "kiln/ops/dtypes.h"
#include "kiln/ops/math.h"
#include "kiln/ops/nn.h"
#include "kiln/ops/nn/normalization.h"
#include "kiln/ops/state.h"

namespace kiln {
namespace ops {

NormLayout norm_layout(const Shape& x, const std::vector<int64_t>& axes) {
  NormLayout layout;
  const int64_t rank = x.rank();
  std::vector<bool> reduced(static_cast<size_t>(rank), false);
  for (int64_t axis : axes) reduced[static_cast<size_t>(axis < 0 ? axis + rank : axis)] = true;
  int64_t first_kept = rank, last_kept = -1;
  for (int64_t d = 0; d < rank; ++d)
    if (!reduced[static_cast<size_t>(d)]) {
      first_kept = std::min(first_kept, d);
      last_kept = d;
    }
  for (int64_t d = 0; d < rank; ++d) {
    if (d < first_kept)
      layout.outer *= x[d];
    else if (d > last_kept)
      layout.inner *= x[d];
    else
      layout.kept *= x[d];
  }
  return layout;
}

namespace {

// Checks the axes (in range, distinct, the other dims adjacent);
// returns the kept dims' shape.
Shape kept_shape(const InferContext& ctx) {
  const Shape& x = ctx.shape(0);
  const auto& axes = ctx.attr<std::vector<int64_t>>("axes");
  if (axes.empty()) ctx.fail("needs at least one axis to normalize over");
  std::vector<bool> reduced(static_cast<size_t>(x.rank()), false);
  for (int64_t axis : axes) {
    const int64_t a = ctx.axis(axis, x.rank());
    if (reduced[static_cast<size_t>(a)]) ctx.fail("axis ", axis, " is listed twice");
    reduced[static_cast<size_t>(a)] = true;
  }
  std::vector<int64_t> kept;
  int64_t last = -2;
  for (int64_t d = 0; d < x.rank(); ++d) {
    if (reduced[static_cast<size_t>(d)]) continue;
    if (last >= 0 && d != last + 1)
      ctx.fail("the dims not normalized must be adjacent; axes ", Shape(axes), " of ", x,
               " leave gaps");
    kept.push_back(x[d]);
    last = d;
  }
  if (ctx.attr<double>("eps") < 0) ctx.fail("eps ", ctx.attr<double>("eps"), " must be >= 0");
  return Shape(std::move(kept));
}

// Inputs [first, first + count) must have x's dtype and the shape `like` (of `what`).
void expect_shaped_like(const InferContext& ctx, int first, int count, const Shape& like,
                        const char* what) {
  for (int i = first; i < first + count; ++i) {
    ctx.expect_same_dtype(0, i);
    if (!ctx.shape(i).compatible_with(like))
      ctx.fail("input ", i, " is ", ctx.shape(i), ", ", what, " are ", like);
  }
}

// The shape of scale and shift: the statistics' (`kept`), or with affine "elements" the
// normalized dims', which must then be x's trailing dims.
Shape affine_shape(const InferContext& ctx, const Shape& kept) {
  const std::string& affine = ctx.attr<std::string>("affine");
  if (affine == "statistics") return kept;
  if (affine != "elements") ctx.fail("affine must be statistics or elements, got '", affine, "'");
  const Shape& x = ctx.shape(0);
  const int64_t first =
      x.rank() - static_cast<int64_t>(ctx.attr<std::vector<int64_t>>("axes").size());
  for (int64_t axis : ctx.attr<std::vector<int64_t>>("axes"))
    if (ctx.axis(axis, x.rank()) < first)
      ctx.fail("affine elements needs the normalized dims last; axes ",
               Shape(ctx.attr<std::vector<int64_t>>("axes")), " of ", x, " are not");
  return Shape(std::vector<int64_t>(x.begin() + first, x.end()));
}

// Inputs x[, scale, shift].
std::vector<TensorType> infer_normalize(const InferContext& ctx) {
  ctx.expect_dtype(0, {f32, f64, f16, bf16});
  const Shape kept = kept_shape(ctx);
  if (ctx.num_inputs() != 1 && ctx.num_inputs() != 3)
    ctx.fail("takes x, or x, scale and shift: got ", ctx.num_inputs(), " inputs");
  expect_shaped_like(ctx, 1, ctx.num_inputs() - 1, affine_shape(ctx, kept),
                     "scale and shift's dims");
  const std::string& act = ctx.attr<std::string>("activation");
  if (act != "none" && act != "relu") ctx.fail("activation must be none or relu, got '", act, "'");
  return {ctx.input(0), {ctx.dtype(0), kept}, {ctx.dtype(0), kept}};
}

// Inputs x, mean, rstd, dy[, scale]; outputs dx[, dscale, dshift], or without input_gradient
// dscale and dshift alone.
std::vector<TensorType> infer_normalize_backward(const InferContext& ctx) {
  ctx.expect_dtype(0, {f32, f64, f16, bf16});
  if (ctx.num_inputs() != 4 && ctx.num_inputs() != 5)
    ctx.fail("takes x, mean, rstd, dy and optionally scale: got ", ctx.num_inputs(), " inputs");
  ctx.expect_same_dtype(0, 3);
  const Shape kept = kept_shape(ctx);
  expect_shaped_like(ctx, 1, 2, kept, "the statistics");
  if (!ctx.shape(3).compatible_with(ctx.shape(0)))
    ctx.fail("dy ", ctx.shape(3), " differs from x ", ctx.shape(0));
  const Shape scale = affine_shape(ctx, kept);
  const bool input_gradient = ctx.attr<bool>("input_gradient");
  if (ctx.num_inputs() == 4) {
    if (!input_gradient) ctx.fail("without input_gradient it needs scale (nothing to compute)");
    return {ctx.input(0)};
  }
  expect_shaped_like(ctx, 4, 1, scale, "scale's dims");
  if (!input_gradient) return {{ctx.dtype(0), scale}, {ctx.dtype(0), scale}};
  return {ctx.input(0), {ctx.dtype(0), scale}, {ctx.dtype(0), scale}};
}

// Calls fn(base) for each of the outer rows of statistics group k: the group's elements are
// [base, base + inner) of every row, in a fixed order.
template <typename Fn>
void for_group_rows(const NormLayout& l, int64_t k, Fn&& fn) {
  for (int64_t a = 0; a < l.outer; ++a) fn((a * l.kept + k) * l.inner);
}

// Sums accumulate in double (M reaches millions in batch norm), in SIMD lanes within a row
// (the order depends on the vector width the build targets, never on the thread count).
template <typename T>
void normalize_typed(KernelContext& ctx) {
  const Tensor& x = ctx.input(0);
  const NormLayout l = norm_layout(x.shape(), ctx.attr<std::vector<int64_t>>("axes"));
  const bool center = ctx.attr<bool>("center");
  const double eps = ctx.attr<double>("eps");
  const T* px = x.data<T>();
  T* y = ctx.output(0).data<T>();
  T* mean_out = ctx.output(1).data<T>();
  T* rstd_out = ctx.output(2).data<T>();
  const bool affine = ctx.num_inputs() == 3;
  // With affine "elements" (outer is 1): scale[b] and shift[b] for element b of every group.
  const bool per_element = affine && ctx.attr<std::string>("affine") == "elements";
  const T* scale = affine ? ctx.input(1).data<T>() : nullptr;
  const T* shift = affine ? ctx.input(2).data<T>() : nullptr;
  const bool relu = ctx.attr<std::string>("activation") == "relu";
  const int64_t inner = l.inner;
  const double count = static_cast<double>(l.outer * l.inner);
  ctx.parallel_for(l.kept, l.outer * l.inner * 4, [&](int64_t k0, int64_t k1) {
    for (int64_t k = k0; k < k1; ++k) {
      double mean = 0;
      if (center) {
        for_group_rows(l, k, [&](int64_t base) {
          const T* row = px + base;
#pragma omp simd reduction(+ : mean)
          for (int64_t b = 0; b < inner; ++b) mean += static_cast<double>(row[b]);
        });
        mean /= count;
      }
      double squares = 0;
      for_group_rows(l, k, [&](int64_t base) {
        const T* row = px + base;
#pragma omp simd reduction(+ : squares)
        for (int64_t b = 0; b < inner; ++b) {
          const double d = static_cast<double>(row[b]) - mean;
          squares += d * d;
        }
      });
      const double rstd = 1 / std::sqrt(squares / count + eps);
      const T m = static_cast<T>(mean), r = static_cast<T>(rstd);
      // y = (x - m) r s + t: the rounded statistics, as the unfused ops would use them.
      const T s = affine && !per_element ? scale[k] : T(1);
      const T t = affine && !per_element ? shift[k] : T(0), rs = r * s;
      for_group_rows(l, k, [&](int64_t base) {
        const T* row = px + base;
        T* out = y + base;
        if (per_element)
          for (int64_t b = 0; b < inner; ++b) out[b] = (row[b] - m) * r * scale[b] + shift[b];
        else if (affine)
          for (int64_t b = 0; b < inner; ++b) out[b] = (row[b] - m) * rs + t;
        else
          for (int64_t b = 0; b < inner; ++b) out[b] = (row[b] - m) * r;
        if (relu)
          for (int64_t b = 0; b < inner; ++b) out[b] = out[b] < T(0) ? T(0) : out[b];
      });
      mean_out[k] = m;
      rstd_out[k] = r;
    }
  });
}

// Rows per block of normalize_backward with affine "elements": each block sums its rows' dscale
// and dshift terms apart, and the blocks' sums are added in order, so the result does not depend
// on the number of threads.
constexpr int64_t kElementRowBlock = 64;

// normalize_backward with affine "elements": x is [rows, inner] (outer is 1); g = dy scale[b].
template <typename T>
void normalize_backward_per_element(KernelContext& ctx, const NormLayout& l, bool center) {
  const T* px = ctx.input(0).data<T>();
  const T* mean = ctx.input(1).data<T>();
  const T* rstd = ctx.input(2).data<T>();
  const T* dy = ctx.input(3).data<T>();
  const T* scale = ctx.input(4).data<T>();
  const bool input_gradient = ctx.attr<bool>("input_gradient");
  T* dx = input_gradient ? ctx.output(0).data<T>() : nullptr;
  const int64_t rows = l.kept, inner = l.inner;
  const double count = static_cast<double>(inner);
  const int64_t blocks = (rows + kElementRowBlock - 1) / kElementRowBlock;
  // Block j's sums of dy xhat and of dy: partial[2 j inner + b] and partial[(2 j + 1) inner + b].
  std::vector<T> partial(static_cast<size_t>(2 * std::max<int64_t>(blocks, 1) * inner), T(0));
  ctx.parallel_for(blocks, kElementRowBlock * inner * 8, [&](int64_t j0, int64_t j1) {
    for (int64_t j = j0; j < j1; ++j) {
      T* dscale_sum = partial.data() + 2 * j * inner;
      T* dshift_sum = dscale_sum + inner;
      for (int64_t k = j * kElementRowBlock; k < std::min(rows, (j + 1) * kElementRowBlock); ++k) {
        const T m = center ? mean[k] : T(0), r = rstd[k];
        const T* row = px + k * inner;
        const T* drow = dy + k * inner;
        for (int64_t b = 0; b < inner; ++b) {
          dscale_sum[b] += drow[b] * ((row[b] - m) * r);
          dshift_sum[b] += drow[b];
        }
        if (dx == nullptr) continue;
        // The two sums in kLanes lanes each (so the loop vectorizes without reassociating,
        // under GCC and clang alike), then across them.
        constexpr int64_t kLanes = 8;
        double lanes_g[kLanes] = {}, lanes_g_xhat[kLanes] = {};
        int64_t b = 0;
        for (; b + kLanes <= inner; b += kLanes)
          for (int64_t l = 0; l < kLanes; ++l) {
            const T xhat = (row[b + l] - m) * r, g = drow[b + l] * scale[b + l];
            lanes_g[l] += static_cast<double>(g);
            lanes_g_xhat[l] += static_cast<double>(g) * static_cast<double>(xhat);
          }
        double sum_g = 0, sum_g_xhat = 0;
        for (; b < inner; ++b) {
          const T xhat = (row[b] - m) * r, g = drow[b] * scale[b];
          sum_g += static_cast<double>(g);
          sum_g_xhat += static_cast<double>(g) * static_cast<double>(xhat);
        }
        for (int64_t l = 0; l < kLanes; ++l) sum_g += lanes_g[l], sum_g_xhat += lanes_g_xhat[l];
        // dx = r (g - mean(g) - xhat mean(g xhat)).
        const T mean_g = center ? static_cast<T>(sum_g / count) : T(0);
        const T mean_g_xhat = static_cast<T>(sum_g_xhat / count);
        T* out = dx + k * inner;
        for (int64_t b = 0; b < inner; ++b)
          out[b] = r * (drow[b] * scale[b] - mean_g - (row[b] - m) * r * mean_g_xhat);
      }
    }
  });
  T* dscale = ctx.output(input_gradient ? 1 : 0).data<T>();
  T* dshift = ctx.output(input_gradient ? 2 : 1).data<T>();
  std::copy_n(partial.data(), inner, dscale);
  std::copy_n(partial.data() + inner, inner, dshift);
  for (int64_t j = 1; j < blocks; ++j)
    for (int64_t b = 0; b < inner; ++b) {
      dscale[b] += partial[2 * j * inner + b];
      dshift[b] += partial[(2 * j + 1) * inner + b];
    }
}

template <typename T>
void normalize_backward_typed(KernelContext& ctx) {
  const Tensor& x = ctx.input(0);
  const NormLayout l = norm_layout(x.shape(), ctx.attr<std::vector<int64_t>>("axes"));
  const bool center = ctx.attr<bool>("center");
  const bool affine = ctx.num_inputs() == 5;
  if (affine && ctx.attr<std::string>("affine") == "elements")
    return normalize_backward_per_element<T>(ctx, l, center);
  const T* px = x.data<T>();
  const T* mean = ctx.input(1).data<T>();
  const T* rstd = ctx.input(2).data<T>();
  const T* dy = ctx.input(3).data<T>();
  const bool input_gradient = ctx.attr<bool>("input_gradient");  // else affine (inference)
  T* dx = input_gradient ? ctx.output(0).data<T>() : nullptr;
  const T* scale = affine ? ctx.input(4).data<T>() : nullptr;
  T* dscale = affine ? ctx.output(input_gradient ? 1 : 0).data<T>() : nullptr;
  T* dshift = affine ? ctx.output(input_gradient ? 2 : 1).data<T>() : nullptr;
  const int64_t inner = l.inner;
  const double count = static_cast<double>(l.outer * l.inner);
  ctx.parallel_for(l.kept, l.outer * l.inner * 6, [&](int64_t k0, int64_t k1) {
    for (int64_t k = k0; k < k1; ++k) {
      const T m = center ? mean[k] : T(0), r = rstd[k], s = affine ? scale[k] : T(1);
      double sum_dy = 0, sum_dy_xhat = 0;
      for_group_rows(l, k, [&](int64_t base) {
        const T* row = px + base;
        const T* drow = dy + base;
#pragma omp simd reduction(+ : sum_dy, sum_dy_xhat)
        for (int64_t b = 0; b < inner; ++b) {
          sum_dy += static_cast<double>(drow[b]);
          sum_dy_xhat += static_cast<double>(drow[b]) * static_cast<double>((row[b] - m) * r);
        }
      });
      if (affine) {
        dscale[k] = static_cast<T>(sum_dy_xhat);
        dshift[k] = static_cast<T>(sum_dy);
      }
      if (dx == nullptr) continue;
      // dx = r s (dy - mean(dy) - xhat mean(dy xhat)): the sums of g = dy s are s times dy's.
      const T mean_dy = center ? static_cast<T>(sum_dy / count) : T(0);
      const T mean_dy_xhat = static_cast<T>(sum_dy_xhat / count);
      const T rs = r * s;
      for_group_rows(l, k, [&](int64_t base) {
        const T* row = px + base;
        const T* drow = dy + base;
        T* out = dx + base;
        for (int64_t b = 0; b < inner; ++b)
          out[b] = rs * (drow[b] - mean_dy - (row[b] - m) * r * mean_dy_xhat);
      });
    }
  });
}

void normalize_cpu(KernelContext& ctx) {
  dispatch_float(ctx.input(0).dtype(), [&](auto tag) { normalize_typed<decltype(tag)>(ctx); });
}
void normalize_backward_cpu(KernelContext& ctx) {
  dispatch_float(ctx.input(0).dtype(),
                 [&](auto tag) { normalize_backward_typed<decltype(tag)>(ctx); });
}

// The statistics broadcast back against x: kept dims in place, normalized dims of size 1.
Value spread(const Value& stat, const Value& x, const std::vector<int64_t>& axes) {
  std::vector<int64_t> positive;
  for (int64_t axis : axes) positive.push_back(axis < 0 ? axis + x.shape().rank() : axis);
  return expand_dims(stat, positive);
}

KILN_OP(normalize)
    .precision(Precision::keep_f32)
    .input("x")
    .variadic_input("scale_shift", 0)
    .attr("axes", AttrType::integers)
    .attr("eps", 1e-5)
    .attr("center", true)
    .attr("activation", std::string("none"))
    .attr("affine", std::string("statistics"))
    .infer(infer_normalize)
    .kernel(DeviceKind::cpu, normalize_cpu, {f32, f64})
    .grad([](GradContext& c) -> GradList {
      const auto& axes = c.attr<std::vector<int64_t>>("axes");
      const bool affine = c.num_inputs() == 3;
      const bool relu = c.attr<std::string>("activation") == "relu";
      Value x = c.input(0), mean = c.output(1), rstd = c.output(2);
      Value dx, dscale, dshift;
      // x's gradient only where it is used (a layer norm of a graph input: the parameters'
      // gradients alone, as PyTorch's output mask does).
      const bool want_dx = c.wants_grad_input(0);
      if (!want_dx && !affine) return {Value()};
      if (c.has_grad_output(0)) {
        // relu's gradient first (y > 0 exactly where its input is > 0), as matmul_bias's.
        Value dy = c.grad_output(0);
        if (relu)
          dy = where(greater(c.output(0), c.graph().scalar(0, dy.dtype())), dy,
                     c.graph().scalar(0, dy.dtype()));
        std::vector<Value> inputs{x, mean, rstd, dy};
        if (affine) inputs.push_back(c.input(1));
        std::vector<Value> grads = c.graph().add_node("normalize_backward", inputs,
                                                      {{"axes", axes},
                                                       {"eps", c.attr<double>("eps")},
                                                       {"center", c.attr<bool>("center")},
                                                       {"affine", c.attr<std::string>("affine")},
                                                       {"input_gradient", want_dx}});
        if (!want_dx) return {Value(), grads[0], grads[1]};
        dx = grads[0];
        if (affine) dscale = grads[1], dshift = grads[2];
      }
      if (!want_dx) return {Value(), dscale, dshift};
      auto accumulate = [&](const Value& term) { dx = dx.defined() ? dx + term : term; };
      Value inv_count = reciprocal_count(x, mean);
      if (c.has_grad_output(1) && c.attr<bool>("center"))
        accumulate(broadcast_like(spread(c.grad_output(1) * inv_count, x, axes), x));
      if (c.has_grad_output(2)) {
        // y is xhat only without the affine step and the activation.
        Value xhat =
            affine || relu ? (x - spread(mean, x, axes)) * spread(rstd, x, axes) : c.output(0);
        Value scale = -(c.grad_output(2) * rstd * rstd * inv_count);
        accumulate(spread(scale, x, axes) * xhat);
      }
      if (!affine) return {dx};
      return {dx, dscale, dshift};
    });

KILN_OP(normalize_backward)
    .precision(Precision::keep_f32)
    .input("x")
    .input("mean")
    .input("rstd")
    .input("dy")
    .variadic_input("scale", 0)
    .attr("axes", AttrType::integers)
    .attr("eps", 1e-5)
    .attr("center", true)
    .attr("affine", std::string("statistics"))
    .attr("input_gradient", true)
    .infer(infer_normalize_backward)
    .kernel(DeviceKind::cpu, normalize_backward_cpu, {f32, f64});

}  // namespace

Value reciprocal_count(const Value& x, const Value& stats) {
  return numel(stats, x.dtype()) / numel(x, x.dtype());
}

}  // namespace ops

Normalized normalize(const Value& x, const Axes& axes, double eps, bool center, const Value& scale,
                     const Value& shift) {
  Graph& g = common_graph("normalize", {&x});
  for (const Value* v : {&scale, &shift})
    if (v->defined()) common_graph("normalize", {&x, v});
  std::vector<Value> inputs{x};
  if (scale.defined() || shift.defined()) {
    // The op takes both: the one not given is the identity's (1 or 0, like the other).
    inputs.push_back(scale.defined() ? scale : ones_like(shift));
    inputs.push_back(shift.defined() ? shift : zeros_like(scale));
  }
  std::vector<Value> out =
      g.add_node("normalize", inputs, {{"axes", axes.list()}, {"eps", eps}, {"center", center}});
  return {out[0], out[1], out[2]};
}

}  // namespace kiln

// ---- The normalization functions: normalize, then the affine transform.
namespace kiln {
namespace {

// v [C] shaped to broadcast along axis 1 of a rank-`rank` tensor: [1, C, 1, ...].
Value per_channel(const Value& v, int64_t rank) {
  std::vector<int64_t> axes{0};
  for (int64_t d = 2; d < rank; ++d) axes.push_back(d);
  return expand_dims(v, axes);
}

Value affine(Value y, const Value& weight, const Value& bias) {
  if (weight.defined()) y = y * weight;
  if (bias.defined()) y = y + bias;
  return y;
}

std::vector<int64_t> last_axes(const char* fn, const Value& x, int64_t count) {
  const int64_t rank = x.shape().rank();
  if (count < 1 || count > rank)
    throw GraphError(
        str(fn, ": normalized_dims ", count, " must be in [1, ", rank, "] for x ", x.shape()));
  std::vector<int64_t> axes;
  for (int64_t d = rank - count; d < rank; ++d) axes.push_back(d);
  return axes;
}

// Checks x is [N, C, ...] with known C; returns C.
int64_t channels_of(const char* fn, const Value& x) {
  if (x.shape().rank() < 2 || x.shape()[1] < 0)
    throw GraphError(str(fn, ": x must be [N, C, ...] with known C, got ", x.shape()));
  return x.shape()[1];
}

// x normalized over its last dims `axes`, then * weight + bias (each optional). Where they are
// shaped exactly like those dims (as PyTorch requires), in the same op (affine "elements": one
// pass forward and backward, and their gradients from it); otherwise broadcast by mul and add.
Value normalize_last_dims(const char* fn, const Value& x, const std::vector<int64_t>& axes,
                          double eps, bool center, const Value& weight, const Value& bias) {
  const Shape& shape = x.shape();
  const Shape dims(
      std::vector<int64_t>(shape.end() - static_cast<int64_t>(axes.size()), shape.end()));
  bool fits = weight.defined() || bias.defined();
  for (const Value* v : {&weight, &bias})
    if (v->defined()) fits &= dims.is_known() && v->shape() == dims && v->dtype() == x.dtype();
  if (!fits) return affine(normalize(x, axes, eps, center).y, weight, bias);
  Graph& g = common_graph(fn, {&x});
  for (const Value* v : {&weight, &bias})
    if (v->defined()) common_graph(fn, {&x, v});
  std::vector<Value> inputs{x, weight.defined() ? weight : ones_like(bias),
                            bias.defined() ? bias : zeros_like(weight)};
  return g.add_node(
      "normalize", inputs,
      {{"axes", axes}, {"eps", eps}, {"center", center}, {"affine", std::string("elements")}})[0];
}

}  // namespace

Value layer_norm(const Value& x, int64_t normalized_dims, const Value& weight, const Value& bias,
                 double eps) {
  return normalize_last_dims("layer_norm", x, last_axes("layer_norm", x, normalized_dims), eps,
                             true, weight, bias);
}

Value rms_norm(const Value& x, int64_t normalized_dims, const Value& weight, double eps) {
  return normalize_last_dims("rms_norm", x, last_axes("rms_norm", x, normalized_dims), eps, false,
                             weight, Value());
}

namespace {

// x [N, C, ...] normalized over each group of C / groups channels and every position: x seen
// as [N, groups, C / groups * positions], y reshaped back like x; mean and rstd [N, groups].
Normalized normalize_groups(const char* fn, const Value& x, int64_t groups, double eps) {
  int64_t per_group = x.shape()[1] / groups;
  for (int64_t d = 2; d < x.shape().rank(); ++d) {
    if (x.shape()[d] < 0)
      throw GraphError(str(fn, ": x ", x.shape(), " needs known dims after the batch"));
    per_group *= x.shape()[d];
  }
  Normalized n = normalize(reshape(x, Shape{-1, groups, per_group}), {2}, eps, true);
  n.y = reshape_like(n.y, x);
  return n;
}

// y * weight + bias per channel (each optional).
Value channel_affine(const Value& y, const Value& weight, const Value& bias) {
  const int64_t rank = y.shape().rank();
  return affine(y, weight.defined() ? per_channel(weight, rank) : Value(),
                bias.defined() ? per_channel(bias, rank) : Value());
}

}  // namespace

Value group_norm(const Value& x, int64_t groups, const Value& weight, const Value& bias,
                 double eps) {
  const int64_t channels = channels_of("group_norm", x);
  if (groups < 1 || channels % groups != 0)
    throw GraphError(
        str("group_norm: ", channels, " channels do not split into ", groups, " groups"));
  return channel_affine(normalize_groups("group_norm", x, groups, eps).y, weight, bias);
}

namespace {

// Evaluation with running statistics: (x - running_mean) / sqrt(running_var + eps) per
// channel, then the affine.
Value normalize_by_running(const Value& x, const Value& running_mean, const Value& running_var,
                           const Value& weight, const Value& bias, double eps) {
  const int64_t rank = x.shape().rank();
  const Value y =
      (x - per_channel(running_mean, rank)) * per_channel(rsqrt(running_var + eps), rank);
  return channel_affine(y, weight, bias);
}

// y, once the running statistics have moved `momentum` of the way toward mean and var ([C]):
// running = (1 - momentum) running + momentum new.
Value update_running(const Value& y, const Value& running_mean, const Value& running_var,
                     const Value& mean, const Value& var, double momentum) {
  const Value new_mean = assign(running_mean, running_mean * (1 - momentum) + mean * momentum);
  const Value new_var = assign(running_var, running_var * (1 - momentum) + var * momentum);
  return after(y, {new_mean, new_var});
}

// The arguments batch_norm and instance_norm share: every per-channel value given is [C], the
// running statistics come both or neither, momentum is in [0, 1]. Returns C.
int64_t check_norm_arguments(const char* fn, const Value& x, const Value& running_mean,
                             const Value& running_var, const Value& weight, const Value& bias,
                             double momentum) {
  const int64_t channels = channels_of(fn, x);
  for (const Value* v : {&running_mean, &running_var, &weight, &bias})
    if (v->defined() && v->shape() != Shape{channels})
      throw GraphError(str(fn, ": ", v->name(), " is ", v->shape(), ", x ", x.shape(), " has ",
                           channels, " channels"));
  if (running_mean.defined() != running_var.defined())
    throw GraphError(str(fn, ": give both running statistics or neither"));
  if (!(momentum >= 0 && momentum <= 1))
    throw GraphError(str(fn, ": momentum ", momentum, " must be in [0, 1]"));
  return channels;
}

}  // namespace

namespace {

// y, once the running statistics have moved toward the batch's mean and (unbiased) var [C]: by
// `momentum`, or with `num_batches_tracked` by 1 / (batches so far).
Value update_batch_running(const Value& y, const Value& running_mean, const Value& running_var,
                           const Value& mean, const Value& var, double momentum,
                           const Value& num_batches_tracked) {
  if (!num_batches_tracked.defined())
    return update_running(y, running_mean, running_var, mean, var, momentum);
  // The cumulative average: the count after this batch, read from its assign_add, so the
  // factor 1 / count sees this batch counted.
  const Value counted = assign_add(num_batches_tracked, y.graph()->scalar(1, i64));
  const Value factor = 1.0 / cast(counted, y.dtype());
  const Value new_mean = assign(running_mean, running_mean * (1.0 - factor) + mean * factor);
  const Value new_var = assign(running_var, running_var * (1.0 - factor) + var * factor);
  return after(y, {new_mean, new_var});
}

// Training batch norm by statistics that `combine` makes of this batch's (SyncBatchNorm). Each
// part's mean and M2 come from its own elements; the combination (Chan et al.'s parallel
// variance) is the caller's: for parts a, b, M2 = M2_a + M2_b + n_a n_b / n (mean_a - mean_b)^2.
Value batch_norm_combined(const Value& x, const Value& running_mean, const Value& running_var,
                          const Value& weight, const Value& bias, double momentum, double eps,
                          const Value& num_batches_tracked, const CombineStatistics& combine) {
  const int64_t rank = x.shape().rank(), channels = x.shape()[1];
  std::vector<int64_t> axes{0};
  for (int64_t d = 2; d < rank; ++d) axes.push_back(d);
  const Value local_mean = mean(x, axes, /*keepdims=*/true);
  BatchStatistics local{numel(x, x.dtype()) / static_cast<double>(channels),
                        reshape(local_mean, Shape{channels}), sum(square(x - local_mean), axes)};
  const BatchStatistics all = combine(local);
  if (!all.count.defined() || !all.mean.defined() || !all.m2.defined() ||
      all.count.shape() != Shape{} || all.mean.shape() != Shape{channels} ||
      all.m2.shape() != Shape{channels})
    throw GraphError(str("batch_norm: the combined statistics must be a count [] and mean and m2 [",
                         channels, "]"));
  const Value var = all.m2 / all.count;
  const Value y = (x - per_channel(all.mean, rank)) * per_channel(rsqrt(var + eps), rank);
  const Value out = channel_affine(y, weight, bias);
  if (!running_mean.defined()) return out;
  Graph& g = *x.graph();
  // The running variance unbiased over every combined element, as PyTorch's SyncBatchNorm.
  return update_batch_running(out, running_mean, running_var, g.add("stop_gradient", {all.mean}),
                              g.add("stop_gradient", {all.m2 / (all.count - 1.0)}), momentum,
                              num_batches_tracked);
}

}  // namespace

Value batch_norm(const Value& x, const Value& running_mean, const Value& running_var,
                 const Value& weight, const Value& bias, bool training, double momentum, double eps,
                 const Value& num_batches_tracked, const CombineStatistics& combine) {
  check_norm_arguments("batch_norm", x, running_mean, running_var, weight, bias, momentum);
  if (num_batches_tracked.defined()) {
    if (!running_mean.defined())
      throw GraphError("batch_norm: num_batches_tracked without running statistics to average");
    if (num_batches_tracked.dtype() != i64 || num_batches_tracked.shape() != Shape{})
      throw GraphError(str("batch_norm: num_batches_tracked must be an i64 scalar, got ",
                           num_batches_tracked.dtype(), num_batches_tracked.shape()));
  }
  const int64_t rank = x.shape().rank();
  if (combine && (training || !running_mean.defined())) {
    if (x.shape()[1] < 0)
      throw GraphError(str("batch_norm: x ", x.shape(), " needs known channels"));
    return batch_norm_combined(x, running_mean, running_var, weight, bias, momentum, eps,
                               num_batches_tracked, combine);
  }
  if (training || !running_mean.defined()) {
    std::vector<int64_t> axes{0};
    for (int64_t d = 2; d < rank; ++d) axes.push_back(d);
    // The per-channel weight and bias are normalize's scale and shift: one pass forward, and
    // their gradients come from the sums the backward pass makes anyway.
    const Normalized n = normalize(x, axes, eps, true, weight, bias);
    if (!running_mean.defined() || !training) return n.y;
    // The batch variance unbiased (M / (M - 1)) as PyTorch keeps it; var = 1 / rstd^2 - eps.
    const Value count = numel(x, x.dtype()) / numel(n.mean, x.dtype());
    const Value mean = x.graph()->add("stop_gradient", {n.mean});
    const Value rstd = x.graph()->add("stop_gradient", {n.rstd});
    const Value var = (1.0 / (rstd * rstd) - eps) * (count / (count - 1.0));
    return update_batch_running(n.y, running_mean, running_var, mean, var, momentum,
                                num_batches_tracked);
  }
  return normalize_by_running(x, running_mean, running_var, weight, bias, eps);
}

Value instance_norm(const Value& x, const Value& running_mean, const Value& running_var,
                    const Value& weight, const Value& bias, bool use_input_stats, double momentum,
                    double eps) {
  const int64_t channels =
      check_norm_arguments("instance_norm", x, running_mean, running_var, weight, bias, momentum);
  const int64_t rank = x.shape().rank();
  if (!use_input_stats && !running_mean.defined())
    throw GraphError("instance_norm: without the input's statistics, running ones are needed");
  if (!use_input_stats)
    return normalize_by_running(x, running_mean, running_var, weight, bias, eps);
  // A group per channel: group_norm's normalization, whose statistics also move the running
  // ones (PyTorch's update: toward the mean over the examples of the instance statistics, the
  // variances unbiased, S / (S - 1) over S positions; var = 1 / rstd^2 - eps).
  const Normalized n = normalize_groups("instance_norm", x, channels, eps);
  const Value y = channel_affine(n.y, weight, bias);
  if (!running_mean.defined()) return y;
  int64_t positions = 1;
  for (int64_t d = 2; d < rank; ++d) positions *= x.shape()[d];
  const double unbiased = positions > 1 ? static_cast<double>(positions) / (positions - 1) : 1.0;
  const Value plane_mean = x.graph()->add("stop_gradient", {n.mean});
  const Value plane_rstd = x.graph()->add("stop_gradient", {n.rstd});
  const Value average_mean = mean(plane_mean, {0});
  const Value average_var = mean((1.0 / (plane_rstd * plane_rstd) - eps) * unbiased, {0});
  return update_running(y, running_mean, running_var, average_mean, average_var, momentum);
}

}  // namespace kiln
