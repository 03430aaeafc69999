"""Focal and asymmetric (ASL) BCE with label smoothing (schema modulated_bce, op bce_family): parity with the
published formulas written out plainly here (torchvision's sigmoid_focal_loss, Ridnik et al.'s
AsymmetricLoss), and with torchvision itself when it imports."""
import math

import pytest
import torch
import torch.nn.functional as F

import multilabel_cuda
import multilabel_cuda.functional as MF
from conftest import tol

pytestmark = pytest.mark.skipif(multilabel_cuda.backend() != "extension",
                                reason="needs the compiled extension")

REDUCTIONS = ["none", "mean", "sum"]
NODE = "BceFamilyBackward"


def _reduce(loss, reduction):
    return {"none": loss, "mean": loss.mean(), "sum": loss.sum()}[reduction]


def _smooth(y, ls):
    return y * (1 - ls) + ls / 2


# ----------------------------------------------------------------------------------------- oracles
def focal_oracle(inputs, targets, alpha=0.25, gamma=2, reduction="none"):
    """torchvision.ops.sigmoid_focal_loss, as published."""
    p = torch.sigmoid(inputs)
    ce_loss = F.binary_cross_entropy_with_logits(inputs, targets, reduction="none")
    p_t = p * targets + (1 - p) * (1 - targets)
    loss = ce_loss * ((1 - p_t) ** gamma)
    if alpha >= 0:
        alpha_t = alpha * targets + (1 - alpha) * (1 - targets)
        loss = alpha_t * loss
    return _reduce(loss, reduction)


def asl_oracle(x, y, gamma_neg=4, gamma_pos=1, clip=0.05, eps=1e-8,
               disable_torch_grad_focal_loss=False):
    """Ridnik et al.'s AsymmetricLoss.forward, as published, but elementwise (it returns
    -loss.sum())."""
    x_sigmoid = torch.sigmoid(x)
    xs_pos = x_sigmoid
    xs_neg = 1 - x_sigmoid
    if clip is not None and clip > 0:
        xs_neg = (xs_neg + clip).clamp(max=1)
    los_pos = y * torch.log(xs_pos.clamp(min=eps))
    los_neg = (1 - y) * torch.log(xs_neg.clamp(min=eps))
    loss = los_pos + los_neg
    if gamma_neg > 0 or gamma_pos > 0:
        if disable_torch_grad_focal_loss:
            torch.set_grad_enabled(False)
        pt0 = xs_pos * y
        pt1 = xs_neg * (1 - y)
        pt = pt0 + pt1
        one_sided_gamma = gamma_pos * y + gamma_neg * (1 - y)
        one_sided_w = torch.pow(1 - pt, one_sided_gamma)
        if disable_torch_grad_focal_loss:
            torch.set_grad_enabled(True)
        loss *= one_sided_w
    return -loss


def asl_stable_oracle(x, y, gamma_neg=4, gamma_pos=1, clip=0.05):
    """The stable form: log-sigmoid for log p, and log(min(sigmoid(-x) + clip, 1)) for negatives."""
    log_pos = F.logsigmoid(x)
    log_neg = F.logsigmoid(-x) if clip == 0 else torch.log((torch.sigmoid(-x) + clip).clamp(max=1))
    p = torch.sigmoid(x)
    one_minus_pt = y * (1 - p) + (1 - y) * (p - clip).clamp(min=0)
    return -(y * log_pos + (1 - y) * log_neg) * one_minus_pt ** (gamma_pos * y + gamma_neg * (1 - y))


def _check(ours, oracle, x, dtype):
    """ours (the fused op ran: its autograd node) against oracle(x in float64), loss and gradient."""
    assert ours.grad_fn is not None and NODE in ours.grad_fn.name(), ours.grad_fn
    assert ours.dtype == dtype
    x64 = x.detach().double().requires_grad_()
    want = oracle(x64)
    torch.testing.assert_close(ours.double(), want.detach(), **tol(dtype))
    (g,) = torch.autograd.grad(ours.sum(), x)
    (gw,) = torch.autograd.grad(want.sum(), x64)
    torch.testing.assert_close(g.double(), gw, **tol(dtype))


