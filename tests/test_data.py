"""bundle.data: reading, building and splitting datalists, on small real files."""

from __future__ import annotations

import json
import os
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from bundle.data import (
    IMAGE_EXTENSIONS,
    MASK_EXTENSIONS,
    datalist_from_folders,
    file_stem,
    inference_inputs,
    kfold,
    list_images,
    load_datalist,
    pair_images_masks,
    split_counts,
    split_items,
    write_datalist,
)

from .conftest import REPO


def write_image(path: Path, size: tuple[int, int] = (12, 8), mask: bool = False) -> Path:
    """A tiny real image: RGB noise, or a 0/255 mask when ``mask``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(len(path.name))
    if mask:
        Image.fromarray(np.where(rng.random(size[::-1]) > 0.5, 255, 0).astype(np.uint8), "L").save(path)
    else:
        Image.fromarray(rng.integers(0, 256, (*size[::-1], 3), dtype=np.uint8), "RGB").save(path)
    return path


def make_folders(root: Path, names: list[str], mask_suffix: str = "") -> None:
    for name in names:
        write_image(root / "images" / f"{name}.jpg")
        write_image(root / "masks" / f"{name}{mask_suffix}.png", mask=True)


def test_extensions_and_stems():
    assert {".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp", ".gif", ".jp2"} <= set(IMAGE_EXTENSIONS)
    assert not {".h5", ".eps", ".txt", ".json", ".pt"} & set(IMAGE_EXTENSIONS)
    assert {".nii.gz", ".nii", ".nrrd", ".gif"} <= set(MASK_EXTENSIONS)
    assert file_stem("/a/b/case_1.nii.gz") == "case_1"
    assert file_stem("case.2.PNG") == "case.2"


# ---------------------------------------------------------------------------------------------------- load_datalist


def test_load_datalist_resolves_relative_paths_against_dataset_dir(tmp_path):
    make_folders(tmp_path / "root", ["a", "b"])
    datalist = tmp_path / "lists" / "my.json"
    datalist.parent.mkdir()
    datalist.write_text(
        json.dumps({"training": [{"image": "images/a.jpg", "label": "masks/a.png", "id": 7}], "test": ["images/b.jpg"]})
    )
    items = load_datalist(tmp_path / "root", datalist, key="training")
    root = tmp_path / "root"
    assert items == [{"image": str(root / "images/a.jpg"), "label": str(root / "masks/a.png"), "id": 7}]
    # A plain string entry is an image; a relative datalist path is also looked up under dataset_dir.
    (tmp_path / "root" / "list.json").write_text(datalist.read_text())
    assert load_datalist(tmp_path / "root", "list.json", key="test") == [{"image": str(tmp_path / "root/images/b.jpg")}]


def test_load_datalist_resolves_against_the_datalist_folder_without_dataset_dir(tmp_path):
    make_folders(tmp_path, ["a"])
    (tmp_path / "d.json").write_text(json.dumps({"validation": [{"image": "images/a.jpg", "label": "masks/a.png"}]}))
    items = load_datalist("", tmp_path / "d.json", key="validation")
    assert items[0]["label"] == str(tmp_path / "masks/a.png")
    assert all(os.path.isabs(v) for v in items[0].values())


def test_inference_inputs_follow_the_same_path_rule_as_training(tmp_path):
    """The rule the configs use everywhere: entries start from dataset_dir, or from the datalist's own folder."""
    make_folders(tmp_path / "root", ["a"])
    make_folders(tmp_path / "lists", ["a"])
    datalist = tmp_path / "lists" / "d.json"
    datalist.write_text(json.dumps({"test": [{"image": "images/a.jpg", "label": "masks/a.png"}]}))
    for dataset_dir, base in (("", tmp_path / "lists"), (tmp_path / "root", tmp_path / "root")):
        training = load_datalist(dataset_dir, datalist, key="test")
        assert inference_inputs(dataset_dir, datalist) == [{"image": training[0]["image"]}]
        assert training[0]["image"] == str(base / "images" / "a.jpg")
    assert inference_inputs(tmp_path / "root" / "images") == [{"image": str(tmp_path / "root" / "images" / "a.jpg")}]


def test_load_datalist_uses_datalist_json_in_dataset_dir(tmp_path):
    make_folders(tmp_path, ["a", "b"])
    write_datalist(tmp_path / "datalist.json", {"training": [{"image": str(tmp_path / "images/b.jpg")}]}, tmp_path)
    assert load_datalist(tmp_path, None) == [{"image": str(tmp_path / "images/b.jpg")}]


