"""SparseTargets: the positives of each row of a multi-label target, instead of a dense N x C tensor.

At 10^5-10^7 classes a row has a handful of positives; a dense float target would cost as much
memory as the logits. A SparseTargets stands for the dense target it describes (0 everywhere except
at the positives, where it is 1 or the positive's soft value) and is accepted as ``target`` by the
three losses, which then never build that dense tensor.

Canonical form (what every constructor produces): CSR, rows in order, each row's classes sorted
ascending and unique. A class repeated within a row is one positive, as the dense target would say;
with ``values`` a repeat is an error (two values for one entry). ``values`` are stored detached: a
SparseTargets is data, and no loss gives its values a gradient."""
import torch

from ._errors import check_int, check_int_tensor, check_range, check_same_device, check_tensor, fail


def _nonneg_int(fn, name, v):
    return check_int(fn, name, v, 0, "a non-negative int")


def _values(fn, values, indices):
    """Soft labels: floating, the indices' shape and device; stored detached (no gradient)."""
    if values is None:
        return None
    check_tensor(fn, "values", values)
    if not values.is_floating_point():
        fail(fn, f"values must be a floating-point tensor, got {values.dtype}")
    check_same_device(fn, "values", values, "indices", indices)
    if values.shape != indices.shape:
        fail(fn, f"values of shape {tuple(values.shape)} does not match indices of shape "
                 f"{tuple(indices.shape)}")
    return values.detach()


