// The single source of truth for the BCE-with-logits math (also the soft-margin loss, which is BCE
// with pos_weight = 1 averaged over classes). `Ops` supplies exp_nonpos (exp on x <= 0), log1p_unit
// (log1p on [0, 1]), abs, clamp_min (NaN stays NaN), where_nonneg and fma(a, b, c) = a * b + c for
// a value type V: a float/double per CUDA thread, or an ATen Vectorized<T> on the CPU, so one formula
// serves both. The narrow domains let the CPU use short polynomials instead of general exp/log1p.
#pragma once
#include "portable.h"

namespace mlc::math {

// Loss and d(loss)/dx of one element: weight w, positive-class weight p, logit x, (soft) target y.
//   loss = w * [(1 - y) x + (1 + (p - 1) y) softplus(-x)]
//   grad = w * [(1 + (p - 1) y) sigmoid(x) - p y]
// Both come from e = exp(-|x|) in (0, 1], so nothing overflows for any finite x (|x| = 1e30 is fine)
// and NaN/inf propagate as in the native composite. kWeight / kPosWeight = false mean the operand is
// absent (1): its multiplies drop out at compile time, as they do from the native formula.
template <class Ops, bool kWeight = true, bool kPosWeight = true, class V>
ML_HD void bce_elem(V x, V y, V w, V p, V& loss, V& grad) {
  const V one(1), zero(0);
  const V e = Ops::exp_nonpos(zero - Ops::abs(x));
  const V softplus_neg = Ops::log1p_unit(e) + Ops::clamp_min(zero - x, zero);
  const V sigmoid = Ops::where_nonneg(x, one, e) / (one + e);  // 1/(1+e) or e/(1+e): no overflow
  // Fused multiply-adds where a product is summed (the CPU's vector ops are not contracted by the
  // compiler). (1 - y) * x stays a product: x - y * x would turn x = inf, y = 0 into NaN.
  if constexpr (kPosWeight) {
    const V log_weight = Ops::fma(p - one, y, one);
    loss = Ops::fma(one - y, x, log_weight * softplus_neg);
    grad = Ops::fma(log_weight, sigmoid, zero - p * y);
  } else {
    loss = Ops::fma(one - y, x, softplus_neg);
    grad = sigmoid - y;
  }
  if constexpr (kWeight) {
    loss = w * loss;
    grad = w * grad;
  }
}

}  // namespace mlc::math
