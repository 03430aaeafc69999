"""The fused SGD update of the linear losses (update=torch.optim.SGD): several steps in a row equal
F.linear + the torch.nn.functional loss + loss.backward() + torch.optim.SGD.step(), over the
optimizer's options, reductions, bias, pos_weight, dense and sparse targets and the three losses;
dtypes; what it refuses; torch.compile and opcheck; and that no C x D gradient is ever allocated."""
import textwrap

import pytest
import torch

import multilabel_cuda
from multilabel_cuda import LossArgumentError
from multilabel_cuda import _linear_stream as stream, linear as L

from conftest import run_memory_probe
from test_linear import KINDS, fused, leaves, make_target, native


OPTIONS = [dict(lr=0.1),
           dict(lr=0.1, momentum=0.9),
           dict(lr=0.05, momentum=0.9, dampening=0.3, weight_decay=0.01),
           dict(lr=0.1, momentum=0.5, nesterov=True, weight_decay=0.1),
           dict(lr=0.1, momentum=0.9, maximize=True)]


def fused_loss(kind, x, w, b, target, reduction, chunk, update, pos_weight=None):
    if kind == "bce":
        return L.linear_binary_cross_entropy_with_logits(x, w, target, b, pos_weight, reduction,
                                                         chunk, update=update)
    fn = L.linear_multilabel_soft_margin_loss if kind == "soft_margin" \
        else L.linear_multilabel_margin_loss
    return fn(x, w, target, b, reduction, chunk, update=update)


def twins(*tensors):
    """Independent copies (leaves requiring grad where the original does)."""
    return [None if t is None else t.detach().clone().requires_grad_(t.requires_grad)
            for t in tensors]


def run_steps(kind, x, w, b, target, reduction, chunk, groups, steps=3, pos_weight=None,
              oracle_target=None, tol=None, encoder=False):
    """`steps` training steps both ways from the same start: fused (update=opt) and the oracle
    (native loss, backward, SGD.step()); compares loss, input gradient, parameters and momentum
    buffers after every step. groups(w, b) -> the SGD param groups. With `encoder`, input comes
    from a Linear encoder stepped by the same optimizer's step() (the fused weight/bias have no
    .grad, so step() skips them)."""
    oracle_target = target if oracle_target is None else oracle_target
    tol = tol or {}
    sides = []
    for t in ((x, w, b), twins(x, w, b)):
        enc = torch.nn.Linear(x.size(1), x.size(1), dtype=x.dtype) if encoder else None
        params = groups(t[1], t[2])
        if enc is not None:
            params.append(dict(params=list(enc.parameters())))
        sides.append((t, enc, torch.optim.SGD(params, **OPTIONS_BASE)))
    if encoder:
        sides[1][1].load_state_dict(sides[0][1].state_dict())
    for _ in range(steps):
        out = []
        for k, ((xx, ww, bb), enc, opt) in enumerate(sides):
            opt.zero_grad()
            if xx.grad is not None:
                xx.grad = None
            h = enc(xx) if enc is not None else xx
            if k == 0:
                loss = fused_loss(kind, h, ww, bb, target, reduction, chunk, opt, pos_weight)
            else:
                loss = native(kind, h, ww, bb, oracle_target, reduction, pos_weight)
            loss.backward()
            opt.step()
            out.append(loss.detach())
        (xa, wa, ba), enc_a, opt_a = sides[0]
        (xb, wb, bb_), enc_b, opt_b = sides[1]
        torch.testing.assert_close(out[0], out[1], **tol)
        assert wa.grad is None and (ba is None or ba.grad is None)
        if xa.requires_grad:
            torch.testing.assert_close(xa.grad, xb.grad, **tol)
        for pa, pb in zip((wa, ba), (wb, bb_)):
            if pa is not None:
                torch.testing.assert_close(pa, pb, **tol)
                ma = opt_a.state[pa].get("momentum_buffer")
                mb = opt_b.state[pb].get("momentum_buffer")
                assert (ma is None) == (mb is None)
                if ma is not None:
                    torch.testing.assert_close(ma, mb, **tol)
        if encoder:
            for pa, pb in zip(enc_a.parameters(), enc_b.parameters()):
                torch.testing.assert_close(pa, pb, **tol)


