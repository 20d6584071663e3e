"""Export the bundle as a zip shaped like a MONAI model-zoo bundle, for ``python -m monai.bundle download --url``.

    python -m scripts.export_bundle                         # dist/<name>_v<version>.zip (+ .sha256)
    python -m scripts.export_bundle --torchscript true      # adds models/model.ts
    python -m scripts.export_bundle --checkpoint other.pt   # ship another checkpoint as models/model.pt
    python -m scripts.export_bundle --interactive true      # dist/<name>_deepedit_v<version>.zip: a click-guided model

Without ``--checkpoint`` it ships the bundle's ``models/model.pt``, or, when none was trained, the demo checkpoint
that ``configs/inference.json`` falls back to (``demo_ckpt_path``), so that a fresh clone exports a zip that MONAI
Label serves with working weights.

An interactive export (``--interactive true``; the default ``auto`` makes one whenever the shipped checkpoint is
click-guided) ships a network that takes the user's clicks: ``--checkpoint``, else ``models/model.pt`` when it is
click-guided, else the interactive demo checkpoint (``interactive_demo_ckpt_path`` of ``configs/inference.json``).
Its folder and ``bundle_name`` end in ``_deepedit``, which is what makes MONAI Label's stock ``monaibundle`` app
serve it twice: ``<name>_deepedit_seg`` (automatic) and ``<name>_deepedit`` (a DeepEdit model taking 3D Slicer's
points; see "MONAI Label" in docs/design.md). A checkpoint whose network takes no clicks is refused.

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
from bundle.errors import BundleError, ConfigError
from bundle.export import SETTING_KEYS, export_torchscript
from scripts.export_card import (
    describe_data,
    describe_model,
    is_click_guided,
    model_scores,
    network_phrase,
    receiver_readme,
)

CONTENTS = ("configs", "bundle", "docs", "sample_data", "LICENSE")
NAME_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")
# derived from models/model.pt and the shipped code and configs, and not byte-for-byte reproducible (TorchScript)
DERIVED = ("models/model.ts",)
# every file of the zip gets this time, so that exporting the same bundle twice writes the same bytes
ZIP_TIME = (1980, 1, 1, 0, 0, 0)
# MONAI Label's monaibundle app serves a bundle whose name contains "deepedit" as a DeepEdit model (and "_seg")
INTERACTIVE_SUFFIX = "_deepedit"


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


def _inference_path(root: Path, key: str) -> Path | None:
    """The path ``key`` of the bundle's ``configs/inference.json`` names (None: no such config or key)."""
    from monai.bundle import ConfigParser

    parser = ConfigParser()
    try:
        parser.read_config(str(root / "configs" / "inference.json"))
    except (OSError, ValueError):  # no bundle here: export_bundle names what is missing
        return None
    if key not in parser:  # a bundle from before that key
        return None
    parser["bundle_root"] = str(root)
    return Path(parser.get_parsed_content(key))


def shipped_weights(
    root: Path, checkpoint: str | os.PathLike | None = None, interactive: bool | str | None = None
) -> Path:
    """The checkpoint an export ships: ``checkpoint``, else ``models/model.pt``, else the demo checkpoint that
    ``configs/inference.json`` names in ``demo_ckpt_path`` when it exists (else ``models/model.pt``, missing).

    With ``interactive`` true: ``checkpoint``, else ``models/model.pt`` when it is click-guided, else the interactive
    demo (``interactive_demo_ckpt_path``) when it exists, else ``models/model.pt`` (which the export then refuses).
    """
    if checkpoint:
        return Path(checkpoint)
    trained = root / "models" / "model.pt"
    if _interactive_choice(interactive) is True:
        if is_click_guided(model_record(trained)):
            return trained
        demo = _inference_path(root, "interactive_demo_ckpt_path")
        return demo if demo is not None and demo.is_file() else trained
    if trained.is_file():
        return trained
    demo = _inference_path(root, "demo_ckpt_path")
    return demo if demo is not None and demo.is_file() else trained


def _interactive_choice(interactive: bool | str | None) -> bool | None:
    """``interactive`` as True / False, or None for ``auto`` (interactive when the checkpoint is click-guided)."""
    if interactive is None or (isinstance(interactive, str) and interactive.strip().lower() == "auto"):
        return None
    try:
        return flag(interactive, "interactive")
    except ConfigError:
        raise ConfigError(f"--interactive {interactive!r}: use true, false or auto") from None


class Export(NamedTuple):
    """What an export wrote: the zip, the record of the weights it ships (None: none), whether an identical zip
    of the same version was already there (then it is left as it was), and whether it is an interactive bundle."""

    path: Path
    record: dict | None
    unchanged: bool
    interactive: bool = False


def _shipped_record(root: Path, weights: Path, allow_random_weights: object, interactive: bool | None) -> dict | None:
    """The record of the weights to ship; None when there are none and random weights are allowed.

    Raises:
        ExportError: weights that record no network, or none where they are required (an interactive bundle
            always needs them).
    """
    if weights.is_file():
        record = model_record(weights)
        if not record or not record.get("network"):
            raise ExportError(
                f"{weights}: the checkpoint does not record the network it was trained with (backbone, image size); "
                "train again with this bundle, which records it"
            )
        return record
    if interactive:
        demo = _inference_path(root, "interactive_demo_ckpt_path") or "interactive_demo_ckpt_path"
        raise ExportError(
            f"{weights}: no such checkpoint; an interactive bundle needs a click-guided one: a models/model.pt trained "
            f"with configs/interactive.json, the interactive demo {demo}, or --checkpoint"
        )
    if not flag(allow_random_weights, "allow_random_weights"):
        raise ExportError(f"{weights}: no trained weights to export; train first, or pass --allow_random_weights true")
    return None


