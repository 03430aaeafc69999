"""linear_topk against a sort of the full F.linear logits; precision@k and nDCG@k against their
definitions written with plain loops."""
import math

import pytest
import torch
import torch.nn.functional as F

import multilabel_cuda.functional as MF
from multilabel_cuda import LossArgumentError, SparseTargets


def _full_sorted(x, w, b, k):
    """Oracle: the first k of a stable descending sort of the full logits (ties by class index)."""
    v, i = torch.sort(F.linear(x, w, b), dim=-1, descending=True, stable=True)
    return v[..., :k], i[..., :k]


@pytest.mark.parametrize("n,d,c", [(1, 3, 1), (5, 4, 13), (7, 6, 40)])
@pytest.mark.parametrize("chunk", [1, 7, "C", "C+5", None])
@pytest.mark.parametrize("bias", [False, True])
def test_linear_topk_exact_with_ties(n, d, c, chunk, bias):
    """Small-integer data in float64: every logit is exact (no rounding in any GEMM), and ties are
    frequent, so values and indices must equal the stable sort's exactly, for every k."""
    gen = torch.Generator().manual_seed(n * 1000 + c)
    x = torch.randint(-2, 3, (n, d), generator=gen).double()
    w = torch.randint(-2, 3, (c, d), generator=gen).double()
    b = torch.randint(-1, 2, (c,), generator=gen).double() if bias else None
    chunk_size = {"C": c, "C+5": c + 5}.get(chunk, chunk)
    for k in range(0, c + 1):
        v, i = MF.linear_topk(x, w, k, bias=b, chunk_size=chunk_size)
        ev, ei = _full_sorted(x, w, b, k)
        assert v.shape == i.shape == (n, k) and i.dtype == torch.int64 and v.dtype == x.dtype
        assert torch.equal(v, ev), (k, v, ev)
        assert torch.equal(i, ei), (k, i, ei)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("chunk", [1, 7, 64, 100, None])