OPTIONS_BASE = dict(lr=0.1)  # the optimizer's defaults; the groups give the tested options


def one_group(opts):
    return lambda w, b: [dict(params=[p for p in (w, b) if p is not None], **opts)]


@pytest.mark.parametrize("opts", OPTIONS, ids=lambda o: ",".join(f"{k}={v}" for k, v in o.items()))
@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("reduction", ["mean", "sum"])
def test_equals_sgd(kind, reduction, opts):
    n, d, c = 5, 4, 13
    x, w, b = leaves(n, d, c)
    run_steps(kind, x, w, b, make_target(kind, n, c), reduction, 4, one_group(opts))


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("chunk", [1, 5, 13, None])
def test_chunks_blocks_no_bias_groups(kind, chunk, monkeypatch):
    """Chunk sizes, update blocks of 2 rows inside a chunk, no bias, and weight and bias in groups
    of their own (no weight decay on bias, a different lr)."""
    monkeypatch.setattr(stream._Grads, "_UPDATE_BYTES", 2 * 4 * 8)  # 2 rows of D = 4 float64
    n, d, c = 6, 4, 13
    opts = dict(lr=0.1, momentum=0.9, weight_decay=0.05, nesterov=True)
    x, w, b = leaves(n, d, c)
    target = make_target(kind, n, c, k=4)
    run_steps(kind, x, w, None, target, "mean", chunk, one_group(opts))
    groups = lambda w, b: [dict(params=[w], **opts),  # noqa: E731
                           dict(params=[b], lr=0.3, momentum=0.5)]
    run_steps(kind, x, w, b, target, "sum", chunk, groups)


@pytest.mark.parametrize("shape", [(13,), (5, 13), ()])
def test_pos_weight(shape):
    x, w, b = leaves(5, 4, 13)
    pw = torch.rand(shape, dtype=torch.float64) * 3
    run_steps("bce", x, w, b, make_target("bce", 5, 13), "mean", 4,
              one_group(dict(lr=0.2, momentum=0.9)), pos_weight=pw)


@pytest.mark.parametrize("kind", KINDS)
def test_sparse_targets(kind):
    n, c = 5, 23
    x, w, b = leaves(n, 4, c)
    if kind == "margin":
        padded = torch.randint(0, c, (n, 3))
        padded[2, 1:] = -1
        sparse = multilabel_cuda.SparseTargets.from_padded(padded, c)
        dense = sparse.to_padded()
    else:
        dense = (torch.rand(n, c) < 0.2).double()
        if kind == "bce":
            dense *= torch.rand(n, c, dtype=torch.float64)
        sparse = multilabel_cuda.SparseTargets.from_dense(dense)
    run_steps(kind, x, w, b, sparse, "mean", 7, one_group(dict(lr=0.5, momentum=0.9)),
              oracle_target=dense)


@pytest.mark.parametrize("kind", KINDS)
def test_margin_positive_rows_everywhere(kind):
    """Many positives over few classes: most rows are some row's positive (the margin defers
    their step to the end), repeats included."""
    n, c = 7, 9
    x, w, b = leaves(n, 3, c)
    target = torch.randint(0, c, (n, 5)) if kind == "margin" else make_target(kind, n, c)
    run_steps(kind, x, w, b, target, "sum", 2, one_group(dict(lr=0.1, momentum=0.9,
                                                              weight_decay=0.1)))


@pytest.mark.parametrize("kind", KINDS)
def test_frozen_input_encoder_and_partial(kind):
    """Input not requiring grad (fixed features): the loss still requires grad and backward works;
    an encoder stepped by the same optimizer's step(); a bias that does not require grad is not
    stepped (as SGD skips a parameter without a .grad)."""
    n, d, c = 4, 3, 10
    target = make_target(kind, n, c)
    x, w, b = leaves(n, d, c)
    opts = one_group(dict(lr=0.1, momentum=0.9))
    run_steps(kind, x.detach(), w, b, target, "mean", 3, opts)
    run_steps(kind, x.detach(), w, b, target, "mean", 3, opts, encoder=True)
    b0, w0 = b.detach().clone(), w.detach().clone()
    run_steps(kind, x, w, b.detach(), target, "mean", 3, opts)
    torch.testing.assert_close(b.detach(), b0, rtol=0, atol=0)
    frozen = w0.clone()
    run_steps(kind, x, frozen, b, target, "sum", 3, opts)  # a frozen weight, the bias stepped
    torch.testing.assert_close(frozen, w0, rtol=0, atol=0)


