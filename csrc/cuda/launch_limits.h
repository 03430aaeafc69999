// The launch limits of a CUDA device (compute capability 7.0 and later), checked on the host before
// a kernel starts: by the launch-shape functions of the .cuh kernels (hence by the .cu launchers)
// and by the SIMT emulation's launch (tests/cpp/simt_emu.h), so a shape that a GPU would refuse
// fails in the emulation too. Plain C++: no CUDA or ATen headers.
#pragma once
#include <cstdint>

namespace mlc::cuda {

constexpr int kBlock = 256;  // threads per block of every launcher (csrc/cuda/*.cu)

constexpr int64_t kMaxThreadsPerBlock = 1024;
constexpr int64_t kMaxGridX = 2147483647;  // 2^31 - 1
constexpr int64_t kMaxGridYZ = 65535;
// Shared memory per block (static + dynamic) without cudaFuncSetAttribute(
// cudaFuncAttributeMaxDynamicSharedMemorySize), which no kernel here opts into.
constexpr int64_t kMaxSmemPerBlock = 48 * 1024;

// nullptr when a launch of `grid` x `block` threads with `dynamic_smem` bytes of dynamic shared
// memory, for a kernel whose __shared__ arrays take `static_smem` bytes, is valid; otherwise what
// is wrong. The block must also be a whole number of warps: the kernels' warp shuffles name all 32
// lanes (a project rule, which the emulation relies on too).
inline const char* launch_shape_error(int64_t grid_x, int64_t grid_y, int64_t grid_z, int64_t block,
                                      int64_t dynamic_smem, int64_t static_smem) {
  if (block < 32 || block > kMaxThreadsPerBlock) return "block size outside [32, 1024]";
  if (block % 32 != 0) return "block size not a multiple of the warp size (32)";
  if (grid_x < 1 || grid_y < 1 || grid_z < 1) return "empty grid";
  if (grid_x > kMaxGridX) return "grid.x above 2^31 - 1";
  if (grid_y > kMaxGridYZ || grid_z > kMaxGridYZ) return "grid.y or grid.z above 65535";
  if (dynamic_smem < 0 || static_smem < 0) return "negative shared memory size";
  if (dynamic_smem + static_smem > kMaxSmemPerBlock) return "shared memory per block above 48 KiB";
  return nullptr;
}

inline const char* launch_shape_error(int64_t grid, int64_t block, int64_t dynamic_smem,
                                      int64_t static_smem) {
  return launch_shape_error(grid, 1, 1, block, dynamic_smem, static_smem);
}

}  // namespace mlc::cuda
