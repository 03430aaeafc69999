"""Which implementation runs: the compiled extension or the pure-PyTorch reference."""
import os
import warnings

import torch

from . import _ops

_CHOICES = ("auto", "extension", "reference")
_choice = os.environ.get("MULTILABEL_CUDA_BACKEND", "auto").lower()
if _choice not in _CHOICES:
    raise ValueError(f"MULTILABEL_CUDA_BACKEND must be one of {_CHOICES}, got {_choice!r}")
if _choice == "auto" and not _ops.AVAILABLE:
    warnings.warn(f"multilabel_cuda: compiled extension not available ({_ops.LOAD_ERROR}); "
                  "using the pure-PyTorch reference implementation", RuntimeWarning, stacklevel=3)


def _kernel_devices():
    """{op name: device types with a compiled kernel}, e.g. margin may have no CUDA kernel yet."""
    if not _ops.AVAILABLE:
        return {}
    has = torch._C._dispatch_has_kernel_for_dispatch_key
    ops = ("bce_with_logits", "multilabel_soft_margin", "multilabel_margin", "bce_family",
           "bce_chunk_")
    return {op: frozenset(d for d in ("cpu", "cuda") if has(f"multilabel_cuda::{op}", d.upper()))
            for op in ops}


KERNEL_DEVICES = _kernel_devices()


def set_backend(name):
    """'auto' (extension when built), 'extension' (error if not built) or 'reference'."""
    global _choice
    if name not in _CHOICES:
        raise ValueError(f"backend must be one of {_CHOICES}, got {name!r}")
    if name == "extension" and not _ops.AVAILABLE:
        raise RuntimeError(f"multilabel_cuda: compiled extension not available: {_ops.LOAD_ERROR}")
    _choice = name


def backend():
    """The implementation the losses use now: 'extension' or 'reference'."""
    return "extension" if _ops.AVAILABLE and _choice != "reference" else "reference"


def use_extension(op, device):
    """True when the fused op `op` should run for tensors on `device` (else the reference runs)."""
    if _choice == "extension" and not _ops.AVAILABLE:
        raise RuntimeError(f"multilabel_cuda: compiled extension not available: {_ops.LOAD_ERROR}")
    return backend() == "extension" and device.type in KERNEL_DEVICES.get(op, ())
