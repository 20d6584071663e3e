"""RFE U-Net skin-lesion segmentation bundle: network, losses, metrics, transforms, data and inference.

The configs import this package as ``$import bundle`` and refer to ``bundle.<module>.<name>`` (MONAI's config
parser binds ``import a.b`` to the name ``a.b``, not ``a``). Submodules load on first use, so the data tools
start without importing torch.
"""

import importlib

_SUBMODULES = ("config", "data", "evaluation", "inference", "losses", "metrics", "networks", "transforms")


def __getattr__(name: str):
    if name in _SUBMODULES:
        return importlib.import_module(f"bundle.{name}")
    raise AttributeError(f"module 'bundle' has no attribute {name!r}")
