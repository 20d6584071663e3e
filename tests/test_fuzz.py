"""Hostile and unusual photographs through the inference entry point, in one real ``python -m monai.bundle run``.

A few hundred files are generated here (fixed seed): valid JPEG/PNG/BMP/TIFF/GIF/WebP files in odd modes and sizes,
files whose extension lies, random bytes, files cut at random offsets, bit flips in valid files, and decompression
bombs (tiny files declaring 60000×60000 pixels). Each one must be segmented (a complete mask of the photo's displayed
size) or named in exactly one ``ERROR`` line; the run must not crash, hang, leave a partial file, spend more than
1.5 GB, or miscount in its summary line.
"""

from __future__ import annotations

import io
import os
import re
import struct
import subprocess
import sys
import tempfile
import threading
import time
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from .conftest import REPO

# A network that calls red pixels lesion, no checkpoint, a small working size: the files are what is tested.
RED_NETWORK = ("--network_def#_target_", "tests.nets.RedIsLesion", "--ckpt_path", "", "--image_size", "64")
MEMORY_LIMIT = 1.5 * 2**30
SUMMARY = re.compile(
    r"^segmented (\d+) of (\d+) images; (\d+) failed(?:; (\d+) with an empty mask \(see the warnings\))?$", re.MULTILINE
)
EXIF_ORIENTATION = 0x0112
# Runs ``-m module args...`` as ``python -m`` would, and writes the process's own high-water resident memory (bytes)
# to the file named first when the interpreter exits.
REPORT_PEAK_AT_EXIT = """
import atexit, runpy, sys
peak_file = sys.argv.pop(1)
def report():
    with open("/proc/self/status") as status:
        kib = next(int(line.split()[1]) for line in status if line.startswith("VmHWM:"))
    with open(peak_file, "w") as out:
        out.write(str(kib * 1024))
atexit.register(report)
module = sys.argv.pop(1)
runpy.run_module(module, run_name="__main__", alter_sys=True)
"""


@dataclass
class Finished:
    returncode: int
    stdout: str
    stderr: str
    max_rss: int  # bytes, the peak resident memory of the process itself


