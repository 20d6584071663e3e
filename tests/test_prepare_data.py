"""scripts/prepare_data.py on fake trees with the official naming, zip archives, a local HTTP server and real data."""

from __future__ import annotations

import hashlib
import json
import os
import socket
import subprocess
import sys
import threading
import zipfile
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from bundle.data import load_datalist
from scripts.downloads import DownloadError, download_file
from scripts.prepare_data import ISIC_FOLDERS, main, prepare_data

REPO = Path(__file__).resolve().parents[1]
SPLITS = ("training", "validation", "test")


# ------------------------------------------------------------------------------------------------ fake datasets


def write_photo(path: Path, size: tuple[int, int] = (16, 12)) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(int(hashlib.md5(path.name.encode()).hexdigest()[:8], 16))
    Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8), "RGB").save(path)
    return path


def write_mask(path: Path, size: tuple[int, int] = (16, 12), foreground: int = 255) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    mask = np.zeros((size[1], size[0]), dtype=np.uint8)
    mask[size[1] // 4 : 3 * size[1] // 4, size[0] // 4 : 3 * size[0] // 4] = foreground
    Image.fromarray(mask, "L").save(path)
    return path


def isic_tree(root: Path, layout: str, counts: dict[str, int]) -> None:
    """The official ISIC folders of ``layout`` with ``counts[split]`` pairs each, plus the files to ignore."""
    suffix = "_Segmentation" if layout == "isic2016" else "_segmentation"
    case = 0
    for split, count in counts.items():
        images, masks = ISIC_FOLDERS[layout][split]
        for _ in range(count):
            case += 1
            write_photo(root / images / f"ISIC_{case:07d}.jpg")
            write_mask(root / masks / f"ISIC_{case:07d}{suffix}.png")
            if layout == "isic2017":
                write_photo(root / images / f"ISIC_{case:07d}_superpixels.png")
        if layout == "isic2017":
            (root / images / f"{images}_metadata.csv").write_text("image_id,age_approximate,sex\n")
        if layout == "isic2018":
            (root / masks / "LICENSE.txt").write_text("licence")
            (root / masks / "ATTRIBUTION.txt").write_text("attribution")


def ph2_tree(root: Path, count: int) -> Path:
    cases = root / "PH2Dataset" / "PH2 Dataset images"
    for i in range(1, count + 1):
        name = f"IMD{i:03d}"
        write_photo(cases / name / f"{name}_Dermoscopic_Image" / f"{name}.bmp", (14, 10))
        write_mask(cases / name / f"{name}_lesion" / f"{name}_lesion.bmp", (14, 10))
        (cases / name / f"{name}_roi").mkdir()
    (root / "PH2Dataset" / "PH2_dataset.txt").write_text("clinical diagnosis table")
    return cases


def case_id(path: str) -> str:
    """ISIC_0000001 / IMD001 / name: the stem without the mask suffix."""
    stem = Path(path).stem
    for suffix in ("_segmentation", "_Segmentation", "_lesion", "_mask"):
        stem = stem.removesuffix(suffix)
    return stem


def check_datalist(
    out: Path, expected_counts: dict[str, int], datalist: str = "datalist.json", disjoint: tuple[str, ...] = SPLITS
) -> dict[str, list]:
    """Every path exists (load_datalist checks), image and label share the case id, the ``disjoint`` splits are."""
    splits = {key: load_datalist(out, datalist, key=key) for key in SPLITS}
    assert {key: len(items) for key, items in splits.items()} == expected_counts
    seen: set[str] = set()
    for key in disjoint:
        for item in splits[key]:
            assert case_id(item["image"]) == case_id(item["label"])
            assert item["image"] not in seen
            seen.add(item["image"])
    stored = json.loads((out / datalist).read_text())
    assert not any(os.path.isabs(item["image"]) for items in stored.values() for item in items)
    return splits


def run_process(*args: str, module: bool = False) -> subprocess.CompletedProcess:
    """The command line in a real process, as a user types it."""
    command = ["-m", "scripts.prepare_data"]  # as the README types it, from the repository's root
    return subprocess.run(
        [sys.executable, *command, *args], cwd=REPO, capture_output=True, text=True, timeout=120, check=False
    )


def run_cli(capsys, *args: str) -> tuple[int, str, str]:
    """The command line in this process (argument parsing and error reporting included): (status, stdout, stderr).

    Starting a process costs seconds here (importing ``bundle`` loads torch), so most tests use this.
    """
    capsys.readouterr()
    status = main(list(args))
    captured = capsys.readouterr()
    return status, captured.out, captured.err


# --------------------------------------------------------------------------------------------------- layouts


def test_isic2018_table2_scaled_and_ignored_files(tmp_path, capsys):
    isic_tree(tmp_path / "src", "isic2018", {"training": 8})
    summary = prepare_data(str(tmp_path / "src"), out=str(tmp_path / "out"))
    assert summary["layout"] == "isic2018" and summary["problems"] == []
    check_datalist(tmp_path / "out", {"training": 5, "validation": 1, "test": 2})
    assert "splits 2594 cases as 1815/259/520; found 8 pairs, so the proportions are scaled to 5/1/2" in (
        capsys.readouterr().out
    )


def test_isic2017_official_split_ignores_superpixels(tmp_path, capsys):
    isic_tree(tmp_path, "isic2017", {"training": 8, "validation": 3, "test": 4})
    summary = prepare_data(str(tmp_path), out=str(tmp_path))  # datalist written beside the data
    assert summary["problems"] == []
    splits = check_datalist(tmp_path, {"training": 8, "validation": 3, "test": 4})
    assert all("ISIC-2017_Validation_Data" in item["image"] for item in splits["validation"])
    assert "official training/validation/test split" in capsys.readouterr().out


def test_isic2017_training_only_uses_scaled_paper_counts(tmp_path, capsys):
    isic_tree(tmp_path, "isic2017", {"training": 8})
    prepare_data(str(tmp_path), seed=5)
    check_datalist(tmp_path, {"training": 5, "validation": 1, "test": 2})
    assert "splits 2150 cases as 1400/150/600" in capsys.readouterr().out


def test_isic2017_half_given_split_is_reported_and_the_rest_pooled(tmp_path, capsys):
    isic_tree(tmp_path, "isic2017", {"training": 6, "validation": 2})
    (tmp_path / "ISIC-2017_Validation_Part1_GroundTruth").rename(tmp_path / "elsewhere")
    summary = prepare_data(str(tmp_path), out=str(tmp_path / "out"))
    assert summary["problems"] == [
        "found ISIC-2017_Validation_Data but not ISIC-2017_Validation_Part1_GroundTruth: "
        "its validation split is left out"
    ]
    check_datalist(tmp_path / "out", {"training": 4, "validation": 0, "test": 2})
    assert "splits 2150 cases as 1400/150/600; found 6 pairs" in capsys.readouterr().out


def test_isic2016_official_test_and_validation_from_training(tmp_path):
    isic_tree(tmp_path / "src", "isic2016", {"training": 10, "test": 3})
    prepare_data(str(tmp_path / "src"), out=str(tmp_path / "out"))
    splits = check_datalist(tmp_path / "out", {"training": 9, "validation": 1, "test": 3})
    assert all("Test_Data" in item["image"] for item in splits["test"])


def test_ph2_layout(tmp_path):
    ph2_tree(tmp_path / "download", 8)
    prepare_data(str(tmp_path / "download"), out=str(tmp_path / "out"), layout="ph2")
    splits = check_datalist(tmp_path / "out", {"training": 6, "validation": 1, "test": 1})
    assert all(Path(item["image"]).suffix == ".bmp" for items in splits.values() for item in items)


def test_generic_layout_with_mask_suffix_in_cli_both_ways(tmp_path):
    for i in range(8):
        write_photo(tmp_path / "src" / "images" / f"photo_{i}.png")
        write_mask(tmp_path / "src" / "masks" / f"photo_{i}_mask.png")
    as_script = run_process(str(tmp_path / "src"), "--out", str(tmp_path / "a"))
    as_module = run_process(str(tmp_path / "src"), "--out", str(tmp_path / "b"), module=True)
    for result in (as_script, as_module):
        assert result.returncode == 0, result.stderr
        assert "layout generic: 8 pairs" in result.stdout
    check_datalist(tmp_path / "a", {"training": 6, "validation": 1, "test": 1})
    assert (tmp_path / "a" / "datalist.json").read_text() == (tmp_path / "b" / "datalist.json").read_text()


def test_ph2_five_folds_partition_200_cases(tmp_path):
    ph2_tree(tmp_path, 200)
    summary = prepare_data(str(tmp_path), out=str(tmp_path / "out"), folds=5, seed=1)
    check_datalist(tmp_path / "out", {"training": 140, "validation": 20, "test": 40})
    assert [p.name for p in summary["folds"]] == [f"datalist_fold{i}.json" for i in range(5)]
    held_out = []
    for i in range(5):
        counts = {"training": 140, "validation": 20, "test": 40}
        fold = check_datalist(tmp_path / "out", counts, f"datalist_fold{i}.json")  # all three splits disjoint
        held_out += [item["image"] for item in fold["test"]]
    assert len(held_out) == len(set(held_out)) == 200


def test_unpaired_and_unreadable_files_are_reported_and_left_out(tmp_path, capsys):
    src = tmp_path / "src"
    isic_tree(src, "isic2018", {"training": 8})
    images, masks = (src / name for name in ISIC_FOLDERS["isic2018"]["training"])
    write_photo(images / "ISIC_0000100.jpg")  # no mask
    write_mask(masks / "ISIC_0000101_segmentation.png")  # no image
    whole = write_photo(tmp_path / "big.jpg", (96, 64)).read_bytes()
    (images / "ISIC_0000102.jpg").write_bytes(whole[: len(whole) * 2 // 3])  # cut inside the compressed data
    write_mask(masks / "ISIC_0000102_segmentation.png")
    write_photo(images / "ISIC_0000103.jpg")
    (masks / "ISIC_0000103_segmentation.png").write_bytes(b"")  # empty
    (images / "ISIC_0000104.jpg").write_text("<html>not a picture</html>")
    write_mask(masks / "ISIC_0000104_segmentation.png")
    write_photo(images / "ISIC_0000105.jpg", (16, 12))
    write_mask(masks / "ISIC_0000105_segmentation.png", (12, 16))  # size differs

    status, _, stderr = run_cli(capsys, str(src), "--out", str(tmp_path / "out"))
    assert status == 0, stderr
    lines = [line for line in stderr.splitlines() if line.startswith("warning:")]
    expected = {
        "ISIC_0000100.jpg": "unpaired image",
        "ISIC_0000101_segmentation.png": "unpaired mask",
        "ISIC_0000102.jpg": "truncated",
        "ISIC_0000103_segmentation.png": "empty file",
        "ISIC_0000104.jpg": "not an image",
        "ISIC_0000105_segmentation.png": "mask is 12x16 but its photo",
    }
    assert len(lines) == len(expected)
    for name, reason in expected.items():
        assert [line for line in lines if name in line and reason in line.lower()], (name, reason, lines)
    splits = check_datalist(tmp_path / "out", {"training": 5, "validation": 1, "test": 2})
    assert {case_id(item["image"]) for items in splits.values() for item in items} == {
        f"ISIC_{i:07d}" for i in range(1, 9)
    }


@pytest.mark.parametrize(
    "args, message",
    [
        (["{tmp}/absent", "--out", "{tmp}/out"], "error: source {tmp}/absent does not exist."),
        (["{tmp}", "--layout", "isic2019"], "error: unknown layout 'isic2019'"),
        (["{tmp}"], "error: found no known dataset layout"),
        (["{tmp}/PH2Dataset.rar", "--out", "{tmp}/out"], "(extract PH2Dataset.rar first"),
        (["{tmp}", "--layout", "generic"], "error: found no folder holding both images/ and masks/"),
        (["--out", "{tmp}/out"], "error: give the dataset's folders or archives"),
        (["{tmp}", "{tmp}"], "error: pass --out"),
        (
            ["{tmp}", "--layout", "isic2018"],
            "error: found none of the isic2018 folders (ISIC2018_Task1-2_Training_Input,",
        ),
    ],
)
def test_expected_errors_exit_1_with_one_line(tmp_path, capsys, args, message):
    (tmp_path / "PH2Dataset.rar").write_bytes(b"Rar!")
    status, _, stderr = run_cli(capsys, *[a.format(tmp=tmp_path) for a in args])
    assert status == 1
    assert len(stderr.strip().splitlines()) == 1 and message.format(tmp=tmp_path) in stderr


def test_expected_error_in_a_real_process_has_no_traceback(tmp_path):
    result = run_process(str(tmp_path / "absent"), "--out", str(tmp_path))
    assert result.returncode == 1
    assert result.stderr.strip() == f"error: source {tmp_path / 'absent'} does not exist."


def test_no_pairs_and_several_datasets_are_errors(tmp_path, capsys):
    write_photo(tmp_path / "a" / "images" / "x.jpg")
    write_mask(tmp_path / "a" / "masks" / "y.png")
    status, _, stderr = run_cli(capsys, str(tmp_path / "a"))
    assert status == 1 and "error: no usable image/mask pairs" in stderr.splitlines()[-1]
    assert "warning: unpaired image (no mask in" in stderr and "warning: unpaired mask (no image in" in stderr

    isic_tree(tmp_path / "b", "isic2018", {"training": 2})
    ph2_tree(tmp_path / "b", 2)
    with pytest.raises(ValueError, match=r"several datasets \(isic2018, ph2\); pass --layout"):
        prepare_data(str(tmp_path / "b"))
    prepare_data(str(tmp_path / "b"), layout="ph2", out=str(tmp_path / "b_out"))
    ph2_items = [item for key in SPLITS for item in load_datalist(tmp_path / "b_out", key=key)]
    assert sorted(case_id(item["image"]) for item in ph2_items) == ["IMD001", "IMD002"]


# ---------------------------------------------------------------------------------------------- archives and cache


def zip_folders(archive: Path, root: Path, folder: str) -> Path:
    """An archive like the official ones: one top-level folder."""
    with zipfile.ZipFile(archive, "w") as zf:
        for path in sorted((root / folder).rglob("*")):
            zf.write(path, path.relative_to(root).as_posix())
    return archive


def test_zip_archives_are_extracted_once(tmp_path):
    isic_tree(tmp_path / "raw", "isic2018", {"training": 8})
    names = ISIC_FOLDERS["isic2018"]["training"]
    archives = [zip_folders(tmp_path / f"{name}.zip", tmp_path / "raw", name) for name in names]
    out = tmp_path / "out"
    prepare_data(*map(str, archives), out=str(out))
    first = check_datalist(out, {"training": 5, "validation": 1, "test": 2})
    assert all(str(out) in item["image"] for item in first["training"])
    extracted = out / "ISIC2018_Task1-2_Training_Input" / "ISIC_0000001.jpg"
    stamp = extracted.stat().st_mtime_ns
    prepare_data(*map(str, archives), out=str(out))
    assert extracted.stat().st_mtime_ns == stamp
    assert check_datalist(out, {"training": 5, "validation": 1, "test": 2}) == first

    (tmp_path / "broken.zip").write_bytes(b"PK\x03\x04 not really")
    with pytest.raises(ValueError, match="broken.zip is not a readable zip archive"):
        prepare_data(str(tmp_path / "broken.zip"), out=str(out))


def test_cache_resizes_once_and_keeps_originals(tmp_path):
    src = tmp_path / "src"
    for i in range(8):
        write_photo(src / "images" / f"case_{i}.jpg", (80, 60))
        write_mask(src / "masks" / f"case_{i}.png", (80, 60), foreground=1)  # a 0/1 mask
    write_photo(src / "images" / "small.jpg", (30, 20))
    write_mask(src / "masks" / "small.png", (30, 20))
    out = tmp_path / "out"
    prepare_data(str(src), out=str(out), cache_size=40, folds=2)
    items = [item for key in SPLITS for item in load_datalist(out, key=key)]
    assert len(items) == 9
    for item in items:
        original = Image.open(item["image_orig"])
        if Path(item["image_orig"]).stem == "small":
            assert item["image"] == item["image_orig"] and item["label"] == item["label_orig"]
            continue
        assert Path(item["image"]).parent == out / "cache40" / "images"
        image, label = Image.open(item["image"]), Image.open(item["label"])
        assert original.size == (80, 60) and image.size == label.size == (40, 30)
        assert label.mode == "L" and set(np.unique(np.asarray(label))) == {0, 255}
        assert (np.asarray(label) == 255).mean() == pytest.approx(0.25, abs=0.05)
        assert Path(item["label_orig"]).parent == src / "masks"
    fold = load_datalist(out, "datalist_fold0.json", key="validation")
    assert all("cache40" in item["image"] or Path(item["image"]).stem == "small" for item in fold)

    cached = out / "cache40" / "images" / "case_0.jpg"
    stamp = cached.stat().st_mtime_ns
    prepare_data(str(src), out=str(out), cache_size=40)
    assert cached.stat().st_mtime_ns == stamp  # done once
    assert not (out / "cache40" / "cache40").exists()  # the cache is not mistaken for data on re-runs


# ----------------------------------------------------------------------------------------------------- download


class _RangeServer(ThreadingHTTPServer):
    def __init__(self, files: dict[str, bytes], honour_range: bool = True):
        super().__init__(("127.0.0.1", 0), _RangeHandler)
        self.files, self.honour_range, self.requests = files, honour_range, []


class _RangeHandler(BaseHTTPRequestHandler):
    """Serves bytes from memory, with HTTP Range requests (which the stdlib's file handler lacks)."""

    server: _RangeServer

    def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
        self.server.requests.append((self.path, self.headers.get("Range")))
        data = self.server.files.get(self.path)
        if data is None:
            self.send_error(404)
            return
        start, requested = 0, self.headers.get("Range")
        if requested and self.server.honour_range:
            start = int(requested.removeprefix("bytes=").split("-")[0])
            if start >= len(data):
                self.send_response(416)
                self.send_header("Content-Range", f"bytes */{len(data)}")
                self.end_headers()
                return
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
        else:
            self.send_response(200)
        self.send_header("Content-Length", str(len(data) - start))
        self.end_headers()
        self.wfile.write(data[start:])

    def log_message(self, *args) -> None:
        pass


@pytest.fixture
def serve():
    servers = []

    def start(files: dict[str, bytes], honour_range: bool = True) -> _RangeServer:
        server = _RangeServer(files, honour_range)
        threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.shutdown()
        server.server_close()


def _url(server: _RangeServer) -> str:
    return f"http://127.0.0.1:{server.server_address[1]}"


@pytest.fixture
def isic2018_archives(tmp_path) -> dict[str, bytes]:
    isic_tree(tmp_path / "raw", "isic2018", {"training": 8})
    names = ISIC_FOLDERS["isic2018"]["training"]
    return {f"/2018/{n}.zip": zip_folders(tmp_path / f"{n}.zip", tmp_path / "raw", n).read_bytes() for n in names}


def test_download_resumes_verifies_and_prepares(tmp_path, capsys, serve, isic2018_archives):
    server = serve(isic2018_archives)
    checksums = {
        path.rsplit("/", 1)[1]: "sha256:" + hashlib.sha256(data).hexdigest() for path, data in isic2018_archives.items()
    }
    (tmp_path / "checksums.json").write_text(json.dumps(checksums))
    out = tmp_path / "isic2018"
    images_zip = isic2018_archives["/2018/ISIC2018_Task1-2_Training_Input.zip"]
    half = len(images_zip) // 2
    (out / "downloads").mkdir(parents=True)
    (out / "downloads" / "ISIC2018_Task1-2_Training_Input.zip.part").write_bytes(images_zip[:half])

    args = ["--download", "isic2018", "--base_url", _url(server), "--checksums", str(tmp_path / "checksums.json")]
    status, _, stderr = run_cli(capsys, *args, "--out", str(out))
    assert status == 0, stderr
    assert ("/2018/ISIC2018_Task1-2_Training_Input.zip", f"bytes={half}-") in server.requests
    assert ("/2018/ISIC2018_Task1_Training_GroundTruth.zip", None) in server.requests
    assert (out / "downloads" / "ISIC2018_Task1-2_Training_Input.zip").read_bytes() == images_zip
    assert not list((out / "downloads").glob("*.part"))
    check_datalist(out, {"training": 5, "validation": 1, "test": 2})

    # A second run downloads nothing.
    server.requests.clear()
    assert run_cli(capsys, *args, "--out", str(out))[0] == 0 and server.requests == []


def test_download_checksum_mismatch_is_one_error_line(tmp_path, capsys, serve, isic2018_archives):
    server = serve(isic2018_archives)
    wrong = {"ISIC2018_Task1-2_Training_Input.zip": "sha256:" + "0" * 64}
    (tmp_path / "checksums.json").write_text(json.dumps(wrong))
    out = tmp_path / "out"
    args = ["--download", "isic2018", "--base_url", _url(server), "--checksums", str(tmp_path / "checksums.json")]
    status, _, stderr = run_cli(capsys, *args, "--out", str(out))
    assert status == 1
    assert (
        stderr.strip()
        .splitlines()[-1]
        .startswith("error: checksum mismatch for ISIC2018_Task1-2_Training_Input.zip: expected sha256 000")
    )
    assert not list((out / "downloads").glob("ISIC2018_Task1-2_Training_Input.zip*"))  # the bad bytes are gone


def test_download_offline_is_one_clear_message(tmp_path, capsys):
    with socket.socket() as probe:  # a port that nothing listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    base_url = f"http://127.0.0.1:{port}"
    status, _, stderr = run_cli(capsys, "--download", "isic2016", "--base_url", base_url, "--out", str(tmp_path))
    assert status == 1
    [line] = stderr.strip().splitlines()
    assert line.startswith(f"error: cannot reach 127.0.0.1:{port} (") and "this machine seems offline" in line
    assert f"Download {base_url}/2016/ISBI2016_ISIC_Part1_Training_Data.zip by hand" in line


def test_download_file_restarts_when_range_is_ignored_and_checks_md5(tmp_path, serve):
    payload = bytes(range(256)) * 40
    server = serve({"/f.bin": payload}, honour_range=False)
    target = tmp_path / "f.bin"
    target.with_name("f.bin.part").write_bytes(b"stale bytes from another version")
    download_file(f"{_url(server)}/f.bin", target, "md5:" + hashlib.md5(payload).hexdigest())
    assert target.read_bytes() == payload
    with pytest.raises(DownloadError, match="HTTP 404"):
        download_file(f"{_url(server)}/missing.bin", tmp_path / "missing.bin")


def test_download_file_finishes_a_part_file_that_is_already_whole(tmp_path, serve):
    payload = b"complete archive bytes"
    server = serve({"/f.zip": payload})
    target = tmp_path / "f.zip"
    target.with_name("f.zip.part").write_bytes(payload)
    download_file(f"{_url(server)}/f.zip", target, "sha256:" + hashlib.sha256(payload).hexdigest())
    assert server.requests == [("/f.zip", f"bytes={len(payload)}-")]  # answered 416: nothing left to send
    assert target.read_bytes() == payload and not target.with_name("f.zip.part").exists()


# --------------------------------------------------------------------------------------------------- real data


def test_real_isic2017_validation_folder(isic_val, tmp_path):
    summary = prepare_data(str(isic_val), out=str(tmp_path))
    assert summary["layout"] == "generic" and summary["problems"] == []
    splits = check_datalist(tmp_path, {"training": 78, "validation": 10, "test": 10})
    assert sum(len(items) for items in splits.values()) == 98
    for item in splits["test"]:
        assert Image.open(item["image"]).size == Image.open(item["label"]).size


# ------------------------------------------------------------------------------- one reader, one mask rule


def test_prepared_cache_and_inference_read_photo_and_mask_alike(tmp_path):
    """An EXIF-rotated photo and a red-on-black mask: prepare_data's cache, the training reader and inference agree.

    The photo is stored on its side with EXIF orientation 6, so it is displayed 160 x 120 with a red lesion at the
    top left; the mask is drawn as displayed, lesion red (255, 0, 0) on black: lesion everywhere it is red.
    """
    from bundle.inference import LesionSegmenter
    from bundle.transforms import LoadMaskd

    from .test_inference import RED, SKIN, assert_same_mask, red_overrides

    displayed = np.zeros((120, 160, 3), np.uint8)
    displayed[:] = SKIN
    displayed[10:50, 20:90] = RED
    lesion = np.zeros((120, 160), np.uint8)
    lesion[10:50, 20:90] = 255
    src = tmp_path / "src"
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90° clockwise to display"
    (src / "images").mkdir(parents=True)
    Image.fromarray(displayed).transpose(Image.Transpose.ROTATE_90).save(
        src / "images" / "case.jpg", quality=95, exif=exif
    )
    red_on_black = np.zeros((120, 160, 3), np.uint8)
    red_on_black[lesion > 0] = (255, 0, 0)
    (src / "masks").mkdir()
    Image.fromarray(red_on_black).save(src / "masks" / "case.png")
    out = tmp_path / "out"
    prepare_data(str(src), out=str(out), cache_size=80)  # the size check passes: photo as displayed vs mask

    (item,) = [i for key in SPLITS for i in load_datalist(out, key=key)]
    cached_photo, cached_mask = Image.open(item["image"]), np.asarray(Image.open(item["label"]))
    assert cached_photo.size == (80, 60)  # as displayed, not as stored (60 x 80)
    expected_cached = np.asarray(Image.fromarray(lesion).resize((80, 60), Image.Resampling.NEAREST))
    np.testing.assert_array_equal(cached_mask, expected_cached)  # red on black is lesion, not background

    # the training/evaluation reader gives the same mask from the original file
    label = LoadMaskd("label")({"label": item["label_orig"]})["label"]
    np.testing.assert_array_equal(label[0].numpy().T * 255, lesion)

    # inference sees the same geometry: the red lesion where the masks have it, in the original and in the cache
    segmenter = LesionSegmenter(bundle_root=REPO, overrides=red_overrides(tmp_path / "masks"))
    original = np.asarray(Image.open(segmenter.segment(item["image_orig"])["pred_path"]))
    assert_same_mask(original, lesion)
    assert_same_mask(np.asarray(Image.open(segmenter.segment(item["image"])["pred_path"])), cached_mask)
