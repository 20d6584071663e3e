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


def test_greyscale_augmentation_gives_what_a_greyscale_photo_gives_and_leaves_guidance_alone():
    import numpy as np
    import torch
    from PIL import Image

    from bundle.transforms import RandGreyscaled

    mean, std = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
    m, s = torch.tensor(mean).reshape(3, 1, 1), torch.tensor(std).reshape(3, 1, 1)
    rgb = np.random.RandomState(0).randint(0, 256, (8, 6, 3)).astype(np.uint8)  # (H, W, 3)

    def normalised(photo: np.ndarray) -> torch.Tensor:  # as the pipeline makes it: (3, W, H)
        return (torch.from_numpy(photo).permute(2, 1, 0).float() / 255 - m) / s

    guidance = torch.rand(2, 6, 8)
    out = RandGreyscaled("image", prob=1.0, pixel_mean=mean, pixel_std=std)(
        {"image": torch.cat((normalised(rgb), guidance))}
    )["image"]
    grey_photo = np.asarray(Image.fromarray(rgb).convert("RGB").convert("L").convert("RGB"))
    assert torch.allclose(out[:3], normalised(grey_photo), atol=0.5 / 255 / 0.224)  # Pillow rounds to whole levels
    assert torch.equal(out[3:], guidance)
    untouched = normalised(rgb)
    assert torch.equal(RandGreyscaled("image", prob=0.0)({"image": untouched})["image"], untouched)
