"""One way to run the bundle: the pre- and post-processing of ``configs/inference.json`` around a loaded network.

``SegmentationRunner`` is what ``configs/inference.json`` builds as its ``runner``; :class:`LesionSegmenter` is that
file parsed from Python (the Slicer worker, a MONAI Label app, the benchmark and the tests use it), so there is
exactly one definition of the pipeline. The library raises (``bundle.errors``) and never prints or exits; the command
line's entry (``bundle.cli.run_inference``, the config's ``run``) prints one line per failed file and sets the exit
status.
"""

from __future__ import annotations

import logging
import os
import queue
import threading
import warnings
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager, nullcontext
from pathlib import Path
from typing import Any, Union

import numpy as np
import torch

from bundle.checkpoint import load_weights, synthetic_sample_warning
from bundle.config import at_least, flag
from bundle.data import with_output_names
from bundle.errors import ConfigError, SyntheticSampleWarning, innermost, one_line

__all__ = ["BUNDLE_ROOT", "ClickSession", "LesionSegmenter", "SegmentationRunner", "describe_error"]

logger = logging.getLogger(__name__)

# Where a wheel install (``pip install .``) puts the bundle's configs, demo checkpoint and sample (pyproject.toml).
INSTALLED_ROOT = Path(__file__).resolve().parent / "_root"


def _default_bundle_root() -> Path:
    """The folder whose ``configs/`` the package's own bundle is: the source tree when the package runs from one (a
    checkout, an unpacked zip, an editable install), else the copy a wheel install ships inside the package."""
    source = Path(__file__).resolve().parents[1]
    if not (source / "configs" / "inference.json").is_file() and (INSTALLED_ROOT / "configs").is_dir():
        return INSTALLED_ROOT
    return source


BUNDLE_ROOT = _default_bundle_root()
EMPTY_MASK_WARNING = (
    "%s: no lesion found, the mask is empty; check the photo (greyscale, very dark or blurred photos, or no "
    "lesion in view, are where this model fails)"
)

Item = Union[Mapping[str, Any], str, os.PathLike]  # noqa: UP007 - evaluated at import: Slicer 5.4-5.8 run Python 3.9


def _as_item(item: Item) -> dict[str, Any]:
    return {"image": str(item)} if isinstance(item, (str, os.PathLike)) else dict(item)


@contextmanager
def _raising_causes() -> Iterator[None]:
    """MONAI wraps what a transform or a config item raised in ``RuntimeError``; raise the cause itself instead."""
    try:
        yield
    except RuntimeError as error:
        cause = innermost(error)
        if cause is error:
            raise
        raise cause from None


