// Distributed benchmarks, run under kiln-launch (bench/distributed.sh runs them beside PyTorch):
//   distributed_bench busbw [--device cpu|cuda]   all-reduce of f32 buffers from 4 KiB to 64 MiB,
//       nccl-tests' definitions: algbw = bytes / time, busbw = algbw * 2 (n - 1) / n; on the
//       CPU then reduce-scatter ("rsbw" lines; busbw = algbw * (n - 1) / n)
//   distributed_bench dp_step [--threads N] [--trace FILE] [--compress bf16|f16]
//       [--power-sgd R] [--bucket-mib M]   the data-parallel MLP 784-512-512-10 step (SGD +
//       momentum, global batch 128 split over the ranks), median ms; --trace writes rank 0's Chrome
//       trace of one step (the all-reduce on its own stream); --compress all-reduces the gradients
//       in 16 bits, --power-sgd sends the matrices' gradients as PowerSGD of rank R; buckets of M
//       MiB (default 1)
//   distributed_bench adam_step [--threads N] [--trace FILE] [--hidden N] [--bucket-mib M]   the
//       same MLP with Adam (or N hidden layers of 512; buckets of M MiB, default 1), its
//       optimizer state
//       replicated, then sharded over the ranks (ZeRO stage 1), then with the gradients
//       reduce-scattered too (stage 2): median ms and the bytes of optimizer state each rank
//       holds; --trace writes rank 0's trace of 3 steps of each to FILE.stage<k>.json
// Rank 0 prints one line per measurement.
#include <kiln/kiln.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <vector>

#include "bench/mlp_model.h"

using namespace kiln;

