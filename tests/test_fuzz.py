"""Random layouts against torch.nn.functional (the oracle): shapes of 0-4 dims with empty and unit
dims, permuted / sliced / expanded inputs and targets, broadcast weight / pos_weight, all reductions,
float32 and float64. Fixed seeds: a failure names its case number and replays."""
import pytest
import torch
import torch.nn.functional as F

import multilabel_cuda
import multilabel_cuda.functional as MF
from conftest import tol

CASES = 1000


def _layout(t, gen):
    """Same values, another memory layout: transposed copy, sliced, or expanded from a smaller one."""
    kind = int(torch.randint(0, 4, (), generator=gen))
    if kind == 1 and t.dim() >= 2:  # permuted storage
        perm = torch.randperm(t.dim(), generator=gen).tolist()
        inv = [perm.index(i) for i in range(t.dim())]
        return t.permute(perm).contiguous().permute(inv)
    if kind == 2 and t.dim() >= 1:  # every other element of a bigger tensor
        big = torch.empty(t.shape[:-1] + (2 * t.shape[-1],), dtype=t.dtype)
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


@pytest.mark.parametrize("backend", ["auto", "reference"])
@pytest.mark.parametrize("case", range(CASES))
def test_random_layouts(case, backend):
    multilabel_cuda.set_backend(backend)
    try:
        _check_case(case)
    finally:
        multilabel_cuda.set_backend("auto")


def _check_case(case):
    gen = torch.Generator().manual_seed(case)
    dtype = (torch.float32, torch.float64)[case % 2]
    shape = _shape(gen)
    loss = ("bce", "soft_margin")[case % 4 // 2]
    if loss == "soft_margin" and not shape:
        shape = (3,)
    reduction = ("none", "mean", "sum")[case % 3]
    x = (torch.randn(shape, generator=gen, dtype=torch.float64) * 4).to(dtype)
    y = torch.rand(shape, generator=gen, dtype=torch.float64).to(dtype)
    x, y = _layout(x, gen), _layout(y, gen)
    w = pw = None
    if torch.rand((), generator=gen) < 0.5:
        w = _layout(torch.rand(_broadcastable(shape, gen), generator=gen, dtype=dtype) + 0.5, gen)
    if loss == "bce" and torch.rand((), generator=gen) < 0.5:
        pw = _layout(torch.rand(_broadcastable(shape, gen), generator=gen, dtype=dtype) + 0.5, gen)
    outs = []
    for fn in (MF, F):
        xi = x.detach().requires_grad_()
        if loss == "bce":
            out = fn.binary_cross_entropy_with_logits(xi, y, w, reduction=reduction, pos_weight=pw)
        else:
            out = fn.multilabel_soft_margin_loss(xi, y, w, reduction=reduction)
        g = (torch.autograd.grad(out.sum(), xi)[0] if out.numel() and xi.numel()
             else torch.zeros_like(xi))
        outs.append((out, g))
    (ours, g_ours), (native, g_native) = outs
    assert ours.shape == native.shape and ours.dtype == native.dtype
    torch.testing.assert_close(ours, native, equal_nan=True, **tol(dtype))
    torch.testing.assert_close(g_ours, g_native, equal_nan=True, **tol(dtype))
