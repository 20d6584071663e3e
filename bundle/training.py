"""Training that survives being killed and stops on a diverging loss.

- :class:`TrainingCheckpoints` writes ``models/model.pt`` (when the validation score improves) and
  ``models/last_checkpoint_epoch=N.pt`` (every epoch) whole or not at all, and resumes from the newest complete
  last checkpoint. MONAI's ``CheckpointSaver`` writes in place (``atomic=False``, for file permissions) and ignite
  deletes the previous file *before* writing the next, so a ``kill -9`` during the save left a truncated checkpoint
  and no earlier one.
- :class:`RandomStates` puts every random generator of a training in the checkpoint (torch, CUDA, numpy, Python and
  each random transform's own), so a resumed run draws the same batches and augmentations as an uninterrupted one.
- :class:`StopOnNonFiniteLoss` ends training at the first NaN or infinite loss, before anything more is saved.
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

from bundle.checkpoint import read_checkpoint
from bundle.errors import CheckpointError, TrainingError
from bundle.files import atomic_write

__all__ = [
    "LAST_CHECKPOINT_PREFIX",
    "MODEL_SELECTIONS",
    "RandomStates",
    "StopOnNonFiniteLoss",
    "TrainingCheckpoints",
    "save_checkpoint",
]

logger = logging.getLogger(__name__)

LAST_CHECKPOINT_PREFIX = "last_checkpoint_epoch="
BEST_MODEL_NAME = "model.pt"
# what model.pt holds: the epoch with the best validation score, or the last epoch
MODEL_SELECTIONS = ("best", "last")


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
    2. every object of ``state`` goes to ``last_checkpoint_epoch=N.pt``;
    3. the other ``last_checkpoint_epoch=*.pt`` files are deleted.

    Each file is written by :func:`save_checkpoint`. ``model.pt`` comes first: a kill between the two files
    repeats the epoch on resume, which compares with the same best score and writes ``model.pt`` again.

    When the run starts, hidden ``.part`` files left by a killed write are deleted; with ``resume``, the newest
    last checkpoint that loads is loaded into ``state`` (a damaged one is named and skipped) and training continues
    after its epoch.

    Args:
        save_dir: the checkpoint folder (``models/``).
        state: name → object with ``state_dict``/``load_state_dict`` (model, optimizer, scheduler, trainer,
            validator, :class:`RandomStates`); the trainer's AMP grad scaler is added when it has one.
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
        scaler = getattr(self.state.get("trainer"), "scaler", None)
        if scaler is not None:
            self.state.setdefault("scaler", scaler)
        self.best_model = best_model
        self.validator = validator
        if selection not in MODEL_SELECTIONS:
            raise ValueError(f"selection must be one of {', '.join(MODEL_SELECTIONS)}, got {selection!r}.")
        self.selection = selection
        self.resume = bool(resume)
        self.save = bool(save)
        self.map_location = map_location

    def attach(self, engine) -> None:
        from ignite.engine import Events

        engine.add_event_handler(Events.STARTED, self.started)
        engine.add_event_handler(Events.EPOCH_COMPLETED, self.epoch_completed)

    def last_checkpoints(self) -> list[Path]:
        """The last checkpoints in ``save_dir``, newest first."""
        found = [p for p in self.save_dir.glob(f"{LAST_CHECKPOINT_PREFIX}*.pt") if p.is_file()]
        return sorted(found, key=lambda p: p.stat().st_mtime, reverse=True)

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
        path = save_checkpoint(
            {name: _state_of(obj) for name, obj in self.state.items()},
            self.save_dir / f"{LAST_CHECKPOINT_PREFIX}{epoch}.pt",
        )
        for older in self.last_checkpoints():
            if older != path:
                older.unlink(missing_ok=True)
        logger.info("Saved %s", path)


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
