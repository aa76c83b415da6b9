#include <numeric>
#include <random>

#include "kiln/runtime/plan.h"
#include "test_util.h"

namespace kiln {
namespace {

// A random training-like graph: matmuls, elementwise chains, views, reductions, a variable
// and its update, with several independent branches.
struct RandomModel {
  Graph g;
  Value x;
  std::vector<Value> fetches;
  Value train;
  explicit RandomModel(uint32_t seed) {
    std::mt19937 rng(seed);
    x = g.placeholder("x", f32, {-1, 16});
    Value w = g.variable("w", {16, 16}, init::glorot_uniform(seed));
    std::vector<Value> pool = {x};
    for (int i = 0; i < 25; ++i) {
      Value a = pool[rng() % pool.size()];
      Value v;
      switch (rng() % 7) {
        case 0:
          v = matmul(a, w);
          break;
        case 1:
          v = tanh(a) * 0.5 + a;
          break;
        case 2:
          v = reshape(transpose(reshape(a, {-1, 4, 4}), {0, 2, 1}), {-1, 16});
          break;
        case 3:
          v = a - mean(a, {1}, true);
          break;
        case 4:
          v = relu(a) + pool[rng() % pool.size()];
          break;
        case 5:
          v = softmax(a);
          break;
        default:
          v = concat(split(a, 2, 1), 1) * 2.0;
          break;
      }
      pool.push_back(v);
    }
    // The last product makes sure the loss depends on w, whatever the branches drew.
    Value loss = mean(square(pool.back())) + mean(matmul(pool[pool.size() / 2], w));
    train = optim::SGD({.lr = 0.01}).minimize(loss);
    fetches = {loss, pool[pool.size() / 3]};
  }
};

TEST(MemoryPlan, ValidOnRandomGraphsForEveryStreamCountAndSameResults) {
  // Seed 318 on two streams packs a gradient sum's pieces into one buffer, the first piece made
  // on one stream and another on the other: the buffer must be free for both writers (it was
  // planned free for the first only, over bytes the second's stream might still read).
  std::vector<uint32_t> seeds(25);
  std::iota(seeds.begin(), seeds.end(), 0);
  seeds.push_back(318);
  for (uint32_t seed : seeds) {
    RandomModel m(seed);
    Tensor in = testing::random_tensor(f32, {6, 16}, -1, 1, seed);
    std::vector<Tensor> reference;
    for (int streams : {1, 2, 4}) {
      for (bool in_place : {true, false}) {
        SessionOptions options{
            .intra_op_threads = 2, .inter_op_threads = streams, .validate_memory_plan = true};
        options.passes.in_place = in_place;
        Session s(m.g, options);
        const Plan& plan = s.plan({{m.x, in}}, m.fetches, {m.train});
        EXPECT_LE(plan.num_streams, streams);
        EXPECT_LE(plan.arena_bytes, plan.unshared_bytes);
        auto out = s.run({{m.x, in}}, m.fetches, {m.train});
        if (reference.empty()) {
          reference = out;
          continue;
        }
        for (size_t i = 0; i < out.size(); ++i)
          testing::expect_near(testing::values(reference[i]), out[i], 1e-5, 1e-6,
                               str("seed ", seed, " streams ", streams, " in_place ", in_place));
      }
    }
  }
}

TEST(MemoryPlan, ValidatorCatchesOverlappingBuffers) {
  RandomModel m(3);
  Session s(m.g, {.validate_memory_plan = true});
  Tensor in = testing::random_tensor(f32, {6, 16}, -1, 1, 3);
  Plan& plan = const_cast<Plan&>(s.plan({{m.x, in}}, m.fetches, {m.train}));
  EXPECT_NO_THROW(validate_memory_plan(plan));
  // Put two buffers that are alive at the same time on the same bytes.
  const PlanStep& step = plan.steps[plan.steps.size() / 2];
  int32_t a = -1, b = -1;
  for (const PlanStep& st : plan.steps)
    for (int32_t in_slot : st.input_slots)
      if (plan.slot_offset[in_slot] >= 0 && st.input_slots.size() >= 2) {
        for (int32_t other : st.input_slots)
          if (other != in_slot && plan.slot_offset[other] >= 0 &&
              plan.slot_offset[other] != plan.slot_offset[in_slot])
            a = in_slot, b = other;
      }
  (void)step;
  ASSERT_GE(a, 0) << "no step reads two arena buffers";
  plan.slot_offset[b] = plan.slot_offset[a];
  testing::expect_error([&] { validate_memory_plan(plan); }, {"[memory]", "share arena bytes"});
}

TEST(MemoryPlan, ATrainingStepAllocatesNothingAfterItsFirstRun) {
  RandomModel m(7);
  Session s(m.g);
  Tensor in = testing::random_tensor(f32, {32, 16}, -1, 1, 7);
  s.run({{m.x, in}}, {}, {m.train});
  s.run({{m.x, in}}, {}, {m.train});
  const int64_t before = host_allocation_count();
  for (int i = 0; i < 5; ++i) s.run({{m.x, in}}, {}, {m.train});
  EXPECT_EQ(host_allocation_count(), before) << "tensor buffers allocated by planned steps";
  // Fetched results are the caller's: one buffer each per run.
  s.run({{m.x, in}}, {m.fetches[0]}, {m.train});
  const int64_t with_fetch = host_allocation_count();
  s.run({{m.x, in}}, {m.fetches[0]}, {m.train});
  EXPECT_EQ(host_allocation_count(), with_fetch + 1);
}

TEST(MemoryPlan, ReuseMakesThePeakSmallerThanTheSum) {
  Graph g;
  Value x = g.placeholder("x", f32, {1024});
  Value v = x;
  for (int i = 0; i < 20; ++i) v = sum(exp(v) * 0.5, {}, true) + v;  // no fusion across sum
  SessionOptions o;
  o.passes.elementwise_fusion = false;
  Session s(g, o);
  const Plan& plan = s.plan({{x, Tensor::zeros(f32, {1024})}}, {v});
  EXPECT_GT(plan.unshared_bytes, 4 * plan.arena_bytes);
  validate_memory_plan(plan);
}

// Optimizer updates run after the whole backward pass (an error there changes no variable).
// Until then a training step holds each layer's weight gradient, but no more: neither the
// values a bias gradient was summed from (sum_to is a view only where it sums nothing) nor,
// for an update fused into its gradient's product, a product's operands larger than it (a
// layer's input and output gradient over 512 rows are 4x its weight, so that update stays
// apart). Before, the step planned 5.8 MB here.
TEST(MemoryPlan, ATrainingStepHoldsOnlyTheGradientsUntilTheUpdates) {
  int64_t weight_bytes = 0;
  auto arena = [&](bool train) {
    Graph g;
    Value x = g.placeholder("x", f32, {512, 256});
    Value h = x;
    std::vector<std::unique_ptr<nn::Linear>> layers;
    for (int l = 0; l < 6; ++l) {
      layers.push_back(std::make_unique<nn::Linear>(g, str("dense", l), 256, 256));
      h = tanh((*layers.back())(h));
    }
    Value loss = mean(square(h));
    Session s(g);
    const FeedList feeds{{x, Tensor::zeros(f32, {512, 256})}};
    if (!train) return s.plan(feeds, gradients(loss, g.variables(true)), {}).arena_bytes;
    weight_bytes = 0;
    for (const Value& v : g.variables(true)) weight_bytes += v.shape().numel() * 4;
    const Value step = optim::Adam({.lr = 1e-3}).minimize(loss);
    return s.plan(feeds, {}, {step}).arena_bytes;
  };
  const int64_t gradients_only = arena(false), training = arena(true);
  std::printf("[memory] arena: gradients %lld bytes, Adam step %lld, weights %lld\n",
              static_cast<long long>(gradients_only), static_cast<long long>(training),
              static_cast<long long>(weight_bytes));
  EXPECT_LE(training, gradients_only + weight_bytes);
}

// The slot of the step named `name`'s output `index` in a plan.
int32_t slot_of(const Plan& plan, const std::string& name, size_t index = 0) {
  for (const PlanStep& step : plan.steps)
    if (plan.graph->node(step.node).name() == name) return step.output_slots.at(index);
  ADD_FAILURE() << "no step " << name;
  return -1;
}

// Along the first axis split's pieces are views of its input (no copy), and the input's bytes
// stay untouched while any piece is still to be read: the last piece here is read after a chain
// of new buffers that would take those bytes if the planner thought the input dead once its
// last direct reader had run.
TEST(MemoryPlan, SplitPiecesAlongTheFirstAxisAreViewsThatKeepTheirInputAlive) {
  Graph g;
  Value x = g.placeholder("x", f32, {4, 64});
  Value y = exp(x);  // the arena's first buffer
  std::vector<Value> rows = split(y, 4, 0);
  Value v = rows[0] + sum(neg(y), {}, true);                        // y's last direct reader
  for (int i = 0; i < 8; ++i) v = sum(exp(v) * 0.5, {}, true) + v;  // [1, 64] buffers
  Value late = v + rows[3] * 3.0;
  Value across = split(x, 2, 1)[1];
  Tensor in = testing::random_tensor(f32, {4, 64}, -1, 1, 5);
  for (bool in_place : {true, false}) {
    SessionOptions options{.validate_memory_plan = true};
    options.passes.elementwise_fusion = false;
    options.passes.in_place = in_place;
    Session s(g, options);
    const Tensor got = s.run({{x, in}}, {late})[0];
    ASSERT_EQ(got.shape(), Shape({1, 64}));
    std::vector<double> chain(64), want;
    double all = 0;
    for (int64_t j = 0; j < 4 * 64; ++j) all += std::exp(in.element(j));
    for (int64_t j = 0; j < 64; ++j) chain[j] = std::exp(in.element(j)) - all;
    for (int i = 0; i < 8; ++i) {
      double total = 0;
      for (double c : chain) total += std::exp(c) * 0.5;
      for (double& c : chain) c += total;
    }
    for (int64_t j = 0; j < 64; ++j)
      want.push_back(chain[j] + 3 * std::exp(in.element(3 * 64 + j)));
    testing::expect_near(want, got, 1e-5, 1e-5, str("in_place ", in_place));
    // Fetched pieces of a fed value view the feed, as a reshape of it does; pieces across the
    // second axis are copies.
    const std::vector<Tensor> pieces = s.run({{x, in}}, {split(x, 2, 0)[1], across});
    EXPECT_EQ(pieces[0].storage(), in.storage());
    EXPECT_EQ(pieces[0].raw_data(), static_cast<const char*>(in.raw_data()) + 2 * 64 * 4);
    EXPECT_NE(pieces[1].storage(), in.storage());
    EXPECT_EQ(pieces[1].element(0), in.element(32));
  }
}

// A concatenation along axis 0 has its pieces written in place even where other steps read
// them too, if those run before it (an unrolled recurrence's gate gradients, read by the next
// step's product and then gathered for the weight gradient); a piece read after it is copied.
TEST(MemoryPlan, ConcatPacksPiecesThatOtherStepsReadBeforeIt) {
  Graph g;
  Value x = g.placeholder("x", f32, {4, 32});
  std::vector<Value> pieces, partial;
  for (int i = 0; i < 4; ++i) {
    pieces.push_back(exp(slice(x, {i, 0}, {i + 1, 32}) * static_cast<double>(i + 1)));
    partial.push_back(sum(pieces.back()));  // another reader, before the concatenation
  }
  Value joined = concat(pieces, 0);
  Value late = pieces[0] * sum(joined);  // read after it: pieces[0] stays apart
  Value out = late + add_n(partial);
  SessionOptions options{.validate_memory_plan = true};
  options.passes.elementwise_fusion = false;
  Session s(g, options);
  Tensor in = testing::random_tensor(f32, {4, 32}, -1, 1, 6);
  const Plan& plan = s.plan({{x, in}}, {out});
  const int32_t joined_slot = slot_of(plan, joined.name());
  EXPECT_EQ(plan.packed_into[slot_of(plan, pieces[0].name())], -1);
  for (int i = 1; i < 4; ++i)
    EXPECT_EQ(plan.packed_into[slot_of(plan, pieces[i].name())], joined_slot) << i;
  double total = 0, partial_total = 0;
  std::vector<double> first(32);
  for (int i = 0; i < 4; ++i)
    for (int64_t j = 0; j < 32; ++j) {
      const double e = std::exp(in.element(i * 32 + j) * (i + 1));
      total += e;
      partial_total += e;
      if (i == 0) first[j] = e;
    }
  std::vector<double> want;
  for (double f : first) want.push_back(f * total + partial_total);
  testing::expect_near(want, s.run({{x, in}}, {out})[0], 1e-5, 1e-5, "packed");
}

TEST(Streams, IndependentBranchesRunInParallelAndErrorsStopEveryStream) {
  Graph g;
  Value x = g.placeholder("x", f32, {64, 64});
  Value left = tanh(matmul(x, x)), right = sigmoid(matmul(x, transpose(x)));
  Value joined = left + right;
  Session s(g, {.inter_op_threads = 2, .validate_memory_plan = true});
  Tensor in = testing::random_tensor(f32, {64, 64}, -1, 1, 1);
  const Plan& plan = s.plan({{x, in}}, {joined});
  EXPECT_EQ(plan.num_streams, 2);
  int waits = 0;
  for (const PlanStep& step : plan.steps) waits += static_cast<int>(step.waits.size());
  EXPECT_GT(waits, 0);
  Session sequential(g);
  EXPECT_TRUE(equal_bits(s.run({{x, in}}, {joined})[0], sequential.run({{x, in}}, {joined})[0]));
  // A data error in one branch: reported, no hang, the session still works.
  Value idx = g.placeholder("idx", i64, {2});
  Value bad = gather(left, idx) + gather(right, idx);
  testing::expect_error(
      [&] {
        s.run({{x, in}, {idx, Tensor::from_vector<int64_t>({0, 99})}}, {bad});
      },
      {"[gather]", "index 99"});
  EXPECT_NO_THROW(s.run({{x, in}, {idx, Tensor::from_vector<int64_t>({0, 1})}}, {bad}));
}

}  // namespace
}  // namespace kiln
