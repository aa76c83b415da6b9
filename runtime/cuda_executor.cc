// The CUDA executor. The host walks the plan's steps in order and queues each kernel on its
// step's stream; a step that depends on a step of another stream first waits on that step's
// event. Nothing blocks the host until the fetches are copied out at the end of the run.
#include "kiln/runtime/cuda_executor.h"

#include <cuda_runtime_api.h>

#include <chrono>
#include <cstring>
#include <map>

#include "kiln/framework/cuda/cuda_check.h"
#include "kiln/framework/cuda/device_memory.h"
#include "kiln/framework/kernel.h"

namespace kiln {

namespace {

constexpr size_t kStagingAlignment = 256;

size_t aligned(size_t bytes) {
  return (bytes + kStagingAlignment - 1) / kStagingAlignment * kStagingAlignment;
}

size_t slot_bytes(const Plan& plan, int32_t slot) {
  const TensorType& t = plan.slot_types[slot];
  return static_cast<size_t>(t.shape.numel()) * dtype_size(t.dtype);
}

bool is_constant(const Node& node) {
  return node.op().source() == OutputSource::attribute;
}

// What the arena holds, for an out-of-memory message: how many buffers and the largest one's
// node.
std::string arena_description(const Plan& plan) {
  int32_t largest = -1, buffers = 0;
  size_t largest_bytes = 0;
  for (const PlanStep& step : plan.steps)
    for (int32_t slot : step.output_slots) {
      if (plan.slot_offset[slot] < 0) continue;
      ++buffers;
      if (slot_bytes(plan, slot) > largest_bytes)
        largest_bytes = slot_bytes(plan, slot), largest = step.node;
    }
  return str("the plan's arena (", buffers, " intermediate buffers, the largest ",
             largest_bytes >> 20, " MiB from node '",
             largest >= 0 ? plan.graph->node(largest).name() : std::string("?"), "')");
}

// GPU start and end of one traced step: timing events recorded around it on its stream.
struct StepTiming {
  int32_t step = 0;
  cudaEvent_t start = nullptr, end = nullptr;
};

// One CUDA stream and its library resources (made on first use by the kernels that need
// them; released before the stream).
struct Lane {
  Lane(Device device, StreamKind kind, int32_t index, int64_t* error_block)
      : resources(LaneInfo{device, kind, index, stream.get()}),
        context{device, stream.get(), error_block, -1} {}
  cuda::Stream stream;
  LaneResources resources;
  CudaStepContext context;
};

// What the executor keeps per plan between runs: device buffers at fixed addresses (so a
// captured graph stays valid), staging, events, the captured graph.
struct PlanState {
  std::shared_ptr<Storage> arena;
  std::vector<Tensor> feed_buffers;        // device, one per feed
  std::map<int32_t, Tensor> slot_buffers;  // persistent device buffers of fetched outputs
  std::map<int32_t, Tensor> constants;     // uploaded constant values, by slot
  std::shared_ptr<Storage> feed_staging, fetch_staging;  // pinned
  std::vector<size_t> feed_offsets, fetch_offsets;
  std::vector<std::unique_ptr<cuda::Event>> step_events;  // for steps other streams wait on
  std::vector<std::unique_ptr<cuda::Event>> join_events;  // one per lane
  LaneMap lanes;                                          // the plan's streams on the lanes
  cudaGraphExec_t graph = nullptr;
  uint64_t graph_generation = 0;
  int eager_runs = 0;
  ~PlanState() {
    if (graph) cudaGraphExecDestroy(graph);
  }
};

class CudaExecutorImpl final : public CudaExecutor {
 public:
  CudaExecutorImpl(Device device, int max_streams) : device_(device) {
    KILN_CUDA_CHECK(cudaSetDevice(device.index), "executor");
    // Keep freed pool memory cached instead of returning it to the driver at every sync.
    cudaMemPool_t pool = nullptr;
    KILN_CUDA_CHECK(cudaDeviceGetDefaultMemPool(&pool, device.index), "executor");
    uint64_t keep = UINT64_MAX;
    KILN_CUDA_CHECK(cudaMemPoolSetAttribute(pool, cudaMemPoolAttrReleaseThreshold, &keep),
                    "executor");
    error_block_ = allocate_pinned(8 * sizeof(int64_t));
    compute_lanes_ = std::max(1, max_streams);
    for (int i = 0; i < compute_lanes_; ++i) lane(i, StreamKind::compute);
    KILN_CUDA_CHECK(cudaDeviceSynchronize(), "executor");
  }

