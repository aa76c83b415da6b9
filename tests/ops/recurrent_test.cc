// kiln::nn recurrent layers (ops/recurrent.h): RNN, LSTM and GRU against their equations
// computed step by step in f64 (several layers, both directions, batch first, given initial
// states), PyTorch's variable names and initialization, an unknown batch, dropout between
// layers, and the errors a user can hit. tests/parity checks training against PyTorch's modules.
#include <cmath>
#include <vector>

#include "test_util.h"

namespace kiln {
namespace {

using testing::expect_error;

enum class Cell { rnn_tanh, rnn_relu, lstm, gru };

int64_t gates_of(Cell cell) {
  return cell == Cell::lstm ? 4 : cell == Cell::gru ? 3 : 1;
}
double sigmoid_of(double v) {
  return 1 / (1 + std::exp(-v));
}

// What the layer should compute, in f64 and time-major: output [T, B, D P], h_n [L D, B, P] and
// c_n [L D, B, H] (P: the projection's width, H without one).
struct Expected {
  std::vector<double> output, hidden, cell;
};

// The recurrence by its equations (ops/recurrent.h), from the layer's variable values. x is [T, B,
// in]; h0 [L D, B, P] and c0 [L D, B, H] (empty: zeros).
Expected reference(Cell cell, Session& s, const nn::Recurrent& layer, const std::vector<double>& x,
                   int64_t length, int64_t batch, int64_t layers, bool bidirectional,
                   const std::vector<double>& h0, const std::vector<double>& c0) {
  const int64_t hidden = layer.hidden_size(), gates = gates_of(cell), width = gates * hidden;
  const int64_t out = layer.output_size(), directions = bidirectional ? 2 : 1;
  auto values = [&](const Value& v, int64_t size) {
    return v.defined() ? testing::values(s.variable_value(v)) : std::vector<double>(size, 0.0);
  };
  Expected e;
  std::vector<double> input = x;
  int64_t in = static_cast<int64_t>(x.size()) / (length * batch);
  for (int64_t l = 0; l < layers; ++l) {
    std::vector<double> output(length * batch * directions * out);
    for (int64_t d = 0; d < directions; ++d) {
      const int64_t row = l * directions + d;
      const nn::Recurrent::Weights& w = layer.weights[static_cast<size_t>(row)];
      const std::vector<double> wih = values(w.weight_ih, 0), whh = values(w.weight_hh, 0);
      const std::vector<double> bih = values(w.bias_ih, width), bhh = values(w.bias_hh, width);
      const std::vector<double> whr = values(w.weight_hr, 0);
      std::vector<double> h(batch * out, 0.0), c(batch * hidden, 0.0);
      if (!h0.empty()) std::copy_n(h0.begin() + row * batch * out, batch * out, h.begin());
      if (!c0.empty()) std::copy_n(c0.begin() + row * batch * hidden, batch * hidden, c.begin());
      for (int64_t i = 0; i < length; ++i) {
        const int64_t t = d == 1 ? length - 1 - i : i;
        std::vector<double> next_h(batch * hidden), next_c(batch * hidden);
        for (int64_t b = 0; b < batch; ++b) {
          std::vector<double> xp(bih), hp(bhh);  // x W_ih + b_ih, h W_hh + b_hh
          for (int64_t g = 0; g < width; ++g) {
            for (int64_t k = 0; k < in; ++k)
              xp[g] += input[(t * batch + b) * in + k] * wih[k * width + g];
            for (int64_t k = 0; k < out; ++k) hp[g] += h[b * out + k] * whh[k * width + g];
          }
          for (int64_t j = 0; j < hidden; ++j) {
            auto pre = [&](int64_t gate) { return xp[gate * hidden + j] + hp[gate * hidden + j]; };
            const int64_t at = b * hidden + j;
            switch (cell) {
              case Cell::rnn_tanh:
                next_h[at] = std::tanh(pre(0));
                break;
              case Cell::rnn_relu:
                next_h[at] = std::max(pre(0), 0.0);
                break;
              case Cell::lstm:
                next_c[at] = sigmoid_of(pre(1)) * c[at] + sigmoid_of(pre(0)) * std::tanh(pre(2));
                next_h[at] = sigmoid_of(pre(3)) * std::tanh(next_c[at]);
                break;
              case Cell::gru: {
                const double r = sigmoid_of(pre(0)), z = sigmoid_of(pre(1));
                const double n = std::tanh(xp[2 * hidden + j] + r * hp[2 * hidden + j]);
                next_h[at] = (1 - z) * n + z * h[at];
                break;
              }
            }
          }
        }
        if (!whr.empty()) {  // h = (o tanh(c)) W_hr, [B, H] x [H, P]
          std::vector<double> projected(batch * out, 0.0);
          for (int64_t b = 0; b < batch; ++b)
            for (int64_t k = 0; k < hidden; ++k)
              for (int64_t j = 0; j < out; ++j)
                projected[b * out + j] += next_h[b * hidden + k] * whr[k * out + j];
          next_h = projected;
        }
        for (int64_t b = 0; b < batch; ++b)
          for (int64_t j = 0; j < out; ++j)
            output[((t * batch + b) * directions + d) * out + j] = next_h[b * out + j];
        h = next_h;
        c = next_c;
      }
      e.hidden.insert(e.hidden.end(), h.begin(), h.end());
      e.cell.insert(e.cell.end(), c.begin(), c.end());
    }
    input = output;
    in = directions * out;
  }
  e.output = input;
  return e;
}

// [B, T, F] as [T, B, F], or back.
std::vector<double> swap_leading(const std::vector<double>& v, int64_t first, int64_t second) {
  const int64_t features = static_cast<int64_t>(v.size()) / (first * second);
  std::vector<double> out(v.size());
  for (int64_t i = 0; i < first; ++i)
    for (int64_t j = 0; j < second; ++j)
      for (int64_t f = 0; f < features; ++f)
        out[(j * first + i) * features + f] = v[(i * second + j) * features + f];
  return out;
}

TEST(Recurrent, LstmFollowsItsEquationsOverLayersDirectionsAndGivenStates) {
  constexpr int64_t kLength = 5, kBatch = 3, kInput = 4, kHidden = 6;
  Graph g;
  Value x = g.placeholder("x", f32, {kBatch, kLength, kInput});  // batch first
  Value h0 = g.placeholder("h0", f32, {4, kBatch, kHidden});
  Value c0 = g.placeholder("c0", f32, {4, kBatch, kHidden});
  nn::LSTM lstm(g, "lstm", kInput, kHidden,
                {.num_layers = 2, .batch_first = true, .bidirectional = true});
  const nn::RecurrentResult r = lstm.run(x, h0, c0);
  EXPECT_EQ(r.output.shape(), (Shape{kBatch, kLength, 2 * kHidden}));
  EXPECT_EQ(r.hidden.shape(), (Shape{4, kBatch, kHidden}));
  EXPECT_EQ(r.cell.shape(), (Shape{4, kBatch, kHidden}));
  Session s(g);
  const Tensor xv = testing::random_tensor(f32, {kBatch, kLength, kInput}, -2, 2, 1);
  const Tensor h0v = testing::random_tensor(f32, {4, kBatch, kHidden}, -1, 1, 2);
  const Tensor c0v = testing::random_tensor(f32, {4, kBatch, kHidden}, -1, 1, 3);
  const std::vector<Tensor> got =
      s.run({{x, xv}, {h0, h0v}, {c0, c0v}}, {r.output, r.hidden, r.cell});
  const Expected e =
      reference(Cell::lstm, s, lstm, swap_leading(testing::values(xv), kBatch, kLength), kLength,
                kBatch, 2, true, testing::values(h0v), testing::values(c0v));
  testing::expect_near(swap_leading(e.output, kLength, kBatch), got[0], 1e-5, 1e-6, "output");
  testing::expect_near(e.hidden, got[1], 1e-5, 1e-6, "h_n");
  testing::expect_near(e.cell, got[2], 1e-5, 1e-6, "c_n");
  // The backward direction's h_n is its state after t = 0: the output's first step, second half.
  const std::vector<double> out = testing::values(got[0]), hidden = testing::values(got[1]);
  for (int64_t j = 0; j < kHidden; ++j)
    EXPECT_EQ(out[kHidden + j], hidden[3 * kBatch * kHidden + j]);
}

// proj_size: h = (o tanh(c)) W_hr is P wide (h0, h_n, the output and W_hh's rows), c stays H
// wide, and the next layer reads both directions' P-wide outputs.
TEST(Recurrent, LstmProjectsItsHiddenStateWithProjSize) {
  constexpr int64_t kLength = 4, kBatch = 3, kInput = 5, kHidden = 6, kProj = 2;
  Graph g;
  Value x = g.placeholder("x", f32, {kLength, kBatch, kInput});
  Value h0 = g.placeholder("h0", f32, {4, kBatch, kProj});
  Value c0 = g.placeholder("c0", f32, {4, kBatch, kHidden});
  nn::LSTM lstm(g, "lstm", kInput, kHidden,
                {.num_layers = 2, .bidirectional = true, .proj_size = kProj});
  EXPECT_EQ(lstm.output_size(), kProj);
  EXPECT_EQ(lstm.weights[2].weight_ih.shape(), (Shape{2 * kProj, 4 * kHidden}));
  EXPECT_EQ(lstm.weights[1].weight_hh.shape(), (Shape{kProj, 4 * kHidden}));
  EXPECT_EQ(lstm.weights[3].weight_hr.shape(), (Shape{kHidden, kProj}));
  std::vector<std::string> names;
  for (const Value& v : lstm.parameters()) names.push_back(v.name());
  ASSERT_EQ(names.size(), 20u);  // PyTorch's order: w_ih, w_hh, b_ih, b_hh, w_hr
  EXPECT_EQ(names[4], "lstm/weight_hr_l0");
  EXPECT_EQ(names[19], "lstm/weight_hr_l1_reverse");
  const nn::RecurrentResult r = lstm.run(x, h0, c0);
  EXPECT_EQ(r.output.shape(), (Shape{kLength, kBatch, 2 * kProj}));
  EXPECT_EQ(r.hidden.shape(), (Shape{4, kBatch, kProj}));
  EXPECT_EQ(r.cell.shape(), (Shape{4, kBatch, kHidden}));
  Value plain = lstm(x);  // zero states
  Session s(g);
  const Tensor xv = testing::random_tensor(f32, {kLength, kBatch, kInput}, -2, 2, 11);
  const Tensor h0v = testing::random_tensor(f32, {4, kBatch, kProj}, -1, 1, 12);
  const Tensor c0v = testing::random_tensor(f32, {4, kBatch, kHidden}, -1, 1, 13);
  const std::vector<Tensor> got =
      s.run({{x, xv}, {h0, h0v}, {c0, c0v}}, {r.output, r.hidden, r.cell, plain});
  const Expected e = reference(Cell::lstm, s, lstm, testing::values(xv), kLength, kBatch, 2, true,
                               testing::values(h0v), testing::values(c0v));
  testing::expect_near(e.output, got[0], 1e-5, 1e-6, "output");
  testing::expect_near(e.hidden, got[1], 1e-5, 1e-6, "h_n");
  testing::expect_near(e.cell, got[2], 1e-5, 1e-6, "c_n");
  const Expected zero =
      reference(Cell::lstm, s, lstm, testing::values(xv), kLength, kBatch, 2, true, {}, {});
  testing::expect_near(zero.output, got[3], 1e-5, 1e-6, "output from zero states");
}

TEST(Recurrent, GruAndRnnFollowTheirEquationsFromZeroStates) {
  constexpr int64_t kLength = 4, kBatch = 2, kInput = 3, kHidden = 5;
  struct Case {
    Cell cell;
    nn::RecurrentOptions options;
  };
  for (const Case& c :
       {Case{Cell::gru, {.num_layers = 2}}, Case{Cell::gru, {.bias = false, .bidirectional = true}},
        Case{Cell::rnn_tanh, {.num_layers = 2, .bidirectional = true}},
        Case{Cell::rnn_relu, {.bias = false}}}) {
    Graph g;
    Value x = g.placeholder("x", f32, {kLength, kBatch, kInput});
    std::unique_ptr<nn::Recurrent> layer;
    if (c.cell == Cell::gru)
      layer = std::make_unique<nn::GRU>(g, "gru", kInput, kHidden, c.options);
    else
      layer = std::make_unique<nn::RNN>(
          g, "rnn", kInput, kHidden, c.options,
          c.cell == Cell::rnn_relu ? nn::RNN::Nonlinearity::relu : nn::RNN::Nonlinearity::tanh);
    const nn::RecurrentResult r = layer->run(x);
    EXPECT_FALSE(r.cell.defined());
    Session s(g);
    const Tensor xv = testing::random_tensor(f32, {kLength, kBatch, kInput}, -2, 2, 4);
    const std::vector<Tensor> got = s.run({{x, xv}}, {r.output, r.hidden});
    const Expected e = reference(c.cell, s, *layer, testing::values(xv), kLength, kBatch,
                                 c.options.num_layers, c.options.bidirectional, {}, {});
    testing::expect_near(e.output, got[0], 1e-5, 1e-6, "output");
    testing::expect_near(e.hidden, got[1], 1e-5, 1e-6, "h_n");
  }
}

// With lengths, each sequence of a padded batch runs as if alone: its output rows and h_n / c_n
// are those of the same layer over just its own steps, and its output past them is zeros, in
// both directions and every layer; gradients reach no padded input.
TEST(Recurrent, LengthsRunEachSequenceAsIfAlone) {
  constexpr int64_t kLength = 5, kInput = 3, kHidden = 4;
  const std::vector<int64_t> lengths = {5, 3, 1, 2};
  const int64_t batch = static_cast<int64_t>(lengths.size());
  for (Cell cell : {Cell::lstm, Cell::gru}) {
    SCOPED_TRACE(cell == Cell::lstm ? "LSTM" : "GRU");
    Graph g;
    Value x = g.placeholder("x", f32, {kLength, batch, kInput});
    Value lens = g.placeholder("lengths", i64, {-1});
    const nn::RecurrentOptions options{.num_layers = 2, .bidirectional = true};
    std::unique_ptr<nn::Recurrent> layer;
    if (cell == Cell::lstm)
      layer = std::make_unique<nn::LSTM>(g, "rnn", kInput, kHidden, options);
    else
      layer = std::make_unique<nn::GRU>(g, "rnn", kInput, kHidden, options);
    const nn::RecurrentResult packed = layer->run(x, {}, {}, lens);
    const Value dx = gradients(sum(packed.output * packed.output), {x})[0];
    const Tensor xv = testing::random_tensor(f32, {kLength, batch, kInput}, -2, 2, 7);
    const std::vector<double> xs = testing::values(xv);
    Tensor lv = Tensor::empty(i64, {batch});
    std::copy(lengths.begin(), lengths.end(), lv.data<int64_t>());
    Session s(g);
    std::vector<Value> fetch{packed.output, packed.hidden, dx};
    if (packed.cell.defined()) fetch.push_back(packed.cell);
    const std::vector<Tensor> got = s.run({{x, xv}, {lens, lv}}, fetch);
    const std::vector<double> out = testing::values(got[0]);
    const std::vector<double> grad = testing::values(got[2]);
    for (int64_t b = 0; b < batch; ++b) {
      SCOPED_TRACE(str("sequence ", b, " of length ", lengths[b]));
      const int64_t n = lengths[b];
      Graph alone_graph;
      Value xa = alone_graph.placeholder("x", f32, {n, 1, kInput});
      std::unique_ptr<nn::Recurrent> alone;  // same names and seeds: the same variable values
      if (cell == Cell::lstm)
        alone = std::make_unique<nn::LSTM>(alone_graph, "rnn", kInput, kHidden, options);
      else
        alone = std::make_unique<nn::GRU>(alone_graph, "rnn", kInput, kHidden, options);
      const nn::RecurrentResult r = alone->run(xa);
      Tensor xb = Tensor::empty(f32, {n, 1, kInput});
      for (int64_t t = 0; t < n; ++t)
        for (int64_t k = 0; k < kInput; ++k)
          xb.data<float>()[t * kInput + k] = static_cast<float>(xs[(t * batch + b) * kInput + k]);
      Session sa(alone_graph);
      std::vector<Value> want_fetch{r.output, r.hidden};
      if (r.cell.defined()) want_fetch.push_back(r.cell);
      const std::vector<Tensor> want = sa.run({{xa, xb}}, want_fetch);
      const std::vector<double> want_out = testing::values(want[0]);
      for (int64_t t = 0; t < kLength; ++t)
        for (int64_t j = 0; j < 2 * kHidden; ++j) {
          const double value = out[(t * batch + b) * 2 * kHidden + j];
          if (t < n)
            EXPECT_NEAR(value, want_out[t * 2 * kHidden + j], 1e-5) << "t " << t << " j " << j;
          else
            EXPECT_EQ(value, 0.0) << "padded step " << t;
        }
      // h_n, and an LSTM's c_n (fetched 4th here, 3rd alone).
      std::vector<std::pair<size_t, size_t>> states{{1, 1}};
      if (cell == Cell::lstm) states.push_back({3, 2});
      for (const auto& [mine, theirs] : states) {
        const std::vector<double> state = testing::values(got[mine]);
        const std::vector<double> want_state = testing::values(want[theirs]);
        for (int64_t row = 0; row < 4; ++row)
          for (int64_t j = 0; j < kHidden; ++j)
            EXPECT_NEAR(state[(row * batch + b) * kHidden + j], want_state[row * kHidden + j], 1e-5)
                << (mine == 1 ? "h_n" : "c_n") << " row " << row;
      }
      for (int64_t t = n; t < kLength; ++t)
        for (int64_t k = 0; k < kInput; ++k)
          EXPECT_EQ(grad[(t * batch + b) * kInput + k], 0.0) << "padded input's gradient";
    }
  }
}

TEST(Recurrent, VariablesHavePyTorchsNamesAndBounds) {
  Graph g;
  nn::GRU gru(g, "gru", 7, 10, {.num_layers = 2, .bidirectional = true});
  std::vector<std::string> names;
  for (const Value& v : gru.parameters()) names.push_back(v.name());
  ASSERT_EQ(names.size(), 16u);
  EXPECT_EQ(names[0], "gru/weight_ih_l0");
  EXPECT_EQ(names[5], "gru/weight_hh_l0_reverse");
  EXPECT_EQ(names[15], "gru/bias_hh_l1_reverse");
  EXPECT_EQ(gru.weights[0].weight_ih.shape(), (Shape{7, 30}));
  EXPECT_EQ(gru.weights[2].weight_ih.shape(), (Shape{20, 30}));  // both directions' outputs
  EXPECT_EQ(gru.weights[3].weight_hh.shape(), (Shape{10, 30}));
  Session s(g);
  const std::vector<double> w = testing::values(s.variable_value(gru.weights[2].weight_ih));
  double bound = 0;
  for (double v : w) bound = std::max(bound, std::abs(v));
  EXPECT_LE(bound, 1 / std::sqrt(10.0));  // +-1 / sqrt(hidden), not of the input size
  EXPECT_GT(bound, 0.95 / std::sqrt(10.0));
}

TEST(Recurrent, AnUnknownBatchRunsAtEverySize) {
  Graph g;
  Value x = g.placeholder("x", f32, {6, -1, 3});
  nn::LSTM lstm(g, "lstm", 3, 4);
  const nn::RecurrentResult r = lstm.run(x);
  Session s(g);
  std::vector<double> first_row;
  for (int64_t batch : {1, 5}) {
    Tensor xv = testing::random_tensor(f32, {6, batch, 3}, -1, 1, 9);
    const std::vector<Tensor> got = s.run({{x, xv}}, {r.output, r.cell});
    EXPECT_EQ(got[0].shape(), (Shape{6, batch, 4}));
    EXPECT_EQ(got[1].shape(), (Shape{1, batch, 4}));
    const Expected e =
        reference(Cell::lstm, s, lstm, testing::values(xv), 6, batch, 1, false, {}, {});
    testing::expect_near(e.output, got[0], 1e-5, 1e-6, "output");
  }
}

TEST(Recurrent, DropoutActsBetweenLayersInTrainingOnly) {
  Graph g;
  Value x = g.placeholder("x", f32, {5, 4, 3});
  nn::RNN rnn(g, "rnn", 3, 64, {.num_layers = 3, .dropout = 0.5});
  Value train = rnn(x);
  rnn.eval();
  Value eval = rnn(x);
  Graph plain;
  Value px = plain.placeholder("x", f32, {5, 4, 3});
  nn::RNN same(plain, "rnn", 3, 64, {.num_layers = 3});  // same names: same initial values
  Value undropped = same(px);
  int64_t masks = 0;
  for (int32_t id = 0; id < g.num_nodes(); ++id) masks += g.node(id).op_name() == "dropout_mask";
  EXPECT_EQ(masks, 2);  // after layers 0 and 1, not after the last, and none in eval mode
  const Tensor xv = testing::random_tensor(f32, {5, 4, 3}, -1, 1, 5);
  Session s(g), p(plain);
  const Tensor e = s.run({{x, xv}}, {eval})[0], t = s.run({{x, xv}}, {train})[0];
  EXPECT_EQ(e.to_vector<float>(), p.run({{px, xv}}, {undropped})[0].to_vector<float>());
  EXPECT_NE(t.to_vector<float>(), e.to_vector<float>());
}

TEST(Recurrent, BadInputsAreErrorsNamingTheLayer) {
  Graph g;
  Value x = g.placeholder("x", f32, {5, 2, 3});
  nn::LSTM lstm(g, "lstm", 3, 4, {.num_layers = 2});
  nn::GRU gru(g, "gru", 3, 4);
  expect_error(
      [&] {
        lstm(g.placeholder("empty", f32, {0, 2, 3}));
      },
      {"[nn] LSTM lstm", "[T, B, 3] with T > 0 or unknown", "[0, 2, 3]"});
  expect_error([&] { lstm(g.placeholder("wide", f32, {5, 2, 7})); }, {"LSTM lstm", "[5, 2, 7]"});
  expect_error([&] { gru(g.placeholder("flat", f32, {5, 3})); }, {"GRU gru", "[5, 3]"});
  Value h0 = g.placeholder("h0", f32, {2, 2, 4});
  expect_error(
      [&] {
        gru.run(x, g.placeholder("h", f32, {1, 2, 4}), h0);
      },
      {"GRU gru", "only an LSTM has a cell state"});
  expect_error([&] { lstm.run(x, h0); }, {"LSTM lstm", "both h0 and c0"});
  expect_error(
      [&] {
        lstm.run(x, h0, g.placeholder("c", f32, {2, 3, 4}));
      },
      {"LSTM lstm", "c0 must be", "[2, 2, 4]", "got [2, 3, 4]"});
  expect_error([&] { gru.run(x, h0); }, {"GRU gru", "h0 must be", "[1, 2, 4]", "got [2, 2, 4]"});
  expect_error([&] { gru.run(x, {}, {}, g.placeholder("lf", f32, {2})); },
               {"GRU gru", "lengths must be an integer vector", "[2]", "f32"});
  expect_error([&] { gru.run(x, {}, {}, g.placeholder("l3", i64, {3})); },
               {"GRU gru", "lengths must be", "got i64 [3]"});
  expect_error([&] { nn::LSTM(g, "none", 3, 4, {.num_layers = 0}); },
               {"LSTM none", "num_layers 0"});
  expect_error([&] { nn::GRU(g, "zero", 0, 4); }, {"GRU zero", "sizes 0 -> 4"});
  expect_error([&] { nn::RNN(g, "drop", 3, 4, {.dropout = 1}); }, {"RNN drop", "dropout 1"});
  expect_error([&] { nn::GRU(g, "projected", 3, 4, {.proj_size = 2}); },
               {"GRU projected", "proj_size 2 is an LSTM option"});
  expect_error([&] { nn::LSTM(g, "wide", 3, 4, {.proj_size = 4}); },
               {"LSTM wide", "proj_size 4 must be in [0, hidden size 4)"});
  expect_error([&] { nn::LSTM(g, "negative", 3, 4, {.proj_size = -1}); },
               {"LSTM negative", "proj_size -1"});
  nn::LSTM projected(g, "projected_lstm", 3, 4, {.proj_size = 2});
  expect_error(
      [&] {
        projected.run(x, h0, g.placeholder("pc", f32, {1, 2, 4}));
      },
      {"LSTM projected_lstm", "h0 must be", "[1, 2, 2]", "(layers x directions, batch, projection)",
       "got [2, 2, 4]"});
}

}  // namespace
}  // namespace kiln

