// Work distribution of the CPU kernels: a small persistent thread pool shared by both ISA builds
// (kernels_impl.h calls it through a plain function pointer, so no template crosses the ISA
// boundary). Replaces OpenMP, whose join at the end of a parallel region waits for every team
// member: on a loaded machine that is a worker the OS has not scheduled yet, which made a 2 ms
// Sobel take 15-30 ms. Here the calling thread claims chunks itself and only waits for chunks a
// worker has already started, so a late worker costs nothing (it finds no work and sleeps again).
#pragma once
#include <cstdint>

namespace refusion {

// Processes items [begin, end) of a job; ctx is the kernel's argument block.
using ChunkFn = void (*)(void* ctx, std::int64_t begin, std::int64_t end);

// Runs fn over [0, n) in chunks of `grain` items with up to `nthreads` threads (the caller
// included). Runs inline when nthreads <= 1, when there is a single chunk, or when another job
// is in flight (concurrent callers from other Python threads do not queue behind each other).
void parallel_chunks(std::int64_t n, std::int64_t grain, int nthreads, ChunkFn fn, void* ctx);

// Number of pool workers started so far (for tests / diagnostics).
int pool_workers();

// Asks the kernel to back [p, p + bytes) with transparent huge pages (Linux, large buffers
// only; a no-op elsewhere). Fresh multi-megabyte outputs are otherwise faulted in one 4 KiB page
// at a time, which costs more than computing the gate itself.
void advise_huge_pages(void* p, std::int64_t bytes);

}  // namespace refusion
