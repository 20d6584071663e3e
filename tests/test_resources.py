"""Resources a user is told about: cached ONNX copies of weights that are gone do not stay on the disk, and the
model sizes the README gives are those of the files."""

from __future__ import annotations

import json

import numpy as np
import pytest

from bundle.networks.fastpath import SOURCE_SUFFIX, onnxruntime_available, prune_cache

from .small_bundle import write_small_checkpoint

needs_onnxruntime = pytest.mark.skipif(not onnxruntime_available(), reason="onnx and onnxruntime are not installed")


def _segment(checkpoint) -> None:
    from bundle.inference import LesionSegmenter

    segmenter = LesionSegmenter(overrides={"ckpt_path": str(checkpoint), "fast_path": "onnxruntime"})
    segmenter.segment_array(np.zeros((64, 64, 3), np.uint8))
    assert segmenter.runner.inferer.inferer.engine_name == "onnxruntime"  # inside the flip TTA


@needs_onnxruntime
def test_cached_onnx_models_of_weights_that_are_gone_or_changed_are_deleted(tmp_path):
    models = tmp_path / "models"
    checkpoint = write_small_checkpoint(models / "model.pt", seed=0)
    cache = models / ".cache"  # where configs/inference.json keeps them: beside the weights
    _segment(checkpoint)
    (first,) = cache.glob("*.onnx")
    source = json.loads(first.with_name(first.name + SOURCE_SUFFIX).read_text())
    assert source["weights_file"] == str(checkpoint.resolve())

    # a new training replaced model.pt: the copy of the old weights goes when the new one is made
    write_small_checkpoint(checkpoint, seed=1)
    _segment(checkpoint)
    (second,) = cache.glob("*.onnx")
    assert second != first and not first.with_name(first.name + SOURCE_SUFFIX).exists()

    # one made by an older version (no record) and one of weights deleted since: both go, nothing else does
    legacy = cache / "rfeunet-0123.onnx"
    legacy.write_bytes(b"onnx")
    (cache / "notes.txt").write_text("mine")
    assert prune_cache(cache) == [legacy]
    checkpoint.unlink()
    assert prune_cache(cache) == [second]
    assert sorted(p.name for p in cache.iterdir()) == ["notes.txt"]


@needs_onnxruntime
def test_training_that_replaces_model_pt_deletes_its_cached_copy(tmp_path):
    from bundle.checkpoint import NetworkCheckpoint
    from bundle.networks import make_network
    from bundle.training import TrainingCheckpoints

    models = tmp_path / "models"
    checkpoint = write_small_checkpoint(models / "model.pt")
    _segment(checkpoint)
    assert list((models / ".cache").glob("*.onnx"))
    network = make_network("rfeunet", backbone="resnet34")
    checkpoints = TrainingCheckpoints(models, {}, best_model=NetworkCheckpoint(network, {"name": "rfeunet"}),
                                      selection="last")  # fmt: skip
    checkpoints.epoch_completed(type("Engine", (), {"state": type("State", (), {"epoch": 1})()})())
    assert not list((models / ".cache").glob("*.onnx"))


def test_the_model_sizes_the_readme_gives_are_those_of_the_files(tmp_path):
    import re

    import torch

    from bundle.checkpoint import NetworkCheckpoint
    from bundle.networks import make_network

    from .conftest import REPO

    text = " ".join((REPO / "README.md").read_text(encoding="utf-8").split())
    stated = re.search(r"(\d+) MB for a ResNet-34 RFE U-Net, (\d+) MB for ResNet-50, (\d+) MB for ResNet-101", text)
    assert stated, "README's Resources section no longer states the model sizes"
    for backbone, megabytes in zip(("resnet34", "resnet50", "resnet101"), stated.groups(), strict=True):
        path = tmp_path / f"{backbone}.pt"
        network = make_network("rfeunet", backbone=backbone)
        torch.save(NetworkCheckpoint(network, {"name": "rfeunet", "backbone": backbone}).state_dict(), path)
        assert round(path.stat().st_size / 1e6) == int(megabytes), backbone
        path.unlink()
