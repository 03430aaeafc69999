"""The op contract: autograd (gradcheck, double backward, forward AD), opcheck, torch.compile."""
import pytest
import torch
from torch.autograd import gradcheck, gradgradcheck

import multilabel_cuda
import multilabel_cuda.functional as MF
from conftest import REDUCTIONS, EXTENSION_LOADED

pytestmark = pytest.mark.skipif(not EXTENSION_LOADED, reason="compiled extension not built")


def _bce_args(shape=(4, 6), requires_target_grad=False, device="cpu"):
    f64 = dict(dtype=torch.float64, device=device)
    x = torch.randn(shape, **f64, requires_grad=True)
    y = torch.rand(shape, **f64, requires_grad=requires_target_grad)
    w = torch.rand(shape[-1], **f64) + 0.5
    pw = torch.rand(shape[-1], **f64) + 0.5
    return x, y, w, pw


@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("target_grad", [False, True])
def test_gradcheck_bce(device, reduction, target_grad):
    x, y, w, pw = _bce_args(requires_target_grad=target_grad, device=device)
    fn = lambda x, y: MF.binary_cross_entropy_with_logits(x, y, w, reduction=reduction, pos_weight=pw)
    assert gradcheck(fn, (x, y))
    assert gradgradcheck(fn, (x, y))


@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("shape", [(5,), (3, 4), (2, 3, 4)], ids=str)
def test_gradcheck_soft_margin(device, reduction, shape):
    x, y, w, _ = _bce_args(shape, requires_target_grad=True, device=device)
    fn = lambda x, y: MF.multilabel_soft_margin_loss(x, y, w, reduction=reduction)
    assert gradcheck(fn, (x, y))
    assert gradgradcheck(fn, (x, y))


@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_forward_ad(reduction):
    """As torch's test_bce_with_logits_has_correct_forward_grad: forward AD through the module."""
    x, y, _, _ = _bce_args()
    assert gradcheck(lambda x: multilabel_cuda.BCEWithLogitsLoss(reduction=reduction)(x, y), (x,),
                     check_forward_ad=True)
    assert gradcheck(lambda x: MF.multilabel_soft_margin_loss(x, y, reduction=reduction), (x,),
                     check_forward_ad=True)


def _opcheck_samples(device):
    f32 = dict(dtype=torch.float32, device=device)
    samples = []
    for red in (0, 1, 2):
        for grad in (False, True):
            x = torch.randn(5, 7, **f32, requires_grad=grad)
            samples.append(("bce_with_logits", (x, torch.rand(5, 7, **f32), None, None, red, grad)))
            samples.append(("bce_with_logits", (x, torch.rand(5, 7, **f32), torch.rand(7, **f32),
                                                torch.rand(5, 1, **f32), red, grad)))
            samples.append(("multilabel_soft_margin", (x, torch.rand(5, 7, **f32),
                                                       torch.rand(7, **f32), red, grad)))
    xt = torch.randn(7, 5, **f32, requires_grad=True).t()  # transposed input: fake strides must match
    samples.append(("bce_with_logits", (xt, torch.rand(5, 7, **f32), None, None, 0, True)))
    f64 = dict(dtype=torch.float64, device=device)
    samples.append(("multilabel_soft_margin", (torch.randn(3, 2, 4, **f64, requires_grad=True),
                                               torch.rand(3, 2, 4, **f64), None, 0, True)))
    return samples


@pytest.mark.parametrize("upstream", [torch.tensor(1.0), torch.tensor(2.5), torch.rand(5, 1),
                                      torch.rand(5, 7)], ids=["one", "scalar", "per_row", "full"])
def test_opcheck_scale_grad(upstream):
    """Backward's in-place scale (ops.cpp): the schema declares the mutation; an upstream of 1 is a
    no-op, anything else multiplies."""
    grad = torch.randn(5, 7)
    want = grad * upstream
    torch.library.opcheck(torch.ops.multilabel_cuda._scale_grad_.default, (grad.clone(), upstream))
    torch.ops.multilabel_cuda._scale_grad_(grad, upstream)
    torch.testing.assert_close(grad, want)


def test_opcheck(device):
    for name, args in _opcheck_samples(device):
        torch.library.opcheck(getattr(torch.ops.multilabel_cuda, name).default, args)


def test_fake_kernel_shapes_match_real():
    from torch._subclasses.fake_tensor import FakeTensorMode
    x, y = torch.randn(3, 4, 5), torch.rand(3, 4, 5)
    for red in (0, 1, 2):
        real = torch.ops.multilabel_cuda.multilabel_soft_margin(x, y, None, red, True)
        with FakeTensorMode() as mode:
            fake = torch.ops.multilabel_cuda.multilabel_soft_margin(
                mode.from_tensor(x), mode.from_tensor(y), None, red, True)
        for r, f in zip(real, fake):
            assert r.shape == f.shape and r.stride() == f.stride() and r.dtype == f.dtype


@pytest.mark.parametrize("loss", ["bce", "soft_margin"])
def test_torch_compile_fullgraph(loss):
    """A compiled training step (one graph) gives native torch.nn's loss and parameter gradients."""
    torch._dynamo.reset()
    model = torch.nn.Linear(8, 6).double()
    pw = torch.rand(6, dtype=torch.float64) + 0.5
    crit, native_crit = ((multilabel_cuda.BCEWithLogitsLoss(pos_weight=pw), torch.nn.BCEWithLogitsLoss(pos_weight=pw))
                         if loss == "bce" else (multilabel_cuda.MultiLabelSoftMarginLoss(weight=pw),
                                                torch.nn.MultiLabelSoftMarginLoss(weight=pw)))
    compiled = torch.compile(lambda data, labels: crit(model(data), labels), fullgraph=True,
                             backend="aot_eager")
    data, labels = torch.randn(10, 8, dtype=torch.float64), torch.rand(10, 6, dtype=torch.float64)
    native = native_crit(model(data), labels)
    native_grads = torch.autograd.grad(native, list(model.parameters()))
    out = compiled(data, labels)
    grads = torch.autograd.grad(out, list(model.parameters()))
    torch.testing.assert_close(out, native)
    for a, b in zip(grads, native_grads):
        torch.testing.assert_close(a, b)


