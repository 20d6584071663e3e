"""Benchmark the RFE U-Net beside the networks a MONAI user would pick instead, and the bundle around it.

Every figure comes from one run on one machine, side by side, with a fixed number of threads: warm-up calls, then
the median of repeated calls, taken round-robin over the cases being compared so that a disturbance (another
process, a frequency change) hits them alike. Sections:

- ``ceiling``: multiply-accumulates per second (MAC/s) of one large 3x3 convolution, the most this machine gives;
- ``networks``: forward latency at batch 1 and throughput at batch 8 for the RFE U-Net (ResNet-34/50/101),
  MONAI's FlexibleUNet (ResNet-34/101) and BasicUNet, with parameters, MACs, MAC/s, and the share of the time
  spent in convolutions (the rest is memory-bound: normalisation, activations, pooling, concatenation, copies);
- ``fast_path``: inference options (inference mode, channels-last, BatchNorm folding, TorchScript freezing,
  ONNX Runtime, bf16 autocast) against plain eager inference of the RFE U-Net;
- ``training``: one training step (forward, loss, backward, Adam) of ``configs/train.json``'s network at its batch
  size, against its cached training loader alone;
- ``end_to_end``: one photograph through the bundle's own path (``bundle.inference.LesionSegmenter``: decode,
  preprocess, forward, resize back, write the PNG), each case in a fresh process (for its peak memory), against
  the forward pass alone;
- ``batch``: a folder of photographs through the same runner (photos/s) against forward-only throughput;
- ``slicer_worker``: the 3D Slicer module's worker process, its warm request against the bundle's cold start;
- ``slicer_clicks``: one click in that worker with a click-guided network, against its segment request
  (``scripts/benchmark_clicks.py``, which also measures it alone).

Writes the results as JSON (``--out_json``) and as tables between the ``<!-- benchmark:begin -->`` and
``<!-- benchmark:end -->`` lines of ``--out_md`` (docs/performance.md), each target of issue 11 marked met or not.

    python -m scripts.benchmark                          # everything, all the cores this process may use
    taskset -c 1 python -m scripts.benchmark --threads 1 --sections networks,fast_path
    python -m scripts.benchmark --quick --out_json /tmp/b.json --out_md /tmp/b.md   # a tiny run (tests)

The sections are measured in ``scripts/benchmark_compute.py``, ``scripts/benchmark_bundle.py`` and
``scripts/benchmark_clicks.py`` and rendered by ``scripts/benchmark_report.py`` (the clicks by their own module);
:data:`SECTIONS` registers each one (a new section is one entry).

MACs are counted by forward hooks on convolutions, transposed convolutions and linear layers (one multiply-add
each); thop, which the paper used, also counts BatchNorm and upsampling and counts a stride-2 transposed
convolution four times, so its totals are larger (tests/test_benchmark.py checks the two against each other).
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import fire
import torch

from scripts import benchmark_bundle, benchmark_clicks, benchmark_compute, benchmark_report
from scripts.benchmark_report import BEGIN, END, evaluate_targets, write_markdown
from scripts.benchmark_tools import (
    FAST_PATH_OPTIONS,
    NETWORKS,
    REPO,
    Settings,
    count_macs,
    mac_breakdown,
    network_label,
)

__all__ = [
    "BEGIN",
    "END",
    "FAST_PATH_OPTIONS",
    "NETWORKS",
    "SECTIONS",
    "Section",
    "count_macs",
    "evaluate_targets",
    "mac_breakdown",
    "main",
    "network_label",
    "render_markdown",
    "write_markdown",
]


@dataclass(frozen=True)
class Section:
    """One part of the benchmark.

    Args:
        measure: ``measure(settings, workdir, results)`` → the section's JSON-able result; ``workdir`` is a
            temporary folder of this run, ``results`` holds the sections measured before it. An exception fails
            this section only.
        render: ``render(result)`` → the markdown lines of the section's tables.
    """

    measure: Callable[[Settings, Path, Mapping[str, Any]], dict[str, Any]]
    render: Callable[[Mapping[str, Any]], list[str]]


# The sections, measured and rendered in this order. A new section is one entry here, its functions in a module
# of its own.
SECTIONS: dict[str, Section] = {
    "ceiling": Section(benchmark_compute.measure_ceiling, benchmark_report.ceiling_lines),
    "networks": Section(benchmark_compute.measure_networks, benchmark_report.networks_lines),
    "fast_path": Section(benchmark_compute.measure_fast_path, benchmark_report.fast_path_lines),
    "training": Section(benchmark_compute.measure_training, benchmark_report.training_lines),
    "end_to_end": Section(benchmark_bundle.measure_end_to_end, benchmark_report.end_to_end_lines),
    "batch": Section(benchmark_bundle.measure_batch, benchmark_report.batch_lines),
    "slicer_worker": Section(benchmark_bundle.measure_slicer_worker, benchmark_report.slicer_worker_lines),
    "slicer_clicks": Section(lambda settings, _, __: benchmark_clicks.measure(settings), benchmark_clicks.render),
}


def render_markdown(results: Mapping[str, Any]) -> str:
    """The tables of docs/performance.md's generated block, for the sections of :data:`SECTIONS`."""
    return benchmark_report.render_markdown(results, {name: s.render for name, s in SECTIONS.items()})


