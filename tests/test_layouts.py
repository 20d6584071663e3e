"""Data in the layouts researchers have: ISIC's one-folder naming, one folder per patient (clinic cameras name every
patient's photos IMG_0001), CSV datalists, splits that keep a patient's photos on one side, and inference on a folder
that also holds the masks. Each either works or is refused in one line that says what would work.
"""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

import pytest

from bundle.checks import evaluation_pairs, training_splits
from bundle.data import SPLIT_KEYS, inference_inputs, item_groups, list_images, load_datalist
from bundle.errors import ConfigError, DataError

from .conftest import REPO, run_bundle

ISIC = ("ISIC_0001769", "ISIC_0001852", "ISIC_0001871", "ISIC_0003462", "ISIC_0003539", "ISIC_0003582",
        "ISIC_0003657", "ISIC_0003805", "ISIC_0004337", "ISIC_0006651")  # fmt: skip
PATIENT_PHOTOS = (3, 1, 2, 4, 1, 2, 3, 1, 2, 2, 1, 3)  # photos per patient: 25 in 12 groups


def isic_one_folder(folder: Path, isic_val: Path, stems=ISIC) -> Path:
    """Photos and masks side by side, named as the ISIC archives name them."""
    folder.mkdir(parents=True, exist_ok=True)
    for stem in stems:
        shutil.copy(isic_val / "images" / f"{stem}.jpg", folder / f"{stem}.jpg")
        shutil.copy(isic_val / "masks" / f"{stem}.png", folder / f"{stem}_segmentation.png")
    return folder


def patient_folders(root: Path, isic_val: Path, masks: bool = True) -> Path:
    """``root/patient_NN/IMG_000k.jpg`` (+ ``IMG_000k_mask.png``): the same file names in every patient's folder."""
    stems = iter(ISIC * 3)
    for patient, count in enumerate(PATIENT_PHOTOS):
        folder = root / f"patient_{patient:02d}"
        folder.mkdir(parents=True)
        for k in range(1, count + 1):
            stem = next(stems)
            shutil.copy(isic_val / "images" / f"{stem}.jpg", folder / f"IMG_{k:04d}.jpg")
            if masks:
                shutil.copy(isic_val / "masks" / f"{stem}.png", folder / f"IMG_{k:04d}_mask.png")
    return root


def patient_of(item) -> str:
    return Path(item["image"]).parent.name


def test_isic_one_folder_naming_is_paired_and_inference_skips_the_masks(tmp_path, isic_val, caplog):
    folder = isic_one_folder(tmp_path / "isic", isic_val)
    splits = {key: load_datalist(folder, key=key) for key in SPLIT_KEYS}
    assert [len(items) for items in splits.values()] == [8, 1, 1]
    for item in (item for items in splits.values() for item in items):
        assert Path(item["label"]).name == Path(item["image"]).stem + "_segmentation.png"
    with caplog.at_level(logging.WARNING, logger="bundle.data"):
        listed = [Path(item["image"]).name for item in list_images(folder)]
    assert listed == [f"{stem}.jpg" for stem in ISIC]  # the masks are not segmented
    assert "Skipped 10 file(s)" in caplog.text and "ISIC_0001769_segmentation.png" in caplog.text


def test_per_patient_folders_pair_and_a_grouped_split_keeps_each_patient_on_one_side(tmp_path, isic_val):
    root = patient_folders(tmp_path / "clinic", isic_val)
    every = [item for key in SPLIT_KEYS for item in load_datalist(root, key=key)]
    assert len(every) == sum(PATIENT_PHOTOS) and len({item["image"] for item in every}) == len(every)
    straddled = 0
    for seed in range(6):
        training = training_splits(root, seed=seed, group_by=1)  # --group_by 1: the first folder below the root
        test = load_datalist(root, key="test", group_by=1)
        sides = {"training": training["training"], "validation": training["validation"], "test": test}
        side_of: dict[str, set[str]] = {}
        for side, items in sides.items():
            for item in items:
                side_of.setdefault(patient_of(item), set()).add(side)
        assert all(len(found) == 1 for found in side_of.values()), side_of  # no patient on two sides
        assert sum(len(items) for items in sides.values()) == sum(PATIENT_PHOTOS)
        assert all(sides.values()) and len(sides["training"]) >= 15, {k: len(v) for k, v in sides.items()}
        ungrouped = training_splits(root, seed=seed)
        patients = [{patient_of(item) for item in ungrouped[key]} for key in ("training", "validation")]
        straddled += bool(patients[0] & patients[1])
    assert straddled > 0  # without --group_by the same data does leak patients across the split


def test_group_by_that_cannot_work_is_one_line(tmp_path, isic_val):
    root = patient_folders(tmp_path / "clinic", isic_val)
    with pytest.raises(DataError, match=r"group_by 2: .*IMG_0001\.jpg lies in no folder 2 level\(s\) below"):
        training_splits(root, group_by=2)
    with pytest.raises(ConfigError, match="group_by: folder levels count from 1"):
        training_splits(root, group_by=0)
    with pytest.raises(DataError, match="group_by 'patient': 25 entry"):
        training_splits(root, group_by="patient")


