"""Fused multilabel_cuda losses vs native torch.nn.functional (eager and torch.compile'd): fwd+bwd
time, achieved bandwidth, ratio to the memory floor, peak extra memory and max error.

    python -m bench.compare                 # default shapes, every available device (a few minutes)
    python -m bench.compare --quick         # small shapes, few repeats (< 1 min)
    python -m bench.compare --cases bce,soft_margin --shapes 1024x32768 --no-compile

Prints one row per (device, case, shape, dtype), writes JSON (default bench/results/<device>.json)
and a PNG beside it. Column meanings and the floor definition: bench/README.md.
"""
import argparse
import ctypes
import ctypes.util
import datetime
import gc
import json
import math
import os
import platform
import subprocess
import sys
import time

from .cases import CASE_ORDER, SPECS, fused_available, fused_runs_extension, make_inputs, \
    make_step, native_loss_fn, fused_loss_fn

HERE = os.path.dirname(os.path.abspath(__file__))
IMPLS = ("native", "compiled", "fused", "reference", "floor")

# Default configurations: (shape, dtype). Small (fits in cache, compute-bound) to large (DRAM-bound,
# 128 MiB per fp32 N x C buffer), plus one bf16 case.
DEFAULT_CONFIGS = [((256, 4096), "float32"), ((1024, 32768), "float32"), ((1024, 8192), "bfloat16")]
QUICK_CONFIGS = [((256, 4096), "float32")]
# Native margin is O(N * P * C) (76 ms at 256x4096 with 8 positives on the 2-core box): cases above
# this many N*P*C element-visits are skipped unless --force (1024x32768 at 256 positives would take
# over a minute per call).
MARGIN_MAX_WORK = 1 << 28
# --quick cuts the rows of margin cases to stay under this N*P*C (256 positives: 64x4096).
QUICK_MARGIN_WORK = 1 << 26
# torch.compile of native margin: Inductor uses the multilabel_margin_loss_forward decomposition,
# which broadcasts (K target slots) x N x C, and native's target is (N, C), so K = C: O(N * C * C)
# work and, unless fused, memory (16 GiB at 256x4096). Skipped above this N*C*C unless --force.
MARGIN_COMPILE_MAX_WORK = 1 << 28
# The pure-PyTorch fallback is skipped above this many elements unless --reference on.
REFERENCE_MAX_NUMEL = 1 << 22


# --------------------------------------------------------------------------------------------- timing
def _now():
    return time.perf_counter()


def _sync_fn(device):
    import torch
    if device.type == "cuda":
        return lambda: torch.cuda.synchronize(device)
    return lambda: None


def _quantile(sorted_xs, q):
    if not sorted_xs:
        return float("nan")
    pos = (len(sorted_xs) - 1) * q
    lo, hi = math.floor(pos), math.ceil(pos)
    return sorted_xs[lo] + (sorted_xs[hi] - sorted_xs[lo]) * (pos - lo)


def _stats(samples):
    xs = sorted(samples)
    return dict(median_ms=_quantile(xs, 0.5) * 1e3, q1_ms=_quantile(xs, 0.25) * 1e3,
                q3_ms=_quantile(xs, 0.75) * 1e3, min_ms=xs[0] * 1e3, max_ms=xs[-1] * 1e3,
                samples=len(xs))


