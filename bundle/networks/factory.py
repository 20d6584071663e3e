"""Build the network a config names: the RFE U-Net, or a stock MONAI network a user would pick instead.

The peers exist so that every comparison (``scripts/experiments.py``, ``scripts/benchmark.py``) runs them through the
same data, transforms, loss, schedule and metrics as the RFE U-Net; all take (B, in_channels, H, W) and return
(B, out_channels, H, W) logits.
"""

from __future__ import annotations

from pathlib import Path

from torch import nn

from bundle.networks.rfe_unet import BACKBONES, RFEUNet

__all__ = ["NETWORK_NAMES", "make_network"]

# "rfeunet": the paper's network (``rfe=False`` gives Table 9's plain ResNet U-Net);
# "flexibleunet": MONAI's FlexibleUNet with a ResNet encoder of the same name (no pretrained weights);
# "basicunet": MONAI's BasicUNet (features 32, 32, 64, 128, 256, 32), no encoder to choose.
NETWORK_NAMES = ("rfeunet", "flexibleunet", "basicunet")


def make_network(
    name: str = "rfeunet",
    backbone: str = "resnet101",
    in_channels: int = 3,
    out_channels: int = 2,
    rfe: bool = True,
    pretrained_weights: str | Path | None = None,
) -> nn.Module:
    """Return the network ``name`` (one of :data:`NETWORK_NAMES`).

    Args:
        name: which network.
        backbone: ResNet encoder of ``rfeunet`` and ``flexibleunet`` (``resnet34``, ``resnet50``, ``resnet101``);
            ignored by ``basicunet``.
        in_channels, out_channels: image channels and logit channels.
        rfe: ``rfeunet`` only: False replaces the RFE skips with the plain encoder features.
        pretrained_weights: ``rfeunet`` only: a local torchvision ResNet state_dict for the encoder.

    Raises:
        ValueError: an unknown ``name`` or ``backbone``, or an option the chosen network does not have.
    """
    if name not in NETWORK_NAMES:
        raise ValueError(f"unknown network {name!r}; choose one of {', '.join(NETWORK_NAMES)}.")
    if name != "basicunet" and backbone not in BACKBONES:
        raise ValueError(f"backbone must be one of {', '.join(BACKBONES)}, got {backbone!r}.")
    if name == "rfeunet":
        return RFEUNet(backbone, in_channels, out_channels, pretrained_weights=pretrained_weights, rfe=rfe)
    if pretrained_weights:
        raise ValueError(f"pretrained_weights is only supported for the rfeunet network, not {name!r}.")
    if not rfe:
        raise ValueError(f"rfe=False only applies to the rfeunet network, not {name!r}.")
    from monai.networks.nets import BasicUNet, FlexibleUNet

    if name == "flexibleunet":
        return FlexibleUNet(in_channels, out_channels, backbone, pretrained=False, spatial_dims=2)
    return BasicUNet(spatial_dims=2, in_channels=in_channels, out_channels=out_channels)
