"""SparseTargets: constructors, canonical form, bad input, and the three losses with a sparse target
against torch.nn.functional on the dense target it stands for; memory: no N x C target is built."""
import textwrap
import zlib

import pytest
import torch
import torch.nn.functional as F

import multilabel_cuda
import multilabel_cuda.functional as MF
from multilabel_cuda import LossArgumentError, SparseTargets

from conftest import run_memory_probe, tol



def dense_from_rows(rows, c, values=None, dtype=torch.float32):
    """Oracle: the dense target of a list of per-row class lists, written with plain loops."""
    out = torch.zeros(len(rows), c, dtype=dtype)
    for r, cls in enumerate(rows):
        for j, col in enumerate(cls):
            out[r, col] = 1 if values is None else values[r][j]
    return out


def padded_rows(padded):
    """A padded (N, K) target's rows: the entries before the first -1."""
    rows = []
    for row in padded.tolist():
        rows.append(row[:row.index(-1)] if -1 in row else row)
    return rows


def random_padded(n, k, c, gen=None):
    t = torch.randint(0, c, (n, k), generator=gen)
    cut = torch.randint(0, k + 1, (n,), generator=gen)
    t[torch.arange(k) >= cut.unsqueeze(1)] = -1
    return t


# ------------------------------------------------------------------------------------ constructors
def test_from_padded_round_trip_and_canonical():
    padded = torch.tensor([[3, 1, 3, -1, 2], [0, -1, -1, -1, -1], [-1, 4, 4, 4, 4], [5, 4, 3, 2, 1]])
    st = SparseTargets.from_padded(padded, 6)
    assert st.shape == (4, 6) and not st.vector and st.num_classes == 6
    assert st.indices.tolist() == [1, 3, 0, 1, 2, 3, 4, 5]  # sorted, unique, stale entries dropped
    assert st.offsets.tolist() == [0, 2, 3, 3, 8]
    assert st.row_ids().tolist() == [0, 0, 1, 3, 3, 3, 3, 3]
    assert st.values is None and st.nnz == 8
    assert torch.equal(st.to_dense(), dense_from_rows(padded_rows(padded), 6))
    assert st.to_padded().tolist() == [[1, 3, -1, -1, -1], [0, -1, -1, -1, -1],
                                       [-1, -1, -1, -1, -1], [1, 2, 3, 4, 5]]
    assert st.to_padded(pad=7)[0].tolist() == [1, 3, 7, 7, 7]
    assert st.indices.dtype == st.offsets.dtype == torch.int64


@pytest.mark.parametrize("dtype", [torch.int64, torch.int32, torch.int16, torch.uint8])
def test_from_padded_random_matches_loop_oracle(dtype):
    gen = torch.Generator().manual_seed(1)
    padded = random_padded(9, 6, 11, gen)
    src = padded.to(dtype) if dtype != torch.uint8 else padded.clamp(min=0).to(dtype)
    st = SparseTargets.from_padded(src, 11)
    assert torch.equal(st.to_dense(), dense_from_rows(padded_rows(src.long()), 11))
    again = SparseTargets.from_padded(st.to_padded(), 11)
    assert torch.equal(again.indices, st.indices) and torch.equal(again.offsets, st.offsets)
    for r in range(9):  # canonical: each row strictly increasing
        row = st.indices[st.offsets[r]:st.offsets[r + 1]]
        assert bool((row[1:] > row[:-1]).all())


def test_from_padded_values_and_vector():
    st = SparseTargets.from_padded(torch.tensor([[2, 0, -1], [1, -1, 2]]), 3,
                                   values=torch.tensor([[0.5, 0.25, 9.0], [0.75, 9.0, 9.0]]))
    assert st.indices.tolist() == [0, 2, 1] and st.values.tolist() == [0.25, 0.5, 0.75]
    assert torch.equal(st.to_dense(), torch.tensor([[0.25, 0, 0.5], [0, 0.75, 0]]))
    vec = SparseTargets.from_padded(torch.tensor([4, 1, -1]), 5)
    assert vec.vector and vec.shape == (1, 5) and vec.dense_shape == (5,)
    assert vec.to_dense().tolist() == [0, 1, 0, 0, 1]
    assert vec.to_padded().tolist() == [[1, 4]]


