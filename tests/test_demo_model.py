"""The demo model: scripts/make_demo_checkpoint.py (half precision, settings and provenance kept), and the committed
checkpoint segmenting real ISIC 2017 photographs out of the box, from a copy of the bundle that was never trained."""

from __future__ import annotations

import json
import shutil
import subprocess
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from bundle.checkpoint import model_record, network_settings, read_checkpoint
from scripts.make_demo_checkpoint import main, make_demo_checkpoint

from .conftest import REPO, run_bundle, script, script_env
from .small_bundle import copy_bundle, write_small_checkpoint

DEMO = REPO / "models" / "demo" / "rfeunet_resnet34_isic2017_128.pt"


def test_half_precision_checkpoint_keeps_settings_and_the_networks_output(tmp_path):
    trained = write_small_checkpoint(tmp_path / "models" / "model.pt")
    report = tmp_path / "metrics.json"
    report.write_text(json.dumps({"summary": {"original": {"mIoU": 0.5}}, "per_image": {}}))
    out = tmp_path / "demo.pt"
    result = make_demo_checkpoint(str(trained), str(out), evaluation=str(report), data="d", recipe="r")
    assert 0 < result["max_weight_change"] < 1e-2
    content = read_checkpoint(out)
    assert all(isinstance(tensor, torch.Tensor) for tensor in content.values())  # a plain state_dict
    assert network_settings(out) == network_settings(trained)
    about = model_record(out)["about"]
    assert about["evaluation"] == {"original": {"mIoU": 0.5}} and about["recipe"] == "r"
    original = read_checkpoint(trained)
    for name, tensor in content.items():
        assert tensor.dtype == (torch.float16 if original[name].is_floating_point() else original[name].dtype), name
    assert out.stat().st_size < 0.6 * trained.stat().st_size


