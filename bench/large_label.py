"""Large label spaces: multilabel_cuda's fused linear + BCE (also with the SGD step fused in,
update=) against F.linear + native BCE (eager and torch.compile'd) and against the three GEMMs
alone, forward + backward, N = D = 256, float32, C = 2^12 .. 2^18 (targets: issue 10 item 5;
column meanings: bench/README.md).

    python -m bench.large_label                   # C = 2^12 .. 2^18 (about 5 minutes on 2 cores)
    python -m bench.large_label --quick           # C <= 2^14, fewer repeats
    python -m bench.large_label --max-log2c 20    # up to 2^20 (native then needs ~5 GiB)

Prints one row per (C, target kind), writes bench/results/large_label.json and a plot of peak
memory and time against C beside it (large_label.png).
"""
import argparse
import json
import os
import subprocess
import sys
import time

from .compare import (HERE, MEMORY_ENV, _RssProbe, _fmt_ms, add_timing_options, machine_meta,
                      save_plot, time_interleaved)

# Implementations, in timing order. gemm: torch.mm(x, W.t()), torch.mm(g, W), torch.mm(g.t(), x)
# with fresh outputs (what F.linear and its backward run); gemm_out: the same into preallocated
# outputs (the arithmetic alone).
IMPLS = ("gemm", "gemm_out", "native", "compiled", "fused_dense", "fused_sparse", "fused_update")
FUSED = ("fused_dense", "fused_sparse", "fused_update")  # fused_update: dense target, update=SGD
MEMORY_IMPLS = ("native", "fused_dense", "fused_sparse", "fused_update")
LABELS = {"gemm": "3 GEMMs", "gemm_out": "3 GEMMs out=", "native": "F.linear+BCE",
          "compiled": "compiled", "fused_dense": "fused dense", "fused_sparse": "fused sparse",
          "fused_update": "fused + SGD update"}

# Targets of issue 10 item 5.
TIME_TARGET = 1.15          # fused fwd+bwd <= this x the three GEMMs' time
MEM_TARGET_NC = 0.1         # peak extra memory <= weight gradient + this x N x C elements
                            # (fused_update: <= this x N x C elements, no weight gradient)
MEM_TARGET_LOG2C = 18       # ... at C = 2^18 (below, O(N * chunk) buffers are not small vs N x C)


# ---------------------------------------------------------------------------------------- inputs
class Inputs:
    """x (N, D) and W (C, D) requiring grad (W scaled so logits are ~N(0, 1)); `positives` random
    classes per row as a dense 0/1 (N, C) float target and as SparseTargets; for the GEMM rows an
    (N, C) upstream g and, with out=True, preallocated outputs."""

    def __init__(self, n, d, c, positives, seed, gemm=True):
        import torch
        from multilabel_cuda import SparseTargets
        g = torch.Generator().manual_seed(seed)
        self.x = torch.randn(n, d, generator=g).requires_grad_()
        self.w = (torch.randn(c, d, generator=g) * d ** -0.5).requires_grad_()
        idx = torch.randint(c, (n, positives), generator=g)
        self.dense = torch.zeros(n, c).scatter_(1, idx, 1.0)
        self.sparse = SparseTargets.from_padded(idx, c)
        self.g = torch.randn(n, c, generator=g) if gemm else None
        self.out = (torch.empty(n, c), torch.empty(n, d), torch.empty(c, d)) if gemm else None


