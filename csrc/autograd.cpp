// Autograd for the fused ops, in C++ (as torchvision's csrc/ops/autograd): a Python
// autograd.Function's overhead is a large part of a whole fused pass (docs/performance.md).
// Forward runs the op below autograd and keeps its gradient; backward only scales it. What needs
// differentiable formulas (double backward, target gradients) goes through
// multilabel_cuda::bce_backward (csrc/bce_backward.cpp, ATen ops), so those formulas exist once.
//
// Memory: the kept gradient is the op's one N x C buffer, and backward gives that very buffer away
// (scaled in place unless the upstream gradient is exactly 1) instead of allocating its product with
// the upstream gradient; dropping our reference lets AccumulateGrad adopt it as x.grad without a
// copy. A retained graph's next backward then recomputes it from the saved input and target
// (references, as native saves them): gradcheck and retain_graph=True stay correct.
#include <ATen/ATen.h>
#include <ATen/core/dispatch/Dispatcher.h>
#include <c10/core/impl/TorchDispatchModeTLS.h>
#include <torch/autograd.h>
#include <torch/library.h>

#include <functional>

#include "math/portable.h"

// Named namespace: the autograd nodes' names, as grad_fn.name() prints them.
namespace multilabel_cuda {
namespace {

using mlc::kNone;
using torch::autograd::AutogradContext;
using torch::autograd::variable_list;
using OpPair = std::tuple<at::Tensor, at::Tensor>;

// A dense CPU/CUDA tensor seen by no tracer, functionalization, vmap or dispatch mode: the case where
// backward may hand out (and scale in place) a buffer, or read a value with .item().
bool plain_tensor(const at::Tensor& t) {
  // Every such tensor carries its autograd and autocast keys; anything else (Python, Functionalize,
  // vmap, conj/neg views, sparse) leaves a higher-priority key than the backend's.
  constexpr auto kAlwaysThere =
      c10::autograd_dispatch_keyset_with_ADInplaceOrView | c10::autocast_dispatch_keyset;
  const auto key = (t.key_set() - kAlwaysThere).highestPriorityTypeId();
  return (key == c10::DispatchKey::CPU || key == c10::DispatchKey::CUDA) &&
         !c10::impl::TorchDispatchModeTLS::any_modes_set();
}

// The upstream gradient, broadcastable to the input (per-row losses gain the class dim).
at::Tensor per_element(const at::Tensor& grad_loss, bool per_row_loss) {
  return per_row_loss ? grad_loss.unsqueeze(-1) : grad_loss;
}

// Keeps the op's gradient for backward; returns the node's outputs (loss, grad).
variable_list keep_grad(AutogradContext* ctx, const at::Tensor& loss, const at::Tensor& grad,
                        bool compute_grad) {
  ctx->saved_data["compute_grad"] = compute_grad;
  ctx->saved_data["grad"] = grad;
  ctx->saved_data["grad_version"] = static_cast<int64_t>(grad._version());
  ctx->mark_non_differentiable({grad});
  // The grad output is never used downstream; materializing its (zero) gradient would cost a
  // whole extra N x C buffer in backward.
  ctx->set_materialize_grads(false);
  return {loss, grad};
}

template <class Fn>
auto find_op(const char* name) {
  return c10::Dispatcher::singleton().findSchemaOrThrow(name, "").typed<Fn>();
}

using ScaleOp = void(at::Tensor&, const at::Tensor&);

// d(loss)/d(input) * upstream for a backward that builds no graph. `recompute` reruns the op for
// its gradient (upstream 1) when an earlier backward of a retained graph has given the kept one away.
at::Tensor scaled_grad(AutogradContext* ctx, const at::Tensor& upstream,
                       const std::function<at::Tensor()>& recompute) {
  TORCH_CHECK(ctx->saved_data["compute_grad"].toBool(),
              "multilabel_cuda: the op ran with compute_grad=False, so it has no input gradient "
              "to give");
  auto kept = ctx->saved_data.find("grad");
  at::Tensor grad;
  if (kept != ctx->saved_data.end()) {
    grad = kept->second.toTensor();
    TORCH_CHECK(grad._version() == ctx->saved_data["grad_version"].toInt(),
                "multilabel_cuda: the gradient output of the op was modified in place, so its "
                "backward cannot use it");
  } else {
    grad = recompute();
  }
  // Traced (fake/functional tensors): stay functional and keep the buffer.
  if (!plain_tensor(grad) || !plain_tensor(upstream) || upstream.requires_grad()) {
    return grad * upstream;
  }
  if (kept != ctx->saved_data.end()) ctx->saved_data.erase(kept);  // the buffer is ours to give
  if (upstream.dim() <= grad.dim() && upstream.dtype() == grad.dtype() &&
      at::infer_size(grad.sizes(), upstream.sizes()) == grad.sizes()) {
    // In place; loss.backward()'s upstream of exactly 1 costs no N x C pass (ops.cpp).
    static auto scale = find_op<ScaleOp>("multilabel_cuda::_scale_grad_");
    at::AutoDispatchBelowADInplaceOrView below_autograd;  // plain tensors that need no grad
    scale.call(grad, upstream);
    return grad;
  }
  return grad * upstream;
}

using BceOp = OpPair(const at::Tensor&, const at::Tensor&, const std::optional<at::Tensor>&,
                     const std::optional<at::Tensor>&, int64_t, bool);
using SoftMarginOp = OpPair(const at::Tensor&, const at::Tensor&,
                            const std::optional<at::Tensor>&, int64_t, bool);
using MarginOp = OpPair(const at::Tensor&, const at::Tensor&, int64_t, bool, int64_t);
using BceBackwardOp = OpPair(const at::Tensor&, const at::Tensor&, const at::Tensor&,
                              const std::optional<at::Tensor>&, const std::optional<at::Tensor>&,
                              int64_t, bool, bool, bool);

std::optional<at::Tensor> opt(const at::Tensor& t) {
  return t.defined() ? std::optional<at::Tensor>(t) : std::nullopt;
}

// bce_with_logits and multilabel_soft_margin (kRowMean): the same context and backward. Self names
// the node (grad_fn.name() shows it).
template <class Self, bool kRowMean>
struct BceFunction : torch::autograd::Function<Self> {
  // The op below autograd: soft margin has no pos_weight argument.
  static OpPair call_op(const at::Tensor& input, const at::Tensor& target,
                        const std::optional<at::Tensor>& weight,
                        const std::optional<at::Tensor>& pos_weight, int64_t reduction,
                        bool compute_grad) {
    at::AutoDispatchBelowADInplaceOrView guard;
    if constexpr (kRowMean) {
      static auto op = find_op<SoftMarginOp>("multilabel_cuda::multilabel_soft_margin");
      return op.call(input, target, weight, reduction, compute_grad);
    } else {
      static auto op = find_op<BceOp>("multilabel_cuda::bce_with_logits");
      return op.call(input, target, weight, pos_weight, reduction, compute_grad);
    }
  }