namespace {

double now_ms() {
  return std::chrono::duration<double, std::milli>(
             std::chrono::steady_clock::now().time_since_epoch())
      .count();
}

// The median of `reps` timed calls of fn after `warmup` untimed ones; every rank times the
// same calls, and rank 0's median is reported.
template <typename F>
double median_ms(int warmup, int reps, F fn) {
  for (int i = 0; i < warmup; ++i) fn();
  std::vector<double> t;
  for (int i = 0; i < reps; ++i) {
    const double start = now_ms();
    fn();
    t.push_back(now_ms() - start);
  }
  std::sort(t.begin(), t.end());
  return t[t.size() / 2];
}

void busbw(distributed::Group& group, Device device) {
  const int64_t world = group.world_size();
  if (group.rank() == 0)
    std::printf("# all_reduce f32 on %s, %lld ranks\n# %12s %12s %12s %12s\n",
                device.to_string().c_str(), static_cast<long long>(world), "bytes", "time_us",
                "algbw_GB/s", "busbw_GB/s");
  for (int64_t bytes = 4096; bytes <= (int64_t{64} << 20); bytes *= 4) {
    const int64_t n = bytes / 4;
    double ms = 0;
    if (device.is_cpu()) {
      Tensor t = Tensor::full(f32, {n}, 1.0);
      ms = median_ms(3, bytes >= (16 << 20) ? 10 : 30,
                     [&] { group.communicator().all_reduce(t, distributed::ReduceOp::sum); });
    } else {
      // The graph op on the GPU: NCCL on the communication stream (feeds and fetches kept on
      // the device side small: the op's output is reduced to one element fetched).
      Graph g;
      Value x = g.variable("x", {n}, init::constant(1.0));
      Value y = distributed::all_reduce(x, distributed::ReduceOp::sum);
      Value probe = slice(y, {0}, {1});
      Session s(g, {.device = device});
      ms = median_ms(3, 20, [&] { s.run({}, {probe}); });
    }
    const double algbw = static_cast<double>(bytes) / (ms * 1e-3) / 1e9;
    const double bus = algbw * 2.0 * static_cast<double>(world - 1) / static_cast<double>(world);
    if (group.rank() == 0)
      std::printf("busbw %12lld %12.1f %12.3f %12.3f\n", static_cast<long long>(bytes), ms * 1e3,
                  algbw, bus);
  }
  if (!device.is_cpu()) return;
  // reduce_scatter (sum) over Gloo, nccl-tests' definitions: algbw = input bytes / time,
  // busbw = algbw * (n - 1) / n.
  for (int64_t bytes = 4096 * world; bytes <= (int64_t{64} << 20); bytes *= 4) {
    const Tensor t = Tensor::full(f32, {bytes / 4}, 1.0);
    const double ms = median_ms(3, bytes >= (16 << 20) ? 10 : 30, [&] {
      group.communicator().reduce_scatter(t, distributed::ReduceOp::sum);
    });
    const double algbw = static_cast<double>(bytes) / (ms * 1e-3) / 1e9;
    const double bus = algbw * static_cast<double>(world - 1) / static_cast<double>(world);
    if (group.rank() == 0)
      std::printf("rsbw %12lld %12.1f %12.3f %12.3f\n", static_cast<long long>(bytes), ms * 1e3,
                  algbw, bus);
  }
}

// This rank's fixed batch of `batch` MNIST-sized rows and labels (torch_ddp_bench.py's).
std::pair<Tensor, Tensor> rank_batch(int64_t rank, int64_t batch) {
  Tensor xb = Tensor::empty(f32, {batch, 784});
  for (int64_t i = 0; i < xb.numel(); ++i)
    xb.data<float>()[i] = static_cast<float>(((i + rank) * 7919) % 255) / 255.0f;
  Tensor yb = Tensor::empty(i64, {batch});
  for (int64_t i = 0; i < batch; ++i) yb.data<int64_t>()[i] = i % 10;
  return {xb, yb};
}

// Every rank starts from rank 0's variables; then the median ms of `train` on `rows`.
double median_train_ms(Graph& g, const Value& x, const Value& y, const Value& train,
                       const std::pair<Tensor, Tensor>& rows, int threads) {
  Session s(g, {.intra_op_threads = threads});
  s.run({}, {}, {distributed::broadcast_variables(g)});
  return median_ms(10, 60, [&] { s.run({{x, rows.first}, {y, rows.second}}, {}, {train}); });
}

void dp_step(distributed::Group& group, int threads, const std::string& trace,
             std::optional<DType> compression, int64_t power_sgd_rank, int64_t bucket_bytes) {
  const int64_t world = group.world_size(), batch = 128 / world;
  Graph g;
  Value x = g.placeholder("x", f32, {-1, 784});
  Value y = g.placeholder("y", i64, {-1});
  Value loss = bench::mlp_loss(g, x, y);
  optim::SGD sgd({.lr = 0.01, .momentum = 0.9});
  // Buckets of 1 MiB by default (the model is 2.6 MB of gradients): all-reduces to overlap.
  std::optional<distributed::PowerSgdOptions> power_sgd;
  if (power_sgd_rank > 0) power_sgd = distributed::PowerSgdOptions{.rank = power_sgd_rank};
  auto dp = distributed::data_parallel(
      sgd.compute_gradients(loss),
      {.bucket_bytes = bucket_bytes, .compression = compression, .power_sgd = power_sgd});
  Value train = dp.apply(sgd);
  const auto rows = rank_batch(group.rank(), batch);
  const Tensor &xb = rows.first, &yb = rows.second;
  const double ms = median_train_ms(g, x, y, train, rows, threads);
  if (group.rank() == 0)
    std::printf("dp_step world=%lld threads=%d batch_per_rank=%lld buckets=%zu wire=%s %.3f ms\n",
                static_cast<long long>(world), threads, static_cast<long long>(batch),
                dp.buckets.size(),
                power_sgd ? str("powersgd", power_sgd_rank).c_str()
                          : std::string(dtype_name(dp.buckets[0].wire_dtype)).c_str(),
                ms);
  if (!trace.empty() && group.rank() == 0) {
    Session traced(g, {.intra_op_threads = threads, .trace_path = trace});
    for (int i = 0; i < 3; ++i) traced.run({{x, xb}, {y, yb}}, {}, {train});
    traced.write_trace(trace);
  } else if (!trace.empty()) {
    Session peer(g, {.intra_op_threads = threads});  // runs rank 0's traced steps with it
    for (int i = 0; i < 3; ++i) peer.run({{x, xb}, {y, yb}}, {}, {train});
  }
}

// The MLP's data-parallel Adam step, unsharded and sharded (ZeRO stage 1, then 2): each line
// gives the median step and rank 0's optimizer state (its rank-local slots when sharded; Adam's
// m and v otherwise).
// An MLP 784 -> `hidden` layers of 512 -> 10 (mlp_loss's for 2).
Value deep_mlp_loss(Graph& g, const Value& x, const Value& y, int hidden) {
  Value h = x;
  for (int layer = 0; layer <= hidden; ++layer) {
    const int64_t units = layer == hidden ? 10 : 512;
    Value w = g.variable(str("l", layer + 1, "/w"), {h.shape()[1], units}, init::he_normal(layer));
    Value b = g.variable(str("l", layer + 1, "/b"), {units}, init::zeros());
    h = matmul(h, w) + b;
    if (layer < hidden) h = relu(h);
  }
  return mean(softmax_cross_entropy(h, y));
}

void adam_step(distributed::Group& group, int threads, const std::string& trace, int hidden,
               int64_t bucket_bytes) {
  const int64_t world = group.world_size(), batch = 128 / world;
  for (int stage : {0, 1, 2}) {
    Graph g;
    Value x = g.placeholder("x", f32, {-1, 784});
    Value y = g.placeholder("y", i64, {-1});
    Value loss = hidden == 2 ? bench::mlp_loss(g, x, y) : deep_mlp_loss(g, x, y, hidden);
    optim::Adam adam({.lr = 1e-3});
    auto dp = distributed::data_parallel(adam.compute_gradients(loss),
                                         {.bucket_bytes = bucket_bytes,
                                          .shard_optimizer_state = stage >= 1,
                                          .shard_gradients = stage == 2});
    Value train = dp.apply(adam);
    int64_t state_bytes = 0;
    for (const Value& v : g.variables())
      if (v.name().find("/adam_") != std::string::npos)
        state_bytes += v.shape().numel() * static_cast<int64_t>(dtype_size(v.dtype()));
    const auto rows = rank_batch(group.rank(), batch);
    const double ms = median_train_ms(g, x, y, train, rows, threads);
    if (group.rank() == 0)
      std::printf("adam_step world=%lld sharded=%d state_bytes=%lld %.3f ms\n",
                  static_cast<long long>(world), stage, static_cast<long long>(state_bytes), ms);
    if (!trace.empty()) {  // rank 0 traces 3 steps (the others run them beside it)
      const std::string path = str(trace, ".stage", stage, ".json");
      Session traced(
          g, {.intra_op_threads = threads, .trace_path = group.rank() == 0 ? path : std::string()});
      for (int i = 0; i < 3; ++i) traced.run({{x, rows.first}, {y, rows.second}}, {}, {train});
      if (group.rank() == 0) traced.write_trace(path);
    }
  }
}

}  // namespace

