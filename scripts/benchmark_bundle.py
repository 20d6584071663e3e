"""The benchmark's sections on the bundle's own inference path: one photograph end to end in a fresh process, a
folder through the runner, and the 3D Slicer module's worker against the bundle's cold start. Each ``measure_*``
takes ``(settings, workdir, results)`` and returns its JSON-able result.
"""

from __future__ import annotations

import contextlib
import json
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch

from scripts.benchmark_tools import (
    FULL_RESOLUTION,
    PHOTO,
    PHOTO_FOLDER,
    REPO,
    WORKER_LIBRARY,
    Settings,
    interleaved,
    peak_rss_mb,
    ratio,
    slicer_library,
    subprocess_env,
    summary,
)


def photo_case(case: Mapping[str, Any]) -> dict[str, Any]:
    """Run in a fresh process: one photo through ``LesionSegmenter`` end to end, and the forward pass alone."""
    started = time.perf_counter()
    torch.set_num_threads(int(case["threads"]))
    from bundle.inference import LesionSegmenter

    rss_imported = peak_rss_mb()
    segmenter = LesionSegmenter(bundle_root=REPO, overrides={**case["overrides"], "output_dir": case["output_dir"]})
    runner = segmenter.runner
    loaded_s = time.perf_counter() - started
    rss_loaded = peak_rss_mb()
    photo = case["photo"]
    start = time.perf_counter()
    first = segmenter.segment(photo)
    first_s = time.perf_counter() - start
    network_input = runner.preprocessing({"image": photo})["image"].unsqueeze(0).to(runner.device)
    forward = runner.forward if hasattr(runner, "forward") else _legacy_forward(runner)

    def preprocess():
        return runner.preprocessing({"image": photo})

    prepared = preprocess()
    predicted = runner.predict(prepared)
    cases = {
        "end_to_end": lambda: segmenter.segment(photo),
        "forward": lambda: forward(network_input),
        "decode_preprocess": preprocess,
        "forward_postprocess": lambda: runner.predict(prepared),
        "write": lambda: runner.writer(predicted),
    }
    times = interleaved(cases, int(case["repeats"]), int(case["warmup"]))
    return {
        "photo": photo,
        "photo_size": [int(v) for v in first["pred"].shape],  # (W, H)
        "network_input": list(network_input.shape),
        "mask_written": Path(first.get("pred_path", "")).is_file(),
        "process_to_loaded_s": loaded_s,
        "first_photo_s": first_s,
        **{name: summary(values) for name, values in times.items()},
        "rss_after_imports_mb": rss_imported,
        "rss_after_loading_mb": rss_loaded,
        "peak_rss_mb": peak_rss_mb(),
        "settings": _runner_settings(segmenter),
    }


def _legacy_forward(runner: Any) -> Callable[[torch.Tensor], torch.Tensor]:
    """The runner's network call as its ``predict`` makes it (for runners without a ``forward`` method)."""
    autocast = getattr(runner, "_autocast", contextlib.nullcontext)

    def forward(batch: torch.Tensor) -> torch.Tensor:
        with torch.inference_mode(), autocast():
            return runner.inferer(batch, runner.network)

    return forward


def _runner_settings(segmenter: Any) -> dict[str, Any]:
    """The network and options the bundle's inference resolved (they may come from the checkpoint)."""
    settings = {}
    for key in ("network_name", "backbone", "image_size", "ckpt_path", "amp", "device", "fast_path"):
        with contextlib.suppress(Exception):
            value = segmenter.parser.get_parsed_content(key)
            settings[key] = value if isinstance(value, (int, float, bool, str)) or value is None else str(value)
    settings["has_weights"] = bool(getattr(segmenter.runner, "has_weights", False))
    return settings


def run_case_in_subprocess(case: dict[str, Any], workdir: Path, threads: int) -> dict[str, Any]:
    """Measure ``case`` in a fresh ``python -m scripts.benchmark --case FILE`` process and return its result."""
    case_file = workdir / f"case_{len(list(workdir.glob('case_*.json')))}.json"
    result_file = case_file.with_suffix(".result.json")
    case_file.write_text(json.dumps({**case, "result_path": str(result_file)}))
    process = subprocess.run(
        [sys.executable, "-m", "scripts.benchmark", "--case", str(case_file)],
        cwd=REPO,
        capture_output=True,
        text=True,
        env=subprocess_env(threads),
    )
    if process.returncode != 0 or not result_file.is_file():
        tail = " | ".join((process.stderr or process.stdout).strip().splitlines()[-3:])
        raise RuntimeError(f"benchmark case {case_file} failed (exit {process.returncode}): {tail}")
    return json.loads(result_file.read_text())