  ~CudaExecutorImpl() override {
    cudaDeviceSynchronize();
    states_.clear();
    lanes_.clear();  // each lane's resources, then its stream
  }

  std::vector<Tensor> run(const Plan& plan, const std::vector<Tensor>& feeds, ThreadPool& pool,
                          VariableStore& variables, const CudaRunOptions& options) override {
    KILN_CUDA_CHECK(cudaSetDevice(device_.index), "run");
    PlanState& state = state_for(plan);  // makes every lane the plan uses
    for (const auto& l : lanes_) {
      l->context.allow_tf32 = options.allow_tf32;
      l->context.deterministic = options.deterministic;
    }
    stage_feeds(plan, state, feeds);
    std::memset(error_block_->data(), 0, error_block_->nbytes());
    const uint64_t generation = variables.generation();
    if (options.cuda_graphs && state.graph && state.graph_generation != generation) {
      cudaGraphExecDestroy(state.graph);  // variables moved: the recorded addresses are stale
      state.graph = nullptr;
      state.eager_runs = 0;
    }
    cudaStream_t main = lanes_[0]->stream.get();
    if (options.cuda_graphs && state.graph) {
      KILN_CUDA_CHECK(cudaGraphLaunch(state.graph, main), "graph replay");
      ++replays_;
    } else if (options.cuda_graphs && state.eager_runs >= 1 && !options.trace &&
               options.check_numerics == NumericsCheck::off) {
      // Record the step once (the first run allocated and uploaded everything), then replay.
      KILN_CUDA_CHECK(cudaStreamBeginCapture(main, cudaStreamCaptureModeThreadLocal),
                      "graph capture");
      cudaGraph_t graph = nullptr;
      try {
        enqueue(plan, state, pool, variables, nullptr, NumericsCheck::off);
      } catch (...) {
        cudaStreamEndCapture(main, &graph);
        if (graph) cudaGraphDestroy(graph);
        throw;
      }
      KILN_CUDA_CHECK(cudaStreamEndCapture(main, &graph), "graph capture");
      cudaError_t status = cudaGraphInstantiate(&state.graph, graph, 0);
      cudaGraphDestroy(graph);
      if (status != cudaSuccess) cuda::throw_cuda_error(status, "cudaGraphInstantiate", "graph");
      state.graph_generation = variables.generation();
      KILN_CUDA_CHECK(cudaGraphLaunch(state.graph, main), "graph replay");
    } else {
      std::vector<StepTiming> timings;
      cudaEvent_t origin = nullptr;
      double origin_us = 0;
      if (options.trace) {
        KILN_CUDA_CHECK(cudaEventCreate(&origin), "trace");
        KILN_CUDA_CHECK(cudaEventRecord(origin, main), "trace");
        origin_us = std::chrono::duration<double, std::micro>(
                        std::chrono::steady_clock::now().time_since_epoch())
                        .count();
      }
      enqueue(plan, state, pool, variables, options.trace ? &timings : nullptr,
              options.check_numerics);
      ++state.eager_runs;
      if (options.trace) {
        synchronize_stream(main, "run");
        record_trace(plan, origin, origin_us, timings, *options.trace);
      }
    }
    synchronize_stream(main, "run");
    raise_data_error(plan);
    return collect_fetches(plan, state);
  }

  int64_t graph_replays() const override { return replays_; }

  void forget(const Plan& plan) override {
    auto it = states_.find(&plan);
    if (it == states_.end()) return;
    // Its buffers may still be in use by queued work (freed stream-ordered, but a captured
    // graph and the staging are not): wait for the device first.
    cudaSetDevice(device_.index);
    cudaDeviceSynchronize();
    states_.erase(it);
  }

 private:
  // Lane `index` (made now, with a stream of its own, if it does not exist yet).
  Lane& lane(int32_t index, StreamKind kind) {
    while (static_cast<int32_t>(lanes_.size()) <= index) {
      const int32_t next = static_cast<int32_t>(lanes_.size());
      lanes_.push_back(std::make_unique<Lane>(device_, next == index ? kind : StreamKind::compute,
                                              next, static_cast<int64_t*>(error_block_->data())));
    }
    return *lanes_[index];
  }

