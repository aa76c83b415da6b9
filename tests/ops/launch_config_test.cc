// The CUDA path's host-side arithmetic, checked on the CPU: launch configurations, the index
// structs the kernels walk, the slot assignment of fused programs and their generated source.
#include "kiln/ops/launch_config.h"

#include "kiln/ops/math/fused.h"
#include "kiln/ops/math/fused_codegen.h"
#include "test_util.h"

namespace kiln {
namespace {

TEST(LaunchConfig, CoversEveryItemWithinTheBlockLimit) {
  for (int64_t n :
       {int64_t{1}, int64_t{255}, int64_t{256}, int64_t{257}, int64_t{1} << 20, int64_t{1} << 40}) {
    const ops::LaunchConfig c = ops::elementwise_launch(n, 1, 4096);
    EXPECT_GE(c.blocks, 1);
    EXPECT_LE(c.blocks, 4096);
    EXPECT_EQ(c.threads, ops::kElementwiseThreads);
    // Either one pass covers n, or the grid is at its limit and the loop strides.
    EXPECT_TRUE(c.blocks * c.threads >= n || c.blocks == 4096) << n;
  }
  EXPECT_EQ(ops::elementwise_launch(0).blocks, 1);
  EXPECT_EQ(ops::elementwise_launch(1000, 4).blocks, 1);
  EXPECT_EQ(ops::elementwise_launch(1025, 4).blocks, 2);
  const ops::LaunchConfig rows = ops::warp_per_row_launch(17, 8);
  EXPECT_EQ(rows.threads, 256);
  EXPECT_EQ(rows.blocks, 3);  // 8 rows per block
}

TEST(LaunchConfig, BroadcastIndexMatchesNumpyBroadcasting) {
  const Shape out{2, 3, 4, 5};
  const std::array<Shape, 3> shapes = {Shape{3, 1, 5}, Shape{2, 1, 4, 1}, Shape{}};
  ops::BroadcastIndex<3> index;
  ASSERT_TRUE(ops::make_broadcast_index<3>(out, shapes, &index));
  for (int64_t i = 0; i < out.numel(); ++i) {
    int64_t off[3];
    index.offsets(i, off);
    const std::vector<int64_t> idx = testing::unravel(i, out);
    for (int k = 0; k < 3; ++k)
      ASSERT_EQ(off[k], testing::broadcast_source(idx, shapes[k]))
          << "element " << i << " operand " << k;
  }
}

TEST(LaunchConfig, StridedIndexWalksAView) {
  // A transposed, sliced view of a [6, 8, 5] tensor: dims [5, 3, 4] with strides (1, 80, 10)
  // starting at element 12.
  const std::vector<int64_t> dims = {5, 3, 4}, strides = {1, 80, 10};
  ops::StridedIndex index;
  ASSERT_TRUE(ops::make_strided_index(dims, strides, 12, &index));
  int64_t i = 0;
  for (int64_t a = 0; a < 5; ++a)
    for (int64_t b = 0; b < 3; ++b)
      for (int64_t c = 0; c < 4; ++c, ++i) ASSERT_EQ(index.at(i), 12 + a + 80 * b + 10 * c);
  // Contiguous dims merge into one.
  ops::StridedIndex merged;
  ASSERT_TRUE(ops::make_strided_index({4, 3, 2}, {6, 2, 1}, 0, &merged));
  EXPECT_EQ(merged.rank, 1);
  // Too many dims that cannot merge are refused, not mis-indexed.
  ops::StridedIndex many;
  std::vector<int64_t> d(10, 2), s;
  for (int k = 0; k < 10; ++k) s.push_back(int64_t{3} << k);
  EXPECT_FALSE(ops::make_strided_index(d, s, 0, &many));
}

// Runs a fused program on doubles with unlimited registers and with the assigned slots; both
// must agree (a slot reused too early would change the result).
TEST(LaunchConfig, FusedSlotsNeverOverwriteALiveValue) {
  std::mt19937 rng(3);
  const int n_in = 3;
  for (int trial = 0; trial < 200; ++trial) {
    std::vector<int64_t> code;
    const int n_ops = 1 + static_cast<int>(rng() % 30);
    for (int k = 0; k < n_ops; ++k) {
      const int64_t r = n_in + k;  // registers available to instruction k
      const bool binary = rng() % 2;
      code.insert(code.end(), {binary ? ops::op_add : ops::op_neg, static_cast<int64_t>(rng() % r),
                               binary ? static_cast<int64_t>(rng() % r) : -1, -1});
    }
    std::vector<int> slots;
    if (!ops::assign_fused_slots(code, n_in, 12, &slots)) continue;
    std::vector<double> regs = {1.5, -2.25, 0.125}, slot(12, std::nan(""));
    auto read = [&](int64_t r, bool with_slots) {
      if (r < n_in) return regs[r];
      return with_slots ? slot[slots[r - n_in]] : regs[r];
    };
    double last_slot = 0;
    for (int k = 0; k < n_ops; ++k) {
      const bool binary = code[4 * k] == ops::op_add;
      const double a = read(code[4 * k + 1], false), b = binary ? read(code[4 * k + 2], false) : 0;
      const double sa = read(code[4 * k + 1], true), sb = binary ? read(code[4 * k + 2], true) : 0;
      regs.push_back(binary ? a + b : -a);
      last_slot = binary ? sa + sb : -sa;
      slot[slots[k]] = last_slot;
    }
    ASSERT_EQ(last_slot, regs.back()) << "trial " << trial;
  }
}

TEST(LaunchConfig, GeneratedFusedSourceSpellsTheProgram) {
  // y = tanh(x0 * x1) + x2, with x1 a scalar and x2 a repeated row.
  const std::vector<int64_t> code = {ops::op_mul, 0, 1, -1, ops::op_tanh, 3, -1, -1,
                                     ops::op_add, 4, 2, -1};
  const std::string src = ops::fused_cuda_source(
      code, {ops::FusedRead::full, ops::FusedRead::scalar, ops::FusedRead::row}, f32);
  for (const char* part :
       {"kiln_fused", "typedef float T", "const T s1 = a.in[1][0]", "a.in[2][i % a.period[2]]",
        "op_tanh<T>(r0)", "return r2", "float4",
        "eval<T>(v0[u].w, s1, a.in[2][(g * 4 + 3) % a.period[2]])", "sigmoid_of"})
    EXPECT_NE(src.find(part), std::string::npos) << part << "\n" << src;
  testing::expect_error<Error>([&] { ops::fused_cuda_source(code, {ops::FusedRead::full}, i32); },
                               {"f32 or f64", "i32"});
}

}  // namespace
}  // namespace kiln
