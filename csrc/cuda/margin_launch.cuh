// Host side of the multilabel margin kernel: launch shape and the kernel sequence, shared by the
// CUDA launcher (margin_cuda.cu) and the SIMT emulation tests.
#pragma once
#include <cstdint>

#include "margin_kernel.cuh"
#include "reduce.cuh"

namespace mlc::cuda {

struct MarginLaunchShape {
  int block = 256;
  int64_t grid = 0;        // blocks of the direct kernel (0: nothing to do)
  int64_t chunk = 0;       // target occurrences staged in shared memory at a time
  int64_t smem = 0;        // dynamic shared memory bytes of the direct kernel
  int64_t kscratch = 0;    // int64 elements the caller allocates for the K counters
  int64_t partials = 0;    // acc_t<T> elements the caller allocates for the row losses
  bool per_row_loss = false;
};

// Cap of the K scratch (int64 elements): limits the grid when target rows are very long.
constexpr int64_t kMarginMaxScratch = int64_t(1) << 24;

// per_row_loss: 'none' on an (N, C) input. chunk 0 picks the default (1024: 16 KiB of shared memory
// for float, 20 KiB for double); tests pass small values.
template <class A>
MarginLaunchShape margin_launch_shape(int64_t rows, int64_t tcols, bool per_row_loss, bool grad,
                                      int block, int64_t max_grid, int64_t chunk = 0) {
  MarginLaunchShape s;
  s.block = block;
  s.chunk = chunk > 0 ? chunk : 1024;
  if (tcols > 0 && s.chunk > tcols) s.chunk = tcols;
  if (s.chunk < 1) s.chunk = 1;
  s.smem = margin_smem_bytes<A>(s.chunk);
  int64_t grid = rows < max_grid ? rows : max_grid;
  if (grad && tcols > 0) {
    const int64_t cap = kMarginMaxScratch / tcols > 0 ? kMarginMaxScratch / tcols : 1;
    grid = grid < cap ? grid : cap;
  }
  s.grid = grid;
  s.kscratch = grad ? grid * tcols : 0;
  s.partials = rows;
  s.per_row_loss = per_row_loss;
  return s;
}

// Runs the direct kernel and its second pass, which applies p.scales (the plan's reduction rule).
// `launch(kernel, grid, block, smem, args...)` starts
// a kernel. `out`: rows values (per_row_loss) or one scalar.
template <class T, class Launch>
void margin_run(const MarginParams<T>& p, const MarginLaunchShape& s, int64_t* kscratch,
                acc_t<T>* partial, T* out, Launch&& launch) {
  if (s.grid > 0) {
    launch(margin_direct_kernel<T>, s.grid, s.block, s.smem, p, s.chunk, kscratch, partial);
  }
  if (s.per_row_loss) {
    if (p.rows > 0) {
      const int64_t blocks = (p.rows + s.block - 1) / s.block;
      const int64_t cap = s.grid > 0 ? s.grid : 1;
      launch(row_sums_kernel<T>, blocks < cap ? blocks : cap, s.block, int64_t(0),
             static_cast<const acc_t<T>*>(partial), p.rows, int64_t(1), p.scales.row, out);
    }
  } else {
    launch(sum_partials_kernel<T>, int64_t(1), s.block, int64_t(0),
           static_cast<const acc_t<T>*>(partial), s.partials, p.scales.loss, out);
  }
}

}  // namespace mlc::cuda
