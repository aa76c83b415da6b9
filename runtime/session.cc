#include "runtime/session.h"

namespace kiln {

Session::Session(const Graph& graph, SessionOptions options)
    : graph_(graph), options_(options) {
  check_device_usable(options_.device);
  KILN_CHECK(options_.device.is_cpu(), DeviceError, "[session] ", options_.device,
             " is present, but this build of Kiln has no CUDA executor yet; use Device::cpu()");
  KILN_CHECK(options_.intra_op_threads >= 0, Error, "[session] intra_op_threads must be >= 0, got ",
             options_.intra_op_threads);
  pool_ = std::make_unique<ThreadPool>(options_.intra_op_threads);
}

Session::~Session() = default;

const Plan& Session::plan_for(const FeedList& feeds, const std::vector<Value>& fetches,
                              const std::vector<Value>& targets) {
  std::vector<FeedSpec> specs;
  for (const auto& [value, tensor] : feeds) {
    KILN_CHECK(tensor.defined(), FeedError, "[session] the feed for '",
               value.defined() ? value.name() : std::string("?"), "' is an undefined tensor");
    KILN_CHECK(tensor.device().is_cpu(), FeedError, "[session] the feed for '", value.name(),
               "' is on ", tensor.device(), "; feeds must be host tensors");
    specs.push_back({value, {tensor.dtype(), tensor.shape()}});
  }
  std::string key = plan_key(specs, fetches, targets);
  auto it = plans_.find(key);
  if (it != plans_.end()) return *it->second;
  auto plan = std::make_unique<Plan>(compile_plan(graph_, specs, fetches, targets, options_.device.kind));
  return *plans_.emplace(key, std::move(plan)).first->second;
}

std::vector<Tensor> Session::run(const FeedList& feeds, const std::vector<Value>& fetches,
                                 const std::vector<Value>& targets) {
  std::lock_guard<std::mutex> lock(mutex_);
  const Plan& plan = plan_for(feeds, fetches, targets);
  std::vector<Tensor> tensors;
  tensors.reserve(feeds.size());
  for (const auto& feed : feeds) tensors.push_back(feed.second);
  return execute_on_cpu(plan, graph_, tensors, *pool_);
}

std::vector<Tensor> Session::run_signature(const std::string& name,
                                           const std::vector<Tensor>& inputs) {
  const Signature& sig = graph_.signature(name);
  KILN_CHECK(inputs.size() == sig.inputs.size(), FeedError, "[session] signature '", name,
             "' takes ", sig.inputs.size(), " input(s), got ", inputs.size());
  FeedList feeds;
  for (size_t i = 0; i < inputs.size(); ++i) feeds.emplace_back(sig.inputs[i], inputs[i]);
  return run(feeds, sig.outputs, sig.targets);
}

}  // namespace kiln
