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
from ._errors import check_floating, check_same_device, check_tensor, fail
from ._reduction import reduce_loss

# softplus(x) = x above this; e^-40 is below half an ulp of 40 in float64, so exact to rounding
# (torch's default threshold 20 is not, in float64), and exp(40) does not overflow float32.
_SOFTPLUS_THRESHOLD = 40.0


def _check(fn, input, target):
    """input (N, C) or (C,) floating, on target's device, of the dense shape target stands for."""
    check_tensor(fn, "input", input)
    check_floating(fn, "input", input)
    check_same_device(fn, "target", target, "input", input)
    if input.shape != target.dense_shape:
        fail(fn, f"target (SparseTargets) stands for a target of shape "
                 f"{tuple(target.dense_shape)}, but input has shape {tuple(input.shape)}")


def _at_positives(t, rows, cols):
    """t broadcast to (N, C) read at the positives, without materializing the broadcast: (nnz,)
    (or 0-dim when t has one element). Differentiable; its backward is O(nnz) + t's size too."""
    t2 = t.reshape((1,) * (2 - t.dim()) + tuple(t.shape))
    return t2[rows if t2.size(0) != 1 else 0, cols if t2.size(1) != 1 else 0]


def _elementwise(fn, input, target, weight, pos_weight):
    """The (N, C) elementwise loss as the module docstring says, in float32 at least (in place on a
    fresh tensor that no backward saves: softplus and mul keep their inputs)."""
    _check(fn, input, target)
    compute = torch.promote_types(input.dtype, torch.float32)
    weight = _F._broadcast_operand(fn, "weight", weight, input, compute)
    pos_weight = _F._broadcast_operand(fn, "pos_weight", pos_weight, input, compute)
    x = input.to(compute).reshape(target.shape)  # a (C,) input as one row: a view
    rows, cols = target.row_ids(), target.indices
    xp = x[rows, cols]
    v = (target.values.to(compute) if target.values is not None
         else torch.ones((), dtype=compute, device=x.device))
    # The positives' loss, the dense formula's: (1 - v) x + (1 + (p - 1) v) softplus(-x), times w.
    scale = 1 if pos_weight is None else (_at_positives(pos_weight, rows, cols) - 1) * v + 1
    positive = (1 - v) * xp + scale * F.softplus(-xp, threshold=_SOFTPLUS_THRESHOLD)
    loss = F.softplus(x, threshold=_SOFTPLUS_THRESHOLD)
    if weight is not None:
        loss, positive = loss * weight, positive * _at_positives(weight, rows, cols)
    return loss.index_put_((rows, cols), positive)


def binary_cross_entropy_with_logits(input, target, weight, pos_weight, red):
    """functional's, for a SparseTargets target (red: the reduction's code)."""
    loss = _elementwise("binary_cross_entropy_with_logits", input, target, weight, pos_weight)
    return reduce_loss(loss.reshape(input.shape), red).to(input.dtype)


def multilabel_soft_margin_loss(input, target, weight, red):
    """functional's, for a SparseTargets target (red: the reduction's code)."""
    loss = _elementwise("multilabel_soft_margin_loss", input, target, weight, None)
    row = loss.sum(dim=1) / target.num_classes
    return reduce_loss(row.reshape(input.shape[:-1]), red).to(input.dtype)


def margin_target(input, target):
    """The margin loss's compact target for a SparseTargets: each row's classes, -1-padded."""
    fn = "multilabel_margin_loss"
    check_tensor(fn, "input", input)
    if target.values is not None:
        fail(fn, "target (SparseTargets) has values (soft labels), which the margin loss "
                 "cannot use: its positives are classes, not weights")
    _check(fn, input, target)
    padded = target.to_padded()
    return padded.reshape(-1) if target.vector else padded
