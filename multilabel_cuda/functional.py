"""Drop-in replacements for the torch.nn.functional losses, same signatures and semantics.

Arguments are validated here, once, for every backend; then the fused op runs (or the reference
implementation, when the extension is unavailable or a case needs autograd it does not cover:
forward-mode AD, torch.func transforms, or gradients w.r.t. weight/pos_weight)."""
import math

import torch
from torch.autograd import forward_ad

from . import _backend, reference
from ._errors import LossArgumentError, check_floating, check_same_device, check_tensor, fail
from ._reduction import code as _reduction_code
from .sparse import SparseTargets


def _same_device(fn, name, t, input):
    if t.device != input.device and t.dim() == 0 and t.device.type == "cpu":
        return t.to(input.device)  # CPU scalars mix with any device, as in ATen
    check_same_device(fn, name, t, "input", input)
    return t


def _broadcast_operand(fn, name, t, input, dtype):
    """weight / pos_weight / soft-margin target: any tensor broadcastable to input's shape (None
    stays None)."""
    if t is None:
        return None
    check_tensor(fn, name, t)
    t = _same_device(fn, name, t, input)
    # (torch.broadcast_shapes costs ~20 us a call; this is the same test for one target shape.)
    ok = t.dim() <= input.dim() and all(a == 1 or a == b for a, b in
                                        zip(reversed(t.shape), reversed(input.shape)))
    if not ok:
        fail(fn, f"{name} of shape {tuple(t.shape)} is not broadcastable to input of shape "
                 f"{tuple(input.shape)}")
    return t.to(dtype)


def _result_dtype(input, target):
    """torch.result_type for two floating tensors, in a form torch.compile traces: a 0-dim target
    does not promote a dimensioned input (type promotion's category rule)."""
    if target.dim() == 0 and input.dim() > 0:
        return input.dtype
    return torch.promote_types(input.dtype, target.dtype)


def _promoted(fn, input, target, weight):
    """The elementwise losses' floating input and target (already of one shape), cast to their
    promoted dtype as native does (e.g. fp32 input + fp64 target); the weight broadcast to them."""
    check_floating(fn, "input", input)
    check_floating(fn, "target", target)
    target = _same_device(fn, "target", target, input)
    dtype = _result_dtype(input, target)
    input, target = input.to(dtype), target.to(dtype)
    return input, target, _broadcast_operand(fn, "weight", weight, input, dtype)


def _needs_reference(*tensors):
    if forward_ad._current_level >= 0:  # inside fwAD.dual_level(): the fused op has no jvp
        return True
    # torch.func.grad / vjp / vmap / jacrev: they cannot see through a C++ autograd.Function, and
    # vmap would loop over the op; the reference is plain torch ops, which every transform handles.
    if torch._C._are_functorch_transforms_active():
        return True
    return torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in tensors)


def _compute_grad(input):
    return torch.is_grad_enabled() and input.requires_grad


def binary_cross_entropy_with_logits(input, target, weight=None, size_average=None, reduce=None,
                                     reduction="mean", pos_weight=None):
    """See torch.nn.functional.binary_cross_entropy_with_logits. target may be a SparseTargets."""
    fn = "binary_cross_entropy_with_logits"
    red = _reduction_code(reduction, size_average, reduce)
    if isinstance(target, SparseTargets):
        return _sparse_loss.binary_cross_entropy_with_logits(input, target, weight, pos_weight, red)
    check_tensor(fn, "input", input)
    check_tensor(fn, "target", target)
    if target.size() != input.size():
        raise LossArgumentError(f"Target size ({target.size()}) must be the same as input size "
                                f"({input.size()})")
    input, target, weight = _promoted(fn, input, target, weight)
    pos_weight = _broadcast_operand(fn, "pos_weight", pos_weight, input, input.dtype)
    if not _backend.use_extension("bce_with_logits", input.device) or _needs_reference(weight, pos_weight):
        return reference.binary_cross_entropy_with_logits(input, target, weight, pos_weight, red)
    return torch.ops.multilabel_cuda.bce_with_logits(input, target, weight, pos_weight, red,
                                                     _compute_grad(input))[0]


def multilabel_soft_margin_loss(input, target, weight=None, size_average=None, reduce=None,
                                reduction="mean"):
    """See torch.nn.functional.multilabel_soft_margin_loss. target may be a SparseTargets."""
    fn = "multilabel_soft_margin_loss"
    red = _reduction_code(reduction, size_average, reduce)
    if isinstance(target, SparseTargets):
        return _sparse_loss.multilabel_soft_margin_loss(input, target, weight, red)
    check_tensor(fn, "input", input)
    check_tensor(fn, "target", target)
    check_floating(fn, "input", input)
    if input.dim() == 0:
        fail(fn, "input must have at least one dimension (the class dimension), got a scalar")
    if target.dtype == torch.bool or target.is_complex():
        fail(fn, f"target must be a real floating-point or integer tensor, got {target.dtype}")
    # Integer 0/1 targets work as in the native composite (target * logsigmoid(input)).
    dtype = _result_dtype(input, target) if target.is_floating_point() else input.dtype
    input = input.to(dtype)
    target = _broadcast_operand(fn, "target", target, input, dtype)
    weight = _broadcast_operand(fn, "weight", weight, input, dtype)
    if not _backend.use_extension("multilabel_soft_margin", input.device) or _needs_reference(weight):
        return reference.multilabel_soft_margin_loss(input, target, weight, red)
    return torch.ops.multilabel_cuda.multilabel_soft_margin(input, target, weight, red,
                                                            _compute_grad(input))[0]


