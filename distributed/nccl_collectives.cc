// The CUDA kernels of the collective ops: NCCL on the communication lane's stream.
//
// NCCL is opened on first use (dlopen, as cuBLASLt is): a CPU program never loads it. Each
// communication lane makes one communicator when its first collective runs, meeting the other
// ranks through the default group's store (rank 0 puts the NCCL unique id there). The
// communicator is non-blocking (NCCL's config.blocking = 0), so neither its creation nor a
// collective can block the host past the group's timeout; and a watchdog thread follows every
// collective queued on the stream: one that has not finished by the deadline (a peer died or
// hangs), or an asynchronous NCCL error, aborts the communicator (ncclCommAbort, which ends
// its kernels, so the stream never hangs) and writes the failure into the executor's error
// block, which the run raises as a kiln::DistributedError naming the node, the rank and the
// collective. Every later collective on that communicator fails at once.
#include <cuda_runtime_api.h>
#include <nccl.h>

#include <atomic>
#include <condition_variable>
#include <cstdlib>
#include <cstring>
#include <deque>
#include <mutex>
#include <thread>

#include "kiln/distributed/distributed.h"
#include "kiln/framework/cuda/cuda_libraries.h"
#include "kiln/framework/kernel.h"
#include "kiln/framework/lane_resources.h"