def test_linear_topk_random(dtype, chunk, device):
    gen = torch.Generator().manual_seed(7)
    x, w, b = (torch.randn(*shape, generator=gen, dtype=dtype).to(device)
               for shape in ((9, 16), (64, 16), (64,)))
    full = F.linear(x, w, b)
    for k in (1, 2, 5, 63, 64):
        v, i = MF.linear_topk(x, w, k, b, chunk_size=chunk)
        ref_v, ref_i = torch.topk(full, k, dim=1)
        tol = dict(rtol=1e-5, atol=1e-5) if dtype == torch.float32 else dict(rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(v, ref_v, **tol)
        torch.testing.assert_close(full.gather(1, i), v, **tol)  # indices name those values
        assert all(len(set(r)) == k for r in i.tolist())       # distinct within a row
        gaps = (ref_v[:, :-1] - ref_v[:, 1:]).min() if k > 1 else torch.tensor(1.0)
        if gaps > 1e-4:  # no near-ties: the same classes in the same order as torch.topk
            assert torch.equal(i, ref_i)


def test_linear_topk_vector_input_and_no_grad():
    x = torch.randn(5, requires_grad=True)
    w = torch.randn(11, 5, requires_grad=True)
    v, i = MF.linear_topk(x, w, 3, chunk_size=4)
    ev, ei = _full_sorted(x.detach(), w.detach(), None, 3)
    assert v.shape == (3,) and not v.requires_grad
    torch.testing.assert_close(v, ev)
    assert torch.equal(i, ei)
    v, i = MF.linear_topk(torch.randn(0, 5), w, 2)
    assert v.shape == i.shape == (0, 2)


def test_linear_topk_nan_ranks_first():
    x = torch.tensor([[1.0, 0.0]])
    w = torch.tensor([[1.0, 0.0], [float("nan"), 0.0], [3.0, 0.0], [2.0, 0.0]])
    v, i = MF.linear_topk(x, w, 2, chunk_size=2)
    assert math.isnan(v[0, 0]) and i[0].tolist() == [1, 2]


def test_linear_topk_bad_arguments():
    x, w, b = torch.randn(3, 4), torch.randn(6, 4), torch.randn(6)
    cases = [
        ((x, torch.randn(6, 5), 2), {}, r"linear_topk: weight of shape \(6, 5\) does not match input of shape \(3, 4\)"),
        ((x, w, 7), {}, r"linear_topk: k = 7 exceeds the number of classes C = 6"),
        ((x, w, -1), {}, r"linear_topk: k must be an int >= 0, got -1"),
        ((x, w, 2.0), {}, r"linear_topk: k must be an int"),
        ((x, w, 2), {"chunk_size": 0}, r"linear_topk: chunk_size must be an int >= 1, got 0"),
        ((x, w, 2), {"chunk_size": -3}, r"linear_topk: chunk_size must be an int >= 1"),
        ((x, w.to("meta"), 2), {}, r"linear_topk: weight is on meta but input is on cpu"),
        ((x, w, 2, b.to("meta")), {}, r"linear_topk: bias is on meta but input is on cpu"),
        ((x, w, 2, torch.randn(5)), {}, r"linear_topk: bias must be \(C,\) = \(6,\)"),
        ((x, w.double(), 2), {}, r"linear_topk: weight has dtype torch.float64 but input has torch.float32"),
        ((x, w, 2, b.double()), {}, r"linear_topk: bias has dtype"),
        ((x.long(), w, 2), {}, r"linear_topk: input must be a floating-point tensor"),
        ((x.unsqueeze(0), w, 2), {}, r"linear_topk: input must be \(N, D\) or \(D,\)"),
        ((x, w[0], 2), {}, r"linear_topk: weight must be \(C, D\)"),
    ]
    for args, kwargs, match in cases:
        with pytest.raises(LossArgumentError, match=match):
            MF.linear_topk(*args, **kwargs)


# --------------------------------------------------------------------------------------- metrics
def plain_precision(pred, positives, k):
    """pred: list of rows of predicted classes; positives: list of sets."""
    return sum(sum(1 for j in row[:k] if j in pos) / k for row, pos in zip(pred, positives)) / len(pred)


def plain_ndcg(pred, positives, k):
    total = 0.0
    for row, pos in zip(pred, positives):
        if not pos:
            continue  # a row without positives scores 0
        dcg = sum(1 / math.log2(i + 2) for i, j in enumerate(row[:k]) if j in pos)
        idcg = sum(1 / math.log2(i + 2) for i in range(min(k, len(pos))))
        total += dcg / idcg
    return total / len(pred)


def _metric_case(n, c, kk, seed):
    gen = torch.Generator().manual_seed(seed)
    pred = torch.stack([torch.randperm(c, generator=gen)[:kk] for _ in range(n)])
    lengths = torch.randint(0, 6, (n,), generator=gen)
    lengths[0] = 0  # a row without positives
    positives = [set(torch.randperm(c, generator=gen)[:int(m)].tolist()) for m in lengths]
    positives[1] |= set(pred[1, :2].tolist())  # some hits for sure
    return pred, positives


@pytest.mark.parametrize("form", ["sparse", "dense", "soft", "dense_int"])
def test_precision_and_ndcg(form, device):
    n, c, kk = 12, 15, 6
    pred, positives = _metric_case(n, c, kk, 11)
    dense = torch.zeros(n, c)
    for r, pos in enumerate(positives):
        dense[r, list(pos)] = 1
    if form == "sparse":
        targets = SparseTargets.from_dense(dense)
    elif form == "soft":
        targets = SparseTargets.from_dense(dense * (torch.rand(n, c) + 0.1))
    elif form == "dense_int":
        targets = dense.long()
    else:
        targets = dense
    pred, targets = pred.to(device), targets.to(device)
    for k in range(1, kk + 1):
        p = MF.precision_at_k(pred, targets, k)
        g = MF.ndcg_at_k(pred, targets, k)
        assert p.dim() == 0 and g.dim() == 0
        assert p.item() == pytest.approx(plain_precision(pred.tolist(), positives, k), abs=1e-6)
        assert g.item() == pytest.approx(plain_ndcg(pred.tolist(), positives, k), abs=1e-6)


def test_metrics_perfect_and_vector():
    st = SparseTargets.from_padded(torch.tensor([[3, 1, -1], [0, 2, 4]]), 5)
    pred = torch.tensor([[1, 3, 0, 2], [4, 0, 2, 1]])
    assert MF.precision_at_k(pred, st, 2).item() == 1.0
    assert MF.ndcg_at_k(pred, st, 4).item() == pytest.approx(1.0)
    assert MF.precision_at_k(pred, st, 4).item() == pytest.approx((2 / 4 + 3 / 4) / 2)
    vec = SparseTargets.from_padded(torch.tensor([2, -1]), 5)
    assert MF.precision_at_k(torch.tensor([0, 2]), vec, 2).item() == 0.5
    assert MF.ndcg_at_k(torch.tensor([0, 2]), torch.tensor([0, 0, 1.0, 0, 0]), 2).item() == \
        pytest.approx((1 / math.log2(3)) / 1.0)
    assert MF.ndcg_at_k(pred, SparseTargets.from_padded(torch.full((2, 1), -1), 5), 3).item() == 0.0


def test_metrics_with_linear_topk():
    gen = torch.Generator().manual_seed(3)
    x, w = torch.randn(20, 8, generator=gen), torch.randn(50, 8, generator=gen)
    _, idx = MF.linear_topk(x, w, 5, chunk_size=16)
    positives = [set(r[:2]) for r in idx.tolist()]  # each row's best two are its positives
    st = SparseTargets.from_csr(torch.tensor([j for r in idx.tolist() for j in r[:2]]),
                                torch.arange(0, 41, 2), 50)
    assert MF.precision_at_k(idx, st, 5).item() == pytest.approx(plain_precision(idx.tolist(), positives, 5))
    assert MF.ndcg_at_k(idx, st, 5).item() == pytest.approx(1.0)


def test_metric_bad_arguments():
    st = SparseTargets.from_padded(torch.tensor([[3, 1], [0, 2]]), 5)
    pred = torch.tensor([[1, 3, 0], [4, 0, 2]])
    for fn, name in ((MF.precision_at_k, "precision_at_k"), (MF.ndcg_at_k, "ndcg_at_k")):
        cases = [
            ((pred, st, 4), rf"{name}: topk_indices of shape \(2, 3\) does not fit targets of N = 2 rows and k = 4"),
            ((pred[:1], st, 2), rf"{name}: topk_indices of shape \(1, 3\) does not fit"),
            ((pred.float(), st, 2), rf"{name}: topk_indices must be an integer tensor"),
            ((pred + 3, st, 2), rf"{name}: topk_indices holds 7, outside \[0, 5\)"),
            ((pred - 1, st, 2), rf"{name}: topk_indices holds -1, outside \[0, 5\)"),
            ((pred, st, 0), rf"{name}: k must be an int >= 1, got 0"),
            ((pred, st.to("meta"), 2), rf"{name}: topk_indices is on cpu but targets is on meta"),
            ((pred, torch.rand(2, 5, 1), 2), rf"{name}: targets must be a SparseTargets or a real"),
            ((pred, [[0, 1]], 2), rf"{name}: targets must be a Tensor"),
        ]
        for args, match in cases:
            with pytest.raises(LossArgumentError, match=match):
                fn(*args)
