"""Pure-PyTorch implementations: the fallback when the compiled library is missing (or on
``MULTILABEL_CUDA_BACKEND=reference``), and what runs where the fused ops' autograd does not reach
(forward-mode AD, torch.func transforms, weight/pos_weight gradients). Inputs arrive already validated and dtype-aligned by ``functional``."""
import torch
import torch.nn.functional as F

from ._reduction import reduce_loss


def _in_float32(*tensors):
    """float16/bfloat16 tensors as float32 (others as they are; None stays None). The losses compute
    in that type and cast the result back: one rounding of the loss, and autograd's gradients are
    computed in float32 too, each rounded once by the cast's backward."""
    return [t.float() if t is not None and t.dtype in (torch.float16, torch.bfloat16) else t
            for t in tensors]


def binary_cross_entropy_with_logits(input, target, weight, pos_weight, reduction):
    x, target, weight, pos_weight = _in_float32(input, target, weight, pos_weight)
    log_sigmoid = F.logsigmoid(x)
    if pos_weight is not None:
        log_sigmoid = log_sigmoid * ((pos_weight - 1) * target + 1)
    loss = (1 - target) * x - log_sigmoid
    if weight is not None:
        loss = loss * weight
    return reduce_loss(loss, reduction).to(input.dtype)


def multilabel_soft_margin_loss(input, target, weight, reduction):
    x, target, weight = _in_float32(input, target, weight)
    loss = -(target * F.logsigmoid(x) + (1 - target) * F.logsigmoid(-x))
    if weight is not None:
        loss = loss * weight
    loss = loss.sum(dim=-1) / x.size(-1)
    return reduce_loss(loss, reduction).to(input.dtype)


def check_margin_target(target, cols):
    """The whole target (also past the first -1) must lie in [-1, cols), as native checks; the same
    words as the C++ check of the extension (csrc/margin_plan.cpp)."""
    # Under torch.func transforms the check reads the tensor beneath the wrappers: vmap cannot run
    # .item(), and the batched whole holds every sample's target (one check covers them all).
    while torch._C._functorch.is_functorch_wrapped_tensor(target):
        target = torch._C._functorch.get_unwrapped(target)
    if target.numel() == 0 or target.device.type == "meta":  # a meta tensor has no values to check
        return
    lo, hi = int(target.min()), int(target.max())
    if lo < -1 or hi >= cols:
        bad = lo if lo < -1 else hi
        raise RuntimeError(f"multilabel_margin_loss: target index {bad} out of range [-1, {cols})")


def multilabel_margin_loss(input, target, reduction):
    """input (), (C,) or (N, C); target int64 (), (K,) or (N, K) with K <= C, cut at the first -1.
    Loops over target slots so memory stays O(N*C), not O(N*K*C).

    The hinge test is native's: z = 1 - x[y] + x[i] > 0 evaluated in the compute type (float32 for
    the half types, as the kernels). The hinge values, the reduction and, through autograd, the
    gradient are accumulated in float64 and rounded once to the input's type: a column's gradient
    is its hinge count times the scale, which float64 holds exactly where thousands of 1/C terms
    summed in float32 would not (at the cost of a float64 copy of the scores)."""
    cols = input.size(-1) if input.dim() > 0 else 1
    check_margin_target(target, cols)
    compute = torch.promote_types(input.dtype, torch.float32)
    x = input.to(torch.float64).reshape(-1, cols)
    xc = None if compute == torch.float64 else input.detach().to(compute).reshape(-1, cols)
    t = target.reshape(x.size(0), target.size(-1) if target.dim() > 0 else 1)
    valid = torch.cumprod((t != -1).to(torch.int64), dim=1).bool()
    idx = torch.where(valid, t, torch.zeros_like(t))
    # scatter_add, not scatter_: placeholder 0s of invalid slots must not overwrite a real target 0.
    hits = torch.zeros(x.shape, dtype=torch.int64, device=x.device)
    is_target = hits.scatter_add(1, idx, valid.to(torch.int64)) > 0
    # Zeros that are part of the graph (a sum over no columns): with no target anywhere the loss
    # must still require grad, as native's does (0 * x would turn inf scores into NaN).
    row = x.narrow(1, 0, 0).sum(dim=1)
    # The early exit reads a value, which vmap and meta tensors cannot: then every slot is visited.
    early_exit = not torch._C._are_functorch_transforms_active() and x.device.type != "meta"
    for k in range(t.size(1)):
        if early_exit and not bool(valid[:, k].any()):
            break
        tk = idx[:, k:k + 1]
        z = 1 - x.gather(1, tk) + x
        zc = z if xc is None else 1 - xc.gather(1, tk) + xc  # the hinge test's z
        keep = (zc > 0) & ~is_target & valid[:, k:k + 1]
        row = row + torch.where(keep, z, torch.zeros_like(z)).sum(dim=1)
    row = row / cols
    if input.dim() < 2:
        return row.reshape(()).to(input.dtype)
    return reduce_loss(row, reduction).to(input.dtype)


def modulated_bce(input, target, weight, reduction, gamma_pos, gamma_neg, alpha_pos, alpha_neg,
                  clip, eps, label_smoothing, detach_focal):
    """Focal / asymmetric BCE (the fused op modulated_bce, csrc/math/bce_variants.h), in torch ops.
    eps == 0: log-sigmoid form; eps > 0: the ASL reference's log(max(prob, eps))."""
    x, target, weight = _in_float32(input, target, weight)
    y = target * (1 - label_smoothing) + label_smoothing / 2 if label_smoothing else target
    p, q = torch.sigmoid(x), torch.sigmoid(-x)
    if eps == 0:
        log_pos = F.logsigmoid(x)
        log_neg = F.logsigmoid(-x) if clip == 0 else torch.log((q + clip).clamp(max=1))
    else:
        log_pos = torch.log(p.clamp(min=eps))
        log_neg = torch.log((q if clip == 0 else (q + clip).clamp(max=1)).clamp(min=eps))
    loss = -(y * log_pos + (1 - y) * log_neg)
    with torch.set_grad_enabled(torch.is_grad_enabled() and not detach_focal):
        base = y * q + (1 - y) * (p if clip == 0 else (p - clip).clamp(min=0))
        focus = torch.pow(base, gamma_pos * y + gamma_neg * (1 - y))
    loss = loss * focus
    if alpha_pos != 1 or alpha_neg != 1:
        loss = loss * (alpha_pos * y + alpha_neg * (1 - y))
    if weight is not None:
        loss = loss * weight
    return reduce_loss(loss, reduction).to(input.dtype)