  static variable_list forward(AutogradContext* ctx, const at::Tensor& input,
                               const at::Tensor& target, const std::optional<at::Tensor>& weight,
                               const std::optional<at::Tensor>& pos_weight, int64_t reduction,
                               bool compute_grad) {
    auto [loss, grad] = call_op(input, target, weight, pos_weight, reduction, compute_grad);
    ctx->saved_data["reduction"] = reduction;
    ctx->saved_data["has_weight"] = weight.has_value() && weight->defined();
    ctx->saved_data["has_pos_weight"] = pos_weight.has_value() && pos_weight->defined();
    ctx->save_for_backward({input, target, weight.value_or(at::Tensor()),
                            pos_weight.value_or(at::Tensor())});
    return keep_grad(ctx, loss, grad, compute_grad);
  }

  static variable_list backward(AutogradContext* ctx, variable_list grad_outputs) {
    variable_list out(6);  // one slot per forward argument
    const at::Tensor& grad_loss = grad_outputs[0];
    if (!grad_loss.defined()) return out;
    // Edges exist for the tensor arguments present: input 0, target 1, then weight/pos_weight.
    const int n_weights = ctx->saved_data["has_weight"].toBool() +
                          ctx->saved_data["has_pos_weight"].toBool();
    for (int k = 0; k < n_weights; ++k) {
      TORCH_CHECK(!ctx->needs_input_grad(2 + k),
                  "multilabel_cuda: gradients w.r.t. weight/pos_weight are not computed by the "
                  "fused op; multilabel_cuda.functional routes such calls to the reference "
                  "implementation");
    }
    const bool want_input = ctx->needs_input_grad(0), want_target = ctx->needs_input_grad(1);
    const bool create_graph = at::GradMode::is_enabled();
    const int64_t reduction = ctx->saved_data["reduction"].toInt();
    const auto saved = ctx->get_saved_variables();  // input, target, weight, pos_weight
    const at::Tensor upstream = per_element(grad_loss, kRowMean && reduction == kNone);
    if (want_input && !create_graph) {
      out[0] = scaled_grad(ctx, upstream, [&] {
        return std::get<1>(call_op(saved[0], saved[1], opt(saved[2]), opt(saved[3]), reduction,
                                   true));
      });
    }
    if ((want_input && create_graph) || want_target) {
      static auto bce_backward = find_op<BceBackwardOp>("multilabel_cuda::bce_backward");
      auto [gi, gt] = bce_backward.call(upstream, saved[0], saved[1], opt(saved[2]), opt(saved[3]),
                               reduction, kRowMean, want_input && create_graph, want_target);
      if (want_input && create_graph) out[0] = gi;
      if (want_target) out[1] = gt;
    }
    return out;
  }
};

}  // namespace

struct BceWithLogitsBackward final : BceFunction<BceWithLogitsBackward, false> {};
struct MultilabelSoftMarginBackward final : BceFunction<MultilabelSoftMarginBackward, true> {};

// bce_family, any member of the BCE family but plain BCE's own op (focal, asymmetric, ...): forward
// keeps the fused gradient, backward scales it. Its differentiable backward (double backward,
// target or weight gradients) is not written in C++: multilabel_cuda.functional routes calls that
// need it to the reference formulas.
struct BceFamilyBackward final : torch::autograd::Function<BceFamilyBackward> {
  using Op = OpPair(const at::Tensor&, const at::Tensor&, const std::optional<at::Tensor>&,
                    int64_t, at::ArrayRef<double>, int64_t, bool);

