"""Training and evaluation on bad data: one line naming the file and the problem, before any work starts.

In-process checks of ``bundle.checks`` on each kind of bad pair, then the real command lines: training refuses a
folder of bad pairs (or leaves them out with ``--skip_bad_pairs true``), trains on three pairs by validating on one
of them, and evaluation refuses an empty split without leaving the previous report in place. Last, one corpus of
good and bad pairs goes through prepare_data, training and evaluation, which must agree on every pair.
"""

from __future__ import annotations

import io
import json
import logging
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageFilter

from bundle.checks import check_pair, checked_pairs, training_splits
from bundle.data import SPLIT_KEYS, load_datalist
from bundle.errors import DataError

from .conftest import REPO, run_bundle
from .test_cli import _one_error_line

SAMPLE = REPO / "sample_data"
TRAIN = ("run", "training", "--config_file", "configs/train.json", "--backbone", "resnet34", "--image_size", "64",
         "--num_workers", "0", "--max_epochs", "1")  # fmt: skip


def sample_pair(index: int) -> tuple[bytes, bytes]:
    """The bytes of one embedded sample photo and its mask."""
    name = f"synthetic_{index:03d}"
    return (SAMPLE / "images" / f"{name}.jpg").read_bytes(), (SAMPLE / "masks" / f"{name}.png").read_bytes()


def encoded(image: Image.Image, fmt: str, **options) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **options)
    return buffer.getvalue()


