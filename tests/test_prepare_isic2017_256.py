"""prepare_data on the ISIC 2017 at 256x256 layout: test = the official validation split, validation = a seeded 8 % of
the official training split, never a test photo in training or validation."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from bundle.data import load_datalist
from scripts.prepare_data import main, prepare_data

from .conftest import SHARED


def make_tree(root: Path, counts: dict[str, int]) -> None:
    """``training/`` and ``validation/`` with images/ISIC_<id>.jpg and masks/ISIC_<id>_segmentation.png (0/255)."""
    rng = np.random.default_rng(0)
    next_id = 0
    for split, count in counts.items():
        (root / split / "images").mkdir(parents=True)
        (root / split / "masks").mkdir(parents=True)
        for _ in range(count):
            stem = f"ISIC_{next_id:07d}"
            next_id += 1
            Image.fromarray(rng.integers(0, 255, (32, 32, 3), dtype=np.uint8)).save(
                root / split / "images" / f"{stem}.jpg"
            )
            mask = np.zeros((32, 32), np.uint8)
            mask[8:20, 4:28] = 255
            Image.fromarray(mask).save(root / split / "masks" / f"{stem}_segmentation.png")


def test_official_validation_is_the_test_set_and_eight_percent_of_training_validates(tmp_path):
    make_tree(tmp_path / "isic2017_256", {"training": 50, "validation": 7})
    summary = prepare_data(str(tmp_path / "isic2017_256"), out=str(tmp_path / "prepared"))
    assert summary["layout"] == "isic2017_256"
    assert summary["counts"] == {"training": 46, "validation": 4, "test": 7}
    splits = {key: load_datalist(tmp_path / "prepared", key=key) for key in ("training", "validation", "test")}
    folders = {key: {Path(item["image"]).parent.parent.name for item in items} for key, items in splits.items()}
    assert folders == {"training": {"training"}, "validation": {"training"}, "test": {"validation"}}
    names = {key: {Path(item["image"]).name for item in items} for key, items in splits.items()}
    assert not names["training"] & names["validation"]
    # the same seed gives the same split; another seed another one
    again = prepare_data(str(tmp_path / "isic2017_256"), out=str(tmp_path / "again"))
    assert (
        json.loads(Path(again["datalist"]).read_text())["validation"]
        == json.loads(Path(summary["datalist"]).read_text())["validation"]
    )
    other = prepare_data(str(tmp_path / "isic2017_256"), out=str(tmp_path / "other"), seed=1)
    assert {Path(i["image"]).name for i in load_datalist(tmp_path / "other", key="validation")} != names["validation"]
    assert other["counts"]["validation"] == 4


def test_a_layout_without_its_validation_folder_is_one_error_line(tmp_path, capsys):
    make_tree(tmp_path / "src", {"training": 5, "validation": 2})
    for mask in (tmp_path / "src" / "validation" / "masks").iterdir():
        mask.unlink()
    assert main([str(tmp_path / "src"), "--out", str(tmp_path / "out"), "--layout", "isic2017_256"]) == 1
    assert "needs pairs in both training/ and validation/" in capsys.readouterr().err


def test_the_shared_isic2017_256_set_gives_1840_160_150(tmp_path):
    source = SHARED / "data" / "isic2017_256"
    if not (source / "training" / "images").is_dir():
        pytest.skip(f"ISIC 2017 at 256x256 not found at {source}")
    summary = prepare_data(str(source), out=str(tmp_path))
    assert summary["counts"] == {"training": 1840, "validation": 160, "test": 150}
    assert summary["problems"] == []
