"""Fused linear + loss (multilabel_cuda/linear.py) against F.linear + the torch.nn.functional
losses: loss and the gradients w.r.t. input, weight and bias, over chunk sizes, reductions, dtypes
and both backends; autograd contract (gradcheck, opcheck, torch.compile, double backward); bad
input."""
import pytest
import torch
import torch.nn.functional as F

import multilabel_cuda
from multilabel_cuda import LossArgumentError, _ops
from multilabel_cuda import _linear_stream as stream, linear as L
from multilabel_cuda.functional import (linear_binary_cross_entropy_with_logits as lin_bce,
                                        linear_multilabel_margin_loss as lin_margin,
                                        linear_multilabel_soft_margin_loss as lin_soft)

KINDS = ("bce", "soft_margin", "margin")
REDUCTIONS = ("mean", "sum", "none")


def make_target(kind, n, c, k=3, dtype=torch.float64):
    if kind == "margin":  # (N, K) class indices, cut at the first -1; repeats allowed (native's)
        t = torch.randint(0, c, (n, k))
        if n > 1:
            t[1, 1] = -1       # row 1: one positive
        t[0, 0] = t[0, 1] if k > 1 else t[0, 0]  # a repeated class
        return t
    return (torch.rand(n, c, dtype=dtype) < 0.3).to(dtype) if kind == "soft_margin" \
        else torch.rand(n, c, dtype=dtype)  # soft labels for BCE


def native(kind, x, w, b, target, reduction, pos_weight=None):
    """The oracle: torch.nn.functional on the materialized logits."""
    logits = F.linear(x, w, b)
    if kind == "bce":
        return F.binary_cross_entropy_with_logits(logits, target.to(logits.dtype),
                                                  pos_weight=pos_weight, reduction=reduction)
    if kind == "soft_margin":
        return F.multilabel_soft_margin_loss(logits, target.to(logits.dtype), reduction=reduction)
    full = torch.full(logits.shape, -1, dtype=torch.int64)  # native wants (N, C)
    full[:, :target.size(1)] = target
    return F.multilabel_margin_loss(logits, full, reduction=reduction)


def fused(kind, x, w, b, target, reduction, chunk_size, pos_weight=None):
    if kind == "bce":
        return lin_bce(x, w, target, b, pos_weight, reduction, chunk_size)
    if kind == "soft_margin":
        return lin_soft(x, w, target, b, reduction, chunk_size)
    return lin_margin(x, w, target, b, reduction, chunk_size)


def leaves(n, d, c, dtype=torch.float64, bias=True):
    x = torch.randn(n, d, dtype=dtype).requires_grad_()
    w = (torch.randn(c, d, dtype=dtype) / d ** 0.5).requires_grad_()
    b = torch.randn(c, dtype=dtype).requires_grad_() if bias else None
    return x, w, b


def grads(loss, params, upstream):
    return torch.autograd.grad(loss, [p for p in params if p is not None], upstream)


def compare(kind, n, d, c, reduction, chunk_size, bias=True, pos_weight=None, target=None,
            dtype=torch.float64, tol=dict(rtol=1e-10, atol=1e-12)):
    x, w, b = leaves(n, d, c, dtype, bias)
    target = make_target(kind, n, c) if target is None else target
    ref = native(kind, x, w, b, target, reduction, pos_weight)
    got = fused(kind, x, w, b, target, reduction, chunk_size, pos_weight)
    assert got.shape == ref.shape and got.dtype == ref.dtype
    torch.testing.assert_close(got, ref, **tol)
    upstream = torch.randn_like(ref)
    for g, r in zip(grads(got, (x, w, b), upstream), grads(ref, (x, w, b), upstream)):
        torch.testing.assert_close(g, r, **tol)


