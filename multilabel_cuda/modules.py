"""nn.Module drop-ins: subclasses of the torch.nn losses (same constructor, buffers, state_dict and
isinstance checks) whose forward calls the fused functional."""
import torch

from . import functional as F


class BCEWithLogitsLoss(torch.nn.BCEWithLogitsLoss):
    __doc__ = torch.nn.BCEWithLogitsLoss.__doc__

    def forward(self, input, target):
        return F.binary_cross_entropy_with_logits(input, target, self.weight,
                                                  pos_weight=self.pos_weight,
                                                  reduction=self.reduction)


class MultiLabelSoftMarginLoss(torch.nn.MultiLabelSoftMarginLoss):
    __doc__ = torch.nn.MultiLabelSoftMarginLoss.__doc__

    def forward(self, input, target):
        return F.multilabel_soft_margin_loss(input, target, weight=self.weight,
                                             reduction=self.reduction)


class MultiLabelMarginLoss(torch.nn.MultiLabelMarginLoss):
    __doc__ = torch.nn.MultiLabelMarginLoss.__doc__

    def forward(self, input, target):
        return F.multilabel_margin_loss(input, target, reduction=self.reduction)


class SigmoidFocalLoss(torch.nn.Module):
    """Module form of functional.sigmoid_focal_loss (torchvision's parameters; reduction 'none')."""

    def __init__(self, alpha=0.25, gamma=2, reduction="none", label_smoothing=0.0):
        super().__init__()
        self.alpha, self.gamma, self.reduction = alpha, gamma, reduction
        self.label_smoothing = label_smoothing

    def forward(self, input, target):
        return F.sigmoid_focal_loss(input, target, self.alpha, self.gamma, self.reduction,
                                    self.label_smoothing)


class AsymmetricLoss(torch.nn.Module):
    """Module form of functional.asymmetric_loss (the reference AsymmetricLoss's parameters and
    defaults; reduction 'sum' is what it returns)."""

    def __init__(self, gamma_neg=4, gamma_pos=1, clip=0.05, eps=1e-8,
                 disable_torch_grad_focal_loss=False, reduction="sum", label_smoothing=0.0,
                 stable=True):
        super().__init__()
        self.gamma_neg, self.gamma_pos, self.clip, self.eps = gamma_neg, gamma_pos, clip, eps
        self.disable_torch_grad_focal_loss = disable_torch_grad_focal_loss
        self.reduction, self.label_smoothing, self.stable = reduction, label_smoothing, stable

    def forward(self, input, target):
        return F.asymmetric_loss(input, target, self.gamma_neg, self.gamma_pos, self.clip,
                                 self.eps, self.disable_torch_grad_focal_loss, self.reduction,
                                 self.label_smoothing, self.stable)


from .linear import (LinearBCEWithLogitsLoss, LinearMultiLabelMarginLoss,  # noqa: E402,F401
                     LinearMultiLabelSoftMarginLoss)
