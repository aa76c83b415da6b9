// A structure-aware mutator for graph files (libFuzzer's LLVMFuzzerCustomMutator): most byte
// flips of a protobuf make a file that does not parse or names a node that does not exist, so
// half of the mutations here change the graph the way a crafted file would instead: an
// attribute's value (indices, sizes, axes, dtypes, shapes, programs, special floats), an input's
// source, a node's op, the outputs a signature fetches. The rest are libFuzzer's byte mutations.
// Include it in exactly one file of a fuzz target: it defines the target's
// LLVMFuzzerCustomMutator.
#pragma once

#include <kiln/kiln.h>

#include <cstdint>
#include <random>
#include <string>
#include <vector>

#include "framework/graph.pb.h"

extern "C" size_t LLVMFuzzerMutate(uint8_t* data, size_t size, size_t max_size);

namespace kiln::fuzz {

inline int64_t interesting_int(std::mt19937_64& rng, int64_t current) {
  static const int64_t values[] = {-3,
                                   -2,
                                   -1,
                                   0,
                                   1,
                                   2,
                                   3,
                                   4,
                                   7,
                                   64,
                                   1000,
                                   1 << 20,
                                   INT32_MAX,
                                   INT32_MIN,
                                   int64_t{1} << 31,
                                   int64_t{1} << 62,
                                   INT64_MAX,
                                   INT64_MIN};
  switch (rng() % 4) {
    case 0:  // +-1, wrapping (the mutator itself must not overflow)
      return static_cast<int64_t>(static_cast<uint64_t>(current) + 1);
    case 1:
      return static_cast<int64_t>(static_cast<uint64_t>(current) - 1);
    default:
      return values[rng() % (sizeof(values) / sizeof(values[0]))];
  }
}

inline double interesting_float(std::mt19937_64& rng) {
  static const double values[] = {0.0,
                                  -0.0,
                                  1.0,
                                  -1.0,
                                  0.5,
                                  2.0,
                                  1e-30,
                                  1e30,
                                  -1e30,
                                  1e300,
                                  std::numeric_limits<double>::infinity(),
                                  -std::numeric_limits<double>::infinity(),
                                  std::numeric_limits<double>::quiet_NaN()};
  return values[rng() % (sizeof(values) / sizeof(values[0]))];
}

inline void mutate_int_list(std::mt19937_64& rng, google::protobuf::RepeatedField<int64_t>* list) {
  switch (rng() % 4) {
    case 0:
      list->Add(interesting_int(rng, 1));
      break;
    case 1:
      if (!list->empty()) list->RemoveLast();
      break;
    default:
      if (!list->empty()) {
        int64_t& v = (*list)[static_cast<int>(rng() % list->size())];
        v = interesting_int(rng, v);
      }
  }
}

// Changes one attribute value of `node` in place, keeping its kind most of the time.
inline void mutate_attr(std::mt19937_64& rng, proto::NodeDef* node) {
  auto* attrs = node->mutable_attrs();
  if (attrs->empty()) return;
  auto it = attrs->begin();
  std::advance(it, static_cast<long>(rng() % attrs->size()));
  proto::AttrValue& v = it->second;
  if (rng() % 16 == 0) {
    attrs->erase(it);  // a missing attribute: the default, or "missing required attribute"
    return;
  }
  // clang-format off
  static const char* strings[] = {
      "zeros", "constant", "uniform", "normal", "normal_zero_row", "he_normal", "glorot_uniform",
      "truncated_normal", "none", "relu", "gelu", ""};
  // clang-format on
  switch (v.value_case()) {
    case proto::AttrValue::kI:
      v.set_i(interesting_int(rng, v.i()));
      break;
    case proto::AttrValue::kF:
      v.set_f(interesting_float(rng));
      break;
    case proto::AttrValue::kB:
      v.set_b(!v.b());
      break;
    case proto::AttrValue::kS:
      v.set_s(strings[rng() % (sizeof(strings) / sizeof(strings[0]))]);
      break;
    case proto::AttrValue::kInts:
      mutate_int_list(rng, v.mutable_ints()->mutable_values());
      break;
    case proto::AttrValue::kFloats:
      if (v.floats().values_size() > 0 && rng() % 2)
        v.mutable_floats()->set_values(static_cast<int>(rng() % v.floats().values_size()),
                                       interesting_float(rng));
      else
        v.mutable_floats()->add_values(interesting_float(rng));
      break;
    case proto::AttrValue::kDtype:
      v.set_dtype(static_cast<int32_t>(rng() % 10));
      break;
    case proto::AttrValue::kShape:
      mutate_int_list(rng, v.mutable_shape()->mutable_values());
      break;
    case proto::AttrValue::kTensor: {
      proto::TensorProto* t = v.mutable_tensor();
      if (rng() % 2) {
        mutate_int_list(rng, t->mutable_dims());
      } else if (!t->data().empty()) {
        (*t->mutable_data())[rng() % t->data().size()] = static_cast<char>(rng());
      }
      break;
    }
    case proto::AttrValue::VALUE_NOT_SET:
      break;
  }
}

// One structured change of a parsed graph.
inline void mutate_graph(std::mt19937_64& rng, proto::GraphDef* def) {
  if (def->nodes_size() == 0) return;
  proto::NodeDef* node = def->mutable_nodes(static_cast<int>(rng() % def->nodes_size()));
  const proto::NodeDef& other = def->nodes(static_cast<int>(rng() % def->nodes_size()));
  switch (rng() % 8) {
    case 0:
    case 1:
    case 2:
      mutate_attr(rng, node);
      break;
    case 3:  // read another node's output
      if (node->inputs_size() > 0)
        node->set_inputs(static_cast<int>(rng() % node->inputs_size()),
                         rng() % 4 ? other.name() : other.name() + ":" + std::to_string(rng() % 3));
      break;
    case 4: {  // become another op
      static const std::vector<std::string> ops = [] {
        std::vector<std::string> names;
        for (const OpDef* op : OpRegistry::global().all()) names.push_back(op->name());
        return names;
      }();
      node->set_op(ops[rng() % ops.size()]);
      break;
    }
    case 5:  // fetch one more value: its kernel runs too
      if (def->signatures_size() > 0)
        def->mutable_signatures(static_cast<int>(rng() % def->signatures_size()))
            ->add_outputs(other.name());
      break;
    case 6:  // one more or one fewer input
      if (rng() % 2)
        node->add_inputs(other.name());
      else if (node->inputs_size() > 0)
        node->mutable_inputs()->RemoveLast();
      break;
    default:  // copy an attribute of another node (same key, another value)
      for (const auto& [key, value] : other.attrs())
        if (node->attrs().count(key) && rng() % 2) (*node->mutable_attrs())[key] = value;
      break;
  }
}

// The custom mutator: half structured changes of the parsed graph, half byte mutations.
inline size_t mutate_graph_bytes(uint8_t* data, size_t size, size_t max_size, unsigned seed) {
  std::mt19937_64 rng(seed);
  proto::GraphDef def;
  if (rng() % 2 && def.ParseFromArray(data, static_cast<int>(size))) {
    const int rounds = 1 + static_cast<int>(rng() % 3);
    for (int i = 0; i < rounds; ++i) mutate_graph(rng, &def);
    def.clear_crc32c();
    std::string bytes;
    if (def.SerializeToString(&bytes) && bytes.size() <= max_size) {
      std::copy(bytes.begin(), bytes.end(), data);
      return bytes.size();
    }
  }
  return LLVMFuzzerMutate(data, size, max_size);
}

}  // namespace kiln::fuzz

extern "C" size_t LLVMFuzzerCustomMutator(uint8_t* data, size_t size, size_t max_size,
                                          unsigned int seed) {
  return kiln::fuzz::mutate_graph_bytes(data, size, max_size, seed);
}