def lesion_mask(size=(64, 48)) -> Image.Image:
    mask = np.zeros(size[::-1], np.uint8)
    mask[size[1] // 4 : size[1] // 2, size[0] // 4 : size[0] // 2] = 255
    return Image.fromarray(mask)


def bad_pairs() -> dict[str, tuple[bytes, bytes, str, str]]:
    """Name → (photo bytes, mask bytes, the file the message names, what it says) for every kind of bad pair."""
    photo, mask = sample_pair(0)
    with Image.open(io.BytesIO(photo)) as opened:
        size = opened.size
    label_map = np.zeros(size[::-1], np.uint8)
    label_map[:20, :20], label_map[30:, 30:] = 1, 2
    blurred = lesion_mask(size).filter(ImageFilter.GaussianBlur(8))
    return {
        "truncated": (photo[: len(photo) // 2], mask, "image", "cannot decode image"),
        "not_an_image": (b"<html>not found</html>\n" * 40, mask, "image", "not an image file that Pillow can identify"),
        "empty_photo": (b"", mask, "image", "empty file"),
        "empty_mask": (photo, b"", "label", "empty file"),
        "other_size": (
            photo,
            encoded(lesion_mask((size[0] // 2, size[1])), "PNG"),
            "label",
            "mask is 160x240 but its photo",
        ),
        "label_map": (photo, encoded(Image.fromarray(label_map), "PNG"), "label", "holds 3 different values (0, 1, 2)"),
        "blurred": (photo, encoded(blurred, "PNG"), "label", "is not a two-level mask"),
        "photo_as_mask": (photo, encoded(Image.open(io.BytesIO(photo)), "PNG"), "label", "is not a two-level mask"),
    }


def write_folder(root: Path, pairs: dict[str, tuple[bytes, bytes]]) -> Path:
    """An ``images/`` + ``masks/`` data set of the given pairs (photo as .jpg, mask as .png)."""
    for sub in ("images", "masks"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    for name, (photo, mask, *_) in pairs.items():
        (root / "images" / f"{name}.jpg").write_bytes(photo)
        (root / "masks" / f"{name}.png").write_bytes(mask)
    return root


def item(root: Path, name: str) -> dict[str, str]:
    return {"image": str(root / "images" / f"{name}.jpg"), "label": str(root / "masks" / f"{name}.png")}


def test_each_bad_pair_is_named_with_its_problem(tmp_path):
    cases = bad_pairs()
    write_folder(tmp_path, cases)
    for name, (*_, named, expected) in cases.items():
        problem = check_pair(item(tmp_path, name), working_size=64).problem
        assert problem is not None and expected in problem, (name, problem)
        assert problem.startswith(f"{item(tmp_path, name)[named]}: ") and "\n" not in problem, (name, problem)


def test_masks_people_really_have_pass(tmp_path):
    """0/255, 0/1, JPEG-compressed, thin anti-aliased edges and red-on-black masks are two-level enough."""
    photo, _ = sample_pair(1)
    with Image.open(io.BytesIO(photo)) as opened:
        size = opened.size
    mask = lesion_mask(size)
    red = np.zeros((size[1], size[0], 3), np.uint8)
    red[..., 0] = np.asarray(mask)
    good = {
        "binary": encoded(mask, "PNG"),
        "zero_one": encoded(Image.fromarray((np.asarray(mask) // 255).astype(np.uint8)), "PNG"),
        "jpeg": encoded(mask, "JPEG", quality=75),
        "anti_aliased": encoded(mask.resize((size[0] * 4, size[1] * 4)).resize(size, Image.BILINEAR), "PNG"),
        "red_on_black": encoded(Image.fromarray(red), "PNG"),
    }
    write_folder(tmp_path, {name: (photo, data) for name, data in good.items()})
    for name in good:
        check = check_pair(item(tmp_path, name), working_size=64)
        assert check.problem is None, (name, check.problem)
        assert 0.05 < check.lesion_share < 0.1, (name, check.lesion_share)


def test_a_split_with_bad_pairs_is_refused_or_they_are_left_out_by_request(tmp_path, caplog):
    cases = bad_pairs()
    write_folder(tmp_path, {**cases, "good_a": sample_pair(2), "good_b": sample_pair(3)})
    items = [item(tmp_path, name) for name in [*cases, "good_a", "good_b"]]
    with pytest.raises(DataError) as caught:
        checked_pairs(items, "training", working_size=64)
    message = str(caught.value)
    assert message.startswith(f"{len(cases)} bad pair(s) in the training split: ") and "--skip_bad_pairs" in message
    assert "and 3 more (all logged above)" in message
    with caplog.at_level(logging.WARNING, logger="bundle.checks"):
        kept = checked_pairs(items, "training", skip_bad_pairs=True, working_size=64)
    assert kept == items[-2:]
    logged = caplog.text
    assert all(f"{name}." in logged for name in cases) and "Left out 8 bad pair(s)" in logged


def test_empty_splits_and_masks_that_teach_nothing_are_refused(tmp_path, caplog):
    with pytest.raises(DataError, match="the test split holds no image/mask pairs"):
        checked_pairs([], "test")
    photo, mask = sample_pair(4)
    empty = encoded(Image.new("L", Image.open(io.BytesIO(photo)).size), "PNG")
    write_folder(tmp_path, {"blank_a": (photo, empty), "blank_b": (photo, empty), "lesion": (photo, mask)})
    with pytest.raises(DataError, match=r"every mask of the training split is empty .*blank_a\.png"):
        checked_pairs([item(tmp_path, "blank_a"), item(tmp_path, "blank_b")], "training")
    with caplog.at_level(logging.WARNING, logger="bundle.checks"):
        kept = checked_pairs([item(tmp_path, n) for n in ("blank_a", "lesion")], "training")
    assert len(kept) == 2 and f"mask {tmp_path / 'masks' / 'blank_a.png'} is empty" in caplog.text
    (tmp_path / "masks" / "lesion.png").unlink()
    with pytest.raises(DataError, match="1 listed file"):
        training_splits("", write_datalist(tmp_path, ["lesion"]))


def write_datalist(root: Path, training: list[str], validation: list[str] | None = None) -> Path:
    content = {"training": [{"image": f"images/{n}.jpg", "label": f"masks/{n}.png"} for n in training]}
    if validation is not None:
        content["validation"] = [{"image": f"images/{n}.jpg", "label": f"masks/{n}.png"} for n in validation]
    path = root / "datalist.json"
    path.write_text(json.dumps(content))
    return path


def test_without_validation_pairs_a_share_of_the_training_pairs_validates(tmp_path, caplog):
    write_folder(tmp_path, {f"p{i}": sample_pair(i) for i in range(3)})
    with caplog.at_level(logging.WARNING, logger="bundle.checks"):
        splits = training_splits(tmp_path)  # 3 pairs: the 80/10/10 split leaves no validation
    assert len(splits["training"]) == 2 and len(splits["validation"]) == 1
    assert "has no validation pairs: validating on 1 of its 3 training pairs" in caplog.text
    again = training_splits("", write_datalist(tmp_path, ["p0", "p1", "p2"], validation=[]))
    assert again == training_splits("", write_datalist(tmp_path, ["p0", "p1", "p2"]))
    with pytest.raises(DataError, match="has 1 training pair and no validation pairs"):
        training_splits("", write_datalist(tmp_path, ["p0"]))


# --- the command lines ---------------------------------------------------------------------------------------------


def bad_data_set(root: Path) -> Path:
    """A data set whose training split holds every kind of bad pair besides good ones; returns its datalist."""
    cases = bad_pairs()
    write_folder(root, {**cases, **{f"good_{i}": sample_pair(i) for i in range(6)}})
    return write_datalist(root, [*cases, "good_0", "good_1", "good_2", "good_3"], validation=["good_4", "good_5"])


@pytest.mark.slow
def test_training_refuses_bad_pairs_before_it_starts_or_leaves_them_out(tmp_path):
    datalist = bad_data_set(tmp_path / "data")
    proc = run_bundle(*TRAIN, "--datalist", str(datalist), "--bundle_root", str(tmp_path / "refused"))
    assert proc.returncode == 2
    line = _one_error_line(proc)
    assert line.startswith(f"ERROR 8 bad pair(s) in the training split of {datalist}: "), line  # names its datalist
    output = proc.stdout + proc.stderr
    for name, (*_, named, expected) in bad_pairs().items():
        assert f"{item(tmp_path / 'data', name)[named]}: " in output and expected in output, name
    assert not (tmp_path / "refused" / "models").exists()  # nothing started

    proc = run_bundle(*TRAIN, "--datalist", str(datalist), "--bundle_root", str(tmp_path / "skipped"),
                      "--skip_bad_pairs", "true")  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "Left out 8 bad pair(s) of the training split" in proc.stdout + proc.stderr
    assert (tmp_path / "skipped" / "models" / "model.pt").is_file()


@pytest.mark.slow
def test_three_pairs_train_and_write_a_model(tmp_path):
    data = write_folder(tmp_path / "data", {f"p{i}": sample_pair(i) for i in range(3)})
    proc = run_bundle(*TRAIN, "--dataset_dir", str(data), "--bundle_root", str(tmp_path / "root"))
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "has no validation pairs: validating on 1 of its 3 training pairs" in proc.stdout + proc.stderr
    assert (tmp_path / "root" / "models" / "model.pt").is_file()


@pytest.mark.slow
def test_evaluation_reports_what_it_scored_and_never_leaves_a_stale_report(tmp_path):
    from .small_bundle import write_small_checkpoint

    root = tmp_path / "root"
    checkpoint = write_small_checkpoint(root / "models" / "model.pt")
    data = write_folder(tmp_path / "data", {f"p{i}": sample_pair(i) for i in range(3)})
    datalist = data / "list.json"
    pairs = [{"image": f"images/p{i}.jpg", "label": f"masks/p{i}.png"} for i in range(3)]
    datalist.write_text(json.dumps({"training": pairs, "test": pairs[:2], "empty": []}))
    evaluate = ("run", "--config_file", "['configs/train.json','configs/evaluate.json']", "--bundle_root", str(root),
                "--datalist", str(datalist), "--num_workers", "0")  # fmt: skip
    stale = root / "eval" / "overlays" / "old_photo_overlay.png"
    stale.parent.mkdir(parents=True)
    stale.write_bytes(b"an overlay of another run")

    proc = run_bundle(*evaluate)
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads((root / "eval" / "metrics.json").read_text())
    scored = report["scored"]
    assert scored["checkpoint"] == str(checkpoint) and scored["data"] == str(datalist) and scored["split"] == "test"
    assert scored["images"] == 2 and len(scored["checkpoint_sha256"]) == 64 and scored["finished"]
    assert (root / "eval" / "metrics.md").read_text().startswith(f"Scored: checkpoint {checkpoint}, data {datalist}")
    assert sorted(p.name for p in stale.parent.iterdir()) == ["p0_overlay.png", "p1_overlay.png"]

    previous = {p: p.read_bytes() for p in (root / "eval").rglob("*") if p.is_file()}
    proc = run_bundle(*evaluate, "--eval_key", "empty")
    assert proc.returncode == 2
    assert _one_error_line(proc) == f"ERROR the empty split of {datalist} holds no image/mask pairs."
    # refused before it started: the previous report, which names what it scored, is kept as it was
    assert {p: p.read_bytes() for p in (root / "eval").rglob("*") if p.is_file()} == previous


def test_a_validation_set_emptied_by_the_caller_is_refused_in_one_line(tmp_path):
    """MONAI Label replaces validate#dataset#data itself; with too few labels its split leaves it empty."""
    proc = run_bundle(*TRAIN, "--dataset_dir", str(REPO / "sample_data"), "--bundle_root", str(tmp_path),
                      "--validate#dataset#data", "[]")  # fmt: skip
    assert proc.returncode == 2
    assert _one_error_line(proc).startswith("ERROR no validation pairs: nothing would choose models/model.pt")
    assert not (tmp_path / "models").exists()


# --- one checker for every path ------------------------------------------------------------------------------------


def test_prepare_data_training_and_evaluation_accept_and_refuse_the_same_pairs(tmp_path, caplog):
    """One corpus of good and bad pairs (every kind above, and 3D Slicer labelmaps) fed to the three paths."""
    import nibabel as nib
    from monai.bundle import ConfigParser

    from scripts.prepare_data import prepare_data

    root = write_folder(tmp_path / "data", {**bad_pairs(), **{f"good_{i}": sample_pair(i) for i in range(4)}})
    for name, index, transposed in (("slicer_good", 4, False), ("slicer_transposed", 5, True)):
        photo, mask = sample_pair(index)
        (root / "images" / f"{name}.jpg").write_bytes(photo)
        voxels = np.asarray(Image.open(io.BytesIO(mask))) > 0  # (H, W); Slicer stores (W, H, 1)
        voxels = (voxels if transposed else voxels.T)[..., None].astype(np.uint8)
        nib.save(nib.Nifti1Image(voxels, np.diag([-1.0, -1.0, 1.0, 1.0])), root / "masks" / f"{name}.nii.gz")
    corpus = [item(root, path.stem) for path in sorted((root / "images").iterdir())]
    for entry in corpus:
        if not Path(entry["label"]).is_file():
            entry["label"] = entry["label"].replace(".png", ".nii.gz")

    def verdicts(kept: list[dict], logged: str) -> tuple[set[str], set[str]]:
        refused = {Path(entry["image"]).stem for entry in corpus if Path(entry["image"]).stem in logged}
        return {Path(entry["image"]).stem for entry in kept}, refused

    summary = prepare_data(str(root), out=str(tmp_path / "prepared"))
    prepared = [entry for key in SPLIT_KEYS for entry in load_datalist(tmp_path / "prepared", key=key)]
    by_prepare_data = verdicts(prepared, "\n".join(summary["problems"]))

    def parsed(files: list[str], overrides: dict) -> ConfigParser:
        parser = ConfigParser()
        parser.read_config(files)
        parser.update({"bundle_root": str(tmp_path / "root"), "skip_bad_pairs": True, "cache_rate": 0.0,
                       "num_workers": 0, "image_size": 64, **overrides})  # fmt: skip
        return parser

    caplog.clear()
    with caplog.at_level(logging.ERROR, logger="bundle.checks"):
        dataset = parsed([str(REPO / "configs" / "train.json")], {"train#dataset#data": corpus}).get_parsed_content(
            "train#dataset"
        )
    by_training = verdicts(list(dataset.data), caplog.text)

    datalist = tmp_path / "corpus.json"
    datalist.write_text(json.dumps({"test": corpus}))
    caplog.clear()
    with caplog.at_level(logging.ERROR, logger="bundle.checks"):
        evaluated = parsed([str(REPO / "configs" / "train.json"), str(REPO / "configs" / "evaluate.json")],
                           {"datalist": str(datalist)}).get_parsed_content("validate#items")  # fmt: skip
    by_evaluation = verdicts(evaluated, caplog.text)

    assert by_prepare_data == by_training == by_evaluation
    kept, refused = by_training
    assert kept == {"good_0", "good_1", "good_2", "good_3", "slicer_good"}
    assert refused == set(bad_pairs()) | {"slicer_transposed"}
