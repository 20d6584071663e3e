"""The command-line layer: configuration mistakes in `python -m monai.bundle run` are one line, never a traceback."""

from __future__ import annotations

import json

import pytest

from bundle.cli import check_overrides, project_error
from bundle.errors import ConfigError, DataError

from .conftest import REPO, run_bundle

TRAIN = ("run", "training", "--config_file", "configs/train.json", "--num_workers", "0")
INFER = ("run", "--config_file", "configs/inference.json", "--ckpt_path", "")


def test_unknown_override_is_refused_with_the_closest_key():
    wanted = r"--max_epoch: it is not a key of configs/train.json.*did you mean --max_epochs"
    with pytest.raises(ConfigError, match=wanted):
        check_overrides([*TRAIN[:4], "--max_epoch", "1", "--batch_size=2"])
    # known keys, nested ids, the runner's own options and the layered files' keys all pass
    known = ("--max_epochs", "1", "--train#dataloader#batch_size", "2", "--logging_file", "x.conf", "--meta_file", "m")
    check_overrides([*TRAIN[:4], *known])
    check_overrides(["run", "--config_file", "['configs/train.json','configs/evaluate.json']", "--eval_key", "val"])
    check_overrides([*TRAIN[:4], "--tracking", "mlflow", "--tracking_uri", "file:///tmp/x"])  # as MONAI Label runs it


def test_project_error_is_the_innermost_one_the_project_raised():
    inner = DataError("folder x does not exist.")
    try:
        try:
            raise inner
        except DataError as error:
            raise RuntimeError("Failed to evaluate ConfigExpression") from error
    except RuntimeError as outer:
        assert project_error(outer) is inner
    assert project_error(KeyError("a bug")) is None


def _one_error_line(proc) -> str:
    output = proc.stdout + proc.stderr
    assert "Traceback" not in output, output[-3000:]
    lines = [line for line in proc.stderr.splitlines() if line.startswith("ERROR")]
    assert len(lines) == 1, proc.stderr[-3000:]
    return lines[0]


@pytest.mark.slow
@pytest.mark.parametrize(
    "args, expected",
    [
        (
            ("--max_epoch", "1"),
            "ERROR unknown option --max_epoch: it is not a key of configs/train.json, so the bundle "
            "runner would ignore it; did you mean --max_epochs?",
        ),
        (("--loss", "nope"), "ERROR loss: 'nope' is not one of adaptexp"),
        (("--backbone", "resnet18"), "ERROR backbone: 'resnet18' is not one of resnet34, resnet50, resnet101"),
        (("--batch_size", "0"), "ERROR batch_size: 0 is too small; it must be at least 1"),
        (("--image_size", "100"), "ERROR image_size: 100 is not a multiple of 32"),
        (("--resume", "maybe"), "ERROR resume: 'maybe' is not a yes/no value"),
        (("--dataset_dir", "{tmp}/absent"), "ERROR dataset folder {tmp}/absent does not exist."),
        (("--dataset_dir", "{tmp}"), "ERROR {tmp} holds no photo/mask pairs: no datalist.json, no images/ + masks/"),
        (("--group_by", "0"), "ERROR group_by: folder levels count from 1"),
        (("--datalist", "{tmp}/broken.json"), "ERROR datalist file {tmp}/broken.json is not valid JSON"),
    ],
)
def test_training_configuration_mistakes_are_one_line(tmp_path, args, expected):
    (tmp_path / "broken.json").write_text('{"training": [')
    args = tuple(a.format(tmp=tmp_path) for a in args)
    proc = run_bundle(*TRAIN, "--bundle_root", str(tmp_path), "--dataset_dir", str(REPO / "sample_data"), *args)
    assert proc.returncode == 2
    assert _one_error_line(proc).startswith(expected.format(tmp=tmp_path))
    assert not (tmp_path / "models").exists()  # nothing started


@pytest.mark.slow
def test_inference_mistakes_are_one_line_and_tracebacks_come_back_on_request(tmp_path):
    (tmp_path / "empty").mkdir()
    proc = run_bundle(*INFER, "--dataset_dir", str(tmp_path / "empty"), "--output_dir", str(tmp_path / "out"))
    assert proc.returncode == 2
    assert _one_error_line(proc).startswith(f"ERROR folder {tmp_path / 'empty'} holds no images")
    proc = run_bundle(*INFER, "--dataset_dir", str(REPO / "sample_data" / "images"), "--output_ext", ".jpeg")
    assert proc.returncode == 2
    assert "output_ext: '.jpeg' is not one of" in _one_error_line(proc)
    (tmp_path / "list.json").write_text(json.dumps({"test": [{"image": "missing.jpg"}]}))
    proc = run_bundle(*INFER, "--datalist", str(tmp_path / "list.json"), "--output_dir", str(tmp_path / "out"))
    assert proc.returncode == 2
    assert _one_error_line(proc).startswith(f"ERROR datalist file {tmp_path / 'list.json'}, split 'test': 1 listed")
    proc = run_bundle(*INFER, "--dataset_dir", str(tmp_path / "empty"), env={"RFE_TRACEBACK": "1"})
    assert proc.returncode != 0 and "Traceback" in proc.stderr