def make_steps(inp, impls, chunk_size=None, notes=None):
    """{impl: fwd+bwd step returning (loss, grad x, grad W)} (GEMM steps: their three outputs)."""
    import torch
    import torch.nn.functional as F
    from multilabel_cuda.functional import linear_binary_cross_entropy_with_logits as fused
    x, w = inp.x, inp.w
    xd, wd = x.detach(), w.detach()

    def native_loss(x, w, target):
        return F.binary_cross_entropy_with_logits(F.linear(x, w), target)

    def grads(loss):
        return (loss.detach(), *torch.autograd.grad(loss, (x, w)))

    steps = {}
    for impl in impls:
        if impl == "gemm":
            def step(g=inp.g):
                with torch.no_grad():
                    return torch.mm(xd, wd.t()), torch.mm(g, wd), torch.mm(g.t(), xd)
        elif impl == "gemm_out":
            def step(g=inp.g, out=inp.out):
                with torch.no_grad():
                    return (torch.mm(xd, wd.t(), out=out[0]), torch.mm(g, wd, out=out[1]),
                            torch.mm(g.t(), xd, out=out[2]))
        elif impl == "native":
            def step():
                return grads(native_loss(x, w, inp.dense))
        elif impl == "compiled":
            try:
                # Static shapes, compiled once per C, as a user with fixed shapes would.
                compiled = torch.compile(native_loss, dynamic=False)
            except Exception as e:  # noqa: BLE001
                if notes is not None:
                    notes.append(f"compile unavailable: {type(e).__name__}: {e}")
                continue

            def step(compiled=compiled):
                return grads(compiled(x, w, inp.dense))
        elif impl == "fused_dense":
            def step():
                return grads(fused(x, w, inp.dense, chunk_size=chunk_size))
        elif impl == "fused_sparse":
            def step():
                return grads(fused(x, w, inp.sparse, chunk_size=chunk_size))
        elif impl == "fused_update":
            # Plain SGD (no optimizer state); W is stepped in forward, x gets its gradient.
            opt = torch.optim.SGD([w], lr=1e-3)

            def step(opt=opt):
                loss = fused(x, w, inp.dense, chunk_size=chunk_size, update=opt)
                return (loss.detach(), *torch.autograd.grad(loss, (x,)))
        else:
            raise ValueError(impl)
        steps[impl] = step
    return steps


# ---------------------------------------------------------------------------------------- memory
def _memory_worker():
    """Child process: one configuration as JSON on stdin; {impl: peak extra bytes or None} out."""
    import torch
    job = json.load(sys.stdin)
    torch.set_num_threads(job["threads"])
    probe = _RssProbe()
    res, why = {}, probe.why
    if probe.ok:
        n, d, c = job["shape"]
        # A small configuration first (lazy initializations), then the measured one.
        for cc, measure in ((min(c, 1024), False), (c, True)):
            inp = Inputs(n, d, cc, job["positives"], job["seed"], gemm=False)
            for impl, step in make_steps(inp, job["impls"], job["chunk_size"]).items():
                try:
                    if measure:
                        res[impl] = probe.measure(step)
                    else:
                        step()
                except Exception as e:  # noqa: BLE001  (the timing run reports failures)
                    res[impl], why = None, f"{impl}: {type(e).__name__}: {e}"
            del inp
    json.dump(dict(peak_bytes=res, why=why), sys.stdout)


