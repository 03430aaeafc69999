// Fused multilabel margin loss forward + input gradient on the CPU. Rows run in parallel; each row
// is independent: its scores are copied once into per-thread scratch in the compute type with the
// targets replaced by NaN (no is_target mask, half types widened once), then either
//  - direct, O(P*C) vectorized over columns, for few positives P, or
//  - counting, O(C log P + P log P): sorted thresholds, one binary search per column, suffix sweep.
// Per-row losses are kept in double and reduced in row order, so results do not depend on threads.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <atomic>
#include <cmath>
#include <limits>
#include <utility>
#include <vector>

#include "../margin_plan.h"
#include "../math/margin.h"
#include "vec_io.h"

// The AVX2 gather form of the counting path serves AVX512 builds too (AVX512 implies AVX2).
#if defined(CPU_CAPABILITY_AVX2) || defined(CPU_CAPABILITY_AVX512)
#define MLC_AVX2_GATHERS 1
#include <immintrin.h>
#endif

namespace mlc::cpu {
namespace {

constexpr int64_t kGrainElems = 32768;  // below this many scores, threading costs more than it saves

// Switch point between the two methods: direct when P <= kDirectMaxTargets<A>, measured per ISA and
// compute type (docs/performance.md, "margin switch point"). The counting path pays a few gathers
// and a scalar bucket update per column whatever P is; the direct loop pays P vector compares.
#if defined(CPU_CAPABILITY_AVX512)
template <class A>
constexpr int64_t kDirectMaxTargets = std::is_same_v<A, float> ? 120 : 80;
#else
template <class A>
constexpr int64_t kDirectMaxTargets = std::is_same_v<A, float> ? 48 : 24;
#endif

#if defined(MLC_AVX2_GATHERS)
// AVX2 form of math::margin_bucket_row for float compute (fp32/fp16/bf16 inputs): the same buckets,
// gradient and (double) bucket sums, with the binary searches done by 8-lane gathers, 4 vectors in
// flight (a gather's latency is several times its throughput). x is readable (NaN-padded) up to a
// multiple of 32 columns; t[-1] is a finite sentinel; gtab[b] = mult_prefix[b] * scale; Q < 2^31.
constexpr int64_t kAvx2Block = 32;

// An AVX2 register as a Vectorized<float> (16 lanes in an AVX512 build: the upper 8 unused).
inline Vectorized<float> as_vec(__m256 v) {
#if defined(CPU_CAPABILITY_AVX512)
  return _mm512_castps256_ps512(v);
#else
  return v;
#endif
}

template <class T, bool kGrad>
void bucket_row_avx2(const float* x, int64_t C, const float* t, int64_t Q, const float* gtab,
                     int64_t* cnt, double* D, T* grad) {
  constexpr int kVecs = kAvx2Block / 8;
  const int64_t stride = Q + 1;
  alignas(32) int32_t bl[kAvx2Block];
  alignas(32) double dl[kAvx2Block];
  for (int64_t i0 = 0; i0 < C; i0 += kAvx2Block) {
    __m256 xv[kVecs];
    __m256i pos[kVecs];
    for (int v = 0; v < kVecs; ++v) {
      xv[v] = _mm256_loadu_ps(x + i0 + 8 * v);
      pos[v] = _mm256_setzero_si256();
    }
    for (int64_t n = Q; n > 1;) {
      const int64_t half = n >> 1;
      const __m256i off = _mm256_set1_epi32(static_cast<int32_t>(half - 1));
      const __m256i h = _mm256_set1_epi32(static_cast<int32_t>(half));
      for (int v = 0; v < kVecs; ++v) {
        const __m256 tv = _mm256_i32gather_ps(t, _mm256_add_epi32(pos[v], off), 4);
        const __m256i lt = _mm256_castps_si256(_mm256_cmp_ps(tv, xv[v], _CMP_LT_OQ));
        pos[v] = _mm256_add_epi32(pos[v], _mm256_and_si256(lt, h));
      }
      n -= half;
    }
    for (int v = 0; v < kVecs; ++v) {
      const __m256 tv = _mm256_i32gather_ps(t, pos[v], 4);
      const __m256i lt = _mm256_castps_si256(_mm256_cmp_ps(tv, xv[v], _CMP_LT_OQ));
      const __m256i b = _mm256_sub_epi32(pos[v], lt);  // lt is -1 where true
      const __m256 low = _mm256_i32gather_ps(t - 1, b, 4);
      _mm256_store_si256(reinterpret_cast<__m256i*>(bl + 8 * v), b);
      // x - t[b-1] in double, exactly as the scalar form.
      _mm256_store_pd(dl + 8 * v, _mm256_sub_pd(_mm256_cvtps_pd(_mm256_castps256_ps128(xv[v])),
                                               _mm256_cvtps_pd(_mm256_castps256_ps128(low))));
      _mm256_store_pd(dl + 8 * v + 4,
                      _mm256_sub_pd(_mm256_cvtps_pd(_mm256_extractf128_ps(xv[v], 1)),
                                    _mm256_cvtps_pd(_mm256_extractf128_ps(low, 1))));
      if constexpr (kGrad) {
        const int64_t c = i0 + 8 * v;
        if (c < C) {
          store(grad + c, as_vec(_mm256_i32gather_ps(gtab, b, 4)), std::min<int64_t>(8, C - c));
        }
      }
    }
    const int m = static_cast<int>(std::min<int64_t>(kAvx2Block, C - i0));
    for (int k = 0; k < m; ++k) {
      const int64_t e = (k & (math::kMarginBucketCopies - 1)) * stride + bl[k];
      ++cnt[e];
      D[e] += dl[k];  // entry 0 collects garbage (NaN columns), never read
    }
  }
  math::margin_merge_bucket_copies(cnt, D, Q);
}
#endif

template <class T>
struct Scratch {
  using A = opmath_t<T>;
  using V = Vectorized<A>;
  std::vector<A> xs;       // the row in A, targets = NaN, padded with NaN to whole vectors
  std::vector<A> thr;      // threshold per target occurrence
  std::vector<int64_t> tidx, K;
  std::vector<V> kacc;
  std::vector<std::pair<A, int64_t>> sorted;  // (threshold, target index), NaN thresholds dropped
  std::vector<A> t;
  std::vector<int64_t> mult, mult_prefix, cnt;
  std::vector<double> D;
  std::vector<float> gtab;
  std::vector<int64_t> occ_k;  // hinge count per target occurrence (counting path)
  std::vector<uint64_t> seen;  // a bit per column, 0 between rows: finds duplicated targets
  std::vector<std::pair<int64_t, int64_t>> by_col;  // (target column, hinge count) per occurrence

