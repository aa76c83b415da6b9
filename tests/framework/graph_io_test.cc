#include <fstream>
#include <random>

#include "framework/graph.pb.h"
#include "kiln/framework/crc32c.h"
#include "test_util.h"

namespace kiln {
namespace {

using testing::expect_error;

using testing::tmp;

std::string write(const std::string& name, const std::string& data) {
  std::string path = tmp(name);
  std::ofstream(path, std::ios::binary) << data;
  return path;
}

std::string read(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  return std::string((std::istreambuf_iterator<char>(in)), {});
}

// A graph that uses every attribute type: ints, floats, bools, dtypes, shapes, tensors.
struct SampleGraph {
  Graph g;
  Value x, probs, label, parts1;
  SampleGraph() {
    x = g.placeholder("x", f32, {-1, 4});
    NameScope scope(g, "model");
    Value w = g.constant(testing::random_tensor(f32, {4, 3}, -1, 1, 3), "w");
    Value logits = matmul(x, w) + fill(g, {3}, 0.25);
    Value shifted = logits - max(logits, {1}, true);
    probs = exp(shifted) / sum(exp(shifted), {-1}, true);
    label = argmax(probs, 1);
    parts1 = split(cast(slice(probs, {0, 1}, {kSliceEnd, 3}), f64), {1, 1}, 1)[1];
    g.add_signature({"predict", {x}, {probs, label}, {}});
    g.add_signature({"part", {x}, {parts1}, {}});
  }
};

void expect_same_graph(const Graph& a, const Graph& b) {
  ASSERT_EQ(a.num_nodes(), b.num_nodes());
  for (int32_t id = 0; id < a.num_nodes(); ++id) {
    const Node& na = a.node(id);
    const Node* nb = b.find_node(na.name());
    ASSERT_NE(nb, nullptr) << na.name();
    EXPECT_EQ(na.op_name(), nb->op_name());
    EXPECT_EQ(na.outputs(), nb->outputs()) << na.name();
    ASSERT_EQ(na.inputs().size(), nb->inputs().size());
    for (size_t i = 0; i < na.inputs().size(); ++i) {
      EXPECT_EQ(a.node(na.inputs()[i].node).name(), b.node(nb->inputs()[i].node).name());
      EXPECT_EQ(na.inputs()[i].index, nb->inputs()[i].index);
    }
    ASSERT_EQ(na.attrs().size(), nb->attrs().size());
    for (const auto& [key, value] : na.attrs()) {
      const AttrValue& other = nb->attrs().at(key);
      if (attr_type(value) == AttrType::tensor)
        EXPECT_TRUE(equal_bits(std::get<Tensor>(value), std::get<Tensor>(other)));
      else
        EXPECT_EQ(attr_to_string(value), attr_to_string(other)) << na.name() << "." << key;
    }
  }
  ASSERT_EQ(a.signatures().size(), b.signatures().size());
  for (const auto& [name, sig] : a.signatures()) {
    const Signature& other = b.signature(name);
    ASSERT_EQ(sig.outputs.size(), other.outputs.size());
    for (size_t i = 0; i < sig.outputs.size(); ++i)
      EXPECT_EQ(sig.outputs[i].name(), other.outputs[i].name());
  }
}

TEST(GraphIO, BinaryAndTextRoundTripPreserveEverythingAndRunTheSame) {
  SampleGraph s;
  Tensor batch = testing::random_tensor(f32, {5, 4}, -2, 2, 9);
  Session original(s.g);
  std::vector<Tensor> expected = original.run({{s.x, batch}}, {s.probs, s.label, s.parts1});
  for (const std::string& name : {std::string("rt.pb"), std::string("rt.pbtxt")}) {
    save_graph(s.g, tmp(name));
    std::unique_ptr<Graph> loaded = load_graph(tmp(name));
    expect_same_graph(s.g, *loaded);
    Session sess(*loaded);
    std::vector<Tensor> got = sess.run_signature("predict", {batch});
    EXPECT_TRUE(equal_bits(expected[0], got[0])) << name;
    EXPECT_TRUE(equal_bits(expected[1], got[1])) << name;
    EXPECT_TRUE(equal_bits(expected[2], sess.run_signature("part", {batch})[0])) << name;
  }
  EXPECT_NE(read(tmp("rt.pbtxt")).find("op: \"matmul\""), std::string::npos);
  // The graph text form is what save_graph writes for .pbtxt, and a checksum line last.
  const std::string text = graph_to_text(s.g);
  EXPECT_EQ(read(tmp("rt.pbtxt")), str(text, "crc32c: ", crc32c(text.data(), text.size()), "\n"));
}

TEST(GraphIO, SaveIsAtomicAndSignaturesCanBeGivenAtSave) {
  SampleGraph s;
  save_graph(s.g, tmp("atomic.pb"), {.signatures = {{"extra", {s.x}, {s.label}, {}}}});
  auto loaded = load_graph(tmp("atomic.pb"));
  EXPECT_EQ(loaded->signatures().size(), 3u);
  EXPECT_EQ(loaded->signature("extra").outputs[0].name(), "model/argmax");
  // A failed save (the folder does not exist) leaves nothing behind and throws.
  expect_error<FileError>([&] { save_graph(s.g, tmp("no/such/dir/g.pb")); }, {"cannot open"});
}

TEST(GraphIO, EveryTruncationIsRejected) {
  SampleGraph s;
  save_graph(s.g, tmp("full.pb"));
  std::string bytes = read(tmp("full.pb"));
  int rejected = 0;
  for (size_t n = 0; n < bytes.size(); n += 1) {
    try {
      load_graph(write("cut.pb", bytes.substr(0, n)));
    } catch (const FileError& e) {
      ++rejected;
      EXPECT_NE(std::string(e.what()).find("cut.pb"), std::string::npos) << e.what();
    }
  }
  // Protobuf cannot tell a cut exactly between fields from a shorter graph; the semantic
  // checks catch nearly all of those, but not necessarily every one.
  EXPECT_GT(rejected, static_cast<int>(bytes.size() * 95 / 100));
}

TEST(GraphIO, GarbledBytesNeverCrash) {
  SampleGraph s;
  save_graph(s.g, tmp("fuzz.pb"));
  std::string bytes = read(tmp("fuzz.pb"));
  std::mt19937 rng(1234);
  int loaded = 0, rejected = 0;
  for (int iter = 0; iter < 1500; ++iter) {
    std::string garbled = bytes;
    int flips = 1 + static_cast<int>(rng() % 8);
    for (int f = 0; f < flips; ++f) garbled[rng() % garbled.size()] = static_cast<char>(rng());
    std::unique_ptr<Graph> g;
    try {
      g = load_graph(write("fuzz_mut.pb", garbled));
      ++loaded;
    } catch (const Error&) {
      ++rejected;
      continue;
    }
    // What loads must also run (or fail with an error): every signature, batch 2. Graphs
    // whose tensors would be huge are skipped, only to keep the test's memory small.
    bool small = true;
    for (int32_t id = 0; id < g->num_nodes(); ++id)
      for (const TensorType& t : g->node(id).outputs())
        for (int64_t d : t.shape) small &= d < 4096;
    if (!small) continue;
    for (const auto& [name, sig] : g->signatures()) {
      std::vector<Tensor> inputs;
      for (const Value& in : sig.inputs) {
        std::vector<int64_t> dims = in.shape().dims();
        for (int64_t& d : dims) d = d < 0 ? 2 : d;
        inputs.push_back(Tensor::zeros(in.dtype(), Shape(dims)));
      }
      try {
        Session s(*g);
        s.run_signature(name, inputs);
      } catch (const Error&) {
      }
    }
  }
  EXPECT_EQ(loaded + rejected, 1500);
  EXPECT_GT(rejected, 0);
  expect_error<FileError>([&] { load_graph(write("empty.pb", "")); }, {"empty.pb", "empty"});
  expect_error<FileError>([&] { load_graph(write("noise.pb", "\xff\xff\xff\xff\xff garbage")); },
                          {"noise.pb", "not a binary graph file"});
  expect_error<FileError>([&] { load_graph(tmp("does_not_exist.pb")); }, {"cannot open"});
}

// Loads a text graph and expects a FileError mentioning each part.
void expect_bad_text(const std::string& text, const std::vector<std::string>& parts) {
  std::string path = write("bad.pbtxt", text);
  expect_error<FileError>([&] { load_graph(path); }, parts);
}

constexpr const char* kPlaceholder =
    R"(nodes { name: "x" op: "placeholder" attrs { key: "dtype" value { dtype: 1 } }
                attrs { key: "shape" value { shape { values: 2 values: 3 } } } })";

