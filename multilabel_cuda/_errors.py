"""LossArgumentError, and the argument checks the Python entry points share: each raises it with the
words "<function>: <argument> ..."."""
import operator

import torch

_INT_DTYPES = (torch.uint8, torch.int8, torch.int16, torch.int32, torch.int64)


class LossArgumentError(ValueError, RuntimeError):
    """Bad argument to a loss. A ValueError (as torch.nn raises for sizes and reductions) that is also
    a RuntimeError (as ATen raises for dtypes, devices and broadcasting), so either `except` works."""


def fail(fn, msg):
    raise LossArgumentError(f"{fn}: {msg}")


def check_tensor(fn, name, t):
    if not isinstance(t, torch.Tensor):
        fail(fn, f"{name} must be a Tensor, got {type(t).__name__}")
    if t.layout != torch.strided:  # native fails later (no sparse log_sigmoid / margin kernel)
        fail(fn, f"{name} must be a dense (strided) tensor, got layout {t.layout}")


def check_floating(fn, name, t):
    if not t.is_floating_point():
        fail(fn, f"{name} must be a floating-point tensor, got {t.dtype}")


def check_int_tensor(fn, name, t):
    check_tensor(fn, name, t)
    if t.dtype not in _INT_DTYPES:
        fail(fn, f"{name} must be an integer tensor, got {t.dtype}")
    return t


def check_same_device(fn, name, t, ref_name, ref):
    if t.device != ref.device:
        fail(fn, f"{name} is on {t.device} but {ref_name} is on {ref.device}")


def check_range(fn, name, t, lo, hi):
    """Every entry of t in [lo, hi): read before any entry is used as an index."""
    if t.numel() == 0:
        return
    mn, mx = (int(v) for v in torch.aminmax(t))
    if mn < lo or mx >= hi:
        fail(fn, f"{name} holds {mn if mn < lo else mx}, outside [{lo}, {hi})")


def check_int(fn, name, v, lo, expected=None):
    """v as an int >= lo (operator.index: floats and bools refused), else the error "<name> must be
    <expected>" (default: an int >= lo)."""
    try:
        i = None if isinstance(v, bool) else operator.index(v)
    except TypeError:
        i = None
    if i is None or i < lo:
        fail(fn, f"{name} must be {expected or f'an int >= {lo}'}, got {v!r}")
    return i
