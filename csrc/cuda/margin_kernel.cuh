// CUDA kernel for the fused multilabel margin loss forward + input gradient: the direct O(P*C) and
// the counting O(C log P + P log P) method per row, chosen per row as on the CPU (p.algo); the
// methods are described in docs/design.md ("Margin on CUDA").
//
// Framework-free (MarginParams<T>, no ATen); the hinge threshold comes from csrc/math/margin.h, so
// hinge decisions match the CPU kernel (and native) bit for bit. Like bce_kernel.cuh, everything
// here compiles with the host compiler through tests/cpp/simt_emu.h and uses only what it emulates
// (threadIdx/blockIdx/blockDim/gridDim, __syncthreads, __shfl_{down,}_sync, atomicAdd, static and
// dynamic __shared__).
//
// One block per row (block b takes rows b, b + gridDim.x, ...): steps 1-3 below, then the row's
// loss (fp32, fp64 for double, per thread then a fixed-order block sum) goes to row_partial[r]; a
// second kernel (reduce.cuh) applies the scales and rounds once to T. No float atomics,
// fixed-order sorts and scans: bitwise identical run to run for the same grid.
#pragma once
#include <cstddef>
#include <cstdint>
#include <limits>
#include <type_traits>

#include "../math/margin.h"
#include "../params.h"
#include "common.cuh"
#include "reduce.cuh"

