// SIMT emulation of the CUDA constructs that csrc/cuda/*.cuh use, for the host compiler (tests only).
// Include this before any kernel header.
//
// One OS thread per CUDA thread of a block; the blocks of a launch run one at a time (so
// `__shared__` can be `static`) in reversed or shuffled order, never only in index order, so a
// block that depends on another block of the same launch shows up.
// - __syncthreads is a barrier over the block, warp shuffles go through a per-warp slot array
//   between two per-warp barriers. Under ThreadSanitizer a barrier is a mutex + condition variable,
//   which gives TSan exactly the ordering of the barrier (std::barrier's shared pool of seq_cst
//   counters gave it false orderings and hid races), so a missing __syncthreads shows up as a data
//   race (see Barrier).
// - Every lane of a warp must reach each shuffle / __syncwarp, at the same call site, with a mask
//   naming every lane; every thread of a block must reach each __syncthreads at the same call site.
//   Anything else (undefined behaviour on a GPU) stops the test with a message, deadlocks included.
// - atomicAdd is a relaxed std::atomic_ref add, as CUDA's atomics are relaxed.
// - launch() refuses what a GPU would refuse (mlc::cuda::launch_shape_error).
// AddressSanitizer sees out-of-bounds global accesses.
#pragma once
#include <algorithm>
#include <atomic>
#include <cassert>
#include <condition_variable>
#include <cstdarg>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <mutex>
#include <numeric>
#include <source_location>
#include <thread>
#include <vector>

#include <cuda/launch_limits.h>

#if defined(__CUDACC__)
#error "simt_emu.h is for the host compiler"
#endif

#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __shared__ static

struct dim3 {
  unsigned x = 1, y = 1, z = 1;
  constexpr dim3(unsigned x_ = 1, unsigned y_ = 1, unsigned z_ = 1) : x(x_), y(y_), z(z_) {}
};
using uint3 = dim3;

inline thread_local uint3 threadIdx, blockIdx;
inline dim3 blockDim, gridDim;  // written before the block's threads start: no race

namespace simt {

constexpr unsigned kWarpSize = 32;

// Stops the test: a kernel did something a GPU does not define (or the emulation cannot run).
// Prints once and exits at once (other threads may be blocked in a barrier).
[[noreturn]] inline void fail(const char* fmt, ...) __attribute__((format(printf, 1, 2)));
[[noreturn]] inline void fail(const char* fmt, ...) {
  static std::mutex m;
  m.lock();  // never unlocked: a second failing thread waits here until the process ends
  va_list ap;
  va_start(ap, fmt);
  std::fputs("SIMT EMULATION ERROR: ", stderr);
  std::vfprintf(stderr, fmt, ap);
  std::fputs("\n", stderr);
  va_end(ap);
  std::fflush(stdout);
  std::fflush(stderr);
  std::_Exit(3);
}

struct Site {
  const char* file = "";
  unsigned line = 0;
  bool operator==(const Site& o) const { return line == o.line && std::strcmp(file, o.file) == 0; }
};
inline Site site_of(const std::source_location& loc) { return Site{loc.file_name(), loc.line()}; }

// Threads of the current block that wait in a barrier (low 32 bits) or have left the kernel (high
// 32 bits). Relaxed: a bookkeeping count, it must not give ThreadSanitizer any ordering.
struct Liveness {
  explicit Liveness(unsigned threads) : n(threads) {}
  std::atomic<uint64_t> v{0};
  const unsigned n;
  void check(uint64_t now, const char* what, const Site& s) const {
    const unsigned waiting = static_cast<unsigned>(now & 0xffffffffu), exited = static_cast<unsigned>(now >> 32);
    if (waiting > 0 && waiting + exited == n)
      fail("deadlock in block (%u,%u,%u): %u threads wait in a barrier (last: %s at %s:%u), %u have "
           "returned: a __syncthreads / warp shuffle / __syncwarp not reached by every thread "
           "(block) or lane (warp)",
           blockIdx.x, blockIdx.y, blockIdx.z, waiting, what, s.file, s.line, exited);
  }
  void wait_begin(const char* what, const Site& s) { check(v.fetch_add(1, std::memory_order_relaxed) + 1, what, s); }
  void released(unsigned k) { v.fetch_sub(k, std::memory_order_relaxed); }
  void exit(const char* what, const Site& s) {
    check(v.fetch_add(uint64_t(1) << 32, std::memory_order_relaxed) + (uint64_t(1) << 32), what, s);
  }
};

#if defined(__SANITIZE_THREAD__)
constexpr bool kThreadSanitizer = true;
#else
constexpr bool kThreadSanitizer = false;
#endif

// A barrier for n threads that must all arrive at the same call site (and, for warp operations,
// with the same mask). Under ThreadSanitizer the waiting is a plain condition variable on the
// barrier's own mutex, so TSan sees exactly the happens-before of the barrier, nothing more
// (std::barrier and std::atomic::wait go through a process-wide pool of seq_cst counters, which
// orders unrelated threads for TSan). Otherwise waiters sleep on the generation counter (a futex:
// no thundering herd on the mutex after a wake-up, about 3x faster here).
class Barrier {
 public:
  Barrier(unsigned n, Liveness* live) : n_(n), live_(live) {}
  void arrive_and_wait(const char* what, const Site& s, unsigned mask = 0) {
    std::unique_lock<std::mutex> lk(m_);
    if (arrived_ == 0) {
      site_ = s;
      mask_ = mask;
      what_ = what;
    } else if (!(site_ == s) || std::strcmp(what_, what) != 0) {
      fail("divergence in block (%u,%u,%u): %s at %s:%u meets %s at %s:%u (threads of a block / "
           "lanes of a warp must reach the same barrier)",
           blockIdx.x, blockIdx.y, blockIdx.z, what, s.file, s.line, what_, site_.file, site_.line);
    } else if (mask != mask_) {
      fail("%s at %s:%u: lanes pass different masks (0x%08x, 0x%08x)", what, s.file, s.line, mask,
           mask_);
    }
    const uint64_t gen = generation_.load(std::memory_order_relaxed);
    if (++arrived_ == n_) {
      arrived_ = 0;
      live_->released(n_ - 1);
      generation_.store(gen + 1, std::memory_order_release);
      if constexpr (kThreadSanitizer) {
        cv_.notify_all();
      } else {
        lk.unlock();
        generation_.notify_all();
      }
      return;
    }
    live_->wait_begin(what, s);
    if constexpr (kThreadSanitizer) {
      cv_.wait(lk, [&] { return generation_.load(std::memory_order_relaxed) != gen; });
    } else {
      lk.unlock();
      while (generation_.load(std::memory_order_acquire) == gen) generation_.wait(gen, std::memory_order_acquire);
    }
  }

