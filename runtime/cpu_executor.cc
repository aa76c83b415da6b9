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

#include "framework/graph_io.h"
#include "framework/kernel.h"
#include "runtime/plan.h"

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
             std::vector<TraceEvent>* trace, NumericsCheck check)
      : plan_(plan),
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
    KernelContext ctx(node, inputs, step.output_types, outputs, pool_, &variables_);
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

// Runs the plan's streams on one thread each; a step waits for the steps it depends on across
// streams (its events). The first error stops every stream and is rethrown.
void run_streams(const Plan& plan, StepRunner& runner, int max_threads) {
  const int32_t streams = std::min<int32_t>(plan.num_streams, max_threads);
  std::vector<std::vector<int32_t>> lanes(streams);
  for (int32_t s = 0; s < static_cast<int32_t>(plan.steps.size()); ++s)
    lanes[plan.steps[s].stream % streams].push_back(s);
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
  for (int32_t l = 1; l < streams; ++l) threads.emplace_back(lane, l);
  lane(0);
  for (auto& t : threads) t.join();
  if (error) std::rethrow_exception(error);
}

}  // namespace

void write_chrome_trace(const std::vector<TraceEvent>& events, const std::string& path) {
  auto escape = [](const std::string& s) {
    std::string out;
    for (char c : s) {
      if (c == '"' || c == '\\') out += '\\';
      out += c;
    }
    return out;
  };
  const double origin = events.empty() ? 0 : events.front().start_us;
  std::ostringstream json;
  json << "{\"displayTimeUnit\": \"ms\", \"traceEvents\": [\n";
  for (size_t i = 0; i < events.size(); ++i) {
    const TraceEvent& e = events[i];
    json << "  {\"name\": \"" << escape(e.name) << "\", \"cat\": \"" << escape(e.op)
         << "\", \"ph\": \"X\", \"pid\": 1, \"tid\": " << e.stream << ", \"ts\": " << std::fixed
         << std::setprecision(3) << e.start_us - origin << ", \"dur\": " << e.duration_us
         << ", \"args\": {\"op\": \"" << escape(e.op) << "\"}}"
         << (i + 1 < events.size() ? "," : "") << "\n";
  }
  json << "]}\n";
  write_file_atomically(path, json.str());
}

std::vector<Tensor> execute_on_cpu(const Plan& plan, const std::vector<Tensor>& feeds,
                                   ThreadPool& pool, VariableStore& variables,
                                   const CpuRunOptions& options) {
  std::vector<Tensor> slots(plan.num_slots);
  for (size_t i = 0; i < feeds.size(); ++i) slots[plan.feed_slots[i]] = feeds[i];
  std::shared_ptr<Storage> arena = options.arena ? *options.arena : nullptr;
  if (plan.arena_bytes > 0 && (!arena || arena->nbytes() < static_cast<size_t>(plan.arena_bytes))) {
    // Grown with some headroom, so that slowly growing plans do not reallocate every time.
    // The old arena is released first, so the two are never held at once.
    const size_t want = static_cast<size_t>(plan.arena_bytes);
    arena.reset();
    if (options.arena) options.arena->reset();
    arena = std::make_shared<HostStorage>(options.arena ? want + want / 4 : want);
    if (options.arena) *options.arena = arena;
  }
  const bool concurrent = options.inter_op_threads > 1 && plan.num_streams > 1;
  StepRunner runner(plan, arena, slots, pool, variables, concurrent, options.trace, options.check);
  if (concurrent) {
    run_streams(plan, runner, options.inter_op_threads);
  } else {
    // One thread: the plan's order respects every edge, events included.
    for (int32_t s = 0; s < static_cast<int32_t>(plan.steps.size()); ++s) runner.run(s);
  }
  std::vector<Tensor> fetched;
  std::vector<const Storage*> state;
  for (const std::string& name : variables.names())
    state.push_back(variables.get(name).storage().get());
  for (int32_t slot : plan.fetch_slots) {
    if (auto it = runner.snapshots().find(slot); it != runner.snapshots().end()) {
      fetched.push_back(it->second);
      continue;
    }
    const Tensor& t = slots[slot];
    bool aliases_state = std::find(state.begin(), state.end(), t.storage().get()) != state.end();
    fetched.push_back(aliases_state ? t.clone() : t);
  }
  return fetched;
}

}  // namespace kiln
