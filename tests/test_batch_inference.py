"""Batch inference that scales out: photos decoded in DataLoader workers while the network runs, and the same
inference split over processes by torchrun (configs/multi_gpu_inference.json), each photo segmented once."""

from __future__ import annotations

import os
import re
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image

from bundle.inference import LesionSegmenter
from bundle.networks import make_network

from .conftest import REPO, run_bundle
from .test_inference import red_overrides, unusual_and_broken_folder

INFER = ("run", "--config_file", "configs/inference.json")


def test_workers_give_what_one_thread_gives(tmp_path):
    """Readable photos, unusual ones and broken files through 2 worker processes and through the thread: the same
    masks, the same one-line failures, in the same order."""
    readable, broken = unusual_and_broken_folder(tmp_path / "in")
    items = sorted(str(p) for p in (tmp_path / "in").iterdir())
    outcomes = {}
    for workers in (0, 2):
        segmenter = LesionSegmenter(
            bundle_root=REPO, overrides={**red_overrides(tmp_path / f"out{workers}"), "num_workers": workers}
        )
        assert segmenter.runner.num_workers == workers
        results, failures = segmenter.run(items)
        masks = {r["pred_path"].rsplit("/", 1)[1]: np.asarray(Image.open(r["pred_path"])) for r in results}
        outcomes[workers] = (list(masks), masks, failures)
    names, masks, failures = outcomes[2]
    assert names == outcomes[0][0] and len(names) == len(readable)
    assert failures == outcomes[0][2] and [p.rsplit("/", 1)[1] for p, _ in failures] == sorted(broken)
    for name in names:
        np.testing.assert_array_equal(masks[name], outcomes[0][1][name])
    assert all(reason.startswith(str(tmp_path)) for _, reason in failures)  # each names its file


@pytest.fixture()
def small_checkpoint(tmp_path):
    """A ResNet-34 RFE U-Net checkpoint at 64 px in the bundle's format (every process loads the same weights)."""
    torch.manual_seed(0)
    network = make_network("rfeunet", "resnet34")
    with torch.no_grad():
        network.train()(torch.randn(2, 3, 64, 64))
    settings = {
        "name": "rfeunet",
        "backbone": "resnet34",
        "rfe": True,
        "in_channels": 3,
        "out_channels": 2,
        "image_size": 64,
        "pixel_mean": [0.485, 0.456, 0.406],
        "pixel_std": [0.229, 0.224, 0.225],
    }
    path = tmp_path / "model.pt"
    torch.save({"model": network.state_dict(), "network": settings}, path)
    return path


@pytest.mark.slow
def test_torchrun_splits_the_photos_over_two_processes(tmp_path, isic_val, small_checkpoint):
    """Two CPU processes (gloo) through real torchrun: every photo segmented exactly once, by one of them, with the
    masks a single process writes."""
    folder = tmp_path / "photos"
    folder.mkdir()
    photos = sorted((isic_val / "images").glob("*.jpg"))[:5]
    for photo in photos:
        (folder / photo.name).symlink_to(photo)
    common = (
        "--dataset_dir",
        str(folder),
        "--ckpt_path",
        str(small_checkpoint),
        "--fast_path_cache",
        str(tmp_path / "cache"),
    )
    single = run_bundle(*INFER, *common, "--output_dir", str(tmp_path / "single"))
    assert single.returncode == 0, single.stderr[-2000:]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    multi = subprocess.run(
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--nproc_per_node=2",
            "--master_port=29519",
            "-m",
            "monai.bundle",
            *INFER[:1],
            "--config_file",
            "['configs/inference.json','configs/multi_gpu_inference.json']",
            *common,
            "--output_dir",
            str(tmp_path / "multi"),
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=900,
        env=env,
    )
    assert multi.returncode == 0, multi.stderr[-3000:]
    shares = sorted(int(n) for n, total in re.findall(r"segmented (\d+) of (\d+) images", multi.stdout) if n == total)
    assert shares == [2, 3], multi.stdout  # both processes worked, 5 photos between them
    expected = sorted(f"{p.stem}_mask.png" for p in photos)
    assert sorted(p.name for p in (tmp_path / "multi").iterdir()) == expected
    for name in expected:
        np.testing.assert_array_equal(
            np.asarray(Image.open(tmp_path / "multi" / name)), np.asarray(Image.open(tmp_path / "single" / name))
        )
