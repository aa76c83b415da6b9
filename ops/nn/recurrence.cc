// recurrence: one direction of a recurrent layer over a sequence whose length is known only when
// the graph runs, as one op forward and one backward (the math of one step: recurrence.h). The
// unrolled layer (ops/recurrent.cc) needs T when the graph is built; this op loops over the steps
// inside its kernel, one product h_prev W_hh per step.
//   recurrence(x [T, B, G H], weight_hh [S, G H], bias_hh [G H], h0 [B, S][, c0 [B, H]]
//              [, weight_hr [H, S]][, lengths [B] i64])
//     -> y [T, B, S], h_last [B, S], act [T, B, G H][, aux [T, B, H][, c_last [B, H]]]
//   recurrence_grad(weight_hh, h0, y, act, dy, dh_last[, aux[, c0, dc_last]][, weight_hr]
//                   [, lengths])
//     -> dx [T, B, G H], d weight_hh, d bias_hh, d h0[, d c0][, d weight_hr]
// c0, aux and c_last are the LSTM's (aux: each step's c), aux the GRU's too (each step's hg_n).
// The state is S = H wide, or P with an LSTM's projection (attribute `projected`, PyTorch's
// proj_size): h = (o tanh(c)) W_hr, one more product per step each way.
// `act` holds each step's activated gates (the RNN's: h), the backward's input. A sequence past
// its length keeps its state and outputs zeros; its steps get no gradient.
#include <algorithm>
#include <string>
#include <tuple>
#include <utility>
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

// The sizes the kernels read: width G H, and the state's width (H, or a projected LSTM's P).
struct RecurrenceSizes {
  int64_t time, batch, hidden, width, state;
};

// Checks x (or act, shaped alike) [T, B, G H] against weight_hh (input `weight`, [S, G H]: S = H,
// or P with a projection weight_hr [H, P]) and the initial states (h0 [B, S], c0 [B, H]; each
// may be one row for every sequence); returns the sizes (-1: unknown).
RecurrenceSizes infer_sizes(const InferContext& ctx, RecurrentCell cell, const Shape& x, int weight,
                            int h0, const RecurrenceInputs& in) {
  const int64_t gates = recurrent_gates(cell);
  const Shape& w = ctx.shape(weight);
  if (w.rank() != 2 || (w[1] >= 0 && w[1] % gates != 0))
    ctx.fail("weight_hh must be [H, ", gates, " H] for the ", recurrent_cell_name(cell),
             " cell, got ", w);
  int64_t hidden = w[1] >= 0 ? w[1] / gates : -1, state = w[0];
  if (in.weight_hr >= 0) {
    const Shape& r = ctx.shape(in.weight_hr);
    if (r.rank() != 2 || (r[0] >= 0 && hidden >= 0 && r[0] != hidden) ||
        (r[1] >= 0 && state >= 0 && r[1] != state))
      ctx.fail("weight_hr must be [H, P] = [", hidden, ", ", state, "] (weight_hh ", w, "), got ",
               r);
    if (hidden < 0) hidden = r[0];
    if (state < 0) state = r[1];
    if (hidden >= 0 && state > hidden)
      ctx.fail("the projection's width P = ", state, " is above H = ", hidden, " (weight_hr ", r,
               ")");
  } else {
    if (w[0] >= 0 && hidden >= 0 && w[0] != hidden)
      ctx.fail("weight_hh must be [H, ", gates, " H] for the ", recurrent_cell_name(cell),
               " cell, got ", w);
    if (hidden < 0) hidden = w[0];
    state = hidden;
  }
  const int64_t width = hidden >= 0 ? ctx.checked_mul(gates, hidden) : -1;
  if (x.rank() != 3 || (x[2] >= 0 && width >= 0 && x[2] != width))
    ctx.fail("the input gates must be [T, B, ", gates, " H] with H = ", hidden, " (weight_hh ", w,
             "), got ", x);
  int64_t batch = x[1];
  for (const auto& [i, name, size] : {std::tuple<int, const char*, int64_t>{h0, "h0", state},
                                      std::tuple<int, const char*, int64_t>{in.c0, "c0", hidden}}) {
    if (i < 0) continue;
    const Shape& s = ctx.shape(i);
    // [B, width], or one row [1, width] for every sequence.
    const bool fits = s.rank() == 2 && (s[1] < 0 || size < 0 || s[1] == size) &&
                      (s[0] < 0 || batch < 0 || s[0] == batch || s[0] == 1);
    if (!fits)
      ctx.fail(name, " must be [B, ", in.weight_hr >= 0 && i == h0 ? "P" : "H", "] = [", batch,
               ", ", size, "] or [1, ", size, "], got ", s);
    if (batch < 0 && s[0] != 1) batch = s[0];
  }
  return {x[0], batch, hidden, width, state};
}

