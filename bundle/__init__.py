"""RFE U-Net skin-lesion segmentation bundle: network, losses, metrics, transforms, data and inference.

The configs import this package as ``$import bundle`` and refer to ``bundle.<module>.<name>``, so the
submodules are loaded here (MONAI's config parser binds ``import a.b`` to the name ``a.b``, not ``a``).
"""

from bundle import data, evaluation, inference, losses, metrics, networks, transforms  # noqa: F401