  PlanState& state_for(const Plan& plan) {
    auto& slot = states_[&plan];
    if (slot) return *slot;
    auto state = std::make_unique<PlanState>();
    // Compute streams on the compute lanes; a communication stream on a lane of its own.
    state->lanes = map_streams_to_lanes(plan, compute_lanes_);
    for (size_t l = 0; l < state->lanes.lane_kinds.size(); ++l)
      lane(static_cast<int32_t>(l), state->lanes.lane_kinds[l]);
    if (plan.arena_bytes > 0)
      state->arena = allocate_device(device_, plan.arena_bytes, nullptr, arena_description(plan));
    size_t feed_total = 0, fetch_total = 0;
    for (int32_t slot_id : plan.feed_slots) {
      const TensorType& t = plan.slot_types[slot_id];
      state->feed_buffers.emplace_back(
          t.dtype, t.shape, allocate_device(device_, slot_bytes(plan, slot_id), nullptr, "feed"));
      state->feed_offsets.push_back(feed_total);
      feed_total += aligned(slot_bytes(plan, slot_id));
    }
    for (int32_t slot_id : plan.fetch_slots) {
      state->fetch_offsets.push_back(fetch_total);
      fetch_total += aligned(slot_bytes(plan, slot_id));
    }
    std::vector<char> fetched(plan.num_slots, 0);
    for (int32_t s : plan.fetch_slots) fetched[s] = 1;
    std::vector<char> waited(plan.steps.size(), 0);
    for (const PlanStep& step : plan.steps)
      for (int32_t w : step.waits) waited[w] = 1;
    state->step_events.resize(plan.steps.size());
    for (size_t s = 0; s < plan.steps.size(); ++s) {
      const PlanStep& step = plan.steps[s];
      if (waited[s]) state->step_events[s] = std::make_unique<cuda::Event>();
      const Node& node = plan.graph->node(step.node);
      for (size_t i = 0; i < step.output_slots.size(); ++i) {
        const int32_t out = step.output_slots[i];
        if (!fetched[out] || plan.slot_offset[out] >= 0 || node.op().external_output()) continue;
        const TensorType& t = step.output_types[i];
        state->slot_buffers.emplace(
            out, Tensor(t.dtype, t.shape,
                        allocate_device(device_, slot_bytes(plan, out), nullptr, node.name())));
      }
      if (is_constant(node))
        state->constants.emplace(step.output_slots[0], node.attr<Tensor>("value").to(device_));
    }
    // Pinned staging last: a plan whose fetches do not fit on the GPU fails above, naming the
    // node, before asking for as much host memory.
    state->feed_staging = allocate_pinned(feed_total);
    state->fetch_staging = allocate_pinned(fetch_total);
    for (size_t l = 0; l < state->lanes.lane_kinds.size(); ++l)
      state->join_events.push_back(std::make_unique<cuda::Event>());
    KILN_CUDA_CHECK(cudaDeviceSynchronize(), "plan setup");
    slot = std::move(state);
    return *slot;
  }

  // Host feeds -> pinned staging (the device copy is part of the queued work).
  void stage_feeds([[maybe_unused]] const Plan& plan, PlanState& state,
                   const std::vector<Tensor>& feeds) {
    auto* staging = static_cast<char*>(state.feed_staging->data());
    for (size_t i = 0; i < feeds.size(); ++i) {
      const Tensor& feed = feeds[i];
      const Tensor host = feed.device().is_cpu() ? feed : feed.to(Device::cpu());
      KILN_DASSERT(host.nbytes() == slot_bytes(plan, plan.feed_slots[i]));  // check_feeds
      if (host.nbytes())
        std::memcpy(staging + state.feed_offsets[i], host.raw_data(), host.nbytes());
    }
  }

