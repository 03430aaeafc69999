"""Loads the compiled library and registers the ops' fake kernels (shapes for tracing).

Each op returns (loss, grad) where grad is d(loss)/d(input) for an upstream gradient of 1 from the
same fused pass; its autograd (csrc/autograd.cpp) saves grad and backward only scales it."""
import torch

from . import _build_config
from ._errors import LossArgumentError
from ._reduction import NONE

LOAD_ERROR = None
try:
    from . import _C  # noqa: F401  (registers torch.ops.multilabel_cuda.*)

    _isa = torch.ops.multilabel_cuda.cpu_isa()
    if not _build_config.runs_here(_isa):
        raise ImportError(f"multilabel_cuda._C was built for {_isa}, which this CPU lacks; rebuild "
                          "on this machine (MULTILABEL_CUDA_CPU_ISA=auto)")
except (ImportError, OSError, RuntimeError) as e:  # not built, or built against another torch
    LOAD_ERROR = e

AVAILABLE = LOAD_ERROR is None


def check_errors():
    """Raises LossArgumentError for an out-of-range multilabel_margin_loss target that a CUDA kernel
    found since the last report. On CUDA the kernels check the targets in the pass that reads them,
    without a host sync, and report at the next margin call on that device or here; this waits for
    the devices that have run a margin call. The CPU raises at once: nothing to report here."""
    try:
        take = torch.ops.multilabel_cuda.take_margin_target_error  # built with the CUDA kernels
    except (AttributeError, RuntimeError):
        return
    msg = take()
    if msg:
        raise LossArgumentError(msg)


def _check_devices(fn, input, **operands):
    """A call mixing devices dispatches to the Meta key (it outranks CPU and CUDA), i.e. here rather
    than to a kernel's plan: check devices as the plans do (csrc/checks.cpp), with their words."""
    for name, t in operands.items():
        if t is not None and t.device != input.device:
            raise RuntimeError(f"{fn}: {name} is on {t.device} but input is on {input.device}")


if AVAILABLE:
    @torch.library.register_fake("multilabel_cuda::multilabel_margin")
    def _(input, target, reduction, compute_grad, algo=0):
        _check_devices("multilabel_margin_loss", input, target=target)
        per_row = reduction == NONE and input.dim() == 2
        loss = input.new_empty(input.shape[:1] if per_row else ())
        return loss, input.new_empty(input.shape if compute_grad else (0,))

    @torch.library.register_fake("multilabel_cuda::bce_with_logits")
    def _(input, target, weight, pos_weight, reduction, compute_grad):
        _check_devices("binary_cross_entropy_with_logits", input, target=target, weight=weight,
                       pos_weight=pos_weight)
        loss = input.new_empty(input.shape if reduction == NONE else ())
        return loss, input.new_empty(input.shape if compute_grad else (0,))

    @torch.library.register_fake("multilabel_cuda::multilabel_soft_margin")
    def _(input, target, weight, reduction, compute_grad):
        _check_devices("multilabel_soft_margin_loss", input, target=target, weight=weight)
        loss = input.new_empty(input.shape[:-1] if reduction == NONE else ())
        return loss, input.new_empty(input.shape if compute_grad else (0,))

    @torch.library.register_fake("multilabel_cuda::bce_family")
    def _(input, target, weight, kind, params, reduction, compute_grad):
        _check_devices("bce_family", input, target=target, weight=weight)
        loss = input.new_empty(input.shape if reduction == NONE else ())
        return loss, input.new_empty(input.shape if compute_grad else (0,))

    @torch.library.register_fake("multilabel_cuda::bce_chunk_")
    def _(logits, target, indices, offsets, values, first, pos_weight, reduction, row_mean):
        _check_devices("bce_chunk_", logits, target=target, indices=indices, offsets=offsets,
                       values=values, pos_weight=pos_weight)
        if reduction != NONE:
            return logits.new_empty(())
        return logits.new_empty(logits.shape[:1] if row_mean else logits.shape)

    @torch.library.register_fake("multilabel_cuda::_scale_grad_")
    def _(grad, upstream):
        return None