def _data(shape, dtype, soft=False, scale=3.0):
    x = (torch.randn(shape, dtype=torch.float64) * scale).to(dtype).requires_grad_()
    y = torch.rand(shape, dtype=dtype) if soft else (torch.rand(shape) < 0.3).to(dtype)
    return x, y


# ------------------------------------------------------------------------------------------- focal
@pytest.mark.parametrize("shape", [(), (7,), (4, 33), (2, 3, 17), (0, 5), (3, 20000)], ids=str)
@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("alpha,gamma", [(0.25, 2), (-1, 2), (0.0, 0.5), (1.0, 0), (0.7, 3.5)])
def test_focal_parity(shape, reduction, dtype, alpha, gamma):
    x, y = _data(shape, dtype, soft=alpha == 0.7)
    ours = MF.sigmoid_focal_loss(x, y, alpha=alpha, gamma=gamma, reduction=reduction)
    if x.numel() == 0:
        assert ours.shape == focal_oracle(x, y, alpha, gamma, reduction).shape
        return
    _check(ours, lambda a: focal_oracle(a, y, alpha, gamma, reduction), x, dtype)


@pytest.mark.parametrize("ls", [0.1, 0.5])
@pytest.mark.parametrize("weight", [None, "class", "full"])
def test_focal_label_smoothing_and_weight(ls, weight):
    x, y = _data((6, 19), torch.float64)
    w = {None: None, "class": torch.rand(19, dtype=torch.float64) + 0.5,
         "full": torch.rand(6, 19, dtype=torch.float64)}[weight]
    ours = MF.sigmoid_focal_loss(x, y, 0.25, 2, "mean", label_smoothing=ls, weight=w)
    _check(ours, lambda a: (focal_oracle(a, _smooth(y, ls), 0.25, 2) * (1 if w is None else w)).mean(),
           x, torch.float64)


def test_focal_matches_torchvision():
    tv = pytest.importorskip("torchvision")
    x, y = _data((8, 33), torch.float32)
    for reduction in REDUCTIONS:
        ours = MF.sigmoid_focal_loss(x, y, 0.25, 2, reduction)
        _check(ours, lambda a: tv.ops.sigmoid_focal_loss(a, y.double(), 0.25, 2, reduction), x,
               torch.float32)


def test_focal_module():
    x, y = _data((5, 9), torch.float64)
    crit = multilabel_cuda.SigmoidFocalLoss(alpha=0.5, gamma=1.5, reduction="sum")
    _check(crit(x, y), lambda a: focal_oracle(a, y, 0.5, 1.5, "sum"), x, torch.float64)


# ------------------------------------------------------------------------------------- asymmetric
@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("gn,gp,clip", [(4, 1, 0.05), (4, 0, 0.0), (2, 2, 0.2), (0, 0, 0.05),
                                        (1.5, 0.5, 0.5)])
@pytest.mark.parametrize("detach", [False, True])
@pytest.mark.parametrize("soft", [False, True])
def test_asl_reference_form_parity(reduction, dtype, gn, gp, clip, detach, soft):
    """stable=False is the published code (clamped logs), detach its no_grad option."""
    x, y = _data((7, 45), dtype, soft=soft)
    ours = MF.asymmetric_loss(x, y, gn, gp, clip, 1e-8, detach, reduction, stable=False)
    _check(ours, lambda a: _reduce(asl_oracle(a, y, gn, gp, clip, 1e-8, detach), reduction), x,
           dtype)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("gn,gp,clip", [(4, 1, 0.05), (4, 1, 0.0), (1, 3, 0.3)])
