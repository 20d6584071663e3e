"""Checkpoints that know their network: reading, unwrapping, the recorded settings, and loading into a network.

Training writes ``models/model.pt`` as a plain state_dict (through :class:`NetworkCheckpoint`), the layout every
MONAI tool reads without options (``monai.bundle.load``, ``ckpt_export``, ``onnx_export``, MONAI Label). The record
of the model travels inside the same file, in the state_dict's ``_metadata`` (where PyTorch keeps its per-module
version numbers and which ``load_state_dict`` reads by module name only) under :data:`RECORD_KEY`: a dict with

- ``network``: what builds the network (``name``, ``backbone``, ``rfe``, ``in_channels``, ``out_channels``,
  ``image_size``, ``pixel_mean``, ``pixel_std``, and any key a network adds; unknown keys pass through);
- ``data``: what it learnt from (:func:`bundle.data.describe_training_data`);
- ``scores``: its validation metrics when it was saved, with the epoch;
- ``recipe``: how it was trained (loss, epochs, batch size, learning rate, seed, ...);
- ``about``: free text (the demo's provenance).

All plain values, so ``torch.load(weights_only=True)`` reads it. :func:`network_settings` and
:func:`training_data` read it, and the older layout ``{"model": <state_dict>, "network": <settings>}`` as well; bare
state_dicts of other tools still load (with no settings).

Every checkpoint is read by :func:`read_checkpoint` with ``weights_only=True``: a file holding anything but tensors
and plain values is refused, never retried in a mode that would run code from it.
"""

from __future__ import annotations

import json
import logging
import os
import pickle
import re
import warnings
import zipfile
from collections import OrderedDict
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from bundle.errors import CheckpointError, CheckpointMismatchError, MissingCheckpointError
from bundle.networks.registry import BACKBONES

__all__ = [
    "NetworkCheckpoint",
    "check_settings",
    "first_existing",
    "init_from",
    "load_weights",
    "model_record",
    "network_settings",
    "plain_values",
    "read_checkpoint",
    "recorded_settings",
    "recorded_state_dict",
    "synthetic_sample_warning",
    "training_data",
    "unwrap_state_dict",
    "wrapper_key",
]

logger = logging.getLogger(__name__)

# Keys under which other tools wrap a state_dict, tried in this order.
WRAPPER_KEYS = ("model", "state_dict", "network")
_DDP_PREFIX = "module."
# The entry of a state_dict's ``_metadata`` that holds this bundle's record; no module can have this name.
RECORD_KEY = "@rfe_unet_bundle"


def read_checkpoint(path: str | os.PathLike, map_location: Any = "cpu", mmap: bool = False) -> Any:
    """``torch.load(path, weights_only=True)``, with one clear :class:`CheckpointError` for files it cannot read.

    Args:
        path: the checkpoint file.
        map_location: as for ``torch.load``.
        mmap: map the tensors instead of reading them (cheap when only the settings are wanted); ignored for files
            in torch's legacy format, which cannot be mapped.

    Raises:
        MissingCheckpointError: ``path`` is not a file.
        CheckpointError: the file is empty, truncated, not a PyTorch checkpoint, or holds Python objects that
            ``weights_only`` refuses (loading those could run code, so they are never loaded).
    """
    path = Path(path)
    if not path.is_file():
        raise MissingCheckpointError(path, "no such checkpoint file")
    if path.stat().st_size == 0:
        raise CheckpointError(path, "empty file, not a PyTorch checkpoint")
    is_zip = zipfile.is_zipfile(path)
    if is_zip:
        _check_archive(path)
    try:
        with warnings.catch_warnings():  # torch's warnings about pickle protocols say nothing to a user
            warnings.simplefilter("ignore")
            return torch.load(path, map_location=map_location, weights_only=True, mmap=mmap and is_zip)
    except pickle.UnpicklingError as error:
        if "unsupported global" in str(error).lower():
            raise CheckpointError(
                path,
                "holds Python objects besides tensors and plain values; refused, since loading them could run code",
            ) from None
        raise CheckpointError(path, "not a PyTorch checkpoint, or a damaged one") from None
    except Exception as error:  # bytes that are no checkpoint make torch's unpickler raise almost any type
        # torch's own text goes on to advise weights_only=False, which would let the file run code: keep its first
        # sentence only
        first = re.split(r"(?<=\.)\s", (str(error).strip().splitlines() or [type(error).__name__])[0])[0]
        raise CheckpointError(path, f"truncated or damaged PyTorch checkpoint ({first.rstrip('.:')})") from None


