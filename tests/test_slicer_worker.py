"""The Slicer module's library against a real worker process running the bundle (``configs/inference.json`` through
``bundle.inference.LesionSegmenter``), outside Slicer.

Photos are read with ITK as Slicer reads them. Checks that need a lesion to be found use ``tests.nets.RedIsLesion``
(a fixed network that calls red pixels lesion) through config overrides; the zip / timing test uses the bundle's
default network.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import struct
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "slicer_extension" / "SkinLesionSegmentation"))

from SkinLesionSegmentationLib import imaging, measurements, protocol, results  # noqa: E402
from SkinLesionSegmentationLib.client import (  # noqa: E402
    WorkerCancelled,
    WorkerClient,
    WorkerDied,
    WorkerError,
    kill_process_tree,
)

RED_IS_LESION = {
    "network_def": {"_target_": "tests.nets.RedIsLesion"},
    "ckpt_path": "/nonexistent/model.pt",
    "image_size": 128,
}
SKIN = (220, 180, 160)
LESION = (200, 40, 40)  # RedIsLesion: probability ~1
FAINT = (200, 136, 130)  # RedIsLesion: probability ~0.3


def disc(shape, center, radius):
    rows, cols = np.mgrid[: shape[0], : shape[1]]
    return (rows - center[0]) ** 2 + (cols - center[1]) ** 2 <= radius**2


def corner_photo(shape=(120, 160)) -> tuple[np.ndarray, np.ndarray]:
    """Skin with a lesion in the top-right corner and a dark (not red) mark bottom-left; returns (photo, lesion)."""
    photo = np.empty(shape + (3,), np.uint8)
    photo[:] = SKIN
    lesion = disc(shape, (28, 125), 18)
    photo[lesion] = LESION
    photo[95:115, 10:30] = (60, 60, 90)
    return photo, lesion


def read_like_slicer(path: Path) -> np.ndarray:
    """``slicer.util.arrayFromVolume`` of the photo loaded as a single file: ITK's array with a slice axis."""
    import itk

    return itk.array_from_image(itk.imread(str(path)))[None]


def iou(a, b) -> float:
    a, b = np.asarray(a, bool), np.asarray(b, bool)
    return float((a & b).sum() / max((a | b).sum(), 1))


def process_tree(root: int) -> set[int]:
    """``root`` and its descendants, from /proc."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(ppid, []).append(int(entry.name))
    tree, todo = set(), [root]
    while todo:
        pid = todo.pop()
        tree.add(pid)
        todo.extend(children.get(pid, []))
    return tree


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def in_process_group(pgid: int) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and alive(int(entry.name)):
            try:
                if int((entry / "stat").read_text().rsplit(")", 1)[1].split()[2]) == pgid:
                    found.append(int(entry.name))
            except (OSError, IndexError, ValueError):
                continue
    return found


@pytest.fixture(scope="module")
def launcher(tmp_path_factory) -> Path:
    """A Python 'launcher' that runs the interpreter as a child, as Slicer's PythonSlicer does."""
    script = tmp_path_factory.mktemp("launcher") / "python-launcher"
    script.write_text(f'#!/bin/sh\n"{sys.executable}" "$@"\n')
    script.chmod(0o755)
    return script


@pytest.fixture(scope="module")
def worker(launcher):
    """One worker for the module's tests, started through the launcher; a test that ends it gets a new one."""
    client = WorkerClient(launcher, REPO, device="cpu", overrides=RED_IS_LESION, env=dict(os.environ))
    client.start()
    yield client
    client.close()
    assert not client.running


def forward_count(client) -> int:
    return client.request("info")[0]["forward_count"]


