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
  void worker_loop();
  void run_chunks();

  std::vector<std::thread> workers_;
  std::mutex mutex_;
  std::condition_variable wake_;
  std::condition_variable done_;
  std::mutex loop_mutex_;  // held by the thread that owns the current loop
  // The current loop.
  const std::function<void(int64_t, int64_t)>* fn_ = nullptr;
  int64_t n_ = 0, chunk_ = 0, num_chunks_ = 0;
  std::atomic<int64_t> next_chunk_{0};
  int64_t chunks_done_ = 0;
  std::atomic<uint64_t> generation_{0};  // written under mutex_, read without it while spinning
  int active_workers_ = 0;
  bool stop_ = false;
  std::exception_ptr error_;
};

/// Number of hardware threads (at least 1).
int hardware_threads();

}  // namespace kiln
