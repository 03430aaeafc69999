"""BCE-with-logits and multilabel soft margin: parity with torch.nn.functional (the oracle, run in
float64 on the same values) on every device and backend, asserting which implementation ran."""
import pytest
import torch
import torch.nn.functional as F

import multilabel_cuda
import multilabel_cuda.functional as MF
from conftest import DTYPES, HALF_DTYPES, REDUCTIONS, tol

# (2, 16411): rows longer than a CPU work unit (16384 columns), split in two with an odd tail.
SHAPES = [(), (1,), (7,), (1, 1), (4, 7), (3, 33), (2, 3, 17), (5, 1), (3000, 1), (50, 4, 3),
          (0, 5), (5, 0), (2, 16411), (257, 40)]
# Operand kinds, relative to the input's shape. "class" needs a class dimension and "row" a row
# dimension besides it: on fewer dimensions they would be a scalar, so those ids do not exist.
KIND_MIN_DIM = {"none": 0, "scalar": 0, "full": 0, "class": 1, "row": 2}


def _operand(kind, shape):
    shape = {"none": None, "scalar": (), "full": shape, "class": shape[-1:],
             "row": shape[:-1] + (1,)}[kind]
    return None if shape is None else torch.rand(shape, dtype=torch.float64) + 0.5


def _cases(shapes, kinds):
    """(shape, operand kinds) for every shape on which each kind exists."""
    return [pytest.param(s, k, id=f"{s}-{'-'.join(k)}") for s in shapes for k in kinds
            if all(len(s) >= KIND_MIN_DIM[kind] for kind in k)]


def _run(lib, loss, x, y, w, pw, reduction, wrt):
    """lib's loss and its gradients w.r.t. `wrt` for an upstream of ones (zeros when empty)."""
    if loss == "bce":
        out = lib.binary_cross_entropy_with_logits(x, y, w, reduction=reduction, pos_weight=pw)
    else:
        out = lib.multilabel_soft_margin_loss(x, y, w, reduction=reduction)
    if not wrt:
        return out.detach(), []
    if out.numel() == 0 or x.numel() == 0:
        return out.detach(), [torch.zeros_like(t) for t in wrt]
    return out.detach(), list(torch.autograd.grad(out.sum(), wrt))


def compare(expect_impl, loss, device, dtype, x, y, w=None, pw=None, reduction="mean",
            target_grad=False):
    """Ours on (x, y, w, pw) in `dtype` on `device` (asserting the implementation that ran) against
    native in float64 on the same values: loss, input gradient and, if asked, target gradient.
    x, y, w, pw are given as float64 CPU tensors: the same values on every device. The native result
    is rounded to `dtype` once (a half-type sum may overflow to inf, as native's does); NaN where
    native has NaN."""
    def on_device(t):
        return None if t is None else t.to(device, dtype)

    def as_f64(t):
        return None if t is None else t.detach().double()

    xs, ys, ws, pws = (on_device(t) for t in (x, y, w, pw))
    xs.requires_grad_(), ys.requires_grad_(target_grad)
    wrt = [xs, ys] if target_grad else [xs]
    with expect_impl(loss, device):
        ours, g_ours = _run(MF, loss, xs, ys, ws, pws, reduction, wrt)
    x64, y64, w64, pw64 = (as_f64(t) for t in (xs, ys, ws, pws))
    x64.requires_grad_(), y64.requires_grad_(target_grad)
    native, g_native = _run(F, loss, x64, y64, w64, pw64, reduction, [x64, y64] if target_grad else [x64])
    assert ours.device.type == device
    for got, want in zip([ours] + g_ours, [native] + g_native):
        assert got.shape == want.shape and got.dtype == dtype
        torch.testing.assert_close(got.double(), want.to(dtype).double(), equal_nan=True, **tol(dtype))


@pytest.mark.parametrize("shape,kinds", _cases(SHAPES, [
    ("none", "none"), ("class", "none"), ("none", "class"), ("full", "scalar"), ("row", "full"),
    ("scalar", "row")]))
@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_bce_parity(expect_impl, device, backend, dtype, reduction, shape, kinds):
    x = torch.randn(shape, dtype=torch.float64) * 3
    y = torch.rand(shape, dtype=torch.float64)  # soft labels
    w, pw = (_operand(k, shape) for k in kinds)
    compare(expect_impl, "bce", device, dtype, x, y, w, pw, reduction)


@pytest.mark.parametrize("shape,kinds", _cases([s for s in SHAPES if s], [
    ("none",), ("class",), ("full",), ("row",), ("scalar",)]))
@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_soft_margin_parity(expect_impl, device, backend, dtype, reduction, shape, kinds):
    x = torch.randn(shape, dtype=torch.float64) * 3
    y = (torch.rand(shape) > 0.5).double()
    compare(expect_impl, "soft_margin", device, dtype, x, y, _operand(kinds[0], shape), None, reduction)


