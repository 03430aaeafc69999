// The public schemas of the BCE family's members (csrc/math/bce_variants.h): each checks its
// parameters and packs them, in its member's order, into the one op that runs them all,
// bce_family (kernels, autograd and fake kernel written once). CompositeImplicitAutograd, so
// autograd and tracing see bce_family.
#include <ATen/ATen.h>
#include <ATen/core/dispatch/Dispatcher.h>
#include <torch/library.h>

#include <cmath>

#include "math/bce_variants.h"

namespace mlc {
namespace {

using OpPair = std::tuple<at::Tensor, at::Tensor>;

OpPair bce_family(const at::Tensor& input, const at::Tensor& target,
                  const std::optional<at::Tensor>& weight, int64_t kind,
                  at::ArrayRef<double> params, int64_t reduction, bool compute_grad) {
  static auto op = c10::Dispatcher::singleton()
                       .findSchemaOrThrow("multilabel_cuda::bce_family", "")
                       .typed<OpPair(const at::Tensor&, const at::Tensor&,
                                     const std::optional<at::Tensor>&, int64_t,
                                     at::ArrayRef<double>, int64_t, bool)>();
  return op.call(input, target, weight, kind, params, reduction, compute_grad);
}

// Focal (torchvision's sigmoid_focal_loss) and asymmetric (ASL) BCE: math::BceModulated.
OpPair modulated_bce(const at::Tensor& input, const at::Tensor& target,
                     const std::optional<at::Tensor>& weight, double gamma_pos, double gamma_neg,
                     double alpha_pos, double alpha_neg, double clip, double eps,
                     double label_smoothing, bool detach_focal, int64_t reduction,
                     bool compute_grad) {
  constexpr const char* op = "modulated_bce";
  TORCH_CHECK(gamma_pos >= 0 && std::isfinite(gamma_pos), op,
              ": gamma_pos must be finite and >= 0, got ", gamma_pos);
  TORCH_CHECK(gamma_neg >= 0 && std::isfinite(gamma_neg), op,
              ": gamma_neg must be finite and >= 0, got ", gamma_neg);
  TORCH_CHECK(std::isfinite(alpha_pos) && std::isfinite(alpha_neg), op,
              ": alpha_pos and alpha_neg must be finite, got ", alpha_pos, " and ", alpha_neg);
  TORCH_CHECK(clip >= 0 && clip < 1, op, ": clip must be in [0, 1), got ", clip);
  TORCH_CHECK(eps >= 0 && eps < 1, op, ": eps must be in [0, 1) (0: log-sigmoid form), got ", eps);
  TORCH_CHECK(label_smoothing >= 0 && label_smoothing < 1, op,
              ": label_smoothing must be in [0, 1), got ", label_smoothing);
  using M = math::BceModulated;
  double p[kBceParams] = {};
  p[M::kGammaPos] = gamma_pos;
  p[M::kGammaNeg] = gamma_neg;
  p[M::kAlphaPos] = alpha_pos;
  p[M::kAlphaNeg] = alpha_neg;
  p[M::kClip] = clip;
  p[M::kEps] = eps;
  p[M::kSmoothing] = label_smoothing;
  p[M::kDetach] = detach_focal ? 1.0 : 0.0;
  return bce_family(input, target, weight, kBceModulated, p, reduction, compute_grad);
}

}  // namespace
}  // namespace mlc

TORCH_LIBRARY_FRAGMENT(multilabel_cuda, m) {
  // eps 0: the log-sigmoid form; > 0: the ASL reference's clamped logs. Python's
  // sigmoid_focal_loss / asymmetric_loss map their parameters onto it.
  m.def("modulated_bce(Tensor input, Tensor target, Tensor? weight, float gamma_pos, "
        "float gamma_neg, float alpha_pos, float alpha_neg, float clip, float eps, "
        "float label_smoothing, bool detach_focal, int reduction, bool compute_grad) "
        "-> (Tensor, Tensor)");
}

TORCH_LIBRARY_IMPL(multilabel_cuda, CompositeImplicitAutograd, m) {
  m.impl("modulated_bce", &mlc::modulated_bce);
}