def time_interleaved(steps, sync, repeats, min_repeats, min_sample_s, budget_s, failures,
                     slow_s=1.0):
    """Warm each step up, then time them in interleaved rounds (order reversed every other round so
    no step always runs right after the same one). A sample is `number` back-to-back calls, `number`
    chosen so a sample lasts >= min_sample_s. Rounds: `repeats`, cut to fit budget_s, at least
    min_repeats. A step that raises is dropped and its error put in `failures`.
    Returns ({name: stats}, {name: first warm-up result}, {name: first call seconds})."""
    per_call, first_result, first_s = {}, {}, {}
    for name, step in list(steps.items()):
        t0 = _now()
        try:
            first_result[name] = step()
            sync()
        except Exception as e:  # noqa: BLE001  (e.g. a dtype native does not support)
            failures[name] = f"{type(e).__name__}: {str(e).strip().splitlines()[0][:160]}"
            del steps[name]
            continue
        first = first_s[name] = _now() - t0
        # A second warm-up call unless the step is slow (its first call is then the estimate);
        # compiled steps always get one (their first call includes compilation).
        if first < slow_s or name == "compiled":
            t0 = _now()
            step()
            sync()
            per_call[name] = _now() - t0
        else:
            per_call[name] = first
    number = {n: max(1, int(min_sample_s / max(t, 1e-9))) for n, t in per_call.items()}
    round_s = sum(number[n] * per_call[n] for n in steps)
    rounds = max(min_repeats, min(repeats, int(budget_s / max(round_s, 1e-9))))
    samples = {n: [] for n in steps}
    order = list(steps)
    for r in range(rounds):
        for name in (order if r % 2 == 0 else order[::-1]):
            step, k = steps[name], number[name]
            sync()
            t0 = _now()
            for _ in range(k):
                step()
            sync()
            samples[name].append((_now() - t0) / k)
    out = {}
    for n in steps:
        out[n] = _stats(samples[n])
        out[n]["number"] = number[n]
    return out, first_result, first_s


# --------------------------------------------------------------------------------------------- memory
class _RssProbe:
    """Peak extra host memory of one call, from the kernel's resident-set high-water mark.

    tracemalloc does not see torch's allocator, and the profiler attributes allocations to ops
    without an order. Instead, in a fresh process started with MALLOC_MMAP_THRESHOLD_=65536 (glibc
    serves every allocation >= 64 KiB with its own mmap, so a freed tensor leaves the RSS at once and
    the heap never holds a big free chunk that a later tensor would reuse unseen): trim the heap,
    reset VmHWM to the current RSS (/proc/self/clear_refs, Linux >= 4.0), run, read VmHWM.
    Resolution: pages (4 KiB), plus small allocations of the interpreter (KiBs). Checked: one
    torch.ones(N, C) reads as 1.00 buffer."""

    def __init__(self):
        self.ok, self.why = False, ""
        try:
            libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
            self._trim = libc.malloc_trim
            with open("/proc/self/clear_refs", "w") as f:
                f.write("5")
            self._status("VmHWM")
            self.ok = True
        except Exception as e:  # noqa: BLE001  (non-Linux, musl, no /proc: report n/a)
            self.why = f"host peak memory unavailable: {e}"

    @staticmethod
    def _status(key):
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(key + ":"):
                    return int(line.split()[1]) * 1024
        raise OSError(f"no {key} in /proc/self/status")

    def measure(self, step):
        gc.collect()
        self._trim(0)
        base = self._status("VmRSS")
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        out = step()  # keep the result (the gradient counts) until the high-water mark is read
        peak = self._status("VmHWM")
        del out
        return max(0, peak - base)


MEMORY_ENV = {"MALLOC_MMAP_THRESHOLD_": "65536", "MALLOC_TRIM_THRESHOLD_": "0"}


def _memory_worker():
    """Child process: jobs as JSON on stdin, {impl: peak bytes or None} per job as JSON on stdout."""
    import torch
    jobs = json.load(sys.stdin)
    torch.set_num_threads(jobs["threads"])
    probe = _RssProbe()
    results = []
    for job in jobs["jobs"]:
        spec, dtype = SPECS[job["case"]], getattr(torch, job["dtype"])
        device = torch.device(job["device"])
        res, why = {}, probe.why
        if probe.ok:
            try:
                for shape in (job["warm_shape"], job["shape"]):  # a tiny call first: lazy inits
                    inp = make_inputs(spec, *shape, dtype, device, seed=job["seed"])
                    steps = _impl_steps(spec, inp, job["impls"], compile_=False)
                    for impl, step in steps.items():
                        try:
                            res[impl] = step() if shape is job["warm_shape"] else probe.measure(step)
                        except Exception:  # noqa: BLE001  (the timing run reports failures)
                            res[impl] = None
                    del inp, steps
            except Exception as e:  # noqa: BLE001
                why = f"memory worker: {type(e).__name__}: {e}"
            res = {k: (v if isinstance(v, int) else None) for k, v in res.items()}
        results.append(dict(peak_bytes=res, why=why))
    json.dump(results, sys.stdout)