@pytest.fixture(params=["extension", "reference"])
def chunk_backend(request, monkeypatch):
    """Runs a test with each chunk loss and asserts it is the one that ran."""
    if request.param == "extension" and not _ops.AVAILABLE:
        pytest.skip("compiled extension not built")
    multilabel_cuda.set_backend(request.param)
    calls = {"extension": 0, "reference": 0}
    for name in calls:
        orig = getattr(stream, f"_bce_chunk_{name}")

        def spy(*args, _orig=orig, _name=name):
            calls[_name] += 1
            return _orig(*args)
        monkeypatch.setattr(stream, f"_bce_chunk_{name}", spy)
    yield request.param
    multilabel_cuda.set_backend("auto")
    other = "reference" if request.param == "extension" else "extension"
    assert calls[other] == 0
    # The margin loss has its own chunk math (torch ops) on either backend.
    assert calls[request.param] > 0 or request.node.name.startswith("test_margin")


@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("kind", ("bce", "soft_margin"))
@pytest.mark.parametrize("chunk_size", [1, 7, 13, 20, None])
def test_bce_family_matches_native(chunk_backend, kind, reduction, chunk_size):
    compare(kind, 5, 4, 13, reduction, chunk_size)


@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("chunk_size", [1, 7, 13, 20, None])
def test_margin_matches_native(chunk_backend, reduction, chunk_size):
    compare("margin", 5, 4, 13, reduction, chunk_size)


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("bias", [False, True])
@pytest.mark.parametrize("n,d", [(1, 3), (1, 1), (6, 1), (9, 17)])
def test_shapes_and_bias(kind, bias, n, d):
    for reduction in REDUCTIONS:
        compare(kind, n, d, 11, reduction, 4, bias=bias)


@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("shape", [(11,), (1, 11), (4, 11), (1,), ()])
def test_pos_weight(chunk_backend, reduction, shape):
    pos_weight = torch.rand(shape, dtype=torch.float64) * 3
    compare("bce", 4, 5, 11, reduction, 3, pos_weight=pos_weight)


def test_margin_targets(chunk_backend):
    n, c = 4, 9
    cases = [torch.full((n, 2), -1),                          # no positives anywhere
             torch.randint(0, c, (n, c)),                     # K = C, native's format
             torch.tensor([[8, 0], [3, -1], [-1, 5], [2, 2]]),  # cut at -1, repeat, after -1
             torch.zeros(n, 0, dtype=torch.int64)]            # K = 0
    for t in cases:
        for reduction in REDUCTIONS:
            compare("margin", n, 3, c, reduction, 4, target=t)


@pytest.mark.parametrize("kind", KINDS)
def test_chunk_size_independent(kind):
    x, w, b = leaves(7, 6, 50, torch.float32)
    target = make_target(kind, 7, 50, dtype=torch.float32)
    results = []
    for chunk in (1, 7, 50, 64, None):
        loss = fused(kind, x, w, b, target, "sum", chunk)
        results.append((loss, *torch.autograd.grad(loss, (x, w, b))))
    for r in results[1:]:
        for a, e in zip(r, results[0]):
            torch.testing.assert_close(a, e, rtol=1e-5, atol=1e-5)


