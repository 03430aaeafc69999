// Kernel of op bce_backward (its schema and meaning: csrc/ops.cpp), in ATen ops. Registered as
// CompositeImplicitAutograd, so autograd differentiates through it (double backward).
#include <ATen/ATen.h>
#include <torch/library.h>

#include "reduction.h"

namespace mlc {
namespace {

// The loss's gradient factor for this input (the plan's rule; sizes specialize under tracing, as
// any reduction by a shape does).
double grad_scale(const at::Tensor& input, int64_t reduction, bool row_mean) {
  int64_t rows = 1, cols = 1;
  if (input.dim() > 0) {
    cols = input.sym_size(-1).guard_int(__FILE__, __LINE__);
    for (int64_t d = 0; d + 1 < input.dim(); ++d) {
      rows *= input.sym_size(d).guard_int(__FILE__, __LINE__);
    }
  }
  return loss_scales(reduction, rows, cols, row_mean).grad;
}

// The op's two gradients, from
//   loss = w [(1 - y) x + (1 + (p - 1) y) softplus(-x)]
//   d/dx = w [(1 + (p - 1) y) sigmoid(x) - p y],   d/dy = w [-x - (p - 1) log sigmoid(x)]
std::tuple<at::Tensor, at::Tensor> bce_backward_impl(
    const at::Tensor& upstream, const at::Tensor& input, const at::Tensor& target,
    const std::optional<at::Tensor>& weight, const std::optional<at::Tensor>& pos_weight,
    int64_t reduction, bool row_mean, bool input_grad, bool target_grad) {
  const double scale = grad_scale(input, reduction, row_mean);
  const bool has_pw = pos_weight.has_value() && pos_weight->defined();
  const bool has_w = weight.has_value() && weight->defined();
  auto finish = [&](at::Tensor g) {
    if (has_w) g = g * *weight;
    return g * scale * upstream;
  };
  at::Tensor grad_input, grad_target;
  if (input_grad) {
    const at::Tensor sig = at::sigmoid(input);
    grad_input = has_pw ? finish(((*pos_weight - 1) * target + 1) * sig - *pos_weight * target)
                        : finish(sig - target);
  }
  if (target_grad) {
    at::Tensor g = has_pw ? -input - (*pos_weight - 1) * at::log_sigmoid(input) : -input;
    grad_target = finish(g.expand(input.sizes())).sum_to_size(target.sizes());
  }
  return {grad_input, grad_target};
}

// Half types are computed in float32 and rounded once, as in the kernels.
std::tuple<at::Tensor, at::Tensor> bce_backward(const at::Tensor& upstream, const at::Tensor& input,
                                                const at::Tensor& target,
                                                const std::optional<at::Tensor>& weight,
                                                const std::optional<at::Tensor>& pos_weight,
                                                int64_t reduction, bool row_mean, bool input_grad,
                                                bool target_grad) {
  if (!at::isReducedFloatingType(input.scalar_type())) {
    return bce_backward_impl(upstream, input, target, weight, pos_weight, reduction, row_mean,
                             input_grad, target_grad);
  }
  auto wide = [](const at::Tensor& t) { return t.to(at::kFloat); };
  auto wide_opt = [&](const std::optional<at::Tensor>& t) -> std::optional<at::Tensor> {
    return t.has_value() && t->defined() ? std::optional<at::Tensor>(wide(*t)) : std::nullopt;
  };
  auto [gi, gt] = bce_backward_impl(wide(upstream), wide(input), wide(target), wide_opt(weight),
                                    wide_opt(pos_weight), reduction, row_mean, input_grad,
                                    target_grad);
  return {gi.defined() ? gi.to(input.scalar_type()) : gi,
          gt.defined() ? gt.to(target.scalar_type()) : gt};
}

}  // namespace
}  // namespace mlc

TORCH_LIBRARY_IMPL(multilabel_cuda, CompositeImplicitAutograd, m) {
  m.impl("bce_backward", &mlc::bce_backward);
}
