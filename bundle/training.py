"""Training that survives being killed and stops on a diverging loss.

- :class:`TrainingCheckpoints` writes ``models/model.pt`` (when the validation score improves) and
  ``models/last_checkpoint_epoch=N.pt`` (every epoch) whole or not at all, and resumes from the newest complete
  last checkpoint. MONAI's ``CheckpointSaver`` writes in place (``atomic=False``, for file permissions) and ignite
  deletes the previous file *before* writing the next, so a ``kill -9`` during the save left a truncated checkpoint
  and no earlier one.
- :class:`RandomStates` puts every random generator of a training in the checkpoint (torch, CUDA, numpy, Python and
  each random transform's own), so a resumed run draws the same batches and augmentations as an uninterrupted one.
- :class:`StopOnNonFiniteLoss` ends training at the first NaN or infinite loss, before anything more is saved.
- :func:`checkpoint_folder` keeps every training's model: a new training never replaces the ``model.pt`` of another
  one, it writes into a folder of its own and says where. :func:`starting_settings` gives a training that resumes
  or fine-tunes the network of the checkpoint it starts from, so the network options need not be repeated.
- :class:`TrainingProgress` logs how far training is and how long it will take.
- :func:`check_options` checks the options a user types before any work starts; :func:`on_device` places the network.
"""

from __future__ import annotations

import logging
import math
import os
import random
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch

from bundle.checkpoint import check_settings, network_settings, read_checkpoint, unwrap_state_dict
from bundle.config import at_least, choice, flag
from bundle.config import device as checked_device
from bundle.errors import CheckpointError, CheckpointMismatchError, MissingCheckpointError, TrainingError
from bundle.files import atomic_write

__all__ = [
    "LAST_CHECKPOINT_PREFIX",
    "MODEL_SELECTIONS",
    "RandomStates",
    "StopOnNonFiniteLoss",
    "TrainingCheckpoints",
    "TrainingProgress",
    "check_options",
    "checkpoint_folder",
    "flush_denormal",
    "last_checkpoints",
    "on_device",
    "save_checkpoint",
    "starting_settings",
    "training_name",
]

logger = logging.getLogger(__name__)

LAST_CHECKPOINT_PREFIX = "last_checkpoint_epoch="
BEST_MODEL_NAME = "model.pt"
# what model.pt holds: the epoch with the best validation score, or the last epoch
MODEL_SELECTIONS = ("best", "last")


def check_options(
    device: object = "cpu",
    max_epochs: object = 1,
    batch_size: object = 1,
    learning_rate: object = 0.001,
    weight_decay: object = 0.0,
    num_workers: object = 0,
    cache_rate: object = 1.0,
    val_interval: object = 1,
    loss: object = "adaptexp",
    resume: object = False,
    skip_bad_pairs: object = False,
    model_selection: object = "best",
) -> dict[str, Any]:
    """The training options as typed (``configs/train.json``'s ``checked``, run by its ``initialize``), checked
    before any work starts; returned as values (yes/no words as booleans).

    Raises:
        ConfigError: one line naming the first option that cannot work and why (not a device of this machine, a
            count below 1, a negative rate, an unknown loss or model selection, a word that is not yes or no).
    """
    from bundle.losses import LOSS_NAMES

    return {
        "device": checked_device(device),
        "max_epochs": at_least(max_epochs, 1, "max_epochs"),
        "batch_size": at_least(batch_size, 1, "batch_size"),
        "learning_rate": at_least(learning_rate, 0, "learning_rate", integer=False),
        "weight_decay": at_least(weight_decay, 0, "weight_decay", integer=False),
        "num_workers": at_least(num_workers, 0, "num_workers"),
        "cache_rate": min(1.0, at_least(cache_rate, 0, "cache_rate", integer=False)),
        "val_interval": at_least(val_interval, 1, "val_interval"),
        "loss": choice(loss, LOSS_NAMES, "loss"),
        "resume": flag(resume, "resume"),
        "skip_bad_pairs": flag(skip_bad_pairs, "skip_bad_pairs"),
        "model_selection": choice(model_selection, MODEL_SELECTIONS, "model_selection"),
    }