def test_from_csr_unsorted_with_repeats():
    st = SparseTargets.from_csr(torch.tensor([5, 1, 1, 0, 2, 2, 2]), torch.tensor([0, 3, 3, 4, 7]), 6)
    assert st.indices.tolist() == [1, 5, 0, 2] and st.offsets.tolist() == [0, 2, 2, 3, 4]
    assert torch.equal(st.to_dense(), dense_from_rows([[5, 1], [], [0], [2]], 6))
    direct = SparseTargets(torch.tensor([5, 1, 1, 0, 2, 2, 2]), torch.tensor([0, 3, 3, 4, 7]), 6)
    assert torch.equal(direct.indices, st.indices) and torch.equal(direct.offsets, st.offsets)


def test_from_csr_random_matches_loop_oracle():
    gen = torch.Generator().manual_seed(2)
    lengths = torch.randint(0, 7, (12,), generator=gen)
    offsets = torch.cat((torch.zeros(1, dtype=torch.int64), lengths.cumsum(0)))
    indices = torch.randint(0, 9, (int(offsets[-1]),), generator=gen)
    st = SparseTargets.from_csr(indices.int(), offsets.int(), 9)
    rows = [indices[offsets[r]:offsets[r + 1]].tolist() for r in range(12)]
    assert torch.equal(st.to_dense(), dense_from_rows(rows, 9))
    values = torch.rand(3, generator=gen, dtype=torch.float64)
    soft = SparseTargets.from_csr(torch.tensor([2, 0, 1]), torch.tensor([0, 2, 3]), 3, values)
    assert torch.equal(soft.to_dense(torch.float64),
                       dense_from_rows([[2, 0], [1]], 3, [values[:2].tolist(), values[2:].tolist()],
                                       torch.float64))


@pytest.mark.parametrize("kind", ["binary", "soft", "int", "bool", "vector"])
def test_from_dense_round_trip(kind):
    d = (torch.rand(6, 10) < 0.3).float()
    if kind == "soft":
        d = d * torch.rand(6, 10, dtype=torch.float64)
    elif kind == "int":
        d = d.long() * torch.randint(1, 4, (6, 10))
    elif kind == "bool":
        d = d.bool()
    elif kind == "vector":
        d = d[0]
    st = SparseTargets.from_dense(d)
    assert st.vector == (kind == "vector")
    assert (st.values is None) == (kind in ("binary", "bool", "vector"))
    assert st.to_dense(torch.float64).shape == d.shape
    assert torch.equal(st.to_dense(torch.float64), d.to(torch.float64))
    if kind == "soft":
        assert st.values.dtype == torch.float64


def test_empty_shapes():
    for st in (SparseTargets.from_padded(torch.zeros(0, 3, dtype=torch.long), 5),
               SparseTargets.from_csr(torch.zeros(0, dtype=torch.long), torch.zeros(1, dtype=torch.long), 5),
               SparseTargets.from_dense(torch.zeros(0, 5))):
        assert st.shape == (0, 5) and st.nnz == 0
        assert st.to_dense().shape == (0, 5) and st.to_padded().shape == (0, 0)
    st = SparseTargets.from_padded(torch.full((3, 2), -1), 2)
    assert st.nnz == 0 and st.to_padded().shape == (3, 0)
    st = SparseTargets.from_padded(torch.zeros(2, 0, dtype=torch.long), 0)
    assert st.shape == (2, 0) and st.to_dense().shape == (2, 0)


