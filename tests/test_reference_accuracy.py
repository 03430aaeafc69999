"""The pure-PyTorch fallback is at least as accurate as native torch.nn.functional.

Each case runs the fallback (backend "reference") and native on the same low-precision inputs and
measures both against a float64 oracle (native torch.nn.functional on float64 copies). Per element:

  (a) error(fallback) <= error(native) + 2 * slack, and
  (b) error(fallback) <= half an ulp of the result type at the oracle's value + slack:
      the result is computed in a wider type and rounded once.

slack bounds the error of that wider computation: 2**-18 (64 float32 epsilons) times a magnitude
of the terms the value is made of (given per formula below), far below half an ulp of float16
(>= 2**-12 relative) and bfloat16 (>= 2**-9). Margin losses and gradients are accumulated exactly
before the one rounding (slack: a relative 2**-40); their scores lie on a grid where the hinge
test is exact in every type, so native, fallback and oracle activate the same hinges."""
import pytest
import torch
import torch.nn.functional as F

import multilabel_cuda.functional as MF

REDUCTIONS = ["none", "mean", "sum"]
HALF_TYPES = [torch.bfloat16, torch.float16]
WIDE_REL = 2.0 ** -18


def half_ulp(value, dtype):
    """Half an ulp of `dtype` at each |value| (float64 tensor); subnormals have the fixed ulp."""
    fi = torch.finfo(dtype)
    _, e = torch.frexp(value.abs())  # |value| = m * 2**e, m in [0.5, 1)
    ulp = torch.ldexp(torch.full_like(value, fi.eps), (e - 1).to(torch.int32))
    return torch.maximum(ulp, torch.full_like(value, fi.smallest_normal * fi.eps)) / 2


def assert_not_worse(ours, native, oracle, dtype, slack, what):
    """(a) and (b) above, elementwise; native None (no native kernel for the type): (b) only."""
    ours, oracle = ours.double(), oracle.double()
    assert ours.shape == oracle.shape, what
    assert torch.isfinite(oracle).all(), f"{what}: the case overflows {dtype}"
    err = (ours - oracle).abs()
    if native is not None:
        err_native = (native.double() - oracle).abs()
        worst = (err - err_native - 2 * slack).max()
        assert worst <= 0, (f"{what}: fallback error {err.max().item():.3g} exceeds native's "
                            f"{err_native.max().item():.3g} (by {float(worst):.3g} beyond the slack)")
    excess = (err - half_ulp(oracle, dtype) - slack).max()
    assert excess <= 0, (f"{what}: fallback error {err.max().item():.3g} is not one rounding to "
                         f"{dtype} (by {float(excess):.3g} beyond half an ulp and the slack)")


def reduce_like(t, reduction):
    """The magnitude of a reduced value: the same reduction applied to per-element magnitudes."""
    if reduction == "mean":
        return t.mean()
    if reduction == "sum":
        return t.sum()
    return t


def run(fn, x, *others, reduction):
    """Loss and gradients w.r.t. (x, *others that require grad), upstream gradient 1."""
    x = x.detach().clone().requires_grad_()
    loss = fn(x, *others, reduction=reduction)
    wrt = [x] + [t for t in others if isinstance(t, torch.Tensor) and t.requires_grad]
    grads = torch.autograd.grad(loss, wrt, torch.ones_like(loss))
    return loss.detach(), list(grads)


def logits(kind, shape, gen):
    if kind == "random":
        return torch.randn(shape, generator=gen, dtype=torch.float64) * 4
    # Near +-60: log_sigmoid is x up to ~1e-26 and sigmoid is 0 or 1 in every type.
    sign = torch.where(torch.rand(shape, generator=gen) < 0.5, -1.0, 1.0).double()
    return sign * (60 + torch.randn(shape, generator=gen, dtype=torch.float64))


# 0-dim, small and (N, C); the (N, C) shape keeps sums of |loss| ~ 60 below float16's maximum.
BCE_SHAPES = [(), (1,), (3,), (4, 7), (8, 33)]
SOFT_MARGIN_SHAPES = [(1,), (5,), (4, 7), (8, 33)]
OPTIONS = ["plain", "weight", "pos_weight"]


