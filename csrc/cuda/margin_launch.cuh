// Host side of the multilabel margin kernel: launch shape and the kernel sequence, shared by the
// CUDA launcher (margin_cuda.cu) and the SIMT emulation tests.
#pragma once
#include <cstdint>

#include "launch_limits.h"
#include "margin_kernel.cuh"
#include "reduce.cuh"

namespace mlc::cuda {

struct MarginLaunchShape {
  int block = 256;
  int64_t grid = 0;          // blocks of the margin kernel (0: nothing to do)
  int64_t chunk = 0;         // direct: target occurrences staged in shared memory at a time
  MarginKernelArgs args;     // chunk, counting rows' shared-memory capacity, scratch per block
  int64_t smem = 0;          // dynamic shared memory bytes of the margin kernel
  int64_t scratch = 0;       // bytes the caller allocates for the kernel's global scratch
  int64_t partials = 0;      // acc_t<T> elements the caller allocates for the row losses
  bool per_row_loss = false;
  const char* error = nullptr;  // why a GPU would refuse a launch of margin_run, or null
};

// Cap of the global scratch (bytes): limits the grid when target rows are very long.
constexpr int64_t kMarginMaxScratchBytes = int64_t(1) << 27;

// per_row_loss: 'none' on an (N, C) input; algo: the schema's (MarginAlgo). chunk 0 picks the
// direct method's default (1024: 16 KiB of shared memory for float, 20 KiB for double),
// smem_targets -1 the counting method's (kCountingSmemTargets); tests pass small values.
template <class A>
MarginLaunchShape margin_launch_shape(int64_t rows, int64_t tcols, bool per_row_loss, bool grad,
                                      int algo, int block, int64_t max_grid, int64_t chunk = 0,
                                      int64_t smem_targets = -1) {
  MarginLaunchShape s;
  s.block = block;
  s.chunk = chunk > 0 ? chunk : 1024;
  if (tcols > 0 && s.chunk > tcols) s.chunk = tcols;
  if (s.chunk < 1) s.chunk = 1;
  const bool direct = algo != kMarginCounting, counting = algo != kMarginDirect;
  int64_t per_block = 0;  // global scratch bytes per block
  if (direct) {
    s.smem = margin_direct_smem_bytes<A>(s.chunk);
    // K counters: under algo 0 only rows with P <= kCudaDirectMaxTargets take the direct method.
    const int64_t k = algo == kMarginDirect || tcols < kCudaDirectMaxTargets ? tcols
                                                                             : kCudaDirectMaxTargets;
    if (grad) per_block = k * static_cast<int64_t>(sizeof(int64_t));
  }
  int64_t st = 0;
  if (counting) {
    st = smem_targets >= 0 ? smem_targets : kCountingSmemTargets;
    if (st > tcols) st = tcols;
    const int64_t cs = margin_marks_bytes(block) + margin_counting_bytes<A>(st);
    s.smem = s.smem > cs ? s.smem : cs;
    if (tcols > st && margin_counting_bytes<A>(tcols) > per_block) {
      per_block = margin_counting_bytes<A>(tcols);
    }
  }
  per_block = (per_block + 15) / 16 * 16;
  int64_t grid = rows < max_grid ? rows : max_grid;
  if (per_block > 0) {
    const int64_t cap = kMarginMaxScratchBytes / per_block > 0 ? kMarginMaxScratchBytes / per_block : 1;
    grid = grid < cap ? grid : cap;
  }
  s.grid = grid;
  s.args.chunk = s.chunk;
  s.args.smem_targets = st;
  s.args.scratch_bytes = per_block;
  s.scratch = grid * per_block;
  s.partials = rows;
  s.per_row_loss = per_row_loss;
  // margin_run's launches: the margin kernel (grid, its dynamic shared memory, a block min and a
  // block sum), then a second pass (grid 1, or at most grid, no dynamic shared memory).
  s.error = launch_shape_error(s.grid > 0 ? s.grid : 1, block, s.smem, kBlockMinSmem + kBlockSumSmem);
  return s;
}

// Runs the margin kernel and its second pass, which applies p.scales (the plan's reduction rule).
// `launch(kernel, grid, block, smem, args...)` starts a kernel. scratch: s.scratch bytes (16-byte
// aligned); `out`: rows values (per_row_loss) or one scalar.
template <class T, class Launch>
void margin_run(const MarginParams<T>& p, const MarginLaunchShape& s, unsigned char* scratch,
                acc_t<T>* partial, T* out, Launch&& launch) {
  if (s.grid > 0) {
    launch(margin_kernel<T>, s.grid, s.block, s.smem, p, s.args, scratch, partial);
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
