"""multilabel_margin_loss: parity with torch.nn.functional (the oracle) for loss and gradient on
every device, both per-row methods (direct, counting) and the auto rule, every dtype and reduction,
adversarial scores, compact targets, autograd, opcheck, torch.compile, errors (out-of-range targets:
at once on the CPU, at the next margin call or check_errors() on CUDA), and the reference backend."""
import pytest
import torch
import torch.nn.functional as F
from torch.autograd import forward_ad as fwAD

import multilabel_cuda as mc
from conftest import DTYPES, EXTENSION_LOADED, RED_CODE, REDUCTIONS, tol

op = torch.ops.multilabel_cuda.multilabel_margin if EXTENSION_LOADED else None
needs_ext = pytest.mark.skipif(not EXTENSION_LOADED, reason="compiled extension not available")

ALGOS = {"auto": 0, "direct": 1, "counting": 2}  # the kernels' per-row methods (CPU and CUDA)
CASES = ["random", "ties", "all_positive", "duplicates", "huge", "nonfinite", "no_targets"]


def make_target(n, c, gen, positives=None, dup=False):
    """(n, c) int64: some positives per row, then -1, then junk (valid indices native ignores)."""
    y = torch.randint(0, c, (n, c), generator=gen)
    for r in range(n):
        p = positives if positives is not None else int(torch.randint(0, c + 1, (1,), generator=gen))
        if not dup:
            y[r, :p] = torch.randperm(c, generator=gen)[:p]
        if p < c:
            y[r, p] = -1
    return y


