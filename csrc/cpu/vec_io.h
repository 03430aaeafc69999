// CPU glue between the shared math and ATen's Vectorized<T> (Sleef exp/log1p under AVX2): the Ops
// policy for csrc/math/*.h, and loads/stores of n <= lanes elements that widen half types to float.
#pragma once
#include <ATen/OpMathType.h>
#include <ATen/cpu/vec/functional.h>
#include <ATen/cpu/vec/vec.h>

#include "../math/portable.h"

#include <algorithm>
#include <type_traits>

namespace mlc::cpu {

using at::vec::Vectorized;
template <class T>
using opmath_t = at::opmath_type<T>;

// Ops policy for csrc/math/bce.h and the modulated BCE member (csrc/math/bce_variants.h): what
// every type computes the same way.
template <class T>
struct VecOpsCommon {
  using scalar_t = T;
  using V = Vectorized<T>;
  ML_FORCE_INLINE static V abs(V v) { return v.abs(); }
  ML_FORCE_INLINE static V clamp_min(V v, V lo) { return at::vec::clamp_min(v, lo); }  // max(lo, v): NaN stays
  ML_FORCE_INLINE static V where_nonneg(V x, V a, V b) { return V::blendv(b, a, x >= V(0)); }
  ML_FORCE_INLINE static V fma(V a, V b, V c) { return at::vec::fmadd(a, b, c); }
  ML_FORCE_INLINE static V clamp_max(V v, V hi) { return at::vec::clamp_max(v, hi); }  // NaN stays
  ML_FORCE_INLINE static V where_pos(V x, V a, V b) { return V::blendv(b, a, x > V(0)); }
};

// exp on x <= 0, log1p on [0, 1], log on [0, 1], b^g for b in [0, 1] and g >= 0. double uses Sleef
// (u10) as is; float gets polynomials for these narrow domains, about twice as fast as the general
// Sleef functions at <= 2 ulp.
template <class T>
struct VecOps : VecOpsCommon<T> {
  using V = Vectorized<T>;
  ML_FORCE_INLINE static V exp_nonpos(V v) { return v.exp(); }
  ML_FORCE_INLINE static V log1p_unit(V v) { return v.log1p(); }
  ML_FORCE_INLINE static V log_unit(V v) { return v.log(); }
  ML_FORCE_INLINE static V pow_unit(V b, V g) { return b.pow(g); }
};

template <>
struct VecOps<float> : VecOpsCommon<float> {
  // exp(x) for x <= 0 (NaN propagates): Cody-Waite reduction x = n ln2 + r, |r| <= ln2/2, and the
  // classic degree-6 minimax polynomial (Cephes expf). n <= 0, so 2^(n + 64) is a normal float and
  // the final exact-or-once-rounded * 2^-64 keeps results in the subnormal range instead of flushing.
  ML_FORCE_INLINE static V exp_nonpos(V x) {
    x = at::vec::clamp_min(x, V(-104.0f));  // exp(-104) < smallest subnormal; keeps n in range
    const V n = (x * V(1.44269504088896341f)).round();
    const V r = at::vec::fnmadd(n, V(-2.12194440e-4f), at::vec::fnmadd(n, V(0.693359375f), x));
    V p = V(1.9875691500e-4f);
    p = at::vec::fmadd(p, r, V(1.3981999507e-3f));
    p = at::vec::fmadd(p, r, V(8.3334519073e-3f));
    p = at::vec::fmadd(p, r, V(4.1665795894e-2f));
    p = at::vec::fmadd(p, r, V(1.6666665459e-1f));
    p = at::vec::fmadd(p, r, V(5.0000001201e-1f));
    p = at::vec::fmadd(p * r, r, r + V(1.0f));
#if defined(CPU_CAPABILITY_AVX512)
    return _mm512_scalef_ps(p, n);  // p * 2^n in one instruction, subnormal results rounded once
#else
    return p * pow2(n + V(64.0f)) * V(5.42101086242752217e-20f);  // 2^-64
#endif
  }

  // log(x) for x in [0, 1] (NaN propagates; 0 and subnormals read as the smallest normal, -87.3):
  // x = m 2^k with m in [sqrt(1/2), sqrt(2)) split from the bits (as musl's logf), log x =
  // k ln2 + log(m), log(m) = log(1 + f) the Cephes logf polynomial (about 1 ulp). Sleef's logf
  // costs several times more.
  ML_FORCE_INLINE static V log_unit(V x) {
    using VI = Vectorized<int32_t>;
    const VI ix = at::vec::cast<int32_t>(at::vec::clamp_min(x, V(1.17549435e-38f))) - VI(0x3f3504f3);
    const V k = at::vec::convert_to_fp_of_same_size<float>(ix >> VI(23));
    const V f = at::vec::cast<float>((ix & VI(0x007fffff)) + VI(0x3f3504f3)) - V(1.0f);
    const V z = f * f;
    V p = V(7.0376836292e-2f);
    p = at::vec::fmadd(p, f, V(-1.1514610310e-1f));
    p = at::vec::fmadd(p, f, V(1.1676998740e-1f));
    p = at::vec::fmadd(p, f, V(-1.2420140846e-1f));
    p = at::vec::fmadd(p, f, V(1.4249322787e-1f));
    p = at::vec::fmadd(p, f, V(-1.6668057665e-1f));
    p = at::vec::fmadd(p, f, V(2.0000714765e-1f));
    p = at::vec::fmadd(p, f, V(-2.4999993993e-1f));
    p = at::vec::fmadd(p, f, V(3.3333331174e-1f));
    V y = at::vec::fmadd(k, V(-2.12194440e-4f), p * f * z);
    y = at::vec::fmadd(z, V(-0.5f), y);
    return at::vec::fmadd(k, V(0.693359375f), f + y) + (x - x);  // x - x: NaN for NaN
  }

