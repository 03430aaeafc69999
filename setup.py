"""Builds multilabel_cuda._C through torch.utils.cpp_extension.

Environment knobs:
  MULTILABEL_CUDA_BUILD = auto | cpu | cuda   auto: CUDAExtension when nvcc and a CUDA build of torch
                                              are present (no GPU needed), else CppExtension.
  MULTILABEL_CUDA_CPU_ISA = auto | avx512 | avx2 | default   auto: the best this CPU has (the build
                                              is for this machine's CPU, as -march=native would be).
  CUDA_HOME (default /usr/local/cuda if it has nvcc), TORCH_CUDA_ARCH_LIST (default "8.0;9.0").
"""
import glob
import os
import shutil

from setuptools import setup

# cpp_extension reads CUDA_HOME at import time; the nvcc on PATH may be a wrapper outside the toolkit.
if not os.environ.get("CUDA_HOME") and os.path.exists("/usr/local/cuda/bin/nvcc"):
    os.environ["CUDA_HOME"] = "/usr/local/cuda"
# Without a GPU, cpp_extension cannot guess the architectures (it crashes with an IndexError).
os.environ.setdefault("TORCH_CUDA_ARCH_LIST", "8.0;9.0")

import torch  # noqa: E402
from torch.utils import cpp_extension  # noqa: E402

ROOT = os.path.dirname(os.path.abspath(__file__))


def cpu_flags():
    try:
        with open("/proc/cpuinfo") as f:
            return next((set(line.split(":", 1)[1].split()) for line in f
                         if line.startswith("flags")), set())
    except OSError:
        return set()


# What each ISA level needs of the CPU (cpu_isa() in csrc/ops.cpp checks the same at load time).
ISA_CPU_FLAGS = {"avx2": {"avx2", "fma", "f16c"},
                 "avx512": {"avx2", "fma", "f16c", "avx512f", "avx512bw", "avx512vl", "avx512dq"}}


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
    if isa not in ("auto", "avx512", "avx2", "default"):
        raise SystemExit(f"MULTILABEL_CUDA_CPU_ISA must be auto, avx512, avx2 or default, got {isa!r}")
    if isa == "auto":
        flags = cpu_flags()
        isa = next((i for i in ("avx512", "avx2") if ISA_CPU_FLAGS[i] <= flags), "default")
    # ATen's Vectorized<T> picks its AVX2 / AVX512 specializations (Sleef exp/log1p) from these
    # macros; CPU_CAPABILITY names the inline namespace, keeping our instantiations apart from ATen's.
    if isa == "avx512":  # 16 float lanes: ~1.8x the AVX2 BCE loop on Zen 5, where 512-bit ops are native
        return ["-mavx512f", "-mavx512bw", "-mavx512vl", "-mavx512dq", "-mavx2", "-mfma", "-mf16c",
                "-DCPU_CAPABILITY_AVX512", "-DCPU_CAPABILITY=AVX512"]
    if isa == "avx2":
        return ["-mavx2", "-mfma", "-mf16c", "-DCPU_CAPABILITY_AVX2", "-DCPU_CAPABILITY=AVX2"]
    return ["-DCPU_CAPABILITY=DEFAULT"]


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
            extra_compile_args={"cxx": cxx + ["-DMLC_WITH_CUDA"], "nvcc": nvcc + ["-DMLC_WITH_CUDA"]},
            **common)
    return cpp_extension.CppExtension(sources=cpp_sources, extra_compile_args={"cxx": cxx}, **common)


if __name__ == "__main__":  # (tests/cpu_isa_variants.py imports this file for its ISA tables)
    setup(
        ext_modules=[extension()],
        cmdclass={"build_ext": cpp_extension.BuildExtension.with_options(use_ninja=True)},
        options={"bdist_wheel": {"py_limited_api": "cp39"}},
    )
