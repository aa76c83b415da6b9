// softmax and log_softmax along one axis.
//   softmax:      y = exp(x - m) / s,      m = max x, s = sum exp(x - m)
//                 dx = y * (dy - sum(dy * y))
//   log_softmax:  y = (x - m) - log s   (x - m is exact near the max; x - (m + log s) would
//                 round m + log s to m's precision and lose log s on large logits)
//                 dx = dy - exp(y) * sum(dy)
#include <cmath>

#include "kiln/framework/gradient.h"
#include "kiln/framework/kernel.h"
#include "kiln/ops/dtypes.h"
#include "kiln/ops/math.h"
#include "kiln/ops/math/vector_math.h"
#include "kiln/ops/nn.h"

namespace kiln {
namespace ops {
namespace {

std::vector<TensorType> infer_softmax(const InferContext& ctx) {
  ctx.expect_dtype(0, {f32, f64, f16, bf16});
  if (ctx.shape(0).rank() == 0) ctx.fail("needs rank >= 1, got a scalar");
  ctx.axis(ctx.attr<int64_t>("axis"), ctx.shape(0).rank());
  return {ctx.input(0)};
}

template <bool kLog>
void softmax_cpu(KernelContext& ctx) {
  const Tensor& x = ctx.input(0);
  Tensor& y = ctx.output(0);
  const int64_t axis = normalize_axis(ctx.attr<int64_t>("axis"), x.rank(), ctx.where());
  int64_t outer = 1, n = x.shape()[axis], inner = 1;
  for (int64_t d = 0; d < axis; ++d) outer *= x.shape()[d];
  for (int64_t d = axis + 1; d < x.rank(); ++d) inner *= x.shape()[d];
  auto run = [&](auto tag) {
    using T = decltype(tag);
    const T* in = x.data<T>();
    T* out = y.data<T>();
    ctx.parallel_for(outer * inner, n * 4, [&](int64_t p0, int64_t p1) {
      for (int64_t p = p0; p < p1; ++p) {
        const int64_t base = (p / inner) * n * inner + p % inner;
        T m = -std::numeric_limits<T>::infinity();
        for (int64_t j = 0; j < n; ++j) m = std::max(m, in[base + j * inner]);
        if (!std::isfinite(m)) m = 0;  // all -inf (or inf/NaN): let the math propagate
        T s = 0;
        for (int64_t j = 0; j < n; ++j) {
          T e = exp_cpu(in[base + j * inner] - m);
          if (!kLog) out[base + j * inner] = e;
          s += e;
        }
        if constexpr (kLog) {
          const T log_s = std::log(s);
          for (int64_t j = 0; j < n; ++j)
            out[base + j * inner] = (in[base + j * inner] - m) - log_s;
        } else {
          T inv = T(1) / s;
          for (int64_t j = 0; j < n; ++j) out[base + j * inner] *= inv;
        }
      }
    });
  };
  dispatch_float(x.dtype(), run);
}

KILN_OP(softmax)
    .precision(Precision::keep_f32)
    .input("x")
    .attr("axis", int64_t{-1})
    .infer(infer_softmax)
    .kernel(DeviceKind::cpu, softmax_cpu<false>, {f32, f64})
    .grad([](GradContext& c) -> GradList {
      Value y = c.output(), dy = c.grad_output();
      return {y * (dy - sum(dy * y, {c.attr<int64_t>("axis")}, true))};
    });

KILN_OP(log_softmax)
    .precision(Precision::keep_f32)
    .input("x")
    .attr("axis", int64_t{-1})
    .infer(infer_softmax)
    .kernel(DeviceKind::cpu, softmax_cpu<true>, {f32, f64})
    .grad([](GradContext& c) -> GradList {
      Value y = c.output(), dy = c.grad_output();
      return {dy - exp(y) * sum(dy, {c.attr<int64_t>("axis")}, true)};
    });

}  // namespace
}  // namespace ops

Value softmax(const Value& x, int64_t axis) {
  return common_graph("softmax", {&x}).add("softmax", {x}, {{"axis", axis}});
}
Value log_softmax(const Value& x, int64_t axis) {
  return common_graph("log_softmax", {&x}).add("log_softmax", {x}, {{"axis", axis}});
}

}  // namespace kiln
