"""multilabel_cuda::bce_chunk_, the chunk op of the fused linear losses, against native BCE on the
densified target: it overwrites the (N, n) logits with d sum(loss) / d logits and returns the loss
unscaled (sum, per element, or per row). Targets: dense column slices (views) and CSR arrays whose
chunk is columns [first, first + n); pos_weight of every shape linear.py passes."""
import pytest
import torch
import torch.nn.functional as F

from multilabel_cuda import _ops

pytestmark = pytest.mark.skipif(not _ops.AVAILABLE, reason="compiled extension not built")

NONE, SUM = 0, 2
DTYPES = (torch.float32, torch.float64)
TOL = {torch.float32: dict(rtol=2e-5, atol=2e-5), torch.float64: dict(rtol=1e-12, atol=1e-12)}


def op(*args):
    return torch.ops.multilabel_cuda.bce_chunk_(*args)


def make_target(rows, classes, density, values, dtype, seed):
    """A random dense target: positives with values in eighths (or 1), every fifth row empty, every
    fifth full; to_csr gives its CSR form."""
    g = torch.Generator(device=torch.get_default_device()).manual_seed(seed)
    dense = torch.zeros(rows, classes, dtype=dtype)
    for r in range(rows):
        if r % 5 == 1:
            continue  # no positive
        if r % 5 == 4:
            mask = torch.ones(classes, dtype=torch.bool)
        else:
            mask = torch.rand(classes, generator=g) < density
        v = torch.randint(1, 9, (classes,), generator=g).to(dtype) / 8 if values else 1.0
        dense[r] = torch.where(mask, v, 0.0)
    return dense


def to_csr(dense):
    """CSR of a dense target written here (row-major nonzeros: sorted and unique per row)."""
    nz = dense.nonzero()
    counts = torch.bincount(nz[:, 0], minlength=dense.size(0))
    offsets = torch.zeros(dense.size(0) + 1, dtype=torch.int64)
    offsets[1:] = counts.cumsum(0)
    return nz[:, 1].contiguous(), offsets, dense[nz[:, 0], nz[:, 1]].contiguous()


def oracle(x, y, pos_weight):
    """Native per-element loss and the gradient of its sum."""
    x = x.detach().clone().requires_grad_()
    loss = F.binary_cross_entropy_with_logits(x, y, pos_weight=pos_weight, reduction="none")
    (g,) = torch.autograd.grad(loss.sum(), x)
    return loss.detach(), g


def check(got_loss, logits_after, ref_loss, ref_grad, reduction, row_mean, dtype):
    tol = TOL[dtype]
    torch.testing.assert_close(logits_after, ref_grad, **tol)
    if reduction == SUM:
        want = ref_loss.sum()
    elif row_mean:
        want = ref_loss.sum(1)
    else:
        want = ref_loss
    assert got_loss.shape == want.shape and got_loss.dtype == dtype
    torch.testing.assert_close(got_loss, want, **tol)


PW = ("none", "per_col", "scalar", "one", "per_row")


def chunk_pos_weight(kind, rows, classes, c0, n, dtype):
    """(pos_weight of the full problem, what linear.py passes for columns [c0, c0 + n))."""
    if kind == "none":
        return None, None
    shape = {"per_col": (classes,), "scalar": (), "one": (1,), "per_row": (rows, 1)}[kind]
    full = torch.rand(shape, dtype=dtype) * 3 + 0.25
    return full, (full.narrow(-1, c0, n) if kind == "per_col" else full)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("values", [False, True])
@pytest.mark.parametrize("reduction,row_mean", [(SUM, False), (NONE, False), (NONE, True)])
@pytest.mark.parametrize("pw", PW)
@pytest.mark.parametrize("sparse", [False, True])
def test_matches_native(device, dtype, values, reduction, row_mean, pw, sparse):
    torch.set_default_device(device)  # every tensor of the case on the device
    try:
        _matches_native(dtype, values, reduction, row_mean, pw, sparse)
    finally:
        torch.set_default_device("cpu")


def _matches_native(dtype, values, reduction, row_mean, pw, sparse):
    rows, classes = 11, 203
    full = make_target(rows, classes, 0.1, values, dtype, seed=classes + rows)
    # Chunks whose borders cut through rows' positives, at vector borders and not, a first class
    # of 0 and later ones, one column wide and the whole row.
    for c0, n in [(0, 203), (0, 16), (16, 37), (53, 1), (54, 149), (200, 3)]:
        y = full[:, c0:c0 + n]
        x = torch.randn(rows, n, dtype=dtype) * 4
        x[0, :3] = torch.tensor([1e4, -1e4, 30.0])[:min(3, n)].to(dtype)
        pw_full, pw_c = chunk_pos_weight(pw, rows, classes, c0, n, dtype)
        ref_loss, ref_grad = oracle(x, y, pw_c)
        logits = x.clone()
        if sparse:
            indices, offsets, vals = to_csr(full)
            got = op(logits, None, indices, offsets, vals if values else None, c0, pw_c, reduction,
                     row_mean)
        else:
            got = op(logits, y, None, None, None, 0, pw_c, reduction, row_mean)
        check(got, logits, ref_loss, ref_grad, reduction, row_mean, dtype)


@pytest.mark.parametrize("sparse", [False, True])
def test_long_rows_and_empty(device, sparse):
    """Rows longer than the CPU's work unit (16384 columns: a row's chunk split across units) and
    than a CUDA tile, and empty problems."""
    torch.set_default_device(device)
    try:
        _long_rows_and_empty(sparse)
    finally:
        torch.set_default_device("cpu")


