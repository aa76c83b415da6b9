// kiln-graph: describes a saved graph file.
//   kiln-graph FILE            summary: nodes, op histogram, inputs, parameters, signatures
//   kiln-graph FILE --text     the graph in protobuf text form
//   kiln-graph FILE --dot [OUT] [--signature NAME] [--forward]  Graphviz, scopes as clusters
//   kiln-graph FILE --optimized [--signature NAME] [--batch N] [--streams N]
//                              the compiled plan: passes applied, every step with its stream
//                              and arena offset, planned peak memory against no reuse
#include <kiln/kiln.h>

#include <algorithm>
#include <charconv>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <iostream>
#include <map>

using namespace kiln;

namespace {

int usage() {
  std::fprintf(stderr,
               "usage: kiln-graph FILE [--text | --dot [OUT.dot] [--signature NAME] [--forward] |\n"
               "                  --optimized [--signature NAME] [--batch N] [--streams N]]\n"
               "  Describes a Kiln graph file (binary .pb, or text .pbtxt).\n"
               "  --text       print the graph in protobuf text form\n"
               "  --dot        write the graph as Graphviz dot (render with: dot -Tsvg), name\n"
               "               scopes as nested boxes; --signature NAME: only what it runs;\n"
               "               --forward: only what the outputs need (no gradients, updates)\n"
               "  --optimized  compile a signature (default: the first) as a Session would, with\n"
               "               unknown dims set to --batch (default 1), and print the plan\n");
  return 2;
}

// A whole decimal number >= `min` (and below 2^31), or false.
bool parse_count(const std::string& text, int64_t min, int64_t* out) {
  int64_t v = 0;
  auto [end, ec] = std::from_chars(text.data(), text.data() + text.size(), v);
  if (ec != std::errc() || end != text.data() + text.size() || v < min || v >= (int64_t{1} << 31))
    return false;
  *out = v;
  return true;
}

std::string human_bytes(double bytes) {
  const char* units[] = {"B", "KiB", "MiB", "GiB"};
  int u = 0;
  while (bytes >= 1024 && u < 3) bytes /= 1024, ++u;
  char buf[32];
  std::snprintf(buf, sizeof buf, u ? "%.1f %s" : "%.0f %s", bytes, units[u]);
  return buf;
}

std::string type_of(const Node& node, int i) {
  return str(node.outputs()[i].dtype, node.outputs()[i].shape);
}

std::string join(const std::vector<Value>& values) {
  std::string out;
  for (const Value& v : values) out += (out.empty() ? "" : ", ") + v.name();
  return out.empty() ? "-" : out;
}

void print_summary(const Graph& g, const std::string& path) {
  std::map<std::string, int> histogram;
  for (int32_t id = 0; id < g.num_nodes(); ++id) ++histogram[g.node(id).op_name()];
  std::printf("%s: %d nodes, %zu op types, %zu signatures\n", path.c_str(), g.num_nodes(),
              histogram.size(), g.signatures().size());

  std::printf("\nops:\n");
  for (const auto& [op, count] : histogram) std::printf("  %-16s %6d\n", op.c_str(), count);

  std::printf("\ninputs:\n");
  for (int32_t id = 0; id < g.num_nodes(); ++id)
    if (g.node(id).op().source() == OutputSource::feed)
      std::printf("  %-32s %s\n", g.node(id).name().c_str(), type_of(g.node(id), 0).c_str());

  // Trainable variables, then other state (optimizer slots, step counters), then constants;
  // scalar constants are only counted.
  const char* groups[] = {"parameters (trainable variables)", "state (other variables)",
                          "constants (scalars only counted)"};
  for (int group = 0; group < 3; ++group) {
    std::printf("\n%s:\n", groups[group]);
    int64_t total_elements = 0, scalars = 0;
    double total_bytes = 0;
    int count = 0;
    for (int32_t id = 0; id < g.num_nodes(); ++id) {
      const Node& n = g.node(id);
      const bool is_var = n.op().source() == OutputSource::state;
      if (group < 2 && (!is_var || n.attr<bool>("trainable") != (group == 0))) continue;
      if (group == 2 && n.op().source() != OutputSource::attribute) continue;
      const TensorType& t = n.outputs()[0];
      const int64_t elements = t.shape.is_known() ? t.shape.numel() : 0;
      const double bytes = static_cast<double>(elements) * dtype_size(t.dtype);
      total_elements += elements;
      total_bytes += bytes;
      ++count;
      if (group == 2 && elements <= 1) {
        ++scalars;
        continue;
      }
      std::printf("  %-36s %-20s %12lld elements %10s%s\n", n.name().c_str(), type_of(n, 0).c_str(),
                  static_cast<long long>(elements), human_bytes(bytes).c_str(),
                  is_var && !n.attr<bool>("persistent") ? "  (not in checkpoints)" : "");
    }
    if (scalars) std::printf("  (%lld scalar constants)\n", static_cast<long long>(scalars));
    std::printf("  total: %d tensors, %lld elements, %s\n", count,
                static_cast<long long>(total_elements), human_bytes(total_bytes).c_str());
  }

  std::printf("\nsignatures:\n");
  if (g.signatures().empty()) std::printf("  (none)\n");
  for (const auto& [name, sig] : g.signatures())
    std::printf("  %s: inputs [%s] -> outputs [%s], targets [%s]\n", name.c_str(),
                join(sig.inputs).c_str(), join(sig.outputs).c_str(), join(sig.targets).c_str());
}

std::string dot_escape(const std::string& s) {
  std::string out;
  for (char c : s) {
    if (c == '"' || c == '\\') out += '\\';
    out += c;
  }
  return out;
}

void print_optimized(const Graph& g, std::string signature, int64_t batch, int streams) {
  if (signature.empty()) {
    if (g.signatures().empty()) throw Error("[kiln-graph] the graph has no signatures to compile");
    signature = g.signatures().begin()->first;
  }
  const Signature& sig = g.signature(signature);
  // Only the feeds' types are needed to compile: nothing is allocated or run.
  std::vector<FeedSpec> feeds;
  for (const Value& in : sig.inputs) {
    std::vector<int64_t> dims = in.shape().dims();
    for (int64_t& d : dims)
      if (d < 0) d = batch;
    feeds.push_back({in, {in.dtype(), Shape(dims)}});
  }
  const Plan plan = compile_plan(g, feeds, sig.outputs, sig.targets, DeviceKind::cpu, {}, streams);
  std::string passes;
  for (const std::string& p : plan.passes_applied) passes += (passes.empty() ? "" : ", ") + p;
  std::printf("plan of signature '%s' (unknown dims = %lld): %zu steps on %d stream(s)\n",
              signature.c_str(), static_cast<long long>(batch), plan.steps.size(),
              plan.num_streams);
  std::printf("passes that changed the graph: %s\n", passes.empty() ? "none" : passes.c_str());
  std::printf("arena: %s planned peak, %s without reuse (%.1fx smaller)\n\n",
              human_bytes(static_cast<double>(plan.arena_bytes)).c_str(),
              human_bytes(static_cast<double>(plan.unshared_bytes)).c_str(),
              plan.arena_bytes ? static_cast<double>(plan.unshared_bytes) / plan.arena_bytes : 1.0);
  std::printf("%5s %6s  %-18s %-36s %-22s %s\n", "step", "stream", "op", "node", "output",
              "arena offset");
  for (size_t s = 0; s < plan.steps.size(); ++s) {
    const PlanStep& step = plan.steps[s];
    const Node& node = plan.graph->node(step.node);
    std::string where = "-";
    if (!step.output_slots.empty()) {
      const int32_t slot = step.output_slots[0];
      if (plan.slot_offset[slot] >= 0) {
        where = std::to_string(plan.slot_offset[slot]);
        if (plan.in_place_of[slot] >= 0) where += " (in place)";
        if (plan.packed_into[slot] >= 0) where += " (inside its concat)";
      }
    }
    std::string waits;
    for (int32_t w : step.waits) waits += str(waits.empty() ? " waits for " : ",", w);
    std::printf("%5zu %6d  %-18s %-36s %-22s %s%s\n", s, step.stream, node.op_name().c_str(),
                node.name().c_str(), type_of(node, 0).c_str(), where.c_str(), waits.c_str());
    if (node.op_name() == "fused_elementwise")
      std::printf("%33s%s\n", "", node.attr<std::string>("expr").c_str());
  }
}

// The nodes a picture shows: all of them, or what the chosen signature's outputs (and, unless
// forward_only, its targets) need. forward_only without a signature: what every signature's
// outputs need (a training graph's forward pass, without gradients and updates).
std::vector<char> dot_selection(const Graph& g, const std::string& signature, bool forward_only) {
  std::vector<char> keep(static_cast<size_t>(g.num_nodes()), 0);
  if (signature.empty() && !forward_only) {
    std::fill(keep.begin(), keep.end(), 1);
    return keep;
  }
  std::vector<const Signature*> signatures;
  if (!signature.empty()) {
    signatures.push_back(&g.signature(signature));
  } else {
    for (const auto& entry : g.signatures()) signatures.push_back(&entry.second);
    if (signatures.empty())
      throw Error("[kiln-graph] --forward needs signatures (their outputs mark the forward pass)");
  }
  for (const Signature* sig : signatures) {
    for (const Value& v : sig->outputs) keep[static_cast<size_t>(v.node_id())] = 1;
    if (!forward_only)
      for (const Value& v : sig->targets) keep[static_cast<size_t>(v.node_id())] = 1;
  }
  for (int32_t id = g.num_nodes() - 1; id >= 0; --id)  // ids are a topological order
    if (keep[static_cast<size_t>(id)])
      for (OutputRef in : g.node(id).inputs()) keep[static_cast<size_t>(in.node)] = 1;
  return keep;
}

// Name scopes as nested clusters: "block1/attention/matmul" sits in cluster "block1", inside
// it "block1/attention". Each node is labelled once: the last part of its name, and its op
// below when the name does not already say it.
struct ScopeTree {
  std::vector<int32_t> nodes;
  std::map<std::string, ScopeTree> children;
};

void write_scope(const Graph& g, const std::string& path, const ScopeTree& scope, std::ostream& out,
                 int depth) {
  const std::string indent(static_cast<size_t>(2 * depth), ' ');
  for (int32_t id : scope.nodes) {
    const Node& n = g.node(id);
    const std::string leaf = n.name().substr(n.name().rfind('/') + 1);
    const OutputSource source = n.op().source();
    const char* style = source == OutputSource::feed    ? ", style=filled, fillcolor=\"#cfe8ff\""
                        : source == OutputSource::state ? ", style=filled, fillcolor=\"#ffe9c4\""
                        : source == OutputSource::attribute
                            ? ", style=filled, fillcolor=\"#eeeeee\""
                            : "";
    std::string label = dot_escape(leaf);
    if (leaf.rfind(n.op_name(), 0) != 0) label += "\\n(" + n.op_name() + ")";
    out << indent << "n" << id << " [label=\"" << label << "\", tooltip=\"" << dot_escape(n.name())
        << "\"" << style << "];\n";
  }
  for (const auto& [name, child] : scope.children) {
    const std::string child_path = path.empty() ? name : path + "/" + name;
    out << indent << "subgraph \"cluster_" << dot_escape(child_path) << "\" {\n"
        << indent << "  label=\"" << dot_escape(name) << "\"; style=rounded; color=\"#999999\";\n";
    write_scope(g, child_path, child, out, depth + 1);
    out << indent << "}\n";
  }
}

void write_dot(const Graph& g, const std::vector<char>& keep, std::ostream& out) {
  ScopeTree root;
  for (int32_t id = 0; id < g.num_nodes(); ++id) {
    if (!keep[static_cast<size_t>(id)]) continue;
    ScopeTree* scope = &root;
    const std::string& name = g.node(id).name();
    size_t start = 0;
    for (size_t slash; (slash = name.find('/', start)) != std::string::npos; start = slash + 1)
      scope = &scope->children[name.substr(start, slash - start)];
    scope->nodes.push_back(id);
  }
  out << "digraph kiln {\n  rankdir=TB;\n  compound=true;\n  node [shape=box, "
         "fontname=\"Helvetica\", fontsize=10];\n";
  write_scope(g, "", root, out, 1);
  for (int32_t id = 0; id < g.num_nodes(); ++id) {
    if (!keep[static_cast<size_t>(id)]) continue;
    for (OutputRef in : g.node(id).inputs())
      out << "  n" << in.node << " -> n" << id << " [label=\""
          << dot_escape(type_of(g.node(in.node), in.index)) << "\", fontsize=8];\n";
  }
  out << "}\n";
}

}  // namespace

