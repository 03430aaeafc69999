"""Label-sharded fused linear losses over torch.distributed: a classifier larger than one device.

Each rank of a process group holds a contiguous, possibly uneven, block of the classifier's rows:
``weight[start:stop]`` (C_r x D), the same entries of ``bias`` and ``pos_weight``. The batch is
either the same on every rank (``batch="replicated"``) or each rank's own rows
(``batch="data_parallel"``: gathered inside, the input gradient returned to its owner). Targets
carry global class indices (dense (N, C) or a SparseTargets) and are cut to each shard without an
N x C anything. Every rank gets the global loss; backward gives each rank the gradient of its input
rows and of its own weight/bias shard. The weight may also be a DTensor sharded ``Shard(0)`` on a
1-D mesh.

How each loss is split, the collectives (Megatron-style autograd Functions) and the fused update
on a shard: docs/design.md, "Label sharding". Every call starts with one small all_gather of each
rank's argument summary, from which every rank takes the same decision: a bad argument on any rank
raises LossArgumentError on all ranks instead of leaving the others waiting in a collective.
"""
import torch
import torch.distributed as dist
import torch.nn.functional as F

from . import _linear_stream, linear as _linear
from ._errors import check_same_device, fail
from ._reduction import NONE, MEAN, code as _reduction_code
from .metrics import linear_topk, precision_at_k
from .sparse import SparseTargets

try:
    from torch.distributed.tensor import DTensor, Shard
except ImportError:  # torch without DTensor
    DTensor = Shard = None

__all__ = ["sharded_linear_binary_cross_entropy_with_logits",
           "sharded_linear_multilabel_soft_margin_loss", "sharded_linear_multilabel_margin_loss",
           "ShardedLinearBCEWithLogitsLoss", "ShardedLinearMultiLabelSoftMarginLoss",
           "ShardedLinearMultiLabelMarginLoss", "sharded_linear_topk", "sharded_precision_at_k",
           "class_ranges"]

BCE, SOFT_MARGIN, MARGIN, TOPK = _linear.BCE, _linear.SOFT_MARGIN, _linear.MARGIN, 3
_BATCHES = ("replicated", "data_parallel")
_DTYPES = (torch.float32, torch.float64, torch.float16, torch.bfloat16, torch.uint8, torch.int8,
           torch.int16, torch.int32, torch.int64, torch.bool)


def _dtype_code(t):
    return _DTYPES.index(t.dtype) if isinstance(t, torch.Tensor) and t.dtype in _DTYPES else -1


def class_ranges(num_classes, world_size):
    """[(start, stop)] of each rank when C classes are split as torch.chunk (and DTensor's Shard(0))
    does: ceil(C / W) rows a rank, the last ranks fewer (possibly none)."""
    size = -(-num_classes // world_size)
    return [(min(r * size, num_classes), min((r + 1) * size, num_classes))
            for r in range(world_size)]


# ---- collectives with their derivatives (Megatron's mappings) ------------------------------------

class _CopyToRegion(torch.autograd.Function):
    """Identity forward; backward sums the input gradient over the ranks (each gave its classes'
    share)."""

    @staticmethod
    def forward(ctx, x, group):
        ctx.group = group
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad):
        grad = grad.contiguous().clone()
        dist.all_reduce(grad, group=ctx.group)
        return grad, None


class _SumOverRanks(torch.autograd.Function):
    """all_reduce(sum) forward; backward passes the upstream through: every rank backpropagates
    the same global loss into its own partial."""

    @staticmethod
    def forward(ctx, t, group):
        t = t.clone()
        dist.all_reduce(t, group=group)
        return t

    @staticmethod
    def backward(ctx, grad):
        return grad, None


def _pad_rows(t, most):
    pad = t.new_zeros((most,) + tuple(t.shape[1:]))
    pad[:t.size(0)] = t
    return pad


