// The Gloo communicator: Kiln's store adapted to Gloo's rendezvous, one full mesh of TCP pairs,
// and each collective as Gloo's algorithm with Kiln's dtypes and reductions.
#include <gloo/allgather.h>
#include <gloo/allreduce.h>
#include <gloo/barrier.h>
#include <gloo/broadcast.h>
#include <gloo/common/error.h>
#include <gloo/rendezvous/context.h>
#include <gloo/rendezvous/store.h>
#include <gloo/transport/tcp/device.h>
#include <gloo/transport/unbound_buffer.h>
#include <gloo/types.h>

#include <cstring>

#include "kiln/distributed/communicator.h"
#include "kiln/framework/dtype.h"
#include "kiln/framework/error.h"

namespace kiln::distributed {

namespace {

// Gloo's rendezvous through Kiln's store, keys under a prefix.
class GlooStore final : public gloo::rendezvous::Store {
 public:
  GlooStore(distributed::Store& store, std::string prefix, std::chrono::milliseconds timeout)
      : store_(store), prefix_(std::move(prefix) + "/"), timeout_(timeout) {}
  void set(const std::string& key, const std::vector<char>& data) override {
    store_.set(prefix_ + key, std::string(data.begin(), data.end()));
  }
  std::vector<char> get(const std::string& key) override {
    store_.wait({prefix_ + key}, timeout_);
    const std::string value = store_.get(prefix_ + key);
    return std::vector<char>(value.begin(), value.end());
  }
  void wait(const std::vector<std::string>& keys) override { wait(keys, timeout_); }
  void wait(const std::vector<std::string>& keys,
            const std::chrono::milliseconds& timeout) override {
    std::vector<std::string> full;
    for (const std::string& k : keys) full.push_back(prefix_ + k);
    store_.wait(full, timeout);
  }

 private:
  distributed::Store& store_;
  std::string prefix_;
  std::chrono::milliseconds timeout_;
};

// The slot prefix of Kiln's own ring reduce-scatter (Gloo's collectives use 0x01 to 0x08).
constexpr uint8_t kReduceScatterSlotPrefix = 0x20;

// The bytes of a reduce-scatter segment: received and added while the next ones travel.
constexpr size_t kSegmentBytes = 1024 * 1024;

// out[i] = a[i] (op) b[i] for n elements of T, as Gloo's reduce function (avg sums: the
// division comes after).
template <typename T>
void combine(void* out, const void* a, const void* b, size_t n, ReduceOp op) {
  auto* o = static_cast<T*>(out);
  const auto* x = static_cast<const T*>(a);
  const auto* y = static_cast<const T*>(b);
  if constexpr (std::is_same_v<T, float> || std::is_same_v<T, double>) {
    if (op == ReduceOp::sum || op == ReduceOp::avg) {  // the common case, in vectors
      for (size_t i = 0; i < n; ++i) o[i] = x[i] + y[i];
      return;
    }
  }
  for (size_t i = 0; i < n; ++i) {
    if constexpr (std::is_same_v<T, bool>) {
      o[i] = op == ReduceOp::min ? (x[i] && y[i]) : (x[i] || y[i]);
    } else if constexpr (std::is_integral_v<T>) {
      using U = std::make_unsigned_t<T>;  // sums wrap, as Kiln's integer adds do
      o[i] = op == ReduceOp::max   ? std::max(x[i], y[i])
             : op == ReduceOp::min ? std::min(x[i], y[i])
                                   : static_cast<T>(static_cast<U>(x[i]) + static_cast<U>(y[i]));
    } else {
      // Floats (16-bit ones through float). NaN wins max and min, as Kiln's maximum does.
      const float xf = convert<float>(x[i]), yf = convert<float>(y[i]);
      const double xd = convert<double>(x[i]), yd = convert<double>(y[i]);
      if (op == ReduceOp::max)
        o[i] = (xd != xd || xd > yd) ? x[i] : y[i];
      else if (op == ReduceOp::min)
        o[i] = (xd != xd || xd < yd) ? x[i] : y[i];
      else if constexpr (sizeof(T) == 2)
        o[i] = convert<T>(xf + yf);
      else
        o[i] = x[i] + y[i];
    }
  }
}

class GlooCommunicator final : public Communicator {
 public:
  GlooCommunicator(distributed::Store& store, int64_t rank, int64_t world,
                   std::chrono::milliseconds timeout, const std::string& prefix)
      : rank_(rank), world_(world), timeout_(timeout) {
    KILN_CHECK(world >= 1 && rank >= 0 && rank < world, DistributedError, "[gloo] rank ", rank,
               " is outside a world of ", world);
    try {
      gloo::transport::tcp::attr attr;
      attr.hostname = "";  // Gloo picks this host's address
      device_ = gloo::transport::tcp::CreateDevice(attr);
      context_ = std::make_shared<gloo::rendezvous::Context>(static_cast<int>(rank),
                                                             static_cast<int>(world));
      context_->setTimeout(timeout);
      GlooStore gloo_store(store, prefix, timeout);
      context_->connectFullMesh(gloo_store, device_);
    } catch (const DistributedError& e) {
      throw DistributedError(
          str("[gloo] rank ", rank, " of ", world, ": the peers did not all connect: ", e.what()));
    } catch (const ::gloo::Exception& e) {
      throw DistributedError(str("[gloo] rank ", rank, " of ", world,
                                 ": could not connect to every peer: ", e.what()));
    }
  }

