"""Bad input gets a clear error naming the argument (same words on every backend); the fallback."""
import os
import re
import subprocess
import sys
import textwrap

import pytest
import torch

import multilabel_cuda
import multilabel_cuda.functional as MF
from conftest import EXTENSION_LOADED

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BCE, SOFT = MF.binary_cross_entropy_with_logits, MF.multilabel_soft_margin_loss


def _cases():
    x, y = torch.randn(4, 5), torch.rand(4, 5)
    return [
        (BCE, (x, torch.rand(4, 6)), {}, r"Target size .* must be the same as input size"),
        (BCE, (x, torch.rand(5)), {}, r"Target size"),
        (BCE, (x, y), {"weight": torch.rand(3)}, r"weight of shape \(3,\) is not broadcastable"),
        (BCE, (x, y), {"pos_weight": torch.rand(4, 5, 2)}, r"pos_weight of shape .* not broadcastable"),
        (BCE, (x.long(), y), {}, r"input must be a floating-point tensor, got torch.int64"),
        (BCE, (x, y.long()), {}, r"target must be a floating-point tensor"),
        (BCE, (x, y), {"reduction": "avg"}, r"avg is not a valid value for reduction"),
        (BCE, (x, [1.0] * 5), {}, r"target must be a Tensor"),
        (BCE, (x.to_sparse(), y), {}, r"input must be a dense \(strided\) tensor, got layout torch.sparse_coo"),
        (SOFT, (x, y.to_sparse()), {}, r"target must be a dense \(strided\) tensor"),
        (MF.multilabel_margin_loss, (x, torch.zeros(4, 5, dtype=torch.long).to_sparse()), {},
         r"target must be a dense"),
        (SOFT, (torch.randn(()), torch.rand(())), {}, r"at least one dimension"),
        (SOFT, (x, torch.rand(3, 5)), {}, r"target of shape \(3, 5\) is not broadcastable"),
        (SOFT, (x, y.bool()), {}, r"target must be a real floating-point or integer tensor"),
        (SOFT, (x, y), {"weight": torch.rand(4)}, r"weight of shape \(4,\) is not broadcastable"),
        (SOFT, (x, y), {"reduction": None}, r"None is not a valid value for reduction"),
    ]


@pytest.mark.parametrize("backend", ["auto", "reference"])
@pytest.mark.parametrize("fn,args,kwargs,match", _cases())
def test_bad_input_raises_named_error(backend, fn, args, kwargs, match):
    multilabel_cuda.set_backend(backend)
    try:
        with pytest.raises(multilabel_cuda.LossArgumentError, match=match) as info:
            fn(*args, **kwargs)
    finally:
        multilabel_cuda.set_backend("auto")
    # Catchable as either family of errors torch.nn raises for bad arguments.
    assert isinstance(info.value, ValueError) and isinstance(info.value, RuntimeError)


@pytest.mark.skipif(multilabel_cuda.backend() != "extension", reason="extension not built")
def test_direct_op_calls_are_checked_in_cpp():
    """The ops validate too (RuntimeError, never a crash) for callers that bypass functional."""
    op = torch.ops.multilabel_cuda
    x = torch.randn(3, 4)
    with pytest.raises(RuntimeError, match="target size .* must be the same as input size"):
        op.bce_with_logits(x, torch.rand(3, 5), None, None, 1, True)
    with pytest.raises(RuntimeError, match="target has dtype Double but input has dtype Float"):
        op.bce_with_logits(x, torch.rand(3, 4, dtype=torch.float64), None, None, 1, True)
    with pytest.raises(RuntimeError, match="weight of shape .* is not broadcastable"):
        op.multilabel_soft_margin(x, torch.rand(3, 4), torch.rand(2), 1, True)
    with pytest.raises(RuntimeError, match="reduction must be 0"):
        op.bce_with_logits(x, torch.rand(3, 4), None, None, 7, True)
    with pytest.raises(RuntimeError, match="input must be float32, float64, float16 or bfloat16"):
        op.bce_with_logits(x.long(), torch.rand(3, 4).long(), None, None, 1, False)