def _gather_rows(t, rows, group):
    """Every rank's t (rows[r] x ...) stacked in rank order; all_gather pads to the largest."""
    pad = _pad_rows(t, max(rows))
    parts = [torch.empty_like(pad) for _ in rows]
    dist.all_gather(parts, pad, group=group)
    return torch.cat([p[:n] for p, n in zip(parts, rows)])


class _GatherRows(torch.autograd.Function):
    """The data-parallel input: all ranks' rows; backward reduce-scatters, each rank receiving the
    summed gradient of its own rows."""

    @staticmethod
    def forward(ctx, x, rows, rank, group):
        ctx.rows, ctx.rank, ctx.group = rows, rank, group
        return _gather_rows(x, rows, group)

    @staticmethod
    def backward(ctx, grad):
        parts = [_pad_rows(g, max(ctx.rows)) for g in grad.split(ctx.rows)]
        out = torch.empty_like(parts[0])
        dist.reduce_scatter(out, parts, group=ctx.group)
        return out[:ctx.rows[ctx.rank]], None, None, None


def _exchange_columns(target, rows, ranges, rank, group):
    """Data-parallel dense target: this rank's columns [start, stop) of every rank's rows, by one
    all_to_all (rank r sends its rows' block of each rank's columns; N x C_r elements arrive)."""
    send = torch.cat([target[:, a:b].reshape(-1) for a, b in ranges])
    a, b = ranges[rank]
    recv = target.new_empty(sum(rows) * (b - a))
    dist.all_to_all_single(recv, send, [n * (b - a) for n in rows],
                           [rows[rank] * (e - s) for s, e in ranges], group=group)
    return recv.view(sum(rows), b - a)


def _gather_sparse(target, rows, nnz, group):
    """Data-parallel SparseTargets: every rank's rows (CSR pieces padded to the largest nnz)."""
    counts = target.offsets[1:] - target.offsets[:-1]
    counts = _gather_rows(counts, rows, group)
    pick = torch.cat([torch.arange(n, device=counts.device) + i * max(nnz)
                      for i, n in enumerate(nnz)])
    padded = [max(nnz)] * len(nnz)
    indices = _gather_rows(target.indices, padded, group)[pick]
    values = None if target.values is None else _gather_rows(target.values, padded, group)[pick]
    offsets = torch.zeros(counts.numel() + 1, dtype=torch.int64, device=counts.device)
    torch.cumsum(counts, 0, out=offsets[1:])
    return SparseTargets._new(indices, offsets, values, target.num_classes, False)


# ---- the agreement: one all_gather of every rank's argument summary ------------------------------

# Summary fields. Those in _SAME must be equal on all ranks.
_FIELDS = ("error", "kind", "reduction", "batch", "dtype", "features", "bias", "pos_weight",
           "input_grad", "target_kind", "target_dtype", "target_values", "range_given", "start",
           "stop", "shard_rows", "rows", "target_classes", "target_min", "target_max", "nnz",
           "slots", "dtensor_classes", "k", "update")
_SAME = ("kind", "reduction", "batch", "dtype", "features", "bias", "pos_weight", "input_grad",
         "target_kind", "target_dtype", "target_values", "range_given", "k", "update")
_F = {name: i for i, name in enumerate(_FIELDS)}


class _Plan:
    """What every rank agreed on: the ranges of all ranks, their rows, and this rank's place."""

    def __init__(self, group, rank, ranges, rows, classes, slots, nnz):
        self.group, self.rank, self.ranges, self.rows = group, rank, ranges, rows
        self.classes, self.slots, self.nnz = classes, slots, nnz
        self.start, stop = ranges[rank]
        self.length = stop - self.start

    def all_reduce(self, t):  # the margin stream's hook (_linear_stream._stream_margin's `shard`)
        dist.all_reduce(t, group=self.group)


