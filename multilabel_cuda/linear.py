"""Fused linear + loss: the losses of ``F.linear(input, weight, bias)`` without the N x C logits.

The classes are streamed in chunks (multilabel_cuda/_linear_stream.py; the scheme and its memory
in docs/design.md, "Large label spaces"). Autograd goes through torch.library custom ops
(``multilabel_cuda::linear_bce``, ``linear_soft_margin``, ``linear_margin``, and
``linear_loss_backward`` for what cannot be a scale):

* reduction 'mean' / 'sum': the forward op makes the loss and the three gradients for an upstream
  of 1 and backward scales them (in eager, in place, handing the buffers to autograd);
* reduction 'none' (and a retained graph's second backward, and create_graph=True): the upstream is
  not a scalar, so ``linear_loss_backward`` streams the chunks again with it;
* double backward is refused with an error (``linear_loss_backward`` has no derivative).

The fused SGD update (``update=`` a torch.optim.SGD; the semantics are in
``linear_binary_cross_entropy_with_logits``'s docstring) is two ops: ``linear_loss_sgd_`` (called
under no_grad, like an optimizer's step; it mutates weight, bias and their momentum buffers)
returns the loss and input's gradient, and ``linear_loss_sgd_output`` puts the loss in the autograd
graph: its backward checks the upstream is 1 and hands input its gradient; weight and bias get
none. On a shard of the classifier's rows (``shard=``, multilabel_cuda.distributed) the pass runs
eagerly, outside the op.
"""
import torch
from torch.utils._python_dispatch import _get_current_dispatch_mode

from . import _ops
from ._errors import check_same_device, check_tensor, fail
from ._linear_stream import (BCE, MARGIN, SOFT_MARGIN, _FN_NAMES, _SGDRows, _compute_dtype, _run,
                             default_chunk_size)
from ._reduction import NONE, code as _reduction_code
from .sparse import SparseTargets

__all__ = ["linear_binary_cross_entropy_with_logits", "linear_multilabel_soft_margin_loss",
           "linear_multilabel_margin_loss", "LinearBCEWithLogitsLoss",
           "LinearMultiLabelSoftMarginLoss", "LinearMultiLabelMarginLoss", "default_chunk_size"]


# ---- the ops ------------------------------------------------------------------------------------

_LIB = "multilabel_cuda"


