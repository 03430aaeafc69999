// CPU glue between the shared math and ATen's Vectorized<T> (Sleef exp/log1p under AVX2): the Ops
// policy for csrc/math/*.h, and loads/stores of n <= lanes elements that widen half types to float.
#pragma once
#include <ATen/OpMathType.h>
#include <ATen/cpu/vec/functional.h>
#include <ATen/cpu/vec/vec.h>

#include <algorithm>
#include <type_traits>

namespace mlc::cpu {

using at::vec::Vectorized;
template <class T>
using opmath_t = at::opmath_type<T>;

template <class T>
struct VecOps {
  using V = Vectorized<T>;
  static V exp(V v) { return v.exp(); }
  static V log1p(V v) { return v.log1p(); }
  static V abs(V v) { return v.abs(); }
  static V max(V a, V b) { return at::vec::maximum(a, b); }
  static V where_nonneg(V x, V a, V b) { return V::blendv(b, a, x >= V(0)); }
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
