// Persistent thread pool behind parallel_chunks (see parallel.h for why not OpenMP).
//
// One job at a time. The job's chunk cursor and its generation share one 64-bit atomic
// (generation << 32 | next chunk), so a worker that wakes up late, after its job finished and
// the next one started, fails the compare-exchange instead of stealing chunks of the new job with
// the old function. The caller publishes the job, wakes the workers, claims chunks like any
// worker, then waits only until every claimed chunk is done. Correctness never depends on a
// worker showing up: after fork() the child has no workers and the caller simply does it all.
#include "cpu/parallel.h"

#include <algorithm>
#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <mutex>
#include <thread>

#if defined(__linux__)
#include <sys/mman.h>
#endif
#if defined(__unix__) || defined(__APPLE__)
#include <pthread.h>
#define REFUSION_HAVE_ATFORK 1
#endif

namespace refusion {
namespace {

using i64 = std::int64_t;
using u64 = std::uint64_t;
using u32 = std::uint32_t;

// More workers than this never help the memory-bound kernels.
constexpr int kMaxWorkers = 63;

struct Job {
  ChunkFn fn = nullptr;
  void* ctx = nullptr;
  i64 n = 0;
  i64 grain = 1;
  u32 chunks = 0;
};

class Pool {
 public:
  void run(i64 n, i64 grain, int nthreads, ChunkFn fn, void* ctx) {
    const i64 chunks64 = (n + grain - 1) / grain;
    std::unique_lock<std::mutex> submit(submit_, std::try_to_lock);
    if (!submit.owns_lock() || chunks64 > 0xffffffffLL) {
      fn(ctx, 0, n);
      return;
    }
    const u32 chunks = static_cast<u32>(chunks64);
    const int helpers = static_cast<int>(
        std::min<i64>(std::min(nthreads - 1, kMaxWorkers), chunks64 - 1));
    start_workers(helpers);
    Job job{fn, ctx, n, grain, chunks};
    u32 gen;
    {
      std::lock_guard<std::mutex> lk(m_);
      gen = ++gen_;
      if (gen == 0) gen = ++gen_;  // 0 means "nothing seen yet" to a fresh worker
      job_ = job;
      slots_ = helpers;
      done_.store(0, std::memory_order_relaxed);
      cursor_.store(static_cast<u64>(gen) << 32, std::memory_order_release);
    }
    cv_.notify_all();
    drain(gen, job);
    // Only chunks that a running worker has claimed are outstanding here.
    while (done_.load(std::memory_order_acquire) != chunks) std::this_thread::yield();
  }

  int workers() {
    std::lock_guard<std::mutex> lk(m_);
    return static_cast<int>(threads_);
  }

 private:
  void start_workers(int wanted) {
    // Called with submit_ held, so only one thread grows the pool.
    while (static_cast<int>(threads_) < wanted) {
      std::thread(&Pool::worker_loop, this).detach();
      ++threads_;
    }
  }

  void worker_loop() {
    u32 seen = 0;
    for (;;) {
      Job job;
      u32 gen;
      {
        std::unique_lock<std::mutex> lk(m_);
        cv_.wait(lk, [&] { return gen_ != seen; });
        seen = gen = gen_;
        // Honour the caller's thread count when the pool is larger than it asked for.
        if (slots_ <= 0) continue;
        --slots_;
        job = job_;
      }
      drain(gen, job);
    }
  }

  void drain(u32 gen, const Job& job) {
    u64 cur = cursor_.load(std::memory_order_acquire);
    for (;;) {
      if (static_cast<u32>(cur >> 32) != gen || static_cast<u32>(cur) >= job.chunks) return;
      if (!cursor_.compare_exchange_weak(cur, cur + 1, std::memory_order_acq_rel,
                                         std::memory_order_acquire)) {
        continue;
      }
      const i64 begin = static_cast<i64>(static_cast<u32>(cur)) * job.grain;
      const i64 end = begin + job.grain < job.n ? begin + job.grain : job.n;
      job.fn(job.ctx, begin, end);
      done_.fetch_add(1, std::memory_order_acq_rel);
      cur = cursor_.load(std::memory_order_acquire);
    }
  }

  std::mutex submit_;  // held by the thread whose job is in flight
  std::mutex m_;       // guards gen_, job_, slots_, threads_
  std::condition_variable cv_;
  u32 gen_ = 0;
  Job job_;
  int slots_ = 0;
  unsigned threads_ = 0;
  std::atomic<u64> cursor_{0};
  std::atomic<u32> done_{0};
};

// Leaked on purpose: detached workers block on its condition variable until the process exits,
// so it must outlive static destruction.
std::atomic<Pool*> g_pool{nullptr};

#ifdef REFUSION_HAVE_ATFORK
// The child inherits the pool's memory but none of its threads, possibly with a mutex held by a
// worker at the moment of fork(): start over with an empty pool (the old one is leaked).
void reset_pool_in_child() { g_pool.store(new Pool(), std::memory_order_relaxed); }
#endif

Pool& pool() {
  static const bool init = [] {
    g_pool.store(new Pool(), std::memory_order_release);
#ifdef REFUSION_HAVE_ATFORK
    pthread_atfork(nullptr, nullptr, &reset_pool_in_child);
#endif
    return true;
  }();
  (void)init;
  return *g_pool.load(std::memory_order_acquire);
}

}  // namespace

void parallel_chunks(i64 n, i64 grain, int nthreads, ChunkFn fn, void* ctx) {
  if (n <= 0) return;
  if (grain < 1) grain = 1;
  if (nthreads <= 1 || n <= grain) {
    fn(ctx, 0, n);
    return;
  }
  pool().run(n, grain, nthreads, fn, ctx);
}

int pool_workers() { return pool().workers(); }

void advise_huge_pages(void* p, i64 bytes) {
#if defined(__linux__) && defined(MADV_HUGEPAGE)
  constexpr std::uintptr_t kHuge = std::uintptr_t(2) << 20;
  if (bytes < static_cast<i64>(4 * kHuge)) return;
  const std::uintptr_t lo = (reinterpret_cast<std::uintptr_t>(p) + kHuge - 1) & ~(kHuge - 1);
  const std::uintptr_t hi = (reinterpret_cast<std::uintptr_t>(p) + bytes) & ~(kHuge - 1);
  // Advice only: failure (THP disabled, not an anonymous mapping) changes nothing.
  if (hi > lo) madvise(reinterpret_cast<void*>(lo), hi - lo, MADV_HUGEPAGE);
#else
  (void)p;
  (void)bytes;
#endif
}

}  // namespace refusion
