"""Train a classifier over 2^17 labels without ever building the N x C logits.

    python examples/large_label.py                  # 131072 labels, about a minute on 2 CPU cores
    python examples/large_label.py --labels 1024 --epochs 1
    PYTHONPATH=$PWD python examples/large_label.py  # a built checkout without pip install -e

The data is generated, with a planted structure: every label has a random unit-norm prototype in a
D-dimensional space, label frequencies follow a Zipf law (as in real extreme multi-label data), and
a sample is the sum of the prototypes of its few positive labels plus Gaussian noise. A linear
classifier (an nn.Linear) learns the prototypes of the labels it sees, so P@1 on held-out samples
rises far above chance (positives / labels) and above the popularity baseline (always predicting
the most frequent labels), both printed.

Training uses multilabel_cuda's fused linear + BCE with SparseTargets: the classes are streamed in
chunks, so neither the N x C logits and their gradient nor a dense N x C target is ever allocated.
Evaluation uses linear_topk (top k without an N x C buffer) and precision_at_k. Peak memory is the
process's VmHWM (resource.getrusage)."""
import argparse
import resource
import sys
import time

import torch

import multilabel_cuda
from multilabel_cuda import SparseTargets
from multilabel_cuda.functional import (linear_binary_cross_entropy_with_logits, linear_topk,
                                        precision_at_k)


def make_data(labels, dim, samples, positives, noise, zipf, generator):
    """(features (S, D), positives (S, K) padded with -1, prototypes (L, D))."""
    protos = torch.randn(labels, dim, generator=generator)
    protos /= protos.norm(dim=1, keepdim=True)
    # Zipf frequencies over a random ranking of the labels.
    freq = torch.arange(1, labels + 1, dtype=torch.float64).pow(-zipf)
    rank_to_label = torch.randperm(labels, generator=generator)
    idx = rank_to_label[_draw_ranks(freq, samples, positives, generator)]
    x = protos[idx].sum(1) + noise * torch.randn(samples, dim, generator=generator)
    return x, idx, protos


def _draw_ranks(freq, samples, positives, generator):
    """(S, K) ranks drawn from freq, distinct within a row (draws repeated within a row are redrawn;
    with K << labels that is rare)."""
    ranks = torch.multinomial(freq, samples * positives, replacement=True,
                              generator=generator).view(samples, positives)
    while True:
        srt = ranks.sort(dim=1).values
        dup = (srt[:, 1:] == srt[:, :-1]).any(dim=1)
        if not bool(dup.any()):
            return ranks
        ranks[dup] = torch.multinomial(freq, int(dup.sum()) * positives, replacement=True,
                                       generator=generator).view(-1, positives)


def peak_mib():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def evaluate(model, x, targets, batch, chunk_size):
    """P@1, P@5 over x: each row's top 5 by linear_topk, batch by batch."""
    tops = []
    with torch.no_grad():
        for i in range(0, x.size(0), batch):
            tops.append(linear_topk(x[i:i + batch], model.weight, 5, bias=model.bias,
                                    chunk_size=chunk_size)[1])
    top = torch.cat(tops)
    return float(precision_at_k(top, targets, 1)), float(precision_at_k(top, targets, 5))