def test_load_datalist_missing_key_names_file_and_keys(tmp_path):
    (tmp_path / "d.json").write_text(json.dumps({"training": [], "validation": []}))
    with pytest.raises(ValueError, match=r"d\.json has no key 'test'; its keys are \['training', 'validation'\]"):
        load_datalist(tmp_path, "d.json", key="test")


def test_load_datalist_lists_missing_files(tmp_path):
    entries = [{"image": f"images/missing_{i}.jpg", "label": f"masks/missing_{i}.png"} for i in range(4)]
    (tmp_path / "d.json").write_text(json.dumps({"training": entries}))
    with pytest.raises(ValueError, match=r"8 listed file\(s\) do not exist: .*missing_0\.jpg.*and 3 more"):
        load_datalist(tmp_path, "d.json")


@pytest.mark.parametrize(
    "content, message",
    [
        ("{not json", "not valid JSON"),
        ("[1, 2]", "holds a list"),
        ('{"training": [{"label": "x.png"}]}', 'no "image"'),
    ],
)
def test_load_datalist_rejects_malformed_files(tmp_path, content, message):
    (tmp_path / "d.json").write_text(content)
    with pytest.raises(ValueError, match=message):
        load_datalist(tmp_path, "d.json")


def test_load_datalist_without_datalist_pairs_folders_with_suffixes(tmp_path):
    names = [f"case_{i:02d}" for i in range(20)]
    make_folders(tmp_path, names[:10], "_segmentation")
    make_folders(tmp_path, names[10:], "_lesion")
    splits = {key: load_datalist(tmp_path, key=key) for key in ("training", "validation", "test")}
    assert [len(items) for items in splits.values()] == [16, 2, 2]
    every = [item for items in splits.values() for item in items]
    assert sorted(Path(item["image"]).stem for item in every) == names
    for item in every:
        assert Path(item["label"]).stem.startswith(Path(item["image"]).stem)
    # Deterministic: the same folders give the same split.
    assert load_datalist(tmp_path, key="test") == splits["test"]


def test_load_datalist_without_anything_to_read(tmp_path):
    with pytest.raises(ValueError, match=r"holds no photo/mask pairs: no datalist\.json, no images/ \+ masks/ .*"
                       r"python -m scripts\.prepare_data"):  # fmt: skip
        load_datalist(tmp_path)
    with pytest.raises(ValueError, match="does not exist"):
        load_datalist(tmp_path, "absent.json")


def test_datalist_from_folders_without_any_pair(tmp_path):
    write_image(tmp_path / "images" / "a.jpg")
    write_image(tmp_path / "masks" / "b.png", mask=True)
    with pytest.raises(ValueError, match="holds no photo/mask pairs"):
        datalist_from_folders(tmp_path)


# ------------------------------------------------------------------------------------------------------ list_images


def test_list_images_from_folder_file_subfolder_and_datalist(tmp_path):
    for name in ("b.png", "a.jpg", "c.TIFF"):
        write_image(tmp_path / "flat" / name)
    (tmp_path / "flat" / "notes.txt").write_text("not an image")
    write_image(tmp_path / "flat" / "a_superpixels.png")
    (tmp_path / "flat" / "nested").mkdir()
    listed = [Path(item["image"]).name for item in list_images(tmp_path / "flat")]
    assert listed == ["a.jpg", "b.png", "c.TIFF"]

    make_folders(tmp_path / "ds", ["x", "y"])
    assert [Path(i["image"]).name for i in list_images(tmp_path / "ds")] == ["x.jpg", "y.jpg"]
    assert list_images(tmp_path / "ds" / "images" / "y.jpg") == [{"image": str(tmp_path / "ds/images/y.jpg")}]

    cached = write_image(tmp_path / "ds" / "cache" / "x.jpg", size=(6, 4))
    content = {
        "test": [{"image": "images/y.jpg"}, {"image": str(cached), "image_orig": "images/x.jpg"}],
        "training": [{"image": "images/x.jpg"}],
    }
    (tmp_path / "ds" / "datalist.json").write_text(json.dumps(content))
    assert list_images(tmp_path / "ds" / "datalist.json") == [
        {"image": str(tmp_path / "ds/images/y.jpg")},
        {"image": str(tmp_path / "ds/images/x.jpg")},  # the original behind the cached copy
    ]
    assert len(list_images(tmp_path / "ds" / "datalist.json", key="training")) == 1