@torch.library.custom_op(f"{_LIB}::linear_loss_backward", mutates_args=())
def _linear_loss_backward(upstream: torch.Tensor, input: torch.Tensor, weight: torch.Tensor,
                          bias: torch.Tensor | None, target: torch.Tensor | None,
                          indices: torch.Tensor | None, offsets: torch.Tensor | None,
                          values: torch.Tensor | None, pos_weight: torch.Tensor | None, kind: int,
                          reduction: int, chunk_size: int, need_input: bool, need_weight: bool,
                          need_bias: bool) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The gradients for the upstream gradient `upstream` of the loss, by streaming the chunks."""
    upstream = upstream.to(_compute_dtype(input.dtype))
    _, grads = _run(kind, input, weight, bias, target, indices, offsets, values, pos_weight,
                    reduction, chunk_size, (need_input, need_weight, need_bias), upstream)
    return grads.results(input, weight, bias)


def _sgd_pass(input, weight, bias, target, indices, offsets, values, pos_weight, kind, reduction,
              chunk_size, need_input, weight_momentum, bias_momentum, weight_sgd, bias_sgd,
              shard=None):
    """The loss with the SGD step of weight and bias fused in: returns (loss, input's gradient for
    an upstream of 1) and steps weight (bias) in place when weight_sgd (bias_sgd) is not empty
    (_SGDRows's fields), their momentum buffers with them. The op linear_loss_sgd_; with `shard`
    (label sharding, _stream_margin), called eagerly."""
    update = (_SGDRows(weight, weight_momentum, weight_sgd) if weight_sgd else None,
              _SGDRows(bias, bias_momentum, bias_sgd) if bias_sgd and bias is not None else None)
    loss, grads = _run(kind, input, weight, bias, target, indices, offsets, values, pos_weight,
                       reduction, chunk_size, (need_input, False, False), update=update,
                       shard=shard)
    return loss, grads.results(input, weight, bias)[0]


_linear_loss_sgd = torch.library.custom_op(
    f"{_LIB}::linear_loss_sgd_", _sgd_pass,
    mutates_args=("weight", "bias", "weight_momentum", "bias_momentum"),
    schema="(Tensor input, Tensor(a!) weight, Tensor(b!)? bias, Tensor? target, Tensor? indices, "
           "Tensor? offsets, Tensor? values, Tensor? pos_weight, SymInt kind, SymInt reduction, "
           "SymInt chunk_size, bool need_input, Tensor(c!)? weight_momentum, "
           "Tensor(d!)? bias_momentum, float[] weight_sgd, float[] bias_sgd) -> (Tensor, Tensor)")


@torch.library.custom_op(f"{_LIB}::linear_loss_sgd_output", mutates_args=())
def _linear_loss_sgd_output(loss: torch.Tensor, grad_input: torch.Tensor, input: torch.Tensor,
                            weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """The loss of linear_loss_sgd_ in the autograd graph: its backward gives input the gradient
    computed in forward (weight and bias, already stepped, get none). weight and bias are inputs
    so that the loss requires grad when only they do (frozen features)."""
    return loss.clone()


def _fake_grads(input, weight, bias, need_input, need_weight, need_bias):
    gi = input.new_empty(input.shape if need_input else (0,))
    gw = weight.new_empty(weight.shape if need_weight else (0,))
    b = bias if bias is not None else weight
    gb = b.new_empty(bias.shape if need_bias and bias is not None else (0,))
    return gi, gw, gb


def _fake_loss(kind, input, weight, reduction):
    if reduction != NONE:
        return input.new_empty(())
    return input.new_empty((input.size(0), weight.size(0)) if kind == BCE else (input.size(0),))


@_linear_loss_backward.register_fake
def _(upstream, input, weight, bias, target, indices, offsets, values, pos_weight, kind,
      reduction, chunk_size, need_input, need_weight, need_bias):
    return _fake_grads(input, weight, bias, need_input, need_weight, need_bias)


@_linear_loss_sgd.register_fake
def _(input, weight, bias, target, indices, offsets, values, pos_weight, kind, reduction,
      chunk_size, need_input, weight_momentum, bias_momentum, weight_sgd, bias_sgd):
    return (_fake_loss(kind, input, weight, reduction),
            input.new_empty(input.shape if need_input else (0,)))


@_linear_loss_sgd_output.register_fake
def _(loss, grad_input, input, weight, bias):
    return torch.empty_like(loss)


def _scale_(grad, upstream):
    """grad *= upstream in place; the extension's _scale_grad_ skips loss.backward()'s exact 1
    (a whole C x D pass) without a host read on CUDA."""
    has_kernel = _ops.AVAILABLE and torch._C._dispatch_has_kernel_for_dispatch_key(
        "multilabel_cuda::_scale_grad_", grad.device.type.upper())
    if has_kernel and upstream.dtype == grad.dtype:
        torch.ops.multilabel_cuda._scale_grad_(grad, upstream)
        return grad
    return grad.mul_(upstream)


def _scale_kept(ctx, grad_loss):
    """ctx.kept (the gradients made in forward) times the upstream gradient. Real tensors seen by
    no tracer or mode are scaled in place and handed to autograd (ctx.kept becomes None); else
    copies."""
    kept = ctx.kept
    plain = (not torch.compiler.is_compiling() and _get_current_dispatch_mode() is None
             and all(type(t) is torch.Tensor and not t.requires_grad for t in (grad_loss, *kept)))
    if not plain:
        return [g * grad_loss for g in kept]
    ctx.kept = None
    return [_scale_(g, grad_loss) if g.numel() else g for g in kept]


# The three forward ops: (input, weight, bias, the loss's target arguments, reduction, chunk_size,
# need_input, need_weight, need_bias) -> (loss, the gradients of input, weight and bias for an
# upstream of 1, empty where not made). Their target arguments: a dense target or a SparseTargets'
# CSR arrays (the others None), and BCE's pos_weight; in _run's order (target, indices, offsets,
# values, pos_weight), a loss's missing ones being None.
_FORWARD_SCHEMA = ("(Tensor input, Tensor weight, Tensor? bias, {}, SymInt reduction, "
                   "SymInt chunk_size, bool need_input, bool need_weight, bool need_bias) "
                   "-> (Tensor, Tensor, Tensor, Tensor)")
_FORWARD_TARGETS = {BCE: ("linear_bce", "Tensor? target, Tensor? indices, Tensor? offsets, "
                                        "Tensor? values, Tensor? pos_weight"),
                    SOFT_MARGIN: ("linear_soft_margin", "Tensor? target, Tensor? indices, "
                                                        "Tensor? offsets, Tensor? values"),
                    MARGIN: ("linear_margin", "Tensor target")}


def _define_forward(kind, name, targets):
    """The forward op of `kind` with its fake and autograd: (the op, its number of target
    arguments)."""
    n_targets = targets.count(",") + 1

    def split(args):
        """-> input, weight, bias, the five target arguments, reduction, chunk_size, need flags."""
        input, weight, bias, *rest = args
        target_args = (*rest[:n_targets], *(None,) * (5 - n_targets))
        reduction, chunk_size, *need = rest[n_targets:]
        return input, weight, bias, target_args, reduction, chunk_size, tuple(need)

    def forward(*args):
        input, weight, bias, target_args, reduction, chunk_size, need = split(args)
        loss, grads = _run(kind, input, weight, bias, *target_args, reduction, chunk_size, need)
        return (loss, *grads.results(input, weight, bias))

    def fake(*args):
        input, weight, bias, _, reduction, _, need = split(args)
        return (_fake_loss(kind, input, weight, reduction),
                *_fake_grads(input, weight, bias, *need))

    def setup_context(ctx, inputs, output):
        input, weight, bias, target_args, reduction, chunk_size, computed = split(inputs)
        ctx.save_for_backward(input, weight, bias, *target_args)
        ctx.reduction, ctx.chunk_size = reduction, chunk_size
        # The gradients computed in forward, when they cover what backward may need.
        wanted = [isinstance(t, torch.Tensor) and t.requires_grad for t in (input, weight, bias)]
        covered = all(c or not w for c, w in zip(computed, wanted))
        ctx.kept = list(output[1:]) if reduction != NONE and covered else None
        ctx.mark_non_differentiable(*output[1:])
        ctx.set_materialize_grads(False)

    def backward(ctx, grad_loss, *unused):
        input, weight, bias, *target_args = ctx.saved_tensors
        need = ctx.needs_input_grad[:3]
        none = (None,) * (n_targets + 5)
        if grad_loss is None or not any(need):
            return (None, None, None) + none
        if ctx.kept is not None and not torch.is_grad_enabled():
            grads = _scale_kept(ctx, grad_loss)
        else:
            # 'none', a retained graph's second backward (the kept buffers were given away), or
            # create_graph=True (then differentiating the result raises: no double backward).
            grads = torch.ops.multilabel_cuda.linear_loss_backward(
                grad_loss, input, weight, bias, *target_args, kind, ctx.reduction,
                ctx.chunk_size, *need)
        return tuple(g if n else None for g, n in zip(grads, need)) + none

    op = torch.library.custom_op(f"{_LIB}::{name}", forward, mutates_args=(),
                                 schema=_FORWARD_SCHEMA.format(targets))
    op.register_fake(fake)
    op.register_autograd(backward, setup_context=setup_context)
    return op, n_targets


_FORWARD_OPS = {kind: _define_forward(kind, *spec) for kind, spec in _FORWARD_TARGETS.items()}


def _no_double_backward(ctx, *grads):
    raise RuntimeError("multilabel_cuda: the fused linear losses do not support double backward "
                       "(their gradients are not differentiable); use F.linear and the loss "
                       "functions for higher-order gradients")


_linear_loss_backward.register_autograd(_no_double_backward)


def _setup_sgd_output(ctx, inputs, output):
    ctx.kept = [inputs[1]]


def _sgd_output_backward(ctx, grad_loss):
    """The fused update stepped weight and bias with the gradient of an upstream of exactly 1
    (loss.backward()); any other upstream is refused: a scaled loss would have needed a scaled
    step. On CUDA the check is torch._assert_async (no host sync: a device-side assert)."""
    if torch.is_grad_enabled():
        _no_double_backward(ctx)
    torch._assert_async(grad_loss == 1, _UPSTREAM_ERROR)
    if ctx.kept is None:
        raise RuntimeError("multilabel_cuda: backward through a fused-update linear loss a second "
                           "time (retain_graph=True): its SGD step is made once, in forward")
    (gi,) = _scale_kept(ctx, grad_loss)
    return None, None, gi if ctx.needs_input_grad[2] else None, None, None


_UPSTREAM_ERROR = ("multilabel_cuda: a fused-update linear loss (update=...) must be "
                   "backpropagated with an upstream gradient of exactly 1 (loss.backward() on it "
                   "or on a plain sum with it): its SGD step was made in forward with that "
                   "gradient; a scaled loss (loss * k, gradient accumulation, GradScaler) cannot "
                   "be honoured")

_linear_loss_sgd_output.register_autograd(_sgd_output_backward, setup_context=_setup_sgd_output)


# ---- public functions ---------------------------------------------------------------------------

def _check_args(fn, input, weight, bias, chunk_size):
    check_tensor(fn, "input", input)
    check_tensor(fn, "weight", weight)
    if input.dim() != 2:
        fail(fn, f"input must be (N, D), got shape {tuple(input.shape)}")
    if weight.dim() != 2:
        fail(fn, f"weight must be (C, D), got shape {tuple(weight.shape)}")
    if weight.size(1) != input.size(1):
        fail(fn, f"weight has {weight.size(1)} features (shape {tuple(weight.shape)}) but input "
                 f"has {input.size(1)} (shape {tuple(input.shape)})")
    if weight.size(0) == 0:
        fail(fn, "weight must have at least one class (row)")
    if input.dtype not in (torch.float32, torch.float64, torch.float16, torch.bfloat16):
        fail(fn, f"input must be float32, float64, float16 or bfloat16, got {input.dtype}")
    if weight.dtype != input.dtype:
        fail(fn, f"weight has dtype {weight.dtype} but input has dtype {input.dtype}")
    check_same_device(fn, "weight", weight, "input", input)
    if bias is not None:
        if not isinstance(bias, torch.Tensor):
            fail(fn, f"bias must be a Tensor or None, got {type(bias).__name__}")
        if bias.shape != (weight.size(0),):
            fail(fn, f"bias must be (C,) = ({weight.size(0)},), got shape {tuple(bias.shape)}")
        if bias.dtype != input.dtype:
            fail(fn, f"bias has dtype {bias.dtype} but input has dtype {input.dtype}")
        check_same_device(fn, "bias", bias, "input", input)
    if chunk_size is None:
        return default_chunk_size(input.size(0), weight.size(0), input.dtype)
    if isinstance(chunk_size, bool) or not isinstance(chunk_size, int) or chunk_size <= 0:
        fail(fn, f"chunk_size must be a positive int or None, got {chunk_size!r}")
    return chunk_size


def _check_no_grad(fn, name, t):
    if t is not None and torch.is_grad_enabled() and t.requires_grad:
        fail(fn, f"{name} requires grad, but the fused linear losses give no gradient w.r.t. "
                 f"{name}")


def _target_tensors(target):
    """(target, None, None, None) of a dense target, (None, indices, offsets, values) of a
    SparseTargets: the forward ops' target arguments."""
    if isinstance(target, SparseTargets):
        return None, target.indices, target.offsets, target.values
    return target, None, None, None


def _target_parts(fn, target, input, weight, integer_ok):
    """_target_tensors of an (N, C) target or SparseTargets, checked against input and weight."""
    shape = (input.size(0), weight.size(0))
    if isinstance(target, SparseTargets):
        if tuple(target.shape) != shape or target.vector:
            fail(fn, f"target of shape {tuple(target.shape)} does not match (N, C) = {shape}")
        check_same_device(fn, "target", target, "input", input)
        return _target_tensors(target)
    if not isinstance(target, torch.Tensor):
        fail(fn, f"target must be a Tensor or a SparseTargets, got {type(target).__name__}")
    if tuple(target.shape) != shape:
        fail(fn, f"target of shape {tuple(target.shape)} does not match (N, C) = {shape} "
                 "(input's rows, weight's rows)")
    check_same_device(fn, "target", target, "input", input)
    if not (target.is_floating_point() or (integer_ok and not target.is_complex()
                                           and target.dtype != torch.bool)):
        fail(fn, f"target must be a floating-point tensor, got {target.dtype}")
    _check_no_grad(fn, "target", target)
    return _target_tensors(target)


def _margin_target(fn, target, input, weight):
    """The margin loss's (N, K) class indices (a SparseTargets padded), checked."""
    if isinstance(target, SparseTargets):
        _target_parts(fn, target, input, weight, False)
        return target.to_padded()
    if not isinstance(target, torch.Tensor):
        fail(fn, f"target must be a Tensor or a SparseTargets, got {type(target).__name__}")
    if target.dtype == torch.bool or target.is_floating_point() or target.is_complex():
        fail(fn, f"target must be an integer tensor of class indices, got {target.dtype}")
    check_same_device(fn, "target", target, "input", input)
    if not (target.dim() == 2 and target.size(0) == input.size(0)
            and target.size(1) <= weight.size(0)):
        fail(fn, f"target of shape {tuple(target.shape)} does not fit (N, K) with N = "
                 f"{input.size(0)} and K <= C = {weight.size(0)}")
    return target


def _check_pos_weight(fn, pos_weight, input, weight):
    if pos_weight is None:
        return None
    if not isinstance(pos_weight, torch.Tensor):
        fail(fn, f"pos_weight must be a Tensor or None, got {type(pos_weight).__name__}")
    check_same_device(fn, "pos_weight", pos_weight, "input", input)
    shape = (input.size(0), weight.size(0))
    ok = pos_weight.dim() <= 2 and all(a == 1 or a == b for a, b in
                                       zip(reversed(pos_weight.shape), reversed(shape)))
    if not ok:
        fail(fn, f"pos_weight of shape {tuple(pos_weight.shape)} is not broadcastable to "
                 f"(N, C) = {shape}")
    _check_no_grad(fn, "pos_weight", pos_weight)
    return pos_weight


def _needs(input, weight, bias, reduction):
    """Which gradients forward makes: none for reduction 'none', whose backward streams again."""
    on = torch.is_grad_enabled() and reduction != NONE
    return (on and input.requires_grad, on and weight.requires_grad,
            on and bias is not None and bias.requires_grad)


def _sgd_state(fn, update, weight, bias, reduction):
    """For each of weight and bias: (its momentum buffer or None, its _SGDRows fields, or [] when it
    is not stepped: None, not requiring grad, or grad disabled). None when nothing is stepped."""
    if not isinstance(update, torch.optim.SGD):
        fail(fn, f"update must be a torch.optim.SGD (or None), got {type(update).__name__}")
    if reduction == NONE:
        fail(fn, "reduction 'none' cannot be used with update=: the fused SGD step needs the "
                 "gradient of the reduced loss")
    groups = {p: g for g in update.param_groups for p in g["params"]}
    out = []
    for name, p in (("weight", weight), ("bias", bias)):
        if p is None or not (torch.is_grad_enabled() and p.requires_grad):
            out.append((None, []))
            continue
        if p.grad_fn is not None:
            fail(fn, f"{name} must be a leaf tensor (a parameter) to be stepped in place, but it "
                     "is computed from other tensors")
        group = groups.get(p)
        if group is None:
            fail(fn, f"{name} is not a parameter of the update optimizer")
        if p.grad is not None:
            fail(fn, f"{name}.grad is set: update.step() would step {name} a second time; call "
                     "update.zero_grad() (set_to_none=True) before the fused-update loss")
        if group.get("differentiable"):
            fail(fn, "update with differentiable=True is not supported")
        buf = update.state[p].get("momentum_buffer") if group["momentum"] != 0 else None
        first = group["momentum"] != 0 and buf is None
        if first:  # SGD's first step makes the buffer (a clone of the gradient)
            buf = torch.empty_like(p)
        out.append((buf, [float(group["lr"]), group["momentum"], group["dampening"],
                          group["weight_decay"], group["nesterov"], group["maximize"], first]))
    return out if out[0][1] or out[1][1] else None


def _fused_loss(kind, input, weight, target, bias, pos_weight, reduction, chunk_size, update):
    """The public functions' body: the checks, then the forward op of `kind` or, with an update
    optimizer stepping weight or bias, the fused update."""
    fn = _FN_NAMES[kind]
    red = _reduction_code(reduction)
    chunk = _check_args(fn, input, weight, bias, chunk_size)
    if kind == MARGIN:
        target_args = (_margin_target(fn, target, input, weight), None, None, None, None)
    else:
        target_args = (*_target_parts(fn, target, input, weight, kind == SOFT_MARGIN),
                       _check_pos_weight(fn, pos_weight, input, weight))
    state = _sgd_state(fn, update, weight, bias, red) if update is not None else None
    if state is None:
        op, n_targets = _FORWARD_OPS[kind]
        return op(input, weight, bias, *target_args[:n_targets], red, chunk,
                  *_needs(input, weight, bias, red))[0]
    return _sgd_loss(kind, input, weight, bias, target_args, red, chunk, update, state)


def _sgd_loss(kind, input, weight, bias, target_args, reduction, chunk, update, state, shard=None):
    """The fused update's loss, `state` from _sgd_state (not None). shard (label sharding, see
    _stream_margin; weight and bias are a shard's rows): the pass runs eagerly, not as the op,
    whose schema cannot carry the shard's collectives; the loss is this rank's share."""
    (w_buf, w_sgd), (b_buf, b_sgd) = state
    need_input = torch.is_grad_enabled() and input.requires_grad
    args = (input, weight, bias, *target_args, kind, reduction, chunk, need_input, w_buf, b_buf,
            w_sgd, b_sgd)
    with torch.no_grad():  # an optimizer's step: weight and bias are changed outside autograd
        loss, gi = torch.ops.multilabel_cuda.linear_loss_sgd_(*args) if shard is None else \
            _sgd_pass(*args, shard=shard)
    for p, buf, sgd in ((weight, w_buf, w_sgd), (bias, b_buf, b_sgd)):
        if sgd and sgd[-1]:
            update.state[p]["momentum_buffer"] = buf
    return torch.ops.multilabel_cuda.linear_loss_sgd_output(loss, gi, input, weight, bias)


def linear_binary_cross_entropy_with_logits(input, weight, target, bias=None, pos_weight=None,
                                            reduction="mean", chunk_size=None, *, update=None):
    """binary_cross_entropy_with_logits(F.linear(input, weight, bias), target, pos_weight=...,
    reduction=...) without the N x C logits (module docstring). input (N, D), weight (C, D),
    bias (C,) or None, target (N, C) floating or a SparseTargets, pos_weight broadcastable to
    (N, C). float16/bfloat16 input and weight compute in float32. chunk_size: classes per chunk,
    None for ``default_chunk_size``; the result does not depend on it beyond rounding. No gradient
    w.r.t. target or pos_weight.

    update: None, or a ``torch.optim.SGD`` whose param groups hold weight (and bias): the fused
    update. The call then also makes the optimizer's step for weight and bias, a block of rows at a
    time as soon as their gradient exists, so the C x D weight gradient is never stored (memory
    O(N * chunk + N * D) besides the optimizer's momentum buffers). Parameters and momentum
    buffers come out as from ``loss.backward(); update.step()`` on the loss of F.linear (the
    group's lr, momentum, dampening, weight_decay, nesterov, maximize; torch's single-tensor rule,
    in the parameter's dtype, on the gradient rounded to it), with these differences:

    * the step is made in forward: the call is the training step of weight and bias. Under
      torch.no_grad(), or for a parameter that does not require grad, there is no step;
    * weight and bias get no ``.grad``, so ``update.step()`` skips them and steps the optimizer's
      other parameters (the encoder that made input), whose gradients backward gives as usual;
    * the loss must be backpropagated with an upstream gradient of exactly 1 (``loss.backward()``,
      also on a sum with other losses): otherwise backward raises (on CUDA ``torch._assert_async``,
      a device-side assert, to avoid a host sync), as it does for a second backward
      (retain_graph); a scaled loss (loss * k, gradient accumulation, GradScaler) cannot be
      honoured, and reduction 'none' is refused;
    * weight and bias must be leaves that reach the loss only through this call, with ``.grad``
      None (else ``update.step()`` would step them again); an op that saved them for its backward
      (shared weights) raises autograd's error about a tensor modified in place."""
    return _fused_loss(BCE, input, weight, target, bias, pos_weight, reduction, chunk_size, update)


def linear_multilabel_soft_margin_loss(input, weight, target, bias=None, reduction="mean",
                                       chunk_size=None, *, update=None):
    """multilabel_soft_margin_loss(F.linear(input, weight, bias), target, reduction=...) without
    the N x C logits; arguments (update= included) as linear_binary_cross_entropy_with_logits
    (target (N, C) floating or integer 0/1, or a SparseTargets)."""
    return _fused_loss(SOFT_MARGIN, input, weight, target, bias, None, reduction, chunk_size,
                       update)


def linear_multilabel_margin_loss(input, weight, target, bias=None, reduction="mean",
                                  chunk_size=None, *, update=None):
    """multilabel_margin_loss(F.linear(input, weight, bias), target, reduction=...) without the
    N x C logits. target: (N, K) integer class indices with K <= C, a row's positives being those
    before its first -1 (K = C is torch.nn's format), or a SparseTargets (values are ignored). The
    hinge terms are computed per chunk and target slot: O(N * C * K) work, for small K. update: as
    linear_binary_cross_entropy_with_logits; the rows of the batch's positive classes get gradient
    at the end too, so their step waits for it (their gradient kept meanwhile: O(N * K * D); one
    host read of those classes, as the target check makes)."""
    return _fused_loss(MARGIN, input, weight, target, bias, None, reduction, chunk_size, update)


# ---- modules ------------------------------------------------------------------------------------

class _LinearLoss(torch.nn.Module):
    """The fused linear loss `_kind` as a module (pos_weight, BCE's only, is a buffer)."""

    def __init__(self, reduction="mean", chunk_size=None):
        super().__init__()
        _reduction_code(reduction)
        self.reduction, self.chunk_size = reduction, chunk_size

    def forward(self, input, weight, target, bias=None, *, update=None):
        return _fused_loss(self._kind, input, weight, target, bias,
                           getattr(self, "pos_weight", None), self.reduction, self.chunk_size,
                           update)

    def extra_repr(self):
        return f"reduction={self.reduction!r}, chunk_size={self.chunk_size}"


class LinearBCEWithLogitsLoss(_LinearLoss):
    """BCEWithLogitsLoss of ``F.linear(input, weight, bias)``, called as
    ``loss_fn(input, weight, target, bias=None)`` with an existing nn.Linear's parameters;
    ``update=opt`` (a torch.optim.SGD) fuses its step for weight and bias in (see
    linear_binary_cross_entropy_with_logits)."""
    _kind = BCE

    def __init__(self, pos_weight=None, reduction="mean", chunk_size=None):
        super().__init__(reduction, chunk_size)
        self.register_buffer("pos_weight", pos_weight)


class LinearMultiLabelSoftMarginLoss(_LinearLoss):
    """MultiLabelSoftMarginLoss of ``F.linear(input, weight, bias)``, called as
    ``loss_fn(input, weight, target, bias=None)``."""
    _kind = SOFT_MARGIN


class LinearMultiLabelMarginLoss(_LinearLoss):
    """MultiLabelMarginLoss of ``F.linear(input, weight, bias)``, called as
    ``loss_fn(input, weight, target, bias=None)``."""
    _kind = MARGIN
