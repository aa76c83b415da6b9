#include "kiln/framework/graph_io.h"

#include <google/protobuf/io/tokenizer.h>
#include <google/protobuf/text_format.h>

#include <cstdio>
#include <cstring>
#include <functional>
#include <queue>
#include <sstream>

#include "framework/graph.pb.h"
#include "kiln/framework/byte_order.h"
#include "kiln/framework/crc32c.h"

namespace kiln {

namespace {

// Graph files larger than this are refused before reading (a corrupt size, not a model).
constexpr size_t kMaxGraphFileBytes = size_t{2} << 30;

}  // namespace

void tensor_to_proto(const Tensor& t, proto::TensorProto* out) {
  out->set_dtype(static_cast<int32_t>(t.dtype()));
  for (int64_t d : t.shape()) out->add_dims(d);
  out->set_data(static_cast<const char*>(t.raw_data()), t.nbytes());
}

TensorType tensor_type_from_file(int32_t dtype, std::span<const int64_t> dims,
                                 const std::string& where, uint64_t* bytes) {
  KILN_CHECK(dtype_is_valid(dtype), FileError, where, ": tensor has invalid dtype ", dtype);
  for (int64_t d : dims) KILN_CHECK(d >= 0, FileError, where, ": tensor has negative dim ", d);
  const Shape shape(std::vector<int64_t>(dims.begin(), dims.end()));
  int64_t numel;
  try {
    numel = shape.numel();
  } catch (const Error&) {
    throw FileError(str(where, ": tensor shape ", shape, " is too large"));
  }
  KILN_CHECK(numel <= int64_t{1} << 40, FileError, where, ": tensor shape ", shape,
             " has more than 2^40 elements");
  const auto type = static_cast<DType>(dtype);
  *bytes = static_cast<uint64_t>(numel) * dtype_size(type);
  return {type, shape};
}

void canonicalize_file_bools(Tensor& tensor) {
  if (tensor.dtype() != DType::boolean) return;
  auto* bytes = static_cast<uint8_t*>(tensor.raw_data());
  for (int64_t i = 0; i < tensor.numel(); ++i) bytes[i] = bytes[i] != 0;
}

Tensor tensor_from_proto(const proto::TensorProto& p, const std::string& where) {
  uint64_t expected = 0;
  const TensorType type = tensor_type_from_file(
      p.dtype(), {p.dims().data(), static_cast<size_t>(p.dims().size())}, where, &expected);
  // Check the byte count before allocating anything: a corrupt shape cannot make us allocate.
  KILN_CHECK(expected == p.data().size(), FileError, where, ": tensor ", type.dtype, type.shape,
             " needs ", expected, " bytes of data, the file has ", p.data().size());
  Tensor t = Tensor::empty(type.dtype, type.shape);
  if (expected) std::memcpy(t.raw_data(), p.data().data(), expected);
  canonicalize_file_bools(t);
  return t;
}

namespace {

void attr_to_proto(const AttrValue& value, proto::AttrValue* out) {
  std::visit(
      [&](const auto& v) {
        using T = std::decay_t<decltype(v)>;
        if constexpr (std::is_same_v<T, int64_t>) {
          out->set_i(v);
        } else if constexpr (std::is_same_v<T, double>) {
          out->set_f(v);
        } else if constexpr (std::is_same_v<T, bool>) {
          out->set_b(v);
        } else if constexpr (std::is_same_v<T, std::string>) {
          out->set_s(v);
        } else if constexpr (std::is_same_v<T, std::vector<int64_t>>) {
          auto* list = out->mutable_ints();  // sets the oneof even for an empty list
          for (int64_t x : v) list->add_values(x);
        } else if constexpr (std::is_same_v<T, std::vector<double>>) {
          auto* list = out->mutable_floats();
          for (double x : v) list->add_values(x);
        } else if constexpr (std::is_same_v<T, DType>) {
          out->set_dtype(static_cast<int32_t>(v));
        } else if constexpr (std::is_same_v<T, Shape>) {
          auto* shape = out->mutable_shape();
          for (int64_t d : v) shape->add_values(d);
        } else {
          tensor_to_proto(v, out->mutable_tensor());
        }
      },
      value);
}

AttrValue attr_from_proto(const proto::AttrValue& p, const std::string& where) {
  switch (p.value_case()) {
    case proto::AttrValue::kI:
      return p.i();
    case proto::AttrValue::kF:
      return p.f();
    case proto::AttrValue::kB:
      return p.b();
    case proto::AttrValue::kS:
      return p.s();
    case proto::AttrValue::kInts:
      return std::vector<int64_t>(p.ints().values().begin(), p.ints().values().end());
    case proto::AttrValue::kFloats:
      return std::vector<double>(p.floats().values().begin(), p.floats().values().end());
    case proto::AttrValue::kDtype:
      KILN_CHECK(dtype_is_valid(p.dtype()), FileError, where, ": invalid dtype value ", p.dtype());
      return static_cast<DType>(p.dtype());
    case proto::AttrValue::kShape: {
      std::vector<int64_t> dims(p.shape().values().begin(), p.shape().values().end());
      for (int64_t d : dims) KILN_CHECK(d >= -1, FileError, where, ": shape has invalid dim ", d);
      return Shape(std::move(dims));
    }
    case proto::AttrValue::kTensor:
      return tensor_from_proto(p.tensor(), where);
    case proto::AttrValue::VALUE_NOT_SET:
      break;
  }
  throw FileError(str(where, ": the attribute has no value"));
}

// Splits "node:3" into ("node", 3); "node" is output 0.
bool parse_input_ref(const std::string& text, std::string* node, int32_t* index) {
  size_t colon = text.rfind(':');
  if (colon == std::string::npos) {
    *node = text;
    *index = 0;
    return !text.empty();
  }
  *node = text.substr(0, colon);
  std::string digits = text.substr(colon + 1);
  if (node->empty() || digits.empty() || digits.size() > 9) return false;
  for (char c : digits)
    if (c < '0' || c > '9') return false;
  *index = std::stoi(digits);
  return true;
}

class TextErrorCollector : public google::protobuf::io::ErrorCollector {
 public:
  void AddError(int line, google::protobuf::io::ColumnNumber column,
                const std::string& message) override {
    if (first_.empty()) first_ = str("line ", line + 1, ", column ", column + 1, ": ", message);
  }
  const std::string& first() const { return first_; }