def test_list_images_errors(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="holds no images"):
        list_images(tmp_path / "empty")
    with pytest.raises(ValueError, match="does not exist"):
        list_images(tmp_path / "nowhere")
    (tmp_path / "notes.txt").write_text("x")
    with pytest.raises(ValueError, match="neither an image"):
        list_images(tmp_path / "notes.txt")


# ------------------------------------------------------------------------------------------------ pair_images_masks


def test_pair_images_masks_reports_unpaired_files(tmp_path):
    make_folders(tmp_path, ["ISIC_0000001", "ISIC_0000002"], "_Segmentation")
    write_image(tmp_path / "images" / "ISIC_0000003.jpg")
    write_image(tmp_path / "images" / "ISIC_0000001_superpixels.png")
    write_image(tmp_path / "masks" / "ISIC_0000009_segmentation.png", mask=True)
    (tmp_path / "masks" / "LICENSE.txt").write_text("licence")
    pairs, unpaired_images, unpaired_masks = pair_images_masks(tmp_path / "images", tmp_path / "masks")
    assert [(Path(p["image"]).name, Path(p["label"]).name) for p in pairs] == [
        ("ISIC_0000001.jpg", "ISIC_0000001_Segmentation.png"),
        ("ISIC_0000002.jpg", "ISIC_0000002_Segmentation.png"),
    ]
    assert [Path(p).name for p in unpaired_images] == ["ISIC_0000003.jpg"]
    assert [Path(p).name for p in unpaired_masks] == ["ISIC_0000009_segmentation.png"]


def test_pair_images_masks_in_one_folder_and_with_slicer_labels(tmp_path):
    write_image(tmp_path / "one" / "lesion.jpg")
    write_image(tmp_path / "one" / "lesion_mask.png", mask=True)
    write_image(tmp_path / "one" / "alone.jpg")
    pairs, unpaired_images, unpaired_masks = pair_images_masks(tmp_path / "one", tmp_path / "one")
    assert [(Path(p["image"]).name, Path(p["label"]).name) for p in pairs] == [("lesion.jpg", "lesion_mask.png")]
    assert [Path(p).name for p in unpaired_images] == ["alone.jpg"]
    assert unpaired_masks == []

    write_image(tmp_path / "img" / "case.png")
    (tmp_path / "lab").mkdir()
    (tmp_path / "lab" / "case.nii.gz").write_bytes(b"placeholder: pairing looks at names only")
    pairs, _, _ = pair_images_masks(tmp_path / "img", tmp_path / "lab")
    assert Path(pairs[0]["label"]).name == "case.nii.gz"
    with pytest.raises(ValueError, match="does not exist"):
        pair_images_masks(tmp_path / "img", tmp_path / "absent")


# ---------------------------------------------------------------------------------------------------- write_datalist


def test_write_datalist_round_trip_with_relative_paths(tmp_path):
    make_folders(tmp_path / "root", ["a"])
    item = {
        "image": str(tmp_path / "root/images/a.jpg"),
        "label": str(tmp_path / "root/masks/a.png"),
        "label_orig": str(tmp_path / "root/masks/a.png"),
        "note": "kept",
    }
    path = write_datalist(tmp_path / "root" / "out" / "list.json", {"training": [item], "test": []}, tmp_path / "root")
    stored = json.loads(path.read_text())
    assert stored == {
        "training": [{"image": "images/a.jpg", "label": "masks/a.png", "label_orig": "masks/a.png", "note": "kept"}],
        "test": [],
    }
    assert [p.name for p in path.parent.iterdir()] == ["list.json"]  # the temporary file is gone
    assert load_datalist(tmp_path / "root", path) == [item]


# ------------------------------------------------------------------------------------------------ splits and folds


def test_split_counts_table2_and_scaling():
    assert split_counts(2594, [1815, 259, 520]) == [1815, 259, 520]
    assert split_counts(200, [140, 20, 40]) == [140, 20, 40]
    scaled = split_counts(1000, [1815, 259, 520])
    assert sum(scaled) == 1000 and scaled == [700, 100, 200]
    assert split_counts(10, (0.8, 0.1, 0.1)) == [8, 1, 1]
    assert split_counts(8, (0.8, 0.1, 0.1)) == [6, 1, 1]  # largest remainders: 6.4, 0.8, 0.8
    with pytest.raises(ValueError, match="non-negative"):
        split_counts(5, [1, -1, 1])


