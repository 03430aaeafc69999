"""The CUDA kernels on a real device: parity with torch.nn.functional, gradcheck, opcheck, CPU-vs-CUDA
agreement, determinism and empty batches. Skipped without a CUDA device (`pytest -m cuda`)."""
import pytest
import torch
import torch.nn.functional as F

import multilabel_cuda
from multilabel_cuda import _backend
from multilabel_cuda import functional as MF

pytestmark = [
    pytest.mark.cuda,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
    pytest.mark.skipif("cuda" not in _backend.KERNEL_DEVICES.get("bce_with_logits", ()),
                       reason="extension built without CUDA kernels"),
]

DTYPES = [torch.float32, torch.float64, torch.float16, torch.bfloat16]
REDUCTIONS = ["none", "mean", "sum"]
# (name, weight shape, pos_weight shape) relative to an (N, C) input; None = absent.
WEIGHTS = [
    ("none", None, None),
    ("weight_full", "NC", None),
    ("weight_col", "C", None),
    ("weight_row", "N1", None),
    ("pos_weight", None, "C"),
    ("both", "C", "C"),
    ("scalar_weight", "1", "1"),
]
SHAPES = [(1, 1), (3, 31), (4, 33), (2, 5000), (257, 40)]
TOL = {torch.float32: (2e-5, 1e-6), torch.float64: (1e-10, 1e-12),
       torch.float16: (2e-3, 1e-3), torch.bfloat16: (1.6e-2, 1e-2)}


def _shape(spec, n, c):
    return {"NC": (n, c), "C": (c,), "N1": (n, 1), "1": (1,)}[spec]


def _make(n, c, dtype, wspec, pwspec, device="cuda", seed=0):
    g = torch.Generator().manual_seed(seed)
    x = (torch.randn(n, c, generator=g, dtype=torch.float64) * 4).to(device=device, dtype=dtype)
    y = torch.rand(n, c, generator=g, dtype=torch.float64).to(device=device, dtype=dtype)
    w = None if wspec is None else (
        torch.rand(_shape(wspec, n, c), generator=g, dtype=torch.float64) + 0.5).to(device=device, dtype=dtype)
    pw = None if pwspec is None else (
        torch.rand(_shape(pwspec, n, c), generator=g, dtype=torch.float64) * 2 + 0.5).to(device=device, dtype=dtype)
    return x, y, w, pw


def _native_fp32(fn, x, *args, **kw):
    """The native loss and input gradient computed in fp32/fp64 (oracle for the half types)."""
    up = torch.float64 if x.dtype == torch.float64 else torch.float32
    xx = x.detach().to(up).requires_grad_(True)
    args = [a.to(up) if isinstance(a, torch.Tensor) else a for a in args]
    kw = {k: (v.to(up) if isinstance(v, torch.Tensor) else v) for k, v in kw.items()}
    loss = fn(xx, *args, **kw)
    (g,) = torch.autograd.grad(loss.sum(), xx)
    return loss.detach(), g


def _ours(fn, x, *args, **kw):
    xx = x.detach().clone().requires_grad_(True)
    loss = fn(xx, *args, **kw)
    (g,) = torch.autograd.grad(loss.sum(), xx)
    return loss.detach(), g


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("weights", WEIGHTS, ids=lambda w: w[0])
@pytest.mark.parametrize("shape", SHAPES, ids=str)
def test_bce_parity(dtype, reduction, weights, shape):
    _, wspec, pwspec = weights
    x, y, w, pw = _make(*shape, dtype, wspec, pwspec)
    want_l, want_g = _native_fp32(F.binary_cross_entropy_with_logits, x, y, weight=w,
                                  pos_weight=pw, reduction=reduction)
    got_l, got_g = _ours(MF.binary_cross_entropy_with_logits, x, y, weight=w, pos_weight=pw,
                         reduction=reduction)
    rtol, atol = TOL[dtype]
    torch.testing.assert_close(got_l.to(want_l.dtype), want_l, rtol=rtol, atol=atol)
    torch.testing.assert_close(got_g.to(want_g.dtype), want_g, rtol=rtol, atol=atol)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("wspec", [None, "C", "NC"])