 private:
  std::mutex m_;
  std::condition_variable cv_;
  const unsigned n_;
  Liveness* live_;
  unsigned arrived_ = 0;
  std::atomic<uint64_t> generation_{0};
  Site site_;
  unsigned mask_ = 0;
  const char* what_ = "";
};

struct Warp {
  Warp(unsigned n, Liveness* live) : bar(n, live) {}
  Barrier bar;
  alignas(16) unsigned char slot[kWarpSize][16];
};

struct Block {
  explicit Block(unsigned n) : live(n), bar(n, &live) {
    for (unsigned w = 0; w < n; w += kWarpSize)
      warps.push_back(std::make_unique<Warp>(std::min(kWarpSize, n - w), &live));
  }
  Liveness live;
  Barrier bar;
  std::vector<std::unique_ptr<Warp>> warps;
};

inline Block* g_block = nullptr;
inline std::vector<unsigned char> g_dynamic_smem;

inline unsigned linear_tid() { return threadIdx.x + blockDim.x * (threadIdx.y + blockDim.y * threadIdx.z); }

// The lanes of a full warp: the emulation requires every lane at every warp operation, so a mask
// must name all 32 (launch() only accepts whole warps).
constexpr unsigned kFullMask = 0xffffffffu;

inline void check_warp_op(const char* what, unsigned mask, int width, const Site& s) {
  if (mask != kFullMask)
    fail("%s at %s:%u: mask 0x%08x does not name every lane converged at the call (0x%08x)", what,
         s.file, s.line, mask, kFullMask);
  if (width != static_cast<int>(kWarpSize))
    fail("%s at %s:%u: width %d is not emulated (only 32)", what, s.file, s.line, width);
}

template <class T>
T shuffle(const char* what, unsigned mask, int width, const Site& s, T v,
          unsigned (*src_lane)(unsigned lane, int arg), int arg) {
  static_assert(sizeof(T) <= 16, "shuffle of a value wider than 16 bytes");
  check_warp_op(what, mask, width, s);
  const unsigned tid = linear_tid(), lane = tid % kWarpSize;
  Warp& w = *g_block->warps[tid / kWarpSize];
  std::memcpy(w.slot[lane], &v, sizeof(T));
  w.bar.arrive_and_wait(what, s, mask);
  T out;
  std::memcpy(&out, w.slot[src_lane(lane, arg)], sizeof(T));
  w.bar.arrive_and_wait(what, s, mask);  // nobody overwrites a slot before every lane has read it
  return out;
}

// Order in which the blocks of a launch run. kAlternate (the default): reversed on even launches,
// a seeded shuffle on odd ones (never the index order when there are >= 2 blocks).
enum class BlockOrder { kForward, kReverse, kShuffle, kAlternate };
inline BlockOrder g_block_order = BlockOrder::kAlternate;
inline uint64_t g_launches = 0;

inline std::vector<uint64_t> block_order(uint64_t n) {
  std::vector<uint64_t> order(n);
  std::iota(order.begin(), order.end(), uint64_t(0));
  BlockOrder mode = g_block_order;
  const uint64_t launch = g_launches++;
  if (mode == BlockOrder::kAlternate) mode = launch % 2 == 0 ? BlockOrder::kReverse : BlockOrder::kShuffle;
  if (mode == BlockOrder::kReverse) {
    std::reverse(order.begin(), order.end());
  } else if (mode == BlockOrder::kShuffle && n > 1) {
    uint64_t s = 0x9E3779B97F4A7C15ull * (launch + 1);
    for (uint64_t i = n - 1; i > 0; --i) {
      s = s * 6364136223846793005ull + 1442695040888963407ull;
      std::swap(order[i], order[(s >> 33) % (i + 1)]);
    }
    if (std::is_sorted(order.begin(), order.end())) std::swap(order[0], order[n - 1]);
  }
  return order;
}

// Runs kernel(args...) on grid x block threads, after checking the shape as a GPU would.
// Dynamic shared memory starts filled with 0xCD so that reading it before writing it gives
// garbage, as on a GPU.
template <class... KArgs, class... Args>
void launch(dim3 grid, dim3 block, std::size_t smem, void (*kernel)(KArgs...), Args... args) {
  const unsigned n = block.x * block.y * block.z;
  if (block.x > 1024 || block.y > 1024 || block.z > 64)
    fail("launch: block (%u,%u,%u) beyond a GPU's per-dimension limits", block.x, block.y, block.z);
  if (const char* e = mlc::cuda::launch_shape_error(grid.x, grid.y, grid.z, n,
                                                    static_cast<int64_t>(smem), 0))
    fail("launch of grid (%u,%u,%u) x block %u with %zu bytes of dynamic shared memory: %s",
         grid.x, grid.y, grid.z, n, smem, e);
  gridDim = grid;
  blockDim = block;
  g_dynamic_smem.assign(smem, 0xCD);
  const uint64_t blocks = uint64_t(grid.x) * grid.y * grid.z;
  for (const uint64_t b : block_order(blocks)) {
    const uint3 bid(static_cast<unsigned>(b % grid.x), static_cast<unsigned>(b / grid.x % grid.y),
                    static_cast<unsigned>(b / (uint64_t(grid.x) * grid.y)));
    Block blk(n);
    g_block = &blk;
    std::vector<std::thread> threads;
    threads.reserve(n);
    for (unsigned t = 0; t < n; ++t)
      threads.emplace_back([&, t] {
        threadIdx = uint3(t % block.x, t / block.x % block.y, t / (block.x * block.y));
        blockIdx = bid;
        kernel(static_cast<KArgs>(args)...);
        blk.live.exit("return", Site{"kernel", 0});
      });
    for (auto& th : threads) th.join();
    g_block = nullptr;
  }
}

}  // namespace simt