def test_split_items_table2_counts_disjoint_and_reproducible():
    items = [{"image": f"/data/ISIC_{i:07d}.jpg", "label": f"/data/ISIC_{i:07d}_segmentation.png"} for i in range(2594)]
    splits = split_items(items, (1815, 259, 520), seed=0)
    assert [len(v) for v in splits.values()] == [1815, 259, 520]
    names = [item["image"] for part in splits.values() for item in part]
    assert sorted(names) == sorted(item["image"] for item in items)  # disjoint and complete
    assert split_items(items, (1815, 259, 520), seed=0) == splits
    # The split depends on file names and seed only: another folder, another listing order, the same split.
    moved = [{"image": "/elsewhere/" + Path(item["image"]).name} for item in reversed(items)]
    moved_test = {Path(i["image"]).name for i in split_items(moved, (1815, 259, 520), seed=0)["test"]}
    assert moved_test == {Path(i["image"]).name for i in splits["test"]}
    other_seed = split_items(items, (1815, 259, 520), seed=1)
    assert other_seed["test"] != splits["test"]
    # Each part keeps the input order.
    assert splits["validation"] == sorted(splits["validation"], key=lambda i: i["image"])


def test_split_items_rejects_inconsistent_sizes():
    with pytest.raises(ValueError, match="add up to 9, not to the 10 items"):
        split_items([f"{i}.jpg" for i in range(10)], (7, 1, 1))
    with pytest.raises(ValueError, match="not to 1"):
        split_items([f"{i}.jpg" for i in range(10)], (0.5, 0.1, 0.1))
    with pytest.raises(ValueError, match="2 split sizes"):
        split_items([f"{i}.jpg" for i in range(10)], (0.5, 0.5))


def test_kfold_partitions_every_item_once():
    items = [f"/ph2/IMD{i:03d}.bmp" for i in range(203)]
    folds = kfold(items, 5, seed=3)
    assert len(folds) == 5
    validated = Counter(item for _, validation in folds for item in validation)
    assert set(validated) == set(items) and set(validated.values()) == {1}
    assert sorted(len(v) for _, v in folds) == [40, 40, 41, 41, 41]
    for training, validation in folds:
        assert not set(training) & set(validation) and len(training) + len(validation) == len(items)
    assert kfold(items, 5, seed=3) == folds
    with pytest.raises(ValueError, match="k >= 2"):
        kfold(items, 1)
    with pytest.raises(ValueError, match="cannot make 5 folds from 3 items"):
        kfold(items[:3], 5)


def test_original_files_point_evaluation_at_the_uncached_photos():
    from bundle.data import original_files

    cached = {"image": "/c/a.jpg", "label": "/c/a.png", "image_orig": "/o/a.jpg", "label_orig": "/o/a_seg.png", "id": 7}
    plain = {"image": "/o/b.jpg", "label": "/o/b.png"}
    assert original_files([cached, plain]) == [{"image": "/o/a.jpg", "label": "/o/a_seg.png", "id": 7}, plain]
    assert cached["image"] == "/c/a.jpg"  # the input is not modified


def test_training_data_is_described_from_the_items_themselves(tmp_path):
    from bundle.data import describe_training_data

    sample = [{"image": str(REPO / "sample_data" / "images" / f"synthetic_00{i}.jpg")} for i in range(3)]
    described = describe_training_data(sample, sample[:1], dataset_dir=REPO / "sample_data", bundle_root=REPO)
    assert described == {
        "dataset": str(REPO / "sample_data" / "images"),
        "datalist": "",
        "training_pairs": 3,
        "validation_pairs": 1,
        "synthetic_sample": True,
    }
    # MONAI Label replaces the items, while dataset_dir still names the sample: the items decide
    clinic = tmp_path / "clinic"
    own = [{"image": str(clinic / "a" / "IMG_0001.jpg")}, {"image": str(clinic / "b" / "x.jpg")}]
    described = describe_training_data(own, [], dataset_dir=REPO / "sample_data", bundle_root=REPO)
    assert described["dataset"] == str((tmp_path / "clinic").resolve()) and described["synthetic_sample"] is False
    # the sample copied elsewhere is still recognised by its generator's names; one real photo makes it real data
    copied = [{"image": str(tmp_path / "copy" / "synthetic_001.jpg")}]
    assert describe_training_data(copied, bundle_root=REPO)["synthetic_sample"] is True
    assert describe_training_data(copied + own, bundle_root=REPO)["synthetic_sample"] is False
    datalist = tmp_path / "clinic" / "datalist.json"
    assert describe_training_data(own, datalist=datalist)["datalist"] == str(datalist)
