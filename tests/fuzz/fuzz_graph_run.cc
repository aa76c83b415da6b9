// Fuzz target: a binary graph that loads is compiled and run, every signature, on small feeds,
// with all passes on: what a loaded file can make the runtime and the kernels do.
#include "framework/graph.pb.h"
#include "fuzz_util.h"

#ifdef KILN_FUZZING
#include "graph_mutator.h"  // defines this target's LLVMFuzzerCustomMutator
#endif

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  kiln::proto::GraphDef def;
  if (!def.ParseFromArray(data, static_cast<int>(size))) return 0;
  std::unique_ptr<kiln::Graph> graph;
  try {
    graph = kiln::graph_from_proto(def, "fuzz.pb");
  } catch (const kiln::Error&) {
    return 0;
  }
  kiln::fuzz::run_signatures(*graph);
  return 0;
}
