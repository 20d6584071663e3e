"""scripts/benchmark.py: its MAC counter against thop, and a tiny real run's JSON and markdown (no timing asserts)."""

from __future__ import annotations

import json
import math
import subprocess
import sys

import pytest
import torch
from torch import nn

from scripts import benchmark
from tests.conftest import REPO


def test_mac_counter_counts_each_layer_kind():
    model = nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1), nn.ConvTranspose2d(8, 4, 2, stride=2), nn.Flatten(), nn.Linear(4 * 20 * 20, 5)
    )
    counts = benchmark.mac_breakdown(model, torch.randn(2, 3, 10, 10))
    # conv: every output element sums 3*3*3 products; transposed conv: every input element feeds 4 channels * 2*2
    # taps; linear: every output sums 1600 products
    assert counts == {"0": 2 * 8 * 100 * 27, "1": 2 * 8 * 100 * 4 * 4, "3": 2 * 5 * 1600}
    grouped = nn.Conv2d(8, 8, 3, padding=1, groups=4)
    assert benchmark.count_macs(grouped, torch.randn(1, 8, 6, 6)) == 8 * 36 * 2 * 9


@pytest.mark.parametrize(
    ("name", "backbone"), [("rfeunet", "resnet34"), ("flexibleunet", "resnet34"), ("basicunet", "")]
)
def test_mac_counter_agrees_with_thop(name, backbone):
    """Same conv and linear MACs as thop; thop also counts normalisation and resampling (zeroed here) and counts a
    stride-2 transposed convolution as if it were a convolution over its output, four times its MACs."""
    thop = pytest.importorskip("thop")
    from bundle.networks import make_network

    model = make_network(name, backbone or "resnet34").eval()
    x = torch.randn(1, 3, 64, 64)
    counts = benchmark.mac_breakdown(model, x)
    not_macs = (
        nn.BatchNorm2d,
        nn.InstanceNorm2d,
        nn.Upsample,
        nn.LeakyReLU,
        nn.PReLU,
        nn.Softmax,
        nn.AvgPool2d,
        nn.AdaptiveAvgPool2d,
        nn.MaxPool2d,
    )
    thop_macs, _ = thop.profile(
        model, inputs=(x,), custom_ops={kind: lambda *_: None for kind in not_macs}, verbose=False
    )
    transposed = [n for n, m in model.named_modules() if isinstance(m, nn.ConvTranspose2d)]
    for layer in transposed:
        module = model.get_submodule(layer)
        assert module.kernel_size == module.stride == (2, 2)
    expected = sum(counts.values()) + 3 * sum(counts[n] for n in transposed)
    assert thop_macs == pytest.approx(expected, rel=1e-9)
    assert len(counts) == sum(isinstance(m, (nn.Conv2d, nn.ConvTranspose2d, nn.Linear)) for m in model.modules())


def test_markdown_block_replaced_and_prose_kept(tmp_path):
    page = tmp_path / "performance.md"
    page.write_text(
        f"# Performance\n\nProse before.\n\n{benchmark.BEGIN}\nold table\n{benchmark.END}\n\nProse after.\n"
    )
    benchmark.write_markdown(page, "new table\n")
    text = page.read_text()
    assert "old table" not in text and "new table" in text
    assert (
        text.index("Prose before.")
        < text.index(benchmark.BEGIN)
        < text.index("new table")
        < text.index(benchmark.END)
        < text.index("Prose after.")
    )
    fresh = tmp_path / "fresh.md"
    benchmark.write_markdown(fresh, "only table\n")
    assert fresh.read_text().count(benchmark.BEGIN) == 1 and "only table" in fresh.read_text()


def median(entry):
    return entry["median_s"]


