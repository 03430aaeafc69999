// Framework-free helpers shared by the CPU and CUDA kernels (no ATen, no CUDA headers required).
#pragma once

#if defined(__CUDACC__)
#define ML_HD __host__ __device__ __forceinline__
#else
#define ML_HD inline
#endif

namespace mlc {
// Matches at::Reduction so the integer travels unchanged through the op schema.
enum Reduction : int { kNone = 0, kMean = 1, kSum = 2 };
}  // namespace mlc
