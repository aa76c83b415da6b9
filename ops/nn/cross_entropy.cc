// softmax_cross_entropy: loss[i] = log(sum_c exp(z[i, c])) - z[i, y[i]]   (z = logits)
//                        dz[i, c] = dloss[i] * (softmax(z)[i, c] - [c == y[i]])
#include <cmath>

#include "framework/gradient.h"
#include "framework/kernel.h"
#include "ops/array.h"
#include "ops/dtypes.h"
#include "ops/math.h"
#include "ops/nn.h"

namespace kiln {
namespace ops {
namespace {

std::vector<TensorType> infer_cross_entropy(const InferContext& ctx) {
  ctx.expect_dtype(0, {f32, f64, f16, bf16});
  ctx.expect_dtype(1, {i32, i64});
  const Shape& logits = ctx.shape(0);
  const Shape& labels = ctx.shape(1);
  if (logits.rank() != 2) ctx.fail("logits must be [batch, classes], got ", logits);
  if (labels.rank() != 1) ctx.fail("labels must be [batch], got ", labels);
  if (logits[0] >= 0 && labels[0] >= 0 && logits[0] != labels[0])
    ctx.fail("batch sizes differ: logits ", logits, ", labels ", labels);
  if (logits[1] == 0) ctx.fail("logits ", logits, " have no classes");
  return {{ctx.dtype(0), Shape{logits[0] >= 0 ? logits[0] : labels[0]}}};
}

// Reads label i, checking its range (labels are data).
template <typename Index>
int64_t label_at(const KernelContext& ctx, const Index* labels, int64_t i, int64_t classes) {
  int64_t label = labels[i];
  if (label < 0 || label >= classes)
    throw Error(
        str(ctx.where(), ": label ", label, " at position ", i, " is outside [0, ", classes, ")"));
  return label;
}

// kGrad: writes dz given dloss (input 2); otherwise writes the loss.
template <bool kGrad>
void cross_entropy_cpu(KernelContext& ctx) {
  const Tensor& z = ctx.input(0);
  const Tensor& labels = ctx.input(1);
  Tensor& out = ctx.output(0);
  const int64_t batch = z.shape()[0], classes = z.shape()[1];
  auto run = [&](auto tag, auto index_tag) {
    using T = decltype(tag);
    using Index = decltype(index_tag);
    const T* logits = z.data<T>();
    const Index* y = labels.data<Index>();
    T* o = out.data<T>();
    for (int64_t i = 0; i < batch; ++i) label_at(ctx, y, i, classes);  // validate first
    ctx.parallel_for(batch, classes * 4, [&](int64_t b0, int64_t b1) {
      for (int64_t i = b0; i < b1; ++i) {
        const T* row = logits + i * classes;
        T m = row[0];
        for (int64_t c = 1; c < classes; ++c) m = std::max(m, row[c]);
        T s = 0;
        for (int64_t c = 0; c < classes; ++c) s += std::exp(row[c] - m);
        const int64_t label = y[i];
        if constexpr (kGrad) {
          const T g = ctx.input(2).data<T>()[i];
          const T inv = T(1) / s;
          for (int64_t c = 0; c < classes; ++c)
            o[i * classes + c] = g * (std::exp(row[c] - m) * inv - T(c == label));
        } else {
          o[i] = std::log(s) - (row[label] - m);  // (z_y - m) is exact; see softmax.cc
        }
      }
    });
  };
  auto with_index = [&](auto tag) {
    if (labels.dtype() == i32)
      run(tag, int32_t{});
    else
      run(tag, int64_t{});
  };
  dispatch_float(z.dtype(), with_index);
}

KILN_OP(softmax_cross_entropy)
    .precision(Precision::keep_f32)
    .input("logits")
    .input("labels")
    .infer(infer_cross_entropy)
    .kernel(DeviceKind::cpu, cross_entropy_cpu<false>, {f32, f64})
    .grad([](GradContext& c) -> GradList {
      return {
          c.graph().add("softmax_cross_entropy_grad", {c.input(0), c.input(1), c.grad_output()}),
          Value()};
    });

KILN_OP(softmax_cross_entropy_grad)
    .precision(Precision::keep_f32)
    .input("logits")
    .input("labels")
    .input("dloss")
    .infer([](const InferContext& ctx) -> std::vector<TensorType> {
      // The forward op's checks, and dloss shaped like its loss.
      std::vector<TensorType> loss = infer_cross_entropy(ctx);
      ctx.expect_same_dtype(0, 2);
      if (!ctx.shape(2).compatible_with(loss[0].shape))
        ctx.fail("dloss is ", ctx.shape(2), ", the loss is ", loss[0].shape);
      return {ctx.input(0)};
    })
    .kernel(DeviceKind::cpu, cross_entropy_cpu<true>, {f32, f64})
    // dz = g (p - e_y), p = softmax(z), for upstream v (same shape as dz):
    //   d/dz: g p * (v - sum_c(v p))   (softmax's Jacobian applied to g v)
    //   d/dg: sum_c v (p - e_y)         (the op itself with dloss = 1)
    .grad([](GradContext& c) -> GradList {
      Value z = c.input(0), labels = c.input(1), g = c.input(2), v = c.grad_output();
      Value p = softmax(z, -1);
      Value gv = v * expand_dims(g, {1});
      Value dz = p * (gv - sum(gv * p, {1}, true));
      Value unit = c.graph().add("softmax_cross_entropy_grad", {z, labels, full_like(g, 1.0)});
      return {dz, Value(), sum(v * unit, {1})};
    });

}  // namespace
}  // namespace ops

Value softmax_cross_entropy(const Value& logits, const Value& labels) {
  return common_graph("softmax_cross_entropy", {&logits, &labels})
      .add("softmax_cross_entropy", {logits, labels});
}

}  // namespace kiln
