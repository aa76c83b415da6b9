// Errors raised to users, and the internal assertion macro.
#pragma once

#include <sstream>
#include <stdexcept>
#include <string>
#include <utility>

namespace kiln {

/// Every user-facing error. The message starts with the component in brackets:
/// `[matmul] dense1/matmul: inner dimensions differ: a is [64, 784], b is [512, 10]`.
class Error : public std::runtime_error {
 public:
  explicit Error(const std::string& message) : std::runtime_error(message) {}
};

/// A graph that cannot be built: wrong shapes, dtypes or attributes.
class GraphError : public Error {
 public:
  using Error::Error;
};

/// A file (graph, checkpoint, data) that cannot be read or written.
class FileError : public Error {
 public:
  using Error::Error;
};

/// A value fed to or fetched from a Session that does not fit the graph.
class FeedError : public Error {
 public:
  using Error::Error;
};

/// A NaN or infinity found where SessionOptions::check_numerics asked for finite values.
class NumericsError : public Error {
 public:
  using Error::Error;
};

/// A device that was asked for but cannot be used (no driver, no such GPU, out of memory).
class DeviceError : public Error {
 public:
  using Error::Error;
};

/// A distributed run that cannot go on: a bad environment, a rendezvous or collective that
/// timed out, a peer that died. The message names the rank(s) and what was waited for.
class DistributedError : public Error {
 public:
  using Error::Error;
};

namespace detail {
template <typename... Args>
std::string concat(Args&&... args) {
  std::ostringstream out;
  (out << ... << std::forward<Args>(args));
  return out.str();
}
[[noreturn]] void assertion_failed(const char* expr, const char* file, int line);
}  // namespace detail

/// Builds a message from streamable pieces: str("x is ", shape, ", axis ", axis).
template <typename... Args>
std::string str(Args&&... args) {
  return detail::concat(std::forward<Args>(args)...);
}

}  // namespace kiln

/// Throws ErrorType with a message built from the remaining arguments when `cond` is false.
#define KILN_CHECK(cond, ErrorType, ...)                    \
  do {                                                      \
    if (!(cond)) throw ErrorType(::kiln::str(__VA_ARGS__)); \
  } while (0)

/// Internal invariant: checked in debug builds, a no-op in release builds.
#ifdef NDEBUG
#define KILN_DASSERT(cond) ((void)0)
#else
#define KILN_DASSERT(cond) \
  ((cond) ? (void)0 : ::kiln::detail::assertion_failed(#cond, __FILE__, __LINE__))
#endif
