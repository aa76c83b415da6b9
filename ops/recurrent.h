// kiln::nn recurrent layers: PyTorch's RNN, LSTM and GRU (multi-layer, bidirectional, batch
// first, dropout between layers), unrolled over the sequence when they are called, and their
// single steps RNNCell, LSTMCell and GRUCell.
//
// Where the sequence length T is known when the layer is called, the recurrence is unrolled
// (TensorFlow 1's static_rnn): each layer projects the whole sequence's input at once (one
// product [T B, in] x [in, G H]); each step then adds h W_hh, so the per-step work is one
// [B, H] x [H, G H] product and the gate arithmetic (the LSTM's in one fused op, lstm_cell), and
// the gradient is autograd's (back-propagation through time over the unrolled steps). Where T
// is unknown (a placeholder [?, B, in]), each layer and direction is one recurrence op instead
// (TensorFlow's dynamic_rnn), which loops over the steps the input has when the graph runs and
// has its own backward op; the input projection is the same one product. The batch may be
// unknown either way.
//
// Variables follow PyTorch's names, per layer k and direction (suffix "_reverse" for the
// backward one): weight_ih_l{k} [in, G H], weight_hh_l{k} [H, G H], bias_ih_l{k} and
// bias_hh_l{k} [G H] (and an LSTM's projection weight_hr_l{k} [H, P]) — the weights transposed
// as Linear's are, the gates in PyTorch's order (LSTM: input, forget, cell, output; GRU: reset,
// update, new), so a PyTorch state dict loads with a transpose. Every one starts uniform in
// +-1 / sqrt(H), as PyTorch's.
#pragma once

#include <vector>

#include "kiln/ops/layers.h"

namespace kiln::nn {

/// Options of the recurrent layers (PyTorch's arguments of the same names).
struct RecurrentOptions {
  int64_t num_layers = 1;
  bool bias = true;
  bool batch_first = false;  ///< x [B, T, input] and output [B, T, D H]; default [T, B, ...]
  bool bidirectional = false;
  double dropout = 0;  ///< on every layer's output but the last one's, in training mode
  int64_t seed = 0;    ///< mixed into the name-derived seeds
  /// LSTM only, 0 (none) or in (0, H): h = (o tanh(c)) W_hr with W_hr [H, P], so h, h0, h_n,
  /// the output and W_hh's rows are P wide while c stays H wide (PyTorch's proj_size).
  int64_t proj_size = 0;
};

/// What a recurrent layer computes over a sequence (D = 2 when bidirectional, else 1).
struct RecurrentResult {
  Value output;  ///< the last layer's h at every step: [T, B, D H] ([B, T, D H] batch first)
  Value hidden;  ///< the last h of every layer and direction: [layers D, B, H] (PyTorch's h_n)
  Value cell;    ///< an LSTM's last c likewise (c_n); undefined for RNN and GRU
};

/// The shared part of RNN, LSTM and GRU: the variables, the unrolling, the checks.
class Recurrent : public Module {
 public:
  /// One layer's and direction's variables (bias_ih and bias_hh undefined without a bias,
  /// weight_hr without a projection).
  struct Weights {
    Value weight_ih, weight_hh, bias_ih, bias_hh, weight_hr;
  };
  /// The layer over x ([T, B, input], or [B, T, input] batch first; T may be unknown). h0 (and
  /// c0 for an LSTM) [layers D, B, H] start each layer and direction (h0 [layers D, B, P] with a
  /// projection); undefined: zeros.
  ///
  /// `lengths` (an integer [B], fed or computed; undefined: every sequence has length T) makes
  /// a padded batch run as PyTorch's packed sequences do: sequence b takes steps t < lengths[b]
  /// only, its output is zeros from there on, and its h_n / c_n are the state after its own last
  /// step (the backward direction starts at lengths[b] - 1). A length above T counts as T; a
  /// length of 0 leaves h0 (PyTorch refuses one).
  RecurrentResult run(const Value& x, const Value& h0 = {}, const Value& c0 = {},
                      const Value& lengths = {});
  int64_t hidden_size() const { return hidden_; }
  /// The width of h and of each direction's output: proj_size if set, else hidden_size().
  int64_t output_size() const { return options_.proj_size > 0 ? options_.proj_size : hidden_; }
  /// weights[k D + d]: layer k, direction d (1: the backward one), PyTorch's order of h_n.
  std::vector<Weights> weights;

