"""The Slicer module's pure-Python library, outside Slicer: array layouts, clicks, regions, measurements, result
files (read back with slicerio), bundle zips, and the worker message format."""

from __future__ import annotations

import json
import math
import socket
import stat
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
MODULE_DIR = REPO / "slicer_extension" / "SkinLesionSegmentation"
sys.path.insert(0, str(MODULE_DIR))

from SkinLesionSegmentationLib import bundles, imaging, measurements, protocol, results, slicer_python  # noqa: E402

# Slicer's IJK-to-RAS matrix of a photo loaded from PNG/JPEG: LPS identity axes, so RAS = diag(-1, -1, 1).
PHOTO_IJK_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])
PHOTO_RAS_TO_IJK = np.linalg.inv(PHOTO_IJK_TO_RAS)


def asymmetric_photo(rows=60, cols=80) -> np.ndarray:
    """Distinct colours in each corner, so any flip or transpose shows."""
    photo = np.full((rows, cols, 3), 200, dtype=np.uint8)
    photo[:10, :10] = (255, 0, 0)
    photo[:10, -10:] = (0, 255, 0)
    photo[-10:, :10] = (0, 0, 255)
    photo[-10:, -10:] = (20, 20, 20)
    return photo


# -- array layouts --------------------------------------------------------------------------------------------------


def test_itk_read_photo_in_slicer_layout_reaches_the_bundle_unflipped(tmp_path):
    import itk

    photo = asymmetric_photo()
    Image.fromarray(photo).save(tmp_path / "photo.png")
    itk_array = itk.array_from_image(itk.imread(str(tmp_path / "photo.png")))
    assert itk_array.shape == (60, 80, 3)
    slicer_array = itk_array[None]  # what slicer.util.arrayFromVolume gives for the vector volume
    np.testing.assert_array_equal(imaging.photo_from_volume_array(slicer_array), photo)
    mask = (photo[..., 0] == 255).astype(np.uint8)
    assert imaging.mask_to_volume_array(mask).shape == (1, 60, 80)
    np.testing.assert_array_equal(imaging.mask_to_volume_array(mask)[0, :10, :10], 1)


def test_rgba_grey_and_16_bit_volumes_become_rgb():
    photo = asymmetric_photo()
    rgba = np.concatenate([photo, np.full(photo.shape[:2] + (1,), 7, np.uint8)], axis=-1)
    np.testing.assert_array_equal(imaging.photo_from_volume_array(rgba[None]), photo)
    grey = photo[..., 1]
    out = imaging.photo_from_volume_array(grey[None])
    assert out.shape == (60, 80, 3) and (out == grey[..., None]).all()
    wide = (grey.astype(np.uint16) * 257)[None]
    np.testing.assert_array_equal(imaging.photo_from_volume_array(wide)[..., 0], grey)
    np.testing.assert_array_equal(imaging.photo_from_volume_array(photo / 255.0), photo)
    with pytest.raises(imaging.ImageLayoutError, match="shape"):
        imaging.photo_from_volume_array(np.zeros((2, 5, 5, 3)))


def test_threshold_at_one_half_is_the_argmax_of_two_classes():
    prob = np.array([[0.2, 0.5, 0.51, 0.9]], dtype=np.float32)
    np.testing.assert_array_equal(imaging.threshold_probability(prob), [[0, 0, 1, 1]])
    np.testing.assert_array_equal(imaging.threshold_probability(prob, 0.1), [[1, 1, 1, 1]])
    with pytest.raises(ValueError, match="outside"):
        imaging.threshold_probability(prob, 1.5)


def three_blobs() -> np.ndarray:
    mask = np.zeros((50, 50), np.uint8)
    mask[5:15, 5:15] = 1  # A
    mask[30:40, 5:15] = 1  # B
    mask[20:30, 30:45] = 1  # C
    mask[29, 44] = mask[30, 45] = 1  # a diagonal touch: still C (8-connected)
    return mask


