// The CPU executor: runs a Plan's steps in order with intra-op parallel kernels.
#include <algorithm>
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <iomanip>
#include <map>
#include <mutex>
#include <new>
#include <sstream>
#include <thread>

#include "kiln/framework/graph_io.h"
#include "kiln/framework/json.h"
#include "kiln/framework/kernel.h"
#include "kiln/runtime/plan.h"

namespace kiln {

namespace {

// Runs one step: binds planned outputs to the arena, calls the kernel, stores the outputs and
// frees slots whose last reader this was.
class StepRunner {
 public:
  /// `concurrent`: steps may run on several threads; a slot is then freed when its readers
  /// have all run (counted), not after the last reader in plan order.
  StepRunner(const Plan& plan, std::shared_ptr<Storage> arena, std::vector<Tensor>& slots,
             ThreadPool& pool, VariableStore& variables, bool concurrent,
             std::vector<TraceEvent>* trace, NumericsCheck check,
             std::vector<LaneResources*> lane_of_step, KernelCache& cache)
      : plan_(plan),
        lane_of_step_(std::move(lane_of_step)),
        cache_(cache),
        arena_(std::move(arena)),
        slots_(slots),
        pool_(pool),
        variables_(variables),
        concurrent_(concurrent),
        trace_(trace),
        check_(check) {
    fetched_slot_.assign(plan.num_slots, 0);
    for (int32_t slot : plan.fetch_slots) fetched_slot_[slot] = 1;
    if (concurrent_) {
      remaining_ = std::vector<std::atomic<int32_t>>(plan.num_slots);
      for (const PlanStep& step : plan.steps)
        for (int32_t slot : step.input_slots)
          remaining_[slot].fetch_add(1, std::memory_order_relaxed);
    }
  }

  void run(int32_t index) {
    const PlanStep& step = plan_.steps[index];
    const Node& node = plan_.graph->node(step.node);
    std::vector<Tensor> inputs, outputs(step.output_types.size());
    inputs.reserve(step.input_slots.size());
    for (int32_t slot : step.input_slots) inputs.push_back(slots_[slot]);
    for (size_t i = 0; i < outputs.size(); ++i) {  // planned outputs are views of the arena
      const int64_t offset = plan_.slot_offset[step.output_slots[i]];
      if (offset >= 0)
        outputs[i] = Tensor(step.output_types[i].dtype, step.output_types[i].shape, arena_,
                            static_cast<size_t>(offset));
    }
    KernelContext ctx(node, inputs, step.output_types, outputs, pool_,
                      {.variables = &variables_, .lane = lane_of_step_[index], .cache = &cache_});
    const auto start =
        trace_ ? std::chrono::steady_clock::now() : std::chrono::steady_clock::time_point();
    try {
      step.kernel(ctx);
      for (int i = 0; i < ctx.num_outputs(); ++i) ctx.output(i);  // allocate any left untouched
    } catch (const std::bad_alloc&) {
      throw Error(str(ctx.where(), ": out of host memory"));
    }
    if (trace_) {
      const auto end = std::chrono::steady_clock::now();
      auto us = [](auto t) {
        return std::chrono::duration<double, std::micro>(t.time_since_epoch()).count();
      };
      std::lock_guard<std::mutex> lock(mutex_);
      trace_->push_back({node.name(), node.op_name(), step.stream, us(start), us(end) - us(start)});
    }
    if (check_ != NumericsCheck::off)
      for (size_t i = 0; i < outputs.size(); ++i)
        check_numerics(outputs[i], check_,
                       str("node '", node.name(), "' (", node.op_name(), "), output ", i));
    inputs.clear();
    for (size_t i = 0; i < step.output_slots.size(); ++i) {
      const int32_t slot = step.output_slots[i];
      // Fetched variables and constants are copied: later updates (or a caller writing into
      // the result) must not reach the fetched tensor or the plan's constants. So is a fetched
      // view of an arena buffer (a reshape of an intermediate), which later steps reuse.
      const bool in_arena = arena_ && outputs[i].storage() == arena_;
      if (fetched_slot_[slot] && (node.op().source() == OutputSource::state ||
                                  node.op().source() == OutputSource::attribute || in_arena)) {
        std::lock_guard<std::mutex> lock(mutex_);
        snapshots_[slot] = outputs[i].clone();
      }
      slots_[slot] = std::move(outputs[i]);
    }
    if (!concurrent_) {
      for (int32_t slot : step.release_after) slots_[slot] = Tensor();
    } else {
      for (int32_t slot : step.input_slots)
        if (remaining_[slot].fetch_sub(1, std::memory_order_acq_rel) == 1 && !fetched_slot_[slot])
          slots_[slot] = Tensor();
    }
  }

  std::map<int32_t, Tensor>& snapshots() { return snapshots_; }