def _agree(fn, summary, error, group, device):
    """All-gather the summaries; every rank checks the same table and raises the same error."""
    mine = torch.tensor([int(summary.get(f, -1)) for f in _FIELDS], dtype=torch.int64,
                        device=device)
    mine[_F["error"]] = error is not None
    world = dist.get_world_size(group)
    parts = [torch.empty_like(mine) for _ in range(world)]
    dist.all_gather(parts, mine, group=group)
    table = torch.stack(parts).tolist()
    col = {f: [row[i] for row in table] for f, i in _F.items()}
    bad = [r for r, e in enumerate(col["error"]) if e]
    if bad:
        if error is not None:
            raise error
        fail(fn, f"rank(s) {bad} rejected their arguments (their error says why)")
    for f in _SAME:
        if len(set(col[f])) > 1:
            vals = col[f]
            if f in ("dtype", "target_dtype"):
                vals = [str(_DTYPES[v]) if v >= 0 else "?" for v in vals]
            fail(fn, f"the ranks disagree on {f.replace('_', ' ')}: {vals} (rank by rank)")
    counts = col["shard_rows"]
    if col["range_given"][0]:
        ranges = list(zip(col["start"], col["stop"]))
        for r, ((a, b), n) in enumerate(zip(ranges, counts)):
            if b - a != n:
                fail(fn, f"rank {r}'s class_range [{a}, {b}) holds {b - a} classes but its weight "
                         f"shard has {n} rows")
    else:
        ends = torch.tensor(counts).cumsum(0).tolist()
        ranges = [(e - n, e) for e, n in zip(ends, counts)]
    if min(counts) < 1:
        fail(fn, f"every rank needs at least one class; shard sizes {counts}")
    tiles = sorted(ranges)
    classes = tiles[-1][1]
    if tiles[0][0] != 0 or any(p[1] != q[0] for p, q in zip(tiles, tiles[1:])):
        fail(fn, f"the ranks' class ranges {ranges} do not tile [0, C) (contiguous, no gap, no "
                 "overlap)")
    for what in ("target_classes", "dtensor_classes"):
        for r, c in enumerate(col[what]):
            if c >= 0 and c != classes:
                name = "targets have" if what == "target_classes" else "DTensor weight has"
                fail(fn, f"rank {r}'s {name} {c} classes but the {world} ranks' shards tile "
                         f"[0, {classes}) (a world size or shard split that does not match?)")
    lo, hi = min(col["target_min"]), max(col["target_max"])
    if col["kind"][0] == MARGIN and (lo < -1 or hi >= classes):
        r = col["target_min"].index(lo) if lo < -1 else col["target_max"].index(hi)
        fail(fn, f"rank {r}'s target holds class index {lo if lo < -1 else hi}, outside "
                 f"[-1, {classes})")
    if col["k"][0] > classes:
        fail(fn, f"k = {col['k'][0]} exceeds the number of classes C = {classes}")
    rows = col["rows"]
    if col["batch"][0] == 0 and len(set(rows)) > 1:
        fail(fn, f"batch='replicated' needs the same input rows on every rank, got {rows}")
    rank = dist.get_rank(group)
    return _Plan(group, rank, ranges, rows, classes, max(col["slots"]), col["nnz"])


# ---- arguments -----------------------------------------------------------------------------------

def _local(fn, name, t, group):
    """A DTensor sharded Shard(0) on a 1-D mesh -> (its local shard, differentiable; the mesh's
    group; its global rows); a tensor -> (t, group, -1)."""
    if DTensor is None or not isinstance(t, DTensor):
        return t, group, -1
    if t.device_mesh.ndim != 1 or tuple(t.placements) != (Shard(0),):
        fail(fn, f"{name} as a DTensor must be sharded (Shard(0),) on a 1-D mesh, got placements "
                 f"{tuple(t.placements)} on a {t.device_mesh.ndim}-D mesh")
    mesh_group = t.device_mesh.get_group()
    if group is not None and group != mesh_group:
        fail(fn, f"{name}'s device mesh is not over `group`")
    return t.to_local(), mesh_group, t.shape[0]