@pytest.mark.parametrize("suffix", [".png", ".jpg"])
def test_corner_lesion_comes_back_in_the_same_corner(worker, tmp_path, suffix):
    photo, lesion = corner_photo()
    path = tmp_path / f"photo{suffix}"
    Image.fromarray(photo).save(path, quality=95)
    volume_array = read_like_slicer(path)
    assert volume_array.shape == (1, 120, 160, 3)
    answer = worker.segment(volume_array)
    assert answer["prob"].shape == answer["pred"].shape == (120, 160) and answer["prob"].dtype == np.float32
    assert iou(answer["pred"], lesion) > 0.9
    assert answer["pred"][60:, :80].sum() == 0  # nothing in the opposite corner, where the dark mark is
    np.testing.assert_array_equal(imaging.threshold_probability(answer["prob"], 0.5), answer["pred"])

    spec = results.SegmentSpec(
        worker.info["segment_name"], tuple(worker.info["segment_color"]), worker.info["segment_terminology"]
    )
    assert spec == results.SKIN_LESION  # "lesion" in the bundle's channel_def
    _, seg_path = results.write_results(answer["pred"], tmp_path, "photo", spec)
    import slicerio

    segmentation = slicerio.read_segmentation(str(seg_path))
    np.testing.assert_array_equal(segmentation["voxels"][:, :, 0].T, answer["pred"])
    (segment,) = segmentation["segments"]
    assert segment["name"] == "Skin lesion" and segment["color"] == pytest.approx(list(spec.color))
    rows, cols = np.nonzero(lesion)
    i0, i1, j0, j1, _, _ = segment["extent"]
    assert abs(i0 - cols.min()) <= 2 and abs(i1 - cols.max()) <= 2
    assert abs(j0 - rows.min()) <= 2 and abs(j1 - rows.max()) <= 2


def test_rgba_and_grey_photos(worker, tmp_path):
    photo, lesion = corner_photo()
    rgba = np.concatenate([photo, np.random.default_rng(1).integers(0, 256, photo.shape[:2] + (1,), np.uint8)], -1)
    Image.fromarray(rgba, mode="RGBA").save(tmp_path / "rgba.png")
    volume_array = read_like_slicer(tmp_path / "rgba.png")
    assert volume_array.shape == (1, 120, 160, 4)
    assert iou(worker.segment(volume_array)["pred"], lesion) > 0.9  # alpha dropped, colours kept

    Image.fromarray(photo[..., 0]).save(tmp_path / "grey.png")  # the lesion is darker, but not red, in grey
    volume_array = read_like_slicer(tmp_path / "grey.png")
    assert volume_array.shape == (1, 120, 160)
    answer = worker.segment(volume_array)
    assert answer["pred"].shape == (120, 160) and answer["pred"].sum() == 0


def threshold_photo():
    """A strong lesion (top right) and a faint one (bottom left), so thresholds and clicks have known answers."""
    shape = (120, 160)
    photo = np.empty(shape + (3,), np.uint8)
    photo[:] = SKIN
    strong, faint = disc(shape, (30, 120), 16), disc(shape, (85, 40), 16)
    photo[strong], photo[faint] = LESION, FAINT
    return photo, strong, faint


def test_threshold_and_clicks_use_the_cached_probabilities(worker):
    photo, strong, faint = threshold_photo()
    answer = worker.segment(photo[None])
    probability, forwards = answer["prob"], answer["forward_count"]
    assert 0.15 < float(np.median(probability[disc(photo.shape[:2], (85, 40), 10)])) < 0.45

    at_half = imaging.threshold_probability(probability, 0.5)
    assert iou(at_half, strong) > 0.9 and at_half[faint].sum() == 0
    low = imaging.threshold_probability(probability, 0.1)
    assert iou(low, strong | faint) > 0.85

    keep_faint, notes = imaging.apply_clicks(low, foreground=[(85, 40)])
    assert iou(keep_faint, faint) > 0.85 and keep_faint[strong].sum() == 0 and notes == []
    drop_strong, _ = imaging.apply_clicks(low, background=[(30, 120)])
    np.testing.assert_array_equal(drop_strong, keep_faint)
    drop_faint, _ = imaging.apply_clicks(low, background=[(85, 40)])
    assert iou(drop_faint, strong) > 0.85 and drop_faint[faint].sum() == 0
    assert forward_count(worker) == forwards  # thresholds and clicks ran no network


