// Explicit instantiations of every kernel of csrc/cuda/*.cuh with the element types the launchers
// dispatch to, compiled standalone (no ATen, ~10 s) so that ptxas -v reports registers and spills
// per kernel: see tests/test_cuda_compile.py.
#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>

#include "cuda/bce_kernel.cuh"
#include "cuda/margin_kernel.cuh"
#include "cuda/reduce.cuh"
#include "cuda/scale_kernel.cuh"

namespace mlc::cuda {
// The fused BCE kernel of each mode, member and tiling (long rows, short rows).
#define MLC_INSTANTIATE_FUSED(T, E, S)                                                          \
  template __global__ void bce_fused_kernel<T, kElementwise, E, S>(const BceParams<T>,         \
                                                                   const BceTiles, acc_t<T>*); \
  template __global__ void bce_fused_kernel<T, kBlockSum, E, S>(const BceParams<T>,            \
                                                                const BceTiles, acc_t<T>*);    \
  template __global__ void bce_fused_kernel<T, kTileSum, E, S>(const BceParams<T>,             \
                                                               const BceTiles, acc_t<T>*);
#define MLC_INSTANTIATE_BCE(T)                                                                   \
  MLC_INSTANTIATE_FUSED(T, math::BcePlain, false)                                               \
  MLC_INSTANTIATE_FUSED(T, math::BcePlain, true)                                                \
  MLC_INSTANTIATE_FUSED(T, math::BceModulated, false)                                           \
  MLC_INSTANTIATE_FUSED(T, math::BceModulated, true)                                            \
  template __global__ void sum_partials_kernel<T>(const acc_t<T>*, const int64_t, const double,  \
                                                  T*);                                          \
  template __global__ void row_sums_kernel<T>(const acc_t<T>*, const int64_t, const int64_t,     \
                                              const double, T*);
MLC_INSTANTIATE_BCE(float)
MLC_INSTANTIATE_BCE(double)
MLC_INSTANTIATE_BCE(c10::Half)
MLC_INSTANTIATE_BCE(c10::BFloat16)

// bce_chunk_'s CSR target, both tilings (its plan takes float and double only).
#define MLC_INSTANTIATE_FUSED_CSR(T, S)                                                          \
  template __global__ void bce_fused_kernel<T, kElementwise, math::BcePlain, S, CsrTileTarget>( \
      const BceParams<T>, const BceTiles, acc_t<T>*);                                           \
  template __global__ void bce_fused_kernel<T, kBlockSum, math::BcePlain, S, CsrTileTarget>(    \
      const BceParams<T>, const BceTiles, acc_t<T>*);                                           \
  template __global__ void bce_fused_kernel<T, kTileSum, math::BcePlain, S, CsrTileTarget>(     \
      const BceParams<T>, const BceTiles, acc_t<T>*);
MLC_INSTANTIATE_FUSED_CSR(float, false)
MLC_INSTANTIATE_FUSED_CSR(float, true)
MLC_INSTANTIATE_FUSED_CSR(double, false)
MLC_INSTANTIATE_FUSED_CSR(double, true)

// The margin loss's kernel, direct and counting rows (its second passes are reduce.cuh's).
#define MLC_INSTANTIATE_MARGIN(T)                                                               \
  template __global__ void margin_kernel<T>(const MarginParams<T>, const MarginKernelArgs,     \
                                            unsigned char*, acc_t<T>*);
MLC_INSTANTIATE_MARGIN(float)
MLC_INSTANTIATE_MARGIN(double)
MLC_INSTANTIATE_MARGIN(c10::Half)
MLC_INSTANTIATE_MARGIN(c10::BFloat16)

// Backward's in-place scale by an upstream read on the device.
#define MLC_INSTANTIATE_SCALE(T) \
  template __global__ void scale_by_device_scalar_kernel<T>(T*, const T*, const int64_t);
MLC_INSTANTIATE_SCALE(float)
MLC_INSTANTIATE_SCALE(double)
MLC_INSTANTIATE_SCALE(c10::Half)
MLC_INSTANTIATE_SCALE(c10::BFloat16)
}  // namespace mlc::cuda
