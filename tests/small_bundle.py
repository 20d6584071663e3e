"""A small real bundle for the export and MONAI Label tests: this repository's files with a ResNet-34, 64-pixel
checkpoint in the bundle's checkpoint format, so that exporting, receiving, serving and training take seconds.

The weights are a seeded random initialisation whose batch-norm statistics are measured on the embedded sample
photographs (one forward pass in training mode, cumulative averages). Without that, an untrained network's
activations saturate and every pixel gets the same class, and masks that are all 0 or all 1 would make the
"equal to the bundle's own inference" and "lined up with the photo" checks prove nothing.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
BUNDLE_FILES = ("configs", "bundle", "docs", "sample_data", "LICENSE", "README.md")
SMALL_NETWORK = {"backbone": "resnet34", "image_size": 64}
# the same network taking clicks (configs/interactive.json's guidance channels)
SMALL_CLICK_NETWORK = {**SMALL_NETWORK, "guidance": ["positive_clicks", "negative_clicks", "previous_mask"]}


def copy_bundle(destination: Path) -> Path:
    """Copy the files of this repository's bundle (no checkpoints, no caches) to ``destination``."""
    destination.mkdir(parents=True, exist_ok=True)
    for item in BUNDLE_FILES:
        source = REPO / item
        if source.is_dir():
            shutil.copytree(source, destination / item, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        else:
            shutil.copy2(source, destination / item)
    return destination


def write_small_checkpoint(path: Path, seed: int = 0, network: dict | None = None) -> Path:
    """Write a ResNet-34, 64-pixel RFE U-Net checkpoint (as training writes ``models/model.pt``) built by the
    configs; ``network``: other settings (default :data:`SMALL_NETWORK`)."""
    import torch
    from monai.bundle import ConfigParser

    from bundle.checkpoint import NetworkCheckpoint

    parser = ConfigParser()
    parser.read_config(str(REPO / "configs" / "inference.json"))
    parser.update({"bundle_root": str(path.parent.parent), "ckpt_path": str(path), **(network or SMALL_NETWORK)})
    settings = parser.get_parsed_content("network_settings")
    preprocessing = parser.get_parsed_content("preprocessing")
    torch.manual_seed(seed)
    network = parser.get_parsed_content("network_def")
    photos = sorted((REPO / "sample_data" / "images").iterdir())
    batch = torch.stack([torch.as_tensor(preprocessing({"image": str(p)})["image"]) for p in photos])
    for module in network.modules():
        if isinstance(module, torch.nn.modules.batchnorm._BatchNorm):
            module.momentum = None  # cumulative average over the calibration batch
            module.reset_running_stats()
    network.train()
    with torch.no_grad():
        network(batch)
    network.eval()
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(NetworkCheckpoint(network, settings).state_dict(), path)
    return path


def small_bundle(destination: Path) -> Path:
    """A copy of this repository's bundle at ``destination`` with the small checkpoint as ``models/model.pt``."""
    copy_bundle(destination)
    write_small_checkpoint(destination / "models" / "model.pt")
    return destination


def export_zip(bundle_root: Path, output_dir: Path, *options: str) -> Path:
    """Run ``python -m scripts.export_bundle`` as a user does (the repository on the path) and return the zip it
    wrote."""
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "scripts.export_bundle",
            "--bundle_root",
            str(bundle_root),
            "--output_dir",
            str(output_dir),
            *options,
        ],
        capture_output=True,
        text=True,
        timeout=600,
        env={**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, (str(REPO), os.environ.get("PYTHONPATH"))))},
    )
    if proc.returncode != 0:
        raise AssertionError(f"export failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    zips = sorted(output_dir.glob("*.zip"))
    assert len(zips) == 1, zips
    return zips[0]
