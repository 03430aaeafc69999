// Compiled, never run: every kernel and host launch function of csrc/cuda/*.cuh for every element
// type, with -Wconversion -Werror (CMake target kernel_conversion_check, part of the emulation
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
  mlc::cuda::margin_run(mp, mlc::cuda::margin_launch_shape<A>(1, 1, false, true, 32, 1),
                        static_cast<int64_t*>(nullptr), static_cast<A*>(nullptr),
                        static_cast<T*>(nullptr), launch_smem);
  (void)&mlc::cuda::scale_by_device_scalar_kernel<T>;
  (void)mlc::cuda::scale_grid(1, sizeof(T), 32, 1);
}

}  // namespace

void mlc_kernel_conversion_check() {
  instantiate<float>();
  instantiate<double>();
  instantiate<emu::Half>();
  instantiate<emu::BF16>();
}
