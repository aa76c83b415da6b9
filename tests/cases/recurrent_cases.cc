// The op cases of the fused recurrent cells (ops/nn/lstm_cell.cc), with a direct f64 reference
// of the LSTM step written from its equations (not from lstm_cell.h's helpers).
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
}

}  // namespace kiln::testing
