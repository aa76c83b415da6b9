// ctc_loss: the connectionist temporal classification loss of each sequence (PyTorch's
// F.ctc_loss with reduction "none"), and ctc_loss_grad, its gradient with respect to the log
// probabilities. The recursions are in ctc.h. Targets are padded [N, S] or concatenated [L]
// (PyTorch's two batched forms). The forward op's second output is alpha (f32 for 16-bit log
// probabilities; -inf past each sequence's steps and positions), which the gradient reads back
// instead of sweeping the sequences again (PyTorch keeps its log_alpha alike): [N, T, 2 S + 1]
// for padded targets, each sequence's [T, 2 L_n + 1] packed one after another, T (2 L + N)
// entries, for concatenated ones (CtcLayout).
#include <algorithm>
#include <cmath>
#include <limits>
#include <vector>

#include "kiln/framework/gradient.h"
#include "kiln/framework/kernel.h"
#include "kiln/ops/array.h"
#include "kiln/ops/dtypes.h"
#include "kiln/ops/losses.h"
#include "kiln/ops/math.h"
#include "kiln/ops/nn.h"
#include "kiln/ops/nn/ctc.h"

namespace kiln {
namespace ops {
namespace {

// log_probs [T, N, C], targets [N, S] (padded) or [L] (concatenated), input and target lengths
// [N], all three i64.
std::vector<TensorType> infer_ctc_loss(const InferContext& ctx) {
  ctx.expect_dtype(0, {f32, f64, f16, bf16});
  for (int i : {1, 2, 3}) ctx.expect_dtype(i, {i64});
  const Shape& log_probs = ctx.shape(0);
  const Shape& targets = ctx.shape(1);
  if (log_probs.rank() != 3) ctx.fail("log_probs must be [time, batch, classes], got ", log_probs);
  if (targets.rank() != 1 && targets.rank() != 2)
    ctx.fail("targets must be [batch, longest target] (padded) or [sum of target lengths] ",
             "(concatenated), got ", targets);
  const bool concatenated = targets.rank() == 1;
  int64_t batch = log_probs[1];
  const auto agree = [&](int64_t n, const char* what, const Shape& shape) {
    if (n >= 0 && batch >= 0 && n != batch)
      ctx.fail("batch sizes differ: log_probs ", log_probs, ", ", what, " ", shape);
    if (batch < 0) batch = n;
  };
  if (!concatenated) agree(targets[0], "targets", targets);
  for (int i : {2, 3}) {
    const Shape& lengths = ctx.shape(i);
    const char* what = i == 2 ? "input_lengths" : "target_lengths";
    if (lengths.rank() != 1) ctx.fail(what, " must be [batch], got ", lengths);
    agree(lengths[0], what, lengths);
  }
  const int64_t blank = ctx.attr<int64_t>("blank");
  if (blank < 0 || (log_probs[2] >= 0 && blank >= log_probs[2]))
    ctx.fail("blank ", blank, " is not a class of log_probs ", log_probs);
  // alpha: [batch, time, 2 S + 1] padded, [time (2 L + batch)] concatenated.
  const DType alpha_dtype = ctx.dtype(0) == f64 ? f64 : f32;
  if (concatenated) {
    const bool known = log_probs[0] >= 0 && targets[0] >= 0 && batch >= 0;
    return {{ctx.dtype(0), Shape{batch}},
            {alpha_dtype,
             Shape{known ? ctx.checked_mul(log_probs[0],
                                           ctx.checked_add(ctx.checked_mul(2, targets[0]), batch))
                         : -1}}};
  }
  const int64_t widest = targets[1] >= 0 ? ctx.checked_add(ctx.checked_mul(2, targets[1]), 1) : -1;
  return {{ctx.dtype(0), Shape{batch}}, {alpha_dtype, Shape{batch, log_probs[0], widest}}};
}

// Checks what the kernels will read (lengths and labels are data), naming the sequence.
void check_ctc_data(const KernelContext& ctx) {
  const Shape& shape = ctx.input(0).shape();
  const int64_t time = shape[0], batch = shape[1], classes = shape[2];
  const Shape& targets_shape = ctx.input(1).shape();
  const bool concatenated = targets_shape.rank() == 1;
  const int64_t blank = ctx.attr<int64_t>("blank");
  if (blank >= classes)
    throw Error(str(ctx.where(), ": blank ", blank, " is not a class of log_probs ", shape));
  const int64_t* targets = ctx.input(1).data<int64_t>();
  const int64_t* input_lengths = ctx.input(2).data<int64_t>();
  const int64_t* target_lengths = ctx.input(3).data<int64_t>();
  int64_t start = 0;  // where sequence n's labels start
  for (int64_t n = 0; n < batch; ++n) {
    const int64_t first = concatenated ? start : n * targets_shape[1];
    if (input_lengths[n] < 0 || input_lengths[n] > time)
      throw Error(str(ctx.where(), ": input length ", input_lengths[n], " of sequence ", n,
                      " is outside [0, ", time, "] (log_probs ", shape, ")"));
    if (!concatenated && (target_lengths[n] < 0 || target_lengths[n] > targets_shape[1]))
      throw Error(str(ctx.where(), ": target length ", target_lengths[n], " of sequence ", n,
                      " is outside [0, ", targets_shape[1], "] (targets ", targets_shape, ")"));
    if (concatenated && (target_lengths[n] < 0 || target_lengths[n] > targets_shape[0] - start))
      throw Error(str(ctx.where(), ": target length ", target_lengths[n], " of sequence ", n,
                      " is outside [0, ", targets_shape[0] - start, "]: the ", targets_shape[0],
                      " concatenated labels less the ", start, " of the sequences before it"));
    for (int64_t i = 0; i < target_lengths[n]; ++i) {
      const int64_t label = targets[first + i];
      if (label == blank)
        throw Error(str(ctx.where(), ": label ", label, " at position ", i, " of sequence ", n,
                        " is the blank"));
      if (label < 0 || label >= classes)
        throw Error(str(ctx.where(), ": label ", label, " at position ", i, " of sequence ", n,
                        " is outside [0, ", classes, ")"));
    }
    start += target_lengths[n];
  }
  if (concatenated && start != targets_shape[0])
    throw Error(str(ctx.where(), ": the target lengths sum to ", start, ", but the concatenated ",
                    "targets hold ", targets_shape[0], " labels (they must be equal)"));
}

// What every CTC kernel reads besides the tensors' data; making it checks the data
// (check_ctc_data).
struct CtcSizes {
  int64_t time, batch, classes, blank;
  bool zero_infinity;
  const int64_t* input_lengths;
  CtcLayout layout;
  explicit CtcSizes(const KernelContext& ctx)
      : time(ctx.input(0).shape()[0]),
        batch(ctx.input(0).shape()[1]),
        classes(ctx.input(0).shape()[2]),
        blank(ctx.attr<int64_t>("blank")),
        zero_infinity(ctx.attr<bool>("zero_infinity")),
        input_lengths(ctx.input(2).data<int64_t>()),
        layout{ctx.input(1).data<int64_t>(), ctx.input(3).data<int64_t>(),
               ctx.input(1).shape()[ctx.input(1).shape().rank() - 1],
               ctx.input(1).shape().rank() == 1} {
    check_ctc_data(ctx);
  }
};

// One sequence of a CTC kernel: its l' (S' entries) and where its table (alpha, beta) lies.
struct CtcSequence {
  std::vector<int64_t> labels;
  int64_t table = 0;  // the first entry of its table, T rows of `width`
  int64_t width = 0;