// Checks the optional lengths (input `i`, when there is one): an integer vector [B].
void infer_lengths(const InferContext& ctx, int i, int64_t batch) {
  if (i < 0) return;
  ctx.expect_dtype(i, {i64});
  const Shape& s = ctx.shape(i);
  if (s.rank() != 1 || (s[0] >= 0 && batch >= 0 && s[0] != batch))
    ctx.fail("lengths must be [B] = [", batch, "], got ", s);
}

// The node's cell and its inputs' places; a projection is the LSTM's only.
std::pair<RecurrentCell, RecurrenceInputs> layout_of(const InferContext& ctx, bool grad) {
  const RecurrentCell cell = cell_of(ctx);
  const bool projected = ctx.attr<bool>("projected");
  if (projected && cell != RecurrentCell::lstm)
    ctx.fail("a projection (weight_hr) is the lstm cell's, not the ", recurrent_cell_name(cell),
             " cell's");
  const RecurrenceInputs in = grad ? grad_inputs(cell, projected) : forward_inputs(cell, projected);
  if (ctx.num_inputs() != in.count && ctx.num_inputs() != in.count + 1)
    ctx.fail("the ", recurrent_cell_name(cell), projected ? " cell with a projection" : " cell",
             " takes ", in.count, " inputs and optional lengths, got ", ctx.num_inputs());
  ctx.expect_dtype(0, dtypes_of(DTypeClass::floating));
  for (int i = 1; i < in.count; ++i) ctx.expect_same_dtype(0, i);
  return {cell, in};
}

std::vector<TensorType> infer_recurrence(const InferContext& ctx) {
  const auto [cell, in] = layout_of(ctx, false);
  const RecurrenceSizes z = infer_sizes(ctx, cell, ctx.shape(0), 1, 3, in);
  const Shape& bias = ctx.shape(2);
  if (bias.rank() != 1 || (bias[0] >= 0 && z.width >= 0 && bias[0] != z.width))
    ctx.fail("bias_hh must be [", z.width, "], got ", bias);
  infer_lengths(ctx, in.lengths(ctx.num_inputs()), z.batch);
  const DType d = ctx.dtype(0);
  std::vector<TensorType> out{{d, Shape{z.time, z.batch, z.state}},
                              {d, Shape{z.batch, z.state}},
                              {d, Shape{z.time, z.batch, z.width}}};
  if (recurrent_has_aux(cell)) out.push_back({d, Shape{z.time, z.batch, z.hidden}});
  if (cell == RecurrentCell::lstm) out.push_back({d, Shape{z.batch, z.hidden}});
  return out;
}

