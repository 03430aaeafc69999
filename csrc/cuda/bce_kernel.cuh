// CUDA kernels for the fused BCE-with-logits / multilabel-soft-margin forward + input gradient.
//
// Framework-free: raw pointers, sizes and strides through BceParams<T> (no ATen), math from
// csrc/math/bce.h. Everything here also compiles with the host compiler through the SIMT emulation
// header tests/cpp/simt_emu.h, so it uses only what that header emulates: threadIdx/blockIdx/
// blockDim/gridDim, __syncthreads, __shfl_down_sync, static __shared__ arrays. No CUB.
//
// Work decomposition: a tile is (row, segment of `tile_cols` columns); block b handles tiles
// b, b + gridDim.x, ... (grid capped by the launcher). Every reduction is two-pass and in a fixed
// order (per-thread strided sums -> warp shuffle tree -> per-warp slots -> warp 0), so a result is
// bitwise identical run to run for the same grid, i.e. on the same device.
#pragma once
#include <cstddef>
#include <cstdint>
#include <type_traits>

#include "../math/bce.h"
#include "../math/scalar_ops.h"
#include "../params.h"
#include "common.cuh"

namespace mlc::cuda {

enum BceMode : int {
  kElementwise = 0,  // BCE 'none': loss written per element, no sums
  kBlockSum = 1,     // 'mean' / 'sum': one partial per block, then bce_sum_partials_kernel
  kTileSum = 2,      // soft margin 'none': one partial per tile, then bce_row_sums_kernel
};

// Row pointers of one tile, already offset to its first column.
template <class T>
struct TileRow {
  const T* x;
  const T* y;
  const T* w;   // per-column weight, or null (then w0)
  const T* pw;  // per-column pos_weight, or null (then p0)
  T* grad;      // or null
  T* loss;      // or null
};

template <class T, class A>
__device__ __forceinline__ void bce_one(const TileRow<T>& t, int64_t c, A w0, A p0, A scale,
                                        A& acc) {
  A l, g;
  math::bce_elem<math::ScalarOps<A>>(static_cast<A>(t.x[c]), static_cast<A>(t.y[c]),
                                     t.w ? static_cast<A>(t.w[c]) : w0,
                                     t.pw ? static_cast<A>(t.pw[c]) : p0, l, g);
  if (t.grad) t.grad[c] = from_acc<T>(g * scale);
  if (t.loss) {
    t.loss[c] = from_acc<T>(l);
  } else {
    acc += l;
  }
}

// This thread's share of tile (r, [c0, c0 + n)): writes grad/loss, returns its loss sum.
template <class T, class A>
__device__ __forceinline__ A bce_tile(const BceParams<T>& p, int64_t r, int64_t c0, int64_t n,
                                      A scale) {
  constexpr int V = 16 / static_cast<int>(sizeof(T));
  TileRow<T> t;
  t.x = p.input + r * p.input_row_stride + c0;
  t.y = p.target + r * p.target_row_stride + c0;
  const T* wrow = p.weight ? p.weight + r * p.weight_row_stride : nullptr;
  const T* prow = p.pos_weight ? p.pos_weight + r * p.pos_weight_row_stride : nullptr;
  // Column stride 0 broadcasts one value over the row: read it once.
  t.w = wrow && p.weight_col_stride != 0 ? wrow + c0 : nullptr;
  t.pw = prow && p.pos_weight_col_stride != 0 ? prow + c0 : nullptr;
  const A w0 = wrow ? static_cast<A>(wrow[0]) : A(1);
  const A p0 = prow ? static_cast<A>(prow[0]) : A(1);
  t.grad = p.grad ? p.grad + r * p.cols + c0 : nullptr;
  t.loss = p.loss ? p.loss + r * p.cols + c0 : nullptr;

  A acc = A(0);
  int64_t done = 0;
  // 128-bit accesses when every row pointer of this tile is 16-byte aligned (decided here, at run
  // time: offsets, odd row strides and odd column counts fall back to scalar accesses).
  const bool vec = aligned16(t.x) && aligned16(t.y) && (!t.w || aligned16(t.w)) &&
                   (!t.pw || aligned16(t.pw)) && (!t.grad || aligned16(t.grad)) &&
                   (!t.loss || aligned16(t.loss));
  if (vec) {
    using P = Pack<T, V>;
    const int64_t nvec = n / V;
    for (int64_t i = threadIdx.x; i < nvec; i += blockDim.x) {
      const P xv = reinterpret_cast<const P*>(t.x)[i];
      const P yv = reinterpret_cast<const P*>(t.y)[i];
      P wv, pv, gv, lv;
      if (t.w) wv = reinterpret_cast<const P*>(t.w)[i];
      if (t.pw) pv = reinterpret_cast<const P*>(t.pw)[i];
#pragma unroll
      for (int k = 0; k < V; ++k) {
        A l, g;
        math::bce_elem<math::ScalarOps<A>>(static_cast<A>(xv.v[k]), static_cast<A>(yv.v[k]),
                                           t.w ? static_cast<A>(wv.v[k]) : w0,
                                           t.pw ? static_cast<A>(pv.v[k]) : p0, l, g);
        gv.v[k] = from_acc<T>(g * scale);
        lv.v[k] = from_acc<T>(l);
        acc += l;
      }
      if (t.grad) reinterpret_cast<P*>(t.grad)[i] = gv;
      if (t.loss) reinterpret_cast<P*>(t.loss)[i] = lv;
    }
    done = nvec * V;
    if (t.loss) acc = A(0);  // elementwise mode sums nothing
  }
  for (int64_t c = done + threadIdx.x; c < n; c += blockDim.x) bce_one(t, c, w0, p0, scale, acc);
  return acc;
}

// The fused pass. partial: kBlockSum -> gridDim.x values, kTileSum -> rows * tiles_per_row values
// (acc_t<T>), unused for kElementwise.
template <class T, int Mode>
__global__ void bce_fused_kernel(const BceParams<T> p, const int64_t tile_cols,
                                 const int64_t tiles_per_row, acc_t<T>* partial) {
  using A = acc_t<T>;
  const A scale = static_cast<A>(p.grad_scale);
  const int64_t tiles = p.rows * tiles_per_row;
  A block_acc = A(0);
  for (int64_t tile = blockIdx.x; tile < tiles; tile += gridDim.x) {  // uniform across the block
    const int64_t r = tile / tiles_per_row;
    const int64_t c0 = (tile - r * tiles_per_row) * tile_cols;
    const int64_t n = p.cols - c0 < tile_cols ? p.cols - c0 : tile_cols;
    const A acc = bce_tile<T, A>(p, r, c0, n, scale);
    if constexpr (Mode == kTileSum) {
      const A s = block_reduce_sum(acc);
      if (threadIdx.x == 0) partial[tile] = s;
    } else if constexpr (Mode == kBlockSum) {
      block_acc += acc;
    }
  }
  if constexpr (Mode == kBlockSum) {
    const A s = block_reduce_sum(block_acc);
    if (threadIdx.x == 0) partial[blockIdx.x] = s;
  }
}

// Second pass of kBlockSum, one block: out[0] = scale * sum(partial[0..n)), in double and in a
// fixed order.
template <class T>
__global__ void bce_sum_partials_kernel(const acc_t<T>* partial, const int64_t n,
                                        const double scale, T* out) {
  double s = 0;
  for (int64_t i = threadIdx.x; i < n; i += blockDim.x) s += static_cast<double>(partial[i]);
  s = block_reduce_sum(s);
  if (threadIdx.x == 0) out[0] = from_acc<T>(s * scale);
}

// Second pass of kTileSum: out[r] = scale * sum of row r's tile partials, in order.
template <class T>
__global__ void bce_row_sums_kernel(const acc_t<T>* partial, const int64_t rows,
                                    const int64_t tiles_per_row, const double scale, T* out) {
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t r = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; r < rows;
       r += stride) {
    double s = 0;
    for (int64_t k = 0; k < tiles_per_row; ++k) s += static_cast<double>(partial[r * tiles_per_row + k]);
    out[r] = from_acc<T>(s * scale);
  }
}