def test_foreground_click_keeps_only_the_regions_under_it():
    mask, notes = imaging.apply_clicks(three_blobs(), foreground=[(10, 10)])
    expected = np.zeros_like(mask)
    expected[5:15, 5:15] = 1
    np.testing.assert_array_equal(mask, expected)
    assert notes == []


def test_background_click_removes_the_region_under_it_and_8_connected_parts():
    mask, _ = imaging.apply_clicks(three_blobs(), background=[(25, 35)])
    assert mask[20:31, 30:46].sum() == 0 and mask[5:15, 5:15].all() and mask[30:40, 5:15].all()


def test_foreground_wins_over_background_and_misses_are_reported():
    mask, notes = imaging.apply_clicks(
        three_blobs(), foreground=[(10, 10), (0, 49)], background=[(12, 12), (35, 10), (99, 0)]
    )
    assert mask[5:15, 5:15].all() and mask.sum() == 100
    assert notes == [
        "foreground point (0, 49) is not on the lesion mask",
        "background point (99, 0) is outside the photo",
    ]


def test_markup_positions_map_to_rows_and_columns():
    # A point at column 10, row 20 of a photo sits at RAS (-10, -20, 0) in Slicer.
    assert imaging.pixels_from_ras([(-10.0, -20.0, 0.0)], PHOTO_RAS_TO_IJK) == [(20.0, 10.0)]
    box = imaging.box_from_ras_bounds((-30.0, -10.0, -25.0, -5.0, -1.0, 1.0), PHOTO_RAS_TO_IJK, (60, 80))
    assert (box.row0, box.row1, box.col0, box.col1) == (5, 26, 10, 31)
    clipped = imaging.box_from_ras_bounds((-200.0, 5.0, -10.0, 3.0, -1.0, 1.0), PHOTO_RAS_TO_IJK, (60, 80))
    assert (clipped.row0, clipped.row1, clipped.col0, clipped.col1) == (0, 11, 0, 80)
    with pytest.raises(ValueError, match="does not overlap"):
        imaging.box_from_ras_bounds((100.0, 120.0, 100.0, 120.0, 0, 0), PHOTO_RAS_TO_IJK, (60, 80))


def test_refine_in_region_pastes_the_crop_result_where_it_came_from():
    rng = np.random.default_rng(0)
    photo = rng.integers(0, 256, (60, 80, 3), dtype=np.uint8)
    previous = np.full((60, 80), 0.25, np.float32)
    box = imaging.PixelBox(10, 30, 40, 70)
    seen = []

    def red_share(crop):  # a per-pixel function, so any misplaced paste shows
        seen.append(crop.shape)
        return crop[..., 0] / 255.0

    refined = imaging.refine_in_region(photo, previous, box, red_share, context=0.1)
    assert seen == [(24, 36, 3)]  # 20x30 box grown by 2 rows and 3 columns each side
    np.testing.assert_allclose(refined[box.slices], photo[box.slices][..., 0] / 255.0, rtol=1e-6)
    outside = np.ones((60, 80), bool)
    outside[box.slices] = False
    assert (refined[outside] == 0.25).all() and (previous == 0.25).all()


# -- measurements ---------------------------------------------------------------------------------------------------


def grid(rows=240, cols=260):
    return np.mgrid[:rows, :cols].astype(np.float64)


def test_disc_measurements():
    yy, xx = grid()
    r = 60
    disc = (yy - 120) ** 2 + (xx - 130) ** 2 <= r**2
    m = measurements.measure(disc, pixel_size_mm=0.05)
    assert m["area_px"] == pytest.approx(math.pi * r**2, rel=0.01)
    assert m["area_mm2"] == pytest.approx(m["area_px"] * 0.0025)
    assert m["perimeter_px"] == pytest.approx(2 * math.pi * r, rel=0.01)
    assert m["longest_diameter_px"] == pytest.approx(2 * r, abs=1.0)
    assert m["equivalent_diameter_px"] == pytest.approx(2 * r, abs=0.5)
    assert m["equivalent_diameter_mm"] == pytest.approx(m["equivalent_diameter_px"] * 0.05)
    assert m["compactness"] == pytest.approx(1.0, abs=0.02)
    assert m["asymmetry_major_axis"] < 0.01 and m["asymmetry_minor_axis"] < 0.01