std::vector<TensorType> infer_recurrence_grad(const InferContext& ctx) {
  const auto [cell, in] = layout_of(ctx, true);
  const Shape& act = ctx.shape(3);
  const RecurrenceSizes z = infer_sizes(ctx, cell, act, 0, 1, in);
  const auto expect = [&](int i, const Shape& shape, const char* what) {
    if (i >= 0 && !ctx.shape(i).compatible_with(shape))
      ctx.fail(what, " must be ", shape, " as the forward op makes it, got ", ctx.shape(i));
  };
  const Shape outputs{z.time, z.batch, z.state};
  expect(2, outputs, "y");
  expect(4, outputs, "dy");
  expect(5, Shape{z.batch, z.state}, "dh_last");
  expect(in.aux, Shape{z.time, z.batch, z.hidden}, "aux");
  expect(in.dc_last, Shape{z.batch, z.hidden}, "dc_last");
  infer_lengths(ctx, in.lengths(ctx.num_inputs()), z.batch);
  const DType d = ctx.dtype(0);
  std::vector<TensorType> out{
      {d, act}, {d, Shape{z.state, z.width}}, {d, Shape{z.width}}, {d, Shape{z.batch, z.state}}};
  if (cell == RecurrentCell::lstm) out.push_back({d, Shape{z.batch, z.hidden}});
  if (in.weight_hr >= 0) out.push_back({d, Shape{z.hidden, z.state}});
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

// The initial state's row r: rows of `initial` [B, width], or its one row [1, width].
template <typename T>
const T* initial_row(const Tensor& initial, int64_t r) {
  return initial.data<T>() + (initial.shape()[0] == 1 ? 0 : r * initial.shape()[1]);
}

// The lengths input (when there is one; nullptr otherwise), checked: none negative (one above T
// counts as T, as in the unrolled layer).
const int64_t* checked_lengths(const KernelContext& ctx, const RecurrenceInputs& in) {
  const int i = in.lengths(ctx.num_inputs());
  if (i < 0) return nullptr;
  const Tensor& lengths = ctx.input(i);
  const int64_t* data = lengths.data<int64_t>();
  for (int64_t b = 0; b < lengths.numel(); ++b)
    if (data[b] < 0)
      throw Error(str(ctx.where(), ": length ", data[b], " of sequence ", b, " is negative"));
  return data;
}

// The sizes a kernel reads, from act-shaped input `gates_input` and weight_hh `weight`.
RecurrenceSizes sizes_of(const KernelContext& ctx, RecurrentCell cell, int gates_input,
                         int weight) {
  const Shape& s = ctx.input(gates_input).shape();
  return {s[0], s[1], s[2] / recurrent_gates(cell), s[2], ctx.input(weight).shape()[0]};
}

// One row of a forward step: the new h (into the state `h`, and `y` unless it is null) and c,
// the activations kept. The loop vectorizes (f32); aux and c are the cells' that have them.
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
  }
  if (y) std::copy_n(h, hidden, y);
}

// One row of a backward step: dx (and the GRU's dhg), c's gradient in place (LSTM), and h's
// gradient `dh` (dy added) replaced by what reaches h_prev besides hg.
template <RecurrentCell kCell, typename T>
void backward_row(int64_t hidden, const T* __restrict act, const T* __restrict aux,
                  const T* __restrict h_prev, const T* __restrict c_prev, const T* __restrict dy,
                  T* __restrict dh, T* __restrict dc, T* __restrict dx, T* __restrict dhg) {
  constexpr bool kLstm = kCell == RecurrentCell::lstm, kAux = recurrent_has_aux(kCell);
  constexpr bool kGru = kCell == RecurrentCell::gru;
  KILN_CELL_LOOP
  for (int64_t j = 0; j < hidden; ++j) {
    T d_cell = kLstm ? dc[j] : T(0);
    dh[j] = recurrence_backward_element<kCell>(
        CpuActivations{}, hidden, act + j, kAux ? aux + j : nullptr, h_prev[j],
        kLstm ? c_prev[j] : T(0), dh[j] + dy[j], d_cell, dx + j, kGru ? dhg + j : nullptr);
    if constexpr (kLstm) dc[j] = d_cell;
  }
}

// A product's start that keeps what C holds (the gemm adds to it: beta 1).
template <typename T>
void keep_c(int64_t, int64_t, int64_t, int64_t, int64_t, T*, int64_t) {}

