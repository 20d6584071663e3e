"""Export the bundle as a zip shaped like a MONAI model-zoo bundle, for ``python -m monai.bundle download --url``.

    python -m scripts.export_bundle                         # dist/<name>_v<version>.zip (+ .sha256)
    python -m scripts.export_bundle --torchscript true      # adds models/model.ts
    python -m scripts.export_bundle --checkpoint other.pt   # ship another checkpoint as models/model.pt

Without ``--checkpoint`` it ships the bundle's ``models/model.pt``, or, when none was trained, the demo checkpoint
that ``configs/inference.json`` falls back to (``demo_ckpt_path``), so that a fresh clone exports a zip that MONAI
Label serves with working weights.

The zip holds one folder, ``<name>/``: ``configs/``, ``models/model.pt``, ``docs/``, ``LICENSE``, the ``bundle/`` code
the configs import, ``sample_data/`` so the receiver's default training command runs, and a ``README.md`` written for
the receiver (install, commands, trust). ``<name>`` is ``bundle_name`` and the version is ``version`` of
``configs/metadata.json``, whose ``changelog`` must describe that version; a zip of that version with other content
is never overwritten (a shared version must not change).

``models/model.pt`` is a plain state_dict carrying the checkpoint's record (``bundle.checkpoint``; the demo's older
layout is converted), so MONAI's ``load``, ``ckpt_export`` and ``onnx_export`` read it without options. The record
describes the zip: the network settings become the defaults of ``configs/inference.json`` (``network_defaults``) and
``configs/train.json``, so inference, ``monai.bundle.load`` and fine-tuning build the same network without
``--backbone``; ``metadata.json`` gets the true description, data source, figures (``eval_metrics``) and shapes.
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
from typing import NamedTuple

import fire
import torch

from bundle.checkpoint import (
    RECORD_KEY,
    model_record,
    read_checkpoint,
    recorded_state_dict,
    synthetic_sample_warning,
    unwrap_state_dict,
)
from bundle.config import flag
from bundle.errors import BundleError
from bundle.export import SETTING_KEYS, export_torchscript

CONTENTS = ("configs", "bundle", "docs", "sample_data", "LICENSE")
NAME_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")
# derived from models/model.pt and the shipped code and configs, and not byte-for-byte reproducible (TorchScript)
DERIVED = ("models/model.ts",)
# every file of the zip gets this time, so that exporting the same bundle twice writes the same bytes
ZIP_TIME = (1980, 1, 1, 0, 0, 0)


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


def _read_json(path: Path) -> dict:
    return json.loads(path.read_text(encoding="utf-8"))


def _write_json(path: Path, content: dict) -> None:
    path.write_text(json.dumps(content, indent=4) + "\n", encoding="utf-8")


def _ship_weights(weights: Path, destination: Path, record: dict) -> None:
    """Write ``weights`` to ``destination`` as a plain state_dict carrying ``record`` (a checkpoint already in that
    layout is copied as it is; the older ``{"model": ..., "network": ...}`` layout, like the demo's, is converted)."""
    checkpoint = read_checkpoint(weights)
    state = unwrap_state_dict(checkpoint)
    if state is None:
        raise ExportError(f"{weights}: holds no state_dict (a mapping of parameter names to tensors)")
    if RECORD_KEY in (getattr(checkpoint, "_metadata", None) or {}) and state.keys() == checkpoint.keys():
        shutil.copy2(weights, destination)
    else:
        torch.save(recorded_state_dict(state, record), destination)


def _record_network(stage: Path, settings: dict) -> None:
    """Make the exported configs build the shipped checkpoint's network wherever they are run from: its settings
    become inference.json's ``network_defaults`` (what a config uses when it finds no checkpoint, e.g.
    ``monai.bundle.load`` started from another folder) and train.json's defaults (what fine-tuning builds)."""
    inference_path = stage / "configs" / "inference.json"
    inference = _read_json(inference_path)
    if isinstance(inference.get("network_defaults"), dict):
        inference["network_defaults"] = {**inference["network_defaults"], **settings}
        _write_json(inference_path, inference)

    train_path = stage / "configs" / "train.json"
    train = _read_json(train_path)
    for setting, key in SETTING_KEYS.items():
        if setting in settings and key in train:
            train[key] = settings[setting]
    _write_json(train_path, train)


_NETWORKS = {"rfeunet": "RFE U-Net", "flexibleunet": "MONAI's FlexibleUNet", "basicunet": "MONAI's BasicUNet"}


def _network_phrase(settings: dict) -> str:
    """E.g. "RFE U-Net, ResNet-34 encoder, 128x128 input"."""
    name = settings.get("name", "rfeunet")
    parts = [_NETWORKS.get(name, str(name))]
    if name != "basicunet" and settings.get("backbone"):
        parts.append(f"{str(settings['backbone']).replace('resnet', 'ResNet-')} encoder")
    if name == "rfeunet" and settings.get("rfe") is False:
        parts.append("plain skip connections (no RFE modules)")
    if settings.get("image_size"):
        parts.append(f"{settings['image_size']}x{settings['image_size']} input")
    return ", ".join(parts)


def _short_folder(path: str) -> str:
    """The last two parts of a folder: enough to recognise it without publishing the sender's whole path."""
    parts = Path(path).parts
    return "/".join(parts[-2:]) if parts else "?"


def describe_data(record: dict) -> str:
    """What the shipped weights were trained on, in one phrase."""
    about, data = record.get("about") or {}, record.get("data") or {}
    if about.get("data"):
        return str(about["data"])
    if not data:
        return "data the checkpoint does not record"
    pairs = f"{data.get('training_pairs', '?')} training and {data.get('validation_pairs', '?')} validation pairs"
    if data.get("synthetic_sample"):
        return f"the embedded SYNTHETIC sample ({pairs} of drawn blobs, no real photographs)"
    source = f"datalist {Path(data['datalist']).name}" if data.get("datalist") else f"{_short_folder(data['dataset'])}/"
    return f"{pairs} from {source}"


def model_scores(record: dict) -> tuple[dict, str]:
    """The shipped weights' figures for ``eval_metrics`` and the phrase saying where they come from."""
    about, scores = record.get("about") or {}, record.get("scores") or {}
    evaluation = (about.get("evaluation") or {}).get("original")
    if evaluation:
        metrics = {"val_mean_dice": evaluation["mDice"], "val_mean_iou": evaluation["mIoU"]}
        where = f"on {evaluation.get('n_images', '?')} held-out photographs at their own size"
    elif scores:
        metrics = {key: value for key, value in scores.items() if key != "epoch"}
        where = f"on the validation pairs at epoch {scores.get('epoch', '?')}"
    else:
        return {}, "no recorded scores"
    figures = ", ".join(f"{key} {value:.4f}" for key, value in metrics.items())
    return {key: round(float(value), 4) for key, value in metrics.items()}, f"{figures} {where}"


def describe_model(metadata: dict, record: dict) -> dict:
    """``metadata`` rewritten to describe the shipped weights: description, data source, figures and tensor shapes.

    Everything comes from the checkpoint's record (:mod:`bundle.checkpoint`): its network settings, the data it was
    trained on, its recipe and scores, and, for the demo, its ``about`` provenance.
    """
    settings = record["network"]
    metadata = json.loads(json.dumps(metadata))
    metrics, where = model_scores(record)
    recipe = (record.get("about") or {}).get("recipe") or ", ".join(
        f"{key} {value}" for key, value in (record.get("recipe") or {}).items() if value not in ("", None)
    )
    size = settings.get("image_size")
    metadata["description"] = " ".join(
        part
        for part in (
            "Delineates the skin lesion in an RGB dermoscopy photograph with a U-shaped network"
            f" ({_network_phrase(settings)}).",
            "Its skip connections are Receptive Field Enhancement modules built from YOLOv8's SPPF and C2f blocks"
            " (Zarrin & Nikkhah, JADM 2025)."
            if settings.get("name", "rfeunet") == "rfeunet" and settings.get("rfe", True)
            else "",
            f"Photographs of any size are resized to {size}x{size}; masks come back at the photograph's own size."
            if size
            else "",
            f"Shipped weights: trained on {describe_data(record)}" + (f"; recipe: {recipe}" if recipe else "") + ";",
            f"{where}.",
            "Research use only; not a medical device.",
        )
        if part
    )
    metadata["data_source"] = describe_data(record)
    metadata["eval_metrics"] = metrics
    image = metadata["network_data_format"]["inputs"]["image"]
    pred = metadata["network_data_format"]["outputs"]["pred"]
    if size:
        image["spatial_shape"] = pred["spatial_shape"] = [size, size]
    if "in_channels" in settings:
        image["num_channels"] = int(settings["in_channels"])
        for index in range(3, image["num_channels"]):
            image["channel_def"].setdefault(str(index), f"extra input {index - 2}")
    if "out_channels" in settings:
        pred["num_channels"] = int(settings["out_channels"])
    return metadata


RECEIVER_README = """# {title} — MONAI bundle `{name}` v{version}

{description}

Model card (training recipe, measured results, limitations): [docs/README.md](docs/README.md). Release notes:
`changelog` in `configs/metadata.json`. **Research use only — not a medical device and not for diagnosis.**

## Install

Python ≥ 3.10 with PyTorch, MONAI and the packages the bundle was tested with (`configs/metadata.json`):

    python -m pip install {packages}

(tested with {tested}). Nothing else is installed: run the commands below from this folder, where MONAI's runner
imports the bundle's own code in `bundle/`.

## Use

    # segment photographs: <photo>_mask.png (0/255, the photo's size) per photo in masks/
    python -m monai.bundle run --config_file configs/inference.json --dataset_dir /path/to/photos --output_dir masks

    # train or fine-tune on your own images/ and masks/ (or a datalist.json): see docs/README.md
    python -m monai.bundle run training --config_file configs/train.json --dataset_dir /path/to/data

`models/model.pt` is a plain PyTorch state_dict; the network it fits is described in `configs/metadata.json` and
built by `configs/inference.json`, so MONAI's own tools work without options, e.g. from Python
(`sys.path` must hold this folder, since the configs import `bundle`):

    import sys, monai
    sys.path.insert(0, "/path/to/{name}")
    net = monai.bundle.load(name="{name}", bundle_dir="/path/to", workflow_type="inference")
    from bundle.inference import LesionSegmenter
    mask = LesionSegmenter(bundle_root="/path/to/{name}").segment("photo.jpg")["pred"]

(`monai.bundle.load` takes the working directory as the bundle root, as for any bundle: start it from a folder that
holds no other `models/model.pt`.) `python -m monai.bundle ckpt_export network_def --filepath models/model.ts
--ckpt_file models/model.pt --meta_file configs/metadata.json --config_file configs/inference.json` writes
TorchScript, `onnx_export` the same way writes ONNX.

## Before you run it

A bundle is a program: MONAI evaluates the `"$..."` values of `configs/*.json` as Python and `bundle/` runs on
import. Run bundles only from people you trust, and compare `sha256sum {name}_v{version}.zip` with the hash the
sender gives you through another channel.
"""


def receiver_readme(metadata: dict) -> str:
    """The README.md of the zip: what the bundle is, what to install and the commands, for someone without this
    repository (the repository's README describes a development checkout: ``pip install -e``, tests, CI)."""
    packages = {"torch": metadata.get("pytorch_version"), "monai": metadata.get("monai_version")}
    packages.update(metadata.get("required_packages_version", {}))
    packages["numpy"] = metadata.get("numpy_version")
    return RECEIVER_README.format(
        title=metadata.get("name", metadata["bundle_name"]),
        name=metadata["bundle_name"],
        version=metadata["version"],
        description=metadata.get("description", ""),
        packages=" ".join(packages),
        tested=", ".join(f"{name} {version}" for name, version in packages.items() if version),
    )


def _zip_folder(folder: Path, destination: Path) -> None:
    """Zip ``folder`` (as the single top folder of the archive) into ``destination``, the same bytes for the same
    files: sorted names, one timestamp, fixed permissions."""
    with zipfile.ZipFile(destination, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        for path in sorted(folder.rglob("*")):
            arcname = path.relative_to(folder.parent).as_posix() + ("/" if path.is_dir() else "")
            info = zipfile.ZipInfo(arcname, date_time=ZIP_TIME)
            info.external_attr = (0o40755 if path.is_dir() else 0o100644) << 16
            info.compress_type = zipfile.ZIP_DEFLATED
            archive.writestr(info, b"" if path.is_dir() else path.read_bytes())


def _members(path: Path) -> dict[str, tuple[int, int]]:
    with zipfile.ZipFile(path) as archive:
        return {info.filename: (info.CRC, info.file_size) for info in archive.infolist()}


def differing_members(old: Path, new: Path) -> list[str]:
    """The members in which two exports differ (added, removed or changed), derived files compared by presence."""
    before, after = _members(old), _members(new)
    return [
        name
        for name in sorted(before.keys() | after.keys())
        if (name in before) != (name in after)
        or (before[name] != after[name] and not name.endswith(DERIVED) and not name.endswith("/"))
    ]


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


class Export(NamedTuple):
    """What an export wrote: the zip, the record of the weights it ships (None: none), and whether an identical zip
    of the same version was already there (then it is left as it was)."""

    path: Path
    record: dict | None
    unchanged: bool


def _shipped_record(weights: Path, allow_random_weights: object) -> dict | None:
    """The record of the weights to ship; None when there are none and random weights are allowed.

    Raises:
        ExportError: weights that record no network, or none where they are required.
    """
    if weights.is_file():
        record = model_record(weights)
        if not record or not record.get("network"):
            raise ExportError(
                f"{weights}: the checkpoint does not record the network it was trained with (backbone, image size); "
                "train again with this bundle, which records it"
            )
        return record
    if not flag(allow_random_weights, "allow_random_weights"):
        raise ExportError(f"{weights}: no trained weights to export; train first, or pass --allow_random_weights true")
    return None


def export_bundle(
    bundle_root: str | os.PathLike = ".",
    output_dir: str | os.PathLike = "dist",
    checkpoint: str | os.PathLike | None = None,
    torchscript: bool | str = False,
    allow_random_weights: bool | str = False,
) -> Export:
    """Write ``<output_dir>/<name>_v<version>.zip`` and ``<zip>.sha256``.

    Args:
        bundle_root: the bundle to export (this repository by default).
        output_dir: where the zip goes.
        checkpoint: the weights to ship as ``models/model.pt`` (default: :func:`shipped_weights`).
        torchscript: also ship ``models/model.ts`` (MONAI's ``ckpt_export``).
        allow_random_weights: export without trained weights (the receiver's inference warns it has none).

    Raises:
        ExportError: missing metadata, version without a changelog entry, missing files, no checkpoint, or a zip of
            the same version with other content already in ``output_dir`` (a published version never changes).
        CheckpointError: the checkpoint cannot be read.
    """
    root = Path(bundle_root).resolve()
    name, version = bundle_identity(root / "configs" / "metadata.json")
    weights = shipped_weights(root, checkpoint)
    record = _shipped_record(weights, allow_random_weights)
    if flag(torchscript, "torchscript") and record is None:
        raise ExportError("--torchscript true needs trained weights to convert")

    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    destination = out / f"{name}_v{version}.zip"
    with tempfile.TemporaryDirectory(dir=out, prefix=".export-") as tmp:
        stage = Path(tmp) / name
        stage.mkdir()
        _stage(root, stage)
        (stage / "models").mkdir()
        configs = stage / "configs"
        metadata = _read_json(configs / "metadata.json")
        if record is not None:
            _ship_weights(weights, stage / "models" / "model.pt", record)
            _record_network(stage, record["network"])
            metadata = describe_model(metadata, record)
        else:
            metadata["description"] = metadata["description"].split(" Shipped weights:")[0] + (
                " No trained weights are shipped: train first (configs/train.json)."
            )
            metadata["eval_metrics"] = {}
        _write_json(configs / "metadata.json", metadata)
        (stage / "README.md").write_text(receiver_readme(metadata), encoding="utf-8")
        if flag(torchscript, "torchscript"):
            export_torchscript(
                stage / "models" / "model.pt",
                stage / "models" / "model.ts",
                config_file=configs / "inference.json",
                meta_file=configs / "metadata.json",
            )
        partial = Path(tmp) / destination.name
        _zip_folder(stage, partial)
        if destination.exists():
            differing = differing_members(destination, partial)
            if differing:
                shown = ", ".join(n.split("/", 1)[-1] for n in differing[:3]) + (" ..." if len(differing) > 3 else "")
                raise ExportError(
                    f"{destination}: version {version} was already exported with other content ({shown} differ); a "
                    f"shared version must not change: raise 'version' in configs/metadata.json and add a "
                    f"'changelog' entry for it (e.g. {_next_version(version)}), or delete {destination.name} if it "
                    "was never shared"
                )
            return Export(destination, record, unchanged=True)
        os.replace(partial, destination)
    (destination.with_name(destination.name + ".sha256")).write_text(f"{sha256(destination)}  {destination.name}\n")
    return Export(destination, record, unchanged=False)


def _next_version(version: str) -> str:
    parts = version.split(".")
    return ".".join([*parts[:-1], str(int(parts[-1]) + 1)]) if parts[-1].isdigit() else f"{version}.1"


def summary(weights: Path, record: dict) -> str:
    """One line naming the shipped checkpoint: its network, its data and its figures."""
    return (
        f"shipped {weights} as models/model.pt: {_network_phrase(record['network'])}, trained on "
        f"{describe_data(record)}; {model_scores(record)[1]}"
    )


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
        export = export_bundle(root, output_dir, weights, torchscript, allow_random_weights)
    except BundleError as err:
        print(f"ERROR {err}", file=sys.stderr)
        raise SystemExit(err.exit_code) from None
    if export.record is not None:
        if not checkpoint and weights != root / "models" / "model.pt":
            print(f"no models/model.pt was trained: shipping the demo checkpoint {weights}")
        print(summary(weights, export.record))
        warning = synthetic_sample_warning(weights)
        if warning:
            print(f"WARNING {warning.lstrip('! ')}", file=sys.stderr)
    else:
        print("shipped no weights (--allow_random_weights true): the receiver's inference runs on random weights")
    path = export.path
    digest = path.with_name(path.name + ".sha256").read_text().split()[0]
    print(f"{'unchanged: an identical' if export.unchanged else 'wrote'} {path} (sha256 {digest})")


if __name__ == "__main__":
    fire.Fire(main)
