"""The exported bundle served by MONAI Label's stock ``monaibundle`` app, driven over HTTP the way 3D Slicer's
MONAI Label module drives it: info, inference with the module's parameters, label upload, training, inference again;
then the wrong turns (an unknown image id, a corrupt photo, labels of another size or not images, too few labels),
each of which must end as the bundle's one line in the server log and in ``GET /train/``, leaving the model alone.
All tests share one server (a start costs a minute or more). The interactive bundle (``export_bundle.py
--interactive true``) gets a server of its own, with a click-guided checkpoint: MONAI Label lists it as a DeepEdit
model beside its automatic twin, and Slicer's points (a background point in a false lesion region, a lesion point in
a missed one) change the mask there.

Needs the MONAI Label venv (``scripts/setup_monailabel_venv.sh``; ``.ci/run`` builds it) and the real ISIC photos.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from .conftest import REPO
from .monailabel_server import MonaiLabelServer, can_isolate_network, missing_venv_reason
from .small_bundle import SMALL_NETWORK, copy_bundle, export_zip, small_bundle

pytestmark = pytest.mark.slow

NAME = "rfe_unet_skin_lesion"
PHOTOS = ("ISIC_0001769", "ISIC_0001852", "ISIC_0003462")  # datastore order: the last one is validation
# for the wrong turns: with PHOTOS, six photos whose labels sort so that MONAI Label validates on the last one
TRANSPOSED, HALF_SIZE, LAST = "ISIC_0001871", "ISIC_0003539", "ISIC_0003657"
CORRUPT = "corrupt_photo"
SLICER_INFER_PARAMS = {"result_extension": ".nrrd", "result_dtype": "uint8", "result_compress": False}
# the interactive bundle: MONAI Label serves <name>_deepedit as a DeepEdit model and <name>_deepedit_seg
INTERACTIVE = f"{NAME}_deepedit"
LABELS = {NAME: {"lesion": 1}, f"{INTERACTIVE}_seg": {"lesion": 1}, INTERACTIVE: {"background": 0, "lesion": 1}}


@pytest.fixture(scope="module")
def server(tmp_path_factory, isic_val):
    reason = missing_venv_reason()
    if reason:
        pytest.skip(reason)
    base = tmp_path_factory.mktemp("monailabel")
    zip_path = export_zip(small_bundle(base / "bundle"), base / "dist")
    studies = base / "studies"
    studies.mkdir()
    for stem in (*PHOTOS, TRANSPOSED, HALF_SIZE, LAST):
        shutil.copy(isic_val / "images" / f"{stem}.jpg", studies)
    (studies / f"{CORRUPT}.jpg").write_bytes((isic_val / "images" / f"{PHOTOS[0]}.jpg").read_bytes()[:6000])
    served = MonaiLabelServer(zip_path, studies, base / "apps", isolate_network=can_isolate_network())
    served.start()
    yield served
    assert served.stop() == [], "processes left behind"


def _infer(server: MonaiLabelServer, image: str, model: str = NAME, points: dict | None = None) -> np.ndarray:
    """POST /infer like Slicer's module; return the label as a numpy (H, W) array, checking the file's geometry.

    ``points``: what the module adds for an interactive model, e.g. ``{"lesion": [[i, j, 0]], "background": []}``.
    """
    import nrrd

    params = {**SLICER_INFER_PARAMS, **(points or {})}
    reply = server.request("POST", server.query(f"/infer/{model}", image=image), fields={"params": json.dumps(params)})
    assert reply.status == 200, f"{reply.body[:2000]!r}\n{server.log_tail()}"
    parts = reply.parts()
    assert json.loads(parts["params"][1])["label_names"] == LABELS[model]
    filename, content = parts["image"]
    assert filename.endswith(".nrrd")
    path = server.apps_dir / "reply.nrrd"
    path.write_bytes(content)
    label, header = nrrd.read(str(path), index_order="C")
    width, height = Image.open(server.studies / f"{image}.jpg").size
    assert header["dimension"] == 2 and list(header["sizes"]) == [width, height]  # 2D, the photo's own size
    assert np.array_equal(header.get("space directions", np.eye(2)), np.eye(2))
    assert np.array_equal(header.get("space origin", np.zeros(2)), np.zeros(2))
    assert label.dtype == np.uint8 and set(np.unique(label)) <= {0, 1}
    return label


def _bundle_dir(server: MonaiLabelServer) -> Path:
    """Where the serve script installed the bundle in the app."""
    return server.apps_dir / "monaibundle" / "model" / NAME


def _bundle_inference(bundle_dir: Path, photo: Path, output_dir: Path) -> np.ndarray:
    """The bundle's own inference (its configs/inference.json and checkpoint) on ``photo``, as an (H, W) 0/1 array."""
    from bundle.inference import LesionSegmenter

    result = LesionSegmenter(bundle_root=bundle_dir, overrides={"output_dir": str(output_dir)}).segment(photo)
    return (np.asarray(Image.open(result["pred_path"])) > 0).astype(np.uint8)


