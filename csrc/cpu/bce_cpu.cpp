// Fused BCE-with-logits / multilabel-soft-margin forward + input gradient on the CPU: one pass over
// input and target writes the gradient and the loss (elementwise, or per-(row, chunk) partial sums
// reduced afterwards in a fixed order, so results do not depend on the thread count).
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <vector>

#include "../bce_plan.h"
#include "../math/bce_variants.h"
#include "vec_io.h"

namespace mlc::cpu {
namespace {

// Columns per work unit: long enough to amortize per-row setup, short enough that a single long row
// (extreme multi-label, C ~ 1e6) still splits across threads.
constexpr int64_t kChunk = 16384;
constexpr int64_t kGrainElems = 32768;  // below this, threading costs more than it saves

// Independent vectors in flight per step: one element's exp -> log1p/divide chain has several times
// more latency than throughput, so a single chain leaves the FMA pipes idle; 8 spills registers
// (docs/performance.md, "BCE unroll").
constexpr int64_t kUnroll = 4;

// How bce_chunk reads the target of row r: tgt(c, n) is the vector of columns [c, c + n), asked
// for in increasing c. Dense: the row's values.
template <class T>
struct DenseTarget {
  const T* y;
  DenseTarget(const BceParams<T>& P, int64_t r, int64_t) : y(P.target + r * P.target_row_stride) {}
  ML_FORCE_INLINE Vectorized<opmath_t<T>> operator()(int64_t c, int64_t n) const {
    return load(y + c, n);
  }
};

// CSR (P.csr): the row's positives from column c0 on, walked along with the columns; a vector
// without a positive is 0 without a memory access, so no dense target exists anywhere.
template <class T>
struct CsrRowTarget {
  using V = Vectorized<opmath_t<T>>;
  const CsrTarget<T> csr;  // a copy: five words, in registers
  int64_t k, hi;
  CsrRowTarget(const BceParams<T>& P, int64_t r, int64_t c0) : csr(P.csr) {
    csr.row_from(r, csr.first + c0, k, hi);
  }
  ML_FORCE_INLINE V operator()(int64_t c, int64_t n) {
    const int64_t base = csr.first + c;
    if (k == hi || csr.indices[k] >= base + n) return V(0);
    opmath_t<T> lanes[V::size()] = {};
    for (; k < hi && csr.indices[k] < base + n; ++k) {
      const int64_t j = csr.indices[k] - base;
      if (j >= 0) lanes[j] = static_cast<opmath_t<T>>(csr.value(k));  // < 0 only if not sorted
    }
    return V::loadu(lanes);
  }
};

// Returns the loss sum over row r, columns [c0, c1) (0 when the loss is written elementwise).
// Elem: the member of the BCE family (csrc/math/bce_variants.h). kWeight / kPosWeight: whether that
// operand is present (compiled out when absent). Target: DenseTarget or CsrRowTarget.
template <class T, class Elem, bool kWeight, bool kPosWeight,
          template <class> class Target = DenseTarget>
double bce_chunk(const BceParams<T>& P, int64_t r, int64_t c0, int64_t c1) {
  using acc_t = opmath_t<T>;
  using V = Vectorized<acc_t>;
  constexpr int64_t L = V::size();
  if (c0 >= c1) return 0.0;  // cols == 0: operands may have no storage at all
  const T* x = P.input + r * P.input_row_stride;
  Target<T> y(P, r, c0);
  const T* w = kWeight ? P.weight + r * P.weight_row_stride : nullptr;
  const T* pw = kPosWeight ? P.pos_weight + r * P.pos_weight_row_stride : nullptr;
  const bool w_vec = kWeight && P.weight_col_stride != 0;
  const bool pw_vec = kPosWeight && P.pos_weight_col_stride != 0;
  const V w_bcast(kWeight ? acc_t(w[0]) : acc_t(1));
  const V pw_bcast(kPosWeight ? acc_t(pw[0]) : acc_t(1));
  const V scale(static_cast<acc_t>(P.scales.grad));
  T* grad = P.grad ? P.grad + r * P.cols : nullptr;
  T* loss = P.loss ? P.loss + r * P.cols : nullptr;

  const Elem member(P.variant);
  auto elem = [&](int64_t c, int64_t n, V& l, V& g) {
    const V wv = kWeight && w_vec ? load(w + c, n) : w_bcast;
    const V pv = kPosWeight && pw_vec ? load(pw + c, n) : pw_bcast;
    member.template apply<VecOps<acc_t>, kWeight, kPosWeight>(load(x + c, n), y(c, n), wv, pv, l,
                                                              g);
  };
  // Loss sums: up to kFlush vector adds in acc_t, then into double lanes, so a 1e6-long fp32 row
  // keeps ~1e-7 relative accuracy at the cost of one vector add per step.
  constexpr int kFlush = 16;
  DoubleLanes<acc_t> lane_sums;
  V block_sum(0);
  int pending = 0;
  auto flush = [&] {
    lane_sums.add(block_sum);
    block_sum = V(0);
    pending = 0;
  };
  auto emit = [&](int64_t c, int64_t n, const V& l, const V& g) {
    if (grad) store(grad + c, g * scale, n);
    if (loss) {
      store(loss + c, l, n);
    } else {
      block_sum += n == L ? l : V::set(V(0), l, n);  // lanes past the row end hold garbage
      if (++pending == kFlush) flush();
    }
  };
  int64_t c = c0;
  for (; c + kUnroll * L <= c1; c += kUnroll * L) {
    V l[kUnroll], g[kUnroll];
    for (int64_t u = 0; u < kUnroll; ++u) elem(c + u * L, L, l[u], g[u]);
    for (int64_t u = 0; u < kUnroll; ++u) emit(c + u * L, L, l[u], g[u]);
  }
  for (; c < c1; c += L) {
    const int64_t n = std::min<int64_t>(L, c1 - c);
    V l, g;
    elem(c, n, l, g);
    emit(c, n, l, g);
  }
  flush();
  return lane_sums.total();
}

// The chunk function for the member and the operands present.
template <class T>
using ChunkFn = double (*)(const BceParams<T>&, int64_t, int64_t, int64_t);

template <class T, class Elem>
ChunkFn<T> pick_bce_chunk(const BceParams<T>& P) {
  if constexpr (Elem::kPosWeight) {
    if (P.pos_weight) return P.weight ? &bce_chunk<T, Elem, true, true> : &bce_chunk<T, Elem, false, true>;
  }
  return P.weight ? &bce_chunk<T, Elem, true, false> : &bce_chunk<T, Elem, false, false>;
}

template <class T>
ChunkFn<T> pick_bce_chunk(const BceParams<T>& P) {
  if (P.csr.offsets) {  // bce_chunk_ with a CSR target: plain BCE, no weight, float or double
    if constexpr (std::is_same_v<T, opmath_t<T>>) {
      using E = math::BcePlain;
      return P.pos_weight ? &bce_chunk<T, E, false, true, CsrRowTarget>
                          : &bce_chunk<T, E, false, false, CsrRowTarget>;
    }
    TORCH_CHECK(false, "multilabel_cuda: CSR targets need float32 or float64");
  }
#define MLC_PICK(K, E) \
  if (P.variant.kind == K) return pick_bce_chunk<T, E>(P);
  MLC_BCE_FAMILY(MLC_PICK)
#undef MLC_PICK
  TORCH_CHECK(false, "multilabel_cuda: unknown BCE variant ", P.variant.kind);
}

template <class T>
void bce_cpu_impl(BcePlan& plan) {
  const BceParams<T> P = plan.params<T>();
  const int64_t chunks = std::max<int64_t>(1, (P.cols + kChunk - 1) / kChunk);
  const int64_t units = P.rows * chunks;
  const int64_t unit_elems = std::max<int64_t>(1, std::min(P.cols, kChunk));
  const bool sums = plan.row_mean || plan.reduction != kNone;  // else the loss is elementwise
  std::vector<double> partial(sums ? units : 0);
  const auto chunk = pick_bce_chunk(P);
  at::parallel_for(0, units, std::max<int64_t>(1, kGrainElems / unit_elems),
                   [&](int64_t u0, int64_t u1) {
                     for (int64_t u = u0; u < u1; ++u) {
                       const int64_t r = u / chunks, c0 = (u % chunks) * kChunk;
                       const double s = chunk(P, r, c0, std::min(c0 + kChunk, P.cols));
                       if (sums) partial[u] = s;
                     }
                   });
  if (!sums) return;
  if (plan.reduction == kNone) {  // soft margin: one value per row
    T* out = plan.loss.mutable_data_ptr<T>();
    for (int64_t r = 0; r < P.rows; ++r) {
      double s = 0;
      for (int64_t k = 0; k < chunks; ++k) s += partial[r * chunks + k];
      out[r] = static_cast<T>(s * P.scales.row);
    }
    return;
  }
  double total = 0;
  for (double s : partial) total += s;
  *plan.loss.mutable_data_ptr<T>() = static_cast<T>(total * P.scales.loss);
}

void bce_cpu(BcePlan& plan) {
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, plan.input.scalar_type(), "bce_cpu",
                                  [&] { bce_cpu_impl<scalar_t>(plan); });
}

using Ops = BceOps<&bce_cpu>;

}  // namespace
}  // namespace mlc::cpu

TORCH_LIBRARY_IMPL(multilabel_cuda, CPU, m) {
  m.impl("bce_with_logits", &mlc::cpu::Ops::bce_with_logits);
  m.impl("multilabel_soft_margin", &mlc::cpu::Ops::multilabel_soft_margin);
  m.impl("bce_family", &mlc::cpu::Ops::bce_family);
  m.impl("bce_chunk_", &mlc::cpu::Ops::bce_chunk_);
}
