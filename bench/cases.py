"""The benchmarked loss cases: inputs, the native / fused / reference fwd+bwd steps, bytes moved.

Shared by ``bench.compare`` and ``bench/test_bench.py``. torch is imported inside the functions so
that importing this module stays cheap."""
from dataclasses import dataclass, field

CASE_ORDER = ("bce", "bce_pw", "soft_margin", "margin8", "margin256", "focal", "asl")


@dataclass(frozen=True)
class CaseSpec:
    name: str
    label: str
    loss: str                 # name in torch.nn.functional and multilabel_cuda.functional
    positives: int = 0        # margin: positive classes per row (target padded with -1)
    pos_weight: bool = False
    native: str = ""          # the unfused torch formula in this module when torch.nn has none
    kwargs: tuple = ()        # (name, value) pairs passed to both implementations


SPECS = {
    "bce": CaseSpec("bce", "BCE-with-logits", "binary_cross_entropy_with_logits"),
    "bce_pw": CaseSpec("bce_pw", "BCE + pos_weight", "binary_cross_entropy_with_logits",
                       pos_weight=True),
    "soft_margin": CaseSpec("soft_margin", "soft margin", "multilabel_soft_margin_loss"),
    "margin8": CaseSpec("margin8", "margin, 8 pos", "multilabel_margin_loss", positives=8),
    "margin256": CaseSpec("margin256", "margin, 256 pos", "multilabel_margin_loss", positives=256),
    # BCE family members with no torch.nn op: "native" is the published formula in torch ops.
    "focal": CaseSpec("focal", "focal g=2 a=.25", "sigmoid_focal_loss", native="focal_unfused",
                      kwargs=(("reduction", "mean"),)),
    "asl": CaseSpec("asl", "asymmetric (ASL)", "asymmetric_loss", native="asl_unfused"),
}


def focal_unfused(inputs, targets, alpha=0.25, gamma=2, reduction="none"):
    """torchvision.ops.sigmoid_focal_loss as published."""
    import torch
    import torch.nn.functional as F
    p = torch.sigmoid(inputs)
    ce_loss = F.binary_cross_entropy_with_logits(inputs, targets, reduction="none")
    p_t = p * targets + (1 - p) * (1 - targets)
    loss = ce_loss * ((1 - p_t) ** gamma)
    if alpha >= 0:
        loss = (alpha * targets + (1 - alpha) * (1 - targets)) * loss
    return {"none": loss, "mean": loss.mean(), "sum": loss.sum()}[reduction]


def asl_unfused(x, y, gamma_neg=4, gamma_pos=1, clip=0.05, eps=1e-8):
    """Ridnik et al.'s AsymmetricLoss.forward as published (returns -loss.sum())."""
    import torch
    x_sigmoid = torch.sigmoid(x)
    xs_pos, xs_neg = x_sigmoid, 1 - x_sigmoid
    if clip is not None and clip > 0:
        xs_neg = (xs_neg + clip).clamp(max=1)
    loss = y * torch.log(xs_pos.clamp(min=eps)) + (1 - y) * torch.log(xs_neg.clamp(min=eps))
    if gamma_neg > 0 or gamma_pos > 0:
        pt = xs_pos * y + xs_neg * (1 - y)
        loss = loss * torch.pow(1 - pt, gamma_pos * y + gamma_neg * (1 - y))
    return -loss.sum()


def fused_available(spec):
    """(True, '') when multilabel_cuda.functional has this loss, else (False, why)."""
    import multilabel_cuda
    if not hasattr(multilabel_cuda.functional, spec.loss):
        return False, f"multilabel_cuda.functional.{spec.loss} not implemented yet"
    return True, ""


_OP_OF_LOSS = {"binary_cross_entropy_with_logits": "bce_with_logits",
               "multilabel_soft_margin_loss": "multilabel_soft_margin",
               "multilabel_margin_loss": "multilabel_margin",
               "sigmoid_focal_loss": "bce_family", "asymmetric_loss": "bce_family"}


def fused_runs_extension(spec, device):
    """Whether multilabel_cuda's fused op (not its reference fallback) serves `device`."""
    from multilabel_cuda import _backend
    return _backend.use_extension(_OP_OF_LOSS[spec.loss], device)


@dataclass
class Inputs:
    x: object                 # input logits, requires_grad
    target: object
    kwargs: dict = field(default_factory=dict)
    bytes_moved: int = 0      # bytes a fused fwd+bwd must read and write (see README)
    shape: tuple = ()
    dtype: object = None


def make_inputs(spec, n, c, dtype, device, seed=0):
    import torch
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, c, generator=g).to(device=device, dtype=dtype).requires_grad_()
    es = x.element_size()
    kwargs = dict(spec.kwargs)
    if spec.loss == "multilabel_margin_loss":
        p = spec.positives
        if p >= c:
            raise ValueError(f"{spec.name}: {p} positives need more than {c} classes")
        # Native's format: (N, C) int64, the positive indices first, cut at the first -1.
        target = torch.full((n, c), -1, dtype=torch.int64)
        target[:, :p] = torch.rand(n, c, generator=g).topk(p, dim=1).indices
        target = target.to(device)
        # Only the P indices and the -1 that ends them must be read.
        bytes_moved = 2 * n * c * es + n * min(p + 1, c) * 8
    else:
        target = (torch.rand(n, c, generator=g) < 0.01).to(device=device, dtype=dtype)
        bytes_moved = 3 * n * c * es
        if spec.pos_weight:
            kwargs["pos_weight"] = (torch.rand(c, generator=g) * 1.5 + 0.5).to(device=device,
                                                                               dtype=dtype)
            bytes_moved += c * es
    return Inputs(x, target, kwargs, bytes_moved, (n, c), dtype)


def native_loss_fn(spec, inp):
    """A closure computing the native loss (also what torch.compile gets)."""
    import torch.nn.functional as F
    fn = globals()[spec.native] if spec.native else getattr(F, spec.loss)
    kwargs = dict(inp.kwargs)

    def native_loss(x, target):
        return fn(x, target, **kwargs)
    return native_loss


def make_step(loss_fn, inp, backend=None):
    """fwd+bwd as the benchmark times it: loss, then autograd.grad w.r.t. input.
    backend='reference' runs multilabel_cuda with its pure-PyTorch fallback."""
    import torch
    x, target = inp.x, inp.target
    if backend is None:
        def step():
            loss = loss_fn(x, target)
            return loss.detach(), torch.autograd.grad(loss, x)[0]
        return step
    import multilabel_cuda

    def step():
        multilabel_cuda.set_backend(backend)
        try:
            loss = loss_fn(x, target)
            return loss.detach(), torch.autograd.grad(loss, x)[0]
        finally:
            multilabel_cuda.set_backend("auto")
    return step


def fused_loss_fn(spec, inp):
    import multilabel_cuda
    fn = getattr(multilabel_cuda.functional, spec.loss)
    kwargs = dict(inp.kwargs)

    def fused_loss(x, target):
        return fn(x, target, **kwargs)
    return fused_loss
