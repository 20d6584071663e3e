"""The networks this bundle builds, their ResNet encoders and the default network settings: one leaf module.

Everything that names a network, a backbone or a default setting reads it here (``configs/inference.json`` through
:func:`network_defaults`, the network classes, the checkpoint reader, the scripts), and this module imports nothing
of the bundle, so that it can be imported from anywhere without a cycle.
"""

from __future__ import annotations

import copy
from typing import Any

__all__ = ["BACKBONES", "BATCHNORMS", "NETWORK_DEFAULTS", "NETWORK_NAMES", "network_defaults", "network_title"]

# "rfeunet": the paper's network (``rfe=False`` gives Table 9's plain ResNet U-Net);
# "flexibleunet": MONAI's FlexibleUNet with a ResNet encoder of the same name (no pretrained weights);
# "basicunet": MONAI's BasicUNet (features 32, 32, 64, 128, 256, 32), no encoder to choose.
NETWORK_NAMES = ("rfeunet", "flexibleunet", "basicunet")
TITLES = {"rfeunet": "RFE U-Net", "flexibleunet": "FlexibleUNet", "basicunet": "BasicUNet"}

# torchvision's ResNet layouts: residual block type and blocks per stage.
BACKBONES: dict[str, tuple[str, list[int]]] = {
    "resnet34": ("basic", [3, 4, 6, 3]),
    "resnet50": ("bottleneck", [3, 4, 6, 3]),
    "resnet101": ("bottleneck", [3, 4, 23, 3]),
}

# BatchNorm of the RFE U-Net's YOLOv8-style Conv blocks (RFE modules, decoder stages, head): name -> (eps, momentum).
# "yolov8" is what ultralytics' initialize_weights() sets and the paper's blocks come with; "pytorch" is
# torch.nn.BatchNorm2d's own default (what the ResNet encoder and MONAI's networks use). The encoder is unaffected.
BATCHNORMS: dict[str, tuple[float, float]] = {"yolov8": (1e-3, 0.03), "pytorch": (1e-5, 0.1)}

# The settings of an untrained network: the paper's main model (ResNet-101, 256 x 256, ImageNet statistics),
# automatic (no click guidance). A checkpoint's recorded settings take precedence over these.
NETWORK_DEFAULTS: dict[str, Any] = {
    "name": "rfeunet",
    "backbone": "resnet101",
    "rfe": True,
    "batchnorm": "yolov8",
    "image_size": 256,
    "pixel_mean": [0.485, 0.456, 0.406],
    "pixel_std": [0.229, 0.224, 0.225],
    "guidance": [],
    "click_radius": 3,
}


def network_defaults(**settings: Any) -> dict[str, Any]:
    """:data:`NETWORK_DEFAULTS` with ``settings`` over them (a fresh copy).

    ``configs/inference.json`` builds its ``network_defaults`` with this; an exported bundle adds its shipped
    network's settings as arguments, so that its configs build that network wherever they find no checkpoint.
    """
    return {**copy.deepcopy(NETWORK_DEFAULTS), **settings}


def network_title(name: str, backbone: str = "", rfe: bool = True) -> str:
    """How reports name a network: ``RFE U-Net ResNet-34``, ``U-Net ResNet-34 (no RFE)``, ``BasicUNet``."""
    title = TITLES.get(name, name)
    if name == "rfeunet" and not rfe:
        title = "U-Net"
    if backbone and name != "basicunet":
        title += f" ResNet-{backbone.removeprefix('resnet')}"
    return title + (" (no RFE)" if name == "rfeunet" and not rfe else "")
