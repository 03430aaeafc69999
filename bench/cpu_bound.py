"""What bounds fused BCE against native on the CPU, in numbers that do not depend on the machine's
load: instructions per call (valgrind's callgrind, one thread; valgrind runs no AVX-512, so measure
AVX2 builds) and the fused inner loop's cycles in llvm-mca's model of a CPU. Results and reading:
docs/performance.md, "BCE 256 x 4096 on AVX2: what bounds it".

    python -m bench.cpu_bound                       # the main build, native at its best ISA
    python -m bench.cpu_bound --isa avx2 --mcpu znver3
        # the AVX2 build of tests/cpu_isa_variants.py (build-isa/avx2), native forced to AVX2
"""
import argparse
import os
import re
import subprocess
import sys
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SHAPE = (256, 4096)
# One timed call is the difference between two runs of CALLS[1] and CALLS[0] calls.
CALLS = (2, 202)
LOOP_SYMBOL = "bce_chunkIfNS_4math8BcePlainELb0ELb0ENS1_11DenseTarget"  # float, no weights


def child(which, calls):
    import gc
    import torch
    import torch.nn.functional as F
    import multilabel_cuda
    torch.set_num_threads(1)
    torch.manual_seed(0)
    x = torch.randn(*SHAPE, requires_grad=True)
    y = (torch.rand(*SHAPE) < 0.01).float()
    loss = {"native": F.binary_cross_entropy_with_logits,
            "fused": multilabel_cuda.functional.binary_cross_entropy_with_logits}[which]
    gc.disable()  # a collection in one run and not the other would count as the calls' work
    for _ in range(3 + calls):  # 3 warm-up calls in both runs
        torch.autograd.grad(loss(x, y), x)


def instructions(which, env):
    counts = []
    for calls in CALLS:
        with tempfile.TemporaryDirectory() as tmp:
            out = subprocess.run(["valgrind", "--tool=callgrind", f"--callgrind-out-file={tmp}/cg",
                                  sys.executable, os.path.abspath(__file__), "--child", which,
                                  str(calls)], cwd=ROOT, env=env, capture_output=True, text=True)
        if out.returncode:
            sys.exit(f"cpu_bound: the {which} run failed:\n{out.stderr[-3000:]}")
        counts.append(int(re.search(r"Collected : (\d+)", out.stderr).group(1)))
    return (counts[1] - counts[0]) / (CALLS[1] - CALLS[0])


def loop_model(obj, mcpu):
    """The fused loop's unrolled body (the loop with the most divisions: one a vector, the sigmoid)
    through llvm-mca: (instructions, elements, cycles) per trip and the busiest resources."""
    symbol = next(line.split()[-1] for line in subprocess.run(
        ["nm", obj], capture_output=True, text=True).stdout.splitlines() if LOOP_SYMBOL in line)
    listing = subprocess.run(["objdump", "-d", "--no-show-raw-insn", f"--disassemble={symbol}",
                              obj], capture_output=True, text=True).stdout
    code = [(int(m[1], 16), m[2].strip()) for m in re.finditer(r"^\s+([0-9a-f]+):\s+(.*)$",
                                                               listing, re.M)]
    where = {address: i for i, (address, _) in enumerate(code)}
    loops = [code[where[int(m[1], 16)]:i + 1] for i, (address, text) in enumerate(code)
             if (m := re.match(r"j\w+\s+([0-9a-f]+)", text)) and int(m[1], 16) in where
             and int(m[1], 16) <= address]
    body = max(loops, key=lambda loop: (sum("vdivps" in t for _, t in loop), len(loop)))
    text = "\n".join(re.sub(r"<[^>]*>|#.*", "", t) for _, t in body[:-1]) + "\n"
    elements = sum("vdivps" in t for _, t in body) * (16 if "zmm" in text else 8)
    report = subprocess.run(["llvm-mca-14", f"-mcpu={mcpu}", "-iterations=500"], input=text,
                            capture_output=True, text=True).stdout
    cycles = int(re.search(r"Total Cycles:\s+(\d+)", report)[1]) / 500
    pressure = report.split("Resource pressure per iteration:")[1].split("\n\n")[0].splitlines()
    busiest = sorted(zip(map(float, pressure[2].split()), pressure[1].split()), reverse=True)[:3]
    return len(body), elements, cycles, busiest


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--isa", help="use build-isa/<isa> (tests/cpu_isa_variants.py builds it)")
    parser.add_argument("--mcpu", default="znver3", help="llvm-mca's CPU model (default znver3)")
    parser.add_argument("--child", nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        return child(args.child[0], int(args.child[1]))
    env = dict(os.environ, PYTHONHASHSEED="0")  # the same interpreter work in every run
    obj = os.path.join(ROOT, "build", "temp.linux-x86_64-cpython-311", "csrc", "cpu", "bce_cpu.o")
    if args.isa:
        base = os.path.join(ROOT, "build-isa", args.isa)
        env.update(PYTHONPATH=os.path.join(base, "pkg"), PYTHONSAFEPATH="1",
                   ATEN_CPU_CAPABILITY=args.isa)
        obj = os.path.join(base, "tmp", "csrc", "cpu", "bce_cpu.o")
    elements = SHAPE[0] * SHAPE[1]
    counts = {which: instructions(which, env) for which in ("fused", "native")}
    for which, count in counts.items():
        print(f"{which:6s} {count / 1e6:7.2f} M instructions per fwd+bwd call, "
              f"{count / elements:5.1f} per element")
    print(f"native / fused instructions: {counts['native'] / counts['fused']:.2f}")
    if os.path.exists(obj):
        length, elements, cycles, busiest = loop_model(obj, args.mcpu)
        print(f"fused loop: {length} instructions and {cycles:.1f} cycles (llvm-mca -mcpu="
              f"{args.mcpu}) per {elements} elements, {cycles / elements:.2f} cycles per element; "
              f"busiest resources, cycles per trip: {busiest}")


if __name__ == "__main__":
    main()
