"""What every test file shares, defined once: dtypes, reductions, the tolerance table, the device and
backend parametrizations, and `expect_impl`, which asserts which implementation produced a result."""
import contextlib
import functools
import json
import os
import subprocess
import sys

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

import multilabel_cuda
from multilabel_cuda import reference

DTYPES = [torch.float32, torch.float64, torch.float16, torch.bfloat16]
HALF_DTYPES = [torch.float16, torch.bfloat16]
REDUCTIONS = ["none", "mean", "sum"]
RED_CODE = {"none": 0, "mean": 1, "sum": 2}  # the ops' integer reduction argument

# Allowed difference from the oracle. Half types are computed in float32 and rounded once, so the
# bound is about one unit in the last place of the type.
TOL = {torch.float64: dict(rtol=1e-10, atol=1e-12),
       torch.float32: dict(rtol=2e-5, atol=1e-6),
       torch.float16: dict(rtol=2e-3, atol=2e-3),
       torch.bfloat16: dict(rtol=2e-2, atol=2e-2)}


def tol(dtype):
    return TOL[dtype]


# Every device-parametrized test runs on CUDA too; the `cuda` mark skips it without a GPU.
DEVICES = [pytest.param("cpu", id="cpu"), pytest.param("cuda", id="cuda", marks=pytest.mark.cuda)]
# "auto": the default (the fused ops wherever the library has a kernel); "reference": the fallback.
BACKENDS = ["auto", "reference"]


def pytest_collection_modifyitems(config, items):
    if not torch.cuda.is_available():
        skip = pytest.mark.skip(reason="needs a CUDA device")
        for item in items:
            if "cuda" in item.keywords:
                item.add_marker(skip)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


@pytest.fixture(params=DEVICES)
def device(request):
    return request.param


@pytest.fixture
def reference_backend():
    """Run a test with the pure-PyTorch fallback, then restore the default."""
    multilabel_cuda.set_backend("reference")
    yield
    multilabel_cuda.set_backend("auto")


@pytest.fixture(params=BACKENDS)
def backend(request):
    """Run the test on one backend, then restore the default."""
    multilabel_cuda.set_backend(request.param)
    yield request.param
    multilabel_cuda.set_backend("auto")


# --- Which implementation ran. The fused ops are seen where they reach a device kernel (a dispatch
# mode below autograd, so calls without grad count too); the reference through call counters.
# The expectation comes from what the build registered with the dispatcher, not from the routing
# code under test: on the default backend a device with a compiled kernel must run it.

LOSS_OPS = {  # public loss -> (fused op, reference function)
    "bce": ("bce_with_logits", "binary_cross_entropy_with_logits"),
    "soft_margin": ("multilabel_soft_margin", "multilabel_soft_margin_loss"),
    "margin": ("multilabel_margin", "multilabel_margin_loss"),
}
EXTENSION_LOADED = multilabel_cuda._ops.AVAILABLE


def has_kernel(op, device):
    return EXTENSION_LOADED and torch._C._dispatch_has_kernel_for_dispatch_key(
        f"multilabel_cuda::{op}", torch.device(device).type.upper())


class _FusedOpRecorder(TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.calls = []  # (op name, device type of the input)

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func.namespace == "multilabel_cuda" and args and isinstance(args[0], torch.Tensor):
            self.calls.append((func._opname, args[0].device.type))
        return func(*args, **(kwargs or {}))


@pytest.fixture
def expect_impl(request, monkeypatch):
    """`with expect_impl("bce", device): loss = ...` asserts that the block ran the fused op on
    `device` and not the reference (default backend with a compiled kernel), or the reference and no
    fused op (the reference backend, or no kernel for that device)."""
    backend_name = request.getfixturevalue("backend") if "backend" in request.fixturenames else "auto"
    counts = {}

    def counting(name, fn):
        @functools.wraps(fn)
        def wrapper(*args, **kwargs):
            counts[name] = counts.get(name, 0) + 1
            return fn(*args, **kwargs)
        return wrapper

    for _, ref_name in LOSS_OPS.values():
        monkeypatch.setattr(reference, ref_name, counting(ref_name, getattr(reference, ref_name)))

    @contextlib.contextmanager
    def check(loss, device):
        op, ref_name = LOSS_OPS[loss]
        device = torch.device(device).type
        counts.clear()
        with _FusedOpRecorder() as rec:
            yield
        fused = [c for c in rec.calls if c[0] != "_scale_grad_"]
        if backend_name != "reference" and has_kernel(op, device):
            assert (op, device) in fused and not counts, (
                f"expected the fused {op} on {device}; fused ops run: {fused}, reference calls: {counts}")
        else:
            assert counts.get(ref_name) and not fused, (
                f"expected the reference {ref_name}; fused ops run: {fused}, reference calls: {counts}")

    return check


ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run_memory_probe(script):
    """Runs `script` in a fresh process with the benchmark's memory settings (bench.compare:
    every allocation its own mmap, so the RSS probe sees each buffer) and returns the JSON object of
    its last output line."""
    from bench.compare import MEMORY_ENV
    env = dict(os.environ, **MEMORY_ENV)
    env["PYTHONPATH"] = os.pathsep.join([ROOT] + sys.path)
    proc = subprocess.run([sys.executable, "-c", script], env=env, cwd=ROOT, capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout.strip().splitlines()[-1])
