"""Evaluation at large label counts: each row's top-k classes of a linear layer's logits, streamed over
class chunks (no N x C buffer), and precision@k / nDCG@k against SparseTargets or dense 0/1 targets.
Exported by multilabel_cuda.functional. Evaluation only: nothing here is differentiable."""
import torch

from ._errors import (check_floating, check_int, check_int_tensor, check_range, check_same_device,
                      check_tensor, fail)
from .linear import default_chunk_size
from .sparse import SparseTargets


def _chunk_topk(logits, k):
    """The k largest of each row of logits ordered by (value descending, index ascending), i.e.
    torch.sort(logits, descending=True, stable=True)[:, :k]; torch.topk's order among ties is
    unspecified, so ties are settled here: O(chunk) per row unless a row's k-th value is tied with
    an unselected element, which that row settles with a stable sort."""
    values, idx = torch.topk(logits, k, dim=1)
    if k < logits.size(1) and k > 0:
        kth = values[:, -1:]
        ambiguous = (logits == kth).sum(dim=1) > (values == kth).sum(dim=1)
        if bool(ambiguous.any()):
            sv, si = torch.sort(logits[ambiguous], dim=1, descending=True, stable=True)
            values[ambiguous], idx[ambiguous] = sv[:, :k], si[:, :k]
    idx, perm = torch.sort(idx, dim=1)  # ties among the selected: by index
    values, order = torch.sort(values.gather(1, perm), dim=1, descending=True, stable=True)
    return values, idx.gather(1, order)


def linear_topk(input, weight, k, bias=None, chunk_size=None):
    """(values, indices) of each row's k largest logits of F.linear(input, weight, bias), without an
    N x C buffer: the classes are streamed in chunks (one N x chunk_size logits buffer, reused), and
    each chunk's top k is merged into the running top k. Peak memory O(N * (chunk_size + k)).

    input (N, D) (or (D,): one row, results (k,)), weight (C, D), bias (C,) or None, one dtype and
    device; 0 <= k <= C; chunk_size None (the fused linear losses' rule) or >= 1. Rows are
    sorted by value, descending, and tied values by class index, ascending: the result is that of
    torch.sort(logits, dim=-1, descending=True, stable=True)[..., :k] (torch.topk returns the same
    values; among ties its indices may differ). NaN logits rank first, as in torch.topk and torch.sort;
    the order of several NaNs is unspecified. The chunk GEMMs may round differently from one full
    F.linear (different blocking), so a near-tie can order differently from the full logits'."""
    fn = "linear_topk"
    for name, t in (("input", input), ("weight", weight)):
        check_tensor(fn, name, t)
        check_floating(fn, name, t)
    if input.dim() not in (1, 2):
        fail(fn, f"input must be (N, D) or (D,), got shape {tuple(input.shape)}")
    if weight.dim() != 2:
        fail(fn, f"weight must be (C, D), got shape {tuple(weight.shape)}")
    check_same_device(fn, "weight", weight, "input", input)
    if weight.size(1) != input.size(-1):
        fail(fn, f"weight of shape {tuple(weight.shape)} does not match input of shape "
                  f"{tuple(input.shape)}: D = {weight.size(1)} vs {input.size(-1)}")
    if weight.dtype != input.dtype:
        fail(fn, f"weight has dtype {weight.dtype} but input has {input.dtype}")
    num_classes = weight.size(0)
    if bias is not None:
        check_tensor(fn, "bias", bias)
        check_same_device(fn, "bias", bias, "input", input)
        if bias.shape != (num_classes,):
            fail(fn, f"bias must be (C,) = ({num_classes},), got shape {tuple(bias.shape)}")
        if bias.dtype != input.dtype:
            fail(fn, f"bias has dtype {bias.dtype} but input has {input.dtype}")
    k = check_int(fn, "k", k, 0)
    if k > num_classes:
        fail(fn, f"k = {k} exceeds the number of classes C = {num_classes}")
    x = input.detach().unsqueeze(0) if input.dim() == 1 else input.detach()
    n = x.size(0)
    chunk = (default_chunk_size(n, num_classes, x.dtype) if chunk_size is None
             else check_int(fn, "chunk_size", chunk_size, 1))
    chunk = min(chunk, max(num_classes, 1))
    top_v = x.new_empty((n, 0))
    top_i = torch.empty((n, 0), dtype=torch.int64, device=x.device)
    if k == 0:
        return top_v.reshape(input.shape[:-1] + (0,)), top_i.reshape(input.shape[:-1] + (0,))
    buf = x.new_empty(n * chunk)
    with torch.no_grad():
        for start in range(0, num_classes, chunk):
            width = min(chunk, num_classes - start)
            logits = buf[:n * width].view(n, width)
            w = weight.narrow(0, start, width)
            if bias is None:
                torch.mm(x, w.t(), out=logits)
            else:
                torch.addmm(bias.narrow(0, start, width), x, w.t(), out=logits)
            cv, ci = _chunk_topk(logits, min(k, width))
            # Running entries come first and hold smaller class indices: a stable sort keeps
            # (value descending, index ascending).
            vals, order = torch.sort(torch.cat((top_v, cv), dim=1), dim=1, descending=True,
                                     stable=True)
            top_v = vals[:, :k]
            top_i = torch.cat((top_i, ci + start), dim=1).gather(1, order[:, :k])
    out_shape = input.shape[:-1] + (k,)
    return top_v.reshape(out_shape), top_i.reshape(out_shape)