@pytest.mark.parametrize("ls", [0.0, 0.2])
def test_asl_stable_form(dtype, gn, gp, clip, ls):
    x, y = _data((9, 40), dtype, soft=True)
    ours = MF.asymmetric_loss(x, y, gn, gp, clip, label_smoothing=ls)  # stable, 'sum'
    _check(ours, lambda a: asl_stable_oracle(a, _smooth(y, ls), gn, gp, clip).sum(), x, dtype)
    # Where no probability falls below eps, the stable and the published forms agree.
    x2 = (torch.randn(9, 40, dtype=torch.float64) * 3).to(dtype)
    torch.testing.assert_close(MF.asymmetric_loss(x2, y, gn, gp, clip).double(),
                               asl_oracle(x2.double(), y, gn, gp, clip).sum(), **tol(dtype))


def test_asl_module_and_weight():
    x, y = _data((5, 9), torch.float64)
    w = torch.rand(9, dtype=torch.float64)
    crit = multilabel_cuda.AsymmetricLoss(gamma_neg=3, gamma_pos=1, clip=0.1, stable=False)
    _check(crit(x, y), lambda a: asl_oracle(a, y, 3, 1, 0.1).sum(), x, torch.float64)
    ours = MF.asymmetric_loss(x, y, 3, 1, 0.1, reduction="none", weight=w)
    _check(ours, lambda a: asl_stable_oracle(a, y, 3, 1, 0.1) * w, x, torch.float64)


