"""Nothing a researcher trained is replaced without a word: a second training keeps the first one's model, resuming
needs no network options, fine-tuning starts from the shipped weights and keeps them, and every run has its own
TensorBoard folder. Real `python -m monai.bundle` processes on the embedded sample (ResNet-34 at 64 px)."""

from __future__ import annotations

import json
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import torch
from monai.bundle import ConfigParser

from bundle.checkpoint import NetworkCheckpoint, network_settings
from bundle.errors import CheckpointMismatchError
from bundle.networks import make_network
from bundle.networks.blocks import Conv
from bundle.training import TrainingCheckpoints, checkpoint_folder, starting_settings

from .conftest import REPO, run_bundle
from .small_bundle import export_zip, small_bundle, write_small_checkpoint
from .test_export_bundle import _receiver_env  # the receiver's Python: only the zip's own bundle/ imports

TRAIN = ("run", "training", "--config_file", "configs/train.json", "--num_workers", "0")
SAMPLE = ("--dataset_dir", str(REPO / "sample_data"))
SMALL = ("--backbone", "resnet34", "--image_size", "64")
BN_BUFFERS = ("running_mean", "running_var", "num_batches_tracked")


def _ok(proc: subprocess.CompletedProcess) -> str:
    output = proc.stdout + proc.stderr
    assert proc.returncode == 0, output[-4000:]
    assert "Traceback" not in output, output[-4000:]
    return output


def _one_error_line(proc: subprocess.CompletedProcess) -> str:
    output = proc.stdout + proc.stderr
    assert "Traceback" not in output, output[-4000:]
    errors = [line for line in proc.stderr.splitlines() if line.startswith("ERROR")]
    assert len(errors) == 1, output[-4000:]
    return errors[0]


def _weights(path: Path) -> dict[str, torch.Tensor]:
    from bundle.checkpoint import read_checkpoint, unwrap_state_dict

    return unwrap_state_dict(read_checkpoint(path))  # a shipped model.pt (plain) or a training's (under "model")


# --- the choice of folder, settings and resume check, in-process -------------------------------------------------


def test_a_folder_without_a_model_is_used_and_one_with_a_model_is_kept(tmp_path):
    models = tmp_path / "models"
    assert checkpoint_folder(models, "run1") == str(models)  # not even there yet
    write_small_checkpoint(models / "model.pt")
    assert checkpoint_folder(models, "run2") == str(models / "run2")
    (models / "run2").mkdir()
    assert checkpoint_folder(models, "run2") == str(models / "run2-2")  # never into another run's folder
    # --resume continues the training whose last checkpoint is there; without one it is a new training
    assert checkpoint_folder(models, "run3", resume=True) == str(models / "run3")
    (models / "last_checkpoint_epoch=1.pt").write_bytes(b"x")
    assert checkpoint_folder(models, "run3", resume=True) == str(models)
    assert checkpoint_folder(models, "run3", resume="false") == str(models / "run3")


def test_monai_labels_training_of_the_model_it_serves_updates_it(tmp_path):
    from monai.handlers import CheckpointLoader

    models = tmp_path / "models"
    write_small_checkpoint(models / "model.pt")
    network = torch.nn.Linear(1, 1)
    # what MONAI Label's BundleTrainTask puts first in train#handlers when it trains the model it serves
    loader = CheckpointLoader(load_path=str(models / "model.pt"), load_dict={"model": network})
    assert checkpoint_folder(models, "run", handlers=[loader]) == str(models)
    other = CheckpointLoader(load_path=str(tmp_path / "other.pt"), load_dict={"model": network})
    assert checkpoint_folder(models, "run", handlers=[other]) == str(models / "run")


