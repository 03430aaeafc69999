"""BCE-with-logits and multilabel soft margin: parity with torch.nn.functional (the oracle)."""
import itertools

import pytest
import torch
import torch.nn.functional as F

import multilabel_cuda
import multilabel_cuda.functional as MF
from conftest import tol

REDUCTIONS = ["none", "mean", "sum"]
SHAPES = [(), (1,), (7,), (1, 1), (4, 7), (3, 33), (2, 3, 17), (5, 1), (3000, 1), (50, 4, 3),
          (0, 5), (5, 0), (2, 40000)]


def _weight(kind, shape, dtype):
    cols = shape[-1:] if shape else ()
    return {"none": None,
            "scalar": torch.rand((), dtype=dtype) + 0.5,
            "class": torch.rand(cols, dtype=dtype) + 0.5,
            "full": torch.rand(shape, dtype=dtype) + 0.5,
            "row": torch.rand(shape[:-1] + (1,), dtype=dtype) + 0.5 if len(shape) >= 2 else None,
            }[kind]


def _grads(loss, inputs):
    if loss.numel() == 0 or not any(t.numel() for t in inputs):
        return [torch.zeros_like(t) for t in inputs]
    return torch.autograd.grad(loss.sum(), inputs, allow_unused=True)


def _assert_same(ours, native, dtype):
    assert ours.shape == native.shape and ours.dtype == native.dtype
    torch.testing.assert_close(ours, native, equal_nan=True, **tol(dtype))


@pytest.mark.parametrize("shape", SHAPES, ids=str)
@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("weight,pos_weight", [("none", "none"), ("class", "none"),
                                                ("none", "class"), ("full", "scalar"),
                                                ("row", "full"), ("scalar", "row")])
def test_bce_parity(shape, reduction, dtype, weight, pos_weight):
    x = (torch.randn(shape, dtype=dtype) * 3).requires_grad_()
    y = torch.rand(shape, dtype=dtype)  # soft labels
    w, pw = _weight(weight, shape, dtype), _weight(pos_weight, shape, dtype)
    ours = MF.binary_cross_entropy_with_logits(x, y, w, reduction=reduction, pos_weight=pw)
    native = F.binary_cross_entropy_with_logits(x, y, w, reduction=reduction, pos_weight=pw)
    _assert_same(ours, native, dtype)
    for a, b in zip(_grads(ours, [x]), _grads(native, [x])):
        _assert_same(a, b, dtype)


@pytest.mark.parametrize("shape", [s for s in SHAPES if len(s) >= 1], ids=str)
@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("weight", ["none", "class", "full", "row", "scalar"])
def test_soft_margin_parity(shape, reduction, dtype, weight):
    x = (torch.randn(shape, dtype=dtype) * 3).requires_grad_()
    y = (torch.rand(shape) > 0.5).to(dtype)
    w = _weight(weight, shape, dtype)
    ours = MF.multilabel_soft_margin_loss(x, y, w, reduction=reduction)
    native = F.multilabel_soft_margin_loss(x, y, w, reduction=reduction)
    _assert_same(ours, native, dtype)
    for a, b in zip(_grads(ours, [x]), _grads(native, [x])):
        _assert_same(a, b, dtype)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("loss", ["bce", "soft_margin"])
@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_half_types_follow_fp32(dtype, loss, reduction):
    """Half types are computed in fp32 and rounded once: as close to the fp32 answer as the type allows."""
    x32 = torch.randn(16, 301) * 4
    y32 = torch.rand(16, 301).round()
    w32 = torch.rand(301) + 0.5
    x = x32.to(dtype).requires_grad_()
    ref_x = x.detach().float().requires_grad_()
    if loss == "bce":
        ours = MF.binary_cross_entropy_with_logits(x, y32.to(dtype), w32.to(dtype), reduction=reduction)
        ref = F.binary_cross_entropy_with_logits(ref_x, y32, w32.to(dtype).float(), reduction=reduction)
    else:
        ours = MF.multilabel_soft_margin_loss(x, y32.to(dtype), w32.to(dtype), reduction=reduction)
        ref = F.multilabel_soft_margin_loss(ref_x, y32, w32.to(dtype).float(), reduction=reduction)
    assert ours.dtype == dtype
    torch.testing.assert_close(ours.float(), ref.to(dtype).float(), **tol(dtype))
    (g,), (g_ref,) = _grads(ours, [x]), _grads(ref, [ref_x])
    assert g.dtype == dtype
    torch.testing.assert_close(g.float(), g_ref.to(dtype).float(), **tol(dtype))


