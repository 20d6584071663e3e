"""Networks: YOLOv8 blocks, the RFE U-Net, the factory that also builds MONAI peers, the fast inference path, and
the registry of network names, backbones and default settings.

The names below load their module on first use (as ``bundle`` does its submodules), so that importing the leaf
module ``bundle.networks.registry`` never imports the networks, torch or the checkpoint reader.
"""

import importlib

_HOMES = {
    "FAST_PATHS": "fastpath",
    "FastInferer": "fastpath",
    "NETWORK_NAMES": "registry",
    "BACKBONES": "registry",
    "network_defaults": "registry",
    "RFE": "rfe_unet",
    "RFEUNet": "rfe_unet",
    "load_encoder_weights": "rfe_unet",
    "SPPF": "blocks",
    "Bottleneck": "blocks",
    "C2f": "blocks",
    "Conv": "blocks",
    "make_network": "factory",
}
_SUBMODULES = ("blocks", "factory", "fastpath", "fusion", "registry", "rfe_unet", "tta")

__all__ = sorted(_HOMES)


def __getattr__(name: str):
    if name in _HOMES:
        return getattr(importlib.import_module(f"bundle.networks.{_HOMES[name]}"), name)
    if name in _SUBMODULES:
        return importlib.import_module(f"bundle.networks.{name}")
    raise AttributeError(f"module 'bundle.networks' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted([*_HOMES, *_SUBMODULES])
