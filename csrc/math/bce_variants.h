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

// Which member runs, and the parameters of the modulated one; carried in BceParams. POD, ATen-free.
enum BceKind : int { kBcePlain = 0, kBceModulated = 1 };

struct BceVariant {
  int kind = kBcePlain;
  // Focusing exponents of positives / negatives: (1 - p_t)^(gamma_pos y + gamma_neg (1 - y)).
  double gamma_pos = 0.0, gamma_neg = 0.0;
  // Class weights alpha_t = alpha_pos y + alpha_neg (1 - y) (focal: alpha, 1 - alpha; else 1, 1).
  double alpha_pos = 1.0, alpha_neg = 1.0;
  double clip = 0.0;             // negatives' probability shift (ASL): min(1 - p + clip, 1)
  double eps = 0.0;              // 0: log-sigmoid form; > 0: ASL reference's log(max(prob, eps))
  double label_smoothing = 0.0;  // y -> y (1 - ls) + ls / 2
  bool detach_focal = false;     // the focusing weight is a constant in the gradient
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
// 0 * inf; b^gamma_t itself is pow (pow(b, 0) = 1, pow(0, gamma > 0) = 0).
struct BceModulated {
  static constexpr bool kPosWeight = false;
  double gamma_pos, gamma_neg, alpha_pos, alpha_neg, clip, eps, smooth;
  bool detach;

  ML_HD explicit BceModulated(const BceVariant& v)
      : gamma_pos(v.gamma_pos), gamma_neg(v.gamma_neg), alpha_pos(v.alpha_pos),
        alpha_neg(v.alpha_neg), clip(v.clip), eps(v.eps), smooth(v.label_smoothing),
        detach(v.detach_focal) {}

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
        lneg = Ops::log(u);
        dlneg = Ops::where_pos(p - clip_v, zero - pq / u, zero);
      }
    } else {  // the reference's clamped logs and their (masked) gradients
      const V eps_v(static_cast<S>(eps));
      lpos = Ops::log(Ops::clamp_min(p, eps_v));
      dlpos = Ops::where_nonneg(p - eps_v, q, zero);
      const V u = clip == 0.0 ? q : Ops::clamp_max(q + clip_v, one);
      const V du = clip == 0.0 ? zero - pq : Ops::where_nonneg(p - clip_v, zero - pq, zero);
      lneg = Ops::log(Ops::clamp_min(u, eps_v));
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
    const V fw = Ops::pow(b, gamma_t);
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

// The BCE family, one line per member: X(kind, element functor). The kernels instantiate each.
#define MLC_BCE_FAMILY(X)              \
  X(::mlc::kBcePlain, ::mlc::math::BcePlain) \
  X(::mlc::kBceModulated, ::mlc::math::BceModulated)
