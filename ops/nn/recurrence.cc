// recurrence: one direction of a recurrent layer over a sequence whose length is known only when
// the graph runs, as one op forward and one backward (the math of one step: recurrence.h). The
// unrolled layer (ops/recurrent.cc) needs T when the graph is built; this op loops over the steps
// inside its kernel, one product h_prev W_hh per step.
//   recurrence(x [T, B, G H], weight_hh [H, G H], bias_hh [G H], h0 [B, H][, c0 [B, H]]
//              [, lengths [B] i64])
//     -> y [T, B, H], h_last [B, H], act [T, B, G H][, aux [T, B, H][, c_last [B, H]]]
//   recurrence_grad(weight_hh, h0, y, act, dy, dh_last[, aux[, c0, dc_last]][, lengths])
//     -> dx [T, B, G H], d weight_hh, d bias_hh, d h0[, d c0]
// c0, aux and c_last are the LSTM's (aux: each step's c), aux the GRU's too (each step's hg_n).
// `act` holds each step's activated gates (the RNN's: h), the backward's input. A sequence past
// its length keeps its state and outputs zeros; its steps get no gradient.
#include <algorithm>
#include <initializer_list>
#include <string>
#include <vector>

#include "kiln/framework/gradient.h"
#include "kiln/framework/kernel.h"
#include "kiln/ops/array.h"
#include "kiln/ops/dtypes.h"
#include "kiln/ops/math/blocked_product.h"
#include "kiln/ops/math/vector_math.h"
#include "kiln/ops/nn.h"
#include "kiln/ops/nn/recurrence.h"

