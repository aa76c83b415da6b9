// Writes cases for the PyTorch parity suite (torch_parity.py). Each case is a small graph in a
// line-based spec that both sides build from: Kiln here (forward values and the gradients of
// sum(y * r) with respect to every floating input), torch.autograd in the script.
//
//   parity_cases DIR [NUM_RANDOM]
//
// Spec lines: "<id> <op> [input ids...] [key=value ...]"; list values are comma-separated.
//   input file=ID.npy   differentiable input     const file=ID.npy   non-differentiable input
//   scalar value=V      rank-0 constant of the case dtype
#include <kiln/kiln.h>

#include "unary_ranges.h"

#include <cstdio>
#include <filesystem>
#include <fstream>
#include <random>
#include <sstream>

using namespace kiln;

namespace {

std::string join(const std::vector<int64_t>& v) {
  std::string out;
  for (size_t i = 0; i < v.size(); ++i) out += (i ? "," : "") + std::to_string(v[i]);
  return out.empty() ? "none" : out;
}

// Builds a Kiln graph while recording its spec.
class CaseBuilder {
 public:
  CaseBuilder(std::string dir, DType dtype, uint32_t seed)
      : dir_(std::move(dir)), dtype_(dtype), rng_(seed) {}

  Value input(const Shape& shape, double low = -1, double high = 1) {
    Tensor t = random(shape, low, high);
    std::string id = next_id();
    Value v = g_.placeholder(id, dtype_, shape);
    save_npy(t, dir_ + "/" + id + ".npy");
    lines_ << id << " input file=" << id << ".npy\n";
    feeds_.emplace_back(v, t);
    ids_[v.node_id()] = id;
    float_inputs_.push_back(v);
    return v;
  }
  Value constant(const Tensor& t) {
    std::string id = next_id();
    save_npy(t, dir_ + "/" + id + ".npy");
    lines_ << id << " const file=" << id << ".npy\n";
    Value v = g_.placeholder(id, t.dtype(), t.shape());
    feeds_.emplace_back(v, t);
    ids_[v.node_id()] = id;
    return v;
  }
  Value scalar(double value) {
    std::string id = next_id();
    Value v = g_.scalar(value, dtype_);
    lines_ << id << " scalar value=" << value << "\n";
    ids_[v.node_id()] = id;
    return v;
  }
  /// Adds op `op` with `inputs` and `attrs`; `text_attrs` is how the spec spells them.
  Value op(const std::string& op, const std::vector<Value>& inputs, AttrMap attrs,
           const std::string& text_attrs = "") {
    Value v = g_.add(op, inputs, std::move(attrs));
    std::string id = next_id();
    lines_ << id << " " << op;
    for (const Value& in : inputs) lines_ << " " << ids_.at(in.node_id());
    if (!text_attrs.empty()) lines_ << " " << text_attrs;
    lines_ << "\n";
    ids_[v.node_id()] = id;
    return v;
  }
  Tensor random(const Shape& shape, double low, double high) {
    std::uniform_real_distribution<double> dist(low, high);
    Tensor t = Tensor::empty(dtype_, shape);
    for (int64_t i = 0; i < t.numel(); ++i) {
      if (dtype_ == f32)
        t.data<float>()[i] = static_cast<float>(dist(rng_));
      else
        t.data<double>()[i] = dist(rng_);
    }
    return t;
  }
  std::mt19937& rng() { return rng_; }
  Graph& graph() { return g_; }
  DType dtype() const { return dtype_; }

  /// Runs y and the gradients, writes the spec and Kiln's results.
  void finish(const Value& y) {
    Tensor r = random(y.shape().is_known() ? y.shape() : Shape{}, -1, 1);
    Value weights = g_.placeholder("r", dtype_, y.shape());
    Value loss = sum(y * weights);
    std::vector<Value> grads = gradients(loss, float_inputs_);
    Session s(g_, {.intra_op_threads = 1});
    FeedList feeds = feeds_;
    feeds.emplace_back(weights, r);
    std::vector<Value> fetches = {y};
    fetches.insert(fetches.end(), grads.begin(), grads.end());
    std::vector<Tensor> out = s.run(feeds, fetches);
    save_npy(r, dir_ + "/r.npy");
    save_npy(out[0], dir_ + "/kiln_y.npy");
    std::ofstream spec(dir_ + "/spec.txt");
    spec << "dtype " << dtype_ << "\n" << lines_.str() << "output " << ids_.at(y.node_id()) << "\n";
    for (size_t i = 0; i < float_inputs_.size(); ++i) {
      std::string id = ids_.at(float_inputs_[i].node_id());
      save_npy(out[1 + i], dir_ + "/kiln_grad_" + id + ".npy");
      spec << "grad " << id << "\n";
    }
  }

