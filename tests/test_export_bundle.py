"""The exported zip as a receiver gets it: ``monai.bundle download --url`` from a local HTTP server, then inference
and training inside the unpacked folder, in an environment where only the zip's own copy of the code can run."""

from __future__ import annotations

import functools
import hashlib
import http.server
import json
import shutil
import subprocess
import sys
import threading
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from .conftest import REPO, script, script_env
from .conftest import receiver_env as _receiver_env
from .small_bundle import (
    SMALL_CLICK_NETWORK,
    SMALL_NETWORK,
    copy_bundle,
    export_zip,
    small_bundle,
    write_small_checkpoint,
)

PHOTOS = ("ISIC_0001769.jpg", "ISIC_0001852.jpg", "ISIC_0003462.jpg")


def _export(*args: str, cwd: Path = REPO) -> subprocess.CompletedProcess:
    return subprocess.run(
        [*script("export_bundle"), *args],
        capture_output=True,
        text=True,
        timeout=600,
        cwd=cwd,
        env=script_env(),
    )


def _metadata(root: Path) -> dict:
    return json.loads((root / "configs" / "metadata.json").read_text())


def test_metadata_changelog_holds_the_version():
    metadata = _metadata(REPO)
    assert metadata["version"] in metadata["changelog"]
    assert metadata["bundle_name"] == "rfe_unet_skin_lesion"


@pytest.mark.slow
def test_export_refuses_without_trained_weights(tmp_path):
    root = copy_bundle(tmp_path / "bundle")
    proc = _export("--bundle_root", str(root), "--output_dir", str(tmp_path / "dist"))
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [
        f"ERROR {root}/models/model.pt: no trained weights to export; train first, or pass --allow_random_weights true"
    ]
    assert not list((tmp_path / "dist").glob("*.zip"))

    proc = _export("--bundle_root", str(root), "--output_dir", str(tmp_path / "dist"), "--allow_random_weights", "true")
    assert proc.returncode == 0, proc.stderr
    with zipfile.ZipFile(next((tmp_path / "dist").glob("*.zip"))) as archive:
        names = archive.namelist()
    assert "rfe_unet_skin_lesion/configs/inference.json" in names
    assert not [n for n in names if n.startswith("rfe_unet_skin_lesion/models/") and n.endswith((".pt", ".ts"))]


@pytest.mark.slow
def test_export_refuses_a_version_without_changelog_entry(tmp_path):
    root = copy_bundle(tmp_path / "bundle")
    metadata = _metadata(root)
    metadata["version"] = "9.9.9"
    (root / "configs" / "metadata.json").write_text(json.dumps(metadata))
    proc = _export("--bundle_root", str(root), "--output_dir", str(tmp_path / "dist"))
    assert proc.returncode == 2
    assert proc.stderr.strip() == (
        f"ERROR {root}/configs/metadata.json: the changelog has no entry for version 9.9.9; describe the release"
    )
    assert not list((tmp_path / "dist").glob("*.zip"))


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """A small trained-format bundle and the zip exported from it (with TorchScript)."""
    base = tmp_path_factory.mktemp("export")
    root = small_bundle(base / "bundle")
    return root, export_zip(root, base / "dist", "--torchscript", "true")