  // Room for a row of n target occurrences, grown on demand: a native (N, C) target leaves room for
  // C per row but rows usually hold a few, and sizing everything for C page-faults on every call
  // (docs/performance.md, "margin counting path").
  void fit(int64_t n, bool counting) {
    if (static_cast<int64_t>(thr.size()) < n) {
      thr.resize(n);
      tidx.resize(n);
      K.resize(n);
    }
    if (counting && static_cast<int64_t>(mult.size()) < n) {
      t.resize(n + 1, A(0));  // t[0] stays 0: the finite sentinel t[-1] of margin_bucket_row
      mult.resize(n);
      mult_prefix.resize(n + 1);
      cnt.resize(math::kMarginBucketCopies * (n + 1));
      D.resize(math::kMarginBucketCopies * (n + 1));
      gtab.resize(n + 1);
      sorted.reserve(n);
      occ_k.resize(n);
    }
  }
};

// grad[idx[k]] = -(sum of cnt over all occurrences of idx[k]) * scale, rounded to T once: a target
// listed several times (native counts each) must not round a half/bf16 gradient per occurrence.
// A bit per column tells whether any target repeats; only then are the n occurrences sorted by
// column to sum the repeats (cheaper than a per-column count table per thread or always sorting:
// docs/performance.md, "margin counting path").
template <class T>
void write_target_grads(Scratch<T>& s, T* grad, const int64_t* idx, const int64_t* cnt, int64_t n,
                        double scale) {
  auto& seen = s.seen;
  auto& by_col = s.by_col;
  uint64_t repeated = 0;
  for (int64_t k = 0; k < n; ++k) {
    const uint64_t bit = uint64_t(1) << (idx[k] & 63);
    repeated |= seen[idx[k] >> 6] & bit;
    seen[idx[k] >> 6] |= bit;
  }
  for (int64_t k = 0; k < n; ++k) seen[idx[k] >> 6] = 0;
  if (!repeated) {
    for (int64_t k = 0; k < n; ++k) {
      grad[idx[k]] = static_cast<T>(0.0 - static_cast<double>(cnt[k]) * scale);
    }
    return;
  }
  by_col.resize(n);
  for (int64_t k = 0; k < n; ++k) by_col[k] = {idx[k], cnt[k]};
  std::sort(by_col.begin(), by_col.end());
  for (int64_t k = 0; k < n;) {
    const int64_t col = by_col[k].first;
    int64_t total = 0;
    for (; k < n && by_col[k].first == col; ++k) total += by_col[k].second;
    grad[col] = static_cast<T>(0.0 - static_cast<double>(total) * scale);
  }
}

// s.thr[0, P): the thresholds of the target occurrences in order (duplicates and NaNs allowed).
template <class T, bool kGrad>
double direct_row(Scratch<T>& s, int64_t C, int64_t P, T* grad, double scale) {
  using A = opmath_t<T>;
  using V = Vectorized<A>;
  constexpr int64_t L = V::size();
  // Vector lanes count in A exactly up to 2^24 (float): flush the per-target counts long before.
  constexpr int64_t kFlushBlocks = int64_t(1) << 20;
  s.kacc.assign(P, V(A(0)));
  std::fill(s.K.begin(), s.K.begin() + P, int64_t(0));
  const V vscale(static_cast<A>(scale));
  DoubleLanes<A> lane_sums;
  int64_t blocks = 0;
  const A* thr = s.thr.data();
  V* kacc = s.kacc.data();
  for (int64_t c = 0; c < C; c += L) {
    const V x = V::loadu(s.xs.data() + c);
    // Per column the active hinges (count: the gradient / scale) and their values (sum: the loss);
    // per occurrence j its active columns (kacc[j]: minus its gradient).
    V count(A(0)), sum(A(0));
    for (int64_t j = 0; j < P; ++j) {
      const V th(thr[j]);
      const V m = x > th;  // all-ones lanes where x > th (false for NaN)
      const V hit = V(A(1)) & m;
      count = count + hit;
      sum = sum + ((x - th) & m);
      kacc[j] = kacc[j] + hit;
    }
    if constexpr (kGrad) store(grad + c, count * vscale, C - c);
    lane_sums.add(sum);
    if (++blocks == kFlushBlocks || c + L >= C) {
      for (int64_t j = 0; j < P; ++j) {
        A kt[L];
        s.kacc[j].store(kt);
        int64_t k_sum = 0;
        for (int64_t k = 0; k < L; ++k) k_sum += static_cast<int64_t>(kt[k]);
        s.K[j] += k_sum;
        s.kacc[j] = V(A(0));
      }
      blocks = 0;
    }
  }
  if constexpr (kGrad) {
    write_target_grads(s, grad, s.tidx.data(), s.K.data(), P, scale);
  }
  return lane_sums.total();
}

template <class T, bool kGrad>
double counting_row(Scratch<T>& s, int64_t C, int64_t P, T* grad, double scale) {
  using A = opmath_t<T>;
  s.sorted.clear();
  for (int64_t j = 0; j < P; ++j) {
    if (!std::isnan(s.thr[j])) s.sorted.emplace_back(s.thr[j], s.tidx[j]);
  }
  const int64_t n = static_cast<int64_t>(s.sorted.size());
  if (n == 0) {  // every target scored NaN: nothing is active
    if constexpr (kGrad) std::fill(grad, grad + C, T(0));
    return 0.0;
  }
  std::sort(s.sorted.begin(), s.sorted.end(),
            [](const auto& a, const auto& b) { return a.first < b.first; });
  A* t = s.t.data() + 1;  // s.t[0] = 0: the sentinel t[-1] of margin_bucket_row
  for (int64_t k = 0; k < n; ++k) t[k] = s.sorted[k].first;
  const int64_t Q = math::margin_merge_thresholds(t, n, s.mult.data());
  s.mult_prefix[0] = 0;
  for (int64_t q = 0; q < Q; ++q) s.mult_prefix[q + 1] = s.mult_prefix[q] + s.mult[q];
  const int64_t copies = math::kMarginBucketCopies * (Q + 1);
  std::fill(s.cnt.begin(), s.cnt.begin() + copies, int64_t(0));
  std::fill(s.D.begin(), s.D.begin() + copies, 0.0);
  bool bucketed = false;
#if defined(MLC_AVX2_GATHERS)
  if constexpr (std::is_same_v<A, float>) {
    if (Q < (int64_t(1) << 31)) {
      for (int64_t q = 0; q <= Q; ++q) s.gtab[q] = static_cast<float>(s.mult_prefix[q] * scale);
      bucket_row_avx2<T, kGrad>(s.xs.data(), C, t, Q, s.gtab.data(), s.cnt.data(), s.D.data(),
                                grad);
      bucketed = true;
    }
  }
#endif
  if (!bucketed) {
    math::margin_bucket_row<A, T>(s.xs.data(), C, t, Q, s.mult_prefix.data(), s.cnt.data(),
                                  s.D.data(), kGrad ? grad : nullptr, scale);
  }
  const double loss =
      math::margin_suffix_sweep(t, s.mult.data(), Q, s.cnt.data(), s.D.data(), s.K.data());
  if constexpr (kGrad) {
    int64_t q = 0;
    for (int64_t k = 0; k < n; ++k) {
      if (s.sorted[k].first != t[q]) ++q;
      s.tidx[k] = s.sorted[k].second;  // tidx is free once sorted is built
      s.occ_k[k] = s.K[q];
    }
    write_target_grads(s, grad, s.tidx.data(), s.occ_k.data(), n, scale);
  }
  return loss;
}

// Whether every y[0, n) lies in [-1, C) (native checks the whole target, also past the first -1):
// a vector min/max pass over the row's target, in cache right after its prefix was read.
bool targets_in_range(const int64_t* y, int64_t n, int64_t C) {
  using VI = Vectorized<int64_t>;
  constexpr int64_t L = VI::size();
  VI lo(0), hi(-1);
  int64_t j = 0;
  for (; j + L <= n; j += L) {
    const VI v = VI::loadu(y + j);
    lo = at::vec::minimum(lo, v);
    hi = at::vec::maximum(hi, v);
  }
  int64_t l[L], h[L];
  lo.store(l);
  hi.store(h);
  int64_t mn = *std::min_element(l, l + L), mx = *std::max_element(h, h + L);
  for (; j < n; ++j) {
    mn = std::min(mn, y[j]);
    mx = std::max(mx, y[j]);
  }
  return mn >= -1 && mx < C;
}

// margin_row's loss for a row with an out-of-range target entry (the call then raises).
constexpr double kBadRow = -1.0;

// Loss of row r (not divided by cols, >= 0, or kBadRow); writes the row's gradient when kGrad.
template <class T, bool kGrad>
double margin_row(const MarginParams<T>& P, int64_t r, Scratch<T>& s) {
  using A = opmath_t<T>;
  using V = Vectorized<A>;
  constexpr int64_t L = V::size();
  const int64_t C = P.cols;
  const T* x = P.input + r * P.input_row_stride;
  T* grad = kGrad ? P.grad + r * C : nullptr;
  const int64_t* y = P.target ? P.target + r * P.target_row_stride : nullptr;
  int64_t np = 0;
  while (y && np < P.tcols && y[np] >= 0 && y[np] < C) ++np;
  if (y && !targets_in_range(y + np, P.tcols - np, C)) return kBadRow;
  const bool direct = P.algo == kMarginDirect ||
                      (P.algo == kMarginAuto && np <= kDirectMaxTargets<A>);
  s.fit(np, !direct);
  std::copy(y, y + np, s.tidx.begin());
  if (np == 0) {
    if constexpr (kGrad) std::fill(grad, grad + C, T(0));
    return 0.0;
  }
  for (int64_t c = 0; c < C; c += L) load(x + c, C - c).store(s.xs.data() + c, std::min(L, C - c));
  for (int64_t j = 0; j < np; ++j) s.thr[j] = math::margin_threshold<A>(s.xs[s.tidx[j]]);
  for (int64_t j = 0; j < np; ++j) s.xs[s.tidx[j]] = std::numeric_limits<A>::quiet_NaN();
  return direct ? direct_row<T, kGrad>(s, C, np, grad, P.scales.grad)
                : counting_row<T, kGrad>(s, C, np, grad, P.scales.grad);
}

template <class T>
void margin_cpu_impl(MarginPlan& plan) {
  using A = opmath_t<T>;
  constexpr int64_t kPad = 32;  // >= any vector width and bucket_row_avx2's block
  const MarginParams<T> P = plan.params<T>();
  const int64_t C = P.cols;
  std::vector<double> row_loss(P.rows);
  std::atomic<int64_t> first_bad{P.rows};  // the first row with an out-of-range target entry
  at::parallel_for(0, P.rows, std::max<int64_t>(1, kGrainElems / C), [&](int64_t r0, int64_t r1) {
    Scratch<T> s;  // one per thread (per range), reused by all its rows
    s.xs.assign((C + kPad - 1) / kPad * kPad, std::numeric_limits<A>::quiet_NaN());
    s.t.assign(1, A(0));
    if (P.grad) s.seen.assign((C + 63) / 64, 0);
    for (int64_t r = r0; r < r1; ++r) {
      row_loss[r] = P.grad ? margin_row<T, true>(P, r, s) : margin_row<T, false>(P, r, s);
      if (row_loss[r] == kBadRow) {
        int64_t cur = first_bad.load();
        while (r < cur && !first_bad.compare_exchange_weak(cur, r)) {
        }
        break;  // the call raises: the rest of the range need not run
      }
    }
  });
  if (const int64_t r = first_bad.load(); r < P.rows) {  // the first bad entry of the first bad row
    const int64_t* y = P.target + r * P.target_row_stride;
    MarginTargetError e;
    e.row = r;
    e.cols = C;
    for (int64_t j = P.tcols - 1; j >= 0; --j) {
      if (y[j] < -1 || y[j] >= C) e.value = y[j];
    }
    TORCH_CHECK(false, margin_target_error_message(e));
  }
  if (plan.per_row_loss) {  // (not P.row_loss: an empty batch's (0,) loss has no storage)
    for (int64_t r = 0; r < P.rows; ++r) P.row_loss[r] = static_cast<T>(row_loss[r] * P.scales.row);
    return;
  }
  double total = 0;
  for (double v : row_loss) total += v;
  *plan.loss.mutable_data_ptr<T>() = static_cast<T>(total * P.scales.loss);
}

std::tuple<at::Tensor, at::Tensor> multilabel_margin_cpu(const at::Tensor& input,
                                                         const at::Tensor& target,
                                                         int64_t reduction, bool compute_grad,
                                                         int64_t algo) {
  MarginPlan plan = make_margin_plan(input, target, reduction, compute_grad, algo);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, input.scalar_type(), "margin_cpu",
                                  [&] { margin_cpu_impl<scalar_t>(plan); });
  return op_outputs(plan.loss, plan.grad, input);
}

}  // namespace
}  // namespace mlc::cpu

TORCH_LIBRARY_IMPL(multilabel_cuda, CPU, m) {
  m.impl("multilabel_margin", &mlc::cpu::multilabel_margin_cpu);
}