def _check_archive(path: Path) -> None:
    """Refuse zip files that are not checkpoints of weights before torch reads them."""
    try:
        with zipfile.ZipFile(path) as archive:
            names = archive.namelist()
    except (zipfile.BadZipFile, OSError):
        return  # a damaged archive: torch.load names the problem
    if any(name.endswith("/constants.pkl") for name in names):
        raise CheckpointError(path, "a TorchScript program (like model.ts), not a checkpoint of weights")
    if not any(name.endswith("/data.pkl") for name in names):
        raise CheckpointError(path, "a zip archive that is not a PyTorch checkpoint")


def _is_state_dict(value: Any) -> bool:
    return (
        isinstance(value, Mapping)
        and bool(value)
        and all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in value.items())
    )


def unwrap_state_dict(checkpoint: Any) -> dict[str, torch.Tensor] | None:
    """The name → tensor mapping inside ``checkpoint``, or None when there is none.

    Accepts a bare state_dict, or one under the first of :data:`WRAPPER_KEYS` that holds one (this bundle's
    ``{"model": ..., "network": settings}``, a last checkpoint's ``{"model": ..., "optimizer": ...}``,
    ``{"state_dict": ...}`` of Lightning and torchvision-style files). DDP's ``module.`` prefix is removed.
    """
    state = checkpoint
    if not _is_state_dict(state):
        wrapped = state if isinstance(state, Mapping) else {}
        state = next((wrapped[key] for key in WRAPPER_KEYS if _is_state_dict(wrapped.get(key))), None)
    if state is None:
        return None
    return {k[len(_DDP_PREFIX) :] if k.startswith(_DDP_PREFIX) else k: v for k, v in state.items()}


def wrapper_key(checkpoint: Any) -> str:
    """The key of :data:`WRAPPER_KEYS` under which ``checkpoint`` holds its state_dict; ``""`` for a bare one."""
    if not isinstance(checkpoint, Mapping) or _is_state_dict(checkpoint):
        return ""
    return next((key for key in WRAPPER_KEYS if _is_state_dict(checkpoint.get(key))), "")


def plain_values(settings: Mapping[str, Any]) -> dict[str, Any]:
    """``settings`` as JSON-compatible values (tuples become lists), or a ValueError naming what is not."""
    try:
        return json.loads(json.dumps(dict(settings)))
    except TypeError as error:
        raise ValueError(f"network settings must be plain values: {error}") from None


def network_settings(
    path: str | os.PathLike | None, defaults: Mapping[str, Any] | None = None
) -> dict[str, Any] | None:
    """The network settings recorded in the checkpoint at ``path``; None for a bare state_dict or no file.

    Args:
        path: the checkpoint (either layout, see the module docstring).
        defaults: settings for what the checkpoint does not record (or when there is no checkpoint): the result is
            ``{**defaults, **recorded}``. Keys that neither side knows pass through untouched.

    Raises:
        CheckpointError: the file exists but cannot be read (see :func:`read_checkpoint`).
    """
    record = model_record(path)
    recorded = record.get("network") if record else None
    if defaults is None:
        return dict(recorded) if recorded else None
    return {**defaults, **(recorded or {})}


def training_data(path: str | os.PathLike | None) -> dict[str, Any] | None:
    """What the checkpoint at ``path`` records about the data it was trained on (see
    :func:`bundle.data.describe_training_data`); None when it records nothing or there is no file."""
    record = model_record(path)
    data = record.get("data") if record else None
    return dict(data) if isinstance(data, Mapping) else None


def model_record(path: str | os.PathLike | None) -> dict[str, Any] | None:
    """The whole record of the checkpoint at ``path`` (``network``, ``data``, ``scores``, ``about``, as far as
    recorded); None for no file or a checkpoint without one. The tensors are mapped, not read.

    Raises:
        CheckpointError: the file exists but cannot be read (see :func:`read_checkpoint`).
    """
    if not path or not Path(path).is_file():
        return None
    return _record(read_checkpoint(path, mmap=True))