  // b^g for b in [0, 1], g >= 0: exp(g log b) from the two narrow-domain functions (Sleef's powf
  // costs about 25 times a multiply here); 0^g is 0, and 1 for g = 0, as pow; NaN stays NaN.
  // Relative error about 2 (1 + g |log b|) ulp, i.e. large only where b^g is small.
  ML_FORCE_INLINE static V pow_unit(V b, V g) {
    return where_pos(b, exp_nonpos(g * log_unit(b)), where_pos(g, V(0.0f), V(1.0f))) + (b - b);
  }

  // log1p(e) for e in [0, 1]: e * P(e), P the degree-8 minimax fit of log1p(e)/e on [0, 1] in
  // relative error (3.0e-8 before rounding; measured <= 2 ulp in float). Division-free, unlike a
  // 2 atanh(e / (2 + e)) series (docs/performance.md).
  ML_FORCE_INLINE static V log1p_unit(V e) {
    V p = V(5.2326941098e-03f);
    p = at::vec::fmadd(p, e, V(-2.9505237276e-02f));
    p = at::vec::fmadd(p, e, V(7.8225947817e-02f));
    p = at::vec::fmadd(p, e, V(-1.3663245296e-01f));
    p = at::vec::fmadd(p, e, V(1.9106006444e-01f));
    p = at::vec::fmadd(p, e, V(-2.4842982110e-01f));
    p = at::vec::fmadd(p, e, V(3.3319096792e-01f));
    p = at::vec::fmadd(p, e, V(-4.9999493140e-01f));
    p = at::vec::fmadd(p, e, V(9.9999996988e-01f));
    return p * e;
  }

 private:
  ML_FORCE_INLINE static V pow2(V n) {  // 2^n for integral n in [-126, 127], written straight into the exponent bits
    const auto biased = at::vec::convert_to_int_of_same_size(n + V(127.0f));
    return at::vec::cast<float>(biased << Vectorized<int32_t>(23));
  }
};

// Per-lane double sums of Vectorized<A> values (a float vector widens into two double vectors), so
// long float reductions keep double accuracy at a few vector ops per add instead of one scalar
// convert + add per lane. total() adds the lanes in lane order.
template <class A>
struct DoubleLanes {
  using VD = Vectorized<double>;
  static constexpr int kParts = Vectorized<A>::size() / VD::size();  // 1 (double) or 2 (float)
  VD part[kParts];

  DoubleLanes() {
    for (VD& p : part) p = VD(0.0);  // Vectorized's default constructor leaves lanes undefined
  }

  ML_FORCE_INLINE void add(const Vectorized<A>& v) {
    if constexpr (kParts == 1) {
      part[0] += v;
    } else {
#if defined(CPU_CAPABILITY_AVX512)
      const __m512 f = v;
      part[0] += VD(_mm512_cvtps_pd(_mm512_castps512_ps256(f)));
      part[1] += VD(_mm512_cvtps_pd(_mm512_extractf32x8_ps(f, 1)));
#elif defined(CPU_CAPABILITY_AVX2)
      const __m256 f = v;
      part[0] += VD(_mm256_cvtps_pd(_mm256_castps256_ps128(f)));
      part[1] += VD(_mm256_cvtps_pd(_mm256_extractf128_ps(f, 1)));
#else
      A tmp[Vectorized<A>::size()];
      v.store(tmp);
      for (int k = 0; k < kParts; ++k) {
        double d[VD::size()];
        for (int64_t i = 0; i < VD::size(); ++i) d[i] = tmp[k * VD::size() + i];
        part[k] += VD::loadu(d);
      }
#endif
    }
  }

  double total() const {
    double lanes[kParts * VD::size()];
    for (int k = 0; k < kParts; ++k) part[k].store(lanes + k * VD::size());
    double s = 0;
    for (double l : lanes) s += l;
    return s;
  }
};

// Loads n (<= lanes) elements of T into a Vectorized<opmath_t<T>>; lanes past n are unspecified.
template <class T>
inline Vectorized<opmath_t<T>> load(const T* p, int64_t n) {
  using V = Vectorized<opmath_t<T>>;
  if constexpr (std::is_same_v<T, opmath_t<T>>) {
    return n >= V::size() ? V::loadu(p) : V::loadu(p, n);
  } else {
    V out;
    if (n >= V::size()) {
      at::vec::load_to_float(p, out);
    } else {
      T tmp[V::size()] = {};
      std::copy(p, p + n, tmp);
      at::vec::load_to_float(tmp, out);
    }
    return out;
  }
}

template <class T>
inline void store(T* p, Vectorized<opmath_t<T>> v, int64_t n) {
  using V = Vectorized<opmath_t<T>>;
  const int count = static_cast<int>(std::min<int64_t>(n, V::size()));
  if constexpr (std::is_same_v<T, opmath_t<T>>) {
    v.store(p, count);
  } else {
    at::vec::convert_from_float<T>(v, v).store(p, count);
  }
}

}  // namespace mlc::cpu
