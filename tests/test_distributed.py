"""multilabel_cuda.distributed on gloo: 2 and 3 CPU ranks spawned by the test, uneven shards.

One process group per world size runs every case (a case = one call on all ranks, compared on each
rank with torch.nn's loss of F.linear on the full classifier, built in every worker from one seed);
each rank writes its cases' outcomes to a file, and the tests read them. A rank that hangs fails
the run: the process group times out, and the parent kills what is left after its deadline."""
import datetime
import json
import os
import traceback

import pytest
import torch
import torch.distributed
import torch.nn.functional as F

pytestmark = pytest.mark.skipif(not torch.distributed.is_available(),
                                reason="torch built without torch.distributed")

C, D, N = 11, 5, 6  # classes, features, rows (all ranks' rows together in data-parallel cases)
SHARDS = {2: [7, 4], 3: [2, 6, 3]}  # uneven class shards, in rank order
ROWS = {2: [4, 2], 3: [1, 3, 2]}  # uneven data-parallel rows
DEADLINE_S = 150


def _problem(dtype=torch.float64, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(N, D, generator=g, dtype=dtype)
    w = torch.randn(C, D, generator=g, dtype=dtype)
    b = torch.randn(C, generator=g, dtype=dtype)
    pw = torch.rand(C, generator=g, dtype=dtype) + 0.5
    # Each row: 1 to 3 distinct positives (row 5: none), some soft values for BCE.
    k = [1, 3, 2, 3, 1, 0]
    idx = torch.full((N, 3), -1, dtype=torch.int64)
    for r, kr in enumerate(k):
        idx[r, :kr] = torch.randperm(C, generator=g)[:kr]
    dense = torch.zeros(N, C, dtype=dtype)
    for r in range(N):
        for c in idx[r, :k[r]]:
            dense[r, c] = 1.0
    return x, w, b, pw, idx, dense


def _reference(kind, x, w, b, dense, idx, pw, reduction):
    logits = F.linear(x, w, b)
    if kind == "bce":
        return F.binary_cross_entropy_with_logits(logits, dense, pos_weight=pw,
                                                  reduction=reduction)
    if kind == "soft_margin":
        return F.multilabel_soft_margin_loss(logits, dense, reduction=reduction)
    full = torch.full((N, C), -1, dtype=torch.int64)  # torch.nn's (N, C) target
    full[:, :idx.size(1)] = idx
    return F.multilabel_margin_loss(logits, full, reduction=reduction)


def _loss_cases():
    cases = []
    for kind in ("bce", "soft_margin", "margin"):
        for target in ("dense", "sparse"):
            for batch in ("replicated", "data_parallel"):
                for reduction in ("mean", "sum"):
                    i = len(cases)
                    cases.append(dict(kind=kind, target=target, batch=batch, reduction=reduction,
                                      bias=i % 2 == 0, pos_weight=kind == "bce" and i % 3 == 0,
                                      chunk=2 if i % 4 == 1 else None))
    cases.append(dict(kind="bce", target="sparse", batch="data_parallel", reduction="mean",
                      bias=True, pos_weight=True, chunk=None, values=True))
    cases.append(dict(kind="margin", target="dense", batch="replicated", reduction="mean",
                      bias=True, pos_weight=False, chunk=3, class_range=True))
    cases.append(dict(kind="bce", target="dense", batch="data_parallel", reduction="mean",
                      bias=True, pos_weight=False, chunk=None, dtype="float32"))
    for kind in ("bce", "margin"):
        cases.append(dict(kind=kind, target="sparse", batch="replicated", reduction="mean",
                          bias=True, pos_weight=False, chunk=None, dtensor=True))
    for kind in ("bce", "soft_margin", "margin"):
        cases.append(dict(kind=kind, target="dense", batch="data_parallel", reduction="sum",
                          bias=False, pos_weight=kind == "bce", chunk=None, module=True))
    return {"-".join(f"{k}={v}" for k, v in c.items() if v not in (False, None)): c
            for c in cases}


LOSS_CASES = _loss_cases()
SGD_OPTIONS = [dict(lr=0.5), dict(lr=0.3, momentum=0.9),
               dict(lr=0.2, momentum=0.8, nesterov=True, weight_decay=0.1),
               dict(lr=0.4, momentum=0.5, dampening=0.3, weight_decay=0.05, maximize=True)]


def _update_cases():
    """The fused SGD update (update=): every loss, target and batch, both reductions, and each
    SGD option set, on 3 steps."""
    cases = []
    for kind in ("bce", "soft_margin", "margin"):
        for target in ("dense", "sparse"):
            for batch in ("replicated", "data_parallel"):
                i = len(cases)
                cases.append(dict(kind=kind, target=target, batch=batch,
                                  reduction=("mean", "sum")[(i // 2 + i) % 2], bias=i % 3 != 2,
                                  pos_weight=kind == "bce" and i % 2 == 0,
                                  chunk=2 if i % 3 == 1 else None, sgd=i % len(SGD_OPTIONS)))
    cases.append(dict(kind="margin", target="sparse", batch="data_parallel", reduction="mean",
                      bias=True, pos_weight=False, chunk=None, sgd=1, module=True))
    # Positives only in classes [2, 7): some ranks own none (nothing deferred there).
    cases.append(dict(kind="margin", target="dense", batch="replicated", reduction="sum",
                      bias=True, pos_weight=False, chunk=None, sgd=2, few_positives=True))
    return {"update-" + "-".join(f"{k}={v}" for k, v in c.items() if v not in (False, None)): c
            for c in cases}


UPDATE_CASES = _update_cases()
TOPK_CASES = ["topk-replicated", "topk-data_parallel"]
ERROR_CASES = {
    "overlapping-ranges": "do not tile",
    "world-size-mismatch": "world size",
    "target-out-of-range": "outside [-1, 11)",
    "dtype-mismatch": "disagree on dtype",
    "bad-rows-on-one-rank": "rejected their arguments",
    "reduction-none": "reduction 'none'",
    "replicated-rows-differ": "same input rows",
    "update-on-one-rank": "disagree on update",
    "update-not-a-parameter": "rejected their arguments",
    "update-dtensor": "DTensor weight or bias is not supported",
}


def _local_target(c, r0, r1, idx, dense):
    from multilabel_cuda import SparseTargets
    if c["kind"] == "margin":
        t = idx[r0:r1]
        return SparseTargets.from_padded(t, C) if c["target"] == "sparse" else t
    return SparseTargets.from_dense(dense[r0:r1]) if c["target"] == "sparse" else dense[r0:r1]


def _sharded_fn(c, kw):
    """The case's sharded function (or module) and its keyword arguments."""
    from multilabel_cuda import distributed as mld
    fn = {"bce": mld.sharded_linear_binary_cross_entropy_with_logits,
          "soft_margin": mld.sharded_linear_multilabel_soft_margin_loss,
          "margin": mld.sharded_linear_multilabel_margin_loss}[c["kind"]]
    if c.get("module"):
        cls = {"bce": mld.ShardedLinearBCEWithLogitsLoss,
               "soft_margin": mld.ShardedLinearMultiLabelSoftMarginLoss,
               "margin": mld.ShardedLinearMultiLabelMarginLoss}[c["kind"]]
        return cls(**kw), {}
    return fn, kw


def _rows(c, rank, world):
    dp = c["batch"] == "data_parallel"
    r0 = sum(ROWS[world][:rank]) if dp else 0
    return r0, (r0 + ROWS[world][rank] if dp else N)


def _run_update_case(c, rank, world):
    """Three steps of the sharded loss with update= against torch: the loss of F.linear on the
    full classifier, backward, torch.optim.SGD's step on the full weight and bias."""
    x, w, b, pw, idx, dense = _problem()
    if c.get("few_positives"):
        idx = torch.tensor([[2, -1, -1], [3, 6, 4], [5, 2, -1], [6, 4, 3], [2, -1, -1],
                            [-1, -1, -1]])
    start = sum(SHARDS[world][:rank])
    stop = start + SHARDS[world][rank]
    r0, r1 = _rows(c, rank, world)
    options = SGD_OPTIONS[c["sgd"]]
    wl = torch.nn.Parameter(w[start:stop].clone())
    wr = torch.nn.Parameter(w.clone())
    bl = torch.nn.Parameter(b[start:stop].clone()) if c["bias"] else None
    br = torch.nn.Parameter(b.clone()) if c["bias"] else None
    opt = torch.optim.SGD([p for p in (wl, bl) if p is not None], **options)
    opt_ref = torch.optim.SGD([p for p in (wr, br) if p is not None], **options)
    kw = dict(reduction=c["reduction"], batch=c["batch"], chunk_size=c["chunk"])
    if c["kind"] == "bce":
        kw["pos_weight"] = pw[start:stop] if c["pos_weight"] else None
    fn, kw = _sharded_fn(c, kw)
    t = _local_target(c, r0, r1, idx, dense)
    for step in range(3):
        xs = x * (1 + 0.5 * step)
        xl, xr = xs[r0:r1].clone().requires_grad_(), xs.clone().requires_grad_()
        opt.zero_grad()
        loss = fn(xl, wl, t, bl, **kw, update=opt)
        loss.backward()
        opt.step()
        assert wl.grad is None
        ref = _reference(c["kind"], xr, wr, br, dense, idx, pw if c["pos_weight"] else None,
                         c["reduction"])
        ref.backward()
        opt_ref.step()
        opt_ref.zero_grad()
        tol = dict(rtol=1e-10, atol=1e-12)
        torch.testing.assert_close(loss, ref, **tol)
        torch.testing.assert_close(xl.grad, xr.grad[r0:r1], **tol)
        for p, q, rows in ((wl, wr, slice(start, stop)), (bl, br, slice(start, stop))):
            if p is None:
                continue
            torch.testing.assert_close(p, q[rows], **tol)
            if options.get("momentum"):
                torch.testing.assert_close(opt.state[p]["momentum_buffer"],
                                           opt_ref.state[q]["momentum_buffer"][rows], **tol)
    with torch.no_grad():  # evaluation: update= given, no step
        loss = fn(x[r0:r1], wl, t, bl, **kw, update=opt)
        ref = _reference(c["kind"], x, wr, br, dense, idx, pw if c["pos_weight"] else None,
                         c["reduction"])
    torch.testing.assert_close(loss, ref, **tol)
    torch.testing.assert_close(wl, wr[start:stop], **tol)


def _run_loss_case(c, rank, world):
    from multilabel_cuda import distributed as mld
    dtype = torch.float32 if c.get("dtype") == "float32" else torch.float64
    x, w, b, pw, idx, dense = _problem(dtype)
    if c.get("values"):
        dense = dense * torch.linspace(0.3, 1.0, C, dtype=dtype)
    start = sum(SHARDS[world][:rank])
    stop = start + SHARDS[world][rank]
    if c.get("dtensor"):
        from torch.distributed.device_mesh import init_device_mesh
        from torch.distributed.tensor import Shard, distribute_tensor
        mesh = init_device_mesh("cpu", (world,))
        wl = torch.nn.Parameter(distribute_tensor(w, mesh, [Shard(0)]))
        bl = torch.nn.Parameter(distribute_tensor(b, mesh, [Shard(0)]))
        start, stop = mld.class_ranges(C, world)[rank]
    else:
        wl = w[start:stop].clone().requires_grad_()
        bl = b[start:stop].clone().requires_grad_() if c["bias"] else None
    r0, r1 = _rows(c, rank, world)
    xl = x[r0:r1].clone().requires_grad_()
    t = _local_target(c, r0, r1, idx, dense)
    kw = dict(reduction=c["reduction"], batch=c["batch"], chunk_size=c["chunk"],
              class_range=(start, stop) if c.get("class_range") else None)
    if c["kind"] == "bce":
        kw["pos_weight"] = pw[start:stop] if c["pos_weight"] else None
    fn, kw = _sharded_fn(c, kw)
    loss = fn(xl, wl, t, bl, **kw)
    loss.backward()

    xr, wr = x.clone().requires_grad_(), w.clone().requires_grad_()
    br = b.clone().requires_grad_() if c["bias"] or c.get("dtensor") else None
    ref = _reference(c["kind"], xr, wr, br, dense, idx, pw if c["pos_weight"] else None,
                     c["reduction"])
    ref.backward()
    tol = dict(rtol=1e-5, atol=1e-6) if dtype == torch.float32 else dict(rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(loss, ref, **tol)
    torch.testing.assert_close(xl.grad, xr.grad[r0:r1], **tol)
    if c.get("dtensor"):
        from torch.distributed.tensor import DTensor
        assert isinstance(wl.grad, DTensor) and isinstance(bl.grad, DTensor)
        torch.testing.assert_close(wl.grad.to_local(), wr.grad[start:stop], **tol)
        torch.testing.assert_close(bl.grad.full_tensor(), br.grad, **tol)
        return
    torch.testing.assert_close(wl.grad, wr.grad[start:stop], **tol)
    if c["bias"]:
        torch.testing.assert_close(bl.grad, br.grad[start:stop], **tol)


def _run_topk_case(case, rank, world):
    from multilabel_cuda import SparseTargets, distributed as mld
    from multilabel_cuda.functional import precision_at_k
    g = torch.Generator().manual_seed(1)
    # Small integers in float64: exact logits, with ties across shards (repeated rows).
    x = torch.randint(-2, 3, (N, D), generator=g).double()
    w = torch.randint(-2, 3, (C, D), generator=g).double()
    w[9], w[3] = w[0], w[0]
    b = torch.zeros(C, dtype=torch.float64)
    start = sum(SHARDS[world][:rank])
    stop = start + SHARDS[world][rank]
    k = 5
    dp = case.endswith("data_parallel")
    r0 = sum(ROWS[world][:rank]) if dp else 0
    r1 = r0 + ROWS[world][rank] if dp else N
    batch = "data_parallel" if dp else "replicated"
    v, i = mld.sharded_linear_topk(x[r0:r1], w[start:stop], k, b[start:stop], batch=batch,
                                   chunk_size=2)
    rv, ri = torch.sort(F.linear(x, w, b), dim=1, descending=True, stable=True)
    assert torch.equal(v, rv[r0:r1, :k]) and torch.equal(i, ri[r0:r1, :k]), (v, i, rv, ri)
    v0, i0 = mld.sharded_linear_topk(x[r0:r1], w[start:stop], 0, batch=batch)
    assert v0.shape == i0.shape == (r1 - r0, 0)
    targets = SparseTargets.from_padded(_problem()[4], C)
    full = precision_at_k(ri[:, :k], targets, 3)
    mine = SparseTargets.from_padded(_problem()[4][r0:r1], C)
    p = mld.sharded_precision_at_k(i, mine, 3, batch=batch)
    torch.testing.assert_close(p, full)


def _run_error_case(case, rank, world):
    from multilabel_cuda import LossArgumentError, distributed as mld
    x, w, b, pw, idx, dense = _problem()
    start = sum(SHARDS[world][:rank])
    stop = start + SHARDS[world][rank]
    args = dict(input=x, weight=w[start:stop], target=dense)
    fn = mld.sharded_linear_binary_cross_entropy_with_logits
    kw = {}
    if case == "overlapping-ranges":
        kw["class_range"] = (max(0, start - 1), stop - 1) if rank else (0, stop)
        args["weight"] = w[kw["class_range"][0]:kw["class_range"][1]]
    elif case == "world-size-mismatch":  # the classifier split for one rank more
        a, e = mld.class_ranges(C, world + 1)[rank]
        args["weight"] = w[a:e]
    elif case == "target-out-of-range":
        fn = mld.sharded_linear_multilabel_margin_loss
        t = idx.clone()
        if rank == world - 1:
            t[0, 0] = C
        args["target"] = t
    elif case == "dtype-mismatch":
        if rank == 0:
            args = {k: v.float() for k, v in args.items()}
    elif case == "bad-rows-on-one-rank":
        if rank == 1:
            args["target"] = dense[:2]
    elif case == "reduction-none":
        kw["reduction"] = "none"
    elif case == "replicated-rows-differ":
        if rank == 0:
            args["input"], args["target"] = x[:3], dense[:3]
    elif case.startswith("update-"):
        args["weight"] = torch.nn.Parameter(args["weight"].clone())
        opt = torch.optim.SGD([args["weight"]], lr=0.1)
        if case == "update-on-one-rank":
            kw["update"] = opt if rank == 0 else None
        elif case == "update-not-a-parameter":
            kw["update"] = opt if rank != 1 else torch.optim.SGD([torch.zeros(1)], lr=0.1)
        else:
            from torch.distributed.device_mesh import init_device_mesh
            from torch.distributed.tensor import Shard, distribute_tensor
            mesh = init_device_mesh("cpu", (world,))
            args["weight"] = torch.nn.Parameter(distribute_tensor(w, mesh, [Shard(0)]))
            kw["update"] = torch.optim.SGD([args["weight"]], lr=0.1)
    try:
        fn(**args, **kw)
    except LossArgumentError as e:
        want = ERROR_CASES[case]
        if case == "bad-rows-on-one-rank" and rank == 1:
            want = "target must have"
        if case == "update-not-a-parameter" and rank == 1:
            want = "weight is not a parameter of the update optimizer"
        assert want in str(e), str(e)
        return
    raise AssertionError("no LossArgumentError")


def _worker(rank, world, store_path, out_dir):
    import torch.distributed as dist
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{store_path}", rank=rank,
                            world_size=world, timeout=datetime.timedelta(seconds=20))
    results = {}
    runs = [(n, lambda c=c: _run_loss_case(c, rank, world)) for n, c in LOSS_CASES.items()]
    runs += [(n, lambda c=c: _run_update_case(c, rank, world)) for n, c in UPDATE_CASES.items()]
    runs += [(n, lambda n=n: _run_topk_case(n, rank, world)) for n in TOPK_CASES]
    runs += [(n, lambda n=n: _run_error_case(n, rank, world)) for n in ERROR_CASES]
    for name, run in runs:
        try:
            run()
            results[name] = "ok"
        except Exception:
            results[name] = traceback.format_exc()
        with open(os.path.join(out_dir, f"rank{rank}.json"), "w") as f:
            json.dump(results, f)
    dist.barrier()
    dist.destroy_process_group()
    os._exit(0)  # skips the interpreter's teardown (seconds here), the results are on disk


_RESULTS = {}


def _results(world, tmp_path_factory):
    """Every world size's per-rank outcomes and the run's error; the first call runs them all at
    once (their start-up, mostly imports, overlaps)."""
    if not _RESULTS:
        import time
        import torch.multiprocessing as mp
        runs = {}
        for w in (2, 3):
            d = tmp_path_factory.mktemp(f"dist{w}")
            runs[w] = d, mp.start_processes(_worker, args=(w, str(d / "store"), str(d)), nprocs=w,
                                            join=False, start_method="spawn")
        deadline = time.monotonic() + DEADLINE_S
        for w, (d, ctx) in runs.items():
            error = None
            try:
                while not ctx.join(timeout=max(1.0, deadline - time.monotonic())):
                    if time.monotonic() > deadline:
                        error = f"{w} ranks still running after {DEADLINE_S} s"
                        break
            except Exception as e:  # a rank died: its error text
                error = str(e)
            finally:
                for p in ctx.processes:
                    if p.is_alive():
                        p.kill()
            per_rank = []
            for r in range(w):
                path = d / f"rank{r}.json"
                per_rank.append(json.loads(path.read_text()) if path.exists() else {})
            _RESULTS[w] = (per_rank, error)
    return _RESULTS[world]


def _check(world, name, tmp_path_factory):
    per_rank, error = _results(world, tmp_path_factory)
    for r, res in enumerate(per_rank):
        assert name in res, f"rank {r} never finished {name}: {error}"
        assert res[name] == "ok", f"rank {r}:\n{res[name]}"


@pytest.mark.parametrize("world", [2, 3])
@pytest.mark.parametrize("name", list(LOSS_CASES))
def test_sharded_loss_matches_torch(world, name, tmp_path_factory):
    _check(world, name, tmp_path_factory)


@pytest.mark.parametrize("world", [2, 3])
@pytest.mark.parametrize("name", list(UPDATE_CASES))
def test_sharded_fused_update_matches_torch_sgd(world, name, tmp_path_factory):
    _check(world, name, tmp_path_factory)


@pytest.mark.parametrize("world", [2, 3])
@pytest.mark.parametrize("name", TOPK_CASES)
def test_sharded_topk(world, name, tmp_path_factory):
    _check(world, name, tmp_path_factory)


@pytest.mark.parametrize("world", [2, 3])
@pytest.mark.parametrize("name", list(ERROR_CASES))
def test_bad_input_raises_on_every_rank(world, name, tmp_path_factory):
    _check(world, name, tmp_path_factory)


def test_class_ranges():
    from multilabel_cuda.distributed import class_ranges
    assert class_ranges(11, 3) == [(0, 4), (4, 8), (8, 11)]
    assert class_ranges(11, 2) == [(0, 6), (6, 11)]
    assert [len(c) for c in torch.arange(11).chunk(3)] == [b - a for a, b in class_ranges(11, 3)]