def _summarize(fn, kind, input, weight, target, bias, pos_weight, red, class_range, batch, k):
    """Local checks (raising) and this rank's summary for the agreement."""
    if batch not in _BATCHES:
        fail(fn, f"batch must be 'replicated' or 'data_parallel', got {batch!r}")
    # input and weight passed linear._check_args: (N, D) and (C_r, D) tensors.
    s = {"kind": kind, "reduction": red, "batch": _BATCHES.index(batch), "k": k,
         "range_given": class_range is not None, "shard_rows": weight.size(0),
         "dtype": _dtype_code(input), "features": input.size(1), "bias": bias is not None,
         "pos_weight": pos_weight is not None, "rows": input.size(0)}
    if class_range is not None:
        ok = (isinstance(class_range, (tuple, list)) and len(class_range) == 2
              and all(isinstance(v, int) and not isinstance(v, bool) for v in class_range)
              and 0 <= class_range[0] <= class_range[1])
        if not ok:
            fail(fn, f"class_range must be None or (start, stop) ints, got {class_range!r}")
        s.update(start=class_range[0], stop=class_range[1])
    if kind == TOPK:
        if isinstance(k, bool) or not isinstance(k, int) or k < 0:
            fail(fn, f"k must be an int >= 0, got {k!r}")
        return s
    s.update(input_grad=torch.is_grad_enabled() and input.requires_grad)
    if red == NONE:
        fail(fn, "reduction 'none' is not supported by the sharded losses ('mean' or 'sum')")
    if pos_weight is not None:
        if not isinstance(pos_weight, torch.Tensor) or pos_weight.dim() > 1 or \
                pos_weight.numel() not in (1, weight.size(0)):
            fail(fn, f"pos_weight must be this rank's ({weight.size(0)},) entries or one value, "
                     f"got {getattr(pos_weight, 'shape', type(pos_weight).__name__)}")
        check_same_device(fn, "pos_weight", pos_weight, "input", input)
    if isinstance(target, SparseTargets):
        if target.vector or target.shape[0] != input.size(0):
            fail(fn, f"target of shape {tuple(target.shape)} does not have input's "
                     f"{input.size(0)} rows")
        check_same_device(fn, "target", target, "input", input)
        s.update(target_kind=1, target_classes=target.num_classes, nnz=target.nnz,
                 target_values=target.values is not None,
                 target_dtype=_dtype_code(target.values))
        return s
    if not isinstance(target, torch.Tensor):
        fail(fn, f"target must be a Tensor or a SparseTargets, got {type(target).__name__}")
    if target.dim() != 2 or target.size(0) != input.size(0):
        fail(fn, f"target must have input's {input.size(0)} rows, got shape "
                 f"{tuple(target.shape)}")
    check_same_device(fn, "target", target, "input", input)
    s.update(target_kind=0, target_dtype=_dtype_code(target))
    if kind == MARGIN:
        if target.dtype == torch.bool or target.is_floating_point() or target.is_complex():
            fail(fn, f"target must be an integer tensor of class indices, got {target.dtype}")
        if target.numel():
            lo, hi = torch.aminmax(target)
            s.update(target_min=int(lo), target_max=int(hi))
        s.update(slots=target.size(1))
    else:
        if not (target.is_floating_point() or (kind == SOFT_MARGIN and target.dtype != torch.bool
                                               and not target.is_complex())):
            fail(fn, f"target must be a floating-point tensor, got {target.dtype}")
        s.update(target_classes=target.size(1))
    return s