template <RecurrentCell kCell, typename T>
void recurrence_forward_cpu(KernelContext& ctx) {
  constexpr bool kLstm = kCell == RecurrentCell::lstm;
  const RecurrenceInputs in = forward_inputs(kCell, ctx.attr<bool>("projected"));
  const bool projected = in.weight_hr >= 0;
  const RecurrenceSizes z = sizes_of(ctx, kCell, 0, 1);
  const int64_t batch = z.batch, hidden = z.hidden, width = z.width, state = z.state;
  const bool reverse = ctx.attr<bool>("reverse");
  const int64_t* lengths = checked_lengths(ctx, in);
  const T* x = ctx.input(0).data<T>();
  const T* bias = ctx.input(2).data<T>();
  T* y = ctx.output(0).data<T>();
  T* h = ctx.output(1).data<T>();  // the state, updated in place: h_last at the end
  T* act = ctx.output(2).data<T>();
  T* aux = recurrent_has_aux(kCell) ? ctx.output(3).data<T>() : nullptr;
  T* c = kLstm ? ctx.output(4).data<T>() : nullptr;
  for (int64_t r = 0; r < batch; ++r) {
    std::copy_n(initial_row<T>(ctx.input(3), r), state, h + r * state);
    if constexpr (kLstm) std::copy_n(initial_row<T>(ctx.input(in.c0), r), hidden, c + r * hidden);
  }
  if (batch == 0 || hidden == 0) return;
  std::vector<T> hidden_gates(static_cast<size_t>(batch * width));
  T* hg = hidden_gates.data();
  // A projected LSTM's o tanh(c) and its product with W_hr, per step.
  std::vector<T> raw(projected ? static_cast<size_t>(batch * hidden) : 0);
  std::vector<T> projection(projected ? static_cast<size_t>(batch * state) : 0);
  // Each block of hg starts as the bias rows; the product adds h W_hh to it.
  const auto bias_rows = [=](int64_t, int64_t, int64_t rows, int64_t c0, int64_t cols, T* block,
                             int64_t ld) {
    for (int64_t r = 0; r < rows; ++r) std::copy_n(bias + c0, cols, block + r * ld);
  };
  const auto past_length = [&](int64_t t, int64_t r) { return lengths && t >= lengths[r]; };
  for (int64_t i = 0; i < z.time; ++i) {
    const int64_t t = recurrence_step(i, z.time, reverse);
    // hg = h W_hh + b_hh: matmul's product, cut over the pool (blocked_product.h).
    blocked_product<T>(ctx, ctx.output(1), ctx.input(1), false, false, Shape{batch, width}, hg,
                       NoEpilogue{}, bias_rows);
    ctx.parallel_for(batch, hidden * 20, [&](int64_t r0, int64_t r1) {
      for (int64_t r = r0; r < r1; ++r) {
        const int64_t row = t * batch + r;
        T* act_row = act + row * width;
        T* aux_row = aux ? aux + row * hidden : nullptr;
        if (past_length(t, r)) {  // past the sequence: its state stays, its outputs are zeros
          std::fill_n(y + row * state, state, T(0));
          std::fill_n(act_row, width, T(0));
          if (aux_row) std::fill_n(aux_row, hidden, T(0));
          continue;
        }
        // With a projection the cell's h goes to `raw`; the state is its product with W_hr.
        forward_row<kCell>(hidden, x + row * width, hg + r * width,
                           projected ? raw.data() + r * hidden : h + r * state,
                           kLstm ? c + r * hidden : nullptr, act_row, aux_row,
                           projected ? nullptr : y + row * state);
      }
    });
    if (!projected) continue;
    blocked_product<T>(
        ctx, Tensor::from_blob(raw.data(), Shape{batch, hidden}, ctx.input(0).dtype()),
        ctx.input(in.weight_hr), false, false, Shape{batch, state}, projection.data());
    for (int64_t r = 0; r < batch; ++r) {
      if (past_length(t, r)) continue;
      std::copy_n(projection.data() + r * state, state, h + r * state);
      std::copy_n(projection.data() + r * state, state, y + (t * batch + r) * state);
    }
  }
}

