// kiln-run: runs one signature of a saved graph with inputs from .npy files and writes its
// outputs as .npy files.
//
//   kiln-run GRAPH SIGNATURE [INPUT=FILE.npy ...] [--checkpoint CKPT] [--save-checkpoint CKPT]
//            [--weights FILE.safetensors] [--save-weights FILE.safetensors] [--out DIR]
//            [--threads N]
//
// Inputs are named as in the signature (kiln-graph lists them); outputs are written to
// DIR/<output name>.npy with '/' and ':' replaced by '_'. Outputs whose names would give the
// same file ("split:1" and "split_1") each get their position in the signature added
// ("split_1.out0.npy", "split_1.out1.npy"), so none overwrites another. With --save-checkpoint
// the variables are saved after the run, so a "train" signature can be stepped from the
// command line. --weights sets the variables a safetensors file names (after --checkpoint, so it
// overrides it; names, dtypes and shapes must match the graph's), and --save-weights writes every
// variable after the run as safetensors (for PyTorch or JAX, whose loaders read it).
// --checkpoint also takes the folder of a data-parallel job's checkpoints
// (distributed::save_checkpoint): its newest committed step, from every rank's files.
#include <kiln/kiln.h>

#include <charconv>
#include <cstdio>
#include <filesystem>
#include <map>

using namespace kiln;

namespace {

int usage() {
  std::fprintf(stderr,
               "usage: kiln-run GRAPH SIGNATURE [INPUT=FILE.npy ...] [--checkpoint CKPT]\n"
               "                [--save-checkpoint CKPT] [--weights FILE.safetensors]\n"
               "                [--save-weights FILE.safetensors] [--out DIR] [--threads N]\n");
  return 2;
}

std::string sanitized(std::string name) {
  for (char& c : name)
    if (c == '/' || c == ':') c = '_';
  return name;
}

// The file of each output: its sanitized name, made unique by position where two different
// outputs share one (an output listed twice is written once, under one name).
std::vector<std::string> output_files(const std::vector<Value>& outputs) {
  std::map<std::string, std::vector<size_t>> by_name;
  for (size_t i = 0; i < outputs.size(); ++i) by_name[sanitized(outputs[i].name())].push_back(i);
  std::vector<std::string> files(outputs.size());
  for (const auto& [name, positions] : by_name) {
    bool distinct = false;
    for (size_t i : positions) distinct |= !outputs[i].same_as(outputs[positions[0]]);
    for (size_t i : positions) files[i] = distinct ? str(name, ".out", i, ".npy") : name + ".npy";
  }
  return files;
}

}  // namespace

