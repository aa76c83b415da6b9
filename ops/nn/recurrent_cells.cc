// The fused recurrent cells: one LSTM or GRU step as one op, and its backward as one (math in
// recurrent_cells.h).
//   lstm_cell(gates [B, 4H][, c_prev [B, H]]) -> h [B, H], c [B, H], act [B, 4H]
//   lstm_cell_grad(act, c, dh, dc[, c_prev]) -> d gates [B, 4H][, d c_prev [B, H]]
//   gru_cell(x_gates [B, 3H][, h_gates [B, 3H] or [3H][, h_prev [B, H]]]) -> h [B, H], act [B, 3H]
//   gru_cell_grad(act, dh[, h_gates[, h_prev]]) -> d x_gates[, d h_gates [B, 3H][, d h_prev]]
// `act` holds the activated gates (LSTM: i, f, g, o; GRU: r, z, n): the backward reads them
// instead of evaluating the activations again. Absent states are zeros (the first step's
// default); a GRU's h_gates may be one row (b_hh alone, when h is zero) or absent (no bias
// either). Unrolled in elementwise ops, an LSTM step was 12 forward and ~25 backward nodes, the
// activations' outputs each read again by the backward (so not fusable); here it is one each way.
#include "kiln/ops/nn/recurrent_cells.h"

#include <cmath>

#include "kiln/framework/gradient.h"
#include "kiln/framework/kernel.h"
#include "kiln/ops/array.h"
#include "kiln/ops/dtypes.h"
#include "kiln/ops/math/elementwise.h"
#include "kiln/ops/math/vector_math.h"
#include "kiln/ops/nn.h"

