"""Exports of a trained model: TorchScript with a true copy of ``configs/inference.json``.

``configs/inference.json``'s ``export`` (``python -m monai.bundle run export``) and ``scripts/export_bundle.py`` call
:func:`export_torchscript`.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from bundle.checkpoint import check_settings, plain_values, read_checkpoint, recorded_settings, wrapper_key

__all__ = ["SETTING_KEYS", "export_torchscript"]

# Config keys of configs/inference.json that hold each recorded setting.
SETTING_KEYS = {
    "name": "network_name",
    "backbone": "backbone",
    "rfe": "rfe",
    "batchnorm": "batchnorm",
    "image_size": "image_size",
    "pixel_mean": "pixel_mean",
    "pixel_std": "pixel_std",
    "guidance": "guidance",
    "click_radius": "click_radius",
}


def export_torchscript(
    ckpt_path: str | os.PathLike,
    filepath: str | os.PathLike,
    settings: Mapping[str, Any] | None = None,
    config_file: str | os.PathLike = "configs/inference.json",
    meta_file: str | os.PathLike = "configs/metadata.json",
) -> Path:
    """Export the checkpoint as TorchScript with MONAI's ``ckpt_export``, embedding a true ``inference.json``.

    ``ckpt_export`` embeds the config file it is given as it is written; ``configs/inference.json`` takes the
    network from the checkpoint, which the TorchScript file no longer has. So the embedded copy is ``config_file``
    with the :data:`SETTING_KEYS` written as the values in ``settings`` (the config's, checked against the
    checkpoint; the checkpoint's own when None), e.g. ``"backbone": "resnet34"``, ``"image_size": 128``. The
    default paths are relative to the bundle root, where the bundle runner starts.

    Returns:
        ``filepath``.

    Raises:
        MissingCheckpointError, CheckpointError, CheckpointMismatchError: as ``bundle.checkpoint.load_weights``.
    """
    from monai.bundle import ConfigParser, ckpt_export

    checkpoint = read_checkpoint(ckpt_path, mmap=True)
    recorded = recorded_settings(checkpoint)
    settings = {"guidance": [], **plain_values(settings or recorded or {})}  # no record of guidance: 3 channels
    if recorded:
        check_settings(ckpt_path, recorded, settings)
    config = ConfigParser.load_config_file(config_file)
    config.update({key: settings[setting] for setting, key in SETTING_KEYS.items() if setting in settings})
    with tempfile.TemporaryDirectory() as folder:
        embedded = Path(folder) / "inference.json"
        embedded.write_text(json.dumps(config, indent=4) + "\n", encoding="utf-8")
        ckpt_export(
            net_id="network_def",
            filepath=str(filepath),
            ckpt_file=str(ckpt_path),
            meta_file=str(meta_file),
            config_file=str(embedded),
            key_in_ckpt=wrapper_key(checkpoint),
        )
    return Path(filepath)