# ---------------------------------------------------------------------------------- numerical range
@pytest.mark.parametrize("which", ["focal", "asl", "asl_noclip"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_extreme_logits_finite(which, dtype):
    x = torch.tensor([[-1e4, -100.0, -30.0, 0.0, 30.0, 100.0, 1e4]] * 2, dtype=dtype,
                     requires_grad=True)
    y = torch.tensor([[0.0] * 7, [1.0] * 7], dtype=dtype)
    if which == "focal":
        loss = MF.sigmoid_focal_loss(x, y, 0.25, 0.5)
    else:
        loss = MF.asymmetric_loss(x, y, 4, 1, 0.05 if which == "asl" else 0.0, reduction="none")
    (g,) = torch.autograd.grad(loss.sum(), x)
    assert torch.isfinite(loss).all() and torch.isfinite(g).all()
    # Confident mistakes: the loss grows like |x| (times alpha_t; focusing weights are 1) with a
    # gradient of +-alpha_t; ASL's clipped negatives saturate at -log(clip) (1 - clip)^gamma_neg.
    a = {"focal": (0.75, 0.25), "asl": (1, 1), "asl_noclip": (1, 1)}[which]
    neg = torch.tensor(-math.log(0.05) * 0.95 ** 4 if which == "asl" else 1e4 * a[0],
                       dtype=torch.float64)
    torch.testing.assert_close(loss[0, -1].double(), neg)
    torch.testing.assert_close(loss[1, 0].double(), torch.tensor(1e4 * a[1], dtype=torch.float64))
    assert g[1, 0] == -a[1] and g[0, -1] == (0 if which == "asl" else a[0])
    # Confident and right: no loss, no gradient.
    assert loss[0, 0] == 0 and loss[1, -1] == 0 and g[0, 0] == 0 and g[1, -1] == 0


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_nan_propagates(dtype):
    x = torch.tensor([[float("nan"), 1.0, float("nan"), -2.0]], dtype=dtype, requires_grad=True)
    y = torch.tensor([[0.0, 1.0, 1.0, 0.0]], dtype=dtype)
    for loss in (MF.sigmoid_focal_loss(x, y, 0.25, 1.5), MF.asymmetric_loss(x, y, reduction="none"),
                 MF.asymmetric_loss(x, y, reduction="none", stable=False)):
        (g,) = torch.autograd.grad(loss.sum(), x)
        assert loss[0, [0, 2]].isnan().all() and g[0, [0, 2]].isnan().all()
        assert torch.isfinite(loss[0, [1, 3]]).all() and torch.isfinite(g[0, [1, 3]]).all()


def test_stable_form_keeps_growing_where_clamped_saturates():
    x = torch.tensor([-40.0, -20.0], requires_grad=True)
    y = torch.ones(2)
    stable = MF.asymmetric_loss(x, y, 0, 0, 0.0, reduction="none")
    clamped = MF.asymmetric_loss(x, y, 0, 0, 0.0, reduction="none", stable=False)
    torch.testing.assert_close(stable, -x.detach())
    assert torch.allclose(clamped, torch.full((2,), -torch.log(torch.tensor(1e-8))))
    (g,) = torch.autograd.grad(clamped.sum(), x)
    assert (g == 0).all()


@pytest.mark.parametrize("which", ["focal", "asl"])
def test_bf16_follows_fp32(which):
    x, y = _data((16, 77), torch.float32)
    xb = x.detach().bfloat16().requires_grad_()
    fn = (lambda a, b: MF.sigmoid_focal_loss(a, b, reduction="mean")) if which == "focal" else \
        (lambda a, b: MF.asymmetric_loss(a, b, reduction="mean"))
    want = fn(xb.detach().float().requires_grad_(), y)
    got = fn(xb, y.bfloat16())
    assert got.dtype == torch.bfloat16
    torch.testing.assert_close(got.float(), want.detach(), **tol(torch.bfloat16))


def test_deterministic_and_thread_independent():
    x, y = _data((3, 70000), torch.float32)
    old = torch.get_num_threads()
    try:
        outs = []
        for threads in (1, 2, 1):
            torch.set_num_threads(threads)
            outs.append(MF.asymmetric_loss(x.detach(), y, reduction="mean"))
        assert outs[0].item() == outs[1].item() == outs[2].item()
    finally:
        torch.set_num_threads(old)


# ----------------------------------------------------------------------------- autograd contract
def test_gradcheck_float64():
    x = (torch.randn(4, 6, dtype=torch.float64) * 2).requires_grad_()
    y = torch.rand(4, 6, dtype=torch.float64)
    w = torch.rand(6, dtype=torch.float64) + 0.5
    for fn in (lambda a: MF.sigmoid_focal_loss(a, y, 0.25, 2, "mean", 0.1, w),
               lambda a: MF.sigmoid_focal_loss(a, y, -1, 1.5, "none"),
               lambda a: MF.asymmetric_loss(a, y, 4, 1, 0.05, label_smoothing=0.1),
               lambda a: MF.asymmetric_loss(a, y, 3, 2, 0.0, stable=False, reduction="none")):
        assert torch.autograd.gradcheck(fn, (x,))


def test_target_gradient_goes_through_reference():
    x, y = _data((4, 6), torch.float64, soft=True)
    y.requires_grad_()
    loss = MF.sigmoid_focal_loss(x, y, reduction="sum")
    assert NODE not in loss.grad_fn.name()
    gy_want = torch.autograd.grad(focal_oracle(x, y, reduction="sum"), y)[0]
    torch.testing.assert_close(torch.autograd.grad(loss, y)[0], gy_want)


def test_double_backward_is_refused_with_a_clear_error():
    x, y = _data((4, 6), torch.float64)
    loss = MF.asymmetric_loss(x, y)
    with pytest.raises(RuntimeError, match="double backward"):
        torch.autograd.grad(loss, x, create_graph=True)


def test_retained_graph_recomputes():
    x, y = _data((4, 6), torch.float64)
    loss = MF.sigmoid_focal_loss(x, y, reduction="sum")
    loss.backward(retain_graph=True)
    g1 = x.grad.clone()
    loss.backward()
    torch.testing.assert_close(x.grad, 2 * g1)


def _opcheck_samples():
    samples = []
    for red in (0, 1, 2):
        for grad in (False, True):
            x = torch.randn(5, 7, requires_grad=grad)
            samples.append((x, torch.rand(5, 7), None, 2.0, 2.0, 0.25, 0.75, 0.0, 0.0, 0.1, False,
                            red, grad))
            samples.append((x, torch.rand(5, 7), torch.rand(7), 1.0, 4.0, 1.0, 1.0, 0.05, 1e-8,
                            0.0, True, red, grad))
    return samples


@pytest.mark.parametrize("args", _opcheck_samples())
def test_opcheck(args):
    """modulated_bce (the schema) maps onto bce_family (the op with kernels, autograd, fake)."""
    torch.library.opcheck(torch.ops.multilabel_cuda.modulated_bce.default, args)
    x, y, w = args[:3]
    params = [float(a) for a in args[3:11]]
    torch.library.opcheck(torch.ops.multilabel_cuda.bce_family.default,
                          (x, y, w, 1, params, args[11], args[12]))


@pytest.mark.parametrize("which", ["focal", "asl"])
def test_torch_compile_fullgraph(which):
    torch._dynamo.reset()
    model = torch.nn.Linear(8, 6).double()
    if which == "focal":
        crit, plain = multilabel_cuda.SigmoidFocalLoss(reduction="mean"), \
            lambda a, b: focal_oracle(a, b, reduction="mean")
    else:
        crit, plain = multilabel_cuda.AsymmetricLoss(stable=False), \
            lambda a, b: asl_oracle(a, b).sum()

    def step(data, labels):
        return crit(model(data), labels)

    compiled = torch.compile(step, fullgraph=True, backend="aot_eager")
    data, labels = torch.randn(10, 8, dtype=torch.float64), (torch.rand(10, 6) < 0.5).double()
    out = compiled(data, labels)
    grads = torch.autograd.grad(out, list(model.parameters()))
    want = plain(model(data), labels)
    want_grads = torch.autograd.grad(want, list(model.parameters()))
    torch.testing.assert_close(out, want)
    for a, b in zip(grads, want_grads):
        torch.testing.assert_close(a, b)


# ------------------------------------------------------------------------------------ bad arguments
@pytest.mark.parametrize("call,match", [
    (lambda x, y: MF.sigmoid_focal_loss(x, y, gamma=-1), "gamma"),
    (lambda x, y: MF.sigmoid_focal_loss(x, y, alpha=1.5), "alpha"),
    (lambda x, y: MF.sigmoid_focal_loss(x, y, reduction="avg"), "reduction"),
    (lambda x, y: MF.sigmoid_focal_loss(x, y, label_smoothing=1.0), "label_smoothing"),
    (lambda x, y: MF.sigmoid_focal_loss(x, y[:, :3]), "target size"),
    (lambda x, y: MF.sigmoid_focal_loss(x, y.long()), "target"),
    (lambda x, y: MF.asymmetric_loss(x, y, gamma_neg=-0.5), "gamma_neg"),
    (lambda x, y: MF.asymmetric_loss(x, y, gamma_pos=-1), "gamma_pos"),
    (lambda x, y: MF.asymmetric_loss(x, y, clip=1.0), "clip"),
    (lambda x, y: MF.asymmetric_loss(x, y, clip=-0.1), "clip"),
    (lambda x, y: MF.asymmetric_loss(x, y, eps=0, stable=False), "eps"),
    (lambda x, y: MF.asymmetric_loss(x, y, weight=torch.rand(3)), "weight"),
])
def test_bad_arguments(call, match):
    x, y = torch.randn(4, 6), torch.rand(4, 6)
    with pytest.raises(multilabel_cuda.LossArgumentError, match=match):
        call(x, y)


def test_direct_op_checks_parameters():
    x, y = torch.randn(4, 6), torch.rand(4, 6)
    with pytest.raises(RuntimeError, match="clip"):
        torch.ops.multilabel_cuda.modulated_bce(x, y, None, 1.0, 1.0, 1.0, 1.0, 1.5, 0.0, 0.0,
                                                False, 1, False)
    with pytest.raises(RuntimeError, match="gamma_pos"):
        torch.ops.multilabel_cuda.modulated_bce(x, y, None, -1.0, 1.0, 1.0, 1.0, 0.0, 0.0, 0.0,
                                                False, 1, False)
    with pytest.raises(RuntimeError, match="unknown kind"):
        torch.ops.multilabel_cuda.bce_family(x, y, None, 99, [], 1, False)
    with pytest.raises(RuntimeError, match="at most"):
        torch.ops.multilabel_cuda.bce_family(x, y, None, 1, [0.0] * 9, 1, False)


@pytest.mark.parametrize("which", ["focal", "asl"])
def test_reference_backend_parity(reference_backend, which):
    x, y = _data((6, 13), torch.float64, soft=True)
    if which == "focal":
        ours, want = MF.sigmoid_focal_loss(x, y, 0.3, 1.5, "sum", 0.1), \
            focal_oracle(x, _smooth(y, 0.1), 0.3, 1.5, "sum")
    else:
        ours, want = MF.asymmetric_loss(x, y, 4, 1, 0.05, stable=False), asl_oracle(x, y).sum()
    assert NODE not in ours.grad_fn.name()
    torch.testing.assert_close(ours, want)
    torch.testing.assert_close(torch.autograd.grad(ours, x)[0], torch.autograd.grad(want, x)[0])


# ------------------------------------------------------------------------------------------- CUDA
def _cuda_cases(reduction):
    """{name: (fused(x, y), oracle(x, y))}"""
    return {
        "focal": (lambda a, b: MF.sigmoid_focal_loss(a, b, 0.25, 2, reduction),
                  lambda a, b: _reduce(focal_oracle(a, b, 0.25, 2), reduction)),
        "focal_g05": (lambda a, b: MF.sigmoid_focal_loss(a, b, -1, 0.5, reduction, 0.1),
                      lambda a, b: _reduce(focal_oracle(a, _smooth(b, 0.1), -1, 0.5), reduction)),
        "asl": (lambda a, b: MF.asymmetric_loss(a, b, reduction=reduction),
                lambda a, b: _reduce(asl_stable_oracle(a, b), reduction)),
        "asl_clamped": (lambda a, b: MF.asymmetric_loss(a, b, reduction=reduction, stable=False),
                        lambda a, b: _reduce(asl_oracle(a, b), reduction)),
        "asl_detach": (lambda a, b: MF.asymmetric_loss(a, b, 4, 1, 0.05, 1e-8, True, reduction,
                                                       stable=False),
                       lambda a, b: _reduce(asl_oracle(a, b, 4, 1, 0.05, 1e-8, True), reduction)),
    }


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("which", ["focal", "focal_g05", "asl", "asl_clamped", "asl_detach"])
@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_cuda_parity(which, reduction, dtype):
    from multilabel_cuda import _backend
    assert "cuda" in _backend.KERNEL_DEVICES["bce_family"]
    fused, oracle = _cuda_cases(reduction)[which]
    x, y = _data((37, 1000), dtype, soft=which == "asl")
    xc, yc = x.detach().cuda().requires_grad_(), y.cuda()
    _check(fused(xc, yc), lambda a: oracle(a, yc), xc, dtype)
    # Saturated logits: finite, and the CUDA kernel agrees with the CPU kernel.
    xe = torch.tensor([[-1e4, 1e4, -1e4, 1e4, -30.0, 30.0]], dtype=dtype)
    ye = torch.tensor([[0.0, 0.0, 1.0, 1.0, 1.0, 0.0]], dtype=dtype)
    outs = []
    for dev in ("cpu", "cuda"):
        xd = xe.to(dev).requires_grad_()
        loss = fused(xd, ye.to(dev))
        outs.append((loss.detach().cpu(), torch.autograd.grad(loss.sum(), xd)[0].cpu()))
    for t in outs[1]:
        assert torch.isfinite(t).all()
    for a, b in zip(*outs):
        torch.testing.assert_close(a, b, **tol(dtype))