@pytest.mark.slow
def test_quick_run_writes_consistent_json_and_markdown(tmp_path, isic_val):
    out_json, out_md = tmp_path / "bench.json", tmp_path / "bench.md"
    out_md.write_text(f"Hand-written analysis.\n\n{benchmark.BEGIN}\n{benchmark.END}\n")
    process = subprocess.run(
        [
            sys.executable,
            "-m",
            "scripts.benchmark",
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
        timeout=1200,
    )
    assert process.returncode == 0, process.stderr[-3000:]
    results = json.loads(out_json.read_text())
    assert results["machine"]["threads"] == 1
    assert results["machine"]["versions"]["torch"] == torch.__version__
    assert set(benchmark.SECTIONS) <= set(results)

    ceiling = results["ceiling"]
    assert ceiling["gmacs_per_s"] == pytest.approx(ceiling["macs"] / median(ceiling) / 1e9)
    rows = results["networks"]["rows"]
    assert len(rows) == len(benchmark.NETWORKS)
    for row in rows.values():
        assert row["macs"] > 0 and row["parameters"] > 0
        assert row["gmacs_per_s"] == pytest.approx(row["macs"] / median(row["batch1"]) / 1e9)
        assert row["of_ceiling"] == pytest.approx(row["gmacs_per_s"] / ceiling["gmacs_per_s"])
        assert row["images_per_s"] == pytest.approx(2 / median(row["batch2"]))
        assert 0 < row["convolution_time_share"] <= 1
        if row["name"] == "rfeunet" and row["backbone"] in ("resnet34", "resnet101"):
            peer = rows[benchmark.network_label("flexibleunet", row["backbone"])]
            assert row["vs_flexibleunet"] == pytest.approx(row["gmacs_per_s"] / peer["gmacs_per_s"])

    (fast,) = results["fast_path"]["rows"]
    eager = fast["options"]["eager"]
    assert eager["speedup"] == pytest.approx(1.0) and eager["max_abs_logit_difference"] == 0
    for option in benchmark.FAST_PATH_OPTIONS:
        entry = fast["options"][option]
        if "skipped" not in entry:
            assert entry["speedup"] == pytest.approx(median(eager) / median(entry))
            # the same function: fp32 options within float rounding, bf16 within its 8-bit mantissa
            assert entry["max_abs_logit_difference"] <= (0.05 if "bf16" in option else 1e-4) * fast["logit_scale"]

    training = results["training"]
    assert training["step_images_per_s"] == pytest.approx(training["batch_size"] / median(training["step"]))
    assert training["loader_vs_step"] == pytest.approx(training["loader_images_per_s"] / training["step_images_per_s"])

    photos = {row["photo_size"][0]: row for row in results["end_to_end"]["rows"]}
    assert set(photos) == {1024, 4288} and photos[4288]["photo_size"] == [4288, 2848]
    for row in photos.values():
        assert row["mask_written"]
        assert row["end_to_end_vs_forward"] == pytest.approx(median(row["end_to_end"]) / median(row["forward"]))
        assert row["peak_rss_mb"] >= row["rss_after_loading_mb"] >= row["rss_after_imports_mb"] > 0
        assert row["network_input"] == [1, 3, 64, 64]

    batch = results["batch"]
    assert batch["segmented"] == batch["photos"] == 3 and batch["failures"] == 0
    assert batch["batch_vs_forward"] == pytest.approx(batch["photos_per_s"] / batch["forward_photos_per_s"])

    worker = results["slicer_worker"]
    if "skipped" not in worker:
        assert worker["warm_vs_cold"] == pytest.approx(
            median(worker["worker_warm_request"]) / worker["bundle_cold_start_s"]
        )

    for target in results["targets"]:
        if target["measured"] is None:
            assert target["met"] is None
        else:
            limit = target["limit"]
            assert target["met"] == (target["measured"] >= limit if target["at_least"] else target["measured"] <= limit)
    assert math.isclose(
        next(t for t in results["targets"] if "1024×683" in t["target"])["measured"],
        photos[1024]["end_to_end_vs_forward"],
    )

    page = out_md.read_text()
    assert page.startswith("Hand-written analysis.")
    block = page.split(benchmark.BEGIN)[1].split(benchmark.END)[0]
    for heading in (
        "### Targets (issue 11)",
        "### Networks",
        "### Fast inference path",
        "### Training",
        "### One photograph end to end",
        "### Batch inference",
        "### 3D Slicer worker",
        "### GPU",
    ):
        assert heading in block
    verdicts = [
        line.rsplit("|", 2)[-2].strip()
        for line in block.split("### Targets")[1].split("###")[0].splitlines()
        if line.startswith("| ") and not line.startswith("| target")
    ]
    assert verdicts == [
        "not measured" if t["met"] is None else "**met**" if t["met"] else "**not met**" for t in results["targets"]
    ]
    for label in rows:
        assert f"| {label} |" in block