# --- Device mismatch: every tensor argument of every op, on another device than the input, through
# the public function and through the op itself. Meta stands in for a second device without a GPU.
# (function, op, the op's tensor arguments in order, the op's other arguments)
SIGNATURES = {
    "bce": (BCE, "bce_with_logits", ("input", "target", "weight", "pos_weight"), (1, True)),
    "soft_margin": (SOFT, "multilabel_soft_margin", ("input", "target", "weight"), (1, True)),
    "margin": (MF.multilabel_margin_loss, "multilabel_margin", ("input", "target"), (1, True)),
}
DEVICE_PAIRS = [pytest.param("cpu", "meta", id="cpu-meta"), pytest.param("meta", "cpu", id="meta-cpu"),
                pytest.param("cpu", "cuda", id="cpu-cuda", marks=pytest.mark.cuda),
                pytest.param("cuda", "cpu", id="cuda-cpu", marks=pytest.mark.cuda)]
MISMATCHES = [(loss, arg) for loss, (_, _, args, _) in SIGNATURES.items() for arg in args[1:]]


def _arguments(loss, arg, input_device, other_device):
    """The op's tensor arguments (full-shape operands) with `arg` on other_device, the rest on
    input_device."""
    _, _, names, _ = SIGNATURES[loss]
    values = {"input": torch.randn(4, 5),
              "target": (torch.tensor([[0, 2, -1, 0, 0]] * 4) if loss == "margin" else torch.rand(4, 5)),
              "weight": torch.rand(4, 5), "pos_weight": torch.rand(4, 5)}
    return [values[n].to(other_device if n == arg else input_device) for n in names]


def _assert_names_argument(info, arg):
    assert isinstance(info.value, RuntimeError)
    assert re.search(rf"\b{arg}\b", str(info.value)), str(info.value)


@pytest.mark.parametrize("input_device,other_device", DEVICE_PAIRS)
@pytest.mark.parametrize("loss,arg", MISMATCHES)
def test_device_mismatch_public_function(loss, arg, input_device, other_device):
    fn, _, names, _ = SIGNATURES[loss]
    tensors = _arguments(loss, arg, input_device, other_device)
    kwargs = dict(zip(names[2:], tensors[2:]))
    with pytest.raises(multilabel_cuda.LossArgumentError) as info:
        fn(*tensors[:2], **kwargs)
    _assert_names_argument(info, arg)


@pytest.mark.skipif(not EXTENSION_LOADED, reason="extension not built")
@pytest.mark.parametrize("input_device,other_device", DEVICE_PAIRS)
@pytest.mark.parametrize("loss,arg", MISMATCHES)
def test_device_mismatch_direct_op_call(loss, arg, input_device, other_device):
    _, op, _, rest = SIGNATURES[loss]
    tensors = _arguments(loss, arg, input_device, other_device)
    with pytest.raises(RuntimeError) as info:
        getattr(torch.ops.multilabel_cuda, op)(*tensors, *rest)
    _assert_names_argument(info, arg)


def test_cpu_scalars_mix_with_any_device():
    """As in ATen, a 0-dim CPU tensor is not a device mismatch (it is a scalar)."""
    x, y = torch.randn(4, 5, device="meta"), torch.rand(4, 5, device="meta")
    w = torch.tensor(0.5)
    assert BCE(x, y, w, pos_weight=w).device.type == "meta"
    assert SOFT(x, torch.tensor(1.0), w).device.type == "meta"


def _run(code, **env):
    full_env = {**os.environ, "PYTHONPATH": ROOT, **env}
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], env=full_env, cwd=ROOT,
                          capture_output=True, text=True, timeout=300)