  void load(const CtcSizes& z, int64_t n) {
    const int64_t start = z.layout.target_start(n);
    const int64_t extended = 2 * z.layout.target_lengths[n] + 1;
    labels.resize(static_cast<size_t>(extended));
    for (int64_t s = 0; s < extended; ++s)
      labels[s] = ctc_extended_label(z.layout.targets + start, s, z.blank);
    table = z.time * z.layout.table_start(n, start);
    width = z.layout.row_width(n);
  }
};

// Each sequence's loss (output 0) and alpha (output 1, laid out as CtcLayout says).
void ctc_loss_cpu(KernelContext& ctx) {
  const CtcSizes z(ctx);
  dispatch_float(ctx.input(0).dtype(), [&](auto tag) {
    using T = decltype(tag);
    constexpr T kInf = std::numeric_limits<T>::infinity();
    const T* lp = ctx.input(0).data<T>();
    T* loss = ctx.output(0).data<T>();
    T* alpha_all = ctx.output(1).data<T>();
    // A sequence's alpha table, 4 units an entry.
    const int64_t cost = ctx.output(1).numel() * 4 / std::max<int64_t>(z.batch, 1);
    ctx.parallel_for(z.batch, cost, [&](int64_t n0, int64_t n1) {
      CtcSequence q;
      for (int64_t n = n0; n < n1; ++n) {
        q.load(z, n);
        const std::vector<int64_t>& labels = q.labels;
        const int64_t steps = z.input_lengths[n], extended = static_cast<int64_t>(labels.size());
        const T* seq = lp + n * z.classes;  // step t's row: seq + t * batch * classes
        T* alpha = alpha_all + q.table;
        std::fill(alpha, alpha + z.time * q.width, -kInf);
        for (int64_t t = 0; t < steps; ++t)
          for (int64_t s = 0; s < extended; ++s)
            alpha[t * q.width + s] =
                t == 0 ? ctc_alpha_first<T>(seq, labels.data(), s, extended)
                       : ctc_alpha_next(alpha + (t - 1) * q.width, seq + t * z.batch * z.classes,
                                        labels.data(), s);
        const T nll = ctc_nll(alpha + std::max<int64_t>(steps - 1, 0) * q.width, steps, extended);
        loss[n] = z.zero_infinity && nll == kInf ? T(0) : nll;
      }
    });
  });
}

// d log_probs [T, N, C] from alpha (input 4) and dloss (input 5).
void ctc_loss_grad_cpu(KernelContext& ctx) {
  const CtcSizes z(ctx);
  dispatch_float(ctx.input(0).dtype(), [&](auto tag) {
    using T = decltype(tag);
    constexpr T kInf = std::numeric_limits<T>::infinity();
    const T* lp = ctx.input(0).data<T>();
    const T* alpha_all = ctx.input(4).data<T>();
    const T* dloss = ctx.input(5).data<T>();
    T* out = ctx.output(0).data<T>();
    const int64_t step_stride = z.batch * z.classes;
    // A sequence's alpha (and beta) table, and its rows of the gradient.
    const int64_t cost =
        ctx.input(4).numel() * 4 / std::max<int64_t>(z.batch, 1) + z.time * z.classes;
    ctx.parallel_for(z.batch, cost, [&](int64_t n0, int64_t n1) {
      CtcSequence q;
      std::vector<T> beta;
      for (int64_t n = n0; n < n1; ++n) {
        q.load(z, n);
        const std::vector<int64_t>& labels = q.labels;
        const int64_t steps = z.input_lengths[n], extended = static_cast<int64_t>(labels.size());
        const T* seq = lp + n * z.classes;
        const T* alpha = alpha_all + q.table;
        const T nll = ctc_nll(alpha + std::max<int64_t>(steps - 1, 0) * q.width, steps, extended);
        // Rows past the input length get 0; an infinite loss gets 0 with zero_infinity, and is
        // undefined (NaN, as PyTorch's) otherwise.
        const bool infinite = nll == kInf;
        for (int64_t t = 0; t < z.time; ++t) {
          T* row = out + t * step_stride + n * z.classes;
          const T fill = t < steps && infinite && !z.zero_infinity
                             ? std::numeric_limits<T>::quiet_NaN()
                             : T(0);
          std::fill(row, row + z.classes, fill);
        }
        if (infinite) continue;
        beta.assign(static_cast<size_t>(steps * extended), -kInf);
        for (int64_t t = steps - 1; t >= 0; --t)
          for (int64_t s = 0; s < extended; ++s)
            beta[t * extended + s] =
                t == steps - 1 ? ctc_beta_last<T>(seq + t * step_stride, labels.data(), s, extended)
                               : ctc_beta_next(&beta[(t + 1) * extended], seq + t * step_stride,
                                               labels.data(), s, extended);
        // Each position's posterior, added into its class's entry (rows start at 0 above).
        for (int64_t t = 0; t < steps; ++t) {
          const T* lp_t = seq + t * step_stride;
          T* row = out + t * step_stride + n * z.classes;
          const T* alpha_t = alpha + t * q.width;
          const T* beta_t = &beta[t * extended];
          for (int64_t s = 0; s < extended; ++s) {
            const int64_t c = labels[s];
            row[c] -= ctc_posterior(alpha_t[s], beta_t[s], lp_t[c], nll) * dloss[n];
          }
        }
      }
    });
  });
}

AttrMap ctc_attrs(const Node& node) {
  return {{"blank", node.attr<int64_t>("blank")},
          {"zero_infinity", node.attr<bool>("zero_infinity")}};
}

KILN_OP(ctc_loss)
    .precision(Precision::keep_f32)
    .input("log_probs")
    .input("targets")
    .input("input_lengths")
    .input("target_lengths")
    .attr("blank", int64_t{0})
    .attr("zero_infinity", false)
    .infer(infer_ctc_loss)
    .kernel(DeviceKind::cpu, ctc_loss_cpu, {f32, f64})
    .grad([](GradContext& c) -> GradList {
      KILN_CHECK(!c.has_grad_output(1), GraphError, "[ctc_loss] ", c.node().name(),
                 ": its alpha output is not differentiable");
      return {c.graph().add(
                  "ctc_loss_grad",
                  {c.input(0), c.input(1), c.input(2), c.input(3), c.output(1), c.grad_output(0)},
                  ctc_attrs(c.node())),
              Value(), Value(), Value()};
    });

KILN_OP(ctc_loss_grad)
    .precision(Precision::keep_f32)
    .input("log_probs")
    .input("targets")
    .input("input_lengths")
    .input("target_lengths")
    .input("alpha")
    .input("dloss")
    .attr("blank", int64_t{0})
    .attr("zero_infinity", false)
    .infer([](const InferContext& ctx) -> std::vector<TensorType> {
      // The forward op's checks, alpha shaped as it makes it and dloss like its loss.
      std::vector<TensorType> forward = infer_ctc_loss(ctx);
      ctx.expect_same_dtype(0, 5);
      if (ctx.dtype(4) != forward[1].dtype || !ctx.shape(4).compatible_with(forward[1].shape))
        ctx.fail("alpha is ", dtype_name(ctx.dtype(4)), " ", ctx.shape(4),
                 ", the forward op makes ", dtype_name(forward[1].dtype), " ", forward[1].shape);
      if (!ctx.shape(5).compatible_with(forward[0].shape))
        ctx.fail("dloss is ", ctx.shape(5), ", the loss is ", forward[0].shape);
      return {ctx.input(0)};
    })
    .kernel(DeviceKind::cpu, ctc_loss_grad_cpu, {f32, f64})
    // The op is linear in dloss: its gradient there is the op at dloss = 1 against the upstream
    // gradient, summed per sequence. The second derivative in the log probabilities needs the
    // paths' pairwise marginals; like PyTorch, Kiln does not build it.
    .grad([](GradContext& c) -> GradList {
      KILN_CHECK(!c.wants_grad_input(0) && !c.wants_grad_input(4), GraphError, "[ctc_loss_grad] ",
                 c.node().name(),
                 ": the second derivative of ctc_loss in its log probabilities is not "
                 "implemented (PyTorch has none either)");
      Value unit = c.graph().add(
          "ctc_loss_grad",
          {c.input(0), c.input(1), c.input(2), c.input(3), c.input(4), full_like(c.input(5), 1.0)},
          ctc_attrs(c.node()));
      return {Value(), Value(), Value(), Value(), Value(), sum(c.grad_output() * unit, {0, 2})};
    });

}  // namespace
}  // namespace ops

Value ctc_loss(const Value& log_probs, const Value& targets, const Value& input_lengths,
               const Value& target_lengths, int64_t blank, Reduction reduction,
               bool zero_infinity) {
  Graph& g = common_graph("ctc_loss", {&log_probs, &targets, &input_lengths, &target_lengths});
  for (const Value* ints : {&targets, &input_lengths, &target_lengths})
    KILN_CHECK(is_integer(ints->dtype()), GraphError, "[ctc_loss] ", ints->name(),
               ": targets and lengths must be integers, got ", dtype_name(ints->dtype()));
  // PyTorch's unbatched form: log_probs [T, C], targets [S], lengths scalars (or [1]).
  const bool unbatched = log_probs.shape().rank() == 2;
  const auto as_i64 = [](const Value& v) { return v.dtype() == i64 ? v : cast(v, i64); };
  const auto one_sequence = [&](const Value& v, const Shape& shape) {
    return unbatched ? reshape(as_i64(v), shape) : as_i64(v);
  };
  Value lp = unbatched ? expand_dims(log_probs, {1}) : log_probs;
  Value losses =
      g.add_node("ctc_loss",
                 {lp, one_sequence(targets, Shape{1, -1}), one_sequence(input_lengths, Shape{1}),
                  one_sequence(target_lengths, Shape{1})},
                 {{"blank", blank}, {"zero_infinity", zero_infinity}})[0];
  if (reduction == Reduction::mean) {
    // PyTorch's: each loss divided by its target length (at least 1), then the batch mean.
    Value lengths = cast(one_sequence(target_lengths, Shape{1}), losses.dtype());
    return mean(losses / maximum(lengths, 1.0));
  }
  if (unbatched && reduction == Reduction::none) return reshape(losses, Shape{});
  return reduce_loss(losses, reduction);
}

}  // namespace kiln