class SparseTargets:
    """The positives of each row: ``indices[offsets[r]:offsets[r+1]]`` are row r's classes.

    Attributes (read-only): ``indices`` int64 (nnz,), ``offsets`` int64 (N+1,), ``values`` float
    (nnz,) or None (None means every positive is 1), ``num_classes`` (C), ``shape`` (N, C),
    ``vector`` (True when it stands for a (C,) target; then N = 1), ``device``, ``nnz``.

    Build it with ``from_padded``, ``from_csr`` or ``from_dense``; ``SparseTargets(indices, offsets,
    num_classes, values)`` is ``from_csr``."""

    __slots__ = ("indices", "offsets", "values", "num_classes", "shape", "vector", "_row_ids")

    def __init__(self, indices, offsets, num_classes, values=None):
        self._init(*_from_csr("__init__", indices, offsets, num_classes, values), vector=False)

    def _init(self, indices, offsets, values, num_classes, vector):
        set_ = object.__setattr__
        set_(self, "indices", indices)
        set_(self, "offsets", offsets)
        set_(self, "values", values)
        set_(self, "num_classes", num_classes)
        set_(self, "shape", torch.Size((offsets.numel() - 1, num_classes)))
        set_(self, "vector", vector)
        set_(self, "_row_ids", None)

    @classmethod
    def _new(cls, indices, offsets, values, num_classes, vector):
        """From parts already canonical and checked (no copy, no check)."""
        obj = cls.__new__(cls)
        obj._init(indices, offsets, values, num_classes, vector)
        return obj

    def __setattr__(self, name, value):
        raise AttributeError("SparseTargets is immutable")

    __delattr__ = __setattr__

    # ------------------------------------------------------------------------------ constructors
    @classmethod
    def from_padded(cls, indices, num_classes, values=None):
        """indices (N, K) (or (K,) for a (C,) target), any integer dtype: a row's positives are its
        entries before its first -1 (the margin loss's target format), K <= C. Entries after the first
        -1 are ignored, but like the margin loss every entry must lie in [-1, C). values: soft labels
        of indices' shape (those after the first -1 ignored)."""
        fn = "SparseTargets.from_padded"
        c = _nonneg_int(fn, "num_classes", num_classes)
        indices = check_int_tensor(fn, "indices", indices).to(torch.int64)
        if indices.dim() not in (1, 2):
            fail(fn, f"indices must be (N, K) or (K,), got shape {tuple(indices.shape)}")
        if indices.size(-1) > c:
            fail(fn, f"indices of shape {tuple(indices.shape)} has K = {indices.size(-1)} > "
                     f"num_classes = {c}")
        values = _values(fn, values, indices)
        check_range(fn, "indices", indices, -1, c)
        vector = indices.dim() == 1
        idx = indices.unsqueeze(0) if vector else indices
        valid = torch.cumprod((idx != -1).to(torch.int8), dim=1, dtype=torch.int8).bool()
        counts = valid.sum(dim=1)
        vals = None if values is None else values.reshape(idx.shape)[valid]
        return cls._new(*_canonical(fn, idx[valid], counts, vals, c), c, vector)

    @classmethod
    def from_csr(cls, indices, offsets, num_classes, values=None):
        """indices (nnz,) classes in [0, C), any integer dtype and any order within a row; offsets
        (N+1,) non-decreasing from 0 to nnz: row r is indices[offsets[r]:offsets[r+1]]."""
        return cls._new(*_from_csr("from_csr", indices, offsets, num_classes, values), vector=False)

    @classmethod
    def from_dense(cls, target):
        """target (N, C) or (C,): 0 is a negative, any other entry a positive. values are the
        entries at the positives unless they are all 1 (integer/bool targets: as the default float
        dtype)."""
        fn = "SparseTargets.from_dense"
        check_tensor(fn, "target", target)
        if target.dim() not in (1, 2):
            fail(fn, f"target must be (N, C) or (C,), got shape {tuple(target.shape)}")
        if target.is_complex():
            fail(fn, f"target must be real, got {target.dtype}")
        vector = target.dim() == 1
        t = target.detach().unsqueeze(0) if vector else target.detach()
        rows, cols = torch.nonzero(t, as_tuple=True)  # row-major: already canonical
        vals = t[rows, cols]
        values = None
        if not bool((vals == 1).all()):
            values = vals if vals.is_floating_point() else vals.to(torch.get_default_dtype())
        counts = torch.bincount(rows, minlength=t.size(0))
        offsets = torch.zeros(t.size(0) + 1, dtype=torch.int64, device=t.device)
        torch.cumsum(counts, 0, out=offsets[1:])
        return cls._new(cols, offsets, values, t.size(1), vector)

    # ---------------------------------------------------------------------------------- methods
    @property
    def device(self):
        return self.indices.device

    @property
    def nnz(self):
        return self.indices.numel()

    @property
    def dense_shape(self):
        """The shape of to_dense(): (N, C), or (C,) for a vector target."""
        return torch.Size((self.num_classes,)) if self.vector else self.shape

    def row_ids(self):
        """int64 (nnz,): the row of each positive (cached)."""
        if self._row_ids is None:
            n = self.shape[0]
            counts = self.offsets[1:] - self.offsets[:-1]
            rows = torch.repeat_interleave(torch.arange(n, device=self.device), counts,
                                           output_size=self.nnz)
            object.__setattr__(self, "_row_ids", rows)
        return self._row_ids

    def to_dense(self, dtype=torch.float32):
        """The dense target it stands for: (N, C), or (C,) for a vector target."""
        out = torch.zeros(self.shape, dtype=dtype, device=self.device)
        vals = self.values.to(dtype) if self.values is not None else torch.ones((), dtype=dtype,
                                                                               device=self.device)
        out.index_put_((self.row_ids(), self.indices), vals.expand(self.nnz))
        return out.reshape(self.dense_shape)

    def to_padded(self, pad=-1):
        """int64 (N, K), K the longest row: each row's classes (ascending), then ``pad``. With the
        default pad it is the margin loss's compact target (canonical: no repeats)."""
        n = self.shape[0]
        counts = self.offsets[1:] - self.offsets[:-1]
        k = int(counts.max()) if n > 0 else 0
        out = torch.full((n, k), pad, dtype=torch.int64, device=self.device)
        rows = self.row_ids()
        slot = torch.arange(self.nnz, device=self.device) - self.offsets[rows]
        out[rows, slot] = self.indices
        return out

    def narrow_classes(self, start, length):
        """The targets of columns [start, start + length), as classes 0..length-1 of a
        SparseTargets with num_classes = length (same rows)."""
        fn = "SparseTargets.narrow_classes"
        start, length = _nonneg_int(fn, "start", start), _nonneg_int(fn, "length", length)
        if start + length > self.num_classes:
            fail(fn, f"columns [{start}, {start + length}) exceed num_classes = {self.num_classes}")
        keep = (self.indices >= start) & (self.indices < start + length)
        counts = torch.zeros(self.shape[0], dtype=torch.int64, device=self.device)
        counts.index_add_(0, self.row_ids(), keep.to(torch.int64))
        offsets = torch.zeros(self.shape[0] + 1, dtype=torch.int64, device=self.device)
        torch.cumsum(counts, 0, out=offsets[1:])
        values = None if self.values is None else self.values[keep]
        return SparseTargets._new(self.indices[keep] - start, offsets, values, length, self.vector)

    def to(self, device):
        """A copy on ``device`` (self when already there)."""
        device = torch.device(device)
        if device == self.device:
            return self
        values = None if self.values is None else self.values.to(device)
        return SparseTargets._new(self.indices.to(device), self.offsets.to(device), values,
                                  self.num_classes, self.vector)

    def __repr__(self):
        vals = "" if self.values is None else f", values={self.values.dtype}"
        vec = ", vector" if self.vector else ""
        return (f"SparseTargets(shape={tuple(self.shape)}, nnz={self.nnz}{vals}{vec}, "
                f"device={self.device})")