  static OpPair call_op(const at::Tensor& input, const at::Tensor& target,
                        const std::optional<at::Tensor>& weight, int64_t kind,
                        at::ArrayRef<double> params, int64_t reduction, bool compute_grad) {
    at::AutoDispatchBelowADInplaceOrView guard;
    static auto op = find_op<Op>("multilabel_cuda::bce_family");
    return op.call(input, target, weight, kind, params, reduction, compute_grad);
  }

  static variable_list forward(AutogradContext* ctx, const at::Tensor& input,
                               const at::Tensor& target, const std::optional<at::Tensor>& weight,
                               int64_t kind, at::ArrayRef<double> params, int64_t reduction,
                               bool compute_grad) {
    auto [loss, grad] = call_op(input, target, weight, kind, params, reduction, compute_grad);
    ctx->saved_data["kind"] = kind;
    ctx->saved_data["params"] = params.vec();
    ctx->saved_data["reduction"] = reduction;
    ctx->saved_data["has_weight"] = weight.has_value() && weight->defined();
    ctx->save_for_backward({input, target, weight.value_or(at::Tensor())});
    return keep_grad(ctx, loss, grad, compute_grad);
  }

  static variable_list backward(AutogradContext* ctx, variable_list grad_outputs) {
    variable_list out(7);  // one slot per forward argument
    const at::Tensor& grad_loss = grad_outputs[0];
    if (!grad_loss.defined()) return out;
    TORCH_CHECK(!ctx->needs_input_grad(1) &&
                    !(ctx->saved_data["has_weight"].toBool() && ctx->needs_input_grad(2)),
                "multilabel_cuda: the fused BCE-family op computes no gradient w.r.t. target or "
                "weight; multilabel_cuda.functional routes such calls to the reference "
                "implementation");
    if (!ctx->needs_input_grad(0)) return out;
    TORCH_CHECK(!at::GradMode::is_enabled(),
                "multilabel_cuda: the fused focal/asymmetric BCE op has no double backward "
                "(create_graph=True); use multilabel_cuda.set_backend(\"reference\") for it");
    const auto saved = ctx->get_saved_variables();  // input, target, weight
    out[0] = scaled_grad(ctx, grad_loss, [&] {
      const std::vector<double> params = ctx->saved_data["params"].toDoubleVector();
      return std::get<1>(call_op(saved[0], saved[1], opt(saved[2]),
                                 ctx->saved_data["kind"].toInt(), params,
                                 ctx->saved_data["reduction"].toInt(), true));
    });
    return out;
  }
};

struct MultilabelMarginBackward final : torch::autograd::Function<MultilabelMarginBackward> {
  static OpPair call_op(const at::Tensor& input, const at::Tensor& target, int64_t reduction,
                        bool compute_grad, int64_t algo) {
    at::AutoDispatchBelowADInplaceOrView guard;
    static auto op = find_op<MarginOp>("multilabel_cuda::multilabel_margin");
    return op.call(input, target, reduction, compute_grad, algo);
  }