@pytest.mark.parametrize("scale", [1e4, 1e30])
@pytest.mark.parametrize("pos_weight", [None, 3.0])
@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_extreme_logits_are_stable(expect_impl, device, scale, pos_weight, reduction):
    """Long rows of extreme logits: finite, and as native computes them."""
    x = torch.tensor([[-1.0, 1.0, 0.0, -120.0, 120.0]] * 2, dtype=torch.float64).repeat(1, 3000) * scale
    y = torch.tensor([[0.0, 1.0, 0.5, 1.0, 0.0], [1.0, 0.0, 0.5, 0.0, 1.0]], dtype=torch.float64)
    pw = None if pos_weight is None else torch.full((15000,), pos_weight, dtype=torch.float64)
    compare(expect_impl, "bce", device, torch.float32, x, y.repeat(1, 3000), None, pw, reduction)


def test_grad_at_zero_is_exact(device):
    """From torch's own test_bce_with_logits_has_correct_grad_at_zero: d/dx at x=0, y=0 is 0.5/N."""
    x = torch.zeros(3, 1, device=device, requires_grad=True)
    for pw in (None, torch.ones(1, device=device)):
        MF.binary_cross_entropy_with_logits(x, torch.zeros(3, 1, device=device), pos_weight=pw,
                                            reduction="sum").backward()
        torch.testing.assert_close(x.grad, torch.full((3, 1), 0.5, device=device))
        x.grad = None


@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_nan_and_inf_propagate_like_native(expect_impl, device, reduction):
    x = torch.tensor([float("nan"), float("inf"), -float("inf"), 0.0, 2.0], dtype=torch.float64)
    y = torch.tensor([0.0, 1.0, 0.0, 1.0, float("nan")], dtype=torch.float64)
    for dtype in (torch.float32, torch.float64):
        compare(expect_impl, "bce", device, dtype, x, y, reduction=reduction)
        compare(expect_impl, "soft_margin", device, dtype, x, y, reduction=reduction)


@pytest.mark.parametrize("layout", ["transposed", "sliced", "expanded_target", "channels"])
@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_non_contiguous_arguments(expect_impl, device, layout, reduction):
    f64 = dict(dtype=torch.float64, device=device)
    base = torch.randn(33, 20, **f64)
    if layout == "transposed":
        x, y = base.t(), torch.rand(33, 20, **f64).t()
    elif layout == "sliced":
        x, y = base[:, 3:17], torch.rand(33, 40, **f64)[:, ::2][:, :14]
    elif layout == "expanded_target":
        x, y = base, torch.rand(20, **f64).expand(33, 20)
    else:
        x, y = torch.randn(4, 20, 6, **f64).permute(0, 2, 1), torch.rand(4, 6, 20, **f64)
    w = torch.rand(x.shape[-1] * 2, **f64)[::2]
    x = x.requires_grad_()
    for loss, kw in [("bce", {"pos_weight": w}), ("soft_margin", {})]:
        with expect_impl(loss, device):
            ours, (g,) = _run(MF, loss, x, y, w, kw.get("pos_weight"), reduction, [x])
        native, (g_native,) = _run(F, loss, x, y, w, kw.get("pos_weight"), reduction, [x])
        torch.testing.assert_close(ours, native, **tol(torch.float64))
        torch.testing.assert_close(g, g_native, **tol(torch.float64))


# Short rows the plan cannot read as one long row: a (C,) weight / pos_weight broadcast over rows,
# sliced (padded) rows, soft margin 'none' (a sum a row). On CUDA several such rows share a block
# (csrc/cuda/bce_launch.cuh; the shapes of its launch-shape test in tests/cpp/test_bce_emu.cpp).
# float64 and bfloat16: 2 and 8 elements a 128-bit access (float32's are the emulation's, whose
# oracle scales its tolerance with the terms: on 10^6 elements a float32 loss near 0 from terms near
# 10 is off by an ulp of 10, more than conftest's float32 atol).
@pytest.mark.parametrize("shape", [(4096, 128), (65536, 16), (999, 3)], ids=str)
@pytest.mark.parametrize("sliced", [False, True], ids=["contiguous", "sliced"])
@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("dtype", [torch.float64, torch.bfloat16], ids=str)
def test_short_rows_with_class_weights(expect_impl, device, dtype, reduction, sliced, shape):
    n, c = shape
    on = dict(dtype=dtype, device=device)
    x = (torch.randn(n, c + 3, **on) * 3)[:, 1:c + 1] if sliced else torch.randn(n, c, **on) * 3
    y, w = torch.rand(n, c, **on), torch.rand(c, **on) + 0.5
    x.requires_grad_()
    for loss, weight, pos_weight in [("bce", None, w), ("bce", w, w), ("soft_margin", w, None)]:
        with expect_impl(loss, device):
            ours, (g,) = _run(MF, loss, x, y, weight, pos_weight, reduction, [x])
            again, (g_again,) = _run(MF, loss, x, y, weight, pos_weight, reduction, [x])
        assert torch.equal(ours, again) and torch.equal(g, g_again)  # a fixed summation order
        as64 = [None if t is None else t.detach().double() for t in (x, y, weight, pos_weight)]
        as64[0].requires_grad_()
        native, (g_native,) = _run(F, loss, *as64, reduction, [as64[0]])
        torch.testing.assert_close(ours.double(), native.to(dtype).double(), **tol(dtype))
        torch.testing.assert_close(g.double(), g_native.to(dtype).double(), **tol(dtype))


