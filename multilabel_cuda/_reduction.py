"""Reduction names <-> the integers of at::Reduction, which the op schemas take; reduce_loss applies
one in torch ops."""
import torch

from ._errors import LossArgumentError

NONE, MEAN, SUM = 0, 1, 2
_CODES = {"none": NONE, "mean": MEAN, "sum": SUM}


def code(reduction, size_average=None, reduce=None):
    """torch.nn's rules, legacy size_average/reduce included; ValueError naming a bad value."""
    if size_average is not None or reduce is not None:
        reduction = torch.nn._reduction.legacy_get_string(size_average, reduce, emit_warning=True)
    try:
        return _CODES[reduction]
    except (KeyError, TypeError):
        raise LossArgumentError(f"{reduction} is not a valid value for reduction") from None


def reduce_loss(loss, reduction):
    """A reduction code applied to an elementwise or per-row loss, as torch.nn does."""
    if reduction == MEAN:
        return loss.mean()
    if reduction == SUM:
        return loss.sum()
    return loss