namespace mlc::cuda {

// algo 0 on CUDA: the direct method for rows with at most this many positives (docs/design.md,
// "margin on CUDA": derived from work counts, not measured).
constexpr int64_t kCudaDirectMaxTargets = 16;
// Positives whose counting arrays a row keeps in shared memory (24 KiB for fp32, 32 KiB for fp64);
// rows with more use the block's global scratch.
constexpr int64_t kCountingSmemTargets = 1024;

// Dynamic shared memory of the direct method for a chunk of `chunk` target occurrences.
template <class A>
constexpr int64_t margin_direct_smem_bytes(int64_t chunk) {
  return chunk * static_cast<int64_t>(sizeof(int64_t) + sizeof(A) + sizeof(unsigned));
}
// Bytes of the counting arrays for up to m positives: two int64 and two A arrays of m + 1 entries.
template <class A>
constexpr int64_t margin_counting_bytes(int64_t m) {
  return (m + 1) * static_cast<int64_t>(2 * sizeof(int64_t) + 2 * sizeof(A));
}
// Shared memory of the counting method's tile marks (two buffers of blockDim.x int64; also the
// block scans' slice totals).
constexpr int64_t margin_marks_bytes(int64_t block) {
  return 2 * block * static_cast<int64_t>(sizeof(int64_t));
}

struct MarginKernelArgs {
  int64_t chunk = 1;          // direct: occurrences staged in shared memory at a time
  int64_t smem_targets = 0;   // counting: rows with P <= smem_targets keep their arrays in shared
  int64_t scratch_bytes = 0;  // global scratch per block (direct K counters / counting arrays)
};

// #{k : t[k] < v} (kUpper: #{k : t[k] <= v}) for t[0, n) sorted ascending, n >= 1: the same trip
// count for every thread (log2 n steps) and a select, no data-dependent branch. A NaN v gives 0
// (kUpper: n).
template <bool kUpper, class V>
__device__ __forceinline__ int64_t count_below(const V* t, int64_t n, V v) {
  int64_t pos = 0;
  for (int64_t len = n; len > 1;) {
    const int64_t half = len >> 1;
    const V m = t[pos + half - 1];
    pos += (kUpper ? !(v < m) : m < v) ? half : 0;
    len -= half;
  }
  const V m = t[pos];
  return pos + ((kUpper ? !(v < m) : m < v) ? 1 : 0);
}

// lo + #{k in [lo, n) : a[k] < v} for a sorted ascending: galloping from lo, O(log(result - lo)).
__device__ __forceinline__ int64_t gallop_below(const int64_t* a, int64_t lo, int64_t n, int64_t v) {
  int64_t step = 1;
  while (lo + step <= n && a[lo + step - 1] < v) {
    lo += step;
    step *= 2;
  }
  const int64_t len = n - lo < step - 1 ? n - lo : step - 1;
  return len > 0 ? lo + count_below<false>(a + lo, len, v) : lo;
}

// Sorts a[0, n) ascending (stable; keys without NaN) over the block, with b[0, n) as scratch, in
// shared or global memory; returns a or b, whichever holds the result. Merge path: in the pass that
// merges runs of w into runs of 2w, thread k writes the k-th of blockDim.x equal slices of the
// output, from one binary search (the co-rank) per run pair its slice touches: O(n / threads +
// log n) per thread and pass, O(n log n) work in all. Every thread calls it (barriers inside).
template <class K>
__device__ K* block_merge_sort(K* a, K* b, int64_t n) {
  const int64_t per = (n + blockDim.x - 1) / blockDim.x;
  const int64_t s = threadIdx.x * per, e = s + per < n ? s + per : n;
  for (int64_t w = 1; w < n; w *= 2) {
    for (int64_t pos = s; pos < e;) {
      const int64_t base = pos / (2 * w) * (2 * w);
      const int64_t mid = base + w < n ? base + w : n, end = base + 2 * w < n ? base + 2 * w : n;
      const int64_t k = pos - base;
      int64_t lo = k > end - mid ? k - (end - mid) : 0, hi = k < mid - base ? k : mid - base;
      while (lo < hi) {  // first run's share of the first k outputs (ties: first run first)
        const int64_t m = (lo + hi) / 2;
        if (!(a[mid + k - 1 - m] < a[base + m])) {
          lo = m + 1;
        } else {
          hi = m;
        }
      }
      int64_t i = base + lo, j = mid + (k - lo);
      for (const int64_t stop = e < end ? e : end; pos < stop; ++pos) {
        const bool first = j >= end || (i < mid && !(a[j] < a[i]));
        b[pos] = first ? a[i++] : a[j++];
      }
    }
    __syncthreads();
    K* tmp = a;
    a = b;
    b = tmp;
  }
  return a;
}

// In-place inclusive prefix sum of v[0, n) over the block in a fixed order (deterministic in
// floating point): thread k sums the k-th of blockDim.x equal slices, warp 0 scans the slice totals
// (`tot`: blockDim.x entries of shared memory), each thread rescans its slice. Every thread calls it.
template <class V>
__device__ void block_inclusive_scan(V* v, int64_t n, V* tot) {
  const int64_t tid = threadIdx.x, per = (n + blockDim.x - 1) / blockDim.x;
  const int64_t s = tid * per, e = s + per < n ? s + per : n;
  V sum = V(0);
  for (int64_t k = s; k < e; ++k) sum += v[k];
  tot[tid] = sum;
  __syncthreads();
  if (tid < kWarp) {
    const int64_t slices = blockDim.x / kWarp;  // per lane: blockDim.x is whole warps, <= 1024
    V run = V(0);
    for (int64_t k = 0; k < slices; ++k) run += tot[tid * slices + k];
    V inc = run;
    for (int d = 1; d < kWarp; d *= 2) {
      const V o = __shfl_sync(0xffffffffu, inc, static_cast<int>(tid >= d ? tid - d : tid));
      if (tid >= d) inc += o;
    }
    const V prev = __shfl_sync(0xffffffffu, inc, static_cast<int>(tid > 0 ? tid - 1 : 0));
    V acc = tid > 0 ? prev : V(0);
    for (int64_t k = 0; k < slices; ++k) {
      const V own = tot[tid * slices + k];
      tot[tid * slices + k] = acc;
      acc += own;
    }
  }
  __syncthreads();
  V acc = tot[tid];
  for (int64_t k = s; k < e; ++k) {
    acc += v[k];
    v[k] = acc;
  }
  __syncthreads();
}

// Step 1: P, or -1 for a row with an out-of-range entry (recorded in p.error: the first to claim it).
// A bad row's loss and gradient become NaN and nothing reads x out of bounds (the rule and the
// record: MarginTargetError, csrc/params.h).
template <class T>
__device__ int64_t margin_row_positives(const MarginParams<T>& p, const int64_t* y, int64_t r) {
  int64_t first = p.tcols;
  bool bad = false;
  for (int64_t j = threadIdx.x; j < p.tcols; j += blockDim.x) {
    const int64_t t = y[j];
    if (t < -1 || t >= p.cols) {
      if (!bad && p.error != nullptr && atomicAdd(&p.error->claimed, 0u) == 0u &&
          atomicAdd(&p.error->claimed, 1u) == 0u) {
        p.error->row = r;
        p.error->value = t;
        p.error->cols = p.cols;
      }
      bad = true;
    }
    if (t < 0 && j < first) first = j;
  }
  return block_min_bcast(bad ? int64_t(-1) : first);  // also: the previous row is completely done
}

// Step 2, the direct method; returns the thread's share of the row loss. K: P int64 (grad only).
// Thread t owns column c0 + t of each tile; the P occurrences are staged through shared memory in
// chunks, and each active hinge adds 1 to its occurrence's counter by unsigned shared atomics
// (integer adds commute: deterministic), flushed per chunk into K.
template <class T>
__device__ acc_t<T> margin_direct_row(const MarginParams<T>& p, const T* x, const int64_t* y, T* g,
                                      const int64_t P, const int64_t chunk, unsigned char* smem,
                                      int64_t* K) {
  using A = acc_t<T>;
  int64_t* s_tidx = reinterpret_cast<int64_t*>(smem);           // chunk target indices
  A* s_thr = reinterpret_cast<A*>(s_tidx + chunk);              // chunk thresholds
  unsigned* s_k = reinterpret_cast<unsigned*>(s_thr + chunk);   // chunk active-column counters
  const int64_t C = p.cols;
  const int64_t tid = threadIdx.x, nt = blockDim.x;
  const bool want_grad = g != nullptr;
  const A scale = static_cast<A>(p.scales.grad);
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
          if (xi > th) {  // false for a NaN score or threshold
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

  // Target columns: minus the active columns of each of their occurrences.
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
  return lsum;
}

// The counting method's sort key of a target score: its threshold, NaN as +inf (both activate
// nothing: x > NaN and x > +inf are false for every x).
template <class A>
__device__ __forceinline__ A margin_sort_key(A x_target) {
  const A th = math::margin_threshold<A>(x_target);
  return th == th ? th : std::numeric_limits<A>::infinity();
}

// Step 3, the counting method; returns the thread's share of the row loss. mem: the row's arrays
// (margin_counting_bytes(P), shared or global); marks: margin_marks_bytes(blockDim.x) of shared.
template <class T>
__device__ acc_t<T> margin_counting_row(const MarginParams<T>& p, const T* x, const int64_t* y,
                                        T* g, const int64_t P, unsigned char* mem, int64_t* marks) {
  using A = acc_t<T>;
  using U = unsigned long long;
  const int64_t C = p.cols;
  const int64_t tid = threadIdx.x, nt = blockDim.x;
  if (P == 0) {
    if (g) {
      for (int64_t i = tid; i < C; i += nt) g[i] = from_acc<T>(A(0));
    }
    return A(0);
  }
  int64_t* ia = reinterpret_cast<int64_t*>(mem);
  int64_t* ib = ia + (P + 1);
  A* ta = reinterpret_cast<A*>(ib + (P + 1));
  A* tb = ta + (P + 1);
  for (int64_t j = tid; j < P; j += nt) {
    const int64_t c = y[j];
    ia[j] = c;
    ta[j] = margin_sort_key(static_cast<A>(x[c]));
  }
  __syncthreads();
  const A* t = block_merge_sort(ta, tb, P);
  const int64_t* idx = block_merge_sort(ia, ib, P);
  A* R = t == ta ? tb : ta;  // the spare buffers
  U* hist = reinterpret_cast<U*>(idx == ia ? ib : ia);
  // R[b] = sum_{m=1}^{b-1} m * (t[m] - t[m-1]) = sum_{q<b} (t[b-1] - t[q]); equal neighbours add 0
  // (also two infinities of one sign).
  for (int64_t b = tid; b <= P; b += nt) {
    A w = A(0);
    if (b >= 2 && t[b - 1] != t[b - 2]) w = static_cast<A>(b - 1) * (t[b - 1] - t[b - 2]);
    R[b] = w;
    hist[b] = 0;
  }
  __syncthreads();
  block_inclusive_scan(R, P + 1, reinterpret_cast<A*>(marks));
  for (int64_t j = tid; j < 2 * nt; j += nt) marks[j] = -1;
  __syncthreads();

  const A scale = static_cast<A>(p.scales.grad);
  A lsum = A(0);
  int64_t lo = 0;  // sorted target positions of the columns before the tile
  for (int64_t c0 = 0, tile = 0; c0 < C; c0 += nt, ++tile) {  // uniform
    // The tile's targets mark their columns with the tile number; two buffers by parity, so the
    // next tile's marks never overwrite ones still being read (one barrier per tile).
    int64_t* mk = marks + (tile & 1) * nt;
    const int64_t hi = gallop_below(idx, lo, P, c0 + nt);
    for (int64_t k = lo + tid; k < hi; k += nt) {
      if (k == 0 || idx[k] != idx[k - 1]) mk[idx[k] - c0] = tile;  // one writer per column
    }
    lo = hi;
    __syncthreads();
    const int64_t i = c0 + tid;
    if (i < C && mk[tid] != tile) {
      const A xi = static_cast<A>(x[i]);
      const int64_t b = count_below<false>(t, P, xi);
      if (b > 0) {
        lsum += static_cast<A>(b) * (xi - t[b - 1]) + R[b];
        if (g) atomicAdd(&hist[b], U(1));
      }
      if (g) g[i] = from_acc<T>(static_cast<A>(b) * scale);
    }
  }
  if (g) {
    __syncthreads();  // every column counted
    block_inclusive_scan(hist, P + 1, reinterpret_cast<U*>(marks));  // hist[b]: columns in [1, b]
    const U total = hist[P];
    for (int64_t k = tid; k < P; k += nt) {  // once per distinct target, with its multiplicity
      if (k > 0 && idx[k] == idx[k - 1]) continue;
      const int64_t c = idx[k];
      const int64_t mult = count_below<true>(idx, P, c) - k;
      const int64_t above = count_below<true>(t, P, margin_sort_key(static_cast<A>(x[c])));  // >= 1
      const U K = total - hist[above - 1];
      g[c] = from_acc<T>(static_cast<A>(-static_cast<double>(static_cast<U>(mult) * K) *
                                        p.scales.grad));
    }
  }
  return lsum;
}

// scratch: gridDim.x * a.scratch_bytes bytes, row_partial: rows values. Dynamic shared memory:
// margin_kernel_smem_bytes (margin_launch.cuh).
template <class T>
__global__ void margin_kernel(const MarginParams<T> p, const MarginKernelArgs a,
                              unsigned char* scratch, acc_t<T>* row_partial) {
  using A = acc_t<T>;
  // Dynamic shared memory: a direct row's chunk, or a counting row's arrays (when they fit) and,
  // after them, its tile marks.
  unsigned char* smem = mlc_dynamic_smem<unsigned char>();
  int64_t* marks = reinterpret_cast<int64_t*>(smem + margin_counting_bytes<A>(a.smem_targets));
  unsigned char* block_scratch =
      scratch != nullptr ? scratch + static_cast<int64_t>(blockIdx.x) * a.scratch_bytes : nullptr;
  for (int64_t r = blockIdx.x; r < p.rows; r += gridDim.x) {  // uniform across the block
    const T* x = p.input + r * p.input_row_stride;
    const int64_t* y = p.tcols > 0 ? p.target + r * p.target_row_stride : nullptr;
    T* g = p.grad != nullptr ? p.grad + r * p.cols : nullptr;
    const int64_t P = margin_row_positives(p, y, r);
    A lsum;
    if (P < 0) {  // an out-of-range target: NaN row (p.error has the entry)
      lsum = std::numeric_limits<A>::quiet_NaN();
      if (g) {
        for (int64_t i = threadIdx.x; i < p.cols; i += blockDim.x) g[i] = from_acc<T>(lsum);
      }
    } else if (p.algo == kMarginDirect || (p.algo == kMarginAuto && P <= kCudaDirectMaxTargets)) {
      lsum = margin_direct_row(p, x, y, g, P, a.chunk, smem,
                               reinterpret_cast<int64_t*>(block_scratch));
    } else {
      lsum = margin_counting_row(p, x, y, g, P, P <= a.smem_targets ? smem : block_scratch, marks);
    }
    const A s = block_reduce_sum(lsum);
    if (threadIdx.x == 0) row_partial[r] = s;
  }
}

}  // namespace mlc::cuda
