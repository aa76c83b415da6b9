#include "test_util.h"

namespace kiln {
namespace {

using testing::expect_error;

TEST(Graph, InferenceAtBuildTime) {
  Graph g;
  Value x = g.placeholder("x", f32, {-1, 784});
  Value w = g.constant(Tensor::zeros(f32, {784, 10}));
  Value y = matmul(x, w);
  EXPECT_EQ(y.shape(), Shape({-1, 10}));
  EXPECT_EQ(y.dtype(), f32);
  Value z = y + g.constant(Tensor::zeros(f32, {10}));
  EXPECT_EQ(z.shape(), Shape({-1, 10}));
  EXPECT_EQ(sum(z, {1}, true).shape(), Shape({-1, 1}));
  EXPECT_EQ(less(z, z).dtype(), boolean);
  EXPECT_EQ(argmax(z, -1).dtype(), i64);
  EXPECT_EQ((z * 2.0).dtype(), f32);
  EXPECT_EQ((-z).node().op_name(), "neg");
}

TEST(Graph, ShapeErrorsNameOpNodeAndShapes) {
  Graph g;
  Value x = g.placeholder("x", f32, {64, 784});
  Value w = g.constant(Tensor::zeros(f32, {512, 10}));
  {
    NameScope scope(g, "dense1");
    expect_error<GraphError>(
        [&] { matmul(x, w); },
        {"[matmul] dense1/matmul", "inner dimensions differ", "[64, 784]", "[512, 10]"});
  }
  Value v = g.constant(Tensor::zeros(f32, {3}));
  expect_error<GraphError>([&] { x + v; }, {"[add]", "[64, 784]", "[3]", "do not broadcast"});
  Value d = g.constant(Tensor::zeros(f64, {784}));
  expect_error<GraphError>([&] { x* d; }, {"[mul]", "f32", "f64"});
  expect_error<GraphError>([&] { sum(x, {2}); }, {"[sum]", "axis 2", "rank 2"});
  expect_error<GraphError>([&] { sum(x, {1, -1}); }, {"[sum]", "twice"});
  Value i = g.placeholder("i", i32, {3});
  expect_error<GraphError>([&] { exp(i); }, {"[exp]", "i32", "f32"});
  expect_error<GraphError>([&] { mean(i); }, {"[mean]", "i32"});
  expect_error<GraphError>([&] { reshape(x, {5, -1}); }, {"[reshape]", "[64, 784]", "[5, ?]"});
  expect_error<GraphError>([&] { reshape(x, {-1, -1}); }, {"more than one -1"});
  expect_error<GraphError>([&] { transpose(x, {0, 0}); }, {"[transpose]", "not a permutation"});
  expect_error<GraphError>([&] { concat({x, v}, 0); }, {"[concat]", "rank"});
  expect_error<GraphError>([&] { split(x, {100, 100}, 0); }, {"[split]", "add up to 200"});
  expect_error<GraphError>([&] { slice(x, {0}, {1}, {0}); }, {"[slice]", "step 0"});
  expect_error<GraphError>([&] { gather(x, x); }, {"[gather]", "indices", "f32"});
  expect_error<GraphError>([&] { broadcast_to(x, {3, 784}); }, {"[broadcast_to]", "[64, 784]"});
  expect_error<GraphError>([&] { where(x, x, x); }, {"[where]", "cond", "bool"});
  expect_error<GraphError>([&] { random_uniform(g, {2}, 1, 0, 1); }, {"low 1", "high 0"});
  expect_error<GraphError>([&] { fill(g, {-1, 2}, 0.0); }, {"[fill]", "fully known"});
  expect_error<GraphError>([&] { argmax(g.constant(Tensor::zeros(f32, {0})), 0); }, {"empty"});
  expect_error<GraphError>([&] { max(g.constant(Tensor::zeros(f32, {2, 0})), {1}); }, {"empty"});
}

TEST(Graph, SchemaIsEnforced) {
  Graph g;
  Value x = g.placeholder("x", f32, {2});
  expect_error<GraphError>([&] { g.add("no_such_op", {x}); }, {"unknown op 'no_such_op'"});
  expect_error<GraphError>([&] { g.add("exp", {x, x}); }, {"[exp]", "takes 1 inputs, got 2"});
  expect_error<GraphError>(
      [&] {
        g.add("exp", {x}, {{"color", std::string("red")}});
      },
      {"unknown attribute 'color'"});
  expect_error<GraphError>([&] { g.add("cast", {x}); }, {"missing required attribute 'dtype'"});
  expect_error<GraphError>(
      [&] {
        g.add("cast", {x}, {{"dtype", std::string("f64")}});
      },
      {"attribute 'dtype' must be dtype, got string"});
  expect_error<GraphError>(
      [&] {
        g.add("concat", {}, {{"axis", int64_t{0}}});
      },
      {"at least 1 inputs"});
  expect_error<GraphError>([&] { g.add("exp", {Value()}); }, {"undefined"});
  Graph other;
  Value y = other.placeholder("y", f32, {2});
  expect_error<GraphError>([&] { x + y; }, {"different graphs"});
  expect_error<GraphError>([&] { g.placeholder("x", f32, {1}); }, {"'x' is already used"});
  expect_error<GraphError>([&] { g.placeholder("a:b", f32, {1}); }, {"reserved"});
}

TEST(Graph, NamesScopesAndLookup) {
  Graph g;
  Value x = g.placeholder("x", f32, {4});
  Value a = exp(x);
  Value b = exp(x);
  EXPECT_EQ(a.name(), "exp");
  EXPECT_EQ(b.name(), "exp_1");
  {
    NameScope outer(g, "block");
    NameScope inner(g, "dense");
    EXPECT_EQ(relu(x).name(), "block/dense/relu");
  }
  EXPECT_EQ(relu(x).name(), "relu");
  std::vector<Value> parts = split(x, 2, 0);
  EXPECT_EQ(parts[1].name(), "split:1");
  EXPECT_TRUE(g.value("split:1").same_as(parts[1]));
  EXPECT_TRUE(g.value("exp_1").same_as(b));
  expect_error<GraphError>([&] { g.value("nope"); }, {"no node named 'nope'"});
  expect_error<GraphError>([&] { g.value("split:5"); }, {"no output 5"});
  expect_error<GraphError>([&] { g.value("split:x"); }, {"bad value name"});
  EXPECT_EQ(g.placeholders().size(), 1u);
  expect_error<GraphError>([&] { g.pop_scope(); }, {"pop_scope"});
}

TEST(Graph, Signatures) {
  Graph g;
  Value x = g.placeholder("x", f32, {4});
  g.add_signature({"predict", {x}, {exp(x)}, {}});
  EXPECT_EQ(g.signature("predict").outputs.size(), 1u);
  expect_error<GraphError>([&] { g.signature("train"); },
                           {"no signature named 'train'", "predict"});
  Graph other;
  Value y = other.placeholder("y", f32, {1});
  expect_error<GraphError>([&] { g.add_signature({"bad", {y}, {}, {}}); }, {"another graph"});
}

TEST(Graph, RegistryListsEveryCoreOp) {
  for (const char* op :
       {"neg",          "abs",           "exp",         "log",       "sqrt",    "rsqrt",
        "tanh",         "sigmoid",       "relu",        "gelu",      "sin",     "cos",
        "square",       "add",           "sub",         "mul",       "div",     "pow",
        "maximum",      "minimum",       "equal",       "not_equal", "less",    "less_equal",
        "greater",      "greater_equal", "where",       "matmul",    "sum",     "mean",
        "max",          "min",           "argmax",      "argmin",    "reshape", "transpose",
        "broadcast_to", "concat",        "split",       "slice",     "gather",  "cast",
        "identity",     "constant",      "placeholder", "fill",      "iota",    "random_uniform",
        "random_normal"}) {
    EXPECT_NE(OpRegistry::global().find(op), nullptr) << op;
  }
}

}  // namespace
}  // namespace kiln

