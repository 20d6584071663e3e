"""The standard evaluation of interactive segmentation: a simulated user clicks until the mask is right.

For each photo of a datalist split, the robot user (``bundle.interactive.next_click``: the deepest point of the
largest error region, positive on missed lesion, negative on false lesion) clicks up to ``--max_clicks`` times at
the photo's stored size, and the IoU after each click is recorded. Two ways a click can act (``--mode``):

- ``network``: the click goes to the network (a click-guided checkpoint: clicks and the previous mask as input);
- ``regions``: the automatic mask is kept and each click keeps or removes whole connected regions of it, exactly
  as the 3D Slicer module's Keep/Remove points do (its own ``apply_clicks``).

Commands (from the repository root)::

    python -m scripts.click_eval run --dataset_dir data/isic2017_256 --ckpt_path models/model.pt \\
        --mode network --label guided --out runs/clicks
    python -m scripts.click_eval table --out runs/clicks --labels automatic_regions,guided

``run`` writes ``<out>/<label>.json`` (summary and the per-image IoU curves) and ``<label>.csv``; ``table`` writes
``<out>/clicks.md`` with NoC@85, NoC@90, failures at 90 % and mean IoU after 0, 1, 3 and 5 clicks.
"""

from __future__ import annotations

import csv
import importlib.util
import io
import json
import sys
import time
from pathlib import Path
from typing import Any

import fire
import numpy as np

from bundle.data import load_datalist
from bundle.files import write_text_atomically
from bundle.images import read_mask
from bundle.inference import LesionSegmenter
from bundle.interactive import interactive_summary, iou, next_click

REPO = Path(__file__).resolve().parents[1]
SLICER_IMAGING = REPO / "slicer_extension" / "SkinLesionSegmentation" / "SkinLesionSegmentationLib" / "imaging.py"
MODES = ("network", "regions")
AFTER = (0, 1, 3, 5)


def _slicer_apply_clicks():
    """The Slicer module's Keep/Remove function, loaded from its file (the module's library needs no Slicer)."""
    spec = importlib.util.spec_from_file_location("skin_lesion_slicer_imaging", SLICER_IMAGING)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up
    spec.loader.exec_module(module)
    return module.apply_clicks


def robot_curve(session, truth_wh: np.ndarray, max_clicks: int, mode: str, apply_clicks=None) -> list[float]:
    """IoU after 0, 1, ... clicks of the robot user on one photo; stops early when nothing is left to correct."""
    pred = np.asarray(session.predict()["pred"], dtype=bool)
    automatic, points = pred, {True: [], False: []}
    curve = [iou(pred, truth_wh)]
    for _ in range(max_clicks):
        click = next_click(pred, truth_wh)
        if click is None:
            break
        x, y, positive = click
        if mode == "network":
            pred = np.asarray(session.click(x, y, positive)["pred"], dtype=bool)
        else:  # (row, column) = (y, x) in the module's numpy order; masks here are (W, H)
            points[positive].append((y, x))
            kept, _ = apply_clicks(automatic.T, foreground=points[True], background=points[False])
            pred = kept.T.astype(bool)
        curve.append(iou(pred, truth_wh))
    return curve


def run(
    dataset_dir: str,
    ckpt_path: str,
    out: str = "runs/clicks",
    label: str = "",
    mode: str = "network",
    datalist: str = "",
    eval_key: str = "test",
    max_clicks: int = 20,
    limit: int = 0,
) -> dict[str, Any]:
    """Run the robot user over the ``eval_key`` split with the checkpoint ``ckpt_path`` and write its record.

    Args:
        dataset_dir, datalist, eval_key: the data, as for the bundle's evaluation.
        ckpt_path: the checkpoint (``network`` mode needs a click-guided one).
        out: the folder for ``<label>.json`` and ``<label>.csv``.
        label: the row's name (default: the mode).
        mode: ``network`` or ``regions`` (see the module's docstring).
        max_clicks: clicks per photo at most.
        limit: only the first ``limit`` photos (0: all).
    """
    if mode not in MODES:
        raise ValueError(f"mode must be one of {', '.join(MODES)}, got {mode!r}.")
    items = load_datalist(dataset_dir, datalist or None, key=eval_key)
    items = items[: int(limit)] if limit else items
    segmenter = LesionSegmenter(overrides={"ckpt_path": str(ckpt_path)})
    if mode == "network" and not segmenter.guidance:
        raise ValueError(f"{ckpt_path} is an automatic network: its clicks would change nothing; use --mode regions.")
    apply_clicks = _slicer_apply_clicks() if mode == "regions" else None
    curves: dict[str, list[float]] = {}
    start = time.perf_counter()
    for index, item in enumerate(items, 1):
        truth = read_mask(item["label"]).T > 0
        curves[Path(item["image"]).name] = robot_curve(
            segmenter.session(item["image"]), truth, int(max_clicks), mode, apply_clicks
        )
        print(
            f"[{index}/{len(items)}] {Path(item['image']).name}: IoU {curves[Path(item['image']).name][0]:.3f}"
            f" -> {max(curves[Path(item['image']).name]):.3f}",
            file=sys.stderr,
            flush=True,
        )
    summary = interactive_summary(curves, max_clicks=int(max_clicks), after=AFTER)
    label = label or mode
    record = {
        "label": label,
        "mode": mode,
        "checkpoint": str(ckpt_path),
        "data": str(datalist or dataset_dir),
        "split": eval_key,
        "max_clicks": int(max_clicks),
        "seconds": round(time.perf_counter() - start, 1),
        "summary": summary,
        "curves": curves,
    }
    folder = Path(out)
    folder.mkdir(parents=True, exist_ok=True)
    write_text_atomically(folder / f"{label}.json", json.dumps(record, indent=1) + "\n")
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["image"] + [f"iou_after_{k}" for k in range(int(max_clicks) + 1)])
    for name, curve in curves.items():
        writer.writerow([name] + [f"{v:.4f}" for v in curve])
    write_text_atomically(folder / f"{label}.csv", buffer.getvalue())
    print(json.dumps(summary), flush=True)
    return summary


def table(out: str = "runs/clicks", labels: str = "") -> str:
    """Write ``<out>/clicks.md``: one row per ``run`` record named in ``labels`` (comma-separated; default all)."""
    folder = Path(out)
    listed = labels.split(",") if isinstance(labels, str) else list(labels)  # fire turns "a,b" into a tuple
    names = [str(n).strip() for n in listed if str(n).strip()] or sorted(p.stem for p in folder.glob("*.json"))
    rows = [
        "| Row | Mode | Photos | NoC@85 | NoC@90 | never 90 % in 20 | "
        + " | ".join(f"mIoU after {k}" for k in AFTER)
        + " |",
        "|---|---|---|---|---|---|" + "---|" * len(AFTER),
    ]
    for name in names:
        record = json.loads((folder / f"{name}.json").read_text(encoding="utf-8"))
        s = record["summary"]
        rows.append(
            f"| {name} | {record['mode']} | {s['n_images']} | {s['NoC@85']:.2f} | {s['NoC@90']:.2f} | "
            f"{s['failures@90']} | " + " | ".join(f"{100 * s[f'mIoU@{k}']:.2f}" for k in AFTER) + " |"
        )
    text = "\n".join(rows) + "\n"
    write_text_atomically(folder / "clicks.md", text)
    print(text, end="")
    return text


def main() -> int:
    try:
        fire.Fire({"run": run, "table": table}, serialize=lambda _: None)
    except ValueError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
