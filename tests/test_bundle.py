"""The bundle as users run it: real `python -m monai.bundle` processes, real torchrun, real files."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from monai.bundle import ConfigParser

from bundle.checkpoint import model_record, network_settings

from .conftest import REPO, SHARED, run_bundle
from .test_checkpoint import SETTINGS as RESNET34_128

pytestmark = pytest.mark.slow

TRAIN = ("run", "training", "--config_file", "configs/train.json")
EVALUATE = ("run", "--config_file", "['configs/train.json','configs/evaluate.json']")
INFER = ("run", "--config_file", "configs/inference.json")
SAMPLE = str(REPO / "sample_data")
FAST = ("--backbone", "resnet34", "--image_size", "64", "--num_workers", "0")
# the shared training: a ResNet-34 at 128 px, which inference, evaluation and export must find out by themselves
TRAINED = ("--backbone", "resnet34", "--image_size", "128", "--num_workers", "0")


def _ok(proc: subprocess.CompletedProcess) -> None:
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]


@pytest.fixture(scope="module")
def trained_root(tmp_path_factory) -> Path:
    """One short training on the embedded sample, shared by the tests below (bundle_root outside the repo)."""
    root = tmp_path_factory.mktemp("bundle_root")
    proc = run_bundle(*TRAIN, "--max_epochs", "1", "--bundle_root", str(root), "--dataset_dir", SAMPLE, *TRAINED)
    _ok(proc)
    return root


def test_training_writes_best_and_last_checkpoints(trained_root):
    assert (trained_root / "models" / "model.pt").is_file()
    assert list((trained_root / "models").glob("last_checkpoint_epoch=1.pt"))
    assert list((trained_root / "runs").glob("*_rfeunet_resnet34_128/events.out.tfevents.*"))  # one folder per run
    checkpoint = torch.load(trained_root / "models" / "model.pt", weights_only=True)
    assert all(isinstance(value, torch.Tensor) for value in checkpoint.values())  # a plain state_dict
    assert any(key.startswith("encoder.layer3.5.") for key in checkpoint)  # ResNet-34's six blocks
    record = model_record(trained_root / "models" / "model.pt")
    # what the configs and MONAI Label read back
    assert record["network"] == {**RESNET34_128, "batchnorm": "yolov8", "guidance": [], "click_radius": 3}
    assert record["data"]["training_pairs"] == 16 and record["data"]["synthetic_sample"] is True
    assert record["scores"]["epoch"] == 1 and 0 <= record["scores"]["val_mean_dice"] <= 1


def test_training_resumes_from_the_last_checkpoint(trained_root, tmp_path):
    root = tmp_path / "resume"
    shutil.copytree(trained_root / "models", root / "models")
    proc = run_bundle(
        *TRAIN, "--max_epochs", "2", "--resume", "true", "--bundle_root", str(root), "--dataset_dir", SAMPLE, *TRAINED
    )
    _ok(proc)
    log = proc.stdout + proc.stderr
    assert "Epoch: 2/2" in log and "Epoch: 1/2" not in log  # epoch 1 was not trained again
    assert (root / "models" / "last_checkpoint_epoch=2.pt").is_file()
    # the best validation score survives the resume, so model.pt is only replaced by a better epoch
    stored = torch.load(trained_root / "models" / "last_checkpoint_epoch=1.pt", weights_only=True)["validator"]
    assert stored["best_metric_epoch"] == 1
    best_after = [
        float(line.split("best value: ")[1].split()[0]) for line in log.splitlines() if "best value: " in line
    ]
    assert best_after and best_after[-1] >= stored["best_metric"]


def test_evaluation_on_real_photographs_reports_both_resolutions(trained_root, isic_val, tmp_path):
    datalist = tmp_path / "datalist.json"
    # the big photo as prepare_data.py --cache_size lists it: a resized copy, and the original behind it
    from PIL import Image

    cache = tmp_path / "cache"
    cache.mkdir()
    for name, resample in (
        ("ISIC_0012288.jpg", Image.Resampling.BILINEAR),
        ("ISIC_0012288_mask.png", Image.Resampling.NEAREST),
    ):
        Image.open(isic_val / "full_resolution" / name).resize((512, 340), resample).save(cache / name)
    pairs = [
        {"image": "images/ISIC_0001769.jpg", "label": "masks/ISIC_0001769.png"},
        {
            "image": str(cache / "ISIC_0012288.jpg"),
            "label": str(cache / "ISIC_0012288_mask.png"),
            "image_orig": "full_resolution/ISIC_0012288.jpg",
            "label_orig": "full_resolution/ISIC_0012288_mask.png",
        },
    ]
    datalist.write_text(json.dumps({"training": pairs, "validation": pairs, "test": pairs}))
    proc = run_bundle(
        *EVALUATE,
        "--bundle_root",
        str(trained_root),
        "--dataset_dir",
        str(isic_val),
        "--datalist",
        str(datalist),
        "--num_workers",
        "0",
    )
    _ok(proc)
    report = json.loads((trained_root / "eval" / "metrics.json").read_text())
    for resolution in ("working", "original"):
        summary = report["summary"][resolution]
        assert summary["n_images"] == 2
        for key in ("mIoU", "mDice", "IoU_star", "Dice_star", "thresholded_jaccard", "HD95"):
            assert np.isfinite(summary[key]), (resolution, key)
    # named by their folders below the data root (images/, full_resolution/), as their masks and overlays are
    big = [row for row in report["per_image"]["original"] if row["name"] == "full_resolution/ISIC_0012288.jpg"][0]
    assert big["tp"] + big["fp"] + big["fn"] + big["tn"] == 4288 * 2848
    small = [row for row in report["per_image"]["working"] if row["name"] == "full_resolution/ISIC_0012288.jpg"][0]
    assert small["tp"] + small["fp"] + small["fn"] + small["tn"] == 128 * 128  # the checkpoint's working size
    assert (trained_root / "eval" / "metrics_original.csv").is_file()
    assert "| original |" in (trained_root / "eval" / "metrics.md").read_text()
    assert (trained_root / "eval" / "overlays" / "full_resolution" / "ISIC_0012288_overlay.png").is_file()


def test_evaluation_refuses_random_weights(tmp_path):
    proc = run_bundle(*EVALUATE, "--bundle_root", str(tmp_path), "--dataset_dir", SAMPLE, *FAST)
    assert proc.returncode == 2
    assert "no trained weights" in proc.stderr and "Traceback" not in proc.stderr


def test_noise_is_added_in_the_0_1_range_before_normalisation():
    parser = ConfigParser()
    parser.read_config([str(REPO / "configs" / "train.json"), str(REPO / "configs" / "evaluate.json")])
    parser["noise_std"] = 0.1
    names = [type(t).__name__ for t in parser.get_parsed_content("validate#preprocessing").transforms]
    assert names.index("RandGaussianNoised") == names.index("NormalizeIntensityd") - 1
    assert names.index("ScaleIntensityRanged") < names.index("RandGaussianNoised")


def test_exports_take_the_network_from_the_checkpoint(trained_root):
    """`run export`, ckpt_export and onnx_export with no --backbone or --image_size: the checkpoint says them."""
    ckpt = str(trained_root / "models" / "model.pt")
    root = ("--bundle_root", str(trained_root))
    common = ("--meta_file", "configs/metadata.json", "--config_file", "configs/inference.json", *root)
    _ok(run_bundle("verify_net_in_out", "network_def", *common))
    _ok(run_bundle("run", "export", "--config_file", "configs/inference.json", *root))
    plain = trained_root / "plain.ts"
    weights = ("--ckpt_file", ckpt, *common)  # a plain state_dict: no --key_in_ckpt
    _ok(run_bundle("ckpt_export", "network_def", "--filepath", str(plain), *weights))
    onnx = ("--filepath", str(trained_root / "model.onnx"), "--input_shape", "[1, 3, 128, 128]")
    _ok(run_bundle("onnx_export", "network_def", *onnx, *weights))
    from monai.data import load_net_with_metadata

    from bundle.networks import RFEUNet

    scripted, _, extra = load_net_with_metadata(
        str(trained_root / "models" / "model.ts"), more_extra_files=["inference.json"]
    )
    embedded = json.loads(extra["inference.json"])
    network_keys = ("network_name", "backbone", "rfe", "image_size")
    assert [embedded[key] for key in network_keys] == ["rfeunet", "resnet34", True, 128]
    parser = ConfigParser(embedded)  # the embedded config builds the exported network on its own
    assert type(parser.get_parsed_content("network_def")).__name__ == "RFEUNet"
    assert parser.get_parsed_content("network_settings")["image_size"] == 128

    network = RFEUNet(backbone="resnet34").eval()
    network.load_state_dict(torch.load(ckpt, weights_only=True))
    image = torch.randn(1, 3, 128, 128)
    with torch.no_grad():
        expected = network(image)
        torch.testing.assert_close(scripted(image), expected, rtol=1e-4, atol=1e-4)
        torch.testing.assert_close(torch.jit.load(str(plain))(image), expected, rtol=1e-4, atol=1e-4)
    import onnxruntime

    session = onnxruntime.InferenceSession(str(trained_root / "model.onnx"), providers=["CPUExecutionProvider"])
    (onnx_out,) = session.run(None, {session.get_inputs()[0].name: image.numpy()})
    np.testing.assert_allclose(onnx_out, expected.numpy(), rtol=1e-3, atol=1e-3)


def test_inference_and_evaluation_take_the_network_from_the_checkpoint(trained_root, tmp_path):
    """Plain inference on the trained ResNet-34/128 model; an explicit disagreeing --backbone is one clear line."""
    command = (
        *INFER,
        "--bundle_root",
        str(trained_root),
        "--dataset_dir",
        f"{SAMPLE}/images",
        "--output_dir",
        str(tmp_path),
    )
    proc = run_bundle(*command)
    _ok(proc)
    assert "segmented 24 of 24 images; 0 failed" in proc.stdout
    assert "RANDOM" not in proc.stdout + proc.stderr
    # trained on the embedded synthetic sample (the README's order): one loud line says so
    (warning,) = [line for line in (proc.stdout + proc.stderr).splitlines() if "WARNING" in line]
    assert "models/model.pt was trained on the embedded SYNTHETIC sample (sample_data/, 16 drawn pairs" in warning
    proc = run_bundle(*command, "--backbone", "resnet50")
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    (line,) = [line for line in proc.stderr.splitlines() if line.startswith("ERROR")]
    assert "model.pt" in line and "backbone 'resnet34'" in line and "backbone 'resnet50'" in line, line


def test_evaluation_with_only_a_datalist(trained_root, tmp_path):
    """Relative datalist paths start from --dataset_dir, or from the datalist's folder: the same rule everywhere."""
    data = tmp_path / "data"
    shutil.copytree(REPO / "sample_data", data)
    split = json.loads((data / "datalist.json").read_text())
    (data / "mine.json").write_text(json.dumps({"test": split["test"][:2]}))
    out = tmp_path / "eval"
    proc = run_bundle(
        *EVALUATE,
        "--bundle_root",
        str(trained_root),
        "--datalist",
        str(data / "mine.json"),
        "--eval_dir",
        str(out),
        "--num_workers",
        "0",
        "--save_overlays",
        "false",
    )
    _ok(proc)
    assert json.loads((out / "metrics.json").read_text())["summary"]["original"]["n_images"] == 2
    proc = run_bundle(
        *INFER,
        "--bundle_root",
        str(trained_root),
        "--datalist",
        str(data / "mine.json"),
        "--output_dir",
        str(tmp_path / "masks"),
    )
    _ok(proc)
    assert len(list((tmp_path / "masks").glob("*_mask.png"))) == 2


