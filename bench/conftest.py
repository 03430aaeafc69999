"""Keeps the benchmark suite out of plain test runs: bench/ is collected only when named on the
command line (`pytest bench`, `pytest bench/test_bench.py::...`) or with --benchmark-only. The root
pyproject's testpaths = ["tests"] already does this for `pytest` and `make test`; this also covers
`pytest .` and a checkout without tests/."""
from pathlib import Path

HERE = Path(__file__).resolve().parent


def _named(config):
    for arg in config.args:
        p = Path(arg.split("::")[0])
        p = (Path(config.invocation_params.dir) / p).resolve()
        if p == HERE or HERE in p.parents:
            return True
    return False


def pytest_ignore_collect(collection_path, config):
    if Path(collection_path).resolve().parent == HERE and not (
            _named(config) or getattr(config.option, "benchmark_only", False)):
        return True
    return None
