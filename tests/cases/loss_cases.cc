// The op-case table's entries for the losses with kernels of their own beyond cross entropy:
// ctc_loss and its gradient. The forward reference sums the probability of every path through
// C^T outputs and collapses each (repeats merged, blanks dropped), independent of the
// recursions the kernels use.
#include <cmath>
#include <functional>
#include <limits>
#include <vector>

#include "cases/op_cases.h"

namespace kiln::testing {
namespace {

struct CtcShapes {
  int64_t time, batch, classes, longest;
  bool concatenated = false;  // targets [L], the sequences' labels one after another
};

// Each sequence's -log sum over the paths of exp(sum_t lp[t][path_t]) whose collapse is its
// target; `normalize`: lp is x's log_softmax over the classes. inputs: x [T, N, C], targets
// [N, S] (or [L] concatenated), input lengths [N], target lengths [N] (the cases' feed order).
Reference ctc_reference(CtcShapes shapes, int64_t blank, bool normalize, bool zero_infinity) {
  return [=](const std::vector<Tensor>& in) {
    const auto lp = [&](int64_t t, int64_t n, int64_t c) {
      const int64_t row = (t * shapes.batch + n) * shapes.classes;
      double value = in[0].element(row + c);
      if (!normalize) return value;
      double total = 0;
      for (int64_t k = 0; k < shapes.classes; ++k) total += std::exp(in[0].element(row + k));
      return value - std::log(total);
    };
    std::vector<double> out;
    int64_t start = 0;  // concatenated: where sequence n's labels start
    for (int64_t n = 0; n < shapes.batch; ++n) {
      const int64_t steps = static_cast<int64_t>(in[2].element(n));
      const int64_t length = static_cast<int64_t>(in[3].element(n));
      const int64_t first = shapes.concatenated ? start : n * shapes.longest;
      start += length;
      std::vector<int64_t> target;
      for (int64_t i = 0; i < length; ++i)
        target.push_back(static_cast<int64_t>(in[1].element(first + i)));
      double probability = 0;
      std::vector<int64_t> path(static_cast<size_t>(steps), 0);
      for (;;) {
        std::vector<int64_t> collapsed;
        for (int64_t t = 0; t < steps; ++t)
          if (path[t] != blank && (t == 0 || path[t] != path[t - 1])) collapsed.push_back(path[t]);
        if (collapsed == target) {
          double log_p = 0;
          for (int64_t t = 0; t < steps; ++t) log_p += lp(t, n, path[t]);
          probability += std::exp(log_p);
        }
        int64_t t = 0;  // the next path, counting in base C
        while (t < steps && ++path[t] == shapes.classes) path[t++] = 0;
        if (t == steps) break;
      }
      const double nll = -std::log(probability);
      out.push_back(zero_infinity && std::isinf(nll) ? 0.0 : nll);
    }
    return out;
  };
}

// PyTorch's ctc_loss per sequence; its gradient agrees with Kiln's through log_softmax only.
const char* const kTorchCtc =
    "F.ctc_loss(a, args[1], args[2], args[3], blank=int(attrs['blank']), reduction='none', "
    "zero_infinity=attrs['zero_infinity'] == '1')";

}  // namespace

void add_loss_cases(const std::function<void(OpCase)>& add) {
  // Three sequences: a repeated label (a blank must separate the two 1s), a padded target, an
  // empty one; input lengths below T. log_softmax makes the gradient PyTorch's.
  const CtcShapes shapes{6, 3, 5, 3};
  const auto ctc_inputs = [shapes](CaseGraph& c, double low, double high,
                                   const std::vector<int64_t>& targets,
                                   const std::vector<int64_t>& input_lengths,
                                   const std::vector<int64_t>& target_lengths) {
    Value x = c.input({shapes.time, shapes.batch, shapes.classes}, low, high);
    return std::vector<Value>{x, c.ints(targets, {shapes.batch, shapes.longest}),
                              c.ints(input_lengths, {shapes.batch}),
                              c.ints(target_lengths, {shapes.batch})};
  };
  add({.op = "ctc_loss",
       .name = "ctc_loss",
       .build =
           [ctc_inputs](CaseGraph& c) {
             std::vector<Value> in =
                 ctc_inputs(c, -2, 2, {1, 1, 2, 3, 4, 9, 2, 7, 7}, {6, 4, 5}, {3, 2, 0});
             in[0] = log_softmax(in[0], -1);
             return c.g.add_node("ctc_loss", in,
                                 {{"blank", int64_t{0}}, {"zero_infinity", false}})[0];
           },
       .torch = kTorchCtc,
       .reference = ctc_reference(shapes, 0, true, false)});
  // Log probabilities that are not normalized, so finite differences check the exact gradient
  // (PyTorch's differs there by exp(lp)); blank 2; the third sequence cannot be aligned (two
  // equal labels need three steps, it has two) and counts 0.
  add({.op = "ctc_loss",
       .name = "ctc_loss_unnormalized_zero_infinity",
       .build =
           [ctc_inputs](CaseGraph& c) {
             std::vector<Value> in =
                 ctc_inputs(c, -3, -0.2, {0, 4, 4, 3, 1, 1, 4, 4, 0}, {5, 6, 2}, {3, 3, 2});
             return c.g.add_node("ctc_loss", in,
                                 {{"blank", int64_t{2}}, {"zero_infinity", true}})[0];
           },
       .parity = false,
       .reference = ctc_reference(shapes, 2, false, true)});
  // Concatenated targets (PyTorch's 1-D form).
  CtcShapes joined = shapes;
  joined.concatenated = true;
  add({.op = "ctc_loss",
       .name = "ctc_loss_concatenated",
       .build =
           [shapes](CaseGraph& c) {
             Value x = c.input({shapes.time, shapes.batch, shapes.classes}, -2, 2);
             return c.g.add_node(
                 "ctc_loss",
                 {log_softmax(x, -1), c.ints({3, 3, 1, 2, 4, 2}, {6}),
                  c.ints({6, 5, 4}, {shapes.batch}), c.ints({2, 3, 1}, {shapes.batch})},
                 {{"blank", int64_t{0}}, {"zero_infinity", false}})[0];
           },
       .torch = kTorchCtc,
       .reference = ctc_reference(joined, 0, true, false)});
  add({.op = "ctc_loss_grad",
       .name = "ctc_loss_grad",
       .build =
           [ctc_inputs](CaseGraph& c) {
             std::vector<Value> in =
                 ctc_inputs(c, -2, 2, {1, 1, 2, 3, 4, 0, 2, 0, 0}, {6, 5, 3}, {3, 2, 1});
             in[0] = log_softmax(in[0], -1);
             const AttrMap attrs = {{"blank", int64_t{0}}, {"zero_infinity", false}};
             in.push_back(c.g.add_node("ctc_loss", in, attrs)[1]);  // alpha
             in.push_back(c.input({3}));
             return c.g.add("ctc_loss_grad", in, attrs);
           },
       .gradients = false,
       .parity = false});
}

}  // namespace kiln::testing