def test_a_checkpoint_without_settings_is_one_error_line(tmp_path, capsys):
    bare = tmp_path / "bare.pt"
    torch.save({"weight": torch.zeros(2)}, bare)
    assert main([str(bare), "--out", str(tmp_path / "x.pt")]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "records no network settings" in err and err.count("\n") == 1
    assert not (tmp_path / "x.pt").exists()


@pytest.fixture(scope="module")
def demo() -> Path:
    if not DEMO.is_file():
        pytest.fail(f"the demo checkpoint {DEMO} is missing (it is committed with the repository)")
    return DEMO


def test_the_committed_demo_is_small_half_precision_and_knows_its_network(demo):
    assert demo.stat().st_size <= 60e6
    content = read_checkpoint(demo)
    assert {tensor.dtype for tensor in content["model"].values() if tensor.is_floating_point()} == {torch.float16}
    settings = content["network"]
    assert (settings["name"], settings["backbone"], settings["rfe"], settings["image_size"]) == (
        "rfeunet", "resnet34", True, 128,
    )  # fmt: skip
    assert content["about"]["evaluation"]["original"]["mIoU"] >= 0.70  # on the 150 ISIC 2017 test photographs


def iou(pred: np.ndarray, truth: np.ndarray) -> float:
    union = np.logical_or(pred, truth).sum()
    return 1.0 if union == 0 else float(np.logical_and(pred, truth).sum() / union)


@pytest.mark.slow
def test_inference_on_a_fresh_copy_uses_the_demo_and_finds_the_lesions(demo, isic_val, tmp_path):
    """The README's inference command in a bundle copy without models/model.pt, on real photographs it never saw."""
    root = copy_bundle(tmp_path / "bundle")
    shutil.copytree(demo.parent, root / "models" / "demo")  # what a clone holds: the demo, no trained model
    assert not (root / "models" / "model.pt").exists() and (root / "models" / "demo" / demo.name).is_file()
    photos = tmp_path / "photos"
    photos.mkdir()
    names = sorted(p.name for p in (isic_val / "images").iterdir())[:12]
    for name in names:
        shutil.copy(isic_val / "images" / name, photos / name)
    proc = run_bundle(
        "run", "--config_file", "configs/inference.json", "--dataset_dir", str(photos), "--output_dir",
        str(tmp_path / "masks"), cwd=root,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "RANDOM weights" not in proc.stdout + proc.stderr
    scores = []
    for name in names:
        stem = Path(name).stem
        pred = np.asarray(Image.open(tmp_path / "masks" / f"{stem}_mask.png")) > 127
        truth = np.asarray(Image.open(isic_val / "masks" / f"{stem}.png")) > 127
        assert pred.shape == truth.shape
        scores.append(iou(pred, truth))
    assert np.mean(scores) >= 0.70, scores


@pytest.mark.slow
def test_the_demo_mixin_selects_the_demo_over_a_trained_model(demo, isic_val, tmp_path):
    root = copy_bundle(tmp_path / "bundle")
    shutil.copytree(demo.parent, root / "models" / "demo")
    write_small_checkpoint(root / "models" / "model.pt")  # a user's own ResNet-34 at 64 px
    photo = sorted((isic_val / "images").iterdir())[0]
    for configs, expected in (
        ("configs/inference.json", "model.pt"),
        ("['configs/inference.json','configs/demo.json']", demo.name),
    ):
        proc = run_bundle(
            "run", "--config_file", configs, "--dataset_dir", str(photo), "--output_dir", str(tmp_path / "out"),
            cwd=root,
        )  # fmt: skip
        assert proc.returncode == 0, proc.stderr[-3000:]
        loaded = [line for line in (proc.stdout + proc.stderr).splitlines() if "Loaded weights from" in line]
        assert loaded and loaded[-1].rstrip().endswith(expected), loaded


@pytest.mark.slow
def test_a_fresh_copy_exports_the_demo_for_monai_label(demo, tmp_path):
    """No models/model.pt: the zip ships the demo as models/model.pt, with its network in the zip's configs."""
    root = copy_bundle(tmp_path / "bundle")
    shutil.copytree(demo.parent, root / "models" / "demo")
    proc = subprocess.run(
        [*script("export_bundle"), "--bundle_root", str(root), "--output_dir", str(tmp_path / "dist")],
        capture_output=True, text=True, timeout=600, env=script_env(),
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    copied = root / "models" / "demo" / demo.name
    assert f"no models/model.pt was trained: shipping the demo checkpoint {copied}\n" in proc.stdout
    assert f"shipped {copied} as models/model.pt: RFE U-Net, ResNet-34 encoder, 128x128 input" in proc.stdout
    with zipfile.ZipFile(next((tmp_path / "dist").glob("*.zip"))) as archive:
        archive.extract("rfe_unet_skin_lesion/models/model.pt", tmp_path)
        train = json.loads(archive.read("rfe_unet_skin_lesion/configs/train.json"))
    shipped = read_checkpoint(tmp_path / "rfe_unet_skin_lesion" / "models" / "model.pt")  # the plain layout
    original = read_checkpoint(demo)["model"]
    assert shipped.keys() == original.keys() and all(torch.equal(shipped[k], v) for k, v in original.items())
    assert (train["backbone"], train["image_size"]) == ("resnet34", 128)


@pytest.mark.slow
def test_export_of_a_bundle_without_a_demo_entry_names_the_missing_weights(tmp_path):
    """A bundle whose inference.json predates ``demo_ckpt_path`` has no demo to fall back on: one error line."""
    root = copy_bundle(tmp_path / "bundle")
    config = root / "configs" / "inference.json"
    content = json.loads(config.read_text())
    del content["demo_ckpt_path"]
    config.write_text(json.dumps(content, indent=4))
    proc = subprocess.run(
        [*script("export_bundle"), "--bundle_root", str(root), "--output_dir", str(tmp_path / "dist")],
        capture_output=True, text=True, timeout=600, env=script_env(),
    )  # fmt: skip
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [
        f"ERROR {root}/models/model.pt: no trained weights to export; train first, or pass --allow_random_weights true"
    ]
