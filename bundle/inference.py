"""One way to run the bundle: the pre- and post-processing of ``configs/inference.json`` around a loaded network.

``SegmentationRunner`` is what ``configs/inference.json`` builds as its ``runner``; ``LesionSegmenter`` parses that
file from Python (the tests use it; a Slicer worker, a MONAI Label app or a benchmark should too) so there is exactly
one definition of the pipeline. Unreadable inputs are reported one line each and skipped; the others still get masks.
"""

from __future__ import annotations

import logging
import os
import sys
import queue
import threading
from contextlib import nullcontext
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

import torch

logger = logging.getLogger("rfe_unet.inference")

BUNDLE_ROOT = Path(__file__).resolve().parents[1]


def load_weights(
    network: torch.nn.Module, ckpt_path: str | os.PathLike | None, map_location="cpu", required: bool = False
) -> bool:
    """Load a checkpoint written by the bundle into ``network``; return False (and warn loudly) if there is none.

    With ``required`` a missing checkpoint ends the program with one line and exit status 2 instead (evaluation
    of random weights is never what anyone wants).

    Accepts the bare state_dict that ``CheckpointSaver`` writes for a single object, a ``{"model": ...}`` or
    ``{"state_dict": ...}`` wrapper, and DDP's ``module.`` key prefix. A file that does not fit raises a
    ``ValueError`` naming it.
    """
    if not ckpt_path or not Path(ckpt_path).is_file():
        if required:
            print(f"ERROR {ckpt_path}: no trained weights to evaluate; train first or set ckpt_path", file=sys.stderr)
            raise SystemExit(2)
        logger.warning(
            "!!! No trained weights at %s: the network has RANDOM weights and its masks are meaningless. "
            "Train first (python -m monai.bundle run training --config_file configs/train.json) or set ckpt_path.",
            ckpt_path,
        )
        return False
    try:
        state = torch.load(ckpt_path, map_location=map_location, weights_only=True)
    except Exception as err:  # noqa: BLE001 - any unreadable file gets the same one-line report
        raise ValueError(f"{ckpt_path}: not a readable PyTorch checkpoint ({err})") from None
    for wrapper in ("model", "state_dict", "network"):
        if isinstance(state, dict) and isinstance(state.get(wrapper), dict):
            state = state[wrapper]
    state = {k[len("module."):] if k.startswith("module.") else k: v for k, v in state.items()}
    target = network.module if hasattr(network, "module") else network
    try:
        target.load_state_dict(state, strict=True)
    except RuntimeError as err:
        first = str(err).strip().splitlines()[0]
        raise ValueError(f"{ckpt_path}: does not fit this network ({first}); check 'backbone'") from None
    logger.info("Loaded weights from %s", ckpt_path)
    return True


