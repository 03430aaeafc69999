"""The three losses with a SparseTargets target, in plain differentiable torch ops (autograd gives
the input gradient, and weight/pos_weight gradients), never building the N x C target.

A negative's loss is the loss at target 0: w * softplus(x) (soft margin's element is BCE's without
pos_weight). The elementwise loss is that everywhere, with the nnz positives' own loss written over
it in place, so every element (and every sum of them) is as accurate as the dense path's. The loss
has the input's dtype (half types computed in float32, rounded once): values are cast to it, as a
dense target of the input's dtype would be."""
import torch
import torch.nn.functional as F

from . import functional as _F
from ._reduction import MEAN, NONE, SUM
from ._reduction import code as _reduction_code

# softplus(x) = x above this; e^-40 is below half an ulp of 40 in float64, so exact to rounding
# (torch's default threshold 20 is not, in float64), and exp(40) does not overflow float32.
_SOFTPLUS_THRESHOLD = 40.0


def _softplus(x):
    return F.softplus(x, threshold=_SOFTPLUS_THRESHOLD)


def _check(fn, input, target):
    """input (N, C) or (C,) floating, on target's device, of the dense shape target stands for."""
    _F._check_tensor(fn, "input", input)
    _F._check_floating(fn, "input", input)
    if target.device != input.device:
        _F._fail(fn, f"target is on {target.device} but input is on {input.device}")
    if input.shape != target.dense_shape:
        _F._fail(fn, f"target (SparseTargets) stands for a target of shape "
                     f"{tuple(target.dense_shape)}, but input has shape {tuple(input.shape)}")


def _at_positives(t, rows, cols):
    """t broadcast to (N, C) read at the positives, without materializing the broadcast: (nnz,)
    (or 0-dim when t has one element). Differentiable; its backward is O(nnz) + t's size too."""
    t2 = t.reshape((1,) * (2 - t.dim()) + tuple(t.shape))
    return t2[rows if t2.size(0) != 1 else 0, cols if t2.size(1) != 1 else 0]


def _pieces(fn, input, target, weight, pos_weight):
    """Checked operands in the compute dtype: x (N, C) (a view for a (C,) input), the weight, the
    positives' rows, and x, weight, pos_weight and value at the positives (nnz,)."""
    _check(fn, input, target)
    compute = torch.promote_types(input.dtype, torch.float32)
    if weight is not None:
        weight = _F._broadcast_operand(fn, "weight", weight, input, compute)
    if pos_weight is not None:
        pos_weight = _F._broadcast_operand(fn, "pos_weight", pos_weight, input, compute)
    x = input.to(compute).reshape(target.shape)  # a (C,) input as one row: a view
    rows, cols = target.row_ids(), target.indices
    xp = x[rows, cols]
    wp = None if weight is None else _at_positives(weight, rows, cols)
    pp = None if pos_weight is None else _at_positives(pos_weight, rows, cols)
    v = (target.values.to(compute) if target.values is not None
         else torch.ones((), dtype=compute, device=x.device))
    return x, weight, rows, xp, wp, pp, v


def _base(x, weight):
    """Every element's loss at target 0: w * softplus(x), (N, C)."""
    base = _softplus(x)
    return base if weight is None else base * weight


def _positive_loss(xp, wp, pp, v):
    """loss(x, v) at the positives, the dense formula's terms: (1 - v) x + (1 + (p - 1) v) softplus(-x)."""
    scale = 1 if pp is None else (pp - 1) * v + 1
    loss = (1 - v) * xp + scale * _softplus(-xp)
    return loss if wp is None else loss * wp


def _elementwise(fn, input, target, weight, pos_weight):
    """The (N, C) elementwise loss: the loss at target 0, the positives' own loss written over it.
    (In place on a fresh tensor that no backward saves: softplus and mul keep their inputs.)"""
    x, weight, rows, xp, wp, pp, v = _pieces(fn, input, target, weight, pos_weight)
    return _base(x, weight).index_put_((rows, target.indices), _positive_loss(xp, wp, pp, v))


def binary_cross_entropy_with_logits(input, target, weight=None, size_average=None, reduce=None,
                                     reduction="mean", pos_weight=None):
    fn = "binary_cross_entropy_with_logits"
    red = _reduction_code(reduction, size_average, reduce)
    loss = _elementwise(fn, input, target, weight, pos_weight)
    if red == NONE:
        return loss.reshape(input.shape).to(input.dtype)
    total = loss.sum()
    if red == MEAN:
        total = total / input.numel()
    return total.to(input.dtype)


def multilabel_soft_margin_loss(input, target, weight=None, size_average=None, reduce=None,
                                reduction="mean"):
    fn = "multilabel_soft_margin_loss"
    red = _reduction_code(reduction, size_average, reduce)
    row = _elementwise(fn, input, target, weight, None).sum(dim=1) / target.num_classes
    if input.dim() == 1:
        return row.reshape(()).to(input.dtype)
    if red == MEAN:
        row = row.mean()
    elif red == SUM:
        row = row.sum()
    return row.to(input.dtype)


def multilabel_margin_loss(input, target, size_average=None, reduce=None, reduction="mean"):
    fn = "multilabel_margin_loss"
    _F._check_tensor(fn, "input", input)
    if target.values is not None:
        _F._fail(fn, "target (SparseTargets) has values (soft labels), which the margin loss "
                     "cannot use: its positives are classes, not weights")
    _check(fn, input, target)
    padded = target.to_padded()
    if target.vector:
        padded = padded.reshape(-1)
    return _F.multilabel_margin_loss(input, padded, size_average, reduce, reduction)

