// The TCP store. Messages are length-prefixed: a request is [u32 size][u8 command][fields], a
// string field [u32 size][bytes], an integer 8 bytes little-endian. Peers are untrusted:
// sizes are bounded and a malformed request closes that connection.
#include "kiln/distributed/store.h"

#include <arpa/inet.h>
#include <fcntl.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <cstring>
#include <map>
#include <mutex>
#include <thread>

#include "kiln/framework/error.h"

namespace kiln::distributed {

namespace {

using Clock = std::chrono::steady_clock;

constexpr uint32_t kMaxMessage = 256u << 20;  // a value may be a large blob; not more
enum Command : uint8_t { kSet = 1, kGet = 2, kAdd = 3, kCheck = 4 };

void put_u32(std::string& out, uint32_t v) {
  for (int i = 0; i < 4; ++i) out += static_cast<char>((v >> (8 * i)) & 0xff);
}
void put_i64(std::string& out, int64_t v) {
  for (int i = 0; i < 8; ++i)
    out += static_cast<char>((static_cast<uint64_t>(v) >> (8 * i)) & 0xff);
}
void put_string(std::string& out, const std::string& s) {
  put_u32(out, static_cast<uint32_t>(s.size()));
  out += s;
}

// Reads fields from a received message; any overrun marks it malformed.
struct Reader {
  const std::string& data;
  size_t at = 0;
  bool ok = true;
  uint64_t bytes(size_t n) {
    if (data.size() - at < n) {
      ok = false;
      return 0;
    }
    uint64_t v = 0;
    for (size_t i = 0; i < n; ++i) v |= uint64_t(static_cast<uint8_t>(data[at + i])) << (8 * i);
    at += n;
    return v;
  }
  uint32_t u32() { return static_cast<uint32_t>(bytes(4)); }
  int64_t i64() { return static_cast<int64_t>(bytes(8)); }
  std::string string() {
    const uint32_t n = u32();
    if (!ok || data.size() - at < n) {
      ok = false;
      return {};
    }
    std::string s = data.substr(at, n);
    at += n;
    return s;
  }
};

// Waits until `fd` is ready for `events` or `deadline` passes; false on timeout.
bool wait_ready(int fd, short events, Clock::time_point deadline) {
  for (;;) {
    const auto left =
        std::chrono::duration_cast<std::chrono::milliseconds>(deadline - Clock::now());
    if (left.count() <= 0) return false;
    pollfd p{fd, events, 0};
    const int r = ::poll(&p, 1, static_cast<int>(std::min<int64_t>(left.count(), 1000)));
    if (r > 0) return true;
    if (r < 0 && errno != EINTR) return true;  // let the read or write report it
  }
}

// Sends or receives all of `n` bytes before `deadline` (no deadline: Clock::time_point::max()).
// Returns false on timeout, a closed connection or an error.
bool send_all(int fd, const char* p, size_t n, Clock::time_point deadline) {
  while (n > 0) {
    if (!wait_ready(fd, POLLOUT, deadline)) return false;
    const ssize_t w = ::send(fd, p, n, MSG_NOSIGNAL);
    if (w < 0 && (errno == EINTR || errno == EAGAIN)) continue;
    if (w <= 0) return false;
    p += w;
    n -= static_cast<size_t>(w);
  }
  return true;
}
bool recv_all(int fd, char* p, size_t n, Clock::time_point deadline) {
  while (n > 0) {
    if (!wait_ready(fd, POLLIN, deadline)) return false;
    const ssize_t r = ::recv(fd, p, n, 0);
    if (r < 0 && (errno == EINTR || errno == EAGAIN)) continue;
    if (r <= 0) return false;
    p += r;
    n -= static_cast<size_t>(r);
  }
  return true;
}
bool send_message(int fd, const std::string& body, Clock::time_point deadline) {
  std::string framed;
  put_u32(framed, static_cast<uint32_t>(body.size()));
  framed += body;
  return send_all(fd, framed.data(), framed.size(), deadline);
}
std::optional<std::string> recv_message(int fd, Clock::time_point deadline) {
  char header[4];
  if (!recv_all(fd, header, 4, deadline)) return std::nullopt;
  uint32_t n = 0;
  for (int i = 0; i < 4; ++i) n |= uint32_t(static_cast<uint8_t>(header[i])) << (8 * i);
  if (n > kMaxMessage) return std::nullopt;
  std::string body(n, '\0');
  if (n && !recv_all(fd, body.data(), n, deadline)) return std::nullopt;
  return body;
}

// Whether `message` starts as a handshake of this protocol (any job).
bool is_store_hello(const std::string& message) {
  std::string magic;
  put_string(magic, kStoreMagic);
  return message.rfind(magic, 0) == 0;
}

// The handshake both sides send first: magic, job id, world size.
std::string hello(const std::string& job_id, int64_t world_size) {
  std::string out;
  put_string(out, kStoreMagic);
  put_string(out, job_id);
  put_i64(out, world_size);
  return out;
}

}  // namespace

// ---------------------------------------------------------------- server

struct StoreServer::State {
  int listen_fd = -1;
  int port = 0;
  std::string hello;
  std::atomic<bool> stopping{false};
  std::thread acceptor;
  std::mutex mutex;  // guards data, clients, threads
  std::map<std::string, std::string> data;
  std::vector<int> clients;
  std::vector<std::thread> threads;