namespace kiln::distributed {

namespace {

// clang-format off
#define KILN_NCCL_FUNCTIONS(X) \
  X(ncclGetUniqueId)           \
  X(ncclCommInitRankConfig)    \
  X(ncclCommGetAsyncError)     \
  X(ncclCommAbort)             \
  X(ncclCommDestroy)           \
  X(ncclGetErrorString)        \
  X(ncclAllReduce)             \
  X(ncclBroadcast)             \
  X(ncclAllGather)             \
  X(ncclReduceScatter)
// clang-format on

struct NcclApi {
  KILN_NCCL_FUNCTIONS(KILN_LIBRARY_MEMBER)
};

NcclApi load_nccl() {
  const std::string soname = str("libnccl.so.", NCCL_MAJOR);
  void* library = cuda::open_cuda_library(soname);
  NcclApi api;
#define KILN_LOAD_NCCL(f) \
  api.f = reinterpret_cast<decltype(api.f)>(cuda::cuda_library_symbol(library, #f, soname));
  KILN_NCCL_FUNCTIONS(KILN_LOAD_NCCL)
#undef KILN_LOAD_NCCL
  return api;
}

const NcclApi& nccl() {
  static const NcclApi api = load_nccl();  // a throw leaves it for the next call
  return api;
}

// Communicators made so far in this process: every rank makes its lanes' communicators in the
// same order (the same program), so the n-th of each meets under the key "nccl/<n>".
std::atomic<int64_t> communicators_made{0};

// Where a failed collective is reported: the executor's error block (DataErrorKind in
// ops/cuda/cuda_common.cuh): {step + 1, communication_failed, rank, timeout in ms, NCCL result}.
constexpr int64_t kCommunicationFailed = 3;

void report_failure(int64_t* block, int64_t step, int64_t rank, int64_t timeout_ms,
                    int64_t result) {
  auto* first = reinterpret_cast<unsigned long long*>(block);
  unsigned long long expected = 0;
  if (__atomic_compare_exchange_n(first, &expected, static_cast<unsigned long long>(step + 1),
                                  false, __ATOMIC_SEQ_CST, __ATOMIC_SEQ_CST)) {
    block[1] = kCommunicationFailed;
    block[2] = rank;
    block[3] = timeout_ms;
    block[4] = result;
    __atomic_thread_fence(__ATOMIC_SEQ_CST);
  }
}

// One lane's NCCL communicator and its watchdog.
class NcclLane final : public LaneResource {
 public:
  explicit NcclLane(const LaneInfo& lane) : device_(lane.device) {
    std::shared_ptr<Group> group = default_group();
    rank_ = group ? group->rank() : 0;
    world_ = group ? group->world_size() : 1;
    timeout_ = group ? group->timeout() : std::chrono::minutes(5);
    const int64_t generation = communicators_made++;
    ncclUniqueId id;
    if (rank_ == 0) check(nccl().ncclGetUniqueId(&id), "ncclGetUniqueId");
    if (world_ > 1) {
      KILN_CHECK(group->store() != nullptr, DistributedError, where(), "no rendezvous store");
      const std::string key = str("nccl/", generation);
      if (rank_ == 0) {
        group->store()->set(key, std::string(reinterpret_cast<const char*>(&id), sizeof(id)));
      } else {
        group->store()->wait({key}, timeout_);
        const std::string bytes = group->store()->get(key);
        KILN_CHECK(bytes.size() == sizeof(id), DistributedError, where(), "the NCCL id under '",
                   key, "' has ", bytes.size(), " bytes, not ", sizeof(id));
        std::memcpy(&id, bytes.data(), sizeof(id));
      }
    }
    if (cudaSetDevice(device_.index) != cudaSuccess)
      throw DeviceError(str(where(), "cannot select ", device_));
    ncclConfig_t config = NCCL_CONFIG_INITIALIZER;
    config.blocking = 0;  // calls return ncclInProgress instead of blocking: see finish()
    ncclResult_t result = nccl().ncclCommInitRankConfig(&comm_, static_cast<int>(world_), id,
                                                        static_cast<int>(rank_), &config);
    finish(result, "ncclCommInitRankConfig (meeting the other ranks)");
    watchdog_ = std::thread([this] { watch(); });
  }

  ~NcclLane() override {
    {
      std::lock_guard<std::mutex> lock(mutex_);
      stopping_ = true;
    }
    changed_.notify_all();
    if (watchdog_.joinable()) watchdog_.join();
    bool unfinished = false;
    for (const Pending& p : pending_) {
      unfinished |= cudaEventQuery(p.done) != cudaSuccess;
      cudaEventDestroy(p.done);
    }
    // A communicator that failed, or whose work never finished, is aborted, never waited on.
    if (comm_ && !aborted_) {
      if (failed_ || unfinished)
        nccl().ncclCommAbort(comm_);
      else
        nccl().ncclCommDestroy(comm_);
    }
  }

  /// Queues one collective on `stream` (the lane's), then hands it to the watchdog.
  template <typename F>
  void run(const KernelContext& ctx, const char* what, F&& call) {
    KILN_CHECK(!failed_, DistributedError, ctx.where(), ": rank ", rank_, " of ", world_,
               ": NCCL communicator was aborted after an earlier collective failed");
    auto* stream = static_cast<cudaStream_t>(ctx.stream());
    finish(call(comm_, stream), what);
    cudaStreamCaptureStatus capture = cudaStreamCaptureStatusNone;
    cudaStreamIsCapturing(stream, &capture);
    if (capture != cudaStreamCaptureStatusNone) return;  // a CUDA Graph: replayed, not watched
    cudaEvent_t done = nullptr;
    if (cudaEventCreateWithFlags(&done, cudaEventDisableTiming) != cudaSuccess ||
        cudaEventRecord(done, stream) != cudaSuccess)
      throw DeviceError(str(ctx.where(), ": cannot record the end of ", what));
    {
      std::lock_guard<std::mutex> lock(mutex_);
      pending_.push_back({done, std::chrono::steady_clock::now() + timeout_,
                          ctx.cuda()->error_block, ctx.cuda()->step});
    }
    changed_.notify_all();
  }

  int64_t world_size() const { return world_; }

 private:
  struct Pending {
    cudaEvent_t done;
    std::chrono::steady_clock::time_point deadline;
    int64_t* error_block;
    int64_t step;
  };

  std::string where() const {
    return str("[nccl] rank ", rank_, " of ", world_, " on ", device_, ": ");
  }

  void check(ncclResult_t result, const char* what) const {
    if (result != ncclSuccess && result != ncclInProgress)
      throw DistributedError(str(where(), what, " failed: ", nccl().ncclGetErrorString(result)));
  }

  // With a non-blocking communicator a call may return ncclInProgress: it is done when the
  // communicator's asynchronous state leaves ncclInProgress; past the timeout it is aborted.
  void finish(ncclResult_t result, const char* what) {
    check(result, what);
    const auto deadline = std::chrono::steady_clock::now() + timeout_;
    while (result == ncclInProgress) {
      if (std::chrono::steady_clock::now() > deadline) {
        failed_ = true;
        throw DistributedError(str(where(), what, " did not finish within ", timeout_.count(),
                                   " ms (a peer is missing or stuck)"));
      }
      std::this_thread::yield();
      check(nccl().ncclCommGetAsyncError(comm_, &result), "ncclCommGetAsyncError");
    }
    if (result != ncclSuccess) {
      failed_ = true;
      throw DistributedError(str(where(), what, " failed: ", nccl().ncclGetErrorString(result)));
    }
  }

  // Polls the queued collectives: finished ones are dropped; one past its deadline, or an
  // asynchronous error, aborts the communicator and is reported to the executor.
  void watch() {
    cudaSetDevice(device_.index);
    std::unique_lock<std::mutex> lock(mutex_);
    while (!stopping_) {
      changed_.wait_for(lock, std::chrono::milliseconds(10));
      while (!pending_.empty() && cudaEventQuery(pending_.front().done) == cudaSuccess) {
        cudaEventDestroy(pending_.front().done);
        pending_.pop_front();
      }
      if (pending_.empty() || failed_) continue;
      ncclResult_t async = ncclSuccess;
      nccl().ncclCommGetAsyncError(comm_, &async);
      const bool late = std::chrono::steady_clock::now() > pending_.front().deadline;
      if (!late && (async == ncclSuccess || async == ncclInProgress)) continue;
      failed_ = true;
      nccl().ncclCommAbort(comm_);  // its kernels end: the stream goes on
      aborted_ = true;
      const Pending& p = pending_.front();
      report_failure(p.error_block, p.step, rank_, timeout_.count(), static_cast<int64_t>(async));
    }
  }

  Device device_;
  int64_t rank_ = 0, world_ = 1;
  std::chrono::milliseconds timeout_;
  ncclComm_t comm_ = nullptr;
  std::atomic<bool> failed_{false};
  bool aborted_ = false;  // by the watchdog (under mutex_)
  std::mutex mutex_;
  std::condition_variable changed_;
  std::deque<Pending> pending_;
  bool stopping_ = false;
  std::thread watchdog_;
};

ncclDataType_t nccl_type(DType dtype) {
  switch (dtype) {
    case DType::f32:
      return ncclFloat32;
    case DType::f64:
      return ncclFloat64;
    case DType::f16:
      return ncclFloat16;
    case DType::bf16:
      return ncclBfloat16;
    case DType::i32:
      return ncclInt32;
    case DType::i64:
      return ncclInt64;
    case DType::u8:
    case DType::boolean:
      return ncclUint8;
  }
  return ncclUint8;
}

// bool travels as bytes of 0 and 1: "or" is max, "and" is min. In a world of one rank avg is
// sum: NCCL's one-rank avg kernel (ncclLaunchOneRank, a pre-multiplied sum) splits the count
// into at most 32 segments of 16-byte packs, each floor(n / blocks) rounded up to a pack, and
// never writes the tail beyond the last one (f32, n = 100003: 25 blocks of 4000, the last 3
// elements left as they were), while its plain copy, taken for sum, is whole.
ncclRedOp_t nccl_op(ReduceOp op, DType dtype, int64_t world) {
  if (dtype == DType::boolean) return op == ReduceOp::min ? ncclMin : ncclMax;
  if (op == ReduceOp::avg && world == 1) return ncclSum;
  switch (op) {
    case ReduceOp::sum:
      return ncclSum;
    case ReduceOp::avg:
      return ncclAvg;
    case ReduceOp::max:
      return ncclMax;
    case ReduceOp::min:
      return ncclMin;
  }
  return ncclSum;
}

// A world of one rank needs no transport: the collectives are copies (so a one-GPU program
// never loads NCCL), unless KILN_NCCL_SINGLE_RANK=1 asks for NCCL anyway (how the GPU tests
// run NCCL on one GPU).
bool single_rank_copies() {
  std::shared_ptr<Group> group = default_group();
  if (group && group->world_size() > 1) return false;
  const char* force = std::getenv("KILN_NCCL_SINGLE_RANK");
  return !(force && std::string(force) == "1");
}

void copy_on_stream(const KernelContext& ctx, const Tensor& x, Tensor& y) {
  if (x.nbytes() == 0) return;
  if (cudaMemcpyAsync(y.raw_data(), x.raw_data(), x.nbytes(), cudaMemcpyDeviceToDevice,
                      static_cast<cudaStream_t>(ctx.stream())) != cudaSuccess)
    throw DeviceError(str(ctx.where(), ": cannot copy ", x.nbytes(), " bytes"));
}

// The world a node was built for (all_gather, reduce_scatter) must be the run's.
void check_world(const KernelContext& ctx, int64_t built_world) {
  std::shared_ptr<Group> group = default_group();
  const int64_t world = group ? group->world_size() : 1;
  KILN_CHECK(built_world == world, DistributedError, ctx.where(), ": built for a world of ",
             built_world, " ranks, run in one of ", world);
}

NcclLane& lane_for(const KernelContext& ctx) {
  return ctx.lane_resource<NcclLane>();
}

void all_reduce_cuda(KernelContext& ctx) {
  const Tensor& x = ctx.input(0);
  Tensor& y = ctx.output(0);
  if (single_rank_copies()) return copy_on_stream(ctx, x, y);
  if (x.numel() == 0) return;
  const ReduceOp op = parse_reduce_op(ctx.attr<std::string>("reduction"));
  NcclLane& lane = lane_for(ctx);
  lane.run(ctx, "ncclAllReduce", [&](ncclComm_t comm, cudaStream_t stream) {
    return nccl().ncclAllReduce(x.raw_data(), y.raw_data(), static_cast<size_t>(x.numel()),
                                nccl_type(x.dtype()), nccl_op(op, x.dtype(), lane.world_size()),
                                comm, stream);
  });
}

void broadcast_cuda(KernelContext& ctx) {
  const Tensor& x = ctx.input(0);
  Tensor& y = ctx.output(0);
  if (single_rank_copies()) {
    KILN_CHECK(ctx.attr<int64_t>("root") == 0, DistributedError, ctx.where(), ": root ",
               ctx.attr<int64_t>("root"), " is outside a world of 1");
    return copy_on_stream(ctx, x, y);
  }
  NcclLane& lane = lane_for(ctx);
  const int64_t root = ctx.attr<int64_t>("root");
  KILN_CHECK(root < lane.world_size(), DistributedError, ctx.where(), ": root ", root,
             " is outside a world of ", lane.world_size());
  if (x.numel() == 0) return;
  lane.run(ctx, "ncclBroadcast", [&](ncclComm_t comm, cudaStream_t stream) {
    return nccl().ncclBroadcast(x.raw_data(), y.raw_data(), x.nbytes(), ncclUint8,
                                static_cast<int>(root), comm, stream);
  });
}

void all_gather_cuda(KernelContext& ctx) {
  const Tensor& x = ctx.input(0);
  Tensor& y = ctx.output(0);
  check_world(ctx, ctx.attr<int64_t>("world_size"));
  if (single_rank_copies()) return copy_on_stream(ctx, x, y);
  NcclLane& lane = lane_for(ctx);
  if (x.numel() == 0) return;
  lane.run(ctx, "ncclAllGather", [&](ncclComm_t comm, cudaStream_t stream) {
    return nccl().ncclAllGather(x.raw_data(), y.raw_data(), x.nbytes(), ncclUint8, comm, stream);
  });
}

void reduce_scatter_cuda(KernelContext& ctx) {
  const Tensor& x = ctx.input(0);
  Tensor& y = ctx.output(0);
  check_world(ctx, ctx.attr<int64_t>("world_size"));
  if (single_rank_copies()) return copy_on_stream(ctx, x, y);
  NcclLane& lane = lane_for(ctx);
  if (y.numel() == 0) return;
  const ReduceOp op = parse_reduce_op(ctx.attr<std::string>("reduction"));
  lane.run(ctx, "ncclReduceScatter", [&](ncclComm_t comm, cudaStream_t stream) {
    return nccl().ncclReduceScatter(x.raw_data(), y.raw_data(), static_cast<size_t>(y.numel()),
                                    nccl_type(x.dtype()), nccl_op(op, x.dtype(), lane.world_size()),
                                    comm, stream);
  });
}

KILN_CUDA_KERNEL(all_reduce, all_reduce_cuda);
KILN_CUDA_KERNEL(broadcast, broadcast_cuda);
KILN_CUDA_KERNEL(all_gather, all_gather_cuda);
KILN_CUDA_KERNEL(reduce_scatter, reduce_scatter_cuda);

}  // namespace

}  // namespace kiln::distributed
