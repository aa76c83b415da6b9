// Writes cases for the PyTorch parity suite (torch_parity.py): every case of the op-case table
// marked for parity (tests/cases/op_cases.cc), in f64 and f32, and NUM_RANDOM random composite
// graphs. For each, Kiln's forward values and the gradients of sum(y * r) with respect to every
// float input, and a spec of the graph that the script rebuilds in torch.
//
//   parity_cases DIR [NUM_RANDOM]
//
// Spec lines, one per node of the case's graph in id order:
//   "<id> input file=<id>.npy"    a fed float input (differentiable)
//   "<id> const file=<id>.npy"    a fed integer input or a constant
//   "<id> <op> <ref>... <attr>=<value>..."  an op; a ref is "<id>" or "<id>:<output>";
//       lists are comma-separated ("none" when empty), bools 0/1, dtypes by name
//   "output <ref>", "grad <id>" (one per float input), "tolerance <t>" (optional),
//   "torch <op> <python expression>" (optional: the case's own PyTorch form of its op)
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <iomanip>
#include <map>
#include <random>
#include <set>

#include "cases/op_cases.h"

using namespace kiln;
using testing::CaseGraph;

namespace {

template <typename T>
std::string join(const std::vector<T>& v) {
  std::string out;
  for (size_t i = 0; i < v.size(); ++i) out += (i ? "," : "") + str(v[i]);
  return out.empty() ? "none" : out;
}

std::string attr_text(const AttrValue& value) {
  return std::visit(
      [](const auto& v) -> std::string {
        using T = std::decay_t<decltype(v)>;
        if constexpr (std::is_same_v<T, bool>)
          return v ? "1" : "0";
        else if constexpr (std::is_same_v<T, double>)
          return str(std::setprecision(17), v);
        else if constexpr (std::is_same_v<T, std::vector<int64_t>> ||
                           std::is_same_v<T, std::vector<double>>)
          return join(v);
        else if constexpr (std::is_same_v<T, Shape>)
          return join(std::vector<int64_t>(v.begin(), v.end()));
        else if constexpr (std::is_same_v<T, Tensor>)
          return "tensor";
        else
          return str(v);
      },
      value);
}

std::string ref(const Value& v) {
  return v.index() == 0 ? str("n", v.node_id()) : str("n", v.node_id(), ":", v.index());
}

// Runs the case, writes its spec, inputs and Kiln's results (forward, and with
// `with_gradients` the gradients) to `dir`.
void write_case(const std::string& dir, CaseGraph& c, const Value& y, bool with_gradients,
                double tolerance, const std::string& op = "", const std::string& torch = "") {
  std::filesystem::create_directories(dir);
  std::ofstream spec(dir + "/spec.txt");
  spec << "dtype " << c.dtype() << "\n";
  if (tolerance > 0) spec << "tolerance " << tolerance << "\n";
  if (!torch.empty()) spec << "torch " << op << " " << torch << "\n";
  std::map<int32_t, Tensor> fed;
  for (const auto& [value, tensor] : c.feeds) fed[value.node_id()] = tensor;
  std::set<int32_t> float_inputs;
  for (const Value& v : c.float_inputs) float_inputs.insert(v.node_id());
  const int32_t nodes = c.g.num_nodes();
  for (int32_t id = 0; id < nodes; ++id) {
    const Node& node = c.g.node(id);
    const std::string name = str("n", id);
    if (fed.count(id) || node.op_name() == "constant") {
      save_npy(fed.count(id) ? fed[id] : node.attr<Tensor>("value"), dir + "/" + name + ".npy");
      spec << name << (float_inputs.count(id) ? " input" : " const") << " file=" << name
           << ".npy\n";
      continue;
    }
    spec << name << " " << node.op_name();
    for (OutputRef in : node.inputs()) spec << " " << ref(c.g.value(in));
    for (const auto& [key, value] : node.attrs()) spec << " " << key << "=" << attr_text(value);
    spec << "\n";
  }
  spec << "output " << ref(y) << "\n";
  // Gradients of sum(y * r) for a floating y with a fixed random r.
  const bool differentiable = with_gradients && is_floating(y.dtype()) && !c.float_inputs.empty();
  std::vector<Value> fetches = {y};
  FeedList feeds = c.feeds;
  if (differentiable) {
    Value weights = c.g.placeholder("r", y.dtype(), y.shape());
    std::mt19937 rng(77);
    std::uniform_real_distribution<double> dist(-1, 1);
    Tensor r = Tensor::empty(y.dtype(), y.shape());
    for (int64_t i = 0; i < r.numel(); ++i) {
      if (y.dtype() == f32)
        r.data<float>()[i] = static_cast<float>(dist(rng));
      else
        r.data<double>()[i] = dist(rng);
    }
    feeds.emplace_back(weights, r);
    save_npy(r, dir + "/r.npy");
    std::vector<Value> grads =
        gradients(sum(y * weights), c.float_inputs, {.materialize_unused = true});
    fetches.insert(fetches.end(), grads.begin(), grads.end());
  }
  Session s(c.g, {.intra_op_threads = 1});
  std::vector<Tensor> out = s.run(feeds, fetches);
  save_npy(out[0], dir + "/kiln_y.npy");
  for (size_t i = 0; differentiable && i < c.float_inputs.size(); ++i) {
    save_npy(out[1 + i], str(dir, "/kiln_grad_n", c.float_inputs[i].node_id(), ".npy"));
    spec << "grad n" << c.float_inputs[i].node_id() << "\n";
  }
}

// A random composite: a DAG of 6-14 ops over broadcasting-compatible values.
Value random_composite(CaseGraph& c, std::mt19937& rng) {
  auto pick = [&](int n) { return static_cast<int>(rng() % n); };
  std::vector<Value> pool = {c.input({3, 4}), c.input({4}), c.input({3, 1})};
  auto any = [&]() { return pool[pick(static_cast<int>(pool.size()))]; };
  // Keeps log/sqrt/div arguments away from 0: x^2 + 0.5.
  auto positive = [&](Value v) { return square(v) + c.scalar(0.5); };
  auto compatible = [&](Value a, Value b) {
    Shape out;
    return broadcast_shapes(a.shape(), b.shape(), &out) ? b : a;
  };
  const char* smooth[] = {"tanh", "sigmoid", "gelu", "sin", "cos", "exp", "neg", "square"};
  const char* binary[] = {"add", "sub", "mul", "maximum", "minimum"};
  const int steps = 6 + pick(9);
  for (int s = 0; s < steps; ++s) {
    Value a = any(), v;
    switch (pick(9)) {
      case 0:
      case 1:
        v = c.g.add(smooth[pick(8)], {a});
        break;
      case 2:
        v = c.g.add(pick(2) ? "log" : "sqrt", {positive(a)});
        break;
      case 3:
      case 4:
        v = c.g.add(binary[pick(5)], {a, compatible(a, any())});
        break;
      case 5:
        v = a / positive(compatible(a, any()));
        break;
      case 6:
        v = a.shape().rank() == 2 && a.shape()[1] == 4 ? matmul(a, c.input({4, 4})) : relu(a);
        break;
      case 7:
        if (a.shape().rank() >= 1 && a.shape()[-1] > 1)
          v = pick(2) ? softmax(a, -1) : log_softmax(a, -1);
        else
          v = abs(a);
        break;
      default: {
        const std::vector<int64_t> axes =
            a.shape().rank() > 0 ? std::vector<int64_t>{pick(static_cast<int>(a.shape().rank()))}
                                 : std::vector<int64_t>{};
        const char* ops[] = {"sum", "mean", "max"};
        v = c.g.add(ops[pick(3)], {a}, {{"axes", axes}, {"keepdims", true}});
      }
    }
    pool.push_back(v);
  }
  // Combine the last two values so more than one branch reaches the output.
  Value last = pool.back(), other = pool[pool.size() - 2];
  Shape out;
  return broadcast_shapes(last.shape(), other.shape(), &out) ? last + other : last;
}

}  // namespace