TEST(GraphIO, SemanticallyInvalidFilesAreRejectedWithTheProblem) {
  const std::string x = kPlaceholder;
  expect_bad_text("version: 99 " + x, {"bad.pbtxt", "unsupported graph format version 99"});
  expect_bad_text("nodes { name: \"x\" ", {"bad.pbtxt", "not a text graph file", "line"});
  expect_bad_text("version: 1 nodes { name: \"y\" op: \"frobnicate\" }",
                  {"node 'y'", "unknown op 'frobnicate'"});
  expect_bad_text("version: 1 " + x + " nodes { name: \"y\" op: \"exp\" inputs: \"z\" }",
                  {"node 'y'", "dangling input 'z'"});
  expect_bad_text("version: 1 " + x + " nodes { name: \"y\" op: \"exp\" inputs: \"x:3\" }",
                  {"node 'y'", "x:3", "does not exist"});
  expect_bad_text("version: 1 " + x + " nodes { name: \"y\" op: \"exp\" inputs: \"x:a\" }",
                  {"malformed input 'x:a'"});
  expect_bad_text(
      "version: 1 nodes { name: \"a\" op: \"exp\" inputs: \"b\" }"
      " nodes { name: \"b\" op: \"exp\" inputs: \"a\" }",
      {"cycle"});
  expect_bad_text("version: 1 " + x + " " + x, {"two nodes are named 'x'"});
  expect_bad_text("version: 1 " + x +
                      " nodes { name: \"y\" op: \"sum\" inputs: \"x\""
                      " attrs { key: \"axes\" value { s: \"all\" } } }",
                  {"[sum] y", "attribute 'axes' must be ints, got string"});
  expect_bad_text("version: 1 " + x +
                      " nodes { name: \"y\" op: \"exp\" inputs: \"x\""
                      " attrs { key: \"speed\" value { i: 3 } } }",
                  {"unknown attribute 'speed'"});
  expect_bad_text(
      "version: 1 " + x + " nodes { name: \"y\" op: \"matmul\" inputs: \"x\" inputs: \"x\" }",
      {"[matmul] y", "inner dimensions differ", "[2, 3]"});
  expect_bad_text("version: 1 " + x + " nodes { name: \"y\" op: \"cast\" inputs: \"x\" }",
                  {"missing required attribute 'dtype'"});
  expect_bad_text(
      "version: 1 nodes { name: \"c\" op: \"constant\" attrs { key: \"value\" value {"
      " tensor { dtype: 1 dims: 1000000 dims: 1000000 data: \"abcd\" } } } }",
      {"node 'c'", "needs 4000000000000 bytes", "has 4"});
  expect_bad_text(
      "version: 1 nodes { name: \"c\" op: \"constant\" attrs { key: \"value\" value {"
      " tensor { dtype: 42 data: \"abcd\" } } } }",
      {"invalid dtype 42"});
  expect_bad_text(
      "version: 1 nodes { name: \"c\" op: \"cast\" attrs { key: \"dtype\" value {"
      " dtype: 0 } } }",
      {"invalid dtype value 0"});
  expect_bad_text("version: 1 nodes { op: \"exp\" }", {"has no name"});
  expect_bad_text("version: 1 " + x + " signatures { name: \"s\" outputs: \"q\" }",
                  {"signature 's'", "no node named 'q'"});
  expect_bad_text(
      "version: 1 " + x + " nodes { name: \"y\" op: \"exp\" inputs: \"x\" device: \"cpu\" }",
      {"device"});  // placement hints were removed: the field is reserved
  expect_bad_text(
      "version: 1 " + x + " nodes { name: \"y\" op: \"exp\" inputs: \"x\" recompute_segment: -2 }",
      {"node 'y'", "recompute_segment -2 is negative"});
  expect_bad_text(
      "version: 1 " + x + " nodes { name: \"y\" op: \"exp\" inputs: \"x\" recompute_saved: true }",
      {"node 'y'", "recompute_saved is set but the node is in no recompute segment"});
  // Gradient-only ops check their shapes too: a hand-made file cannot make a kernel read past
  // an input.
  const std::string labels =
      R"(nodes { name: "l" op: "placeholder" attrs { key: "dtype" value { dtype: 6 } }
                attrs { key: "shape" value { shape { values: 1 } } } })";
  expect_bad_text("version: 1 " + x + labels +
                      " nodes { name: \"g\" op: \"softmax_cross_entropy_grad\" inputs: \"x\""
                      " inputs: \"l\" inputs: \"l\" }",
                  {"[softmax_cross_entropy_grad] g", "batch sizes differ"});
  expect_bad_text(
      "version: 1 " + x + labels +
          " nodes { name: \"g\" op: \"gather_grad\" inputs: \"x\" inputs: \"l\" inputs: \"x\" }",
      {"[gather_grad] g", "dy is [2, 3]"});
  expect_bad_text(
      "version: 1 " + x +
          " nodes { name: \"f\" op: \"fused_elementwise\" inputs: \"x\""
          " attrs { key: \"code\" value { ints { values: 1 values: 9 values: -1 values: -1 } } }"
          " attrs { key: \"shape\" value { shape { values: 2 values: 3 } } } }",
      {"[fused_elementwise] f", "reads register 9"});
}

