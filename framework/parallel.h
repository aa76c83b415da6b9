// A small thread pool for intra-op parallel loops.
#pragma once

#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <functional>
#include <mutex>
#include <thread>
#include <vector>

namespace kiln {

/// Runs parallel loops on `num_threads` threads (the caller counts as one). One loop runs at a
/// time; a loop started while another is running (from a kernel inside a loop, say) runs inline.
class ThreadPool {
 public:
  /// `num_threads` <= 0 means one per hardware core.
  explicit ThreadPool(int num_threads);
  ~ThreadPool();
  ThreadPool(const ThreadPool&) = delete;
  ThreadPool& operator=(const ThreadPool&) = delete;

  int num_threads() const { return static_cast<int>(workers_.size()) + 1; }

  /// Calls fn(begin, end) over disjoint ranges covering [0, n). Ranges hold at least `grain`
  /// items (except the last), so small loops run inline without waking anyone. How the range
  /// is cut depends only on n and grain, never on the thread count, so results that depend on
  /// the cut (float partial sums) are the same with any number of threads.
  void parallel_for(int64_t n, int64_t grain, const std::function<void(int64_t, int64_t)>& fn);

 private:
  // One parallel_for call. It lives on the caller's stack; workers reach it only through
  // current_, under mutex_, and the caller waits until no worker holds it before returning.
  struct Loop {
    const std::function<void(int64_t, int64_t)>* fn = nullptr;
    int64_t n = 0, chunk = 0, num_chunks = 0;
    std::atomic<int64_t> next{0};  // next chunk to claim
    // Chunks finished and workers inside run_chunks: changed under mutex_, read without it
    // by the owner while it polls for the loop's end.
    std::atomic<int64_t> done{0};
    std::atomic<int> workers{0};
    std::exception_ptr error;  // first exception (guarded by mutex_)
  };

  void worker_loop();
  void run_chunks(Loop& loop);

  std::vector<std::thread> workers_;
  std::mutex mutex_;
  std::condition_variable wake_;
  std::condition_variable done_;
  std::mutex loop_mutex_;                // held by the thread that owns the current loop
  Loop* current_ = nullptr;              // guarded by mutex_
  std::atomic<uint64_t> generation_{0};  // bumped per loop under mutex_; polled while idle
  bool stop_ = false;
};

/// Number of hardware threads (at least 1).
int hardware_threads();

}  // namespace kiln
