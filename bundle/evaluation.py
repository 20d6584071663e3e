"""Evaluation report: the paper's metrics at the working resolution and at each photograph's own size, per-image
tables, a markdown table shaped like the paper's Tables 4–6, and overlay pictures (Fig. 13–14 colours).

``SegmentationReport`` is an ignite handler that ``configs/evaluate.json`` attaches to the evaluator.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import tempfile
from collections.abc import Mapping
from datetime import datetime, timezone
from pathlib import Path, PurePosixPath
from typing import Any

import numpy as np
import torch
from PIL import Image

from bundle.config import flag
from bundle.data import OUTPUT_NAME_KEY
from bundle.errors import ConfigError
from bundle.files import atomic_write, write_text_atomically
from bundle.images import read_photo
from bundle.metrics import SegmentationScores

logger = logging.getLogger(__name__)

PREDICTION_COLOUR = (0, 200, 0)  # green
TRUTH_COLOUR = (160, 32, 240)  # purple
OVERLAP_COLOUR = (255, 255, 255)  # white


def overlay(photo_rgb: np.ndarray, pred_hw: np.ndarray, truth_hw: np.ndarray, alpha: float = 0.45) -> np.ndarray:
    """Blend prediction (green), ground truth (purple) and their overlap (white) over an (H, W, 3) photograph."""
    if photo_rgb.shape[:2] != pred_hw.shape or pred_hw.shape != truth_hw.shape:
        raise ValueError(
            f"overlay shapes differ: photo {photo_rgb.shape}, pred {pred_hw.shape}, truth {truth_hw.shape}"
        )
    out = photo_rgb.astype(np.float32).copy()
    pred, truth = pred_hw.astype(bool), truth_hw.astype(bool)
    for region, colour in (
        (pred & ~truth, PREDICTION_COLOUR),
        (truth & ~pred, TRUTH_COLOUR),
        (pred & truth, OVERLAP_COLOUR),
    ):
        out[region] = (1 - alpha) * out[region] + alpha * np.asarray(colour, np.float32)
    return np.clip(np.round(out), 0, 255).astype(np.uint8)


def _title(network: Mapping[str, Any]) -> str:
    from bundle.networks.registry import NETWORK_DEFAULTS, network_title

    name = network.get("name", NETWORK_DEFAULTS["name"])
    return network_title(name, network.get("backbone", ""), network.get("rfe", True))


def _as_hw(mask: Any) -> np.ndarray:
    """(1, W, H) or (W, H) 0/1 tensor in MONAI's index order → (H, W) uint8 array in numpy's."""
    array = np.asarray(torch.as_tensor(mask).detach().cpu())
    if array.ndim == 3:
        array = array[0]
    return (array > 0.5).astype(np.uint8).T


class SegmentationReport:
    """Score every evaluated photograph twice and write the report when the evaluator completes.

    Reads from each decollated output item: ``pred_work``/``label`` at the working resolution, (1, w, h), and
    ``pred`` (W, H) / ``label_orig`` (1, W, H) at the photograph's own size — ``pred`` as ``configs/inference.json``'s
    post-processing leaves it, so evaluation scores exactly what inference writes. A photograph's row and overlay
    are named by its ``output_name`` (``bundle.data.with_output_names``): ``p1/IMG_0001.jpg`` and
    ``p2/IMG_0001.jpg`` get two rows of those names and ``overlays/p1/IMG_0001_overlay.png`` and
    ``overlays/p2/...``; photographs of one folder keep their plain file names.

    Args:
        output_dir: where ``metrics.json``, ``metrics_<res>.csv``, ``metrics.md`` and ``overlays/`` go.
        save_overlays: write one overlay PNG per photograph (longer side at most ``overlay_size`` pixels).
        jaccard_threshold: ISIC 2018's thresholded Jaccard cut-off.
        noise_std: recorded in the report (the Gaussian noise σ added to the [0, 1] image, Table 10).
        title: the model's row label in the markdown table; by default the network's name
            (``bundle.networks.registry.network_title`` of ``network``).
        network: the settings of the network evaluated (``configs/inference.json``'s ``network_settings``).
        scored: what was scored, recorded in ``metrics.json`` and ``metrics.md`` with the checkpoint's SHA-256, the
            number of images and the time: ``{"checkpoint": path, "data": datalist or folder, "split": key}``.
    """

    def __init__(
        self,
        output_dir: str,
        save_overlays: bool = True,
        overlay_size: int = 1024,
        jaccard_threshold: float = 0.65,
        noise_std: float = 0.0,
        title: str | None = None,
        scored: Mapping[str, Any] | None = None,
        network: Mapping[str, Any] | None = None,
    ) -> None:
        self.output_dir = Path(output_dir)
        self.scored = {key: str(value) for key, value in (scored or {}).items()}
        self.save_overlays = flag(save_overlays, "save_overlays")
        self.overlay_size = overlay_size
        self.noise_std = float(noise_std)
        self.title = title or _title(network or {})
        self.scores = {
            "working": SegmentationScores(jaccard_threshold),
            "original": SegmentationScores(jaccard_threshold),
        }

    def attach(self, engine) -> None:
        from ignite.engine import Events

        engine.add_event_handler(Events.STARTED, self.reset)
        engine.add_event_handler(Events.ITERATION_COMPLETED, self.iteration_completed)
        engine.add_event_handler(Events.COMPLETED, self.completed)

    def reset(self, engine=None) -> None:
        for scores in self.scores.values():
            scores.per_image.clear()

    def iteration_completed(self, engine) -> None:
        # The evaluator's output keeps only image/label/pred; the other keys (label_orig) are in the batch.
        for batch_item, output_item in zip(engine.state.batch, engine.state.output, strict=True):
            self.add({**batch_item, **output_item})

    def add(self, item: dict) -> None:
        source = str(item["pred"].meta.get("filename_or_obj", "")) if hasattr(item["pred"], "meta") else ""
        output_name = str(item.get(OUTPUT_NAME_KEY) or Path(source).stem or len(self.scores["original"]))
        # the photo's file name in its folder relative to the other photos' (p1/IMG_0001.jpg, p2/IMG_0001.jpg)
        name = (PurePosixPath(output_name).parent / Path(source).name).as_posix() if source else output_name
        self.scores["working"].add(_as_hw(item["pred_work"]), _as_hw(item["label"]), name=name)
        pred, truth = _as_hw(item["pred"]), _as_hw(item["label_orig"])
        row = self.scores["original"].add(pred, truth, name=name)
        logger.info(
            "%s: IoU %.4f Dice %.4f (original size %dx%d)", name, row["iou"], row["dice"], pred.shape[1], pred.shape[0]
        )
        if self.save_overlays and source:
            self._write_overlay(source, output_name, pred, truth)

    def _write_overlay(self, source: str, output_name: str, pred: np.ndarray, truth: np.ndarray) -> None:
        photo = np.asarray(read_photo(source))
        picture = Image.fromarray(overlay(photo, pred, truth))
        if max(picture.size) > self.overlay_size:
            picture.thumbnail((self.overlay_size, self.overlay_size), Image.Resampling.LANCZOS)
        path = self.output_dir / "overlays" / f"{output_name}_overlay.png"
        atomic_write(path, lambda tmp: picture.save(tmp, format="PNG"))

    def summary(self) -> dict[str, Any]:
        return {res: scores.summary() for res, scores in self.scores.items() if len(scores)}

    def completed(self, engine=None) -> dict[str, Any]:
        summary = self.summary()
        if not summary:
            logger.warning("no images were evaluated; nothing written to %s", self.output_dir)
            return summary
        scored = self._provenance(len(self.scores["original"]))
        report = {"scored": scored, "noise_std": self.noise_std, "summary": summary}
        report["per_image"] = {res: scores.per_image for res, scores in self.scores.items()}
        write_text_atomically(self.output_dir / "metrics.json", json.dumps(report, indent=2) + "\n")
        for res, scores in self.scores.items():
            scores.to_csv(self.output_dir / f"metrics_{res}.csv")
        heading = ", ".join(f"{key} {value}" for key, value in scored.items())
        table = markdown_table(summary, self.title, self.noise_std)
        write_text_atomically(self.output_dir / "metrics.md", f"Scored: {heading}.\n\n{table}")
        for res, values in summary.items():
            logger.info(
                "%s resolution: mIoU %.4f mDice %.4f IoU* %.4f Dice* %.4f TJ %.4f HD95 %.2f px (%d images)",
                res,
                values["mIoU"],
                values["mDice"],
                values["IoU_star"],
                values["Dice_star"],
                values["thresholded_jaccard"],
                values["HD95"],
                values["n_images"],
            )
        return summary

    def _provenance(self, images: int) -> dict[str, Any]:
        scored: dict[str, Any] = dict(self.scored)
        checkpoint = Path(scored.get("checkpoint", ""))
        if checkpoint.is_file():
            digest = hashlib.sha256()
            with open(checkpoint, "rb") as handle:
                for block in iter(lambda: handle.read(1 << 20), b""):
                    digest.update(block)
            scored["checkpoint_sha256"] = digest.hexdigest()
        scored["images"] = images
        scored["finished"] = datetime.now(timezone.utc).isoformat(timespec="seconds")
        return scored


REPORT_FILES = ("metrics.json", "metrics_working.csv", "metrics_original.csv", "metrics.md")


def clear_report(output_dir: str | os.PathLike) -> None:
    """Delete the report files and overlays an earlier evaluation wrote to ``output_dir``, so that a failed or
    different evaluation never leaves them looking like its own. Other files are left alone.

    ``configs/evaluate.json`` calls it last before the evaluation runs, once the checkpoint, the data and the
    options have been checked, so that an evaluation that cannot start keeps the previous report.

    Raises:
        ConfigError: ``output_dir`` is not a folder that can be made or written to (nothing is deleted).
    """
    folder = Path(output_dir)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        probe = tempfile.NamedTemporaryFile(dir=folder, prefix=".write-test-")
        probe.close()
    except OSError as error:
        raise ConfigError(f"cannot write the evaluation report to {folder} ({error.strerror or error})") from None
    old = [folder / name for name in REPORT_FILES if (folder / name).is_file()]
    overlays = folder / "overlays"
    old += sorted(overlays.rglob("*_overlay.png")) if overlays.is_dir() else []
    for path in old:
        path.unlink(missing_ok=True)
    for subfolder in sorted((p for p in overlays.rglob("*") if p.is_dir()), reverse=True) if old else []:
        if not any(subfolder.iterdir()):  # the per-folder overlays of photos kept in folders (p1/, p2/)
            subfolder.rmdir()
    if old:
        logger.info("Removed the previous report in %s (%d files)", folder, len(old))


def markdown_table(summary: dict[str, dict], title: str = "RFE U-Net", noise_std: float = 0.0) -> str:
    """Rows shaped like the paper's Tables 4–6 (mIoU, mDice, mIoU*, mDice*, in %) plus TJ and HD95, per resolution."""
    lines = [
        "| Model | Resolution | n | mIoU | mDice | mIoU* | mDice* | Thresholded Jaccard | HD95 (px) |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    label = f"{title} (noise σ={noise_std:g})" if noise_std > 0 else title
    for res, s in summary.items():
        hd95 = "n/a" if math.isnan(s["HD95"]) else f"{s['HD95']:.2f}"
        lines.append(
            f"| {label} | {res} | {s['n_images']} | {100 * s['mIoU']:.2f} | {100 * s['mDice']:.2f} | "
            f"{100 * s['IoU_star']:.2f} | {100 * s['Dice_star']:.2f} | {100 * s['thresholded_jaccard']:.2f} | {hd95} |"
        )
    return "\n".join(lines) + "\n"