def _record(checkpoint: Any) -> dict[str, Any] | None:
    """The record in ``checkpoint``: the state_dict's ``_metadata`` entry, or the older layout's top-level keys."""
    metadata = getattr(checkpoint, "_metadata", None)
    if isinstance(metadata, Mapping) and isinstance(metadata.get(RECORD_KEY), Mapping):
        return dict(metadata[RECORD_KEY])
    if not isinstance(checkpoint, Mapping) or _is_state_dict(checkpoint):
        return None
    settings = checkpoint.get("network")
    if not isinstance(settings, Mapping) or _is_state_dict(settings):
        return None
    record = {"network": dict(settings)}
    if isinstance(checkpoint.get("about"), Mapping):
        record["about"] = dict(checkpoint["about"])
    return record


def recorded_settings(checkpoint: Any) -> dict[str, Any] | None:
    """The network settings recorded in a checkpoint already read (:func:`read_checkpoint`), or None."""
    record = _record(checkpoint)
    return dict(record["network"]) if record and isinstance(record.get("network"), Mapping) else None


def recorded_state_dict(state: Mapping[str, torch.Tensor], record: Mapping[str, Any]) -> OrderedDict:
    """``state`` as the plain state_dict that ``models/model.pt`` holds, carrying ``record`` in its ``_metadata``.

    Raises:
        ValueError: ``record`` holds something other than plain values, or has no ``network`` settings.
    """
    record = plain_values(record)
    if not isinstance(record.get("network"), Mapping):
        raise ValueError("a model record needs the 'network' settings")
    result = OrderedDict(state)
    metadata = getattr(state, "_metadata", None)
    result._metadata = OrderedDict(metadata or {})
    result._metadata[RECORD_KEY] = {key: value for key, value in record.items() if value is not None}
    return result


def synthetic_sample_warning(path: str | os.PathLike | None) -> str | None:
    """The warning for a checkpoint trained on the embedded synthetic sample (``sample_data/``), else None.

    Such a model has seen 16 drawn blobs, not one photograph: its masks of real photographs are junk.
    """
    data = training_data(path)
    if not data or not data.get("synthetic_sample"):
        return None
    return (
        f"!!! {path} was trained on the embedded SYNTHETIC sample (sample_data/, "
        f"{data.get('training_pairs', '?')} drawn pairs, no real photographs): its masks of real photographs are "
        "meaningless. Use a model trained on real photographs: the demo model (in the project's repository: "
        "--config_file \"['configs/inference.json','configs/demo.json']\"), or train on your own data "
        "(--dataset_dir)."
    )


def first_existing(*paths: str | os.PathLike) -> str:
    """The first of ``paths`` that is a file, else the first one (whose absence the loader then reports)."""
    for index, path in enumerate(paths):
        if path and Path(path).is_file():
            if index:
                logger.info("No %s; using %s", paths[0], path)
            return str(path)
    return str(paths[0])


def _encoder_of(state: Mapping[str, torch.Tensor]) -> str | None:
    """The ResNet backbone a bare RFE U-Net state_dict was made with, judged by its blocks; None if unknown."""
    layer3 = {int(k.split(".")[2]) for k in state if k.startswith("encoder.layer3.")}
    block = "bottleneck" if any(k.startswith("encoder.layer1.0.conv3.") for k in state) else "basic"
    for name, (kind, layers) in BACKBONES.items():
        if layer3 and kind == block and layers[2] == max(layer3) + 1:
            return name
    return None


def check_settings(path: str | os.PathLike, recorded: Mapping[str, Any], expected: Mapping[str, Any]) -> None:
    """Raise :class:`CheckpointMismatchError` naming both values of every setting where the two differ."""
    differing = [
        key
        for key in expected
        if key in recorded and plain_values({"v": recorded[key]}) != plain_values({"v": expected[key]})
    ]
    if differing:
        trained = ", ".join(f"{key} {recorded[key]!r}" for key in differing)
        asked = ", ".join(f"{key} {expected[key]!r}" for key in differing)
        raise CheckpointMismatchError(
            path,
            f"trained with {trained}, but the configuration asks for {asked}; leave those options out to use "
            "the checkpoint's, or give the checkpoint that was trained with them",
        )


