"""Fused linear + loss: the losses of ``F.linear(input, weight, bias)`` without the N x C logits.

The classes are streamed in chunks. For each chunk: its logits by one GEMM into a reused N x chunk
buffer (float32, or float64 for float64 tensors), the loss and its gradient on them (BCE and soft
margin: the compiled ``multilabel_cuda::bce_chunk_``, which overwrites the logits with their
gradient and reads a SparseTargets' positives straight from its CSR arrays, where the extension has
a kernel for the device, else the reference formulas; margin: torch ops per target slot), then at
once the chunk's gradient contributions: input's accumulated by a GEMM into an (N, D) buffer,
weight's rows and bias's entries written in place. All of it happens in forward when gradients
are needed; backward only scales by the upstream gradient. Memory beyond the parameters
and their gradients is O(N * chunk + N * D), whatever C is (float16/bfloat16 add the chunk's weight
rows in float32, chunk x D; the margin loss adds O(N * K) for K target slots a row).

Autograd goes through torch.library custom ops (``multilabel_cuda::linear_bce``,
``linear_soft_margin``, ``linear_margin``, and ``linear_loss_backward`` for what cannot be a scale):

* reduction 'mean' / 'sum': the forward op returns the three gradients for an upstream of 1 and
  backward scales them (in eager, in place, handing the buffers to autograd);
* reduction 'none' (and a retained graph's second backward, and create_graph=True): the upstream is
  not a scalar, so ``linear_loss_backward`` streams the chunks again with it;
* double backward is refused with an error (``linear_loss_backward`` has no derivative).

The fused SGD update (``update=`` a torch.optim.SGD; the semantics are in
``linear_binary_cross_entropy_with_logits``'s docstring): the same stream, but each block of weight
rows (and bias entries) is stepped by SGD's rule (torch's own, ``_SGDRows``) as soon as its gradient
exists, after the chunk's input gradient used the old rows, so no C x D gradient is ever stored.
Two ops: ``linear_loss_sgd_`` (called under no_grad, like an optimizer's step; it mutates weight,
bias and their momentum buffers) returns the loss and input's gradient, and
``linear_loss_sgd_output`` puts the loss in the autograd graph: its backward checks the upstream is
1 and hands input its gradient; weight and bias get none. Per row the step needs nothing global but
the gradient's scale, so it works on a shard of the classifier's rows as well: with ``shard=``
(multilabel_cuda.distributed) the pass scales for the global class count (``_global_scale``) and
runs eagerly, outside the op.
"""
import bisect

import torch
from torch.optim.sgd import sgd as _torch_sgd
from torch.utils._python_dispatch import _get_current_dispatch_mode

from . import _backend, _ops, reference
from ._errors import LossArgumentError
from ._reduction import NONE, MEAN, SUM, code as _reduction_code

try:
    from .sparse import SparseTargets as _SparseTargets
except ModuleNotFoundError as e:  # multilabel_cuda.sparse not there (yet): dense targets only
    if e.name != f"{__package__}.sparse":
        raise
    _SparseTargets = None

__all__ = ["linear_binary_cross_entropy_with_logits", "linear_multilabel_soft_margin_loss",
           "linear_multilabel_margin_loss", "LinearBCEWithLogitsLoss",
           "LinearMultiLabelSoftMarginLoss", "LinearMultiLabelMarginLoss", "default_chunk_size"]

# Loss kinds, as the ops' `kind` argument.
BCE, SOFT_MARGIN, MARGIN = 0, 1, 2
_FN_NAMES = {BCE: "linear_binary_cross_entropy_with_logits",
             SOFT_MARGIN: "linear_multilabel_soft_margin_loss",
             MARGIN: "linear_multilabel_margin_loss"}

_CHUNK_BYTES = 1 << 23  # logits per chunk: 8 MiB (see default_chunk_size)
_MIN_CHUNK = 256


