// The rendezvous: a TCP key-value store that rank 0 hosts and every rank (rank 0 too) reaches
// as a client. It carries what ranks must agree on before any collective (the NCCL unique id,
// Gloo's bootstrap); every wait has a timeout and an error that names what never came.
#pragma once

#include <chrono>
#include <cstdint>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <vector>

#include "kiln/distributed/environment.h"

namespace kiln::distributed {

/// The protocol's identity and version, exchanged first on every connection: a client never
/// talks to a listener that is not a Kiln store of the same job (torchrun's own store may hold
/// MASTER_PORT).
inline constexpr char kStoreMagic[] = "KILNSTORE/1";

/// How many consecutive ports, from MASTER_PORT, the store may listen on: rank 0 takes the
/// first free one and clients try them in order (see rendezvous()).
inline constexpr int kStorePortCandidates = 8;

/// The server. Listens on `port` (0: any free port) of every interface; serves each client on
/// a thread of its own until destroyed. Throws kiln::DistributedError naming the port when it
/// cannot listen (in use, no permission).
class StoreServer {
 public:
  StoreServer(int port, std::string job_id, int64_t world_size);
  ~StoreServer();
  StoreServer(const StoreServer&) = delete;
  StoreServer& operator=(const StoreServer&) = delete;
  /// The port it listens on.
  int port() const;

 private:
  struct State;
  std::unique_ptr<State> state_;
};

/// A client of a StoreServer. Every call waits at most `timeout` (the constructor's: reaching
/// the server, then each operation) and throws kiln::DistributedError saying what it waited for.
/// Threads may share it: each request and its answer go over the connection alone.
class Store {
 public:
  /// Connects to `host`:`port`, retrying until `timeout` (the server may start later), and
  /// checks that the server is a Kiln store of `job_id` with `world_size` ranks.
  Store(const std::string& host, int port, std::string job_id, int64_t world_size,
        std::chrono::milliseconds timeout);
  ~Store();
  Store(const Store&) = delete;
  Store& operator=(const Store&) = delete;

  void set(const std::string& key, const std::string& value);
  /// The value of `key`, or nullopt when it is not set (does not wait).
  std::optional<std::string> try_get(const std::string& key);
  /// The value of `key`, waiting until it is set.
  std::string get(const std::string& key);
  /// Adds `delta` to the integer at `key` (0 when unset); returns the new value.
  int64_t add(const std::string& key, int64_t delta);
  /// Waits until every key is set; the error lists the keys still missing.
  void wait(const std::vector<std::string>& keys);
  /// The same with a timeout of its own.
  void wait(const std::vector<std::string>& keys, std::chrono::milliseconds timeout);
  /// Which of `keys` are set now (does not wait).
  std::vector<bool> check(const std::vector<std::string>& keys);
  const std::string& address() const { return address_; }
  /// The timeout of each later operation.
  void set_timeout(std::chrono::milliseconds timeout) { timeout_ = timeout; }

 private:
  std::string request(const std::string& message);
  std::mutex mutex_;  // one request at a time on the connection
  int fd_ = -1;
  std::string address_;
  std::chrono::milliseconds timeout_;
};

/// A process's place in the job and its connection to the rendezvous.
struct Rendezvous {
  Environment environment;
  std::unique_ptr<StoreServer> server;  ///< rank 0's
  std::unique_ptr<Store> store;
};

/// Meets the other ranks of `env`'s job: rank 0 hosts the store on the first free port of
/// MASTER_PORT .. MASTER_PORT + 7 (torchrun's agent may hold MASTER_PORT itself), every rank
/// connects (trying those ports in order, skipping listeners that are not this job's store),
/// announces itself under "rank/<r>" and waits for all ranks. Throws kiln::DistributedError
/// after `timeout`: naming host and ports when the store cannot be reached, naming the ranks
/// that never arrived otherwise.
Rendezvous rendezvous(const Environment& env, std::chrono::milliseconds timeout);

}  // namespace kiln::distributed
