#include "kiln/framework/parallel.h"

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

void ThreadPool::run_chunks(Loop& loop) {
  // Claims chunks until none are left; records the first exception.
  int64_t done = 0;
  for (int64_t c; (c = loop.next.fetch_add(1)) < loop.num_chunks;) {
    const int64_t begin = c * loop.chunk;
    const int64_t end = std::min(loop.n, begin + loop.chunk);
    try {
      (*loop.fn)(begin, end);
    } catch (...) {
      std::lock_guard<std::mutex> lock(mutex_);
      if (!loop.error) loop.error = std::current_exception();
    }
    ++done;
  }
  std::lock_guard<std::mutex> lock(mutex_);
  loop.done += done;
  if (loop.done == loop.num_chunks) done_.notify_all();
}

namespace {

// Polls `done` up to `spins` times, pausing between tries; whether it became true. Threads poll
// briefly before they sleep: a plan's loops come in quick succession, and waking a sleeping
// thread (a futex, on a virtual machine an interrupt between processors) takes longer than
// many of them.
template <typename Done>
bool poll(int spins, const Done& done) {
  for (int spin = 0; spin < spins; ++spin) {
    if (done()) return true;
#if defined(__x86_64__) || defined(__i386__)
    __builtin_ia32_pause();
#else
    std::this_thread::yield();
#endif
  }
  return done();
}

}  // namespace

void ThreadPool::worker_loop() {
  uint64_t seen = 0;
  for (;;) {
    poll(2000, [&] { return generation_.load(std::memory_order_acquire) != seen; });
    Loop* loop;
    {
      std::unique_lock<std::mutex> lock(mutex_);
      wake_.wait(lock, [&] { return stop_ || generation_.load() != seen; });
      if (stop_) return;
      seen = generation_.load();
      loop = current_;  // null when the loop this wake-up was for has already finished
      if (!loop) continue;
      ++loop->workers;
    }
    run_chunks(*loop);
    std::lock_guard<std::mutex> lock(mutex_);
    if (--loop->workers == 0) done_.notify_all();
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
  Loop loop;
  loop.fn = &fn;
  loop.n = n;
  loop.chunk = grain;
  loop.num_chunks = (n + grain - 1) / grain;
  {
    std::lock_guard<std::mutex> lock(mutex_);
    current_ = &loop;
    generation_.fetch_add(1);
  }
  wake_.notify_all();
  run_chunks(loop);
  // The other threads' last chunks: wait for them without sleeping first.
  poll(2000, [&] {
    return loop.done.load(std::memory_order_acquire) == loop.num_chunks &&
           loop.workers.load(std::memory_order_acquire) == 0;
  });
  std::exception_ptr error;
  {
    // Every chunk done and no worker still holding the loop; then unpublish it in the same
    // critical section, so no worker can pick it up afterwards.
    std::unique_lock<std::mutex> lock(mutex_);
    done_.wait(lock, [&] { return loop.done == loop.num_chunks && loop.workers == 0; });
    current_ = nullptr;
    error = loop.error;
  }
  if (error) std::rethrow_exception(error);
}

}  // namespace kiln
