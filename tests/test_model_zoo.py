"""The exported zip treated like any model-zoo bundle, with MONAI's own tools, by a receiver without this repository.

A fresh copy of the bundle (no trained model, the committed demo checkpoint) is exported as a fresh clone's user does,
so the zip ships the demo, converted to the plain-state_dict layout. The zip is unpacked in a folder outside the
repository and ``tests/zoo_receiver.py`` runs the model zoo's CI checks, ``monai.bundle.load``, ``ckpt_export`` /
``onnx_export`` without ``key_in_ckpt`` and ``ConfigWorkflow`` inference and training there, in one process that can
import only the zip's code. Its training runs on the embedded synthetic sample: the README's own order, after which
inference must warn.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from bundle.checkpoint import model_record, network_settings, read_checkpoint, unwrap_state_dict
from bundle.errors import SyntheticSampleWarning

from .conftest import REPO, SHARED, receiver_env, run_bundle
from .small_bundle import copy_bundle, export_zip

pytestmark = pytest.mark.slow

DEMO = REPO / "models" / "demo" / "rfeunet_resnet34_isic2017_128.pt"
SCHEMA = SHARED / "monai" / "meta_schema_20240725.json"


@pytest.fixture(scope="module")
def received(tmp_path_factory, isic_val):
    """(the unpacked bundle, a copy of its models/model.pt as shipped, the receiver script's steps by name, a
    photograph)."""
    if not SCHEMA.is_file():
        pytest.skip(f"the model zoo's metadata schema is not at {SCHEMA} (and cannot be downloaded here)")
    base = tmp_path_factory.mktemp("zoo")
    root = copy_bundle(base / "clone")
    shutil.copytree(DEMO.parent, root / "models" / "demo")  # a fresh clone: the demo, no models/model.pt
    path = export_zip(root, base / "dist")
    with zipfile.ZipFile(path) as archive:
        archive.extractall(base / "unpacked")
    bundle = base / "unpacked" / "rfe_unet_skin_lesion"
    # what the zip ships (the receiver's training keeps it)
    shipped = shutil.copy2(bundle / "models" / "model.pt", base / "shipped.pt")
    photo = sorted((isic_val / "images").iterdir())[0]
    work = base / "work"
    work.mkdir()
    proc = subprocess.run(
        [
            sys.executable,
            "-S",
            str(REPO / "tests" / "zoo_receiver.py"),
            str(bundle),
            str(SCHEMA),
            str(photo),
            str(work),
        ],
        cwd=work,
        env=receiver_env(),
        capture_output=True,
        text=True,
        timeout=1500,
    )
    steps = {}
    for line in proc.stdout.splitlines():
        if line.startswith('{"step"'):
            result = json.loads(line)
            steps[result.pop("step")] = result
    assert proc.returncode == 0, f"after {list(steps)}:\n{proc.stdout[-2000:]}\n{proc.stderr[-4000:]}"
    return bundle, Path(shipped), steps, photo


def test_the_receiver_runs_the_zips_own_code(received):
    bundle, _, steps, _ = received
    assert Path(steps["code"]["file"]) == bundle / "bundle" / "__init__.py"


def test_the_model_zoo_ci_checks_pass(received):
    _, _, steps, _ = received
    assert steps["files"] == {"missing": [], "inference": True, "version_in_changelog": True}
    assert "metadata" in steps and "net_in_out" in steps
    assert steps["inference_properties"]["missing"] == []
    assert steps["ckpt_export"]["same_weights"] and steps["ckpt_export"]["tensors"] > 300
    assert steps["onnx_export"]["bytes"] > 10_000_000


def test_the_shipped_demo_is_a_plain_state_dict_with_its_record(received):
    _, path, _, _ = received
    shipped = torch.load(path, weights_only=True)
    assert all(isinstance(value, torch.Tensor) for value in shipped.values())
    demo = unwrap_state_dict(read_checkpoint(DEMO))
    assert shipped.keys() == demo.keys() and all(torch.equal(shipped[k], demo[k]) for k in demo)
    assert network_settings(path) == network_settings(DEMO)
    assert model_record(path)["about"] == model_record(DEMO)["about"]


def test_monai_load_returns_the_shipped_weights(received):
    _, _, steps, _ = received
    load = steps["load"]
    assert load["network"] == "RFEUNet"
    assert load["sample_equal"] and load["equal"] == load["tensors"] > 300


def test_config_workflows_segment_and_train(received):
    bundle, _, steps, photo = received
    assert steps["infer_workflow"] == {"missing": [], "masks": [f"{photo.stem}_mask.png"]}
    mask = np.asarray(Image.open(bundle.parent.parent / "work" / "masks" / f"{photo.stem}_mask.png"))
    assert mask.shape == np.asarray(Image.open(photo)).shape[:2] and 0.02 < (mask > 0).mean() < 0.98
    train = dict(steps["train_workflow"])
    trained = Path(train.pop("trained"))
    # a new training never replaces the model the zip ships: it writes into its own folder under models/
    assert train == {"missing": [], "epochs": 1, "pairs": 16, "trained_differs": True, "shipped_kept": True}
    assert trained.parent.parent == bundle / "models" and trained.is_file()


def test_inference_after_training_on_the_sample_warns_once_on_the_cli_and_in_python(received, tmp_path):
    """The README's own order: train on the embedded sample, then segment photographs."""
    bundle, _, steps, photo = received
    trained = Path(steps["train_workflow"]["trained"]).relative_to(bundle)
    proc = run_bundle(
        "run", "--config_file", "configs/inference.json", "--dataset_dir", str(photo), "--output_dir",
        str(tmp_path / "masks"), "--ckpt_path", str(trained), cwd=bundle, env=receiver_env(),
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    output = (proc.stdout + proc.stderr).splitlines()
    warnings = [line for line in output if "WARNING" in line]
    assert len(warnings) == 1, warnings
    assert str(trained) in warnings[0] and "SYNTHETIC" in warnings[0] and "configs/demo.json" in warnings[0]
    (summary,) = [line for line in proc.stdout.splitlines() if line.startswith("segmented")]
    assert summary.startswith("segmented 1 of 1 images; 0 failed (by a model trained on the synthetic sample")

    from bundle.inference import LesionSegmenter

    with pytest.warns(SyntheticSampleWarning, match="SYNTHETIC"):
        LesionSegmenter(bundle_root=bundle, overrides={"ckpt_path": str(bundle / trained)})


def test_the_zip_describes_the_model_it_ships(received):
    bundle, _, _, _ = received
    metadata = json.loads((bundle / "configs" / "metadata.json").read_text())
    assert "ResNet-34 encoder, 128x128 input" in metadata["description"]
    assert "ISIC 2017" in metadata["data_source"] and "ISIC 2017" in metadata["description"]
    assert metadata["eval_metrics"] == {"val_mean_dice": 0.828, "val_mean_iou": 0.7371}  # the demo's, on 150 photos
    formats = metadata["network_data_format"]
    shapes = [formats["inputs"]["image"]["spatial_shape"], formats["outputs"]["pred"]["spatial_shape"]]
    assert shapes == [[128, 128], [128, 128]]
    # the repository's metadata describes what a fresh clone ships: the demo
    assert json.loads((REPO / "configs" / "metadata.json").read_text()) == metadata
    readme = (bundle / "README.md").read_text()
    assert "pip install -e" not in readme and not (bundle / "pyproject.toml").exists()
    assert "python -m pip install torch monai" in readme and "configs/inference.json" in readme