  void serve(int fd) {
    const auto forever = Clock::time_point::max();
    // Handshake: the client speaks first; anything but our magic ends the connection.
    auto first = recv_message(fd, Clock::now() + std::chrono::seconds(30));
    if (first && is_store_hello(*first))
      send_message(fd, hello, forever);
    else
      return;
    while (!stopping) {
      auto message = recv_message(fd, forever);
      if (!message || message->empty()) return;
      Reader in{*message};
      const uint8_t command = static_cast<uint8_t>(in.bytes(1));
      std::string reply;
      switch (command) {
        case kSet: {
          std::string key = in.string(), value = in.string();
          if (!in.ok) return;
          std::lock_guard<std::mutex> lock(mutex);
          data[key] = std::move(value);
          break;
        }
        case kGet: {
          const std::string key = in.string();
          if (!in.ok) return;
          std::lock_guard<std::mutex> lock(mutex);
          auto it = data.find(key);
          reply += static_cast<char>(it != data.end());
          if (it != data.end()) put_string(reply, it->second);
          break;
        }
        case kAdd: {
          const std::string key = in.string();
          const int64_t delta = in.i64();
          if (!in.ok) return;
          std::lock_guard<std::mutex> lock(mutex);
          int64_t value = 0;
          if (auto it = data.find(key); it != data.end()) {
            char* end = nullptr;
            value = std::strtoll(it->second.c_str(), &end, 10);
          }
          value = static_cast<int64_t>(static_cast<uint64_t>(value) + static_cast<uint64_t>(delta));
          data[key] = std::to_string(value);
          put_i64(reply, value);
          break;
        }
        case kCheck: {
          const uint32_t n = in.u32();
          if (!in.ok || n > (1u << 20)) return;
          std::vector<std::string> keys;
          for (uint32_t i = 0; i < n && in.ok; ++i) keys.push_back(in.string());
          if (!in.ok) return;
          std::lock_guard<std::mutex> lock(mutex);
          for (const std::string& key : keys) reply += static_cast<char>(data.count(key) > 0);
          break;
        }
        default:
          return;  // not a request of this protocol
      }
      if (!send_message(fd, reply, forever)) return;
    }
  }
};

StoreServer::StoreServer(int port, std::string job_id, int64_t world_size)
    : state_(std::make_unique<State>()) {
  State& s = *state_;
  s.hello = hello(job_id, world_size);
  s.listen_fd = ::socket(AF_INET6, SOCK_STREAM | SOCK_CLOEXEC, 0);
  const bool v6 = s.listen_fd >= 0;
  if (!v6) s.listen_fd = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  KILN_CHECK(s.listen_fd >= 0, DistributedError,
             "[store] cannot make a socket: ", std::strerror(errno));
  const int one = 1, zero = 0;
  ::setsockopt(s.listen_fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
  int bound = -1;
  if (v6) {
    ::setsockopt(s.listen_fd, IPPROTO_IPV6, IPV6_V6ONLY, &zero, sizeof(zero));  // v4 too
    sockaddr_in6 addr{};
    addr.sin6_family = AF_INET6;
    addr.sin6_addr = in6addr_any;
    addr.sin6_port = htons(static_cast<uint16_t>(port));
    bound = ::bind(s.listen_fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr));
  } else {
    sockaddr_in addr{};
    addr.sin_family = AF_INET;
    addr.sin_addr.s_addr = htonl(INADDR_ANY);
    addr.sin_port = htons(static_cast<uint16_t>(port));
    bound = ::bind(s.listen_fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr));
  }
  if (bound != 0 || ::listen(s.listen_fd, 1024) != 0) {
    const int error = errno;
    ::close(s.listen_fd);
    throw DistributedError(str("[store] cannot listen on port ", port, ": ", std::strerror(error)));
  }
  sockaddr_storage actual{};
  socklen_t length = sizeof(actual);
  ::getsockname(s.listen_fd, reinterpret_cast<sockaddr*>(&actual), &length);
  s.port = ntohs(actual.ss_family == AF_INET6 ? reinterpret_cast<sockaddr_in6*>(&actual)->sin6_port
                                              : reinterpret_cast<sockaddr_in*>(&actual)->sin_port);
  s.acceptor = std::thread([&s] {
    while (!s.stopping) {
      const int fd = ::accept4(s.listen_fd, nullptr, nullptr, SOCK_CLOEXEC);
      if (fd < 0) {
        if (errno == EINTR || errno == ECONNABORTED) continue;
        return;  // shut down
      }
      const int on = 1;
      ::setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &on, sizeof(on));
      std::lock_guard<std::mutex> lock(s.mutex);
      if (s.stopping) {
        ::close(fd);
        return;
      }
      s.clients.push_back(fd);
      s.threads.emplace_back([&s, fd] { s.serve(fd); });
    }
  });
}