 protected:
  /// `gates`: how many H-wide blocks the products have (RNN 1, LSTM 4, GRU 3).
  Recurrent(Graph& graph, const std::string& name, const char* kind, int64_t gates, int64_t input,
            int64_t hidden, RecurrentOptions options);
  /// The output at every step (run(x).output).
  Value forward(const Value& x) override;
  std::vector<TorchTensor> torch_tensors() const override;
  /// Whether the state has a cell (an LSTM's c) besides h.
  virtual bool has_cell() const { return false; }
  /// The step the recurrence op runs for this layer (a sequence of unknown length).
  virtual RecurrentCell cell() const = 0;
  /// Whether the step adds b_hh to the products as it is (RNN, LSTM; not the GRU, whose reset
  /// gate scales part of it): then b_hh joins b_ih in the input projection, once per run, and a
  /// step's sum of the two projections is the hidden product's epilogue on the CPU.
  virtual bool adds_hidden_bias() const { return true; }

  /// The state between two steps; an undefined h or c is zeros (the first step's default).
  struct State {
    Value h, c;
  };
  /// One step: the input's projection x W_ih + b_ih [B, G H] (+ b_hh where adds_hidden_bias())
  /// and the state give the next state.
  virtual State step(const Value& input_projection, const State& state, const Weights& w) = 0;

 private:
  /// run() inside the layer's name scope: unrolled for a known length, else scanned.
  RecurrentResult unrolled(const Value& x, const Value& h0, const Value& c0, const Value& lengths);
  /// One layer and direction over a sequence of unknown length: one recurrence op.
  Value scanned(const Value& sequence, bool reverse, State& state, const Weights& w,
                const Value& lengths);
  /// One direction of one layer over the steps of x: the outputs in time order, and the last
  /// state. `valid` (empty: every step) holds per step a bool [B, 1]: whether sequence b takes
  /// it; one that does not keeps its state and outputs zeros.
  std::vector<Value> unroll(const std::vector<Value>& projections, bool reverse, State& state,
                            const Weights& w, const std::vector<Value>& valid);
  /// Checks `lengths` (when defined): an integer [B] of this graph.
  void check_lengths(const Value& lengths, int64_t batch);
  /// Per step t, the bool [B, 1] t < lengths (`lengths` already checked: an integer [B]).
  std::vector<Value> valid_steps(const Value& lengths, int64_t length);
  /// A [layers D, B, width] initial state's row for (layer, direction), squeezed to [B, width].
  std::vector<Value> initial_rows(const Value& initial, int64_t batch, int64_t width,
                                  const char* what);
  int64_t directions() const { return options_.bidirectional ? 2 : 1; }
  const char* kind_;
  int64_t input_, hidden_;
  RecurrentOptions options_;
  Dropout& between_layers_;
};

/// h' = tanh(x W_ih + b_ih + h W_hh + b_hh) (or relu): PyTorch's RNN.
class RNN : public Recurrent {
 public:
  enum class Nonlinearity { tanh, relu };
  RNN(Graph& graph, const std::string& name, int64_t input, int64_t hidden,
      RecurrentOptions options = {}, Nonlinearity nonlinearity = Nonlinearity::tanh);

 protected:
  State step(const Value& input_projection, const State& state, const Weights& w) override;
  RecurrentCell cell() const override {
    return nonlinearity_ == Nonlinearity::tanh ? RecurrentCell::rnn_tanh : RecurrentCell::rnn_relu;
  }

 private:
  Nonlinearity nonlinearity_;
};

/// PyTorch's LSTM: [i, f, g, o] = x W_ih + b_ih + h W_hh + b_hh split in four, c' = sigmoid(f)
/// c + sigmoid(i) tanh(g), h' = sigmoid(o) tanh(c') (times W_hr with options.proj_size).
class LSTM : public Recurrent {
 public:
  LSTM(Graph& graph, const std::string& name, int64_t input, int64_t hidden,
       RecurrentOptions options = {});