@pytest.mark.parametrize("kind", KINDS)
def test_float32(kind):
    x, w, b = leaves(6, 8, 37, torch.float32)
    run_steps(kind, x, w, b, make_target(kind, 6, 37, dtype=torch.float32), "mean", 8,
              one_group(dict(lr=0.5, momentum=0.9, weight_decay=0.01)),
              tol=dict(rtol=1e-5, atol=1e-6))


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_parameters(kind, dtype):
    """A bf16/fp16 weight: the gradient is made in float32 and rounded to the parameter's dtype
    (as the fused losses' gradient is without update=), then SGD's rule runs in that dtype, as
    torch.optim.SGD does on such a parameter and its .grad. Oracle: the same library's gradients
    without update=, stepped by torch.optim.SGD. (The margin's positive rows differ by rounding:
    without update= their two gradient parts are rounded to the dtype separately, with it they
    are summed in float32 and rounded once; momentum carries the difference over the steps.)"""
    n, d, c = 6, 8, 37
    tol = dict(rtol=5e-2, atol=5e-3) if kind == "margin" else {}
    target = make_target(kind, n, c, dtype=torch.float32)
    x, w, b = leaves(n, d, c, dtype)
    (x2, w2, b2) = twins(x, w, b)
    opts = dict(lr=0.5, momentum=0.9, weight_decay=0.01)
    opt, opt2 = torch.optim.SGD([w, b], **opts), torch.optim.SGD([w2, b2], **opts)
    for _ in range(3):
        for t in (x, x2):
            t.grad = None
        opt.zero_grad()
        opt2.zero_grad()
        fused_loss(kind, x, w, b, target, "mean", 8, opt).backward()
        fused(kind, x2, w2, b2, target, "mean", 8).backward()
        opt2.step()
        assert w.dtype == dtype and opt.state[w]["momentum_buffer"].dtype == dtype
        for a, e in ((x.grad, x2.grad), (w, w2), (b, b2),
                     (opt.state[w]["momentum_buffer"], opt2.state[w2]["momentum_buffer"])):
            torch.testing.assert_close(a, e, **tol)


@pytest.mark.parametrize("kind", KINDS)
def test_modules_parameters_and_scheduler(kind):
    """The modules' update=, nn.Linear's Parameters, an lr scheduler changing the group's lr
    between steps, and a state_dict that torch.optim.SGD loads (the same state)."""
    n, d, c = 5, 4, 11
    target = make_target(kind, n, c)
    module = {"bce": multilabel_cuda.LinearBCEWithLogitsLoss,
              "soft_margin": multilabel_cuda.LinearMultiLabelSoftMarginLoss,
              "margin": multilabel_cuda.LinearMultiLabelMarginLoss}[kind](chunk_size=4)
    heads = [torch.nn.Linear(d, c, dtype=torch.float64) for _ in range(2)]
    heads[1].load_state_dict(heads[0].state_dict())
    opts = [torch.optim.SGD(h.parameters(), lr=0.5, momentum=0.9) for h in heads]
    scheds = [torch.optim.lr_scheduler.StepLR(o, step_size=1, gamma=0.5) for o in opts]
    x = torch.randn(n, d, dtype=torch.float64)
    for _ in range(3):
        for o in opts:
            o.zero_grad()
        module(x, heads[0].weight, target, heads[0].bias, update=opts[0]).backward()
        native(kind, x, heads[1].weight, heads[1].bias, target, "mean").backward()
        for o, s in zip(opts, scheds):
            o.step()
            s.step()
    for a, e in zip(heads[0].parameters(), heads[1].parameters()):
        torch.testing.assert_close(a, e)
    restored = torch.optim.SGD(heads[1].parameters(), lr=0.5, momentum=0.9)
    restored.load_state_dict(opts[0].state_dict())
    for p in heads[1].parameters():
        torch.testing.assert_close(restored.state[p]["momentum_buffer"],
                                   opts[1].state[p]["momentum_buffer"])