StoreServer::~StoreServer() {
  State& s = *state_;
  s.stopping = true;
  ::shutdown(s.listen_fd, SHUT_RDWR);  // wakes accept()
  s.acceptor.join();
  std::vector<std::thread> threads;
  {
    std::lock_guard<std::mutex> lock(s.mutex);
    for (int fd : s.clients) ::shutdown(fd, SHUT_RDWR);  // wakes each client's recv()
    threads.swap(s.threads);
  }
  for (auto& t : threads) t.join();
  for (int fd : s.clients) ::close(fd);
  ::close(s.listen_fd);
}

int StoreServer::port() const {
  return state_->port;
}

// ---------------------------------------------------------------- client

namespace {

// One connection attempt to host:port before `deadline`: the socket, or -1 with `error` set.
int connect_once(const std::string& host, int port, Clock::time_point deadline,
                 std::string& error) {
  addrinfo hints{};
  hints.ai_family = AF_UNSPEC;
  hints.ai_socktype = SOCK_STREAM;
  addrinfo* found = nullptr;
  const int status = ::getaddrinfo(host.c_str(), std::to_string(port).c_str(), &hints, &found);
  if (status != 0) {
    error = str("cannot resolve '", host, "': ", ::gai_strerror(status));
    return -1;
  }
  int result = -1;
  for (addrinfo* a = found; a && result < 0; a = a->ai_next) {
    const int fd = ::socket(a->ai_family, a->ai_socktype | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
    if (fd < 0) continue;
    int r = ::connect(fd, a->ai_addr, a->ai_addrlen);
    if (r != 0 && errno == EINPROGRESS && wait_ready(fd, POLLOUT, deadline)) {
      int so_error = 0;
      socklen_t length = sizeof(so_error);
      ::getsockopt(fd, SOL_SOCKET, SO_ERROR, &so_error, &length);
      r = so_error == 0 ? 0 : -1;
      errno = so_error;
    }
    if (r == 0) {
      const int on = 1;
      ::setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &on, sizeof(on));
      result = fd;
    } else {
      error = std::strerror(errno ? errno : ETIMEDOUT);
      ::close(fd);
    }
  }
  ::freeaddrinfo(found);
  return result;
}

}  // namespace

