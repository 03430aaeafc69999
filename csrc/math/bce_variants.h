// The members of the BCE family the fused BCE pass runs, as element functors over the same Ops
// policy as bce_elem (csrc/math/bce.h), and the one list the CPU and CUDA kernels instantiate them
// from. A member is a type with a constructor from BceVariant and
//   template <class Ops, bool kWeight, bool kPosWeight, class V>
//   void apply(V x, V y, V w, V p, V& loss, V& grad) const;   // one element: loss, d loss / dx
// plus `static constexpr bool kPosWeight` (whether it reads pos_weight at all).
#pragma once
#include "bce.h"
#include "portable.h"

namespace mlc {

// Which member runs and its parameters, carried in BceParams (POD, ATen-free). The parameters are
// numbers in an order each member defines (its constructor reads them); the member's schema
// (csrc/bce_variants.cpp) packs them in that order.
enum BceKind : int { kBcePlain = 0, kBceModulated = 1 };
constexpr int kBceParams = 8;

struct BceVariant {
  int kind = kBcePlain;
  double param[kBceParams] = {};
};

namespace math {

// Plain BCE with logits: bce_elem as it is (the instantiation compiles to the same loop).
struct BcePlain {
  static constexpr bool kPosWeight = true;
  ML_HD explicit BcePlain(const BceVariant&) {}
  template <class Ops, bool kWeight = true, bool kPosWeight = true, class V>
  ML_HD void apply(V x, V y, V w, V p, V& loss, V& grad) const {
    bce_elem<Ops, kWeight, kPosWeight>(x, y, w, p, loss, grad);
  }
};

// Modulated BCE: focal (Lin et al.; torchvision.ops.sigmoid_focal_loss) and asymmetric (Ridnik et
// al. 2021, AsymmetricLoss) with optional label smoothing, as one formula. With p = sigmoid(x),
// q = 1 - p = sigmoid(-x), y the smoothed target:
//   L+ = log p,  L- = log(min(q + clip, 1))            (eps > 0: logs of max(., eps) instead)
//   ce = -(y L+ + (1 - y) L-)
//   b  = 1 - p_t = y q + (1 - y) max(p - clip, 0),     gamma_t = gamma_pos y + gamma_neg (1 - y)
//   loss = w alpha_t ce b^gamma_t
//   grad = w alpha_t b^gamma_t (dce/dx + ce gamma_t (db/dx) / b)   (second term 0 if detach_focal)
// Focal is clip = 0, gamma_pos = gamma_neg = gamma (then ce is BCE and b = 1 - p_t). Everything
// comes from e = exp(-|x|): p, q and log p = -(log1p(e) + max(-x, 0)) stay exact in relative terms
// for any finite x, so |x| = 1e4 gives finite loss and gradient. (db/dx) / b is bounded (by 1, and
// by p q / (p - clip) for shifted negatives), and 0 where b = 0, so the focusing term never makes
// 0 * inf; b^gamma_t is Ops::pow_unit (b^0 = 1, 0^gamma = 0 for gamma > 0).
struct BceModulated {
  static constexpr bool kPosWeight = false;
  // Parameter order: gamma_pos, gamma_neg (focusing exponents), alpha_pos, alpha_neg (alpha_t's
  // weights; focal: alpha, 1 - alpha, else 1, 1), clip (negatives' shift, 0: none), eps (0: the
  // log-sigmoid form; > 0: the ASL reference's logs of max(prob, eps)), label_smoothing (y ->
  // y (1 - ls) + ls / 2), detach_focal (nonzero: the focusing weight is a constant in the gradient).
  enum Param { kGammaPos, kGammaNeg, kAlphaPos, kAlphaNeg, kClip, kEps, kSmoothing, kDetach };
  double gamma_pos, gamma_neg, alpha_pos, alpha_neg, clip, eps, smooth;
  bool detach;
  int int_gamma;  // gamma_pos == gamma_neg, a whole number <= 8 (focal's 2): b^gamma by multiplies; else -1

  ML_HD explicit BceModulated(const BceVariant& v)
      : gamma_pos(v.param[kGammaPos]), gamma_neg(v.param[kGammaNeg]),
        alpha_pos(v.param[kAlphaPos]), alpha_neg(v.param[kAlphaNeg]), clip(v.param[kClip]),
        eps(v.param[kEps]), smooth(v.param[kSmoothing]), detach(v.param[kDetach] != 0.0),
        int_gamma(gamma_pos == gamma_neg && gamma_pos <= 8 &&
                          gamma_pos == static_cast<double>(static_cast<int>(gamma_pos))
                      ? static_cast<int>(gamma_pos)
                      : -1) {}

