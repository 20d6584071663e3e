"""Photos of the same name in different folders (clinic cameras call every patient's first photo IMG_0001.jpg) get
masks, report rows and overlays of their own on every path that writes them: the command line's inference, the
evaluation report, and the Slicer worker's folder segmentation."""

from __future__ import annotations

import csv
import json
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from bundle.data import output_names, with_output_names
from bundle.evaluation import clear_report

from .conftest import REPO, run_bundle

DEMO = REPO / "models" / "demo" / "rfeunet_resnet34_isic2017_128.pt"
SLICER_MODULE = REPO / "slicer_extension" / "SkinLesionSegmentation"


def test_names_keep_the_folder_relative_to_the_other_inputs():
    assert output_names(["/d/p1/IMG_0001.jpg", "/d/p2/IMG_0001.jpg"]) == ["p1/IMG_0001", "p2/IMG_0001"]
    # one folder: plain stems, as before
    assert output_names(["/d/images/a.jpg", "/d/images/b.png"]) == ["a", "b"]
    assert output_names(["/d/images/a.jpg"]) == ["a"]
    # deeper and shallower inputs together
    assert output_names(["/d/a.jpg", "/d/x/y/a.jpg"]) == ["a", "x/y/a"]


def test_names_that_would_still_coincide_are_made_unique():
    # same stem, other extension; and a case-only difference, which is one file on macOS and Windows
    names = output_names(["/d/x.jpg", "/d/x.png", "/d/X.JPG", "/d/x_jpg.tif"])
    assert len({n.casefold() for n in names}) == 4, names
    assert names[:2] == ["x_jpg", "x_png"]
    # the same file listed twice is one output
    assert output_names(["/d/a.jpg", "/d/a.jpg"]) == ["a", "a"]


def test_a_folder_of_links_to_photos_elsewhere_names_them_as_the_folder_lists_them(tmp_path):
    from bundle.data import list_images

    for folder, name in (("a", "x.jpg"), ("b", "y.jpg")):
        (tmp_path / folder).mkdir()
        Image.new("RGB", (8, 8)).save(tmp_path / folder / name)
    (tmp_path / "links").mkdir()
    for target in (tmp_path / "a" / "x.jpg", tmp_path / "b" / "y.jpg"):
        (tmp_path / "links" / target.name).symlink_to(target)
    assert output_names([item["image"] for item in list_images(tmp_path / "links")]) == ["x", "y"]


def test_items_keep_a_name_they_already_have_and_arrays_get_none():
    items = with_output_names([{"image": "/d/p1/a.jpg"}, {"image": "/d/p2/a.jpg", "output_name": "mine"}])
    assert [i["output_name"] for i in items] == ["p1/a", "mine"]
    assert "output_name" not in with_output_names([{"image": np.zeros((4, 4, 3), np.uint8)}])[0]


def test_clearing_a_report_removes_the_overlays_in_folders(tmp_path):
    (tmp_path / "overlays" / "p1").mkdir(parents=True)
    (tmp_path / "overlays" / "p1" / "IMG_0001_overlay.png").write_bytes(b"png")
    (tmp_path / "overlays" / "keep.txt").write_text("not ours")
    clear_report(tmp_path)
    assert sorted(p.name for p in (tmp_path / "overlays").iterdir()) == ["keep.txt"]


@pytest.fixture(scope="module")
def same_names(isic_val, tmp_path_factory) -> Path:
    """Two different ISIC photographs, both called IMG_0001.jpg, in p1/ and p2/, with their masks and a datalist.

    p2's is cropped to 800x600, so each output's size says which photo it came from."""
    root = tmp_path_factory.mktemp("clinic")
    sources = [("p1", "ISIC_0001769", None), ("p2", "ISIC_0001852", (100, 40, 900, 640))]
    for patient, stem, box in sources:
        for folder, name, suffix in (("images", stem + ".jpg", ".jpg"), ("masks", stem + ".png", ".png")):
            with Image.open(isic_val / folder / name) as opened:
                picture = opened.crop(box) if box else opened.copy()
            target = root / ("" if folder == "images" else "masks") / patient / f"IMG_0001{suffix}"
            target.parent.mkdir(parents=True, exist_ok=True)
            picture.save(target, quality=95) if suffix == ".jpg" else picture.save(target)
    pairs = [{"image": f"{p}/IMG_0001.jpg", "label": f"masks/{p}/IMG_0001.png"} for p, _, _ in sources]
    (root / "datalist.json").write_text(json.dumps({"training": pairs, "validation": pairs, "test": pairs}))
    return root