Store::Store(const std::string& host, int port, std::string job_id, int64_t world_size,
             std::chrono::milliseconds timeout)
    : address_(str(host, ":", port)), timeout_(timeout) {
  const auto deadline = Clock::now() + timeout;
  std::string error = "no attempt";
  const std::string mine = hello(job_id, world_size);
  for (;;) {
    fd_ = connect_once(host, port, deadline, error);
    if (fd_ >= 0) {
      // A listener that does not answer our handshake with the same job is someone else's.
      const auto answer_by = std::min(deadline, Clock::now() + std::chrono::seconds(5));
      auto theirs = send_message(fd_, mine, deadline) ? recv_message(fd_, answer_by) : std::nullopt;
      if (theirs && *theirs == mine) return;
      ::close(fd_);
      fd_ = -1;
      if (theirs && is_store_hello(*theirs))
        error = "a Kiln store of another job or world size answered";
      else
        error = "the listener there is not a Kiln store";
      throw DistributedError(str("[store] ", address_, ": ", error));
    }
    if (Clock::now() + std::chrono::milliseconds(50) >= deadline) break;
    std::this_thread::sleep_for(std::chrono::milliseconds(50));  // the server may start later
  }
  throw DistributedError(str("[store] could not reach the rendezvous at ", address_, " within ",
                             timeout.count(), " ms (", error,
                             "): is rank 0 running, and are MASTER_ADDR and MASTER_PORT right?"));
}

Store::~Store() {
  if (fd_ >= 0) ::close(fd_);
}

std::string Store::request(const std::string& message) {
  std::lock_guard<std::mutex> lock(mutex_);
  const auto deadline = Clock::now() + timeout_;
  auto reply = send_message(fd_, message, deadline) ? recv_message(fd_, deadline) : std::nullopt;
  KILN_CHECK(reply.has_value(), DistributedError, "[store] ", address_, ": no answer within ",
             timeout_.count(), " ms (the store, rank 0, may have died)");
  return *reply;
}

void Store::set(const std::string& key, const std::string& value) {
  std::string m(1, static_cast<char>(kSet));
  put_string(m, key);
  put_string(m, value);
  request(m);
}

std::optional<std::string> Store::try_get(const std::string& key) {
  std::string m(1, static_cast<char>(kGet));
  put_string(m, key);
  const std::string reply = request(m);
  Reader in{reply};
  if (in.bytes(1) == 0) return std::nullopt;
  std::string value = in.string();
  KILN_CHECK(in.ok, DistributedError, "[store] ", address_, ": malformed answer");
  return value;
}

std::string Store::get(const std::string& key) {
  wait({key});
  auto value = try_get(key);
  KILN_CHECK(value.has_value(), DistributedError, "[store] ", address_, ": '", key, "' vanished");
  return *value;
}

int64_t Store::add(const std::string& key, int64_t delta) {
  std::string m(1, static_cast<char>(kAdd));
  put_string(m, key);
  put_i64(m, delta);
  const std::string reply = request(m);
  Reader in{reply};
  const int64_t value = in.i64();
  KILN_CHECK(in.ok, DistributedError, "[store] ", address_, ": malformed answer");
  return value;
}

std::vector<bool> Store::check(const std::vector<std::string>& keys) {
  std::string m(1, static_cast<char>(kCheck));
  put_u32(m, static_cast<uint32_t>(keys.size()));
  for (const std::string& key : keys) put_string(m, key);
  const std::string reply = request(m);
  KILN_CHECK(reply.size() == keys.size(), DistributedError, "[store] ", address_,
             ": malformed answer");
  std::vector<bool> out;
  for (char c : reply) out.push_back(c != 0);
  return out;
}

void Store::wait(const std::vector<std::string>& keys) {
  wait(keys, timeout_);
}

