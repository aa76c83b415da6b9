// Helpers shared by the tests: random tensors, running a graph, reference broadcasting.
#pragma once

#include <gtest/gtest.h>

#include <kiln/kiln.h>
#include <filesystem>

#include <cmath>
#include <functional>
#include <random>
#include <string>
#include <vector>

namespace kiln::testing {

/// A path in the build tree's scratch folder for test files.
inline std::string tmp(const std::string& name) {
  // Made on first use: a test binary carried to another machine has no build tree there.
  static const bool made = [] {
    std::filesystem::create_directories(KILN_TEST_TMP);
    return true;
  }();
  (void)made;
  return std::string(KILN_TEST_TMP) + "/" + name;
}

/// A tensor of `dtype` with elements drawn uniformly from [low, high) (integers: rounded).
inline Tensor random_tensor(DType dtype, const Shape& shape, double low, double high,
                            uint32_t seed) {
  std::mt19937 rng(seed);
  std::uniform_real_distribution<double> dist(low, high);
  Tensor t = Tensor::empty(dtype, shape);
  dispatch_all(dtype, [&](auto tag) {
    using T = decltype(tag);
    T* p = t.data<T>();
    for (int64_t i = 0; i < t.numel(); ++i) {
      double v = dist(rng);
      if constexpr (std::is_integral_v<T>) v = std::floor(v);
      p[i] = convert<T>(v);
    }
  });
  return t;
}

/// An f64 tensor uniform in [lo, hi) (random_tensor's), the element type of the f64 formula tests.
inline Tensor r64(const Shape& shape, double lo, double hi, uint32_t seed) {
  return random_tensor(f64, shape, lo, hi, seed);
}

/// A copy with every element rounded down to a whole number (floating dtypes).
inline Tensor floor_values(const Tensor& t) {
  Tensor out = t.clone();
  dispatch_all(t.dtype(), [&](auto tag) {
    using T = decltype(tag);
    if constexpr (std::is_floating_point_v<T>)
      for (int64_t i = 0; i < t.numel(); ++i) out.data<T>()[i] = std::floor(out.data<T>()[i]);
  });
  return out;
}

/// Every element as double.
inline std::vector<double> values(const Tensor& t) {
  std::vector<double> out(static_cast<size_t>(t.numel()));
  for (int64_t i = 0; i < t.numel(); ++i) out[i] = t.element(i);
  return out;
}

/// Runs `fetch` with `feeds` on a fresh CPU session.
inline Tensor run1(Graph& g, const Value& fetch, const FeedList& feeds = {}, int threads = 2) {
  Session s(g, {.intra_op_threads = threads});
  return s.run(feeds, {fetch})[0];
}

/// Multi-index of row-major position `i` in `shape`.
inline std::vector<int64_t> unravel(int64_t i, const Shape& shape) {
  std::vector<int64_t> idx(shape.rank());
  for (int64_t d = shape.rank() - 1; d >= 0; --d) {
    idx[d] = shape[d] ? i % shape[d] : 0;
    i = shape[d] ? i / shape[d] : 0;
  }
  return idx;
}

/// Position in `in` (broadcast to an output of rank idx.size()) of output index `idx`.
inline int64_t broadcast_source(const std::vector<int64_t>& idx, const Shape& in) {
  int64_t offset = 0;
  const int64_t shift = static_cast<int64_t>(idx.size()) - in.rank();
  for (int64_t d = 0; d < in.rank(); ++d)
    offset = offset * in[d] + (in[d] == 1 ? 0 : idx[d + shift]);
  return offset;
}

/// Expects every element of `actual` within atol + rtol * |expected| (NaN equals NaN).
inline void expect_near(const std::vector<double>& expected, const Tensor& actual, double rtol,
                        double atol, const std::string& what) {
  ASSERT_EQ(static_cast<int64_t>(expected.size()), actual.numel()) << what;
  int failures = 0;
  for (size_t i = 0; i < expected.size() && failures < 5; ++i) {
    double a = actual.element(static_cast<int64_t>(i)), e = expected[i];
    if (std::isnan(e) && std::isnan(a)) continue;
    if (std::isinf(e) && a == e) continue;
    if (!(std::abs(a - e) <= atol + rtol * std::abs(e))) {
      ADD_FAILURE() << what << ": element " << i << " is " << a << ", expected " << e;
      ++failures;
    }
  }
}

/// Expects `fn` to throw E with a message containing each of `parts`.
template <typename E = Error>
void expect_error(const std::function<void()>& fn, const std::vector<std::string>& parts) {
  try {
    fn();
    ADD_FAILURE() << "expected an exception containing '" << (parts.empty() ? "" : parts[0]) << "'";
  } catch (const E& e) {
    std::string message = e.what();
    for (const std::string& part : parts)
      EXPECT_NE(message.find(part), std::string::npos)
          << "message '" << message << "' lacks '" << part << "'";
  }
}

/// The tolerance used for a floating dtype in op tests.
inline double tolerance(DType dtype) {
  return dtype == f64 ? 1e-12 : 2e-6;
}

}  // namespace kiln::testing