  // Queues one whole run on the lanes: feeds in, every step, fetches out, all lanes joined
  // back into lane 0. Used both eagerly and under graph capture.
  void enqueue(const Plan& plan, PlanState& state, ThreadPool& pool, VariableStore& variables,
               std::vector<StepTiming>* timings, NumericsCheck check) {
    cudaStream_t main = lanes_[0]->stream.get();
    auto* feed_staging = static_cast<char*>(state.feed_staging->data());
    auto* fetch_staging = static_cast<char*>(state.fetch_staging->data());
    for (size_t i = 0; i < plan.feed_slots.size(); ++i)
      copy_bytes(state.feed_buffers[i].raw_data(), feed_staging + state.feed_offsets[i],
                 state.feed_buffers[i].nbytes(), main, "feed");
    // Every lane starts after the feeds are in.
    cuda::Event& start = *state.join_events[0];
    KILN_CUDA_CHECK(cudaEventRecord(start.get(), main), "run start");
    const size_t lanes = state.lanes.lane_kinds.size();
    for (size_t l = 1; l < lanes; ++l)
      KILN_CUDA_CHECK(cudaStreamWaitEvent(lanes_[l]->stream.get(), start.get(), 0), "run start");

    std::vector<Tensor> slots(plan.num_slots);
    for (size_t i = 0; i < plan.feed_slots.size(); ++i)
      slots[plan.feed_slots[i]] = state.feed_buffers[i];
    std::vector<std::vector<size_t>> fetch_positions(plan.num_slots);
    for (size_t i = 0; i < plan.fetch_slots.size(); ++i)
      fetch_positions[plan.fetch_slots[i]].push_back(i);
    // A fetched feed is copied out straight away.
    for (int32_t slot : plan.feed_slots)
      for (size_t i : fetch_positions[slot])
        copy_bytes(fetch_staging + state.fetch_offsets[i], slots[slot].raw_data(),
                   slots[slot].nbytes(), main, "fetch");

    for (size_t s = 0; s < plan.steps.size(); ++s) {
      const PlanStep& step = plan.steps[s];
      const Node& node = plan.graph->node(step.node);
      Lane& lane = *lanes_[state.lanes.lane_of_stream[step.stream]];
      cudaStream_t stream = lane.stream.get();
      for (int32_t w : step.waits)
        KILN_CUDA_CHECK(cudaStreamWaitEvent(stream, state.step_events[w]->get(), 0), node.name());
      StepTiming timing{static_cast<int32_t>(s)};
      if (timings) {
        KILN_CUDA_CHECK(cudaEventCreate(&timing.start), "trace");
        KILN_CUDA_CHECK(cudaEventCreate(&timing.end), "trace");
        KILN_CUDA_CHECK(cudaEventRecord(timing.start, stream), "trace");
      }
      std::vector<Tensor> outputs(step.output_types.size());
      for (size_t i = 0; i < outputs.size(); ++i) {
        const int32_t out = step.output_slots[i];
        const int64_t offset = plan.slot_offset[out];
        if (offset >= 0) {
          outputs[i] = Tensor(step.output_types[i].dtype, step.output_types[i].shape, state.arena,
                              static_cast<size_t>(offset));
        } else if (auto it = state.slot_buffers.find(out); it != state.slot_buffers.end()) {
          outputs[i] = it->second;
        }
      }
      if (is_constant(node)) {
        outputs[0] = state.constants.at(step.output_slots[0]);
      } else {
        std::vector<Tensor> inputs;
        inputs.reserve(step.input_slots.size());
        for (int32_t slot : step.input_slots) inputs.push_back(slots[slot]);
        lane.context.step = static_cast<int32_t>(s);
        KernelContext ctx(node, inputs, step.output_types, outputs, pool,
                          {.variables = &variables,
                           .cuda = &lane.context,
                           .lane = &lane.resources,
                           .cache = &cache_});
        step.kernel(ctx);
        for (int i = 0; i < ctx.num_outputs(); ++i) ctx.output(i);
        KILN_CUDA_CHECK(cudaGetLastError(), ctx.where());
      }
      if (check != NumericsCheck::off) {
        // Debugging mode: wait for the step and look at what it made, on the host.
        synchronize_stream(stream, node.name());
        for (size_t i = 0; i < outputs.size(); ++i)
          if (is_floating(outputs[i].dtype()))
            check_numerics(outputs[i].to(Device::cpu()), check,
                           str("node '", node.name(), "' (", node.op_name(), "), output ", i));
      }
      for (size_t i = 0; i < outputs.size(); ++i) {
        const int32_t out = step.output_slots[i];
        // Fetches are copied out as soon as they are made: later steps may reuse an arena
        // buffer a fetched view points into, or update a fetched variable.
        for (size_t f : fetch_positions[out])
          copy_bytes(fetch_staging + state.fetch_offsets[f], outputs[i].raw_data(),
                     outputs[i].nbytes(), stream, node.name());
        slots[out] = std::move(outputs[i]);
      }
      if (state.step_events[s])
        KILN_CUDA_CHECK(cudaEventRecord(state.step_events[s]->get(), stream), node.name());
      if (timings) {
        KILN_CUDA_CHECK(cudaEventRecord(timing.end, stream), "trace");
        timings->push_back(timing);
      }
    }
    for (size_t l = 1; l < lanes; ++l) {
      KILN_CUDA_CHECK(cudaEventRecord(state.join_events[l]->get(), lanes_[l]->stream.get()),
                      "run end");
      KILN_CUDA_CHECK(cudaStreamWaitEvent(main, state.join_events[l]->get(), 0), "run end");
    }
    // Slot tensors allocated during the run (outputs of kernels whose slot had no planned
    // buffer) are freed here, stream-ordered, before the run (or capture) ends.
    slots.clear();
  }