def test_info_lists_the_2d_lesion_model(server):
    info = server.json("GET", "/info/")
    model = info["models"][NAME]
    assert model["dimension"] == 2
    assert model["labels"] == {"lesion": 1} and info["labels"] == ["lesion"]
    assert NAME in info["trainers"]
    assert not [name for name in info["models"] if name.startswith("sam")]


def test_server_listens_only_on_loopback_and_has_no_network(server):
    assert server.listening_addresses() == {("127.0.0.1", server.port)}
    if not server.isolate_network:
        pytest.skip("unshare --net is not permitted here, so the server could not be started without a network")
    interfaces = [
        line.split(":")[0].strip() for line in Path(f"/proc/{server.process.pid}/net/dev").read_text().splitlines()[2:]
    ]
    assert interfaces == ["lo"]  # it started, and answers, with nothing but loopback


def test_infer_returns_the_photo_sized_label_of_the_bundle(server, tmp_path):
    for stem in PHOTOS[:2]:
        label = _infer(server, stem)
        expected = _bundle_inference(_bundle_dir(server), server.studies / f"{stem}.jpg", tmp_path)
        assert 0.02 < expected.mean() < 0.98, "a mask of one class would make this comparison meaningless"
        assert not np.array_equal(expected, expected[::-1]) and not np.array_equal(expected, expected[:, ::-1])
        # same pixels, same orientation as the photo; the fast paths of the two venvs (BatchNorm folding without
        # onnxruntime, ONNX Runtime with it) may flip a few pixels whose lesion probability is 0.5 to ~1e-6
        differing = np.count_nonzero(label != expected)
        assert label.shape == expected.shape and differing <= 1e-4 * label.size, (stem, differing)


def test_slicer_and_png_labels_train_one_epoch_and_inference_still_works(server):
    import nibabel as nib

    from bundle.checkpoint import network_settings

    first, *others = PHOTOS
    source = Path(server.studies).parent / "masks"
    source.mkdir(exist_ok=True)
    # Slicer's module saves the labelmap as .nii.gz of shape (W, H, 1) with affine diag(-1, -1, 1)
    mask_hw = np.asarray(Image.open(_isic_mask(first))) > 127
    volume = nib.Nifti1Image(mask_hw.T[..., None].astype(np.uint8), np.diag([-1.0, -1.0, 1.0, 1.0]))
    nib.save(volume, source / f"{first}.nii.gz")
    uploads = {first: source / f"{first}.nii.gz"}
    for stem in others:  # plain 0/255 PNG masks
        uploads[stem] = _isic_mask(stem)
    for stem, path in uploads.items():
        reply = server.json(
            "PUT",
            server.query("/datastore/label", image=stem),
            fields={"params": "{}"},
            files={"label": (path.name, path.read_bytes())},
        )
        assert reply == {"image": stem, "label": stem}
    saved = sorted(p.name for p in (server.studies / "labels" / "final").iterdir())
    assert saved == [f"{first}.nii.gz", *(f"{s}.png" for s in others)]

    checkpoint = _bundle_dir(server) / "models" / "model.pt"
    before = hashlib.sha256(checkpoint.read_bytes()).hexdigest()
    # the parameters Slicer's module sends: the trainer's options as /info/ offers them, one epoch
    options = server.json("GET", "/info/")["trainers"][NAME]["config"]
    params = {key: value[0] if isinstance(value, list) else value for key, value in options.items()}
    params["max_epochs"] = 1
    task = server.json("POST", f"/train/{NAME}", json_body=params)
    assert task["status"] in ("SUBMITTED", "RUNNING", "DONE")
    status = _wait_for_training(server)
    assert status["status"] == "DONE", json.dumps(status)[-4000:] + server.log_tail()
    log = server.log_tail(200_000)
    assert "Total Records for Training: 2" in log and "Total Records for Validation: 1" in log
    assert hashlib.sha256(checkpoint.read_bytes()).hexdigest() != before
    trained = network_settings(checkpoint)
    assert (trained["backbone"], trained["image_size"]) == (SMALL_NETWORK["backbone"], SMALL_NETWORK["image_size"])

    label = _infer(server, first)  # the new weights are picked up and still give a photo-sized 2D label
    assert label.shape == np.asarray(Image.open(server.studies / f"{first}.jpg")).shape[:2]