def _mask(path: Path) -> np.ndarray:
    with Image.open(path) as opened:
        return np.asarray(opened)


@pytest.mark.slow
def test_command_line_inference_writes_one_mask_per_photo(same_names, tmp_path):
    out = tmp_path / "masks"
    proc = run_bundle(
        "run", "--config_file", "configs/inference.json", "--datalist", str(same_names / "datalist.json"),
        "--output_dir", str(out), "--ckpt_path", str(DEMO), "--num_workers", "0",
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "segmented 2 of 2 images; 0 failed" in proc.stdout
    written = sorted(p.relative_to(out).as_posix() for p in out.rglob("*.png"))
    assert written == ["p1/IMG_0001_mask.png", "p2/IMG_0001_mask.png"]
    assert _mask(out / "p1" / "IMG_0001_mask.png").shape == (683, 1024)
    assert _mask(out / "p2" / "IMG_0001_mask.png").shape == (600, 800)


@pytest.mark.slow
def test_evaluation_reports_both_photos_under_their_folders(same_names, tmp_path):
    eval_dir = tmp_path / "eval"
    proc = run_bundle(
        "run", "--config_file", "['configs/train.json','configs/evaluate.json']", "--bundle_root", str(tmp_path),
        "--datalist", str(same_names / "datalist.json"), "--ckpt_path", str(DEMO), "--eval_dir", str(eval_dir),
        "--num_workers", "0",
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    for resolution in ("working", "original"):
        with open(eval_dir / f"metrics_{resolution}.csv", newline="") as handle:
            names = [row["name"] for row in csv.DictReader(handle)]
        assert names == ["p1/IMG_0001.jpg", "p2/IMG_0001.jpg", "mean"], names
    report = json.loads((eval_dir / "metrics.json").read_text())
    rows = {row["name"]: row for row in report["per_image"]["original"]}
    pixels = {name: row["tp"] + row["tn"] + row["fp"] + row["fn"] for name, row in rows.items()}
    assert pixels == {"p1/IMG_0001.jpg": 1024 * 683, "p2/IMG_0001.jpg": 800 * 600}  # each scored at its own size
    overlays = sorted(p.relative_to(eval_dir / "overlays").as_posix() for p in (eval_dir / "overlays").rglob("*.png"))
    assert overlays == ["p1/IMG_0001_overlay.png", "p2/IMG_0001_overlay.png"]


def test_slicer_worker_folder_segmentation_writes_one_result_per_photo(same_names, tmp_path):
    sys.path.insert(0, str(SLICER_MODULE))
    try:
        from SkinLesionSegmentationLib.worker import BundleModel
    finally:
        sys.path.remove(str(SLICER_MODULE))
    model = BundleModel(REPO, "cpu", {"ckpt_path": str(DEMO), "num_workers": 0})
    result = model.batch(str(same_names / "datalist.json"), str(tmp_path / "out"))
    assert not result["failures"]
    written = sorted(Path(png).relative_to(tmp_path / "out").as_posix() for _, png, _ in result["written"])
    assert written == ["p1/IMG_0001_mask.png", "p2/IMG_0001_mask.png"]
    assert (tmp_path / "out" / "p2" / "IMG_0001.seg.nrrd").is_file()
    assert _mask(tmp_path / "out" / "p2" / "IMG_0001_mask.png").shape == (600, 800)
    shutil.rmtree(tmp_path / "out")
