// Framework-free helpers shared by the CPU and CUDA kernels (no ATen, no CUDA headers required).
#pragma once

// Forced on the host: GCC otherwise keeps bce_elem and the vector exp out of line on the CPU (a call
// through the PLT per vector, and no interleaving of the unrolled chains; docs/performance.md).
#if defined(__GNUC__)
#define ML_FORCE_INLINE inline __attribute__((always_inline))
#else
#define ML_FORCE_INLINE inline
#endif

#if defined(__CUDACC__)
#define ML_HD __host__ __device__ __forceinline__
#else
#define ML_HD ML_FORCE_INLINE
#endif

namespace mlc {
// Matches at::Reduction so the integer travels unchanged through the op schema.
enum Reduction : int { kNone = 0, kMean = 1, kSum = 2 };
}  // namespace mlc