def test_rectangle_measurements():
    mask = np.zeros((240, 260), bool)
    mask[40:120, 50:200] = True  # 80 x 150
    m = measurements.measure(mask, pixel_size_mm=0.1)
    assert m["area_px"] == 12000
    assert m["perimeter_px"] == pytest.approx(2 * (80 + 150), rel=0.01)
    assert m["perimeter_mm"] == pytest.approx(m["perimeter_px"] * 0.1)
    assert m["longest_diameter_px"] == pytest.approx(math.hypot(80, 150), rel=0.01)
    assert m["compactness"] == pytest.approx(4 * math.pi * 12000 / 460**2, rel=0.02)
    assert m["asymmetry_major_axis"] == 0 and m["asymmetry_minor_axis"] == 0
    assert m["area_mm2"] == pytest.approx(120.0)


def test_rotated_ellipse_measurements():
    yy, xx = grid()
    a, b, angle = 90.0, 40.0, math.radians(30)
    u = (xx - 130) * math.cos(angle) + (yy - 120) * math.sin(angle)
    v = -(xx - 130) * math.sin(angle) + (yy - 120) * math.cos(angle)
    ellipse = (u / a) ** 2 + (v / b) ** 2 <= 1
    h = ((a - b) / (a + b)) ** 2
    ramanujan = math.pi * (a + b) * (1 + 3 * h / (10 + math.sqrt(4 - 3 * h)))
    m = measurements.measure(ellipse)
    assert m["area_mm2"] is None and m["perimeter_mm"] is None
    assert m["area_px"] == pytest.approx(math.pi * a * b, rel=0.01)
    assert m["perimeter_px"] == pytest.approx(ramanujan, rel=0.01)
    assert m["longest_diameter_px"] == pytest.approx(2 * a, abs=1.5)
    assert m["compactness"] == pytest.approx(4 * math.pi * math.pi * a * b / ramanujan**2, rel=0.02)
    _, axes = measurements.principal_axes(ellipse)
    assert abs(axes[0] @ np.array([math.sin(angle), math.cos(angle)])) == pytest.approx(1.0, abs=1e-3)
    assert m["asymmetry_major_axis"] < 0.02 and m["asymmetry_minor_axis"] < 0.02


def test_half_disc_asymmetry_matches_the_continuous_shape():
    r = 80.0
    yy, xx = grid()
    half = ((yy - 120) ** 2 + (xx - 130) ** 2 <= r**2) & (xx <= 130)
    m = measurements.measure(half)
    # Reference on a fine continuous grid: mirror the half disc about the line parallel to its flat side through
    # its centroid (4r/3π from that side) and measure the share of area left uncovered.
    s = np.linspace(-r, r, 2001)
    x, y = np.meshgrid(s, s)
    inside = (x**2 + y**2 <= r**2) & (x <= 0)
    mirror_x = 2 * (-4 * r / (3 * math.pi)) - x
    mirrored_inside = (mirror_x**2 + y**2 <= r**2) & (mirror_x <= 0)
    expected = 1 - (inside & mirrored_inside).sum() / inside.sum()
    assert m["asymmetry_major_axis"] == pytest.approx(expected, abs=0.01)
    assert m["asymmetry_minor_axis"] < 0.01  # the half disc is symmetric about its minor axis


def test_empty_mask_and_bad_pixel_size():
    m = measurements.measure(np.zeros((20, 20)))
    assert m["area_px"] == 0 and m["perimeter_px"] == 0 and m["compactness"] == 0
    with pytest.raises(ValueError, match="positive"):
        measurements.measure(np.ones((4, 4)), pixel_size_mm=0)


# -- result files ---------------------------------------------------------------------------------------------------


