"""The training recipe's options: which augmentations run, and which epoch models/model.pt keeps."""

from __future__ import annotations

import pytest
from monai.bundle import ConfigParser

from bundle.errors import ConfigError
from bundle.training import BEST_MODEL_NAME, TrainingCheckpoints
from bundle.transforms import chosen_augmentations

from .conftest import REPO

TABLE = {"flips": ["flip_x", "flip_y"], "rotate": ["rotate"], "colour": ["scale", "shift"]}


def test_augmentation_groups_come_in_table_order_whatever_order_they_are_named():
    assert chosen_augmentations(TABLE, "colour,flips") == ["flip_x", "flip_y", "scale", "shift"]
    assert chosen_augmentations(TABLE, " rotate ") == ["rotate"]
    assert chosen_augmentations(TABLE, "none") == [] == chosen_augmentations(TABLE, "")


@pytest.mark.parametrize(("names", "message"), [("flip", "did you mean flips"), ("flips,flips", "twice")])
def test_a_wrong_augmentation_group_is_one_config_error(names, message):
    with pytest.raises(ConfigError, match=message):
        chosen_augmentations(TABLE, names)


@pytest.mark.parametrize(
    ("augment", "expected"),
    [
        ("flips", ["RandFlipd", "RandFlipd"]),
        (
            "flips,rotate,colour",
            ["RandFlipd", "RandFlipd", "RandRotated", "RandScaleIntensityd", "RandShiftIntensityd"],
        ),
    ],
)
def test_train_json_builds_the_named_augmentations(augment, expected):
    parser = ConfigParser()
    parser.read_config(str(REPO / "configs" / "train.json"))
    parser["augment"] = augment
    transforms = parser.get_parsed_content("train#random_transforms")
    assert [type(t).__name__ for t in transforms] == expected


class _Model:
    def __init__(self) -> None:
        self.calls = 0

    def state_dict(self) -> dict:
        self.calls += 1
        return {"epoch_saved": self.calls}


class _Validator:
    def __init__(self, best_epoch: int) -> None:
        self.state = type("State", (), {"best_metric_epoch": best_epoch})()


class _Engine:
    def __init__(self, epoch: int) -> None:
        self.state = type("State", (), {"epoch": epoch})()


@pytest.mark.parametrize(("selection", "saved_in_epochs"), [("best", [1]), ("last", [1, 2, 3])])
def test_model_selection_decides_which_epochs_write_model_pt(tmp_path, selection, saved_in_epochs):
    model = _Model()
    checkpoints = TrainingCheckpoints(
        tmp_path, state={}, best_model=model, validator=_Validator(best_epoch=1), selection=selection
    )
    written = []
    for epoch in (1, 2, 3):
        calls = model.calls
        checkpoints.epoch_completed(_Engine(epoch))
        if model.calls > calls:
            written.append(epoch)
    assert written == saved_in_epochs
    assert (tmp_path / BEST_MODEL_NAME).is_file()


def test_an_unknown_model_selection_is_refused(tmp_path):
    with pytest.raises(ValueError, match="best, last"):
        TrainingCheckpoints(tmp_path, state={}, selection="latest")