def measure_end_to_end(settings: Settings, workdir: Path, results: Mapping[str, Any]) -> dict[str, Any]:
    """One photograph (1024 px and 4288 px) through ``LesionSegmenter`` against the forward pass alone."""
    rows = []
    for photo in (PHOTO, FULL_RESOLUTION):
        if not photo.is_file():
            rows.append({"photo": str(photo), "skipped": "photo not found (set RFE_SHARED_DIR to the shared/ folder)"})
            continue
        case = {
            "kind": "photo",
            "photo": str(photo),
            "threads": settings.threads,
            "repeats": settings.repeats,
            "warmup": settings.warmup,
            "overrides": settings.overrides,
            "output_dir": str(workdir / "masks"),
        }
        row = run_case_in_subprocess(case, workdir, settings.threads)
        row["end_to_end_vs_forward"] = ratio(row["end_to_end"]["median_s"], row["forward"]["median_s"])
        rows.append(row)
    return {"rows": rows}


def measure_batch(settings: Settings, workdir: Path, results: Mapping[str, Any]) -> dict[str, Any]:
    """A folder of photographs through ``SegmentationRunner.run`` against forward-only throughput."""
    from bundle.data import list_images
    from bundle.inference import LesionSegmenter

    if not PHOTO_FOLDER.is_dir():
        return {"skipped": f"{PHOTO_FOLDER} not found (set RFE_SHARED_DIR to the shared/ folder)"}
    items = list_images(PHOTO_FOLDER)[: settings.folder_photos]
    segmenter = LesionSegmenter(
        bundle_root=REPO, overrides={**settings.overrides, "output_dir": str(workdir / "batch")}
    )
    runner = segmenter.runner
    forward = runner.forward if hasattr(runner, "forward") else _legacy_forward(runner)
    network_input = runner.preprocessing(dict(items[0]))["image"].unsqueeze(0).to(runner.device)
    runner.run(items[:1])  # warm-up
    start = time.perf_counter()
    results, failures = runner.run(items)
    folder_s = time.perf_counter() - start
    forward_times = interleaved({"forward": lambda: forward(network_input)}, settings.repeats, settings.warmup)
    forward_rate = 1.0 / statistics.median(forward_times["forward"])
    result = {
        "photos": len(items),
        "segmented": len(results),
        "failures": len(failures),
        "folder_s": folder_s,
        "photos_per_s": len(results) / folder_s,
        "forward_batch_size": 1,
        "forward": summary(forward_times["forward"]),
        "forward_photos_per_s": forward_rate,
        "settings": _runner_settings(segmenter),
    }
    result["batch_vs_forward"] = ratio(result["photos_per_s"], forward_rate)
    return result


def _bundle_cold_start(settings: Settings, workdir: Path) -> float:
    """Seconds of a fresh ``monai.bundle run`` of ``configs/inference.json`` on one photo."""
    single = workdir / "single"
    single.mkdir(exist_ok=True)
    (single / PHOTO.name).symlink_to(PHOTO)
    overrides = [
        part
        for key, value in settings.overrides.items()
        for part in (f"--{key}", value if isinstance(value, str) else json.dumps(value))
    ]
    command = [
        *(sys.executable, "-m", "monai.bundle", "run", "--config_file", "configs/inference.json"),
        *("--dataset_dir", str(single), "--output_dir", str(workdir / "cold"), *overrides),
    ]
    start = time.perf_counter()
    cold = subprocess.run(command, cwd=REPO, capture_output=True, text=True, env=subprocess_env(settings.threads))
    cold_s = time.perf_counter() - start
    if cold.returncode != 0:
        raise RuntimeError(f"bundle cold start failed: {' | '.join(cold.stderr.strip().splitlines()[-3:])}")
    return cold_s


def measure_slicer_worker(settings: Settings, workdir: Path, results: Mapping[str, Any]) -> dict[str, Any]:
    """The Slicer module's worker process: its start, first and warm requests, against the bundle's cold start."""
    worker_script = WORKER_LIBRARY / "SkinLesionSegmentationLib" / "worker.py"
    if not worker_script.is_file():
        return {"skipped": "the Slicer worker (slicer_extension/.../worker.py) does not exist yet"}
    if not (PHOTO.is_file() and PHOTO_FOLDER.is_dir()):
        return {"skipped": f"photos not found under {PHOTO_FOLDER}"}
    import numpy as np
    from PIL import Image

    cold_s = _bundle_cold_start(settings, workdir)
    second = next(p for p in sorted(PHOTO_FOLDER.iterdir()) if p.suffix.lower() == ".jpg" and p != PHOTO)
    photos = [np.asarray(Image.open(p).convert("RGB")) for p in (PHOTO, second)]
    client = slicer_library("client").WorkerClient(
        sys.executable, REPO, device="cpu", overrides=settings.overrides, env=subprocess_env(settings.threads)
    )
    try:
        start = time.perf_counter()
        client.start()
        started_s = time.perf_counter() - start
        start = time.perf_counter()
        client.segment(photos[0])
        first_s = time.perf_counter() - start
        warm = []
        for _ in range(max(1, settings.repeats)):
            start = time.perf_counter()
            client.segment(photos[1])
            warm.append(time.perf_counter() - start)
    finally:
        client.close()
    result = {
        "bundle_cold_start_s": cold_s,
        "worker_start_s": started_s,
        "worker_first_request_s": first_s,
        "worker_warm_request": summary(warm),
        "photo_sizes": [list(p.shape[:2]) for p in photos],
    }
    result["warm_vs_cold"] = ratio(result["worker_warm_request"]["median_s"], cold_s)
    return result