template <RecurrentCell kCell, typename T>
void recurrence_backward_cpu(KernelContext& ctx) {
  constexpr bool kLstm = kCell == RecurrentCell::lstm, kAux = recurrent_has_aux(kCell);
  const RecurrenceInputs in = grad_inputs(kCell, ctx.attr<bool>("projected"));
  const bool projected = in.weight_hr >= 0;
  const DType dtype = ctx.input(0).dtype();
  const RecurrenceSizes z = sizes_of(ctx, kCell, 3, 0);
  const int64_t time = z.time, batch = z.batch, hidden = z.hidden, width = z.width;
  const int64_t state = z.state;
  const T* y = ctx.input(2).data<T>();
  const T* act = ctx.input(3).data<T>();
  const T* dy = ctx.input(4).data<T>();
  const T* aux = kAux ? ctx.input(in.aux).data<T>() : nullptr;
  const RecurrencePrevious previous{time, batch, ctx.attr<bool>("reverse"),
                                    checked_lengths(ctx, in)};
  T* dx = ctx.output(0).data<T>();
  T* dw = ctx.output(1).data<T>();
  T* dbias = ctx.output(2).data<T>();
  T* dh = ctx.output(3).data<T>();  // the gradient reaching the state: d h0 at the end
  T* dc = kLstm ? ctx.output(4).data<T>() : nullptr;
  T* dw_hr = projected ? ctx.output(5).data<T>() : nullptr;
  std::copy_n(ctx.input(5).data<T>(), batch * state, dh);
  if constexpr (kLstm) std::copy_n(ctx.input(in.dc_last).data<T>(), batch * hidden, dc);
  const int64_t rows = time * batch;
  // d hg of every step (dx itself where the two are equal), and each step's h_prev, for W_hh's
  // gradient after the loop: one product over all steps.
  std::vector<T> dhg_own(kCell == RecurrentCell::gru ? static_cast<size_t>(rows * width) : 0);
  T* dhg = kCell == RecurrentCell::gru ? dhg_own.data() : dx;
  std::vector<T> h_prev_all(static_cast<size_t>(rows * state));
  // A projected LSTM's per-step gradient of its state (dy added), o tanh(c), and the gradient
  // of o tanh(c) (for W_hr's gradient: one product over all steps), and a row of zeros.
  const size_t kept = projected ? static_cast<size_t>(rows) : 0;
  std::vector<T> d_state_all(kept * state), raw_all(kept * hidden);
  std::vector<T> d_raw(projected ? static_cast<size_t>(batch * hidden) : 0);
  const std::vector<T> zeros(static_cast<size_t>(hidden), T(0));
  const auto past_length = [&](int64_t t, int64_t r) {
    return previous.lengths && t >= previous.lengths[r];
  };
  for (int64_t i = 0; i < time && batch > 0 && hidden > 0; ++i) {
    const int64_t t = recurrence_step(time - 1 - i, time, previous.reverse);  // backwards
    if (projected) {
      // d state = dh + dy; o tanh(c)'s gradient is its product with W_hr^T.
      T* d_state = d_state_all.data() + t * batch * state;
      for (int64_t r = 0; r < batch; ++r)
        for (int64_t j = 0; j < state; ++j)
          d_state[r * state + j] =
              past_length(t, r) ? T(0) : dh[r * state + j] + dy[(t * batch + r) * state + j];
      blocked_product<T>(ctx, Tensor::from_blob(d_state, Shape{batch, state}, dtype),
                         ctx.input(in.weight_hr), false, true, Shape{batch, hidden}, d_raw.data());
    }
    ctx.parallel_for(batch, hidden * 30, [&](int64_t r0, int64_t r1) {
      for (int64_t r = r0; r < r1; ++r) {
        const int64_t row = t * batch + r;
        T* dx_row = dx + row * width;
        T* h_prev_row = h_prev_all.data() + row * state;
        if (past_length(t, r)) {  // the state passed through
          std::fill_n(dx_row, width, T(0));
          if (dhg != dx) std::fill_n(dhg + row * width, width, T(0));
          std::fill_n(h_prev_row, state, T(0));
          if (projected) std::fill_n(raw_all.data() + row * hidden, hidden, T(0));
          continue;
        }
        const int64_t before = previous.row(t, r);
        const T* h_prev = before < 0 ? initial_row<T>(ctx.input(1), r) : y + before * state;
        const T* c_prev = !kLstm       ? nullptr
                          : before < 0 ? initial_row<T>(ctx.input(in.c0), r)
                                       : aux + before * hidden;
        const T* act_row = act + row * width;
        const T* aux_row = aux ? aux + row * hidden : nullptr;
        T* dhg_row = dhg != dx ? dhg + row * width : nullptr;
        if (!projected) {
          backward_row<kCell>(hidden, act_row, aux_row, h_prev, c_prev, dy + row * state,
                              dh + r * state, kLstm ? dc + r * hidden : nullptr, dx_row, dhg_row);
        } else {
          // The LSTM's own h is o tanh(c), reached by d_raw (dy is in it); its h_prev only through
          // hg. The state's gradient went into d_raw: it starts again from 0.
          backward_row<kCell>(hidden, act_row, aux_row, zeros.data(), c_prev, zeros.data(),
                              d_raw.data() + r * hidden, kLstm ? dc + r * hidden : nullptr, dx_row,
                              dhg_row);
          std::fill_n(dh + r * state, state, T(0));
          T* raw_row = raw_all.data() + row * hidden;
          for (int64_t j = 0; j < hidden; ++j)
            raw_row[j] = act_row[3 * hidden + j] * tanh_cpu_fn{}(aux_row[j]);
        }
        std::copy_n(h_prev, state, h_prev_row);
      }
    });
    // dh_prev += dhg W_hh^T (rows past their length have dhg 0), added to what dh holds.
    blocked_product<T>(ctx, Tensor::from_blob(dhg + t * batch * width, Shape{batch, width}, dtype),
                       ctx.input(0), false, true, Shape{batch, state}, dh, NoEpilogue{}, keep_c<T>);
  }
  // d W_hh = sum over steps of h_prev^T dhg: [S, T B] x [T B, G H]; d W_hr likewise.
  if (rows == 0 || hidden == 0) {
    std::fill_n(dw, state * width, T(0));
    if (projected) std::fill_n(dw_hr, hidden * state, T(0));
  } else {
    blocked_product<T>(ctx, Tensor::from_blob(h_prev_all.data(), Shape{rows, state}, dtype),
                       Tensor::from_blob(dhg, Shape{rows, width}, dtype), true, false,
                       Shape{state, width}, dw);
    if (projected)
      blocked_product<T>(ctx, Tensor::from_blob(raw_all.data(), Shape{rows, hidden}, dtype),
                         Tensor::from_blob(d_state_all.data(), Shape{rows, state}, dtype), true,
                         false, Shape{hidden, state}, dw_hr);
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
  dispatch_float(ctx.input(0).dtype(), [&](auto tag) {
    using T = decltype(tag);
    dispatch_recurrent_cell(kernel_cell(ctx), [&](auto cell) {
      if constexpr (kGrad)
        recurrence_backward_cpu<decltype(cell)::value, T>(ctx);
      else
        recurrence_forward_cpu<decltype(cell)::value, T>(ctx);
    });
  });
}

AttrMap recurrence_attrs(const Node& node) {
  return {{"cell", node.attr<std::string>("cell")},
          {"reverse", node.attr<bool>("reverse")},
          {"projected", node.attr<bool>("projected")}};
}

KILN_OP(recurrence)
    .precision(Precision::keep_f32)
    .input("x")
    .input("weight_hh")
    .input("bias_hh")
    .variadic_input("states", 1)
    .attr("cell", std::string("lstm"))
    .attr("reverse", false)
    .attr("projected", false)
    .infer(infer_recurrence)
    .kernel(DeviceKind::cpu, recurrence_cpu<false>, {f32, f64})
    .grad([](GradContext& c) -> GradList {
      RecurrentCell cell = RecurrentCell::lstm;
      parse_recurrent_cell(c.attr<std::string>("cell"), cell);  // checked when it was built
      const RecurrenceInputs in = forward_inputs(cell, c.attr<bool>("projected"));
      const bool lstm = cell == RecurrentCell::lstm, aux = recurrent_has_aux(cell);
      KILN_CHECK(!c.has_grad_output(2) && !(aux && c.has_grad_output(3)), GraphError,
                 "[recurrence] ", c.node().name(),
                 ": its activations (outputs 2 and 3, the backward's inputs) are not "
                 "differentiable");
      std::vector<Value> inputs{c.input(1),  c.input(3),       c.output(0),
                                c.output(2), c.grad_output(0), c.grad_output(1)};
      if (aux) inputs.push_back(c.output(3));
      if (lstm) {
        inputs.push_back(c.input(in.c0));
        inputs.push_back(c.grad_output(4));
      }
      if (in.weight_hr >= 0) inputs.push_back(c.input(in.weight_hr));
      const int lengths = in.lengths(c.num_inputs());
      if (lengths >= 0) inputs.push_back(c.input(lengths));
      std::vector<Value> d =
          c.graph().add_node("recurrence_grad", inputs, recurrence_attrs(c.node()));
      // A state of one row [1, H] served every sequence: its gradient is their sum.
      const auto initial_gradient = [](const Value& d_initial, const Value& initial) {
        return initial.shape().is_known() && initial.shape() == d_initial.shape()
                   ? d_initial
                   : sum_to(d_initial, initial);
      };
      GradList out{d[0], d[1], d[2], initial_gradient(d[3], c.input(3))};
      if (lstm) out.push_back(initial_gradient(d[4], c.input(in.c0)));
      if (in.weight_hr >= 0) out.push_back(d[5]);
      if (lengths >= 0) out.push_back(Value());
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
    .attr("projected", false)
    .infer(infer_recurrence_grad)
    .kernel(DeviceKind::cpu, recurrence_cpu<true>, {f32, f64});

}  // namespace
}  // namespace ops

RecurrenceOutputs recurrence(RecurrentCell cell, const Value& input_gates, const Value& weight_hh,
                             const Value& bias_hh, const Value& h0, const Value& c0,
                             const Value& lengths, bool reverse, const Value& weight_hr) {
  const bool lstm = cell == RecurrentCell::lstm;
  KILN_CHECK(lstm == c0.defined(), GraphError, "[recurrence] ", input_gates.name(), ": the ",
             recurrent_cell_name(cell), " cell ", lstm ? "needs" : "takes no", " c0");
  KILN_CHECK(lstm || !weight_hr.defined(), GraphError, "[recurrence] ", input_gates.name(),
             ": a projection (weight_hr) is the lstm cell's, not the ", recurrent_cell_name(cell),
             " cell's");
  Graph& g = common_graph("recurrence", {&input_gates, &weight_hh, &bias_hh, &h0});
  std::vector<Value> inputs{input_gates, weight_hh, bias_hh, h0};
  if (lstm) inputs.push_back(c0);
  if (weight_hr.defined()) inputs.push_back(weight_hr);
  if (lengths.defined()) {
    KILN_CHECK(is_integer(lengths.dtype()), GraphError, "[recurrence] ", lengths.name(),
               ": lengths must be integers, got ", dtype_name(lengths.dtype()));
    inputs.push_back(lengths.dtype() == i64 ? lengths : cast(lengths, i64));
  }
  std::vector<Value> out = g.add_node("recurrence", inputs,
                                      {{"cell", std::string(recurrent_cell_name(cell))},
                                       {"reverse", reverse},
                                       {"projected", weight_hr.defined()}});
  return {out[0], out[1], lstm ? out[4] : Value()};
}

}  // namespace kiln