def test_torch_compile_inductor():
    torch._dynamo.reset()
    x = torch.randn(16, 32, requires_grad=True)
    y = torch.rand(16, 32)
    fn = torch.compile(lambda x, y: MF.binary_cross_entropy_with_logits(x, y) * 2, fullgraph=True)
    out = fn(x, y)
    (g,) = torch.autograd.grad(out, x)
    ref = torch.nn.functional.binary_cross_entropy_with_logits(x, y) * 2
    torch.testing.assert_close(out, ref)
    torch.testing.assert_close(g, torch.autograd.grad(ref, x)[0])


def test_direct_op_without_grad_refuses_backward():
    x = torch.randn(3, 4, requires_grad=True)
    loss, grad = torch.ops.multilabel_cuda.bce_with_logits(x, torch.rand(3, 4), None, None, 1, False)
    assert grad.numel() == 0
    with pytest.raises(RuntimeError, match="compute_grad=False"):
        loss.backward()


# --- The gradient buffer: backward gives the op's buffer away (no N x C copy or product) and a
# retained graph recomputes it. Each case: (functional loss, native loss, args).
def _buffer_cases():
    x = torch.randn(6, 9, dtype=torch.float64)
    y = torch.rand(6, 9, dtype=torch.float64)
    t = torch.tensor([[0, 3, -1] + [0] * 6, [8, -1] + [0] * 7] * 3)
    pw = torch.rand(9, dtype=torch.float64) + 0.5
    F = torch.nn.functional
    return {
        "bce": (MF.binary_cross_entropy_with_logits, F.binary_cross_entropy_with_logits, x, y,
                dict(pos_weight=pw)),
        "soft_margin": (MF.multilabel_soft_margin_loss, F.multilabel_soft_margin_loss, x, y, {}),
        "margin": (MF.multilabel_margin_loss, F.multilabel_margin_loss, x, t, {}),
    }


BUFFER_CASES = _buffer_cases()


@pytest.mark.parametrize("case", BUFFER_CASES)
@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_retained_graph_after_the_buffer_was_given_away(case, reduction):
    ours_fn, native_fn, x, y, kw = BUFFER_CASES[case]
    x = x.clone().requires_grad_()
    loss = ours_fn(x, y, reduction=reduction, **kw)
    native = native_fn(x, y, reduction=reduction, **kw)
    ones, twos = torch.ones_like(loss), torch.full_like(loss, 2.0)
    per_elem = torch.rand_like(loss)
    for upstream in (ones, twos, per_elem, ones):
        (got,) = torch.autograd.grad(loss, x, upstream, retain_graph=True)
        (want,) = torch.autograd.grad(native, x, upstream, retain_graph=True)
        torch.testing.assert_close(got, want)
        got.fill_(123.0)  # the caller owns what it got: the next backward must not see this
    loss.backward(ones, retain_graph=True)
    loss.backward(twos)
    torch.testing.assert_close(x.grad, 3 * torch.autograd.grad(native, x, ones)[0])


@pytest.mark.parametrize("case", BUFFER_CASES)
def test_backward_adopts_the_op_buffer_without_a_copy(case):
    """loss.backward() on a leaf: x.grad is the buffer the fused pass wrote (AccumulateGrad steals
    it because backward dropped its own reference)."""
    _, native_fn, x, y, kw = BUFFER_CASES[case]
    x = x.clone().requires_grad_()
    op = {"bce": lambda: torch.ops.multilabel_cuda.bce_with_logits(x, y, None, kw["pos_weight"], 1, True),
          "soft_margin": lambda: torch.ops.multilabel_cuda.multilabel_soft_margin(x, y, None, 1, True),
          "margin": lambda: torch.ops.multilabel_cuda.multilabel_margin(x, y, 1, True)}[case]
    loss, grad = op()
    ptr = grad.data_ptr()
    del grad
    loss.backward()
    assert x.grad.data_ptr() == ptr
    torch.testing.assert_close(x.grad, torch.autograd.grad(native_fn(x, y, **kw), x)[0])


def test_gradient_output_modified_in_place_is_refused():
    x = torch.randn(3, 4, requires_grad=True)
    loss, grad = torch.ops.multilabel_cuda.bce_with_logits(x, torch.rand(3, 4), None, None, 1, True)
    grad.add_(1.0)
    with pytest.raises(RuntimeError, match="modified in place"):
        loss.backward()


@pytest.mark.parametrize("case", BUFFER_CASES)
def test_torch_func_transforms(case):
    """torch.func cannot see through a C++ autograd.Function: under its transforms the losses run
    the reference (plain torch ops), so grad, vmap, vmap(grad) and jacrev all match native."""
    ours_fn, native_fn, x, y, kw = BUFFER_CASES[case]
    for transform in (lambda f: torch.func.grad(f), lambda f: torch.vmap(f),
                      lambda f: torch.vmap(torch.func.grad(f)), lambda f: torch.func.jacrev(f)):
        got = transform(lambda x, y: ours_fn(x, y, **kw))(x, y)
        want = transform(lambda x, y: native_fn(x, y, **kw))(x, y)
        torch.testing.assert_close(got, want)
