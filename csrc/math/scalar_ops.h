// Ops for plain float/double, usable on host and device: the per-thread CUDA path and the scalar
// reference used by the tests.
#pragma once
#include <cmath>
#include "portable.h"

namespace mlc::math {

template <class T>
struct ScalarOps {
  using scalar_t = T;
  static ML_HD T exp_nonpos(T v) { using std::exp; return exp(v); }
  static ML_HD T log1p_unit(T v) { using std::log1p; return log1p(v); }
  static ML_HD T abs(T v) { using std::fabs; return fabs(v); }
  static ML_HD T clamp_min(T v, T lo) { return v < lo ? lo : v; }  // NaN stays NaN
  static ML_HD T where_nonneg(T x, T a, T b) { return x >= T(0) ? a : b; }
  static ML_HD T fma(T a, T b, T c) { return a * b + c; }  // nvcc contracts it
  // For the modulated BCE member (csrc/math/bce_variants.h): log on [0, 1], b^g for b in [0, 1].
  static ML_HD T log_unit(T v) { using std::log; return log(v); }
  static ML_HD T pow_unit(T b, T g) { using std::pow; return pow(b, g); }
  static ML_HD T clamp_max(T v, T hi) { return v > hi ? hi : v; }  // NaN stays NaN
  static ML_HD T where_pos(T x, T a, T b) { return x > T(0) ? a : b; }
};

}  // namespace mlc::math