def test_refine_in_region_finds_a_small_lesion_in_a_large_photo(worker):
    shape = (1024, 1024)
    photo = np.empty(shape + (3,), np.uint8)
    photo[:] = SKIN
    photo[900:903, 96:99] = LESION  # 3x3 pixels: under a pixel of the 128-pixel network input
    whole = worker.segment(photo)
    assert whole["pred"].sum() == 0
    forwards = whole["forward_count"]
    # An ROI drawn around it in Slicer: RAS bounds of columns 70..130, rows 870..930.
    ras_to_ijk = np.diag([-1.0, -1.0, 1.0, 1.0])
    box = imaging.box_from_ras_bounds((-130.0, -70.0, -930.0, -870.0, -0.5, 0.5), ras_to_ijk, shape)
    refined = imaging.refine_in_region(photo, whole["prob"], box, lambda crop: worker.segment(crop)["prob"])
    mask = imaging.threshold_probability(refined, 0.5)
    assert forward_count(worker) == forwards + 1  # one network run, on the crop
    rows, cols = np.nonzero(mask)
    assert len(rows) > 0 and rows.min() >= 898 and rows.max() <= 904 and cols.min() >= 94 and cols.max() <= 100
    outside = np.ones(shape, bool)
    outside[box.slices] = False
    np.testing.assert_array_equal(refined[outside], whole["prob"][outside])


def test_measurements_of_the_segmented_lesion(worker):
    photo, lesion = corner_photo()
    pred = worker.segment(photo)["pred"]
    values = measurements.measure(pred, pixel_size_mm=0.02)
    assert values["equivalent_diameter_px"] == pytest.approx(36, abs=2)
    assert values["equivalent_diameter_mm"] == pytest.approx(values["equivalent_diameter_px"] * 0.02)
    assert values["compactness"] > 0.9