  template <class Ops, bool kWeight = true, bool kPosWeight = false, class V>
  ML_HD void apply(V x, V y, V w, V /*pos_weight: none*/, V& loss, V& grad) const {
    using S = typename Ops::scalar_t;
    const V one(1), zero(0);
    const V clip_v(static_cast<S>(clip));
    y = Ops::fma(y, V(static_cast<S>(1.0 - smooth)), V(static_cast<S>(0.5 * smooth)));
    const V e = Ops::exp_nonpos(zero - Ops::abs(x));
    const V inv = one / (one + e);
    const V p = Ops::where_nonneg(x, one, e) * inv;  // sigmoid(x)
    const V q = Ops::where_nonneg(x, e, one) * inv;  // sigmoid(-x) = 1 - p, without cancellation
    const V pq = p * q;                               // dp/dx
    V lpos, dlpos, lneg, dlneg;
    if (eps == 0.0) {
      const V lp1 = Ops::log1p_unit(e);
      lpos = zero - (lp1 + Ops::clamp_min(zero - x, zero));
      dlpos = q;
      if (clip == 0.0) {
        lneg = zero - (lp1 + Ops::clamp_min(x, zero));
        dlneg = zero - p;
      } else {  // q + clip < 1 exactly when p > clip
        const V u = Ops::clamp_max(q + clip_v, one);
        lneg = Ops::log_unit(u);
        dlneg = Ops::where_pos(p - clip_v, zero - pq / u, zero);
      }
    } else {  // the reference's clamped logs and their (masked) gradients
      const V eps_v(static_cast<S>(eps));
      lpos = Ops::log_unit(Ops::clamp_min(p, eps_v));
      dlpos = Ops::where_nonneg(p - eps_v, q, zero);
      const V u = clip == 0.0 ? q : Ops::clamp_max(q + clip_v, one);
      const V du = clip == 0.0 ? zero - pq : Ops::where_nonneg(p - clip_v, zero - pq, zero);
      lneg = Ops::log_unit(Ops::clamp_min(u, eps_v));
      dlneg = Ops::where_nonneg(u - eps_v, du / Ops::clamp_min(u, eps_v), zero);
    }
    const V yn = one - y;
    const V ce = zero - Ops::fma(y, lpos, yn * lneg);
    const V dce = zero - Ops::fma(y, dlpos, yn * dlneg);
    // b = 1 - p_t and db/dx; the negatives' part is p - clip above the clip, else 0 (and constant).
    const V above = clip == 0.0 ? p : Ops::clamp_min(p - clip_v, zero);
    const V dabove = clip == 0.0 ? pq : Ops::where_pos(p - clip_v, pq, zero);
    const V b = Ops::fma(y, q, yn * above);
    const V db = Ops::fma(yn, dabove, zero - y * pq);
    const V gamma_t = Ops::fma(V(static_cast<S>(gamma_pos - gamma_neg)), y,
                               V(static_cast<S>(gamma_neg)));
    V fw = one;
    if (int_gamma >= 0) {
      for (int k = 0; k < int_gamma; ++k) fw = fw * b;
    } else {
      fw = Ops::pow_unit(b, gamma_t);
    }
    V scale = Ops::fma(V(static_cast<S>(alpha_pos - alpha_neg)), y, V(static_cast<S>(alpha_neg)));
    if constexpr (kWeight) scale = scale * w;
    scale = scale * fw;
    loss = scale * ce;
    if (detach) {
      grad = scale * dce;
    } else {
      const V ratio = Ops::where_pos(b, db / b, zero);  // (db/dx) / b, 0 where b = 0
      grad = scale * Ops::fma(ce * gamma_t, ratio, dce);
    }
  }
};

}  // namespace math
}  // namespace mlc

// The BCE family, one line per member: X(kind, element functor). The kernels instantiate each and
// dispatch on BceVariant::kind; the op bce_family (csrc/ops.cpp) runs any of them.
#define MLC_BCE_FAMILY(X)              \
  X(::mlc::kBcePlain, ::mlc::math::BcePlain) \
  X(::mlc::kBceModulated, ::mlc::math::BceModulated)