@pytest.mark.parametrize("shape", SHAPES, ids=str)
def test_soft_margin_parity(dtype, reduction, wspec, shape):
    x, y, w, _ = _make(*shape, dtype, wspec, None)
    y = (y > 0.5).to(dtype)
    want_l, want_g = _native_fp32(F.multilabel_soft_margin_loss, x, y, weight=w, reduction=reduction)
    got_l, got_g = _ours(MF.multilabel_soft_margin_loss, x, y, weight=w, reduction=reduction)
    rtol, atol = TOL[dtype]
    torch.testing.assert_close(got_l.to(want_l.dtype), want_l, rtol=rtol, atol=atol)
    torch.testing.assert_close(got_g.to(want_g.dtype), want_g, rtol=rtol, atol=atol)


@pytest.mark.parametrize("offset", [0, 1])
def test_misaligned_and_strided(offset):
    base = torch.randn(7 * 41 + offset, device="cuda")
    x = base[offset:].view(7, 41)
    y = torch.rand(41, 7, device="cuda").t()  # non-contiguous target
    for red in REDUCTIONS:
        want = F.binary_cross_entropy_with_logits(x, y, reduction=red)
        got = MF.binary_cross_entropy_with_logits(x, y, reduction=red)
        torch.testing.assert_close(got, want, rtol=2e-5, atol=1e-6)


def test_gradcheck_float64():
    x, y, w, pw = _make(3, 37, torch.float64, "C", "C")
    x.requires_grad_(True)
    for red in REDUCTIONS:
        assert torch.autograd.gradcheck(
            lambda t: MF.binary_cross_entropy_with_logits(t, y, weight=w, pos_weight=pw, reduction=red), (x,))
        assert torch.autograd.gradcheck(
            lambda t: MF.multilabel_soft_margin_loss(t, y, weight=w, reduction=red), (x,))


@pytest.mark.parametrize("reduction", [0, 1, 2])
def test_opcheck(reduction):
    x, y, w, pw = _make(4, 33, torch.float32, "C", "C")
    x.requires_grad_(True)
    torch.library.opcheck(torch.ops.multilabel_cuda.bce_with_logits.default,
                          (x, y, w, pw, reduction, True))
    torch.library.opcheck(torch.ops.multilabel_cuda.multilabel_soft_margin.default,
                          (x, y, w, reduction, True))


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_cpu_cuda_agree(dtype):
    x, y, w, pw = _make(9, 1000, dtype, "C", "C", device="cpu")
    for red in (0, 1, 2):
        cpu = torch.ops.multilabel_cuda.bce_with_logits(x, y, w, pw, red, True)
        gpu = torch.ops.multilabel_cuda.bce_with_logits(x.cuda(), y.cuda(), w.cuda(), pw.cuda(), red, True)
        sm_cpu = torch.ops.multilabel_cuda.multilabel_soft_margin(x, y, w, red, True)
        sm_gpu = torch.ops.multilabel_cuda.multilabel_soft_margin(x.cuda(), y.cuda(), w.cuda(), red, True)
        rtol, atol = TOL[dtype]
        for a, b in zip(cpu + sm_cpu, gpu + sm_gpu):
            torch.testing.assert_close(b.cpu().float(), a.float(), rtol=rtol, atol=atol)


def test_deterministic():
    x, y, w, pw = _make(300, 7000, torch.float32, "C", "C")
    for red in (0, 1, 2):
        a = torch.ops.multilabel_cuda.bce_with_logits(x, y, w, pw, red, True)
        b = torch.ops.multilabel_cuda.bce_with_logits(x, y, w, pw, red, True)
        c = torch.ops.multilabel_cuda.multilabel_soft_margin(x, y, w, red, True)
        d = torch.ops.multilabel_cuda.multilabel_soft_margin(x, y, w, red, True)
        for u, v in zip(a + c, b + d):
            assert torch.equal(u, v)


@pytest.mark.parametrize("shape", [(0, 5), (3, 0), (0,), (0, 0), (2, 0, 0)], ids=str)
def test_empty_batch(shape):
    x = torch.randn(shape, device="cuda", requires_grad=True)
    y = torch.rand(shape, device="cuda")
    for red in REDUCTIONS:
        got = MF.binary_cross_entropy_with_logits(x, y, reduction=red)
        want = F.binary_cross_entropy_with_logits(x, y, reduction=red)
        torch.testing.assert_close(got, want, equal_nan=True)
        got.sum().backward()
        assert x.grad.shape == x.shape
        x.grad = None
        got = MF.multilabel_soft_margin_loss(x, y, reduction=red)
        want = F.multilabel_soft_margin_loss(x.detach(), y, reduction=red)
        torch.testing.assert_close(got, want, equal_nan=True)


