import pytest
import torch

import multilabel_cuda


def pytest_collection_modifyitems(config, items):
    if not torch.cuda.is_available():
        skip = pytest.mark.skip(reason="needs a CUDA device")
        for item in items:
            if "cuda" in item.keywords:
                item.add_marker(skip)


@pytest.fixture
def reference_backend():
    """Run a test with the pure-PyTorch fallback, then restore the default."""
    multilabel_cuda.set_backend("reference")
    yield
    multilabel_cuda.set_backend("auto")


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


def tol(dtype):
    return {torch.float64: dict(rtol=1e-12, atol=1e-12),
            torch.float32: dict(rtol=2e-6, atol=2e-6),
            torch.bfloat16: dict(rtol=2e-2, atol=2e-2),
            torch.float16: dict(rtol=2e-3, atol=2e-3)}[dtype]