 private:
  std::string first_;
};

bool ends_with(const std::string& s, const std::string& suffix) {
  return s.size() >= suffix.size() &&
         s.compare(s.size() - suffix.size(), suffix.size(), suffix) == 0;
}

GraphFormat resolve_format(const std::string& path, GraphFormat format) {
  if (format != GraphFormat::automatic) return format;
  return ends_with(path, ".pbtxt") || ends_with(path, ".txt") ? GraphFormat::text
                                                              : GraphFormat::binary;
}

std::vector<std::string> value_names(const std::vector<Value>& values) {
  std::vector<std::string> out;
  for (const Value& v : values) out.push_back(v.name());
  return out;
}

// The checksum field of a binary file: tag (field 5, wire type fixed32) and 4 bytes.
constexpr char kChecksumTag = (5 << 3) | 5;
constexpr size_t kChecksumBytes = 5;

// Appends GraphDef.crc32c, the CRC-32C of everything before it, to a serialized graph (a
// protobuf message may be extended by appending fields).
void append_binary_checksum(std::string* data) {
  const uint32_t crc = crc32c(data->data(), data->size());
  *data += kChecksumTag;
  append_little_endian(*data, crc, 4);
}

// Checks the file's checksum against its bytes. Binary files of version 2 and later must have
// one, as their last 5 bytes; text files may lack one (edited by hand), but where it is
// present it must be the last line and match every byte before that line.
void verify_checksum(const std::string& data, bool text, const proto::GraphDef& def,
                     const std::string& path) {
  const std::string file = str("[graph_io] ", path);
  if (!def.has_crc32c()) {
    KILN_CHECK(text || def.version() < 2, FileError, file, ": a version ", def.version(),
               " graph file must end with a checksum and this one has none: it is truncated or "
               "corrupt");
    return;
  }
  size_t covered = 0;
  if (text) {
    // The last non-blank line is "crc32c: N"; the checksum covers everything before it.
    size_t end = data.find_last_not_of(" \t\r\n");
    size_t line = end == std::string::npos ? 0 : data.rfind('\n', end);
    line = line == std::string::npos ? 0 : line + 1;
    KILN_CHECK(data.compare(line, 7, "crc32c:") == 0, FileError, file,
               ": the checksum (crc32c) must be the file's last line");
    covered = line;
  } else {
    KILN_CHECK(data.size() >= kChecksumBytes &&
                   data[data.size() - kChecksumBytes] == kChecksumTag &&
                   read_little_endian(data.data() + data.size() - 4, 4) == def.crc32c(),
               FileError, file, ": the checksum is not at the end of the file: it is corrupt");
    covered = data.size() - kChecksumBytes;
  }
  const uint32_t computed = crc32c(data.data(), covered);
  KILN_CHECK(computed == def.crc32c(), FileError, file, ": checksum mismatch (stored ",
             def.crc32c(), ", computed ", computed, "): the file is corrupt",
             text ? " or was edited (to load a file edited on purpose, delete its last line)" : "");
}

}  // namespace

void graph_to_proto(const Graph& graph, proto::GraphDef* out) {
  out->Clear();
  out->set_version(kGraphVersion);
  out->set_producer("kiln 0.1.0");
  for (int32_t id = 0; id < graph.num_nodes(); ++id) {
    const Node& node = graph.node(id);
    proto::NodeDef* def = out->add_nodes();
    def->set_name(node.name());
    def->set_op(node.op_name());
    for (OutputRef in : node.inputs()) {
      const std::string& name = graph.node(in.node).name();
      def->add_inputs(in.index == 0 ? name : str(name, ":", in.index));
    }
    for (const auto& [key, value] : node.attrs())
      attr_to_proto(value, &(*def->mutable_attrs())[key]);
    if (node.recompute_segment() >= 0) def->set_recompute_segment(node.recompute_segment() + 1);
    if (node.recompute_saved()) def->set_recompute_saved(true);
  }
  for (const auto& [name, sig] : graph.signatures()) {
    proto::SignatureDef* def = out->add_signatures();
    def->set_name(name);
    for (const std::string& v : value_names(sig.inputs)) def->add_inputs(v);
    for (const std::string& v : value_names(sig.outputs)) def->add_outputs(v);
    for (const std::string& v : value_names(sig.targets)) def->add_targets(v);
  }
}

std::unique_ptr<Graph> graph_from_proto(const proto::GraphDef& def, const std::string& source) {
  const std::string file = str("[graph_io] ", source);
  KILN_CHECK(def.version() >= kMinGraphVersion && def.version() <= kGraphVersion, FileError, file,
             ": unsupported graph format version ", def.version(), " (this build reads ",
             kMinGraphVersion, " to ", kGraphVersion, ")");

  // Names, ops and input references first, then a topological order (Kahn's algorithm), so
  // that a file listing nodes in any order loads, and a cycle is reported, not followed.
  const int n = def.nodes_size();
  std::unordered_map<std::string, int> index_of;
  for (int i = 0; i < n; ++i) {
    const proto::NodeDef& node = def.nodes(i);
    KILN_CHECK(!node.name().empty(), FileError, file, ": node #", i, " has no name");
    KILN_CHECK(index_of.emplace(node.name(), i).second, FileError, file, ": two nodes are named '",
               node.name(), "'");
    KILN_CHECK(OpRegistry::global().find(node.op()) != nullptr, FileError, file, ": node '",
               node.name(), "' has unknown op '", node.op(), "'");
  }
  std::vector<std::vector<std::pair<int, int32_t>>> inputs(n);
  std::vector<std::vector<int>> consumers(n);
  std::vector<int> pending(n, 0);
  for (int i = 0; i < n; ++i) {
    for (const std::string& ref : def.nodes(i).inputs()) {
      std::string producer;
      int32_t index = 0;
      KILN_CHECK(parse_input_ref(ref, &producer, &index), FileError, file, ": node '",
                 def.nodes(i).name(), "' has malformed input '", ref, "'");
      auto it = index_of.find(producer);
      KILN_CHECK(it != index_of.end(), FileError, file, ": node '", def.nodes(i).name(),
                 "' has dangling input '", ref, "' (no node is named '", producer, "')");
      inputs[i].emplace_back(it->second, index);
      consumers[it->second].push_back(i);
      ++pending[i];
    }
  }
  // Among the nodes ready, the one listed first: a file in topological order (every file Kiln
  // writes) loads in its own order, so node ids and recompute segments come back as saved.
  std::priority_queue<int, std::vector<int>, std::greater<int>> ready;
  for (int i = 0; i < n; ++i)
    if (pending[i] == 0) ready.push(i);
  std::vector<int> order;
  while (!ready.empty()) {
    int i = ready.top();
    ready.pop();
    order.push_back(i);
    for (int c : consumers[i])
      if (--pending[c] == 0) ready.push(c);
  }
  if (static_cast<int>(order.size()) != n) {
    for (int i = 0; i < n; ++i)
      if (pending[i] > 0)
        throw FileError(
            str(file, ": the graph has a cycle through node '", def.nodes(i).name(), "'"));
  }

  auto graph = std::make_unique<Graph>();
  std::vector<int32_t> node_id(n, -1);
  int32_t segment = 0;  // the file's segment number open in `graph`, 0: none
  bool saved = false;   // what the open segment's policy answers for the next node
  for (int i : order) {
    const proto::NodeDef& node = def.nodes(i);
    const std::string where = str(file, ": node '", node.name(), "'");
    KILN_CHECK(node.recompute_segment() >= 0, FileError, where, ": recompute_segment ",
               node.recompute_segment(), " is negative");
    KILN_CHECK(!node.recompute_saved() || node.recompute_segment() > 0, FileError, where,
               ": recompute_saved is set but the node is in no recompute segment");
    if (node.recompute_segment() != segment) {
      if (segment > 0) graph->end_recompute();
      if (node.recompute_segment() > 0)
        graph->begin_recompute([&saved](const Node&) { return saved; });
      segment = node.recompute_segment();
    }
    saved = node.recompute_saved();
    std::vector<Value> values;
    for (auto [producer, index] : inputs[i]) {
      const Node& made = graph->node(node_id[producer]);
      KILN_CHECK(index < made.num_outputs(), FileError, where, ": input '", made.name(), ":", index,
                 "' does not exist (", made.name(), " has ", made.num_outputs(), " output(s))");
      values.push_back(graph->value(OutputRef{made.id(), index}));
    }
    AttrMap attrs;
    for (const auto& [key, value] : node.attrs())
      attrs.emplace(key, attr_from_proto(value, str(where, ": attribute '", key, "'")));
    try {
      node_id[i] = graph
                       ->add_node(node.op(), values, std::move(attrs),
                                  {.name = node.name(), .exact_name = true})[0]
                       .node_id();
    } catch (const FileError&) {
      throw;
    } catch (const Error& e) {
      throw FileError(str(file, ": ", e.what()));
    }
  }

  if (segment > 0) graph->end_recompute();

  for (const proto::SignatureDef& sig : def.signatures()) {
    Signature signature{sig.name(), {}, {}, {}};
    auto resolve = [&](const auto& names, std::vector<Value>* out) {
      for (const std::string& name : names) {
        try {
          out->push_back(graph->value(name));
        } catch (const Error& e) {
          throw FileError(str(file, ": signature '", sig.name(), "': ", e.what()));
        }
      }
    };
    resolve(sig.inputs(), &signature.inputs);
    resolve(sig.outputs(), &signature.outputs);
    resolve(sig.targets(), &signature.targets);
    KILN_CHECK(!sig.name().empty(), FileError, file, ": a signature has no name");
    graph->add_signature(std::move(signature));
  }
  return graph;
}

std::string graph_to_text(const Graph& graph) {
  proto::GraphDef def;
  graph_to_proto(graph, &def);
  std::string text;
  google::protobuf::TextFormat::PrintToString(def, &text);
  return text;
}

void save_graph(const Graph& graph, const std::string& path, const SaveGraphOptions& options) {
  proto::GraphDef def;
  graph_to_proto(graph, &def);
  for (const Signature& sig : options.signatures) {
    for (const auto* list : {&sig.inputs, &sig.outputs, &sig.targets})
      for (const Value& v : *list)
        KILN_CHECK(v.defined() && v.graph() == &graph, GraphError, "[graph_io] signature '",
                   sig.name, "' names a value of another graph");
    proto::SignatureDef* s = def.add_signatures();
    s->set_name(sig.name);
    for (const std::string& v : value_names(sig.inputs)) s->add_inputs(v);
    for (const std::string& v : value_names(sig.outputs)) s->add_outputs(v);
    for (const std::string& v : value_names(sig.targets)) s->add_targets(v);
  }
  std::string data;
  if (resolve_format(path, options.format) == GraphFormat::text) {
    google::protobuf::TextFormat::PrintToString(def, &data);
    data += str("crc32c: ", crc32c(data.data(), data.size()), "\n");
  } else {
    KILN_CHECK(def.SerializeToString(&data), FileError, "[graph_io] ", path,
               ": cannot serialize the graph (larger than 2 GiB?)");
    append_binary_checksum(&data);
  }
  write_file_atomically(path, data);
}

std::unique_ptr<Graph> load_graph(const std::string& path, GraphFormat format) {
  std::string data = read_file(path, kMaxGraphFileBytes);
  proto::GraphDef def;
  const bool text = resolve_format(path, format) == GraphFormat::text;
  if (text) {
    google::protobuf::TextFormat::Parser parser;
    TextErrorCollector errors;
    parser.RecordErrorsTo(&errors);
    KILN_CHECK(parser.ParseFromString(data, &def), FileError, "[graph_io] ", path,
               ": not a text graph file: ", errors.first());
  } else {
    KILN_CHECK(!data.empty(), FileError, "[graph_io] ", path, ": the file is empty");
    KILN_CHECK(def.ParseFromString(data), FileError, "[graph_io] ", path,
               ": not a binary graph file (truncated or garbled protobuf)");
  }
  verify_checksum(data, text, def, path);
  return graph_from_proto(def, path);
}

}  // namespace kiln
