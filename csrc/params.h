// Kernel parameter blocks: raw pointers, sizes and strides only (no ATen types), so that the CPU
// kernels, the CUDA kernels and the SIMT emulation tests all consume the same struct.
#pragma once
#include <cstdint>

#include "math/bce_variants.h"  // BceVariant

namespace mlc {

// How the op's outputs come from its per-element terms; computed once on the host by
// loss_scales() (csrc/reduction.h) and only read by the kernels.
struct LossScales {
  double row = 1.0;   // per-row output (soft margin / margin 'none') = row's term sum * row
  double loss = 1.0;  // scalar output ('mean' / 'sum', or a 1-D margin input) = all terms' sum * loss
  double grad = 1.0;  // folded into the input gradient (d output / d term)
};

// A target given by each row's positives instead of a dense array (the fused linear losses' chunk
// op, csrc/bce_plan.h): canonical CSR, a row's column indices sorted and unique (SparseTargets),
// of which the problem's columns [0, cols) are the classes [first, first + cols). The target of a
// column is its positive's value (1 when values is null), 0 where the row has no positive.
template <class T>
struct CsrTarget {
  const int64_t* indices = nullptr;  // (nnz,) class indices
  const int64_t* offsets = nullptr;  // (rows + 1,): row r's are [offsets[r], offsets[r+1]); null: dense
  const T* values = nullptr;         // (nnz,) or null
  int64_t nnz = 0;
  int64_t first = 0;

  // First entry >= v of the sorted indices[lo, hi).
  static ML_HD int64_t lower_bound(const int64_t* a, int64_t lo, int64_t hi, int64_t v) {
    while (lo < hi) {
      const int64_t mid = lo + (hi - lo) / 2;
      if (a[mid] < v) {
        lo = mid + 1;
      } else {
        hi = mid;
      }
    }
    return lo;
  }
  // Row r's positives of class >= from: [k, hi). Offsets are clamped into [0, nnz] and made
  // non-decreasing, so a malformed CSR reads nothing out of bounds (its target is meaningless).
  ML_HD void row_from(int64_t r, int64_t from, int64_t& k, int64_t& hi) const {
    int64_t lo = offsets[r];
    hi = offsets[r + 1];
    lo = lo < 0 ? 0 : (lo > nnz ? nnz : lo);
    hi = hi < lo ? lo : (hi > nnz ? nnz : hi);
    k = lower_bound(indices, lo, hi, from);
  }
  ML_HD T value(int64_t k) const { return values ? values[k] : T(1); }
};

// A (rows x cols) problem; every operand row r starts at ptr + r * row_stride and its columns are
// contiguous (col_stride 1) or broadcast (col_stride 0). A null weight/pos_weight means 1.
template <class T>
struct BceParams {
  const T* input = nullptr;
  const T* target = nullptr;
  const T* weight = nullptr;
  const T* pos_weight = nullptr;
  int64_t rows = 0, cols = 0;
  int64_t input_row_stride = 0, target_row_stride = 0;
  int64_t weight_row_stride = 0, weight_col_stride = 0;
  int64_t pos_weight_row_stride = 0, pos_weight_col_stride = 0;
  T* loss = nullptr;  // elementwise loss (reduction 'none' of BCE), rows x cols contiguous, or null
  T* grad = nullptr;  // d(output)/d(input) for an upstream gradient of 1, contiguous, or null
                      // (may be input itself: each element is read before it is written)
  LossScales scales;
  BceVariant variant;  // which member of the BCE family, and its parameters
  CsrTarget<T> csr;    // when csr.offsets is set: the target (plain BCE, no weight), not `target`
};

// Which per-row algorithm the margin kernel uses (the schema's `algo` argument).
enum MarginAlgo : int { kMarginAuto = 0, kMarginDirect = 1, kMarginCounting = 2 };

// An out-of-range margin target entry (every entry must lie in [-1, cols), also past the first -1),
// found by a kernel in the pass that reads the targets: the first thread to raise `claimed` from 0
// records the rest. The CPU kernel raises at once; CUDA's record: csrc/cuda/margin_cuda.cu.
struct MarginTargetError {
  unsigned claimed = 0;
  int64_t row = 0, value = 0, cols = 0;
};

// Multilabel margin loss over (rows x cols) scores and a (rows x tcols) int64 target, -1 terminated.
// Columns of input and target are contiguous; rows start at row * row_stride.
template <class T>
struct MarginParams {
  const T* input = nullptr;
  const int64_t* target = nullptr;
  int64_t rows = 0, cols = 0, tcols = 0;
  int64_t input_row_stride = 0, target_row_stride = 0;
  T* row_loss = nullptr;  // per-row loss (reduction 'none' of an (N, C) input), or null
  T* grad = nullptr;      // rows x cols contiguous, or null when no gradient is wanted
  LossScales scales;
  int algo = kMarginAuto;
  MarginTargetError* error = nullptr;  // where a kernel records an out-of-range target (CUDA)
};

}  // namespace mlc
