"""Inference through configs/inference.json: geometry, formats, unusual and broken files, real photographs."""

from __future__ import annotations

import io
from pathlib import Path

import nibabel as nib
import nrrd
import numpy as np
import pytest
from monai.transforms import LoadImaged
from PIL import Image

from bundle.cli import run_inference
from bundle.data import inference_inputs
from bundle.errors import BadInputError, CheckpointError, ConfigError, DataError
from bundle.images import read_photo
from bundle.inference import LesionSegmenter
from bundle.transforms import LesionMaskd, LoadMaskd, write_mask

from .conftest import REPO, run_bundle

INFER = ("run", "--config_file", "configs/inference.json")
RED = (220, 30, 30)
SKIN = (200, 170, 150)


def asymmetric_photo(width: int = 96, height: int = 64) -> np.ndarray:
    """(H, W, 3) skin photo with a red block in the top-left corner, wider than tall: any transpose shows."""
    photo = np.zeros((height, width, 3), np.uint8)
    photo[:] = SKIN
    photo[: height // 4, : width // 3] = RED
    return photo


def expected_mask(photo: np.ndarray) -> np.ndarray:
    return (photo[..., 0].astype(int) - photo[..., 1] > 100).astype(np.uint8) * 255


def assert_same_mask(written: np.ndarray, expected: np.ndarray) -> None:
    """Equal up to the block edges, which resizing to the working size and back may move by a pixel."""
    assert written.shape == expected.shape
    assert set(np.unique(written)) <= {0, 255}
    differing = np.count_nonzero(written != expected)
    edge = np.count_nonzero(expected) ** 0.5 * 4  # about one pixel along the block's outline
    assert 0 < np.count_nonzero(expected) and differing <= edge, (differing, edge)


def red_overrides(output_dir: Path) -> dict:
    """A network that calls red pixels lesion, no checkpoint, a small working size."""
    return {
        "network_def": {"_target_": "tests.nets.RedIsLesion"},
        "ckpt_path": "",
        "output_dir": str(output_dir),
        "image_size": 64,
    }


@pytest.fixture()
def red_segmenter(tmp_path):
    return LesionSegmenter(bundle_root=REPO, overrides=red_overrides(tmp_path / "out"))


def test_mask_keeps_orientation_and_size(tmp_path, red_segmenter):
    photo = asymmetric_photo()
    Image.fromarray(photo).save(tmp_path / "asym.png")
    result = red_segmenter.segment(tmp_path / "asym.png")
    assert tuple(result["pred"].shape) == (96, 64)  # (W, H), MONAI's index order
    written = np.asarray(Image.open(result["pred_path"]))
    assert written.shape == (64, 96)
    assert_same_mask(written, expected_mask(photo))


def test_exif_rotated_photo_is_segmented_as_displayed(tmp_path, red_segmenter):
    photo = asymmetric_photo()
    exif = Image.Exif()
    exif[0x0112] = 6  # displayed rotated 90° clockwise
    Image.fromarray(photo).save(tmp_path / "rotated.jpg", quality=95, exif=exif)
    displayed = np.asarray(read_photo(tmp_path / "rotated.jpg"))
    assert displayed.shape == (96, 64, 3)
    written = np.asarray(Image.open(red_segmenter.segment(tmp_path / "rotated.jpg")["pred_path"]))
    assert written.shape == displayed.shape[:2]
    assert_same_mask(written, np.rot90(expected_mask(photo), k=-1))


@pytest.mark.parametrize("ext", [".nrrd", ".nii.gz"])
def test_volume_outputs_are_slicer_labelmaps(tmp_path, ext):
    mask_wh = np.zeros((30, 20), np.uint8)
    mask_wh[:10, :5] = 1
    path = write_mask(mask_wh, tmp_path / f"m{ext}")
    if ext == ".nrrd":
        data, header = nrrd.read(str(path))
        assert header["space"] == "left-posterior-superior"
    else:
        data = np.asarray(nib.load(str(path)).dataobj)
    assert data.shape == (30, 20, 1)
    np.testing.assert_array_equal(data[..., 0], mask_wh)


@pytest.mark.parametrize("ext", [".png", ".nii.gz", ".nrrd"])
def test_label_files_read_back_as_the_same_binary_mask(tmp_path, ext):
    """A PNG mask and a Slicer labelmap (W, H, 1) of the same lesion give the same (1, W, H) label."""
    mask_wh = np.zeros((40, 24), np.uint8)
    mask_wh[5:15, 2:20] = 1
    path = write_mask(mask_wh, tmp_path / f"label{ext}")
    loaded = LoadMaskd("label")({"label": str(path)})["label"]  # training's label reader
    assert tuple(loaded.shape) == (1, 40, 24)
    np.testing.assert_array_equal(loaded[0].numpy(), mask_wh)


def test_noisy_jpeg_mask_is_thresholded(tmp_path):
    mask_hw = np.zeros((32, 48), np.uint8)
    mask_hw[8:24, 10:30] = 255
    Image.fromarray(mask_hw).save(tmp_path / "mask.jpg", quality=60)
    loaded = LoadMaskd("label")({"label": str(tmp_path / "mask.jpg")})["label"]
    assert set(np.unique(loaded.numpy())) <= {0.0, 1.0}
    assert abs(loaded.sum().item() - 16 * 20) <= 16


def unusual_and_broken_folder(folder: Path) -> tuple[dict[str, tuple[int, int]], list[str]]:
    """Write readable photos in unusual modes and broken files; return {name: displayed (W, H)} and broken names."""
    folder.mkdir(parents=True, exist_ok=True)
    photo = asymmetric_photo()
    rgb = Image.fromarray(photo)
    rgb.save(folder / "plain.jpg", quality=90)
    rgba = rgb.convert("RGBA")
    rgba.putalpha(200)
    rgba.save(folder / "rgba.png")
    rgb.convert("L").save(folder / "grey.png")
    rgb.convert("P", palette=Image.Palette.ADAPTIVE, colors=16).save(folder / "palette.png")
    grey16 = (np.asarray(rgb.convert("L"), np.uint16) * 257).astype(np.uint16)
    Image.fromarray(grey16).save(folder / "grey16.png")
    assert Image.open(folder / "grey16.png").mode.startswith("I")
    rgb.convert("CMYK").save(folder / "cmyk.jpg", quality=90)
    exif = Image.Exif()
    exif[0x0112] = 8
    rgb.save(folder / "exif_rotated.jpg", exif=exif)
    Image.fromarray(photo[:3, :5]).save(folder / "tiny.png")
    rgb.save(folder / "bitmap.bmp")
    readable = {
        "plain": (96, 64),
        "rgba": (96, 64),
        "grey": (96, 64),
        "palette": (96, 64),
        "grey16": (96, 64),
        "cmyk": (96, 64),
        "exif_rotated": (64, 96),
        "tiny": (5, 3),
        "bitmap": (96, 64),
    }
    (folder / "empty.jpg").write_bytes(b"")
    buffer = io.BytesIO()
    rgb.save(buffer, format="JPEG", quality=90)
    (folder / "truncated.jpg").write_bytes(buffer.getvalue()[: len(buffer.getvalue()) // 3])
    (folder / "notes.png").write_text("this is not an image\n")
    return readable, ["empty.jpg", "truncated.jpg", "notes.png"]


def test_unusual_photos_are_readable_as_displayed(tmp_path):
    readable, broken = unusual_and_broken_folder(tmp_path / "in")
    for name, size in readable.items():
        path = next((tmp_path / "in").glob(f"{name}.*"))
        photo = read_photo(path)
        assert photo.mode == "RGB" and photo.size == size, name
    grey16 = np.asarray(read_photo(tmp_path / "in" / "grey16.png"))
    grey8 = np.asarray(read_photo(tmp_path / "in" / "grey.png"))
    assert np.abs(grey16.astype(int) - grey8).max() <= 1  # scaled by bit depth, not clipped to white


@pytest.mark.slow
def test_bundle_inference_on_a_mixed_folder(tmp_path):
    """The bundle runner: a mask per readable photo, one line per broken file, no traceback, non-zero exit."""
    readable, broken = unusual_and_broken_folder(tmp_path / "in")
    out = tmp_path / "out"
    random_resnet34 = ("--backbone", "resnet34", "--image_size", "64", "--ckpt_path", str(tmp_path / "none.pt"))
    proc = run_bundle(*INFER, "--dataset_dir", str(tmp_path / "in"), "--output_dir", str(out), *random_resnet34)
    assert proc.returncode != 0, proc.stdout + proc.stderr
    assert "Traceback" not in proc.stderr + proc.stdout
    assert "RANDOM weights" in proc.stderr + proc.stdout
    error_lines = [line for line in proc.stderr.splitlines() if line.startswith("ERROR ")]
    assert len(error_lines) == len(broken), proc.stderr
    for name in broken:
        assert sum(name in line for line in error_lines) == 1, (name, error_lines)
    for name, size in readable.items():
        mask = Image.open(out / f"{name}_mask.png")
        assert mask.size == size, name
        assert set(np.unique(np.asarray(mask))) <= {0, 255}
    assert sorted(p.name for p in out.iterdir()) == sorted(f"{n}_mask.png" for n in readable)  # no partial files


@pytest.mark.slow
def test_bundle_inference_on_real_photographs(tmp_path, isic_val):
    """Real ISIC 2017 photographs, the 4288x2848 original included: masks of exactly their sizes, 0/255."""
    folder = tmp_path / "photos"
    folder.mkdir()
    sources = sorted((isic_val / "images").glob("*.jpg"))[:2] + [isic_val / "full_resolution" / "ISIC_0012288.jpg"]
    for source in sources:
        (folder / source.name).symlink_to(source)
    out = tmp_path / "out"
    random_resnet34 = ("--backbone", "resnet34", "--ckpt_path", str(tmp_path / "none.pt"))
    options = ("--output_ext", ".png", "--save_probabilities", "true")
    proc = run_bundle(*INFER, "--dataset_dir", str(folder), "--output_dir", str(out), *random_resnet34, *options)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    for source in sources:
        with Image.open(source) as photo:
            size = photo.size
        mask = Image.open(out / f"{source.stem}_mask.png")
        assert mask.size == size
        assert set(np.unique(np.asarray(mask))) <= {0, 255}
        assert Image.open(out / f"{source.stem}_prob.png").size == size
    assert size == (4288, 2848)


@pytest.mark.parametrize(
    "typed, expected", [("false", False), ("False", False), ("0", False), ("true", True), (True, True), (False, False)]
)
def test_yes_no_overrides_as_typed_on_the_command_line(typed, expected):
    from bundle.config import flag

    assert flag(typed) is expected


def test_yes_no_override_rejects_other_words():
    from bundle.config import flag

    with pytest.raises(ValueError, match="resume: 'maybe' is not a yes/no value"):
        flag("maybe", "resume")


def test_save_probabilities_false_as_typed_writes_no_probability_map(tmp_path):
    photo = asymmetric_photo()
    Image.fromarray(photo).save(tmp_path / "asym.png")
    overrides = {"network_def": {"_target_": "tests.nets.RedIsLesion"}, "ckpt_path": "", "image_size": 64}
    for typed, expect_prob in (("false", False), ("true", True)):
        out = tmp_path / typed
        segmenter = LesionSegmenter(
            bundle_root=REPO, overrides={**overrides, "output_dir": str(out), "save_probabilities": typed}
        )
        segmenter.segment(tmp_path / "asym.png")
        assert (out / "asym_prob.png").exists() is expect_prob


def test_metaimage_labelmap_from_slicer_is_read_by_itk(tmp_path):
    """Slicer can also save a labelmap as MetaImage (.mha); MONAI reads it with ITK as (W, H, 1), and training's
    reader gives the label MONAI's reader and ``LesionMaskd`` give."""
    import itk

    mask_wh = np.zeros((40, 24), np.uint8)
    mask_wh[5:15, 2:20] = 1
    itk.imwrite(itk.image_from_array(np.ascontiguousarray(mask_wh.T[None])), str(tmp_path / "label.mha"))
    loader = LoadImaged("label", image_only=True)
    raw = loader({"label": str(tmp_path / "label.mha")})["label"]
    assert tuple(raw.shape) == (40, 24, 1)
    loaded = LesionMaskd("label")({"label": raw})["label"]
    np.testing.assert_array_equal(loaded[0].numpy(), mask_wh)
    trained_on = LoadMaskd("label")({"label": str(tmp_path / "label.mha")})["label"]
    np.testing.assert_array_equal(trained_on.numpy(), loaded.numpy())


def test_segment_array_runs_the_same_pipeline_as_files(tmp_path, red_segmenter):
    """Slicer/MONAI Label arrays in numpy order: same mask as the file, (H, W) out, nothing written."""
    photo = asymmetric_photo()
    Image.fromarray(photo).save(tmp_path / "asym.png")
    from_file = red_segmenter.segment(tmp_path / "asym.png")
    from_array = red_segmenter.segment_array(photo)
    assert from_array["pred"].shape == (64, 96) and from_array["pred"].dtype == np.uint8
    assert from_array["prob"].shape == (64, 96) and from_array["prob"].dtype == np.float32
    np.testing.assert_array_equal(from_array["pred"], np.asarray(from_file["pred"]).T)
    assert_same_mask(from_array["pred"] * 255, expected_mask(photo))
    assert 0.0 <= from_array["prob"].min() and from_array["prob"].max() <= 1.0
    np.testing.assert_array_equal(from_array["pred"], from_array["prob"] > 0.5)
    rgba = np.dstack([photo, np.full(photo.shape[:2], 255, np.uint8)])
    np.testing.assert_array_equal(red_segmenter.segment_array(rgba)["pred"], from_array["pred"])
    assert red_segmenter.segment_array(photo[..., 1])["pred"].shape == (64, 96)
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["asym_mask.png"]


def test_library_raises_on_bad_input_and_prints_nothing(tmp_path, capfd):
    """In-process, as a Slicer worker or a MONAI Label server calls it: exceptions only, no exit, no output."""
    readable, broken = unusual_and_broken_folder(tmp_path / "in")
    segmenter = LesionSegmenter(bundle_root=REPO, overrides=red_overrides(tmp_path / "out"))
    for name in [*broken, "absent.jpg"]:
        with pytest.raises(BadInputError) as caught:
            segmenter.segment(tmp_path / "in" / name)
        assert caught.value.path == str(tmp_path / "in" / name)
    with pytest.raises(BadInputError, match="uint8"):
        segmenter.segment_array(np.zeros((8, 8, 3), np.float32))
    with pytest.raises(BadInputError, match=r"\(H, W, 3\)"):
        segmenter.segment_array(np.zeros((8, 8, 2), np.uint8))
    results, failures = segmenter.run(sorted((tmp_path / "in").iterdir()))
    assert len(results) == len(readable)
    assert sorted(Path(source).name for source, _ in failures) == sorted(broken)
    with pytest.raises(DataError, match="no input images"):
        run_inference(segmenter.runner, [])
    with pytest.raises(DataError, match="does not exist"):
        inference_inputs(tmp_path / "nowhere")
    with pytest.raises(ConfigError, match="output_ext: '.xyz' is not one of"):
        LesionSegmenter(bundle_root=REPO, overrides={**red_overrides(tmp_path / "out"), "output_ext": ".xyz"})
    (tmp_path / "garbage.pt").write_bytes(b"garbage" * 100)
    with pytest.raises(CheckpointError, match="garbage.pt: not a PyTorch checkpoint"):
        LesionSegmenter(
            bundle_root=REPO, overrides={**red_overrides(tmp_path / "out"), "ckpt_path": str(tmp_path / "garbage.pt")}
        )
    out, err = capfd.readouterr()
    assert out == "" and err == ""