  // Turns the timing events of one run into trace events (GPU times, placed on the host clock
  // at the run's start), and destroys them.
  void record_trace(const Plan& plan, cudaEvent_t origin, double origin_us,
                    std::vector<StepTiming>& timings, std::vector<TraceEvent>& trace) {
    for (StepTiming& t : timings) {
      float from_origin = 0, duration = 0;
      cudaEventElapsedTime(&from_origin, origin, t.start);
      cudaEventElapsedTime(&duration, t.start, t.end);
      const PlanStep& step = plan.steps[t.step];
      const Node& node = plan.graph->node(step.node);
      trace.push_back({node.name(), node.op_name(), step.stream, origin_us + 1e3 * from_origin,
                       1e3 * duration});
      cudaEventDestroy(t.start);
      cudaEventDestroy(t.end);
    }
    cudaEventDestroy(origin);
  }

  // A data error a kernel reported (see ops/cuda/cuda_common.cuh), raised naming its node.
  void raise_data_error(const Plan& plan) {
    const auto* e = static_cast<const volatile int64_t*>(error_block_->data());
    if (e[0] == 0) return;
    const size_t step = static_cast<size_t>(e[0] - 1);
    const Node& node = plan.graph->node(plan.steps.at(step).node);
    if (e[1] == 3)
      throw DistributedError(str("[", node.op_name(), "] ", node.name(), ": rank ", e[2],
                                 ": the collective did not finish within ", e[3],
                                 " ms, or NCCL reported an error (result ", e[4],
                                 "): a peer died or hangs; the NCCL communicator was aborted"));
    if (e[1] == 5)
      throw Error(str("[", node.op_name(), "] ", node.name(), ": length ", e[2], " of sequence ",
                      e[3], " is outside [", e[4], ", ", e[5] - 1, "]"));
    if (e[1] == 6)
      throw Error(str("[", node.op_name(), "] ", node.name(), ": label ", e[2],
                      " at position (flat) ", e[3], " is the blank"));
    const char* what = e[1] == 2 ? "label" : e[1] == 4 ? "window start" : "index";
    throw Error(str("[", node.op_name(), "] ", node.name(), ": ", what, " ", e[2], " at position ",
                    e[3], " is outside [", e[4], ", ", e[5], ")"));
  }

  std::vector<Tensor> collect_fetches(const Plan& plan, const PlanState& state) {
    std::vector<Tensor> fetched;
    const auto* staging = static_cast<const char*>(state.fetch_staging->data());
    for (size_t i = 0; i < plan.fetch_slots.size(); ++i) {
      const TensorType& t = plan.slot_types[plan.fetch_slots[i]];
      Tensor out = Tensor::empty(t.dtype, t.shape);
      if (out.nbytes()) std::memcpy(out.raw_data(), staging + state.fetch_offsets[i], out.nbytes());
      fetched.push_back(std::move(out));
    }
    return fetched;
  }

  Device device_;
  std::shared_ptr<Storage> error_block_;  // pinned; kernels write data errors here
  int compute_lanes_ = 1;
  std::vector<std::unique_ptr<Lane>> lanes_;
  KernelCache cache_;  // kernels' choices (cuBLASLt heuristics, ...), for this device
  std::map<const Plan*, std::unique_ptr<PlanState>> states_;
  int64_t replays_ = 0;
};

}  // namespace

std::unique_ptr<CudaExecutor> CudaExecutor::create(Device device, int max_streams) {
  check_device_usable(device);
  return std::make_unique<CudaExecutorImpl>(device, max_streams);
}

}  // namespace kiln