// Every single-bit flip of a binary graph file is refused: the checksum covers every byte, and
// a flip in the checksum field itself either breaks it or removes it (a version 2 file must
// have one).
TEST(GraphIO, EveryBitFlipOfABinaryFileIsRejected) {
  SampleGraph s;
  save_graph(s.g, tmp("flip.pb"));
  const std::string bytes = read(tmp("flip.pb"));
  int accepted = 0;
  for (size_t i = 0; i < bytes.size(); ++i)
    for (int bit = 0; bit < 8; ++bit) {
      std::string flipped = bytes;
      flipped[i] = static_cast<char>(flipped[i] ^ (1 << bit));
      try {
        load_graph(write("flip_mut.pb", flipped));
        ++accepted;
        ADD_FAILURE() << "a flip of bit " << bit << " of byte " << i << " was accepted";
      } catch (const FileError& e) {
        EXPECT_NE(std::string(e.what()).find("flip_mut.pb"), std::string::npos) << e.what();
      }
      if (accepted > 3) return;
    }
}

TEST(GraphIO, ChecksumsAreVerifiedAndOldFilesStillLoad) {
  SampleGraph s;
  save_graph(s.g, tmp("sum.pb"));
  std::string bytes = read(tmp("sum.pb"));
  // A changed byte in a constant's data: the file parses, the checksum does not match.
  std::string changed = bytes;
  changed[bytes.size() / 2] = static_cast<char>(changed[bytes.size() / 2] ^ 0x10);
  expect_error<FileError>([&] { load_graph(write("sum_bad.pb", changed)); }, {"sum_bad.pb"});
  // Without its checksum a version 2 file is refused.
  expect_error<FileError>(
      [&] { load_graph(write("sum_cut.pb", bytes.substr(0, bytes.size() - 5))); },
      {"sum_cut.pb", "must end with a checksum"});

  // A version 1 file (no checksum) written by an earlier build loads and runs the same.
  proto::GraphDef def;
  graph_to_proto(s.g, &def);
  def.set_version(1);
  std::string v1;
  ASSERT_TRUE(def.SerializeToString(&v1));
  auto old = load_graph(write("v1.pb", v1));
  expect_same_graph(s.g, *old);

  // Text: the checksum is the last line; a mismatch says how to load a hand-edited file, and
  // deleting the line does load it.
  save_graph(s.g, tmp("sum.pbtxt"));
  std::string text = read(tmp("sum.pbtxt"));
  std::string edited = text;
  edited.replace(edited.find("f: 0.25"), 7, "f: 0.50");
  expect_error<FileError>([&] { load_graph(write("edited.pbtxt", edited)); },
                          {"edited.pbtxt", "checksum mismatch", "delete its last line"});
  edited.erase(edited.rfind("crc32c:"));
  auto hand_edited = load_graph(write("edited.pbtxt", edited));
  EXPECT_EQ(hand_edited->find_node("model/fill")->attr<double>("value"), 0.5);
  // The checksum line anywhere but last is refused.
  std::string moved = text.substr(text.rfind("crc32c:")) + text.substr(0, text.rfind("crc32c:"));
  expect_error<FileError>([&] { load_graph(write("moved.pbtxt", moved)); },
                          {"moved.pbtxt", "last line"});
}

