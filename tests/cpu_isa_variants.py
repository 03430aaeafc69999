"""Runs the CPU tests against every CPU vector ISA level this machine can execute, not only the one
`make build` picked (the best available): the AVX512, AVX2 and portable paths of csrc/cpu/ are
different code (csrc/cpu/vec_io.h, the margin gathers), and a CI box would otherwise exercise only
its own. Each other level is built CPU-only into build-isa/<isa>/ (incrementally, with ninja) and the
CPU test files run with that build first on sys.path.

    python tests/cpu_isa_variants.py            # what `make test` runs (`make isa-test`)
    python tests/cpu_isa_variants.py avx2       # one level
"""
import importlib.util
import os
import shutil
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TEST_FILES = ["tests/test_bce.py", "tests/test_margin.py", "tests/test_op_contract.py",
              "tests/test_errors_and_fallback.py"]


def runnable_levels():
    spec = importlib.util.spec_from_file_location(
        "_build_config", os.path.join(ROOT, "multilabel_cuda", "_build_config.py"))
    _build_config = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(_build_config)  # the ISA table (torch-free)
    return [isa for isa in _build_config.ISA_LEVELS if _build_config.runs_here(isa)]


def built_level():
    """The ISA of the main (pip install -e) build, or None when it is not built."""
    out = subprocess.run([sys.executable, "-c", "import torch, multilabel_cuda._C; "
                          "print(torch.ops.multilabel_cuda.cpu_isa())"],
                         cwd=ROOT, capture_output=True, text=True)
    return out.stdout.strip() if out.returncode == 0 else None


def build(isa):
    """Builds multilabel_cuda._C for `isa`, CPU only; returns a folder to put first on sys.path."""
    base = os.path.join(ROOT, "build-isa", isa)
    env = dict(os.environ, MULTILABEL_CUDA_BUILD="cpu", MULTILABEL_CUDA_CPU_ISA=isa)
    out = subprocess.run([sys.executable, "setup.py", "-q", "build_ext", "--build-lib",
                          os.path.join(base, "lib"), "--build-temp", os.path.join(base, "tmp")],
                         cwd=ROOT, env=env, capture_output=True, text=True)
    if out.returncode != 0:
        sys.exit(f"cpu_isa_variants: the {isa} build failed:\n{out.stdout[-4000:]}{out.stderr[-4000:]}")
    pkg = os.path.join(base, "pkg", "multilabel_cuda")
    shutil.rmtree(pkg, ignore_errors=True)
    os.makedirs(pkg)
    src = os.path.join(ROOT, "multilabel_cuda")
    for name in os.listdir(src):
        if name.endswith(".py"):
            os.symlink(os.path.join(src, name), os.path.join(pkg, name))
    for name in os.listdir(os.path.join(base, "lib", "multilabel_cuda")):
        shutil.copy(os.path.join(base, "lib", "multilabel_cuda", name), pkg)
    return os.path.dirname(pkg)


def run_tests(isa, path):
    # PYTHONSAFEPATH: `python -m` would otherwise put the repository (and its own build) first.
    env = dict(os.environ, PYTHONPATH=path, PYTHONSAFEPATH="1")
    check = ("import torch, multilabel_cuda as m; assert m.backend() == 'extension', m.backend(); "
             f"assert m.__file__.startswith({path!r}), m.__file__; "
             f"assert torch.ops.multilabel_cuda.cpu_isa() == {isa!r}, torch.ops.multilabel_cuda.cpu_isa()")
    subprocess.run([sys.executable, "-c", check], cwd=ROOT, env=env, check=True)
    # Only what the ISA changes: not the CUDA ids, not the reference backend (plain torch ops).
    return subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                           "-m", "not cuda", "-k", "not reference", *TEST_FILES],
                          cwd=ROOT, env=env).returncode


def main(argv):
    main_isa = built_level()
    levels = argv or [i for i in runnable_levels() if i != main_isa]
    print(f"cpu_isa_variants: main build {main_isa}; testing {levels or 'nothing else'}", flush=True)
    failed = []
    for isa in levels:
        print(f"--- {isa}: build", flush=True)
        path = build(isa)
        print(f"--- {isa}: tests", flush=True)
        if run_tests(isa, path) != 0:
            failed.append(isa)
    if failed:
        print(f"cpu_isa_variants: FAILED for {failed}")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