void Store::wait(const std::vector<std::string>& keys, std::chrono::milliseconds timeout) {
  const auto deadline = Clock::now() + timeout;
  auto pause = std::chrono::milliseconds(1);
  for (;;) {
    const std::vector<bool> here = check(keys);
    std::string missing;
    int count = 0;
    for (size_t i = 0; i < keys.size(); ++i)
      if (!here[i] && ++count <= 16) missing += str(count > 1 ? ", " : "", "'", keys[i], "'");
    if (count == 0) return;
    if (Clock::now() >= deadline) {
      if (count > 16) missing += str(" and ", count - 16, " more");
      throw DistributedError(
          str("[store] ", address_, ": waited ", timeout.count(), " ms; still missing ", missing));
    }
    std::this_thread::sleep_for(pause);
    pause = std::min(pause * 2, std::chrono::milliseconds(50));
  }
}

// ---------------------------------------------------------------- rendezvous

Rendezvous rendezvous(const Environment& env, std::chrono::milliseconds timeout) {
  Rendezvous r;
  r.environment = env;
  const auto deadline = Clock::now() + timeout;
  const int first = static_cast<int>(env.master_port);
  if (env.rank == 0) {
    // The first free port of the candidates: torchrun's agent may hold MASTER_PORT.
    std::string errors;
    for (int p = first; p < first + kStorePortCandidates && p <= 65535 && !r.server; ++p) {
      try {
        r.server = std::make_unique<StoreServer>(p, rendezvous_id(env), env.world_size);
      } catch (const DistributedError& e) {
        errors += str(errors.empty() ? "" : "; ", e.what());
      }
    }
    KILN_CHECK(r.server != nullptr, DistributedError,
               "[rendezvous] rank 0 cannot host the store on ", "ports ", first, "..",
               first + kStorePortCandidates - 1, ": ", errors);
  }
  // Every rank: the candidates in order, until one is this job's store.
  std::string errors;
  while (!r.store) {
    for (int p = first; p < first + kStorePortCandidates && p <= 65535 && !r.store; ++p) {
      const auto left =
          std::chrono::duration_cast<std::chrono::milliseconds>(deadline - Clock::now());
      try {
        // A short attempt per port; the outer loop retries until the deadline.
        r.store = std::make_unique<Store>(env.master_addr, p, rendezvous_id(env), env.world_size,
                                          std::min(left, std::chrono::milliseconds(200)));
      } catch (const DistributedError& e) {
        if (p == first) errors = e.what();
      }
    }
    if (!r.store && Clock::now() >= deadline)
      throw DistributedError(str("[rendezvous] rank ", env.rank, " of ", env.world_size,
                                 ": no store of this job at ", env.master_addr, " ports ", first,
                                 "..", first + kStorePortCandidates - 1, " within ",
                                 timeout.count(), " ms (", errors, ")"));
  }
  r.store->set_timeout(timeout);  // it was reached with a short per-port attempt
  // Announce, then wait for every rank; the error names the ranks that never came.
  r.store->set(str("rank/", env.rank), str(env.local_rank));
  std::vector<std::string> keys;
  for (int64_t k = 0; k < env.world_size; ++k) keys.push_back(str("rank/", k));
  // Polled here rather than with Store::wait, so the ranks missing at the last look are known
  // even when the store itself goes away (rank 0 giving up at its own timeout).
  std::vector<bool> here(keys.size(), false);
  std::string lost;
  for (auto pause = std::chrono::milliseconds(1);;) {
    try {
      here = r.store->check(keys);
    } catch (const DistributedError& e) {
      lost = str(" (then the store went away: ", e.what(), ")");
      break;
    }
    if (std::find(here.begin(), here.end(), false) == here.end()) return r;
    if (Clock::now() >= deadline) break;
    std::this_thread::sleep_for(pause);
    pause = std::min(pause * 2, std::chrono::milliseconds(50));
  }
  std::string absent;
  int64_t count = 0;
  for (int64_t k = 0; k < env.world_size; ++k)
    if (!here[k] && ++count <= 16) absent += str(count > 1 ? ", " : "", k);
  if (count > 16) absent += str(" and ", count - 16, " more");
  throw DistributedError(str("[rendezvous] rank ", env.rank, " of ", env.world_size, ": rank",
                             count > 1 ? "s " : " ", absent, " did not arrive within ",
                             timeout.count(), " ms at ", r.store->address(), lost));
}

}  // namespace kiln::distributed
