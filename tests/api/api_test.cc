// The API as a PyTorch or TensorFlow user writes it, without the traps: elementwise comparison
// operators (and no silent handle comparison), compound assignment, numbers where a scalar
// makes sense, an integer axis wherever axes are taken, indexing and slicing, named values,
// starting weights from a tensor, borrowed memory, gradients of unused inputs, option structs
// with designated initializers, and a GPU device refused at once where there is none.
//
// This file is compiled with the flags of a user's build (-Wall -Wextra, with
// -Wmissing-field-initializers on), so an option struct that makes `{.field = value}` warn
// breaks the build.
#include <type_traits>

#include "test_util.h"

namespace kiln {
namespace {

using testing::expect_error;
using testing::run1;

// The handle comparison a user never wants does not exist: `a == b` is a bool Value, and a
// Value does not turn into a bool, so `if (a == b)` does not compile.
static_assert(std::is_same_v<decltype(std::declval<Value>() == std::declval<Value>()), Value>);
static_assert(std::is_same_v<decltype(std::declval<Value>() > 0.5f), Value>);
static_assert(std::is_same_v<decltype(1.0 <= std::declval<Value>()), Value>);
static_assert(!std::is_convertible_v<Value, bool>);
static_assert(!std::is_constructible_v<bool, Value>);

std::vector<double> values_of(const Tensor& t) {
  return testing::values(t);
}

TEST(Api, ComparisonsAreElementwiseBoolValues) {
  Graph g;
  Value a = g.constant(Tensor::from_vector<float>({0.2f, 0.5f, 0.9f}));
  Value b = g.constant(Tensor::from_vector<float>({0.2f, 0.7f, 0.1f}));
  Value ops[] = {a > 0.5f, a == b, a != b, a < b, a <= 0.5, 0.5 < a, a >= b};
  const std::vector<std::vector<double>> want = {{0, 0, 1}, {1, 0, 0}, {0, 1, 1}, {0, 1, 0},
                                                 {1, 1, 0}, {0, 0, 1}, {1, 0, 1}};
  for (size_t i = 0; i < want.size(); ++i) {
    EXPECT_EQ(ops[i].dtype(), DType::boolean) << i;
    EXPECT_EQ(values_of(run1(g, ops[i])), want[i]) << i;
  }
  EXPECT_TRUE(a.same_as(a));
  EXPECT_FALSE(a.same_as(b));
}

TEST(Api, CompoundAssignmentRebindsTheHandle) {
  Graph g;
  Value x = g.constant(Tensor::from_vector<double>({1, 2}));
  const Value original = x;
  x += 1.0;
  x *= x;
  x -= g.constant(Tensor::from_vector<double>({1, 1}));
  x /= 2.0;
  EXPECT_EQ(values_of(run1(g, x)), (std::vector<double>{1.5, 4}));
  EXPECT_EQ(values_of(run1(g, original)), (std::vector<double>{1, 2}));
}

TEST(Api, NumbersTakeTheTensorsDtypeAndTensorsMustAgree) {
  Graph g;
  Value x = g.placeholder("x", f32, {3});
  Tensor in = Tensor::from_vector<float>({-2, 0.5f, 3});
  const std::vector<Value> mixed = {x + 1.0,         2.0 * x,         pow(x, 2.0),
                                    maximum(x, 0.0), minimum(1.0, x), where(x > 0.0, x, 0.0),
                                    sub(1.0, x),     div(x, 2.0)};
  for (const Value& v : mixed) EXPECT_EQ(v.dtype(), f32) << v.name();
  Session session(g);
  auto out = session.run({{x, in}}, mixed);
  EXPECT_EQ(values_of(out[0]), (std::vector<double>{-1, 1.5, 4}));
  EXPECT_EQ(values_of(out[2]), (std::vector<double>{4, 0.25, 9}));
  EXPECT_EQ(values_of(out[3]), (std::vector<double>{0, 0.5, 3}));
  EXPECT_EQ(values_of(out[4]), (std::vector<double>{-2, 0.5, 1}));
  EXPECT_EQ(values_of(out[5]), (std::vector<double>{0, 0.5, 3}));
  // Two tensors of different dtypes are still an error, naming both.
  expect_error<GraphError>([&] { x + g.scalar(1.0, f64); }, {"[add]", "f32", "f64"});
}

TEST(Api, AnIntegerAxisWorksWhereverAxesAreTaken) {
  Graph g;
  Value x = g.constant(Tensor::from_vector<double>({1, 2, 3, 4, 5, 6}, {2, 3}));
  EXPECT_EQ(values_of(run1(g, sum(x, 1))), (std::vector<double>{6, 15}));
  EXPECT_EQ(values_of(run1(g, mean(x, 0))), (std::vector<double>{2.5, 3.5, 4.5}));
  EXPECT_EQ(values_of(run1(g, max(x, -1))), (std::vector<double>{3, 6}));
  EXPECT_EQ(values_of(run1(g, min(x, {0, 1}))), (std::vector<double>{1}));
  EXPECT_EQ(expand_dims(x, 0).shape(), (Shape{1, 2, 3}));
  EXPECT_EQ(squeeze(expand_dims(x, 1), 1).shape(), (Shape{2, 3}));
  EXPECT_EQ(logsumexp(x, 1).shape(), (Shape{2}));
  EXPECT_EQ(normalize(x, 1).y.shape(), (Shape{2, 3}));
}

TEST(Api, IndexingAndSlicingFollowPython) {
  Graph g;
  Value x = g.constant(Tensor::from_vector<double>({1, 2, 3, 4, 5, 6}, {3, 2}));
  EXPECT_EQ(x[1].shape(), (Shape{2}));
  EXPECT_EQ(values_of(run1(g, x[1])), (std::vector<double>{3, 4}));
  EXPECT_EQ(values_of(run1(g, x[-1])), (std::vector<double>{5, 6}));
  EXPECT_EQ(values_of(run1(g, x[0][1])), (std::vector<double>{2}));
  EXPECT_EQ(values_of(run1(g, x.slice(0, 1))), (std::vector<double>{3, 4, 5, 6}));
  EXPECT_EQ(values_of(run1(g, x.slice(1, -1))), (std::vector<double>{2, 4, 6}));
  EXPECT_EQ(values_of(run1(g, x.slice(0, 0, kSliceEnd, 2))), (std::vector<double>{1, 2, 5, 6}));
  expect_error<GraphError>([&] { x[3]; }, {"[index]", "index 3", "size 3"});
  expect_error<GraphError>([&] { x[0][0][0]; }, {"[index]", "scalar"});
  expect_error<GraphError>([&] { x.slice(2, 0); }, {"[slice]", "axis 2"});
}

TEST(Api, NamedValuesKeepTheirNames) {
  Graph g;
  Value x = g.placeholder("x", f32, {2});
  Value probs = sigmoid(x).named("probs");
  EXPECT_EQ(probs.name(), "probs");
  {
    NameScope scope(g, "head");
    EXPECT_EQ(exp(x).named("scores").name(), "head/scores");
  }
  expect_error<GraphError>([&] { x.named("probs"); }, {"probs"});
}

TEST(Api, StartingWeightsFromATensorLiveInTheGraphFile) {
  Graph g;
  Tensor start = Tensor::from_vector<float>({0.5f, -1, 2, 4}, {2, 2});
  Value w = g.variable("w", {2, 2}, init::from_tensor(start));
  Value c = constant(g, Tensor::from_vector<float>({1, 1}, {2}));
  Value y = matmul(expand_dims(c, 0), w);
  const std::string path = testing::tmp("api_from_tensor.pb");
  save_graph(g, path);
  std::unique_ptr<Graph> loaded = load_graph(path);
  Session session(*loaded);
  Tensor got = session.run({}, {loaded->value(y.name())})[0];
  EXPECT_EQ(values_of(got), (std::vector<double>{2.5, 3}));
  expect_error<GraphError>([&] { g.variable("v", {4}, init::from_tensor(start)); },
                           {"[variable]", "f32[2, 2]", "f32[4]"});
}

TEST(Api, BorrowedMemoryIsReadInPlaceAndReleasedOnce) {
  std::vector<float> data = {1, 2, 3, 4, 5, 6};
  int released = 0;
  {
    Tensor t = Tensor::from_blob(data.data(), {2, 3}, f32, [&](void* p) {
      EXPECT_EQ(p, data.data());
      ++released;
    });
    EXPECT_EQ(t.data<float>(), data.data());  // no copy
    std::span<float> span = t.data_span<float>();
    EXPECT_EQ(span.size(), 6u);
    span[0] = 10;
    EXPECT_EQ(data[0], 10);
    Graph g;
    Value x = g.placeholder("x", f32, {2, 3});
    Tensor y = run1(g, sum(x, 1), {{x, t}});
    EXPECT_EQ(values_of(y), (std::vector<double>{15, 15}));
    EXPECT_EQ(data, (std::vector<float>{10, 2, 3, 4, 5, 6}));  // a feed is never written
    Tensor copy = t;
    EXPECT_EQ(released, 0);
  }
  EXPECT_EQ(released, 1);
  expect_error([&] { Tensor::from_blob(reinterpret_cast<char*>(data.data()) + 1, {2}, f32); },
               {"[tensor] from_blob", "aligned"});
  expect_error(
      [&] {
        Tensor::from_blob(data.data(), {-1, 3}, f32);
      },
      {"[tensor] from_blob", "known"});
  expect_error([&] { Tensor::from_blob(data.data(), {2}, f32).data_span<double>(); },
               {"data<f64>", "f32"});
}

TEST(Api, GradientsOfUnusedInputsAreErrorsUnlessAllowed) {
  Graph g;
  Value x = g.placeholder("x", f32, {2});
  Value unused = g.placeholder("unused", f32, {2});
  Value loss = sum(x * x);
  expect_error<GraphError>(
      [&] {
        gradients(loss, {x, unused});
      },
      {"does not depend on x 'unused'", "allow_unused"});
  EXPECT_FALSE(gradients(loss, {x, unused}, {.allow_unused = true})[1].defined());
  EXPECT_EQ(gradients(loss, {unused}, {.materialize_unused = true})[0].shape(), (Shape{2}));
}

TEST(Api, AnOptimizerSkipsVariablesTheLossDoesNotUse) {
  Graph g;
  Value w = g.variable("w", {2}, init::constant(1.0));
  Value idle = g.variable("idle", {2}, init::constant(1.0));
  Value loss = sum(w * w);
  optim::SGD sgd({.lr = 0.5, .momentum = 0.9, .weight_decay = 0.1});
  Value step = sgd.minimize(loss);
  Session session(g);
  session.run({}, {}, {step});
  auto out = session.run({}, {w, idle});
  EXPECT_NEAR(out[0].element(0), 1 - 0.5 * (2 + 0.1), 1e-6);
  EXPECT_EQ(values_of(out[1]), (std::vector<double>{1, 1}));  // untouched, weight decay too
  Graph h;
  h.variable("v", {1}, init::zeros());
  Value constant_loss = sum(h.placeholder("p", f32, {1}));
  expect_error<GraphError>([&] { optim::SGD().minimize(constant_loss); },
                           {"[optim]", "depends on none"});
}

TEST(Api, OptionStructsTakeDesignatedInitializers) {
  // Each compiles without a warning under -Wextra (this file's flags): every member has a
  // default, so naming only some is fine.
  optim::SGDOptions sgd{.lr = 0.1};
  optim::AdamOptions adam{.lr = 1e-3};
  optim::RMSPropOptions rms{.lr = 1e-3};
  SessionOptions session{.intra_op_threads = 1};
  SaveGraphOptions save{.format = GraphFormat::text};
  Conv2dOptions conv{.stride = {2, 2}};
  Pool2dOptions pool{.kernel_size = {3, 3}};
  AttentionOptions attention{.causal = true};
  nn::LayerOptions layer{.bias = false};
  NodeOptions node{.exact_name = true};
  Signature signature{.name = "predict"};
  GradientOptions grad{.allow_unused = true};
  distributed::DataParallelOptions parallel{.accumulation_steps = 2};
  distributed::InitOptions init{.timeout = std::chrono::seconds(5)};
  nn::TransformerBlock::Options block{.dropout = 0.0};
  nn::MultiHeadAttention::Options heads{.causal = true};
  Initializer initializer{.kind = "zeros"};
  EXPECT_EQ(sgd.momentum, 0);
  EXPECT_EQ(adam.beta1, 0.9);
  EXPECT_GT(rms.lr, 0);
  EXPECT_EQ(session.intra_op_threads, 1);
  EXPECT_TRUE(save.signatures.empty());
  EXPECT_EQ(conv.padding[0], 0);
  EXPECT_EQ(pool.stride[0], 0);
  EXPECT_FALSE(attention.mask.defined());
  EXPECT_EQ(layer.seed, 0);
  EXPECT_TRUE(node.name.empty());
  EXPECT_TRUE(signature.inputs.empty());
  EXPECT_FALSE(grad.dy.defined());
  EXPECT_GT(parallel.bucket_bytes, 0);
  EXPECT_EQ(init.timeout, std::chrono::seconds(5));
  EXPECT_TRUE(block.causal);
  EXPECT_TRUE(heads.bias);
  EXPECT_TRUE(initializer.args.empty());
}

TEST(Api, AGpuDeviceIsRefusedAtOnceWhereThereIsNone) {
  if (cuda_availability().device_count > 0) GTEST_SKIP() << "this machine has a GPU";
  expect_error<DeviceError>([] { Device::parse("cuda:0"); }, {"cuda:0", "not available"});
  expect_error<DeviceError>([] { Device::parse("cuda"); }, {"cuda:0", "not available"});
}

}  // namespace
}  // namespace kiln