def test_an_unknown_image_id_and_a_corrupt_photo_end_as_one_line_in_the_log(server):
    for image, line in (
        ("NO_SUCH_IMAGE", "bundle.errors.BadInputError: (empty path): no photograph to read; MONAI Label sends an "
                          "empty path when the image id of an inference request is not in its datastore"),
        (CORRUPT, f"bundle.errors.BadInputError: {server.studies / CORRUPT}.jpg: cannot decode image (image file is "
                  "truncated"),
    ):  # fmt: skip
        start = len(server.log_tail(10**9))
        reply = server.request("POST", server.query(f"/infer/{NAME}", image=image), fields={"params": "{}"})
        assert reply.status == 500  # MONAI Label answers any failed inference so; its log has the reason
        log = _log_until(server, start, "bundle.errors.")  # the server logs the error after it has answered
        assert f"'image': '{image}'" in log  # MONAI Label's own line with the request
        last = [row for row in log.splitlines() if row.strip() and "[INFO]" not in row][-1]
        assert last.startswith(line), log[-3000:]
        assert "During handling" not in log and "direct cause" not in log  # no chained tracebacks


def test_labels_of_another_size_are_refused_naming_each_and_the_model_is_kept(server):
    transposed = Image.open(_isic_mask(TRANSPOSED)).transpose(Image.Transpose.TRANSPOSE)
    half = Image.open(_isic_mask(HALF_SIZE))
    half = half.resize((half.width // 2, half.height // 2), Image.Resampling.NEAREST)
    _set_labels(server, {TRANSPOSED: _png(transposed), HALF_SIZE: _png(half), LAST: _isic_mask(LAST).read_bytes()})
    status, lines = _train_refused(server)
    labels = server.studies / "labels" / "final"
    width, height = Image.open(server.studies / f"{TRANSPOSED}.jpg").size
    assert (
        f"{labels / TRANSPOSED}.png: mask is {height}x{width} but its photo {server.studies / TRANSPOSED}.jpg is "
        f"{width}x{height}" in "\n".join(lines)
    )
    assert f"{labels / HALF_SIZE}.png: mask is {half.width}x{half.height} but its photo" in "\n".join(lines)
    assert lines[-1].startswith("ERROR 2 bad pair(s) in the training split: "), lines


def test_a_label_that_is_not_an_image_is_named_in_one_line(server):
    good = {stem: _isic_mask(stem).read_bytes() for stem in (PHOTOS[1], LAST)}
    _set_labels(server, {**good, HALF_SIZE: None, TRANSPOSED: b"<html>a web page saved as a label</html>\n" * 20})
    status, lines = _train_refused(server)
    label = server.studies / "labels" / "final" / f"{TRANSPOSED}.png"
    assert lines[-1].startswith(f"ERROR 1 bad pair(s) in the training split: {label}: not an image file"), lines


def test_fewer_than_three_labels_give_the_validation_message_in_the_training_status(server):
    _set_labels(server, dict.fromkeys((*PHOTOS[1:], TRANSPOSED, HALF_SIZE, LAST)))
    _set_labels(server, {PHOTOS[0]: _isic_mask(PHOTOS[0]).read_bytes()})
    status, lines = _train_refused(server)
    assert lines[-1].startswith(
        "ERROR no validation pairs: nothing would choose models/model.pt. In MONAI Label, label at least 3 images"
    ), lines


def test_stopping_leaves_no_process(server):
    pids = server.group_pids()
    assert server.process.pid in pids
    assert server.stop() == []
    assert server.process.returncode is not None


def _isic_mask(stem: str) -> Path:
    from .conftest import ISIC_VAL

    return ISIC_VAL / "masks" / f"{stem}.png"


def _png(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, "PNG")
    return buffer.getvalue()


def _set_labels(server: MonaiLabelServer, labels: dict[str, bytes | None]) -> None:
    """Submit (bytes, as a .png) or delete (None) the final label of each image, as Slicer's module does; a label
    already there is deleted first (another format's file would stay beside the new one)."""
    for stem, content in labels.items():
        if list((server.studies / "labels" / "final").glob(f"{stem}.*")):
            server.json("DELETE", server.query("/datastore/label", id=stem, tag="final"))
        if content is None:
            continue
        reply = server.json(
            "PUT", server.query("/datastore/label", image=stem), fields={"params": "{}"},
            files={"label": (f"{stem}.png", content)},
        )  # fmt: skip
        assert reply == {"image": stem, "label": stem}


def _train_refused(server: MonaiLabelServer) -> tuple[dict, list[str]]:
    """Request one epoch of training that the bundle must refuse: the status, and the output lines it returns.

    The refusal is the last line ``GET /train/`` gives, one line, no traceback; it is in the server log too, and
    ``models/model.pt`` is unchanged.
    """
    checkpoint = _bundle_dir(server) / "models" / "model.pt"
    before = hashlib.sha256(checkpoint.read_bytes()).hexdigest()
    server.json("POST", f"/train/{NAME}", json_body={"max_epochs": 1, "val_split": 0.2, "device": "cpu"})
    status = _wait_for_training(server)
    lines = list(status.get("details", []))
    assert status["status"] == "ERROR", json.dumps(status)[-4000:]
    assert lines and lines[-1].startswith("ERROR ") and not any("Traceback" in line for line in lines), lines
    assert lines[-1] in server.log_tail(200_000)
    assert hashlib.sha256(checkpoint.read_bytes()).hexdigest() == before
    return status, lines


def _log_until(server: MonaiLabelServer, start: int, text: str, timeout: float = 60.0) -> str:
    """The server's log from character ``start`` on, once it holds a line starting with ``text``."""
    import time

    deadline = time.monotonic() + timeout
    while True:
        log = server.log_tail(10**9)[start:]
        if any(line.startswith(text) for line in log.splitlines()) or time.monotonic() > deadline:
            return log
        time.sleep(0.5)


def _wait_for_training(server: MonaiLabelServer, timeout: float = 600.0) -> dict:
    import time

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        status = server.json("GET", server.query("/train/", check_if_running="false"))
        if status.get("status") not in ("SUBMITTED", "RUNNING"):
            return status
        time.sleep(2.0)
    raise AssertionError(f"training did not finish within {timeout:.0f} s:\n{server.log_tail()}")


# -- the interactive bundle -------------------------------------------------------------------------------------------
# Photos whose automatic mask, with the click-guided checkpoint, has a false lesion region (a background point removes
# it) or misses a lesion region (a lesion point adds it), found by running the model; each test uses the first one
# whose region is deep enough to click inside, so that another click-guided checkpoint needs no new list.
FALSE_REGION_PHOTOS = ("ISIC_0012159", "ISIC_0012127", "ISIC_0012959")
MISSED_REGION_PHOTOS = ("ISIC_0010459", "ISIC_0014611", "ISIC_0014055")
NO_POINTS = {"lesion": [], "background": [], "label": "lesion"}  # what the Slicer module sends before any point


@pytest.fixture(scope="module")
def clicks_checkpoint() -> Path:
    """The click-guided checkpoint the interactive server ships: the committed interactive demo
    (configs/inference.json's ``interactive_demo_ckpt_path``), else the checkpoint ``$RFE_INTERACTIVE_CKPT`` names."""
    demo = _interactive_demo(REPO)
    if demo.is_file():
        return demo
    given = os.environ.get("RFE_INTERACTIVE_CKPT")
    if given and Path(given).is_file():
        return Path(given)
    pytest.skip(f"no click-guided checkpoint: {demo} is not there and RFE_INTERACTIVE_CKPT names no file")


@pytest.fixture(scope="module")
def interactive_server(tmp_path_factory, isic_val, clicks_checkpoint):
    """A server of the interactive bundle exported as on a fresh clone: the checkpoint is the interactive demo."""
    reason = missing_venv_reason()
    if reason:
        pytest.skip(reason)
    base = tmp_path_factory.mktemp("monailabel_interactive")
    root = copy_bundle(base / "bundle")
    demo = _interactive_demo(root)
    demo.parent.mkdir(parents=True)
    shutil.copy(clicks_checkpoint, demo)
    zip_path = export_zip(root, base / "dist", "--interactive", "true")
    assert zip_path.name.startswith(f"{INTERACTIVE}_v")
    studies = base / "studies"
    studies.mkdir()
    for stem in dict.fromkeys((*FALSE_REGION_PHOTOS, *MISSED_REGION_PHOTOS)):
        shutil.copy(isic_val / "images" / f"{stem}.jpg", studies)
    served = MonaiLabelServer(zip_path, studies, base / "apps", isolate_network=can_isolate_network())
    served.start()
    yield served
    assert served.stop() == [], "processes left behind"


def test_info_lists_the_deepedit_model_and_its_automatic_twin(interactive_server):
    info = interactive_server.json("GET", "/info/")
    deepedit, automatic = info["models"][INTERACTIVE], info["models"][f"{INTERACTIVE}_seg"]
    assert (deepedit["type"], deepedit["dimension"], deepedit["labels"]) == ("deepedit", 2, LABELS[INTERACTIVE])
    assert (automatic["type"], automatic["dimension"]) == ("segmentation", 2)
    assert automatic["labels"] == LABELS[f"{INTERACTIVE}_seg"]
    # the Slicer module makes a segment per label and, for a DeepEdit model, sends each segment's points by its name
    assert sorted(info["labels"]) == ["background", "lesion"]
    assert INTERACTIVE in info["trainers"]


def test_a_background_point_in_a_false_lesion_region_removes_it(interactive_server):
    stem, reference, region, (row, column) = _error_region(interactive_server, FALSE_REGION_PHOTOS, missed=False)
    points = {**NO_POINTS, "background": [[column, row, 0]]}  # Slicer's [i, j, k]: column, row, slice
    clicked = _infer(interactive_server, stem, INTERACTIVE, points)
    truth = _truth(stem)
    assert clicked[row, column] == 0, stem
    assert clicked[region].mean() < 0.5, (stem, clicked[region].mean())  # most of the false region is gone
    assert _iou(clicked, truth) > _iou(reference, truth), stem
    # the automatic twin ignores points: MONAI Label tells it so (use_click false)
    assert np.array_equal(_infer(interactive_server, stem, f"{INTERACTIVE}_seg", points), reference)


def test_a_lesion_point_in_a_missed_region_adds_it(interactive_server):
    stem, reference, region, (row, column) = _error_region(interactive_server, MISSED_REGION_PHOTOS, missed=True)
    clicked = _infer(interactive_server, stem, INTERACTIVE, {**NO_POINTS, "lesion": [[column, row, 0]]})
    truth = _truth(stem)
    assert clicked[row, column] == 1, stem
    disk_area = np.pi * _disk_radius(interactive_server, truth.shape) ** 2
    added = int(clicked[region].sum())
    assert added > 2 * disk_area, (stem, added, disk_area)  # the lesion grows there, well beyond the click's disk
    assert _iou(clicked, truth) > _iou(reference, truth), stem


def _interactive_demo(bundle_root: Path) -> Path:
    """Where the bundle at ``bundle_root`` keeps its interactive demo checkpoint (``interactive_demo_ckpt_path``)."""
    from monai.bundle import ConfigParser

    parser = ConfigParser()
    parser.read_config(str(bundle_root / "configs" / "inference.json"))
    parser["bundle_root"] = str(bundle_root)
    return Path(parser.get_parsed_content("interactive_demo_ckpt_path"))


def _truth(stem: str) -> np.ndarray:
    return (np.asarray(Image.open(_isic_mask(stem))) > 127).astype(np.uint8)


def _iou(mask: np.ndarray, truth: np.ndarray) -> float:
    return float(np.logical_and(mask, truth).sum() / np.logical_or(mask, truth).sum())


def _disk_radius(server: MonaiLabelServer, shape: tuple[int, int]) -> float:
    """The radius of a click's disk (the network's ``click_radius`` at its working size) in a photo of ``shape``."""
    from bundle.checkpoint import network_settings

    settings = network_settings(server.apps_dir / "monaibundle" / "model" / INTERACTIVE / "models" / "model.pt")
    return settings["click_radius"] * max(shape) / settings["image_size"]


def _error_region(server: MonaiLabelServer, photos: tuple[str, ...], missed: bool):
    """The first of ``photos`` whose automatic mask (the DeepEdit model without points) has an error region (a missed
    lesion region if ``missed``, else a false one) deep enough to click well inside: the photo, that mask, the region
    and its deepest pixel (row, column)."""
    from scipy import ndimage

    for stem in photos:
        reference = _infer(server, stem, INTERACTIVE, NO_POINTS)
        truth = _truth(stem).astype(bool)
        errors = truth & ~reference.astype(bool) if missed else reference.astype(bool) & ~truth
        depth = ndimage.distance_transform_edt(np.pad(errors, 1))[1:-1, 1:-1]
        row, column = np.unravel_index(int(np.argmax(depth)), depth.shape)
        if depth[row, column] >= 2 * _disk_radius(server, errors.shape):
            regions, _ = ndimage.label(errors)
            return stem, reference, regions == regions[row, column], (int(row), int(column))
    pytest.fail(f"none of {photos} has a {'missed' if missed else 'false'} lesion region twice as deep as a click's "
                "disk with this checkpoint: add a photo where it has one")  # fmt: skip