def test_train_json_takes_the_network_of_the_checkpoint_it_fine_tunes(tmp_path):
    received = write_small_checkpoint(tmp_path / "received" / "model.pt")
    parser = ConfigParser()
    parser.read_config(str(REPO / "configs" / "train.json"))
    parser.update({"bundle_root": str(tmp_path), "init_weights": str(received)})
    settings = parser.get_parsed_content("network_settings")
    assert settings == network_settings(received)
    assert (settings["backbone"], settings["image_size"]) == ("resnet34", 64)  # not train.json's ResNet-101 at 256
    # an option given on the command line still wins (and init_from then names both values if they differ)
    parser["image_size"] = 128
    assert parser.get_parsed_content("network_settings", lazy=False)["image_size"] == 128
    assert starting_settings(tmp_path / "models") == {}  # nothing to start from: the defaults


def test_a_last_checkpoint_without_recorded_settings_is_checked_by_its_tensors(tmp_path):
    """Last checkpoints written before they recorded the network: resuming another backbone is still one line."""
    models = tmp_path / "models"
    models.mkdir()
    saved = make_network("rfeunet", backbone="resnet34")
    torch.save({"model": saved.state_dict()}, models / "last_checkpoint_epoch=1.pt")
    other = make_network("rfeunet", backbone="resnet50")
    settings = {"name": "rfeunet", "backbone": "resnet50"}
    checkpoints = TrainingCheckpoints(
        models, {"model": other}, best_model=NetworkCheckpoint(other, settings), resume=True
    )
    with pytest.raises(CheckpointMismatchError, match=r"last_checkpoint_epoch=1.pt: its weights do not fit"):
        checkpoints.attach(_Engine())


class _Engine:
    def add_event_handler(self, *args) -> None:
        pass


# --- real training processes -------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def two_trainings(tmp_path_factory) -> tuple[Path, str, str]:
    """A ResNet-34 training, then a plain U-Net one (``--rfe false``, PyTorch's BatchNorm settings) in the same
    bundle root."""
    root = tmp_path_factory.mktemp("root")
    first = _ok(run_bundle(*TRAIN, *SAMPLE, *SMALL, "--max_epochs", "1", "--bundle_root", str(root)))
    (root / "first_model.bytes").write_bytes((root / "models" / "model.pt").read_bytes())
    second = _ok(
        run_bundle(
            *TRAIN, *SAMPLE, *SMALL, "--rfe", "false", "--batchnorm", "pytorch", "--max_epochs", "1",
            "--bundle_root", str(root),
        )
    )  # fmt: skip
    return root, first, second


@pytest.mark.slow
def test_a_second_training_writes_its_own_folder_and_keeps_the_first_model(two_trainings):
    root, first, second = two_trainings
    models = root / "models"
    assert (models / "model.pt").read_bytes() == (root / "first_model.bytes").read_bytes()
    assert (models / "last_checkpoint_epoch=1.pt").is_file()
    (own,) = [p for p in models.iterdir() if p.is_dir()]
    assert own.name.endswith("_rfeunet_resnet34_norfe_64")
    assert sorted(p.name for p in own.iterdir()) == ["last_checkpoint_epoch=1.pt", "model.pt"]
    assert network_settings(own / "model.pt")["rfe"] is False
    assert network_settings(own / "model.pt")["batchnorm"] == "pytorch"
    # inference rebuilds the network the checkpoint records, BatchNorm settings included
    parser = ConfigParser()
    parser.read_config(str(REPO / "configs" / "inference.json"))
    parser.update({"ckpt_path": str(own / "model.pt")})
    blocks = [m for m in parser.get_parsed_content("network_def").modules() if isinstance(m, Conv)]
    assert blocks and {(m.bn.eps, m.bn.momentum) for m in blocks} == {(1e-5, 0.1)}
    # said at the start, and at the end with how to use it
    assert f"{models} holds another training's model: {models / 'model.pt'} (rfeunet resnet34 at 64 px" in second
    assert f"This training writes to {own}" in second
    assert f"Inference and evaluation use it when given --ckpt_path {own / 'model.pt'}" in second
    assert "holds another training's model" not in first
    # one TensorBoard folder per training, named like the checkpoint folder
    runs = sorted(p for p in (root / "runs").iterdir())
    assert len(runs) == 2 and runs[1].name == own.name
    assert all(list(run.glob("events.out.tfevents.*")) for run in runs)
    # the pairs, the split and the progress with the time left, before and during the first epoch
    assert "Training on 16 pairs, validating on 4: the 'training' and 'validation' splits of" in first
    started = "Training epoch 1: 2 iterations per epoch (16 training pairs, batch 8), validating on 4 pairs on cpu"
    assert started in first
    assert "Progress: epoch 1/1, iteration 1/2, " in first and " left (plus the validations, not timed yet)." in first