def measure_memory(row, args):
    """Peak extra memory of each implementation in MEMORY_IMPLS, in a fresh subprocess (see
    bench.compare._RssProbe: glibc serves every allocation >= 64 KiB by mmap, so a freed buffer
    leaves the RSS at once)."""
    job = dict(shape=[row["n"], row["d"], row["c"]], positives=args.positives, seed=args.seed,
               threads=args.threads, chunk_size=args.chunk_size, impls=list(MEMORY_IMPLS))
    env = dict(os.environ, **MEMORY_ENV)
    env["PYTHONPATH"] = os.pathsep.join([os.path.dirname(HERE)] + sys.path)
    proc = subprocess.run([sys.executable, "-m", "bench.large_label", "--_memory-worker"],
                          input=json.dumps(job), env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        row["notes"].append(f"memory worker failed: {proc.stderr.strip().splitlines()[-1:]}")
        return
    out = json.loads(proc.stdout)
    row["peak_bytes"] = {k: v for k, v in out["peak_bytes"].items() if isinstance(v, int)}
    if out["why"]:
        row["notes"].append(out["why"])


# ------------------------------------------------------------------------------------------- run
def run_one(c, args):
    import torch
    n, d = args.n, args.d
    notes = []
    if args.compile:
        torch._dynamo.reset()
    inp = Inputs(n, d, c, args.positives, args.seed)
    impls = [i for i in IMPLS if args.compile or i != "compiled"]
    steps = make_steps(inp, impls, args.chunk_size, notes)
    # Largest difference to native, relative to native's largest magnitude, over loss, grad x and
    # grad W; computed before timing, one implementation's results alive at a time beside native's.
    errors = {}
    if "native" in steps:
        ref = steps["native"]()
        for impl in FUSED:
            if impl in steps:
                try:
                    out = steps[impl]()
                except Exception:  # noqa: BLE001  (time_interleaved reports the failure)
                    continue
                errors[impl] = max(float((a - b).abs().max() / b.abs().max().clamp(min=1e-30))
                                   for a, b in zip(out, ref))
                del out
        del ref
    # Timed steps drop their results (time_interleaved would keep every first result: a weight
    # gradient each).
    timed = {k: (lambda s=s: s() and None) for k, s in steps.items()}
    failures = {}
    timings, _, first_s = time_interleaved(timed, lambda: None, args.repeats, args.min_repeats,
                                           args.min_sample_ms / 1e3, args.case_budget, failures)
    for name, why in failures.items():
        notes.append(f"{name} failed: {why}")
    del steps, timed, inp
    return dict(n=n, d=d, c=c, log2c=c.bit_length() - 1, dtype="float32",
                weight_bytes=c * d * 4, ms=timings, first_call_s=first_s, rel_err=errors,
                peak_bytes={}, notes=notes)


def derive(row):
    ms = {k: v["median_ms"] for k, v in row["ms"].items()}
    row["median_ms"] = ms
    wb = row["weight_bytes"]
    row["peak_weights"] = {k: v / wb for k, v in row["peak_bytes"].items()}
    # weight gradient + 0.1 N x C float32 elements
    row["mem_target_bytes"] = wb + MEM_TARGET_NC * row["n"] * row["c"] * 4
    row["mem_update_target_bytes"] = MEM_TARGET_NC * row["n"] * row["c"] * 4
    checks = {}
    for impl in FUSED:
        t = ms.get(impl)
        peak = row["peak_bytes"].get(impl)
        target = row["mem_update_target_bytes" if impl == "fused_update" else "mem_target_bytes"]
        checks[impl] = dict(
            x_gemm=t / ms["gemm"] if t and "gemm" in ms else None,
            x_gemm_out=t / ms["gemm_out"] if t and "gemm_out" in ms else None,
            speedup_vs_native=ms["native"] / t if t and "native" in ms else None,
            speedup_vs_compiled=ms["compiled"] / t if t and "compiled" in ms else None,
            time_ok=(t <= TIME_TARGET * ms["gemm"]) if t and "gemm" in ms else None,
            mem_ok=(peak <= target) if peak is not None else None,
            faster_than_compiled=(t < ms["compiled"]) if t and "compiled" in ms else None)
    row["checks"] = checks
    row["baselines_x_gemm"] = {k: ms[k] / ms["gemm"] for k in ("gemm_out", "native", "compiled")
                               if k in ms and "gemm" in ms}
    return row


# ----------------------------------------------------------------------------------------- table
def _fmt_x(v):
    return "-" if v is None else f"{v:.2f}x"


def _fmt_mem(row, impl):
    b = row["peak_bytes"].get(impl)
    return "-" if b is None else f"{b / row['weight_bytes']:.2f} ({b / 2**20:.0f}M)"


def _yes(v):
    return "-" if v is None else ("yes" if v else "NO")


COLUMNS = [("C", 8), ("target", 6), ("GEMMs ms", 11), ("out= ms", 11), ("native ms", 11),
           ("compiled ms", 11), ("fused ms", 11), ("x GEMMs", 7), ("x out=", 6), ("x native", 8),
           ("x compiled", 10), ("peak native", 13), ("peak fused", 13), ("<=1.15x", 7),
           ("mem ok", 6), (">compiled", 9), ("rel err", 7)]


def format_table(rows):
    head = " ".join(h.rjust(w) for h, w in COLUMNS)
    lines = [head, "-" * len(head)]
    for r in rows:
        ms = r["ms"]
        for k, impl in enumerate(FUSED):
            ck = r["checks"][impl]
            first = k == 0  # shared columns only on the first row of a C
            cells = [f"2^{r['log2c']}" if first else "", impl.split("_")[1],
                     _fmt_ms(ms.get("gemm")) if first else "",
                     _fmt_ms(ms.get("gemm_out")) if first else "",
                     _fmt_ms(ms.get("native")) if first else "",
                     _fmt_ms(ms.get("compiled")) if first else "",
                     _fmt_ms(ms.get(impl)), _fmt_x(ck["x_gemm"]), _fmt_x(ck["x_gemm_out"]),
                     _fmt_x(ck["speedup_vs_native"]), _fmt_x(ck["speedup_vs_compiled"]),
                     _fmt_mem(r, "native") if first else "", _fmt_mem(r, impl),
                     _yes(ck["time_ok"]), _yes(ck["mem_ok"]), _yes(ck["faster_than_compiled"]),
                     "-" if impl not in r["rel_err"] else f"{r['rel_err'][impl]:.0e}"]
            lines.append(" ".join(c.rjust(w) for c, (_, w) in zip(cells, COLUMNS)))
        for note in r["notes"]:
            lines.append(f"    note (2^{r['log2c']}): {note}")
    n, d = (rows[0]["n"], rows[0]["d"]) if rows else (0, 0)
    lines.append(
        f"N = {n}, D = {d}, float32, forward + backward w.r.t. input and weight, no bias. ms: "
        "median of interleaved repeats ±IQR/median. GEMMs: x @ W.T, g @ W, g.T @ x as torch.mm "
        "with fresh outputs; out=: into preallocated ones. x GEMMs / x out=: fused time / theirs "
        f"(target <= {TIME_TARGET}x GEMMs). x native / x compiled: speedup of fused. peak: extra "
        "memory during one call (the returned gradients included) in weight sizes (C x D x 4 "
        f"bytes) and MiB; mem ok: peak <= weight gradient + {MEM_TARGET_NC} N x C floats, for "
        f"update (the SGD step fused in, no weight gradient) <= {MEM_TARGET_NC} N x C floats (the "
        f"issue sets it at C = 2^{MEM_TARGET_LOG2C}; at smaller C the fused op's N x chunk "
        "buffers are not small against N x C). >compiled: fused faster than compiled native. "
        "rel err: max |fused - native| / max |native| over loss, grad input, grad weight.")
    return "\n".join(lines)


# ------------------------------------------------------------------------------------------ plot
def plot(rows, path):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker  # noqa: F401  (matplotlib.ticker below)
    cs = [r["c"] for r in rows]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(12, 4.8))
    mib = 2 ** 20
    for impl, style in (("native", "o-"), ("fused_dense", "s-"), ("fused_sparse", "^--"),
                        ("fused_update", "v-")):
        pts = [(r["c"], r["peak_bytes"][impl] / mib) for r in rows if impl in r["peak_bytes"]]
        if pts:
            ax1.plot(*zip(*pts), style, label=LABELS[impl])
    ax1.plot(cs, [r["weight_bytes"] / mib for r in rows], "k:", label="weight (= its gradient)")
    ax1.plot(cs, [r["mem_target_bytes"] / mib for r in rows], "r--", lw=0.9,
             label=f"target: weight grad + {MEM_TARGET_NC} N x C")
    ax1.plot(cs, [r["mem_update_target_bytes"] / mib for r in rows], "m--", lw=0.9,
             label=f"target with update: {MEM_TARGET_NC} N x C")
    ax1.set_xscale("log", base=2)
    ax1.set_yscale("log")
    # Plain numbers; of the minor ticks only 2x and 5x a power of ten are labelled.
    ax1.yaxis.set_major_formatter(matplotlib.ticker.FuncFormatter(lambda v, _: f"{v:g}"))
    ax1.yaxis.set_minor_formatter(matplotlib.ticker.FuncFormatter(
        lambda v, _: f"{v:g}" if f"{v:e}"[0] in "25" else ""))
    ax1.set_xlabel("classes C")
    ax1.set_ylabel("peak extra memory, fwd+bwd (MiB)")
    ax1.legend(fontsize=8)
    ax1.grid(True, which="both", alpha=0.3)
    for impl, style in (("native", "o-"), ("compiled", "d-"), ("fused_dense", "s-"),
                        ("fused_sparse", "^--"), ("fused_update", "v-"), ("gemm_out", "k:")):
        pts = [(r["c"], r["median_ms"][impl] / r["median_ms"]["gemm"]) for r in rows
               if impl in r["median_ms"] and "gemm" in r["median_ms"]]
        if pts:
            ax2.plot(*zip(*pts), style, label=LABELS[impl])
    ax2.axhline(1.0, color="k", lw=0.8)
    ax2.axhline(TIME_TARGET, color="r", ls="--", lw=0.9, label=f"target {TIME_TARGET}x")
    ax2.set_xscale("log", base=2)
    ax2.set_xlabel("classes C")
    ax2.set_ylabel("fwd+bwd time / three GEMMs' time")
    ax2.legend(fontsize=8)
    ax2.grid(True, which="both", alpha=0.3)
    n, d = rows[0]["n"], rows[0]["d"]
    fig.suptitle(f"fused linear + BCE vs F.linear + BCE, N = {n}, D = {d}, float32, CPU")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