int main(int argc, char** argv) {
  try {
    if (argc < 2) throw Error("usage: distributed_bench busbw|dp_step|adam_step [options]");
    const std::string what = argv[1];
    Device device = Device::cpu();
    int threads = 1, hidden = 2;
    int64_t bucket_bytes = 1 << 20, power_sgd_rank = 0;
    std::string trace;
    std::optional<DType> compression;
    for (int i = 2; i + 1 < argc; i += 2) {
      const std::string flag = argv[i];
      if (flag == "--device")
        device = Device::parse(argv[i + 1]);
      else if (flag == "--threads")
        threads = std::atoi(argv[i + 1]);
      else if (flag == "--trace")
        trace = argv[i + 1];
      else if (flag == "--hidden")
        hidden = std::atoi(argv[i + 1]);
      else if (flag == "--bucket-mib")
        bucket_bytes = std::atoll(argv[i + 1]) << 20;
      else if (flag == "--power-sgd")
        power_sgd_rank = std::atoll(argv[i + 1]);
      else if (flag == "--compress")
        compression = dtype_from_name(argv[i + 1]);
      else
        throw Error(str("[distributed_bench] unknown option ", flag));
    }
    auto group = distributed::init({.timeout = std::chrono::seconds(120)});
    if (device.is_cuda() && group->world_size() > 1) device = Device::cuda(group->local_rank());
    if (what == "busbw")
      busbw(*group, device);
    else if (what == "dp_step")
      dp_step(*group, threads, trace, compression, power_sgd_rank, bucket_bytes);
    else if (what == "adam_step")
      adam_step(*group, threads, trace, hidden, bucket_bytes);
    else
      throw Error(str("[distributed_bench] unknown benchmark ", what));
    return 0;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "distributed_bench: %s\n", e.what());
    return 1;
  }
}
