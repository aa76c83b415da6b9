// Fuzz target: a binary graph file's protobuf, loaded past its checksum (a mutated file would
// almost never pass it), so every validation of graph_from_proto is reached.
#include "framework/graph.pb.h"
#include "fuzz_util.h"

#ifdef KILN_FUZZING
#include "graph_mutator.h"  // defines this target's LLVMFuzzerCustomMutator
#endif

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  kiln::proto::GraphDef def;
  if (!def.ParseFromArray(data, static_cast<int>(size))) return 0;
  try {
    std::unique_ptr<kiln::Graph> graph = kiln::graph_from_proto(def, "fuzz.pb");
    kiln::proto::GraphDef again;  // what loads saves again
    kiln::graph_to_proto(*graph, &again);
  } catch (const kiln::Error&) {
  }
  return 0;
}