def add_training_arguments(p):
    """The data and training options, shared with sharded_large_label.py (same data, same run)."""
    p.add_argument("--labels", type=int, default=1 << 17)
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--dim", type=int, default=64, help="feature dimension D")
    p.add_argument("--train", type=int, default=8192, help="training samples")
    p.add_argument("--test", type=int, default=2048, help="held-out samples")
    p.add_argument("--positives", type=int, default=3, help="positive labels per sample")
    p.add_argument("--noise", type=float, default=0.3, help="std of the noise per feature")
    p.add_argument("--zipf", type=float, default=1.0, help="exponent of the label frequencies")
    p.add_argument("--batch", type=int, default=256)
    p.add_argument("--lr", type=float, default=0.5)
    p.add_argument("--chunk-size", type=int, default=None, help="classes per chunk (default: "
                   "multilabel_cuda's rule)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--print-steps", action="store_true", help="print every step's loss too")


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    add_training_arguments(p)
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args(argv)
    if args.positives > args.labels:
        p.error("--positives must not exceed --labels")

    torch.manual_seed(args.seed)
    torch.set_num_threads(args.threads)
    g = torch.Generator().manual_seed(args.seed)
    t0 = time.perf_counter()
    x, idx, _ = make_data(args.labels, args.dim, args.train + args.test, args.positives,
                          args.noise, args.zipf, g)
    x_train, x_test = x[:args.train], x[args.train:]
    y_train, y_test = idx[:args.train], idx[args.train:]
    test_targets = SparseTargets.from_padded(y_test, args.labels)

    model = torch.nn.Linear(args.dim, args.labels)
    with torch.no_grad():  # start every label at a small prior probability, as is usual at scale
        model.weight.normal_(0, 0.01, generator=g)
        model.bias.fill_(-torch.log(torch.tensor(float(args.labels))).item())
    opt = torch.optim.SGD(model.parameters(), lr=args.lr, momentum=0.9)

    # Held-out baselines: chance, and the most frequent training labels predicted for every row.
    counts = torch.bincount(y_train.reshape(-1), minlength=args.labels)
    popular = counts.topk(5).indices.expand(args.test, 5)
    pop1, pop5 = (float(precision_at_k(popular, test_targets, k)) for k in (1, 5))
    dense_mib = args.batch * args.labels * 4 / 2**20
    print(f"multilabel_cuda backend {multilabel_cuda.backend()}, torch {torch.__version__}, "
          f"{args.threads} threads")
    print(f"labels {args.labels}, D {args.dim}, train {args.train}, test {args.test}, "
          f"{args.positives} positives a sample, batch {args.batch}; weight "
          f"{args.labels * args.dim * 4 / 2**20:.1f} MiB; one batch's dense logits would be "
          f"{dense_mib:.0f} MiB (and as much again for their gradient and a dense target)")
    print(f"held-out baselines: chance P@1 = P@5 = {args.positives / args.labels:.2e}; most "
          f"frequent training labels P@1 {pop1:.3f}, P@5 {pop5:.3f}")
    print(f"data generated in {time.perf_counter() - t0:.1f} s")
    print(f"{'epoch':>5} {'loss':>9} {'P@1':>6} {'P@5':>6} {'peak MiB':>9} {'time s':>7}")
    p1, p5 = evaluate(model, x_test, test_targets, 1024, args.chunk_size)
    print(f"{0:>5} {'-':>9} {p1:>6.3f} {p5:>6.3f} {peak_mib():>9.0f} {0:>7.1f}")
    for epoch in range(1, args.epochs + 1):
        t = time.perf_counter()
        perm = torch.randperm(args.train, generator=g)
        total, batches = 0.0, 0
        for i in range(0, args.train, args.batch):
            b = perm[i:i + args.batch]
            target = SparseTargets.from_padded(y_train[b], args.labels)
            # Summed over the classes, averaged over the rows: the gradient of a rare label's row
            # does not vanish as it would under the mean over N x C.
            loss = linear_binary_cross_entropy_with_logits(
                x_train[b], model.weight, target, bias=model.bias, reduction="sum",
                chunk_size=args.chunk_size) / b.numel()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            total += float(loss.detach())
            batches += 1
            if args.print_steps:
                print(f"step {epoch}.{batches} loss {float(loss.detach()):.6f}")
        p1, p5 = evaluate(model, x_test, test_targets, 1024, args.chunk_size)
        print(f"{epoch:>5} {total / batches:>9.4f} {p1:>6.3f} {p5:>6.3f} {peak_mib():>9.0f} "
              f"{time.perf_counter() - t:>7.1f}")
        sys.stdout.flush()
    print(f"total {time.perf_counter() - t0:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
