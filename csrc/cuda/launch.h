// Host-side launch policy shared by the CUDA launchers (.cu files only; the .cuh kernels stay
// free of it so the SIMT emulation can compile them).
#pragma once
#include <c10/cuda/CUDAException.h>
#include <cuda_runtime.h>

#include <cstdint>

#include "launch_limits.h"  // kBlock, launch_shape_error

namespace mlc::cuda {

constexpr int kBlocksPerSm = 8;  // enough resident warps to cover DRAM latency

// Grid cap: kernels stride over their work, so more blocks than this only adds scheduling.
inline int64_t max_grid(c10::DeviceIndex device) {
  int sms = 0;
  C10_CUDA_CHECK(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, device));
  return static_cast<int64_t>(sms) * kBlocksPerSm;
}

}  // namespace mlc::cuda