def test_chunks_are_chunks(monkeypatch):
    """The chunk op only ever sees (N, <= chunk) logits; the default chunk follows its rule."""
    widths = []
    orig = stream._bce_chunk

    def spy(logits, *args):
        widths.append(logits.shape)
        return orig(logits, *args)
    monkeypatch.setattr(stream, "_bce_chunk", spy)
    x, w, b = leaves(3, 4, 1000, torch.float32)
    lin_bce(x, w, torch.rand(3, 1000), b, chunk_size=300).backward()
    assert widths == [(3, 300)] * 3 + [(3, 100)]
    assert L.default_chunk_size(256, 1 << 16, torch.float32) == 8192
    assert L.default_chunk_size(256, 1 << 16, torch.float64) == 4096
    assert L.default_chunk_size(1 << 16, 1 << 16, torch.float32) == 256
    assert L.default_chunk_size(4, 100, torch.float32) == 100


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_dtypes(kind, dtype):
    """Low precision: the oracle is float32 on the same (rounded) values, as the fused op computes
    in float32; gradients are returned in the parameters' dtype."""
    n, d, c = 6, 8, 37
    x, w, b = leaves(n, d, c, dtype)
    target = make_target(kind, n, c, dtype=torch.float32)
    got = fused(kind, x, w, b, target, "mean", 8)
    gg = torch.autograd.grad(got, (x, w, b))
    x32, w32, b32 = (t.detach().float().requires_grad_() for t in (x, w, b))
    ref = native(kind, x32, w32, b32, target, "mean")
    gr = torch.autograd.grad(ref, (x32, w32, b32))
    assert got.dtype == dtype and all(g.dtype == dtype for g in gg)
    tol = dict(rtol=1e-5, atol=1e-6) if dtype == torch.float32 else dict(rtol=1e-2, atol=1e-3)
    torch.testing.assert_close(got.float(), ref, **tol)
    for g, r in zip(gg, gr):
        torch.testing.assert_close(g.float(), r, **tol)


@pytest.mark.parametrize("kind", KINDS)
def test_partial_requires_grad_and_no_grad(kind):
    x, w, b = leaves(4, 3, 10)
    target = make_target(kind, 4, 10)
    ref = native(kind, x, w, b, target, "mean")
    rx, rw, rb = torch.autograd.grad(ref, (x, w, b))
    x0 = x.detach()
    (gw,) = torch.autograd.grad(fused(kind, x0, w, b.detach(), target, "mean", 3), (w,))
    torch.testing.assert_close(gw, rw)
    (gb,) = torch.autograd.grad(fused(kind, x0, w.detach(), b, target, "mean", 3), (b,))
    torch.testing.assert_close(gb, rb)
    with torch.no_grad():
        out = fused(kind, x, w, b, target, "mean", 3)
    assert not out.requires_grad
    torch.testing.assert_close(out, ref.detach())


@pytest.mark.parametrize("kind", KINDS)
def test_retain_graph_and_module_grad_accumulation(kind):
    x, w, b = leaves(4, 3, 10)
    target = make_target(kind, 4, 10)
    loss = fused(kind, x, w, b, target, "sum", 3)
    loss.backward(retain_graph=True)    # hands the kept gradients to autograd
    first = [t.grad.clone() for t in (x, w, b)]
    (loss * 3).backward()               # the second backward streams the chunks again
    for t, g in zip((x, w, b), first):
        torch.testing.assert_close(t.grad, 4 * g)


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_gradcheck(kind, reduction):
    x, w, b = leaves(3, 2, 7)
    target = make_target(kind, 3, 7, k=2)
    fn = lambda x, w, b: fused(kind, x, w, b, target, reduction, 3)  # noqa: E731
    assert torch.autograd.gradcheck(fn, (x, w, b))


def test_double_backward_refused():
    x, w, b = leaves(3, 2, 7)
    for kind in KINDS:
        for reduction in ("mean", "none"):
            loss = fused(kind, x, w, b, make_target(kind, 3, 7, k=2), reduction, 3)
            (gx,) = torch.autograd.grad(loss.sum(), x, create_graph=True)
            with pytest.raises(RuntimeError, match="do not support double backward"):
                gx.sum().backward()