def cpu_memory(rows, args):
    """Runs _memory_worker in a subprocess for the CPU rows; fills row['peak_bytes']."""
    jobs = [dict(case=r["case"], dtype=r["dtype"], device=r["device"], shape=r["shape"],
                 warm_shape=[min(4, r["shape"][0]), r["shape"][1]], seed=args.seed,
                 impls=[i for i in ("native", "fused", "reference") if i in r["ms"]]) for r in rows]
    if not jobs:
        return
    env = dict(os.environ, **MEMORY_ENV)
    env["PYTHONPATH"] = os.pathsep.join([os.path.dirname(HERE)] + sys.path)
    proc = subprocess.run([sys.executable, "-m", "bench.compare", "--_memory-worker"],
                          input=json.dumps(dict(threads=args.threads, jobs=jobs)), env=env,
                          capture_output=True, text=True)
    if proc.returncode != 0:
        for r in rows:
            r["notes"].append(f"memory worker failed: {proc.stderr.strip().splitlines()[-1:]}")
        return
    for r, res in zip(rows, json.loads(proc.stdout)):
        r["peak_bytes"].update(res["peak_bytes"])
        if res["why"]:
            r["notes"].append(res["why"])


def _cuda_peak(step, device):
    import torch
    gc.collect()
    torch.cuda.synchronize(device)
    torch.cuda.reset_peak_memory_stats(device)
    base = torch.cuda.memory_allocated(device)
    out = step()
    torch.cuda.synchronize(device)
    peak = torch.cuda.max_memory_allocated(device) - base
    del out
    return peak


# ----------------------------------------------------------------------------------------------- run
def _parse_shapes(text):
    shapes = []
    for part in text.split(","):
        n, c = part.lower().split("x")
        shapes.append((int(n), int(c)))
    return shapes


def _devices(arg):
    import torch
    if arg in (None, "all"):
        names = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    else:
        names = [d.strip() for d in arg.split(",")]
    return [torch.device(d) for d in names]


def _cuda_ok():
    import torch
    return torch.cuda.is_available()