class SegmentationRunner:
    """Segment photographs with ``preprocessing`` → ``inferer(network)`` → ``postprocessing`` → ``writer``.

    Args:
        network: the segmentation network (logits out).
        preprocessing: transform from ``{"image": path or array}`` to a dict holding the network input under
            ``"image"``.
        inferer: a MONAI inferer, called as ``inferer(batch, network)``.
        postprocessing: transform from the dict with ``"pred"`` (logits, channel-first, no batch axis) to the
            final (W, H) label under ``"pred"`` and the lesion probability under ``"prob"``.
        writer: optional transform that writes ``"pred"`` (e.g. ``SaveMaskd``); ``None`` keeps results in memory.
        device: where the network runs.
        amp: run the network under ``torch.autocast`` (float16 on CUDA, bfloat16 on CPU).
        ckpt_path: weights loaded at construction by :func:`bundle.checkpoint.load_weights` (warns when missing,
            and loudly when they were trained on the embedded synthetic sample).
        network_settings: the settings ``network`` was built with; a checkpoint recording others is an error.
        num_workers: DataLoader processes that decode and preprocess the next photographs of :meth:`run` while
            the network runs (0: one thread does it).

    Raises:
        bundle.errors.ConfigError: (at construction) ``amp`` that is no yes/no value, a negative ``num_workers``.
        bundle.errors.CheckpointError: (at construction) an unreadable checkpoint or one for another network.
    """

    def __init__(
        self,
        network: torch.nn.Module,
        preprocessing: Callable,
        inferer: Callable,
        postprocessing: Callable,
        writer: Callable | None = None,
        device: str | torch.device = "cpu",
        amp: bool = False,
        ckpt_path: str | os.PathLike | None = None,
        network_settings: Mapping[str, Any] | None = None,
        num_workers: int = 0,
    ) -> None:
        self.device = torch.device(device)
        self.network = network.to(self.device).eval()
        self.preprocessing = preprocessing
        self.inferer = inferer
        self.postprocessing = postprocessing
        self.writer = writer
        self.amp = flag(amp, "amp")
        self.num_workers = at_least(num_workers, 0, "num_workers")
        self.empty_masks: list[str] = []  # the photos of the last run() whose mask is empty
        self.has_weights = (
            load_weights(self.network, ckpt_path, map_location=self.device, expected=network_settings)
            if ckpt_path
            else False
        )
        # a model that has only seen the synthetic sample gives junk on photographs: say so as it is loaded
        self.warning = synthetic_sample_warning(ckpt_path) if self.has_weights else None
        if self.warning:
            logger.warning(self.warning)

    def _autocast(self):
        if not self.amp:
            return nullcontext()
        dtype = torch.float16 if self.device.type == "cuda" else torch.bfloat16
        return torch.autocast(device_type=self.device.type, dtype=dtype)

    @torch.inference_mode()
    def predict(self, data: Mapping[str, Any]) -> dict[str, Any]:
        """Run the network and the post-processing on one preprocessed item; returns the post-processed dict."""
        batch = data["image"].unsqueeze(0).to(self.device)
        with self._autocast():
            logits = self.inferer(batch, self.network)
        result = dict(data)
        result["pred"] = logits[0].float().cpu()
        return self.postprocessing(result)

    def _finish(self, data: Mapping[str, Any]) -> dict[str, Any]:
        """The per-item path after preprocessing: predict, post-process and (with a writer) write."""
        result = self.predict(data)
        return self.writer(result) if self.writer is not None else result

    def segment(self, item: Item) -> dict[str, Any]:
        """Segment one photograph (a path, or an item dict with ``"image"``); errors propagate as raised.

        Returns:
            The post-processed dict: ``"pred"`` the (W, H) 0/1 label, ``"prob"`` the lesion probability, and
            with a writer ``"pred_path"`` (and ``"prob_path"``).
        """
        with _raising_causes():
            return self._finish(self.preprocessing(_as_item(item)))

    def segment_array(
        self,
        image: np.ndarray,
        clicks: Mapping[str, Sequence[Sequence[float]]] | None = None,
        previous: np.ndarray | None = None,
    ) -> dict[str, np.ndarray]:
        """Segment an in-memory photograph through the same pipeline; nothing is written.

        Args:
            image: (H, W, 3) uint8 RGB in numpy row order (row 0 at the top); (H, W) grey and (H, W, 4) RGBA
                are accepted too.
            clicks: for a click-guided network, ``{"positive": [[x, y], ...], "negative": [...]}`` in the photo's
                pixels (x = column, y = row); an automatic network ignores them.
            previous: for a click-guided network, the (H, W) mask the user saw before these clicks.

        Returns:
            ``{"pred": (H, W) uint8 0/1, "prob": (H, W) float32 lesion probability}``, in the image's own order.

        Raises:
            bundle.errors.BadInputError: an array of another shape or dtype.
        """
        item = {"image": image, "clicks": dict(clicks or {})}
        if previous is not None:
            item["previous"] = np.asarray(previous).T
        with _raising_causes():
            result = self.predict(self.preprocessing(item))
        pred = np.asarray(result["pred"].detach().cpu(), dtype=np.uint8).T
        prob = np.asarray(result["prob"].detach().cpu(), dtype=np.float32).T
        return {"pred": np.ascontiguousarray(pred), "prob": np.ascontiguousarray(prob)}

    def guidance_split(self) -> tuple[Callable, Callable]:
        """The preprocessing cut where the clicks come in: (decoding and resizing, click guidance), so that a
        session decodes a photo once and only the guidance is redone for each click."""
        from monai.transforms import Compose

        from bundle.interactive import ClicksFromPointsd

        transforms = list(getattr(self.preprocessing, "transforms", [self.preprocessing]))
        cut = next((i for i, t in enumerate(transforms) if isinstance(t, ClicksFromPointsd)), len(transforms))
        return Compose(transforms[:cut]), Compose(transforms[cut:])

    def session(self, item: Item) -> ClickSession:
        """A :class:`ClickSession` on one photograph (a path, an item dict or an (H, W, 3) array)."""
        return ClickSession(self, item)

    def _prepared(self, items: Sequence[dict]) -> Iterator[tuple[dict, dict | None, str | None]]:
        """Yield (item, preprocessed, failure reason), preprocessing ahead of the network: in ``num_workers``
        DataLoader processes (one thread each), or in one thread when there are none or a single item."""
        workers = min(self.num_workers, len(items) - 1)
        if workers > 0:
            from bundle.data import worker_init

            yield from torch.utils.data.DataLoader(
                _Preprocessed(items, self.preprocessing),
                batch_size=None,
                num_workers=workers,
                collate_fn=_unchanged,
                worker_init_fn=worker_init,
            )
            return
        slots: queue.Queue = queue.Queue(maxsize=2)

        def work():
            for item in items:
                slots.put(_Preprocessed.one(item, self.preprocessing))
            slots.put(None)

        threading.Thread(target=work, daemon=True, name="rfe-unet-prefetch").start()
        while (entry := slots.get()) is not None:
            yield entry

    def run(
        self,
        items: Sequence[Item],
        on_failure: Callable[[str, str], object] | None = None,
        keep_results: bool = True,
        on_result: Callable[[str, dict[str, Any]], object] | None = None,
    ) -> tuple[list[dict[str, Any]], list[tuple[str, str]]]:
        """Segment every item; a file that fails is recorded (and passed to ``on_failure``) and the rest go on.

        ``on_result(input path, post-processed dict)`` is called for each item that succeeded, before
        ``keep_results=False`` drops its arrays (the Slicer worker writes its result files there); an exception it
        raises counts as that file's failure.
        Items get an ``"output_name"`` (``bundle.data.output_names``), so a writer keeps each photo's folder
        relative to the others and two photos of the same name never write the same file.

        Returns:
            ``(results, failures)``: the post-processed dicts of the items that succeeded (with
            ``keep_results=False`` only their paths, so a folder of large photos does not pile up full-size
            predictions in memory), and ``(input path, one-line reason)`` for those that failed.
        """
        items = with_output_names([_as_item(i) for i in items])
        results, failures = [], []
        self.empty_masks = []
        for index, (item, data, reason) in enumerate(self._prepared(items), start=1):
            source = str(item.get("image"))
            if reason is None:
                try:
                    data = self._finish(data)
                    if not np.asarray(data["pred"]).any():
                        self.empty_masks.append(source)
                        logger.warning(EMPTY_MASK_WARNING, source)
                    if on_result is not None:
                        on_result(source, data)
                except Exception as err:  # noqa: BLE001 - one bad file must not stop the others
                    reason = describe_error(source, err)
            if reason is not None:
                failures.append((source, reason))
                if on_failure is not None:
                    on_failure(*failures[-1])
                continue
            results.append(data if keep_results else {k: v for k, v in data.items() if k.endswith("_path")})
            logger.info("[%d/%d] %s -> %s", index, len(items), source, data.get("pred_path", "(in memory)"))
        return results, failures


