// kiln-graph, run as a user would: describes good files, rejects broken ones with a message
// and exit code 1, never a signal.
#include <sys/wait.h>

#include <array>
#include <filesystem>
#include <fstream>
#include <random>

#include "kiln/framework/file_io.h"
#include "kiln/framework/json.h"
#include "test_util.h"

namespace kiln {
namespace {

using testing::tmp;

struct Result {
  int exit_code;  // -1 when killed by a signal
  std::string output;
};

Result run_tool(const std::string& args) {
  std::string cmd = std::string(KILN_GRAPH_TOOL) + " " + args + " 2>&1";
  FILE* pipe = popen(cmd.c_str(), "r");
  Result r{-1, ""};
  std::array<char, 4096> buf;
  size_t n;
  while ((n = fread(buf.data(), 1, buf.size(), pipe)) > 0) r.output.append(buf.data(), n);
  int status = pclose(pipe);
  r.exit_code = WIFEXITED(status) ? WEXITSTATUS(status) : -1;
  return r;
}

std::string save_sample() {
  Graph g;
  Value x = g.placeholder("x", f32, {-1, 8});
  NameScope scope(g, "dense");
  Value w = g.constant(Tensor::zeros(f32, {8, 4}), "w");
  Value y = relu(matmul(x, w));
  g.add_signature({"predict", {x}, {y}, {}});
  std::string path = tmp("tool.pb");
  save_graph(g, path);
  return path;
}

TEST(KilnGraphTool, SummaryTextAndDot) {
  std::string path = save_sample();
  Result r = run_tool(path);
  EXPECT_EQ(r.exit_code, 0) << r.output;
  for (const char* part : {"4 nodes", "matmul", "placeholder", "x ", "f32[?, 8]", "dense/w",
                           "32 elements", "predict: inputs [x] -> outputs [dense/relu]"})
    EXPECT_NE(r.output.find(part), std::string::npos) << part << "\n" << r.output;
  Result text = run_tool(path + " --text");
  EXPECT_EQ(text.exit_code, 0);
  EXPECT_NE(text.output.find("op: \"relu\""), std::string::npos);
  Result dot = run_tool(path + " --dot " + tmp("g.dot"));
  EXPECT_EQ(dot.exit_code, 0) << dot.output;
  std::ifstream in(tmp("g.dot"));
  std::string content((std::istreambuf_iterator<char>(in)), {});
  EXPECT_NE(content.find("digraph kiln"), std::string::npos);
  EXPECT_NE(content.find("->"), std::string::npos);
  // The scope is a cluster; inside it each node is labelled by its last name part, once.
  EXPECT_NE(content.find("subgraph \"cluster_dense\""), std::string::npos) << content;
  EXPECT_NE(content.find("[label=\"w\\n(constant)\""), std::string::npos) << content;
  EXPECT_NE(content.find("[label=\"relu\", tooltip=\"dense/relu\"]"), std::string::npos) << content;
  EXPECT_EQ(content.find("dense/relu\\n"), std::string::npos) << content;
  EXPECT_EQ(run_tool("").exit_code, 2);
  EXPECT_EQ(run_tool(path + " --bogus").exit_code, 2);
}

// --signature and --forward pick what a picture shows: a training graph's forward pass only.
TEST(KilnGraphTool, DotShowsOneSignatureOrTheForwardPass) {
  Graph g;
  Value x = g.placeholder("x", f32, {-1, 4});
  Value w = g.variable("w", {4, 2}, init::zeros());
  Value probs = softmax(matmul(x, w)).named("probs");
  Value loss = mean(square(probs));
  Value train = optim::SGD().minimize(loss);
  g.add_signature({"train", {x}, {loss}, {train}});
  g.add_signature({"predict", {x}, {probs}, {}});
  save_graph(g, tmp("train_dot.pb"));
  auto nodes_in = [&](const std::string& args) {
    Result r = run_tool(tmp("train_dot.pb") + " --dot " + args);
    EXPECT_EQ(r.exit_code, 0) << r.output;
    int count = 0;
    for (size_t at = 0; (at = r.output.find("tooltip=", at)) != std::string::npos; ++at) ++count;
    return std::make_pair(count, r.output);
  };
  const auto [all, all_dot] = nodes_in("");
  const auto [forward, forward_dot] = nodes_in("--forward");
  const auto [predict, predict_dot] = nodes_in("--signature predict");
  EXPECT_EQ(all, g.num_nodes());
  EXPECT_LT(forward, all);
  EXPECT_LT(predict, forward);
  EXPECT_NE(all_dot.find("cluster_gradients"), std::string::npos);
  EXPECT_EQ(forward_dot.find("cluster_gradients"), std::string::npos) << forward_dot;
  EXPECT_EQ(forward_dot.find("cluster_optimizer"), std::string::npos) << forward_dot;
  EXPECT_NE(predict_dot.find("tooltip=\"probs\""), std::string::npos);
  EXPECT_EQ(run_tool(tmp("train_dot.pb") + " --dot --signature nope").exit_code, 1);
}

TEST(KilnGraphTool, OptimizedPlanShowsStreamsOffsetsAndMemory) {
  std::string path = save_sample();
  Result r = run_tool(path + " --optimized --batch 16");
  EXPECT_EQ(r.exit_code, 0) << r.output;
  for (const char* part : {"plan of signature 'predict'", "stream", "arena:", "planned peak",
                           "without reuse", "matmul", "dense/relu"})
    EXPECT_NE(r.output.find(part), std::string::npos) << part << "\n" << r.output;
  EXPECT_EQ(run_tool(path + " --optimized --signature nope").exit_code, 1);
  EXPECT_EQ(run_tool(path + " --optimized --batch twelve").exit_code, 2);
  EXPECT_EQ(run_tool(path + " --optimized --streams 0").exit_code, 2);
}

// Printing a plan needs the feeds' types, not their data: a batch whose input would take
// 32 GB compiles and prints at once.
TEST(KilnGraphTool, OptimizedPlanOfAHugeBatchAllocatesNothing) {
  std::string path = save_sample();
  Result r = run_tool(path + " --optimized --batch 1000000000");
  EXPECT_EQ(r.exit_code, 0) << r.output;
  EXPECT_NE(r.output.find("unknown dims = 1000000000"), std::string::npos) << r.output;
}

// kiln-run writes each output to its own file, even when two names map to one file name.
TEST(KilnRunTool, OutputsWhoseNamesCollideGetDistinctFiles) {
  Graph g;
  Value x = g.placeholder("x", f32, {4});
  std::vector<Value> parts = split(x, {1, 3}, 0);  // "split" and "split:1"
  Value other = g.add("neg", {x}, {}, {.name = "split_1", .exact_name = true});
  g.add_signature({"run", {x}, {parts[1], other, parts[0], parts[0]}, {}});
  save_graph(g, tmp("collide.pb"));
  save_npy(Tensor::from_vector<float>({1, 2, 3, 4}), tmp("collide_x.npy"));
  std::string tool = std::string(KILN_GRAPH_TOOL);
  tool = tool.substr(0, tool.rfind('/')) + "/kiln-run";
  std::filesystem::remove_all(tmp("collide_out"));
  const std::string cmd = tool + " " + tmp("collide.pb") + " run x=" + tmp("collide_x.npy") +
                          " --out " + tmp("collide_out") + " > /dev/null";
  ASSERT_EQ(std::system(cmd.c_str()), 0);
  EXPECT_EQ(load_npy(tmp("collide_out/split_1.out0.npy")).to_vector<float>(),
            (std::vector<float>{2, 3, 4}));
  EXPECT_EQ(load_npy(tmp("collide_out/split_1.out1.npy")).to_vector<float>(),
            (std::vector<float>{-1, -2, -3, -4}));
  // The same output listed twice is one file under its plain name.
  EXPECT_EQ(load_npy(tmp("collide_out/split.npy")).to_vector<float>(), (std::vector<float>{1}));
  EXPECT_FALSE(std::filesystem::exists(tmp("collide_out/split_1.npy")));
}

// Outputs named with Value::named get files of that name; trained variables without a
// --checkpoint get a loud warning (and none once the checkpoint is given).
TEST(KilnRunTool, NamedOutputsAndAWarningWithoutCheckpoint) {
  Graph g;
  Value x = g.placeholder("x", f32, {2});
  Value w = g.variable("w", {2}, init::constant(3.0));
  Value probs = sigmoid(x * w).named("probs");
  g.add_signature({"predict", {x}, {probs}, {}});
  save_graph(g, tmp("named.pb"));
  save_npy(Tensor::from_vector<float>({0, 0}), tmp("named_x.npy"));
  {
    Session session(g);
    session.run({{x, Tensor::from_vector<float>({0, 0})}}, {probs});
    session.save_checkpoint(tmp("named.ckpt"));
  }
  std::string tool = std::string(KILN_GRAPH_TOOL);
  tool = tool.substr(0, tool.rfind('/')) + "/kiln-run";
  std::filesystem::remove_all(tmp("named_out"));
  auto run = [&](const std::string& extra) {
    const std::string cmd = tool + " " + tmp("named.pb") + " predict x=" + tmp("named_x.npy") +
                            " --out " + tmp("named_out") + extra + " 2>&1";
    FILE* pipe = popen(cmd.c_str(), "r");
    std::string output;
    std::array<char, 4096> buf;
    size_t n;
    while ((n = fread(buf.data(), 1, buf.size(), pipe)) > 0) output.append(buf.data(), n);
    EXPECT_EQ(pclose(pipe), 0) << output;
    return output;
  };
  const std::string bare = run("");
  EXPECT_NE(
      bare.find("WARNING: no --checkpoint given and 1 trainable variable(s) (w) not in --weights"),
      std::string::npos)
      << bare;
  EXPECT_EQ(load_npy(tmp("named_out/probs.npy")).to_vector<float>(),
            (std::vector<float>{0.5f, 0.5f}));
  const std::string restored = run(" --checkpoint " + tmp("named.ckpt"));
  EXPECT_EQ(restored.find("WARNING"), std::string::npos) << restored;
  // A folder of committed steps (distributed::save_checkpoint): the newest.
  const std::string steps = tmp("named_steps");
  std::filesystem::remove_all(steps);
  {
    Session session(g);
    session.set_variable(w, Tensor::from_vector<float>({1, 2}));
    distributed::save_checkpoint(session, steps, 7);
    session.set_variable(w, Tensor::from_vector<float>({-1, 0}));
    distributed::save_checkpoint(session, steps, 9);
  }
  save_npy(Tensor::from_vector<float>({1, 1}), tmp("named_ones.npy"));
  auto run_ones = [&](int expected_code) {
    const std::string cmd = tool + " " + tmp("named.pb") + " predict x=" + tmp("named_ones.npy") +
                            " --out " + tmp("named_out") + " --checkpoint " + steps + " 2>&1";
    FILE* pipe = popen(cmd.c_str(), "r");
    std::string output;
    std::array<char, 4096> buf;
    for (size_t n; (n = fread(buf.data(), 1, buf.size(), pipe)) > 0;) output.append(buf.data(), n);
    EXPECT_EQ(WEXITSTATUS(pclose(pipe)), expected_code) << output;
    return output;
  };
  const std::string from_folder = run_ones(0);
  EXPECT_NE(from_folder.find("restored step 9 from " + steps), std::string::npos) << from_folder;
  const auto got = load_npy(tmp("named_out/probs.npy")).to_vector<float>();  // sigmoid(w)
  ASSERT_EQ(got.size(), 2u);
  EXPECT_NEAR(got[0], 1 / (1 + std::exp(1.0)), 1e-6);
  EXPECT_NEAR(got[1], 0.5, 1e-6);
  std::filesystem::remove_all(steps);
  std::filesystem::create_directories(steps + "/step-000000000003");  // never committed
  const std::string none = run_ones(1);
  EXPECT_NE(none.find(steps + ": the folder holds no committed checkpoint"), std::string::npos)
      << none;
}

TEST(Trace, SessionWritesAChromeTrace) {
  Graph g;
  Value x = g.placeholder("x", f32, {4, 4});
  Value y = relu(matmul(x, x));
  {
    Session s(g, {.trace_path = tmp("trace.json")});
    for (int i = 0; i < 3; ++i) s.run({{x, Tensor::full(f32, {4, 4}, 1)}}, {y});
  }
  std::ifstream in(tmp("trace.json"));
  std::string json((std::istreambuf_iterator<char>(in)), {});
  EXPECT_EQ(json.rfind("{\"displayTimeUnit\"", 0), 0u) << json.substr(0, 80);
  size_t events = 0;
  for (size_t at = json.find("\"ph\": \"X\""); at != std::string::npos;
       at = json.find("\"ph\": \"X\"", at + 1))
    ++events;
  EXPECT_EQ(events, 6u);  // matmul and relu, three runs
  EXPECT_NE(json.find("\"name\": \"matmul\""), std::string::npos);
  EXPECT_NE(json.find("\"dur\": "), std::string::npos);
}

// A node name with quotes, a backslash and control characters stays valid JSON in the trace
// (the writer once escaped only quotes and backslashes).
TEST(Trace, NamesAreEscapedAsJson) {
  const std::string odd = "relu \"quoted\" \\ line\nbreak\ttab\x01";
  Graph g;
  Value x = g.placeholder("x", f32, {2, 2});
  Value y = g.add("relu", {x}, {}, {.name = odd, .exact_name = true});
  {
    Session s(g, {.trace_path = tmp("odd_trace.json")});
    s.run({{x, Tensor::full(f32, {2, 2}, 1)}}, {y});
  }
  const JsonValue trace = parse_json(read_file(tmp("odd_trace.json"), 1 << 20), "trace");
  const JsonValue* events = trace.find("traceEvents");
  ASSERT_NE(events, nullptr);
  bool found = false;
  for (const JsonValue& e : events->items()) found = found || e.find("name")->text() == odd;
  EXPECT_TRUE(found);
}

TEST(KilnGraphTool, BrokenFilesExitOneWithAMessage) {
  std::string path = save_sample();
  std::ifstream in(path, std::ios::binary);
  std::string bytes((std::istreambuf_iterator<char>(in)), {});
  std::mt19937 rng(99);
  std::vector<std::string> broken = {bytes.substr(0, bytes.size() / 2), "", "garbage\xff\xfe",
                                     std::string(1000, '\xff')};
  for (int i = 0; i < 20; ++i) {
    std::string g = bytes;
    for (int f = 0; f < 4; ++f) g[rng() % g.size()] = static_cast<char>(rng());
    broken.push_back(g);
  }
  for (size_t i = 0; i < broken.size(); ++i) {
    std::string file = tmp("broken.pb");
    std::ofstream(file, std::ios::binary) << broken[i];
    Result r = run_tool(file);
    ASSERT_NE(r.exit_code, -1) << "killed by a signal on case " << i;
    if (r.exit_code != 0) {
      EXPECT_EQ(r.exit_code, 1) << r.output;
      EXPECT_NE(r.output.find("broken.pb"), std::string::npos) << r.output;
    }
  }
  Result missing = run_tool(tmp("missing.pb"));
  EXPECT_EQ(missing.exit_code, 1);
  EXPECT_NE(missing.output.find("cannot open"), std::string::npos);
}

}  // namespace
}  // namespace kiln
