#include "kiln/ops/recurrent.h"

#include <string_view>

#include "kiln/framework/error.h"
#include "kiln/ops/array.h"
#include "kiln/ops/math.h"
#include "kiln/ops/nn.h"

namespace kiln::nn {

namespace {

// The options of a recurrent layer, checked: positive sizes, at least one layer, a dropout rate
// in [0, 1), a projection (LSTM only) narrower than the hidden state.
const RecurrentOptions& checked(const char* kind, const std::string& path, int64_t input,
                                int64_t hidden, const RecurrentOptions& options) {
  KILN_CHECK(input > 0 && hidden > 0, GraphError, "[nn] ", kind, " ", path, ": sizes ", input,
             " -> ", hidden, " must be positive");
  KILN_CHECK(options.num_layers >= 1, GraphError, "[nn] ", kind, " ", path, ": num_layers ",
             options.num_layers, " must be at least 1");
  KILN_CHECK(options.dropout >= 0 && options.dropout < 1, GraphError, "[nn] ", kind, " ", path,
             ": dropout ", options.dropout, " must be in [0, 1)");
  KILN_CHECK(options.proj_size == 0 || std::string_view(kind) == "LSTM", GraphError, "[nn] ", kind,
             " ", path, ": proj_size ", options.proj_size, " is an LSTM option");
  KILN_CHECK(options.proj_size >= 0 && options.proj_size < hidden, GraphError, "[nn] ", kind, " ",
             path, ": proj_size ", options.proj_size, " must be in [0, hidden size ", hidden, ")");
  return options;
}

// a + b, where an undefined b is zero.
Value plus(const Value& a, const Value& b) {
  return b.defined() ? a + b : a;
}

// h W_hh + b_hh [B, G H] (just b_hh [G H] when h is zeros; undefined when that is zero too).
Value hidden_projection(const Value& h, const Recurrent::Weights& w) {
  if (!h.defined()) return w.bias_hh;
  return plus(matmul(h, w.weight_hh), w.bias_hh);
}

// input_projection + h W_hh (b_hh already in the input projection: adds_hidden_bias()).
Value gate_sum(const Value& input_projection, const Value& h, const Recurrent::Weights& w) {
  return h.defined() ? input_projection + matmul(h, w.weight_hh) : input_projection;
}

// The steps of the three kinds from the input's projection (with b_hh for RNN and LSTM) and
// the state; the layers and the cells both run these.
Value rnn_step(const Value& projection, const Value& h, const Recurrent::Weights& w,
               RNN::Nonlinearity nonlinearity) {
  const Value before = gate_sum(projection, h, w);
  return nonlinearity == RNN::Nonlinearity::tanh ? tanh(before) : relu(before);
}

LSTMCellState lstm_step(const Value& projection, const Value& h, const Value& c,
                        const Recurrent::Weights& w) {
  // One fused op each way (ops/nn/recurrent_cells.cc); a zero c (the first step by default) is
  // left out, and contributes nothing through the forget gate.
  LSTMCellState next = lstm_cell(gate_sum(projection, h, w), c);
  if (w.weight_hr.defined()) next.h = matmul(next.h, w.weight_hr);
  return next;
}

Value gru_step(const Value& projection, const Value& h, const Recurrent::Weights& w) {
  // One fused op each way (ops/nn/recurrent_cells.cc). The hidden projection is undefined when
  // h and b_hh are both zero, one row (b_hh) when h alone is.
  return gru_cell(projection, hidden_projection(h, w), h);
}

// x split into its `count` rows along axis 0, each without that axis.
std::vector<Value> rows_of(const Value& x, int64_t count) {
  std::vector<Value> rows = split(x, count, 0);
  for (Value& row : rows) row = squeeze(row, {0});
  return rows;
}

}  // namespace

// ---- Recurrent.

Recurrent::Recurrent(Graph& graph, const std::string& name, const char* kind, int64_t gates,
                     int64_t input, int64_t hidden, RecurrentOptions options)
    : Module(graph, name),
      kind_(kind),
      input_(input),
      hidden_(hidden),
      options_(checked(kind, path(), input, hidden, options)),
      between_layers_(
          make<Dropout>("dropout", options.dropout, LayerOptions{.seed = options.seed})) {
  // PyTorch's order: per layer, per direction, w_ih, w_hh, b_ih, b_hh, w_hr.
  const int64_t out = output_size();
  for (int64_t layer = 0; layer < options.num_layers; ++layer)
    for (int64_t direction = 0; direction < directions(); ++direction) {
      const std::string suffix = str("_l", layer, direction == 1 ? "_reverse" : "");
      const int64_t in = layer == 0 ? input : directions() * out;
      Weights w;
      w.weight_ih =
          fan_in_variable("weight_ih" + suffix, {in, gates * hidden}, hidden, options.seed);
      w.weight_hh =
          fan_in_variable("weight_hh" + suffix, {out, gates * hidden}, hidden, options.seed);
      if (options.bias) {
        w.bias_ih = fan_in_variable("bias_ih" + suffix, {gates * hidden}, hidden, options.seed);
        w.bias_hh = fan_in_variable("bias_hh" + suffix, {gates * hidden}, hidden, options.seed);
      }
      if (options.proj_size > 0)
        w.weight_hr = fan_in_variable("weight_hr" + suffix, {hidden, out}, hidden, options.seed);
      weights.push_back(w);
    }
}

RecurrentResult Recurrent::run(const Value& x, const Value& h0, const Value& c0,
                               const Value& lengths) {
  expect_own({&x}, "the input");
  NameScope scope(graph(), name());
  return unrolled(x, h0, c0, lengths);
}

Value Recurrent::forward(const Value& x) {
  return unrolled(x, {}, {}, {}).output;
}

RecurrentResult Recurrent::unrolled(const Value& x, const Value& h0, const Value& c0,
                                    const Value& lengths) {
  const Shape& s = x.shape();
  const int64_t time_axis = options_.batch_first ? 1 : 0;
  KILN_CHECK(s.rank() == 3 && s[time_axis] != 0 && s[2] == input_, GraphError, "[nn] ", kind_, " ",
             path(), ": expects ", options_.batch_first ? "[B, T, " : "[T, B, ", input_,
             "] with T > 0 or unknown, got ", s);
  // A length unknown until the graph runs: one recurrence op per layer and direction.
  const bool known = s[time_axis] > 0;
  KILN_CHECK(has_cell() || !c0.defined(), GraphError, "[nn] ", kind_, " ", path(),
             ": only an LSTM has a cell state, but c0 was given");
  KILN_CHECK(h0.defined() == c0.defined() || !has_cell(), GraphError, "[nn] ", kind_, " ", path(),
             ": give both h0 and c0, or neither (zeros)");
  const int64_t length = s[time_axis], batch = s[1 - time_axis];
  const std::vector<Value> h_rows = initial_rows(h0, batch, output_size(), "h0");
  const std::vector<Value> c_rows = initial_rows(c0, batch, hidden_, "c0");
  check_lengths(lengths, batch);
  const std::vector<Value> valid = known ? valid_steps(lengths, length) : std::vector<Value>{};
  const int64_t gate_width = weights.front().weight_ih.shape()[1];
  // The input projection's bias: b_ih, and b_hh too where the step would add it as it is.
  auto input_bias = [&](const Weights& w) {
    return adds_hidden_bias() && w.bias_ih.defined() ? w.bias_ih + w.bias_hh : w.bias_ih;
  };

  Value sequence = options_.batch_first ? transpose(x, {1, 0, 2}) : x;  // [T, B, in]
  std::vector<Value> last_h, last_c;
  for (int64_t layer = 0; layer < options_.num_layers; ++layer) {
    const int64_t in = sequence.shape()[2];
    const Value flat = known ? reshape(sequence, {-1, in}) : Value();
    std::vector<Value> outputs;
    for (int64_t direction = 0; direction < directions(); ++direction) {
      const size_t index = static_cast<size_t>(layer * directions() + direction);
      const Weights& w = weights[index];
      State state{h_rows.empty() ? Value() : h_rows[index],
                  c_rows.empty() ? Value() : c_rows[index]};
      if (!known) {
        outputs.push_back(scanned(sequence, direction == 1, state, w, lengths));
      } else {
        // Every step's input projection in one product, then one row per step.
        const Value projected =
            reshape(plus(matmul(flat, w.weight_ih), input_bias(w)), {length, -1, gate_width});
        outputs.push_back(
            stack(unroll(rows_of(projected, length), direction == 1, state, w, valid), 0));
      }
      last_h.push_back(state.h);
      last_c.push_back(state.c);
    }
    sequence = outputs.size() == 1 ? outputs[0] : concat(outputs, -1);
    if (layer + 1 < options_.num_layers) sequence = between_layers_(sequence);
  }
  RecurrentResult result;
  result.output = options_.batch_first ? transpose(sequence, {1, 0, 2}) : sequence;
  result.hidden = stack(last_h, 0);
  if (has_cell()) result.cell = stack(last_c, 0);
  return result;
}

std::vector<Value> Recurrent::unroll(const std::vector<Value>& projections, bool reverse,
                                     State& state, const Weights& w,
                                     const std::vector<Value>& valid) {
  const size_t length = projections.size();
  std::vector<Value> outputs(length);
  for (size_t i = 0; i < length; ++i) {
    const size_t t = reverse ? length - 1 - i : i;
    State next = step(projections[t], state, w);
    if (!valid.empty()) {
      // A sequence past its length keeps its state (undefined: zeros) and outputs zeros.
      const Value& takes = valid[t];
      const Value output = where(takes, next.h, 0.0);
      next.h = state.h.defined() ? where(takes, next.h, state.h) : output;
      if (next.c.defined())
        next.c = state.c.defined() ? where(takes, next.c, state.c) : where(takes, next.c, 0.0);
      outputs[t] = output;
    } else {
      outputs[t] = next.h;
    }
    state = next;
  }
  return outputs;
}

Value Recurrent::scanned(const Value& sequence, bool reverse, State& state, const Weights& w,
                         const Value& lengths) {
  // The input's gates of every step in one product: x W_ih + b_ih, [T, B, G H]. b_hh is added
  // inside the op, to each step's h W_hh (the GRU's reset gate scales part of it).
  const Value gates = plus(matmul(sequence, w.weight_ih), w.bias_ih);
  const DType dtype = w.weight_hh.dtype();
  const Value bias_hh =
      w.bias_hh.defined() ? w.bias_hh : fill(graph(), Shape{w.weight_hh.shape()[1]}, 0.0, dtype);
  // A zero state is one row for every sequence (h is P wide with a projection, c H wide).
  const auto zeros = [&](int64_t width) { return fill(graph(), Shape{1, width}, 0.0, dtype); };
  const RecurrenceOutputs out = recurrence(
      cell(), gates, w.weight_hh, bias_hh, state.h.defined() ? state.h : zeros(output_size()),
      has_cell() ? (state.c.defined() ? state.c : zeros(hidden_)) : Value(), lengths, reverse,
      w.weight_hr);
  state = {out.h, out.c};
  return out.output;
}

void Recurrent::check_lengths(const Value& lengths, int64_t batch) {
  if (!lengths.defined()) return;
  const Shape& s = lengths.shape();
  KILN_CHECK(lengths.graph() == &graph() && is_integer(lengths.dtype()) && s.rank() == 1 &&
                 (s[0] < 0 || batch < 0 || s[0] == batch),
             GraphError, "[nn] ", kind_, " ", path(),
             ": lengths must be an integer vector of its graph [", batch, "], got ",
             lengths.dtype(), " ", s);
}

std::vector<Value> Recurrent::valid_steps(const Value& lengths, int64_t length) {
  if (!lengths.defined()) return {};
  // [T, 1] step numbers against [1, B] lengths: [T, B], then one [B, 1] row per step.
  const Value steps = iota(graph(), Shape{length, 1}, 0, lengths.dtype());
  const Value takes = less(steps, expand_dims(lengths, {0}));
  std::vector<Value> rows = split(takes, length, 0);
  for (Value& row : rows) row = reshape(row, {-1, 1});
  return rows;
}

std::vector<Value> Recurrent::initial_rows(const Value& initial, int64_t batch, int64_t width,
                                           const char* what) {
  if (!initial.defined()) return {};
  const int64_t rows = options_.num_layers * directions();
  const Shape& s = initial.shape();
  const bool batch_matches = s.rank() == 3 && (s[1] < 0 || batch < 0 || s[1] == batch);
  KILN_CHECK(initial.graph() == &graph() && batch_matches && s[0] == rows && s[2] == width,
             GraphError, "[nn] ", kind_, " ", path(), ": ", what, " must be a value of its graph [",
             rows, ", ", batch, ", ", width, "] (layers x directions, batch, ",
             width == hidden_ ? "hidden" : "projection", "), got ", s);
  return rows_of(initial, rows);
}

// ---- RNN, LSTM, GRU.

RNN::RNN(Graph& graph, const std::string& name, int64_t input, int64_t hidden,
         RecurrentOptions options, Nonlinearity nonlinearity)
    : Recurrent(graph, name, "RNN", 1, input, hidden, options), nonlinearity_(nonlinearity) {}

Recurrent::State RNN::step(const Value& input_projection, const State& state, const Weights& w) {
  return {rnn_step(input_projection, state.h, w, nonlinearity_), {}};
}

LSTM::LSTM(Graph& graph, const std::string& name, int64_t input, int64_t hidden,
           RecurrentOptions options)
    : Recurrent(graph, name, "LSTM", 4, input, hidden, options) {}

Recurrent::State LSTM::step(const Value& input_projection, const State& state, const Weights& w) {
  const LSTMCellState next = lstm_step(input_projection, state.h, state.c, w);
  return {next.h, next.c};
}

GRU::GRU(Graph& graph, const std::string& name, int64_t input, int64_t hidden,
         RecurrentOptions options)
    : Recurrent(graph, name, "GRU", 3, input, hidden, options) {}

Recurrent::State GRU::step(const Value& input_projection, const State& state, const Weights& w) {
  return {gru_step(input_projection, state.h, w), {}};
}

// ---- The cells.

RecurrentCellLayer::RecurrentCellLayer(Graph& graph, const std::string& name, const char* kind,
                                       int64_t gates, int64_t input, int64_t hidden,
                                       LayerOptions options)
    : Module(graph, name), kind_(kind), input_(input), hidden_(hidden) {
  KILN_CHECK(input > 0 && hidden > 0, GraphError, "[nn] ", kind, " ", path(), ": sizes ", input,
             " -> ", hidden, " must be positive");
  weight_ih = fan_in_variable("weight_ih", {input, gates * hidden}, hidden, options.seed);
  weight_hh = fan_in_variable("weight_hh", {hidden, gates * hidden}, hidden, options.seed);
  if (!options.bias) return;
  bias_ih = fan_in_variable("bias_ih", {gates * hidden}, hidden, options.seed);
  bias_hh = fan_in_variable("bias_hh", {gates * hidden}, hidden, options.seed);
}

Value RecurrentCellLayer::input_projection(const Value& x,
                                           const std::vector<std::pair<Value, const char*>>& states,
                                           bool hidden_bias) {
  expect_own({&x}, "the input");
  const Shape& s = x.shape();
  KILN_CHECK(s.rank() == 2 && s[1] == input_, GraphError, "[nn] ", kind_, " ", path(),
             ": expects x [B, ", input_, "], got ", s);
  for (const auto& [state, name] : states) {
    if (!state.defined()) continue;
    expect_own({&state}, name);
    const Shape& t = state.shape();
    KILN_CHECK(t.rank() == 2 && t[1] == hidden_ && (t[0] < 0 || s[0] < 0 || t[0] == s[0]),
               GraphError, "[nn] ", kind_, " ", path(), ": expects ", name, " [", s[0], ", ",
               hidden_, "] (x is ", s, "), got ", t);
  }
  Value projection = matmul(x, weight_ih);
  if (!bias_ih.defined()) return projection;
  return projection + (hidden_bias ? bias_ih + bias_hh : bias_ih);
}

RNNCell::RNNCell(Graph& graph, const std::string& name, int64_t input, int64_t hidden,
                 LayerOptions options, RNN::Nonlinearity nonlinearity)
    : RecurrentCellLayer(graph, name, "RNNCell", 1, input, hidden, options),
      nonlinearity_(nonlinearity) {}

Value RNNCell::step(const Value& x, const Value& h) {
  NameScope scope(graph(), name());
  return rnn_step(input_projection(x, {{h, "h"}}, true), h, weights(), nonlinearity_);
}

LSTMCell::LSTMCell(Graph& graph, const std::string& name, int64_t input, int64_t hidden,
                   LayerOptions options)
    : RecurrentCellLayer(graph, name, "LSTMCell", 4, input, hidden, options) {}

LSTMCellState LSTMCell::step(const Value& x, const Value& h, const Value& c) {
  NameScope scope(graph(), name());
  return lstm_step(input_projection(x, {{h, "h"}, {c, "c"}}, true), h, c, weights());
}

GRUCell::GRUCell(Graph& graph, const std::string& name, int64_t input, int64_t hidden,
                 LayerOptions options)
    : RecurrentCellLayer(graph, name, "GRUCell", 3, input, hidden, options) {}

Value GRUCell::step(const Value& x, const Value& h) {
  NameScope scope(graph(), name());
  return gru_step(input_projection(x, {{h, "h"}}, false), h, weights());
}

}  // namespace kiln::nn