def test_metadata_verifies_against_the_shared_schema():
    schema = SHARED / "monai" / "meta_schema_20240725.json"
    if not schema.is_file():
        pytest.skip(f"metadata schema not found at {schema}")
    proc = run_bundle("verify_metadata", "--meta_file", "configs/metadata.json", "--filepath", str(schema))
    _ok(proc)
    assert "metadata is verified with no error" in proc.stdout + proc.stderr


def test_two_process_ddp_training_with_gloo(tmp_path):
    """multi_gpu_train.json through real torchrun with 2 CPU processes (gloo)."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--nproc_per_node=2",
            "--master_port=29517",
            "-m",
            "monai.bundle",
            "run",
            "training",
            "--config_file",
            "['configs/train.json','configs/multi_gpu_train.json']",
            "--max_epochs",
            "1",
            "--bundle_root",
            str(tmp_path),
            "--dataset_dir",
            SAMPLE,
            *FAST,
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=900,
        env=env,
    )
    _ok(proc)
    assert (tmp_path / "models" / "model.pt").is_file()
    checkpoint = torch.load(tmp_path / "models" / "model.pt", weights_only=True)
    assert network_settings(tmp_path / "models" / "model.pt")["backbone"] == "resnet34"
    assert checkpoint and not any(key.startswith("module.") for key in checkpoint)  # DDP unwrapped


def test_readme_training_command_on_a_copy_of_the_bundle(tmp_path):
    """README step 2, as typed, in a copy of the bundle (what a zip recipient has): the paper's default network."""
    root = tmp_path / "rfe_unet_bundle"
    for part in ("configs", "sample_data", "bundle"):
        shutil.copytree(REPO / part, root / part, ignore=shutil.ignore_patterns("__pycache__"))
    proc = run_bundle(*TRAIN, "--max_epochs", "1", cwd=root)
    _ok(proc)
    checkpoint = torch.load(root / "models" / "model.pt", weights_only=True)
    assert network_settings(root / "models" / "model.pt")["backbone"] == "resnet101"
    assert any("layer3.22" in key for key in checkpoint)  # ResNet-101's 23-block third stage: the default


