"""Benchmarks for multilabel_cuda against the native torch.nn.functional losses.

    python -m bench.compare [--quick]          # table + JSON + PNG (see bench/README.md)
    pytest bench --benchmark-only              # pytest-benchmark regression suite

Kept empty on purpose: importing ``bench`` (e.g. during pytest collection) loads nothing heavy.
"""