int main(int argc, char** argv) {
  if (argc < 2) {
    std::fprintf(stderr, "usage: parity_cases DIR [NUM_RANDOM]\n");
    return 2;
  }
  const std::string root = argv[1];
  const int num_random = argc > 2 ? std::atoi(argv[2]) : 200;
  std::filesystem::remove_all(root);
  int written = 0;
  try {
    for (const testing::OpCase& oc : testing::op_cases()) {
      if (!oc.parity) continue;
      for (DType dtype : {f64, f32}) {
        if (std::find(oc.dtypes.begin(), oc.dtypes.end(), dtype) == oc.dtypes.end()) continue;
        CaseGraph c(dtype, dtype, testing::case_seed(oc.name));
        Value y = oc.build(c);
        write_case(str(root, "/op_", oc.name, "_", dtype), c, y, oc.gradients, oc.parity_tolerance,
                   oc.op, oc.torch);
        ++written;
      }
    }
    for (int i = 0; i < num_random; ++i) {
      const DType dtype = i % 5 == 4 ? f32 : f64;
      CaseGraph c(dtype, dtype, static_cast<uint32_t>(i));
      std::mt19937 rng(static_cast<uint32_t>(i));
      Value y = random_composite(c, rng);
      write_case(str(root, "/random_", i, "_", dtype), c, y, true, 0);
      ++written;
    }
  } catch (const std::exception& e) {
    std::fprintf(stderr, "parity_cases: %s\n", e.what());
    return 1;
  }
  std::printf("wrote %d parity cases to %s\n", written, root.c_str());
  return written > 0 ? 0 : 1;
}
