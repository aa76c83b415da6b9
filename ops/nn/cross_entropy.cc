// softmax_cross_entropy against the target t[i] = (1 - e) onehot(y[i]) + e / C (label
// smoothing e, C classes):
//   loss[i] = -sum_c t[i, c] log softmax(z)[i, c] = lse(z[i]) - (1 - e) z[i, y[i]] - e mean_c z[i,
//   c] dz[i, c] = dloss[i] * (softmax(z)[i, c] - t[i, c])
// Rows whose label is ignore_index have loss 0 and gradient 0 (and their label is not checked).
#include <cmath>
#include <utility>
#include <vector>

#include "kiln/framework/gradient.h"
#include "kiln/framework/kernel.h"
#include "kiln/ops/array.h"
#include "kiln/ops/dtypes.h"
#include "kiln/ops/math.h"
#include "kiln/ops/math/vector_math.h"
#include "kiln/ops/nn.h"

namespace kiln {
namespace ops {
namespace {

std::vector<TensorType> infer_cross_entropy(const InferContext& ctx) {
  ctx.expect_dtype(0, {f32, f64, f16, bf16});
  const double smoothing = ctx.attr<double>("label_smoothing");
  if (!(smoothing >= 0 && smoothing <= 1))
    ctx.fail("label_smoothing ", smoothing, " must be in [0, 1]");
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
  if (label == ctx.attr<int64_t>("ignore_index")) return label;
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
    const int64_t ignore = ctx.attr<int64_t>("ignore_index");
    const T smoothing = static_cast<T>(ctx.attr<double>("label_smoothing"));
    const T spread = smoothing / static_cast<T>(classes);
    ctx.parallel_for(batch, classes * 4, [&](int64_t b0, int64_t b1) {
      for (int64_t i = b0; i < b1; ++i) {
        const int64_t label = y[i];
        if (label == ignore) {
          if constexpr (kGrad)
            std::fill(o + i * classes, o + (i + 1) * classes, T(0));
          else
            o[i] = 0;
          continue;
        }
        const T* row = logits + i * classes;
        T m = row[0];
        for (int64_t c = 1; c < classes; ++c) m = std::max(m, row[c]);
        T s = 0, shifted_sum = 0;
        for (int64_t c = 0; c < classes; ++c) {
          s += exp_cpu(row[c] - m);
          shifted_sum += row[c] - m;
        }
        if constexpr (kGrad) {
          const T g = ctx.input(2).data<T>()[i];
          const T inv = T(1) / s;
          for (int64_t c = 0; c < classes; ++c)
            o[i * classes + c] =
                g * (exp_cpu(row[c] - m) * inv - (1 - smoothing) * T(c == label) - spread);
        } else {
          // (z - m) is exact near the maximum; see softmax.cc.
          o[i] = std::log(s) - (1 - smoothing) * (row[label] - m) -
                 smoothing * shifted_sum / static_cast<T>(classes);
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

AttrMap loss_attrs(const Node& node) {
  return {{"ignore_index", node.attr<int64_t>("ignore_index")},
          {"label_smoothing", node.attr<double>("label_smoothing")}};
}

KILN_OP(softmax_cross_entropy)
    .precision(Precision::keep_f32)
    .input("logits")
    .input("labels")
    .attr("ignore_index", int64_t{-100})
    .attr("label_smoothing", 0.0)
    .infer(infer_cross_entropy)
    .kernel(DeviceKind::cpu, cross_entropy_cpu<false>, {f32, f64})
    .grad([](GradContext& c) -> GradList {
      return {c.graph().add("softmax_cross_entropy_grad", {c.input(0), c.input(1), c.grad_output()},
                            loss_attrs(c.node())),
              Value()};
    });

KILN_OP(softmax_cross_entropy_grad)
    .precision(Precision::keep_f32)
    .input("logits")
    .input("labels")
    .input("dloss")
    .attr("ignore_index", int64_t{-100})
    .attr("label_smoothing", 0.0)
    .infer([](const InferContext& ctx) -> std::vector<TensorType> {
      // The forward op's checks, and dloss shaped like its loss.
      std::vector<TensorType> loss = infer_cross_entropy(ctx);
      ctx.expect_same_dtype(0, 2);
      if (!ctx.shape(2).compatible_with(loss[0].shape))
        ctx.fail("dloss is ", ctx.shape(2), ", the loss is ", loss[0].shape);
      return {ctx.input(0)};
    })
    .kernel(DeviceKind::cpu, cross_entropy_cpu<true>, {f32, f64})
    // dz = g (p - t), p = softmax(z), for upstream v (same shape as dz):
    //   d/dz: g p * (v - sum_c(v p))   (softmax's Jacobian applied to g v; 0 on ignored rows)
    //   d/dg: sum_c v (p - t)          (the op itself with dloss = 1)
    .grad([](GradContext& c) -> GradList {
      Value z = c.input(0), labels = c.input(1), g = c.input(2), v = c.grad_output();
      Value p = softmax(z, -1);
      Value kept = cast(
          not_equal(labels, c.graph().scalar(static_cast<double>(c.attr<int64_t>("ignore_index")),
                                             labels.dtype())),
          g.dtype());
      Value gv = v * expand_dims(g * kept, {1});
      Value dz = p * (gv - sum(gv * p, {1}, true));
      Value unit = c.graph().add("softmax_cross_entropy_grad", {z, labels, full_like(g, 1.0)},
                                 loss_attrs(c.node()));
      return {dz, Value(), sum(v * unit, {1})};
    });

}  // namespace
}  // namespace ops

Value softmax_cross_entropy(const Value& logits, const Value& labels, int64_t ignore_index,
                            double label_smoothing) {
  return common_graph("softmax_cross_entropy", {&logits, &labels})
      .add("softmax_cross_entropy", {logits, labels},
           {{"ignore_index", ignore_index}, {"label_smoothing", label_smoothing}});
}

}  // namespace kiln
