"""Builds multilabel_cuda._C through torch.utils.cpp_extension.

Environment knobs:
  MULTILABEL_CUDA_BUILD = auto | cpu | cuda   auto: CUDAExtension when nvcc and a CUDA build of torch
                                              are present (no GPU needed), else CppExtension.
  MULTILABEL_CUDA_CPU_ISA = auto | avx512 | avx2 | default   auto: the best this CPU has (the build
                                              is for this machine's CPU, as -march=native would be).
  CUDA_HOME (default /usr/local/cuda if it has nvcc), TORCH_CUDA_ARCH_LIST (default: CUDA_ARCH_LIST of
  multilabel_cuda/_build_config.py, which also holds the ISA table).
"""
import glob
import importlib.util
import os
import shutil

from setuptools import setup

ROOT = os.path.dirname(os.path.abspath(__file__))
_spec = importlib.util.spec_from_file_location(
    "_build_config", os.path.join(ROOT, "multilabel_cuda", "_build_config.py"))
config = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(config)  # the ISA and CUDA arch tables (torch-free)

# cpp_extension reads CUDA_HOME at import time; the nvcc on PATH may be a wrapper outside the toolkit.
if not os.environ.get("CUDA_HOME") and os.path.exists("/usr/local/cuda/bin/nvcc"):
    os.environ["CUDA_HOME"] = "/usr/local/cuda"
os.environ.setdefault("TORCH_CUDA_ARCH_LIST", config.CUDA_ARCH_LIST)

import torch  # noqa: E402
from torch.utils import cpp_extension  # noqa: E402


def want_cuda(cu_sources):
    mode = os.environ.get("MULTILABEL_CUDA_BUILD", "auto")
    if mode not in ("auto", "cpu", "cuda"):
        raise SystemExit(f"MULTILABEL_CUDA_BUILD must be auto, cpu or cuda, got {mode!r}")
    available = bool(cu_sources) and torch.version.cuda is not None and (
        cpp_extension.CUDA_HOME is not None or shutil.which("nvcc") is not None)
    if mode == "cuda" and not available:
        raise SystemExit("MULTILABEL_CUDA_BUILD=cuda but no CUDA toolkit / CUDA build of torch found")
    return available and mode != "cpu"


def cpu_isa_flags():
    isa = os.environ.get("MULTILABEL_CUDA_CPU_ISA", "auto")
    if isa != "auto" and isa not in config.ISA_LEVELS:
        raise SystemExit(f"MULTILABEL_CUDA_CPU_ISA must be auto or one of "
                         f"{list(config.ISA_LEVELS)}, got {isa!r}")
    level = config.ISA_LEVELS[config.best_isa() if isa == "auto" else isa]
    return level["flags"] + ["-D" + d for d in level["defines"]]


def extension():
    cpp_sources = sorted(glob.glob("csrc/*.cpp") + glob.glob("csrc/cpu/*.cpp"))
    cu_sources = sorted(glob.glob("csrc/cuda/*.cu"))
    # -fschedule-insns (-fsched-pressure: without spilling) interleaves the unrolled exp/log1p chains
    # of the CPU kernels; GCC leaves that pre-RA pass off on x86. Measured 1.2x on the BCE loop.
    cxx = ["-O3", "-fopenmp", "-fschedule-insns", "-fsched-pressure", "-Wno-unknown-pragmas"]
    cxx += cpu_isa_flags()
    common = dict(
        name="multilabel_cuda._C",
        include_dirs=[os.path.join(ROOT, "csrc")],
        extra_link_args=["-fopenmp"],  # at::parallel_for silently runs on one thread without it
        py_limited_api=True,
    )
    if want_cuda(cu_sources):
        nvcc = ["-O3", "-lineinfo", "--expt-relaxed-constexpr", "-Xptxas", "-v"]
        return cpp_extension.CUDAExtension(
            sources=cpp_sources + cu_sources,
            extra_compile_args={"cxx": cxx, "nvcc": nvcc},
            **common)
    return cpp_extension.CppExtension(sources=cpp_sources, extra_compile_args={"cxx": cxx}, **common)


if __name__ == "__main__":
    setup(
        ext_modules=[extension()],
        cmdclass={"build_ext": cpp_extension.BuildExtension.with_options(use_ninja=True)},
        options={"bdist_wheel": {"py_limited_api": "cp39"}},
    )