class SegmentationRunner:
    """Segment photographs with ``preprocessing`` → ``inferer(network)`` → ``postprocessing`` → ``writer``.

    Args:
        network: the segmentation network (logits out).
        preprocessing: transform from ``{"image": path}`` to a dict holding the network input under ``"image"``.
        inferer: a MONAI inferer, called as ``inferer(batch, network)``.
        postprocessing: transform from the dict with ``"pred"`` (logits, channel-first, no batch axis) to the
            final (W, H) label under ``"pred"``.
        writer: optional transform that writes ``"pred"`` (e.g. ``SaveMaskd``); ``None`` keeps results in memory.
        device: where the network runs.
        amp: run the network under ``torch.autocast`` (float16 on CUDA, bfloat16 on CPU).
        ckpt_path: weights loaded at construction by :func:`load_weights` (warns when missing).
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
    ) -> None:
        self.device = torch.device(device)
        self.network = network.to(self.device).eval()
        self.preprocessing = preprocessing
        self.inferer = inferer
        self.postprocessing = postprocessing
        self.writer = writer
        self.amp = bool(amp)
        self.has_weights = load_weights(self.network, ckpt_path, map_location=self.device) if ckpt_path else False

    def _autocast(self):
        if not self.amp:
            return nullcontext()
        dtype = torch.float16 if self.device.type == "cuda" else torch.bfloat16
        return torch.autocast(device_type=self.device.type, dtype=dtype)

    @torch.inference_mode()
    def predict(self, data: dict) -> dict:
        """Run the network and the post-processing on one preprocessed item."""
        batch = data["image"].unsqueeze(0).to(self.device)
        with self._autocast():
            logits = self.inferer(batch, self.network)
        data = dict(data)
        data["pred"] = logits[0].float().cpu()
        return self.postprocessing(data)

    def segment(self, item: dict | str | os.PathLike) -> dict:
        """Preprocess, predict, post-process and (with a writer) write one input; errors propagate."""
        data = {"image": str(item)} if isinstance(item, (str, os.PathLike)) else dict(item)
        result = self.predict(self.preprocessing(data))
        return self.writer(result) if self.writer is not None else result

    def _prepared(self, items: Sequence[dict]) -> Iterable[tuple[dict, dict | None, BaseException | None]]:
        """Yield (item, preprocessed, error), decoding the next photograph in a thread while the network runs."""
        slots: queue.Queue = queue.Queue(maxsize=2)

        def work():
            for item in items:
                try:
                    slots.put((item, self.preprocessing(dict(item)), None))
                except Exception as err:  # noqa: BLE001 - reported per file by the caller
                    slots.put((item, None, err))
            slots.put(None)

        threading.Thread(target=work, daemon=True, name="rfe-unet-prefetch").start()
        while (entry := slots.get()) is not None:
            yield entry

    def run(self, items: Sequence[dict | str | os.PathLike]) -> tuple[list[dict], list[tuple[str, str]]]:
        """Segment every item; return (results, failures) where failures are (input path, one-line reason)."""
        items = [{"image": str(i)} if isinstance(i, (str, os.PathLike)) else dict(i) for i in items]
        results, failures = [], []
        for index, (item, data, error) in enumerate(self._prepared(items), start=1):
            source = str(item.get("image"))
            if error is None:
                try:
                    data = self.predict(data)
                    data = self.writer(data) if self.writer is not None else data
                except Exception as err:  # noqa: BLE001
                    error = err
            if error is not None:
                reason = describe_error(source, error)
                failures.append((source, reason))
                print(f"ERROR {reason}", file=sys.stderr, flush=True)
                continue
            results.append(data)
            logger.info("[%d/%d] %s -> %s", index, len(items), source, data.get("pred_path", "(in memory)"))
        return results, failures

    def main(self, items: Sequence[dict | str | os.PathLike]) -> int:
        """Command-line entry used by ``configs/inference.json``: exit non-zero when any input failed."""
        if not items:
            print("ERROR no input images found", file=sys.stderr)
            raise SystemExit(2)
        results, failures = self.run(items)
        print(f"segmented {len(results)} of {len(items)} images; {len(failures)} failed", flush=True)
        if failures:
            raise SystemExit(1)
        return 0


def describe_error(source: str, error: BaseException) -> str:
    """One line naming the file and the problem (the file is named once, even if the message names it too).

    MONAI's ``Compose`` wraps a transform's exception in "applying transform ..."; the innermost cause is the
    one that says what is wrong with the file.
    """
    while error.__cause__ is not None:
        error = error.__cause__
    message = " ".join(str(error).split()) or type(error).__name__
    return message if source in message else f"{source}: {message}"


class LesionSegmenter:
    """Parse ``configs/inference.json`` (plus overrides) once and keep its runner and network loaded.

    Example::

        segmenter = LesionSegmenter(bundle_root=".", overrides={"output_dir": "/tmp/masks"})
        mask_wh = segmenter.segment("lesion.jpg")["pred"]      # (W, H) tensor of 0/1
    """

    def __init__(
        self,
        bundle_root: str | os.PathLike | None = None,
        overrides: dict[str, Any] | None = None,
        config_file: str | os.PathLike | None = None,
    ) -> None:
        from monai.bundle import ConfigParser

        root = Path(bundle_root) if bundle_root else BUNDLE_ROOT
        self.parser = ConfigParser()
        self.parser.read_config(str(config_file or root / "configs" / "inference.json"))
        self.parser.update({"bundle_root": str(root), **(overrides or {})})
        self.runner: SegmentationRunner = self.parser.get_parsed_content("runner")

    def segment(self, item: dict | str | os.PathLike) -> dict:
        return self.runner.segment(item)

    def run(self, items: Sequence[dict | str | os.PathLike]):
        return self.runner.run(items)
