// SIMT emulation of the CUDA constructs that csrc/cuda/*.cuh use, for the host compiler (tests only).
// One OS thread per CUDA thread of a block, blocks in turn (so `__shared__` can be `static`);
// __syncthreads is a std::barrier over the block, warp shuffles go through a per-warp slot array
// between two per-warp barriers. ThreadSanitizer understands std::barrier, so a missing
// __syncthreads shows up as a data race; AddressSanitizer sees out-of-bounds global accesses.
// Include this before any kernel header.
#pragma once
#include <algorithm>
#include <atomic>
#include <barrier>
#include <cassert>
#include <cstdint>
#include <cstring>
#include <memory>
#include <thread>
#include <vector>

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

struct Warp {
  explicit Warp(std::ptrdiff_t n) : bar(n) {}
  std::barrier<> bar;
  alignas(16) unsigned char slot[kWarpSize][16];
};

struct Block {
  explicit Block(unsigned n) : bar(n) {
    for (unsigned w = 0; w < n; w += kWarpSize)
      warps.push_back(std::make_unique<Warp>(std::min(kWarpSize, n - w)));
  }
  std::barrier<> bar;
  std::vector<std::unique_ptr<Warp>> warps;
};

inline Block* g_block = nullptr;
inline std::vector<unsigned char> g_dynamic_smem;

inline unsigned linear_tid() { return threadIdx.x + blockDim.x * (threadIdx.y + blockDim.y * threadIdx.z); }

template <class T>
T shuffle(T v, unsigned (*src_lane)(unsigned lane, int arg), int arg) {
  static_assert(sizeof(T) <= 16, "shuffle of a value wider than 16 bytes");
  const unsigned tid = linear_tid(), lane = tid % kWarpSize;
  Warp& w = *g_block->warps[tid / kWarpSize];
  std::memcpy(w.slot[lane], &v, sizeof(T));
  w.bar.arrive_and_wait();
  T out;
  std::memcpy(&out, w.slot[src_lane(lane, arg)], sizeof(T));
  w.bar.arrive_and_wait();  // nobody overwrites a slot before every lane has read it
  return out;
}

// Runs kernel(args...) on grid x block threads. Dynamic shared memory starts filled with 0xCD so
// that reading it before writing it gives garbage, as on a GPU.
template <class... KArgs, class... Args>
void launch(dim3 grid, dim3 block, std::size_t smem, void (*kernel)(KArgs...), Args... args) {
  const unsigned n = block.x * block.y * block.z;
  assert(n >= 1 && n <= 1024);
  gridDim = grid;
  blockDim = block;
  g_dynamic_smem.assign(smem, 0xCD);
  for (unsigned bz = 0; bz < grid.z; ++bz)
    for (unsigned by = 0; by < grid.y; ++by)
      for (unsigned bx = 0; bx < grid.x; ++bx) {
        Block b(n);
        g_block = &b;
        std::vector<std::thread> threads;
        threads.reserve(n);
        for (unsigned t = 0; t < n; ++t)
          threads.emplace_back([&, t] {
            threadIdx = uint3(t % block.x, t / block.x % block.y, t / (block.x * block.y));
            blockIdx = uint3(bx, by, bz);
            kernel(static_cast<KArgs>(args)...);
          });
        for (auto& th : threads) th.join();
        g_block = nullptr;
      }
}

}  // namespace simt

inline void __syncthreads() { simt::g_block->bar.arrive_and_wait(); }
inline void __syncwarp(unsigned = 0xffffffffu) {
  simt::g_block->warps[simt::linear_tid() / simt::kWarpSize]->bar.arrive_and_wait();
}

template <class T>
T __shfl_down_sync(unsigned, T v, unsigned delta, int = 32) {
  return simt::shuffle(v, [](unsigned lane, int d) { return lane + d < simt::kWarpSize ? lane + d : lane; },
                       static_cast<int>(delta));
}
template <class T>
T __shfl_xor_sync(unsigned, T v, int mask, int = 32) {
  return simt::shuffle(v, [](unsigned lane, int m) { return (lane ^ m) % simt::kWarpSize; }, mask);
}
template <class T>
T __shfl_sync(unsigned, T v, int src, int = 32) {
  return simt::shuffle(v, [](unsigned, int s) { return unsigned(s) % simt::kWarpSize; }, src);
}

template <class T>
T atomicAdd(T* p, T v) {
  return std::atomic_ref<T>(*p).fetch_add(v);
}

// `extern __shared__ T smem[]` has no host spelling: kernels call mlc_dynamic_smem<T>() instead.
template <class T>
T* mlc_dynamic_smem() {
  return reinterpret_cast<T*>(simt::g_dynamic_smem.data());
}
