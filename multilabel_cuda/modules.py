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


from .linear import (LinearBCEWithLogitsLoss, LinearMultiLabelMarginLoss,  # noqa: E402,F401
                     LinearMultiLabelSoftMarginLoss)