def default_chunk_size(rows, classes, dtype):
    """The chunk width when ``chunk_size=None``: about 8 MiB of chunk logits,
    ``clamp(2**23 // (rows * itemsize), 256, classes)`` with itemsize 4 (8 for float64): at
    N = 256, 8192 classes. Measured on the shared 2-core CPU (N = D = 256, C = 2^16, float32,
    forward + backward, best of interleaved runs): chunks of 1024 and 2048 columns took about 3.5x
    and 2x the time of 8192 (per-chunk costs: each GEMM and kernel is a parallel region, which a
    busy machine makes expensive), 4096 1.45x, 16384 within 10% of 8192. The logits and
    their gradient (2 x 8 MiB) stay within a last-level cache; the floor of 256 keeps GEMMs wide
    for large N."""
    item = 8 if dtype == torch.float64 else 4
    return max(1, min(classes, max(_MIN_CHUNK, _CHUNK_BYTES // max(1, rows * item))))


def _compute_dtype(dtype):
    return torch.float64 if dtype == torch.float64 else torch.float32


def _is_sparse(target):
    return _SparseTargets is not None and isinstance(target, _SparseTargets)


def _global_scale(kind, reduction, rows, classes):
    """d(loss)/d(summed elementwise loss): 1/C per row for the two per-row losses, then 1/count for
    'mean'. Written once here; the chunk ops always run with reduction 'sum'."""
    scale = 1.0 if kind == BCE else 1.0 / classes
    if reduction == MEAN:
        count = rows * classes if kind == BCE else rows
        scale = scale / count if count else 0.0
    return scale


# ---- per-chunk loss and gradient of the BCE family ----------------------------------------------
# Each overwrites the chunk's logits (N, n) with d sum(loss) / d logits and returns the chunk's
# loss, unscaled (_global_scale is the scale): its sum (reduction SUM), per element (NONE), or per
# row (NONE and per_row).

def _bce_chunk_extension(logits, targets, c0, pos_weight, reduction, per_row):
    """By the compiled op multilabel_cuda::bce_chunk_, which reads a sparse target's positives of
    the chunk from its CSR arrays (no dense chunk target) and a dense one through a view."""
    op = torch.ops.multilabel_cuda.bce_chunk_
    if targets.csr is not None:
        return op(logits, None, *targets.csr, c0, pos_weight, reduction, per_row)
    return op(logits, targets.dense_chunk(c0, logits.size(1)), None, None, None, 0, pos_weight,
              reduction, per_row)


def _bce_chunk_reference(logits, targets, c0, pos_weight, reduction, per_row):
    """The same in plain torch on the densified chunk target: the reference loss, then its
    derivative d/dx of (1 - t) x - (1 + (p - 1) t) log sigmoid(x), (1 + (p - 1) t) sigmoid(x) - p t."""
    target = targets.dense_chunk(c0, logits.size(1))
    loss = reference.binary_cross_entropy_with_logits(logits, target, None, pos_weight, reduction)
    grad = logits.sigmoid_()
    if pos_weight is None:
        grad.sub_(target)
    else:
        grad.mul_((pos_weight - 1) * target + 1).sub_(pos_weight * target)
    return loss.sum(1) if per_row else loss


def _bce_chunk(logits, targets, c0, pos_weight, reduction, per_row):
    if _backend.use_extension("bce_chunk_", logits.device):
        return _bce_chunk_extension(logits, targets, c0, pos_weight, reduction, per_row)
    return _bce_chunk_reference(logits, targets, c0, pos_weight, reduction, per_row)


# ---- the streaming pass -------------------------------------------------------------------------

class _Targets:
    """The target as the chunks need it: a dense (N, C) tensor, or a SparseTargets' CSR arrays
    (indices, offsets, values in the compute dtype) that the chunk op reads as they are."""

    def __init__(self, dense, indices, offsets, values, classes, dtype):
        self.dense, self.dtype = dense, dtype
        self.sparse = self.csr = None
        if indices is not None:
            self.sparse = _SparseTargets.from_csr(indices, offsets, classes, values)
            vals = self.sparse.values
            self.csr = (self.sparse.indices, self.sparse.offsets,
                        None if vals is None else vals.to(dtype))

    def dense_chunk(self, c0, n):
        """Columns [c0, c0 + n) as an (N, n) tensor of the compute dtype (a view when the dense
        target has that dtype; a SparseTargets is densified: the reference's way)."""
        if self.sparse is not None:
            return self.sparse.narrow_classes(c0, n).to_dense(self.dtype)
        return self.dense.narrow(1, c0, n).to(self.dtype)


class _SGDRows:
    """torch.optim.SGD's step on rows of one parameter, made as soon as their gradient exists (the
    fused update). `sgd` is the parameter group's (lr, momentum, dampening, weight_decay, nesterov,
    maximize) and whether the parameter has no momentum buffer yet (its first step), packed by
    ``_sgd_state``. The rule is torch's own, ``torch.optim.sgd.sgd`` in its single-tensor form:
    rows are independent in it, so stepping a parameter a block of rows at a time is its step. The
    gradient is rounded to the parameter's dtype first, as autograd's ``.grad`` would be."""

    def __init__(self, param, momentum_buffer, sgd):
        lr, momentum, dampening, weight_decay, nesterov, maximize, first = sgd
        self.param, self.buf, self.first = param, momentum_buffer, bool(first)
        self.hyper = dict(lr=lr, momentum=momentum, dampening=dampening,
                          weight_decay=weight_decay, nesterov=bool(nesterov),
                          maximize=bool(maximize))

    def _sgd(self, param, grad, buf):
        bufs = [None if self.first else buf]  # None: SGD's first step, buffer = gradient
        _torch_sgd([param], [grad.to(param.dtype)], bufs, foreach=False, **self.hyper)
        if self.first and buf is not None:
            buf.copy_(bufs[0])

    def save(self, idx):
        """Copies of rows `idx` of the parameter and its momentum buffer, for `restore`."""
        return [t.index_select(0, idx) for t in (self.param, self.buf) if t is not None]

    def step_rows(self, r0, m, grad):
        """Steps rows [r0, r0 + m) with their gradient `grad`."""
        self._sgd(self.param.narrow(0, r0, m), grad,
                  self.buf.narrow(0, r0, m) if self.buf is not None else None)

    def step_index(self, idx, grad):
        """Steps the rows `idx` (unique) with their gradient `grad`."""
        p, *b = self.save(idx)
        self._sgd(p, grad, b[0] if b else None)
        self.restore(idx, [p, *b])

    def restore(self, idx, saved):
        for t, s in zip((t for t in (self.param, self.buf) if t is not None), saved):
            t.index_copy_(0, idx, s)


class _Grads:
    """Accumulates the three gradients chunk by chunk. `scale` (a Python float) is folded into the
    GEMMs' alpha; a tensor `upstream` (backward of reduction 'none') multiplies the chunk gradient
    (per row: (N, 1); per element: the chunk's columns of an (N, C) upstream).

    With `update` (an _SGDRows for weight and one for bias, or None): the fused SGD update. The
    weight's and bias's gradients are made a block of rows at a time into block-sized buffers and
    those rows are stepped at once, after the chunk's input gradient used their old values; no
    C x D gradient exists. Rows named by `defer` (the margin loss's positive classes, which get
    more gradient at the end) keep their gradient in a small buffer and are stepped by `finish`."""

    _UPDATE_BYTES = 1 << 20  # the weight gradient of one block of stepped rows: 1 MiB

    def __init__(self, x, input, weight, bias, need, scale, cdt, update=None):
        need_input, need_weight, need_bias = need
        self.x, self.scale, self.cdt = x, scale, cdt
        n_rows, d = x.shape
        self.gi = x.new_zeros(n_rows, d) if need_input else None
        self.up_w, self.up_b = update if update is not None else (None, None)
        self.update = update is not None
        self.gw = self.gb = None
        if self.update:
            self.block = max(1, self._UPDATE_BYTES // (d * x.element_size()))
            self.gw_block = x.new_empty(min(self.block, weight.size(0)), d) if self.up_w else None
            self.gb_block = x.new_empty(min(self.block, weight.size(0))) if self.up_b else None
        else:
            self.gw = torch.empty_like(weight, memory_format=torch.contiguous_format) \
                if need_weight else None
            self.gb = torch.empty_like(bias) if need_bias and bias is not None else None
        self.deferred = self.d_gw = self.d_gb = None
        self.input_dtype = input.dtype
        self._scaled_ones = None

    def any(self):
        return self.gi is not None or self.want_weight() or self.want_bias()

    def want_weight(self):
        return self.gw is not None or self.up_w is not None

    def want_bias(self):
        return self.gb is not None or self.up_b is not None

    def _ones(self, grad):
        if self._scaled_ones is None:
            self._scaled_ones = grad.new_full((grad.size(0),), self.scale)
        return self._scaled_ones

    def add_chunk(self, grad, w_chunk, c0, n):
        """grad: (N, n) d loss / d logits of columns [c0, c0 + n), before `scale`."""
        s = self.scale
        if self.gi is not None:
            self.gi.addmm_(grad, w_chunk, alpha=s)
        if self.update:
            for j0 in range(0, n, self.block):
                m = min(self.block, n - j0)
                g = grad.narrow(1, j0, m)
                gw = self.gw_block.narrow(0, 0, m).addmm_(g.t(), self.x, beta=0, alpha=s) \
                    if self.up_w else None
                gb = torch.mv(g.t(), self._ones(grad), out=self.gb_block.narrow(0, 0, m)) \
                    if self.up_b else None
                self._step(c0 + j0, m, gw, gb)
            return
        if self.gw is not None:
            rows = self.gw.narrow(0, c0, n)
            if rows.dtype == self.cdt:
                rows.addmm_(grad.t(), self.x, beta=0, alpha=s)
            else:
                rows.copy_(torch.mm(grad.t(), self.x).mul_(s))
        if self.gb is not None:  # column sums as a GEMV with the scale folded into its vector
            entries = self.gb.narrow(0, c0, n)
            if entries.dtype == self.cdt:
                torch.mv(grad.t(), self._ones(grad), out=entries)
            else:
                entries.copy_(torch.mv(grad.t(), self._ones(grad)))

    def defer(self, classes):
        """Rows whose step waits for `finish` (fused update): `classes`, any order or repeats."""
        self.deferred = torch.unique(classes)  # sorted
        self._deferred_list = self.deferred.tolist()  # the one host read: bounds of every block
        k = self.deferred.numel()
        self.d_gw = self.x.new_zeros(k, self.x.size(1)) if self.up_w else None
        self.d_gb = self.x.new_zeros(k) if self.up_b else None

    def _step(self, r0, m, gw, gb):
        lo = hi = 0
        if self.deferred is not None:
            lo = bisect.bisect_left(self._deferred_list, r0)
            hi = bisect.bisect_left(self._deferred_list, r0 + m)
        idx = self.deferred[lo:hi] if hi > lo else None
        for sgd, g, dg in ((self.up_w, gw, self.d_gw), (self.up_b, gb, self.d_gb)):
            if sgd is None:
                continue
            if idx is None:
                sgd.step_rows(r0, m, g)
                continue
            dg[lo:hi] = g.index_select(0, idx - r0)  # their gradient so far; their rows kept
            saved = sgd.save(idx)
            sgd.step_rows(r0, m, g)
            sgd.restore(idx, saved)

    def add_rows(self, classes, gw_rows, gb_entries):
        """Adds gradient to weight rows / bias entries `classes` (repeats add up); gw_rows /
        gb_entries are None where that gradient is not wanted."""
        if self.update:
            if self.deferred.numel() == 0:  # no positive row here (a shard): only zeros to add
                return
            pos = torch.searchsorted(self.deferred, classes.contiguous())
            gw, gb = self.d_gw, self.d_gb
        else:
            pos, gw, gb = classes, self.gw, self.gb
        if gw_rows is not None:
            gw.index_add_(0, pos, gw_rows.to(gw.dtype))
        if gb_entries is not None:
            gb.index_add_(0, pos, gb_entries.to(gb.dtype))

    def finish(self):
        """Steps the deferred rows with their whole gradient."""
        if self.deferred is None or self.deferred.numel() == 0:
            return
        if self.up_w is not None:
            self.up_w.step_index(self.deferred, self.d_gw)
        if self.up_b is not None:
            self.up_b.step_index(self.deferred, self.d_gb)

    def results(self, input, weight, bias):
        empty = input.new_empty(0)
        gi = self.gi.to(self.input_dtype) if self.gi is not None else empty
        gw = self.gw if self.gw is not None else weight.new_empty(0)
        gb = self.gb if self.gb is not None else (bias if bias is not None else weight).new_empty(0)
        return gi, gw, gb


def _chunk_upstream(grad, upstream, c0, n):
    if upstream is None:
        return grad
    if upstream.dim() == 2:  # per element ('none' BCE)
        return grad.mul_(upstream.narrow(1, c0, n))
    if upstream.dim() == 1:  # per row ('none' soft margin / margin)
        return grad.mul_(upstream.unsqueeze(1))
    return grad.mul_(upstream)


def _chunks(classes, chunk):
    for c0 in range(0, classes, chunk):
        yield c0, min(chunk, classes - c0)


def _logits(buf, x, weight, bias, c0, n, cdt):
    """One chunk's logits by one GEMM into the reused buffer; returns them and the chunk's weight
    rows in the compute dtype."""
    rows = x.size(0)
    out = buf.narrow(0, 0, rows * n).view(rows, n)
    w = weight.narrow(0, c0, n).to(cdt)
    if bias is not None:
        torch.addmm(bias.narrow(0, c0, n).to(cdt), x, w.t(), out=out)
    else:
        torch.mm(x, w.t(), out=out)
    return out, w


def _stream_bce(kind, input, weight, bias, targets, pos_weight, reduction, chunk, need,
                upstream=None, update=None, shard=None):
    """Loss (in input's dtype) and the gradients (input, weight, bias) for an upstream of 1, or of
    `upstream` when given (then the loss is not needed and not returned). shard (label sharding):
    weight's rows are C_r of shard.classes classes, targets and pos_weight their columns; the
    means are over the global C, so the loss and gradients are this rank's share of the global
    loss's."""
    rows, classes = input.size(0), weight.size(0)
    total = shard.classes if shard is not None else classes
    cdt = _compute_dtype(input.dtype)
    x = input.to(cdt)
    grads = _Grads(x, input, weight, bias, need, _global_scale(kind, reduction, rows, total), cdt,
                   update)
    compute_grad = grads.any()
    pw = pos_weight.to(cdt) if pos_weight is not None else None
    per_element = reduction == NONE and kind == BCE and upstream is None
    per_row = reduction == NONE and kind == SOFT_MARGIN and upstream is None
    if per_element:
        loss = x.new_empty(rows, classes)
    elif per_row:
        loss = x.new_zeros(rows)
    else:
        loss = x.new_zeros(())
    buf = x.new_empty(rows * min(chunk, classes))
    for c0, n in _chunks(classes, chunk):
        logits, w = _logits(buf, x, weight, bias, c0, n, cdt)
        pw_c = pw if pw is None or pw.dim() == 0 or pw.size(-1) == 1 else pw.narrow(-1, c0, n)
        op_red = NONE if per_element or per_row else SUM
        part = _bce_chunk(logits, targets, c0, pw_c, op_red, per_row)  # logits := their gradient
        if per_element:
            loss.narrow(1, c0, n).copy_(part)
        else:
            loss += part
        if compute_grad:
            grads.add_chunk(_chunk_upstream(logits, upstream, c0, n), w, c0, n)
    if kind == SOFT_MARGIN:
        loss /= total
    if reduction == MEAN:
        loss /= rows if kind == SOFT_MARGIN else rows * total
    return loss.to(input.dtype), grads


def _check_margin_target(target, classes):
    """Every entry (also past the first -1) in [-1, C), as native checks."""
    if target.numel() == 0:
        return
    lo, hi = int(target.min()), int(target.max())
    if lo < -1 or hi >= classes:
        bad = lo if lo < -1 else hi
        raise LossArgumentError(f"{_FN_NAMES[MARGIN]}: target index {bad} out of range "
                                f"[-1, {classes})")


def _positives(x, weight, bias, idx, valid, cdt, slot_block):
    """(N, K) scores of each row's target slots (0 where the slot is not valid): K dot products a
    row, gathered in blocks of slots so the gathered weight rows stay O(N * chunk)."""
    rows, k_all = idx.shape
    scores = x.new_zeros(rows, k_all)
    for k0 in range(0, k_all, slot_block):
        k1 = min(k_all, k0 + slot_block)
        w = weight[idx[:, k0:k1]].to(cdt)  # (N, kb, D)
        s = torch.bmm(w, x.unsqueeze(2)).squeeze(2)
        if bias is not None:
            s += bias[idx[:, k0:k1]].to(cdt)
        scores[:, k0:k1] = torch.where(valid[:, k0:k1], s, 0)
    return scores


def _stream_margin(input, weight, bias, target, reduction, chunk, need, upstream=None,
                   update=None, shard=None):
    """Multi-label margin: loss_r = sum_{j target} sum_{i not target} max(0, 1 - x[y_j] + x[i]) / C.
    First the positives' scores, then the chunks: per chunk and target slot, the hinge of every
    column against that slot's score (torch ops, O(N * chunk * K) per chunk: meant for the small K
    of multi-label targets). A column's gradient is its number of active hinges; a positive's is
    minus the number of its active hinges over all chunks, added at the end through its weight row.

    shard (multilabel_cuda.distributed's label sharding): weight holds the global classes
    [shard.start, shard.start + C_r) of shard.classes, target's indices are global, and
    shard.all_reduce sums the positives' scores and hinge counts over the ranks; the loss and
    gradients returned are this rank's share (the caller sums them).
    """
    rows, classes = input.size(0), weight.size(0)
    start, total = (shard.start, shard.classes) if shard is not None else (0, classes)
    cdt = _compute_dtype(input.dtype)
    x = input.to(cdt)
    _check_margin_target(target, total)
    t = target.to(torch.int64)
    valid = torch.cumprod((t != -1).to(torch.int64), dim=1).bool()
    idx = torch.where(valid, t, 0)
    slots = int(valid.sum(1).max()) if valid.numel() else 0  # slots past it are never valid
    idx, valid = idx[:, :slots], valid[:, :slots]
    own = valid & (idx >= start) & (idx < start + classes)  # positives whose row is here
    own_idx = torch.where(own, idx - start, 0)
    grads = _Grads(x, input, weight, bias, need, _global_scale(MARGIN, reduction, rows, total),
                   cdt, update)
    if grads.update:  # a positive's row gets gradient at the end too: stepped then
        grads.defer(own_idx[own])
    compute_grad = grads.any()
    count = compute_grad or shard is not None  # every rank's counts make a shard's positives' grad
    slot_block = max(1, chunk // max(1, input.size(1)))
    scores = _positives(x, weight, bias, own_idx, own, cdt, slot_block)
    if shard is not None:
        shard.all_reduce(scores)
    one_minus = 1 - scores
    row_loss = x.new_zeros(rows)
    counts = x.new_zeros(rows, slots)  # active hinges of each target slot
    hit_buf = torch.empty(rows * min(chunk, classes), dtype=torch.int32, device=x.device)
    buf = x.new_empty(rows * min(chunk, classes))
    for c0, n in _chunks(classes, chunk):
        logits, w = _logits(buf, x, weight, bias, c0, n, cdt)
        local = idx - (start + c0)
        inside = valid & (local >= 0) & (local < n)
        hits = hit_buf.narrow(0, 0, rows * n).view(rows, n).zero_()
        is_target = hits.scatter_add_(1, torch.where(inside, local, 0), inside.to(torch.int32)) > 0
        grad = x.new_zeros(rows, n) if compute_grad else None
        for k in range(slots):
            z = one_minus[:, k:k + 1] + logits
            active = (z > 0) & ~is_target & valid[:, k:k + 1]
            row_loss += torch.where(active, z, 0).sum(1)
            if count:
                a = active.to(cdt)
                if compute_grad:
                    grad += a
                counts[:, k] += a.sum(1)
        if compute_grad:
            grads.add_chunk(_chunk_upstream(grad, upstream, c0, n), w, c0, n)
    if shard is not None and slots:
        shard.all_reduce(counts)
    if compute_grad and slots:
        _add_positive_grads(grads, x, weight, own_idx, own, counts, upstream, slot_block, cdt)
    loss = row_loss / total
    if reduction == MEAN:
        loss = loss.mean()
    elif reduction == SUM:
        loss = loss.sum()
    return loss.to(input.dtype), grads


def _add_positive_grads(grads, x, weight, idx, valid, counts, upstream, slot_block, cdt):
    """The positives' logits have gradient -counts (times scale and a per-row upstream)."""
    g = -counts
    if upstream is not None:
        g = g * (upstream.unsqueeze(1) if upstream.dim() == 1 else upstream)
    g = torch.where(valid, g, 0) * grads.scale
    rows = x.size(0)
    row_ids = torch.arange(rows, device=x.device).unsqueeze(1)
    for k0 in range(0, idx.size(1), slot_block):
        k1 = min(idx.size(1), k0 + slot_block)
        gk, ik = g[:, k0:k1], idx[:, k0:k1]
        if grads.gi is not None:
            grads.gi += torch.bmm(gk.unsqueeze(1), weight[ik].to(cdt)).squeeze(1)
        grads.add_rows(ik.reshape(-1),
                       gk.reshape(-1, 1) * x[row_ids.expand_as(ik).reshape(-1)]
                       if grads.want_weight() else None,
                       gk.reshape(-1) if grads.want_bias() else None)


def _run(kind, input, weight, bias, target, indices, offsets, values, pos_weight, reduction, chunk,
         need, upstream=None, update=None, shard=None):
    with torch.no_grad():
        if kind == MARGIN:
            loss, grads = _stream_margin(input, weight, bias, target, reduction, chunk, need,
                                         upstream, update, shard)
        else:
            targets = _Targets(target, indices, offsets, values, weight.size(0),
                               _compute_dtype(input.dtype))
            loss, grads = _stream_bce(kind, input, weight, bias, targets, pos_weight, reduction,
                                      chunk, need, upstream, update, shard)
        grads.finish()
        return loss, grads


# ---- the ops ------------------------------------------------------------------------------------

_LIB = "multilabel_cuda"


def _forward(kind, input, weight, bias, target, indices, offsets, values, pos_weight, reduction,
             chunk_size, need_input, need_weight, need_bias):
    loss, grads = _run(kind, input, weight, bias, target, indices, offsets, values, pos_weight,
                       reduction, chunk_size, (need_input, need_weight, need_bias))
    return (loss, *grads.results(input, weight, bias))


@torch.library.custom_op(f"{_LIB}::linear_bce", mutates_args=())
def _linear_bce(input: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,
                target: torch.Tensor | None, indices: torch.Tensor | None,
                offsets: torch.Tensor | None, values: torch.Tensor | None,
                pos_weight: torch.Tensor | None, reduction: int, chunk_size: int, need_input: bool,
                need_weight: bool, need_bias: bool
                ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    return _forward(BCE, input, weight, bias, target, indices, offsets, values, pos_weight,
                    reduction, chunk_size, need_input, need_weight, need_bias)


@torch.library.custom_op(f"{_LIB}::linear_soft_margin", mutates_args=())
def _linear_soft_margin(input: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,
                        target: torch.Tensor | None, indices: torch.Tensor | None,
                        offsets: torch.Tensor | None, values: torch.Tensor | None,
                        reduction: int, chunk_size: int, need_input: bool, need_weight: bool,
                        need_bias: bool
                        ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    return _forward(SOFT_MARGIN, input, weight, bias, target, indices, offsets, values, None,
                    reduction, chunk_size, need_input, need_weight, need_bias)


@torch.library.custom_op(f"{_LIB}::linear_margin", mutates_args=())
def _linear_margin(input: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,
                   target: torch.Tensor, reduction: int, chunk_size: int, need_input: bool,
                   need_weight: bool, need_bias: bool
                   ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    return _forward(MARGIN, input, weight, bias, target, None, None, None, None, reduction,
                    chunk_size, need_input, need_weight, need_bias)


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


@torch.library.custom_op(f"{_LIB}::linear_loss_sgd_",
                         mutates_args=("weight", "bias", "weight_momentum", "bias_momentum"))
def _linear_loss_sgd(input: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,
                     target: torch.Tensor | None, indices: torch.Tensor | None,
                     offsets: torch.Tensor | None, values: torch.Tensor | None,
                     pos_weight: torch.Tensor | None, kind: int, reduction: int, chunk_size: int,
                     need_input: bool, weight_momentum: torch.Tensor | None,
                     bias_momentum: torch.Tensor | None, weight_sgd: list[float],
                     bias_sgd: list[float]) -> tuple[torch.Tensor, torch.Tensor]:
    """The loss with the SGD step of weight and bias fused in: returns (loss, input's gradient for
    an upstream of 1) and steps weight (bias) in place when weight_sgd (bias_sgd) is not empty
    (_SGDRows's fields), their momentum buffers with them."""
    return _sgd_pass(input, weight, bias, target, indices, offsets, values, pos_weight, kind,
                     reduction, chunk_size, need_input, weight_momentum, bias_momentum, weight_sgd,
                     bias_sgd)


def _sgd_pass(input, weight, bias, target, indices, offsets, values, pos_weight, kind, reduction,
              chunk_size, need_input, weight_momentum, bias_momentum, weight_sgd, bias_sgd,
              shard=None):
    """linear_loss_sgd_'s body; with `shard` (label sharding, _stream_margin), called eagerly."""
    update = (_SGDRows(weight, weight_momentum, weight_sgd) if weight_sgd else None,
              _SGDRows(bias, bias_momentum, bias_sgd) if bias_sgd and bias is not None else None)
    loss, grads = _run(kind, input, weight, bias, target, indices, offsets, values, pos_weight,
                       reduction, chunk_size, (need_input, False, False), update=update,
                       shard=shard)
    return loss, grads.results(input, weight, bias)[0]


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


@_linear_bce.register_fake
def _(input, weight, bias, target, indices, offsets, values, pos_weight, reduction, chunk_size,
      need_input, need_weight, need_bias):
    return (_fake_loss(BCE, input, weight, reduction),
            *_fake_grads(input, weight, bias, need_input, need_weight, need_bias))


@_linear_soft_margin.register_fake
def _(input, weight, bias, target, indices, offsets, values, reduction, chunk_size, need_input,
      need_weight, need_bias):
    return (_fake_loss(SOFT_MARGIN, input, weight, reduction),
            *_fake_grads(input, weight, bias, need_input, need_weight, need_bias))


@_linear_margin.register_fake
def _(input, weight, bias, target, reduction, chunk_size, need_input, need_weight, need_bias):
    return (_fake_loss(MARGIN, input, weight, reduction),
            *_fake_grads(input, weight, bias, need_input, need_weight, need_bias))


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


def _plain(*tensors):
    """Real tensors seen by no tracer or mode: backward may scale the kept buffers in place."""
    return (not torch.compiler.is_compiling() and _get_current_dispatch_mode() is None
            and all(type(t) is torch.Tensor and not t.requires_grad for t in tensors))


def _scale_(grad, upstream):
    """grad *= upstream in place; the extension's _scale_grad_ skips loss.backward()'s exact 1
    (a whole C x D pass) without a host read on CUDA."""
    has_kernel = _ops.AVAILABLE and torch._C._dispatch_has_kernel_for_dispatch_key(
        "multilabel_cuda::_scale_grad_", grad.device.type.upper())
    if has_kernel and upstream.dtype == grad.dtype:
        torch.ops.multilabel_cuda._scale_grad_(grad, upstream)
        return grad
    return grad.mul_(upstream)


def _make_autograd(kind, n_args):
    """setup_context and backward of a forward op. Argument order: input, weight, bias, then the
    target tensors (and pos_weight), then reduction, chunk_size and the three need flags."""

    def split(inputs):
        input, weight, bias = inputs[:3]
        rest = inputs[3:-5]
        reduction, chunk_size = inputs[-5], inputs[-4]
        if kind == MARGIN:
            target_args = (rest[0], None, None, None, None)
        elif kind == BCE:
            target_args = tuple(rest)  # target, indices, offsets, values, pos_weight
        else:
            target_args = (*rest, None)
        return input, weight, bias, target_args, reduction, chunk_size

    def setup_context(ctx, inputs, output):
        input, weight, bias, target_args, reduction, chunk_size = split(inputs)
        ctx.save_for_backward(input, weight, bias, *target_args)
        ctx.reduction, ctx.chunk_size = reduction, chunk_size
        # The gradients computed in forward, when they cover what backward may need.
        computed = inputs[-3:]
        wanted = [isinstance(t, torch.Tensor) and t.requires_grad for t in (input, weight, bias)]
        covered = all(c or not w for c, w in zip(computed, wanted))
        ctx.kept = list(output[1:]) if reduction != NONE and covered else None
        ctx.mark_non_differentiable(*output[1:])
        ctx.set_materialize_grads(False)

    def backward(ctx, grad_loss, *unused):
        input, weight, bias, *target_args = ctx.saved_tensors
        need = ctx.needs_input_grad[:3]
        none = (None,) * (n_args - 3)
        if grad_loss is None or not any(need):
            return (None, None, None) + none
        if ctx.kept is not None and not torch.is_grad_enabled():
            kept, ctx.kept = ctx.kept, None
            if _plain(grad_loss, *kept):  # give the buffers away, scaled in place
                grads = [_scale_(g, grad_loss) if g.numel() else g for g in kept]
            else:
                grads = [g * grad_loss for g in kept]
                ctx.kept = kept
        else:
            # 'none', a retained graph's second backward (the kept buffers were given away), or
            # create_graph=True (then differentiating the result raises: no double backward).
            grads = torch.ops.multilabel_cuda.linear_loss_backward(
                grad_loss, input, weight, bias, *target_args, kind, ctx.reduction,
                ctx.chunk_size, *need)
        return tuple(g if n else None for g, n in zip(grads, need)) + none

    return setup_context, backward


for _op, _kind, _n in ((_linear_bce, BCE, 13), (_linear_soft_margin, SOFT_MARGIN, 12),
                       (_linear_margin, MARGIN, 9)):
    _setup, _backward_fn = _make_autograd(_kind, _n)
    _op.register_autograd(_backward_fn, setup_context=_setup)


def _no_double_backward(ctx, *grads):
    raise RuntimeError("multilabel_cuda: the fused linear losses do not support double backward "
                       "(their gradients are not differentiable); use F.linear and the loss "
                       "functions for higher-order gradients")


def _setup_backward(ctx, inputs, output):
    pass


_linear_loss_backward.register_autograd(_no_double_backward, setup_context=_setup_backward)


def _setup_sgd_output(ctx, inputs, output):
    ctx.kept = inputs[1]


def _sgd_output_backward(ctx, grad_loss):
    """The fused update stepped weight and bias with the gradient of an upstream of exactly 1
    (loss.backward()); any other upstream is refused: a scaled loss would have needed a scaled
    step. On CUDA the check is torch._assert_async (no host sync: a device-side assert)."""
    if torch.is_grad_enabled():
        _no_double_backward(ctx)
    torch._assert_async(grad_loss == 1, _UPSTREAM_ERROR)
    kept = ctx.kept
    if kept is None:
        raise RuntimeError("multilabel_cuda: backward through a fused-update linear loss a second "
                           "time (retain_graph=True): its SGD step is made once, in forward")
    if _plain(grad_loss, kept):
        ctx.kept = None
        gi = _scale_(kept, grad_loss) if kept.numel() else kept
    else:
        gi = kept * grad_loss
    return None, None, gi if ctx.needs_input_grad[2] else None, None, None


_UPSTREAM_ERROR = ("multilabel_cuda: a fused-update linear loss (update=...) must be "
                   "backpropagated with an upstream gradient of exactly 1 (loss.backward() on it "
                   "or on a plain sum with it): its SGD step was made in forward with that "
                   "gradient; a scaled loss (loss * k, gradient accumulation, GradScaler) cannot "
                   "be honoured")

_linear_loss_sgd_output.register_autograd(_sgd_output_backward, setup_context=_setup_sgd_output)


# ---- public functions ---------------------------------------------------------------------------

def _fail(fn, msg):
    raise LossArgumentError(f"{fn}: {msg}")


def _check_args(fn, input, weight, bias, chunk_size):
    for name, t in (("input", input), ("weight", weight)):
        if not isinstance(t, torch.Tensor):
            _fail(fn, f"{name} must be a Tensor, got {type(t).__name__}")
        if t.layout != torch.strided:
            _fail(fn, f"{name} must be a dense (strided) tensor, got layout {t.layout}")
    if input.dim() != 2:
        _fail(fn, f"input must be (N, D), got shape {tuple(input.shape)}")
    if weight.dim() != 2:
        _fail(fn, f"weight must be (C, D), got shape {tuple(weight.shape)}")
    if weight.size(1) != input.size(1):
        _fail(fn, f"weight has {weight.size(1)} features (shape {tuple(weight.shape)}) but input "
                  f"has {input.size(1)} (shape {tuple(input.shape)})")
    if weight.size(0) == 0:
        _fail(fn, "weight must have at least one class (row)")
    if input.dtype not in (torch.float32, torch.float64, torch.float16, torch.bfloat16):
        _fail(fn, f"input must be float32, float64, float16 or bfloat16, got {input.dtype}")
    if weight.dtype != input.dtype:
        _fail(fn, f"weight has dtype {weight.dtype} but input has dtype {input.dtype}")
    if weight.device != input.device:
        _fail(fn, f"weight is on {weight.device} but input is on {input.device}")
    if bias is not None:
        if not isinstance(bias, torch.Tensor):
            _fail(fn, f"bias must be a Tensor or None, got {type(bias).__name__}")
        if bias.shape != (weight.size(0),):
            _fail(fn, f"bias must be (C,) = ({weight.size(0)},), got shape {tuple(bias.shape)}")
        if bias.dtype != input.dtype:
            _fail(fn, f"bias has dtype {bias.dtype} but input has dtype {input.dtype}")
        if bias.device != input.device:
            _fail(fn, f"bias is on {bias.device} but input is on {input.device}")
    if chunk_size is None:
        return default_chunk_size(input.size(0), weight.size(0), input.dtype)
    if isinstance(chunk_size, bool) or not isinstance(chunk_size, int) or chunk_size <= 0:
        _fail(fn, f"chunk_size must be a positive int or None, got {chunk_size!r}")
    return chunk_size


def _check_no_grad(fn, name, t):
    if t is not None and torch.is_grad_enabled() and t.requires_grad:
        _fail(fn, f"{name} requires grad, but the fused linear losses give no gradient w.r.t. "
                  f"{name}")


def _sparse_parts(fn, target, input, weight):
    """(indices, offsets, values) of a SparseTargets, checked against input and weight."""
    shape = (input.size(0), weight.size(0))
    if tuple(target.shape) != shape or getattr(target, "vector", False):
        _fail(fn, f"target of shape {tuple(target.shape)} does not match (N, C) = {shape}")
    if target.device != input.device:
        _fail(fn, f"target is on {target.device} but input is on {input.device}")
    return target.indices, target.offsets, target.values


def _dense_target(fn, target, input, weight, integer_ok):
    if not isinstance(target, torch.Tensor):
        _fail(fn, f"target must be a Tensor or a SparseTargets, got {type(target).__name__}")
    shape = (input.size(0), weight.size(0))
    if tuple(target.shape) != shape:
        _fail(fn, f"target of shape {tuple(target.shape)} does not match (N, C) = {shape} "
                  "(input's rows, weight's rows)")
    if target.device != input.device:
        _fail(fn, f"target is on {target.device} but input is on {input.device}")
    if not (target.is_floating_point() or (integer_ok and not target.is_complex()
                                           and target.dtype != torch.bool)):
        _fail(fn, f"target must be a floating-point tensor, got {target.dtype}")
    _check_no_grad(fn, "target", target)
    return target


def _needs(input, weight, bias, reduction):
    """Which gradients forward makes: none for reduction 'none', whose backward streams again."""
    on = torch.is_grad_enabled() and reduction != NONE
    return (on and input.requires_grad, on and weight.requires_grad,
            on and bias is not None and bias.requires_grad)


def _sgd_state(fn, update, weight, bias, reduction):
    """For each of weight and bias: (its momentum buffer or None, its _SGDRows fields, or [] when it
    is not stepped: None, not requiring grad, or grad disabled). None when nothing is stepped."""
    if not isinstance(update, torch.optim.SGD):
        _fail(fn, f"update must be a torch.optim.SGD (or None), got {type(update).__name__}")
    if reduction == NONE:
        _fail(fn, "reduction 'none' cannot be used with update=: the fused SGD step needs the "
                  "gradient of the reduced loss")
    groups = {p: g for g in update.param_groups for p in g["params"]}
    out = []
    for name, p in (("weight", weight), ("bias", bias)):
        if p is None or not (torch.is_grad_enabled() and p.requires_grad):
            out.append((None, []))
            continue
        if p.grad_fn is not None:
            _fail(fn, f"{name} must be a leaf tensor (a parameter) to be stepped in place, but it "
                      "is computed from other tensors")
        group = groups.get(p)
        if group is None:
            _fail(fn, f"{name} is not a parameter of the update optimizer")
        if p.grad is not None:
            _fail(fn, f"{name}.grad is set: update.step() would step {name} a second time; call "
                      "update.zero_grad() (set_to_none=True) before the fused-update loss")
        if group.get("differentiable"):
            _fail(fn, "update with differentiable=True is not supported")
        buf = update.state[p].get("momentum_buffer") if group["momentum"] != 0 else None
        first = group["momentum"] != 0 and buf is None
        if first:  # SGD's first step makes the buffer (a clone of the gradient)
            buf = torch.empty_like(p)
        out.append((buf, [float(group["lr"]), group["momentum"], group["dampening"],
                          group["weight_decay"], group["nesterov"], group["maximize"], first]))
    return out if out[0][1] or out[1][1] else None


def _loss(fn, kind, input, weight, bias, target_args, reduction, chunk, update):
    """The public functions' call: the forward op of `kind` or, with an update optimizer stepping
    weight or bias, the fused update. target_args: (target, indices, offsets, values,
    pos_weight), None where the loss has no such argument."""
    state = _sgd_state(fn, update, weight, bias, reduction) if update is not None else None
    if state is None:
        op, n_target = {BCE: (torch.ops.multilabel_cuda.linear_bce, 5),
                        SOFT_MARGIN: (torch.ops.multilabel_cuda.linear_soft_margin, 4),
                        MARGIN: (torch.ops.multilabel_cuda.linear_margin, 1)}[kind]
        return op(input, weight, bias, *target_args[:n_target], reduction, chunk,
                  *_needs(input, weight, bias, reduction))[0]
    return _sgd_loss(kind, input, weight, bias, target_args, reduction, chunk, update, state)


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
    fn = _FN_NAMES[BCE]
    red = _reduction_code(reduction)
    chunk = _check_args(fn, input, weight, bias, chunk_size)
    if _is_sparse(target):
        dense, (indices, offsets, values) = None, _sparse_parts(fn, target, input, weight)
    else:
        dense, indices, offsets, values = _dense_target(fn, target, input, weight, False), \
            None, None, None
    if pos_weight is not None:
        if not isinstance(pos_weight, torch.Tensor):
            _fail(fn, f"pos_weight must be a Tensor or None, got {type(pos_weight).__name__}")
        if pos_weight.device != input.device:
            _fail(fn, f"pos_weight is on {pos_weight.device} but input is on {input.device}")
        shape = (input.size(0), weight.size(0))
        ok = pos_weight.dim() <= 2 and all(a == 1 or a == b for a, b in
                                           zip(reversed(pos_weight.shape), reversed(shape)))
        if not ok:
            _fail(fn, f"pos_weight of shape {tuple(pos_weight.shape)} is not broadcastable to "
                      f"(N, C) = {shape}")
        _check_no_grad(fn, "pos_weight", pos_weight)
    return _loss(fn, BCE, input, weight, bias, (dense, indices, offsets, values, pos_weight), red,
                 chunk, update)


def linear_multilabel_soft_margin_loss(input, weight, target, bias=None, reduction="mean",
                                       chunk_size=None, *, update=None):
    """multilabel_soft_margin_loss(F.linear(input, weight, bias), target, reduction=...) without
    the N x C logits; arguments (update= included) as linear_binary_cross_entropy_with_logits
    (target (N, C) floating or integer 0/1, or a SparseTargets)."""
    fn = _FN_NAMES[SOFT_MARGIN]
    red = _reduction_code(reduction)
    chunk = _check_args(fn, input, weight, bias, chunk_size)
    if _is_sparse(target):
        dense, (indices, offsets, values) = None, _sparse_parts(fn, target, input, weight)
    else:
        dense, indices, offsets, values = _dense_target(fn, target, input, weight, True), \
            None, None, None
    return _loss(fn, SOFT_MARGIN, input, weight, bias, (dense, indices, offsets, values, None),
                 red, chunk, update)


def linear_multilabel_margin_loss(input, weight, target, bias=None, reduction="mean",
                                  chunk_size=None, *, update=None):
    """multilabel_margin_loss(F.linear(input, weight, bias), target, reduction=...) without the
    N x C logits. target: (N, K) integer class indices with K <= C, a row's positives being those
    before its first -1 (K = C is torch.nn's format), or a SparseTargets (values are ignored). The
    hinge terms are computed per chunk and target slot: O(N * C * K) work, for small K. update: as
    linear_binary_cross_entropy_with_logits; the rows of the batch's positive classes get gradient
    at the end too, so their step waits for it (their gradient kept meanwhile: O(N * K * D); one
    host read of those classes, as the target check makes)."""
    fn = _FN_NAMES[MARGIN]
    red = _reduction_code(reduction)
    chunk = _check_args(fn, input, weight, bias, chunk_size)
    if _is_sparse(target):
        _sparse_parts(fn, target, input, weight)
        target = target.to_padded()
    else:
        if not isinstance(target, torch.Tensor):
            _fail(fn, f"target must be a Tensor or a SparseTargets, got {type(target).__name__}")
        if target.dtype == torch.bool or target.is_floating_point() or target.is_complex():
            _fail(fn, f"target must be an integer tensor of class indices, got {target.dtype}")
        if target.device != input.device:
            _fail(fn, f"target is on {target.device} but input is on {input.device}")
        if not (target.dim() == 2 and target.size(0) == input.size(0)
                and target.size(1) <= weight.size(0)):
            _fail(fn, f"target of shape {tuple(target.shape)} does not fit (N, K) with N = "
                      f"{input.size(0)} and K <= C = {weight.size(0)}")
    return _loss(fn, MARGIN, input, weight, bias, (target, None, None, None, None), red, chunk,
                 update)


# ---- modules ------------------------------------------------------------------------------------

class _LinearLoss(torch.nn.Module):
    def __init__(self, reduction="mean", chunk_size=None):
        super().__init__()
        _reduction_code(reduction)
        self.reduction, self.chunk_size = reduction, chunk_size

    def extra_repr(self):
        return f"reduction={self.reduction!r}, chunk_size={self.chunk_size}"


class LinearBCEWithLogitsLoss(_LinearLoss):
    """BCEWithLogitsLoss of ``F.linear(input, weight, bias)``, called as
    ``loss_fn(input, weight, target, bias=None)`` with an existing nn.Linear's parameters;
    ``update=opt`` (a torch.optim.SGD) fuses its step for weight and bias in (see
    linear_binary_cross_entropy_with_logits)."""

    def __init__(self, pos_weight=None, reduction="mean", chunk_size=None):
        super().__init__(reduction, chunk_size)
        self.register_buffer("pos_weight", pos_weight)

    def forward(self, input, weight, target, bias=None, *, update=None):
        return linear_binary_cross_entropy_with_logits(input, weight, target, bias,
                                                       self.pos_weight, self.reduction,
                                                       self.chunk_size, update=update)


class LinearMultiLabelSoftMarginLoss(_LinearLoss):
    """MultiLabelSoftMarginLoss of ``F.linear(input, weight, bias)``, called as
    ``loss_fn(input, weight, target, bias=None)``."""

    def forward(self, input, weight, target, bias=None, *, update=None):
        return linear_multilabel_soft_margin_loss(input, weight, target, bias, self.reduction,
                                                  self.chunk_size, update=update)


class LinearMultiLabelMarginLoss(_LinearLoss):
    """MultiLabelMarginLoss of ``F.linear(input, weight, bias)``, called as
    ``loss_fn(input, weight, target, bias=None)``."""

    def forward(self, input, weight, target, bias=None, *, update=None):
        return linear_multilabel_margin_loss(input, weight, target, bias, self.reduction,
                                             self.chunk_size, update=update)
