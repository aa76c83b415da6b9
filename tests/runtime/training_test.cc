#include <fstream>
#include <functional>
#include <memory>

#include "kiln/runtime/checkpoint.h"
#include "test_util.h"

namespace kiln {
namespace {

using testing::expect_error;

using testing::tmp;

TEST(Variables, InitializersAreSeededAndHaveTheRightScale) {
  Graph g;
  Value he = g.variable("he", {400, 300}, init::he_normal(1));
  Value he_again = g.variable("he_again", {400, 300}, init::he_normal(1));
  Value glorot = g.variable("glorot", {400, 300}, init::glorot_uniform(2));
  Value trunc = g.variable("trunc", {100000}, init::truncated_normal(1, 2, 3));
  Value constant = g.variable("c", {3}, init::constant(2.5), f64);
  Value zeros = g.variable("z", {2, 2}, init::zeros(), i32);
  Value uni = g.variable("u", {10000}, init::uniform(-3, -1, 4));
  Session s(g);
  Tensor h = s.variable_value(he);
  EXPECT_TRUE(equal_bits(h, s.variable_value(he_again)));
  double sq = 0;
  for (double v : testing::values(h)) sq += v * v;
  EXPECT_NEAR(std::sqrt(sq / h.numel()), std::sqrt(2.0 / 400), 0.002);
  double limit = std::sqrt(6.0 / 700), hi = 0;
  for (double v : testing::values(s.variable_value(glorot))) hi = std::max(hi, std::abs(v));
  EXPECT_LE(hi, limit);
  EXPECT_GT(hi, 0.99 * limit);
  for (double v : testing::values(s.variable_value(trunc))) ASSERT_LE(std::abs(v - 1), 4.0 + 1e-6);
  EXPECT_EQ(s.variable_value(constant).to_vector<double>(), (std::vector<double>{2.5, 2.5, 2.5}));
  EXPECT_EQ(s.variable_value(zeros).to_vector<int>(), (std::vector<int>{0, 0, 0, 0}));
  for (double v : testing::values(s.variable_value(uni))) ASSERT_TRUE(v >= -3 && v < -1);
  // A second session starts from the same initial values.
  Session other(g);
  EXPECT_TRUE(equal_bits(h, other.variable_value(he)));
  expect_error<GraphError>(
      [&] {
        g.variable("bad", {2}, {"orthogonal", {}, 0});
      },
      {"unknown initializer 'orthogonal'"});
  expect_error<GraphError>([&] { g.variable("bad2", {-1, 2}, init::zeros()); }, {"fully known"});
  expect_error<GraphError>([&] { g.variable("bad3", {2}, init::uniform(1, 0, 0)); },
                           {"low < high"});
}

TEST(Variables, AssignOrderingAndFetchedValuesAreSnapshots) {
  Graph g;
  Value v = g.variable("v", {2}, init::constant(1));
  Value doubled = v * 2.0;  // a reader: must see the value before the update in the same run
  Value update = assign_add(v, g.constant(Tensor::from_vector<float>({10, 20})));
  Session s(g);
  auto out = s.run({}, {doubled, v}, {update});
  EXPECT_EQ(out[0].to_vector<float>(), (std::vector<float>{2, 2}));
  EXPECT_EQ(out[1].to_vector<float>(), (std::vector<float>{1, 1}));  // a copy, not a live view
  EXPECT_EQ(s.variable_value(v).to_vector<float>(), (std::vector<float>{11, 21}));
  s.run({}, {}, {assign(v, g.constant(Tensor::from_vector<float>({5})))});  // broadcast
  EXPECT_EQ(s.variable_value(v).to_vector<float>(), (std::vector<float>{5, 5}));
  s.set_variable(v, Tensor::from_vector<float>({7, 8}));
  EXPECT_EQ(s.variable_value(v).to_vector<float>(), (std::vector<float>{7, 8}));
  expect_error<FeedError>([&] { s.set_variable(v, Tensor::zeros(f32, {3})); },
                          {"variable 'v'", "[2]", "[3]"});
  Value c = g.constant(Tensor::zeros(f32, {2}));
  expect_error<GraphError>([&] { assign(c, c); }, {"[assign]", "must be a variable", "constant"});
}

// A small classifier, trained through its signatures.
struct Model {
  Graph g;
  Model() {
    Value x = g.placeholder("x", f32, {-1, 6});
    Value y = g.placeholder("y", i64, {-1});
    Value w = g.variable("w", {6, 4}, init::glorot_uniform(5));
    Value b = g.variable("b", {4}, init::zeros());
    Value loss = mean(softmax_cross_entropy(matmul(tanh(x), w) + b, y));
    Value train = optim::Adam({.lr = 0.05, .clip_norm = 5}).minimize(loss);
    g.add_signature({"train", {x, y}, {loss}, {train}});
  }
};

std::pair<Tensor, Tensor> batch(int i) {
  Tensor x = testing::random_tensor(f32, {8, 6}, -2, 2, 100 + i);
  Tensor y = Tensor::empty(i64, {8});
  for (int k = 0; k < 8; ++k) y.data<int64_t>()[k] = (k + i) % 4;
  return {x, y};
}

TEST(Checkpoints, StopAndResumeFromTheFilesGivesIdenticalLosses) {
  Model m;
  save_graph(m.g, tmp("model.pb"));
  std::vector<double> straight;
  {
    Session s(m.g, {.intra_op_threads = 2});
    for (int i = 0; i < 10; ++i) {
      auto [x, y] = batch(i);
      straight.push_back(s.run_signature("train", {x, y})[0].item<double>());
      if (i == 4) s.save_checkpoint(tmp("model.ckpt"));
    }
  }
  // A program with only the two files continues from step 5.
  std::unique_ptr<Graph> loaded = load_graph(tmp("model.pb"));
  Session resumed(*loaded, {.intra_op_threads = 2});
  resumed.restore_checkpoint(tmp("model.ckpt"));
  EXPECT_EQ(resumed.variable_value(loaded->value("global_step")).item<int64_t>(), 5);
  for (int i = 5; i < 10; ++i) {
    auto [x, y] = batch(i);
    EXPECT_EQ(resumed.run_signature("train", {x, y})[0].item<double>(), straight[i]) << i;
  }
  EXPECT_LT(straight.back(), straight.front());
}

// variable_values and set_variables (state_dict and load_state_dict) through a safetensors
// file: a second session continues training from the exported state with the same losses.
TEST(Checkpoints, VariablesExportedToSafetensorsResumeTraining) {
  Model m;
  Session s(m.g, {.intra_op_threads = 2});
  std::vector<double> straight;
  std::map<std::string, Tensor> at_step_3;
  for (int i = 0; i < 6; ++i) {
    auto [x, y] = batch(i);
    straight.push_back(s.run_signature("train", {x, y})[0].item<double>());
    if (i == 2) at_step_3 = s.variable_values();
  }
  // The map holds copies: training on changed the session's variables, not them.
  EXPECT_EQ(at_step_3.at("global_step").item<int64_t>(), 3);
  save_safetensors(at_step_3, tmp("state.safetensors"));
  Session resumed(m.g, {.intra_op_threads = 2});
  resumed.set_variables(load_safetensors(tmp("state.safetensors")).tensors);
  for (int i = 3; i < 6; ++i) {
    auto [x, y] = batch(i);
    EXPECT_EQ(resumed.run_signature("train", {x, y})[0].item<double>(), straight[i]) << i;
  }
  // A subset sets those only; a bad entry anywhere changes nothing.
  Session partial(m.g);
  const std::string first = at_step_3.begin()->first;
  const Tensor before = partial.variable_values().at(first);
  std::map<std::string, Tensor> bad = {{first, at_step_3.at(first)},
                                       {"no_such", Tensor::scalar<float>(1)}};
  expect_error<FeedError>([&] { partial.set_variables(bad); },
                          {"set_variables", "'no_such' is not a variable of the graph"});
  bad.erase("no_such");
  bad["global_step"] = Tensor::scalar<int32_t>(1);
  expect_error<FeedError>([&] { partial.set_variables(bad); },
                          {"variable 'global_step' is i64[]; got i32[]"});
  bad["global_step"] = Tensor::zeros(i64, {2});
  expect_error<FeedError>([&] { partial.set_variables(bad); }, {"got i64[2]"});
  EXPECT_TRUE(equal_bits(partial.variable_values().at(first), before));
  partial.set_variables({{first, at_step_3.at(first)}});
  EXPECT_TRUE(equal_bits(partial.variable_values().at(first), at_step_3.at(first)));
}

TEST(Checkpoints, CorruptOrMismatchedFilesAreRejectedAndNothingChanges) {
  Model m;
  Session s(m.g);
  s.save_checkpoint(tmp("good.ckpt"));
  std::ifstream in(tmp("good.ckpt"), std::ios::binary);
  const std::string bytes((std::istreambuf_iterator<char>(in)), {});
  auto write = [](const std::string& name, const std::string& data) {
    std::ofstream(tmp(name), std::ios::binary) << data;
    return tmp(name);
  };
  Tensor before = s.variable_value(m.g.value("w"));
  // A flipped byte inside a tensor's data: the CRC catches it, naming the variable.
  std::string flipped = bytes;
  size_t at = flipped.size() / 2;
  flipped[at] = static_cast<char>(flipped[at] ^ 0x40);
  try {
    s.restore_checkpoint(write("flip.ckpt", flipped));
    ADD_FAILURE() << "a corrupt checkpoint was accepted";
  } catch (const FileError& e) {
    EXPECT_NE(std::string(e.what()).find("flip.ckpt"), std::string::npos) << e.what();
  }
  for (size_t n : {size_t{0}, size_t{10}, bytes.size() / 3, bytes.size() - 1})
    EXPECT_THROW(s.restore_checkpoint(write("cut.ckpt", bytes.substr(0, n))), FileError) << n;
  EXPECT_TRUE(equal_bits(before, s.variable_value(m.g.value("w"))));  // untouched

  Graph other;
  other.variable("w", {6, 5}, init::zeros());
  Session so(other);
  expect_error<FileError>(
      [&] { so.restore_checkpoint(tmp("good.ckpt"), false); },
      {"variable 'w'", "f32[6, 4] in the checkpoint", "f32[6, 5] in the graph"});
  Graph missing;
  missing.variable("w", {6, 4}, init::zeros());
  missing.variable("extra", {1}, init::zeros());
  Session sm(missing);
  expect_error<FileError>([&] { sm.restore_checkpoint(tmp("good.ckpt"), false); },
                          {"variable 'extra'", "missing from the checkpoint"});
  Graph fewer;
  fewer.variable("w", {6, 4}, init::zeros());
  Session sf(fewer);
  expect_error<FileError>([&] { sf.restore_checkpoint(tmp("good.ckpt")); },
                          {"not a variable of the graph"});
  EXPECT_NO_THROW(sf.restore_checkpoint(tmp("good.ckpt"), /*strict=*/false));

  // A failed save leaves the previous checkpoint as it was.
  expect_error<FileError>([&] { s.save_checkpoint(tmp("no_dir/x.ckpt")); }, {"cannot open"});
  std::ifstream again(tmp("good.ckpt"), std::ios::binary);
  EXPECT_EQ(std::string((std::istreambuf_iterator<char>(again)), {}), bytes);
}

// A variable made with persistent = false is session state no file holds: save, restore and
// variable_values() skip it, and a graph file keeps the mark.
// Several files restore as one: each variable from the first that holds it (a sharded run's
// per-rank checkpoints); one missing from all is named with every file, a foreign entry is
// refused under strict, and a damaged file leaves every variable as it was.
TEST(Checkpoints, SeveralFilesRestoreEachVariableFromTheFirstThatHoldsIt) {
  auto save = [](const std::map<std::string, double>& values, const std::string& name) {
    Graph g;
    for (const auto& [var, value] : values) g.variable(var, {3}, init::constant(value));
    Session s(g);
    s.save_checkpoint(tmp(name));
    return tmp(name);
  };
  const std::string a = save({{"w", 1}, {"w/slot", 2}}, "part_a.ckpt");
  const std::string b = save({{"w", 5}, {"v/slot", 3}, {"v", 4}}, "part_b.ckpt");
  Graph g;
  Value w = g.variable("w", {3}, init::zeros());
  Value v = g.variable("v", {3}, init::zeros());
  Value w_slot = g.variable("w/slot", {3}, init::zeros(), f32, false);
  Session s(g);
  s.restore_checkpoints({a, b}, /*strict=*/false);  // b's v/slot is no variable here
  auto first = [&](const Value& x) { return s.variable_value(x).to_vector<double>()[0]; };
  EXPECT_EQ(first(w), 1);  // from a, the first that holds it
  EXPECT_EQ(first(v), 4);
  EXPECT_EQ(first(w_slot), 2);
  // Two C strings in braces are two files.
  const char* b_then_a[] = {b.c_str(), a.c_str()};
  s.restore_checkpoints({b_then_a[0], b_then_a[1]}, false);
  EXPECT_EQ(first(w), 5);
  expect_error<FileError>(
      [&] {
        s.restore_checkpoints({a, b});
      },
      {"part_b.ckpt", "'v/slot'", "not a variable of the graph"});
  Graph more;
  more.variable("w", {3}, init::zeros());
  more.variable("u", {3}, init::zeros());
  Session sm(more);
  expect_error<FileError>(
      [&] {
        sm.restore_checkpoints({a, b}, false);
      },
      {"part_a.ckpt, ", "part_b.ckpt", "variable 'u'", "missing"});
  const std::string cut = tmp("part_cut.ckpt");
  std::ofstream(cut, std::ios::binary) << std::string("KILNCKP2");
  EXPECT_THROW(s.restore_checkpoints({b, cut}, false), FileError);
  EXPECT_EQ(first(w), 5);  // untouched
  EXPECT_THROW(s.restore_checkpoints({}), FileError);
}

TEST(Checkpoints, NonPersistentVariablesStayOutOfThem) {
  Graph g;
  Value w = g.variable("w", {2}, init::constant(1));
  Value scratch = g.variable("scratch", {3}, init::zeros(),
                             {.dtype = f64, .trainable = false, .persistent = false});
  EXPECT_EQ(scratch.dtype(), f64);
  EXPECT_FALSE(scratch.node().attr<bool>("trainable"));
  EXPECT_TRUE(w.node().attr<bool>("persistent"));
  Value bump = assign_add(scratch, g.scalar(1, f64));
  Session s(g);
  s.run({}, {}, {bump});
  EXPECT_EQ(s.variable_values().count("scratch"), 0u);
  s.save_checkpoint(tmp("scratch.ckpt"));
  EXPECT_EQ(read_checkpoint(tmp("scratch.ckpt")).size(), 1u);
  s.run({}, {}, {bump});
  s.restore_checkpoint(tmp("scratch.ckpt"));  // strict: the file lacks 'scratch', rightly
  EXPECT_EQ(s.variable_value(scratch).to_vector<double>(), std::vector<double>(3, 2.0));
  Session fresh(g);  // restored before its first run: the scratch starts at its initializer
  fresh.restore_checkpoint(tmp("scratch.ckpt"));
  EXPECT_EQ(fresh.variable_value(scratch).to_vector<double>(), std::vector<double>(3, 0.0));
  save_graph(g, tmp("scratch.pb"));
  std::unique_ptr<Graph> loaded = load_graph(tmp("scratch.pb"));
  EXPECT_FALSE(loaded->value("scratch").node().attr<bool>("persistent"));
  EXPECT_TRUE(loaded->value("w").node().attr<bool>("persistent"));
}

// Every single-bit flip of a checkpoint is refused by restore, or restores exactly the saved
// values (a flip in the producer string changes no variable).
TEST(Checkpoints, NoBitFlipChangesARestoredModel) {
  Graph g;
  Value w = g.variable("w", {3, 2}, init::glorot_uniform(5));
  g.variable("step", {}, init::zeros(), i64, false);
  Session s(g);
  s.save_checkpoint(tmp("small.ckpt"));
  const Tensor saved = s.variable_value(w);
  std::ifstream in(tmp("small.ckpt"), std::ios::binary);
  const std::string bytes((std::istreambuf_iterator<char>(in)), {});
  int refused = 0, harmless = 0;
  for (size_t i = 0; i < bytes.size(); ++i)
    for (int bit = 0; bit < 8; ++bit) {
      std::string flipped = bytes;
      flipped[i] = static_cast<char>(flipped[i] ^ (1 << bit));
      std::ofstream(tmp("small_flip.ckpt"), std::ios::binary) << flipped;
      Session fresh(g);
      try {
        fresh.restore_checkpoint(tmp("small_flip.ckpt"));
      } catch (const FileError&) {
        ++refused;
        continue;
      }
      ++harmless;
      ASSERT_TRUE(equal_bits(saved, fresh.variable_value(w))) << "byte " << i << " bit " << bit;
      ASSERT_EQ(fresh.variable_value(g.value("step")).item<int64_t>(), 0);
    }
  EXPECT_GT(refused, harmless);
}

TEST(KilnRunTool, RunsASignatureFromNpyFiles) {
  Model m;
  save_graph(m.g, tmp("run.pb"));
  auto [x, y] = batch(0);
  save_npy(x, tmp("x.npy"));
  save_npy(y, tmp("y.npy"));
  std::string tool = std::string(KILN_GRAPH_TOOL);
  tool = tool.substr(0, tool.rfind('/')) + "/kiln-run";
  std::string cmd = tool + " " + tmp("run.pb") + " train x=" + tmp("x.npy") + " y=" + tmp("y.npy") +
                    " --out " + tmp("run_out") + " --save-checkpoint " + tmp("run.ckpt") +
                    " > /dev/null";
  ASSERT_EQ(std::system(cmd.c_str()), 0);
  Tensor loss = load_npy(tmp("run_out/mean.npy"));
  EXPECT_EQ(loss.rank(), 0);
  EXPECT_GT(loss.item<float>(), 0);
  Session s(m.g);
  s.restore_checkpoint(tmp("run.ckpt"));
  EXPECT_EQ(s.variable_value(m.g.value("global_step")).item<int64_t>(), 1);
  std::string bad = tool + " " + tmp("run.pb") + " train x=" + tmp("y.npy") + " y=" + tmp("y.npy") +
                    " 2>/dev/null";
  int status = std::system(bad.c_str());
  EXPECT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) == 1);
  // Weights in and out as safetensors: a step from the checkpoint's weights, exported; then a
  // step from those weights alone gives the loss a session holding them gives.
  cmd = tool + " " + tmp("run.pb") + " train x=" + tmp("x.npy") + " y=" + tmp("y.npy") +
        " --checkpoint " + tmp("run.ckpt") + " --out " + tmp("run_out") + " --save-weights " +
        tmp("run.safetensors") + " > /dev/null";
  ASSERT_EQ(std::system(cmd.c_str()), 0);
  const SafetensorsFile saved = load_safetensors(tmp("run.safetensors"));
  EXPECT_EQ(saved.at("global_step").item<int64_t>(), 2);
  EXPECT_EQ(saved.metadata.at("format"), "kiln");
  cmd = tool + " " + tmp("run.pb") + " train x=" + tmp("x.npy") + " y=" + tmp("y.npy") +
        " --weights " + tmp("run.safetensors") + " --out " + tmp("run_weights") +
        " > /dev/null 2>" + tmp("run_weights.err");
  ASSERT_EQ(std::system(cmd.c_str()), 0);
  EXPECT_EQ(read_file(tmp("run_weights.err"), 1 << 20), "");  // no untrained-weights warning
  Session trained(m.g);
  trained.set_variables(saved.tensors);
  EXPECT_TRUE(
      equal_bits(load_npy(tmp("run_weights/mean.npy")), trained.run_signature("train", {x, y})[0]));
  save_safetensors({{"global_step", Tensor::scalar<int32_t>(0)}}, tmp("bad.safetensors"));
  bad = tool + " " + tmp("run.pb") + " train x=" + tmp("x.npy") + " y=" + tmp("y.npy") +
        " --weights " + tmp("bad.safetensors") + " --out " + tmp("run_weights") + " 2>" +
        tmp("bad.err");
  status = std::system(bad.c_str());
  EXPECT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) == 1);
  EXPECT_NE(read_file(tmp("bad.err"), 1 << 20).find("variable 'global_step' is i64[]; got i32[]"),
            std::string::npos);
}

}  // namespace
}  // namespace kiln