def make_case(case, n, c, dtype=torch.float64, seed=0, device="cpu"):
    gen = torch.Generator().manual_seed(seed + 1000 * c + n)
    x = torch.randn(n, c, generator=gen, dtype=torch.float64)
    y = make_target(n, c, gen)
    if case == "ties":  # integer scores: many pairs exactly 1 apart, hinges exactly at 0
        x = torch.randint(-3, 4, (n, c), generator=gen).double()
    elif case == "all_positive":
        y = torch.stack([torch.randperm(c, generator=gen) for _ in range(n)])
    elif case == "duplicates":
        y = make_target(n, c, gen, positives=max(1, c // 2), dup=True)
        y[:, : c // 2] = torch.randint(0, min(c, 3), (n, c // 2), generator=gen)
    elif case == "huge":
        x = x * 1e4
    elif case == "nonfinite":
        x[torch.rand(n, c, generator=gen) < 0.1] = float("nan")
        x[torch.rand(n, c, generator=gen) < 0.02] = float("inf")
        x[torch.rand(n, c, generator=gen) < 0.02] = -float("inf")
        x[:, 0] = float("nan")  # also at a target position
        y[:, 0] = 0
    elif case == "no_targets":
        y[:, 0] = -1
    return x.to(device, dtype), y.to(device)


def oracle(x, y, reduction):
    """torch.nn.functional on x (float32 for half types), target padded to C with -1."""
    xo = x.detach().float() if x.dtype in (torch.float16, torch.bfloat16) else x.detach()
    xo = xo.clone().requires_grad_()
    c = x.size(-1) if x.dim() else 1
    y = y.long()
    if y.dim() == 0:
        y = y.reshape(1)
    yo = torch.cat([y, y.new_full(y.shape[:-1] + (c - y.size(-1),), -1)], dim=-1)
    loss = F.multilabel_margin_loss(xo, yo, reduction=reduction)
    if xo.dtype == torch.float32:
        # Native fp32 accumulates the gradient as thousands of "+= 1/C" in fp32 (0.1% off for a
        # much-duplicated target); take its gradient from fp64 on the same values instead.
        xo = xo.detach().double().requires_grad_()
        grad_loss = F.multilabel_margin_loss(xo, yo, reduction=reduction)
    else:
        grad_loss = loss
    (grad,) = torch.autograd.grad(grad_loss.sum(), xo) if xo.numel() else (torch.zeros_like(xo),)
    return loss.detach(), grad


@pytest.fixture
def check(expect_impl):
    """check(x, y, reduction, algo): ours (through the public function for 'auto', asserting which
    implementation ran, else the op with that method) against the oracle."""
    def run(x, y, reduction, algo="auto"):
        lo, go = oracle(x, y, reduction)
        xi = x.detach().clone().requires_grad_()
        if algo == "auto":
            with expect_impl("margin", x.device):
                lm = mc.functional.multilabel_margin_loss(xi, y, reduction=reduction)
        else:
            lm = op(xi, y.long(), RED_CODE[reduction], True, ALGOS[algo])[0]
        (gm,) = torch.autograd.grad(lm.sum(), xi) if xi.numel() else (torch.zeros_like(xi),)
        assert lm.shape == lo.shape and lm.dtype == x.dtype and gm.shape == x.shape
        t = tol(x.dtype)
        torch.testing.assert_close(lm.double(), lo.double(), equal_nan=True, **t)
        torch.testing.assert_close(gm.double(), go.double(), equal_nan=True, **t)
    return run


@needs_ext
@pytest.mark.parametrize("algo", list(ALGOS))
@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("c", [1, 31, 33, 1000, 3000])
@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])  # fp32: the AVX2 counting path
def test_parity_cases(check, device, dtype, case, c, reduction, algo):
    n = 2 if c >= 1000 else 5
    x, y = make_case(case, n, c, dtype=dtype, device=device)
    check(x, y, reduction, algo)


@needs_ext
@pytest.mark.parametrize("algo", list(ALGOS))
@pytest.mark.parametrize("case", ["random", "ties", "nonfinite"])
def test_parity_float32_exact_counts(check, device, case, algo):
    # Integer-valued fp32 scores: thresholds exactly on the scores; gradient counts must be exact.
    x, y = make_case(case, 6, 40, dtype=torch.float32, device=device)
    check(x, y, "sum", algo)
    check(x, y, "mean", algo)


@needs_ext
# around the switch points: CUDA 16, CPU 24/48 (AVX2) and 80/120 (AVX512); then up to C
@pytest.mark.parametrize("positives", [1, 8, 16, 17, 24, 25, 48, 49, 80, 81, 120, 121, 300, 512])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_auto_switch_point(check, device, positives, dtype):
    gen = torch.Generator().manual_seed(positives)
    x = torch.randn(3, 512, generator=gen, dtype=dtype).to(device)
    y = make_target(3, 512, gen, positives=positives).to(device)
    check(x, y, "mean")
    check(x, y, "none", "direct")
    check(x, y, "none", "counting")


@pytest.mark.parametrize("algo", list(ALGOS))
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_dtypes(check, device, dtype, algo):
    if algo != "auto" and not EXTENSION_LOADED:
        pytest.skip("extension not available")
    x, y = make_case("random", 4, 37, dtype=dtype, device=device)
    for reduction in REDUCTIONS:
        check(x, y, reduction, algo)


@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_shapes_1d_and_0d(check, device, reduction):
    x, y = make_case("random", 1, 17, device=device)
    check(x[0], y[0], reduction)  # (C,): a 0-dim loss even for 'none'
    x0 = torch.tensor(0.3, dtype=torch.float64, device=device, requires_grad=True)
    for t in (0, [0], -1, [-1]):
        lm = mc.functional.multilabel_margin_loss(x0, torch.tensor(t, device=device), reduction=reduction)
        (gm,) = torch.autograd.grad(lm, x0)
        assert lm.shape == () and gm.shape == () and lm.item() == 0 and gm.item() == 0
    assert F.multilabel_margin_loss(x0, torch.tensor([0], device=device), reduction=reduction).item() == 0


@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_batch_of_one(check, reduction):
    x, y = make_case("random", 1, 50)
    check(x, y, reduction)


def test_empty_batch(device):
    x = torch.empty(0, 5, dtype=torch.float64, device=device, requires_grad=True)
    y = torch.empty(0, 5, dtype=torch.int64, device=device)
    assert mc.functional.multilabel_margin_loss(x, y, reduction="sum").item() == 0
    assert torch.isnan(mc.functional.multilabel_margin_loss(x, y, reduction="mean"))
    loss = mc.functional.multilabel_margin_loss(x, y, reduction="none")
    assert loss.shape == (0,)
    (g,) = torch.autograd.grad(mc.functional.multilabel_margin_loss(x, y, reduction="sum"), x)
    assert g.shape == (0, 5)
    # compact empty target too
    assert mc.functional.multilabel_margin_loss(x, y[:, :2], reduction="sum").item() == 0


def test_non_contiguous(check, device):
    x, y = make_case("random", 12, 20, device=device)
    xt = x.t().contiguous().t()  # column-major storage
    yt = y.t().contiguous().t()
    assert not xt.is_contiguous() and not yt.is_contiguous()
    for reduction in REDUCTIONS:
        check(xt, yt, reduction)
        check(x[::2, 1::2], y[::2, ::2] % 10, reduction)  # strided rows and columns


@pytest.mark.parametrize("algo", list(ALGOS))
@pytest.mark.parametrize("k", [0, 1, 3, 10])
def test_compact_target(check, device, k, algo):
    if algo != "auto" and not EXTENSION_LOADED:
        pytest.skip("extension not available")
    x, y = make_case("random", 6, 10, device=device)
    yc = y[:, :k].clone()
    if k:
        yc[0, -1] = -1
    for reduction in REDUCTIONS:
        check(x, yc, reduction, algo)  # oracle pads the target to C with -1
        check(x[1], yc[1], reduction, algo)
    if k == 0:
        assert mc.functional.multilabel_margin_loss(x, yc, reduction="sum").item() == 0


@pytest.mark.parametrize("tdtype", [torch.int32, torch.int16, torch.int8, torch.uint8])
def test_integer_target_dtypes(check, tdtype):
    x, y = make_case("random", 3, 9)
    y = y.clamp(min=0)
    y[:, 4] = -1 if tdtype != torch.uint8 else 0
    if tdtype == torch.uint8:
        y = y[:, :4]  # no -1 in uint8: a compact target of 4 positives (with repeats)
    check(x, y.to(tdtype), "mean")


def test_module():
    x, y = make_case("duplicates", 4, 12)
    for reduction in REDUCTIONS:
        m = mc.MultiLabelMarginLoss(reduction=reduction)
        assert isinstance(m, torch.nn.MultiLabelMarginLoss)
        torch.testing.assert_close(m(x, y), torch.nn.MultiLabelMarginLoss(reduction=reduction)(x, y))


def _smooth_case():
    # Scores spread apart (no hinge within 1e-3 of 0) so finite differences stay on one piece.
    gen = torch.Generator().manual_seed(5)
    x = (torch.randperm(40, generator=gen).double() * 0.137).reshape(5, 8).requires_grad_()
    y = make_target(5, 8, gen)
    return x, y


@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_gradcheck_and_gradgradcheck(device, reduction):
    x, y = (t.to(device) for t in _smooth_case())
    x = x.detach().requires_grad_()
    f = lambda x: mc.functional.multilabel_margin_loss(x, y, reduction=reduction)  # noqa: E731
    assert torch.autograd.gradcheck(f, (x,))
    assert torch.autograd.gradgradcheck(f, (x,))
    x1 = x[0].detach().clone().requires_grad_()
    assert torch.autograd.gradgradcheck(
        lambda x: mc.functional.multilabel_margin_loss(x, y[0], reduction=reduction), (x1,))


def test_retain_graph_and_upstream_scaling():
    x, y = _smooth_case()
    loss = mc.functional.multilabel_margin_loss(x, y, reduction="none")
    w = torch.arange(1.0, 6.0, dtype=torch.float64)
    (g1,) = torch.autograd.grad(loss.sum(), x, retain_graph=True)
    (g2,) = torch.autograd.grad((loss * w).sum(), x, retain_graph=True)
    (g3,) = torch.autograd.grad(loss.sum(), x)
    _, go = oracle(x, y, "none")
    torch.testing.assert_close(g1, go)
    torch.testing.assert_close(g3, go)
    torch.testing.assert_close(g2, go * w[:, None])


def test_forward_ad_uses_reference():
    x, y = _smooth_case()
    tangent = torch.randn_like(x)
    with fwAD.dual_level():
        out = mc.functional.multilabel_margin_loss(fwAD.make_dual(x.detach(), tangent), y)
        jvp = fwAD.unpack_dual(out).tangent
    _, go = oracle(x, y, "mean")
    torch.testing.assert_close(jvp, (go * tangent).sum())


@needs_ext
@pytest.mark.parametrize("reduction", [0, 1, 2])
def test_opcheck(device, reduction):
    x, y = make_case("random", 4, 9, device=device)
    samples = [
        (x.clone().requires_grad_(), y, reduction, True),
        (x.clone(), y, reduction, False),
        (x.t().contiguous().t().requires_grad_(), y[:, :3].clone(), reduction, True, 2),
        (x[0].clone().requires_grad_(), y[0].clone(), reduction, True, 1),
        (x.float().requires_grad_(), y, reduction, True),
    ]
    for args in samples:
        torch.library.opcheck(op.default, args)


@needs_ext
@pytest.mark.parametrize("compile_backend", ["aot_eager", "inductor"])  # inductor: ~8 s here
def test_torch_compile_fullgraph(compile_backend):
    torch._dynamo.reset()

    def f(x, y):
        return mc.functional.multilabel_margin_loss(x, y, reduction="sum") * 2

    x, y = make_case("random", 4, 9)
    x.requires_grad_()
    out = torch.compile(f, fullgraph=True, backend=compile_backend)(x, y)
    (g,) = torch.autograd.grad(out, x)
    lo, go = oracle(x, y, "sum")
    torch.testing.assert_close(out.detach(), 2 * lo)
    torch.testing.assert_close(g, 2 * go)


@pytest.mark.parametrize("backend", ["reference"], indirect=True)
@pytest.mark.parametrize("case", ["random", "ties", "duplicates", "nonfinite", "all_positive"])
def test_reference_backend_parity(check, device, backend, case):
    x, y = make_case(case, 4, 23, device=device)
    for reduction in REDUCTIONS:
        check(x, y, reduction)
    check(x.float(), y, "mean")
    check(x.half(), y[:, :5], "sum")


def test_target_zero_then_padding(check, backend):
    # Regression (reference): is_target built with scatter_ let the placeholder 0s of the slots
    # after the -1 overwrite a real target 0, so class 0 counted as a non-target.
    x = torch.tensor([[0.5, 0.2, 0.9, -0.3], [0.1, 0.4, 0.3, 0.2]], dtype=torch.float64)
    y = torch.tensor([[0, -1, 0, 0], [2, 0, -1, 1]])
    for reduction in REDUCTIONS:
        check(x, y, reduction)


RANGE_MSG = r"multilabel_margin_loss: target index {} out of range \[-1, 5\)"


@pytest.mark.parametrize("bad,where", [(7, 0), (5, 1), (-2, 0), (9, 4)])  # (9, 4): after the -1
def test_error_target_out_of_range(device, backend, bad, where):
    """The CPU (and the reference) raise at once; the CUDA kernels record the entry on the device
    and report it at the next margin call or at check_errors() (a LossArgumentError)."""
    x = torch.randn(2, 5, device=device)
    y = torch.tensor([[0, 1, -1, 2, 3], [4, -1, 0, 0, 0]], device=device)
    y[1, where] = bad
    for args in [(x, y), (x[1], y[1])]:
        with pytest.raises(RuntimeError, match=RANGE_MSG.format(bad)):
            mc.functional.multilabel_margin_loss(*args)
            mc.check_errors()
    mc.check_errors()  # reported once


@needs_ext
@pytest.mark.parametrize("algo", [0, 1, 2])
def test_error_target_out_of_range_cpu_names_the_row(algo):
    """The CPU kernel checks the whole target (also past the first -1) in the pass that reads it and
    names the first offending row; nothing is left for check_errors()."""
    x = torch.randn(4, 6)
    y = torch.tensor([[0, -1, 3, 3, 3, 3], [1, 2, -1, 0, 0, 0], [5, -1, 0, 6, 0, 0], [7, -1, 0, 0, 0, 0]])
    with pytest.raises(RuntimeError, match=r"target index 6 out of range \[-1, 6\) in row 2"):
        op(x, y, 1, True, algo)
    mc.check_errors()
    with pytest.raises(RuntimeError, match=r"target index -3 out of range \[-1, 6\) in row 0"):
        op(x[0], torch.tensor([-3, 0]), 1, False, algo)


@pytest.mark.parametrize("input_shape,target_shape", [
    ((3, 5), (2, 5)), ((3, 5), (3, 6)), ((3, 5), (5,)), ((3, 5), (3, 5, 1)), ((5,), (6,)),
    ((5,), (1, 5)), ((), (2,)),
])
def test_error_target_shape(backend, input_shape, target_shape):
    x = torch.randn(input_shape)
    y = torch.zeros(target_shape, dtype=torch.int64)
    with pytest.raises(mc.LossArgumentError, match=r"multilabel_margin_loss: target of shape .* "
                                                    r"does not fit input"):
        mc.functional.multilabel_margin_loss(x, y)


@pytest.mark.parametrize("make_args,msg", [
    (lambda: (torch.randn(2, 3), torch.zeros(2, 3)), r"target must be an integer tensor.*float32"),
    (lambda: (torch.randn(2, 3), torch.zeros(2, 3, dtype=torch.bool)), r"target must be an integer"),
    (lambda: (torch.ones(2, 3, dtype=torch.int64), torch.zeros(2, 3, dtype=torch.int64)),
     r"input must be a floating-point tensor, got torch.int64"),
    (lambda: (torch.randn(2, 3, 4), torch.zeros(2, 3, 4, dtype=torch.int64)),
     r"input must be \(C,\) or \(N, C\) \(or 0-dim\), got 3 dimensions"),
    (lambda: (torch.randn(2, 0), torch.zeros(2, 0, dtype=torch.int64)),
     r"Expected non-empty vector or matrix"),
    (lambda: (torch.randn(0), torch.zeros(0, dtype=torch.int64)), r"Expected non-empty vector"),
    (lambda: (torch.randn(2, 3), [[0, 1, 2]]), r"target must be a Tensor"),
])
def test_error_arguments(backend, make_args, msg):
    x, y = make_args()
    with pytest.raises(mc.LossArgumentError, match="multilabel_margin_loss: " + msg):
        mc.functional.multilabel_margin_loss(x, y)


def test_legacy_size_average_reduce():
    x, y = make_case("random", 3, 8)
    with pytest.warns(UserWarning):
        got = mc.functional.multilabel_margin_loss(x, y, size_average=False)
    torch.testing.assert_close(got, F.multilabel_margin_loss(x, y, reduction="sum"))


def test_error_reduction():
    with pytest.raises(ValueError, match="not a valid value for reduction"):
        mc.functional.multilabel_margin_loss(torch.randn(2, 3), torch.zeros(2, 3, dtype=torch.long),
                                             reduction="avg")


@needs_ext
@pytest.mark.parametrize("make_args,msg", [
    (lambda: (torch.randn(2, 3), torch.zeros(2, 3, dtype=torch.int32), 1, False),
     r"target must be int64, got Int"),
    (lambda: (torch.ones(2, 3, dtype=torch.int64), torch.zeros(2, 3, dtype=torch.int64), 1, False),
     r"input must be float32, float64, float16 or bfloat16"),
    (lambda: (torch.randn(2, 3, 4), torch.zeros(2, 3, 4, dtype=torch.int64), 1, False),
     r"Expected non-empty vector or matrix"),
    (lambda: (torch.randn(2, 3), torch.zeros(2, 4, dtype=torch.int64), 1, False),
     r"target of shape \[2, 4\] does not fit input of shape \[2, 3\]"),
    (lambda: (torch.randn(2, 3), torch.full((2, 3), 3), 1, False),
     r"target index 3 out of range \[-1, 3\)"),
    (lambda: (torch.randn(2, 3), torch.zeros(2, 3, dtype=torch.int64), 3, False),
     r"reduction must be 0 \(none\), 1 \(mean\) or 2 \(sum\), got 3"),
    (lambda: (torch.randn(2, 3), torch.zeros(2, 3, dtype=torch.int64), 1, False, 5),
     r"algo must be 0 \(auto\), 1 \(direct\) or 2 \(counting\), got 5"),
])
def test_error_direct_op_call(make_args, msg):
    with pytest.raises(RuntimeError, match="multilabel_margin_loss: " + msg):
        op(*make_args())


@needs_ext
def test_backward_without_compute_grad_raises():
    x = torch.randn(2, 3, requires_grad=True)
    loss = op(x, torch.zeros(2, 3, dtype=torch.int64), 1, False)[0]
    with pytest.raises(RuntimeError, match="compute_grad=False"):
        loss.backward()


@needs_ext
def test_deterministic_across_threads():
    x, y = make_case("random", 64, 300, dtype=torch.float32)
    prev = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        a = op(x, y, 1, True)
        torch.set_num_threads(max(2, prev))
        b = op(x, y, 1, True)
    finally:
        torch.set_num_threads(prev)
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("algo", [1, 2])
def test_duplicated_target_gradient_is_rounded_once(dtype, algo):
    """A target index listed 100 times gets its hinge counts summed exactly and rounded to the half
    type once (DESIGN §2), not once per occurrence."""
    torch.manual_seed(3)
    x = torch.randn(3, 300).to(dtype)
    target = torch.full((3, 300), -1, dtype=torch.int64)
    target[:, :100] = 5
    target[:, 100:104] = torch.tensor([7, 9, 11, 13])
    _, grad = torch.ops.multilabel_cuda.multilabel_margin(x, target, 2, True, algo)
    xd = x.double().requires_grad_()
    (oracle,) = torch.autograd.grad(F.multilabel_margin_loss(xd, target, reduction="sum"), xd)
    torch.testing.assert_close(grad.double(), oracle.to(dtype).double(), rtol=0, atol=0)
