// Shared by the fuzz targets: what a loaded graph is made to do, within bounds that keep one
// input fast and small (the bounds are the harness's, not limits of Kiln).
#pragma once

#include <google/protobuf/stubs/logging.h>
#include <kiln/kiln.h>

#include <cstdint>
#include <string>

namespace kiln::fuzz {

// protobuf logs every string field that is not UTF-8; mutated inputs are full of them.
[[maybe_unused]] static const bool kQuietProtobuf = [] {
  google::protobuf::SetLogHandler(nullptr);
  return true;
}();

/// Largest tensor (elements) and plan (bytes of all its values) a fuzz input may make Kiln
/// run; larger graphs are only loaded and compiled.
inline constexpr int64_t kMaxElements = int64_t{1} << 20;
inline constexpr int64_t kMaxPlanBytes = int64_t{64} << 20;

/// Compiles every signature of `graph` with small zero feeds (unknown dims = 2) and runs the
/// plans that fit the bounds, twice (the second run reuses the plan), on two plan streams.
/// Kiln errors are expected; anything else (a crash, a sanitizer report) is a finding.
inline void run_signatures(const Graph& graph) {
  for (const auto& [name, sig] : graph.signatures()) {
    try {
      FeedList feeds;
      bool small = true;
      for (const Value& in : sig.inputs) {
        std::vector<int64_t> dims = in.shape().dims();
        for (int64_t& d : dims) d = d < 0 ? 2 : d;
        const Shape shape(dims);
        if (shape.numel() > kMaxElements) small = false;
        if (!small) break;
        feeds.emplace_back(in, Tensor::zeros(in.dtype(), shape));
      }
      if (!small) continue;
      Session session(graph, {.intra_op_threads = 1, .inter_op_threads = 2});
      const Plan& plan = session.plan(feeds, sig.outputs, sig.targets);
      int64_t bytes = 0;
      for (const TensorType& t : plan.slot_types) {
        const int64_t n = t.shape.numel();
        if (n > kMaxElements) small = false;
        bytes += n * static_cast<int64_t>(dtype_size(t.dtype));
      }
      for (int32_t id = 0; id < graph.num_nodes(); ++id)
        if (graph.node(id).op_name() == "variable" &&
            graph.node(id).outputs()[0].shape.numel() > kMaxElements)
          small = false;
      if (!small || bytes > kMaxPlanBytes) continue;
      for (int repeat = 0; repeat < 2; ++repeat) session.run(feeds, sig.outputs, sig.targets);
    } catch (const Error&) {
    }
  }
}

}  // namespace kiln::fuzz
