// The math of the recurrence op, one element of one step, shared by its CPU kernels
// (ops/nn/recurrence.cc) and its CUDA ones (ops/nn/recurrence.cu). A step of every cell starts
// from the input's gates x (x_t W_ih + b_ih, computed for all steps by one product before the op)
// and the hidden state's gates hg = h_prev W_hh + b_hh (one product per step, inside the op):
//   rnn_tanh, rnn_relu:  h = f(x + hg)
//   lstm:  the LSTM step of recurrent_cells.h over the gates x + hg (i, f, g, o)
//   gru:   r = sigmoid(x_r + hg_r), z = sigmoid(x_z + hg_z), n = tanh(x_n + r hg_n),
//          h = (1 - z) n + z h_prev
// The backward gives each step's gradient in x (dx) and in hg (dhg; equal to dx except for the
// GRU's n block, d_n r), and what reaches h_prev besides hg (the GRU's dh z): the op then adds
// dhg W_hh^T to it, and sums h_prev^T dhg over the steps for W_hh's gradient. An LSTM with a
// projection W_hr [H, P] keeps a P wide state h = (o tanh(c)) W_hr: the op multiplies each step's
// cell output by W_hr, and its gradient by W_hr^T, around these elements.
#pragma once

#include <cstdint>
#include <string>
#include <type_traits>

#include "kiln/framework/dtype.h"
#include "kiln/framework/kernel.h"
#include "kiln/ops/nn/recurrent_cell.h"
#include "kiln/ops/nn/recurrent_cells.h"

