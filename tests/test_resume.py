"""Training survives ``kill -9``: in the middle of an epoch and while the last checkpoint is being written.

Real training processes (ResNet-34 at 64 px on the embedded sample, 2 epochs of 2 iterations) are killed with
SIGKILL; ``--resume true`` then continues from the last complete checkpoint and ends exactly as an uninterrupted run
does: same final epoch, same number of optimizer steps, same learning rate, same weights. No checkpoint is ever
left half-written.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest
import torch

from .conftest import REPO

EPOCHS, BATCH = 2, 8  # the sample's 16 training photos: 2 iterations per epoch
# The polynomial decay spans 8 steps, so the learning rate after the run's 4 steps is not 0 and tells steps apart.
TRAINING = (
    "-m", "monai.bundle", "run", "training", "--config_file", "configs/train.json",
    "--dataset_dir", str(REPO / "sample_data"), "--backbone", "resnet34", "--image_size", "64",
    "--batch_size", str(BATCH), "--max_epochs", str(EPOCHS), "--num_workers", "0", "--lr_scheduler#total_iters", "8",
)  # fmt: skip
COMPLETE_CHECKPOINT = re.compile(r"^(model|last_checkpoint_epoch=\d+)\.pt$")


def train(root: Path, *extra: str, kill_when: Callable[[str, list[str]], bool] | None = None, timeout: float = 600):
    """Run the training command in ``root``; SIGKILL it as soon as ``kill_when(output_so_far, models_files)``.

    Returns (exit status, output). The models folder is polled every millisecond, so a kill lands inside a
    checkpoint write that takes a tenth of a second. One thread: with two, CPU kernels' parallel sums are not
    reproducible bit for bit (two uninterrupted 2-thread runs of this training end with different weights), and the
    test compares the weights exactly.
    """
    proc = subprocess.Popen(
        [sys.executable, *TRAINING, "--bundle_root", str(root), *extra],
        cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"},
    )  # fmt: skip
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.extend(proc.stdout), daemon=True)
    reader.start()
    models, deadline, killed = root / "models", time.monotonic() + timeout, False
    while proc.poll() is None:
        if time.monotonic() > deadline:
            proc.kill()
            pytest.fail(f"training still running after {timeout} s:\n" + "".join(lines[-40:]))
        names = sorted(os.listdir(models)) if models.is_dir() else []
        if kill_when is not None and not killed and kill_when("".join(lines), names):
            os.kill(proc.pid, signal.SIGKILL)
            killed = True
        time.sleep(0.001)
    reader.join()
    return proc.returncode, "".join(lines)


def load(path: Path) -> dict:
    return torch.load(path, map_location="cpu", weights_only=True)


def assert_every_checkpoint_loads(models: Path) -> list[str]:
    """Every checkpoint under its final name is complete; returns the names."""
    names = sorted(p.name for p in models.iterdir() if COMPLETE_CHECKPOINT.match(p.name))
    for name in names:
        load(models / name)  # raises on a truncated file
    return names


def summary(checkpoint: dict) -> dict:
    """What an uninterrupted and a resumed run must agree on."""
    optimizer, trainer = checkpoint["optimizer"], checkpoint["trainer"]
    steps = {float(state["step"]) for state in optimizer["state"].values()}
    return {
        "epoch": trainer["iteration"] // trainer["epoch_length"],
        "iteration": trainer["iteration"],
        "optimizer_steps": steps,
        "learning_rate": optimizer["param_groups"][0]["lr"],
        "scheduler_steps": checkpoint["lr_scheduler"]["last_epoch"],
        "best_metric": checkpoint["validator"].get("best_metric"),
    }


@pytest.mark.slow
def test_training_killed_mid_epoch_and_mid_save_resumes_to_the_uninterrupted_result(tmp_path):
    reference, interrupted = tmp_path / "reference", tmp_path / "interrupted"
    status, output = train(reference)
    assert status == 0, output[-3000:]
    final = f"last_checkpoint_epoch={EPOCHS}.pt"
    expected = load(reference / "models" / final)

    # 1. killed in the middle of epoch 2: epoch 1's checkpoint is complete
    status, output = train(interrupted, kill_when=lambda out, _: f"Epoch: 2/{EPOCHS}, Iter: 1/" in out)
    assert status == -signal.SIGKILL, output[-3000:]
    assert assert_every_checkpoint_loads(interrupted / "models") == ["last_checkpoint_epoch=1.pt", "model.pt"]

    # 2. resumed, then killed while epoch 2's checkpoint is being written: epoch 1's is still there and loads
    status, output = train(
        interrupted, "--resume", "true", kill_when=lambda _, names: any("epoch=2" in n for n in names)
    )
    assert status == -signal.SIGKILL, output[-3000:]
    assert f"Resumed from {interrupted / 'models' / 'last_checkpoint_epoch=1.pt'}: epoch 1, iteration 2" in output
    complete = assert_every_checkpoint_loads(interrupted / "models")
    assert "last_checkpoint_epoch=1.pt" in complete and final not in complete, complete
    assert [n for n in os.listdir(interrupted / "models") if n.endswith(".part.pt")]  # the kill hit the write

    # 3. resumed again: runs to the end and agrees with the uninterrupted run
    status, output = train(interrupted, "--resume", "true")
    assert status == 0, output[-3000:]
    assert f"Resumed from {interrupted / 'models' / 'last_checkpoint_epoch=1.pt'}: epoch 1, iteration 2" in output
    assert assert_every_checkpoint_loads(interrupted / "models") == [final, "model.pt"]
    assert not [p.name for p in (interrupted / "models").iterdir() if p.name not in (final, "model.pt")]
    resumed = load(interrupted / "models" / final)
    assert summary(resumed) == summary(expected)
    assert summary(expected)["learning_rate"] > 0 and summary(expected)["optimizer_steps"] == {EPOCHS * 2}
    # the random states were restored too: the same batches and augmentations gave the same weights
    for name, value in expected["model"].items():
        torch.testing.assert_close(resumed["model"][name], value, rtol=0, atol=0, msg=name)
    for name, value in load(reference / "models" / "model.pt").items():
        torch.testing.assert_close(load(interrupted / "models" / "model.pt")[name], value, rtol=0, atol=0)


@pytest.mark.slow
def test_a_diverging_loss_stops_training_and_keeps_the_checkpoints(tmp_path):
    models = tmp_path / "models"
    models.mkdir()
    kept = {"model.pt": b"best model bytes", "last_checkpoint_epoch=3.pt": b"last checkpoint bytes"}
    for name, content in kept.items():
        (models / name).write_bytes(content)
    # Adam's first step makes every weight ~1e30; --resume: the checkpoints are this training's own (the bytes
    # do not load, so it starts at epoch 1 in the same folder)
    status, output = train(tmp_path, "--learning_rate", "1e30", "--resume", "true")
    assert status == 1, output[-3000:]
    assert "Traceback" not in output, output[-3000:]
    errors = [line for line in output.splitlines() if line.startswith("ERROR")]
    assert errors == [
        "ERROR the training loss became nan at epoch 1, iteration 2 (step 2); training stopped. Kept as they were in "
        f"{models}: last_checkpoint_epoch=3.pt, model.pt. Lower --learning_rate or check the data"
    ], output[-3000:]
    assert {p.name: p.read_bytes() for p in models.iterdir()} == kept
