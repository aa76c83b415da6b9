#include "framework/parallel.h"

#include <algorithm>

namespace kiln {

int hardware_threads() {
  return std::max(1u, std::thread::hardware_concurrency());
}

ThreadPool::ThreadPool(int num_threads) {
  if (num_threads <= 0) num_threads = hardware_threads();
  for (int i = 1; i < num_threads; ++i) workers_.emplace_back([this] { worker_loop(); });
}

ThreadPool::~ThreadPool() {
  {
    std::lock_guard<std::mutex> lock(mutex_);
    stop_ = true;
  }
  wake_.notify_all();
  for (auto& t : workers_) t.join();
}

void ThreadPool::run_chunks() {
  // Claims chunks until none are left; records the first exception.
  int64_t done = 0;
  for (int64_t c; (c = next_chunk_.fetch_add(1)) < num_chunks_;) {
    int64_t begin = c * chunk_;
    int64_t end = std::min(n_, begin + chunk_);
    try {
      (*fn_)(begin, end);
    } catch (...) {
      std::lock_guard<std::mutex> lock(mutex_);
      if (!error_) error_ = std::current_exception();
    }
    ++done;
  }
  std::lock_guard<std::mutex> lock(mutex_);
  chunks_done_ += done;
  if (chunks_done_ == num_chunks_) done_.notify_all();
}

void ThreadPool::worker_loop() {
  uint64_t seen = 0;
  for (;;) {
    // Poll briefly before sleeping: a plan's loops come in quick succession, and waking a
    // sleeping thread takes longer than many of them.
    for (int spin = 0; spin < 2000 && generation_.load(std::memory_order_acquire) == seen; ++spin) {
#if defined(__x86_64__) || defined(__i386__)
      __builtin_ia32_pause();
#else
      std::this_thread::yield();
#endif
    }
    {
      std::unique_lock<std::mutex> lock(mutex_);
      wake_.wait(lock, [&] { return stop_ || generation_ != seen; });
      if (stop_) return;
      seen = generation_;
      ++active_workers_;
    }
    run_chunks();
    std::lock_guard<std::mutex> lock(mutex_);
    if (--active_workers_ == 0) done_.notify_all();
  }
}

void ThreadPool::parallel_for(int64_t n, int64_t grain,
                              const std::function<void(int64_t, int64_t)>& fn) {
  if (n <= 0) return;
  grain = std::max<int64_t>(grain, 1);
  std::unique_lock<std::mutex> owner(loop_mutex_, std::try_to_lock);
  if (workers_.empty() || n <= grain || !owner.owns_lock()) {
    // Inline, but cut the same way so cut-dependent results do not change.
    for (int64_t begin = 0; begin < n; begin += grain) fn(begin, std::min(n, begin + grain));
    return;
  }
  {
    std::lock_guard<std::mutex> lock(mutex_);
    fn_ = &fn;
    n_ = n;
    chunk_ = grain;
    num_chunks_ = (n + grain - 1) / grain;
    next_chunk_ = 0;
    chunks_done_ = 0;
    error_ = nullptr;
    ++generation_;
  }
  wake_.notify_all();
  run_chunks();
  std::exception_ptr error;
  {
    // Wait for every chunk and for every worker to leave run_chunks (they read fn_).
    std::unique_lock<std::mutex> lock(mutex_);
    done_.wait(lock, [&] { return chunks_done_ == num_chunks_ && active_workers_ == 0; });
    fn_ = nullptr;
    error = error_;
  }
  if (error) std::rethrow_exception(error);
}

}  // namespace kiln
