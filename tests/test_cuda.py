"""What only the CUDA device has: misaligned storage, run-to-run determinism of the parallel
reductions, agreement of the CPU and CUDA kernels (each also against native), backward's
in-place scale reading its upstream on the device, the margin methods with many positives, a
margin training step without host synchronisation, and out-of-range targets reported later. Parity, gradcheck, opcheck and errors on CUDA are
the device-parametrized tests of the other files. Skipped without a CUDA device (`pytest -m cuda`)."""
import pytest
import torch
import torch.nn.functional as F

import multilabel_cuda
import multilabel_cuda.functional as MF
from conftest import DTYPES, REDUCTIONS, RED_CODE, has_kernel, tol

pytestmark = [pytest.mark.cuda,
              pytest.mark.skipif(not all(has_kernel(op, "cuda") for op in (
                  "bce_with_logits", "multilabel_soft_margin", "multilabel_margin")),
                  reason="extension built without CUDA kernels")]
ops = torch.ops.multilabel_cuda


def _operands(n, c, dtype, device, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, c, generator=g, dtype=torch.float64) * 4
    y = torch.rand(n, c, generator=g, dtype=torch.float64)
    w = torch.rand(c, generator=g, dtype=torch.float64) + 0.5
    pw = torch.rand(c, generator=g, dtype=torch.float64) * 2 + 0.5
    return [t.to(device, dtype) for t in (x, y, w, pw)]


def _margin_target(n, c, seed=0):
    """(n, c) int64: random positives, a -1, then junk indices (native ignores them)."""
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(0, c, (n, c), generator=g)
    for r in range(n):
        p = int(torch.randint(0, min(c, 70) + 1, (1,), generator=g))
        y[r, :p] = torch.randperm(c, generator=g)[:p]
        if p < c:
            y[r, p] = -1
    return y


@pytest.mark.parametrize("offset", [0, 1])
@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_misaligned_and_strided(expect_impl, offset, reduction):
    """An input that starts one element past an aligned address and a transposed target: the
    vectorized loads must not assume alignment or contiguity."""
    x = torch.empty(7 * 41 + offset, device="cuda")[offset:].view(7, 41).copy_(torch.randn(7, 41))
    y = torch.rand(41, 7, device="cuda").t()
    for loss, ours, native in [
            ("bce", MF.binary_cross_entropy_with_logits, F.binary_cross_entropy_with_logits),
            ("soft_margin", MF.multilabel_soft_margin_loss, F.multilabel_soft_margin_loss)]:
        with expect_impl(loss, "cuda"):
            got = ours(x, y, reduction=reduction)
        want = native(x.double(), y.double(), reduction=reduction)
        torch.testing.assert_close(got.double(), want, **tol(torch.float32))


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_cpu_cuda_agree(dtype):
    """The CPU and CUDA kernels, called directly (compact margin target included), each against
    native in float64, and against each other."""
    x, y, w, pw = _operands(9, 1000, dtype, "cpu")
    t = _margin_target(9, 1000)[:, :80]  # compact: every row's -1 lies in the first 71 columns
    t_full = torch.cat([t, t.new_full((9, 920), -1)], dim=1)
    x64, y64, w64, pw64 = (a.double() for a in (x, y, w, pw))
    for red, code in RED_CODE.items():
        natives = []
        for fn, args in [(F.binary_cross_entropy_with_logits, (y64, w64)),
                         (F.multilabel_soft_margin_loss, (y64, w64)),
                         (F.multilabel_margin_loss, (t_full,))]:
            xr = x64.clone().requires_grad_()
            kw = {"pos_weight": pw64} if fn is F.binary_cross_entropy_with_logits else {}
            loss = fn(xr, *args, reduction=red, **kw)
            natives.append((loss.detach(), torch.autograd.grad(loss.sum(), xr)[0]))
        results = {}
        for dev in ("cpu", "cuda"):
            xd, yd, wd, pwd, td = (a.to(dev) for a in (x, y, w, pw, t))
            results[dev] = [ops.bce_with_logits(xd, yd, wd, pwd, code, True),
                            ops.multilabel_soft_margin(xd, yd, wd, code, True),
                            ops.multilabel_margin(xd, td, code, True)]
        for cpu, gpu, native in zip(results["cpu"], results["cuda"], natives):
            for a, b, want in zip(cpu, gpu, native):
                assert a.dtype == b.dtype == dtype and b.device.type == "cuda"
                torch.testing.assert_close(a.double(), want, **tol(dtype))
                torch.testing.assert_close(b.cpu().double(), want, **tol(dtype))
                torch.testing.assert_close(b.cpu(), a, **tol(dtype))