def test_opcheck():
    x, w, b = leaves(3, 4, 9)
    t = make_target("bce", 3, 9)
    tm = make_target("margin", 3, 9)
    ops = torch.ops.multilabel_cuda
    for red in (0, 1, 2):
        torch.library.opcheck(ops.linear_bce.default,
                              (x, w, b, t, None, None, None, torch.rand(9, dtype=x.dtype) + 0.5,
                               red, 4, True, True, True))
        torch.library.opcheck(ops.linear_soft_margin.default,
                              (x, w, None, t, None, None, None, red, 4, True, True, False))
        torch.library.opcheck(ops.linear_margin.default, (x, w, b, tm, red, 4, False, True, True))
    cls = _sparse_class()
    if cls is not None:  # the sparse target's CSR parts
        sp = cls.from_dense(t * (torch.rand_like(t) < 0.3))
        torch.library.opcheck(ops.linear_bce.default,
                              (x, w, b, None, sp.indices, sp.offsets, sp.values, None, 1, 4, True,
                               True, True))
    torch.library.opcheck(ops.linear_loss_backward.default,
                          (torch.rand(3, 9, dtype=x.dtype), x.detach(), w.detach(), b.detach(), t,
                           None, None, None, None, L.BCE, 0, 4, True, True, True))


def test_torch_compile_fullgraph():
    torch._dynamo.reset()
    x, w, b = leaves(5, 4, 13, torch.float32)
    targets = {k: make_target(k, 5, 13, dtype=torch.float32) for k in KINDS}

    def step(x, w, b):  # the kept gradients ('mean') and the streamed backward ('none')
        return (sum(fused(k, x, w, b, targets[k], "mean", 4) for k in KINDS)
                + fused("bce", x, w, b, targets["bce"], "none", 4).square().mean())
    compiled = torch.compile(step, fullgraph=True, backend="aot_eager")
    got = compiled(x, w, b)
    gg = torch.autograd.grad(got, (x, w, b))
    ref = (sum(native(k, x, w, b, targets[k], "mean") for k in KINDS)
           + native("bce", x, w, b, targets["bce"], "none").square().mean())
    torch.testing.assert_close(got, ref)
    for g, r in zip(gg, torch.autograd.grad(ref, (x, w, b))):
        torch.testing.assert_close(g, r)


def test_modules():
    x, w, b = leaves(4, 3, 10)
    pw = torch.rand(10, dtype=torch.float64) + 0.5
    t = make_target("bce", 4, 10)
    tm = make_target("margin", 4, 10)
    m = multilabel_cuda.LinearBCEWithLogitsLoss(pos_weight=pw, reduction="sum", chunk_size=3)
    torch.testing.assert_close(m(x, w, t, b), native("bce", x, w, b, t, "sum", pw))
    assert "pos_weight" in dict(m.named_buffers())
    m = multilabel_cuda.LinearMultiLabelSoftMarginLoss(reduction="none")
    torch.testing.assert_close(m(x, w, t), native("soft_margin", x, w, None, t, "none"))
    m = multilabel_cuda.LinearMultiLabelMarginLoss()
    torch.testing.assert_close(m(x, w, tm, b), native("margin", x, w, b, tm, "mean"))
    lin = torch.nn.Linear(3, 10, dtype=torch.float64)
    out = multilabel_cuda.LinearBCEWithLogitsLoss()(x, lin.weight, t, lin.bias)
    torch.testing.assert_close(out, F.binary_cross_entropy_with_logits(lin(x), t))


# ---- sparse targets -----------------------------------------------------------------------------

def _sparse_class():
    return getattr(multilabel_cuda, "SparseTargets", None)


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_sparse_targets(kind, reduction):
    cls = _sparse_class()
    if cls is None:
        pytest.skip("multilabel_cuda.SparseTargets not available yet")
    n, c = 5, 23
    x, w, b = leaves(n, 4, c)
    if kind == "margin":
        padded = torch.randint(0, c, (n, 3))
        padded[2, 1:] = -1
        sparse = cls.from_padded(padded, c)
        dense_target = sparse.to_padded()
    else:
        dense_target = (torch.rand(n, c) < 0.2).double()
        if kind == "bce":
            dense_target *= torch.rand(n, c, dtype=torch.float64)  # soft labels as values
        sparse = cls.from_dense(dense_target)
    ref = native(kind, x, w, b, dense_target, reduction)
    got = fused(kind, x, w, b, sparse, reduction, 7)
    torch.testing.assert_close(got, ref)
    upstream = torch.randn_like(ref)
    for g, r in zip(grads(got, (x, w, b), upstream), grads(ref, (x, w, b), upstream)):
        torch.testing.assert_close(g, r)