@pytest.mark.slow
def test_resume_reads_the_network_from_the_checkpoint_it_resumes(two_trainings, tmp_path):
    root, _, _ = two_trainings
    copy = tmp_path / "root"
    copy.mkdir()
    (copy / "models").mkdir()
    for name in ("model.pt", "last_checkpoint_epoch=1.pt"):
        (copy / "models" / name).write_bytes((root / "models" / name).read_bytes())
    # the same network asked the wrong way round: one line naming both values, nothing changed
    proc = run_bundle(*TRAIN, *SAMPLE, "--resume", "true", "--max_epochs", "2", "--backbone", "resnet50",
                      "--bundle_root", str(copy))  # fmt: skip
    assert proc.returncode == 2
    assert _one_error_line(proc) == (
        f"ERROR {copy / 'models' / 'last_checkpoint_epoch=1.pt'}: trained with backbone 'resnet34', but the "
        "configuration asks for backbone 'resnet50'; leave those options out to use the checkpoint's, or give the "
        "checkpoint that was trained with them"
    )
    assert sorted(p.name for p in (copy / "models").iterdir()) == ["last_checkpoint_epoch=1.pt", "model.pt"]
    # no network options at all: the ResNet-34 at 64 px is resumed, in its own folder
    output = _ok(run_bundle(*TRAIN, *SAMPLE, "--resume", "true", "--max_epochs", "2", "--bundle_root", str(copy)))
    assert f"Resumed from {copy / 'models' / 'last_checkpoint_epoch=1.pt'}: epoch 1, iteration 2" in output
    assert "Training epoch 2: 2 iterations per epoch" in output
    assert sorted(p.name for p in (copy / "models").iterdir()) == ["last_checkpoint_epoch=2.pt", "model.pt"]
    resumed = torch.load(copy / "models" / "last_checkpoint_epoch=2.pt", map_location="cpu", weights_only=True)
    assert resumed["network"] == network_settings(root / "models" / "model.pt")


@pytest.mark.slow
def test_fine_tuning_in_the_unpacked_zip_starts_from_the_shipped_weights_and_keeps_them(tmp_path):
    """The receiver's documented command: ``run training --init_weights models/model.pt``. With a learning rate of
    0 the weights cannot move, so the fine-tuned model must hold exactly the shipped weights."""
    zipped = export_zip(small_bundle(tmp_path / "sender"), tmp_path / "dist")
    with zipfile.ZipFile(zipped) as archive:
        archive.extractall(tmp_path / "received")
    unpacked = tmp_path / "received" / "rfe_unet_skin_lesion"
    shipped = (unpacked / "models" / "model.pt").read_bytes()
    proc = subprocess.run(
        [sys.executable, "-S", "-m", "monai.bundle", *TRAIN, "--init_weights", "models/model.pt", "--max_epochs",
         "1", "--learning_rate", "0"],
        cwd=unpacked, capture_output=True, text=True, timeout=900, env=_receiver_env(),
    )  # fmt: skip
    output = _ok(proc)
    assert "Training starts from the weights of models/model.pt" in output
    assert (unpacked / "models" / "model.pt").read_bytes() == shipped  # the received model is kept
    (tuned,) = (unpacked / "models").glob("*/model.pt")
    assert network_settings(tuned) == network_settings(unpacked / "models" / "model.pt")
    before, after = _weights(unpacked / "models" / "model.pt"), _weights(tuned)
    assert before.keys() == after.keys()
    for name, value in before.items():
        if not name.endswith(BN_BUFFERS):  # batch norm statistics follow the data, whatever the learning rate
            torch.testing.assert_close(after[name], value, rtol=0, atol=0, msg=name)


