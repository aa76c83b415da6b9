// The op cases of the fused recurrent cells (ops/nn/recurrent_cells.cc), with direct f64
// references of the LSTM and GRU steps written from their equations (not from the kernels'
// helpers in recurrent_cells.h).
#include <cmath>

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
}

}  // namespace kiln::testing