def test_narrow_classes():
    gen = torch.Generator().manual_seed(3)
    padded = random_padded(8, 5, 20, gen)
    vals = torch.rand(8, 5, generator=gen)
    st = SparseTargets.from_padded(padded, 20)
    dense = st.to_dense()
    for start, length in [(0, 20), (0, 7), (7, 7), (14, 6), (5, 0), (20, 0), (19, 1)]:
        part = st.narrow_classes(start, length)
        assert part.num_classes == length and part.shape == (8, length)
        assert torch.equal(part.to_dense(), dense[:, start:start + length])
    soft = SparseTargets.from_padded(torch.unique(padded.clamp(min=0), dim=1)[:, :1], 20, vals[:, :1])
    assert torch.equal(soft.narrow_classes(3, 9).to_dense(), soft.to_dense()[:, 3:12])
    with pytest.raises(LossArgumentError, match=r"narrow_classes: columns \[15, 21\) exceed"):
        st.narrow_classes(15, 6)
    with pytest.raises(LossArgumentError, match=r"narrow_classes: start must be a non-negative int"):
        st.narrow_classes(-1, 2)
    with pytest.raises(LossArgumentError, match=r"narrow_classes: length must be"):
        st.narrow_classes(0, 2.0)


def test_frozen_and_to():
    st = SparseTargets.from_padded(torch.tensor([[1, -1]]), 3)
    with pytest.raises(AttributeError):
        st.indices = torch.tensor([0])
    with pytest.raises(AttributeError):
        st.foo = 1
    assert st.to("cpu") is st
    meta = st.to("meta")
    assert meta.device.type == "meta" and meta.offsets.device.type == "meta"
    assert meta.shape == st.shape


def test_values_are_detached():
    v = torch.tensor([[0.5, 0.25]], requires_grad=True)
    st = SparseTargets.from_padded(torch.tensor([[0, 2]]), 3, values=v)
    assert not st.values.requires_grad
    x = torch.randn(1, 3, requires_grad=True)
    MF.binary_cross_entropy_with_logits(x, st).backward()
    assert v.grad is None and x.grad is not None


# --------------------------------------------------------------------------------------- bad input
I64 = torch.int64


