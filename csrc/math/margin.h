// The multilabel margin loss math: the hinge threshold (both kernels' hinge test) and the steps of
// the CPU's counting method; plain functions over raw pointers and sizes, no ATen, no allocation.
//
// Row loss = sum_{j in targets} sum_{i not a target} max(0, 1 - x[y_j] + x[i]).
// Native evaluates z = 1 - x[t] + x[i] in the scalar type and tests z > 0. Rounding preserves the
// sign of a sum (and gives 0 only for an exact 0), so z > 0  <=>  x[i] > thr(t) with
// thr = -fl(1 - x[t]) computed in the same type: the hinge counts match native bit for bit, even
// for integer-valued scores exactly 1 apart. A NaN on either side compares false: no contribution.
//
// Callers pass the row's scores `x` in the compute type A (float for fp32/fp16/bf16, double for
// fp64) with every target position already replaced by NaN, which removes the targets from the
// inner sums without a mask.
#pragma once
#include <cstdint>

#include "portable.h"

namespace mlc::math {

template <class A>
ML_HD A margin_threshold(A x_target) {
  return -(A(1) - x_target);
}

// Counting method, step 1: t[0, n) sorted ascending without NaNs. Merges equal values in place
// (t keeps the Q distinct values, mult[q] their multiplicities) and returns Q.
template <class A>
ML_HD int64_t margin_merge_thresholds(A* t, int64_t n, int64_t* mult) {
  int64_t q = -1;
  for (int64_t k = 0; k < n; ++k) {
    if (q >= 0 && t[k] == t[q]) {
      ++mult[q];
    } else {
      t[++q] = t[k];
      mult[q] = 1;
    }
  }
  return q + 1;
}

// Counting method, step 2, for columns [0, C): bucket b(i) = #thresholds strictly below x[i], so
// x[i] activates the hinges of exactly t[0, b). Writes grad[i] = mult_prefix[b] * scale (when grad
// is not null) and accumulates cnt[b] += 1, D[b] += x[i] - t[b-1] (>= 0: sums of non-negative terms,
// no cancellation as with prefix sums of raw scores). cnt/D hold kMarginBucketCopies * (Q + 1)
// entries, zeroed by the caller; the result is left in the first Q + 1. Entry 0 is never read (it
// collects the columns below every threshold and NaN columns, i.e. the targets). t[-1] must be
// readable and finite (a sentinel slot) so that the update needs no branch. Q >= 1.
// Each batch lane updates its own copy of cnt/D: with few buckets consecutive columns hit the same
// entry, and a single copy makes one long store-to-load dependency chain. The binary searches of
// kBatch columns run in lock step (same trip count for all) with the comparison turned into
// arithmetic: independent chains, no mispredicted branches (random scores make each step a coin
// flip). Measurements: docs/performance.md ("margin counting path").
constexpr int kMarginBucketCopies = 8;

// Adds the copies 1.. of cnt/D (Q + 1 entries each) into the first; entry 0 is never read.
ML_HD void margin_merge_bucket_copies(int64_t* cnt, double* D, int64_t Q) {
  for (int k = 1; k < kMarginBucketCopies; ++k) {
    for (int64_t b = 1; b <= Q; ++b) {
      cnt[b] += cnt[k * (Q + 1) + b];
      D[b] += D[k * (Q + 1) + b];
    }
  }
}

template <class A, class G>
ML_HD void margin_bucket_row(const A* x, int64_t C, const A* t, int64_t Q,
                             const int64_t* mult_prefix, int64_t* cnt, double* D, G* grad,
                             double scale) {
  constexpr int kBatch = kMarginBucketCopies;
  const int64_t stride = Q + 1;
  for (int64_t i0 = 0; i0 < C; i0 += kBatch) {
    const int m = C - i0 < kBatch ? static_cast<int>(C - i0) : kBatch;
    A xv[kBatch];
    int64_t pos[kBatch];
    for (int k = 0; k < kBatch; ++k) {
      xv[k] = k < m ? x[i0 + k] : x[i0];
      pos[k] = 0;
    }
    for (int64_t n = Q; n > 1;) {
      const int64_t half = n >> 1;
      for (int k = 0; k < kBatch; ++k) {
        pos[k] += half & -static_cast<int64_t>(t[pos[k] + half - 1] < xv[k]);
      }
      n -= half;
    }
    for (int k = 0; k < m; ++k) {
      const int64_t b = pos[k] + static_cast<int64_t>(t[pos[k]] < xv[k]);
      ++cnt[k * stride + b];
      D[k * stride + b] += static_cast<double>(xv[k]) - static_cast<double>(t[b - 1]);
      if (grad) grad[i0 + k] = static_cast<G>(static_cast<double>(mult_prefix[b]) * scale);
    }
  }
  margin_merge_bucket_copies(cnt, D, Q);
}

// Counting method, step 3: suffix sweep over the Q distinct thresholds. K[q] = #columns above t[q],
// L_q = sum over them of (x - t[q]) = D[q+1] + L_{q+1} + K_{q+1} (t[q+1] - t[q]).
// Returns the row loss sum_q mult[q] L_q.
template <class A>
ML_HD double margin_suffix_sweep(const A* t, const int64_t* mult, int64_t Q, const int64_t* cnt,
                                 const double* D, int64_t* K) {
  double loss = 0, L_next = 0;
  int64_t K_next = 0;
  for (int64_t q = Q - 1; q >= 0; --q) {
    double L = D[q + 1] + L_next;
    // The K_next > 0 test avoids 0 * inf when t[q+1] = +inf (a target scored +inf: no column is
    // above it); t[q] = -inf with K_next > 0 correctly gives +inf.
    if (K_next > 0) L += static_cast<double>(K_next) *
                         (static_cast<double>(t[q + 1]) - static_cast<double>(t[q]));
    const int64_t Kq = cnt[q + 1] + K_next;
    K[q] = Kq;
    if (Kq > 0) loss += static_cast<double>(mult[q]) * L;
    L_next = L;
    K_next = Kq;
  }
  return loss;
}

}  // namespace mlc::math