def run_measured(args: list[str], cwd: Path = REPO, timeout: float = 600) -> Finished:
    """Run ``python -m <module> ...`` to its end and return its output and its own peak resident memory.

    The peak is the child's ``VmHWM`` (Linux), written by itself at exit: ``ru_maxrss`` from ``wait4`` survives
    ``exec`` and so reports the forked copy of this pytest process, which grows over a full suite.
    A process still running after ``timeout`` seconds is killed and the test fails: a hang is a defect.
    """
    assert args[:2] == [sys.executable, "-m"], args
    peak_file = Path(tempfile.mkstemp(prefix="peak_", suffix=".txt")[1])
    proc = subprocess.Popen(
        [sys.executable, "-c", REPORT_PEAK_AT_EXIT, str(peak_file), *args[2:]],
        cwd=cwd,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    output: dict[str, bytes] = {}
    readers = [
        threading.Thread(target=lambda k=k, s=s: output.__setitem__(k, s.read()))
        for k, s in (("stdout", proc.stdout), ("stderr", proc.stderr))
    ]
    for reader in readers:
        reader.start()
    hung = threading.Event()
    timer = threading.Timer(timeout, lambda: (hung.set(), proc.kill()))
    timer.start()
    try:
        _, status, _ = os.wait4(proc.pid, 0)
    finally:
        timer.cancel()
    proc.returncode = os.waitstatus_to_exitcode(status)
    for reader in readers:
        reader.join()
    assert not hung.is_set(), f"still running after {timeout} s: {args}"
    stdout, stderr = (output[k].decode(errors="replace") for k in ("stdout", "stderr"))
    peak = peak_file.read_text().strip()
    peak_file.unlink()
    assert peak, f"the child wrote no peak memory (status {proc.returncode}): {stderr[-2000:]}"
    return Finished(proc.returncode, stdout, stderr, int(peak))


def bundle_inference(folder: Path, output_dir: Path, *extra: str, timeout: float = 600) -> Finished:
    """``python -m monai.bundle run --config_file configs/inference.json`` on ``folder`` with the red network."""
    return run_measured(
        [
            sys.executable,
            "-m",
            "monai.bundle",
            "run",
            "--config_file",
            "configs/inference.json",
            "--dataset_dir",
            str(folder),
            "--output_dir",
            str(output_dir),
            *RED_NETWORK,
            *extra,
        ],
        timeout=timeout,
    )


# --- generated files -----------------------------------------------------------------------------------------------


def photo(width: int, height: int, rng: np.random.Generator) -> np.ndarray:
    """(H, W, 3) uint8 skin-coloured noise with a red block in the top-left quarter (RedIsLesion finds it)."""
    image = np.clip(rng.normal((200, 170, 150), 12, (height, width, 3)), 0, 255).astype(np.uint8)
    image[: max(1, height // 4), : max(1, width // 3)] = (220, 30, 30)
    return image


def encode(image: Image.Image, fmt: str, **options) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **options)
    return buffer.getvalue()


def png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def raw_png(width: int, height: int, bit_depth: int, colour_type: int, rows: bytes) -> bytes:
    """A PNG written by hand, so that it can declare what Pillow would refuse to write (e.g. 60000×60000)."""
    header = struct.pack(">IIBBBBB", width, height, bit_depth, colour_type, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + png_chunk(b"IHDR", header)
        + png_chunk(b"IDAT", zlib.compress(rows))
        + png_chunk(b"IEND", b"")
    )


def jpeg_declaring(width: int, height: int, rng: np.random.Generator) -> bytes:
    """A small real JPEG whose frame header (SOF0) is patched to declare ``width`` × ``height``."""
    data = bytearray(encode(Image.fromarray(photo(16, 16, rng)), "JPEG"))
    sof = data.index(b"\xff\xc0")
    data[sof + 5 : sof + 9] = struct.pack(">HH", height, width)
    return bytes(data)


def valid_files(rng: np.random.Generator) -> dict[str, bytes]:
    """Readable photographs in every mode and layout a user's folder may hold, by file name."""
    base = Image.fromarray(photo(48, 36, rng))
    rgba = base.convert("RGBA")
    rgba.putalpha(Image.fromarray(np.tile(np.linspace(0, 255, 48, dtype=np.uint8), (36, 1))))
    grey16 = Image.fromarray(np.asarray(base.convert("L"), np.uint16) * 257)
    files = {
        "jpeg_baseline.jpg": encode(base, "JPEG", quality=90),
        "jpeg_progressive.jpeg": encode(base, "JPEG", progressive=True),
        "jpeg_low_quality.jpg": encode(base, "JPEG", quality=5),
        "jpeg_grey.jpg": encode(base.convert("L"), "JPEG"),
        "jpeg_cmyk.jpg": encode(base.convert("CMYK"), "JPEG"),
        "png_rgb.png": encode(base, "PNG"),
        "png_rgba.png": encode(rgba, "PNG"),
        "png_grey_alpha.png": encode(rgba.convert("LA"), "PNG"),
        "png_grey.png": encode(base.convert("L"), "PNG"),
        "png_palette.png": encode(base.convert("P"), "PNG"),
        "png_palette_transparent.png": encode(base.convert("P"), "PNG", transparency=0),
        "png_bilevel.png": encode(base.convert("1"), "PNG"),
        "png_grey16.png": encode(grey16, "PNG"),
        "png_optimized.png": encode(base, "PNG", optimize=True),
        "png_rgb16.png": raw_png(
            20, 12, 16, 2, b"".join(b"\x00" + rng.integers(0, 256, 20 * 6, np.uint8).tobytes() for _ in range(12))
        ),
        "bmp_rgb.bmp": encode(base, "BMP"),
        "bmp_palette.bmp": encode(base.convert("P"), "BMP"),
        "bmp_bilevel.bmp": encode(base.convert("1"), "BMP"),
        "tiff_rgb.tif": encode(base, "TIFF"),
        "tiff_lzw.tiff": encode(base, "TIFF", compression="tiff_lzw"),
        "tiff_deflate.tif": encode(base, "TIFF", compression="tiff_adobe_deflate"),
        "tiff_jpeg.tif": encode(base, "TIFF", compression="jpeg"),
        "tiff_cmyk.tif": encode(base.convert("CMYK"), "TIFF"),
        "tiff_rgba.tif": encode(rgba, "TIFF"),
        "tiff_grey16.tif": encode(grey16, "TIFF"),
        "tiff_int32.tif": encode(Image.fromarray(np.asarray(base.convert("L"), np.int32) * 1000), "TIFF"),
        "tiff_float.tif": encode(Image.fromarray(np.asarray(base.convert("L"), np.float32) / 255), "TIFF"),
        "tiff_two_pages.tif": encode(base, "TIFF", save_all=True, append_images=[base.rotate(90)]),
        "gif_palette.gif": encode(base, "GIF"),
        "webp_lossy.webp": encode(base, "WEBP", quality=50),
        "webp_lossless_alpha.webp": encode(rgba, "WEBP", lossless=True),
        "size_1x1.png": encode(Image.fromarray(photo(1, 1, rng)), "PNG"),
        "size_1x300.jpg": encode(Image.fromarray(photo(1, 300, rng)), "JPEG"),
        "size_300x1.png": encode(Image.fromarray(photo(300, 1, rng)), "PNG"),
        "size_33x17.bmp": encode(Image.fromarray(photo(33, 17, rng)), "BMP"),
        "size_2500x40.jpg": encode(Image.fromarray(photo(2500, 40, rng)), "JPEG"),
        "size_1600x1200.jpg": encode(Image.fromarray(photo(1600, 1200, rng)), "JPEG", quality=80),
        # the extension lies: the content decides how the file is read
        "lie_png_named.jpg": encode(base, "PNG"),
        "lie_jpeg_named.png": encode(base, "JPEG"),
        "lie_bmp_named.tiff": encode(base, "BMP"),
        "lie_tiff_named.bmp": encode(base, "TIFF"),
        "lie_gif_named.jpeg": encode(base, "GIF"),
    }
    for orientation in range(2, 9):
        exif = Image.Exif()
        exif[EXIF_ORIENTATION] = orientation
        files[f"jpeg_exif_orientation_{orientation}.jpg"] = encode(base, "JPEG", exif=exif)
    return files


def broken_files(valid: dict[str, bytes], rng: np.random.Generator) -> dict[str, bytes]:
    """Random bytes, bare magic numbers, cut files, bit flips and decompression bombs, by file name."""
    files: dict[str, bytes] = {"empty.jpg": b"", "text.png": b"not an image at all\n" * 20}
    for extension in (".jpg", ".png", ".bmp", ".tif", ".gif", ".webp"):
        for size in (1, 64, 4096):
            files[f"random_{size}b{extension.replace('.', '_')}{extension}"] = rng.bytes(size)
    magic = {"jpg": b"\xff\xd8\xff\xe0", "png": b"\x89PNG\r\n\x1a\n", "bmp": b"BM", "tif": b"II*\x00", "gif": b"GIF89a"}
    for extension, prefix in magic.items():
        files[f"magic_only_{extension}.{extension}"] = prefix
        files[f"magic_then_noise_{extension}.{extension}"] = prefix + rng.bytes(500)
    files["bomb_png_60000.png"] = raw_png(60000, 60000, 8, 2, b"\x00" * 1000)
    files["bomb_jpeg_60000.jpg"] = jpeg_declaring(60000, 60000, rng)
    files["bomb_jpeg_65500x30000.jpg"] = jpeg_declaring(65500, 30000, rng)
    files["bomb_png_grey_30000.png"] = raw_png(30000, 30000, 8, 0, b"\x00" * 30001 * 4)
    files["bomb_gif_65535.gif"] = b"GIF89a" + struct.pack("<HH", 65535, 65535) + b"\x00\x00\x00" + rng.bytes(200)
    files["bomb_bmp_60000.bmp"] = (
        b"BM"
        + struct.pack("<IHHI", 54 + 300, 0, 0, 54)
        + struct.pack("<IiiHHIIiiII", 40, 60000, 60000, 1, 24, 0, 0, 0, 0, 0, 0)
        + rng.bytes(300)
    )
    for name, data in valid.items():
        stem, extension = name.rsplit(".", 1)
        for cut in sorted(set(rng.integers(1, len(data), 3).tolist())):
            files[f"cut_{stem}_at{cut}.{extension}"] = data[:cut]
        for flips in (1, 8, 64):
            flipped = bytearray(data)
            for position in rng.integers(0, len(data) * 8, flips):
                flipped[position // 8] ^= 1 << (position % 8)
            files[f"flip{flips}_{stem}.{extension}"] = bytes(flipped)
    return files


def displayed_size(path: Path) -> tuple[int, int]:
    """(width, height) of the photo as a viewer shows it (first frame, EXIF orientation applied)."""
    with Image.open(path) as image:
        width, height = image.size
        orientation = image.getexif().get(EXIF_ORIENTATION, 1)
    return (height, width) if orientation in (5, 6, 7, 8) else (width, height)


def error_lines_naming(stderr: str, path: Path) -> list[str]:
    return [line for line in stderr.splitlines() if line.startswith(f"ERROR {path}:")]


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore::UserWarning")  # Pillow on the damaged files, when the test reads their size
def test_hostile_and_unusual_files_are_segmented_or_named_in_one_line(tmp_path):
    rng = np.random.default_rng(20261129)
    valid = valid_files(rng)
    files = {**valid, **broken_files(valid, rng)}
    assert len(files) > 300
    folder, out = tmp_path / "photos", tmp_path / "masks"
    folder.mkdir()
    for name, data in files.items():
        (folder / name).write_bytes(data)
    assert len({Path(name).stem for name in files}) == len(files)  # one mask name per file
    not_photos = ["model.h5", "notes.txt", "scan.pdf"]
    for name in not_photos:
        (folder / name).write_bytes(b"not a photograph\n")

    run = bundle_inference(folder, out, timeout=900)

    assert run.returncode in (0, 1), run.stderr[-3000:]
    assert "Traceback" not in run.stderr + run.stdout, run.stderr[-5000:]
    problems = []
    segmented = failed = empty = 0
    for name in sorted(files):
        path = (folder / name).resolve()
        mask_path = out / f"{Path(name).stem}_mask.png"
        errors = error_lines_naming(run.stderr, path)
        if mask_path.exists():
            segmented += 1
            if errors:
                problems.append(f"{name}: both a mask and an error line {errors}")
            with Image.open(mask_path) as mask:
                mask.load()
                values = set(np.unique(np.asarray(mask)).tolist())
                empty += values == {0}
                if mask.size != displayed_size(path) or not values <= {0, 255}:
                    problems.append(f"{name}: mask {mask.size} {sorted(values)}, photo {displayed_size(path)}")
        elif len(errors) == 1:
            failed += 1
        else:
            problems.append(f"{name}: no mask and {len(errors)} error lines")
    for name in valid:
        if not (out / f"{Path(name).stem}_mask.png").exists():
            problems.append(f"{name}: a readable photo was not segmented")
    for name in files:
        if name.startswith("bomb_") and not any(
            "megapixels" in line and "refused unread" in line
            for line in error_lines_naming(run.stderr, (folder / name).resolve())
        ):
            problems.append(f"{name}: not refused as too large")
    assert not problems, "\n".join(problems)
    skipped = f"Skipped 3 file(s) in {folder} that are not photographs (by their extension or name): "
    assert skipped + ", ".join(not_photos) in run.stdout + run.stderr
    leftovers = sorted(p.name for p in out.iterdir() if not p.name.endswith("_mask.png"))
    assert not leftovers, leftovers  # no .part or other partial file
    summary = SUMMARY.findall(run.stdout)
    counts = (str(segmented), str(len(files)), str(failed), str(empty) if empty else "")  # empty masks are counted
    assert summary == [counts], (summary, segmented, failed, empty, len(files))
    assert run.returncode == (1 if failed else 0)
    assert run.max_rss < MEMORY_LIMIT, f"peak memory {run.max_rss / 2**30:.2f} GB"


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore::PIL.Image.DecompressionBombWarning")  # the test's own enlargement
def test_a_12000_by_9000_photo_is_segmented_in_little_memory(tmp_path, isic_val):
    """A real photograph enlarged to 108 megapixels: decoded at 4× the working size, resized back in bands."""
    folder = tmp_path / "photo"
    folder.mkdir()
    with Image.open(isic_val / "full_resolution" / "ISIC_0012288.jpg") as original:
        original.resize((12000, 9000), Image.Resampling.BICUBIC).save(folder / "large.jpg", quality=90)
    run = bundle_inference(folder, tmp_path / "masks")
    assert run.returncode == 0, run.stderr[-3000:]
    with Image.open(tmp_path / "masks" / "large_mask.png") as mask:
        assert mask.size == (12000, 9000)
        assert set(np.unique(np.asarray(mask)).tolist()) <= {0, 255}
    # 3.4 GB before: the full-size decode, its float copy and two full-size class maps
    assert run.max_rss < MEMORY_LIMIT, f"peak memory {run.max_rss / 2**30:.2f} GB"


@pytest.mark.slow
def test_two_runs_writing_into_one_folder_leave_every_mask_complete(tmp_path):
    """Two inference processes write the same masks into one folder at once: each mask is written beside its
    place and renamed in, so every file a reader finds is complete."""
    folder, out = tmp_path / "photos", tmp_path / "masks"
    folder.mkdir()
    rng = np.random.default_rng(7)
    count = 16
    for index in range(count):
        size = (1600, 1200) if index % 4 == 0 else (400, 300)
        Image.fromarray(photo(*size, rng)).save(folder / f"photo_{index:02d}.jpg", quality=85)
    args = [sys.executable, "-m", "monai.bundle", "run", "--config_file", "configs/inference.json",
            "--dataset_dir", str(folder), "--output_dir", str(out), *RED_NETWORK]  # fmt: skip
    runs = [subprocess.Popen(args, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
            for _ in range(2)]  # fmt: skip
    torn = []
    while any(run.poll() is None for run in runs):  # read the masks while they are being written
        for path in out.glob("*_mask.png") if out.is_dir() else []:
            try:
                with Image.open(path) as mask:
                    mask.load()
            except FileNotFoundError:
                continue
            except OSError as error:
                torn.append(f"{path.name}: {error}")
        time.sleep(0.01)
    outputs = [run.communicate()[0] for run in runs]
    assert [run.returncode for run in runs] == [0, 0], outputs
    assert not torn, torn
    names = sorted(p.name for p in out.iterdir())
    assert names == sorted(f"photo_{index:02d}_mask.png" for index in range(count)), names  # no .part left
    for index in range(count):
        with (
            Image.open(out / f"photo_{index:02d}_mask.png") as mask,
            Image.open(folder / f"photo_{index:02d}.jpg") as p,
        ):
            assert mask.size == p.size
            assert np.asarray(mask)[: p.size[1] // 8, : p.size[0] // 6].all()  # the red corner is lesion
