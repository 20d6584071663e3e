"""BatchNorm folding for inference: every block folds the BatchNorms it applies right after a convolution.

The blocks of this bundle fuse themselves (``bundle.networks.blocks.Conv.fuse``, the idea of ultralytics'
``forward_fuse``); the MONAI blocks the networks are built from (the ResNet encoder's stem, its residual blocks and
their downsampling) get a fuser of their own in :data:`FUSERS`, which knows where each of them applies a
BatchNorm after a convolution. :func:`fold_batchnorm` walks a copy of a network and lets each block fuse itself.
"""

from __future__ import annotations

import copy
from collections.abc import Callable

from monai.networks.nets.resnet import ResNet, ResNetBlock, ResNetBottleneck
from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_eval

from bundle.networks.blocks import Conv

__all__ = ["FUSERS", "fold_batchnorm", "fused_pair"]


def fused_pair(conv: nn.Module, bn: nn.Module | None) -> tuple[nn.Module, nn.Module | None]:
    """``(conv with bn folded in, nn.Identity())`` for a Conv2d followed by a BatchNorm2d that tracks running
    statistics; the two unchanged otherwise (another normalisation, or none)."""
    if not (isinstance(conv, nn.Conv2d) and isinstance(bn, nn.BatchNorm2d) and bn.track_running_stats):
        return conv, bn
    return fuse_conv_bn_eval(conv.eval(), bn.eval()), nn.Identity()


def _fuse_stem(resnet: ResNet) -> None:
    """MONAI's ResNet: ``conv1`` then ``bn1`` (the stem); its layers are blocks of their own."""
    resnet.conv1, resnet.bn1 = fused_pair(resnet.conv1, resnet.bn1)


def _fuse_residual(block: ResNetBlock | ResNetBottleneck) -> None:
    """MONAI's residual blocks: ``convN`` then ``bnN`` on the main path, and the downsampling ``Sequential(conv,
    bn)`` of the shortcut."""
    for index in (1, 2, 3) if isinstance(block, ResNetBottleneck) else (1, 2):
        conv, bn = fused_pair(getattr(block, f"conv{index}"), getattr(block, f"bn{index}"))
        setattr(block, f"conv{index}", conv)
        setattr(block, f"bn{index}", bn)
    shortcut = block.downsample
    if isinstance(shortcut, nn.Sequential) and len(shortcut) == 2:
        shortcut[0], shortcut[1] = fused_pair(shortcut[0], shortcut[1])


# block type -> the function that folds its BatchNorms (looked up along the type's MRO, so subclasses such as
# MONAI's ResNetEncoder, FlexibleUNet's encoder, fuse like their base)
FUSERS: dict[type[nn.Module], Callable[[nn.Module], object]] = {
    Conv: Conv.fuse,
    ResNet: _fuse_stem,
    ResNetBlock: _fuse_residual,
    ResNetBottleneck: _fuse_residual,
}


def _fuser(module: nn.Module) -> Callable[[nn.Module], object] | None:
    return next((FUSERS[kind] for kind in type(module).__mro__ if kind in FUSERS), None)


def fold_batchnorm(model: nn.Module) -> nn.Module:
    """An eval-mode copy of ``model`` in which every block of :data:`FUSERS` has folded its BatchNorms into its
    convolutions: the same function, one pass over each of those feature maps less. ``model`` is left unchanged.
    """
    folded = copy.deepcopy(model).eval()
    for module in list(folded.modules()):
        fuse = _fuser(module)
        if fuse is not None:
            fuse(module)
    return folded