int main(int argc, char** argv) {
  std::vector<std::string> positional;
  std::map<std::string, std::string> inputs;
  std::string checkpoint, save_checkpoint, weights, save_weights, out_dir = ".";
  int threads = 0;
  for (int i = 1; i < argc; ++i) {
    std::string arg = argv[i];
    auto value = [&]() -> std::string { return i + 1 < argc ? argv[++i] : ""; };
    if (arg == "--help" || arg == "-h") return usage(), 0;
    if (arg == "--checkpoint")
      checkpoint = value();
    else if (arg == "--save-checkpoint")
      save_checkpoint = value();
    else if (arg == "--weights")
      weights = value();
    else if (arg == "--save-weights")
      save_weights = value();
    else if (arg == "--out")
      out_dir = value();
    else if (arg == "--threads") {
      const std::string v = value();
      auto [end, ec] = std::from_chars(v.data(), v.data() + v.size(), threads);
      if (ec != std::errc() || end != v.data() + v.size() || threads < 0)
        return std::fprintf(stderr, "kiln-run: --threads takes a count >= 0, got '%s'\n",
                            v.c_str()),
               usage();
    } else if (arg.rfind("--", 0) == 0)
      return std::fprintf(stderr, "kiln-run: unknown option %s\n", arg.c_str()), usage();
    else if (size_t eq = arg.find('='); eq != std::string::npos)
      inputs[arg.substr(0, eq)] = arg.substr(eq + 1);
    else
      positional.push_back(arg);
  }
  if (positional.size() != 2) return usage();
  try {
    std::unique_ptr<Graph> graph = load_graph(positional[0]);
    const Signature& sig = graph->signature(positional[1]);
    std::vector<Tensor> feeds;
    for (const Value& in : sig.inputs) {
      auto it = inputs.find(in.name());
      KILN_CHECK(it != inputs.end(), FeedError, "[kiln-run] signature '", sig.name,
                 "' needs input '", in.name(), "' (", in.dtype(), in.shape(), "): pass ", in.name(),
                 "=FILE.npy");
      feeds.push_back(load_npy(it->second));
      inputs.erase(it);
    }
    KILN_CHECK(inputs.empty(), FeedError, "[kiln-run] signature '", sig.name,
               "' has no input named '", inputs.empty() ? "" : inputs.begin()->first, "'");
    Session sess(*graph, {.intra_op_threads = threads});
    std::map<std::string, Tensor> loaded_weights;
    if (!weights.empty()) loaded_weights = load_safetensors(weights).tensors;
    if (!checkpoint.empty() && std::filesystem::is_directory(checkpoint)) {
      // A folder of distributed::save_checkpoint: its newest committed step, every rank's file.
      const auto step = distributed::restore_latest_checkpoint(sess, checkpoint);
      KILN_CHECK(step.has_value(), FileError, "[kiln-run] ", checkpoint,
                 ": the folder holds no committed checkpoint (no step-*/COMMITTED)");
      std::printf("restored step %lld from %s\n", static_cast<long long>(*step),
                  checkpoint.c_str());
    } else if (!checkpoint.empty()) {
      sess.restore_checkpoint(checkpoint);
    } else {
      // Weights that would start from their random initializers: almost surely a forgotten
      // --checkpoint or --weights. (Variables initialized from a tensor carry their values in
      // the graph.)
      std::vector<std::string> untrained;
      for (const Value& v : graph->variables(/*trainable_only=*/true))
        if (v.node().attr<std::string>("init") != "tensor" && !loaded_weights.count(v.name()))
          untrained.push_back(v.name());
      if (!untrained.empty())
        std::fprintf(stderr,
                     "kiln-run: WARNING: no --checkpoint given and %zu trainable variable(s) "
                     "(%s%s) not in --weights: they start from their initializers, not from "
                     "trained values\n",
                     untrained.size(), untrained[0].c_str(), untrained.size() > 1 ? ", ..." : "");
    }
    if (!loaded_weights.empty()) {
      sess.set_variables(loaded_weights);
      std::printf("set %zu variable(s) from %s\n", loaded_weights.size(), weights.c_str());
    }
    std::vector<Tensor> outputs = sess.run_signature(sig.name, feeds);
    std::filesystem::create_directories(out_dir);
    const std::vector<std::string> files = output_files(sig.outputs);
    for (size_t i = 0; i < outputs.size(); ++i) {
      std::string path = out_dir + "/" + files[i];
      save_npy(outputs[i], path);
      std::printf("%s %s -> %s\n", sig.outputs[i].name().c_str(), outputs[i].to_string(6).c_str(),
                  path.c_str());
    }
    if (!save_checkpoint.empty()) {
      sess.save_checkpoint(save_checkpoint);
      std::printf("saved checkpoint %s\n", save_checkpoint.c_str());
    }
    if (!save_weights.empty()) {
      save_safetensors(sess.variable_values(), save_weights, {{"format", "kiln"}});
      std::printf("saved weights %s\n", save_weights.c_str());
    }
  } catch (const std::exception& e) {
    std::fprintf(stderr, "kiln-run: %s\n", e.what());
    return 1;
  }
  return 0;
}