namespace kiln {
namespace ops {
namespace {

// The batch of a [B, width] shape and another's, where either may be unknown (-1).
int64_t common_dim(const InferContext& ctx, const char* what, int64_t a, int64_t b) {
  if (a >= 0 && b >= 0 && a != b) ctx.fail(what, " differ: ", a, " and ", b);
  return a >= 0 ? a : b;
}

// Checks that input `i` is [batch, width] (unknown dims match anything) and returns its batch.
int64_t expect_matrix(const InferContext& ctx, int i, int64_t batch, int64_t width,
                      const char* what) {
  const Shape& s = ctx.shape(i);
  if (s.rank() != 2) ctx.fail(what, " must be a matrix [B, ", width, "], got ", s);
  ctx.expect_same_dtype(0, i);
  common_dim(ctx, "the batch sizes", batch, s[0]);
  if (width >= 0 && s[1] >= 0 && s[1] != width)
    ctx.fail(what, " must be [B, ", width, "], got ", s);
  return batch >= 0 ? batch : s[0];
}

// The hidden size H of input 0, a floating [B, G H] of `gates` blocks named `names`, checked
// (-1: unknown).
int64_t gate_hidden(const InferContext& ctx, const char* what, int64_t gates, const char* names) {
  ctx.expect_dtype(0, dtypes_of(DTypeClass::floating));
  const Shape& s = ctx.shape(0);
  if (s.rank() != 2 || (s[1] >= 0 && s[1] % gates != 0))
    ctx.fail(what, " must be [B, ", gates, " H] (", names, "), got ", s);
  return s[1] >= 0 ? s[1] / gates : -1;
}

std::vector<TensorType> infer_lstm_cell(const InferContext& ctx) {
  const int64_t hidden = gate_hidden(ctx, "gates", 4, "i, f, g, o");
  if (ctx.num_inputs() > 2) ctx.fail("takes gates and at most one c_prev, got ", ctx.num_inputs());
  int64_t batch = ctx.shape(0)[0];
  if (ctx.num_inputs() == 2) batch = expect_matrix(ctx, 1, batch, hidden, "c_prev");
  const DType d = ctx.dtype(0);
  return {{d, Shape{batch, hidden}},
          {d, Shape{batch, hidden}},
          {d, Shape{batch, hidden >= 0 ? 4 * hidden : -1}}};
}

// Inputs act, c, dh, dc[, c_prev]: d gates[, d c_prev].
std::vector<TensorType> infer_lstm_cell_grad(const InferContext& ctx) {
  const int64_t hidden = gate_hidden(ctx, "act", 4, "i, f, g, o");
  if (ctx.num_inputs() > 5)
    ctx.fail("takes act, c, dh, dc and at most one c_prev, got ", ctx.num_inputs(), " inputs");
  int64_t batch = ctx.shape(0)[0];
  const char* names[] = {"act", "c", "dh", "dc", "c_prev"};
  for (int i = 1; i < ctx.num_inputs(); ++i) batch = expect_matrix(ctx, i, batch, hidden, names[i]);
  const DType d = ctx.dtype(0);
  std::vector<TensorType> out{{d, Shape{batch, hidden >= 0 ? 4 * hidden : -1}}};
  if (ctx.num_inputs() == 5) out.push_back({d, Shape{batch, hidden}});
  return out;
}

// The CPU's activations: the vectorized f32 forms (ops/math/vector_math.h, within 4 ulp of
// libm), libm in f64.
inline float sigmoid_cpu(float x) {
  return sigmoid_f32(x);
}
inline double sigmoid_cpu(double x) {
  return sigmoid_of(x);
}
inline float tanh_cpu(float x) {
  return tanh_f32(x);
}
inline double tanh_cpu(double x) {
  return std::tanh(x);
}

// Rows [r0, r1) of the forward; kCell: c_prev is given. Each row's loop vectorizes (f32).
template <typename T, bool kCell>
void lstm_cell_rows(const T* gates, const T* c_prev, T* h, T* c, T* act, int64_t hidden, int64_t r0,
                    int64_t r1) {
  for (int64_t r = r0; r < r1; ++r) {
    const T* __restrict xi = gates + r * 4 * hidden;
    const T* __restrict xf = xi + hidden;
    const T* __restrict xg = xf + hidden;
    const T* __restrict xo = xg + hidden;
    const T* __restrict cp = kCell ? c_prev + r * hidden : nullptr;
    T* __restrict ai = act + r * 4 * hidden;
    T* __restrict af = ai + hidden;
    T* __restrict ag = af + hidden;
    T* __restrict ao = ag + hidden;
    T* __restrict h_row = h + r * hidden;
    T* __restrict c_row = c + r * hidden;
    KILN_CELL_LOOP
    for (int64_t j = 0; j < hidden; ++j) {
      const T i = sigmoid_cpu(xi[j]), f = sigmoid_cpu(xf[j]);
      const T g = tanh_cpu(xg[j]), o = sigmoid_cpu(xo[j]);
      T cell = i * g;
      if constexpr (kCell) cell += f * cp[j];
      ai[j] = i;
      af[j] = f;
      ag[j] = g;
      ao[j] = o;
      c_row[j] = cell;
      h_row[j] = o * tanh_cpu(cell);
    }
  }
}

template <typename T>
void lstm_cell_typed(KernelContext& ctx) {
  const Tensor& gates = ctx.input(0);
  const int64_t batch = gates.shape()[0], hidden = gates.shape()[1] / 4;
  const T* c_prev = ctx.num_inputs() > 1 ? ctx.input(1).data<T>() : nullptr;
  T* h = ctx.output(0).data<T>();
  T* c = ctx.output(1).data<T>();
  T* act = ctx.output(2).data<T>();
  // ~60 flops per element of h (four activations and the tanh of c).
  ctx.parallel_for(batch, 60 * hidden, [&](int64_t r0, int64_t r1) {
    if (c_prev)
      lstm_cell_rows<T, true>(gates.data<T>(), c_prev, h, c, act, hidden, r0, r1);
    else
      lstm_cell_rows<T, false>(gates.data<T>(), nullptr, h, c, act, hidden, r0, r1);
  });
}

void lstm_cell_cpu(KernelContext& ctx) {
  dispatch_float(ctx.input(0).dtype(), [&](auto tag) { lstm_cell_typed<decltype(tag)>(ctx); });
}

// Rows [r0, r1) of the backward; kCell: c_prev is given (and its gradient wanted).
template <typename T, bool kCell>
void lstm_cell_grad_rows(const T* act, const T* c, const T* dh, const T* dc, const T* c_prev,
                         T* dgates, T* dc_prev, int64_t hidden, int64_t r0, int64_t r1) {
  for (int64_t r = r0; r < r1; ++r) {
    const T* __restrict a = act + r * 4 * hidden;
    const T* __restrict c_row = c + r * hidden;
    const T* __restrict dh_row = dh + r * hidden;
    const T* __restrict dc_row = dc + r * hidden;
    const T* __restrict cp = kCell ? c_prev + r * hidden : nullptr;
    T* __restrict d = dgates + r * 4 * hidden;
    T* __restrict dcp = kCell ? dc_prev + r * hidden : nullptr;
    KILN_CELL_LOOP
    for (int64_t j = 0; j < hidden; ++j) {
      T d_i, d_f, d_g, d_o, d_prev;
      lstm_cell_backward_element<T>(a[j], a[hidden + j], a[2 * hidden + j], a[3 * hidden + j],
                                    tanh_cpu(c_row[j]), kCell ? cp[j] : T(0), dh_row[j], dc_row[j],
                                    d_i, d_f, d_g, d_o, d_prev);
      d[j] = d_i;
      d[hidden + j] = d_f;
      d[2 * hidden + j] = d_g;
      d[3 * hidden + j] = d_o;
      if constexpr (kCell) dcp[j] = d_prev;
    }
  }
}

template <typename T>
void lstm_cell_grad_typed(KernelContext& ctx) {
  const Tensor& act = ctx.input(0);
  const int64_t batch = act.shape()[0], hidden = act.shape()[1] / 4;
  const T* c = ctx.input(1).data<T>();
  const T* dh = ctx.input(2).data<T>();
  const T* dc = ctx.input(3).data<T>();
  const bool has_cell = ctx.num_inputs() > 4;
  const T* c_prev = has_cell ? ctx.input(4).data<T>() : nullptr;
  T* dgates = ctx.output(0).data<T>();
  T* dc_prev = has_cell ? ctx.output(1).data<T>() : nullptr;
  ctx.parallel_for(batch, 30 * hidden, [&](int64_t r0, int64_t r1) {
    if (has_cell)
      lstm_cell_grad_rows<T, true>(act.data<T>(), c, dh, dc, c_prev, dgates, dc_prev, hidden, r0,
                                   r1);
    else
      lstm_cell_grad_rows<T, false>(act.data<T>(), c, dh, dc, nullptr, dgates, nullptr, hidden, r0,
                                    r1);
  });
}

void lstm_cell_grad_cpu(KernelContext& ctx) {
  dispatch_float(ctx.input(0).dtype(), [&](auto tag) { lstm_cell_grad_typed<decltype(tag)>(ctx); });
}

KILN_OP(lstm_cell)
    .precision(Precision::keep_f32)
    .input("gates")
    .variadic_input("c_prev", 0)
    .infer(infer_lstm_cell)
    .kernel(DeviceKind::cpu, lstm_cell_cpu, {f32, f64})
    .grad([](GradContext& c) -> GradList {
      KILN_CHECK(!c.has_grad_output(2), GraphError, "[lstm_cell] ", c.node().name(),
                 ": its third output (the activated gates, the backward's input) is not "
                 "differentiable");
      std::vector<Value> inputs{c.output(2), c.output(1), c.grad_output(0), c.grad_output(1)};
      const bool has_cell = c.num_inputs() > 1;
      if (has_cell) inputs.push_back(c.input(1));
      std::vector<Value> grads = c.graph().add_node("lstm_cell_grad", inputs);
      GradList out{grads[0]};
      if (has_cell) out.push_back(grads[1]);
      return out;
    });

KILN_OP(lstm_cell_grad)
    .precision(Precision::keep_f32)
    .input("act")
    .input("c")
    .input("dh")
    .input("dc")
    .variadic_input("c_prev", 0)
    .infer(infer_lstm_cell_grad)
    .kernel(DeviceKind::cpu, lstm_cell_grad_cpu, {f32, f64});

// ---- GRU.

// Checks h_gates (input i): [B, 3H], or one row [3H]; returns the batch.
int64_t expect_hidden_gates(const InferContext& ctx, int i, int64_t batch, int64_t hidden) {
  const Shape& s = ctx.shape(i);
  if (s.rank() == 2) return expect_matrix(ctx, i, batch, hidden >= 0 ? 3 * hidden : -1, "h_gates");
  ctx.expect_same_dtype(0, i);
  if (s.rank() != 1 || (hidden >= 0 && s[0] >= 0 && s[0] != 3 * hidden))
    ctx.fail("h_gates must be [B, ", 3 * hidden, "] or one row [", 3 * hidden, "], got ", s);
  return batch;
}

// Inputs x_gates[, h_gates[, h_prev]]: h, act.
std::vector<TensorType> infer_gru_cell(const InferContext& ctx) {
  const int64_t hidden = gate_hidden(ctx, "x_gates", 3, "r, z, n");
  if (ctx.num_inputs() > 3)
    ctx.fail("takes x_gates, h_gates and h_prev, got ", ctx.num_inputs(), " inputs");
  int64_t batch = ctx.shape(0)[0];
  if (ctx.num_inputs() > 1) batch = expect_hidden_gates(ctx, 1, batch, hidden);
  if (ctx.num_inputs() > 2) batch = expect_matrix(ctx, 2, batch, hidden, "h_prev");
  const DType d = ctx.dtype(0);
  return {{d, Shape{batch, hidden}}, {d, Shape{batch, hidden >= 0 ? 3 * hidden : -1}}};
}

// Inputs act, dh[, h_gates[, h_prev]]: d x_gates[, d h_gates [B, 3H][, d h_prev]].
std::vector<TensorType> infer_gru_cell_grad(const InferContext& ctx) {
  const int64_t hidden = gate_hidden(ctx, "act", 3, "r, z, n");
  if (ctx.num_inputs() > 4)
    ctx.fail("takes act, dh, h_gates and h_prev, got ", ctx.num_inputs(), " inputs");
  int64_t batch = expect_matrix(ctx, 1, ctx.shape(0)[0], hidden, "dh");
  if (ctx.num_inputs() > 2) batch = expect_hidden_gates(ctx, 2, batch, hidden);
  if (ctx.num_inputs() > 3) batch = expect_matrix(ctx, 3, batch, hidden, "h_prev");
  const DType d = ctx.dtype(0);
  const Shape gates{batch, hidden >= 0 ? 3 * hidden : -1};
  std::vector<TensorType> out{{d, gates}};
  if (ctx.num_inputs() > 2) out.push_back({d, gates});
  if (ctx.num_inputs() > 3) out.push_back({d, Shape{batch, hidden}});
  return out;
}

// Rows [r0, r1) of the GRU forward; kHidden: h_gates given (row r at r * hg_stride: 0 for one
// row), kPrev: h_prev given.
template <typename T, bool kHidden, bool kPrev>
void gru_cell_rows(const T* x_gates, const T* h_gates, int64_t hg_stride, const T* h_prev, T* h,
                   T* act, int64_t hidden, int64_t r0, int64_t r1) {
  for (int64_t r = r0; r < r1; ++r) {
    const T* __restrict x = x_gates + r * 3 * hidden;
    const T* __restrict hg = kHidden ? h_gates + r * hg_stride : nullptr;
    const T* __restrict hp = kPrev ? h_prev + r * hidden : nullptr;
    T* __restrict a = act + r * 3 * hidden;
    T* __restrict h_row = h + r * hidden;
    KILN_CELL_LOOP
    for (int64_t j = 0; j < hidden; ++j) {
      T xr = x[j], xz = x[hidden + j], xn = x[2 * hidden + j];
      if constexpr (kHidden) {
        xr += hg[j];
        xz += hg[hidden + j];
      }
      const T reset = sigmoid_cpu(xr), update = sigmoid_cpu(xz);
      const T n = tanh_cpu(kHidden ? xn + reset * hg[2 * hidden + j] : xn);
      T out = (T(1) - update) * n;
      if constexpr (kPrev) out += update * hp[j];
      a[j] = reset;
      a[hidden + j] = update;
      a[2 * hidden + j] = n;
      h_row[j] = out;
    }
  }
}

template <typename T>
void gru_cell_typed(KernelContext& ctx) {
  const Tensor& x = ctx.input(0);
  const int64_t batch = x.shape()[0], hidden = x.shape()[1] / 3;
  const bool has_hidden = ctx.num_inputs() > 1, has_prev = ctx.num_inputs() > 2;
  const T* hg = has_hidden ? ctx.input(1).data<T>() : nullptr;
  const int64_t hg_stride = has_hidden && ctx.input(1).shape().rank() == 2 ? 3 * hidden : 0;
  const T* hp = has_prev ? ctx.input(2).data<T>() : nullptr;
  T* h = ctx.output(0).data<T>();
  T* act = ctx.output(1).data<T>();
  ctx.parallel_for(batch, 45 * hidden, [&](int64_t r0, int64_t r1) {
    if (has_prev)
      gru_cell_rows<T, true, true>(x.data<T>(), hg, hg_stride, hp, h, act, hidden, r0, r1);
    else if (has_hidden)
      gru_cell_rows<T, true, false>(x.data<T>(), hg, hg_stride, nullptr, h, act, hidden, r0, r1);
    else
      gru_cell_rows<T, false, false>(x.data<T>(), nullptr, 0, nullptr, h, act, hidden, r0, r1);
  });
}

void gru_cell_cpu(KernelContext& ctx) {
  dispatch_float(ctx.input(0).dtype(), [&](auto tag) { gru_cell_typed<decltype(tag)>(ctx); });
}

// Rows [r0, r1) of the GRU backward; flags as gru_cell_rows'.
template <typename T, bool kHidden, bool kPrev>
void gru_cell_grad_rows(const T* act, const T* dh, const T* h_gates, int64_t hg_stride,
                        const T* h_prev, T* dx, T* dhg, T* dh_prev, int64_t hidden, int64_t r0,
                        int64_t r1) {
  for (int64_t r = r0; r < r1; ++r) {
    const T* __restrict a = act + r * 3 * hidden;
    const T* __restrict dh_row = dh + r * hidden;
    const T* __restrict hg = kHidden ? h_gates + r * hg_stride : nullptr;
    const T* __restrict hp = kPrev ? h_prev + r * hidden : nullptr;
    T* __restrict d_x = dx + r * 3 * hidden;
    T* __restrict d_hg = kHidden ? dhg + r * 3 * hidden : nullptr;
    T* __restrict d_hp = kPrev ? dh_prev + r * hidden : nullptr;
    KILN_CELL_LOOP
    for (int64_t j = 0; j < hidden; ++j) {
      T d_r, d_z, d_n, d_prev;
      gru_cell_backward_element<T>(a[j], a[hidden + j], a[2 * hidden + j],
                                   kHidden ? hg[2 * hidden + j] : T(0), kPrev ? hp[j] : T(0),
                                   dh_row[j], d_r, d_z, d_n, d_prev);
      d_x[j] = d_r;
      d_x[hidden + j] = d_z;
      d_x[2 * hidden + j] = d_n;
      if constexpr (kHidden) {
        d_hg[j] = d_r;
        d_hg[hidden + j] = d_z;
        d_hg[2 * hidden + j] = d_n * a[j];
      }
      if constexpr (kPrev) d_hp[j] = d_prev;
    }
  }
}

template <typename T>
void gru_cell_grad_typed(KernelContext& ctx) {
  const Tensor& act = ctx.input(0);
  const int64_t batch = act.shape()[0], hidden = act.shape()[1] / 3;
  const bool has_hidden = ctx.num_inputs() > 2, has_prev = ctx.num_inputs() > 3;
  const T* dh = ctx.input(1).data<T>();
  const T* hg = has_hidden ? ctx.input(2).data<T>() : nullptr;
  const int64_t hg_stride = has_hidden && ctx.input(2).shape().rank() == 2 ? 3 * hidden : 0;
  const T* hp = has_prev ? ctx.input(3).data<T>() : nullptr;
  T* dx = ctx.output(0).data<T>();
  T* dhg = has_hidden ? ctx.output(1).data<T>() : nullptr;
  T* dhp = has_prev ? ctx.output(2).data<T>() : nullptr;
  ctx.parallel_for(batch, 20 * hidden, [&](int64_t r0, int64_t r1) {
    const T* a = act.data<T>();
    if (has_prev)
      gru_cell_grad_rows<T, true, true>(a, dh, hg, hg_stride, hp, dx, dhg, dhp, hidden, r0, r1);
    else if (has_hidden)
      gru_cell_grad_rows<T, true, false>(a, dh, hg, hg_stride, nullptr, dx, dhg, nullptr, hidden,
                                         r0, r1);
    else
      gru_cell_grad_rows<T, false, false>(a, dh, nullptr, 0, nullptr, dx, nullptr, nullptr, hidden,
                                          r0, r1);
  });
}

void gru_cell_grad_cpu(KernelContext& ctx) {
  dispatch_float(ctx.input(0).dtype(), [&](auto tag) { gru_cell_grad_typed<decltype(tag)>(ctx); });
}

KILN_OP(gru_cell)
    .precision(Precision::keep_f32)
    .input("x_gates")
    .variadic_input("hidden", 0)
    .infer(infer_gru_cell)
    .kernel(DeviceKind::cpu, gru_cell_cpu, {f32, f64})
    .grad([](GradContext& c) -> GradList {
      KILN_CHECK(!c.has_grad_output(1), GraphError, "[gru_cell] ", c.node().name(),
                 ": its second output (the activated gates, the backward's input) is not "
                 "differentiable");
      std::vector<Value> inputs{c.output(1), c.grad_output(0)};
      for (int i = 1; i < c.num_inputs(); ++i) inputs.push_back(c.input(i));
      std::vector<Value> grads = c.graph().add_node("gru_cell_grad", inputs);
      GradList out{grads[0]};
      if (c.num_inputs() > 1) {
        // One row of h_gates (b_hh at a zero state) was read by every row.
        const Value h_gates = c.input(1);
        out.push_back(h_gates.shape().rank() == 1 ? sum_to(grads[1], h_gates) : grads[1]);
      }
      if (c.num_inputs() > 2) out.push_back(grads[2]);
      return out;
    });

KILN_OP(gru_cell_grad)
    .precision(Precision::keep_f32)
    .input("act")
    .input("dh")
    .variadic_input("hidden", 0)
    .infer(infer_gru_cell_grad)
    .kernel(DeviceKind::cpu, gru_cell_grad_cpu, {f32, f64});

}  // namespace
}  // namespace ops

LSTMCellState lstm_cell(const Value& gates, const Value& c_prev) {
  Graph& graph = c_prev.defined() ? common_graph("lstm_cell", {&gates, &c_prev})
                                  : common_graph("lstm_cell", {&gates});
  std::vector<Value> inputs{gates};
  if (c_prev.defined()) inputs.push_back(c_prev);
  std::vector<Value> out = graph.add_node("lstm_cell", inputs);
  return {out[0], out[1]};
}

Value gru_cell(const Value& x_gates, const Value& h_gates, const Value& h_prev) {
  KILN_CHECK(h_gates.defined() || !h_prev.defined(), GraphError,
             "[gru_cell] h_prev given without h_gates (h W_hh + b_hh)");
  Graph& graph = h_prev.defined()    ? common_graph("gru_cell", {&x_gates, &h_gates, &h_prev})
                 : h_gates.defined() ? common_graph("gru_cell", {&x_gates, &h_gates})
                                     : common_graph("gru_cell", {&x_gates});
  std::vector<Value> inputs{x_gates};
  if (h_gates.defined()) inputs.push_back(h_gates);
  if (h_prev.defined()) inputs.push_back(h_prev);
  return graph.add_node("gru_cell", inputs)[0];
}

}  // namespace kiln