def test_no_grad_and_nothing_to_step():
    """Under no_grad, or when neither weight nor bias requires grad: no step, only the loss."""
    x, w, b = leaves(4, 3, 10)
    t = make_target("bce", 4, 10)
    opt = torch.optim.SGD([w, b], lr=1.0, momentum=0.9)
    w0, b0 = w.detach().clone(), b.detach().clone()
    ref = native("bce", x, w, b, t, "mean").detach()
    with torch.no_grad():
        torch.testing.assert_close(fused_loss("bce", x, w, b, t, "mean", 3, opt), ref)
    loss = fused_loss("bce", x, w.detach(), b.detach(), t, "mean", 3, opt)
    torch.testing.assert_close(loss.detach(), ref)
    (loss * 2).backward()  # the plain op: any upstream
    assert torch.equal(w, w0) and torch.equal(b, b0) and not opt.state


def test_refused():
    x, w, b = leaves(4, 3, 10)
    t = make_target("bce", 4, 10)
    opt = torch.optim.SGD([w, b], lr=0.1)
    with pytest.raises(LossArgumentError, match="reduction 'none' cannot be used with update"):
        fused_loss("bce", x, w, b, t, "none", 3, opt)
    with pytest.raises(LossArgumentError, match="update must be a torch.optim.SGD"):
        fused_loss("bce", x, w, b, t, "mean", 3, torch.optim.Adam([w, b]))
    with pytest.raises(LossArgumentError, match="bias is not a parameter of the update"):
        fused_loss("bce", x, w, b, t, "mean", 3, torch.optim.SGD([w], lr=0.1))
    with pytest.raises(LossArgumentError, match="weight must be a leaf tensor"):
        fused_loss("bce", x, w * 1, b, t, "mean", 3, opt)
    w.grad = torch.zeros_like(w)
    with pytest.raises(LossArgumentError, match=r"weight.grad is set"):
        fused_loss("bce", x, w, b, t, "mean", 3, opt)
    w.grad = None
    with pytest.raises(LossArgumentError, match="differentiable=True"):
        fused_loss("bce", x, w, b, t, "mean", 3,
                   torch.optim.SGD([w, b], lr=0.1, differentiable=True))


@pytest.mark.parametrize("kind", KINDS)
def test_upstream_must_be_one(kind):
    x, w, b = leaves(4, 3, 10)
    t = make_target(kind, 4, 10)
    opt = torch.optim.SGD([w, b], lr=0.1)
    with pytest.raises(RuntimeError, match="upstream gradient of exactly 1"):
        (fused_loss(kind, x, w, b, t, "mean", 3, opt) * 2).backward()
    loss = fused_loss(kind, x, w, b, t, "mean", 3, opt)
    loss.backward(retain_graph=True)
    with pytest.raises(RuntimeError, match="a second time"):
        loss.backward()
    loss = fused_loss(kind, x, w, b, t, "mean", 3, opt)
    with pytest.raises(RuntimeError, match="do not support double backward"):
        torch.autograd.grad(loss, x, create_graph=True)
    other = native(kind, x, w.detach().clone(), b.detach().clone(), t, "mean")
    (fused_loss(kind, x, w, b, t, "mean", 3, opt) + other).backward()  # a sum: upstream 1
    # weight also used by another op that saved it (shared weights): the step in forward changed
    # it, and autograd refuses that op's backward
    shared = native(kind, x, w, b, t, "mean")
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        (shared + fused_loss(kind, x, w, b, t, "mean", 3, opt)).backward()


def test_opcheck():
    x, w, b = leaves(3, 4, 9)
    t = make_target("bce", 3, 9)
    tm = make_target("margin", 3, 9)
    ops = torch.ops.multilabel_cuda
    sgd = [0.1, 0.9, 0.0, 0.01, 0.0, 0.0, 0.0]
    for kind, args in ((L.BCE, (t, None, None, None, torch.rand(9, dtype=x.dtype) + 0.5)),
                       (L.SOFT_MARGIN, (t, None, None, None, None)),
                       (L.MARGIN, (tm, None, None, None, None))):
        for red in (1, 2):
            torch.library.opcheck(ops.linear_loss_sgd_.default,
                                  (x.detach(), w.detach().clone(), b.detach().clone(), *args, kind,
                                   red, 4, True, torch.zeros_like(w), torch.zeros_like(b), sgd,
                                   sgd[:-1] + [1.0]))
    torch.library.opcheck(ops.linear_loss_sgd_output.default,
                          (torch.rand((), dtype=x.dtype), torch.rand_like(x), x, w, b))


