"""Per-click latency of the 3D Slicer worker with a click-guided network: the ``slicer_clicks`` section of
``scripts/benchmark.py``, and a command that measures this section alone and adds it to the benchmark's files.

    OMP_NUM_THREADS=1 nice -n 10 taskset -c 1 python -m scripts.benchmark_clicks --threads 1
    python -m scripts.benchmark_clicks --ckpt_path runs/my-interactive/models/model.pt

A worker is started as the Slicer module starts it (``WorkerClient``) with a click-guided checkpoint, warmed up (a
segment request and a first click on the photo: the fast path's export, the photo decoded into a session), and
then a simulated user clicks the 1024×683 photo ``clicks`` times, each click added to the ones before (the module
sends every point on each change; one network run each), and each click request is timed round-robin with the plain
segment request on the same photo (decode, preprocess, one network run, post-process), so that a disturbance hits
both alike. The user is the robot of the interactive evaluation (``bundle.interactive.next_click``: the deepest
point of the largest error region, against the photo's ground-truth mask). Times are the module's: from the request
leaving the client to the answer's arrays back in it.

The command merges its result into ``--out_json`` (the other sections stay as they were) and writes the whole
generated block of ``--out_md`` again from it, so one section can be measured again without the others.
"""

from __future__ import annotations

import datetime
import json
import os
import shlex
import statistics
import sys
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import fire

from scripts.benchmark_tools import PHOTO, REPO, subprocess_env

SECTION = "slicer_clicks"
CLICK_CHECKPOINT = REPO / "models" / "demo" / "rfeunet_resnet34_isic2017_128_clicks.pt"
TARGET_S = 0.5  # issue 16: per click in the Slicer worker, warm, 1024×683 photo, this project's 2-core CPU
GUIDANCE = ["positive_clicks", "negative_clicks", "previous_mask"]


def _worker_overrides(overrides: Mapping[str, Any], ckpt_path: str | os.PathLike | None) -> dict[str, Any]:
    """The inference.json overrides of the worker: the click-guided checkpoint, or (``ckpt_path`` "" in
    ``overrides``, the quick run) random weights of a click-guided network."""
    chosen = dict(overrides)
    if chosen.get("ckpt_path") == "":
        chosen.setdefault("guidance", GUIDANCE)
    else:
        chosen["ckpt_path"] = str(ckpt_path or chosen.get("ckpt_path") or CLICK_CHECKPOINT)
    return chosen


def _percentile(values: list[float], share: float) -> float:
    """The ``share`` quantile, linear between the samples (numpy's default)."""
    ordered = sorted(values)
    position = share * (len(ordered) - 1)
    low = int(position)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


def timing(seconds: list[float]) -> dict[str, Any]:
    """Median, 90th percentile, minimum and maximum of timed requests, with the samples."""
    return {
        "median_s": statistics.median(seconds),
        "p90_s": _percentile(seconds, 0.9),
        "min_s": min(seconds),
        "max_s": max(seconds),
        "samples_s": list(seconds),
    }


def run_info(threads: int) -> dict[str, Any]:
    """When, how and where this section ran: the command, the CPUs and priority it was held to."""
    return {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "command": shlex.join(["python", "-m", f"scripts.{Path(sys.argv[0]).stem}", *sys.argv[1:]]),
        "threads": threads,
        "cpus_allowed": sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "nice": os.nice(0) if hasattr(os, "nice") else None,
        "omp_num_threads": os.environ.get("OMP_NUM_THREADS"),
    }


def measure(settings: Any, ckpt_path: str | os.PathLike | None = None, clicks: int | None = None) -> dict[str, Any]:
    """The section: ``settings`` is scripts/benchmark.py's (threads, repeats, warmup, overrides); ``clicks`` clicks
    are timed (default: twice the benchmark's repeats)."""
    import numpy as np

    overrides = _worker_overrides(settings.overrides, ckpt_path)
    if overrides.get("ckpt_path") and not Path(overrides["ckpt_path"]).is_file():
        return {"skipped": f"no click-guided checkpoint at {overrides['ckpt_path']} (give one with --ckpt_path)"}
    truth_path = PHOTO.parents[1] / "masks" / f"{PHOTO.stem}.png"
    if not (PHOTO.is_file() and truth_path.is_file()):
        return {"skipped": f"photo or mask not found: {PHOTO}, {truth_path}"}
    from PIL import Image

    from bundle.images import read_mask
    from bundle.interactive import next_click
    from scripts.benchmark_tools import slicer_library

    WorkerClient = slicer_library("client").WorkerClient  # noqa: N806 - the library's class

    with Image.open(PHOTO) as image:
        photo = np.asarray(image.convert("RGB"))
    truth = read_mask(truth_path)  # (rows, columns)
    count = max(1, int(clicks or 2 * settings.repeats))
    client = WorkerClient(sys.executable, REPO, device="cpu", overrides=overrides, env=subprocess_env(settings.threads))
    try:
        info = client.start()
        if not info.get("guidance"):
            return {"skipped": f"{overrides.get('ckpt_path')}: not a click-guided network (its guidance is empty)"}
        for _ in range(max(1, settings.warmup)):
            answer = client.segment(photo)
        points = [_robot_click(next_click, answer["pred"], truth)]
        start = time.perf_counter()
        answer = client.click(photo, points)
        first_click_s = time.perf_counter() - start
        click_s, segment_s, worker_s, runs = [], [], [], []
        for _ in range(count):
            points.append(_robot_click(next_click, answer["pred"], truth))
            start = time.perf_counter()
            answer = client.click(photo, points)
            click_s.append(time.perf_counter() - start)
            worker_s.append(answer["seconds"])
            runs.append(answer["network_runs"])
            start = time.perf_counter()
            client.segment(photo)
            segment_s.append(time.perf_counter() - start)
    finally:
        client.close()
    result = {
        "photo": PHOTO.name,
        "photo_size": [int(photo.shape[1]), int(photo.shape[0])],
        "checkpoint": str(overrides.get("ckpt_path") or "random weights (quick run)"),
        "has_weights": bool(info.get("has_weights")),
        "guidance": info.get("guidance"),
        "device": info.get("device"),
        "first_click_s": first_click_s,
        "click": timing(click_s),
        "click_in_worker": timing(worker_s),
        "segment": timing(segment_s),
        "network_runs_per_click": runs,
        "clicks": [[round(x, 1), round(y, 1), positive] for x, y, positive in points],
        "run": run_info(settings.threads),
    }
    result["click_vs_segment"] = result["click"]["median_s"] / result["segment"]["median_s"]
    result["target"] = {"limit_s": TARGET_S, "measured_s": result["click"]["median_s"]}
    result["target"]["met"] = result["click"]["median_s"] <= TARGET_S
    return result


