// Fuzz target: checkpoint bytes, parsed and restored into a session of a small graph whose
// variables the seed checkpoints hold.
#include "fuzz_util.h"
#include "kiln/runtime/checkpoint.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  static kiln::Graph* graph = [] {
    auto* g = new kiln::Graph();
    g->variable("w", {3, 2}, kiln::init::zeros());
    g->variable("global_step", {}, kiln::init::zeros(), kiln::i64, false);
    return g;
  }();
  std::map<std::string, kiln::Tensor> tensors;
  try {
    tensors =
        kiln::parse_checkpoint(std::string(reinterpret_cast<const char*>(data), size), "fuzz.ckpt");
  } catch (const kiln::Error&) {
    return 0;
  }
  // What parses is restored the way restore_checkpoint does, through its checks.
  try {
    kiln::Session session(*graph);
    for (const auto& [name, tensor] : tensors) {
      const kiln::Node* node = graph->find_node(name);
      if (node) session.set_variable(graph->value(name), tensor);
    }
    session.run({}, {graph->value("w")});
  } catch (const kiln::Error&) {
  }
  return 0;
}
