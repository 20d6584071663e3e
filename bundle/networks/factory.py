"""Build the network a config names: the RFE U-Net, or a stock MONAI network a user would pick instead.

The peers exist so that every comparison (``scripts/experiments.py``, ``scripts/benchmark.py``) runs them through the
same data, transforms, loss, schedule and metrics as the RFE U-Net; all take (B, in_channels, H, W) and return
(B, out_channels, H, W) logits.
"""

from __future__ import annotations

from pathlib import Path

from torch import nn

from bundle.config import choice, flag
from bundle.errors import ConfigError
from bundle.networks.registry import BACKBONES, BATCHNORMS, NETWORK_DEFAULTS, NETWORK_NAMES
from bundle.networks.rfe_unet import RFEUNet

__all__ = ["NETWORK_NAMES", "make_network"]


def make_network(
    name: str = NETWORK_DEFAULTS["name"],
    backbone: str = NETWORK_DEFAULTS["backbone"],
    in_channels: int = 3,
    out_channels: int = 2,
    rfe: bool = True,
    pretrained_weights: str | Path | None = None,
    batchnorm: str = NETWORK_DEFAULTS["batchnorm"],
) -> nn.Module:
    """Return the network ``name`` (one of :data:`NETWORK_NAMES`).

    Args:
        name: which network.
        backbone: ResNet encoder of ``rfeunet`` and ``flexibleunet`` (``resnet34``, ``resnet50``, ``resnet101``);
            ignored by ``basicunet``.
        in_channels, out_channels: image channels and logit channels.
        rfe: ``rfeunet`` only: False replaces the RFE skips with the plain encoder features.
        pretrained_weights: ``rfeunet`` only: a local torchvision ResNet state_dict for the encoder (``""`` or
            None: none).
        batchnorm: ``rfeunet`` only: the BatchNorm settings of its YOLOv8-style blocks (``yolov8``, ``pytorch``).

    Raises:
        ConfigError: an unknown ``name`` or ``backbone``, or an option the chosen network does not have (one line).
    """
    choice(name, NETWORK_NAMES, "network_name")
    rfe = flag(rfe, "rfe")
    choice(batchnorm, BATCHNORMS, "batchnorm")
    if name != "basicunet":
        choice(backbone, BACKBONES, "backbone")
    if name == "rfeunet":
        return RFEUNet(
            backbone, in_channels, out_channels, pretrained_weights=pretrained_weights, rfe=rfe, batchnorm=batchnorm
        )
    if pretrained_weights:
        raise ConfigError(f"pretrained_weights: only the rfeunet network takes them, not {name}")
    if not rfe:
        raise ConfigError(f"rfe: false applies to the rfeunet network only, not {name}")
    if batchnorm != NETWORK_DEFAULTS["batchnorm"]:
        raise ConfigError(f"batchnorm: {batchnorm} applies to the rfeunet network only, not {name}")
    from monai.networks.nets import BasicUNet, FlexibleUNet

    if name == "flexibleunet":
        return FlexibleUNet(in_channels, out_channels, backbone, pretrained=False, spatial_dims=2)
    return BasicUNet(spatial_dims=2, in_channels=in_channels, out_channels=out_channels)
