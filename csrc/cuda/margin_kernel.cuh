// CUDA kernel for the fused multilabel margin loss forward + input gradient (direct method).
//
// Framework-free: raw pointers, sizes and strides through MarginParams<T> (no ATen); the hinge
// predicate and threshold come from csrc/math/margin.h, so hinge decisions match the CPU kernel
// (and native) bit for bit. Like bce_kernel.cuh, everything here compiles with the host compiler
// through tests/cpp/simt_emu.h and uses only what it emulates (threadIdx/blockIdx/blockDim/gridDim,
// __syncthreads, __shfl_down_sync, atomicAdd on shared memory, static and dynamic __shared__).
//
// Work decomposition: one block per row (block b takes rows b, b + gridDim.x, ...). Per row:
//  1. P = length of the target prefix before the first -1 (block min-reduction).
//  2. Columns in tiles of blockDim.x (thread t owns column c0 + t). For each tile, the P target
//     occurrences are staged through shared memory in chunks of `chunk` (once per row when
//     P <= chunk): pass 1 marks the columns that are targets (excluded from every inner sum, as the
//     CPU kernel's NaN replacement), pass 2 tests x[i] > thr_j for every threshold: the thread
//     counts its active hinges (grad[i] = count * scale) and sums their values (the loss), and
//     each active hinge adds 1 to the occurrence's tile counter (unsigned atomics in shared
//     memory: integer adds commute, so the result is deterministic), flushed after the tile into
//     K[j] (int64, a per-block global scratch row of tcols entries, one owner thread per entry).
//  3. grad[t] = -(sum of K_j over the occurrences j of target t) * scale (duplicates accumulate),
//     written by the thread of the first occurrence of t.
//  4. The row's loss (fp32, fp64 for double, per-thread then a fixed-order block sum) goes to
//     row_partial[r]; a second kernel (bce_kernel.cuh's fixed-order passes) divides by C, reduces
//     over rows for mean/sum and rounds once to T. No float atomics: bitwise identical run to run.
// Cost O(P*C) per row: the counting method (O(C log P)) of the CPU kernel is not ported yet.
#pragma once
#include <cstddef>
#include <cstdint>
#include <type_traits>

#include "../math/margin.h"
#include "../params.h"
#include "common.cuh"
#include "reduce.cuh"