def test_batch_writes_mask_and_segmentation_and_lists_failures(worker, tmp_path):
    photos = tmp_path / "photos"
    photos.mkdir()
    photo, lesion = corner_photo()
    Image.fromarray(photo).save(photos / "a.png")
    Image.fromarray(photo[::-1].copy()).save(photos / "b.jpg", quality=95)
    (photos / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    result = worker.batch(photos, tmp_path / "out")
    assert [Path(w[0]).name for w in result["written"]] == ["a.png", "b.jpg"]
    (failure,) = result["failures"]
    assert failure[0].endswith("broken.jpg") and "broken.jpg" in failure[1] and "\n" not in failure[1]
    import slicerio

    for stem, expected in (("a", lesion), ("b", lesion[::-1])):
        with Image.open(tmp_path / "out" / f"{stem}_mask.png") as mask_png:
            mask = np.asarray(mask_png)
        assert mask.shape == (120, 160) and set(np.unique(mask)) == {0, 255}
        assert iou(mask > 0, expected) > 0.85
        segmentation = slicerio.read_segmentation(str(tmp_path / "out" / f"{stem}.seg.nrrd"))
        np.testing.assert_array_equal(segmentation["voxels"][:, :, 0].T, mask > 0)
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == [
        "a.seg.nrrd",
        "a_mask.png",
        "b.seg.nrrd",
        "b_mask.png",
    ]
    (tmp_path / "empty").mkdir()
    with pytest.raises(WorkerError, match="holds no images"):
        worker.batch(tmp_path / "empty", tmp_path / "out2")
    assert worker.running  # a failed request leaves the worker serving


def listening_addresses(port: int) -> list[str]:
    """Local addresses of TCP sockets listening on ``port`` (from /proc/net/tcp and tcp6)."""
    found = []
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            address, port_hex = fields[1].rsplit(":", 1)
            if int(port_hex, 16) == port and fields[3] == "0A":
                found.append(address)
    return found


def test_worker_listens_on_loopback_and_refuses_requests_without_the_token(worker):
    port = worker.info["port"]
    assert listening_addresses(port) == ["0100007F"]  # 127.0.0.1 only
    for header in ({"command": "info"}, {"command": "info", "token": "0" * 64}):
        with socket.create_connection((protocol.HOST, port), timeout=10) as intruder:
            protocol.send_message(intruder, header)
            reply, _ = protocol.receive_message(intruder)
            assert reply == {"ok": False, "error": "refused: missing or wrong session token", "arrays": []}
            assert intruder.recv(1) == b""  # and the connection is closed
    with socket.create_connection((protocol.HOST, port), timeout=10) as intruder:
        # A 30 GB array announced without the token: refused at once, before a byte of it is read.
        header = json.dumps(
            {"command": "segment", "arrays": [{"name": "image", "dtype": "uint8", "shape": [100000, 100000, 3]}]}
        ).encode()
        intruder.sendall(struct.pack(">I", len(header)) + header)
        reply, _ = protocol.receive_message(intruder)
        assert reply["error"] == "refused: missing or wrong session token"
    photo, lesion = corner_photo()
    assert iou(worker.segment(photo)["pred"], lesion) > 0.9  # the worker is unharmed


def test_kill_process_tree_ends_what_a_launcher_started(launcher):
    # The worker also exits when its standard input closes; this checks the tree kill alone, for a worker too busy
    # (or too stuck) to notice.
    process = subprocess.Popen(
        [str(launcher), "-c", "import time; time.sleep(600)"], stdin=subprocess.DEVNULL, start_new_session=True
    )
    deadline = time.monotonic() + 30
    while len(tree := process_tree(process.pid)) < 2:
        assert time.monotonic() < deadline
        time.sleep(0.02)
    kill_process_tree(process)
    deadline = time.monotonic() + 10
    while any(alive(pid) for pid in tree) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not [pid for pid in tree if alive(pid)] and process.returncode is not None


@pytest.mark.slow
def test_cancel_and_kill_end_the_whole_worker_tree_with_one_clear_error(tmp_path, launcher):
    photos = tmp_path / "photos"
    photos.mkdir()
    photo, _ = corner_photo((700, 900))
    Image.fromarray(photo).save(photos / "photo000.png")
    for index in range(1, 60):
        shutil.copy(photos / "photo000.png", photos / f"photo{index:03d}.png")
    client = WorkerClient(launcher, REPO, device="cpu", overrides=RED_IS_LESION, env=dict(os.environ))
    try:
        for how in ("cancel", "kill"):
            info = client.start()
            group = client.pid  # the launcher leads the worker's process group
            tree = process_tree(group)
            assert client.pid in tree and info["pid"] in tree and len(tree) >= 2  # launcher + interpreter
            future = client.submit(client.batch, photos, tmp_path / f"out-{how}")
            deadline = time.monotonic() + 120
            while not any(line.startswith("PROGRESS 2/") for line in list(client.lines)):
                assert time.monotonic() < deadline and not future.done()
                time.sleep(0.02)
            if how == "cancel":
                client.cancel()
                with pytest.raises(WorkerCancelled, match="^cancelled; the worker was stopped$"):
                    future.result(timeout=60)
            else:
                os.kill(info["pid"], signal.SIGKILL)  # the interpreter, not the launcher
                with pytest.raises(WorkerDied) as died:
                    future.result(timeout=60)
                assert str(died.value).startswith("the worker stopped unexpectedly (exit code 137)")
                assert "\n" not in str(died.value)
            deadline = time.monotonic() + 10
            while any(alive(pid) for pid in tree) and time.monotonic() < deadline:
                time.sleep(0.05)
            assert not [pid for pid in tree if alive(pid)] and not in_process_group(group)
            assert not client.running
            for mask_file in (tmp_path / f"out-{how}").glob("*_mask.png"):  # what was written is whole
                with Image.open(mask_file) as written:
                    assert np.asarray(written).shape == (700, 900)
    finally:
        client.close()


def test_a_python_without_the_project_gives_one_line(tmp_path):
    client = WorkerClient(sys.executable, tmp_path, device="cpu")
    with pytest.raises(WorkerError) as caught:
        client.start()
    assert str(caught.value) == (
        f"the worker did not start ({sys.executable}): could not load the bundle: "
        f"{tmp_path}: not a bundle folder (no configs/inference.json)"
    )
    missing = WorkerClient(tmp_path / "no-python", REPO)
    with pytest.raises(WorkerError, match="cannot run the worker with .*no-python"):
        missing.start()
    client.close()
    missing.close()
    with pytest.raises(WorkerError, match="^the worker client was closed$"):
        client.start()  # Slicer is closing: queued work must not start a worker again


@pytest.mark.slow
def test_exported_bundle_zip_gpu_fallback_and_warm_request(tmp_path, capsys, served_folder):
    from SkinLesionSegmentationLib.bundles import fetch_bundle

    from .small_bundle import SMALL_NETWORK, export_zip, small_bundle

    folder, base = served_folder
    exported = export_zip(small_bundle(tmp_path / "bundle"), folder)  # as scripts/export_bundle.py makes it
    # Downloaded as an installed extension gets it: from a URL, checked against the export's own .sha256 line.
    sha256_line = exported.with_name(exported.name + ".sha256").read_text()
    root = fetch_bundle(f"{base}/{exported.name}", sha256_line, tmp_path / "cache")
    photo, _ = corner_photo((480, 640))
    client = WorkerClient(sys.executable, root, device="cuda", env=dict(os.environ))
    try:
        started = time.perf_counter()
        info = client.start()
        ready = time.perf_counter() - started
        assert info["bundle_code"] == str(root / "bundle")  # the zip's own code runs, not the installed copy
        assert info["has_weights"] and info["segment_name"] == "Skin lesion"
        if info["device"] == "cpu":
            assert info["fallback"].startswith("GPU not usable (")
        timings = []
        for _ in range(3):
            started = time.perf_counter()
            answer = client.segment(photo)
            timings.append((time.perf_counter() - started, answer["seconds"]))
        assert answer["pred"].shape == (480, 640) and answer["forward_count"] == 3
        with capsys.disabled():
            print(
                f"\n[slicer worker, {info['device']}, exported bundle with a {SMALL_NETWORK} checkpoint, 480x640 "
                f"photo] start to ready {ready:.2f} s; request 1 {timings[0][0]:.3f} s "
                f"(worker {timings[0][1]:.3f} s); request 2 {timings[1][0]:.3f} s (worker {timings[1][1]:.3f} s); "
                f"request 3 {timings[2][0]:.3f} s"
            )
    finally:
        client.close()


BLOCK_IMPORTS = """
import importlib.abc, runpy, sys
blocked = set(sys.argv[1].split(","))
class NotInSlicer(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in blocked:
            raise ModuleNotFoundError(f"No module named {name!r} (not in Slicer's Python)", name=name)
sys.meta_path.insert(0, NotInSlicer())
sys.argv = sys.argv[2:]
runpy.run_path(sys.argv[0], run_name="__main__")
"""


def test_the_worker_needs_only_what_slicer_ships_and_the_install_plan_adds(tmp_path):
    """The worker in an interpreter that can import only Slicer 5.12's packages, torch (the PyTorch extension's) and
    what the install plan adds: every other installed package (ITK, nibabel, ignite, tensorboard, ...) is blocked."""
    from importlib import metadata

    from SkinLesionSegmentationLib import slicer_python

    releases = json.loads((REPO / "tests" / "fixtures" / "slicer_releases.json").read_text())["releases"]
    plan = slicer_python.install_plan(releases["5.12"]["python"], releases["5.12"]["distributions"])
    from packaging.requirements import Requirement

    torch_needs = {
        slicer_python.canonical_name(Requirement(r).name) for r in metadata.requires("torch") or [] if "extra" not in r
    }
    allowed = {slicer_python.canonical_name(n) for n in releases["5.12"]["distributions"]}
    allowed |= {r.split("==")[0] for r in plan.requirements} | {"torch", "rfe-unet-skin-lesion"} | torch_needs
    blocked = sorted(
        name
        for name, owners in metadata.packages_distributions().items()
        if name.isidentifier() and not {slicer_python.canonical_name(o) for o in owners} & allowed
    )
    assert {"itk", "nibabel", "ignite", "tensorboard", "nrrd", "fire"} <= set(blocked)

    photo, lesion = corner_photo()
    photos = tmp_path / "photos"
    photos.mkdir()
    Image.fromarray(photo).save(photos / "a.jpg", quality=95)
    python = [sys.executable, "-c", BLOCK_IMPORTS, ",".join(blocked)]
    client = WorkerClient(python, REPO, device="cpu", env=dict(os.environ))  # the bundle's network, demo weights
    try:
        assert client.start()["has_weights"]
        answer = client.segment(photo)
        assert answer["pred"].shape == (120, 160) and answer["prob"].dtype == np.float32
        result = client.batch(photos, tmp_path / "out")
        assert result["failures"] == [] and len(result["written"]) == 1
    finally:
        client.close()


@pytest.fixture
def slow_launcher(tmp_path) -> Path:
    """A Python launcher that takes a minute before it runs the interpreter: a worker that is slow to start."""
    script = tmp_path / "slow-python"
    script.write_text(f'#!/bin/sh\nsleep 60\nexec "{sys.executable}" "$@"\n')
    script.chmod(0o755)
    return script


@pytest.mark.parametrize("how", ["close", "cancel", "stop"])
def test_close_cancel_or_stop_while_the_worker_starts_returns_at_once(slow_launcher, how):
    client = WorkerClient(slow_launcher, REPO, device="cpu", env=dict(os.environ))
    future = client.submit(client.start)
    deadline = time.monotonic() + 30
    while client.pid is None:  # the launcher runs: the start is waiting for the worker to get ready
        assert time.monotonic() < deadline
        time.sleep(0.02)
    tree = process_tree(client.pid)
    started = time.monotonic()
    getattr(client, how)()
    returned = time.monotonic() - started
    with pytest.raises(WorkerCancelled, match="^cancelled while the worker was starting$"):
        future.result(timeout=10)
    assert returned < 2.0, f"{how}() took {returned:.1f} s"  # the start-up it interrupted takes over 60 s
    assert not [pid for pid in tree if alive(pid)]
    client.close()


def test_a_stopped_worker_fails_a_request_within_its_timeout_in_one_line():
    client = WorkerClient(sys.executable, REPO, device="cpu", overrides=RED_IS_LESION, env=dict(os.environ))
    client.request_timeout = 3.0
    try:
        info = client.start()
        os.kill(info["pid"], signal.SIGSTOP)  # suspended: alive, silent, never answers
        photo, lesion = corner_photo()
        started = time.monotonic()
        with pytest.raises(WorkerError) as timed_out:
            client.segment(photo)
        waited = time.monotonic() - started
        assert str(timed_out.value) == (
            "the worker did not answer 'segment' within 3 s (suspended or hung?); it was stopped, and the next "
            "request starts a new one"
        )
        assert 3.0 <= waited < 3.0 + 10  # the timeout, not forever
        assert not alive(info["pid"]) and not client.running
        assert iou(client.segment(photo)["pred"], lesion) > 0.9  # a new worker answers
    finally:
        client.close()


def test_a_deeply_nested_header_is_refused_without_a_traceback(worker):
    port = worker.info["port"]
    lines_before = len(worker.lines)
    header = b"[" * 200_000 + b"]" * 200_000  # valid JSON, under the header size limit, too deep for json.loads
    with socket.create_connection((protocol.HOST, port), timeout=10) as intruder:
        intruder.sendall(struct.pack(">I", len(header)) + header)
        assert intruder.recv(1) == b""  # the connection is closed
    time.sleep(0.5)  # what the worker printed about it, if anything, has reached the client by now
    printed = list(worker.lines)[lines_before:]
    assert not [line for line in printed if "Traceback" in line or "RecursionError" in line], printed
    photo, lesion = corner_photo()
    assert iou(worker.segment(photo)["pred"], lesion) > 0.9  # the worker is unharmed


def test_segment_folder_gives_the_command_lines_mask_for_a_photo_over_2000_pixels(isic_val, tmp_path):
    from .conftest import run_bundle

    photos = tmp_path / "photos"
    photos.mkdir()
    with Image.open(isic_val / "images" / "ISIC_0012288.jpg") as original:
        large = original.convert("RGB").resize((2400, 1594), Image.BICUBIC)
    large.save(photos / "large.jpg", quality=92)
    cli = run_bundle(
        "run",
        "--config_file",
        "configs/inference.json",
        "--dataset_dir",
        str(photos),
        "--output_dir",
        str(tmp_path / "cli"),
        "--device",
        "$torch.device('cpu')",
        "--amp",
        "False",
    )
    assert cli.returncode == 0, cli.stderr[-3000:]
    (cli_mask,) = (tmp_path / "cli").rglob("large_mask.png")
    client = WorkerClient(sys.executable, REPO, device="cpu", env=dict(os.environ))
    try:
        result = client.batch(photos, tmp_path / "worker")
    finally:
        client.close()
    assert result["failures"] == []
    with Image.open(cli_mask) as expected, Image.open(tmp_path / "worker" / "large_mask.png") as got:
        assert got.size == expected.size == (2400, 1594)
        assert (np.asarray(expected) > 0).sum() > 1000  # the demo model finds the lesion
        np.testing.assert_array_equal(np.asarray(got), np.asarray(expected))


def test_closing_slicer_ends_the_worker_tree(worker):
    # Slicer crashed: nothing is sent, only the worker's standard input closes. (Last in the module: a later test
    # would get a new worker, as the cancel test's second round does.)
    worker.start()
    group, tree = worker.pid, process_tree(worker.pid)
    assert len(tree) >= 2  # launcher + interpreter
    worker._process.stdin.close()
    deadline = time.monotonic() + 30
    while any(alive(pid) for pid in tree) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not [pid for pid in tree if alive(pid)] and not in_process_group(group)
    assert not worker.running