namespace kiln {
namespace ops {
namespace {

RecurrentCell cell_of(const InferContext& ctx) {
  RecurrentCell cell;
  const std::string& name = ctx.attr<std::string>("cell");
  if (!parse_recurrent_cell(name, cell))
    ctx.fail("cell \"", name, "\" is not one of rnn_tanh, rnn_relu, lstm, gru");
  return cell;
}

RecurrentCell cell_of(const KernelContext& ctx) {
  RecurrentCell cell;
  const std::string& name = ctx.attr<std::string>("cell");
  if (!parse_recurrent_cell(name, cell))
    throw Error(str(ctx.where(), ": cell \"", name, "\" is unknown"));
  return cell;
}

// The sizes every recurrence kernel reads, from x [T, B, G H] and weight_hh [H, G H].
struct RecurrenceSizes {
  int64_t time, batch, hidden, width;  // width: G H
};

// Checks x (or act, shaped alike) against weight_hh (input `weight`) and the states (input
// indices `states`: h0, then c0) against both; returns the sizes (-1: unknown).
RecurrenceSizes infer_sizes(const InferContext& ctx, RecurrentCell cell, const Shape& x, int weight,
                            std::initializer_list<int> states) {
  const int64_t gates = recurrent_gates(cell);
  const Shape& w = ctx.shape(weight);
  if (w.rank() != 2 || (w[0] >= 0 && w[1] >= 0 && w[1] != ctx.checked_mul(gates, w[0])))
    ctx.fail("weight_hh must be [H, ", gates, " H] for the ", recurrent_cell_name(cell),
             " cell, got ", w);
  const int64_t hidden = w[0] >= 0 ? w[0] : (w[1] >= 0 ? w[1] / gates : -1);
  const int64_t width = hidden >= 0 ? ctx.checked_mul(gates, hidden) : -1;
  if (x.rank() != 3 || (x[2] >= 0 && width >= 0 && x[2] != width))
    ctx.fail("the input gates must be [T, B, ", gates, " H] with H = ", hidden, " (weight_hh ", w,
             "), got ", x);
  int64_t batch = x[1];
  const char* name = "h0";
  for (int i : states) {
    const Shape& s = ctx.shape(i);
    // [B, H], or one row [1, H] for every sequence.
    const bool fits = s.rank() == 2 && (s[1] < 0 || hidden < 0 || s[1] == hidden) &&
                      (s[0] < 0 || batch < 0 || s[0] == batch || s[0] == 1);
    if (!fits) ctx.fail(name, " must be [B, H] = [", batch, ", ", hidden, "] or [1, H], got ", s);
    if (batch < 0 && s[0] != 1) batch = s[0];
    name = "c0";
  }
  return {x[0], batch, hidden, width};
}

// Checks the optional lengths (input `i`, when there is one): an integer vector [B].
void infer_lengths(const InferContext& ctx, int i, int64_t batch) {
  if (i >= ctx.num_inputs()) return;
  ctx.expect_dtype(i, {i64});
  const Shape& s = ctx.shape(i);
  if (s.rank() != 1 || (s[0] >= 0 && batch >= 0 && s[0] != batch))
    ctx.fail("lengths must be [B] = [", batch, "], got ", s);
}

std::vector<TensorType> infer_recurrence(const InferContext& ctx) {
  const RecurrentCell cell = cell_of(ctx);
  const bool lstm = cell == RecurrentCell::lstm;
  const int states = lstm ? 2 : 1;
  if (ctx.num_inputs() != 3 + states && ctx.num_inputs() != 4 + states)
    ctx.fail("the ", recurrent_cell_name(cell), " cell takes x, weight_hh, bias_hh, h0",
             lstm ? ", c0" : "", " and optional lengths, got ", ctx.num_inputs(), " inputs");
  ctx.expect_dtype(0, dtypes_of(DTypeClass::floating));
  for (int i = 1; i < 3 + states; ++i) ctx.expect_same_dtype(0, i);
  const RecurrenceSizes z = lstm ? infer_sizes(ctx, cell, ctx.shape(0), 1, {3, 4})
                                 : infer_sizes(ctx, cell, ctx.shape(0), 1, {3});
  const Shape& bias = ctx.shape(2);
  if (bias.rank() != 1 || (bias[0] >= 0 && z.width >= 0 && bias[0] != z.width))
    ctx.fail("bias_hh must be [", z.width, "], got ", bias);
  infer_lengths(ctx, 3 + states, z.batch);
  const DType d = ctx.dtype(0);
  const Shape steps{z.time, z.batch, z.hidden}, state{z.batch, z.hidden};
  std::vector<TensorType> out{{d, steps}, {d, state}, {d, Shape{z.time, z.batch, z.width}}};
  if (recurrent_has_aux(cell)) out.push_back({d, steps});
  if (lstm) out.push_back({d, state});
  return out;
}

// Inputs weight_hh, h0, y, act, dy, dh_last[, aux[, c0, dc_last]][, lengths]: dx, d weight_hh,
// d bias_hh, d h0[, d c0].
std::vector<TensorType> infer_recurrence_grad(const InferContext& ctx) {
  const RecurrentCell cell = cell_of(ctx);
  const bool lstm = cell == RecurrentCell::lstm;
  const int fixed = lstm ? 9 : recurrent_has_aux(cell) ? 7 : 6;
  if (ctx.num_inputs() != fixed && ctx.num_inputs() != fixed + 1)
    ctx.fail("takes ", fixed, " inputs and optional lengths for the ", recurrent_cell_name(cell),
             " cell, got ", ctx.num_inputs());
  ctx.expect_dtype(0, dtypes_of(DTypeClass::floating));
  for (int i = 1; i < fixed; ++i) ctx.expect_same_dtype(0, i);
  const Shape& act = ctx.shape(3);
  const RecurrenceSizes sizes =
      lstm ? infer_sizes(ctx, cell, act, 0, {1, 7}) : infer_sizes(ctx, cell, act, 0, {1});
  const Shape steps{sizes.time, sizes.batch, sizes.hidden};
  const auto expect = [&](int i, const Shape& shape, const char* what) {
    if (!ctx.shape(i).compatible_with(shape))
      ctx.fail(what, " must be ", shape, " as the forward op makes it, got ", ctx.shape(i));
  };
  expect(2, steps, "y");
  expect(4, steps, "dy");
  expect(5, Shape{sizes.batch, sizes.hidden}, "dh_last");
  if (recurrent_has_aux(cell)) expect(6, steps, "aux");
  if (lstm) expect(8, Shape{sizes.batch, sizes.hidden}, "dc_last");
  infer_lengths(ctx, fixed, sizes.batch);
  const DType d = ctx.dtype(0);
  std::vector<TensorType> out{{d, act},
                              {d, Shape{sizes.hidden, sizes.width}},
                              {d, Shape{sizes.width}},
                              {d, Shape{sizes.batch, sizes.hidden}}};
  if (lstm) out.push_back({d, Shape{sizes.batch, sizes.hidden}});
  return out;
}

// The CPU's sigmoid and tanh (vector_math.h's forms for f32).
struct CpuActivations {
  template <typename C>
  C sigmoid(C x) const {
    return sigmoid_cpu_fn{}(x);
  }
  template <typename C>
  C tanh(C x) const {
    return tanh_cpu_fn{}(x);
  }
};

// The initial state's row r: rows of `initial` [B, H], or its one row [1, H].
template <typename T>
const T* initial_row(const Tensor& initial, int64_t r, int64_t hidden) {
  return initial.data<T>() + (initial.shape()[0] == 1 ? 0 : r * hidden);
}

// The lengths input `i` when there is one (nullptr otherwise), checked: none negative (one above
// T counts as T, as in the unrolled layer).
const int64_t* checked_lengths(const KernelContext& ctx, int i) {
  if (i >= ctx.num_inputs()) return nullptr;
  const Tensor& lengths = ctx.input(i);
  const int64_t* data = lengths.data<int64_t>();
  for (int64_t b = 0; b < lengths.numel(); ++b)
    if (data[b] < 0)
      throw Error(str(ctx.where(), ": length ", data[b], " of sequence ", b, " is negative"));
  return data;
}

// One row of a forward step: the new h (into the state and y) and c, the activations kept.
// Each row's loop vectorizes (f32); aux and c are the cells' that have them.
template <RecurrentCell kCell, typename T>
void forward_row(int64_t hidden, const T* __restrict x, const T* __restrict hg, T* __restrict h,
                 T* __restrict c, T* __restrict act, T* __restrict aux, T* __restrict y) {
  constexpr bool kLstm = kCell == RecurrentCell::lstm, kAux = recurrent_has_aux(kCell);
  KILN_CELL_LOOP
  for (int64_t j = 0; j < hidden; ++j) {
    T cell = kLstm ? c[j] : T(0);
    const T next = recurrence_forward_element<kCell>(CpuActivations{}, hidden, x + j, hg + j, h[j],
                                                     cell, act + j, kAux ? aux + j : nullptr);
    if constexpr (kLstm) c[j] = cell;
    h[j] = next;
    y[j] = next;
  }
}

// One row of a backward step: dx (and the GRU's dhg), c's gradient in place (LSTM), and h's
// gradient replaced by what reaches h_prev besides hg; the row's h_prev kept for W_hh's gradient.
template <RecurrentCell kCell, typename T>
void backward_row(int64_t hidden, const T* __restrict act, const T* __restrict aux,
                  const T* __restrict h_prev, const T* __restrict c_prev, const T* __restrict dy,
                  T* __restrict dh, T* __restrict dc, T* __restrict dx, T* __restrict dhg,
                  T* __restrict h_prev_kept) {
  constexpr bool kLstm = kCell == RecurrentCell::lstm, kAux = recurrent_has_aux(kCell);
  constexpr bool kGru = kCell == RecurrentCell::gru;
  KILN_CELL_LOOP
  for (int64_t j = 0; j < hidden; ++j) {
    T d_cell = kLstm ? dc[j] : T(0);
    dh[j] = recurrence_backward_element<kCell>(
        CpuActivations{}, hidden, act + j, kAux ? aux + j : nullptr, h_prev[j],
        kLstm ? c_prev[j] : T(0), dh[j] + dy[j], d_cell, dx + j, kGru ? dhg + j : nullptr);
    if constexpr (kLstm) dc[j] = d_cell;
    h_prev_kept[j] = h_prev[j];
  }
}

template <RecurrentCell kCell, typename T>
void recurrence_forward_cpu(KernelContext& ctx) {
  constexpr bool kLstm = kCell == RecurrentCell::lstm;
  const Shape& xs = ctx.input(0).shape();
  const int64_t time = xs[0], batch = xs[1], width = xs[2];
  const int64_t hidden = ctx.input(1).shape()[0];
  const bool reverse = ctx.attr<bool>("reverse");
  const int64_t* lengths = checked_lengths(ctx, kLstm ? 5 : 4);
  const T* x = ctx.input(0).data<T>();
  const T* bias = ctx.input(2).data<T>();
  T* y = ctx.output(0).data<T>();
  T* h = ctx.output(1).data<T>();  // the state, updated in place: h_last at the end
  T* act = ctx.output(2).data<T>();
  T* aux = recurrent_has_aux(kCell) ? ctx.output(3).data<T>() : nullptr;
  T* c = kLstm ? ctx.output(4).data<T>() : nullptr;
  for (int64_t r = 0; r < batch; ++r) {
    std::copy_n(initial_row<T>(ctx.input(3), r, hidden), hidden, h + r * hidden);
    if constexpr (kLstm)
      std::copy_n(initial_row<T>(ctx.input(4), r, hidden), hidden, c + r * hidden);
  }
  if (batch == 0 || hidden == 0) return;
  std::vector<T> hidden_gates(static_cast<size_t>(batch * width));
  T* hg = hidden_gates.data();
  // Each block of hg starts as the bias rows; the product adds h W_hh to it.
  const auto bias_rows = [=](int64_t, int64_t, int64_t rows, int64_t c0, int64_t cols, T* block,
                             int64_t ld) {
    for (int64_t r = 0; r < rows; ++r) std::copy_n(bias + c0, cols, block + r * ld);
  };
  for (int64_t i = 0; i < time; ++i) {
    const int64_t t = recurrence_step(i, time, reverse);
    // hg = h W_hh + b_hh: matmul's product, cut over the pool (blocked_product.h).
    blocked_product<T>(ctx, ctx.output(1), ctx.input(1), false, false, Shape{batch, width}, hg,
                       NoEpilogue{}, bias_rows);
    ctx.parallel_for(batch, hidden * 20, [&](int64_t r0, int64_t r1) {
      for (int64_t r = r0; r < r1; ++r) {
        const int64_t row = t * batch + r;
        T* y_row = y + row * hidden;
        T* act_row = act + row * width;
        T* aux_row = aux ? aux + row * hidden : nullptr;
        if (lengths && t >= lengths[r]) {  // past the sequence: its state stays
          std::fill_n(y_row, hidden, T(0));
          std::fill_n(act_row, width, T(0));
          if (aux_row) std::fill_n(aux_row, hidden, T(0));
          continue;
        }
        forward_row<kCell>(hidden, x + row * width, hg + r * width, h + r * hidden,
                           kLstm ? c + r * hidden : nullptr, act_row, aux_row, y_row);
      }
    });
  }
}

template <RecurrentCell kCell, typename T>
void recurrence_backward_cpu(KernelContext& ctx) {
  constexpr bool kLstm = kCell == RecurrentCell::lstm, kAux = recurrent_has_aux(kCell);
  const DType dtype = ctx.input(0).dtype();
  const T* y = ctx.input(2).data<T>();
  const Shape& as = ctx.input(3).shape();
  const int64_t time = as[0], batch = as[1], width = as[2];
  const int64_t hidden = ctx.input(0).shape()[0];
  const T* act = ctx.input(3).data<T>();
  const T* dy = ctx.input(4).data<T>();
  const T* aux = kAux ? ctx.input(6).data<T>() : nullptr;
  const bool reverse = ctx.attr<bool>("reverse");
  const int fixed = kLstm ? 9 : kAux ? 7 : 6;
  const RecurrencePrevious previous{time, batch, reverse, checked_lengths(ctx, fixed)};
  T* dx = ctx.output(0).data<T>();
  T* dw = ctx.output(1).data<T>();
  T* dbias = ctx.output(2).data<T>();
  T* dh = ctx.output(3).data<T>();  // the gradient reaching the state: d h0 at the end
  T* dc = kLstm ? ctx.output(4).data<T>() : nullptr;
  std::copy_n(ctx.input(5).data<T>(), batch * hidden, dh);
  if constexpr (kLstm) std::copy_n(ctx.input(8).data<T>(), batch * hidden, dc);
  // d hg of every step (dx itself where the two are equal), and each step's h_prev, for W_hh's
  // gradient after the loop: one product over all steps.
  std::vector<T> dhg_own(kCell == RecurrentCell::gru ? static_cast<size_t>(time * batch * width)
                                                     : 0);
  T* dhg = kCell == RecurrentCell::gru ? dhg_own.data() : dx;
  std::vector<T> h_prev_all(static_cast<size_t>(time * batch * hidden));
  for (int64_t i = 0; i < time && batch > 0 && hidden > 0; ++i) {
    const int64_t t =
        recurrence_step(time - 1 - i, time, reverse);  // the forward's order, backwards
    ctx.parallel_for(batch, hidden * 30, [&](int64_t r0, int64_t r1) {
      for (int64_t r = r0; r < r1; ++r) {
        const int64_t row = t * batch + r;
        T* dx_row = dx + row * width;
        T* dhg_row = dhg + row * width;
        T* h_prev_row = h_prev_all.data() + row * hidden;
        if (previous.lengths && t >= previous.lengths[r]) {  // the state passed through
          std::fill_n(dx_row, width, T(0));
          if (dhg != dx) std::fill_n(dhg_row, width, T(0));
          std::fill_n(h_prev_row, hidden, T(0));
          continue;
        }
        const int64_t before = previous.row(t, r);
        const T* h_prev =
            before < 0 ? initial_row<T>(ctx.input(1), r, hidden) : y + before * hidden;
        const T* c_prev = !kLstm       ? nullptr
                          : before < 0 ? initial_row<T>(ctx.input(7), r, hidden)
                                       : aux + before * hidden;
        backward_row<kCell>(hidden, act + row * width, aux ? aux + row * hidden : nullptr, h_prev,
                            c_prev, dy + row * hidden, dh + r * hidden,
                            kLstm ? dc + r * hidden : nullptr, dx_row,
                            dhg != dx ? dhg_row : nullptr, h_prev_row);
      }
    });
    // dh_prev += dhg W_hh^T (rows past their length have dhg 0): the product added to what dh
    // holds (a start that keeps it).
    blocked_product<T>(ctx, Tensor::from_blob(dhg + t * batch * width, Shape{batch, width}, dtype),
                       ctx.input(0), false, true, Shape{batch, hidden}, dh, NoEpilogue{},
                       [](int64_t, int64_t, int64_t, int64_t, int64_t, T*, int64_t) {});
  }
  // d W_hh = sum over steps of h_prev^T dhg: [H, T B] x [T B, G H], split over W's rows.
  const int64_t rows = time * batch;
  if (rows == 0 || hidden == 0) {
    std::fill_n(dw, hidden * width, T(0));
  } else {
    blocked_product<T>(ctx, Tensor::from_blob(h_prev_all.data(), Shape{rows, hidden}, dtype),
                       Tensor::from_blob(dhg, Shape{rows, width}, dtype), true, false,
                       Shape{hidden, width}, dw);
  }
  // d bias_hh: dhg summed over steps and sequences.
  ctx.parallel_for(width, rows, [&](int64_t j0, int64_t j1) {
    for (int64_t j = j0; j < j1; ++j) {
      T total = 0;
      for (int64_t row = 0; row < rows; ++row) total += dhg[row * width + j];
      dbias[j] = total;
    }
  });
}

template <bool kGrad>
void recurrence_cpu(KernelContext& ctx) {
  const RecurrentCell cell = cell_of(ctx);
  dispatch_float(ctx.input(0).dtype(), [&](auto tag) {
    using T = decltype(tag);
    switch (cell) {
      case RecurrentCell::rnn_tanh:
        return kGrad ? recurrence_backward_cpu<RecurrentCell::rnn_tanh, T>(ctx)
                     : recurrence_forward_cpu<RecurrentCell::rnn_tanh, T>(ctx);
      case RecurrentCell::rnn_relu:
        return kGrad ? recurrence_backward_cpu<RecurrentCell::rnn_relu, T>(ctx)
                     : recurrence_forward_cpu<RecurrentCell::rnn_relu, T>(ctx);
      case RecurrentCell::lstm:
        return kGrad ? recurrence_backward_cpu<RecurrentCell::lstm, T>(ctx)
                     : recurrence_forward_cpu<RecurrentCell::lstm, T>(ctx);
      case RecurrentCell::gru:
        return kGrad ? recurrence_backward_cpu<RecurrentCell::gru, T>(ctx)
                     : recurrence_forward_cpu<RecurrentCell::gru, T>(ctx);
    }
  });
}

AttrMap recurrence_attrs(const Node& node) {
  return {{"cell", node.attr<std::string>("cell")}, {"reverse", node.attr<bool>("reverse")}};
}

KILN_OP(recurrence)
    .precision(Precision::keep_f32)
    .input("x")
    .input("weight_hh")
    .input("bias_hh")
    .variadic_input("states", 1)
    .attr("cell", std::string("lstm"))
    .attr("reverse", false)
    .infer(infer_recurrence)
    .kernel(DeviceKind::cpu, recurrence_cpu<false>, {f32, f64})
    .grad([](GradContext& c) -> GradList {
      RecurrentCell cell = RecurrentCell::lstm;
      parse_recurrent_cell(c.attr<std::string>("cell"), cell);  // checked when it was built
      const bool lstm = cell == RecurrentCell::lstm, aux = recurrent_has_aux(cell);
      KILN_CHECK(!c.has_grad_output(2) && !(aux && c.has_grad_output(3)), GraphError,
                 "[recurrence] ", c.node().name(),
                 ": its activations (outputs 2 and 3, the backward's inputs) are not "
                 "differentiable");
      const int states = lstm ? 2 : 1;
      const bool has_lengths = c.num_inputs() == 4 + states;
      std::vector<Value> inputs{c.input(1),  c.input(3),       c.output(0),
                                c.output(2), c.grad_output(0), c.grad_output(1)};
      if (aux) inputs.push_back(c.output(3));
      if (lstm) {
        inputs.push_back(c.input(4));
        inputs.push_back(c.grad_output(4));
      }
      if (has_lengths) inputs.push_back(c.input(c.num_inputs() - 1));
      std::vector<Value> d =
          c.graph().add_node("recurrence_grad", inputs, recurrence_attrs(c.node()));
      // A state of one row [1, H] served every sequence: its gradient is their sum.
      const auto initial_gradient = [](const Value& d_initial, const Value& initial) {
        return initial.shape().is_known() && initial.shape() == d_initial.shape()
                   ? d_initial
                   : sum_to(d_initial, initial);
      };
      GradList out{d[0], d[1], d[2], initial_gradient(d[3], c.input(3))};
      if (lstm) out.push_back(initial_gradient(d[4], c.input(4)));
      if (has_lengths) out.push_back(Value());
      return out;
    });

KILN_OP(recurrence_grad)
    .precision(Precision::keep_f32)
    .input("weight_hh")
    .input("h0")
    .input("y")
    .input("act")
    .input("dy")
    .input("dh_last")
    .variadic_input("more", 0)
    .attr("cell", std::string("lstm"))
    .attr("reverse", false)
    .infer(infer_recurrence_grad)
    .kernel(DeviceKind::cpu, recurrence_cpu<true>, {f32, f64});

}  // namespace
}  // namespace ops

RecurrenceOutputs recurrence(RecurrentCell cell, const Value& input_gates, const Value& weight_hh,
                             const Value& bias_hh, const Value& h0, const Value& c0,
                             const Value& lengths, bool reverse) {
  const bool lstm = cell == RecurrentCell::lstm;
  KILN_CHECK(lstm == c0.defined(), GraphError, "[recurrence] ", input_gates.name(), ": the ",
             recurrent_cell_name(cell), " cell ", lstm ? "needs" : "takes no", " c0");
  Graph& g = common_graph("recurrence", {&input_gates, &weight_hh, &bias_hh, &h0});
  std::vector<Value> inputs{input_gates, weight_hh, bias_hh, h0};
  if (lstm) inputs.push_back(c0);
  if (lengths.defined()) {
    KILN_CHECK(is_integer(lengths.dtype()), GraphError, "[recurrence] ", lengths.name(),
               ": lengths must be integers, got ", dtype_name(lengths.dtype()));
    inputs.push_back(lengths.dtype() == i64 ? lengths : cast(lengths, i64));
  }
  std::vector<Value> out =
      g.add_node("recurrence", inputs,
                 {{"cell", std::string(recurrent_cell_name(cell))}, {"reverse", reverse}});
  return {out[0], out[1], lstm ? out[4] : Value()};
}

}  // namespace kiln