class ClickSession:
    """One photograph segmented click by click: decoded and preprocessed once, then one network run per click.

    Each prediction after the first is made with every click so far and, for a network that takes one, the
    previous prediction as the previous mask (what the user saw before clicking). With an automatic network the
    clicks change nothing.

    Args:
        runner: the :class:`SegmentationRunner`.
        item: a path, an item dict, or an (H, W, 3) uint8 array in numpy order.
    """

    def __init__(self, runner: SegmentationRunner, item: Item | np.ndarray) -> None:
        self.runner = runner
        before, self._guide = runner.guidance_split()
        source = {"image": item} if isinstance(item, np.ndarray) else _as_item(item)
        with _raising_causes():
            self._prepared = before(source)
        self.clicks: dict[str, list[list[float]]] = {"positive": [], "negative": []}
        self.previous: np.ndarray | None = None

    def predict(self) -> dict[str, Any]:
        """Segment with the clicks so far; returns the post-processed dict (``"pred"``, ``"prob"``, (W, H))."""
        data = dict(self._prepared)
        data["clicks"] = {kind: [list(p) for p in points] for kind, points in self.clicks.items()}
        if self.previous is not None:
            data["previous"] = self.previous
        with _raising_causes():
            result = self.runner.predict(self._guide(data))
        self.previous = np.asarray(result["pred"], dtype=np.float32)
        return result

    def click(self, x: float, y: float, positive: bool) -> dict[str, Any]:
        """Add a click at ``(x, y)`` (column, row in the photo's pixels) and segment again."""
        self.clicks["positive" if positive else "negative"].append([float(x), float(y)])
        return self.predict()