def _bad_constructions():
    p = torch.tensor([[1, 2, -1]])
    return [
        (lambda: SparseTargets.from_padded(torch.tensor([[1, 6]]), 6), r"from_padded: indices holds 6, outside \[-1, 6\)"),
        (lambda: SparseTargets.from_padded(torch.tensor([[1, -2]]), 6), r"from_padded: indices holds -2"),
        (lambda: SparseTargets.from_padded(torch.tensor([[1, -1, 9]]), 6), r"from_padded: indices holds 9"),
        (lambda: SparseTargets.from_padded(torch.zeros(2, 4, dtype=I64), 3), r"from_padded: indices of shape \(2, 4\) has K = 4 > num_classes = 3"),
        (lambda: SparseTargets.from_padded(p.float(), 6), r"from_padded: indices must be an integer tensor, got torch.float32"),
        (lambda: SparseTargets.from_padded(p.bool(), 6), r"from_padded: indices must be an integer tensor, got torch.bool"),
        (lambda: SparseTargets.from_padded(p.tolist(), 6), r"from_padded: indices must be a Tensor"),
        (lambda: SparseTargets.from_padded(p.unsqueeze(0), 6), r"from_padded: indices must be \(N, K\) or \(K,\)"),
        (lambda: SparseTargets.from_padded(torch.tensor(1), 6), r"from_padded: indices must be \(N, K\) or \(K,\)"),
        (lambda: SparseTargets.from_padded(p, -1), r"from_padded: num_classes must be a non-negative int, got -1"),
        (lambda: SparseTargets.from_padded(p, 6.0), r"from_padded: num_classes must be a non-negative int"),
        (lambda: SparseTargets.from_padded(p, True), r"from_padded: num_classes must be"),
        (lambda: SparseTargets.from_padded(p, 6, values=torch.rand(3)), r"from_padded: values of shape \(3,\) does not match indices of shape \(1, 3\)"),
        (lambda: SparseTargets.from_padded(p, 6, values=torch.ones(1, 3, dtype=I64)), r"from_padded: values must be a floating-point tensor"),
        (lambda: SparseTargets.from_padded(p, 6, values=torch.rand(1, 3, device="meta")), r"from_padded: values is on meta but indices is on cpu"),
        (lambda: SparseTargets.from_padded(torch.tensor([[2, 2]]), 6, values=torch.rand(1, 2)), r"from_padded: indices repeat class 2 in row 0; with values"),
        (lambda: SparseTargets.from_padded(p.to_sparse(), 6), r"from_padded: indices must be a dense \(strided\)"),
        (lambda: SparseTargets.from_csr(torch.tensor([1, 2]), torch.tensor([1, 2]), 6), r"from_csr: offsets must start at 0, got 1"),
        (lambda: SparseTargets.from_csr(torch.tensor([1, 2]), torch.tensor([0, 1]), 6), r"from_csr: offsets must end at nnz = 2 \(the length of indices\), got 1"),
        (lambda: SparseTargets.from_csr(torch.tensor([1, 2]), torch.tensor([0, 3]), 6), r"from_csr: offsets must end at nnz = 2"),
        (lambda: SparseTargets.from_csr(torch.tensor([1, 2, 3]), torch.tensor([0, 2, 1, 3]), 6), r"from_csr: offsets must be non-decreasing"),
        (lambda: SparseTargets.from_csr(torch.tensor([1, -1]), torch.tensor([0, 2]), 6), r"from_csr: indices holds -1, outside \[0, 6\)"),
        (lambda: SparseTargets.from_csr(torch.tensor([1, 6]), torch.tensor([0, 2]), 6), r"from_csr: indices holds 6, outside \[0, 6\)"),
        (lambda: SparseTargets.from_csr(torch.tensor([1, 2]), torch.tensor([0, 2], device="meta"), 6), r"from_csr: offsets is on meta but indices is on cpu"),
        (lambda: SparseTargets.from_csr(torch.tensor([1, 2]), torch.tensor([0, 2.0]), 6), r"from_csr: offsets must be an integer tensor"),
        (lambda: SparseTargets.from_csr(torch.tensor([1.0, 2.0]), torch.tensor([0, 2]), 6), r"from_csr: indices must be an integer tensor"),
        (lambda: SparseTargets.from_csr(torch.tensor([[1, 2]]), torch.tensor([0, 2]), 6), r"from_csr: indices must be 1-D"),
        (lambda: SparseTargets.from_csr(torch.tensor([1, 2]), torch.zeros(0, dtype=I64), 6), r"from_csr: offsets must be 1-D \(N\+1,\)"),
        (lambda: SparseTargets.from_csr(torch.tensor([1, 2]), torch.tensor([0, 2]), 6, torch.rand(3)), r"from_csr: values of shape \(3,\) does not match indices of shape \(2,\)"),
        (lambda: SparseTargets.from_csr(torch.tensor([1, 1]), torch.tensor([0, 2]), 6, torch.rand(2)), r"from_csr: indices repeat class 1 in row 0"),
        (lambda: SparseTargets(torch.tensor([1, 2]), torch.tensor([1, 2]), 6), r"SparseTargets.__init__: offsets must start at 0"),
        (lambda: SparseTargets.from_dense(torch.rand(2, 3, 4)), r"from_dense: target must be \(N, C\) or \(C,\)"),
        (lambda: SparseTargets.from_dense(torch.rand(2, 3, dtype=torch.complex64)), r"from_dense: target must be real"),
        (lambda: SparseTargets.from_dense([[0, 1]]), r"from_dense: target must be a Tensor"),
    ]


@pytest.mark.parametrize("make,match", _bad_constructions())
def test_bad_construction(make, match):
    with pytest.raises(LossArgumentError, match=match):
        make()