  int64_t rank() const override { return rank_; }
  int64_t world_size() const override { return world_; }

  void all_reduce(Tensor& tensor, ReduceOp op) override {
    check_host(tensor, "all_reduce");
    KILN_CHECK(op != ReduceOp::avg || is_floating(tensor.dtype()), DistributedError,
               "[gloo] all_reduce: avg of ", tensor.dtype(), " (an integer dtype) is not defined");
    if (tensor.numel() == 0 || world_ == 1) return;
    run("all_reduce", [&] {
      dispatch_all(tensor.dtype(), [&](auto tag) {
        using T = decltype(tag);
        gloo::AllreduceOptions options(context_);
        T* data = tensor.data<T>();
        options.setInputs(&data, 1, static_cast<size_t>(tensor.numel()));
        options.setOutputs(&data, 1, static_cast<size_t>(tensor.numel()));
        options.setReduceFunction([op](void* out, const void* a, const void* b, size_t n) {
          combine<T>(out, a, b, n, op);
        });
        options.setTag(next_tag());
        options.setTimeout(timeout_);
        gloo::allreduce(options);
      });
    });
    if (op == ReduceOp::avg) divide(tensor);
  }

  void broadcast(Tensor& tensor, int64_t root) override {
    check_host(tensor, "broadcast");
    KILN_CHECK(root >= 0 && root < world_, DistributedError, "[gloo] broadcast: root ", root,
               " is outside a world of ", world_);
    if (tensor.numel() == 0 || world_ == 1) return;
    run("broadcast", [&] {
      gloo::BroadcastOptions options(context_);
      auto* bytes = static_cast<uint8_t*>(tensor.raw_data());
      if (rank_ == root) options.setInput(bytes, tensor.nbytes());
      options.setOutput(bytes, tensor.nbytes());
      options.setRoot(static_cast<int>(root));
      options.setTag(next_tag());
      options.setTimeout(timeout_);
      gloo::broadcast(options);
    });
  }

  Tensor all_gather(const Tensor& tensor) override {
    check_host(tensor, "all_gather");
    std::vector<int64_t> dims = {world_};
    for (int64_t d : tensor.shape()) dims.push_back(d);
    Tensor out = Tensor::empty(tensor.dtype(), Shape(dims));
    if (tensor.numel() == 0) return out;
    if (world_ == 1) {
      std::memcpy(out.raw_data(), tensor.raw_data(), tensor.nbytes());
      return out;
    }
    run("all_gather", [&] {
      gloo::AllgatherOptions options(context_);
      options.setInput(static_cast<uint8_t*>(tensor.raw_data()), tensor.nbytes());
      options.setOutput(static_cast<uint8_t*>(out.raw_data()), out.nbytes());
      options.setTag(next_tag());
      options.setTimeout(timeout_);
      gloo::allgather(options);
    });
    return out;
  }