namespace kiln {
namespace {

// A cell's step is the one-layer layer's step over a sequence of length 1 from the same state:
// both are checked against the equations (reference()) with the cell's values in the layer.
TEST(RecurrentCells, StepFollowsTheLayersEquationsFromAGivenState) {
  constexpr int64_t kBatch = 3, kInput = 4, kHidden = 5;
  for (const Cell cell : {Cell::rnn_tanh, Cell::rnn_relu, Cell::lstm, Cell::gru}) {
    for (const bool bias : {true, false}) {
      SCOPED_TRACE(::testing::Message() << "cell " << static_cast<int>(cell) << " bias " << bias);
      Graph g;
      Value x = g.placeholder("x", f32, {kBatch, kInput});
      Value h = g.placeholder("h", f32, {kBatch, kHidden});
      Value c = g.placeholder("c", f32, {kBatch, kHidden});
      const nn::LayerOptions options{.bias = bias};
      const nn::RecurrentOptions layer_options{.bias = bias};
      const auto relu = nn::RNN::Nonlinearity::relu, tanh = nn::RNN::Nonlinearity::tanh;
      std::unique_ptr<nn::RecurrentCellLayer> layer;
      std::unique_ptr<nn::Recurrent> twin;
      Value next_h, next_c;
      if (cell == Cell::lstm) {
        auto lstm = std::make_unique<nn::LSTMCell>(g, "cell", kInput, kHidden, options);
        const LSTMCellState next = lstm->step(x, h, c);
        next_h = next.h;
        next_c = next.c;
        layer = std::move(lstm);
        twin = std::make_unique<nn::LSTM>(g, "twin", kInput, kHidden, layer_options);
      } else if (cell == Cell::gru) {
        auto gru = std::make_unique<nn::GRUCell>(g, "cell", kInput, kHidden, options);
        next_h = gru->step(x, h);
        layer = std::move(gru);
        twin = std::make_unique<nn::GRU>(g, "twin", kInput, kHidden, layer_options);
      } else {
        const auto nonlinearity = cell == Cell::rnn_relu ? relu : tanh;
        auto rnn = std::make_unique<nn::RNNCell>(g, "cell", kInput, kHidden, options, nonlinearity);
        next_h = rnn->step(x, h);
        layer = std::move(rnn);
        twin = std::make_unique<nn::RNN>(g, "twin", kInput, kHidden, layer_options, nonlinearity);
      }
      EXPECT_EQ(layer->bias_ih.defined(), bias);
      Session s(g);
      const nn::Recurrent::Weights& w = twin->weights[0];
      s.set_variable(w.weight_ih, s.variable_value(layer->weight_ih));
      s.set_variable(w.weight_hh, s.variable_value(layer->weight_hh));
      if (bias) {
        s.set_variable(w.bias_ih, s.variable_value(layer->bias_ih));
        s.set_variable(w.bias_hh, s.variable_value(layer->bias_hh));
      }
      const Tensor xv = testing::random_tensor(f32, {kBatch, kInput}, -2, 2, 7);
      const Tensor hv = testing::random_tensor(f32, {kBatch, kHidden}, -1, 1, 8);
      const Tensor cv = testing::random_tensor(f32, {kBatch, kHidden}, -1, 1, 9);
      const Expected e =
          reference(cell, s, *twin, testing::values(xv), 1, kBatch, 1, false, testing::values(hv),
                    cell == Cell::lstm ? testing::values(cv) : std::vector<double>{});
      FeedList feeds{{x, xv}, {h, hv}};
      if (cell == Cell::lstm) feeds.push_back({c, cv});
      std::vector<Value> fetches{next_h};
      if (cell == Cell::lstm) fetches.push_back(next_c);
      const std::vector<Tensor> got = s.run(feeds, fetches);
      testing::expect_near(e.hidden, got[0], 1e-5, 1e-6, "h'");
      if (cell == Cell::lstm) testing::expect_near(e.cell, got[1], 1e-5, 1e-6, "c'");
    }
  }
}

TEST(RecurrentCells, CalledOnXTheyStepFromZerosWithPyTorchsNames) {
  Graph g;
  Value x = g.placeholder("x", f32, {2, 3});
  nn::LSTMCell lstm(g, "lstm", 3, 4);
  Value from_zeros = lstm(x);
  Value explicit_zeros =
      lstm.step(x, g.constant(Tensor::zeros(f32, {2, 4})), g.constant(Tensor::zeros(f32, {2, 4})))
          .h;
  EXPECT_EQ(lstm.weight_ih.name(), "lstm/weight_ih");
  EXPECT_EQ(lstm.weight_ih.shape(), (Shape{3, 16}));
  EXPECT_EQ(lstm.weight_hh.shape(), (Shape{4, 16}));
  Session s(g);
  const Tensor xv = testing::random_tensor(f32, {2, 3}, -1, 1, 2);
  const std::vector<Tensor> got = s.run({{x, xv}}, {from_zeros, explicit_zeros});
  testing::expect_near(testing::values(got[1]), got[0], 1e-6, 1e-7, "h'");
  // Every element within PyTorch's +-1/sqrt(H), and the state_dict PyTorch's LSTMCell has.
  for (const double v : testing::values(s.variable_value(lstm.weight_hh)))
    EXPECT_LE(std::abs(v), 0.5);
  const std::map<std::string, Tensor> dict = lstm.torch_state_dict(s.variable_values());
  ASSERT_EQ(dict.size(), 4u);
  EXPECT_EQ(dict.at("weight_ih").shape(), (Shape{16, 3}));
  EXPECT_EQ(dict.at("weight_hh").shape(), (Shape{16, 4}));
  EXPECT_EQ(dict.at("bias_ih").shape(), (Shape{16}));
  EXPECT_EQ(dict.at("bias_hh").shape(), (Shape{16}));
  EXPECT_EQ(dict.at("weight_ih").to_vector<float>()[1],
            s.variable_value(lstm.weight_ih).to_vector<float>()[16]);  // [1, 0] is [0, 1]
}

TEST(RecurrentCells, BadInputsAreErrorsNamingTheCell) {
  Graph g;
  Value x = g.placeholder("x", f32, {2, 3});
  nn::GRUCell gru(g, "gru", 3, 4);
  nn::LSTMCell lstm(g, "lstm", 3, 4);
  expect_error<GraphError>(
      [&] {
        gru.step(g.placeholder("wide", f32, {2, 5}));
      },
      {"GRUCell gru", "x [B, 3]", "[2, 5]"});
  expect_error<GraphError>(
      [&] {
        gru.step(x, g.placeholder("h", f32, {2, 6}));
      },
      {"GRUCell gru", "h [2, 4]", "[2, 6]"});
  expect_error<GraphError>(
      [&] {
        gru.step(x, g.placeholder("h_rows", f32, {3, 4}));
      },
      {"h [2, 4]", "[3, 4]"});
  expect_error<GraphError>([&] { lstm.step(x, {}, g.placeholder("c", f32, {2})); },
                           {"LSTMCell lstm", "c [2, 4]", "[2]"});
  expect_error<GraphError>([&] { nn::RNNCell(g, "empty", 3, 0); }, {"RNNCell empty", "positive"});
  Graph other;
  Value foreign = other.placeholder("foreign", f32, {2, 3});
  expect_error<GraphError>([&] { gru.step(foreign); }, {"gru"});
}

}  // namespace
}  // namespace kiln