int main(int argc, char** argv) {
  if (argc < 2) return usage();
  std::string path, mode = "summary", dot_out, signature;
  bool forward_only = false;
  int64_t batch = 1, stream_count = 1;
  for (int i = 1; i < argc; ++i) {
    std::string arg = argv[i];
    if (arg == "--help" || arg == "-h") return usage(), 0;
    if (arg == "--text") {
      mode = "text";
    } else if (arg == "--optimized") {
      mode = "optimized";
    } else if ((arg == "--signature" || arg == "--batch" || arg == "--streams") && i + 1 < argc) {
      std::string v = argv[++i];
      if (arg == "--signature")
        signature = v;
      else if (arg == "--batch" && !parse_count(v, 0, &batch))
        return std::fprintf(stderr, "kiln-graph: --batch takes a count >= 0, got '%s'\n",
                            v.c_str()),
               2;
      else if (arg == "--streams" && !parse_count(v, 1, &stream_count))
        return std::fprintf(stderr, "kiln-graph: --streams takes a count >= 1, got '%s'\n",
                            v.c_str()),
               2;
    } else if (arg == "--forward") {
      forward_only = true;
    } else if (arg == "--dot") {
      mode = "dot";
      if (i + 1 < argc && argv[i + 1][0] != '-') dot_out = argv[++i];
    } else if (!arg.empty() && arg[0] == '-') {
      std::fprintf(stderr, "kiln-graph: unknown option %s\n", arg.c_str());
      return usage();
    } else if (path.empty()) {
      path = arg;
    } else {
      return usage();
    }
  }
  if (path.empty()) return usage();
  try {
    std::unique_ptr<Graph> graph = load_graph(path);
    if (mode == "summary") {
      print_summary(*graph, path);
    } else if (mode == "optimized") {
      print_optimized(*graph, signature, batch, static_cast<int>(stream_count));
    } else if (mode == "text") {
      std::fputs(graph_to_text(*graph).c_str(), stdout);
    } else {
      const std::vector<char> keep = dot_selection(*graph, signature, forward_only);
      std::ostringstream dot;
      write_dot(*graph, keep, dot);
      if (dot_out.empty()) {
        std::cout << dot.str();
      } else {
        write_file_atomically(dot_out, dot.str());
        std::printf("wrote %s (%ld of %d nodes)\n", dot_out.c_str(),
                    static_cast<long>(std::count(keep.begin(), keep.end(), 1)), graph->num_nodes());
      }
    }
  } catch (const std::exception& e) {
    std::fprintf(stderr, "kiln-graph: %s\n", e.what());
    return 1;
  }
  return 0;
}