  // A ring: in step s (of world - 1) each rank sends its running sum of chunk (r - s - 1) to
  // rank r + 1 and adds what rank r - 1 sends into its chunk (r - s - 2); after the last step
  // rank r holds chunk r reduced over every rank. Each rank sends and receives (world - 1) /
  // world of the tensor, half of what an all-reduce moves. Chunk c is reduced in one fixed
  // order, starting from rank c + 1's values: (x[c+1] + x[c+2]) + ... + x[c], the same bits
  // every run. A step's chunk travels in segments, each added as it arrives while the next
  // ones are still on the way.
  Tensor reduce_scatter(const Tensor& tensor, ReduceOp op) override {
    check_host(tensor, "reduce_scatter");
    KILN_CHECK(tensor.rank() >= 1 && tensor.shape()[0] % world_ == 0, DistributedError,
               "[gloo] reduce_scatter: the leading dim of ", tensor.dtype(), tensor.shape(),
               " is not a multiple of the world size ", world_);
    KILN_CHECK(op != ReduceOp::avg || is_floating(tensor.dtype()), DistributedError,
               "[gloo] reduce_scatter: avg of ", tensor.dtype(),
               " (an integer dtype) is not defined");
    std::vector<int64_t> dims(tensor.shape().begin(), tensor.shape().end());
    dims[0] /= world_;
    Tensor part = Tensor::empty(tensor.dtype(), Shape(dims));
    const size_t chunk = part.nbytes();
    if (chunk == 0) return part;
    if (world_ == 1) {
      std::memcpy(part.raw_data(), tensor.raw_data(), chunk);
      return part;
    }
    const size_t element = dtype_size(tensor.dtype());
    const size_t segment = std::max(element, kSegmentBytes / element * element);
    // The running sums a step makes and the next one sends, in two buffers taken in turns (a
    // step writes one while the other may still be going out); the last step writes `part`.
    // Uninitialized: every byte is received or written before it is read.
    std::unique_ptr<char[]> incoming(new char[chunk]), sums[2];
    for (int64_t k = 0; k < 2 && k + 2 < world_; ++k) sums[k].reset(new char[chunk]);
    auto chunk_at = [&](int64_t c) {
      return static_cast<size_t>(((c % world_) + world_) % world_);
    };
    run("reduce_scatter", [&] {
      const auto* input = static_cast<const char*>(tensor.raw_data());
      // Gloo's buffers take non-const pointers; the input is only ever sent from.
      auto input_buffer = context_->createUnboundBuffer(const_cast<char*>(input), tensor.nbytes());
      auto incoming_buffer = context_->createUnboundBuffer(incoming.get(), chunk);
      std::unique_ptr<gloo::transport::UnboundBuffer> sums_buffer[2];
      for (int k = 0; k < 2; ++k)
        if (sums[k]) sums_buffer[k] = context_->createUnboundBuffer(sums[k].get(), chunk);
      const int next = static_cast<int>((rank_ + 1) % world_);
      const int previous = static_cast<int>((rank_ + world_ - 1) % world_);
      const uint64_t slot = gloo::Slot::build(kReduceScatterSlotPrefix, next_tag());
      for (int64_t s = 0; s + 1 < world_; ++s) {
        // Step 0 sends this rank's own values; later steps the sums the step before made.
        auto& source = s == 0 ? input_buffer : sums_buffer[(s + 1) % 2];
        const size_t source_offset = s == 0 ? chunk_at(rank_ - 1) * chunk : 0;
        // The receives are posted first, so that what arrives lands in place (data that
        // arrives before its receive is buffered by the transport and copied again).
        size_t segments = 0;
        for (size_t at = 0; at < chunk; at += segment, ++segments)
          incoming_buffer->recv(previous, slot, at, std::min(segment, chunk - at));
        for (size_t at = 0; at < chunk; at += segment)
          source->send(next, slot, source_offset + at, std::min(segment, chunk - at));
        const char* own = input + chunk_at(rank_ - s - 2) * chunk;
        char* into = s + 2 == world_ ? static_cast<char*>(part.raw_data()) : sums[s % 2].get();
        for (size_t at = 0; at < chunk; at += segment) {
          KILN_CHECK(incoming_buffer->waitRecv(timeout_), DistributedError, "[gloo] rank ", rank_,
                     " of ", world_, ": reduce_scatter's receive from rank ", previous,
                     " was aborted");
          const size_t bytes = std::min(segment, chunk - at);
          dispatch_all(tensor.dtype(), [&](auto tag) {
            using T = decltype(tag);
            combine<T>(into + at, incoming.get() + at, own + at, bytes / sizeof(T), op);
          });
        }
        // The next step overwrites `incoming`, and the one after it this step's source.
        for (size_t k = 0; k < segments; ++k)
          KILN_CHECK(source->waitSend(timeout_), DistributedError, "[gloo] rank ", rank_, " of ",
                     world_, ": reduce_scatter's send to rank ", next, " was aborted");
      }
    });
    if (op == ReduceOp::avg) divide(part);
    return part;
  }

  void barrier() override {
    if (world_ == 1) return;
    run("barrier", [&] {
      gloo::BarrierOptions options(context_);
      options.setTag(next_tag());
      options.setTimeout(timeout_);
      gloo::barrier(options);
    });
  }

 private:
  void check_host(const Tensor& tensor, const char* what) const {
    KILN_CHECK(tensor.defined() && tensor.device().is_cpu(), DistributedError, "[gloo] ", what,
               ": Gloo takes defined host tensors (use NCCL for GPU tensors)");
  }

  // Runs a collective; the transport's errors become Kiln's, naming rank and collective.
  template <typename F>
  void run(const char* what, F&& collective) {
    try {
      collective();
    } catch (const ::gloo::Exception& e) {
      throw DistributedError(str("[gloo] rank ", rank_, " of ", world_, ": ", what,
                                 " failed (a peer died, hung past ", timeout_.count(),
                                 " ms, or called another collective): ", e.what()));
    }
  }

  void divide(Tensor& tensor) const {
    dispatch_all(tensor.dtype(), [&](auto tag) {
      using T = decltype(tag);
      if constexpr (!std::is_integral_v<T>) {
        T* data = tensor.data<T>();
        for (int64_t i = 0; i < tensor.numel(); ++i)
          data[i] = convert<T>(convert<double>(data[i]) / static_cast<double>(world_));
      }
    });
  }

  uint32_t next_tag() { return tag_++; }

  int64_t rank_, world_;
  std::chrono::milliseconds timeout_;
  std::shared_ptr<gloo::transport::Device> device_;
  std::shared_ptr<gloo::rendezvous::Context> context_;
  uint32_t tag_ = 0;
};

}  // namespace

std::unique_ptr<Communicator> make_gloo_communicator(Store& store, int64_t rank, int64_t world_size,
                                                     std::chrono::milliseconds timeout,
                                                     const std::string& prefix) {
  return std::make_unique<GlooCommunicator>(store, rank, world_size, timeout, prefix);
}

}  // namespace kiln::distributed