@pytest.mark.parametrize("scale", [1e4, 1e30])
@pytest.mark.parametrize("pos_weight", [None, 3.0])
def test_extreme_logits_are_stable(scale, pos_weight):
    x = torch.tensor([[-1.0, 1.0, 0.0, -120.0, 120.0]] * 2, dtype=torch.float32) * scale
    x.requires_grad_()
    y = torch.tensor([[0.0, 1.0, 0.5, 1.0, 0.0], [1.0, 0.0, 0.5, 0.0, 1.0]])
    pw = None if pos_weight is None else torch.full((5,), pos_weight)
    for red in REDUCTIONS:
        ours = MF.binary_cross_entropy_with_logits(x, y, reduction=red, pos_weight=pw)
        native = F.binary_cross_entropy_with_logits(x, y, reduction=red, pos_weight=pw)
        assert torch.isfinite(ours).all()
        torch.testing.assert_close(ours, native)
        torch.testing.assert_close(*[_grads(l, [x])[0] for l in (ours, native)])


def test_grad_at_zero_is_exact():
    """From torch's own test_bce_with_logits_has_correct_grad_at_zero: d/dx at x=0, y=0 is 0.5/N."""
    x = torch.zeros(3, 1, requires_grad=True)
    for pw in (None, torch.ones(1)):
        MF.binary_cross_entropy_with_logits(x, torch.zeros(3, 1), pos_weight=pw, reduction="sum").backward()
        torch.testing.assert_close(x.grad, torch.full((3, 1), 0.5))
        x.grad = None


def test_nan_and_inf_propagate_like_native():
    x = torch.tensor([float("nan"), float("inf"), -float("inf"), 0.0, 2.0], requires_grad=True)
    y = torch.tensor([0.0, 1.0, 0.0, 1.0, float("nan")])
    for red in REDUCTIONS:
        ours = MF.binary_cross_entropy_with_logits(x, y, reduction=red)
        native = F.binary_cross_entropy_with_logits(x, y, reduction=red)
        torch.testing.assert_close(ours, native, equal_nan=True)
        torch.testing.assert_close(*[_grads(l, [x])[0] for l in (ours, native)], equal_nan=True)


@pytest.mark.parametrize("layout", ["transposed", "sliced", "expanded_target", "channels"])
def test_non_contiguous_arguments(layout):
    base = torch.randn(33, 20, dtype=torch.float64)
    if layout == "transposed":
        x, y = base.t(), torch.rand(33, 20, dtype=torch.float64).t()
    elif layout == "sliced":
        x, y = base[:, 3:17], torch.rand(33, 40, dtype=torch.float64)[:, ::2][:, :14]
    elif layout == "expanded_target":
        x, y = base, torch.rand(20, dtype=torch.float64).expand(33, 20)
    else:
        x = torch.randn(4, 20, 6, dtype=torch.float64).permute(0, 2, 1)
        y = torch.rand(4, 6, 20, dtype=torch.float64)
    w = torch.rand(x.shape[-1] * 2, dtype=torch.float64)[::2]
    x = x.detach().requires_grad_()
    for red in REDUCTIONS:
        for ours_fn, native_fn, kw in [
            (MF.binary_cross_entropy_with_logits, F.binary_cross_entropy_with_logits, {"pos_weight": w}),
            (MF.multilabel_soft_margin_loss, F.multilabel_soft_margin_loss, {})]:
            ours, native = ours_fn(x, y, w, reduction=red, **kw), native_fn(x, y, w, reduction=red, **kw)
            _assert_same(ours, native, torch.float64)
            _assert_same(_grads(ours, [x])[0], _grads(native, [x])[0], torch.float64)


@pytest.mark.parametrize("loss", ["bce", "soft_margin"])
def test_target_gradient(loss):
    x = torch.randn(6, 9, dtype=torch.float64, requires_grad=True)
    y = torch.rand(6, 9, dtype=torch.float64, requires_grad=True)
    w = torch.rand(9, dtype=torch.float64)
    pw = torch.rand(9, dtype=torch.float64) + 0.5
    for red in REDUCTIONS:
        if loss == "bce":
            ours = MF.binary_cross_entropy_with_logits(x, y, w, reduction=red, pos_weight=pw)
            native = F.binary_cross_entropy_with_logits(x, y, w, reduction=red, pos_weight=pw)
        else:
            ours = MF.multilabel_soft_margin_loss(x, y, w, reduction=red)
            native = F.multilabel_soft_margin_loss(x, y, w, reduction=red)
        for a, b in zip(_grads(ours, [x, y]), _grads(native, [x, y])):
            _assert_same(a, b, torch.float64)


def test_weight_gradient_goes_through_reference():
    """Native soft margin differentiates w.r.t. weight (it is composite); so do we."""
    x = torch.randn(5, 8, dtype=torch.float64)
    y = torch.rand(5, 8, dtype=torch.float64).round()
    w = torch.rand(8, dtype=torch.float64, requires_grad=True)
    ours = torch.autograd.grad(MF.multilabel_soft_margin_loss(x, y, w), w)[0]
    native = torch.autograd.grad(F.multilabel_soft_margin_loss(x, y, w), w)[0]
    _assert_same(ours, native, torch.float64)