def on_device(network: torch.nn.Module, device: str | torch.device) -> torch.nn.Module:
    """``network`` on ``device`` for training: in channels-last memory on a GPU (faster convolutions with mixed
    precision), in PyTorch's default layout elsewhere."""
    device = torch.device(device)
    layout = torch.channels_last if device.type == "cuda" else torch.contiguous_format
    return network.to(device, memory_format=layout)


def flush_denormal(device: str | torch.device) -> bool:
    """On the CPU, treat denormal floats as zero (tiny activations otherwise slow every operation on them down
    many times); elsewhere leave the setting alone. Returns whether flushing is on."""
    return torch.set_flush_denormal(torch.device(device).type == "cpu")


def _sync_folder(folder: Path) -> None:
    """Make a rename in ``folder`` durable (POSIX); elsewhere the rename is as durable as the system makes it."""
    try:
        descriptor = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(descriptor)
    except OSError:
        pass
    finally:
        os.close(descriptor)


def save_checkpoint(state: Mapping[str, Any], path: str | os.PathLike) -> Path:
    """``torch.save`` ``state`` to ``path`` so that no reader, kill or power cut ever finds half of it.

    The file is written beside ``path`` under a hidden ``.part`` name, flushed to the disk, and renamed over
    ``path``; until the rename the previous file at ``path`` stays as it was.
    """

    # a state_dict's ``_metadata`` (where models/model.pt keeps its record) survives only on the object itself
    content = state if hasattr(state, "_metadata") else dict(state)

    def write(tmp: str) -> None:
        with open(tmp, "wb") as handle:
            torch.save(content, handle)
            handle.flush()
            os.fsync(handle.fileno())

    path = atomic_write(path, write)
    _sync_folder(path.parent)
    return path


def last_checkpoints(folder: str | os.PathLike) -> list[Path]:
    """The ``last_checkpoint_epoch=N.pt`` files in ``folder``, newest first."""
    found = [p for p in Path(folder).glob(f"{LAST_CHECKPOINT_PREFIX}*.pt") if p.is_file()]
    return sorted(found, key=lambda p: p.stat().st_mtime, reverse=True)


def _resumable(folder: str | os.PathLike) -> tuple[Path, Mapping[str, Any]] | None:
    """The newest last checkpoint in ``folder`` that reads (tensors mapped, not read), and its content."""
    for path in last_checkpoints(folder):
        try:
            return path, read_checkpoint(path, mmap=True)
        except CheckpointError:
            continue
    return None


