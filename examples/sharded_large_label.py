"""examples/large_label.py with the classifier's labels sharded over the ranks of a process group.

    torchrun --nproc-per-node 2 examples/sharded_large_label.py                 # CPU, gloo
    torchrun --nproc-per-node 2 examples/sharded_large_label.py --labels 1024 --epochs 1
    torchrun --nproc-per-node 4 examples/sharded_large_label.py --device cuda   # NCCL, a GPU a rank
    python examples/sharded_large_label.py                                      # one rank

Same data (large_label.make_data), same seed, same initialization and the same optimizer as the
single-process example, so it prints the same losses and precisions (to rounding): each rank holds
a contiguous block of the labels (rows of weight and bias, and their SGD momentum), each takes its
share of every batch's rows (batch='data_parallel'), and multilabel_cuda.distributed's sharded
linear BCE gives the global loss and each rank its shard's gradient. Evaluation: sharded top-5 and
precision@k. "train peak" is the process's VmHWM during training only (reset after the set-up,
which draws the full classifier once to follow the single-process example's random stream)."""
import argparse
import os
import sys
import time

import torch
import torch.distributed as dist

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
# The single-process example's options, data and memory probe: the same run, sharded.
from large_label import add_training_arguments, make_data, peak_mib  # noqa: E402

import multilabel_cuda  # noqa: E402
from multilabel_cuda import SparseTargets  # noqa: E402
from multilabel_cuda.distributed import (class_ranges, sharded_linear_topk,  # noqa: E402
                                         sharded_linear_binary_cross_entropy_with_logits,
                                         sharded_precision_at_k)


def _reset_peak():
    """Restart VmHWM from the current resident size (Linux 4.0+; elsewhere a no-op)."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        pass


def _rows(n, rank, world):
    """This rank's [start, stop) of n batch rows (torch.chunk's split)."""
    return class_ranges(n, world)[rank]


def evaluate(x, y, weight, bias, labels, batch, chunk_size, rank, world):
    """P@1, P@5 over x's rows (y: their positives, -1 padded), each rank taking its share of
    every batch."""
    tops, mine = [], []
    for i in range(0, x.size(0), batch):
        a, b = _rows(min(batch, x.size(0) - i), rank, world)
        tops.append(sharded_linear_topk(x[i + a:i + b], weight, 5, bias, batch="data_parallel",
                                        chunk_size=chunk_size)[1])
        mine.append(y[i + a:i + b])
    top = torch.cat(tops)
    targets = SparseTargets.from_padded(torch.cat(mine), labels).to(top.device)
    return tuple(float(sharded_precision_at_k(top, targets, k, batch="data_parallel"))
                 for k in (1, 5))


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    add_training_arguments(p)
    p.add_argument("--threads", type=int, default=None,
                   help="threads a rank (default: 2 shared by the ranks of this machine)")
    p.add_argument("--device", default="cpu", help="cpu (gloo) or cuda (NCCL, the local rank's "
                   "GPU)")
    args = p.parse_args(argv)

    if "WORLD_SIZE" not in os.environ:  # started without torchrun: one rank
        os.environ.update(RANK="0", LOCAL_RANK="0", WORLD_SIZE="1", LOCAL_WORLD_SIZE="1",
                          MASTER_ADDR="127.0.0.1", MASTER_PORT=os.environ.get("MASTER_PORT",
                                                                              "29531"))
    local_rank = int(os.environ.get("LOCAL_RANK", 0))
    device = torch.device(args.device)
    if device.type == "cuda":
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
    dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    local_world = int(os.environ.get("LOCAL_WORLD_SIZE", world))
    torch.set_num_threads(args.threads or max(1, 2 // local_world))
    say = print if rank == 0 else (lambda *a, **k: None)

    torch.manual_seed(args.seed)
    g = torch.Generator().manual_seed(args.seed)
    t0 = time.perf_counter()
    x, idx, _ = make_data(args.labels, args.dim, args.train + args.test, args.positives,
                          args.noise, args.zipf, g)
    x_train, x_test = x[:args.train].to(device), x[args.train:].to(device)
    y_train, y_test = idx[:args.train], idx[args.train:]
    start, stop = class_ranges(args.labels, world)[rank]
    # The single-process example's initialization, drawn in full from the same stream; this
    # rank keeps its rows.
    w = torch.empty(args.labels, args.dim).normal_(0, 0.01, generator=g)
    weight = torch.nn.Parameter(w[start:stop].to(device, copy=True))
    del w
    bias = torch.nn.Parameter(torch.full((stop - start,), -torch.log(
        torch.tensor(float(args.labels))).item(), device=device))
    opt = torch.optim.SGD([weight, bias], lr=args.lr, momentum=0.9)

    say(f"multilabel_cuda backend {multilabel_cuda.backend()}, torch {torch.__version__}, "
        f"{world} ranks ({dist.get_backend()}), {torch.get_num_threads()} threads a rank")
    say(f"labels {args.labels}, D {args.dim}, train {args.train}, test {args.test}, "
        f"{args.positives} positives a sample, batch {args.batch}; weight "
        f"{args.labels * args.dim * 4 / 2**20:.1f} MiB, rank 0's shard {stop - start} labels")
    say(f"data generated in {time.perf_counter() - t0:.1f} s")
    say(f"{'epoch':>5} {'loss':>9} {'P@1':>6} {'P@5':>6} {'peak MiB':>9} {'time s':>7}")
    _reset_peak()
    p1, p5 = evaluate(x_test, y_test, weight, bias, args.labels, 1024, args.chunk_size, rank, world)
    say(f"{0:>5} {'-':>9} {p1:>6.3f} {p5:>6.3f} {peak_mib():>9.0f} {0:>7.1f}")
    steps, step_time = 0, 0.0
    for epoch in range(1, args.epochs + 1):
        t = time.perf_counter()
        perm = torch.randperm(args.train, generator=g)
        total, batches = 0.0, 0
        for i in range(0, args.train, args.batch):
            b = perm[i:i + args.batch]
            a, e = _rows(b.numel(), rank, world)
            mine = b[a:e]
            target = SparseTargets.from_padded(y_train[mine], args.labels).to(device)
            ts = time.perf_counter()
            loss = sharded_linear_binary_cross_entropy_with_logits(
                x_train[mine.to(device)], weight, target, bias=bias, reduction="sum",
                batch="data_parallel", chunk_size=args.chunk_size) / b.numel()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            total += float(loss.detach())
            step_time += time.perf_counter() - ts
            steps += 1
            batches += 1
            if args.print_steps:
                say(f"step {epoch}.{batches} loss {float(loss.detach()):.6f}")
        p1, p5 = evaluate(x_test, y_test, weight, bias, args.labels, 1024, args.chunk_size, rank,
                          world)
        say(f"{epoch:>5} {total / batches:>9.4f} {p1:>6.3f} {p5:>6.3f} {peak_mib():>9.0f} "
            f"{time.perf_counter() - t:>7.1f}")
        sys.stdout.flush()
    stats = torch.tensor([peak_mib(), 1000 * step_time / max(1, steps)], dtype=torch.float64,
                         device=device)
    every = [torch.empty_like(stats) for _ in range(world)]
    dist.all_gather(every, stats)
    for r, s in enumerate(every):
        say(f"rank {r}: train peak {s[0]:.0f} MiB, step {s[1]:.0f} ms (forward + backward + SGD)")
    say(f"total {time.perf_counter() - t0:.1f} s")
    dist.barrier()  # no rank tears its connections down while another still uses them
    dist.destroy_process_group()
    return 0


if __name__ == "__main__":
    sys.exit(main())
