// Fuzz target: a text graph file (protobuf text format), as load_graph reads a .pbtxt.
#include <google/protobuf/io/tokenizer.h>
#include <google/protobuf/text_format.h>

#include "framework/graph.pb.h"
#include "fuzz_util.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  kiln::proto::GraphDef def;
  google::protobuf::TextFormat::Parser parser;
  parser.AllowPartialMessage(false);
  struct Quiet : google::protobuf::io::ErrorCollector {
    void AddError(int, google::protobuf::io::ColumnNumber, const std::string&) override {}
  } quiet;
  parser.RecordErrorsTo(&quiet);
  if (!parser.ParseFromString(std::string(reinterpret_cast<const char*>(data), size), &def))
    return 0;
  try {
    std::unique_ptr<kiln::Graph> graph = kiln::graph_from_proto(def, "fuzz.pbtxt");
    kiln::graph_to_text(*graph);
  } catch (const kiln::Error&) {
  }
  return 0;
}
