// Device helpers shared by the kernels of csrc/cuda/*.cuh: accumulation types, 128-bit packs and
// deterministic warp/block sums. Like the kernels, only uses what tests/cpp/simt_emu.h emulates.
#pragma once
#include <cstdint>
#include <type_traits>

#if defined(__CUDACC__)
// Dynamic shared memory; the SIMT emulator defines its own mlc_dynamic_smem.
template <class T>
__device__ __forceinline__ T* mlc_dynamic_smem() {
  extern __shared__ __align__(16) unsigned char mlc_smem[];
  return reinterpret_cast<T*>(mlc_smem);
}
#endif

namespace mlc::cuda {

template <class T>
struct AccType { using type = float; };  // half, bfloat16 and float accumulate in fp32
template <>
struct AccType<double> { using type = double; };
template <class T>
using acc_t = typename AccType<T>::type;

// One 128-bit access worth of T (16 / sizeof(T) elements): nvcc emits ld/st.global.v4 for it.
template <class T, int N>
struct alignas(sizeof(T) * N) Pack {
  T v[N];
};

constexpr int kWarp = 32;
constexpr int kMaxWarps = 32;


template <class A>
__device__ __forceinline__ A warp_reduce_sum(A v) {
  for (int offset = kWarp / 2; offset > 0; offset /= 2) v += __shfl_down_sync(0xffffffffu, v, offset);
  return v;
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

template <class T>
__device__ __forceinline__ bool aligned16(const T* p) {
  return (reinterpret_cast<std::uintptr_t>(p) & 15u) == 0;
}

template <class T, class A>
__device__ __forceinline__ T from_acc(A v) {
  if constexpr (std::is_same_v<T, double>) {
    return v;
  } else {
    return T(static_cast<float>(v));
  }
}

}  // namespace mlc::cuda
