"""Random cases against torch.nn.functional (the oracle), on the extension and the reference.
BCE / soft margin: shapes of 0-4 dims with empty and unit dims, permuted / sliced / expanded inputs
and targets, broadcast weight / pos_weight. Margin: 0-2 dims, duplicated and junk-padded targets,
integer and 1e4-scaled scores, compact and strided targets. All reductions, float32 and float64.
Every case asserts which implementation ran. Fixed seeds: a failure names its case number and replays."""
import pytest
import torch
import torch.nn.functional as F

import multilabel_cuda.functional as MF
from conftest import tol

CASES = 1000


def _layout(t, gen):
    """Another memory layout: a permuted copy or a strided slice (same values), or the first row
    expanded over the others (new values, the same for both implementations)."""
    kind = int(torch.randint(0, 4, (), generator=gen))
    if kind == 1 and t.dim() >= 2:  # permuted storage
        perm = torch.randperm(t.dim(), generator=gen).tolist()
        inv = [perm.index(i) for i in range(t.dim())]
        return t.permute(perm).contiguous().permute(inv)
    if kind == 2 and t.dim() >= 1:  # every other element of a bigger tensor
        big = torch.empty(t.shape[:-1] + (2 * t.shape[-1],), dtype=t.dtype, device=t.device)
        big[..., ::2] = t
        return big[..., ::2]
    if kind == 3 and t.dim() >= 1 and t.numel() > 0:  # expanded along the first dim
        return t[:1].expand(t.shape) if t.shape[0] > 1 else t
    return t


def _shape(gen):
    nd = int(torch.randint(0, 5, (), generator=gen))
    sizes = [0, 1, 2, 3, 5, 8, 17, 33]
    return tuple(sizes[int(i)] for i in torch.randint(0, len(sizes), (nd,), generator=gen))


def _broadcastable(shape, gen):
    """A random shape that broadcasts to `shape`: drop leading dims, set some dims to 1."""
    keep = int(torch.randint(0, len(shape) + 1, (), generator=gen))
    sub = list(shape[len(shape) - keep:])
    for i in range(len(sub)):
        if torch.rand((), generator=gen) < 0.4:
            sub[i] = 1
    return tuple(sub)


@pytest.mark.parametrize("case", range(CASES))
def test_random_layouts(case, device, backend, expect_impl):
    _check_case(case, device, expect_impl)


def _check_case(case, device, expect_impl):
    gen = torch.Generator().manual_seed(case)
    dtype = (torch.float32, torch.float64)[case % 2]
    shape = _shape(gen)
    loss = ("bce", "soft_margin")[case % 4 // 2]
    if loss == "soft_margin" and not shape:
        shape = (3,)
    reduction = ("none", "mean", "sum")[case % 3]
    x = (torch.randn(shape, generator=gen, dtype=torch.float64) * 4).to(device, dtype)
    y = torch.rand(shape, generator=gen, dtype=torch.float64).to(device, dtype)
    x, y = _layout(x, gen), _layout(y, gen)
    w = pw = None
    if torch.rand((), generator=gen) < 0.5:
        w = torch.rand(_broadcastable(shape, gen), generator=gen, dtype=dtype) + 0.5
        w = _layout(w.to(device), gen)
    if loss == "bce" and torch.rand((), generator=gen) < 0.5:
        pw = torch.rand(_broadcastable(shape, gen), generator=gen, dtype=dtype) + 0.5
        pw = _layout(pw.to(device), gen)
    outs = []
    for fn in (MF, F):
        xi = x.detach().requires_grad_()
        if fn is MF:
            with expect_impl(loss, device):
                out = _loss(fn, loss, xi, y, w, pw, reduction)
        else:
            out = _loss(fn, loss, xi, y, w, pw, reduction)
        g = (torch.autograd.grad(out.sum(), xi)[0] if out.numel() and xi.numel()
             else torch.zeros_like(xi))
        outs.append((out, g))
    (ours, g_ours), (native, g_native) = outs
    assert ours.shape == native.shape and ours.dtype == native.dtype
    torch.testing.assert_close(ours, native, equal_nan=True, **tol(dtype))
    torch.testing.assert_close(g_ours, g_native, equal_nan=True, **tol(dtype))


def _loss(fn, loss, xi, y, w, pw, reduction):
    if loss == "bce":
        return fn.binary_cross_entropy_with_logits(xi, y, w, reduction=reduction, pos_weight=pw)
    return fn.multilabel_soft_margin_loss(xi, y, w, reduction=reduction)


def _check_margin_case(case, device, expect_impl):
    gen = torch.Generator().manual_seed(10_000 + case)
    dtype = (torch.float32, torch.float64)[case % 2]
    reduction = ("none", "mean", "sum")[case % 3]
    nd = int(torch.randint(0, 3, (), generator=gen))
    cols = int(torch.randint(1, 40, (), generator=gen)) if nd else 1
    rows = int(torch.randint(0, 6, (), generator=gen))
    shape = (rows, cols) if nd == 2 else (cols,) if nd == 1 else ()
    scale = float(torch.tensor([1.0, 4.0, 1e4])[int(torch.randint(0, 3, (), generator=gen))])
    x = (torch.randn(shape, generator=gen, dtype=torch.float64) * scale)
    if torch.rand((), generator=gen) < 0.3:  # integer scores: hinges exactly at 0
        x = x.round()
    x = _layout(x.to(device, dtype), gen)
    # Native's target: same shape, class indices (duplicates allowed) cut at the first -1, then junk.
    n_rows = rows if nd == 2 else 1
    full = torch.randint(0, cols, (n_rows, cols), generator=gen)
    for r in range(n_rows):
        p = int(torch.randint(0, cols + 1, (), generator=gen))
        if p < cols:
            full[r, p] = -1
    full = _layout((full.reshape(shape) if nd else full.reshape(())).to(device), gen)
    # Ours also takes a compact target: the first K <= C columns (K past every row's -1), a view.
    target = full
    if nd and torch.rand((), generator=gen) < 0.5:
        ends = [(int((row == -1).nonzero()[0]) + 1 if (row == -1).any() else cols)
                for row in full.reshape(n_rows, cols)]
        target = full[..., :max(ends, default=0)]
    # The oracle runs in float64: native float32 accumulates a target's gradient hinge by hinge
    # (off by ~1e-5 relative with many duplicates), ours sums counts exactly and rounds once.
    xo, xn = x.detach().requires_grad_(), x.detach().double().requires_grad_()
    with expect_impl("margin", device):
        ours = MF.multilabel_margin_loss(xo, target, reduction=reduction)
    native = F.multilabel_margin_loss(xn, full, reduction=reduction)
    assert ours.shape == native.shape and ours.dtype == dtype
    if nd == 2 and rows == 0 and reduction == "mean":  # native: uninitialized memory; ours: NaN
        native = torch.tensor(float("nan"), dtype=torch.float64, device=device)
    torch.testing.assert_close(ours, native.to(dtype), equal_nan=True, **tol(dtype))
    if native.numel() and x.numel():
        g_ours = torch.autograd.grad(ours.sum(), xo)[0]
        g_native = torch.autograd.grad(native.sum(), xn)[0]
        torch.testing.assert_close(g_ours, g_native.to(dtype), equal_nan=True, **tol(dtype))


@pytest.mark.parametrize("case", range(300))
def test_random_margin_cases(case, device, backend, expect_impl):
    _check_margin_case(case, device, expect_impl)