@pytest.mark.parametrize("kind", ("bce", "soft_margin"))
@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("chunk_size", [1, 3, 8, 20, None])
def test_sparse_chunks_split_rows(chunk_backend, kind, reduction, chunk_size):
    """Chunk borders through rows' positives (runs of neighbouring classes), empty rows, soft values
    and a per-class pos_weight, on both chunk backends."""
    cls = _sparse_class()
    if cls is None:
        pytest.skip("multilabel_cuda.SparseTargets not available yet")
    n, c = 6, 29
    x, w, b = leaves(n, 5, c)
    dense_target = (torch.rand(n, c) < 0.25).double()
    dense_target[0, 6:11] = 1  # across the borders of chunks of 1, 3 and 8
    dense_target[1] = 0
    dense_target[2, 19:22] = 1
    pos_weight = None
    if kind == "bce":
        dense_target *= torch.randint(1, 5, (n, c)).double() / 4
        pos_weight = torch.rand(c, dtype=torch.float64) * 2 + 0.5
    sparse = cls.from_dense(dense_target)
    ref = native(kind, x, w, b, dense_target, reduction, pos_weight)
    got = fused(kind, x, w, b, sparse, reduction, chunk_size, pos_weight)
    torch.testing.assert_close(got, ref)
    upstream = torch.randn_like(ref)
    for g, r in zip(grads(got, (x, w, b), upstream), grads(ref, (x, w, b), upstream)):
        torch.testing.assert_close(g, r)


def test_sparse_target_never_densified(monkeypatch):
    """With the extension, the chunks read the CSR arrays: no chunk is narrowed or densified."""
    cls = _sparse_class()
    if cls is None or not _ops.AVAILABLE:
        pytest.skip("needs SparseTargets and the compiled extension")

    def refuse(*args, **kwargs):
        raise AssertionError("a sparse target was densified")
    monkeypatch.setattr(cls, "to_dense", refuse)
    monkeypatch.setattr(cls, "narrow_classes", refuse)
    x, w, b = leaves(4, 3, 40, torch.float32)
    dense_target = (torch.rand(4, 40) < 0.2).float()
    sparse = cls.from_dense(dense_target)
    for kind in ("bce", "soft_margin"):
        got = fused(kind, x, w, b, sparse, "mean", 16)
        torch.testing.assert_close(got, native(kind, x, w, b, dense_target, "mean"))


# ---- bad input ----------------------------------------------------------------------------------

@pytest.mark.parametrize("kind", KINDS)
def test_bad_input(kind):
    x, w, b = leaves(4, 3, 10)
    t = make_target(kind, 4, 10)
    cases = [
        (dict(w=torch.randn(10, 5, dtype=torch.float64)), "weight has 5 features"),
        (dict(x=torch.randn(3, dtype=torch.float64)), "input must be"),
        (dict(b=torch.randn(9, dtype=torch.float64)), "bias must be"),
        (dict(w=w.detach().float()), "weight has dtype"),
        (dict(w=torch.randn(10, 3, dtype=torch.float64, device="meta")), "weight is on meta"),
        (dict(b=torch.randn(10, dtype=torch.float64, device="meta")), "bias is on meta"),
        (dict(chunk=0), "chunk_size must be a positive int"),
        (dict(chunk=-3), "chunk_size must be a positive int"),
        (dict(chunk=2.5), "chunk_size must be a positive int"),
        (dict(chunk=True), "chunk_size must be a positive int"),
        (dict(t=t[:3]), "target of shape"),
        (dict(t=t.to("meta")), "target is on meta"),
        (dict(red="avg"), "not a valid value for reduction"),
    ]
    if kind == "margin":
        cases += [(dict(t=torch.randint(0, 10, (4, 11))), "target of shape"),
                  (dict(t=torch.full((4, 2), 10)), r"target index 10 out of range \[-1, 10\)"),
                  (dict(t=torch.full((4, 2), -2)), "target index -2 out of range"),
                  (dict(t=t.double()), "integer tensor")]
    else:
        cases += [(dict(t=torch.rand(4, 11, dtype=torch.float64)), "target of shape")]
    for change, match in cases:
        a = dict(x=x, w=w, b=b, t=t, chunk=3, red="mean")
        a.update(change)
        with pytest.raises(LossArgumentError, match=match) as info:
            fused(kind, a["x"], a["w"], a["b"], a["t"], a["red"], a["chunk"])
        assert L._FN_NAMES[{"bce": L.BCE, "soft_margin": L.SOFT_MARGIN,
                            "margin": L.MARGIN}[kind]] in str(info.value) or "reduction" in match