inline void __syncthreads(std::source_location loc = std::source_location::current()) {
  simt::g_block->bar.arrive_and_wait("__syncthreads", simt::site_of(loc));
}
inline void __syncwarp(unsigned mask = 0xffffffffu,
                       std::source_location loc = std::source_location::current()) {
  const simt::Site s = simt::site_of(loc);
  simt::check_warp_op("__syncwarp", mask, 32, s);
  simt::g_block->warps[simt::linear_tid() / simt::kWarpSize]->bar.arrive_and_wait("__syncwarp", s, mask);
}

template <class T>
T __shfl_down_sync(unsigned mask, T v, unsigned delta, int width = 32,
                   std::source_location loc = std::source_location::current()) {
  return simt::shuffle("__shfl_down_sync", mask, width, simt::site_of(loc), v,
                       [](unsigned lane, int d) { return lane + d < simt::kWarpSize ? lane + d : lane; },
                       static_cast<int>(delta));
}
template <class T>
T __shfl_xor_sync(unsigned mask, T v, int lane_mask, int width = 32,
                  std::source_location loc = std::source_location::current()) {
  return simt::shuffle("__shfl_xor_sync", mask, width, simt::site_of(loc), v,
                       [](unsigned lane, int m) { return (lane ^ m) % simt::kWarpSize; }, lane_mask);
}
template <class T>
T __shfl_sync(unsigned mask, T v, int src, int width = 32,
              std::source_location loc = std::source_location::current()) {
  return simt::shuffle("__shfl_sync", mask, width, simt::site_of(loc), v,
                       [](unsigned, int s) { return unsigned(s) % simt::kWarpSize; }, src);
}

// CUDA's atomicAdd is relaxed: it orders nothing else, and ThreadSanitizer must not think it does.
template <class T>
T atomicAdd(T* p, T v) {
  return std::atomic_ref<T>(*p).fetch_add(v, std::memory_order_relaxed);
}

// `extern __shared__ T smem[]` has no host spelling: kernels call mlc_dynamic_smem<T>() instead.
template <class T>
T* mlc_dynamic_smem() {
  return reinterpret_cast<T*>(simt::g_dynamic_smem.data());
}