class _Preprocessed(torch.utils.data.Dataset):
    """Items through ``preprocessing`` as ``(item, preprocessed, None)``, or ``(item, None, reason)`` when that
    fails (a one-line string, since exceptions of any type may not cross from a worker process)."""

    def __init__(self, items: Sequence[dict], preprocessing: Callable) -> None:
        self.items, self.preprocessing = items, preprocessing

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> tuple[dict, dict | None, str | None]:
        return self.one(self.items[index], self.preprocessing)

    @staticmethod
    def one(item: dict, preprocessing: Callable) -> tuple[dict, dict | None, str | None]:
        try:
            return item, preprocessing(dict(item)), None
        except Exception as err:  # noqa: BLE001 - reported per file by the caller
            return item, None, describe_error(str(item.get("image")), err)


def _unchanged(entry: Any) -> Any:
    """A DataLoader collate function that leaves each (item, preprocessed, reason) as it is."""
    return entry


def describe_error(source: str, error: BaseException) -> str:
    """One line naming the file and the problem (the file is named once, even if the message names it too)."""
    message = one_line(innermost(error))
    return message if source in message else f"{source}: {message}"


class LesionSegmenter:
    """``configs/inference.json`` parsed once (plus overrides), its runner built and its network loaded.

    This is how code outside the bundle runner (the Slicer worker, a MONAI Label app, the benchmark, the tests)
    segments photographs: the same pre- and post-processing as ``python -m monai.bundle run``, and the network
    settings taken from the checkpoint.

    Example::

        segmenter = LesionSegmenter(bundle_root=".", overrides={"output_dir": "/tmp/masks"})
        mask_wh = segmenter.segment("lesion.jpg")["pred"]  # (W, H) tensor of 0/1, mask file written
        result = segmenter.segment_array(rgb_hw3)  # {"pred": (H, W) uint8, "prob": (H, W) float32}

    Args:
        bundle_root: the bundle folder (default: :data:`BUNDLE_ROOT`, the bundle this package came with: its source
            tree, or after a wheel install the configs, demo checkpoint and sample installed with it).
        overrides: config keys to set, as on the command line (``{"image_size": 128, "ckpt_path": ...}``).
        config_file: another config file to parse instead of ``<bundle_root>/configs/inference.json``.

    Warns:
        bundle.errors.SyntheticSampleWarning: the weights were trained on the embedded synthetic sample only.

    Raises:
        bundle.errors.BundleError: a configuration value or checkpoint that cannot work.
    """

    def __init__(
        self,
        bundle_root: str | os.PathLike | None = None,
        overrides: Mapping[str, Any] | None = None,
        config_file: str | os.PathLike | None = None,
    ) -> None:
        from monai.bundle import ConfigParser

        root = Path(bundle_root) if bundle_root else BUNDLE_ROOT
        config_file = Path(config_file or root / "configs" / "inference.json")
        if not config_file.is_file():
            raise ConfigError(
                f"{config_file}: no such file; bundle_root must be a bundle's folder (the one holding configs/, "
                "e.g. an unpacked bundle zip or this project's repository)"
            )
        self.parser = ConfigParser()
        self.parser.read_config(str(config_file))
        self.parser.update({"bundle_root": str(root), **(overrides or {})})
        with _raising_causes():
            self.runner: SegmentationRunner = self.parser.get_parsed_content("runner")
        if self.runner.warning:
            warnings.warn(self.runner.warning, SyntheticSampleWarning, stacklevel=2)

    def segment(self, item: Item) -> dict[str, Any]:
        """See :meth:`SegmentationRunner.segment`."""
        return self.runner.segment(item)

    def segment_array(
        self,
        image: np.ndarray,
        clicks: Mapping[str, Sequence[Sequence[float]]] | None = None,
        previous: np.ndarray | None = None,
    ) -> dict[str, np.ndarray]:
        """See :meth:`SegmentationRunner.segment_array`."""
        return self.runner.segment_array(image, clicks, previous)

    def session(self, item: Item | np.ndarray) -> ClickSession:
        """See :meth:`SegmentationRunner.session`."""
        return self.runner.session(item)

    @property
    def guidance(self) -> list[str]:
        """The guidance channels of the loaded network (empty for an automatic one)."""
        return list(self.parser.get_parsed_content("network_settings#guidance"))

    def run(self, items: Sequence[Item]) -> tuple[list[dict[str, Any]], list[tuple[str, str]]]:
        """See :meth:`SegmentationRunner.run`."""
        return self.runner.run(items)