@pytest.mark.parametrize("loss", ["bce", "soft_margin"])
@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_target_gradient(expect_impl, device, loss, reduction):
    x, y = torch.randn(6, 9, dtype=torch.float64), torch.rand(6, 9, dtype=torch.float64)
    w, pw = torch.rand(9, dtype=torch.float64), torch.rand(9, dtype=torch.float64) + 0.5
    compare(expect_impl, loss, device, torch.float64, x, y, w, pw if loss == "bce" else None,
            reduction, target_grad=True)


def test_weight_gradient_goes_through_reference():
    """Native soft margin differentiates w.r.t. weight (it is composite); so do we."""
    x = torch.randn(5, 8, dtype=torch.float64)
    y = torch.rand(5, 8, dtype=torch.float64).round()
    w = torch.rand(8, dtype=torch.float64, requires_grad=True)
    ours = torch.autograd.grad(MF.multilabel_soft_margin_loss(x, y, w), w)[0]
    native = torch.autograd.grad(F.multilabel_soft_margin_loss(x, y, w), w)[0]
    torch.testing.assert_close(ours, native, **tol(torch.float64))


def test_dtype_promotion_like_native():
    x = torch.randn(4, 5, requires_grad=True)
    y = torch.rand(4, 5, dtype=torch.float64)
    ours = MF.binary_cross_entropy_with_logits(x, y)
    native = F.binary_cross_entropy_with_logits(x, y)
    assert ours.dtype == native.dtype == torch.float64
    torch.testing.assert_close(ours, native)
    assert torch.autograd.grad(ours, x)[0].dtype == torch.float32
    # Integer 0/1 targets: soft margin accepts them (native is composite).
    yi = torch.randint(0, 2, (4, 5))
    torch.testing.assert_close(MF.multilabel_soft_margin_loss(x, yi), F.multilabel_soft_margin_loss(x, yi))


def test_long_rows_are_split_and_deterministic():
    """A single very long row is split into chunks across threads; the sum order is fixed."""
    x = torch.randn(3, 70001, dtype=torch.float32, requires_grad=True)
    y = torch.rand(3, 70001)
    prev = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = MF.binary_cross_entropy_with_logits(x, y)
        torch.set_num_threads(2)
        two = MF.binary_cross_entropy_with_logits(x, y)
    finally:
        torch.set_num_threads(prev)
    assert torch.equal(one, two)
    native = F.binary_cross_entropy_with_logits(x.double(), y.double())
    torch.testing.assert_close(one.double(), native, rtol=1e-6, atol=0)


def test_modules_are_drop_in():
    pw, w = torch.rand(6) + 0.5, torch.rand(6)
    ours = multilabel_cuda.BCEWithLogitsLoss(weight=w, pos_weight=pw, reduction="sum")
    native = torch.nn.BCEWithLogitsLoss(weight=w, pos_weight=pw, reduction="sum")
    assert isinstance(ours, torch.nn.BCEWithLogitsLoss)
    assert ours.state_dict().keys() == native.state_dict().keys()
    x, y = torch.randn(3, 6), torch.rand(3, 6)
    torch.testing.assert_close(ours(x, y), native(x, y))
    sm = multilabel_cuda.MultiLabelSoftMarginLoss(weight=w, reduction="none")
    torch.testing.assert_close(sm(x, y), torch.nn.MultiLabelSoftMarginLoss(weight=w, reduction="none")(x, y))
    with pytest.warns(UserWarning):
        legacy = multilabel_cuda.BCEWithLogitsLoss(size_average=False)
    assert legacy.reduction == "sum"
    torch.testing.assert_close(legacy(x, y), F.binary_cross_entropy_with_logits(x, y, reduction="sum"))