namespace mlc::cuda {

// Bytes of dynamic shared memory for a chunk of `chunk` target occurrences.
template <class A>
constexpr int64_t margin_smem_bytes(int64_t chunk) {
  return chunk * static_cast<int64_t>(sizeof(int64_t) + sizeof(A) + sizeof(unsigned));
}

// kscratch: gridDim.x * tcols int64 (only read/written when p.grad), row_partial: rows values.
template <class T>
__global__ void margin_direct_kernel(const MarginParams<T> p, const int64_t chunk,
                                     int64_t* kscratch, acc_t<T>* row_partial) {
  using A = acc_t<T>;
  unsigned char* smem = mlc_dynamic_smem<unsigned char>();
  int64_t* s_tidx = reinterpret_cast<int64_t*>(smem);           // chunk target indices
  A* s_thr = reinterpret_cast<A*>(s_tidx + chunk);              // chunk thresholds
  unsigned* s_k = reinterpret_cast<unsigned*>(s_thr + chunk);   // chunk active-column counters
  const int64_t C = p.cols;
  const int64_t tid = threadIdx.x, nt = blockDim.x;
  const bool want_grad = p.grad != nullptr;
  const A scale = static_cast<A>(p.scales.grad);
  int64_t* K = want_grad ? kscratch + static_cast<int64_t>(blockIdx.x) * p.tcols : nullptr;

  for (int64_t r = blockIdx.x; r < p.rows; r += gridDim.x) {  // uniform across the block
    const T* x = p.input + r * p.input_row_stride;
    const int64_t* y = p.tcols > 0 ? p.target + r * p.target_row_stride : nullptr;
    T* g = want_grad ? p.grad + r * C : nullptr;

    // 1. P: first -1 of the row (a thread's first hit in its strided walk is its minimum).
    int64_t first = p.tcols;
    for (int64_t j = tid; j < p.tcols; j += nt) {
      if (y[j] < 0) {
        first = j;
        break;
      }
    }
    const int64_t P = block_min_bcast(first);  // also: the previous row is completely done
    if (want_grad) {
      for (int64_t j = tid; j < P; j += nt) K[j] = 0;
    }
    const bool resident = P <= chunk;  // all thresholds fit: stage them once for the row
    if (resident) {
      for (int64_t j = tid; j < P; j += nt) {
        const int64_t t = y[j];
        s_tidx[j] = t;
        s_thr[j] = math::margin_threshold<A>(static_cast<A>(x[t]));
        s_k[j] = 0u;
      }
    } else {
      for (int64_t j = tid; j < chunk; j += nt) s_k[j] = 0u;
    }
    __syncthreads();

    A lsum = A(0);
    for (int64_t c0 = 0; c0 < C; c0 += nt) {  // uniform
      const int64_t i = c0 + tid;
      const bool valid = i < C;
      const A xi = valid ? static_cast<A>(x[i]) : A(0);
      // Pass 1: is column i a target?
      bool excluded = !valid;
      for (int64_t j0 = 0; j0 < P; j0 += chunk) {
        const int64_t n = P - j0 < chunk ? P - j0 : chunk;
        if (!resident) {
          __syncthreads();  // previous readers of s_tidx are done
          for (int64_t jj = tid; jj < n; jj += nt) s_tidx[jj] = y[j0 + jj];
          __syncthreads();
        }
        for (int64_t jj = 0; jj < n; ++jj) excluded |= s_tidx[jj] == i;
      }
      // Pass 2: hinges.
      int64_t cnt = 0;
      for (int64_t j0 = 0; j0 < P; j0 += chunk) {
        const int64_t n = P - j0 < chunk ? P - j0 : chunk;
        if (!resident) {
          __syncthreads();  // previous readers of s_thr are done
          for (int64_t jj = tid; jj < n; jj += nt) {
            s_thr[jj] = math::margin_threshold<A>(static_cast<A>(x[y[j0 + jj]]));
          }
          __syncthreads();
        }
        if (!excluded) {
          for (int64_t jj = 0; jj < n; ++jj) {
            const A th = s_thr[jj];
            if (math::ScalarMarginOps::gt(xi, th)) {  // false for a NaN score or threshold
              ++cnt;
              lsum += xi - th;
              if (want_grad) atomicAdd(&s_k[jj], 1u);
            }
          }
        }
        if (want_grad) {
          __syncthreads();  // every hinge of the chunk has been counted
          for (int64_t jj = tid; jj < n; jj += nt) {
            K[j0 + jj] += static_cast<int64_t>(s_k[jj]);
            s_k[jj] = 0u;
          }
          __syncthreads();  // counters are zero again before anyone counts into them
        }
      }
      if (want_grad && valid) g[i] = from_acc<T>(static_cast<A>(cnt) * scale);  // targets: 0
    }

    // 3. Target columns: minus the active columns of each of their occurrences.
    if (want_grad) {
      __syncthreads();  // K complete; the tile pass has written 0 at every target column
      for (int64_t j = tid; j < P; j += nt) {
        const int64_t t = y[j];
        bool first_occurrence = true;
        for (int64_t k = 0; k < j && first_occurrence; ++k) first_occurrence = y[k] != t;
        if (!first_occurrence) continue;
        int64_t ks = 0;
        for (int64_t k = j; k < P; ++k) ks += y[k] == t ? K[k] : 0;
        g[t] = from_acc<T>(static_cast<A>(-static_cast<double>(ks) * p.scales.grad));
      }
    }

    // 4. Row loss (not yet divided by C).
    const A s = block_reduce_sum(lsum);
    if (threadIdx.x == 0) row_partial[r] = s;
  }
}

}  // namespace mlc::cuda
