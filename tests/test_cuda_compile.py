"""CI compile check of the CUDA kernels without a GPU (DESIGN §4.1): every kernel of csrc/cuda/*.cuh,
instantiated for float/double/half/bfloat16 by tests/cuda_compile/instantiate_kernels.cu, compiled by
nvcc for sm_80 and sm_90 with `-Xptxas -v`: no spills, no local-memory stack. ATen-free: ~20 s.

`python tests/test_cuda_compile.py` prints the register table recorded in csrc/cuda/README.md."""
import importlib.util
import os
import re
import shutil
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SOURCE = os.path.join(ROOT, "tests", "cuda_compile", "instantiate_kernels.cu")
_spec = importlib.util.spec_from_file_location(
    "_build_config", os.path.join(ROOT, "multilabel_cuda", "_build_config.py"))
_build_config = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_build_config)  # the default CUDA architectures (torch-free)

ARCHS = tuple("sm_" + a.replace(".", "") for a in _build_config.CUDA_ARCH_LIST.split(";"))
# Kernels per element type in instantiate_kernels.cu: BCE's 3 fused modes for each of the 2 members
# of the BCE family (plain, modulated) and 2 tilings (long rows, short rows), reduce.cuh's 2 second
# passes, the margin loss's kernel and backward's in-place scale.
KERNELS_PER_TYPE = 16
TYPES = 4
# Plain BCE's 3 modes and 2 tilings with bce_chunk_'s CSR target, for float and double only.
CSR_KERNELS = 12


def find_nvcc():
    home = os.environ.get("CUDA_HOME") or "/usr/local/cuda"
    nvcc = os.path.join(home, "bin", "nvcc")
    if os.path.exists(nvcc):
        return nvcc
    return shutil.which("nvcc")


def torch_include():
    try:
        from torch.utils.cpp_extension import include_paths
    except ImportError:
        return None
    return include_paths()[0]


def demangle(names):
    filt = shutil.which("c++filt")
    if not filt:
        return names
    out = subprocess.run([filt], input="\n".join(names), capture_output=True, text=True).stdout
    return out.splitlines() if out else names


def ptxas_reports(tmp_dir):
    """{arch: {mangled kernel: (registers, spill stores, spill loads, stack bytes)}}, from one nvcc
    run for all ARCHS (the front end runs once)."""
    gencode = [f"-gencode=arch=compute_{a[3:]},code={a}" for a in ARCHS]
    cmd = [find_nvcc(), "-std=c++20", "-O3", "--expt-relaxed-constexpr", *gencode,
           "-Xptxas", "-v", "-c", SOURCE, "-o", os.path.join(tmp_dir, "kernels.o"),
           "-I", os.path.join(ROOT, "csrc"), "-I", torch_include()]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    log = proc.stdout + proc.stderr
    assert proc.returncode == 0, f"nvcc failed:\n{log}"
    reports = {a: {} for a in ARCHS}
    arch = current = None
    for line in log.splitlines():
        m = re.search(r"Compiling entry function '(\S+)' for '(sm_\d+)'", line)
        if m:
            current, arch = m.group(1), m.group(2)
            continue
        m = re.search(r"(\d+) bytes stack frame, (\d+) bytes spill stores, (\d+) bytes spill loads", line)
        if m and current:
            reports[arch][current] = [None, int(m.group(2)), int(m.group(3)), int(m.group(1))]
            continue
        m = re.search(r"Used (\d+) registers", line)
        if m and current in reports.get(arch, {}):
            reports[arch][current][0] = int(m.group(1))
            current = None
    return {a: {k: tuple(v) for k, v in r.items()} for a, r in reports.items()}


needs_nvcc = pytest.mark.skipif(find_nvcc() is None or torch_include() is None,
                                reason="nvcc (CUDA toolkit) or torch headers not available")


@needs_nvcc
def test_kernels_compile_without_spills(tmp_path):
    for arch, report in ptxas_reports(str(tmp_path)).items():
        kernels = {k: v for k, v in report.items() if "_kernel" in k}
        assert len(kernels) == KERNELS_PER_TYPE * TYPES + CSR_KERNELS, (arch, sorted(kernels))
        spilling = {name: v for name, v in kernels.items() if v[1] or v[2] or v[3]}
        assert not spilling, f"{arch}: kernels with spills or a stack frame: {spilling}"
        for name, (regs, *_rest) in kernels.items():
            assert regs is not None and regs <= 128, f"{arch}: {name} uses {regs} registers"


if __name__ == "__main__":
    import tempfile
    if find_nvcc() is None:
        sys.exit("nvcc not found")
    with tempfile.TemporaryDirectory() as tmp:
        reports = ptxas_reports(tmp)
    names = sorted(k for k in reports[ARCHS[0]] if "_kernel" in k)
    pretty = demangle(names)
    print("| kernel | " + " | ".join(f"{a} regs" for a in ARCHS) + " | spills |")
    print("|---|" + "---|" * (len(ARCHS) + 1))
    for name, nice in zip(names, pretty):
        nice = re.sub(r"^void mlc::cuda::", "", nice)
        nice = re.sub(r"\(.*\)$", "", nice).replace("c10::", "")
        regs = [str(reports[a].get(name, (None,))[0]) for a in ARCHS]
        spills = sum(reports[a][name][1] + reports[a][name][2] for a in ARCHS if name in reports[a])
        print(f"| `{nice}` | " + " | ".join(regs) + f" | {spills} |")