def _from_csr(method, indices, offsets, num_classes, values):
    fn = f"SparseTargets.{method}"
    c = _nonneg_int(fn, "num_classes", num_classes)
    indices = check_int_tensor(fn, "indices", indices).to(torch.int64)
    offsets = check_int_tensor(fn, "offsets", offsets).to(torch.int64)
    check_same_device(fn, "offsets", offsets, "indices", indices)
    if indices.dim() != 1:
        fail(fn, f"indices must be 1-D (nnz,), got shape {tuple(indices.shape)}")
    if offsets.dim() != 1 or offsets.numel() == 0:
        fail(fn, f"offsets must be 1-D (N+1,), got shape {tuple(offsets.shape)}")
    values = _values(fn, values, indices)
    nnz = indices.numel()
    first, last = (int(v) for v in offsets[[0, -1]])
    if first != 0:
        fail(fn, f"offsets must start at 0, got {first}")
    if last != nnz:
        fail(fn, f"offsets must end at nnz = {nnz} (the length of indices), got {last}")
    if offsets.numel() > 1 and not bool((offsets[1:] >= offsets[:-1]).all()):
        fail(fn, "offsets must be non-decreasing")
    check_range(fn, "indices", indices, 0, c)
    return _canonical(fn, indices, offsets[1:] - offsets[:-1], values, c) + (c,)


def _canonical(fn, cols, counts, values, num_classes):
    """(cols, row lengths, values) in row order -> canonical (indices, offsets, values): each row's
    classes sorted and unique. Vectorized: one sort of the key row * C + col over all positives."""
    n, device = counts.numel(), cols.device
    rows = torch.repeat_interleave(torch.arange(n, device=device), counts, output_size=cols.numel())
    key = rows * num_classes + cols  # < N * C <= 2^62 for any N, C a tensor can have
    if cols.numel() > 1 and not bool((key[1:] > key[:-1]).all()):
        key, order = torch.sort(key, stable=True)
        rows, cols = rows[order], cols[order]
        values = None if values is None else values[order]
        first = torch.ones_like(key, dtype=torch.bool)
        first[1:] = key[1:] != key[:-1]
        if not bool(first.all()):
            if values is not None:
                i = int(torch.nonzero(~first)[0])
                fail(fn, f"indices repeat class {int(cols[i])} in row {int(rows[i])}; with values "
                         "each positive must appear once")
            rows, cols = rows[first], cols[first]
            counts = torch.bincount(rows, minlength=n)
    offsets = torch.zeros(n + 1, dtype=torch.int64, device=device)
    torch.cumsum(counts, 0, out=offsets[1:])
    return cols, offsets, values