def test_cpu_recipe_is_the_automatic_demos_recipe_and_every_key_reaches_train_json():
    """configs/cpu_recipe.json (the model card's recommended recipe from scratch) sets only keys train.json has (the
    runner silently ignores any other) and is what the shipped automatic demo records as its recipe."""
    recipe = json.loads((REPO / "configs" / "cpu_recipe.json").read_text())
    train = json.loads((REPO / "configs" / "train.json").read_text())
    assert set(recipe) <= set(train), set(recipe) - set(train)
    parser = ConfigParser()
    parser.read_config([str(REPO / "configs" / name) for name in ("train.json", "cpu_recipe.json")])
    settings = parser.get_parsed_content("network_settings")
    assert (settings["backbone"], settings["image_size"]) == ("resnet34", 128)
    assert type(parser.get_parsed_content("loss_function")).__name__ == "DiceCELoss"
    assert parser.get_parsed_content("train#trainer").state.max_epochs == 10
    demo = model_record(REPO / "models" / "demo" / "rfeunet_resnet34_isic2017_128.pt")["about"]["recipe"]
    for said in ("ResNet-34", "128 px", "Dice+CE", "10 epochs", "best of 10 by validation", "seed 0"):
        assert said in demo


@pytest.mark.parametrize("typed, has_rfe", [("false", False), (True, True)])
def test_rfe_switch_reaches_the_network(typed, has_rfe):
    """`--rfe false` gives Table 9's baseline (plain skips) in training and inference alike."""
    for files in (["train.json"], ["inference.json"]):
        parser = ConfigParser()
        parser.read_config([str(REPO / "configs" / name) for name in files])
        parser.update({"rfe": typed, "backbone": "resnet34"})
        assert (len(parser.get_parsed_content("network_def").rfe) == 4) is has_rfe, files


