#include "test_util.h"

namespace kiln {
namespace {

using testing::expect_error;

TEST(Session, RunsFetchesAndCachesPlansPerFeedShape) {
  Graph g;
  Value x = g.placeholder("x", f32, {-1, 3});
  Value y = sum(x * x, {1});
  Session s(g);
  EXPECT_EQ(s.run({{x, Tensor::from_vector<float>({1, 2, 3}, {1, 3})}}, {y})[0].to_vector<float>(),
            (std::vector<float>{14}));
  s.run({{x, Tensor::from_vector<float>({1, 2, 3}, {1, 3})}}, {y});
  EXPECT_EQ(s.num_compiled_plans(), 1u);
  auto out = s.run({{x, Tensor::from_vector<float>({1, 1, 1, 2, 2, 2}, {2, 3})}}, {y});
  EXPECT_EQ(out[0].to_vector<float>(), (std::vector<float>{3, 12}));
  EXPECT_EQ(s.num_compiled_plans(), 2u);
  s.run({{x, Tensor::zeros(f32, {2, 3})}}, {y, x});
  EXPECT_EQ(s.num_compiled_plans(), 3u);
}

TEST(Session, FeedErrorsNameThePlaceholder) {
  Graph g;
  Value x = g.placeholder("images", f32, {-1, 784});
  Value y = relu(x);
  Session s(g);
  expect_error<FeedError>([&] { s.run({}, {y}); }, {"[session]", "placeholder 'images'",
                                                    "f32[?, 784]", "must be fed", "fetch 'relu'"});
  expect_error<FeedError>(
      [&] {
        s.run({{x, Tensor::zeros(f64, {2, 784})}}, {y});
      },
      {"placeholder 'images'", "dtype f64", "f32"});
  expect_error<FeedError>(
      [&] {
        s.run({{x, Tensor::zeros(f32, {2, 783})}}, {y});
      },
      {"placeholder 'images'", "shape [2, 783]", "[?, 784]"});
  expect_error<FeedError>(
      [&] {
        s.run({{x, Tensor::zeros(f32, {784})}}, {y});
      },
      {"placeholder 'images'", "shape [784]"});
  expect_error<FeedError>(
      [&] {
        s.run({{x, Tensor::zeros(f32, {1, 784})}, {x, Tensor::zeros(f32, {1, 784})}}, {y});
      },
      {"fed twice"});
  expect_error<FeedError>([&] { s.run({{x, Tensor()}}, {y}); }, {"undefined tensor"});
  Graph other;
  Value z = other.placeholder("z", f32, {1});
  expect_error<FeedError>([&] { s.run({}, {z}); }, {"not a value of this session's graph"});
  expect_error<FeedError>(
      [&] {
        s.run({{z, Tensor::zeros(f32, {1})}}, {y});
      },
      {"not a value of this session's graph"});
}

TEST(Session, PrunesToWhatTheFetchesNeed) {
  Graph g;
  Value x = g.placeholder("x", f32, {2});
  Value unused = g.placeholder("unused", f32, {2});
  Value a = exp(x);
  Value b = log(unused);  // not needed for `a`: no feed required
  (void)b;
  Session s(g);
  EXPECT_NO_THROW(s.run({{x, Tensor::zeros(f32, {2})}}, {a}));
}

TEST(Session, FeedingAnIntermediateValueReplacesIt) {
  Graph g;
  Value x = g.placeholder("x", f32, {2});
  Value hidden = exp(x);
  Value out = hidden * 2.0;
  Session s(g);
  // x need not be fed when everything downstream of it is fed.
  Tensor y = s.run({{hidden, Tensor::from_vector<float>({1, 2})}}, {out, hidden})[0];
  EXPECT_EQ(y.to_vector<float>(), (std::vector<float>{2, 4}));
  expect_error<FeedError>(
      [&] {
        s.run({{hidden, Tensor::zeros(f32, {3})}}, {out});
      },
      {"value 'exp'", "shape [3]"});
}

TEST(Session, TargetsRunAndMultipleOutputsWork) {
  Graph g;
  Value x = g.constant(Tensor::from_vector<float>({1, 2, 3, 4}));
  std::vector<Value> parts = split(x, 2, 0);
  Session s(g);
  auto out = s.run({}, {parts[1], parts[0], parts[1]});
  EXPECT_EQ(out[0].to_vector<float>(), (std::vector<float>{3, 4}));
  EXPECT_EQ(out[1].to_vector<float>(), (std::vector<float>{1, 2}));
  EXPECT_TRUE(equal_bits(out[0], out[2]));
  EXPECT_TRUE(s.run({}, {}, {exp(x)}).empty());
}

TEST(Session, RunSignature) {
  Graph g;
  Value x = g.placeholder("x", f32, {-1});
  g.add_signature({"double", {x}, {x * 2.0}, {}});
  Session s(g);
  EXPECT_EQ(s.run_signature("double", {Tensor::from_vector<float>({1, 2})})[0].to_vector<float>(),
            (std::vector<float>{2, 4}));
  expect_error<FeedError>([&] { s.run_signature("double", {}); }, {"takes 1 input(s), got 0"});
  expect_error<GraphError>([&] { s.run_signature("train", {}); }, {"no signature named 'train'"});
}

TEST(Session, NodesAddedAfterTheSessionRun) {
  Graph g;
  Value x = g.constant(Tensor::from_vector<float>({4}));
  Session s(g);
  EXPECT_EQ(s.run({}, {sqrt(x)})[0].item<float>(), 2);
  EXPECT_EQ(s.run({}, {x + 1.0})[0].item<float>(), 5);
}

TEST(Session, ResultsDoNotDependOnThreadCount) {
  Graph g;
  Tensor input = testing::random_tensor(f32, {512, 300}, -1, 1, 5);
  Value x = g.placeholder("x", f32, {-1, 300});
  Value w = random_normal(g, {300, 64}, 0, 0.1, 3);
  Value y = mean(tanh(matmul(x, w)) * sigmoid(matmul(x, w)), {0});
  Tensor one = testing::run1(g, y, {{x, input}}, 1);
  Tensor two = testing::run1(g, y, {{x, input}}, 2);
  testing::expect_near(testing::values(one), two, 1e-6, 1e-7, "threads");
}

// allow_tf32 is a GPU setting: on the CPU f32 products and convolutions stay f32, bit for bit.
TEST(Session, AllowTf32ChangesNothingOnTheCpu) {
  Graph g;
  Value x = g.placeholder("x", f32, {2, 3, 9, 9});
  Value w = random_normal(g, {4, 3, 3, 3}, 0, 0.5, 3);
  Value m = random_normal(g, {4 * 7 * 7, 5}, 0, 0.5, 4);
  Value y = matmul(reshape(conv2d(x, w), {2, 4 * 7 * 7}), m);
  const FeedList feeds = {{x, testing::random_tensor(f32, {2, 3, 9, 9}, -1, 1, 5)}};
  const Tensor strict = Session(g).run(feeds, {y})[0];
  const Tensor allowed = Session(g, {.allow_tf32 = true}).run(feeds, {y})[0];
  EXPECT_EQ(testing::values(strict), testing::values(allowed));
}

// A batch of 0: inference gives empty results; a training step is refused (decided: the step
// counter would advance and the update would apply the NaN mean of no elements).
TEST(Session, AnEmptyBatchPredictsNothingAndCannotTrain) {
  Graph g;
  Value x = g.placeholder("x", f32, {-1, 3});
  Value w = g.variable("w", {3, 2}, init::constant(0.5));
  Value y = matmul(x, w);
  Value loss = mean(y);
  Value train = optim::SGD({.lr = 0.1}).minimize(loss);
  Session s(g);
  const Tensor empty = Tensor::zeros(f32, {0, 3});
  EXPECT_EQ(s.run({{x, empty}}, {y})[0].shape(), Shape({0, 2}));
  expect_error<FeedError>(
      [&] {
        s.run({{x, empty}}, {loss}, {train});
      },
      {"feed for 'x' is empty (f32[0, 3])", "updates variables", "skip it"});
  EXPECT_EQ(s.variable_value(g.value("global_step")).item<int64_t>(), 0);
  EXPECT_EQ(s.variable_value(w).to_vector<float>(), std::vector<float>(6, 0.5f));
}

TEST(Session, DeviceErrorsSayWhy) {
  Graph g;
  const CudaAvailability& cuda = cuda_availability();
  if (cuda.device_count == 0) {
    expect_error<DeviceError>([&] { Session s(g, {.device = Device::cuda(0)}); },
                              {"cuda:0 is not available", cuda.reason});
  }
  expect_error<DeviceError>([&] { Session s(g, {.device = Device::cuda(99)}); }, {"cuda:99"});
  expect_error([&] { Session s(g, {.intra_op_threads = -1}); }, {"intra_op_threads"});
}

}  // namespace
}  // namespace kiln
