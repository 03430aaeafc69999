"""Build tables, one copy for every reader: setup.py, CMakeLists.txt (`python _build_config.py cmake
ISA` prints them as CMake set() commands), tests/cpu_isa_variants.py, tests/test_cuda_compile.py and the load-time check in _ops.py.
Torch-free and import-free, so the build can load it by path."""
import sys

# CPU vector ISA levels of the C++ kernels, best first: compiler flags, the CPU features a build
# needs (as /proc/cpuinfo names them), and the macros that select ATen's Vectorized<T>
# specializations (CPU_CAPABILITY also names the inline namespace, keeping our instantiations apart
# from ATen's).
ISA_LEVELS = {
    "avx512": dict(flags=["-mavx512f", "-mavx512bw", "-mavx512vl", "-mavx512dq", "-mavx2", "-mfma",
                          "-mf16c"],
                   cpu={"avx2", "fma", "f16c", "avx512f", "avx512bw", "avx512vl", "avx512dq"},
                   defines=["CPU_CAPABILITY_AVX512", "CPU_CAPABILITY=AVX512"]),
    "avx2": dict(flags=["-mavx2", "-mfma", "-mf16c"], cpu={"avx2", "fma", "f16c"},
                 defines=["CPU_CAPABILITY_AVX2", "CPU_CAPABILITY=AVX2"]),
    "default": dict(flags=[], cpu=set(), defines=["CPU_CAPABILITY=DEFAULT"]),
}

# CUDA architectures built when TORCH_CUDA_ARCH_LIST is unset (without a GPU cpp_extension cannot
# guess them): Ampere and Hopper.
CUDA_ARCH_LIST = "8.0;9.0"


def cpu_features():
    """This CPU's feature flags from /proc/cpuinfo, or None where that cannot be read."""
    try:
        with open("/proc/cpuinfo") as f:
            return next((set(line.split(":", 1)[1].split()) for line in f
                         if line.startswith("flags")), set())
    except OSError:
        return None


def runs_here(isa):
    """Whether this CPU executes a build for `isa` (unknown CPUs are trusted)."""
    have = cpu_features()
    return have is None or ISA_LEVELS[isa]["cpu"] <= have


def best_isa():
    return next(isa for isa in ISA_LEVELS if runs_here(isa))


if __name__ == "__main__" and sys.argv[1:2] == ["cmake"]:
    level = ISA_LEVELS[sys.argv[2] if sys.argv[2:3] and sys.argv[2] != "auto" else best_isa()]
    print(f'set(MLC_ISA_FLAGS "{";".join(level["flags"])}")')
    print(f'set(MLC_ISA_DEFINES "{";".join(level["defines"])}")')
    print(f'set(MLC_DEFAULT_CUDA_ARCH_LIST "{CUDA_ARCH_LIST}")')