def test_loss_bad_arguments():
    st = SparseTargets.from_padded(torch.tensor([[1, -1], [0, 2]]), 4)
    soft = SparseTargets.from_padded(torch.tensor([[1, -1], [0, 2]]), 4, values=torch.rand(2, 2))
    x = torch.randn(2, 4)
    cases = [
        (MF.binary_cross_entropy_with_logits, (torch.randn(2, 5), st), {}, r"binary_cross_entropy_with_logits: target \(SparseTargets\) stands for a target of shape \(2, 4\), but input has shape \(2, 5\)"),
        (MF.binary_cross_entropy_with_logits, (torch.randn(4), st), {}, r"stands for a target of shape \(2, 4\)"),
        (MF.binary_cross_entropy_with_logits, (torch.randn(2, 1, 4), st), {}, r"but input has shape \(2, 1, 4\)"),
        (MF.binary_cross_entropy_with_logits, (x, st.to("meta")), {}, r"binary_cross_entropy_with_logits: target is on meta but input is on cpu"),
        (MF.binary_cross_entropy_with_logits, (x.long(), st), {}, r"input must be a floating-point tensor"),
        (MF.binary_cross_entropy_with_logits, (x, st), {"weight": torch.rand(3)}, r"weight of shape \(3,\) is not broadcastable"),
        (MF.binary_cross_entropy_with_logits, (x, st), {"pos_weight": torch.rand(2, 4, 1)}, r"pos_weight of shape"),
        (MF.binary_cross_entropy_with_logits, (x, st), {"pos_weight": torch.rand(4, device="meta")}, r"pos_weight is on meta"),
        (MF.binary_cross_entropy_with_logits, (x, st), {"reduction": "avg"}, r"avg is not a valid value for reduction"),
        (MF.multilabel_soft_margin_loss, (torch.randn(3, 4), st), {}, r"multilabel_soft_margin_loss: target \(SparseTargets\) stands for"),
        (MF.multilabel_soft_margin_loss, (x, st), {"weight": torch.rand(2)}, r"weight of shape \(2,\)"),
        (MF.multilabel_soft_margin_loss, (x, st.to("meta")), {}, r"target is on meta"),
        (MF.multilabel_margin_loss, (x, soft), {}, r"multilabel_margin_loss: target \(SparseTargets\) has values"),
        (MF.multilabel_margin_loss, (torch.randn(2, 3), st), {}, r"multilabel_margin_loss: target \(SparseTargets\) stands for"),
        (MF.multilabel_margin_loss, (x, st.to("meta")), {}, r"multilabel_margin_loss: target is on meta"),
    ]
    for fn, args, kwargs, match in cases:
        with pytest.raises(LossArgumentError, match=match):
            fn(*args, **kwargs)


# ----------------------------------------------------------------------------------- loss parity
def _case(shape, dtype, soft, gen):
    """A SparseTargets for an input of `shape` (rows of up to 4 distinct classes, the first row
    non-empty; without values the last row repeats a class), and logits."""
    n, c = (1, shape[0]) if len(shape) == 1 else shape
    k = min(c, 4)
    padded = torch.stack([torch.randperm(c, generator=gen)[:k] for _ in range(n)])
    cut = torch.randint(0, k + 1, (n,), generator=gen)
    cut[0] = max(int(cut[0]), 1)
    padded[torch.arange(k) >= cut.unsqueeze(1)] = -1
    values = torch.rand(padded.shape, generator=gen, dtype=torch.float64) if soft else None
    if not soft and c > 2 and n > 1:
        padded[-1, :2] = 2
    if len(shape) == 1:
        padded, values = padded.reshape(-1), (None if values is None else values.reshape(-1))
    st = SparseTargets.from_padded(padded, c, values=values)
    x = (torch.randn(shape, generator=gen, dtype=torch.float64) * 4).to(dtype)
    return st, x


def _gen(*key):
    """A generator seeded from a test's parameters (str hashes vary between processes)."""
    return torch.Generator().manual_seed(zlib.crc32(repr(key).encode()))


WEIGHTS = ["none", "w_c", "w_n1", "w_scalar", "pw_c", "pw_scalar", "w_pw"]


def _weights(kind, shape, dtype, gen):
    c = shape[-1]
    w_shape = {"w_c": (c,), "w_n1": (shape[0], 1) if len(shape) == 2 else (1,), "w_scalar": ()}
    w = p = None
    if kind in w_shape:
        w = torch.rand(w_shape[kind], generator=gen, dtype=torch.float64).to(dtype) + 0.5
    if kind in ("pw_c", "w_pw"):
        p = (torch.rand(c, generator=gen, dtype=torch.float64) * 3).to(dtype)
    if kind == "pw_scalar":
        p = torch.tensor(2.5, dtype=dtype)
    if kind == "w_pw":
        w = torch.rand(c, generator=gen, dtype=torch.float64).to(dtype) + 0.5
    return w, p


