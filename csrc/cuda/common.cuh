// Device helpers shared by the kernels of csrc/cuda/*.cuh: accumulation types, 128-bit packs,
// alignment and rounding. Like the kernels, only uses what tests/cpp/simt_emu.h emulates.
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
