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

from bundle.checkpoint import model_record, network_settings, read_checkpoint, unwrap_state_dict
from scripts.make_demo_checkpoint import main, make_demo_checkpoint

from .conftest import REPO, run_bundle, script, script_env
from .small_bundle import copy_bundle, write_small_checkpoint

DEMO = REPO / "models" / "demo" / "rfeunet_resnet34_isic2017_128.pt"
CLICKS_DEMO = REPO / "models" / "demo" / "rfeunet_resnet34_isic2017_128_clicks.pt"


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


@pytest.mark.parametrize("path, guidance, floor", [
    (DEMO, [], 0.70),
    (CLICKS_DEMO, ["positive_clicks", "negative_clicks", "previous_mask"], 0.73),
])  # fmt: skip
def test_the_committed_demos_are_small_half_precision_and_know_their_network(path, guidance, floor):
    assert path.is_file(), f"the demo checkpoint {path} is missing (it is committed with the repository)"
    assert path.stat().st_size <= 60e6
    weights = unwrap_state_dict(read_checkpoint(path))
    assert {tensor.dtype for tensor in weights.values() if tensor.is_floating_point()} == {torch.float16}
    settings = network_settings(path)
    assert (settings["name"], settings["backbone"], settings["rfe"], settings["image_size"]) == (
        "rfeunet", "resnet34", True, 128,
    )  # fmt: skip
    assert settings.get("guidance", []) == guidance
    # without clicks, on the 150 ISIC 2017 validation photographs at their stored size
    assert model_record(path)["about"]["evaluation"]["original"]["mIoU"] >= floor


@pytest.mark.slow
def test_the_robot_users_clicks_improve_the_click_demos_masks(isic_val):
    """The interactive evaluation's simulated user (scripts/click_eval.py) on real photographs the demo never saw:
    three clicks, each at the deepest point of the largest error region, raise the mean IoU."""
    from bundle.images import read_mask
    from bundle.inference import LesionSegmenter
    from scripts.click_eval import robot_curve

    segmenter = LesionSegmenter(overrides={"ckpt_path": str(CLICKS_DEMO)})
    assert segmenter.guidance, "the click demo's network takes no clicks"
    photos = sorted((isic_val / "images").iterdir())[:8]
    before, after = [], []
    for photo in photos:
        truth = read_mask(isic_val / "masks" / f"{photo.stem}.png").T > 0  # (W, H), as the session's masks
        curve = robot_curve(segmenter.session(str(photo)), truth, max_clicks=3, mode="network")
        before.append(curve[0])
        after.append(curve[-1])  # the curve stops early once nothing is left to correct
    assert np.mean(after) > np.mean(before) + 0.02, (before, after)
    worse = sum(b0 > b3 + 0.02 for b0, b3 in zip(before, after, strict=True))
    assert worse <= 1, (before, after)  # clicks rarely make a mask worse


def iou(pred: np.ndarray, truth: np.ndarray) -> float:
    union = np.logical_or(pred, truth).sum()
    return 1.0 if union == 0 else float(np.logical_and(pred, truth).sum() / union)


@pytest.mark.slow
def test_inference_on_a_fresh_copy_uses_the_demo_and_finds_the_lesions(demo, isic_val, tmp_path):
    """The README's inference command in a bundle copy without models/model.pt, on real photographs it never saw: the
    click demo (interactive_demo_ckpt_path) without clicks."""
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
    loaded = [line for line in (proc.stdout + proc.stderr).splitlines() if "Loaded weights from" in line]
    assert loaded and loaded[-1].rstrip().endswith(CLICKS_DEMO.name), loaded
    scores = []
    for name in names:
        stem = Path(name).stem
        pred = np.asarray(Image.open(tmp_path / "masks" / f"{stem}_mask.png")) > 127
        truth = np.asarray(Image.open(isic_val / "masks" / f"{stem}.png")) > 127
        assert pred.shape == truth.shape
        scores.append(iou(pred, truth))
    assert np.mean(scores) >= 0.80, scores  # the click demo without clicks: 0.843 on these 12 (automatic demo 0.831)


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


