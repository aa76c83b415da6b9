// The op cases of the fused recurrent cells (ops/nn/recurrent_cells.cc) and of the whole-sequence
// recurrence (ops/nn/recurrence.cc), with direct f64 references written from their equations
// (not from the kernels' helpers in recurrent_cells.h and recurrence.h).
#include <algorithm>
#include <cmath>
#include <string>
#include <vector>

#include "cases/op_cases.h"

namespace kiln::testing {

namespace {

constexpr int64_t kBatch = 3, kHidden = 5;

double sigmoid(double x) {
  return 1 / (1 + std::exp(-x));
}

// y = h + 0.5 c of an LSTM step, from gates [B, 4H] (i, f, g, o) and c_prev [B, H] (or zeros).
Reference lstm_step_reference(bool has_cell) {
  return [has_cell](const std::vector<Tensor>& inputs) {
    const Tensor& gates = inputs[0];
    std::vector<double> y;
    for (int64_t b = 0; b < kBatch; ++b)
      for (int64_t j = 0; j < kHidden; ++j) {
        const int64_t x = b * 4 * kHidden + j;  // the input gate's element
        const double i = sigmoid(gates.element(x)), f = sigmoid(gates.element(x + kHidden));
        const double g = std::tanh(gates.element(x + 2 * kHidden));
        const double o = sigmoid(gates.element(x + 3 * kHidden));
        const double c_prev = has_cell ? inputs[1].element(b * kHidden + j) : 0;
        const double c = f * c_prev + i * g;
        y.push_back(o * std::tanh(c) + 0.5 * c);
      }
    return y;
  };
}

// How a GRU case gives the hidden state's part: h_gates [B, 3H] and h_prev, one row of h_gates
// (b_hh at a zero state), or neither.
enum class GruHidden { full, row, none };

// h' of a GRU step from x_gates [B, 3H] (r, z, n) and the inputs `hidden` says.
Reference gru_step_reference(GruHidden hidden) {
  return [hidden](const std::vector<Tensor>& inputs) {
    std::vector<double> y;
    for (int64_t b = 0; b < kBatch; ++b)
      for (int64_t j = 0; j < kHidden; ++j) {
        double hg[3] = {0, 0, 0};
        for (int k = 0; k < 3; ++k)
          if (hidden != GruHidden::none)
            hg[k] = inputs[1].element((hidden == GruHidden::full ? b * 3 * kHidden : 0) +
                                      k * kHidden + j);
        const int64_t x = b * 3 * kHidden + j;
        const double r = sigmoid(inputs[0].element(x) + hg[0]);
        const double z = sigmoid(inputs[0].element(x + kHidden) + hg[1]);
        const double n = std::tanh(inputs[0].element(x + 2 * kHidden) + r * hg[2]);
        const double h = hidden == GruHidden::full ? inputs[2].element(b * kHidden + j) : 0;
        y.push_back((1 - z) * n + z * h);
      }
    return y;
  };
}

// The inputs after x_gates that `hidden` says, drawn in feed order.
std::vector<Value> gru_hidden_inputs(CaseGraph& c, GruHidden hidden) {
  if (hidden == GruHidden::none) return {};
  if (hidden == GruHidden::row) return {c.input({3 * kHidden})};
  Value h_gates = c.input({kBatch, 3 * kHidden});
  return {h_gates, c.input({kBatch, kHidden})};
}

const char* gru_case_name(GruHidden hidden, bool backward) {
  switch (hidden) {
    case GruHidden::full:
      return backward ? "gru_cell_grad" : "gru_cell";
    case GruHidden::row:
      return backward ? "gru_cell_grad_bias_row" : "gru_cell_bias_row";
    case GruHidden::none:
      break;
  }
  return backward ? "gru_cell_grad_input_only" : "gru_cell_input_only";
}

// The recurrence cases' sizes: T steps of 3 sequences, lengths 4, 2 and 0 where given; a
// projected LSTM's state P wide.
constexpr int64_t kSteps = 4, kProjection = 3;
const std::vector<int64_t> kLengths = {4, 2, 0};

// One recurrence case: the cell, the direction, lengths or none, a projection (LSTM only).
struct RecurrenceCase {
  RecurrentCell cell;
  bool reverse, has_lengths, projected = false;

  int64_t width() const {
    return (cell == RecurrentCell::lstm ? 4 : cell == RecurrentCell::gru ? 3 : 1) * kHidden;
  }
  int64_t state() const { return projected ? kProjection : kHidden; }