def _prepare(fn, kind, input, weight, target, bias, pos_weight, reduction, class_range, group,
             batch, chunk_size, k=-1, update=None):
    """Unwrap DTensors, check locally, agree over the group: (weight, bias, pos_weight, chunk,
    plan, sgd) with sgd the fused update's state (linear._sgd_state), None without a step."""
    error, summary, chunk, red, sgd = None, {}, None, -1, None
    device = input.device if isinstance(input, torch.Tensor) else torch.device("cpu")
    try:
        dtensor = DTensor is not None and any(isinstance(t, DTensor) for t in (weight, bias))
        weight, group, dt_classes = _local(fn, "weight", weight, group)
        bias, _, _ = _local(fn, "bias", bias, group)
        if update is not None and dtensor:
            fail(fn, "update= with a DTensor weight or bias is not supported: the optimizer "
                     "holds the DTensor, not the local shard that would be stepped; pass this "
                     "rank's rows as a plain tensor parameter instead")
        pos_weight, _, _ = _local(fn, "pos_weight", pos_weight, group)
        group = group if group is not None else dist.group.WORLD
        red = _reduction_code(reduction) if kind != TOPK else -1
        if kind == TOPK:
            _linear._check_args(fn, input, weight, bias, 1)
            chunk = chunk_size
        else:
            chunk = _linear._check_args(fn, input, weight, bias, chunk_size)
        summary = _summarize(fn, kind, input, weight, target, bias, pos_weight, red, class_range,
                             batch, k)
        summary.update(dtensor_classes=dt_classes, update=update is not None)
        if update is not None:
            sgd = _linear._sgd_state(fn, update, weight, bias, red)
        if kind == MARGIN and isinstance(target, SparseTargets):
            counts = target.offsets[1:] - target.offsets[:-1]
            summary["slots"] = int(counts.max()) if counts.numel() else 0
    except Exception as e:  # reported to every rank by the agreement, raised here after it
        error = e
        group = group if group is not None else dist.group.WORLD
    plan = _agree(fn, summary, error, group, device)
    return weight, bias, pos_weight, chunk, plan, sgd


def _region_input(input, plan, batch):
    """The (N, D) rows every rank computes on, with the input gradient's way back to its owner."""
    if batch == "data_parallel":
        return _GatherRows.apply(input, plan.rows, plan.rank, plan.group)
    return _CopyToRegion.apply(input, plan.group)


def _shard_target(target, plan, batch):
    """This rank's columns of the (N, C) target, local indices, (N, C_r)."""
    dp = batch == "data_parallel"
    if isinstance(target, SparseTargets):
        full = _gather_sparse(target, plan.rows, plan.nnz, plan.group) if dp else target
        return full.narrow_classes(plan.start, plan.length)
    if dp:
        return _exchange_columns(target, plan.rows, plan.ranges, plan.rank, plan.group)
    return target.narrow(1, plan.start, plan.length)


def _margin_target(target, plan, batch):
    """The (N, K) global class indices of every row (-1 padded)."""
    t = target.to_padded() if isinstance(target, SparseTargets) else target.to(torch.int64)
    if t.size(1) < plan.slots:
        t = torch.cat((t, t.new_full((t.size(0), plan.slots - t.size(1)), -1)), 1)
    return _gather_rows(t, plan.rows, plan.group) if batch == "data_parallel" else t


class _ShardedMargin(torch.autograd.Function):
    """This rank's share of the margin loss; gradients made in forward, scaled in backward."""

    @staticmethod
    def forward(ctx, x, weight, bias, target, reduction, chunk, plan, need):
        loss, grads = _linear_stream._stream_margin(x, weight, bias, target, reduction, chunk,
                                                    need, shard=plan)
        ctx.grads = grads.results(x, weight, bias)
        ctx.need = need
        return loss

    @staticmethod
    def backward(ctx, grad):
        return tuple(g * grad if n else None for g, n in zip(ctx.grads, ctx.need)) + (None,) * 5


def _sharded_loss(kind, input, weight, target, bias, pos_weight, reduction, class_range, group,
                  batch, chunk_size, update):
    fn = "sharded_" + _linear_stream._FN_NAMES[kind]
    weight, bias, pos_weight, chunk, plan, sgd = _prepare(
        fn, kind, input, weight, target, bias, pos_weight, reduction, class_range, group, batch,
        chunk_size, update=update)
    x = _region_input(input, plan, batch)
    red = _reduction_code(reduction)
    if kind == MARGIN:
        target = _margin_target(target, plan, batch)
    else:
        target = _shard_target(target, plan, batch)
    if sgd is not None:  # the fused update: the pass itself scales for the global C (plan)
        target_args = (target, None, None, None, None) if kind == MARGIN else \
            (*_linear._target_tensors(target), pos_weight)
        part = _linear._sgd_loss(kind, x, weight, bias, target_args, red, chunk, update, sgd,
                                 shard=plan)
    elif kind == MARGIN:
        part = _ShardedMargin.apply(x, weight, bias, target, red, chunk, plan,
                                    _linear._needs(x, weight, bias, red))
    else:
        # Sums over classes: the local loss with the same reduction, times C_r / C (a row's mean
        # and the mean over N x C are over the global C), but BCE's plain sum.
        scale = 1.0 if kind == BCE and red != MEAN else plan.length / plan.classes
        part = _linear._fused_loss(kind, x, weight, target, bias, pos_weight, reduction, chunk,
                                   None) * scale
    return _SumOverRanks.apply(part, plan.group)