 protected:
  State step(const Value& input_projection, const State& state, const Weights& w) override;
  bool has_cell() const override { return true; }
  RecurrentCell cell() const override { return RecurrentCell::lstm; }
};

/// PyTorch's GRU: with the products split in three, r = sigmoid(x_r + h_r), z = sigmoid(x_z +
/// h_z), n = tanh(x_n + r h_n) (the reset gate scales h W_hn + b_hn), h' = (1 - z) n + z h.
class GRU : public Recurrent {
 public:
  GRU(Graph& graph, const std::string& name, int64_t input, int64_t hidden,
      RecurrentOptions options = {});

 protected:
  bool adds_hidden_bias() const override { return false; }
  State step(const Value& input_projection, const State& state, const Weights& w) override;
  RecurrentCell cell() const override { return RecurrentCell::gru; }
};

/// What PyTorch's RNNCell, LSTMCell and GRUCell share: one step of the recurrent layers above,
/// for loops of one's own (a decoder that feeds its output back, attention over the state at
/// every step). The variables are a one-layer recurrent layer's without the "_l0" suffix:
/// weight_ih [input, G H], weight_hh [H, G H] (transposed from PyTorch's, as Linear's),
/// bias_ih and bias_hh [G H] (none without a bias), uniform in +-1 / sqrt(H) as PyTorch's. Calling
/// the layer on x is a step from zeros.
class RecurrentCellLayer : public Module {
 public:
  Value weight_ih, weight_hh, bias_ih, bias_hh;
  int64_t hidden_size() const { return hidden_; }

 protected:
  /// `gates`: the H-wide blocks of the products (RNN 1, LSTM 4, GRU 3).
  RecurrentCellLayer(Graph& graph, const std::string& name, const char* kind, int64_t gates,
                     int64_t input, int64_t hidden, LayerOptions options);
  /// x W_ih + b_ih (+ b_hh with `hidden_bias`) for x [B, input], after checking x and the
  /// states [B, H], each paired with its name for errors (undefined ones are zeros).
  Value input_projection(const Value& x, const std::vector<std::pair<Value, const char*>>& states,
                         bool hidden_bias);
  /// The variables as a recurrent layer's weights.
  Recurrent::Weights weights() const { return {weight_ih, weight_hh, bias_ih, bias_hh, {}}; }
  std::vector<TorchTensor> torch_tensors() const override;

 private:
  const char* kind_;
  int64_t input_, hidden_;
};

/// PyTorch's RNNCell: h' = tanh(x W_ih + b_ih + h W_hh + b_hh) (or relu).
class RNNCell : public RecurrentCellLayer {
 public:
  RNNCell(Graph& graph, const std::string& name, int64_t input, int64_t hidden,
          LayerOptions options = {}, RNN::Nonlinearity nonlinearity = RNN::Nonlinearity::tanh);
  /// h' [B, H] from x [B, input] and h [B, H] (undefined: zeros).
  Value step(const Value& x, const Value& h = {});

 protected:
  Value forward(const Value& x) override { return step(x); }

 private:
  RNN::Nonlinearity nonlinearity_;
};

/// PyTorch's LSTMCell: the LSTM's step (gates i, f, g, o).
class LSTMCell : public RecurrentCellLayer {
 public:
  LSTMCell(Graph& graph, const std::string& name, int64_t input, int64_t hidden,
           LayerOptions options = {});
  /// h' and c' [B, H] from x [B, input], h and c [B, H] (undefined: zeros).
  LSTMCellState step(const Value& x, const Value& h = {}, const Value& c = {});

 protected:
  Value forward(const Value& x) override { return step(x).h; }
};

/// PyTorch's GRUCell: the GRU's step (gates r, z, n; the reset gate scales h W_hn + b_hn).
class GRUCell : public RecurrentCellLayer {
 public:
  GRUCell(Graph& graph, const std::string& name, int64_t input, int64_t hidden,
          LayerOptions options = {});
  /// h' [B, H] from x [B, input] and h [B, H] (undefined: zeros).
  Value step(const Value& x, const Value& h = {});

 protected:
  Value forward(const Value& x) override { return step(x); }
};

}  // namespace kiln::nn
