#include "kiln/runtime/session.h"

#include <cstdio>
#include <map>
#include <memory>
#include <set>

#include "kiln/runtime/checkpoint.h"

namespace kiln {

Session::Session(const Graph& graph, SessionOptions options) : graph_(graph), options_(options) {
  check_device_usable(options_.device);
  KILN_CHECK(options_.intra_op_threads >= 0, Error, "[session] intra_op_threads must be >= 0, got ",
             options_.intra_op_threads);
  KILN_CHECK(options_.inter_op_threads >= 1, Error, "[session] inter_op_threads must be >= 1, got ",
             options_.inter_op_threads);
  KILN_CHECK(options_.cuda_streams >= 1, Error, "[session] cuda_streams must be >= 1, got ",
             options_.cuda_streams);
  KILN_CHECK(options_.max_cached_plans >= 1, Error, "[session] max_cached_plans must be >= 1");
  pool_ = std::make_unique<ThreadPool>(options_.intra_op_threads);
  if (options_.device.is_cuda())
    cuda_ = CudaExecutor::create(options_.device, options_.cuda_streams);
}

Session::~Session() {
  // The executor's per-plan device state refers to the plans: it goes first.
  cuda_.reset();
  if (options_.trace_path.empty()) return;
  try {
    write_trace(options_.trace_path);
  } catch (const std::exception& e) {
    std::fprintf(stderr, "kiln: could not write the trace: %s\n", e.what());
  }
}

void Session::write_trace(const std::string& path) {
  std::lock_guard<std::mutex> lock(mutex_);
  write_chrome_trace(trace_, path);
}

const Plan& Session::plan_for(const FeedList& feeds, const std::vector<Value>& fetches,
                              const std::vector<Value>& targets) {
  std::vector<FeedSpec> specs;
  for (const auto& [value, tensor] : feeds)
    specs.push_back({value, {tensor.dtype(), tensor.shape()}, &tensor});
  // Every run, before the cache: a cached plan was compiled for feeds that passed, but this
  // run's may not (an undefined tensor, a duplicate).
  check_feeds(graph_, specs);
  std::string key = plan_key(specs, fetches, targets);
  if (auto it = plans_.find(key); it != plans_.end()) {
    recency_.splice(recency_.begin(), recency_, it->second.recency);  // now the most recent
    return *it->second.plan;
  }
  const int streams = cuda_ ? options_.cuda_streams : options_.inter_op_threads;
  PassOptions passes = options_.passes;
  if (options_.check_numerics != NumericsCheck::off) {
    // A finding names one of the graph's own nodes, not a merged one.
    passes.elementwise_fusion = false;
    passes.matmul_epilogue = false;
  }
  auto plan = std::make_unique<Plan>(
      compile_plan(graph_, specs, fetches, targets, options_.device.kind, passes, streams));
  if (options_.validate_memory_plan) validate_memory_plan(*plan);
  ++compilations_;
  while (plans_.size() >= options_.max_cached_plans) {
    // Evict the least recently used plan, and what the GPU executor keeps for it.
    auto victim = plans_.find(recency_.back());
    if (cuda_) cuda_->forget(*victim->second.plan);
    plans_.erase(victim);
    recency_.pop_back();
  }
  recency_.push_front(key);
  return *plans_.emplace(key, CachedPlan{std::move(plan), recency_.begin()}).first->second.plan;
}

std::vector<Tensor> Session::run(const FeedList& feeds, const std::vector<Value>& fetches,
                                 const std::vector<Value>& targets) {
  std::lock_guard<std::mutex> lock(mutex_);
  const Plan& plan = plan_for(feeds, fetches, targets);
  std::vector<Tensor> tensors;
  tensors.reserve(feeds.size());
  for (const auto& feed : feeds) {
    if (options_.check_numerics != NumericsCheck::off)
      check_numerics(feed.second, options_.check_numerics, str("feed '", feed.first.name(), "'"));
    tensors.push_back(feed.second);
  }
  // Bounded: a long training run keeps the first million steps' events.
  const bool tracing = !options_.trace_path.empty() && trace_.size() < 1000000;
  if (cuda_) {
    CudaRunOptions run_options;
    run_options.cuda_graphs = options_.cuda_graphs;
    run_options.allow_tf32 = options_.allow_tf32;
    run_options.deterministic = options_.deterministic;
    run_options.check_numerics = options_.check_numerics;
    run_options.trace = tracing ? &trace_ : nullptr;
    return cuda_->run(plan, tensors, *pool_, variables_, run_options);
  }
  return execute_on_cpu(plan, tensors, *pool_, variables_,
                        {.inter_op_threads = options_.inter_op_threads,
                         .trace = tracing ? &trace_ : nullptr,
                         .check = options_.check_numerics,
                         .state = &cpu_state_});
}

const Plan& Session::plan(const FeedList& feeds, const std::vector<Value>& fetches,
                          const std::vector<Value>& targets) {
  std::lock_guard<std::mutex> lock(mutex_);
  return plan_for(feeds, fetches, targets);
}

namespace {
std::vector<Value> all_variables(const Graph& graph) {
  std::vector<Value> out;
  for (int32_t id = 0; id < graph.num_nodes(); ++id)
    if (graph.node(id).op().source() == OutputSource::state)
      out.emplace_back(const_cast<Graph*>(&graph), OutputRef{id, 0});
  return out;
}

}  // namespace

std::vector<Value> persistent_variables(const Graph& graph) {
  std::vector<Value> out = all_variables(graph);
  std::erase_if(out, [](const Value& var) { return !var.node().attr<bool>("persistent"); });
  return out;
}

void Session::initialize_variables() {
  std::vector<Value> vars = all_variables(graph_);
  if (!vars.empty()) run({}, {}, vars);
}

Tensor Session::variable_value(const Value& var) {
  KILN_CHECK(
      var.defined() && var.graph() == &graph_ && var.node().op().source() == OutputSource::state,
      Error, "[session] ", var.defined() ? var.name() : "?", " is not a variable of this graph");
  return run({}, {var})[0];
}

void Session::set_variable(const Value& var, const Tensor& value) {
  KILN_CHECK(
      var.defined() && var.graph() == &graph_ && var.node().op().source() == OutputSource::state,
      Error, "[session] ", var.defined() ? var.name() : "?", " is not a variable of this graph");
  KILN_CHECK(value.dtype() == var.dtype() && value.shape() == var.shape(), FeedError,
             "[session] variable '", var.name(), "' is ", var.dtype(), var.shape(), "; got ",
             value.dtype(), value.shape());
  std::lock_guard<std::mutex> lock(mutex_);
  variables_.set(var.node().name(),
                 value.device() == options_.device ? value.clone() : value.to(options_.device));
}

std::map<std::string, Tensor> Session::variable_values() {
  return variable_values(persistent_variables(graph_));
}

std::map<std::string, Tensor> Session::variable_values(const std::vector<Value>& variables) {
  check_persistent("variable_values", variables);
  initialize_variables();
  std::map<std::string, Tensor> tensors;
  std::lock_guard<std::mutex> lock(mutex_);
  for (const Value& var : variables) {
    const Tensor& value = variables_.get(var.node().name());
    // A host variable is updated in place by later runs: the map gets its own copy.
    tensors[var.node().name()] = value.device().is_cpu() ? value.clone() : value.to(Device::cpu());
  }
  return tensors;
}

void Session::set_variables(const std::map<std::string, Tensor>& values) {
  std::map<std::string, Value> variables;
  for (const Value& var : all_variables(graph_)) variables.emplace(var.node().name(), var);
  for (const auto& [name, value] : values) {
    const auto it = variables.find(name);
    KILN_CHECK(it != variables.end(), FeedError, "[session] set_variables: '", name,
               "' is not a variable of the graph (", variables.size(), " variables",
               variables.empty() ? "" : str(", e.g. '", variables.begin()->first, "'"), ")");
    const Value& var = it->second;
    KILN_CHECK(
        value.defined() && value.dtype() == var.dtype() && value.shape() == var.shape(), FeedError,
        "[session] set_variables: variable '", name, "' is ", var.dtype(), var.shape(), "; got ",
        value.defined() ? str(value.dtype(), value.shape()) : std::string("an undefined tensor"));
  }
  std::lock_guard<std::mutex> lock(mutex_);
  for (const auto& [name, value] : values)
    variables_.set(name,
                   value.device() == options_.device ? value.clone() : value.to(options_.device));
}

void Session::save_checkpoint(const std::string& path) {
  save_checkpoint(path, persistent_variables(graph_));
}

void Session::check_persistent(const std::string& what, const std::vector<Value>& variables) const {
  std::set<std::string> persistent;
  for (const Value& var : persistent_variables(graph_)) persistent.insert(var.node().name());
  for (const Value& var : variables)
    KILN_CHECK(var.defined() && var.graph() == &graph_ && persistent.count(var.node().name()),
               GraphError, "[checkpoint] ", what, ": ",
               var.defined() ? var.node().name() : std::string("an undefined value"),
               " is not a persistent variable of the session's graph");
}

void Session::save_checkpoint(const std::string& path, const std::vector<Value>& variables) {
  check_persistent(path, variables);
  initialize_variables();
  // In name order (the files of earlier builds had it); a device variable is copied to the host
  // when the writer reaches it, so host memory holds one variable at a time.
  std::map<std::string, Value> by_name;
  for (const Value& var : variables)
    KILN_CHECK(by_name.emplace(var.node().name(), var).second, GraphError, "[checkpoint] ", path,
               ": variable ", var.node().name(), " is listed twice");
  std::vector<CheckpointSource> sources;
  for (const auto& [name, var] : by_name)
    sources.push_back({name, var.dtype(), var.shape(),
                       [this, name = name] { return variables_.get(name).to(Device::cpu()); }});
  std::lock_guard<std::mutex> lock(mutex_);
  write_checkpoint(sources, path);
}

void Session::restore_checkpoint(const std::string& path, bool strict) {
  restore_checkpoints({path}, strict);
}

void Session::restore_checkpoints(const std::vector<std::string>& paths, bool strict) {
  KILN_CHECK(!paths.empty(), FileError, "[checkpoint] restore_checkpoints of no files");
  std::vector<std::unique_ptr<CheckpointReader>> readers;
  for (const std::string& path : paths) readers.push_back(std::make_unique<CheckpointReader>(path));
  std::string files = paths[0];
  for (size_t f = 1; f < paths.size(); ++f) files += ", " + paths[f];
  // Each name's first file and its entry there.
  std::map<std::string, std::pair<size_t, size_t>> index;
  for (size_t f = 0; f < readers.size(); ++f)
    for (size_t i = 0; i < readers[f]->entries().size(); ++i)
      index.emplace(readers[f]->entries()[i].name, std::make_pair(f, i));
  std::vector<Value> vars = persistent_variables(graph_);
  for (const Value& var : vars) {
    auto it = index.find(var.node().name());
    KILN_CHECK(it != index.end(), FileError, "[checkpoint] ", files, ": variable '",
               var.node().name(), "' of the graph is missing from the checkpoint",
               paths.size() > 1 ? "s" : "");
    const auto [file, entry_index] = it->second;
    const CheckpointReader::Entry& entry = readers[file]->entries()[entry_index];
    KILN_CHECK(entry.dtype == var.dtype() && entry.shape == var.shape(), FileError, "[checkpoint] ",
               paths[file], ": variable '", var.node().name(), "' is ", entry.dtype, entry.shape,
               " in the checkpoint but ", var.dtype(), var.shape(), " in the graph");
  }
  if (strict) {
    // A non-persistent variable found in a file (saved before it was marked) is accepted and
    // its value ignored.
    for (size_t f = 0; f < readers.size(); ++f)
      for (const CheckpointReader::Entry& entry : readers[f]->entries()) {
        const Node* node = graph_.find_node(entry.name);
        KILN_CHECK(
            node && node->op().source() == OutputSource::state, FileError, "[checkpoint] ",
            paths[f], ": the checkpoint has '", entry.name,
            "', which is not a variable of the graph (restore with strict=false to ignore it)");
      }
  }
  // Nothing is set until every variable's bytes checked out. On the host they are read once and
  // kept; for a device, each is read, checked and dropped, then read again and copied over, so
  // host memory holds one variable at a time (the file is read twice).
  const bool on_host = options_.device.is_cpu();
  auto read = [&](const std::string& name) {
    const auto [file, entry_index] = index.at(name);
    return readers[file]->read(entry_index);
  };
  std::map<std::string, Tensor> loaded;
  for (const Value& var : vars) {
    Tensor value = read(var.node().name());
    if (on_host) loaded.emplace(var.node().name(), std::move(value));
  }
  std::lock_guard<std::mutex> lock(mutex_);
  for (const Value& var : vars) {
    const std::string& name = var.node().name();
    variables_.set(name, on_host ? loaded.at(name) : read(name).to(options_.device));
  }
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