 private:
  const Plan& plan_;
  std::vector<LaneResources*> lane_of_step_;
  KernelCache& cache_;
  std::shared_ptr<Storage> arena_;
  std::vector<Tensor>& slots_;
  ThreadPool& pool_;
  VariableStore& variables_;
  bool concurrent_;
  std::vector<TraceEvent>* trace_;
  NumericsCheck check_;
  std::vector<char> fetched_slot_;
  std::vector<std::atomic<int32_t>> remaining_;
  std::mutex mutex_;
  std::map<int32_t, Tensor> snapshots_;
};

// Runs each lane of `map` on a thread of its own; a step waits for the steps it depends on
// across lanes (its events). The first error stops every lane and is rethrown.
void run_lanes(const Plan& plan, const LaneMap& map, StepRunner& runner) {
  const int32_t streams = static_cast<int32_t>(map.lane_kinds.size());
  std::vector<std::vector<int32_t>> lanes(streams);
  for (int32_t s = 0; s < static_cast<int32_t>(plan.steps.size()); ++s)
    lanes[map.lane_of_stream[plan.steps[s].stream]].push_back(s);
  std::vector<char> done(plan.steps.size(), 0);
  std::mutex mutex;
  std::condition_variable changed;
  std::exception_ptr error;
  auto lane = [&](int32_t l) {
    for (int32_t s : lanes[l]) {
      {
        std::unique_lock<std::mutex> lock(mutex);
        changed.wait(lock, [&] {
          if (error) return true;
          for (int32_t w : plan.steps[s].waits)
            if (!done[w]) return false;
          return true;
        });
        if (error) return;
      }
      try {
        runner.run(s);
      } catch (...) {
        std::lock_guard<std::mutex> lock(mutex);
        if (!error) error = std::current_exception();
        changed.notify_all();
        return;
      }
      std::lock_guard<std::mutex> lock(mutex);
      done[s] = 1;
      changed.notify_all();
    }
  };
  std::vector<std::thread> threads;
  for (int32_t l = 1; l < streams; ++l)
    if (!lanes[l].empty()) threads.emplace_back(lane, l);
  lane(0);
  for (auto& t : threads) t.join();
  if (error) std::rethrow_exception(error);
}

}  // namespace

void write_chrome_trace(const std::vector<TraceEvent>& events, const std::string& path) {
  const double origin = events.empty() ? 0 : events.front().start_us;
  std::ostringstream json;
  json << "{\"displayTimeUnit\": \"ms\", \"traceEvents\": [\n";
  for (size_t i = 0; i < events.size(); ++i) {
    const TraceEvent& e = events[i];
    json << "  {\"name\": " << json_quoted(e.name) << ", \"cat\": " << json_quoted(e.op)
         << ", \"ph\": \"X\", \"pid\": 1, \"tid\": " << e.stream << ", \"ts\": " << std::fixed
         << std::setprecision(3) << e.start_us - origin << ", \"dur\": " << e.duration_us
         << ", \"args\": {\"op\": " << json_quoted(e.op) << "}}"
         << (i + 1 < events.size() ? "," : "") << "\n";
  }
  json << "]}\n";
  write_file_atomically(path, json.str());
}

LaneResources& CpuExecutorState::lane(int32_t index, StreamKind kind) {
  while (static_cast<int32_t>(lanes.size()) <= index) lanes.push_back(nullptr);
  if (!lanes[index])
    lanes[index] = std::make_unique<LaneResources>(LaneInfo{Device::cpu(), kind, index, nullptr});
  return *lanes[index];
}

std::vector<Tensor> execute_on_cpu(const Plan& plan, const std::vector<Tensor>& feeds,
                                   ThreadPool& pool, VariableStore& variables,
                                   const CpuRunOptions& options) {
  std::vector<Tensor> slots(plan.num_slots);
  for (size_t i = 0; i < feeds.size(); ++i) slots[plan.feed_slots[i]] = feeds[i];
  CpuExecutorState local;
  CpuExecutorState& state = options.state ? *options.state : local;
  if (plan.arena_bytes > 0 &&
      (!state.arena || state.arena->nbytes() < static_cast<size_t>(plan.arena_bytes))) {
    // Grown with some headroom, so that slowly growing plans do not reallocate every time.
    // The old arena is released first, so the two are never held at once.
    const size_t want = static_cast<size_t>(plan.arena_bytes);
    state.arena.reset();
    state.arena = std::make_shared<HostStorage>(options.state ? want + want / 4 : want);
  }
  // Streams to lanes: with one thread every step runs on it in plan order (an order that
  // respects every edge, events included), each step still with its own lane's resources.
  // A communication stream always gets a thread of its own: a collective waits for the peers,
  // and compute goes on meanwhile (the overlap of data-parallel training).
  const bool communicates = std::find(plan.stream_kinds.begin(), plan.stream_kinds.end(),
                                      StreamKind::communication) != plan.stream_kinds.end();
  const bool concurrent = plan.num_streams > 1 && (options.inter_op_threads > 1 || communicates);
  const LaneMap map = map_streams_to_lanes(plan, concurrent ? options.inter_op_threads : 1);
  std::vector<LaneResources*> lane_of_step;
  lane_of_step.reserve(plan.steps.size());
  for (const PlanStep& step : plan.steps) {
    const int32_t lane = map.lane_of_stream[step.stream];
    lane_of_step.push_back(&state.lane(lane, map.lane_kinds[lane]));
  }
  StepRunner runner(plan, state.arena, slots, pool, variables, concurrent, options.trace,
                    options.check, std::move(lane_of_step), state.cache);
  if (concurrent) {
    run_lanes(plan, map, runner);
  } else {
    for (int32_t s = 0; s < static_cast<int32_t>(plan.steps.size()); ++s) runner.run(s);
  }
  std::vector<Tensor> fetched;
  std::vector<const Storage*> variable_storage;
  for (const std::string& name : variables.names())
    variable_storage.push_back(variables.get(name).storage().get());
  for (int32_t slot : plan.fetch_slots) {
    if (auto it = runner.snapshots().find(slot); it != runner.snapshots().end()) {
      fetched.push_back(it->second);
      continue;
    }
    const Tensor& t = slots[slot];
    const bool aliases_state = std::find(variable_storage.begin(), variable_storage.end(),
                                         t.storage().get()) != variable_storage.end();
    fetched.push_back(aliases_state ? t.clone() : t);
  }
  return fetched;
}

}  // namespace kiln