def make_bce_case(dtype, shape, kind, option, seed):
    gen = torch.Generator().manual_seed(seed)
    x = logits(kind, shape, gen).to(dtype)
    y = torch.rand(shape, generator=gen, dtype=torch.float64)
    y = (y.round() if seed % 2 else y).to(dtype)  # hard labels or soft ones
    cols = shape[-1:]
    w = (torch.rand(cols, generator=gen, dtype=torch.float64) + 0.5).to(dtype) \
        if option == "weight" else None
    pw = (torch.rand(cols, generator=gen, dtype=torch.float64) * 3).to(dtype) \
        if option == "pos_weight" else None
    return x, y, w, pw


@pytest.mark.parametrize("seed", range(2))
@pytest.mark.parametrize("option", OPTIONS)
@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("kind", ["random", "near60"])
@pytest.mark.parametrize("shape", BCE_SHAPES, ids=str)
@pytest.mark.parametrize("dtype", HALF_TYPES, ids=str)
def test_bce_half_types(reference_backend, dtype, shape, kind, reduction, option, seed):
    x, y, w, pw = make_bce_case(dtype, shape, kind, option, seed)
    y.requires_grad_()

    def loss(fn):
        def f(x, y, w, pw, reduction):
            return fn(x, y, w, reduction=reduction, pos_weight=pw)
        return f

    ours, (gx, gy) = run(loss(MF.binary_cross_entropy_with_logits), x, y, w, pw, reduction=reduction)
    native, (nx, ny) = run(loss(F.binary_cross_entropy_with_logits), x, y, w, pw,
                           reduction=reduction)
    d = [t.double() if t is not None else None for t in (x, y.detach(), w, pw)]
    yd = d[1].clone().requires_grad_()
    oracle, (ox, oy) = run(loss(F.binary_cross_entropy_with_logits), d[0], yd, d[2], d[3],
                           reduction=reduction)

    # Magnitudes of the terms: loss w[(1-y)x - l*logsigmoid(x)] with l = (pw-1)y+1 and
    # |logsigmoid(x)| <= |x| + 1; d/dx = w(l*sigmoid(x) - pw*y); d/dy = w(-x - (pw-1)logsigmoid(x)).
    xd, y64 = d[0], d[1]
    wm = d[2].abs() if d[2] is not None else 1.0
    pwd = d[3] if d[3] is not None else torch.ones((), dtype=torch.float64)
    lw = ((pwd - 1) * y64 + 1).abs()
    scale = 1 / max(xd.numel(), 1) if reduction == "mean" else 1.0
    ax = xd.abs() + 1
    loss_mag = reduce_like(wm * ((1 - y64).abs() + lw) * ax * torch.ones_like(xd), reduction)
    gx_mag = wm * (lw + (pwd * y64).abs()) * scale
    gy_mag = wm * (1 + (pwd - 1).abs()) * ax * scale

    what = f"bce {dtype} {shape} {kind} {reduction} {option}"
    assert ours.dtype == dtype and gx.dtype == dtype and gy.dtype == dtype
    assert_not_worse(ours, native, oracle, dtype, WIDE_REL * loss_mag, what + " loss")
    assert_not_worse(gx, nx, ox, dtype, WIDE_REL * gx_mag, what + " input grad")
    assert_not_worse(gy, ny, oy, dtype, WIDE_REL * gy_mag, what + " target grad")