def test_expanded_single_column_input():
    """An expanded (N, 1) input has stride-0 rows: it must not be read as one contiguous row."""
    x = torch.randn(1, 1, device="cuda").expand(5, 1)
    y = torch.rand(1, 1, device="cuda").expand(5, 1)
    for red in REDUCTIONS:
        torch.testing.assert_close(MF.binary_cross_entropy_with_logits(x, y, reduction=red),
                                   F.binary_cross_entropy_with_logits(x, y, reduction=red))


def test_large_rows_and_extremes():
    x = torch.tensor([[1e4, -1e4, 30.0, -30.0, 0.0] * 3000], device="cuda")
    y = torch.tensor([[0.0, 1.0, 1.0, 0.0, 0.5] * 3000], device="cuda")
    for red in REDUCTIONS:
        torch.testing.assert_close(MF.binary_cross_entropy_with_logits(x, y, reduction=red),
                                   F.binary_cross_entropy_with_logits(x, y, reduction=red))
    assert multilabel_cuda.backend() == "extension"


# ---- multilabel margin (csrc/cuda/margin_kernel.cuh)

margin_kernel = pytest.mark.skipif(
    "cuda" not in _backend.KERNEL_DEVICES.get("multilabel_margin", ()),
    reason="extension built without the CUDA margin kernel")
MARGIN_SHAPES = [(1, 1), (3, 31), (4, 33), (2, 300), (65, 40), (2, 3000)]


def _margin_target(n, c, g, kind):
    """(n, c) int64 target, -1 terminated: random distinct positives, duplicates or all classes."""
    y = torch.full((n, c), -1, dtype=torch.long)
    for r in range(n):
        if kind == "all":
            y[r] = torch.randperm(c, generator=g)
        elif kind == "dup":
            p = int(torch.randint(1, c + 1, (1,), generator=g))
            y[r, :p] = torch.randint(0, min(c, 3), (p,), generator=g)
        else:
            p = int(torch.randint(0, min(c, 70) + 1, (1,), generator=g))
            y[r, :p] = torch.randperm(c, generator=g)[:p]
            if p + 1 < c:  # junk after the -1 is ignored
                y[r, p + 1:] = torch.randint(0, c, (c - p - 1,), generator=g)
    return y


def _native_margin(x, y, reduction, up=torch.float64):
    """Native loss and input gradient computed in `up` (the int64 target stays as it is). fp64 by
    default: native accumulates the gradient of a target in the scalar type, one hinge at a time,
    which in fp32 is off by ~1e-4 relative for a target with many active hinges (duplicates)."""
    xx = x.detach().to(up).requires_grad_(True)
    loss = F.multilabel_margin_loss(xx, y, reduction=reduction)
    (g,) = torch.autograd.grad(loss.sum(), xx)
    return loss.detach(), g


@margin_kernel
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("kind", ["random", "dup", "all"])
@pytest.mark.parametrize("shape", MARGIN_SHAPES, ids=str)
def test_margin_parity(dtype, reduction, kind, shape):
    g = torch.Generator().manual_seed(sum(shape))
    x = (torch.randn(*shape, generator=g, dtype=torch.float64) * 2).to("cuda", dtype)
    y = _margin_target(*shape, g, kind).cuda()
    want_l, want_g = _native_margin(x, y, reduction)
    got_l, got_g = _ours(MF.multilabel_margin_loss, x, y, reduction=reduction)
    rtol, atol = TOL[dtype]
    torch.testing.assert_close(got_l.to(want_l.dtype), want_l, rtol=rtol, atol=atol)
    torch.testing.assert_close(got_g.to(want_g.dtype), want_g, rtol=rtol, atol=atol)


@margin_kernel
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=str)
def test_margin_ties_nan_and_1d(dtype):
    g = torch.Generator().manual_seed(3)
    x = torch.randint(-3, 4, (5, 37), generator=g).to("cuda", dtype)  # scores exactly 1 apart
    x[2, 4] = float("nan")
    y = _margin_target(5, 37, g, "random").cuda()
    y[2, 0], y[2, 1] = 5, -1
    for red in REDUCTIONS:
        for xi, yi in ((x, y), (x[0], y[0])):
            want_l, want_g = _native_margin(xi, yi, red, up=dtype)
            got_l, got_g = _ours(MF.multilabel_margin_loss, xi, yi, reduction=red)
            torch.testing.assert_close(got_l, want_l, equal_nan=True)
            torch.testing.assert_close(got_g, want_g, equal_nan=True)


