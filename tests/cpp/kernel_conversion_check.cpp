// Compiled, never run: every kernel and host launch function of csrc/cuda/*.cuh for every element
// type, and csrc/math's functions, with -Wconversion -Werror (CMake target kernel_conversion_check, part of the emulation
// build). An implicit narrowing in a kernel -- a 64-bit element offset kept in an int, a double
// scale stored in a float -- fails the build; narrowings that are meant are explicit casts.
#include "simt_emu.h"  // first: defines the CUDA keywords for the kernel headers

#include <cuda/bce_launch.cuh>
#include <cuda/margin_launch.cuh>
#include <cuda/scale_kernel.cuh>

#include "emu_check.h"

namespace {

template <class T>
void instantiate() {
  using A = mlc::cuda::acc_t<T>;
  auto launch = [](auto kernel, int64_t, int, auto...) { (void)kernel; };
  auto launch_smem = [](auto kernel, int64_t, int, int64_t, auto...) { (void)kernel; };
  const mlc::BceParams<T> bp;
  mlc::cuda::bce_run(bp, mlc::cuda::bce_launch_shape(1, 1, sizeof(T), 0, false, 32, 1),
                     static_cast<A*>(nullptr), static_cast<T*>(nullptr), launch);
  const mlc::MarginParams<T> mp;
  mlc::cuda::margin_run(mp, mlc::cuda::margin_launch_shape<A>(1, 1, false, true, 0, 32, 1),
                        static_cast<unsigned char*>(nullptr), static_cast<A*>(nullptr),
                        static_cast<T*>(nullptr), launch_smem);
  (void)&mlc::cuda::scale_by_device_scalar_kernel<T>;
  (void)mlc::cuda::scale_grid(1, sizeof(T), 32, 1);
}

// csrc/math's functions the CUDA kernels do not instantiate (the CPU kernels use them with their
// vector types): margin.h's counting method, bce.h without weights.
template <class A>
void instantiate_margin_math() {
  A t[2] = {A(0), A(1)};
  int64_t mult[2] = {0, 0}, cnt[16] = {}, K[2] = {};
  double D[16] = {};
  const int64_t q = mlc::math::margin_merge_thresholds(t + 1, 1, mult);
  mlc::math::margin_bucket_row<A, A>(t, 1, t + 1, q, mult, cnt, D, static_cast<A*>(nullptr), 1.0);
  (void)mlc::math::margin_suffix_sweep(t + 1, mult, q, cnt, D, K);
  A l, g;
  mlc::math::bce_elem<mlc::math::ScalarOps<A>, false, false>(A(1), A(0), A(1), A(1), l, g);
}

}  // namespace

void mlc_kernel_conversion_check() {
  instantiate_margin_math<float>();
  instantiate_margin_math<double>();
  instantiate<float>();
  instantiate<double>();
  instantiate<emu::Half>();
  instantiate<emu::BF16>();
}