def chosen_sections(sections: str | Sequence[str]) -> list[str]:
    """The section names ``--sections`` gives (comma-separated, or ``all``), in :data:`SECTIONS`' order.

    Raises:
        ValueError: an unknown name, naming the known ones.
    """
    chosen = list(SECTIONS) if sections == "all" else [sections] if isinstance(sections, str) else list(sections)
    chosen = [s.strip() for item in chosen for s in str(item).split(",") if s.strip()]
    unknown = sorted(set(chosen) - set(SECTIONS))
    if unknown:
        raise ValueError(f"unknown section(s) {', '.join(unknown)}; choose from {', '.join(SECTIONS)}")
    return [name for name in SECTIONS if name in chosen]


def measure(settings: Settings, names: Sequence[str]) -> tuple[dict[str, Any], list[str]]:
    """The machine and each of the sections ``names``, with the targets; and the names of those that failed
    (their result is ``{"error": ...}``, the others are still measured)."""
    results: dict[str, Any] = {"machine": benchmark_compute.machine_info(settings)}
    failed: list[str] = []
    with tempfile.TemporaryDirectory(prefix="rfe-benchmark-") as tmp:
        for name in names:
            start = time.perf_counter()
            print(f"benchmark: {name} ...", file=sys.stderr, flush=True)
            try:
                results[name] = SECTIONS[name].measure(settings, Path(tmp), results)
            except Exception as error:  # noqa: BLE001 - one failed section must not lose the others
                results[name] = {"error": f"{type(error).__name__}: {error}"}
                failed.append(name)
                print(f"ERROR benchmark section {name}: {results[name]['error']}", file=sys.stderr, flush=True)
                continue
            print(f"benchmark: {name} took {time.perf_counter() - start:.0f} s", file=sys.stderr, flush=True)
    results["targets"] = evaluate_targets(results)
    return results, failed


def main(
    threads: int | None = None,
    quick: bool = False,
    sections: str | Sequence[str] = "all",
    out_json: str = "docs/performance.json",
    out_md: str = "docs/performance.md",
    overrides: dict | None = None,
    case: str = "",
) -> None:
    """Run the benchmark and write ``out_json`` and the generated block of ``out_md`` (paths relative to the repo).

    Args:
        threads: torch threads for every measurement (default: the CPUs this process may run on); recorded.
        quick: a tiny configuration (64 px, batch 2, one repeat) that checks the machinery in seconds.
        sections: comma-separated subset of ceiling, networks, fast_path, training, end_to_end, batch,
            slicer_worker, slicer_clicks; ``all``: every one.
        out_json: where to write the measurements.
        out_md: where to write the generated block; everything outside it is kept.
        overrides: configs/inference.json keys and values for the bundle's own path (end_to_end, batch,
            slicer_worker), as a JSON object (for example one that sets ckpt_path to models/model.pt).
        case: internal: measure the case described by this JSON file in this (fresh) process.
    """
    if case:
        spec = json.loads(Path(case).read_text())
        Path(spec["result_path"]).write_text(json.dumps(benchmark_bundle.photo_case(spec)))
        return
    try:
        names = chosen_sections(sections)
    except ValueError as error:
        raise SystemExit(f"ERROR {error}") from None
    threads = int(threads or (len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()))
    torch.set_num_threads(threads)
    settings = Settings.quick(threads) if quick else Settings(threads=threads)
    settings.overrides.update(overrides or {})
    results, failed = measure(settings, names)
    json_path, md_path = REPO / out_json, REPO / out_md
    json_path.parent.mkdir(parents=True, exist_ok=True)
    json_path.write_text(json.dumps(results, indent=1) + "\n")
    write_markdown(md_path, render_markdown(results))
    print(render_markdown(results))
    if failed:
        raise SystemExit(1)


if __name__ == "__main__":
    fire.Fire(main)