# ------------------------------------------------------------------------------------------ main
def _meta(args, t_start):
    return dict(machine_meta(t_start),
                settings=dict(n=args.n, d=args.d, positives=args.positives,
                              chunk_size=args.chunk_size, repeats=args.repeats,
                              min_repeats=args.min_repeats, min_sample_ms=args.min_sample_ms,
                              case_budget_s=args.case_budget, compile=args.compile,
                              memory=args.memory),
                targets=dict(time_x_gemm=TIME_TARGET, mem_nc=MEM_TARGET_NC,
                             mem_at_log2c=MEM_TARGET_LOG2C))


def parse_args(argv=None):
    p = argparse.ArgumentParser(prog="python -m bench.large_label", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--min-log2c", type=int, default=12)
    p.add_argument("--max-log2c", type=int, help="largest C = 2^this (default 18, --quick 14)")
    p.add_argument("--n", type=int, default=256, help="rows (batch)")
    p.add_argument("--d", type=int, default=256, help="features")
    p.add_argument("--positives", type=int, default=5, help="positive classes a row (random)")
    p.add_argument("--chunk-size", type=int, default=None,
                   help="fused op's classes per chunk (default: its own rule)")
    add_timing_options(p, unit="C", repeats="3", budget="10, --quick 3")
    p.add_argument("--quick", action="store_true", help="C <= 2^14, shorter samples")
    p.add_argument("--no-compile", dest="compile", action="store_false",
                   help="skip the torch.compile'd native column")
    p.add_argument("--no-memory", dest="memory", action="store_false",
                   help="skip the peak-memory subprocesses")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", default=os.path.join(HERE, "results", "large_label.json"))
    p.add_argument("--plot", help="PNG path (default: the JSON path with .png)")
    p.add_argument("--no-plot", action="store_true")
    args = p.parse_args(argv)
    q = args.quick
    args.max_log2c = args.max_log2c if args.max_log2c is not None else (14 if q else 18)
    if args.min_log2c > args.max_log2c:
        p.error("--min-log2c exceeds --max-log2c")
    args.repeats = args.repeats or 3
    args.min_repeats = min(args.min_repeats, args.repeats)
    args.min_sample_ms = args.min_sample_ms if args.min_sample_ms is not None else (10 if q else 50)
    args.case_budget = args.case_budget if args.case_budget is not None else (3 if q else 10)
    return args


def main(argv=None):
    if argv is None and sys.argv[1:] == ["--_memory-worker"]:
        return _memory_worker()
    t_start = (time.time(), os.getloadavg())
    args = parse_args(argv)
    import torch
    torch.set_num_threads(args.threads)
    torch._dynamo.config.cache_size_limit = max(64, torch._dynamo.config.cache_size_limit)
    print(f"CPU: {torch.backends.cpu.get_cpu_capability()}, {args.threads} threads, load average "
          f"{' '.join(f'{v:.1f}' for v in t_start[1])}", file=sys.stderr)
    rows = []
    for log2c in range(args.min_log2c, args.max_log2c + 1):
        t = time.time()
        row = run_one(1 << log2c, args)
        if args.memory:
            measure_memory(row, args)
        rows.append(derive(row))
        print(f"  C = 2^{log2c}: {time.time() - t:.0f} s", file=sys.stderr)
    print(format_table(rows))
    meta = _meta(args, t_start)
    print(f"CPU {meta['cpu']} ({meta['cpu_capability']}, extension built for "
          f"{meta['extension_isa']}), {meta['threads']} threads; runtime "
          f"{meta['runtime_s']:.0f} s; "
          f"load average at start {' '.join(f'{v:.1f}' for v in t_start[1])}, at end "
          f"{' '.join(f'{v:.1f}' for v in meta['loadavg_end'])}")
    os.makedirs(os.path.dirname(os.path.abspath(args.json)), exist_ok=True)
    with open(args.json, "w") as f:
        json.dump(dict(meta=meta, rows=rows), f, indent=1)
    print(f"wrote {args.json}")
    if not args.no_plot and rows:
        save_plot(plot, rows, args.plot or os.path.splitext(args.json)[0] + ".png")
    return 0


if __name__ == "__main__":
    sys.exit(main())
