"""Inference-only transformations of a trained RFE U-Net that keep its function (within float precision).

Measured against plain eager inference by ``scripts/benchmark.py`` (docs/performance.md, "Fast inference path").
"""

from __future__ import annotations

import copy

import torch
from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_eval

__all__ = ["bf16_supported", "fold_batchnorm"]


def bf16_supported() -> bool:
    """Whether this CPU runs bfloat16 convolutions natively (AVX512-BF16 or AMX), where bf16 autocast can pay."""
    return bool(torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported())


def _fold_pair(parent: nn.Module, conv_name: str, bn_name: str) -> bool:
    conv, bn = getattr(parent, conv_name, None), getattr(parent, bn_name, None)
    if not (isinstance(conv, nn.Conv2d) and isinstance(bn, nn.BatchNorm2d) and bn.track_running_stats):
        return False
    setattr(parent, conv_name, fuse_conv_bn_eval(conv, bn))
    setattr(parent, bn_name, nn.Identity())
    return True


def fold_batchnorm(model: nn.Module) -> nn.Module:
    """An eval-mode copy of ``model`` with every BatchNorm folded into the convolution that feeds it.

    Folds the pairs the RFE U-Net applies back to back: ``conv``/``bn`` (YOLOv8's Conv), ``convN``/``bnN``
    (MONAI's ResNet stem and residual blocks) and a Conv2d followed by a BatchNorm2d in an ``nn.Sequential``
    (the residual downsampling). The BatchNorm becomes ``nn.Identity`` and the convolution gains the bias
    ``beta - gamma * mean / sqrt(var + eps)``, its weight scaled by ``gamma / sqrt(var + eps)``, which saves
    one pass over every feature map. ``model`` itself is left unchanged.
    """
    folded = copy.deepcopy(model).eval()
    for module in list(folded.modules()):
        for name, _ in list(module.named_children()):
            if name == "conv" or (name.startswith("conv") and name[4:].isdigit()):
                _fold_pair(module, name, "bn" + name[4:])
        if isinstance(module, nn.Sequential):
            for i in range(len(module) - 1):
                _fold_pair(module, str(i), str(i + 1))
    return folded
