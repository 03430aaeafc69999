// Backward's only arithmetic on the device: grad *= upstream, in place, for a scalar upstream
// gradient that lives in device memory. Every thread reads the scalar itself: for loss.backward()
// it is exactly 1 and every block returns at once, so backward costs a launch instead of a read and
// a write of the N x C gradient (testing the value on the host would synchronize the stream).
#pragma once
#include "common.cuh"

namespace mlc::cuda {

template <class T>
__global__ void scale_by_device_scalar_kernel(T* grad, const T* upstream, const int64_t n) {
  using A = acc_t<T>;
  const A u = static_cast<A>(upstream[0]);
  if (u == A(1)) return;  // also leaves inf/NaN gradients as they are, as * 1 would
  constexpr int kVec = 16 / sizeof(T);
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  const int64_t first = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  int64_t done = 0;
  if (aligned16(grad)) {
    using P = Pack<T, kVec>;
    P* packs = reinterpret_cast<P*>(grad);
    const int64_t n_packs = n / kVec;
    for (int64_t i = first; i < n_packs; i += stride) {
      P v = packs[i];
#pragma unroll
      for (int k = 0; k < kVec; ++k) v.v[k] = from_acc<T>(static_cast<A>(v.v[k]) * u);
      packs[i] = v;
    }
    done = n_packs * kVec;
  }
  for (int64_t i = done + first; i < n; i += stride) {
    grad[i] = from_acc<T>(static_cast<A>(grad[i]) * u);
  }
}

// Grid for n elements: one 128-bit access per thread, capped (the kernel strides over the rest).
inline int64_t scale_grid(int64_t n, int elem_size, int block, int64_t max_grid) {
  const int64_t per_block = static_cast<int64_t>(block) * (16 / elem_size);
  const int64_t grid = (n + per_block - 1) / per_block;
  return grid < max_grid ? grid : max_grid;
}

}  // namespace mlc::cuda