namespace kiln {
namespace {

// Nodes a pass adds at the end move before an earlier node: ids, inputs, names and signatures
// follow; a moved node may not read a node it would now precede.
TEST(GraphRewriting, AddedNodesMoveBeforeAnEarlierNode) {
  Graph g;
  Value x = g.placeholder("x", f32, {2});
  Value y = exp(x);
  Value z = y + 1.0;
  g.add_signature({"s", {x}, {z}});
  const int32_t first = g.num_nodes(), y_id = y.node_id(), z_id = z.node_id();
  const std::string y_name = y.node().name();
  Value doubled = x * 2.0;  // added last (a constant and the product); reads only x
  const std::string doubled_name = doubled.node().name();
  const int32_t added = g.num_nodes() - first;
  g.move_before(first, y_id);
  // Values made before the move keep their old ids: look nodes up by name.
  EXPECT_EQ(g.find_node(doubled_name)->id(), y_id + added - 1);  // the new nodes take y's place
  EXPECT_EQ(g.find_node(y_name)->id(), y_id + added);            // and y follows them
  EXPECT_EQ(g.find_node("x")->id(), 0);
  EXPECT_EQ(g.signature("s").outputs[0].node_id(), z_id + added);
  for (int32_t id = 0; id < g.num_nodes(); ++id) {
    EXPECT_EQ(g.node(id).id(), id);
    for (OutputRef in : g.node(id).inputs()) EXPECT_LT(in.node, id);
  }
  // A node that reads y cannot go before y.
  const int32_t again = g.num_nodes();
  exp(g.value(y_name));
  testing::expect_error<GraphError>([&] { g.move_before(again, 1); },
                                    {"cannot move", "before", "which comes after"});
}

}  // namespace
}  // namespace kiln
