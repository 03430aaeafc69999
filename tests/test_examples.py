"""The examples run and learn: each is started as a user would start it, with tiny settings."""
import os
import re
import subprocess
import sys

import pytest

from conftest import ROOT


def _run(script, *args, timeout=300):
    env = dict(os.environ)
    # The checkout's multilabel_cuda, as `python examples/...` from an installed package would get.
    env["PYTHONPATH"] = os.pathsep.join([ROOT] + [p for p in [env.get("PYTHONPATH")] if p])
    proc = subprocess.run([sys.executable, os.path.join(ROOT, "examples", script), *args],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc.stdout


def test_large_label_learns():
    labels = 1024
    out = _run("large_label.py", "--labels", str(labels), "--epochs", "2", "--train", "2048",
               "--test", "256", "--dim", "32")
    lines = out.splitlines()
    header = next(i for i, line in enumerate(lines) if line.split()[:1] == ["epoch"])
    assert lines[header].split() == ["epoch", "loss", "P@1", "P@5", "peak", "MiB", "time", "s"]
    rows = [line.split() for line in lines[header + 1:] if re.match(r"\s*\d+\s", line)]
    assert [int(r[0]) for r in rows] == [0, 1, 2]
    p1, p5, peak = (float(v) for v in rows[-1][2:5])
    loss = [float(r[1]) for r in rows[1:]]
    assert all(v > 0 for v in loss) and loss[-1] < loss[0]
    # 3 positives a sample among 1024 labels: chance is 0.003; the popularity baseline (printed)
    # is the bar to clear.
    baseline = re.search(r"most frequent training labels P@1 ([\d.]+), P@5 ([\d.]+)", out)
    assert baseline, out
    assert p1 > max(0.3, float(baseline.group(1)) + 0.1), out
    assert p5 > float(baseline.group(2)), out
    assert peak > 0


def _table(out):
    """The epoch rows' (epoch, loss, P@1, P@5) as printed."""
    return [line.split()[:4] for line in out.splitlines() if re.match(r"\s*\d+\s+[-\d]", line)]


def _step_losses(out):
    """Every step's loss (--print-steps), by step."""
    return {m.group(1): float(m.group(2))
            for m in re.finditer(r"^step (\S+) loss (\S+)$", out, re.M)}


def test_sharded_large_label_matches_single_process():
    args = ["--labels", "1024", "--epochs", "2", "--train", "1024", "--test", "256", "--dim", "32",
            "--print-steps"]
    single = _run("large_label.py", *args)
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([ROOT] + [p for p in [env.get("PYTHONPATH")] if p])
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone",
                           "--nproc-per-node", "2",
                           os.path.join(ROOT, "examples", "sharded_large_label.py"), *args],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "2 ranks (gloo)" in proc.stdout, proc.stdout
    rows = _table(proc.stdout)
    assert [r[0] for r in rows] == ["0", "1", "2"], proc.stdout
    assert rows == _table(single), proc.stdout + single
    steps, single_steps = _step_losses(proc.stdout), _step_losses(single)
    assert len(steps) == 8 and steps.keys() == single_steps.keys(), proc.stdout + single
    for step, loss in steps.items():  # the same losses, but for the order of the class sums
        assert loss == pytest.approx(single_steps[step], rel=1e-5), (step, proc.stdout + single)
    assert re.search(r"rank 1: train peak \d+ MiB, step \d+ ms", proc.stdout), proc.stdout
