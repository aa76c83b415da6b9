// NCCL on one GPU (CTest label `gpu`): one GPU cannot host two NCCL ranks, so these run a
// world of one rank through NCCL itself (KILN_NCCL_SINGLE_RANK=1; without it a world of one
// copies and never loads NCCL), and the data-parallel path on the GPU against the CPU.
#include <cstdlib>
#include <filesystem>

#include "gpu_test_util.h"
#include "kiln/distributed/checkpoint.h"
#include "tests/distributed/dp_model.h"

namespace kiln {
namespace {

// Sets KILN_NCCL_SINGLE_RANK=1 for the scope.
struct ForceNccl {
  ForceNccl() { ::setenv("KILN_NCCL_SINGLE_RANK", "1", 1); }
  ~ForceNccl() { ::unsetenv("KILN_NCCL_SINGLE_RANK"); }
};

TEST(Nccl, EveryCollectiveEveryDtypeAndSizeOnOneRank) {
  KILN_REQUIRE_GPU();
  ForceNccl force;
  for (DType dtype : {f32, f64, f16, bf16, i32, i64, u8, boolean}) {
    for (int64_t n : {int64_t{0}, int64_t{1}, int64_t{100003}}) {
      Graph g;
      Value x = g.placeholder("x", dtype, {n});
      std::vector<Value> outs = {distributed::all_reduce(x, distributed::ReduceOp::sum),
                                 distributed::all_reduce(x, distributed::ReduceOp::max),
                                 distributed::broadcast(x, 0),
                                 reshape(distributed::all_gather(x, 1), Shape({n})),
                                 distributed::reduce_scatter(x, distributed::ReduceOp::sum, 1)};
      if (is_floating(dtype)) {
        // NCCL's own one-rank avg leaves the tail of f32 [100003] unwritten: Kiln sums instead.
        outs.push_back(distributed::all_reduce(x, distributed::ReduceOp::avg));
        outs.push_back(distributed::reduce_scatter(x, distributed::ReduceOp::avg, 1));
      }
      Tensor in = testing::random_tensor(dtype, {n}, 0, 3, 7);
      Session s(g, {.device = Device::cuda(0)});
      auto got = s.run({{x, in}}, outs);
      for (size_t k = 0; k < got.size(); ++k)
        EXPECT_EQ(testing::values(got[k]), testing::values(in))
            << dtype << " [" << n << "] output " << k;
    }
  }
}

// The data-parallel MLP built with `options`, trained 4 steps on the GPU (NCCL on the
// communication stream) and on the CPU: every variable (weights, slots, PowerSGD's state)
// ends alike.
void expect_gpu_trains_as_cpu(const testing::DpModelOptions& options) {
  testing::DpModel gpu_model, cpu_model;
  testing::build_dp_model(gpu_model, options);
  testing::build_dp_model(cpu_model, options);
  Session gpu(gpu_model.g, {.device = Device::cuda(0)}), cpu(cpu_model.g);
  gpu.run({}, {}, {gpu_model.sync});
  cpu.run({}, {}, {cpu_model.sync});
  for (uint32_t step = 0; step < 4; ++step) {
    auto [xb, yb] = testing::dp_batch(16, step);
    gpu.run({{gpu_model.x, xb}, {gpu_model.y, yb}}, {}, {gpu_model.train});
    cpu.run({{cpu_model.x, xb}, {cpu_model.y, yb}}, {}, {cpu_model.train});
  }
  for (const Value& v : cpu_model.g.variables())
    testing::expect_near(testing::values(cpu.variable_value(v)),
                         gpu.variable_value(gpu_model.g.value(v.node().name())), 1e-4, 1e-4,
                         v.node().name());
}

// The data-parallel transform on the GPU trains as the CPU does.
TEST(Nccl, DataParallelTrainingOnTheGpuMatchesTheCpu) {
  KILN_REQUIRE_GPU();
  ForceNccl force;
  expect_gpu_trains_as_cpu({.bucket_bytes = 300});
}

// Sharded gradients (ZeRO stage 2) through NCCL: each bucket reduce-scattered, the norm and
// the overflow probe all-reduced, the variables gathered.
TEST(Nccl, ShardedGradientsWithClippingAndLossScalingOnTheGpuMatchTheCpu) {
  KILN_REQUIRE_GPU();
  ForceNccl force;
  expect_gpu_trains_as_cpu(
      {.bucket_bytes = 300, .shard_gradients = true, .clip_norm = 0.05, .loss_scaling = true});
}

// PowerSGD through NCCL: P and Q all-reduced on the communication stream, the projection and
// the error feedback on the GPU.
TEST(Nccl, PowerSgdOnTheGpuMatchesTheCpu) {
  KILN_REQUIRE_GPU();
  ForceNccl force;
  expect_gpu_trains_as_cpu(
      {.bucket_bytes = 300, .power_sgd = distributed::PowerSgdOptions{.rank = 2}});
}

// Gradients all-reduced in bf16 through NCCL, and SyncBatchNorm's all_gather of statistics,
// train on the GPU as on the CPU; a GPU session's checkpoint written through
// distributed::save_checkpoint restores on the CPU.
TEST(Nccl, CompressedGradientsSyncBatchNormAndCommittedCheckpointsOnTheGpu) {
  KILN_REQUIRE_GPU();
  ForceNccl force;
  {
    testing::DpModel gpu_model, cpu_model;
    testing::build_dp_model(gpu_model, {.bucket_bytes = 300, .compression = bf16});
    testing::build_dp_model(cpu_model, {.bucket_bytes = 300, .compression = bf16});
    Session gpu(gpu_model.g, {.device = Device::cuda(0)}), cpu(cpu_model.g);
    gpu.run({}, {}, {gpu_model.sync});
    for (uint32_t step = 0; step < 3; ++step) {
      auto [xb, yb] = testing::dp_batch(16, step);
      gpu.run({{gpu_model.x, xb}, {gpu_model.y, yb}}, {}, {gpu_model.train});
      cpu.run({{cpu_model.x, xb}, {cpu_model.y, yb}}, {}, {cpu_model.train});
    }
    // bf16 rounding of gradients that differ in their last f32 bits may round apart: one bf16
    // step (2^-8) of a gradient times the learning rate, per step.
    for (size_t i = 0; i < cpu_model.variables.size(); ++i)
      testing::expect_near(testing::values(cpu.variable_value(cpu_model.variables[i])),
                           gpu.variable_value(gpu_model.variables[i]), 1e-3, 1e-3,
                           cpu_model.variables[i].name());
  }
  testing::BnModel gpu_bn, cpu_bn;
  testing::build_bn_model(gpu_bn, /*sync_batch_norm=*/true, /*data_parallel=*/true);
  testing::build_bn_model(cpu_bn, true, true);
  Session gpu(gpu_bn.g, {.device = Device::cuda(0)}), cpu(cpu_bn.g);
  gpu.run({}, {}, {gpu_bn.sync});
  cpu.set_variables(gpu.variable_values());
  for (uint32_t step = 0; step < 3; ++step) {
    auto [xb, yb] = testing::bn_batch(16, step);
    gpu.run({{gpu_bn.x, xb}, {gpu_bn.y, yb}}, {}, {gpu_bn.train});
    cpu.run({{cpu_bn.x, xb}, {cpu_bn.y, yb}}, {}, {cpu_bn.train});
  }
  for (size_t i = 0; i < cpu_bn.variables.size(); ++i)
    testing::expect_near(testing::values(cpu.variable_value(cpu_bn.variables[i])),
                         gpu.variable_value(gpu_bn.variables[i]), 1e-4, 1e-5,
                         cpu_bn.variables[i].name());
  const std::string dir = testing::tmp(str("gpu_steps_", ::getpid()));
  std::filesystem::remove_all(dir);
  distributed::save_checkpoint(gpu, dir, 3);
  Session restored(cpu_bn.g);
  ASSERT_EQ(distributed::restore_latest_checkpoint(restored, dir), 3);
  for (const auto& [name, value] : gpu.variable_values())
    EXPECT_EQ(testing::values(restored.variable_values().at(name)), testing::values(value)) << name;
  std::filesystem::remove_all(dir);
}

}  // namespace
}  // namespace kiln