def multilabel_margin_loss(input, target, size_average=None, reduce=None, reduction="mean"):
    """See torch.nn.functional.multilabel_margin_loss: input (C,) or (N, C) (or a 0-dim input, C = 1),
    target holds class indices, the positives of a row being those before its first -1;
    loss = sum_{j in targets} sum_{i not a target} max(0, 1 - x[y_j] + x[i]) / C per row.

    Beyond torch.nn:
      * compact target: (N, K) for an (N, C) input, (K,) for a (C,) input, any K <= C (K = 0: no
        positives, loss 0), still cut at the first -1 -- no need to pad the target to C columns;
      * any integer target dtype (cast to int64); out-of-range indices raise on every device;
      * an empty batch gives 'sum' = 0 and 'mean' = NaN (native returns uninitialized memory);
      * float16/bfloat16 are computed in float32; O(C log P) per row for many positives P;
      * target may be a SparseTargets (without values).
    """
    if isinstance(target, SparseTargets):
        target = _sparse_loss.margin_target(input, target)
    fn = "multilabel_margin_loss"
    red = _reduction_code(reduction, size_average, reduce)
    check_tensor(fn, "input", input)
    check_tensor(fn, "target", target)
    check_floating(fn, "input", input)
    if input.dim() > 2:
        fail(fn, f"input must be (C,) or (N, C) (or 0-dim), got {input.dim()} dimensions "
                 f"{tuple(input.shape)}")
    if input.dim() > 0 and input.size(-1) == 0:
        fail(fn, "Expected non-empty vector or matrix with optional 0-dim batch size, but got: "
                 f"{tuple(input.shape)}")
    if target.dtype == torch.bool or target.is_floating_point() or target.is_complex():
        fail(fn, f"target must be an integer tensor of class indices, got {target.dtype}")
    target = _same_device(fn, "target", target, input)
    cols = input.size(-1) if input.dim() > 0 else 1
    if input.dim() == 2:
        ok = target.dim() == 2 and target.size(0) == input.size(0) and target.size(1) <= cols
        expected = f"(N, K) with N = {input.size(0)} and K <= C = {cols}"
    else:
        ok = target.dim() <= 1 and target.numel() <= cols
        expected = f"(K,) with K <= C = {cols}"
    if not ok:
        fail(fn, f"target of shape {tuple(target.shape)} does not fit input of shape "
                 f"{tuple(input.shape)} (expected {expected})")
    target = target.to(torch.int64)
    if not _backend.use_extension("multilabel_margin", input.device) or _needs_reference():
        return reference.multilabel_margin_loss(input, target, red)
    return torch.ops.multilabel_cuda.multilabel_margin(input, target, red, _compute_grad(input))[0]


# ------------------------------------------------------------------ modulated BCE: focal, asymmetric
def _check_modulated(fn, input, target, weight, params):
    """Shared checks of the modulated BCE losses; returns (input, target, weight) dtype-aligned.
    params: {name: (value, high)}, each value a real number in [0, high)."""
    for name, (v, hi) in params.items():
        if isinstance(v, bool) or not isinstance(v, (int, float)):
            fail(fn, f"{name} must be a real number, got {type(v).__name__}")
        if not 0 <= v < hi:
            fail(fn, f"{name} must be in [0, {hi}), got {v}")
    check_tensor(fn, "input", input)
    check_tensor(fn, "target", target)
    if target.size() != input.size():
        fail(fn, f"target size ({tuple(target.shape)}) must be the same as input size "
                 f"({tuple(input.shape)})")
    return _promoted(fn, input, target, weight)


def _modulated(input, target, weight, red, gamma_pos, gamma_neg, alpha_pos, alpha_neg, clip, eps,
               label_smoothing, detach_focal):
    """The fused op, or the reference formulas when the op cannot serve the call (no extension, or
    gradients it does not compute: target, weight, forward AD, functorch)."""
    args = (gamma_pos, gamma_neg, alpha_pos, alpha_neg, clip, eps, label_smoothing, detach_focal)
    # Double backward (create_graph) is not known here: the fused op refuses it with an error that
    # names the reference backend (multilabel_cuda.set_backend("reference")).
    if not _backend.use_extension("bce_family", input.device) or _needs_reference(target, weight):
        return reference.modulated_bce(input, target, weight, red, *args)
    return torch.ops.multilabel_cuda.modulated_bce(input, target, weight, *args, red,
                                                   _compute_grad(input))[0]


