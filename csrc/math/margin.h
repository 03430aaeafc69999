// The single source of truth for the multilabel margin loss math, shared by the CPU kernel and the
// (future) CUDA kernel: plain functions over raw pointers and sizes, no ATen, no allocation.
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

// Number of elements of the ascending array t[0, n) strictly below x (0 for a NaN x). Branch-free
// (the loop trip count depends on n only), so a caller can run several searches in lock step.
template <class A>
ML_HD int64_t count_below(const A* t, int64_t n, A x) {
  if (n <= 0) return 0;
  const A* base = t;
  while (n > 1) {
    const int64_t half = n >> 1;
    base = (base[half - 1] < x) ? base + half : base;
    n -= half;
  }
  return (base - t) + (*base < x ? 1 : 0);
}

// Direct O(P*C) method for few targets, one block of columns: V is a scalar A (a CUDA thread) or a
// vector of A (the CPU's Vectorized), Ops supplies gt(x, t) -> mask and keep(mask, v) -> v or 0.
// thr[0, P) are the thresholds of the target occurrences in order (duplicates and NaNs allowed).
// Adds to count the number of active hinges per column (the gradient / scale), to sum their values
// (the loss), and to kacc[j] the number of active columns for occurrence j (minus its gradient).
template <class Ops, class V, class A>
ML_HD void margin_direct_block(V x, const A* thr, int64_t P, V& count, V& sum, V* kacc) {
  const V one(A(1));
  for (int64_t j = 0; j < P; ++j) {
    const V th(thr[j]);
    const auto m = Ops::gt(x, th);
    const V c = Ops::keep(m, one);
    count = count + c;
    sum = sum + Ops::keep(m, x - th);
    kacc[j] = kacc[j] + c;
  }
}

struct ScalarMarginOps {
  template <class A>
  static ML_HD bool gt(A x, A t) { return x > t; }
  template <class A>
  static ML_HD A keep(bool m, A v) { return m ? v : A(0); }
};

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
// no cancellation as with prefix sums of raw scores). cnt/D have Q + 1 entries, zeroed by the
// caller; entry 0 is never read (it also collects NaN columns, i.e. the targets). Q >= 1.
// The binary searches of kBatch columns run in lock step (same trip count): independent dependency
// chains that the core overlaps, about 3x faster than one search at a time.
template <class A, class G>
ML_HD void margin_bucket_row(const A* x, int64_t C, const A* t, int64_t Q,
                             const int64_t* mult_prefix, int64_t* cnt, double* D, G* grad,
                             double scale) {
  constexpr int kBatch = 8;
  int64_t i0 = 0;
  for (; i0 + kBatch <= C; i0 += kBatch) {
    const A* base[kBatch];
    for (int k = 0; k < kBatch; ++k) base[k] = t;
    for (int64_t n = Q; n > 1;) {
      const int64_t half = n >> 1;
      for (int k = 0; k < kBatch; ++k) base[k] = (base[k][half - 1] < x[i0 + k]) ? base[k] + half : base[k];
      n -= half;
    }
    for (int k = 0; k < kBatch; ++k) {
      const A xi = x[i0 + k];
      const int64_t b = (base[k] - t) + (*base[k] < xi ? 1 : 0);
      ++cnt[b];
      if (b > 0) D[b] += static_cast<double>(xi) - static_cast<double>(t[b - 1]);
      if (grad) grad[i0 + k] = static_cast<G>(static_cast<double>(mult_prefix[b]) * scale);
    }
  }
  for (int64_t i = i0; i < C; ++i) {
    const A xi = x[i];
    const int64_t b = count_below(t, Q, xi);
    ++cnt[b];
    if (b > 0) D[b] += static_cast<double>(xi) - static_cast<double>(t[b - 1]);
    if (grad) grad[i] = static_cast<G>(static_cast<double>(mult_prefix[b]) * scale);
  }
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
    // K_next == 0 guards 0 * inf when t[q+1] = +inf (a target scored -inf... or +inf).
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
