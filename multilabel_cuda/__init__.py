"""Fused forward+backward kernels for multi-label classification losses (CPU and CUDA).

    import multilabel_cuda
    loss_fn = multilabel_cuda.BCEWithLogitsLoss(pos_weight=pw)   # drop-in for torch.nn's
    multilabel_cuda.backend()                                    # 'extension' or 'reference'
"""
from . import functional
from ._backend import backend, set_backend
from ._ops import check_errors
from .functional import LossArgumentError
from .modules import (AsymmetricLoss, BCEWithLogitsLoss, LinearBCEWithLogitsLoss,
                      LinearMultiLabelMarginLoss, LinearMultiLabelSoftMarginLoss,
                      MultiLabelMarginLoss, MultiLabelSoftMarginLoss, SigmoidFocalLoss)
from .sparse import SparseTargets

__all__ = ["functional", "backend", "set_backend", "LossArgumentError", "BCEWithLogitsLoss",
           "MultiLabelSoftMarginLoss", "MultiLabelMarginLoss", "SigmoidFocalLoss", "AsymmetricLoss",
           "SparseTargets", "LinearBCEWithLogitsLoss", "LinearMultiLabelSoftMarginLoss",
           "LinearMultiLabelMarginLoss", "check_errors"]
__version__ = "0.1.0"