def test_torch_compile_fullgraph():
    torch._dynamo.reset()
    x, w, b = leaves(5, 4, 13, torch.float32)
    targets = {k: make_target(k, 5, 13, dtype=torch.float32) for k in KINDS}
    opts = one_group(dict(lr=0.1, momentum=0.9, weight_decay=0.01))

    for kind in KINDS:
        step = torch.compile(lambda h, w, b, opt: fused_loss(kind, h, w, b, targets[kind], "mean",
                                                             4, opt),
                             fullgraph=True, backend="aot_eager")
        xa, wa, ba = twins(x, w, b)
        xb, wb, bb = twins(x, w, b)
        opt_a = torch.optim.SGD(opts(wa, ba), lr=0.1)
        opt_b = torch.optim.SGD(opts(wb, bb), lr=0.1)
        for _ in range(3):
            for t in (xa, xb):
                t.grad = None
            step(xa, wa, ba, opt_a).backward()
            opt_b.zero_grad()
            native(kind, xb, wb, bb, targets[kind], "mean").backward()
            opt_b.step()
            for a, e in ((xa.grad, xb.grad), (wa, wb), (ba, bb)):
                torch.testing.assert_close(a, e)
        with pytest.raises(RuntimeError, match="upstream gradient of exactly 1"):
            (step(xa, wa, ba, opt_a) * 3).backward()


# ------------------------------------------------------------------------------------------ memory
MEMORY_SCRIPT = textwrap.dedent("""
    import json, torch
    from multilabel_cuda import SparseTargets
    from multilabel_cuda.functional import linear_binary_cross_entropy_with_logits as lin_bce
    from bench.compare import _RssProbe
    torch.set_num_threads(1)
    N, D, C = 8, 64, 1 << 17                  # the weight: 32 MiB
    probe = _RssProbe()
    assert probe.ok, probe.why
    x = torch.randn(N, D, requires_grad=True)
    w = (torch.randn(C, D) / 8).requires_grad_()
    b = torch.zeros(C, requires_grad=True)
    t = SparseTargets.from_padded(torch.randint(0, C, (N, 4)), C)
    opt = torch.optim.SGD([w, b], lr=0.1, momentum=0.9, weight_decay=1e-4)
    def fused():
        opt.zero_grad()
        lin_bce(x, w, t, b, chunk_size=2048, update=opt).backward()
    def plain():
        opt.zero_grad()
        lin_bce(x, w, t, b, chunk_size=2048).backward()
        opt.step()
    out = {}
    for name, step in (("fused", fused), ("plain", plain)):
        step()                               # the momentum buffers exist from here on
        out[name] = probe.measure(step) / (C * D * 4)
    print(json.dumps(out))
""")


def test_memory_no_weight_gradient():
    """Peak extra host memory of a training step in weight sizes, with the benchmark's RSS probe
    (fresh process, every allocation its own mmap): the fused update's stays far below one weight
    (its buffers are O(N * chunk + block * D)); the plain step's holds the weight gradient."""
    peak = run_memory_probe(MEMORY_SCRIPT)
    assert peak["fused"] < 0.1, peak
    assert peak["plain"] > 0.95, peak


@pytest.mark.cuda
@pytest.mark.parametrize("kind", KINDS)
def test_cuda(kind):
    """On CUDA: the same steps as torch.optim.SGD on the same device (an upstream other than 1 is
    not tried here: it is a device-side assert, which ends the process's CUDA context)."""
    n, d, c = 33, 16, 1000
    x, w, b = (t.detach().cuda().requires_grad_() for t in leaves(n, d, c, torch.float32))
    target = make_target(kind, n, c, dtype=torch.float32).cuda()
    run_steps(kind, x, w, b, target, "mean", 128,
              one_group(dict(lr=0.5, momentum=0.9, weight_decay=0.01, nesterov=True)),
              tol=dict(rtol=1e-4, atol=1e-5))