def _fill_stage(root: Path, stage: Path, weights: Path, record: dict | None, torchscript: bool) -> None:
    """The zip's files in ``stage`` (named after the bundle): the bundle's files, the weights with their network
    written into the configs, ``metadata.json`` and the receiver's README describing them, and the TorchScript."""
    _stage(root, stage)
    (stage / "models").mkdir()
    configs = stage / "configs"
    metadata = _read_json(configs / "metadata.json")
    metadata["bundle_name"] = stage.name
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
    if torchscript:
        export_torchscript(
            stage / "models" / "model.pt",
            stage / "models" / "model.ts",
            config_file=configs / "inference.json",
            meta_file=configs / "metadata.json",
        )


def export_bundle(
    bundle_root: str | os.PathLike = ".",
    output_dir: str | os.PathLike = "dist",
    checkpoint: str | os.PathLike | None = None,
    torchscript: bool | str = False,
    allow_random_weights: bool | str = False,
    interactive: bool | str | None = None,
) -> Export:
    """Write ``<output_dir>/<name>_v<version>.zip`` and ``<zip>.sha256``.

    Args:
        bundle_root: the bundle to export (this repository by default).
        output_dir: where the zip goes.
        checkpoint: the weights to ship as ``models/model.pt`` (default: :func:`shipped_weights`).
        torchscript: also ship ``models/model.ts`` (MONAI's ``ckpt_export``).
        allow_random_weights: export without trained weights (the receiver's inference warns it has none).
        interactive: export ``<name>_deepedit``, the click-guided bundle MONAI Label serves as a DeepEdit model;
            None or ``"auto"``: when the shipped checkpoint is click-guided.

    Raises:
        ExportError: missing metadata, version without a changelog entry, missing files, no checkpoint, an
            interactive export of a network that takes no clicks, or a zip of the same version with other content
            already in ``output_dir`` (a published version never changes).
        CheckpointError: the checkpoint cannot be read.
    """
    root = Path(bundle_root).resolve()
    name, version = bundle_identity(root / "configs" / "metadata.json")
    wanted = _interactive_choice(interactive)
    weights = shipped_weights(root, checkpoint, wanted)
    record = _shipped_record(root, weights, allow_random_weights, wanted)
    if wanted and not is_click_guided(record):
        raise ExportError(
            f"{weights}: its network takes no clicks (no guidance channels), so it cannot be an interactive bundle; "
            "export it without --interactive, or give a click-guided checkpoint (trained with configs/interactive.json)"
        )
    interactive = is_click_guided(record) if wanted is None else wanted
    if interactive:
        name += INTERACTIVE_SUFFIX
    if flag(torchscript, "torchscript") and record is None:
        raise ExportError("--torchscript true needs trained weights to convert")

    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    destination = out / f"{name}_v{version}.zip"
    with tempfile.TemporaryDirectory(dir=out, prefix=".export-") as tmp:
        stage = Path(tmp) / name
        stage.mkdir()
        _fill_stage(root, stage, weights, record, flag(torchscript, "torchscript"))
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
            return Export(destination, record, unchanged=True, interactive=interactive)
        os.replace(partial, destination)
    (destination.with_name(destination.name + ".sha256")).write_text(f"{sha256(destination)}  {destination.name}\n")
    return Export(destination, record, unchanged=False, interactive=interactive)


def _next_version(version: str) -> str:
    parts = version.split(".")
    return ".".join([*parts[:-1], str(int(parts[-1]) + 1)]) if parts[-1].isdigit() else f"{version}.1"


def summary(weights: Path, record: dict) -> str:
    """One line naming the shipped checkpoint: its network, its data and its figures."""
    return (
        f"shipped {weights} as models/model.pt: {network_phrase(record['network'])}, trained on "
        f"{describe_data(record)}; {model_scores(record)[1]}"
    )


def main(
    bundle_root: str = ".",
    output_dir: str = "dist",
    checkpoint: str | None = None,
    torchscript: bool | str = False,
    allow_random_weights: bool | str = False,
    interactive: bool | str = "auto",
) -> None:
    """Export the bundle as dist/<name>_v<version>.zip (see the module docstring).

    Args:
        bundle_root: the bundle to export.
        output_dir: where the zip and its .sha256 go.
        checkpoint: the weights to ship as models/model.pt (default: models/model.pt, else the demo model).
        torchscript: also ship models/model.ts.
        allow_random_weights: export without trained weights.
        interactive: true: dist/<name>_deepedit_v<version>.zip, a click-guided model MONAI Label serves as DeepEdit
            (default: models/model.pt if click-guided, else the interactive demo); auto: when the model is one.
    """
    root = Path(bundle_root).resolve()
    try:
        # chosen once here, so the notice names what was shipped
        weights = shipped_weights(root, checkpoint, _interactive_choice(interactive))
        export = export_bundle(root, output_dir, weights, torchscript, allow_random_weights, interactive)
    except BundleError as err:
        print(f"ERROR {err}", file=sys.stderr)
        raise SystemExit(err.exit_code) from None
    if export.record is not None:
        if not checkpoint and weights != root / "models" / "model.pt":
            trained = (root / "models" / "model.pt").is_file()
            print(
                f"models/model.pt takes no clicks: shipping the interactive demo checkpoint {weights}"
                if trained and export.interactive
                else f"no models/model.pt was trained: shipping the "
                f"{'interactive ' if export.interactive else ''}demo checkpoint {weights}"
            )
        print(summary(weights, export.record))
        if export.interactive:
            name = export.path.name.rsplit("_v", 1)[0]
            print(
                f"interactive bundle {name}: MONAI Label serves it as {name} (DeepEdit: the user's points) and "
                f"{name}_seg (automatic); scripts/monailabel_serve.sh {export.path} /path/to/photos"
            )
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