namespace kiln::ops {

/// The gate blocks of a cell's x and hg rows: 1, 4 (i, f, g, o) or 3 (r, z, n).
KILN_HOST_DEVICE constexpr int64_t recurrent_gates(RecurrentCell cell) {
  return cell == RecurrentCell::lstm ? 4 : cell == RecurrentCell::gru ? 3 : 1;
}

/// Whether the cell keeps a second per-step tensor for its backward (`aux`): the LSTM's c, the
/// GRU's hg_n.
KILN_HOST_DEVICE constexpr bool recurrent_has_aux(RecurrentCell cell) {
  return cell == RecurrentCell::lstm || cell == RecurrentCell::gru;
}

/// Where a node's inputs after the fixed ones are (-1: absent). recurrence: x, weight_hh,
/// bias_hh, h0, then c0 (LSTM), weight_hr (a projected LSTM), lengths (when given).
/// recurrence_grad: weight_hh, h0, y, act, dy, dh_last, then aux (LSTM, GRU), c0 and dc_last
/// (LSTM), weight_hr (projected), lengths.
struct RecurrenceInputs {
  int c0 = -1, weight_hr = -1, aux = -1, dc_last = -1;
  int count = 0;  // the inputs before lengths
  int lengths(int num_inputs) const { return num_inputs > count ? count : -1; }
};

/// The places of a recurrence node's inputs.
inline RecurrenceInputs forward_inputs(RecurrentCell cell, bool projected) {
  RecurrenceInputs in;
  int next = 4;
  if (cell == RecurrentCell::lstm) in.c0 = next++;
  if (projected) in.weight_hr = next++;
  in.count = next;
  return in;
}

/// The places of a recurrence_grad node's inputs.
inline RecurrenceInputs grad_inputs(RecurrentCell cell, bool projected) {
  RecurrenceInputs in;
  int next = 6;
  if (recurrent_has_aux(cell)) in.aux = next++;
  if (cell == RecurrentCell::lstm) {
    in.c0 = next++;
    in.dc_last = next++;
  }
  if (projected) in.weight_hr = next++;
  in.count = next;
  return in;
}

/// The cell a recurrence node's kernel runs (its `cell` attribute).
inline RecurrentCell kernel_cell(const KernelContext& ctx) {
  RecurrentCell cell = RecurrentCell::lstm;
  const std::string& name = ctx.attr<std::string>("cell");
  if (!parse_recurrent_cell(name, cell))
    throw Error(str(ctx.where(), ": cell \"", name, "\" is unknown"));
  return cell;
}

/// fn(std::integral_constant<RecurrentCell, cell>{}): a kernel instantiated for each cell.
template <typename Fn>
void dispatch_recurrent_cell(RecurrentCell cell, Fn&& fn) {
  switch (cell) {
    case RecurrentCell::rnn_tanh:
      return fn(std::integral_constant<RecurrentCell, RecurrentCell::rnn_tanh>{});
    case RecurrentCell::rnn_relu:
      return fn(std::integral_constant<RecurrentCell, RecurrentCell::rnn_relu>{});
    case RecurrentCell::lstm:
      return fn(std::integral_constant<RecurrentCell, RecurrentCell::lstm>{});
    case RecurrentCell::gru:
      return fn(std::integral_constant<RecurrentCell, RecurrentCell::gru>{});
  }
}

/// The step the i-th iteration of the forward runs.
KILN_HOST_DEVICE int64_t recurrence_step(int64_t i, int64_t time, bool reverse) {
  return reverse ? time - 1 - i : i;
}

/// Where step t's h_prev (and c_prev) of sequence r lie for the backward: the step before it in
/// the direction of travel, whose outputs (y, the LSTM's aux) hold it, or the initial state at a
/// sequence's first step.
struct RecurrencePrevious {
  int64_t time, batch;
  bool reverse;
  const int64_t* lengths;  // nullptr: every sequence has T steps
  /// The row of [T, B, .] holding step t's previous state for sequence r, or -1: the initial
  /// state's row r. (Steps past a length are never asked.)
  KILN_HOST_DEVICE int64_t row(int64_t t, int64_t r) const {
    const int64_t length = lengths && lengths[r] < time ? lengths[r] : time;
    const int64_t before = reverse ? t + 1 : t - 1;
    return before < 0 || before >= length ? -1 : before * batch + r;
  }
};

/// Element j of one row of a step: x, hg and act point at the row's column j (gate block k at
/// k * hidden), aux at the row's element j. `c` holds c_prev and receives c (LSTM only).
/// Returns h. `F` gives sigmoid(C) and tanh(C) (the CPU's vector forms, the GPU's own).
template <RecurrentCell kCell, typename F, typename C, typename T>
KILN_HOST_DEVICE C recurrence_forward_element(const F& f, int64_t hidden, const T* x, const T* hg,
                                              C h_prev, C& c, T* act, T* aux) {
  (void)h_prev;  // each is read by some cells only
  (void)aux;
  const auto gate = [&](int64_t k) {
    return static_cast<C>(x[k * hidden]) + static_cast<C>(hg[k * hidden]);
  };
  if constexpr (kCell == RecurrentCell::lstm) {
    const C i = f.sigmoid(gate(0)), forget = f.sigmoid(gate(1));
    const C g = f.tanh(gate(2)), o = f.sigmoid(gate(3));
    c = forget * c + i * g;
    act[0] = static_cast<T>(i);
    act[hidden] = static_cast<T>(forget);
    act[2 * hidden] = static_cast<T>(g);
    act[3 * hidden] = static_cast<T>(o);
    *aux = static_cast<T>(c);
    return o * f.tanh(c);
  } else if constexpr (kCell == RecurrentCell::gru) {
    const C r = f.sigmoid(gate(0)), z = f.sigmoid(gate(1));
    const C hg_n = static_cast<C>(hg[2 * hidden]);
    const C n = f.tanh(static_cast<C>(x[2 * hidden]) + r * hg_n);
    act[0] = static_cast<T>(r);
    act[hidden] = static_cast<T>(z);
    act[2 * hidden] = static_cast<T>(n);
    *aux = static_cast<T>(hg_n);
    return (C(1) - z) * n + z * h_prev;
  } else {
    const C v = gate(0);
    const C h = kCell == RecurrentCell::rnn_tanh ? f.tanh(v) : (v > C(0) ? v : C(0));
    act[0] = static_cast<T>(h);
    return h;
  }
}

/// The backward of element j of one row of a step, from what the forward kept (act, aux; x's
/// layout as above), h_prev and c_prev, and dh, the gradient reaching h. Writes dx, and for the
/// GRU dhg (same layout as x; the other cells' d hg is dx, so their callers read dx for it);
/// `dc` holds the gradient reaching c and receives c_prev's (LSTM). Returns what reaches h_prev
/// besides hg (the GRU's; 0 otherwise).
template <RecurrentCell kCell, typename F, typename C, typename T>
KILN_HOST_DEVICE C recurrence_backward_element(const F& f, int64_t hidden, const T* act,
                                               const T* aux, C h_prev, C c_prev, C dh, C& dc, T* dx,
                                               T* dhg) {
  (void)h_prev;  // each is read by some cells only
  (void)c_prev;
  (void)aux;
  (void)dhg;
  if constexpr (kCell == RecurrentCell::lstm) {
    C d_i, d_f, d_g, d_o, dc_prev;
    lstm_cell_backward_element<C>(static_cast<C>(act[0]), static_cast<C>(act[hidden]),
                                  static_cast<C>(act[2 * hidden]), static_cast<C>(act[3 * hidden]),
                                  f.tanh(static_cast<C>(*aux)), c_prev, dh, dc, d_i, d_f, d_g, d_o,
                                  dc_prev);
    const C d[4] = {d_i, d_f, d_g, d_o};
    for (int k = 0; k < 4; ++k) dx[k * hidden] = static_cast<T>(d[k]);
    dc = dc_prev;
    return C(0);
  } else if constexpr (kCell == RecurrentCell::gru) {
    const C r = static_cast<C>(act[0]);
    C d_r, d_z, d_n, dh_prev;
    gru_cell_backward_element<C>(r, static_cast<C>(act[hidden]), static_cast<C>(act[2 * hidden]),
                                 static_cast<C>(*aux), h_prev, dh, d_r, d_z, d_n, dh_prev);
    dx[0] = dhg[0] = static_cast<T>(d_r);
    dx[hidden] = dhg[hidden] = static_cast<T>(d_z);
    dx[2 * hidden] = static_cast<T>(d_n);
    dhg[2 * hidden] = static_cast<T>(d_n * r);
    return dh_prev;
  } else {
    // The activation's derivative from its output h: 1 - h^2, or whether h > 0.
    const C h = static_cast<C>(act[0]);
    const C d = kCell == RecurrentCell::rnn_tanh ? dh * (C(1) - h * h) : (h > C(0) ? dh : C(0));
    dx[0] = static_cast<T>(d);
    return C(0);
  }
}

}  // namespace kiln::ops