@pytest.mark.parametrize("seed", range(2))
@pytest.mark.parametrize("weighted", [False, True])
@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("kind", ["random", "near60"])
@pytest.mark.parametrize("shape", SOFT_MARGIN_SHAPES, ids=str)
@pytest.mark.parametrize("dtype", HALF_TYPES, ids=str)
def test_soft_margin_half_types(reference_backend, dtype, shape, kind, reduction, weighted, seed):
    x, y, w, _ = make_bce_case(dtype, shape, kind, "weight" if weighted else "plain", seed)

    def loss(fn):
        def f(x, y, w, reduction):
            return fn(x, y, w, reduction=reduction)
        return f

    ours, (gx,) = run(loss(MF.multilabel_soft_margin_loss), x, y, w, reduction=reduction)
    native, (nx,) = run(loss(F.multilabel_soft_margin_loss), x, y, w, reduction=reduction)
    xd, y64 = x.double(), y.double()
    wd = w.double() if w is not None else None
    oracle, (ox,) = run(loss(F.multilabel_soft_margin_loss), xd, y64, wd, reduction=reduction)

    # Per element: w[y*logsigmoid(x) + (1-y)*logsigmoid(-x)] / C, each |logsigmoid| <= |x| + 1;
    # d/dx = w(sigmoid(x) - y) / C.
    c = shape[-1]
    wm = wd.abs() if wd is not None else 1.0
    rows = xd.numel() // c
    scale = 1 / rows if reduction == "mean" else 1.0
    elem = wm * (y64.abs() + (1 - y64).abs()) * (xd.abs() + 1) / c
    loss_mag = reduce_like(elem.sum(-1), reduction)
    gx_mag = wm * (1 + y64.abs()) / c * scale

    what = f"soft margin {dtype} {shape} {kind} {reduction} weighted={weighted}"
    assert ours.dtype == dtype and gx.dtype == dtype
    assert_not_worse(ours, native, oracle, dtype, WIDE_REL * loss_mag, what + " loss")
    assert_not_worse(gx, nx, ox, dtype, WIDE_REL * gx_mag, what + " input grad")


def margin_case(case, n, c, gen):
    """Scores on a grid of 2**-8 within +-8, so 1 - x[y] + x[i] is exact in float32 and float64:
    every hinge is active in both or in neither, and the comparison is about accumulation. Targets:
    one index listed ~C/4 times, a few others listed again, then -1 and junk (native ignores it)."""
    if case == "ties":  # few distinct scores: many equal, many pairs exactly 1 apart (z = 0)
        x = torch.randint(-3, 4, (n, c), generator=gen).double() / 2
    else:
        x = (torch.randn(n, c, generator=gen, dtype=torch.float64) * 256).round().clamp(-2000,
                                                                                       2000) / 256
    k = c // 4 + 40
    y = torch.randint(0, c, (n, c), generator=gen)
    for r in range(n):
        y[r, : c // 4] = r  # duplicated target
        y[r, c // 4: k] = torch.randint(0, 20, (40,), generator=gen)  # more duplicates, some of r
        y[r, k] = -1
    return x, y


@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("case", ["ties", "random"])
def test_margin_float32_wide_row(reference_backend, case, reduction):
    gen = torch.Generator().manual_seed(7)
    x, y = margin_case(case, 3, 4097, gen)
    x32 = x.float()
    ours, (g,) = run(MF.multilabel_margin_loss, x32, y, reduction=reduction)
    native, (ng,) = run(F.multilabel_margin_loss, x32, y, reduction=reduction)
    oracle, (og,) = run(F.multilabel_margin_loss, x32.double(), y, reduction=reduction)
    assert ours.dtype == torch.float32 and g.dtype == torch.float32
    what = f"margin {case} {reduction}"
    assert_not_worse(ours, native, oracle, torch.float32, 2.0 ** -40 * oracle.abs(), what + " loss")
    assert_not_worse(g, ng, og, torch.float32, 2.0 ** -40 * og.abs(), what + " input grad")


@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("case", ["ties", "random"])
@pytest.mark.parametrize("dtype", HALF_TYPES, ids=str)
def test_margin_half_types_round_once(reference_backend, dtype, case, reduction):
    """Native has no CPU kernel for the half types: (b) only, against float64 on the same values."""
    gen = torch.Generator().manual_seed(11)
    x, y = margin_case(case, 3, 1025, gen)
    xh = x.to(dtype)
    ours, (g,) = run(MF.multilabel_margin_loss, xh, y, reduction=reduction)
    oracle, (og,) = run(F.multilabel_margin_loss, xh.double(), y, reduction=reduction)
    assert ours.dtype == dtype and g.dtype == dtype
    what = f"margin {dtype} {case} {reduction}"
    assert_not_worse(ours, None, oracle, dtype, 2.0 ** -40 * oracle.abs(), what + " loss")
    assert_not_worse(g, None, og, dtype, 2.0 ** -40 * og.abs(), what + " input grad")