// ---- Host side: launch shape and the kernel sequence, shared by the .cu launcher and the tests.

struct BceLaunchShape {
  int mode = kElementwise;
  int block = 256;
  int64_t grid = 0;  // blocks of the fused kernel (0: nothing to do)
  int64_t tile_cols = 0, tiles_per_row = 0, tiles = 0;
  int64_t partials = 0;  // acc_t<T> elements the caller allocates for `partial`
  double loss_scale = 1.0;
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
  // Same order of operations as the CPU kernel: / cols (soft margin), then / count (mean); an
  // empty problem gives 0 * inf = NaN for a mean, as torch.mean of an empty tensor.
  double scale = 1.0;
  if (row_mean) scale /= static_cast<double>(cols);
  if (reduction == kMean) scale /= static_cast<double>(row_mean ? rows : rows * cols);
  s.loss_scale = scale;
  return s;
}

// Runs the fused kernel and its second pass. `launch(kernel, grid, block, args...)` starts a
// kernel (CUDA: <<<grid, block, 0, stream>>> + launch check; tests: the SIMT emulator). `out` is
// the reduced loss (a scalar, or rows values for soft margin 'none'); unused for BCE 'none'.
template <class T, class Launch>
void bce_run(const BceParams<T>& p, const BceLaunchShape& s, acc_t<T>* partial, T* out,
             Launch&& launch) {
  if (s.grid > 0) {
    if (s.mode == kElementwise) {
      launch(bce_fused_kernel<T, kElementwise>, s.grid, s.block, p, s.tile_cols, s.tiles_per_row,
             partial);
    } else if (s.mode == kBlockSum) {
      launch(bce_fused_kernel<T, kBlockSum>, s.grid, s.block, p, s.tile_cols, s.tiles_per_row,
             partial);
    } else {
      launch(bce_fused_kernel<T, kTileSum>, s.grid, s.block, p, s.tile_cols, s.tiles_per_row,
             partial);
    }
  }
  if (s.mode == kBlockSum) {
    launch(bce_sum_partials_kernel<T>, int64_t(1), s.block, static_cast<const acc_t<T>*>(partial),
           s.partials, s.loss_scale, out);
  } else if (s.mode == kTileSum && p.rows > 0) {
    const int64_t blocks = (p.rows + s.block - 1) / s.block;
    const int64_t cap = s.grid > 0 ? s.grid : 1;
    launch(bce_row_sums_kernel<T>, blocks < cap ? blocks : cap, s.block,
           static_cast<const acc_t<T>*>(partial), p.rows, s.tiles_per_row, s.loss_scale, out);
  }
}

}  // namespace mlc::cuda
