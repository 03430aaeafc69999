// CUDA kernels for the fused BCE-with-logits / multilabel-soft-margin forward + input gradient.
//
// Framework-free: raw pointers, sizes and strides through BceParams<T> (no ATen), math from
// csrc/math/bce.h. Everything here also compiles with the host compiler through the SIMT emulation
// header tests/cpp/simt_emu.h, so it uses only what that header emulates: threadIdx/blockIdx/
// blockDim/gridDim, __syncthreads, __shfl_down_sync, static __shared__ arrays. No CUB.
//
// Block b handles tiles b, b + gridDim.x, ... (BceTiles). Every reduction is two-pass and in a
// fixed order (per-thread strided sums -> warp shuffle tree -> per-warp slots -> warp 0), so a
// result is bitwise identical run to run for the same grid, i.e. on the same device.
#pragma once
#include <cstddef>
#include <cstdint>
#include <type_traits>

#include "../math/bce_variants.h"
#include "../math/scalar_ops.h"
#include "../params.h"
#include "common.cuh"
#include "reduce.cuh"

namespace mlc::cuda {

enum BceMode : int {
  kElementwise = 0,  // BCE 'none': loss written per element, no sums
  kBlockSum = 1,     // 'mean' / 'sum': one partial per block, then sum_partials_kernel
  kTileSum = 2,      // soft margin 'none': one partial per row segment, then row_sums_kernel
};

// How bce_fused_kernel splits the (rows, cols) problem; chosen by bce_launch_shape. A tile is one
// segment of `cols` columns (`per_row` segments a row) of `rows` rows (the tile's rows are
// `rows`-aligned), worked on by groups of `group` threads, one row at a time per group:
// - long rows: rows 1, group = the block (one row segment a tile, as wide as the block's accesses);
// - short rows: per_row 1, group a power of two below the block, rows a multiple of the block's
//   groups, so that a tile still holds about a long row's tile of elements and every thread has a
//   row to work on.
struct BceTiles {
  int64_t cols = 0, per_row = 0, rows = 1;
  int64_t count = 0;  // tiles: ceil(problem rows / rows) * per_row
  int group = 0;
};

// How a tile reads its target: tgt.pack<V>(i) is the i-th V-vector of the tile's columns,
// tgt.at(c) column c; each thread asks for its columns in increasing order. Dense: the row's values.
template <class T>
struct DenseTileTarget {
  const T* y;
  __device__ __forceinline__ DenseTileTarget(const BceParams<T>& p, int64_t r, int64_t c0)
      : y(p.target + r * p.target_row_stride + c0) {}
  __device__ __forceinline__ bool aligned() const { return aligned16(y); }
  template <int V>
  __device__ __forceinline__ Pack<T, V> pack(int64_t i) {
    return reinterpret_cast<const Pack<T, V>*>(y)[i];
  }
  __device__ __forceinline__ T at(int64_t c) { return y[c]; }
};

// CSR (p.csr): the row's positives from the tile's first class on. A thread finds the first
// positive of each of its vectors by a binary search from where its previous one ended, then walks
// them along the vector's lanes (lane j takes the next positive when it is column j; static lane
// indices, so the vector stays in registers).
template <class T>
struct CsrTileTarget {
  const CsrTarget<T> csr;  // a copy: five words, in registers
  int64_t k, hi, first;  // first: the class of the tile's column 0
  __device__ __forceinline__ CsrTileTarget(const BceParams<T>& p, int64_t r, int64_t c0)
      : csr(p.csr), first(p.csr.first + c0) {
    csr.row_from(r, first, k, hi);
  }
  __device__ __forceinline__ bool aligned() const { return true; }
  template <int V>
  __device__ __forceinline__ Pack<T, V> pack(int64_t i) {
    const int64_t col = first + i * V;
    k = CsrTarget<T>::lower_bound(csr.indices, k, hi, col);
    Pack<T, V> out;
#pragma unroll
    for (int j = 0; j < V; ++j) {
      const bool hit = k < hi && csr.indices[k] == col + j;
      out.v[j] = hit ? csr.value(k) : T(0);
      k += hit ? 1 : 0;
    }
    return out;
  }
  __device__ __forceinline__ T at(int64_t c) { return pack<1>(c).v[0]; }
};

// Row pointers of one tile, already offset to its first column.
template <class T>
struct TileRow {
  const T* x;
  const T* w;   // per-column weight, or null (then w0)
  const T* pw;  // per-column pos_weight, or null (then p0)
  T* grad;      // or null
  T* loss;      // or null
};

// Elem: the member of the BCE family (csrc/math/bce_variants.h).
template <class Elem, class T, class A>
__device__ __forceinline__ void bce_one(const Elem& f, const TileRow<T>& t, int64_t c, A y, A w0,
                                        A p0, A scale, A& acc) {
  A l, g;
  f.template apply<math::ScalarOps<A>>(static_cast<A>(t.x[c]), y,
                                       t.w ? static_cast<A>(t.w[c]) : w0,
                                       t.pw ? static_cast<A>(t.pw[c]) : p0, l, g);
  if (t.grad) t.grad[c] = from_acc<T>(g * scale);
  if (t.loss) {
    t.loss[c] = from_acc<T>(l);
  } else {
    acc += l;
  }
}

// Lane `lane` of the `lanes` threads on row segment (r, [c0, c0 + n)): its share of the
// segment's grad/loss, and its loss sum. Target: DenseTileTarget or CsrTileTarget.
template <class Elem, template <class> class Target, class T, class A>
__device__ __forceinline__ A bce_tile(const BceParams<T>& p, int64_t r, int64_t c0, int64_t n,
                                      A scale, unsigned lane, unsigned lanes) {
  constexpr int V = 16 / static_cast<int>(sizeof(T));
  const Elem f(p.variant);
  TileRow<T> t;
  t.x = p.input + r * p.input_row_stride + c0;
  Target<T> y(p, r, c0);
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
  const bool vec = aligned16(t.x) && y.aligned() && (!t.w || aligned16(t.w)) &&
                   (!t.pw || aligned16(t.pw)) && (!t.grad || aligned16(t.grad)) &&
                   (!t.loss || aligned16(t.loss));
  if (vec) {
    using P = Pack<T, V>;
    const int64_t nvec = n / V;
    for (int64_t i = lane; i < nvec; i += lanes) {
      const P xv = reinterpret_cast<const P*>(t.x)[i];
      const P yv = y.template pack<V>(i);
      P wv, pv, gv, lv;
      if (t.w) wv = reinterpret_cast<const P*>(t.w)[i];
      if (t.pw) pv = reinterpret_cast<const P*>(t.pw)[i];
#pragma unroll
      for (int k = 0; k < V; ++k) {
        A l, g;
        f.template apply<math::ScalarOps<A>>(static_cast<A>(xv.v[k]), static_cast<A>(yv.v[k]),
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
  for (int64_t c = done + lane; c < n; c += lanes) {
    bce_one(f, t, c, static_cast<A>(y.at(c)), w0, p0, scale, acc);
  }
  return acc;
}

// The fused pass. partial: kBlockSum -> gridDim.x values, kTileSum -> rows * t.per_row values
// (acc_t<T>), unused for kElementwise. Elem: the member of the BCE family. Short: the short-rows
// tiling (several rows a tile), a kernel of its own so that the long-row kernel keeps its row
// uniform across the block (its row pointers stay in uniform registers). Target: how the target
// is read (DenseTileTarget, or CsrTileTarget for p.csr).
template <class T, int Mode, class Elem = math::BcePlain, bool Short = false,
          template <class> class Target = DenseTileTarget>
__global__ void bce_fused_kernel(const BceParams<T> p, const BceTiles t, acc_t<T>* partial) {
  using A = acc_t<T>;
  const A scale = static_cast<A>(p.scales.grad);
  // unsigned, as threadIdx / blockDim are: the long-row kernel then reads them as before.
  const unsigned tid = threadIdx.x, lanes = Short ? static_cast<unsigned>(t.group) : blockDim.x;
  const unsigned lane = Short ? tid % lanes : tid;
  A block_acc = A(0);
  for (int64_t tile = blockIdx.x; tile < t.count; tile += gridDim.x) {  // uniform across the block
    const int64_t rt = tile / t.per_row, seg = tile - rt * t.per_row;
    const int64_t c0 = seg * t.cols;
    const int64_t n = p.cols - c0 < t.cols ? p.cols - c0 : t.cols;
    // Row r's segment, by this thread's group of lanes; a row past the end adds 0.
    const auto row = [&](int64_t r, bool valid) {
      const A acc = valid ? bce_tile<Elem, Target, T, A>(p, r, c0, n, scale, lane, lanes) : A(0);
      if constexpr (Mode == kTileSum) {
        const A s = Short ? group_reduce_sum(acc, static_cast<int>(lanes)) : block_reduce_sum(acc);
        if (lane == 0 && valid) partial[r * t.per_row + seg] = s;
      } else if constexpr (Mode == kBlockSum) {
        block_acc += acc;
      }
    };
    if constexpr (Short) {
      // Group g takes rows g, g + groups, ... of the tile: t.rows / groups of them in every
      // thread, rows past the end included, so every lane reaches every warp/block sum.
      const unsigned groups = blockDim.x / lanes;
      for (int64_t r = rt * t.rows + tid / lanes, end = (rt + 1) * t.rows; r < end; r += groups) {
        row(r, r < p.rows);
      }
    } else {
      row(rt, true);  // the block on row rt: uniform, as are its row pointers
    }
  }
  if constexpr (Mode == kBlockSum) {
    const A s = block_reduce_sum(block_acc);
    if (threadIdx.x == 0) partial[blockIdx.x] = s;
  }
}

}  // namespace mlc::cuda