def _long_rows_and_empty(sparse):
    rows, classes = 3, 40000
    full = make_target(rows, classes, 0.001, True, torch.float32, seed=7)
    full[0, 16383:16386] = 0.5  # positives around the unit border
    for c0, n in [(0, classes), (5, 39990)]:
        y = full[:, c0:c0 + n]
        x = torch.randn(rows, n)
        ref_loss, ref_grad = oracle(x, y, None)
        logits = x.clone()
        args = (None, *to_csr(full), c0) if sparse else (y, None, None, None, 0)
        got = op(logits, *args, None, SUM, False)
        check(got, logits, ref_loss, ref_grad, SUM, False, torch.float32)
    for shape in [(0, 5), (4, 0)]:
        x = torch.randn(shape)
        args = (None, *to_csr(torch.zeros(shape[0], 9)), 2) if sparse else \
            (torch.zeros(shape), None, None, None, 0)
        assert op(x, *args, None, SUM, False).item() == 0
        assert op(x, *args, None, NONE, True).shape == (shape[0],)
        assert op(x, *args, None, NONE, False).shape == shape


def test_dense_target_is_read_in_place():
    """A strided column slice of the (N, C) target is read as it is (no contiguous copy needed)."""
    full = torch.rand(6, 50, dtype=torch.float64)
    y = full[:, 10:30]
    assert not y.is_contiguous()
    x = torch.randn(6, 20, dtype=torch.float64)
    ref_loss, ref_grad = oracle(x, y, None)
    logits = x.clone()
    check(op(logits, y, None, None, None, 0, None, NONE, False), logits, ref_loss, ref_grad, NONE,
          False, torch.float64)


def test_opcheck():
    x = torch.randn(4, 9)
    full = make_target(4, 15, 0.3, True, torch.float32, seed=3)
    indices, offsets, vals = to_csr(full)
    pw = torch.rand(15) + 0.5
    for red, row_mean in [(SUM, False), (NONE, False), (NONE, True)]:
        torch.library.opcheck(torch.ops.multilabel_cuda.bce_chunk_.default,
                              (x.clone(), None, indices, offsets, vals, 3, pw[3:12], red, row_mean))
        torch.library.opcheck(torch.ops.multilabel_cuda.bce_chunk_.default,
                              (x.clone(), full[:, 3:12], None, None, None, 0, None, red, row_mean))


def test_bad_arguments():
    x = torch.randn(3, 5)
    y = torch.rand(3, 5)
    idx, off, vals = to_csr(make_target(3, 8, 0.3, True, torch.float32, seed=1))
    cases = [
        ((x.half(), y.half(), None, None, None, 0, None, SUM, False), "float32 or float64"),
        ((x.t(), y.t(), None, None, None, 0, None, SUM, False), "contiguous"),
        ((x, y, None, None, None, 0, None, 1, False), "reduction must be 0"),
        ((x, y, idx, off, None, 0, None, SUM, False), "either target or indices"),
        ((x, None, None, None, None, 0, None, SUM, False), "either target or indices"),
        ((x, None, idx, None, None, 0, None, SUM, False), "needs indices and offsets"),
        ((x, y.double(), None, None, None, 0, None, SUM, False), "target has dtype"),
        ((x, y[:, :4], None, None, None, 0, None, SUM, False), "target size"),
        ((x, None, idx, off[:-1], None, 0, None, SUM, False), r"offsets must have rows \+ 1"),
        ((x, None, idx.int(), off, None, 0, None, SUM, False), "indices must be a 1-D int64"),
        ((x, None, idx, off, vals[:-1], 0, None, SUM, False), "values of shape"),
        ((x, None, idx, off, vals.double(), 0, None, SUM, False), "values has dtype"),
        ((x, y, None, None, None, 0, torch.rand(4), SUM, False), "pos_weight of shape"),
        ((x, y, None, None, None, 0, torch.rand(5, device="meta"), SUM, False),
         "pos_weight is on meta"),
    ]
    for args, words in cases:
        with pytest.raises(RuntimeError, match=words):
            op(*args)


def test_malformed_offsets_read_nothing_out_of_bounds():
    """Offsets past nnz or decreasing are clamped by the kernel: a result, no out-of-bounds read
    (SparseTargets never produces them; the op does not scan them, which would cost a pass)."""
    x = torch.randn(3, 6)
    idx = torch.tensor([1, 2, 4])
    for off in ([0, 2, 1, 99], [-5, 3, 3, 3], [0, 1000, 2000, 3000]):
        got = op(x.clone(), None, idx, torch.tensor(off), None, 0, None, SUM, False)
        assert torch.isfinite(got)


@pytest.mark.parametrize("logits_device,other_device", [("cpu", "meta"), ("meta", "cpu")])
@pytest.mark.parametrize("arg", ["target", "indices", "offsets", "values", "pos_weight"])
def test_device_mismatch_names_the_argument(logits_device, other_device, arg):
    """Every tensor argument on another device than the logits: the plan (cpu logits) or the fake
    kernel (meta logits) names it."""
    idx, off, vals = to_csr(make_target(3, 8, 0.3, True, torch.float32, seed=2))
    tensors = {"target": torch.rand(3, 5), "indices": idx, "offsets": off, "values": vals,
               "pos_weight": torch.rand(5)}
    t = {k: v.to(other_device if k == arg else logits_device) for k, v in tensors.items()}
    x = torch.randn(3, 5, device=logits_device)
    if arg == "target":
        args = (x, t["target"], None, None, None, 0, t["pos_weight"], SUM, False)
    else:
        args = (x, None, t["indices"], t["offsets"], t["values"], 2, t["pos_weight"], SUM, False)
    with pytest.raises(RuntimeError, match=rf"\b{arg} is on"):
        op(*args)