def _hits(fn, topk_indices, targets, k):
    """bool (N, k): whether each of a row's first k predicted classes is a positive; and each row's
    number of positives (N,)."""
    check_int_tensor(fn, "topk_indices", topk_indices)
    k = check_int(fn, "k", k, 1)
    if isinstance(targets, SparseTargets):
        n, c, vector = targets.shape[0], targets.num_classes, targets.vector
    else:
        check_tensor(fn, "targets", targets)
        if targets.dim() not in (1, 2) or targets.is_complex():
            fail(fn, f"targets must be a SparseTargets or a real (N, C) or (C,) tensor, got "
                      f"{targets.dtype} of shape {tuple(targets.shape)}")
        vector = targets.dim() == 1
        n, c = (1 if vector else targets.size(0)), targets.size(-1)
    check_same_device(fn, "topk_indices", topk_indices, "targets", targets)
    want = (k,) if vector else (n, k)
    if topk_indices.dim() != len(want) or (not vector and topk_indices.size(0) != n) \
            or topk_indices.size(-1) < k:
        fail(fn, f"topk_indices of shape {tuple(topk_indices.shape)} does not fit targets of "
                  f"{'shape (C,)' if vector else f'N = {n} rows'} and k = {k} (expected "
                  f"{'(K,)' if vector else '(N, K)'} with K >= k)")
    pred = topk_indices.reshape(n, -1)[:, :k].to(torch.int64)
    check_range(fn, "topk_indices", pred, 0, c)
    if isinstance(targets, SparseTargets):
        # Canonical positives sorted by (row, class): look each prediction's key up in them.
        keys = targets.row_ids() * c + targets.indices
        query = torch.arange(n, device=pred.device).unsqueeze(1) * c + pred
        if keys.numel() == 0:
            hits = torch.zeros_like(pred, dtype=torch.bool)
        else:
            pos = torch.searchsorted(keys, query).clamp_(max=keys.numel() - 1)
            hits = keys[pos] == query
        npos = targets.offsets[1:] - targets.offsets[:-1]
    else:
        dense = targets.reshape(n, c)
        hits = dense.gather(1, pred) != 0
        npos = (dense != 0).sum(dim=1)
    return hits, npos, k


def precision_at_k(topk_indices, targets, k):
    """Mean over rows of (positives among the row's first k predicted classes) / k.

    topk_indices: integer (N, K >= k) predicted classes, best first, distinct within a row (as
    linear_topk or torch.topk give); a (K,) tensor for (C,) targets. targets: SparseTargets or a
    dense (N, C) / (C,) tensor, nonzero = positive (soft values count as positives). Every row
    counts, a row without positives scoring 0. Returns a 0-dim tensor (the default float dtype);
    N = 0 gives NaN."""
    hits, _, k = _hits("precision_at_k", topk_indices, targets, k)
    return (hits.sum(dim=1, dtype=torch.get_default_dtype()) / k).mean()


def ndcg_at_k(topk_indices, targets, k):
    """Mean over rows of nDCG@k with binary relevance: DCG = sum over the first k predictions of
    rel_i / log2(i + 2) (i from 0), divided by the ideal DCG, sum_{i < min(k, P)} 1 / log2(i + 2),
    P the row's number of positives. A row without positives scores 0 and counts in the mean.
    Arguments as precision_at_k's."""
    hits, npos, k = _hits("ndcg_at_k", topk_indices, targets, k)
    discount = 1 / torch.log2(torch.arange(k, dtype=torch.float64, device=hits.device) + 2)
    dcg = (hits.to(torch.float64) * discount).sum(dim=1)
    ideal = torch.cat((discount.new_zeros(1), discount.cumsum(0)))[npos.clamp(max=k)]
    score = torch.where(npos > 0, dcg / ideal, 0.0)  # 0 / 0 where there are no positives
    return score.mean().to(torch.get_default_dtype())