def load_weights(
    network: torch.nn.Module,
    ckpt_path: str | os.PathLike | None,
    map_location: Any = "cpu",
    required: bool = False,
    expected: Mapping[str, Any] | None = None,
) -> bool:
    """Load the checkpoint at ``ckpt_path`` into ``network`` (or its DDP ``module``).

    Args:
        network: the network the configuration built.
        ckpt_path: the checkpoint; any form :func:`unwrap_state_dict` accepts.
        map_location: as for ``torch.load``.
        required: without a checkpoint, raise instead of warning (evaluation never scores random weights).
        expected: the settings the configuration built ``network`` with; any that the checkpoint records
            differently is an error naming both values.

    Returns:
        True when weights were loaded; False (after a loud warning) when there is no checkpoint and not ``required``.

    Raises:
        MissingCheckpointError: no file at ``ckpt_path`` and ``required``.
        CheckpointError: unreadable file, or no state_dict in it.
        CheckpointMismatchError: recorded settings differ from ``expected``, or the weights do not fit ``network``
            (the message names the checkpoint's backbone and the configured one).
    """
    if not ckpt_path or not Path(ckpt_path).is_file():
        if required:
            raise MissingCheckpointError(ckpt_path or "ckpt_path", "no trained weights; train first or set ckpt_path")
        logger.warning(
            "!!! No trained weights at %s: the network has RANDOM weights and its masks are meaningless. "
            "Train first (python -m monai.bundle run training --config_file configs/train.json) or set ckpt_path.",
            ckpt_path,
        )
        return False
    checkpoint = read_checkpoint(ckpt_path, map_location=map_location)
    state = unwrap_state_dict(checkpoint)
    if state is None:
        raise CheckpointError(ckpt_path, "holds no state_dict (a mapping of parameter names to tensors)")
    recorded = recorded_settings(checkpoint)
    if expected and recorded:
        check_settings(ckpt_path, recorded, expected)
    target = network.module if isinstance(network, torch.nn.parallel.DistributedDataParallel) else network
    try:
        target.load_state_dict(state, strict=True)
    except RuntimeError as error:
        found = recorded.get("backbone") if recorded else _encoder_of(state)
        asked = (expected or {}).get("backbone", "?")
        first = str(error).strip().splitlines()[0]
        raise CheckpointMismatchError(
            ckpt_path,
            f"its weights are a {found or 'different'} network and do not fit the configured backbone "
            f"{asked} ({first}); leave --backbone out or give the checkpoint trained with {asked}",
        ) from None
    logger.info("Loaded weights from %s", ckpt_path)
    return True


# Settings a fine-tuning may change: the weights do not depend on the working size, and a network that takes more
# input channels (click guidance) than the checkpoint's starts with zero weights on the new ones.
FINE_TUNING_MAY_CHANGE = frozenset({"image_size", "in_channels", "guidance", "click_radius"})


def _widened(value: torch.Tensor, own: torch.Tensor) -> torch.Tensor | None:
    """``value`` with zero input channels appended up to ``own``'s, when only dimension 1 (inputs) is smaller."""
    if value.dim() < 3 or value.dim() != own.dim() or value.shape[1] >= own.shape[1]:
        return None
    if value.shape[0] != own.shape[0] or value.shape[2:] != own.shape[2:]:
        return None
    widened = torch.zeros(own.shape, dtype=own.dtype)
    widened[:, : value.shape[1]] = value
    return widened


