"""Pure-PyTorch implementations: the fallback when the compiled library is missing (or on
``MULTILABEL_CUDA_BACKEND=reference``), and the differentiable formulas that double backward and
forward-mode AD go through. Inputs arrive already validated and dtype-aligned by ``functional``."""
import torch
import torch.nn.functional as F

from ._reduction import NONE, MEAN, SUM


def _reduce(loss, reduction):
    if reduction == MEAN:
        return loss.mean()
    if reduction == SUM:
        return loss.sum()
    return loss


def binary_cross_entropy_with_logits(input, target, weight, pos_weight, reduction):
    log_sigmoid = F.logsigmoid(input)
    if pos_weight is not None:
        log_sigmoid = log_sigmoid * ((pos_weight - 1) * target + 1)
    loss = (1 - target) * input - log_sigmoid
    if weight is not None:
        loss = loss * weight
    return _reduce(loss, reduction)


def multilabel_soft_margin_loss(input, target, weight, reduction):
    loss = -(target * F.logsigmoid(input) + (1 - target) * F.logsigmoid(-input))
    if weight is not None:
        loss = loss * weight
    loss = loss.sum(dim=-1) / input.size(-1)
    return _reduce(loss, reduction)


def bce_grad_input(input, target, weight, pos_weight, scale):
    """d(loss)/d(input) for an upstream gradient of 1, times ``scale``; differentiable."""
    if pos_weight is None:
        g = torch.sigmoid(input) - target
    else:
        g = ((pos_weight - 1) * target + 1) * torch.sigmoid(input) - pos_weight * target
    if weight is not None:
        g = g * weight
    return g * scale


def bce_grad_target(input, target, weight, pos_weight, scale):
    """d(loss)/d(target) for an upstream gradient of 1, times ``scale``; differentiable."""
    g = -input
    if pos_weight is not None:
        g = g - (pos_weight - 1) * F.logsigmoid(input)
    if weight is not None:
        g = g * weight
    return (g * scale).expand(target.shape)


def multilabel_margin_loss(input, target, reduction):
    """input (C,) or (N, C); target int64 (C,)/(N, K) with K <= C, cut at the first -1.
    Loops over target slots so memory stays O(N*C), not O(N*K*C)."""
    x = input if input.dim() == 2 else input.reshape(1, -1)
    t = target.reshape(x.size(0), -1)
    valid = torch.cumprod((t != -1).to(torch.int64), dim=1).bool()
    idx = torch.where(valid, t, torch.zeros_like(t))
    is_target = torch.zeros(x.shape, dtype=torch.bool, device=x.device)
    is_target.scatter_(1, idx, valid)
    row = x.new_zeros(x.size(0), dtype=torch.promote_types(x.dtype, torch.float32))
    for k in range(t.size(1)):
        if not bool(valid[:, k].any()):
            break
        z = 1 - x.gather(1, idx[:, k:k + 1]) + x
        keep = (z > 0) & ~is_target & valid[:, k:k + 1]
        row = row + torch.where(keep, z, torch.zeros_like(z)).sum(dim=1)
    row = (row / x.size(1)).to(x.dtype)
    if input.dim() < 2:
        row = row.reshape(())
        return row if reduction == NONE else _reduce(row, reduction)
    return _reduce(row, reduction)
