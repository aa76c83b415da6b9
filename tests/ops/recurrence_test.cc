// The recurrence op (ops/nn/recurrence.cc) behind the recurrent layers when the sequence length
// is unknown: the same layer called on [?, B, in] computes what its unrolled form computes on
// [T, B, in], outputs and every gradient, for each cell, at any length the graph is run with;
// and the errors a user can hit. Its op cases (tests/cases/recurrent_cases.cc) check it against
// its equations and finite differences.
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "test_util.h"

namespace kiln {
namespace {

using testing::expect_error;

constexpr int64_t kBatch = 4, kInput = 3, kHidden = 5, kLayers = 2;

std::unique_ptr<nn::Recurrent> make_layer(Graph& g, RecurrentCell cell,
                                          const nn::RecurrentOptions& options) {
  switch (cell) {
    case RecurrentCell::rnn_tanh:
      return std::make_unique<nn::RNN>(g, "rnn", kInput, kHidden, options);
    case RecurrentCell::rnn_relu:
      return std::make_unique<nn::RNN>(g, "rnn", kInput, kHidden, options,
                                       nn::RNN::Nonlinearity::relu);
    case RecurrentCell::lstm:
      return std::make_unique<nn::LSTM>(g, "lstm", kInput, kHidden, options);
    case RecurrentCell::gru:
      break;
  }
  return std::make_unique<nn::GRU>(g, "gru", kInput, kHidden, options);
}

struct Config {
  RecurrentCell cell;
  bool batch_first, lengths, states;
  int64_t proj_size = 0;
};

class UnknownLength : public ::testing::TestWithParam<Config> {};

// One layer, two calls: on x of known length T (unrolled) and on x of unknown length (one
// recurrence op per layer and direction). Both see the same values; outputs, h_n, c_n and the
// gradients of a weighted sum of them in x, h0, c0 and every variable agree, at two lengths.
TEST_P(UnknownLength, MatchesTheUnrolledLayer) {
  const Config config = GetParam();
  const bool lstm = config.cell == RecurrentCell::lstm;
  for (const int64_t length : {int64_t{5}, int64_t{2}}) {
    SCOPED_TRACE(str("T = ", length));
    Graph g;
    auto layer = make_layer(g, config.cell,
                            {.num_layers = kLayers,
                             .batch_first = config.batch_first,
                             .bidirectional = true,
                             .proj_size = config.proj_size});
    const Shape known =
        config.batch_first ? Shape{kBatch, length, kInput} : Shape{length, kBatch, kInput};
    const Shape open{-1, -1, kInput};  // the batch unknown too
    Value x_known = g.placeholder("x_known", f32, known);
    Value x_open = g.placeholder("x_open", f32, open);
    const Shape state{2 * kLayers, kBatch, config.proj_size > 0 ? config.proj_size : kHidden};
    const Shape cell_state{2 * kLayers, kBatch, kHidden};
    Value h0 = config.states ? g.placeholder("h0", f32, state) : Value();
    Value c0 = config.states && lstm ? g.placeholder("c0", f32, cell_state) : Value();
    // One sequence past T (counts as T), one empty, the others shorter.
    Value lengths =
        config.lengths ? g.constant(Tensor::from_vector<int32_t>({2, 0, 9, 1})) : Value();
    std::vector<Value> wrt;
    for (const nn::Recurrent::Weights& w : layer->weights)
      for (const Value& v : {w.weight_ih, w.weight_hh, w.bias_ih, w.bias_hh, w.weight_hr})
        if (v.defined()) wrt.push_back(v);
    if (h0.defined()) wrt.push_back(h0);
    if (c0.defined()) wrt.push_back(c0);
    // What each call gives: output, h_n, [c_n], then the gradients in its x and in `wrt`.
    const auto call = [&](const Value& x) {
      const nn::RecurrentResult r = layer->run(x, h0, c0, lengths);
      Value loss = sum(r.output * sin(r.output)) + sum(r.hidden * r.hidden) * 0.5;
      if (lstm) loss = loss + sum(r.cell) * 0.25;
      std::vector<Value> fetch{r.output, r.hidden};
      if (lstm) fetch.push_back(r.cell);
      std::vector<Value> targets = wrt;
      targets.insert(targets.begin(), x);
      for (const Value& d : gradients(loss, targets)) fetch.push_back(d);
      return fetch;
    };
    const std::vector<Value> unrolled = call(x_known), scanned = call(x_open);
    // The unknown length made one op per layer and direction, and its backward.
    std::map<std::string, int> ops;
    for (int32_t id = 0; id < g.num_nodes(); ++id) ++ops[g.node(id).op_name()];
    EXPECT_EQ(ops["recurrence"], 2 * kLayers);
    EXPECT_EQ(ops["recurrence_grad"], 2 * kLayers);
    Session s(g);
    const Tensor xv = testing::random_tensor(f32, known, -2, 2, 1);
    FeedList feeds{{x_known, xv}, {x_open, xv}};
    if (h0.defined()) feeds.emplace_back(h0, testing::random_tensor(f32, state, -1, 1, 2));
    if (c0.defined()) feeds.emplace_back(c0, testing::random_tensor(f32, cell_state, -1, 1, 3));
    const std::vector<Tensor> want = s.run(feeds, unrolled), got = s.run(feeds, scanned);
    ASSERT_EQ(want.size(), got.size());
    for (size_t i = 0; i < want.size(); ++i) {
      SCOPED_TRACE(str("fetch ", i));
      EXPECT_EQ(got[i].shape(), want[i].shape());
      testing::expect_near(testing::values(want[i]), got[i], 2e-5, 2e-6, "scanned");
    }
  }
}

INSTANTIATE_TEST_SUITE_P(Recurrence, UnknownLength,
                         ::testing::Values(Config{RecurrentCell::lstm, false, true, true},
                                           Config{RecurrentCell::lstm, true, false, false},
                                           Config{RecurrentCell::lstm, true, true, true, 3},
                                           Config{RecurrentCell::lstm, false, false, false, 2},
                                           Config{RecurrentCell::gru, true, true, true},
                                           Config{RecurrentCell::gru, false, false, false},
                                           Config{RecurrentCell::rnn_tanh, false, true, false},
                                           Config{RecurrentCell::rnn_relu, true, true, true}),
                         [](const ::testing::TestParamInfo<Config>& info) {
                           const Config& c = info.param;
                           return str(recurrent_cell_name(c.cell),
                                      c.proj_size > 0 ? "_projected" : "",
                                      c.batch_first ? "_batch_first" : "",
                                      c.lengths ? "_lengths" : "", c.states ? "_states" : "");
                         });

// Without a bias, the op adds zeros to each step's h W_hh; the layer matches its unrolled form.
TEST(Recurrence, ALayerWithoutBiasMatchesToo) {
  Graph g;
  nn::GRU gru(g, "gru", kInput, kHidden, {.bias = false});
  Value x_known = g.placeholder("x_known", f32, {3, kBatch, kInput});
  Value x_open = g.placeholder("x_open", f32, {-1, kBatch, kInput});
  const Tensor xv = testing::random_tensor(f32, {3, kBatch, kInput}, -2, 2, 4);
  Session s(g);
  const auto got = s.run({{x_known, xv}, {x_open, xv}}, {gru(x_known), gru(x_open)});
  testing::expect_near(testing::values(got[0]), got[1], 1e-5, 1e-6, "no bias");
}

TEST(Recurrence, BadInputsAreErrorsNamingTheOpAndTheValues) {
  Graph g;
  Value x = g.placeholder("x", f32, {-1, 2, 8});  // 4 H with H = 2
  Value w = g.placeholder("w", f32, {2, 8});
  Value b = g.placeholder("b", f32, {8});
  Value h0 = g.placeholder("h0", f32, {2, 2});
  expect_error<GraphError>([&] { recurrence(RecurrentCell::lstm, x, w, b, h0); },
                           {"[recurrence]", "the lstm cell needs c0"});
  expect_error<GraphError>([&] { recurrence(RecurrentCell::gru, x, w, b, h0, h0); },
                           {"[recurrence]", "the gru cell takes no c0"});
  expect_error<GraphError>(
      [&] { recurrence(RecurrentCell::gru, x, w, b, h0); },
      {"[recurrence]", "weight_hh must be [H, 3 H] for the gru cell, got [2, 8]"});
  expect_error<GraphError>(
      [&] {
        recurrence(RecurrentCell::lstm, x, w, b, g.placeholder("h3", f32, {3, 2}), h0);
      },
      {"[recurrence]", "h0 must be [B, H] = [2, 2] or [1, 2], got [3, 2]"});
  expect_error<GraphError>(
      [&] { recurrence(RecurrentCell::lstm, x, w, g.placeholder("b4", f32, {4}), h0, h0); },
      {"[recurrence]", "bias_hh must be [8], got [4]"});
  expect_error<GraphError>(
      [&] { recurrence(RecurrentCell::lstm, x, w, b, h0, h0, g.placeholder("lf", f32, {2})); },
      {"[recurrence]", "lengths must be integers, got f32"});
  expect_error<GraphError>(
      [&] { recurrence(RecurrentCell::lstm, x, w, b, h0, h0, g.placeholder("l3", i64, {3})); },
      {"[recurrence]", "lengths must be [B] = [2], got [3]"});
  // A negative length is found when the graph runs, naming the sequence.
  Value lengths = g.placeholder("lengths", i64, {2});
  const RecurrenceOutputs out = recurrence(RecurrentCell::lstm, x, w, b, h0, h0, lengths);
  Session s(g);
  expect_error(
      [&] {
        s.run({{x, testing::random_tensor(f32, {3, 2, 8}, -1, 1, 5)},
               {w, testing::random_tensor(f32, {2, 8}, -1, 1, 6)},
               {b, testing::random_tensor(f32, {8}, -1, 1, 7)},
               {h0, testing::random_tensor(f32, {2, 2}, -1, 1, 8)},
               {lengths, Tensor::from_vector<int64_t>({3, -1})}},
              {out.output});
      },
      {"[recurrence]", "length -1 of sequence 1 is negative"});
  // A projection is the LSTM's, at most H wide.
  Value gates = g.placeholder("gates", f32, {-1, 2, 6});  // 3 H for the GRU, H = 2
  expect_error<GraphError>(
      [&] {
        recurrence(RecurrentCell::gru, gates, g.placeholder("w6", f32, {2, 6}),
                   g.placeholder("b6", f32, {6}), h0, {}, {}, false, w);
      },
      {"[recurrence]", "a projection (weight_hr) is the lstm cell's, not the gru cell's"});
  expect_error<GraphError>(
      [&] {
        recurrence(RecurrentCell::lstm, x, g.placeholder("w3", f32, {3, 8}), b,
                   g.placeholder("p3", f32, {2, 3}), h0, {}, false,
                   g.placeholder("r3", f32, {2, 3}));
      },
      {"[recurrence]", "the projection's width P = 3 is above H = 2"});
}

}  // namespace
}  // namespace kiln