def test_deterministic():
    """Two runs give the same bits: the multi-block reductions have a fixed order."""
    x, y, w, pw = _operands(300, 7000, torch.float32, "cuda")
    t = _margin_target(300, 7000).cuda()
    for code in RED_CODE.values():
        runs = [[ops.bce_with_logits(x, y, w, pw, code, True),
                 ops.multilabel_soft_margin(x, y, w, code, True),
                 ops.multilabel_margin(x, t, code, True)] for _ in range(2)]
        for a, b in zip(runs[0], runs[1]):
            assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_backward_scales_in_place_and_skips_an_upstream_of_one(dtype):
    """_scale_grad_ on the device: loss.backward() adopts the fused buffer as x.grad (upstream 1,
    read on the device, leaves it as is); other upstreams scale it in place; a retained graph's next
    backward recomputes the buffer it gave away."""
    x = torch.randn(64, 300, device="cuda").to(dtype)
    y = torch.rand(64, 300, device="cuda").to(dtype)
    xr = x.to(torch.float64, copy=True).requires_grad_()  # a copy: x stays a plain tensor for xg
    (want,) = torch.autograd.grad(F.binary_cross_entropy_with_logits(xr, y.double()), xr)
    xg = x.clone().requires_grad_()
    loss, grad = ops.bce_with_logits(xg, y, None, None, RED_CODE["mean"], True)
    ptr = grad.data_ptr()
    del grad
    loss.backward(retain_graph=True)
    assert xg.grad.data_ptr() == ptr
    torch.testing.assert_close(xg.grad.double(), want, **tol(dtype))
    for upstream in (2.5, 1.0, 0.0):
        (g,) = torch.autograd.grad(loss, xg, torch.tensor(upstream, device="cuda", dtype=dtype),
                                   retain_graph=True)
        torch.testing.assert_close(g.double(), want * upstream, **tol(dtype))


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("algo", [0, 1, 2])
def test_margin_methods_many_positives(dtype, algo):
    """Both methods and the auto rule on the device against native (float64) and the CPU kernel:
    P from 0 to C (counting rows with more than 1024 positives use the global scratch), duplicates,
    stale entries after the -1, integer scores (ties), rows of several blocks."""
    n, c = 12, 3000
    g = torch.Generator().manual_seed(algo)
    x = torch.randn(n, c, generator=g, dtype=torch.float64)
    x[::3] = torch.randint(-3, 4, (4, c), generator=g).double()
    y = torch.randint(0, c, (n, c), generator=g)
    for r, p in enumerate([0, 1, 5, 16, 17, 100, 1024, 1025, 2000, 2999, 3000, 40]):
        y[r, :p] = torch.randperm(c, generator=g)[:p]
        if p < c:
            y[r, p] = -1
    y[-1, :40] = torch.randint(0, 4, (40,), generator=g)  # duplicated positives
    x = x.to(dtype)
    xr = x.double().requires_grad_()
    for red, code in RED_CODE.items():
        want = F.multilabel_margin_loss(xr, y, reduction=red)
        (want_grad,) = torch.autograd.grad(want.sum(), xr)
        loss, grad = ops.multilabel_margin(x.cuda(), y.cuda(), code, True, algo)
        cpu = ops.multilabel_margin(x, y, code, True, algo)
        torch.testing.assert_close(loss.cpu().double(), want.detach(), **tol(dtype))
        torch.testing.assert_close(grad.cpu().double(), want_grad, **tol(dtype))
        torch.testing.assert_close(grad.cpu(), cpu[1], **tol(dtype))
        again = ops.multilabel_margin(x.cuda(), y.cuda(), code, True, algo)
        assert torch.equal(loss, again[0]) and torch.equal(grad, again[1])


@pytest.mark.parametrize("algo", [0, 2])
def test_margin_training_step_does_not_synchronize(algo):
    """Forward + backward of the margin loss issue no host synchronisation: the target range is
    checked by the kernel (a device record), not by aminmax + item()."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(64, 2000, generator=g).cuda().requires_grad_()
    y = _margin_target(64, 2000).cuda()
    if algo == 2:
        y[:, :500] = torch.stack([torch.randperm(2000, generator=g)[:500] for _ in range(64)]).cuda()

    def step():
        loss = ops.multilabel_margin(x, y, RED_CODE["mean"], True, algo)[0] if algo else \
            MF.multilabel_margin_loss(x, y)
        loss.backward()
        return loss

    step()  # the first call on a device allocates its error record
    x.grad = None
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        loss = step()
    finally:
        torch.cuda.set_sync_debug_mode(0)
    assert torch.isfinite(loss).item() and x.grad is not None


def test_margin_out_of_range_target_reported_later():
    """An out-of-range entry makes its row NaN at once and is raised, as a LossArgumentError naming
    the value and the row, by check_errors() or by the next margin call after the device got there."""
    x = torch.randn(3, 5, device="cuda")
    good = torch.tensor([[0, 1, -1, 2, 3], [4, -1, 0, 0, 0], [2, -1, 0, 0, 0]], device="cuda")
    bad = good.clone()
    bad[1, 3] = 9  # after the -1: still an error, as native
    loss, grad = ops.multilabel_margin(x, bad, RED_CODE["none"], True)
    assert torch.isnan(loss[1]).item() and torch.isfinite(loss[[0, 2]]).all().item()
    assert torch.isnan(grad[1]).all().item()
    with pytest.raises(multilabel_cuda.LossArgumentError,
                       match=r"target index 9 out of range \[-1, 5\) in row 1"):
        multilabel_cuda.check_errors()
    multilabel_cuda.check_errors()  # reported once
    ops.multilabel_margin(x, bad, RED_CODE["mean"], False)
    torch.cuda.synchronize()  # e.g. loss.item()
    with pytest.raises(RuntimeError, match=r"target index 9 out of range \[-1, 5\) in row 1"):
        ops.multilabel_margin(x, good, RED_CODE["mean"], False)
    multilabel_cuda.check_errors()
    torch.testing.assert_close(ops.multilabel_margin(x, good, RED_CODE["sum"], False)[0].cpu(),
                               F.multilabel_margin_loss(x.cpu(), good.cpu(), reduction="sum"))