 private:
  std::string next_id() { return "n" + std::to_string(counter_++); }
  Graph g_;
  std::string dir_;
  DType dtype_;
  std::mt19937 rng_;
  std::ostringstream lines_;
  std::map<int32_t, std::string> ids_;
  FeedList feeds_;
  std::vector<Value> float_inputs_;
  int counter_ = 0;
};

using OpCase = std::function<Value(CaseBuilder&)>;

// One case per op (and per interesting attribute setting).
std::vector<std::pair<std::string, OpCase>> single_op_cases() {
  std::vector<std::pair<std::string, OpCase>> cases;
  for (const testing::UnaryRange& u : testing::unary_ranges()) {
    cases.emplace_back(u.op, [u](CaseBuilder& b) {
      return b.op(u.op, {b.input({3, 5}, u.low, u.high)}, {});
    });
  }
  for (const char* op : {"add", "sub", "mul", "div", "maximum", "minimum"}) {
    cases.emplace_back(op, [op](CaseBuilder& b) {
      return b.op(op, {b.input({2, 3, 4}, 0.2, 2), b.input({3, 1}, 0.2, 2)}, {});
    });
  }
  cases.emplace_back("pow", [](CaseBuilder& b) {
    return b.op("pow", {b.input({3, 4}, 0.3, 2), b.input({4}, -1.5, 2)}, {});
  });
  cases.emplace_back("where", [](CaseBuilder& b) {
    Value c = b.op("greater", {b.input({4, 1}), b.scalar(0)}, {});
    return b.op("where", {c, b.input({4, 3}), b.input({3})}, {});
  });
  for (int t = 0; t < 4; ++t) {
    cases.emplace_back("matmul", [t](CaseBuilder& b) {
      bool ta = t & 1, tb = t & 2;
      Value a = b.input(ta ? Shape{2, 4, 3} : Shape{2, 3, 4});
      Value w = b.input(tb ? Shape{5, 4} : Shape{4, 5});
      return b.op("matmul", {a, w}, {{"transpose_a", ta}, {"transpose_b", tb}},
                  str("transpose_a=", int(ta), " transpose_b=", int(tb)));
    });
  }
  for (const char* op : {"sum", "mean", "max", "min"}) {
    for (bool keep : {false, true}) {
      cases.emplace_back(op, [op, keep](CaseBuilder& b) {
        std::vector<int64_t> axes = {0, 2};
        return b.op(op, {b.input({3, 4, 5})}, {{"axes", axes}, {"keepdims", keep}},
                    str("axes=", join(axes), " keepdims=", int(keep)));
      });
    }
  }
  cases.emplace_back("reshape", [](CaseBuilder& b) {
    return b.op("reshape", {b.input({2, 6})}, {{"shape", Shape{3, -1}}}, "shape=3,-1");
  });
  cases.emplace_back("transpose", [](CaseBuilder& b) {
    return b.op("transpose", {b.input({2, 3, 4})}, {{"perm", std::vector<int64_t>{2, 0, 1}}},
                "perm=2,0,1");
  });
  cases.emplace_back("broadcast_to", [](CaseBuilder& b) {
    return b.op("broadcast_to", {b.input({3, 1})}, {{"shape", Shape{2, 3, 4}}}, "shape=2,3,4");
  });
  cases.emplace_back("concat", [](CaseBuilder& b) {
    return b.op("concat", {b.input({2, 3}), b.input({2, 1}), b.input({2, 2})},
                {{"axis", int64_t{1}}}, "axis=1");
  });
  cases.emplace_back("slice", [](CaseBuilder& b) {
    return b.op("slice", {b.input({5, 6})},
                {{"begin", std::vector<int64_t>{1, -5}},
                 {"end", std::vector<int64_t>{kSliceEnd, 6}},
                 {"step", std::vector<int64_t>{2, 2}}},
                str("begin=1,-5 end=", kSliceEnd, ",6 step=2,2"));
  });
  cases.emplace_back("gather", [](CaseBuilder& b) {
    Value idx = b.constant(Tensor::from_vector<int64_t>({2, 0, 2, 1}, {2, 2}));
    return b.op("gather", {b.input({3, 4}), idx}, {{"axis", int64_t{0}}}, "axis=0");
  });
  for (const char* op : {"softmax", "log_softmax"}) {
    cases.emplace_back(op, [op](CaseBuilder& b) {
      return b.op(op, {b.input({3, 4, 5}, -3, 3)}, {{"axis", int64_t{1}}}, "axis=1");
    });
  }
  cases.emplace_back("softmax_cross_entropy", [](CaseBuilder& b) {
    Value labels = b.constant(Tensor::from_vector<int64_t>({3, 0, 4, 4}));
    return b.op("softmax_cross_entropy", {b.input({4, 5}, -3, 3), labels}, {});
  });
  return cases;
}

// A random composite: a DAG of 6-14 ops over broadcasting-compatible values.
Value random_composite(CaseBuilder& b) {
  std::mt19937& rng = b.rng();
  auto pick = [&](int n) { return static_cast<int>(rng() % n); };
  std::vector<Value> pool = {b.input({3, 4}), b.input({4}), b.input({3, 1})};
  auto any = [&]() { return pool[pick(static_cast<int>(pool.size()))]; };
  // Keeps log/sqrt/div arguments away from 0: x^2 + 0.5.
  auto positive = [&](Value v) {
    return b.op("add", {b.op("square", {v}, {}), b.scalar(0.5)}, {});
  };
  const char* smooth[] = {"tanh", "sigmoid", "gelu", "sin", "cos", "exp", "neg", "square"};
  const char* binary[] = {"add", "sub", "mul", "maximum", "minimum"};
  int steps = 6 + pick(9);
  for (int s = 0; s < steps; ++s) {
    Value a = any(), v;
    switch (pick(9)) {
      case 0:
      case 1:
        v = b.op(smooth[pick(8)], {a}, {});
        break;
      case 2:
        v = b.op(pick(2) ? "log" : "sqrt", {positive(a)}, {});
        break;
      case 3:
      case 4: {
        Value c = any();
        Shape out;
        if (!broadcast_shapes(a.shape(), c.shape(), &out)) c = a;
        v = b.op(binary[pick(5)], {a, c}, {});
        break;
      }
      case 5: {
        Value c = any();
        Shape out;
        if (!broadcast_shapes(a.shape(), c.shape(), &out)) c = a;
        v = b.op("div", {a, positive(c)}, {});
        break;
      }
      case 6:
        if (a.shape().rank() == 2 && a.shape()[1] == 4) {
          Value w = b.input({4, 4});
          v = b.op("matmul", {a, w}, {{"transpose_a", false}, {"transpose_b", false}},
                   "transpose_a=0 transpose_b=0");
        } else {
          v = b.op("relu", {a}, {});
        }
        break;
      case 7:
        if (a.shape().rank() >= 1 && a.shape()[-1] > 1) {
          const char* op = pick(2) ? "softmax" : "log_softmax";
          v = b.op(op, {a}, {{"axis", int64_t{-1}}}, "axis=-1");
        } else {
          v = b.op("abs", {a}, {});
        }
        break;
      default: {
        const char* ops[] = {"sum", "mean", "max"};
        const char* op = ops[pick(3)];
        int64_t axis = a.shape().rank() > 0 ? pick(static_cast<int>(a.shape().rank())) : 0;
        std::vector<int64_t> axes =
            a.shape().rank() > 0 ? std::vector<int64_t>{axis} : std::vector<int64_t>{};
        v = b.op(op, {a}, {{"axes", axes}, {"keepdims", true}},
                 str("axes=", join(axes), " keepdims=1"));
      }
    }
    pool.push_back(v);
  }
  // Combine the last two values so more than one branch reaches the output.
  Value last = pool.back(), other = pool[pool.size() - 2];
  Shape out;
  return broadcast_shapes(last.shape(), other.shape(), &out) ? b.op("add", {last, other}, {})
                                                             : last;
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
    auto cases = single_op_cases();
    for (size_t i = 0; i < cases.size(); ++i) {
      for (DType dtype : {f64, f32}) {
        std::string dir = str(root, "/op_", cases[i].first, "_", i, "_", dtype);
        std::filesystem::create_directories(dir);
        CaseBuilder b(dir, dtype, static_cast<uint32_t>(1000 + i));
        b.finish(cases[i].second(b));
        ++written;
      }
    }
    for (int i = 0; i < num_random; ++i) {
      DType dtype = i % 5 == 4 ? f32 : f64;
      std::string dir = str(root, "/random_", i, "_", dtype);
      std::filesystem::create_directories(dir);
      CaseBuilder b(dir, dtype, static_cast<uint32_t>(i));
      b.finish(random_composite(b));
      ++written;
    }
  } catch (const std::exception& e) {
    std::fprintf(stderr, "parity_cases: %s\n", e.what());
    return 1;
  }
  std::printf("wrote %d parity cases to %s\n", written, root.c_str());
  return 0;
}
