"""Loads the compiled library and registers what it needs from Python: fake kernels for tracing,
and the kernel of bce_backward_reference.

Each op returns (loss, grad) where grad is d(loss)/d(input) for an upstream gradient of 1 from the
same fused pass; its autograd (csrc/autograd.cpp, C++ for the per-call overhead) saves grad and
backward only scales it. Double backward and target gradients go through the differentiable
formulas in ``reference`` (input and target are saved by reference: no copies)."""
import torch

from . import reference
from ._reduction import NONE, MEAN

LOAD_ERROR = None
try:
    from . import _C  # noqa: F401  (registers torch.ops.multilabel_cuda.*)

    _isa = torch.ops.multilabel_cuda.cpu_isa()
    if _isa.startswith("unsupported"):
        raise ImportError(f"multilabel_cuda._C was built for {_isa.split(':')[1]}, "
                          "which this CPU lacks; rebuild on this machine (MULTILABEL_CUDA_CPU_ISA=auto)")
except (ImportError, OSError, RuntimeError) as e:  # not built, or built against another torch
    LOAD_ERROR = e

AVAILABLE = LOAD_ERROR is None


def grad_scale(input, reduction, row_mean):
    """The factor the kernels fold into grad: 1/C per row for soft margin, 1/count for 'mean'."""
    cols = input.size(-1) if input.dim() > 0 else 1
    count = input.numel() // cols if row_mean and cols else input.numel()
    scale = 1.0 / cols if row_mean and cols else 1.0
    if reduction == MEAN and count:
        scale /= count
    return scale


def _bce_backward_reference(upstream, input, target, weight, pos_weight, reduction, row_mean,
                            input_grad, target_grad):
    """Kernel of multilabel_cuda::bce_backward_reference (CompositeImplicitAutograd): the gradients
    the fused op's C++ backward (csrc/autograd.cpp) takes from the differentiable reference formulas,
    for double backward and target gradients. `upstream` already broadcasts to the input."""
    scale = grad_scale(input, reduction, row_mean)
    grad_input = grad_target = input.new_empty(0)
    if input_grad:
        grad_input = reference.bce_grad_input(input, target, weight, pos_weight, scale) * upstream
    if target_grad:
        g = reference.bce_grad_target(input, target, weight, pos_weight, scale)
        grad_target = (g * upstream).sum_to_size(target.shape)
    return grad_input, grad_target


if AVAILABLE:
    @torch.library.register_fake("multilabel_cuda::multilabel_margin")
    def _(input, target, reduction, compute_grad, algo=0):
        per_row = reduction == NONE and input.dim() == 2
        loss = input.new_empty(input.shape[:1] if per_row else ())
        return loss, input.new_empty(input.shape if compute_grad else (0,))

    @torch.library.register_fake("multilabel_cuda::bce_with_logits")
    def _(input, target, weight, pos_weight, reduction, compute_grad):
        loss = input.new_empty(input.shape if reduction == NONE else ())
        return loss, input.new_empty(input.shape if compute_grad else (0,))

    @torch.library.register_fake("multilabel_cuda::multilabel_soft_margin")
    def _(input, target, weight, reduction, compute_grad):
        loss = input.new_empty(input.shape[:-1] if reduction == NONE else ())
        return loss, input.new_empty(input.shape if compute_grad else (0,))

    @torch.library.register_fake("multilabel_cuda::_scale_grad_")
    def _(grad, upstream):
        return None

    torch.library.impl("multilabel_cuda::bce_backward_reference", "CompositeImplicitAutograd",
                       _bce_backward_reference)