# --- one line for each wrong turn --------------------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize(
    "command",
    [
        (*TRAIN, *SAMPLE),
        ("run", "--config_file", "configs/inference.json", "--dataset_dir", str(REPO / "sample_data" / "images")),
        ("run", "--config_file", "['configs/train.json','configs/evaluate.json']", *SAMPLE),
    ],
    ids=["training", "inference", "evaluation"],
)
def test_a_gpu_this_machine_lacks_is_one_line(command, tmp_path):
    count = torch.cuda.device_count() if torch.cuda.is_available() else 0
    write_small_checkpoint(tmp_path / "models" / "model.pt")
    proc = run_bundle(*command, "--device", f"cuda:{count}", "--bundle_root", str(tmp_path),
                      "--output_dir", str(tmp_path / "out"))  # fmt: skip
    assert proc.returncode == 2
    assert _one_error_line(proc).startswith(f"ERROR device: cuda:{count} is not available: PyTorch sees ")


@pytest.mark.slow
def test_a_datalist_with_mask_instead_of_label_is_one_line(tmp_path):
    datalist = json.loads((REPO / "sample_data" / "datalist.json").read_text())
    for items in datalist.values():
        for item in items:
            item["mask"] = item.pop("label")
    path = tmp_path / "list.json"
    path.write_text(json.dumps(datalist))
    proc = run_bundle(*TRAIN, *SAMPLE, "--datalist", str(path), "--bundle_root", str(tmp_path))
    assert proc.returncode == 2
    first = REPO / "sample_data" / "images" / "synthetic_000.jpg"
    assert _one_error_line(proc) == (
        f'ERROR the training split of {path}: 16 of 16 entries have no "label" (the mask\'s path), e.g. the entry of '
        f'{first} has "image", "mask"; each entry needs "image" and "label"; rename "mask" to "label".'
    )
    assert not (tmp_path / "models").exists()


# --- evaluation: checks before it deletes, and --output_dir is where the report goes ---------------------------


@pytest.mark.slow
def test_evaluation_checks_before_it_deletes_the_previous_report_and_writes_where_asked(tmp_path):
    write_small_checkpoint(tmp_path / "models" / "model.pt")
    evaluate = ("run", "--config_file", "['configs/train.json','configs/evaluate.json']", "--bundle_root",
                str(tmp_path), "--num_workers", "0", *SAMPLE)  # fmt: skip
    _ok(run_bundle(*evaluate))
    report = {p: p.read_bytes() for p in (tmp_path / "eval").rglob("*") if p.is_file()}
    assert tmp_path / "eval" / "metrics.json" in report and len(report) == 8  # 4 files and 4 overlays
    # a datalist without the split to score: one line, and the previous report stays as it was
    splits = json.loads((REPO / "sample_data" / "datalist.json").read_text())
    del splits["test"]
    datalist = tmp_path / "no_test.json"
    datalist.write_text(json.dumps(splits))
    proc = run_bundle(*evaluate, "--datalist", str(datalist))
    assert proc.returncode == 2
    assert _one_error_line(proc).startswith(f"ERROR datalist file {datalist} has no key 'test'")
    assert "Removed the previous report" not in proc.stdout + proc.stderr
    assert {p: p.read_bytes() for p in (tmp_path / "eval").rglob("*") if p.is_file()} == report
    # --output_dir (like inference's) and --eval_dir both choose the report's folder
    output = _ok(run_bundle(*evaluate, "--output_dir", str(tmp_path / "elsewhere")))
    assert (tmp_path / "elsewhere" / "metrics.json").is_file() and len(list((tmp_path / "elsewhere").rglob("*.png")))
    assert {p: p.read_bytes() for p in (tmp_path / "eval").rglob("*") if p.is_file()} == report
    assert "Removed the previous report" not in output
    # a report folder that cannot be written is refused before anything is deleted
    (tmp_path / "a_file").write_text("")
    proc = run_bundle(*evaluate, "--eval_dir", str(tmp_path / "a_file" / "eval"))
    assert proc.returncode == 2
    assert _one_error_line(proc).startswith(f"ERROR cannot write the evaluation report to {tmp_path / 'a_file'}")