@pytest.mark.slow
def test_zip_has_the_model_zoo_layout_and_records_the_network(exported, tmp_path):
    root, path = exported
    metadata = _metadata(root)
    assert path.name == f"rfe_unet_skin_lesion_v{metadata['version']}.zip"
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    assert path.with_name(path.name + ".sha256").read_text() == f"{digest}  {path.name}\n"
    with zipfile.ZipFile(path) as archive:
        names = set(archive.namelist())
        archive.extractall(tmp_path)
    assert {n.split("/", 1)[0] for n in names} == {"rfe_unet_skin_lesion"}
    top = tmp_path / "rfe_unet_skin_lesion"
    for member in (
        "configs/inference.json",
        "configs/train.json",
        "configs/metadata.json",
        "configs/logging.conf",
        "models/model.pt",
        "models/model.ts",
        "docs/README.md",
        "LICENSE",
        "README.md",
        "bundle/__init__.py",
        "bundle/networks/rfe_unet.py",
        "sample_data/datalist.json",
    ):
        assert (top / member).is_file(), member
    assert not [n for n in names if "__pycache__" in n or n.endswith(".pyc")]
    assert (top / "models" / "model.pt").read_bytes() == (root / "models" / "model.pt").read_bytes()
    # the checkpoint's network is what a receiver's fine-tuning builds, and what the metadata describes
    train = json.loads((top / "configs" / "train.json").read_text())
    assert (train["backbone"], train["image_size"]) == (SMALL_NETWORK["backbone"], SMALL_NETWORK["image_size"])
    formats = _metadata(top)["network_data_format"]
    shapes = [tensor["spatial_shape"] for side in ("inputs", "outputs") for tensor in formats[side].values()]
    assert shapes == [[64, 64], [64, 64]]
    # the TorchScript file is the same network
    scripted = torch.jit.load(str(top / "models" / "model.ts"))
    from bundle.checkpoint import read_checkpoint, unwrap_state_dict

    state = unwrap_state_dict(read_checkpoint(top / "models" / "model.pt"))
    assert all(torch.equal(scripted.state_dict()[k], v) for k, v in state.items())


def _serve(folder: Path):
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(folder))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