@pytest.mark.slow
def test_the_command_line_and_evaluation_give_the_same_masks(isic_val, tmp_path):
    """configs/inference.json is the one pipeline (clean-up and TTA included): evaluation scores exactly the masks the
    command line writes (the Slicer worker's are compared with the command line's in tests/test_slicer_worker.py)."""
    names = sorted(p.stem for p in (isic_val / "images").iterdir() if p.stat().st_size < 1e6)[:3]
    photos = tmp_path / "photos"
    photos.mkdir()
    for name in names:
        shutil.copy(isic_val / "images" / f"{name}.jpg", photos)
    cli = run_bundle(
        "run", "--config_file", "configs/inference.json", "--dataset_dir", str(photos), "--output_dir",
        str(tmp_path / "masks"),
    )  # fmt: skip
    assert cli.returncode == 0, cli.stderr[-3000:]
    pairs = [{"image": f"images/{n}.jpg", "label": f"masks/{n}.png"} for n in names]
    datalist = tmp_path / "datalist.json"
    datalist.write_text(json.dumps({"training": pairs, "validation": pairs, "test": pairs}))
    evaluation = run_bundle(
        "run", "--config_file", "['configs/train.json','configs/evaluate.json']", "--dataset_dir", str(isic_val),
        "--datalist", str(datalist), "--eval_dir", str(tmp_path / "eval"), "--save_overlays", "false",
        "--num_workers", "0",
    )  # fmt: skip
    assert evaluation.returncode == 0, evaluation.stderr[-3000:]
    rows = {
        row["name"]: row
        for row in json.loads((tmp_path / "eval" / "metrics.json").read_text())["per_image"]["original"]
    }
    for name in names:
        pred = np.asarray(Image.open(tmp_path / "masks" / f"{name}_mask.png")) > 127
        truth = np.asarray(Image.open(isic_val / "masks" / f"{name}.png")) > 127
        counts = {"tp": pred & truth, "fp": pred & ~truth, "fn": ~pred & truth}
        row = rows[f"{name}.jpg"]  # the photos of one folder: plain names
        assert {key: int(row[key]) for key in counts} == {key: int(v.sum()) for key, v in counts.items()}, name


@pytest.mark.slow
def test_greyscale_photos_are_segmented_and_an_empty_mask_is_named(isic_val, tmp_path):
    """Greyscale versions of shared ISIC photos: the automatic demo (never trained on greyscale) finds no lesion in
    two of them, and says so (a warning naming each, counted in the summary line) instead of "0 failed" alone; the
    click demo, trained with greyscale augmentation and the default on a fresh clone, finds a lesion in all five."""
    names = ("ISIC_0001769", "ISIC_0001852", "ISIC_0003462", "ISIC_0012210", "ISIC_0014635")
    photos = tmp_path / "grey"
    photos.mkdir()
    for name in names:
        Image.open(isic_val / "images" / f"{name}.jpg").convert("L").save(photos / f"{name}.jpg", quality=95)
    automatic = run_bundle(
        "run", "--config_file", "['configs/inference.json','configs/demo.json']", "--dataset_dir", str(photos),
        "--output_dir", str(tmp_path / "automatic"),
    )  # fmt: skip
    assert automatic.returncode == 0, automatic.stderr[-3000:]
    output = (automatic.stdout + automatic.stderr).splitlines()
    warned = [line for line in output if "no lesion found, the mask is empty" in line]
    assert sorted(Path(line.split("WARNING - ")[1].split(":")[0]).stem for line in warned) == [
        "ISIC_0012210", "ISIC_0014635",
    ], warned  # fmt: skip
    assert "segmented 5 of 5 images; 0 failed; 2 with an empty mask (see the warnings)" in automatic.stdout
    clicks = run_bundle(
        "run", "--config_file", "configs/inference.json", "--dataset_dir", str(photos), "--output_dir",
        str(tmp_path / "clicks"),
    )  # fmt: skip
    assert clicks.returncode == 0, clicks.stderr[-3000:]
    assert "empty" not in clicks.stdout + clicks.stderr
    scores = []
    for name in names:
        pred = np.asarray(Image.open(tmp_path / "clicks" / f"{name}_mask.png")) > 127
        scores.append(iou(pred, np.asarray(Image.open(isic_val / "masks" / f"{name}.png")) > 127))
    assert min(scores) > 0.3 and np.mean(scores) > 0.65, scores