# ---- public functions ----------------------------------------------------------------------------

_ARGS_DOC = """
    input: (N, D) rows, the same on every rank (batch='replicated') or this rank's own rows
    (batch='data_parallel'; ranks may hold different numbers of rows). weight: this rank's
    (C_r, D) rows of the classifier, or a DTensor sharded (Shard(0),) on a 1-D mesh (the local
    shard is used, its gradient arrives as a DTensor). bias: (C_r,) or None (or a DTensor like
    weight). class_range: (start, stop) of this rank's classes, or None: the ranks' shards are
    consecutive in rank order (their sizes are all-gathered). group: the process group (None: the
    default one, or the DTensor's mesh). reduction: 'mean' or 'sum' over the global (N, C).
    update: None, or on every rank a torch.optim.SGD holding this rank's weight (and bias) shard:
    the fused update of the single-process linear losses (multilabel_cuda.linear), each rank
    stepping its own rows in forward with the global loss's gradient, so the shards come out as
    the rows of loss.backward(); opt.step() on the full classifier (not with a DTensor weight).
    Returns the global loss on every rank. Every rank of the group must call it."""


def sharded_linear_binary_cross_entropy_with_logits(input, weight, target, bias=None,
                                                    pos_weight=None, reduction="mean",
                                                    class_range=None, group=None,
                                                    batch="replicated", chunk_size=None, *,
                                                    update=None):
    """linear_binary_cross_entropy_with_logits with the classes sharded over the ranks. target:
    (N, C) floating or a SparseTargets, global classes, this rank's rows. pos_weight: this rank's
    (C_r,) entries or one value.""" + _ARGS_DOC
    return _sharded_loss(BCE, input, weight, target, bias, pos_weight, reduction, class_range,
                         group, batch, chunk_size, update)


def sharded_linear_multilabel_soft_margin_loss(input, weight, target, bias=None, reduction="mean",
                                               class_range=None, group=None, batch="replicated",
                                               chunk_size=None, *, update=None):
    """linear_multilabel_soft_margin_loss with the classes sharded over the ranks; each row's mean
    is over the global C. target: (N, C) or a SparseTargets, global classes.""" + _ARGS_DOC
    return _sharded_loss(SOFT_MARGIN, input, weight, target, bias, None, reduction, class_range,
                         group, batch, chunk_size, update)


def sharded_linear_multilabel_margin_loss(input, weight, target, bias=None, reduction="mean",
                                          class_range=None, group=None, batch="replicated",
                                          chunk_size=None, *, update=None):
    """linear_multilabel_margin_loss with the classes sharded over the ranks, exactly: the (N, K)
    positives' scores are summed over the ranks first. target: (N, K) global class indices
    (-1 padded) or a SparseTargets.""" + _ARGS_DOC
    return _sharded_loss(MARGIN, input, weight, target, bias, None, reduction, class_range, group,
                         batch, chunk_size, update)