def test_batchnorm_switch_reaches_the_network():
    """`--batchnorm pytorch` (the diagnosis's BatchNorm row) builds the same network in training and inference."""
    from bundle.networks.blocks import Conv

    for files in (["train.json"], ["inference.json"]):
        parser = ConfigParser()
        parser.read_config([str(REPO / "configs" / name) for name in files])
        parser.update({"batchnorm": "pytorch", "backbone": "resnet34"})
        blocks = [m for m in parser.get_parsed_content("network_def").modules() if isinstance(m, Conv)]
        assert blocks and {m.bn.eps for m in blocks} == {1e-5}, files
        assert parser.get_parsed_content("network_settings")["batchnorm"] == "pytorch", files


@pytest.mark.parametrize(
    "config, alias",
    [
        ("train.json", "training"),
        ("inference.json", "inference"),
        ("evaluate.json", "evaluating"),
        ("multi_gpu_inference.json", "inference"),
    ],
)
def test_run_aliases_refer_to_run_so_a_whole_config_parse_runs_it_once(config, alias):
    """MONAI Label parses the whole config (``run_id`` ""); an alias holding a ``%run`` copy would run twice."""
    from monai.bundle import ConfigParser

    assert json.loads((REPO / "configs" / config).read_text())[alias] == "@run"
    calls: list[int] = []
    parser = ConfigParser({"run": ["$calls.append(1)"], alias: "@run"}, globals={"calls": calls})
    parser.get_parsed_content("")
    assert calls == [1]