  // The inputs in feed order: x [T, B, G H], weight_hh [S, G H], bias_hh [G H], h0 [B, S], then
  // c0 [1, H] (LSTM: one row for every sequence), weight_hr [H, P] (projected), lengths.
  std::vector<Value> inputs(CaseGraph& c) const {
    std::vector<Value> in{c.input({kSteps, kBatch, width()}, -1.5, 1.5),
                          c.input({state(), width()}, -0.6, 0.6), c.input({width()}, -0.5, 0.5),
                          c.input({kBatch, state()})};
    if (cell == RecurrentCell::lstm) in.push_back(c.input({1, kHidden}));
    if (projected) in.push_back(c.input({kHidden, kProjection}, -0.8, 0.8));
    if (has_lengths) in.push_back(c.ints(kLengths, {kBatch}));
    return in;
  }
  Value forward(CaseGraph& c) const { return forward_of(inputs(c)); }
  // The output [T, B, S], h_last [B, S] and (LSTM) c_last [B, H], flattened one after another.
  Value forward_of(const std::vector<Value>& in) const {
    const bool lstm = cell == RecurrentCell::lstm;
    const RecurrenceOutputs out =
        recurrence(cell, in[0], in[1], in[2], in[3], lstm ? in[4] : Value(),
                   has_lengths ? in.back() : Value(), reverse, projected ? in[5] : Value());
    std::vector<Value> parts{reshape(out.output, {-1}), reshape(out.h, {-1})};
    if (lstm) parts.push_back(reshape(out.c, {-1}));
    return concat(parts, 0);
  }
  // What forward_of gives, by the equations of recurrence.h step by step, from the fed inputs.
  Reference reference() const {
    const RecurrenceCase rc = *this;
    return [rc](const std::vector<Tensor>& in) {
      const int64_t width = rc.width(), state = rc.state();
      std::vector<double> output(kSteps * kBatch * state, 0.0), h(kBatch * state),
          c(kBatch * kHidden, 0.0);
      for (int64_t e = 0; e < kBatch * state; ++e) h[e] = in[3].element(e);
      if (rc.cell == RecurrentCell::lstm)
        for (int64_t e = 0; e < kBatch * kHidden; ++e) c[e] = in[4].element(e % kHidden);
      for (int64_t i = 0; i < kSteps; ++i) {
        const int64_t t = rc.reverse ? kSteps - 1 - i : i;
        std::vector<double> next_h = h, next_c = c;
        for (int64_t b = 0; b < kBatch; ++b) {
          if (rc.has_lengths && t >= kLengths[b]) continue;
          std::vector<double> hg(width), cell_h(kHidden);  // h W_hh + b_hh; the cell's h
          for (int64_t g = 0; g < width; ++g) {
            hg[g] = in[2].element(g);
            for (int64_t k = 0; k < state; ++k)
              hg[g] += h[b * state + k] * in[1].element(k * width + g);
          }
          for (int64_t j = 0; j < kHidden; ++j) {
            const auto x = [&](int64_t gate) {
              return in[0].element((t * kBatch + b) * width + gate * kHidden + j);
            };
            const auto pre = [&](int64_t gate) { return x(gate) + hg[gate * kHidden + j]; };
            const int64_t at = b * kHidden + j;
            switch (rc.cell) {
              case RecurrentCell::rnn_tanh:
                cell_h[j] = std::tanh(pre(0));
                break;
              case RecurrentCell::rnn_relu:
                cell_h[j] = std::max(pre(0), 0.0);
                break;
              case RecurrentCell::lstm:
                next_c[at] = sigmoid(pre(1)) * c[at] + sigmoid(pre(0)) * std::tanh(pre(2));
                cell_h[j] = sigmoid(pre(3)) * std::tanh(next_c[at]);
                break;
              case RecurrentCell::gru: {
                const double r = sigmoid(pre(0)), z = sigmoid(pre(1));
                const double n = std::tanh(x(2) + r * hg[2 * kHidden + j]);
                cell_h[j] = (1 - z) * n + z * h[at];
                break;
              }
            }
          }
          for (int64_t p = 0; p < state; ++p) {  // with a projection, h = cell_h W_hr
            double v = rc.projected ? 0.0 : cell_h[p];
            if (rc.projected)
              for (int64_t j = 0; j < kHidden; ++j) v += cell_h[j] * in[5].element(j * state + p);
            next_h[b * state + p] = v;
            output[(t * kBatch + b) * state + p] = v;
          }
        }
        h = next_h;
        c = next_c;
      }
      output.insert(output.end(), h.begin(), h.end());
      if (rc.cell == RecurrentCell::lstm) output.insert(output.end(), c.begin(), c.end());
      return output;
    };
  }
  std::string name(const char* op) const {
    return str(op, "_", recurrent_cell_name(cell), projected ? "_projected" : "",
               reverse ? "_reverse" : "", has_lengths ? "_lengths" : "");
  }
};

}  // namespace

void add_recurrent_cases(const std::function<void(OpCase)>& add) {
  for (bool has_cell : {true, false})
    add({.op = "lstm_cell",
         .name = has_cell ? "lstm_cell" : "lstm_cell_zero_state",
         .build =
             [has_cell](CaseGraph& c) {
               Value gates = c.input({kBatch, 4 * kHidden}, -3, 3);
               LSTMCellState s = lstm_cell(gates, has_cell ? c.input({kBatch, kHidden}) : Value());
               return s.h + s.c * 0.5;
             },
         .reference = lstm_step_reference(has_cell)});
  // The backward on a forward's activated gates (what it is given in a graph), with random
  // gradients reaching h and c; every output used.
  for (bool has_cell : {true, false})
    add({.op = "lstm_cell_grad",
         .name = has_cell ? "lstm_cell_grad" : "lstm_cell_grad_zero_state",
         .build =
             [has_cell](CaseGraph& c) {
               Value gates = c.input({kBatch, 4 * kHidden}, -3, 3);
               std::vector<Value> inputs{gates};
               if (has_cell) inputs.push_back(c.input({kBatch, kHidden}));
               std::vector<Value> step = c.g.add_node("lstm_cell", inputs);
               std::vector<Value> backward_inputs{step[2], step[1], c.input({kBatch, kHidden}),
                                                  c.input({kBatch, kHidden})};
               if (has_cell) backward_inputs.push_back(inputs[1]);
               std::vector<Value> grads = c.g.add_node("lstm_cell_grad", backward_inputs);
               return has_cell ? concat({grads[0], grads[1]}, 1) : grads[0];
             },
         .gradients = false});
  for (GruHidden hidden : {GruHidden::full, GruHidden::row, GruHidden::none}) {
    add({.op = "gru_cell",
         .name = gru_case_name(hidden, false),
         .build =
             [hidden](CaseGraph& c) {
               std::vector<Value> inputs{c.input({kBatch, 3 * kHidden}, -3, 3)};
               for (const Value& v : gru_hidden_inputs(c, hidden)) inputs.push_back(v);
               return c.g.add_node("gru_cell", inputs)[0];
             },
         .reference = gru_step_reference(hidden)});
    add({.op = "gru_cell_grad",
         .name = gru_case_name(hidden, true),
         .build =
             [hidden](CaseGraph& c) {
               std::vector<Value> inputs{c.input({kBatch, 3 * kHidden}, -3, 3)};
               const std::vector<Value> more = gru_hidden_inputs(c, hidden);
               for (const Value& v : more) inputs.push_back(v);
               const Value act = c.g.add_node("gru_cell", inputs)[1];
               std::vector<Value> backward_inputs{act, c.input({kBatch, kHidden})};
               for (const Value& v : more) backward_inputs.push_back(v);
               std::vector<Value> grads = c.g.add_node("gru_cell_grad", backward_inputs);
               return grads.size() == 1 ? grads[0] : concat(grads, 1);
             },
         .gradients = false});
  }
  // The whole-sequence recurrence, each cell forwards with lengths (one sequence runs every step,
  // one none) and backwards without, and a projected LSTM both ways; its gradient op is the
  // forward's gradient (finite differences here), and alone below for the GPU table.
  std::vector<RecurrenceCase> cases;
  for (RecurrentCell cell :
       {RecurrentCell::rnn_tanh, RecurrentCell::rnn_relu, RecurrentCell::lstm, RecurrentCell::gru})
    for (bool reverse : {false, true}) cases.push_back({cell, reverse, !reverse});
  for (bool reverse : {false, true})
    cases.push_back({RecurrentCell::lstm, reverse, !reverse, true});
  for (const RecurrenceCase& rc : cases)
    add({.op = "recurrence",
         .name = rc.name("recurrence"),
         .build = [rc](CaseGraph& c) { return rc.forward(c); },
         .parity = false,
         .fd_rtol = 1e-5,
         .reference = rc.reference()});
  for (const RecurrenceCase& rc : {RecurrenceCase{RecurrentCell::lstm, true, true},
                                   RecurrenceCase{RecurrentCell::gru, true, true},
                                   RecurrenceCase{RecurrentCell::rnn_tanh, true, true},
                                   RecurrenceCase{RecurrentCell::lstm, false, true, true}})
    add({.op = "recurrence_grad",
         .name = rc.name("recurrence_grad"),
         .build =
             [rc](CaseGraph& c) {
               std::vector<Value> in = rc.inputs(c);
               const Value y = rc.forward_of(in);
               if (rc.has_lengths) in.pop_back();  // every float input
               std::vector<Value> d = gradients(sum(y * c.input(y.shape())), in);
               for (Value& v : d) v = reshape(v, {-1});
               return concat(d, 0);
             },
         .gradients = false,
         .parity = false});
}

}  // namespace kiln::testing