def _on(device, *objs):
    """Tensors / SparseTargets moved to `device` (None stays None)."""
    return tuple(None if o is None else o.to(device) for o in objs)


def _check_parity(ours, native, x, reduction, dtype):
    """Loss and input gradient (for a random upstream gradient) of ours vs native."""
    xa = x.clone().requires_grad_()
    xb = x.clone().requires_grad_()
    a, b = ours(xa), native(xb)
    assert a.dtype == b.dtype and a.shape == b.shape
    torch.testing.assert_close(a, b, **tol(dtype))
    up = torch.rand(a.shape, dtype=a.dtype, device=a.device) + 0.5
    ga, = torch.autograd.grad(a, xa, up)
    gb, = torch.autograd.grad(b, xb, up)
    torch.testing.assert_close(ga, gb, **tol(dtype))


@pytest.mark.parametrize("shape", [(6, 13), (13,), (1, 1), (3, 2)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("reduction", ["none", "mean", "sum"])
@pytest.mark.parametrize("weights", WEIGHTS)
@pytest.mark.parametrize("soft", [False, True])
def test_bce_matches_dense(shape, dtype, reduction, weights, soft, device):
    gen = _gen((shape, str(dtype), reduction, weights, soft))
    st, x = _on(device, *_case(shape, dtype, soft, gen))
    w, p = _on(device, *_weights(weights, shape, dtype, gen))
    dense = st.to_dense(dtype)
    _check_parity(lambda x: MF.binary_cross_entropy_with_logits(x, st, w, reduction=reduction, pos_weight=p),
                  lambda x: F.binary_cross_entropy_with_logits(x, dense, w, reduction=reduction, pos_weight=p),
                  x, reduction, dtype)


@pytest.mark.parametrize("shape", [(6, 13), (13,), (1, 1), (3, 2)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("reduction", ["none", "mean", "sum"])
@pytest.mark.parametrize("weights", ["none", "w_c", "w_n1", "w_scalar"])
@pytest.mark.parametrize("soft", [False, True])
def test_soft_margin_matches_dense(shape, dtype, reduction, weights, soft, device):
    gen = _gen((shape, str(dtype), reduction, weights, soft))
    st, x = _on(device, *_case(shape, dtype, soft, gen))
    w, = _on(device, _weights(weights, shape, dtype, gen)[0])
    dense = st.to_dense(dtype)
    _check_parity(lambda x: MF.multilabel_soft_margin_loss(x, st, w, reduction=reduction),
                  lambda x: F.multilabel_soft_margin_loss(x, dense, w, reduction=reduction),
                  x, reduction, dtype)


@pytest.mark.parametrize("shape", [(6, 13), (13,), (1, 1), (4, 3)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("reduction", ["none", "mean", "sum"])
def test_margin_matches_dense(shape, dtype, reduction, device):
    gen = _gen((shape, str(dtype), reduction))
    st, x = _on(device, *_case(shape, dtype, False, gen))
    c = shape[-1]
    # Native takes a (N, C) target cut at the first -1; duplicates would count twice there, so the
    # oracle is given each row's distinct classes (what the dense target says).
    rows = [sorted(set(r)) for r in padded_rows(st.to_padded())]
    full = torch.tensor([r + [-1] * (c - len(r)) for r in rows])
    full = (full.reshape(-1) if len(shape) == 1 else full).to(device)
    _check_parity(lambda x: MF.multilabel_margin_loss(x, st, reduction=reduction),
                  lambda x: F.multilabel_margin_loss(x, full, reduction=reduction),
                  x, reduction, dtype)


def test_repeats_count_once():
    x = torch.randn(2, 6, dtype=torch.float64)
    rep = SparseTargets.from_padded(torch.tensor([[3, 3, 3, 1], [0, 0, -1, -1]]), 6)
    once = SparseTargets.from_padded(torch.tensor([[1, 3, -1, -1], [0, -1, -1, -1]]), 6)
    for fn in (MF.binary_cross_entropy_with_logits, MF.multilabel_soft_margin_loss,
               MF.multilabel_margin_loss):
        assert torch.equal(fn(x, rep, reduction="none"), fn(x, once, reduction="none"))


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_types(dtype):
    gen = torch.Generator().manual_seed(5)
    st, x = _case((5, 17), dtype, True, gen)
    w, p = _weights("w_pw", (5, 17), dtype, gen)
    dense = st.to_dense(torch.float32)
    for red in ("none", "mean"):
        _check_parity(lambda x: MF.binary_cross_entropy_with_logits(x, st, w, reduction=red, pos_weight=p),
                      lambda x: F.binary_cross_entropy_with_logits(
                          x.float(), dense, w.float(), reduction=red, pos_weight=p.float()).to(dtype),
                      x, red, dtype)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_extreme_logits(dtype):
    x = torch.tensor([[1e30, -1e30, 50.0, -50.0, 30.0, -30.0, 0.0, 1e-30]], dtype=dtype).repeat(2, 1)
    st = SparseTargets.from_padded(torch.tensor([[0, 1, 2, 3, 4, 5, 6, 7], [-1] * 8]), 8)
    dense = st.to_dense(dtype)
    pw = torch.full((8,), 3.0, dtype=dtype)
    _check_parity(lambda x: MF.binary_cross_entropy_with_logits(x, st, reduction="none", pos_weight=pw),
                  lambda x: F.binary_cross_entropy_with_logits(x, dense, reduction="none", pos_weight=pw),
                  x, "none", dtype)
    _check_parity(lambda x: MF.multilabel_soft_margin_loss(x, st, reduction="none"),
                  lambda x: F.multilabel_soft_margin_loss(x, dense, reduction="none"),
                  x, "none", dtype)


def test_empty_batch_and_noncontiguous():
    st = SparseTargets.from_padded(torch.zeros(0, 2, dtype=torch.long), 5)
    x = torch.randn(0, 5)
    assert MF.binary_cross_entropy_with_logits(x, st, reduction="sum").item() == 0
    assert MF.binary_cross_entropy_with_logits(x, st).isnan()
    assert MF.multilabel_soft_margin_loss(x, st, reduction="sum").item() == 0
    st = SparseTargets.from_padded(torch.tensor([[1, 4], [0, -1], [2, 2]]), 5)
    xt = torch.randn(5, 3).t()  # non-contiguous
    torch.testing.assert_close(MF.binary_cross_entropy_with_logits(xt, st, reduction="none"),
                               F.binary_cross_entropy_with_logits(xt, st.to_dense(), reduction="none"))


def test_modules_accept_sparse_targets():
    st = SparseTargets.from_padded(torch.tensor([[1, 4], [0, -1], [2, 3]]), 5)
    x = torch.randn(3, 5)
    w, pw = torch.rand(5), torch.rand(5)
    pairs = [(multilabel_cuda.BCEWithLogitsLoss(w, pos_weight=pw), torch.nn.BCEWithLogitsLoss(w, pos_weight=pw)),
             (multilabel_cuda.MultiLabelSoftMarginLoss(w, reduction="sum"), torch.nn.MultiLabelSoftMarginLoss(w, reduction="sum"))]
    for ours, native in pairs:
        torch.testing.assert_close(ours(x, st), native(x, st.to_dense()))
    full = torch.cat((st.to_padded(), torch.full((3, 3), -1)), dim=1)
    torch.testing.assert_close(multilabel_cuda.MultiLabelMarginLoss()(x, st),
                               torch.nn.MultiLabelMarginLoss()(x, full))


def test_gradcheck_and_weight_gradients():
    st = SparseTargets.from_padded(torch.tensor([[1, 4, -1], [0, 3, 2]]), 5,
                                   values=torch.tensor([[0.7, 1.0, 0.0], [0.2, 1.0, 0.5]]))
    x = torch.randn(2, 5, dtype=torch.float64, requires_grad=True)
    w = torch.rand(5, dtype=torch.float64, requires_grad=True)
    pw = (torch.rand(2, 1, dtype=torch.float64) * 2).requires_grad_()
    assert torch.autograd.gradcheck(
        lambda x, w, pw: MF.binary_cross_entropy_with_logits(x, st, w, reduction="sum", pos_weight=pw), (x, w, pw))
    assert torch.autograd.gradcheck(
        lambda x, w: MF.multilabel_soft_margin_loss(x, st, w, reduction="none"), (x, w))
    # Weight gradients against the loss written plainly (native BCE gives no weight gradient).
    t = st.to_dense(torch.float64)
    plain = (w * ((1 - t) * x + (1 + (pw - 1) * t) * torch.log1p(torch.exp(-x)))).sum()
    ga = torch.autograd.grad(MF.binary_cross_entropy_with_logits(x, st, w, reduction="sum", pos_weight=pw), (x, w, pw))
    gb = torch.autograd.grad(plain, (x, w, pw))
    for a, b in zip(ga, gb):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)


def test_no_dense_target_called(monkeypatch):
    st = SparseTargets.from_padded(torch.tensor([[1, 4], [0, -1], [2, 3]]), 5)

    def forbidden(*args, **kwargs):
        raise AssertionError("to_dense called by a loss")

    monkeypatch.setattr(SparseTargets, "to_dense", forbidden)
    x = torch.randn(3, 5, requires_grad=True)
    for red in ("none", "mean", "sum"):
        for loss in (MF.binary_cross_entropy_with_logits(x, st, reduction=red, pos_weight=torch.rand(5)),
                     MF.multilabel_soft_margin_loss(x, st, torch.rand(5), reduction=red),
                     MF.multilabel_margin_loss(x, st, reduction=red)):
            loss.sum().backward()


# ------------------------------------------------------------------------------------------ memory
MEMORY_SCRIPT = textwrap.dedent("""
    import json, torch, torch.nn.functional as F
    import multilabel_cuda.functional as MF
    from multilabel_cuda import SparseTargets
    from bench.compare import _RssProbe
    torch.set_num_threads(1)
    N, C = 4, 1 << 20                      # one N x C float32 buffer = 16 MiB
    probe = _RssProbe()
    assert probe.ok, probe.why
    x = torch.randn(N, C, requires_grad=True)
    st = SparseTargets.from_padded(torch.randint(0, C, (N, 16)), C)
    pw = torch.rand(C)
    def measure(loss):
        step = lambda: torch.autograd.grad(loss().sum(), x)  # keeps the gradient until read
        step()
        return probe.measure(step) / (N * C * 4)
    out = {}
    for red in ("none", "sum"):
        out["bce_" + red] = measure(lambda: MF.binary_cross_entropy_with_logits(x, st, reduction=red, pos_weight=pw))
        out["soft_" + red] = measure(lambda: MF.multilabel_soft_margin_loss(x, st, reduction=red))
        out["native_bce_" + red] = measure(lambda: F.binary_cross_entropy_with_logits(x, st.to_dense(), reduction=red, pos_weight=pw))
        out["native_soft_" + red] = measure(lambda: F.multilabel_soft_margin_loss(x, st.to_dense(), reduction=red))
    out["target"] = probe.measure(st.to_dense) / (N * C * 4)
    print(json.dumps(out))
""")


def test_memory_no_dense_target():
    """Peak extra host memory of a forward+backward, in N x C float32 buffers, with the RSS probe of
    the benchmark (fresh process, every allocation its own mmap). The sparse path keeps at most the
    gradient and one N x C temporary (softplus(x), or the elementwise loss), and at least a target's
    worth below native on the dense target."""
    peak = run_memory_probe(MEMORY_SCRIPT)
    assert 0.95 < peak["target"] < 1.05, peak  # the probe sees a dense target as one buffer
    for loss in ("bce", "soft"):
        for red in ("none", "sum"):
            ours, native = peak[f"{loss}_{red}"], peak[f"native_{loss}_{red}"]
            assert ours < 2.1, (loss, red, peak)
            assert ours < native - 0.9, (loss, red, peak)