def test_bad_pos_weight_and_target_grad():
    x, w, b = leaves(4, 3, 10)
    t = make_target("bce", 4, 10)
    with pytest.raises(LossArgumentError, match="pos_weight of shape"):
        lin_bce(x, w, t, b, pos_weight=torch.rand(9, dtype=torch.float64))
    with pytest.raises(LossArgumentError, match="pos_weight is on meta"):
        lin_bce(x, w, t, b, pos_weight=torch.rand(10, dtype=torch.float64, device="meta"))
    with pytest.raises(LossArgumentError, match="target requires grad"):
        lin_bce(x, w, t.clone().requires_grad_(), b)
    with pytest.raises(LossArgumentError, match="pos_weight requires grad"):
        lin_bce(x, w, t, b, pos_weight=torch.rand(10, dtype=torch.float64, requires_grad=True))


def test_torch_compile_inductor():
    """The default backend (inductor) too, on the BCE op."""
    torch._dynamo.reset()
    x, w, b = leaves(5, 4, 13, torch.float32)
    t = make_target("bce", 5, 13, dtype=torch.float32)
    compiled = torch.compile(lambda x, w, b: lin_bce(x, w, t, b, chunk_size=4), fullgraph=True)
    got = compiled(x, w, b)
    ref = native("bce", x, w, b, t, "mean")
    torch.testing.assert_close(got, ref)
    for g, r in zip(torch.autograd.grad(got, (x, w, b)), torch.autograd.grad(ref, (x, w, b))):
        torch.testing.assert_close(g, r)


@pytest.mark.cuda
@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_cuda_matches_cpu_oracle(kind, dtype):
    """On CUDA (cuBLAS chunks; the CUDA loss kernel where the extension has one): against the
    oracle on the same values in float32 on the CPU."""
    n, d, c = 33, 16, 1000
    x, w, b = (t.detach().cuda().requires_grad_() for t in leaves(n, d, c, dtype))
    target = make_target(kind, n, c, dtype=torch.float32)
    got = fused(kind, x, w, b, target.cuda(), "mean", 128)
    gg = torch.autograd.grad(got, (x, w, b))
    x32, w32, b32 = (t.detach().float().cpu().requires_grad_() for t in (x, w, b))
    ref = native(kind, x32, w32, b32, target, "mean")
    tol = dict(rtol=1e-4, atol=1e-5) if dtype == torch.float32 else dict(rtol=1e-2, atol=1e-3)
    torch.testing.assert_close(got.float().cpu(), ref, **tol)
    for g, r in zip(gg, torch.autograd.grad(ref, (x32, w32, b32))):
        torch.testing.assert_close(g.float().cpu(), r, **tol)
    with pytest.raises(LossArgumentError, match="target is on cpu"):
        fused(kind, x, w, b, target, "mean", 128)
