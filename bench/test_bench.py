"""pytest-benchmark regression suite: fused vs native fwd+bwd per loss at 256x4096 fp32 (CPU, and
CUDA when present). Not part of `make test` (pyproject's testpaths is ["tests"]); run it with

    pytest bench --benchmark-only                      # add --benchmark-autosave to keep a record
    pytest bench --benchmark-only --benchmark-compare  # against the last saved run

torch and multilabel_cuda are imported by the fixtures, not at module level, so collecting this
file (or importing the `bench` package) stays cheap."""
import pytest

pytest.importorskip("pytest_benchmark")

from bench.cases import CASE_ORDER, SPECS  # noqa: E402  (stdlib-only module)

SHAPE = (256, 4096)


def _devices():
    import torch
    return ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


@pytest.fixture(scope="module", autouse=True)
def _threads():
    import torch
    old = torch.get_num_threads()
    torch.set_num_threads(2)  # docs/design.md §6: measured with 2 threads
    yield
    torch.set_num_threads(old)


@pytest.mark.parametrize("device", ["cpu", "cuda"])
@pytest.mark.parametrize("impl", ["native", "fused"])
@pytest.mark.parametrize("case", CASE_ORDER)
def test_fwd_bwd(benchmark, case, impl, device):
    import torch
    from bench.cases import fused_available, make_inputs, make_step, native_loss_fn, fused_loss_fn
    if device == "cuda" and not torch.cuda.is_available():
        pytest.skip("needs a CUDA device")
    spec = SPECS[case]
    ok, why = fused_available(spec)
    if not ok:
        pytest.skip(why)
    dev = torch.device(device)
    inp = make_inputs(spec, *SHAPE, torch.float32, dev)
    loss_fn = native_loss_fn(spec, inp) if impl == "native" else fused_loss_fn(spec, inp)
    step = make_step(loss_fn, inp)
    if dev.type == "cuda":
        inner = step

        def step():
            out = inner()
            torch.cuda.synchronize(dev)
            return out
    benchmark.group = f"{case} {SHAPE[0]}x{SHAPE[1]} {device}"
    benchmark.extra_info.update(case=case, impl=impl, shape=list(SHAPE), dtype="float32")
    rounds = 3 if spec.positives >= 64 and impl == "native" else None  # native margin is O(N*P*C)
    if rounds:
        benchmark.pedantic(step, rounds=rounds, warmup_rounds=1)
    else:
        benchmark(step)
