"""scripts/benchmark_clicks.py: a tiny real run (a real worker, a click-guided network with random weights at
64 px) merged into an existing benchmark JSON and page, other sections kept (no timing asserts)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from scripts import benchmark, benchmark_clicks

REPO = Path(__file__).resolve().parents[1]


def test_quick_run_adds_the_click_section_and_keeps_the_others(tmp_path, isic_val):
    out_json, out_md = tmp_path / "performance.json", tmp_path / "performance.md"
    before = json.loads((REPO / "docs" / "performance.json").read_text())
    before.pop(benchmark_clicks.SECTION, None)
    out_json.write_text(json.dumps(before))
    out_md.write_text(f"Hand-written analysis.\n\n{benchmark.BEGIN}\nold\n{benchmark.END}\n\nMore prose.\n")
    process = subprocess.run(
        [
            sys.executable,
            "-m",
            "scripts.benchmark_clicks",
            "--quick",
            "--threads",
            "1",
            "--out_json",
            str(out_json),
            "--out_md",
            str(out_md),
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert process.returncode == 0, process.stderr[-3000:]
    results = json.loads(out_json.read_text())
    assert {k: v for k, v in results.items() if k != benchmark_clicks.SECTION} == before
    clicks = results[benchmark_clicks.SECTION]
    assert "skipped" not in clicks, clicks
    assert clicks["photo_size"] == [1024, 683] and clicks["guidance"] == benchmark_clicks.GUIDANCE
    assert clicks["network_runs_per_click"] == [1, 1]  # each click added to the ones before: one run
    assert len(clicks["clicks"]) == 3  # the first (untimed) click and the two timed ones
    for key in ("click", "click_in_worker", "segment"):
        entry = clicks[key]
        assert entry["min_s"] <= entry["median_s"] <= entry["p90_s"] <= entry["max_s"]
    assert clicks["click_in_worker"]["median_s"] <= clicks["click"]["median_s"]
    assert clicks["click_vs_segment"] == pytest.approx(clicks["click"]["median_s"] / clicks["segment"]["median_s"])
    assert clicks["target"]["met"] == (clicks["click"]["median_s"] <= benchmark_clicks.TARGET_S)
    assert clicks["run"]["threads"] == 1 and clicks["run"]["command"].startswith("python -m scripts.benchmark_clicks")

    page = out_md.read_text()
    assert page.startswith("Hand-written analysis.") and page.rstrip().endswith("More prose.")
    block = page.split(benchmark.BEGIN)[1].split(benchmark.END)[0]
    assert block.lstrip("\n") == benchmark.render_markdown(results)
    assert "### 3D Slicer worker, one click (click-guided network)" in block and "### Networks" in block
    assert f"**{clicks['click_vs_segment']:.2f}×**" in block