def test_env_var_selects_reference_backend():
    r = _run("""
        import warnings; warnings.simplefilter("error")
        import torch, multilabel_cuda as mc, torch.nn.functional as F
        assert mc.backend() == "reference", mc.backend()
        x, y = torch.randn(3, 4, requires_grad=True), torch.rand(3, 4)
        torch.testing.assert_close(mc.functional.binary_cross_entropy_with_logits(x, y),
                                   F.binary_cross_entropy_with_logits(x, y))
        print("ok")
    """, MULTILABEL_CUDA_BACKEND="reference")
    assert r.returncode == 0 and "ok" in r.stdout, r.stderr


def test_missing_library_falls_back_with_one_warning():
    r = _run("""
        import sys, warnings
        class Block:  # make the compiled library unimportable, as on a machine that never built it
            def find_spec(self, name, path=None, target=None):
                if name == "multilabel_cuda._C":
                    raise ImportError("simulated: not built")
        sys.meta_path.insert(0, Block())
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            import torch, multilabel_cuda as mc
            import torch.nn.functional as F
            x, y = torch.randn(3, 4, requires_grad=True), torch.rand(3, 4)
            for _ in range(3):
                out = mc.MultiLabelSoftMarginLoss()(x, y)
        msgs = [str(w.message) for w in caught if "multilabel_cuda" in str(w.message)]
        assert len(msgs) == 1 and "reference" in msgs[0], msgs
        assert mc.backend() == "reference"
        torch.testing.assert_close(out, F.multilabel_soft_margin_loss(x, y))
        out.backward()
        try:
            mc.set_backend("extension")
        except RuntimeError as e:
            assert "not available" in str(e)
        else:
            raise AssertionError("set_backend('extension') should fail without the library")
        print("ok")
    """)
    assert r.returncode == 0 and "ok" in r.stdout, r.stderr


def test_bad_backend_env_is_rejected():
    r = _run("import multilabel_cuda", MULTILABEL_CUDA_BACKEND="fast")
    assert r.returncode != 0 and "MULTILABEL_CUDA_BACKEND must be one of" in r.stderr


@pytest.mark.skipif(multilabel_cuda.backend() != "extension", reason="extension not built")
def test_device_without_a_kernel_for_one_op_uses_reference(monkeypatch):
    """Dispatch is per op: e.g. a CUDA build has BCE kernels but no margin kernel yet."""
    from multilabel_cuda import _backend
    devices = dict(_backend.KERNEL_DEVICES, multilabel_margin=frozenset())
    monkeypatch.setattr(_backend, "KERNEL_DEVICES", devices)
    x = torch.randn(3, 5, requires_grad=True)
    target = torch.tensor([[0, 2, -1, 0, 0], [4, -1, 0, 0, 0], [1, 3, 0, -1, 0]])
    margin = MF.multilabel_margin_loss(x, target)
    bce = MF.binary_cross_entropy_with_logits(x, torch.rand(3, 5))
    assert "multilabel_cuda" not in margin.grad_fn.name()
    assert "multilabel_cuda" in bce.grad_fn.name()
    torch.testing.assert_close(margin, torch.nn.functional.multilabel_margin_loss(x, target))


@pytest.mark.parametrize("reduction", ["none", "mean", "sum"])
def test_meta_tensors_give_native_shapes(reduction):
    """Shape inference on the meta device (no values: the margin range check is skipped there)."""
    x, y = torch.randn(4, 5, device="meta"), torch.rand(4, 5, device="meta")
    t = torch.zeros(4, 5, dtype=torch.long, device="meta")
    F = torch.nn.functional
    for ours, native in ((BCE(x, y, reduction=reduction), F.binary_cross_entropy_with_logits(x, y, reduction=reduction)),
                         (SOFT(x, y, reduction=reduction), F.multilabel_soft_margin_loss(x, y, reduction=reduction)),
                         (MF.multilabel_margin_loss(x, t, reduction=reduction),
                          F.multilabel_margin_loss(x, t, reduction=reduction))):
        assert ours.device.type == "meta"
        assert ours.shape == native.shape and ours.dtype == native.dtype