def starting_settings(
    ckpt_dir: str | os.PathLike,
    init_weights: str | os.PathLike | None = "",
    resume: object = False,
    defaults: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """The network settings of the checkpoint a training starts from, for the options the user did not give, over
    ``defaults`` (the configuration's own, for settings nothing records).

    With ``resume`` and a last checkpoint in ``ckpt_dir``: the settings it records (older last checkpoints record
    none: then those of ``model.pt`` beside it, written by the same training). Else, with ``init_weights``: the
    settings that checkpoint records. Else (or when nothing is recorded) ``defaults``.

    Raises:
        MissingCheckpointError, CheckpointError: ``init_weights`` names no file, or one that cannot be read.
    """
    return {**(defaults or {}), **_recorded_start(ckpt_dir, init_weights, resume)}


def _recorded_start(ckpt_dir: str | os.PathLike, init_weights: Any, resume: object) -> dict[str, Any]:
    if flag(resume, "resume"):
        found = _resumable(ckpt_dir)
        if found is not None:
            recorded = found[1].get("network") if isinstance(found[1], Mapping) else None
            if isinstance(recorded, Mapping) and "name" in recorded:
                return dict(recorded)
            try:
                return network_settings(Path(ckpt_dir) / BEST_MODEL_NAME) or {}
            except CheckpointError:
                return {}
    if init_weights:
        if not Path(init_weights).is_file():
            raise MissingCheckpointError(init_weights, "no such checkpoint file (init_weights)")
        return network_settings(init_weights) or {}
    return {}


def training_name(settings: Mapping[str, Any], when: float | None = None) -> str:
    """A training's name: its start time and network, e.g. ``20261203-094500_rfeunet_resnet34_64``: the folder of
    its TensorBoard logs and, when another training's model is in the way, of its checkpoints."""
    import time

    parts = [time.strftime("%Y%m%d-%H%M%S", time.localtime(when)), str(settings.get("name", "network"))]
    if settings.get("name") != "basicunet" and settings.get("backbone"):
        parts.append(str(settings["backbone"]))
    if settings.get("name") == "rfeunet" and not settings.get("rfe", True):
        parts.append("norfe")
    parts.append(str(settings.get("image_size", "")))
    return "_".join(part for part in parts if part)


def _continues(handlers: Any, model: Path) -> bool:
    """Whether one of ``handlers`` is a ``CheckpointLoader`` of ``model``: MONAI Label's *Train* starts so from the
    model it serves, which its training is meant to update."""
    from monai.handlers import CheckpointLoader

    loaders = [h for h in handlers or () if isinstance(h, CheckpointLoader)]
    return any(Path(str(h.load_path)).resolve() == model.resolve() for h in loaders)


def _describe_model(model: Path) -> str:
    import time

    try:
        settings = network_settings(model) or {}
    except CheckpointError:
        settings = {}
    network = " ".join(str(settings[k]) for k in ("name", "backbone") if settings.get(k))
    size = f" at {settings['image_size']} px" if settings.get("image_size") else ""
    when = time.strftime("%Y-%m-%d %H:%M", time.localtime(model.stat().st_mtime))
    return f"({network + size + ', ' if network else ''}saved {when})"


def checkpoint_folder(
    ckpt_dir: str | os.PathLike, name: str, resume: object = False, handlers: Any = (), save: bool = True
) -> str:
    """Where a training writes ``model.pt`` and its last checkpoints, so that it never replaces another one's.

    ``ckpt_dir`` itself when it holds no ``model.pt`` or last checkpoint, or when this training continues what it
    holds: ``resume`` with a last checkpoint there, or a ``CheckpointLoader`` among ``handlers`` that loads its
    ``model.pt`` (MONAI Label's *Train*, which updates the model it serves). Otherwise the new folder
    ``ckpt_dir/<name>`` (``-2``, ``-3``... if that exists), with a warning naming the model kept and the folder.

    Args:
        ckpt_dir: the checkpoint folder asked for (``models/``).
        name: the training's name (:func:`training_name`).
        resume: ``--resume``.
        handlers: the training's handlers.
        save: whether this process writes (only the first process of a multi-GPU training does, and warns).
    """
    folder = Path(ckpt_dir)
    model = folder / BEST_MODEL_NAME
    if not model.is_file() and not last_checkpoints(folder):
        return str(folder)
    if flag(resume, "resume") and last_checkpoints(folder):
        return str(folder)
    if model.is_file() and _continues(handlers, model):
        return str(folder)
    target, number = folder / name, 1
    while target.exists():
        number += 1
        target = folder / f"{name}-{number}"
    if save:
        held = f"{model} {_describe_model(model)}" if model.is_file() else f"{last_checkpoints(folder)[0]}"
        again = "; --resume true found no last checkpoint there to continue" if flag(resume, "resume") else ""
        logger.warning(
            "%s holds another training's model: %s, kept%s. This training writes to %s (to continue it after an "
            "interruption: --resume true --ckpt_dir %s; --ckpt_dir chooses another folder).",
            folder,
            held,
            again,
            target,
            target,
        )
    return str(target)


def _generators(obj: Any, seen: set[int]) -> Iterator[np.random.RandomState]:
    """The numpy generators of the random transforms in ``obj``, found the way MONAI's ``set_rnd`` seeds them."""
    if id(obj) in seen:
        return
    seen.add(id(obj))
    if isinstance(obj, (list, tuple)):
        for item in obj:
            yield from _generators(item, seen)
        return
    generator = getattr(obj, "R", None)
    if isinstance(generator, np.random.RandomState) and id(generator) not in seen:
        seen.add(id(generator))
        yield generator
    for key, value in getattr(obj, "__dict__", {}).items():
        if not key.startswith("__"):
            yield from _generators(value, seen)


def _numpy_state(generator: np.random.RandomState) -> dict[str, Any]:
    kind, keys, position, has_gauss, gauss = generator.get_state(legacy=True)
    return {"keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(position), "gauss": [int(has_gauss), gauss]}


def _set_numpy_state(generator: np.random.RandomState, state: Mapping[str, Any]) -> None:
    has_gauss, gauss = state["gauss"]
    generator.set_state(("MT19937", state["keys"].numpy().astype(np.uint32), state["pos"], has_gauss, gauss))


class RandomStates:
    """Every random generator a training draws from, as a checkpointable object (``state_dict``).

    Args:
        transforms: the training transforms (e.g. the ``Compose`` its dataset applies); the generator of each
            random transform in it is saved and restored. That makes a resumed run draw exactly what an
            uninterrupted one draws when the transforms run in the training process (``num_workers`` 0). With
            DataLoader workers, the workers' transforms draw from generators that live in the worker processes:
            epochs, steps and learning rate still match an uninterrupted run, the augmentations do not.

    The state holds tensors and plain values only, so ``torch.load(weights_only=True)`` reads it.
    """

    def __init__(self, transforms: Any = None) -> None:
        self.transforms = transforms

    def _transform_generators(self) -> list[np.random.RandomState]:
        return list(_generators(self.transforms, set())) if self.transforms is not None else []

    def state_dict(self) -> dict[str, Any]:
        version, python_state, python_gauss = random.getstate()
        return {
            "torch": torch.get_rng_state(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
            "numpy": _numpy_state(np.random.mtrand._rand),
            "python": {
                "version": version,
                "state": torch.tensor(python_state, dtype=torch.int64),
                "gauss": python_gauss,
            },
            "transforms": [_numpy_state(g) for g in self._transform_generators()],
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        torch.set_rng_state(state["torch"])
        if state["cuda"] and torch.cuda.is_available() and len(state["cuda"]) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all(state["cuda"])
        _set_numpy_state(np.random.mtrand._rand, state["numpy"])
        python = state["python"]
        random.setstate((python["version"], tuple(python["state"].tolist()), python["gauss"]))
        generators = self._transform_generators()
        if len(generators) != len(state["transforms"]):
            logger.warning(
                "The checkpoint holds %d random transform states, the training has %d: augmentations after the "
                "resume differ from an uninterrupted run's.",
                len(state["transforms"]),
                len(generators),
            )
            return
        for generator, saved in zip(generators, state["transforms"], strict=True):
            _set_numpy_state(generator, saved)


def _state_of(obj: Any) -> Any:
    if isinstance(obj, torch.nn.parallel.DistributedDataParallel):
        obj = obj.module
    return obj.state_dict()


class TrainingCheckpoints:
    """Checkpoints of one training run, each written whole or not at all, and the resume from them.

    At the end of every epoch (where ``save``: the main process):

    1. if the validator's best score improved in this epoch (or every epoch, with ``selection="last"``),
       ``best_model.state_dict()`` goes to ``model.pt``;
    2. every object of ``state`` goes to ``last_checkpoint_epoch=N.pt``, with the network settings of
       ``best_model`` under ``"network"`` (what :func:`starting_settings` reads on resume);
    3. the other ``last_checkpoint_epoch=*.pt`` files are deleted.

    Each file is written by :func:`save_checkpoint`. ``model.pt`` comes first: a kill between the two files
    repeats the epoch on resume, which compares with the same best score and writes ``model.pt`` again.

    When the run starts, hidden ``.part`` files left by a killed write are deleted; with ``resume``, the newest
    last checkpoint that loads is loaded into ``state`` (a damaged one is named and skipped) and training continues
    after its epoch.

    Args:
        save_dir: the checkpoint folder (``models/``).
        state: name → object with ``state_dict``/``load_state_dict`` (model, optimizer, scheduler, validator,
            :class:`RandomStates`); :meth:`attach` adds the trainer and its AMP grad scaler.
        best_model: what ``model.pt`` holds (``bundle.checkpoint.NetworkCheckpoint``); None writes no ``model.pt``.
        validator: the evaluator whose ``best_metric_epoch`` says when the score improved.
        selection: ``"best"`` keeps the epoch with the best validation score in ``model.pt``, ``"last"`` the last
            epoch (a schedule that decays to zero often ends on its best weights, and the validation split then
            only watches the run).
        resume: continue from the newest complete last checkpoint.
        save: write files (False on the other processes of a multi-GPU run, which only resume).
        map_location: where a resumed checkpoint's tensors are loaded.
    """

    def __init__(
        self,
        save_dir: str | os.PathLike,
        state: Mapping[str, Any],
        best_model: Any = None,
        validator: Any = None,
        selection: str = "best",
        resume: bool = False,
        save: bool = True,
        map_location: Any = "cpu",
    ) -> None:
        self.save_dir = Path(save_dir)
        self.state = dict(state)
        self.best_model = best_model
        self.validator = validator
        self.selection = choice(selection, MODEL_SELECTIONS, "model_selection")
        self.resume = flag(resume, "resume")
        self.save = flag(save, "save")
        self.map_location = map_location

    def attach(self, engine) -> None:
        """Register the handlers on the trainer ``engine``, which is saved (with its AMP grad scaler) as
        ``"trainer"`` unless ``state`` names one, and have the validator's state (saved with the others) include
        its best score and epoch; with ``resume``, first check that the checkpoint to resume fits the network.

        Raises:
            CheckpointMismatchError: the last checkpoint records other network settings, or its weights do not
                fit the network (raised here, before training starts, as one line).
        """
        from ignite.engine import Events

        self.state.setdefault("trainer", engine)
        scaler = getattr(self.state["trainer"], "scaler", None)
        if scaler is not None:
            self.state.setdefault("scaler", scaler)
        user_keys = getattr(self.validator, "state_dict_user_keys", None)
        if user_keys is not None:
            user_keys.extend(key for key in ("best_metric", "best_metric_epoch") if key not in user_keys)
        if self.resume:
            self._check_resumable()
        engine.add_event_handler(Events.STARTED, self.started)
        engine.add_event_handler(Events.EPOCH_COMPLETED, self.epoch_completed)
        engine.add_event_handler(Events.COMPLETED, self.completed)

    def last_checkpoints(self) -> list[Path]:
        """The last checkpoints in ``save_dir``, newest first."""
        return last_checkpoints(self.save_dir)

    def _check_resumable(self) -> None:
        found = _resumable(self.save_dir)
        if found is None:
            return
        path, checkpoint = found
        recorded = checkpoint.get("network") if isinstance(checkpoint, Mapping) else None
        settings = getattr(self.best_model, "settings", None)
        if isinstance(recorded, Mapping) and settings:
            check_settings(path, recorded, settings)
        model = self.state.get("model")
        saved = unwrap_state_dict(checkpoint)
        if model is None or saved is None:
            return
        own = _state_of(model)
        differing = sorted(set(own) ^ set(saved)) or [k for k in own if tuple(own[k].shape) != tuple(saved[k].shape)]
        if differing:
            raise CheckpointMismatchError(
                path,
                f"its weights do not fit the network to train ({len(differing)} tensors differ, e.g. {differing[0]}); "
                "leave the network options (--backbone, --network_name, --rfe) out to resume the network it holds",
            )

    def started(self, engine) -> None:
        if self.save:
            for partial in self.save_dir.glob(".*.part.pt"):
                logger.info("Deleting %s, left by an interrupted save", partial)
                partial.unlink(missing_ok=True)
        if self.resume:
            self._resume(engine)

    def _resume(self, engine) -> None:
        for path in self.last_checkpoints():
            try:
                checkpoint = read_checkpoint(path, map_location=self.map_location)
            except CheckpointError as error:
                logger.warning("Cannot resume from %s (%s); trying an older checkpoint.", path, error.reason)
                continue
            self._load(engine, checkpoint, path)
            return
        logger.warning("--resume: no complete last checkpoint in %s, so training starts at epoch 1.", self.save_dir)

    def _load(self, engine, checkpoint: Mapping[str, Any], path: Path) -> None:
        from ignite.handlers import Checkpoint

        missing = [name for name in self.state if name not in checkpoint]
        if missing:
            logger.warning("%s holds no %s; those start afresh.", path, ", ".join(missing))
        max_epochs = engine.state.max_epochs
        Checkpoint.load_objects({k: v for k, v in self.state.items() if k in checkpoint}, checkpoint)
        engine.state.max_epochs = max_epochs  # the command line's, not the checkpoint's
        logger.info(
            "Resumed from %s: epoch %d, iteration %d done; training on to epoch %d.",
            path,
            engine.state.epoch,
            engine.state.iteration,
            max_epochs,
        )
        if engine.state.epoch >= max_epochs:
            logger.warning("%s is already at epoch %d: nothing left to train.", path, engine.state.epoch)

    def epoch_completed(self, engine) -> None:
        if not self.save:
            return
        epoch = engine.state.epoch
        improved = getattr(getattr(self.validator, "state", None), "best_metric_epoch", None) == epoch
        if self.best_model is not None and (improved or self.selection == "last"):
            path = save_checkpoint(self.best_model.state_dict(), self.save_dir / BEST_MODEL_NAME)
            why = "best validation score" if improved else "last epoch"
            logger.info("Saved %s (%s, epoch %d)", path, why, epoch)
            from bundle.networks.fastpath import cache_folder, prune_cache

            prune_cache(cache_folder(path))  # inference.json's ONNX copies of the model just replaced
        state = {name: _state_of(obj) for name, obj in self.state.items()}
        if getattr(self.best_model, "settings", None):  # so that --resume builds this network by itself
            state["network"] = dict(self.best_model.settings)
        path = save_checkpoint(state, self.save_dir / f"{LAST_CHECKPOINT_PREFIX}{epoch}.pt")
        for older in self.last_checkpoints():
            if older != path:
                older.unlink(missing_ok=True)
        logger.info("Saved %s", path)

    def completed(self, engine) -> None:
        model = self.save_dir / BEST_MODEL_NAME
        if self.save and self.best_model is not None and model.is_file():
            state = getattr(self.validator, "state", None)
            best, epoch = getattr(state, "best_metric", None), getattr(state, "best_metric_epoch", None)
            score = f"best validation score {best:.4f} at epoch {epoch}" if isinstance(best, float) else ""
            kept = "the last epoch" if self.selection == "last" else "the best epoch"
            logger.info("Training done: the model is %s (%s%s)", model, kept, f"; {score}" if score else "")
            if (self.save_dir.parent / BEST_MODEL_NAME).is_file():  # written beside another training's model
                logger.info("Inference and evaluation use it when given --ckpt_path %s", model)


def _duration(seconds: float) -> str:
    """``seconds`` as people say it: ``45 s``, ``7 min``, ``1 h 40 min``."""
    seconds = max(0, round(seconds))
    if seconds < 90:
        return f"{seconds} s"
    minutes = round(seconds / 60)
    return f"{minutes} min" if minutes < 60 else f"{minutes // 60} h {minutes % 60:02d} min"


class TrainingProgress:
    """Say what a training does and when it will end, in the trainer's log.

    Before the first iteration (after a resume, the first one it trains): the epochs, iterations per epoch,
    training pairs and batch size, validation pairs and device. After that iteration and then at most every
    ``every_s`` seconds: the epoch and iteration, the time per iteration and the time left, estimated from the time
    since the first iteration started (validation included once an epoch has been validated). It logs through the
    trainer's logger, which a multi-GPU training quiets on all but the first process.

    Args:
        validation_data: the validation dataset, to count its pairs.
        every_s: the least time between two progress lines.
    """

    def __init__(self, validation_data: Any = None, every_s: float = 30.0) -> None:
        self.validation_data = validation_data
        self.every_s = float(every_s)
        self._start: float | None = None
        self._last = 0.0
        self._done_before = 0

    def attach(self, engine) -> None:
        from ignite.engine import Events

        engine.add_event_handler(Events.STARTED, self.started)
        engine.add_event_handler(Events.ITERATION_STARTED, self.iteration_started)
        engine.add_event_handler(Events.ITERATION_COMPLETED, self.iteration_completed)

    def started(self, engine) -> None:
        self._start = None

    def iteration_started(self, engine) -> None:
        import time

        if self._start is not None:
            return
        self._start = self._last = time.monotonic()
        self._done_before = engine.state.iteration - 1  # iterations a resumed training had done
        loader = engine.state.dataloader
        pairs = len(loader.dataset) if hasattr(loader, "dataset") else "?"
        first, last = engine.state.epoch, engine.state.max_epochs
        epochs = f"epoch {last}" if first == last else f"epochs {first} to {last}"
        validation = f", validating on {len(self.validation_data)} pairs" if self.validation_data is not None else ""
        device = next((f" on {p.device}" for p in getattr(engine, "network", torch.nn.Module()).parameters()), "")
        engine.logger.info(
            "Training %s: %d iterations per epoch (%s training pairs, batch %s)%s%s.",
            epochs,
            engine.state.epoch_length,
            pairs,
            getattr(loader, "batch_size", "?"),
            validation,
            device,
        )

    def iteration_completed(self, engine) -> None:
        import time

        now = time.monotonic()
        done = engine.state.iteration - self._done_before
        if self._start is None or (done > 1 and now - self._last < self.every_s):
            return
        self._last = now
        per_iteration = (now - self._start) / done
        length = engine.state.epoch_length
        left = engine.state.max_epochs * length - engine.state.iteration
        engine.logger.info(
            "Progress: epoch %d/%d, iteration %d/%d, %.2f s per iteration; about %s left%s.",
            engine.state.epoch,
            engine.state.max_epochs,
            (engine.state.iteration - 1) % length + 1,
            length,
            per_iteration,
            _duration(per_iteration * left),
            "" if done > length else " (plus the validations, not timed yet)",
        )


class StopOnNonFiniteLoss:
    """Stop training at the first NaN or infinite loss, before the epoch ends and anything more is saved.

    The trainer is terminated (no ``EPOCH_COMPLETED``, so the last good checkpoints stay as they are), and
    :meth:`raise_if_stopped`, called after ``trainer.run()``, raises :class:`~bundle.errors.TrainingError` naming
    the epoch and iteration. (Raising inside the engine would have MONAI's ``StatsHandler`` log a traceback.)

    Args:
        save_dir: the checkpoint folder, whose files the message names as kept.
    """

    def __init__(self, save_dir: str | os.PathLike = "models") -> None:
        self.save_dir = Path(save_dir)
        self.error: TrainingError | None = None

    def attach(self, engine) -> None:
        from ignite.engine import Events

        engine.add_event_handler(Events.ITERATION_COMPLETED, self.iteration_completed)

    def iteration_completed(self, engine) -> None:
        output = engine.state.output
        if isinstance(output, (list, tuple)) and output:  # MONAI's trainers decollate: the loss is in every item
            output = output[0]
        loss = output.get("loss") if isinstance(output, Mapping) else output
        if not isinstance(loss, (torch.Tensor, float, int)):
            return
        value = float(torch.as_tensor(loss).detach().float().sum())
        if math.isfinite(value):
            return
        length = engine.state.epoch_length or 0
        in_epoch = (engine.state.iteration - 1) % length + 1 if length else engine.state.iteration
        kept = sorted(p.name for p in self.save_dir.glob("*.pt")) if self.save_dir.is_dir() else []
        self.error = TrainingError(
            f"the training loss became {value} at epoch {engine.state.epoch}, iteration {in_epoch} "
            f"(step {engine.state.iteration}); training stopped. "
            + (f"Kept as they were in {self.save_dir}: {', '.join(kept)}. " if kept else "Nothing was saved. ")
            + "Lower --learning_rate or check the data"
        )
        engine.terminate(skip_completed=True)

    def raise_if_stopped(self) -> None:
        """Raise the :class:`~bundle.errors.TrainingError` of a stop, if there was one."""
        if self.error is not None:
            raise self.error