def test_mask_png_and_seg_nrrd_read_back(tmp_path):
    import slicerio

    mask = np.zeros((60, 80), np.uint8)
    mask[5:20, 50:75] = 1
    png, seg = results.write_results(mask, tmp_path / "out", "photo", results.SKIN_LESION)
    assert (png.name, seg.name) == ("photo_mask.png", "photo.seg.nrrd")
    with Image.open(png) as image:
        assert image.mode == "L" and image.size == (80, 60)
        np.testing.assert_array_equal(np.asarray(image), mask * 255)
    segmentation = slicerio.read_segmentation(str(seg))
    np.testing.assert_array_equal(segmentation["voxels"][:, :, 0].T, mask)  # slicerio gives (i, j, k)
    np.testing.assert_array_equal(segmentation["ijkToLPS"], np.eye(4))
    (segment,) = segmentation["segments"]
    assert segment["name"] == "Skin lesion" and segment["labelValue"] == 1
    assert segment["color"] == pytest.approx(list(results.SKIN_LESION.color))
    assert segment["extent"] == [50, 74, 5, 19, 0, 0]
    assert segment["terminology"]["type"] == ["SCT", "95324001", "Skin lesion"]
    assert not list((tmp_path / "out").glob(".*"))  # no temporary files left


def test_segment_names_come_from_the_bundles_channel_def():
    metadata = bundles.read_metadata(REPO)
    assert results.segment_spec(bundles.output_channel_def(metadata)) == results.SKIN_LESION
    assert results.segment_spec({"0": "background", "1": "nevus"}).name == "Nevus"
    empty = np.zeros((5, 5))
    assert results.extent(empty) == (0, -1, 0, -1, 0, -1)


# -- bundles --------------------------------------------------------------------------------------------------------


def write_bundle_zip(path: Path, top: str = "mybundle") -> Path:
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr(f"{top}/configs/inference.json", "{}")
        archive.writestr(f"{top}/configs/metadata.json", '{"monai_version": "1.4.0"}')
        archive.writestr(f"{top}/bundle/__init__.py", "")
    return path


def test_bundle_zip_unpacks_once_into_the_cache(tmp_path):
    zip_path = write_bundle_zip(tmp_path / "mybundle.zip")
    root = bundles.resolve_bundle(zip_path, tmp_path / "cache")
    assert (root / "configs" / "inference.json").is_file() and root.parent.parent == tmp_path / "cache"
    marker = root / "marker"
    marker.write_text("kept")
    assert bundles.resolve_bundle(zip_path, tmp_path / "cache") == root and marker.exists()
    assert bundles.read_metadata(root) == {"monai_version": "1.4.0"}
    assert [p.name for p in (tmp_path / "cache").iterdir()] == [root.parent.name]


@pytest.mark.parametrize(
    "member, reason",
    [
        ("/etc/evil.py", "absolute path"),
        ("mybundle/../../evil.py", "'..'"),
        ("C:/evil.py", "absolute path"),
        ("mybundle\\..\\evil.py", "backslashes"),
        ("link", "symbolic link"),
    ],
)
def test_crafted_bundle_zip_is_refused_before_anything_is_written(tmp_path, member, reason):
    zip_path = write_bundle_zip(tmp_path / "crafted.zip")
    with zipfile.ZipFile(zip_path, "a") as archive:
        info = zipfile.ZipInfo(member)
        if reason == "symbolic link":
            info.external_attr = (stat.S_IFLNK | 0o777) << 16
            archive.writestr(info, "/etc/passwd")
        else:
            archive.writestr(info, "print('owned')")
    with pytest.raises(bundles.BundleChoiceError, match=reason) as caught:
        bundles.resolve_bundle(zip_path, tmp_path / "cache")
    assert str(zip_path) in str(caught.value)
    assert not (tmp_path / "cache").exists() or not any((tmp_path / "cache").iterdir())
    assert sorted(p.name for p in tmp_path.iterdir()) == ["crafted.zip"]