  static variable_list forward(AutogradContext* ctx, const at::Tensor& input,
                               const at::Tensor& target, int64_t reduction, bool compute_grad,
                               int64_t algo) {
    auto [loss, grad] = call_op(input, target, reduction, compute_grad, algo);
    ctx->saved_data["reduction"] = reduction;
    ctx->saved_data["algo"] = algo;
    ctx->save_for_backward({input, target});
    return keep_grad(ctx, loss, grad, compute_grad);
  }

  static variable_list backward(AutogradContext* ctx, variable_list grad_outputs) {
    variable_list out(5);
    const at::Tensor& grad_loss = grad_outputs[0];
    if (!ctx->needs_input_grad(0) || !grad_loss.defined()) return out;
    const int64_t reduction = ctx->saved_data["reduction"].toInt();
    const auto saved = ctx->get_saved_variables();  // input, target
    // With create_graph, an upstream that requires grad makes scaled_grad multiply out of place:
    // the margin gradient is piecewise constant in the input (its derivative is 0 almost
    // everywhere), so the only dependence left is the linear one on the upstream gradient.
    out[0] = scaled_grad(ctx, per_element(grad_loss, reduction == kNone && saved[0].dim() == 2),
                         [&] {
                           return std::get<1>(call_op(saved[0], saved[1], reduction, true,
                                                      ctx->saved_data["algo"].toInt()));
                         });
    return out;
  }
};

namespace {

// The Autograd kernel of an op of signature Sig: Node's apply, its outputs as the op's pair.
template <class Node, class Sig>
struct AutogradKernel;
template <class Node, class... Args>
struct AutogradKernel<Node, OpPair(Args...)> {
  static OpPair call(Args... args) {
    const variable_list out = Node::apply(args...);
    return {out[0], out[1]};
  }
};

// Soft margin's node is BCE's, which has a pos_weight argument.
OpPair multilabel_soft_margin_autograd(const at::Tensor& input, const at::Tensor& target,
                                       const std::optional<at::Tensor>& weight, int64_t reduction,
                                       bool compute_grad) {
  return AutogradKernel<MultilabelSoftMarginBackward, BceOp>::call(input, target, weight,
                                                                   std::nullopt, reduction,
                                                                   compute_grad);
}

}  // namespace
}  // namespace multilabel_cuda

TORCH_LIBRARY_IMPL(multilabel_cuda, Autograd, m) {
  using namespace multilabel_cuda;
  m.impl("bce_with_logits", &AutogradKernel<BceWithLogitsBackward, BceOp>::call);
  m.impl("multilabel_soft_margin", &multilabel_soft_margin_autograd);
  m.impl("multilabel_margin", &AutogradKernel<MultilabelMarginBackward, MarginOp>::call);
  m.impl("bce_family", &AutogradKernel<BceFamilyBackward, BceFamilyBackward::Op>::call);
}