def _receiver(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    proc = subprocess.run(
        [sys.executable, "-S", *args], cwd=cwd, env=_receiver_env(), capture_output=True, text=True, timeout=900
    )
    assert proc.returncode == 0, f"{args}:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return proc


@pytest.mark.slow
def test_received_zip_infers_like_the_repository_and_trains_with_its_own_code(exported, isic_val, tmp_path):
    root, path = exported
    # the receiver's environment really cannot see this repository's code
    blind = subprocess.run(
        [sys.executable, "-S", "-c", "import bundle"], cwd=tmp_path, env=_receiver_env(), capture_output=True, text=True
    )
    assert blind.returncode != 0 and "No module named 'bundle'" in blind.stderr

    server = _serve(path.parent)
    try:
        received = tmp_path / "received"
        received.mkdir()
        url = f"http://127.0.0.1:{server.server_address[1]}/{path.name}"
        _receiver(
            "-m",
            "monai.bundle",
            "download",
            "--name",
            "rfe_unet_skin_lesion",
            "--bundle_dir",
            str(received),
            "--url",
            url,
            cwd=tmp_path,
        )
    finally:
        server.shutdown()
        server.server_close()
    unpacked = received / "rfe_unet_skin_lesion"
    assert (unpacked / "configs" / "inference.json").is_file()
    found = _receiver("-c", "import bundle; print(bundle.__file__)", cwd=unpacked).stdout.strip()
    assert Path(found) == unpacked / "bundle" / "__init__.py"

    photos = tmp_path / "photos"
    photos.mkdir()
    for name in PHOTOS:
        shutil.copy(isic_val / "images" / name, photos / name)
    _receiver(
        "-m",
        "monai.bundle",
        "run",
        "--config_file",
        "configs/inference.json",
        "--dataset_dir",
        str(photos),
        "--output_dir",
        str(tmp_path / "theirs"),
        cwd=unpacked,
    )

    from bundle.inference import LesionSegmenter

    ours = LesionSegmenter(
        bundle_root=REPO,
        overrides={"ckpt_path": str(root / "models" / "model.pt"), "output_dir": str(tmp_path / "ours")},
    )
    for name in PHOTOS:
        stem = Path(name).stem
        mine = ours.segment(photos / name)["pred_path"]
        expected = np.asarray(Image.open(mine))
        received_mask = np.asarray(Image.open(tmp_path / "theirs" / f"{stem}_mask.png"))
        assert received_mask.shape == expected.shape == np.asarray(Image.open(photos / name)).shape[:2]
        assert 0.02 < (expected > 0).mean() < 0.98, "a mask of one class would make this comparison meaningless"
        assert np.array_equal(received_mask, expected), name

    before = (unpacked / "models" / "model.pt").read_bytes()
    _receiver(
        "-m",
        "monai.bundle",
        "run",
        "training",
        "--config_file",
        "configs/train.json",
        "--max_epochs",
        "1",
        "--num_workers",
        "0",
        "--batch_size",
        "4",
        cwd=unpacked,
    )
    # the received model is kept; the new training's model is in a folder of its own
    assert (unpacked / "models" / "model.pt").read_bytes() == before
    (after,) = (unpacked / "models").glob("*/model.pt")
    from bundle.checkpoint import network_settings

    trained = network_settings(after)
    assert (trained["backbone"], trained["image_size"]) == (SMALL_NETWORK["backbone"], SMALL_NETWORK["image_size"])


@pytest.mark.slow
def test_reexport_is_unchanged_and_other_weights_under_the_same_version_are_refused(exported, tmp_path):
    root, path = exported
    before = path.read_bytes()
    proc = _export("--bundle_root", str(root), "--output_dir", str(path.parent), "--torchscript", "true")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines()[-1].startswith(f"unchanged: an identical {path} (sha256 ")
    assert path.read_bytes() == before  # TorchScript differs byte for byte between runs, and is derived: ignored

    other = write_small_checkpoint(tmp_path / "models" / "other.pt", seed=1)
    proc = _export("--bundle_root", str(root), "--output_dir", str(path.parent), "--checkpoint", str(other))
    assert proc.returncode == 2
    [line] = proc.stderr.strip().splitlines()
    assert line.startswith(f"ERROR {path}: version 0.1.0 was already exported with other content (models/model.pt")
    assert "raise 'version' in configs/metadata.json" in line and "e.g. 0.1.1" in line
    assert path.read_bytes() == before


@pytest.mark.slow
def test_export_names_the_checkpoint_its_data_and_score_and_describes_it(tmp_path):
    from bundle.checkpoint import model_record, read_checkpoint, recorded_state_dict

    root = copy_bundle(tmp_path / "bundle")
    small = write_small_checkpoint(tmp_path / "small.pt")
    data = {"dataset": "/x/sample_data/images", "datalist": "", "training_pairs": 16, "validation_pairs": 4,
            "synthetic_sample": True}  # fmt: skip
    record = {**model_record(small), "data": data, "scores": {"epoch": 3, "val_mean_dice": 0.5, "val_mean_iou": 0.25}}
    (root / "models").mkdir()
    torch.save(recorded_state_dict(read_checkpoint(small), record), root / "models" / "model.pt")
    proc = _export("--bundle_root", str(root), "--output_dir", str(tmp_path / "dist"))
    assert proc.returncode == 0, proc.stderr
    assert (
        f"shipped {root / 'models' / 'model.pt'} as models/model.pt: RFE U-Net, ResNet-34 encoder, 64x64 input, "
        "trained on the embedded SYNTHETIC sample (16 training and 4 validation pairs of drawn blobs, no real "
        "photographs); val_mean_dice 0.5000, val_mean_iou 0.2500 on the validation pairs at epoch 3"
    ) in proc.stdout
    [warning] = [line for line in proc.stderr.splitlines() if line.startswith("WARNING")]
    assert "SYNTHETIC" in warning
    with zipfile.ZipFile(next((tmp_path / "dist").glob("*.zip"))) as archive:
        metadata = json.loads(archive.read("rfe_unet_skin_lesion/configs/metadata.json"))
        readme = archive.read("rfe_unet_skin_lesion/README.md").decode()
        inference = json.loads(archive.read("rfe_unet_skin_lesion/configs/inference.json"))
    assert metadata["eval_metrics"] == {"val_mean_dice": 0.5, "val_mean_iou": 0.25}
    assert "ResNet-34 encoder, 64x64 input" in metadata["description"] and "SYNTHETIC" in metadata["data_source"]
    assert "ResNet-101" not in metadata["description"] and "256x256" not in metadata["description"]
    assert inference["network_defaults"]["backbone"] == "resnet34" and inference["network_defaults"]["image_size"] == 64
    assert "pip install -e" not in readme and metadata["description"] in readme


@pytest.mark.slow
def test_interactive_export_ships_a_click_guided_model_as_deepedit_and_refuses_one_without_clicks(tmp_path):
    root = copy_bundle(tmp_path / "bundle")  # a fresh clone: nothing trained, no interactive demo yet
    dist = tmp_path / "dist"
    demo = root / "models" / "demo" / "rfeunet_resnet34_isic2017_128_clicks.pt"  # interactive_demo_ckpt_path
    proc = _export("--bundle_root", str(root), "--output_dir", str(dist), "--interactive", "true")
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [
        f"ERROR {root}/models/model.pt: no such checkpoint; an interactive bundle needs a click-guided one: a "
        f"models/model.pt trained with configs/interactive.json, the interactive demo {demo}, or --checkpoint"
    ]
    plain = write_small_checkpoint(root / "models" / "model.pt")
    proc = _export("--bundle_root", str(root), "--output_dir", str(dist), "--interactive", "true")
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [
        f"ERROR {plain}: its network takes no clicks (no guidance channels), so it cannot be an interactive bundle; "
        "export it without --interactive, or give a click-guided checkpoint (trained with configs/interactive.json)"
    ]
    assert not dist.exists() or not list(dist.glob("*.zip"))

    # models/model.pt takes no clicks: the interactive demo is shipped
    write_small_checkpoint(demo, network=SMALL_CLICK_NETWORK)
    proc = _export("--bundle_root", str(root), "--output_dir", str(dist), "--interactive", "true")
    assert proc.returncode == 0, proc.stderr
    name = "rfe_unet_skin_lesion_deepedit"
    assert f"models/model.pt takes no clicks: shipping the interactive demo checkpoint {demo}" in proc.stdout
    assert f"MONAI Label serves it as {name} (DeepEdit: the user's points) and {name}_seg (automatic)" in proc.stdout
    [path] = dist.glob("*.zip")
    assert path.name == f"{name}_v0.1.0.zip"
    with zipfile.ZipFile(path) as archive:
        assert {n.split("/", 1)[0] for n in archive.namelist()} == {name}
        assert archive.read(f"{name}/models/model.pt") == demo.read_bytes()
        metadata = json.loads(archive.read(f"{name}/configs/metadata.json"))
        inference = json.loads(archive.read(f"{name}/configs/inference.json"))
        readme = archive.read(f"{name}/README.md").decode()
    assert metadata["bundle_name"] == name
    image, pred = metadata["network_data_format"]["inputs"]["image"], metadata["network_data_format"]["outputs"]["pred"]
    assert image["num_channels"] == 6 and image["channel_def"] == {
        "0": "R", "1": "G", "2": "B", "3": "positive_clicks", "4": "negative_clicks", "5": "previous_mask"
    }  # fmt: skip
    assert pred["channel_def"] == {"0": "background", "1": "lesion"}  # MONAI Label's DeepEdit labels
    assert inference["network_defaults"]["guidance"] == SMALL_CLICK_NETWORK["guidance"]
    assert inference["use_click"] is True  # MONAI Label sets it false for the automatic <name>_seg
    assert "takes the user's clicks" in metadata["description"] and f"`{name}_seg`" in readme

    # auto (the default): a click-guided checkpoint makes the interactive bundle, the same zip as above
    proc = _export("--bundle_root", str(root), "--output_dir", str(dist), "--checkpoint", str(demo))
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines()[-1].startswith(f"unchanged: an identical {path} (sha256 ")
