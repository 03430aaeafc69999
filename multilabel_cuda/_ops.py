"""Loads the compiled library and wires its ops into autograd and tracing (fake kernels).

Each op returns (loss, grad) where grad is d(loss)/d(input) for an upstream gradient of 1 from the
same fused pass; backward only scales it. Double backward and target gradients go through the
differentiable formulas in ``reference`` (input and target are saved by reference: no copies)."""
import torch
from torch.utils._python_dispatch import _get_current_dispatch_mode

from . import reference
from ._reduction import NONE, MEAN

LOAD_ERROR = None
try:
    from . import _C  # noqa: F401  (registers torch.ops.multilabel_cuda.*)

    _isa = torch.ops.multilabel_cuda.cpu_isa()
    if _isa.startswith("unsupported"):
        raise ImportError(f"multilabel_cuda._C was built for {_isa.split(':')[1]}, "
                          "which this CPU lacks; rebuild with MULTILABEL_CUDA_CPU_ISA=default")
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


def _plain_eager(*tensors):
    """Real tensors, no tracer: a data-dependent shortcut (.item()) is allowed."""
    return (not torch.compiler.is_compiling() and _get_current_dispatch_mode() is None
            and all(type(t) is torch.Tensor for t in tensors))


def _per_element(ctx, grad_loss):
    """The upstream gradient, broadcastable to the input (per-row losses gain the class dim)."""
    return grad_loss.unsqueeze(-1) if ctx.reduction == NONE and ctx.row_mean else grad_loss


def _scale_by_upstream(ctx, grad, grad_loss):
    """grad * upstream gradient."""
    grad_loss = _per_element(ctx, grad_loss)
    # The common `loss.backward()` on CPU: hand out the saved gradient itself (no N x C copy). ctx
    # keeps a second reference so autograd's AccumulateGrad copies instead of stealing it, so a
    # retained graph never sees it modified.
    if (grad.device.type == "cpu" and grad_loss.numel() == 1 and not grad_loss.requires_grad
            and _plain_eager(grad, grad_loss) and grad_loss.item() == 1.0
            and grad.shape == torch.broadcast_shapes(grad.shape, grad_loss.shape)):
        ctx.handed_out = grad.detach()
        return ctx.handed_out
    return grad * grad_loss


def _make_bce_autograd(row_mean):
    def setup_context(ctx, inputs, output):
        if row_mean:
            input, target, weight, reduction, compute_grad = inputs
            pos_weight = None
        else:
            input, target, weight, pos_weight, reduction, compute_grad = inputs
        ctx.row_mean, ctx.reduction, ctx.compute_grad = row_mean, reduction, compute_grad
        # The grad output is never used downstream; materializing its (zero) gradient would cost a
        # whole extra N x C buffer in backward.
        ctx.set_materialize_grads(False)
        ctx.scale = grad_scale(input, reduction, row_mean)
        ctx.save_for_backward(output[1], input, target, weight, pos_weight)

    def backward(ctx, grad_loss, _unused):
        grad, input, target, weight, pos_weight = ctx.saved_tensors
        n_weights = 1 if row_mean else 2
        if grad_loss is None:
            return (None,) * (n_weights + 4)
        if any(ctx.needs_input_grad[2:2 + n_weights]):
            raise RuntimeError("multilabel_cuda: gradients w.r.t. weight/pos_weight are not computed by "
                               "the fused op; multilabel_cuda.functional routes such calls to the "
                               "reference implementation")
        grad_input = grad_target = None
        if ctx.needs_input_grad[0]:
            if torch.is_grad_enabled():  # create_graph=True: stay differentiable w.r.t. input
                g = reference.bce_grad_input(input, target, weight, pos_weight, ctx.scale)
                grad_input = g * _per_element(ctx, grad_loss)
            elif not ctx.compute_grad:
                raise RuntimeError("multilabel_cuda: the op ran with compute_grad=False, so it has no "
                                   "input gradient to give")
            else:
                grad_input = _scale_by_upstream(ctx, grad, grad_loss)
        if ctx.needs_input_grad[1]:
            g = reference.bce_grad_target(input, target, weight, pos_weight, ctx.scale)
            grad_target = (g * _per_element(ctx, grad_loss)).sum_to_size(target.shape)
        return (grad_input, grad_target) + (None,) * (n_weights + 2)

    return setup_context, backward


def _margin_setup_context(ctx, inputs, output):
    input, _target, reduction, compute_grad = inputs[:4]
    ctx.n_inputs = len(inputs)
    ctx.reduction, ctx.compute_grad = reduction, compute_grad
    ctx.row_mean = reduction == NONE and input.dim() == 2  # (N,) loss: upstream broadcasts over C
    ctx.set_materialize_grads(False)
    ctx.save_for_backward(output[1])


def _margin_backward(ctx, grad_loss, _unused):
    (grad,) = ctx.saved_tensors
    grad_input = None
    if ctx.needs_input_grad[0] and grad_loss is not None:
        if not ctx.compute_grad:
            raise RuntimeError("multilabel_cuda: the op ran with compute_grad=False, so it has no "
                               "input gradient to give")
        if torch.is_grad_enabled():
            # create_graph=True: the margin gradient is piecewise constant in input (its derivative
            # is 0 almost everywhere), so the only dependence left is the linear one on grad_loss.
            grad_input = grad.detach() * _per_element(ctx, grad_loss)
        else:
            grad_input = _scale_by_upstream(ctx, grad, grad_loss)
    return (grad_input,) + (None,) * (ctx.n_inputs - 1)


if AVAILABLE:
    @torch.library.register_fake("multilabel_cuda::multilabel_margin")
    def _(input, target, reduction, compute_grad, algo=0):
        per_row = reduction == NONE and input.dim() == 2
        loss = input.new_empty(input.shape[:1] if per_row else ())
        return loss, input.new_empty(input.shape if compute_grad else (0,))

    torch.library.register_autograd("multilabel_cuda::multilabel_margin", _margin_backward,
                                    setup_context=_margin_setup_context)

    @torch.library.register_fake("multilabel_cuda::bce_with_logits")
    def _(input, target, weight, pos_weight, reduction, compute_grad):
        loss = input.new_empty(input.shape if reduction == NONE else ())
        return loss, input.new_empty(input.shape if compute_grad else (0,))

    @torch.library.register_fake("multilabel_cuda::multilabel_soft_margin")
    def _(input, target, weight, reduction, compute_grad):
        loss = input.new_empty(input.shape[:-1] if reduction == NONE else ())
        return loss, input.new_empty(input.shape if compute_grad else (0,))

    for _name, _row_mean in (("bce_with_logits", False), ("multilabel_soft_margin", True)):
        _setup, _backward = _make_bce_autograd(_row_mean)
        torch.library.register_autograd(f"multilabel_cuda::{_name}", _backward, setup_context=_setup)