def sharded_linear_topk(input, weight, k, bias=None, class_range=None, group=None,
                        batch="replicated", chunk_size=None):
    """(values, global indices) of each row's k largest logits over all ranks' classes: each
    rank's linear_topk, then an all_gather of the (N, k) candidates and a merge ordered as
    linear_topk's (value descending, ties by smaller class index). data_parallel: this rank's
    rows' results. Arguments as the sharded losses'; evaluation only (no gradient)."""
    fn = "sharded_linear_topk"
    weight, bias, _, chunk, plan, _ = _prepare(fn, TOPK, input, weight, None, bias, None, None,
                                               class_range, group, batch, chunk_size, k)
    if k == 0:  # every rank agreed on k
        return linear_topk(input, weight, 0)
    with torch.no_grad():
        dp = batch == "data_parallel"
        x = _gather_rows(input, plan.rows, plan.group) if dp else input
        width = min(k, plan.length)
        values, indices = linear_topk(x, weight, width, bias, chunk)
        indices = indices + plan.start
        if width < k:  # pads rank after every real candidate
            values = F.pad(values, (0, k - width), value=-float("inf"))
            indices = F.pad(indices, (0, k - width), value=plan.classes)
        vs = [torch.empty_like(values) for _ in plan.rows]
        js = [torch.empty_like(indices) for _ in plan.rows]
        dist.all_gather(vs, values, group=plan.group)
        dist.all_gather(js, indices, group=plan.group)
        js, order = torch.sort(torch.cat(js, 1), dim=1)
        vs, best = torch.sort(torch.cat(vs, 1).gather(1, order), dim=1, descending=True,
                              stable=True)
        vs, js = vs[:, :k], js.gather(1, best[:, :k])
        if dp:
            first = sum(plan.rows[:plan.rank])
            vs, js = vs[first:first + input.size(0)], js[first:first + input.size(0)]
    return vs, js


def sharded_precision_at_k(topk_indices, targets, k, group=None, batch="replicated"):
    """precision_at_k over all ranks' rows: replicated, every rank's own (they are the same);
    data_parallel, the mean over the union of the ranks' rows (an all_reduce of two numbers)."""
    p = precision_at_k(topk_indices, targets, k)
    if batch == "replicated":
        return p
    if batch != "data_parallel":
        fail("sharded_precision_at_k", f"batch must be 'replicated' or 'data_parallel', got "
                                        f"{batch!r}")
    rows = topk_indices.size(0) if topk_indices.dim() == 2 else 1
    acc = torch.tensor([float(p) * rows if rows else 0.0, rows], dtype=torch.float64,
                       device=topk_indices.device)
    dist.all_reduce(acc, group=group)
    return (acc[0] / acc[1]).to(p.dtype)


# ---- modules -------------------------------------------------------------------------------------

class _ShardedLoss(_linear._LinearLoss):
    def __init__(self, reduction="mean", class_range=None, group=None, batch="replicated",
                 chunk_size=None):
        super().__init__(reduction, chunk_size)
        self.class_range, self.group, self.batch = class_range, group, batch

    def forward(self, input, weight, target, bias=None, *, update=None):
        return _sharded_loss(self._kind, input, weight, target, bias,
                             getattr(self, "pos_weight", None), self.reduction, self.class_range,
                             self.group, self.batch, self.chunk_size, update)

    def extra_repr(self):
        return (f"reduction={self.reduction!r}, class_range={self.class_range}, "
                f"batch={self.batch!r}, chunk_size={self.chunk_size}")


class ShardedLinearBCEWithLogitsLoss(_ShardedLoss):
    """sharded_linear_binary_cross_entropy_with_logits as a module, called as
    ``loss_fn(input, weight_shard, target, bias_shard=None, update=None)``; pos_weight is this
    rank's entries."""
    _kind = BCE

    def __init__(self, pos_weight=None, **kwargs):
        super().__init__(**kwargs)
        self.register_buffer("pos_weight", pos_weight)


class ShardedLinearMultiLabelSoftMarginLoss(_ShardedLoss):
    """sharded_linear_multilabel_soft_margin_loss as a module."""
    _kind = SOFT_MARGIN


class ShardedLinearMultiLabelMarginLoss(_ShardedLoss):
    """sharded_linear_multilabel_margin_loss as a module."""
    _kind = MARGIN
