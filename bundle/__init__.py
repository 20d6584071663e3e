"""RFE U-Net skin-lesion segmentation bundle: network, losses, metrics, transforms, data and inference.

The configs import this package as ``$import bundle`` and refer to ``bundle.<module>.<name>`` (MONAI's config
parser binds ``import a.b`` to the name ``a.b``, not ``a``). Submodules load on first use, so the data tools
start without importing torch.

All loggers are named after their module (``bundle.*``). The package logger has a ``NullHandler``, as a library's
should: a host that configures no logging (a Slicer worker, a MONAI Label app) gets no stray output from it.
"""

import importlib
import logging

_SUBMODULES = (
    "checkpoint",
    "checks",
    "cli",
    "config",
    "data",
    "errors",
    "distributed",
    "evaluation",
    "export",
    "files",
    "images",
    "inference",
    "interactive",
    "losses",
    "metrics",
    "networks",
    "training",
    "transforms",
)

logging.getLogger(__name__).addHandler(logging.NullHandler())


def __getattr__(name: str):
    if name in _SUBMODULES:
        return importlib.import_module(f"bundle.{name}")
    raise AttributeError(f"module 'bundle' has no attribute {name!r}")