def _robot_click(next_click, pred: Any, truth: Any) -> tuple[float, float, bool]:
    """The simulated user's next click on a (rows, columns) mask, as ``(x, y, positive)``; when nothing is left to
    correct, a positive click on the lesion's deepest point (the request then still runs the network once)."""
    import numpy as np

    click = next_click(np.asarray(pred).T, truth.T)
    if click is None:
        click = next_click(np.zeros_like(truth.T), truth.T)
    x, y, positive = click
    return float(x), float(y), bool(positive)


def render(result: Mapping[str, Any]) -> list[str]:
    """The section's lines of docs/performance.md."""
    out = ["### 3D Slicer worker, one click (click-guided network)", ""]
    if "skipped" in result:
        return out + [f"Skipped: {result['skipped']}", ""]
    run = result["run"]
    cpus = ", ".join(str(c) for c in run["cpus_allowed"] or []) or "any"
    nice = f", at nice {run['nice']}" if run.get("nice") else ""
    omp = f", OMP_NUM_THREADS={run['omp_num_threads']}" if run.get("omp_num_threads") else ""
    width, height = result["photo_size"]
    count = len(result["click"]["samples_s"])
    out += [
        f"Measured {run['date']} with `{run['command']}`, on its own: held to CPU {cpus}{nice}{omp}, "
        f"{run['threads']} torch thread(s). Checkpoint: `{Path(result['checkpoint']).name}` (guidance "
        f"{', '.join(result['guidance'] or [])}; trained weights: {'yes' if result['has_weights'] else 'no'}), "
        f"device {result['device']}. A warm worker and session on {result['photo']} ({width}×{height}); {count} "
        "clicks of the simulated user, each added to the ones before (one network run each: "
        f"{sorted(set(result['network_runs_per_click']))}), timed round-robin with the plain segment request on the "
        "same photo. Times are the module's, request sent to answer received.",
        "",
        "| request | median (ms) | 90th percentile (ms) | max (ms) |",
        "|---|---|---|---|",
    ]
    for label, key in (
        ("click (all points so far, one network run)", "click"),
        ("of which in the worker", "click_in_worker"),
        ("segment (the whole photo, no points)", "segment"),
    ):
        entry = result[key]
        out.append(
            f"| {label} | {entry['median_s'] * 1000:.1f} | {entry['p90_s'] * 1000:.1f} | {entry['max_s'] * 1000:.1f} |"
        )
    target = result["target"]
    out += [
        "",
        f"Click ÷ segment (medians): **{result['click_vs_segment']:.2f}×**. First click on the photo (the session "
        "made: the photo sent and preprocessed; two runs, without the point for its previous mask and with it): "
        f"{result['first_click_s'] * 1000:.0f} ms. Target of issue 16, per click ≤ {target['limit_s']:g} s: "
        f"{target['measured_s']:.3f} s, " + ("**met**." if target["met"] else "**not met**."),
        "",
    ]
    return out


def main(
    threads: int | None = None,
    ckpt_path: str = "",
    clicks: int = 10,
    quick: bool = False,
    out_json: str = "docs/performance.json",
    out_md: str = "docs/performance.md",
) -> None:
    """Measure the per-click latency alone; merge it into ``out_json`` and write ``out_md``'s generated block again.

    Args:
        threads: torch threads of the worker (default: the CPUs this process may run on); recorded.
        ckpt_path: the click-guided checkpoint (default: the interactive demo, models/demo/..._clicks.pt).
        clicks: how many clicks are timed (and as many segment requests).
        quick: random weights of a small click-guided network (64 px) and 2 clicks: checks the machinery.
        out_json: the benchmark's JSON (paths relative to the repository); other sections in it are kept.
        out_md: the page whose generated block is written again from the merged JSON.
    """
    import torch

    from bundle.files import write_text_atomically
    from scripts import benchmark
    from scripts.benchmark_compute import machine_info

    threads = int(threads or (len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()))
    torch.set_num_threads(threads)
    settings = benchmark.Settings.quick(threads) if quick else benchmark.Settings(threads=threads)
    json_path, md_path = REPO / out_json, REPO / out_md
    results = json.loads(json_path.read_text()) if json_path.is_file() else {}
    section = measure(settings, ckpt_path or None, 2 if quick else clicks)
    results[SECTION] = section
    if "machine" not in results:
        results["machine"] = machine_info(settings)
    results.setdefault("targets", [])
    json_path.parent.mkdir(parents=True, exist_ok=True)
    write_text_atomically(json_path, json.dumps(results, indent=1) + "\n")
    benchmark.write_markdown(md_path, benchmark.render_markdown(results))
    print("\n".join(render(section)))


if __name__ == "__main__":
    fire.Fire(main)
