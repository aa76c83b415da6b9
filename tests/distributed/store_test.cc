// The environment contract and the rendezvous store (CTest label `distributed`): ranks are
// threads of this process talking over loopback TCP, as separate processes would.
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <future>
#include <map>
#include <thread>

#include "kiln/distributed/distributed.h"
#include "kiln/distributed/environment.h"
#include "kiln/distributed/store.h"
#include "test_util.h"

namespace kiln::distributed {
namespace {

using namespace std::chrono_literals;

EnvironmentReader from(std::map<std::string, std::string> vars) {
  return [vars](const std::string& name) -> std::optional<std::string> {
    auto it = vars.find(name);
    if (it == vars.end()) return std::nullopt;
    return it->second;
  };
}

TEST(Environment, NoVariablesIsOneProcess) {
  const Environment env = read_environment(from({}));
  EXPECT_EQ(env.world_size, 1);
  EXPECT_EQ(env.rank, 0);
  EXPECT_EQ(env.source, "none");
}

TEST(Environment, TorchrunNames) {
  const Environment env = read_environment(from({{"RANK", "5"},
                                                 {"WORLD_SIZE", "8"},
                                                 {"LOCAL_RANK", "1"},
                                                 {"LOCAL_WORLD_SIZE", "4"},
                                                 {"MASTER_ADDR", "node7"},
                                                 {"MASTER_PORT", "1234"},
                                                 {"TORCHELASTIC_USE_AGENT_STORE", "True"},
                                                 {"TORCHELASTIC_RUN_ID", "job-42"}}));
  EXPECT_EQ(env.source, "torchrun");
  EXPECT_EQ(env.rank, 5);
  EXPECT_EQ(env.world_size, 8);
  EXPECT_EQ(env.local_rank, 1);
  EXPECT_EQ(env.local_world_size, 4);
  EXPECT_EQ(env.master_addr, "node7");
  EXPECT_EQ(env.master_port, 1234);
  EXPECT_TRUE(env.port_taken_by_launcher);
  EXPECT_EQ(env.job_id, "job-42");
  EXPECT_EQ(env.restart_count, 0);
  EXPECT_EQ(rendezvous_id(env), "job-42");
}

TEST(Environment, RestartsCountAndTellAttemptsApart) {
  // torchrun's count, kiln-launch's, Slurm's requeue count.
  for (const char* name :
       {"TORCHELASTIC_RESTART_COUNT", "KILN_RESTART_COUNT", "SLURM_RESTART_COUNT"}) {
    const Environment env = read_environment(
        from({{"RANK", "1"}, {"WORLD_SIZE", "2"}, {"KILN_JOB_ID", "j"}, {name, "2"}}));
    EXPECT_EQ(env.restart_count, 2) << name;
    // The rendezvous of attempt 2 is not attempt 0's or 1's.
    EXPECT_EQ(rendezvous_id(env), "j/restart-2") << name;
  }
  testing::expect_error(
      [] {
        read_environment(from({{"KILN_RESTART_COUNT", "-1"}}));
      },
      {"KILN_RESTART_COUNT=-1", "outside [0, "});
  testing::expect_error(
      [] {
        read_environment(from({{"TORCHELASTIC_RESTART_COUNT", "one"}}));
      },
      {"TORCHELASTIC_RESTART_COUNT='one'", "not a whole number"});
}

TEST(Environment, SlurmNames) {
  const Environment env = read_environment(from({{"SLURM_PROCID", "6"},
                                                 {"SLURM_NTASKS", "8"},
                                                 {"SLURM_LOCALID", "2"},
                                                 {"SLURM_TASKS_PER_NODE", "4(x2)"},
                                                 {"SLURM_JOB_NODELIST", "gpu[03-04]"},
                                                 {"SLURM_JOB_ID", "123456"}}));
  EXPECT_EQ(env.source, "slurm");
  EXPECT_EQ(env.rank, 6);
  EXPECT_EQ(env.world_size, 8);
  EXPECT_EQ(env.local_rank, 2);
  EXPECT_EQ(env.local_world_size, 4);
  EXPECT_EQ(env.master_addr, "gpu03");
  EXPECT_EQ(env.master_port, 20000 + 123456 % 20000);
  EXPECT_EQ(env.job_id, "123456");
  EXPECT_EQ(first_slurm_host("cpu1,gpu[1-2]"), "cpu1");
  EXPECT_EQ(first_slurm_host("n[007,9]"), "n007");
}

TEST(Environment, BadValuesAreNamed) {
  testing::expect_error(
      [] {
        read_environment(from({{"RANK", "2"}, {"WORLD_SIZE", "2"}}));
      },
      {"[distributed] RANK=2", "outside [0, 1]"});
  testing::expect_error(
      [] {
        read_environment(from({{"RANK", "x"}, {"WORLD_SIZE", "2"}}));
      },
      {"RANK='x'", "not a whole number"});
  testing::expect_error([] { read_environment(from({{"RANK", "0"}})); }, {"WORLD_SIZE is not set"});
  testing::expect_error(
      [] {
        read_environment(from({{"RANK", "0"}, {"WORLD_SIZE", "1"}, {"MASTER_PORT", "70000"}}));
      },
      {"MASTER_PORT=70000", "outside [1, 65535]"});
  testing::expect_error(
      [] {
        read_environment(from({{"SLURM_PROCID", "0"}}));
      },
      {"SLURM_NTASKS is not set"});
  // init() refuses a value of KILN_CHECK_COLLECTIVES it would not know how to read.
  testing::expect_error(
      [] {
        init({}, from({{"KILN_CHECK_COLLECTIVES", "yes"}}));
      },
      {"KILN_CHECK_COLLECTIVES is 'yes'", "0 or 1"});
}

TEST(Store, SetGetAddWaitAcrossClients) {
  StoreServer server(0, "job", 2);
  Store a("127.0.0.1", server.port(), "job", 2, 5s), b("localhost", server.port(), "job", 2, 5s);
  EXPECT_FALSE(a.try_get("k").has_value());
  a.set("k", std::string("v\0w", 3));
  EXPECT_EQ(b.get("k"), std::string("v\0w", 3));
  EXPECT_EQ(a.add("n", 5), 5);
  EXPECT_EQ(b.add("n", -2), 3);
  EXPECT_EQ(b.get("n"), "3");
  // A waiter is released when the key arrives from another client.
  auto waiter = std::async(std::launch::async, [&] { return b.get("late"); });
  std::this_thread::sleep_for(20ms);
  a.set("late", std::string(1 << 20, 'x'));  // a large value
  EXPECT_EQ(waiter.get().size(), size_t{1} << 20);
  EXPECT_EQ(a.check({"k", "nope", "late"}), (std::vector<bool>{true, false, true}));
  testing::expect_error(
      [&] {
        a.wait({"k", "nope", "never"}, 50ms);
      },
      {"[store] 127.0.0.1:", "waited 50 ms", "'nope', 'never'"});
}

TEST(Store, AClientWaitsForAServerThatStartsLater) {
  // A free port: bound, then released.
  int port = 0;
  {
    StoreServer probe(0, "job", 1);
    port = probe.port();
  }
  auto client = std::async(
      std::launch::async, [&] { return std::make_unique<Store>("127.0.0.1", port, "job", 1, 5s); });
  std::this_thread::sleep_for(150ms);
  StoreServer server(port, "job", 1);
  auto store = client.get();
  store->set("x", "1");
  EXPECT_EQ(store->get("x"), "1");
}

TEST(Store, AnUnreachableMasterIsAnErrorAfterTheTimeout) {
  int port = 0;
  {
    StoreServer probe(0, "job", 1);
    port = probe.port();
  }
  const auto start = std::chrono::steady_clock::now();
  testing::expect_error([&] { Store("127.0.0.1", port, "job", 1, 300ms); },
                        {"could not reach the rendezvous at 127.0.0.1:", "within 300 ms",
                         "MASTER_ADDR and MASTER_PORT"});
  EXPECT_LT(std::chrono::steady_clock::now() - start, 3s);
  testing::expect_error([&] { Store("no-such-host.invalid", port, "job", 1, 100ms); },
                        {"cannot resolve 'no-such-host.invalid'"});
}

TEST(Store, AStoreOfAnotherJobOrAForeignListenerIsRefused) {
  StoreServer other(0, "another-job", 2);
  testing::expect_error([&] { Store("127.0.0.1", other.port(), "job", 2, 1s); },
                        {"another job or world size"});
  // A listener that speaks some other protocol (or nothing): refused, not hung on.
  const int fd = ::socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  ASSERT_EQ(::bind(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)), 0);
  ASSERT_EQ(::listen(fd, 4), 0);
  socklen_t length = sizeof(addr);
  ::getsockname(fd, reinterpret_cast<sockaddr*>(&addr), &length);
  testing::expect_error([&] { Store("127.0.0.1", ntohs(addr.sin_port), "job", 2, 300ms); },
                        {"not a Kiln store"});
  ::close(fd);
  testing::expect_error([&] { StoreServer(other.port(), "job", 2); },
                        {"cannot listen on port", "in use"});
}

// Four ranks meet, with MASTER_PORT held by another listener, as under PyTorch 2.x's torchrun
// (its agent's store sits on MASTER_PORT): the store moves to the next free port.
TEST(Rendezvous, FourRanksMeetWhenMasterPortIsTaken) {
  const int fd = ::socket(AF_INET6, SOCK_STREAM, 0);
  sockaddr_in6 addr{};
  addr.sin6_family = AF_INET6;
  addr.sin6_addr = in6addr_any;
  ASSERT_EQ(::bind(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)), 0);
  ASSERT_EQ(::listen(fd, 16), 0);
  socklen_t length = sizeof(addr);
  ::getsockname(fd, reinterpret_cast<sockaddr*>(&addr), &length);
  const int taken = ntohs(addr.sin6_port);
  std::vector<std::future<std::string>> ranks;
  for (int r = 3; r >= 0; --r)  // rank 0 last: the others wait for its store
    ranks.push_back(std::async(std::launch::async, [=] {
      const Environment env = read_environment(from({{"RANK", std::to_string(r)},
                                                     {"WORLD_SIZE", "4"},
                                                     {"MASTER_ADDR", "127.0.0.1"},
                                                     {"MASTER_PORT", std::to_string(taken)},
                                                     {"TORCHELASTIC_USE_AGENT_STORE", "True"},
                                                     {"TORCHELASTIC_RUN_ID", "t1"}}));
      Rendezvous meeting = rendezvous(env, 10s);
      meeting.store->add("arrived", 1);
      meeting.store->wait({"done"});
      meeting.store->set(str("left/", r), "1");
      // Rank 0 hosts the store: it stays until every rank is done with it.
      if (r == 0) meeting.store->wait({"left/1", "left/2", "left/3"});
      return meeting.store->address();
    }));
  // Once all four arrived, tell them to finish.
  std::this_thread::sleep_for(100ms);
  for (int tries = 0; tries < 200; ++tries) {
    try {
      Store probe("127.0.0.1", taken + 1, "t1", 4, 1s);
      if (probe.add("arrived", 0) == 4) {
        probe.set("done", "1");
        break;
      }
    } catch (const DistributedError&) {
    }
    std::this_thread::sleep_for(20ms);
  }
  for (auto& rank : ranks) EXPECT_EQ(rank.get(), str("127.0.0.1:", taken + 1));
  ::close(fd);
}

TEST(Rendezvous, ARankThatNeverArrivesIsNamedAfterTheTimeout) {
  int port = 0;
  {
    StoreServer probe(0, "job", 1);
    port = probe.port();
  }
  auto rank = [&](int r) {
    return std::async(std::launch::async, [=] {
      Environment env;
      env.rank = r;
      env.world_size = 3;
      env.master_port = port;
      env.job_id = "missing";
      try {
        rendezvous(env, 1500ms);
        return std::string("met");
      } catch (const DistributedError& e) {
        return std::string(e.what());
      }
    });
  };
  auto zero = rank(0), one = rank(1);  // rank 2 never comes
  const std::string a = zero.get(), b = one.get();
  EXPECT_NE(a.find("rank 2 did not arrive within 1500 ms"), std::string::npos) << a;
  EXPECT_NE(b.find("rank 2 did not arrive"), std::string::npos) << b;
}

}  // namespace
}  // namespace kiln::distributed