def test_dtype_promotion_like_native():
    x = torch.randn(4, 5, requires_grad=True)
    y = torch.rand(4, 5, dtype=torch.float64)
    ours = MF.binary_cross_entropy_with_logits(x, y)
    native = F.binary_cross_entropy_with_logits(x, y)
    assert ours.dtype == native.dtype == torch.float64
    torch.testing.assert_close(ours, native)
    gi = _grads(ours, [x])[0]
    assert gi.dtype == torch.float32
    # Integer 0/1 targets: soft margin accepts them (native is composite).
    yi = torch.randint(0, 2, (4, 5))
    _assert_same(MF.multilabel_soft_margin_loss(x, yi), F.multilabel_soft_margin_loss(x, yi),
                 torch.float32)


def test_long_rows_are_split_and_deterministic():
    """A single very long row is split into chunks across threads; the sum order is fixed."""
    x = torch.randn(3, 70001, dtype=torch.float32, requires_grad=True)
    y = torch.rand(3, 70001)
    torch.set_num_threads(1)
    one = MF.binary_cross_entropy_with_logits(x, y)
    torch.set_num_threads(2)
    two = MF.binary_cross_entropy_with_logits(x, y)
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
def test_expanded_single_column_input(reduction):
    """Regression (tests/test_fuzz.py case 44): an expanded (N, 1) input has stride-0 rows, and the
    plan read it as one contiguous row of N values."""
    x = torch.randn(1, 1).expand(5, 1).requires_grad_()
    y = torch.rand(1, 1).expand(5, 1)
    ours = MF.binary_cross_entropy_with_logits(x, y, reduction=reduction)
    native = F.binary_cross_entropy_with_logits(x, y, reduction=reduction)
    torch.testing.assert_close(ours, native)
    torch.testing.assert_close(*[torch.autograd.grad(v.sum(), x)[0] for v in (ours, native)])


@pytest.mark.parametrize("shape", [(0, 0), (0, 1, 0), (2, 0, 0)], ids=str)
@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_soft_margin_no_rows_and_no_classes(shape, reduction):
    """Regression (tests/test_fuzz.py case 602): no rows of no classes sums to 0, not 0/0."""
    x, y = torch.randn(shape), torch.rand(shape)
    torch.testing.assert_close(MF.multilabel_soft_margin_loss(x, y, reduction=reduction),
                               F.multilabel_soft_margin_loss(x, y, reduction=reduction),
                               equal_nan=True)


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


def test_no_grad_and_detached_inputs():
    x, y = torch.randn(3, 4), torch.rand(3, 4)
    with torch.no_grad():
        a = MF.binary_cross_entropy_with_logits(x.requires_grad_(), y)
    assert not a.requires_grad
    torch.testing.assert_close(a, F.binary_cross_entropy_with_logits(x, y))


@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_reference_backend_parity(reference_backend, reduction):
    assert multilabel_cuda.backend() == "reference"
    x = torch.randn(5, 9, dtype=torch.float64, requires_grad=True)
    y, w = torch.rand(5, 9, dtype=torch.float64), torch.rand(9, dtype=torch.float64)
    for ours, native in [
        (MF.binary_cross_entropy_with_logits(x, y, w, reduction=reduction, pos_weight=w + 1),
         F.binary_cross_entropy_with_logits(x, y, w, reduction=reduction, pos_weight=w + 1)),
        (MF.multilabel_soft_margin_loss(x, y, w, reduction=reduction),
         F.multilabel_soft_margin_loss(x, y, w, reduction=reduction))]:
        _assert_same(ours, native, torch.float64)
        _assert_same(_grads(ours, [x])[0], _grads(native, [x])[0], torch.float64)


@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_broadcast_target_gradient_soft_margin(reduction):
    """Soft margin broadcasts its target like the native composite; its gradient sums back."""
    x = torch.randn(4, 5, dtype=torch.float64, requires_grad=True)
    y = torch.rand(5, dtype=torch.float64, requires_grad=True)
    ours = MF.multilabel_soft_margin_loss(x, y, reduction=reduction)
    native = F.multilabel_soft_margin_loss(x, y, reduction=reduction)
    _assert_same(ours, native, torch.float64)
    for a, b in zip(_grads(ours, [x, y]), _grads(native, [x, y])):
        _assert_same(a, b, torch.float64)
    assert torch.autograd.gradcheck(lambda x, y: MF.multilabel_soft_margin_loss(x, y, reduction=reduction), (x, y))