def test_training_loop_matches_native():
    torch.manual_seed(1)
    data, labels = torch.randn(64, 10), (torch.rand(64, 5) > 0.7).float()
    histories = []
    for loss_fn in (multilabel_cuda.BCEWithLogitsLoss(pos_weight=torch.full((5,), 2.0)),
                    torch.nn.BCEWithLogitsLoss(pos_weight=torch.full((5,), 2.0))):
        torch.manual_seed(2)
        model = torch.nn.Sequential(torch.nn.Linear(10, 16), torch.nn.ReLU(), torch.nn.Linear(16, 5))
        opt = torch.optim.SGD(model.parameters(), lr=0.5)
        history = []
        for _ in range(25):
            opt.zero_grad()
            loss = loss_fn(model(data), labels)
            loss.backward()
            opt.step()
            history.append(loss.item())
        histories.append(history)
    assert histories[0][-1] < histories[0][0] * 0.95
    torch.testing.assert_close(histories[0], histories[1], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_expanded_single_column_input(expect_impl, device, reduction):
    """Regression (tests/test_fuzz.py case 44): an expanded (N, 1) input has stride-0 rows, and the
    plan read it as one contiguous row of N values."""
    x = torch.randn(1, 1, device=device).expand(5, 1).requires_grad_()
    y = torch.rand(1, 1, device=device).expand(5, 1)
    with expect_impl("bce", device):
        ours, (g,) = _run(MF, "bce", x, y, None, None, reduction, [x])
    native, (g_native,) = _run(F, "bce", x, y, None, None, reduction, [x])
    torch.testing.assert_close(ours, native)
    torch.testing.assert_close(g, g_native)


@pytest.mark.parametrize("shape", [(0,), (0, 5), (3, 0), (0, 0), (0, 1, 0), (2, 0, 0)], ids=str)
@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("loss", ["bce", "soft_margin"])
def test_empty_inputs(expect_impl, device, loss, reduction, shape):
    """No elements: native's result (NaN for an empty 'mean'; soft margin's rows of no classes sum to
    0, not 0/0: regression, tests/test_fuzz.py case 602), and a gradient of the input's shape."""
    x = torch.randn(shape, device=device, requires_grad=True)
    y = torch.rand(shape, device=device)
    with expect_impl(loss, device):
        ours = _run(MF, loss, x, y, None, None, reduction, [])[0]
    torch.testing.assert_close(ours, _run(F, loss, x, y, None, None, reduction, [])[0], equal_nan=True)
    loss_fn = MF.binary_cross_entropy_with_logits if loss == "bce" else MF.multilabel_soft_margin_loss
    loss_fn(x, y, reduction=reduction).sum().backward()
    assert x.grad.shape == x.shape and not x.grad.any()


def test_backward_with_retained_graph_accumulates():
    x = torch.randn(4, 6, requires_grad=True)
    y = torch.rand(4, 6)
    loss = MF.binary_cross_entropy_with_logits(x, y)
    expected = torch.autograd.grad(F.binary_cross_entropy_with_logits(x, y), x)[0]
    for k in range(1, 4):
        loss.backward(retain_graph=True)
        torch.testing.assert_close(x.grad, expected * k)
    loss.backward(torch.tensor(2.0))
    torch.testing.assert_close(x.grad, expected * 5)


@pytest.mark.parametrize("loss", ["bce", "soft_margin"])
def test_no_grad_and_detached_inputs(expect_impl, device, loss):
    """Without grad the fused op runs too (forward only), and the result has no graph."""
    x, y = torch.randn(3, 4, device=device), torch.rand(3, 4, device=device)
    fn = MF.binary_cross_entropy_with_logits if loss == "bce" else MF.multilabel_soft_margin_loss
    native = _run(F, loss, x, y, None, None, "mean", [])[0]
    for grad_mode, inp in ((False, x.clone().requires_grad_()), (True, x)):
        with torch.set_grad_enabled(grad_mode), expect_impl(loss, device):
            ours = fn(inp, y)
        assert ours.grad_fn is None and not ours.requires_grad
        torch.testing.assert_close(ours, native)


@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_broadcast_target_gradient_soft_margin(reduction):
    """Soft margin broadcasts its target like the native composite; its gradient sums back."""
    x = torch.randn(4, 5, dtype=torch.float64, requires_grad=True)
    y = torch.rand(5, dtype=torch.float64, requires_grad=True)
    ours = _run(MF, "soft_margin", x, y, None, None, reduction, [x, y])
    native = _run(F, "soft_margin", x, y, None, None, reduction, [x, y])
    for a, b in zip([ours[0]] + ours[1], [native[0]] + native[1]):
        torch.testing.assert_close(a, b, **tol(torch.float64))
    assert torch.autograd.gradcheck(lambda x, y: MF.multilabel_soft_margin_loss(x, y, reduction=reduction), (x, y))