def sigmoid_focal_loss(inputs, targets, alpha=0.25, gamma=2, reduction="none",
                       label_smoothing=0.0, weight=None):
    """torchvision.ops.sigmoid_focal_loss, fused: loss = BCE(x, y) * (1 - p_t)^gamma, times
    alpha_t = alpha * y + (1 - alpha) * (1 - y) when alpha >= 0 (alpha < 0: no class weighting),
    p_t = p * y + (1 - p) * (1 - y), p = sigmoid(x); reduction 'none' by default, as torchvision.

    Beyond torchvision: label_smoothing (targets become y * (1 - ls) + ls / 2 everywhere, alpha_t and
    p_t included), an elementwise ``weight`` broadcastable to the input, and one pass that is
    finite for any finite logit (torchvision's (1 - p_t)^gamma gradient is NaN at saturated logits
    when gamma < 1). Gradients w.r.t. targets go through the reference; double backward needs the
    reference backend."""
    fn = "sigmoid_focal_loss"
    red = _reduction_code(reduction)
    if isinstance(alpha, bool) or not isinstance(alpha, (int, float)):
        fail(fn, f"alpha must be a real number, got {type(alpha).__name__}")
    if alpha > 1 or alpha != alpha:
        fail(fn, f"alpha must be in [0, 1], or negative for no class weighting, got {alpha}")
    inputs, targets, weight = _check_modulated(
        fn, inputs, targets, weight,
        {"gamma": (gamma, math.inf), "label_smoothing": (label_smoothing, 1)})
    a_pos, a_neg = (float(alpha), 1.0 - alpha) if alpha >= 0 else (1.0, 1.0)
    return _modulated(inputs, targets, weight, red, float(gamma), float(gamma), a_pos, a_neg, 0.0,
                      0.0, float(label_smoothing), False)


def asymmetric_loss(input, target, gamma_neg=4, gamma_pos=1, clip=0.05, eps=1e-8,
                    disable_torch_grad_focal_loss=False, reduction="sum", label_smoothing=0.0,
                    stable=True, weight=None):
    """The asymmetric loss (ASL, Ridnik et al. 2021), fused, with the reference AsymmetricLoss's
    parameters and defaults. Per element, p = sigmoid(x), y the (smoothed) target:
        p_neg = min(1 - p + clip, 1)                     (clip = 0: 1 - p)
        loss  = -(y log p + (1 - y) log p_neg) * (1 - p_t)^(gamma_pos y + gamma_neg (1 - y))
    with p_t = p y + p_neg (1 - y). The reference returns the negated sum, i.e. reduction='sum' of
    this loss (the default here); 'mean' and 'none' are offered too.

    stable=True (default): log p is log-sigmoid and log p_neg is log-sigmoid(-x) (clip = 0) or
    log(min(sigmoid(-x) + clip, 1)), so the loss keeps growing linearly for confident mistakes and
    the gradient never vanishes. stable=False: the reference's log(max(p, eps)), which saturates at
    -log(eps) (~18.4) once p < eps, with a zero gradient there (for |logit| > ~18 in float32).
    disable_torch_grad_focal_loss: the focusing weight is a constant in backward, as the reference's
    no_grad option. label_smoothing: y -> y (1 - ls) + ls / 2. weight: elementwise, broadcastable."""
    fn = "asymmetric_loss"
    red = _reduction_code(reduction)
    if not isinstance(disable_torch_grad_focal_loss, bool) or not isinstance(stable, bool):
        fail(fn, "disable_torch_grad_focal_loss and stable must be bools")
    clip = 0.0 if clip is None else clip
    input, target, weight = _check_modulated(
        fn, input, target, weight,
        {"gamma_neg": (gamma_neg, math.inf), "gamma_pos": (gamma_pos, math.inf), "clip": (clip, 1),
         "eps": (eps, 1), "label_smoothing": (label_smoothing, 1)})
    if not stable and eps <= 0:
        fail(fn, f"eps must be > 0 when stable=False, got {eps}")
    return _modulated(input, target, weight, red, float(gamma_pos), float(gamma_neg), 1.0, 1.0,
                      float(clip), 0.0 if stable else float(eps), float(label_smoothing),
                      disable_torch_grad_focal_loss)


from . import _sparse_loss  # noqa: E402  (it uses this module's checks)
from .metrics import linear_topk, ndcg_at_k, precision_at_k  # noqa: E402,F401
from .linear import (linear_binary_cross_entropy_with_logits,  # noqa: E402,F401  (fused linear)
                     linear_multilabel_margin_loss, linear_multilabel_soft_margin_loss)