def test_not_a_bundle(tmp_path):
    with pytest.raises(bundles.BundleChoiceError, match="no such folder"):
        bundles.resolve_bundle(tmp_path / "missing", tmp_path / "cache")
    with pytest.raises(bundles.BundleChoiceError, match="not a bundle folder"):
        bundles.resolve_bundle(tmp_path, tmp_path / "cache")
    (tmp_path / "fake.zip").write_bytes(b"not a zip")
    with pytest.raises(bundles.BundleChoiceError, match="not a zip file"):
        bundles.resolve_bundle(tmp_path / "fake.zip", tmp_path / "cache")
    with zipfile.ZipFile(tmp_path / "empty.zip", "w") as archive:
        archive.writestr("readme.txt", "hello")
    with pytest.raises(bundles.BundleChoiceError, match="not a bundle zip"):
        bundles.resolve_bundle(tmp_path / "empty.zip", tmp_path / "cache")
    assert not any((tmp_path / "cache").iterdir())  # the failed unpack left nothing behind
    assert bundles.check_bundle_folder(REPO) == REPO


# -- bundles downloaded from a URL ---------------------------------------------------------------------------------


def test_downloaded_bundle_zip_is_checked_unpacked_and_reused(served_folder, tmp_path):
    import hashlib

    folder, base = served_folder
    zip_path = write_bundle_zip(folder / "mybundle_v1.zip")
    digest = hashlib.sha256(zip_path.read_bytes()).hexdigest()
    cache = tmp_path / "cache"
    root = bundles.fetch_bundle(f"{base}/mybundle_v1.zip", f"{digest}  mybundle_v1.zip", cache)  # a .sha256 line
    assert (root / "configs" / "inference.json").is_file()
    assert bundles.resolve_bundle(root, cache) == root  # a bundle folder like any other
    downloaded = cache / "downloads" / f"{digest[:12]}-mybundle_v1.zip"
    assert downloaded.read_bytes() == zip_path.read_bytes()
    zip_path.unlink()  # already downloaded with that digest: not fetched again
    assert bundles.fetch_bundle(f"{base}/mybundle_v1.zip", digest.upper(), cache) == root


def test_a_download_with_another_sha256_is_refused_in_one_line_and_not_kept(served_folder, tmp_path):
    import hashlib

    folder, base = served_folder
    zip_path = write_bundle_zip(folder / "mybundle_v1.zip")
    actual = hashlib.sha256(zip_path.read_bytes()).hexdigest()
    wrong = "0" * 64
    cache = tmp_path / "cache"
    with pytest.raises(bundles.BundleChoiceError) as refused:
        bundles.fetch_bundle(f"{base}/mybundle_v1.zip", wrong, cache)
    assert str(refused.value) == f"{base}/mybundle_v1.zip: refused, its SHA-256 is {actual}, expected {wrong}"
    assert not [p for p in cache.rglob("*") if p.is_file()]  # neither the file nor a partial one is kept
    with pytest.raises(bundles.BundleChoiceError, match=r"mybundle_v2.zip: download failed \(.*404"):
        bundles.fetch_bundle(f"{base}/mybundle_v2.zip", actual, cache)
    with pytest.raises(bundles.BundleChoiceError, match="not a SHA-256"):
        bundles.fetch_bundle(f"{base}/mybundle_v1.zip", "abc", cache)
    with pytest.raises(bundles.BundleChoiceError, match="not an http"):
        bundles.fetch_bundle(f"file://{zip_path}", actual, cache)


# -- messages -------------------------------------------------------------------------------------------------------


