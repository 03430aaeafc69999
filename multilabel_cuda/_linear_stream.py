"""The streaming pass of the fused linear losses (the scheme: docs/design.md, "Large label
spaces"): classes in chunks, each chunk's logits by one GEMM into a reused buffer (float32, or
float64 for float64 tensors), its loss and gradient in place (``multilabel_cuda::bce_chunk_`` or the
reference formulas; the margin loss by torch ops per target slot), then at once the chunk's
gradient contributions (_Grads), or, with the fused update, SGD's step on the chunk's rows
(_SGDRows). Memory beyond the parameters and their gradients: O(N * chunk + N * D); float16/bfloat16
add the chunk's weight rows in float32 (chunk x D), the margin loss O(N * K) for K target slots a
row. The scale rule of the three losses is written once here (_global_scale). linear.py wraps the
pass in torch.library ops; multilabel_cuda.distributed runs it on one rank's shard of the classes
(``shard=``)."""
import bisect

import torch
from torch.optim.sgd import sgd as _torch_sgd

from . import _backend, reference
from ._errors import LossArgumentError
from ._reduction import NONE, MEAN, SUM
from .sparse import SparseTargets

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
    N = 256, 8192 classes. Narrower chunks pay the per-chunk costs more often (docs/performance.md,
    "Fused linear chunk width"); the logits and their gradient (2 x 8 MiB) stay within a last-level
    cache; the floor of 256 keeps GEMMs wide for large N."""
    item = 8 if dtype == torch.float64 else 4
    return max(1, min(classes, max(_MIN_CHUNK, _CHUNK_BYTES // max(1, rows * item))))


def _compute_dtype(dtype):
    return torch.float64 if dtype == torch.float64 else torch.float32


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
    derivative d/dx of (1 - t) x - (1 + (p - 1) t) log sigmoid(x),
    (1 + (p - 1) t) sigmoid(x) - p t."""
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
            self.sparse = SparseTargets.from_csr(indices, offsets, classes, values)
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

    def __init__(self, x, weight, bias, need, scale, update=None):
        need_input, need_weight, need_bias = need
        self.x, self.scale, self.cdt = x, scale, x.dtype
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
        for sgd, grad in ((self.up_w, self.d_gw), (self.up_b, self.d_gb)):
            if sgd is not None:
                sgd.step_index(self.deferred, grad)

    def results(self, input, weight, bias):
        gi = self.gi.to(input.dtype) if self.gi is not None else input.new_empty(0)
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


def _chunk_logits(x, weight, bias, chunk):
    """(c0, n, logits, w) of each chunk of classes [c0, c0 + n): its (N, n) logits by one GEMM into
    one reused buffer, and its weight rows in the compute dtype (x's)."""
    rows, classes = x.size(0), weight.size(0)
    buf = x.new_empty(rows * min(chunk, classes))
    for c0 in range(0, classes, chunk):
        n = min(chunk, classes - c0)
        logits = buf.narrow(0, 0, rows * n).view(rows, n)
        w = weight.narrow(0, c0, n).to(x.dtype)
        if bias is not None:
            torch.addmm(bias.narrow(0, c0, n).to(x.dtype), x, w.t(), out=logits)
        else:
            torch.mm(x, w.t(), out=logits)
        yield c0, n, logits, w


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
    grads = _Grads(x, weight, bias, need, _global_scale(kind, reduction, rows, total), update)
    compute_grad = grads.any()
    pw = pos_weight.to(cdt) if pos_weight is not None else None
    per_element = reduction == NONE and kind == BCE and upstream is None
    per_row = reduction == NONE and kind == SOFT_MARGIN and upstream is None
    loss = x.new_empty(rows, classes) if per_element else x.new_zeros((rows,) if per_row else ())
    op_red = NONE if per_element or per_row else SUM
    for c0, n, logits, w in _chunk_logits(x, weight, bias, chunk):
        pw_c = pw if pw is None or pw.dim() == 0 or pw.size(-1) == 1 else pw.narrow(-1, c0, n)
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
    grads = _Grads(x, weight, bias, need, _global_scale(MARGIN, reduction, rows, total), update)
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
    for c0, n, logits, w in _chunk_logits(x, weight, bias, chunk):
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