@margin_kernel
@pytest.mark.parametrize("k", [0, 1, 7, 40])
def test_margin_compact_target_matches_cpu(k):
    g = torch.Generator().manual_seed(k)
    x = torch.randn(9, 40, generator=g)
    y = torch.stack([torch.randperm(40, generator=g)[:k] for _ in range(9)])
    if k > 2:
        y[1, 2] = -1
    for red in (0, 1, 2):
        cpu = torch.ops.multilabel_cuda.multilabel_margin(x, y, red, True)
        gpu = torch.ops.multilabel_cuda.multilabel_margin(x.cuda(), y.cuda(), red, True)
        for a, b in zip(cpu, gpu):
            torch.testing.assert_close(b.cpu(), a, rtol=2e-5, atol=1e-6)


@margin_kernel
@pytest.mark.parametrize("bad", [7, -2])
def test_margin_out_of_range(bad):
    x = torch.randn(2, 5, device="cuda")
    y = torch.tensor([[0, 1, -1, 2, 3], [4, -1, 0, 0, 0]], device="cuda")
    y[1, 3] = bad  # after the -1: still checked
    with pytest.raises(RuntimeError, match=rf"target index {bad} out of range \[-1, 5\)"):
        MF.multilabel_margin_loss(x, y)


@margin_kernel
def test_margin_deterministic_and_empty():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(300, 2000, generator=g).cuda()
    y = _margin_target(300, 2000, g, "random").cuda()
    for red in (0, 1, 2):
        a = torch.ops.multilabel_cuda.multilabel_margin(x, y, red, True)
        b = torch.ops.multilabel_cuda.multilabel_margin(x, y, red, True)
        for u, v in zip(a, b):
            assert torch.equal(u, v)
    x0 = torch.randn(0, 5, device="cuda")
    y0 = torch.zeros(0, 5, dtype=torch.long, device="cuda")
    assert MF.multilabel_margin_loss(x0, y0, reduction="sum").item() == 0
    assert torch.isnan(MF.multilabel_margin_loss(x0, y0, reduction="mean"))
    assert MF.multilabel_margin_loss(x0, y0, reduction="none").shape == (0,)


@margin_kernel
@pytest.mark.parametrize("reduction", [0, 1, 2])
def test_margin_opcheck_and_gradcheck(reduction):
    g = torch.Generator().manual_seed(reduction)
    x = torch.randn(4, 33, generator=g, dtype=torch.float64).cuda().requires_grad_(True)
    y = _margin_target(4, 33, g, "random").cuda()
    torch.library.opcheck(torch.ops.multilabel_cuda.multilabel_margin.default,
                          (x, y, reduction, True))
    red = REDUCTIONS[reduction]
    assert torch.autograd.gradcheck(lambda t: MF.multilabel_margin_loss(t, y, reduction=red), (x,))


@pytest.mark.parametrize("dtype", DTYPES)
def test_backward_scales_in_place_and_skips_an_upstream_of_one(dtype):
    """_scale_grad_ on the device: loss.backward() adopts the fused buffer as x.grad (upstream 1,
    read on the device, leaves it as is); other upstreams scale it in place; a retained graph's next
    backward recomputes the buffer it gave away."""
    x = torch.randn(64, 300, device="cuda").to(dtype)
    y = torch.rand(64, 300, device="cuda").to(dtype)
    xr = x.float().requires_grad_()
    (want,) = torch.autograd.grad(F.binary_cross_entropy_with_logits(xr, y.float()), xr)
    rtol, atol = TOL[dtype]
    xg = x.clone().requires_grad_()
    loss, grad = torch.ops.multilabel_cuda.bce_with_logits(xg, y, None, None, 1, True)
    ptr = grad.data_ptr()
    del grad
    loss.backward(retain_graph=True)
    assert xg.grad.data_ptr() == ptr
    torch.testing.assert_close(xg.grad.float(), want, rtol=rtol, atol=atol)
    for upstream in (2.5, 1.0, 0.0):
        (g,) = torch.autograd.grad(loss, xg, torch.tensor(upstream, device="cuda", dtype=dtype),
                                   retain_graph=True)
        torch.testing.assert_close(g.float(), want * upstream, rtol=rtol, atol=atol)