def test_messages_carry_arrays_exactly():
    left, right = socket.socketpair()
    with left, right:
        image = np.arange(2 * 3 * 3, dtype=np.uint8).reshape(2, 3, 3)
        prob = np.linspace(0, 1, 6, dtype=np.float32).reshape(2, 3)
        protocol.send_message(left, {"token": "t", "command": "segment"}, {"image": image, "prob": prob})
        header, arrays = protocol.receive_message(right)
        assert header["command"] == "segment" and header["token"] == "t"
        np.testing.assert_array_equal(arrays["image"], image)
        np.testing.assert_array_equal(arrays["prob"], prob)
        left.sendall(b"\x7f\xff\xff\xff")
        with pytest.raises(protocol.ProtocolError, match="exceeds"):
            protocol.receive_header(right)
        left.sendall(b"\x00\x00\x00\x02{]")
        with pytest.raises(protocol.ProtocolError, match="not JSON"):
            protocol.receive_header(right)
        with pytest.raises(protocol.ProtocolError, match="unsupported dtype"):
            protocol.receive_arrays(right, {"arrays": [{"name": "x", "dtype": "object", "shape": [1]}]})


# -- install plan for Slicer's Python --------------------------------------------------------------------------------

SLICER_RELEASES = json.loads((REPO / "tests" / "fixtures" / "slicer_releases.json").read_text())["releases"]
NOT_FOR_SLICER = {"pillow", "itk", "pytorch-ignite", "tensorboard", "nibabel", "pynrrd", "fire", "torch"}


def shipped(slicer_version: str) -> dict[str, str]:
    return dict(SLICER_RELEASES[slicer_version]["distributions"])


@pytest.mark.parametrize(
    "slicer_version, python, monai, torch",
    [
        ("5.4", "3.9.10", "1.5.2", ">=2.4.1"),
        ("5.8", "3.9.10", "1.5.2", ">=2.4.1"),
        ("5.12", "3.12.10", "1.6.1", ">=2.8.0"),
    ],
)
def test_install_plan_fits_slicers_python_and_installs_only_what_inference_needs(slicer_version, python, monai, torch):
    from packaging.specifiers import SpecifierSet

    assert SLICER_RELEASES[slicer_version]["python"] == python
    metadata = bundles.read_metadata(REPO)
    plan = slicer_python.install_plan(python, shipped(slicer_version), metadata)
    assert plan.requirements == [f"monai=={monai}"] and plan.torch == torch
    recorded = {r["version"]: r for r in slicer_python.read_releases()["monai"]}
    assert python in SpecifierSet(recorded[monai]["requires_python"])  # PyPI's Requires-Python accepts it
    names = {slicer_python.canonical_name(r.split("==")[0]) for r in plan.requirements}
    assert not names & NOT_FOR_SLICER  # Pillow, ITK, training-only packages: never installed into Slicer
    # Every package Slicer ships is pinned where it is: pip may add packages but never replace one of Slicer's.
    pinned = {f"{slicer_python.canonical_name(name)}=={version}" for name, version in shipped(slicer_version).items()}
    assert pinned <= set(plan.constraints)
    assert plan.pip_arguments("/tmp/c.txt") == ["--constraint", "/tmp/c.txt", f"monai=={monai}"]
    if monai != metadata["monai_version"]:
        assert plan.notes == [
            f"monai {monai} instead of {metadata['monai_version']} (the bundle's): the newest release for Python "
            f"{python} with the packages installed there"
        ]


def test_install_plan_respects_what_is_installed_and_says_why_nothing_fits():
    installed = shipped("5.12")
    # torch already there but older than MONAI 1.6 needs: the newest MONAI that works with it.
    assert slicer_python.install_plan("3.12.10", {**installed, "torch": "2.5.1"}).requirements == ["monai==1.5.2"]
    # MONAI already installed (a previous install): nothing to add, nothing replaced.
    assert slicer_python.install_plan((3, 12, 10), {**installed, "monai": "1.6.1"}).requirements == []
    with pytest.raises(slicer_python.InstallPlanError) as refused:
        slicer_python.install_plan("3.8.10", shipped("5.4"))
    message = str(refused.value)
    assert message.startswith("no monai release fits Python 3.8.10: monai 1.6.1 needs Python >=3.10;")
    assert "monai 1.4.0 needs Python >=3.9" in message and "\n" not in message
    with pytest.raises(slicer_python.InstallPlanError, match="needs numpy"):
        slicer_python.install_plan("3.12.10", {"numpy": "1.20.0"})