TEST(GraphIO, NodesInAnyOrderLoad) {
  // A hand-written file may list consumers before producers; the loader sorts them.
  std::string text =
      std::string("version: 1 nodes { name: \"y\" op: \"exp\" inputs: \"x\" } ") + kPlaceholder;
  auto g = load_graph(write("order.pbtxt", text));
  EXPECT_EQ(g->value("y").shape(), Shape({2, 3}));
  // Otherwise the file's order is kept, and a recompute segment's number comes back as one
  // segment per run of nodes (a file that splits one number in two gets two segments).
  text = std::string("version: 1 ") + kPlaceholder +
         " nodes { name: \"a\" op: \"exp\" inputs: \"x\" recompute_segment: 4 }"
         " nodes { name: \"b\" op: \"neg\" inputs: \"x\" }"
         " nodes { name: \"c\" op: \"exp\" inputs: \"a\" recompute_segment: 4"
         " recompute_saved: true }"
         " nodes { name: \"d\" op: \"exp\" inputs: \"c\" recompute_segment: 4 }";
  g = load_graph(write("segments.pbtxt", text));
  std::vector<std::string> names;
  for (int32_t id = 0; id < g->num_nodes(); ++id) names.push_back(g->node(id).name());
  EXPECT_EQ(names, (std::vector<std::string>{"x", "a", "b", "c", "d"}));
  EXPECT_EQ(g->node(0).recompute_segment(), -1);
  EXPECT_GE(g->node(1).recompute_segment(), 0);
  EXPECT_EQ(g->node(2).recompute_segment(), -1);
  EXPECT_NE(g->node(3).recompute_segment(), g->node(1).recompute_segment());
  EXPECT_EQ(g->node(4).recompute_segment(), g->node(3).recompute_segment());
  // The saved flag comes back on its node only.
  for (int32_t id = 0; id < g->num_nodes(); ++id)
    EXPECT_EQ(g->node(id).recompute_saved(), g->node(id).name() == "c") << g->node(id).name();
  EXPECT_EQ(g->open_recompute_segment(), -1);
}

}  // namespace
}  // namespace kiln
