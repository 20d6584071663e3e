"""Export the bundle as a zip shaped like a MONAI model-zoo bundle, for ``python -m monai.bundle download --url``.

    python scripts/export_bundle.py                         # dist/<name>_v<version>.zip (+ .sha256)
    python scripts/export_bundle.py --torchscript true      # adds models/model.ts
    python scripts/export_bundle.py --checkpoint other.pt   # ship another checkpoint as models/model.pt

Without ``--checkpoint`` it ships the bundle's ``models/model.pt``, or, when none was trained, the demo checkpoint
that ``configs/inference.json`` falls back to (``demo_ckpt_path``), so that a fresh clone exports a zip that MONAI
Label serves with working weights.

The zip holds one folder, ``<name>/``: ``configs/``, ``models/model.pt``, ``docs/``, ``LICENSE``, ``README.md``, the
``bundle/`` code the configs import, and ``sample_data/`` so the receiver's default training command runs. ``<name>``
is ``bundle_name`` and the version is ``version`` of ``configs/metadata.json``, whose ``changelog`` must describe
that version. The network the checkpoint was trained with (backbone, image size, ...) is read from the checkpoint and
written into the exported ``configs/train.json`` defaults and ``metadata.json``'s shapes, so a receiver who fine-tunes
(``run training``, MONAI Label) builds the same network without guessing ``--backbone``.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import sys
import tempfile
import zipfile
from pathlib import Path

import fire

if __package__ in (None, ""):  # run as `python scripts/export_bundle.py`: make `bundle` importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bundle.checkpoint import SETTING_KEYS, export_torchscript, network_settings  # noqa: E402
from bundle.config import flag  # noqa: E402
from bundle.errors import BundleError  # noqa: E402

CONTENTS = ("configs", "bundle", "docs", "sample_data", "LICENSE", "README.md")
NAME_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")


class ExportError(BundleError):
    """The bundle cannot be exported as it is; the message names the file and what to do."""

    exit_code = 2


def bundle_identity(metadata_path: Path) -> tuple[str, str]:
    """Return (name, version) from ``metadata.json``; the changelog must have an entry for the version."""
    try:
        metadata = json.loads(metadata_path.read_text())
    except (OSError, ValueError) as err:
        raise ExportError(f"{metadata_path}: cannot read the bundle's metadata ({err})") from None
    name, version = metadata.get("bundle_name"), metadata.get("version")
    if not isinstance(name, str) or not NAME_PATTERN.fullmatch(name):
        raise ExportError(f"{metadata_path}: 'bundle_name' must be a folder name (letters, digits, _.-): {name!r}")
    if not isinstance(version, str) or not version:
        raise ExportError(f"{metadata_path}: no 'version'")
    if version not in metadata.get("changelog", {}):
        raise ExportError(f"{metadata_path}: the changelog has no entry for version {version}; describe the release")
    return name, version


def _ignore_caches(_folder: str, names: list[str]) -> list[str]:
    return [n for n in names if n == "__pycache__" or n.endswith(".pyc")]


def _stage(root: Path, stage: Path) -> None:
    """Copy the files a receiver needs from the bundle root ``root`` into ``stage``."""
    for item in CONTENTS:
        source = root / item
        if not source.exists():
            raise ExportError(f"{source}: missing from the bundle root; the exported bundle needs it")
        if source.is_dir():
            shutil.copytree(source, stage / item, ignore=_ignore_caches)
        else:
            shutil.copy2(source, stage / item)


def _record_network(stage: Path, settings: dict) -> None:
    """Make the exported train.json defaults and metadata shapes those of the shipped checkpoint."""
    train_path = stage / "configs" / "train.json"
    train = json.loads(train_path.read_text())
    for setting, key in SETTING_KEYS.items():
        if setting in settings and key in train:
            train[key] = settings[setting]
    train_path.write_text(json.dumps(train, indent=4) + "\n")

    metadata_path = stage / "configs" / "metadata.json"
    metadata = json.loads(metadata_path.read_text())
    if "image_size" in settings:
        size = int(settings["image_size"])
        for section in ("inputs", "outputs"):
            for tensor in metadata["network_data_format"][section].values():
                tensor["spatial_shape"] = [size, size]
    metadata_path.write_text(json.dumps(metadata, indent=4) + "\n")


def _zip_folder(folder: Path, destination: Path) -> None:
    """Zip ``folder`` (as the single top folder of the archive) into ``destination`` atomically."""
    partial = destination.with_name(destination.name + ".partial")
    with zipfile.ZipFile(partial, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        for path in sorted(folder.rglob("*")):
            arcname = path.relative_to(folder.parent).as_posix()
            archive.write(path, arcname + "/" if path.is_dir() else arcname)
    os.replace(partial, destination)


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as file:
        for block in iter(lambda: file.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def shipped_weights(root: Path, checkpoint: str | os.PathLike | None = None) -> Path:
    """The checkpoint an export ships: ``checkpoint``, else ``models/model.pt``, else the demo checkpoint that
    ``configs/inference.json`` names in ``demo_ckpt_path`` when it exists (else ``models/model.pt``, missing)."""
    if checkpoint:
        return Path(checkpoint)
    trained = root / "models" / "model.pt"
    if trained.is_file():
        return trained
    from monai.bundle import ConfigParser

    parser = ConfigParser()
    try:
        parser.read_config(str(root / "configs" / "inference.json"))
    except (OSError, ValueError):  # no bundle here: export_bundle names what is missing
        return trained
    if "demo_ckpt_path" not in parser:  # a bundle from before the demo checkpoint: nothing to fall back on
        return trained
    parser["bundle_root"] = str(root)
    demo = Path(parser.get_parsed_content("demo_ckpt_path"))
    return demo if demo.is_file() else trained


def export_bundle(
    bundle_root: str | os.PathLike = ".",
    output_dir: str | os.PathLike = "dist",
    checkpoint: str | os.PathLike | None = None,
    torchscript: bool | str = False,
    allow_random_weights: bool | str = False,
) -> Path:
    """Write ``<output_dir>/<name>_v<version>.zip`` and ``<zip>.sha256``; return the zip's path.

    Args:
        bundle_root: the bundle to export (this repository by default).
        output_dir: where the zip goes.
        checkpoint: the weights to ship as ``models/model.pt`` (default: :func:`shipped_weights`).
        torchscript: also ship ``models/model.ts`` (MONAI's ``ckpt_export``).
        allow_random_weights: export without trained weights (the receiver's inference warns it has none).

    Raises:
        ExportError: missing metadata, version without a changelog entry, missing files, or no checkpoint.
        CheckpointError: the checkpoint cannot be read.
    """
    root = Path(bundle_root).resolve()
    name, version = bundle_identity(root / "configs" / "metadata.json")
    weights = shipped_weights(root, checkpoint)
    settings = None
    if weights.is_file():
        settings = network_settings(weights)
        if not settings:
            raise ExportError(
                f"{weights}: the checkpoint does not record the network it was trained with (backbone, image size); "
                "train again with this bundle, which records it"
            )
    elif not flag(allow_random_weights, "allow_random_weights"):
        raise ExportError(f"{weights}: no trained weights to export; train first, or pass --allow_random_weights true")
    if flag(torchscript, "torchscript") and settings is None:
        raise ExportError("--torchscript true needs trained weights to convert")

    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    destination = out / f"{name}_v{version}.zip"
    with tempfile.TemporaryDirectory(dir=out, prefix=".export-") as tmp:
        stage = Path(tmp) / name
        stage.mkdir()
        _stage(root, stage)
        (stage / "models").mkdir()
        if settings is not None:
            shutil.copy2(weights, stage / "models" / "model.pt")
            _record_network(stage, settings)
            if flag(torchscript, "torchscript"):
                configs = stage / "configs"
                export_torchscript(
                    stage / "models" / "model.pt",
                    stage / "models" / "model.ts",
                    config_file=configs / "inference.json",
                    meta_file=configs / "metadata.json",
                )
        _zip_folder(stage, destination)
    (destination.with_name(destination.name + ".sha256")).write_text(f"{sha256(destination)}  {destination.name}\n")
    return destination


def main(
    bundle_root: str = ".",
    output_dir: str = "dist",
    checkpoint: str | None = None,
    torchscript: bool | str = False,
    allow_random_weights: bool | str = False,
) -> None:
    """Export the bundle as dist/<name>_v<version>.zip (see the module docstring).

    Args:
        bundle_root: the bundle to export.
        output_dir: where the zip and its .sha256 go.
        checkpoint: the weights to ship as models/model.pt (default: models/model.pt, else the demo model).
        torchscript: also ship models/model.ts.
        allow_random_weights: export without trained weights.
    """
    root = Path(bundle_root).resolve()
    try:
        weights = shipped_weights(root, checkpoint)  # chosen once here, so the notice names what was shipped
        path = export_bundle(root, output_dir, weights, torchscript, allow_random_weights)
    except BundleError as err:
        print(f"ERROR {err}", file=sys.stderr)
        raise SystemExit(err.exit_code) from None
    if not checkpoint and weights.is_file() and weights != root / "models" / "model.pt":
        print(f"no models/model.pt was trained: shipped the demo checkpoint {weights} as models/model.pt")
    print(f"wrote {path} (sha256 {path.with_name(path.name + '.sha256').read_text().split()[0]})")


if __name__ == "__main__":
    fire.Fire(main)
