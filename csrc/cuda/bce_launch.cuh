// Host side of the fused BCE-with-logits / multilabel-soft-margin kernels: launch shape and the
// kernel sequence, shared by the CUDA launcher (bce_cuda.cu) and the SIMT emulation tests.
#pragma once
#include <cstdint>
#include <type_traits>

#include "bce_kernel.cuh"
#include "launch_limits.h"
#include "reduce.cuh"

namespace mlc::cuda {

struct BceLaunchShape {
  int mode = kElementwise;
  int block = 256;
  int64_t grid = 0;  // blocks of the fused kernel (0: nothing to do)
  int64_t tile_cols = 0, tiles_per_row = 0, tiles = 0;
  int64_t partials = 0;  // acc_t<T> elements the caller allocates for `partial`
  const char* error = nullptr;  // why a GPU would refuse a launch of bce_run, or null
};

// reduction: 0 none, 1 mean, 2 sum (at::Reduction). tile_cols 0 picks the default: 4 128-bit
// accesses per thread; tests pass small values to force several tiles per row.
inline BceLaunchShape bce_launch_shape(int64_t rows, int64_t cols, int elem_size, int reduction,
                                       bool row_mean, int block, int64_t max_grid,
                                       int64_t tile_cols = 0) {
  BceLaunchShape s;
  s.block = block;
  s.mode = reduction != kNone ? kBlockSum : (row_mean ? kTileSum : kElementwise);
  // A multiple of 8 elements keeps every tile start 16-byte aligned whenever its row start is.
  s.tile_cols = tile_cols > 0 ? tile_cols : static_cast<int64_t>(block) * 4 * (16 / elem_size);
  s.tiles_per_row = (cols + s.tile_cols - 1) / s.tile_cols;
  s.tiles = rows * s.tiles_per_row;
  s.grid = s.tiles < max_grid ? s.tiles : max_grid;
  s.partials = s.mode == kBlockSum ? s.grid : (s.mode == kTileSum ? s.tiles : 0);
  // bce_run's launches: the fused kernel (grid), the second passes (grid 1, or at most grid), all
  // with `block` threads and the block sums' static shared memory.
  s.error = launch_shape_error(s.grid > 0 ? s.grid : 1, block, 0, kBlockSumSmem);
  return s;
}

// Runs the fused kernel and its second pass, which applies p.scales (the plan's reduction rule).
// `launch(kernel, grid, block, args...)` starts a
// kernel (CUDA: <<<grid, block, 0, stream>>> + launch check; tests: the SIMT emulator). `out` is
// the reduced loss (a scalar, or rows values for soft margin 'none'); unused for BCE 'none'.
// The fused kernel of member Elem and target reader Target in the shape's mode.
template <class Elem, template <class> class Target = DenseTileTarget, class T, class Launch>
void bce_launch_fused(const BceParams<T>& p, const BceLaunchShape& s, acc_t<T>* partial,
                      Launch&& launch) {
  if (s.mode == kElementwise) {
    launch(bce_fused_kernel<T, kElementwise, Elem, Target>, s.grid, s.block, p, s.tile_cols,
           s.tiles_per_row, partial);
  } else if (s.mode == kBlockSum) {
    launch(bce_fused_kernel<T, kBlockSum, Elem, Target>, s.grid, s.block, p, s.tile_cols,
           s.tiles_per_row, partial);
  } else {
    launch(bce_fused_kernel<T, kTileSum, Elem, Target>, s.grid, s.block, p, s.tile_cols,
           s.tiles_per_row, partial);
  }
}

template <class T, class Launch>
void bce_run(const BceParams<T>& p, const BceLaunchShape& s, acc_t<T>* partial, T* out,
             Launch&& launch) {
  if (s.grid > 0 && p.csr.offsets) {  // bce_chunk_'s CSR target (plain BCE, float or double)
    if constexpr (std::is_same_v<T, acc_t<T>>) {
      bce_launch_fused<math::BcePlain, CsrTileTarget>(p, s, partial, launch);
    }
  } else if (s.grid > 0) {
#define MLC_LAUNCH(K, E) \
  if (p.variant.kind == K) bce_launch_fused<E>(p, s, partial, launch);
    MLC_BCE_FAMILY(MLC_LAUNCH)
#undef MLC_LAUNCH
  }
  if (s.mode == kBlockSum) {
    launch(sum_partials_kernel<T>, int64_t(1), s.block, static_cast<const acc_t<T>*>(partial),
           s.partials, p.scales.loss, out);
  } else if (s.mode == kTileSum && p.rows > 0) {
    const int64_t blocks = (p.rows + s.block - 1) / s.block;
    const int64_t cap = s.grid > 0 ? s.grid : 1;
    launch(row_sums_kernel<T>, blocks < cap ? blocks : cap, s.block,
           static_cast<const acc_t<T>*>(partial), p.rows, s.tiles_per_row, p.scales.row, out);
  }
}

}  // namespace mlc::cuda
