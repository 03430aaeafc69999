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
  BceTiles tiles;
  bool short_rows = false;  // several rows a tile: bce_fused_kernel<..., Short = true>
  int64_t partials = 0;  // acc_t<T> elements the caller allocates for `partial`
  const char* error = nullptr;  // why a GPU would refuse a launch of bce_run, or null
};

// reduction: 0 none, 1 mean, 2 sum (at::Reduction). tile_cols 0 picks the default tile width: 4
// 128-bit accesses per thread; tests pass small values to force several tiles per row.
inline BceLaunchShape bce_launch_shape(int64_t rows, int64_t cols, int elem_size, int reduction,
                                       bool row_mean, int block, int64_t max_grid,
                                       int64_t tile_cols = 0) {
  BceLaunchShape s;
  s.block = block;
  s.mode = reduction != kNone ? kBlockSum : (row_mean ? kTileSum : kElementwise);
  BceTiles& t = s.tiles;
  const int64_t vec = 16 / elem_size;  // elements of a 128-bit access
  // A multiple of 8 elements keeps every tile start 16-byte aligned whenever its row start is.
  t.cols = tile_cols > 0 ? tile_cols : static_cast<int64_t>(block) * 4 * vec;
  if (cols >= t.cols || cols == 0) {  // long rows: a tile is one row segment, the block on it
    t.per_row = (cols + t.cols - 1) / t.cols;
    t.rows = 1;
    t.group = block;
  } else {
    // Short rows: a row per group of lanes, the fewest (a power of two) that cover it with one
    // 128-bit access each up to a warp (so a warp reads consecutive accesses of consecutive rows),
    // else with at most 4 each (a long row's share a thread); as many whole rows a tile as fill
    // the tile width, at least one per group.
    const int64_t accesses = (cols + vec - 1) / vec;
    int64_t group = 1;
    while (group < kWarp && group < accesses) group *= 2;
    while (group < block && group * 4 < accesses) group *= 2;
    if (block % group != 0) group = block;  // a block of whole groups (block not a power of two)
    const int64_t groups = block > group ? block / group : 1;
    const int64_t per_group = t.cols / (cols * groups);
    t.per_row = 1;
    t.rows = groups * (per_group > 1 ? per_group : 1);
    t.group = static_cast<int>(group);
    s.short_rows = true;
  }
  t.count = (rows + t.rows - 1) / t.rows * t.per_row;
  s.grid = t.count < max_grid ? t.count : max_grid;
  s.partials = s.mode == kBlockSum ? s.grid : (s.mode == kTileSum ? rows * t.per_row : 0);
  // bce_run's launches: the fused kernel (grid), the second passes (grid 1, or at most grid), all
  // with `block` threads and (at most) the block and group sums' static shared memory.
  s.error = launch_shape_error(s.grid > 0 ? s.grid : 1, block, 0, kBlockSumSmem + kGroupSumSmem);
  return s;
}

// The fused kernel of member Elem, tiling Short and target reader Target in the shape's mode.
template <class Elem, bool Short, template <class> class Target = DenseTileTarget, class T,
          class Launch>
void bce_launch_fused(const BceParams<T>& p, const BceLaunchShape& s, acc_t<T>* partial,
                      Launch&& launch) {
  if (s.mode == kElementwise) {
    launch(bce_fused_kernel<T, kElementwise, Elem, Short, Target>, s.grid, s.block, p, s.tiles,
           partial);
  } else if (s.mode == kBlockSum) {
    launch(bce_fused_kernel<T, kBlockSum, Elem, Short, Target>, s.grid, s.block, p, s.tiles,
           partial);
  } else {
    launch(bce_fused_kernel<T, kTileSum, Elem, Short, Target>, s.grid, s.block, p, s.tiles,
           partial);
  }
}

// Runs the fused kernel and its second pass, which applies p.scales (the plan's reduction rule).
// `launch(kernel, grid, block, args...)` starts a kernel (CUDA: <<<grid, block, 0, stream>>> +
// launch check; tests: the SIMT emulator). `out` is the reduced loss (a scalar, or rows values for
// soft margin 'none'); unused for BCE 'none'.
template <class T, class Launch>
void bce_run(const BceParams<T>& p, const BceLaunchShape& s, acc_t<T>* partial, T* out,
             Launch&& launch) {
  if (s.grid > 0 && p.csr.offsets) {  // bce_chunk_'s CSR target (plain BCE, float or double)
    if constexpr (std::is_same_v<T, acc_t<T>>) {
      if (s.short_rows) {
        bce_launch_fused<math::BcePlain, true, CsrTileTarget>(p, s, partial, launch);
      } else {
        bce_launch_fused<math::BcePlain, false, CsrTileTarget>(p, s, partial, launch);
      }
    }
  } else if (s.grid > 0) {
#define MLC_LAUNCH(K, E)                                  \
  if (p.variant.kind == K && s.short_rows) {              \
    bce_launch_fused<E, true>(p, s, partial, launch);     \
  } else if (p.variant.kind == K) {                       \
    bce_launch_fused<E, false>(p, s, partial, launch);    \
  }
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
           static_cast<const acc_t<T>*>(partial), p.rows, s.tiles.per_row, p.scales.row, out);
  }
}

}  // namespace mlc::cuda