def init_from(
    network: torch.nn.Module,
    ckpt_path: str | os.PathLike | None,
    map_location: Any = "cpu",
    expected: Mapping[str, Any] | None = None,
) -> bool:
    """Start a training from the weights at ``ckpt_path`` (fine-tuning); nothing happens for an empty path.

    Every tensor must fit, except that a layer taking more input channels than the checkpoint's (a click-guided
    network started from an automatic one) gets the checkpoint's kernel for the first channels and zeros for the
    new ones, so the network starts out giving exactly the checkpoint's predictions.

    Args:
        network: the network the training configuration built (or its DDP wrapper).
        ckpt_path: the weights; any form :func:`unwrap_state_dict` accepts.
        map_location: as for ``torch.load``.
        expected: the settings ``network`` was built with; a recorded setting that differs (other than those in
            :data:`FINE_TUNING_MAY_CHANGE`) is an error naming both values.

    Returns:
        True when weights were loaded, False for an empty ``ckpt_path``.

    Raises:
        MissingCheckpointError, CheckpointError: no such file, an unreadable one, or one without a state_dict.
        CheckpointMismatchError: recorded settings differ from ``expected``, or the weights do not fit ``network``.
    """
    if not ckpt_path:
        return False
    checkpoint = read_checkpoint(ckpt_path, map_location="cpu")
    state = unwrap_state_dict(checkpoint)
    if state is None:
        raise CheckpointError(ckpt_path, "holds no state_dict (a mapping of parameter names to tensors)")
    recorded = recorded_settings(checkpoint)
    if expected and recorded:
        check_settings(ckpt_path, recorded, {k: v for k, v in expected.items() if k not in FINE_TUNING_MAY_CHANGE})
    target = network.module if isinstance(network, torch.nn.parallel.DistributedDataParallel) else network
    own = target.state_dict()
    widened = []
    for key, value in list(state.items()):
        grown = _widened(value, own[key]) if key in own else None
        if grown is not None:
            state[key] = grown
            widened.append(key)
    try:
        target.load_state_dict(state, strict=True)
    except RuntimeError as error:
        first = str(error).strip().splitlines()[0]
        raise CheckpointMismatchError(
            ckpt_path, f"its weights do not fit the network to train ({first}); train the same network and backbone"
        ) from None
    if widened:
        logger.info("%s: %s take more input channels here; the new ones start at zero.", ckpt_path, ", ".join(widened))
    logger.info("Training starts from the weights of %s", ckpt_path)
    return True


class NetworkCheckpoint:
    """What training saves as ``model.pt`` (``bundle.training.TrainingCheckpoints``): the network's weights as a plain
    state_dict carrying the model's record (:func:`recorded_state_dict`): the settings it was built with, the data it
    was trained on and the validation scores of the epoch saved. DDP's wrapper is unwrapped, so names have no
    ``module.``.

    Args:
        network: the network (or its DDP wrapper).
        settings: the network settings (``configs/inference.json``'s ``network_settings``).
        data: what :func:`bundle.data.describe_training_data` says about the training data.
        validator: the evaluator whose latest metrics (and epoch) are recorded as ``scores``.
        recipe: the training options worth knowing later (loss, epochs, ...), plain values.
    """

    def __init__(
        self,
        network: torch.nn.Module,
        settings: Mapping[str, Any],
        data: Mapping[str, Any] | None = None,
        validator: Any = None,
        recipe: Mapping[str, Any] | None = None,
    ) -> None:
        self.network = network
        self.settings = plain_values(settings)
        self.data = plain_values(data) if data else None
        self.validator = validator
        self.recipe = plain_values(recipe) if recipe else None

    def _target(self) -> torch.nn.Module:
        network = self.network
        return network.module if isinstance(network, torch.nn.parallel.DistributedDataParallel) else network

    def scores(self) -> dict[str, Any] | None:
        """The validator's latest metrics as plain numbers, with the epoch they belong to; None before any."""
        state = getattr(self.validator, "state", None)
        metrics = getattr(state, "metrics", None) or {}
        plain = {name: float(value) for name, value in metrics.items() if isinstance(value, (int, float))}
        return {"epoch": int(state.epoch), **plain} if plain else None

    def state_dict(self) -> OrderedDict:
        record = {"network": dict(self.settings), "data": self.data, "scores": self.scores(), "recipe": self.recipe}
        return recorded_state_dict(self._target().state_dict(), record)

    def load_state_dict(self, checkpoint: Mapping[str, Any]) -> None:
        state = unwrap_state_dict(checkpoint)
        if state is None:
            raise CheckpointError("checkpoint", "holds no state_dict (a mapping of parameter names to tensors)")
        self._target().load_state_dict(state)
