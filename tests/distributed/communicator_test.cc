// The Gloo communicator (CTest labels `distributed`, `gloo`): ranks are threads of this process
// over loopback TCP, 2 and 4 of them, every dtype, sizes 0, 1 and large odd ones.
#include <functional>
#include <future>

#include "kiln/distributed/communicator.h"
#include "test_util.h"

namespace kiln::distributed {
namespace {

using namespace std::chrono_literals;

// Runs `body(communicator)` on `world` ranks at once; returns each rank's error ("" if none).
// With `checked`, each communicator is wrapped by check_collectives.
std::vector<std::string> on_ranks(int64_t world, const std::function<void(Communicator&)>& body,
                                  std::chrono::milliseconds timeout = 20s, int64_t arriving = -1,
                                  bool checked = false) {
  StoreServer server(0, "comm", world);
  std::vector<std::future<std::string>> ranks;
  for (int64_t r = 0; r < (arriving < 0 ? world : arriving); ++r)
    ranks.push_back(std::async(std::launch::async, [&, r] {
      try {
        Store store("127.0.0.1", server.port(), "comm", world, timeout);
        auto comm = make_gloo_communicator(store, r, world, timeout);
        if (checked) comm = check_collectives(std::move(comm));
        body(*comm);
        return std::string();
      } catch (const std::exception& e) {
        return std::string(e.what());
      }
    }));
  std::vector<std::string> errors;
  for (auto& r : ranks) errors.push_back(r.get());
  return errors;
}

// Rank r's value at element i in `dtype`: small integers (and for bool a sparse pattern), so
// every dtype holds sums of 4 ranks exactly.
double value_of(DType dtype, int64_t r, int64_t i) {
  const double v = static_cast<double>((r + 1 + i % 5) % 7);
  return dtype == DType::boolean ? double(v != 0 && (i + r) % 3 == 0) : v;
}

Tensor rank_tensor(DType dtype, int64_t n, int64_t r) {
  Tensor t = Tensor::empty(dtype, {n});
  dispatch_all(dtype, [&](auto tag) {
    using T = decltype(tag);
    for (int64_t i = 0; i < n; ++i) t.data<T>()[i] = convert<T>(value_of(dtype, r, i));
  });
  return t;
}

// The reduction `op` of every rank's element `at` (value_of), and the tolerance of `dtype`.
std::pair<double, double> expected_reduction(DType dtype, ReduceOp op, int64_t world, int64_t at) {
  double want = op == ReduceOp::min ? 1e9 : op == ReduceOp::max ? -1e9 : 0;
  for (int64_t r = 0; r < world; ++r) {
    const double v = value_of(dtype, r, at);
    want = op == ReduceOp::min   ? std::min(want, v)
           : op == ReduceOp::max ? std::max(want, v)
                                 : want + v;
  }
  if (op == ReduceOp::avg) want /= static_cast<double>(world);
  if (dtype == DType::boolean) want = want != 0;
  const double tol = dtype == bf16 ? 0.02 : dtype == f16 ? 0.002 : 1e-6;
  return {want, tol * std::max(1.0, std::abs(want))};
}

TEST(Gloo, AllReduceEveryDtypeOpAndSize) {
  for (int64_t world : {2, 4}) {
    const auto errors = on_ranks(world, [&](Communicator& comm) {
      for (DType dtype : {f32, f64, f16, bf16, i32, i64, u8, DType::boolean})
        for (int64_t n : {0, 1, 1001, 100003})
          for (ReduceOp op : {ReduceOp::sum, ReduceOp::avg, ReduceOp::max, ReduceOp::min}) {
            if (op == ReduceOp::avg && !is_floating(dtype)) continue;
            Tensor t = rank_tensor(dtype, n, comm.rank());
            comm.all_reduce(t, op);
            for (int64_t i = 0; i<n; i += n> 1000 ? 97 : 1) {
              const auto [want, tol] = expected_reduction(dtype, op, world, i);
              ASSERT_NEAR(t.element(i), want, tol)
                  << "world " << world << " " << dtype << " n " << n << " " << reduce_op_name(op)
                  << " element " << i;
            }
          }
    });
    for (const std::string& e : errors) EXPECT_EQ(e, "");
  }
}

// The ring reduce-scatter on 2, 3 and 4 ranks: each rank's part is the reduction of that part
// of every rank's tensor, for every dtype, op and size (parts of 0, 1 and large odd sizes).
TEST(Gloo, ReduceScatterEveryDtypeOpAndSize) {
  for (int64_t world : {2, 3, 4}) {
    const auto errors = on_ranks(world, [&](Communicator& comm) {
      for (DType dtype : {f32, f64, f16, bf16, i32, i64, u8, DType::boolean})
        for (int64_t n : {0, 1, 1001, 25013})
          for (ReduceOp op : {ReduceOp::sum, ReduceOp::avg, ReduceOp::max, ReduceOp::min}) {
            if (op == ReduceOp::avg && !is_floating(dtype)) continue;
            Tensor t = rank_tensor(dtype, world * n, comm.rank()).reshaped(Shape({world, n}));
            Tensor part = comm.reduce_scatter(t, op);
            ASSERT_EQ(part.shape(), Shape({1, n}));
            for (int64_t i = 0; i<n; i += n> 1000 ? 89 : 1) {
              // Element i of this rank's part is element rank * n + i of every rank's tensor.
              const auto [want, tol] = expected_reduction(dtype, op, world, comm.rank() * n + i);
              ASSERT_NEAR(part.element(i), want, tol)
                  << "world " << world << " " << dtype << " n " << n << " " << reduce_op_name(op)
                  << " rank " << comm.rank() << " element " << i;
            }
          }
      // The input is left as it was.
      Tensor t = rank_tensor(f32, 2 * world, comm.rank());
      comm.reduce_scatter(t, ReduceOp::sum);
      for (int64_t i = 0; i < t.numel(); ++i)
        ASSERT_EQ(t.data<float>()[i], value_of(f32, comm.rank(), i));
    });
    for (const std::string& e : errors) EXPECT_EQ(e, "") << world << " ranks";
  }
}

TEST(Gloo, BroadcastAllGatherReduceScatterBarrier) {
  const int64_t world = 4;
  const auto errors = on_ranks(world, [&](Communicator& comm) {
    const int64_t r = comm.rank();
    Tensor b = Tensor::full(i64, {1001}, static_cast<double>(r * 10));
    comm.broadcast(b, 2);
    for (int64_t i = 0; i < b.numel(); ++i) ASSERT_EQ(b.data<int64_t>()[i], 20);
    Tensor mine = Tensor::from_vector<float>({float(r), float(r) + 0.5f, -float(r)}, {3});
    Tensor all = comm.all_gather(mine);
    ASSERT_EQ(all.shape(), Shape({4, 3}));
    for (int64_t k = 0; k < world; ++k) {
      EXPECT_EQ(all.data<float>()[3 * k + 1], float(k) + 0.5f);
    }
    Tensor big = Tensor::full(f64, {8, 5}, static_cast<double>(r + 1));
    Tensor part = comm.reduce_scatter(big, ReduceOp::sum);
    ASSERT_EQ(part.shape(), Shape({2, 5}));
    EXPECT_EQ(part.element(0), 10);  // 1 + 2 + 3 + 4
    comm.barrier();
    // Errors a user can hit, named, on every rank alike (no collective is started).
    Tensor ints = Tensor::full(i32, {3}, 1);
    testing::expect_error([&] { comm.all_reduce(ints, ReduceOp::avg); },
                          {"[gloo] all_reduce: avg of i32"});
    testing::expect_error([&] { comm.reduce_scatter(Tensor::zeros(f32, {6}), ReduceOp::sum); },
                          {"not a multiple of the world size 4"});
    testing::expect_error([&] { comm.broadcast(b, 4); }, {"root 4 is outside a world of 4"});
    comm.barrier();
  });
  for (const std::string& e : errors) EXPECT_EQ(e, "");
}

TEST(Gloo, ARankThatNeverArrivesIsAnErrorAfterTheTimeout) {
  const auto start = std::chrono::steady_clock::now();
  const auto errors = on_ranks(
      3, [](Communicator&) {}, 1500ms, /*arriving=*/2);
  for (const std::string& e : errors) {
    std::printf("%s\n", e.c_str());
    EXPECT_NE(e.find("[gloo] rank "), std::string::npos) << e;
    EXPECT_NE(e.find("of 3"), std::string::npos) << e;
  }
  EXPECT_LT(std::chrono::steady_clock::now() - start, 20s);
}

TEST(Gloo, APeerThatLeavesMidJobIsAnErrorNotAHang) {
  const auto start = std::chrono::steady_clock::now();
  const auto errors = on_ranks(
      2,
      [](Communicator& comm) {
        comm.barrier();
        if (comm.rank() == 1) return;  // leaves: its communicator closes its connections
        std::this_thread::sleep_for(100ms);
        Tensor t = Tensor::full(f32, {1000}, 1);
        comm.all_reduce(t, ReduceOp::sum);
      },
      3s);
  std::printf("%s\n", errors[0].c_str());
  EXPECT_NE(errors[0].find("[gloo] rank 0 of 2: all_reduce failed"), std::string::npos)
      << errors[0];
  EXPECT_EQ(errors[1], "");
  EXPECT_LT(std::chrono::steady_clock::now() - start, 20s);
}

TEST(Gloo, APeerThatLeavesDuringAReduceScatterIsAnErrorNotAHang) {
  const auto start = std::chrono::steady_clock::now();
  const auto errors = on_ranks(
      3,
      [](Communicator& comm) {
        comm.barrier();
        if (comm.rank() == 2) return;
        std::this_thread::sleep_for(100ms);
        comm.reduce_scatter(Tensor::full(f32, {3 * 1000}, 1), ReduceOp::sum);
      },
      3s);
  for (int64_t r = 0; r < 2; ++r) {
    std::printf("%s\n", errors[r].c_str());
    EXPECT_NE(errors[r].find(str("[gloo] rank ", r, " of 3: reduce_scatter failed")),
              std::string::npos)
        << errors[r];
  }
  EXPECT_EQ(errors[2], "");
  EXPECT_LT(std::chrono::steady_clock::now() - start, 20s);
}

void expect_contains(const std::string& message, const std::vector<std::string>& parts) {
  for (const std::string& part : parts)
    EXPECT_NE(message.find(part), std::string::npos)
        << "'" << message << "' lacks '" << part << "'";
}

// Checked, the ranks agree on each collective before they run it: matching calls give the
// usual results; the first that differs (the call, the size, the dtype, the root) is refused
// on every rank with both calls named, where unchecked Gloo would abort or time out.
TEST(Gloo, CheckedCollectivesNameTheFirstCallThatDiffers) {
  constexpr bool kChecked = true;
  for (int64_t world : {2, 4}) {
    const auto errors = on_ranks(
        world,
        [&](Communicator& comm) {
          Tensor t = rank_tensor(f32, 1001, comm.rank());
          comm.all_reduce(t, ReduceOp::sum);
          double want = 0;
          for (int64_t r = 0; r < world; ++r) want += value_of(f32, r, 7);
          KILN_CHECK(t.data<float>()[7] == want, Error, "sum ", t.data<float>()[7]);
          Tensor b = rank_tensor(i64, 5, comm.rank());
          comm.broadcast(b, 1);
          KILN_CHECK(b.data<int64_t>()[2] == value_of(i64, 1, 2), Error, "broadcast");
          Tensor g = comm.all_gather(rank_tensor(f16, 3, comm.rank()));
          KILN_CHECK(g.shape()[0] == world, Error, "gathered ", g.shape());
          comm.reduce_scatter(rank_tensor(f64, 4 * world, comm.rank()), ReduceOp::max);
          comm.barrier();
        },
        20s, -1, kChecked);
    for (const std::string& e : errors) EXPECT_EQ(e, "") << world << " ranks";
  }
  // Rank 1 gathers where rank 0 all-reduces (what ranks with different graphs do).
  auto errors = on_ranks(
      2,
      [](Communicator& comm) {
        Tensor t = rank_tensor(f32, comm.rank() == 0 ? 85 : 1034, comm.rank());
        if (comm.rank() == 0)
          comm.all_reduce(t, ReduceOp::avg);
        else
          comm.all_gather(t);
      },
      20s, -1, kChecked);
  for (int64_t r = 0; r < 2; ++r)
    expect_contains(errors[r], {str("rank ", r, " of 2"), "collective #1 differs",
                                "rank 0 calls all_reduce (avg) of 85 f32 elements",
                                "rank 1 calls all_gather of 1034 f32 elements"});
  // After two that match, the third differs in its root; then in its dtype.
  errors = on_ranks(
      4,
      [](Communicator& comm) {
        Tensor t = rank_tensor(f32, 10, comm.rank());
        comm.all_reduce(t, ReduceOp::sum);
        comm.barrier();
        comm.broadcast(t, comm.rank() == 3 ? 1 : 0);
      },
      20s, -1, kChecked);
  for (int64_t r = 0; r < 4; ++r)
    expect_contains(errors[r], {"collective #3", "broadcast (root 0) of 10 f32",
                                "rank 3 calls broadcast (root 1) of 10 f32"});
  errors = on_ranks(
      2,
      [](Communicator& comm) {
        Tensor t = rank_tensor(comm.rank() == 0 ? f32 : f64, 10, comm.rank());
        comm.all_reduce(t, ReduceOp::max);
      },
      20s, -1, kChecked);
  expect_contains(errors[0], {"rank 1 calls all_reduce (max) of 10 f64 elements"});
}

}  // namespace
}  // namespace kiln::distributed