def plan(args):
    """[(device, spec, shape, dtype_name, skip_reason_or_None)]"""
    if args.shapes:
        configs = [(s, d) for d in args.dtype.split(",") for s in _parse_shapes(args.shapes)]
    elif args.quick:
        configs = ([(s, d) for d in args.dtype.split(",") for s, _ in QUICK_CONFIGS] if args.dtype
                   else QUICK_CONFIGS)
    elif args.dtype:
        configs = [(s, d) for d in args.dtype.split(",") for s, _ in DEFAULT_CONFIGS[:2]]
    else:
        configs = DEFAULT_CONFIGS
    out = []
    for device in _devices(args.device):
        for shape, dtype in configs:
            for name in args.cases:
                spec = SPECS[name]
                skip = None
                ok, why = fused_available(spec)
                if device.type == "cuda" and not _cuda_ok():
                    skip = "no CUDA device"
                elif not ok:
                    skip = why
                elif spec.positives and shape[1] <= spec.positives:
                    skip = f"needs more than {spec.positives} classes"
                elif (spec.positives and not args.force
                      and shape[0] * shape[1] * spec.positives > MARGIN_MAX_WORK):
                    skip = ("native is O(N*P*C): too slow for the default run (--force to run it; "
                            "or a smaller --shapes)")
                if (skip is None and args.quick and not args.shapes and spec.positives
                        and shape[0] * shape[1] * spec.positives > QUICK_MARGIN_WORK):
                    # --quick keeps native margin to ~0.2 s a call: fewer rows, same C and P.
                    shape = (max(1, QUICK_MARGIN_WORK // (shape[1] * spec.positives)), shape[1])
                out.append((device, spec, shape, dtype, skip))
    return out


def _impl_steps(spec, inp, impls, compile_=True, notes=None):
    """{impl: fwd+bwd step} for the impls asked (those not available are left out, with a note)."""
    import torch
    import multilabel_cuda
    notes = [] if notes is None else notes
    steps = {}
    if "native" in impls:
        steps["native"] = make_step(native_loss_fn(spec, inp), inp)
    if "compiled" in impls and compile_:
        try:
            # Static shapes: compiled once per row, as a user with a fixed batch shape would.
            steps["compiled"] = make_step(torch.compile(native_loss_fn(spec, inp), dynamic=False),
                                          inp)
        except Exception as e:  # noqa: BLE001
            notes.append(f"compile unavailable: {type(e).__name__}: {e}")
    multilabel_cuda.set_backend("auto")
    if "fused" in impls:
        steps["fused"] = make_step(fused_loss_fn(spec, inp), inp)
    if "reference" in impls:
        steps["reference"] = make_step(fused_loss_fn(spec, inp), inp, backend="reference")
    return steps


def run_one(device, spec, shape, dtype_name, args, notes):
    import torch
    import multilabel_cuda
    dtype = getattr(torch, dtype_name)
    n, c = shape
    inp = make_inputs(spec, n, c, dtype, device, seed=args.seed)
    sync = _sync_fn(device)
    impls = ["native", "compiled", "fused"]
    if args.compile and spec.positives and n * c * c > MARGIN_COMPILE_MAX_WORK and not args.force:
        impls.remove("compiled")
        notes.append("compiled skipped: Inductor decomposes native margin into an O(N*C*C) "
                     "broadcast (target slots x N x C); --force to run it anyway")
    if args.reference == "on" or (args.reference == "auto" and n * c <= REFERENCE_MAX_NUMEL):
        impls.append("reference")
    elif args.reference == "auto":
        notes.append("reference skipped: above 2^22 elements (--reference on to time it)")
    if args.compile:
        torch._dynamo.reset()
    steps = _impl_steps(spec, inp, impls, compile_=args.compile, notes=notes)
    if not fused_runs_extension(spec, device):
        notes.append(f"no fused kernel for {device.type} (backend {multilabel_cuda.backend()}): "
                     "the fused column is the reference fallback")
    a = torch.randn(n, c, device=device).to(dtype)
    b = torch.randn(n, c, device=device).to(dtype)
    steps["floor"] = lambda: torch.add(a, b)

    failures = {}
    timings, first, first_s = time_interleaved(steps, sync, args.repeats, args.min_repeats,
                                               args.min_sample_ms / 1e3, args.case_budget, failures)
    for name, why in failures.items():
        notes.append(f"{name} failed: {why}")
    errors = {}
    if "native" in first and "fused" in first:
        (ln, gn), (lf, gf) = first["native"], first["fused"]
        errors["loss"] = float((lf.double() - ln.double()).abs().max())
        errors["grad"] = float((gf.double() - gn.double()).abs().max())
    del first
    peak = {}
    if device.type == "cuda":  # exact and harmless in-process; CPU rows go to cpu_memory()
        peak = {k: _cuda_peak(st, device) for k, st in steps.items() if k != "floor"}
    row = dict(device=str(device), case=spec.name, label=spec.label, shape=list(shape),
               dtype=dtype_name, bytes_moved=inp.bytes_moved,
               buffer_bytes=n * c * inp.x.element_size(), ms=timings, max_abs_err=errors,
               first_call_s=first_s, peak_bytes=peak)
    return row


def derive(row):
    ms = {k: v["median_ms"] for k, v in row["ms"].items()}
    f = ms.get("fused")
    row["speedup_vs_native"] = ms["native"] / f if f and "native" in ms else None
    row["speedup_vs_compiled"] = ms["compiled"] / f if f and "compiled" in ms else None
    row["fused_gbps"] = row["bytes_moved"] / (f * 1e-3) / 1e9 if f else None
    row["floor_ms"] = ms.get("floor")
    row["floor_gbps"] = 3 * row["buffer_bytes"] / (ms["floor"] * 1e-3) / 1e9 if "floor" in ms else None
    row["fused_over_floor"] = f / ms["floor"] if f and "floor" in ms else None
    pm = row.get("peak_bytes", {})
    row["peak_buffers"] = {k: v / row["buffer_bytes"] for k, v in pm.items() if v is not None}
    return row


# --------------------------------------------------------------------------------------------- table
def _fmt_ms(st):
    if st is None:
        return "-"
    m = st["median_ms"]
    spread = (st["q3_ms"] - st["q1_ms"]) / m * 100 if m else 0
    num = f"{m:.3g}" if m < 100 else f"{m:.0f}"
    return f"{num}±{spread:.0f}%"


def _fmt(v, spec="{:.2f}"):
    return "-" if v is None else spec.format(v)


COLUMNS = [("case", 16), ("shape", 11), ("dtype", 8), ("native ms", 11), ("compiled ms", 11),
           ("fused ms", 11), ("ref ms", 11), ("x native", 8), ("x compiled", 10), ("GB/s", 6),
           ("floor ms", 11), ("/floor", 6), ("peak native", 12), ("peak fused", 12),
           ("err loss", 8), ("err grad", 8)]


def _fmt_mem(row, impl):
    b = row.get("peak_bytes", {}).get(impl)
    if b is None:
        return "-"
    mib = b / 2**20
    return f"{mib:.0f}M({b / row['buffer_bytes']:.1f})" if mib >= 10 else \
        f"{mib:.2g}M({b / row['buffer_bytes']:.1f})"


def format_table(rows, skipped):
    lines = []
    head = " ".join(h.rjust(w) if i > 2 else h.ljust(w) for i, (h, w) in enumerate(COLUMNS))
    by_dev = {}
    for r in rows:
        by_dev.setdefault(r["device"], []).append(r)
    for dev, rs in by_dev.items():
        lines.append(f"device: {dev}")
        lines.append(head)
        lines.append("-" * len(head))
        for r in rs:
            ms = r["ms"]
            err = r["max_abs_err"]
            cells = [r["label"], "x".join(map(str, r["shape"])), r["dtype"],
                     _fmt_ms(ms.get("native")), _fmt_ms(ms.get("compiled")), _fmt_ms(ms.get("fused")),
                     _fmt_ms(ms.get("reference")), _fmt(r["speedup_vs_native"], "{:.2f}x"),
                     _fmt(r["speedup_vs_compiled"], "{:.2f}x"), _fmt(r["fused_gbps"], "{:.1f}"),
                     _fmt_ms(ms.get("floor")), _fmt(r["fused_over_floor"]),
                     _fmt_mem(r, "native"), _fmt_mem(r, "fused"),
                     _fmt(err.get("loss"), "{:.0e}"), _fmt(err.get("grad"), "{:.0e}")]
            lines.append(" ".join(c.rjust(w) if i > 2 else c.ljust(w)
                                  for i, (c, (_, w)) in enumerate(zip(cells, COLUMNS))))
            for note in r.get("notes", []):
                if not note.startswith("reference skipped"):  # said once, below the table
                    lines.append(f"    note: {note}")
    for dev, spec, shape, dtype, why in skipped:
        lines.append(f"skipped: {dev} {spec.label} {shape[0]}x{shape[1]} {dtype}: {why}")
    if any(n.startswith("reference skipped") for r in rows for n in r.get("notes", [])):
        lines.append("ref ms '-': the pure-PyTorch fallback is not timed above 2^22 elements "
                     "(--reference on to time it).")
    lines.append("ms: median over interleaved repeats ±IQR/median. x: fused speedup. GB/s: bytes a "
                 "fused fwd+bwd must move / fused time. /floor: fused ms / torch.add(x, y) ms. "
                 "peak: extra MiB during one fwd+bwd (in N x C buffers). err: max |fused - native|.")
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------- plot
def plot(rows, path):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    labels = [f"{r['label']}\n{r['shape'][0]}x{r['shape'][1]} {r['dtype']}" for r in rows]
    xs = range(len(rows))
    fig, (ax1, ax2) = plt.subplots(2, 1, figsize=(max(8, 1.3 * len(rows)), 9))
    w = 0.38
    sn = [r["speedup_vs_native"] or 0 for r in rows]
    sc = [r["speedup_vs_compiled"] or 0 for r in rows]
    ax1.bar([x - w / 2 for x in xs], sn, w, label="fused vs native")
    ax1.bar([x + w / 2 for x in xs], sc, w, label="fused vs compiled native")
    ax1.axhline(1.0, color="k", lw=0.8)
    ax1.set_yscale("log")
    ax1.set_ylabel("speedup (x, fwd+bwd)")
    ax1.legend()
    ax1.set_xticks(list(xs), labels, fontsize=7)
    w = 0.27
    impls = [i for i in ("native", "compiled", "fused") if any(i in r["peak_buffers"] for r in rows)]
    w = 0.8 / max(1, len(impls))
    for k, impl in enumerate(impls):
        off = (k - (len(impls) - 1) / 2) * w
        ax2.bar([x + off for x in xs], [r["peak_buffers"].get(impl, 0) for r in rows], w,
                label=impl)
    ax2.axhline(1.0, color="k", lw=0.8, ls="--")
    ax2.set_ylabel("peak extra memory (N x C buffers)")
    ax2.legend()
    ax2.set_xticks(list(xs), labels, fontsize=7)
    dev = rows[0]["device"] if rows else ""
    fig.suptitle(f"multilabel_cuda vs torch.nn.functional, {dev} (fwd+bwd)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


# ----------------------------------------------------------------------------------------------- main
def save_plot(plot_fn, rows, png):
    """plot_fn(rows, png), or a line saying why there is no plot (matplotlib missing)."""
    try:
        plot_fn(rows, png)
        print(f"wrote {png}")
    except ImportError as e:
        print(f"no plot ({e})")


def machine_meta(t_start):
    """Machine, build and load facts every benchmark's JSON records (t_start: (time, loadavg))."""
    import torch
    import multilabel_cuda
    try:
        rev = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=HERE, capture_output=True,
                             text=True, timeout=5).stdout.strip()
    except Exception:  # noqa: BLE001
        rev = ""
    cpu = platform.processor()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except Exception:  # noqa: BLE001
        pass
    try:
        ext_isa = str(torch.ops.multilabel_cuda.cpu_isa())
    except Exception:  # noqa: BLE001
        ext_isa = None
    return dict(date=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
                argv=sys.argv[1:], git=rev, torch=torch.__version__, python=platform.python_version(),
                cpu=cpu, cpu_count=os.cpu_count(), threads=torch.get_num_threads(),
                cpu_capability=torch.backends.cpu.get_cpu_capability(), extension_isa=ext_isa,
                backend=multilabel_cuda.backend(),
                cuda=torch.cuda.get_device_name() if torch.cuda.is_available() else None,
                loadavg_start=t_start[1], loadavg_end=os.getloadavg() if hasattr(os, "getloadavg") else None,
                runtime_s=round(time.time() - t_start[0], 1))


def _meta(args, t_start):
    return dict(machine_meta(t_start),
                settings=dict(repeats=args.repeats, min_repeats=args.min_repeats,
                              min_sample_ms=args.min_sample_ms, case_budget_s=args.case_budget,
                              compile=args.compile, reference=args.reference))


def add_timing_options(p, unit, repeats, budget):
    """The options of time_interleaved, shared by the benchmark CLIs (defaults set by each)."""
    p.add_argument("--repeats", type=int, help=f"timed rounds per {unit} (default {repeats}); cut "
                   "to fit --case-budget but never below --min-repeats")
    p.add_argument("--min-repeats", type=int, default=3)
    p.add_argument("--min-sample-ms", type=float, help="calls per sample are batched to last this "
                   "long (default 50, --quick 10)")
    p.add_argument("--case-budget", type=float, help=f"seconds of timed rounds per {unit} "
                   f"(default {budget})")


def parse_args(argv=None):
    p = argparse.ArgumentParser(prog="python -m bench.compare", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--shapes", help="NxC list, e.g. 256x4096,1024x32768 (default: 256x4096 and "
                   "1024x32768 fp32, 1024x8192 bf16)")
    p.add_argument("--dtype", help="float32, bfloat16, float16, float64 (comma list with --shapes)")
    p.add_argument("--device", default="all", help="cpu, cuda, cpu,cuda or all (default: all available)")
    p.add_argument("--cases", default=",".join(CASE_ORDER), help=f"subset of {','.join(CASE_ORDER)}")
    add_timing_options(p, unit="case", repeats="7, --quick 3", budget="12, --quick 2")
    p.add_argument("--quick", action="store_true", help="256x4096 only, few repeats (< 1 min)")
    p.add_argument("--no-compile", dest="compile", action="store_false",
                   help="skip the torch.compile'd native column")
    p.add_argument("--reference", choices=("auto", "on", "off"), default="auto",
                   help="time the pure-PyTorch fallback: auto = only up to 2^22 elements")
    p.add_argument("--force", action="store_true", help="run margin cases even where native (or "
                   "compiled native) is too slow")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", help="output path (default bench/results/<device>.json, one per device)")
    p.add_argument("--plot", help="PNG path (default: the JSON path with .png)")
    p.add_argument("--no-plot", action="store_true")
    args = p.parse_args(argv)
    args.cases = [c.strip() for c in args.cases.split(",") if c.strip()]
    bad = [c for c in args.cases if c not in SPECS]
    if bad:
        p.error(f"unknown case(s) {bad}; choose from {list(CASE_ORDER)}")
    q = args.quick
    args.repeats = args.repeats or (3 if q else 7)
    args.min_repeats = min(args.min_repeats, args.repeats)
    args.min_sample_ms = args.min_sample_ms if args.min_sample_ms is not None else (10 if q else 50)
    args.case_budget = args.case_budget if args.case_budget is not None else (2 if q else 12)
    if args.shapes and not args.dtype:
        args.dtype = "float32"
    return args


def main(argv=None):
    if argv is None and sys.argv[1:] == ["--_memory-worker"]:
        return _memory_worker()
    t_start = (time.time(), os.getloadavg() if hasattr(os, "getloadavg") else None)
    args = parse_args(argv)
    import torch
    try:
        from tqdm import tqdm
    except ImportError:  # progress bar is optional
        def tqdm(it, **kw):
            return it
    torch.set_num_threads(args.threads)
    torch._dynamo.config.cache_size_limit = max(64, torch._dynamo.config.cache_size_limit)

    todo = plan(args)
    runnable = [t for t in todo if t[4] is None]
    skipped = [t for t in todo if t[4] is not None]
    rows = []
    bar = tqdm(runnable, desc="timing", unit="row", file=sys.stderr)
    for device, spec, shape, dtype, _ in bar:
        if hasattr(bar, "set_postfix_str"):
            bar.set_postfix_str(f"{device.type} {spec.name} {shape[0]}x{shape[1]} {dtype}")
        notes = []
        row = run_one(device, spec, shape, dtype, args, notes)
        row["notes"] = notes
        rows.append(row)
    # Host peak memory after all timing, in a child process with its own malloc settings (see
    # _RssProbe); it re-runs native, fused and reference once per row (not the compiled one).
    cpu_rows = [r for r in rows if r["device"] == "cpu"]
    if cpu_rows:
        print(f"measuring host peak memory of {len(cpu_rows)} rows in a subprocess ...",
              file=sys.stderr)
        cpu_memory(cpu_rows, args)
    for row in rows:
        derive(row)

    print(format_table(rows, skipped))
    runtime = time.time() - t_start[0]
    print(f"runtime: {runtime:.0f} s (load average at start {t_start[1]}, "
          f"now {os.getloadavg() if hasattr(os, 'getloadavg') else '?'})")
    meta = _meta(args, t_start)
    skipped_json = [dict(device=str(d), case=s.name, shape=list(sh), dtype=dt, reason=why)
                    for d, s, sh, dt, why in skipped]
    groups = ({None: rows} if args.json else
              {dev: [r for r in rows if r["device"] == dev] for dev in {str(d) for d, *_ in todo}})
    for dev, rs in groups.items():
        path = args.json or os.path.join(HERE, "results", f"{dev.replace(':', '')}.json")
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        with open(path, "w") as f:
            json.dump(dict(meta=meta, rows=rs,
                           skipped=[s for s in skipped_json if dev is None or s["device"] == dev]),
                      f, indent=1)
        print(f"wrote {path}")
        if not args.no_plot and rs:
            save_plot(plot, rs, args.plot or os.path.splitext(path)[0] + ".png")
    return 0


if __name__ == "__main__":
    sys.exit(main())
