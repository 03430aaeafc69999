// Deterministic reductions shared by the kernels of csrc/cuda/*.cuh: warp and block sums and
// minima (fixed shuffle trees, per-warp slots, warp 0 last) and the second-pass kernels that turn
// per-block or per-row partials into outputs, in double and in a fixed order. No float atomics:
// results are bitwise identical run to run for the same grid.
#pragma once
#include <cstdint>

#include "common.cuh"

namespace mlc::cuda {

// Static shared memory (bytes) of block_reduce_sum<A> (at most, over A) and of block_min_bcast,
// for the launch-shape checks.
constexpr int64_t kBlockSumSmem = kMaxWarps * static_cast<int64_t>(sizeof(double));
constexpr int64_t kBlockMinSmem = (kMaxWarps + 1) * static_cast<int64_t>(sizeof(int64_t));
constexpr int64_t kGroupSumSmem = kBlockSumSmem;  // group_reduce_sum's own per-warp slots

// Sums over aligned segments of `width` lanes (a power of two <= 32), valid in each segment's first
// lane: a fixed shuffle tree. Every lane of the warp must call it (the shuffles name all 32).
template <class A>
__device__ __forceinline__ A segment_reduce_sum(A v, int width) {
  for (int offset = width / 2; offset > 0; offset /= 2) v += __shfl_down_sync(0xffffffffu, v, offset);
  return v;
}

template <class A>
__device__ __forceinline__ A warp_reduce_sum(A v) {
  return segment_reduce_sum(v, kWarp);
}

// Sum over the block, valid in thread 0. blockDim.x must be a multiple of 32 (<= 1024) and every
// thread of the block must call it (it contains barriers).
template <class A>
__device__ __forceinline__ A block_reduce_sum(A v) {
  __shared__ A warp_sums[kMaxWarps];
  const int lane = threadIdx.x % kWarp, warp = threadIdx.x / kWarp;
  const int warps = blockDim.x / kWarp;
  v = warp_reduce_sum(v);
  __syncthreads();  // warp 0 may still be reading warp_sums from the previous call
  if (lane == 0) warp_sums[warp] = v;
  __syncthreads();
  if (warp == 0) v = warp_reduce_sum(lane < warps ? warp_sums[lane] : A(0));
  return v;
}

// Sums over aligned groups of `group` threads (a power of two, below the block size), valid in each
// group's first thread: segment_reduce_sum within a warp; for groups of whole warps, the warp sums
// of the group added in warp order by its first thread. Every thread of the block must call it
// (it contains barriers when group > 32).
template <class A>
__device__ __forceinline__ A group_reduce_sum(A v, int group) {
  if (group <= kWarp) return segment_reduce_sum(v, group);
  __shared__ A group_warp_sums[kMaxWarps];
  const int lane = threadIdx.x % kWarp, warp = threadIdx.x / kWarp;
  v = warp_reduce_sum(v);
  __syncthreads();  // the groups' first threads may still be reading the previous call's sums
  if (lane == 0) group_warp_sums[warp] = v;
  __syncthreads();
  if (threadIdx.x % group == 0) {
    for (int w = 1; w < group / kWarp; ++w) v += group_warp_sums[warp + w];
  }
  return v;
}

// Minimum over the block, returned to every thread. Every thread of the block must call it.
__device__ __forceinline__ int64_t block_min_bcast(int64_t v) {
  __shared__ int64_t warp_mins[kMaxWarps];
  __shared__ int64_t result;
  const int lane = threadIdx.x % kWarp, warp = threadIdx.x / kWarp;
  const int warps = blockDim.x / kWarp;
  for (int offset = kWarp / 2; offset > 0; offset /= 2) {
    const int64_t o = __shfl_down_sync(0xffffffffu, v, offset);
    v = o < v ? o : v;
  }
  __syncthreads();  // every thread has read `result` of the previous call
  if (lane == 0) warp_mins[warp] = v;
  __syncthreads();
  if (threadIdx.x == 0) {
    int64_t m = warp_mins[0];
    for (int w = 1; w < warps; ++w) m = warp_mins[w] < m ? warp_mins[w] : m;
    result = m;
  }
  __syncthreads();
  return result;
}

// Second pass of a block-partial sum, one block: out[0] = scale * sum(partial[0..n)), in double
// and in a fixed order.
template <class T>
__global__ void sum_partials_kernel(const acc_t<T>* partial, const int64_t n,
                                        const double scale, T* out) {
  double s = 0;
  for (int64_t i = threadIdx.x; i < n; i += blockDim.x) s += static_cast<double>(partial[i]);
  s = block_reduce_sum(s);
  if (threadIdx.x == 0) out[0] = from_acc<T>(s * scale);
}

// Second pass of per-row partials: out[r] = scale * sum of row r's `per_row` partials, in order.
template <class T>
__global__ void row_sums_kernel(const acc_t<T>* partial, const int64_t rows,
                                    const int64_t per_row, const double scale, T* out) {
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t r = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; r < rows;
       r += stride) {
    double s = 0;
    for (int64_t k = 0; k < per_row; ++k) s += static_cast<double>(partial[r * per_row + k]);
    out[r] = from_acc<T>(s * scale);
  }
}

}  // namespace mlc::cuda