def test_folders_without_pairs_are_refused_pointing_to_what_works(tmp_path, isic_val):
    root = patient_folders(tmp_path / "photos_only", isic_val, masks=False)
    with pytest.raises(DataError) as caught:
        load_datalist(root, key="training")
    message = str(caught.value)
    for hint in ("images/ + masks/", "_segmentation.png, _mask or _lesion", "--datalist", "-m scripts.prepare_data"):
        assert hint in message, (hint, message)
    with pytest.raises(DataError, match=r"holds no images .*its subfolders patient_00, patient_01, .* do: give one"):
        list_images(root)  # inference on the clinic's top folder


def write_csv(path: Path, rows: list[str]) -> Path:
    path.write_text("\n".join(rows) + "\n")
    return path


def test_csv_datalists_work_or_say_what_is_expected(tmp_path, isic_val):
    root = patient_folders(tmp_path / "clinic", isic_val)
    rows = sorted(p.relative_to(root).as_posix() for p in root.glob("*/IMG_*[0-9].jpg"))
    entries = [(row, row.replace(".jpg", "_mask.png"), row.split("/")[0]) for row in rows]
    split_of = {f"patient_{i:02d}": "training" if i < 9 else "validation" if i < 11 else "test" for i in range(12)}
    lines = [f"{image},{mask},{split_of[patient]},{patient}" for image, mask, patient in entries]
    given = write_csv(root / "given.csv", ["image,label,split,patient", *lines])
    assert [len(load_datalist("", given, key=key)) for key in SPLIT_KEYS] == [19, 3, 3]
    assert load_datalist("", given, key="test")[0]["patient"] == "patient_11"  # other columns are kept

    plain = write_csv(root / "plain.csv", ["image,label,patient"] + [f"{i},{m},{p}" for i, m, p in entries])
    sides = {key: load_datalist("", plain, key=key, group_by="patient") for key in SPLIT_KEYS}
    groups = {key: set(item_groups(items, "patient", root) or []) for key, items in sides.items()}
    assert not (groups["training"] & groups["validation"]) and not (groups["training"] & groups["test"])
    assert not (groups["validation"] & groups["test"]) and all(groups.values())
    assert len(inference_inputs("", plain)) == 25  # inference segments every row of a CSV without a split column

    for content, expected in (
        (["path,mask", "a.jpg,a.png"], 'has no column "image"'),
        (["image,label,split", f"{rows[0]},{entries[0][1]},train"], "line 2: split 'train' is not one of"),
    ):
        with pytest.raises(DataError, match=expected) as caught:
            load_datalist("", write_csv(root / "bad.csv", content), key="training")
        assert "header row naming the columns" in str(caught.value) or "line 2" in str(caught.value)
    as_json = write_csv(root / "list.json", ["image,label", f"{rows[0]},{entries[0][1]}"])
    with pytest.raises(DataError, match=r"is not valid JSON .*: a datalist is JSON, .* or a \.csv file"):
        load_datalist("", as_json)


def test_given_splits_that_share_a_patient_are_refused_with_group_by(tmp_path, isic_val):
    root = patient_folders(tmp_path / "clinic", isic_val)
    items = [{"image": f"patient_00/IMG_{k:04d}.jpg", "label": f"patient_00/IMG_{k:04d}_mask.png"} for k in (1, 2, 3)]
    datalist = root / "leaky.json"
    datalist.write_text(json.dumps({"training": items[:2], "validation": items[2:], "test": items[2:]}))
    with pytest.raises(DataError, match="group 'patient_00' lies in both the training and the validation split"):
        training_splits(root, datalist, group_by=1)
    with pytest.raises(DataError, match="group 'patient_00' lies in both the training and the test split"):
        evaluation_pairs(root, datalist, "test", group_by=1)
    assert len(training_splits(root, datalist)["validation"]) == 1  # without group_by the splits are as given


@pytest.mark.slow
def test_the_readme_commands_on_patient_folders_and_inference_on_an_isic_folder(tmp_path, isic_val):
    """Training and evaluation on one folder per patient with --group_by 1, as the README has them, and inference on
    an ISIC folder that holds the masks too."""
    root = patient_folders(tmp_path / "clinic", isic_val)
    common = ("--dataset_dir", str(root), "--group_by", "1", "--bundle_root", str(tmp_path / "run"),
              "--backbone", "resnet34", "--image_size", "64", "--num_workers", "0")  # fmt: skip
    proc = run_bundle("run", "training", "--config_file", "configs/train.json", "--max_epochs", "1", *common)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert (tmp_path / "run" / "models" / "model.pt").is_file()
    proc = run_bundle("run", "--config_file", "['configs/train.json','configs/evaluate.json']", *common)
    assert proc.returncode == 0, proc.stderr[-3000:]
    scored = json.loads((tmp_path / "run" / "eval" / "metrics.json").read_text())["scored"]
    test = load_datalist(root, key="test", group_by=1)
    assert scored["images"] == len(test) > 0
    trained = {patient_of(item) for item in training_splits(root, group_by=1)["training"]}
    assert not trained & {patient_of(item) for item in test}

    folder = isic_one_folder(tmp_path / "isic", isic_val, ISIC[:3])
    proc = run_bundle("run", "--config_file", "configs/inference.json", "--dataset_dir", str(folder),
                      "--output_dir", str(tmp_path / "masks"))  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert sorted(p.name for p in (tmp_path / "masks").iterdir()) == [f"{stem}_mask.png" for stem in ISIC[:3]]


def test_the_repository_sample_still_trains_from_its_datalist():
    splits = training_splits(REPO / "sample_data")
    assert (len(splits["training"]), len(splits["validation"])) == (16, 4)
