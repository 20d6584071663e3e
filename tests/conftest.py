"""Shared test fixtures: where the repository and the shared real data live, and how to run the bundle."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import sysconfig
import time
import urllib.request
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("RFE_SHARED_DIR", REPO.parent / "shared"))
ISIC_VAL = SHARED / "data" / "isic2017_val"
# The click-guided checkpoint of the tests that need a network that answers clicks: the committed interactive demo,
# else the file RFE_CLICK_CHECKPOINT names (e.g. a fine-tuning's models/model.pt).
CLICK_DEMO = REPO / "models" / "demo" / "rfeunet_resnet34_isic2017_128_clicks.pt"


def run_bundle(
    *args: str, cwd: Path = REPO, timeout: int = 900, env: dict | None = None
) -> subprocess.CompletedProcess:
    """Run ``python -m monai.bundle <args>`` in a real process from the bundle root."""
    return subprocess.run(
        [sys.executable, "-m", "monai.bundle", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})},
    )


def script(name: str) -> list[str]:
    """``python -m scripts.<name>``, as the README types it (run it with :func:`script_env` from any folder)."""
    return [sys.executable, "-m", f"scripts.{name}"]


def script_env() -> dict:
    """This environment with the repository on PYTHONPATH, so that ``scripts`` imports from any working folder as
    from the repository's root."""
    path = os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH", "")) if p)
    return {**os.environ, "PYTHONPATH": path, "PYTHONUNBUFFERED": "1"}


def receiver_env() -> dict:
    """An environment where the installed packages import but this repository's editable ``bundle`` does not.

    Used with ``python -S``, which skips site-packages' ``.pth`` files (the editable install is one); PYTHONPATH then
    names the site-packages folders themselves, so torch, MONAI & co. still import.
    """
    paths = dict.fromkeys([sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]])
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    return {**env, "PYTHONPATH": os.pathsep.join(paths), "PYTHONUNBUFFERED": "1"}


@pytest.fixture(scope="session")
def isic_val() -> Path:
    if not (ISIC_VAL / "images").is_dir():
        pytest.skip(f"real ISIC 2017 images not found at {ISIC_VAL} (set RFE_SHARED_DIR to the shared/ folder)")
    return ISIC_VAL


@pytest.fixture(scope="session")
def click_checkpoint(tmp_path_factory) -> Path:
    """A copy of the click-guided checkpoint (:data:`CLICK_DEMO`, else ``$RFE_CLICK_CHECKPOINT``), so that the
    ONNX copy the fast path writes beside it stays out of the original's folder."""
    source = CLICK_DEMO if CLICK_DEMO.is_file() else Path(os.environ.get("RFE_CLICK_CHECKPOINT", "") or CLICK_DEMO)
    if not source.is_file():
        pytest.skip(f"no click-guided checkpoint: neither {CLICK_DEMO} nor $RFE_CLICK_CHECKPOINT exists")
    copy = tmp_path_factory.mktemp("click-checkpoint") / "model.pt"
    shutil.copyfile(source, copy)
    return copy


@pytest.fixture
def served_folder(tmp_path):
    """A folder served over HTTP by ``python -m http.server`` on 127.0.0.1 (a real server process)."""
    folder = tmp_path / "served"
    folder.mkdir()
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    server = subprocess.Popen(
        [sys.executable, "-m", "http.server", str(port), "--bind", "127.0.0.1", "--directory", str(folder)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=1).close()
                break
            except OSError:
                assert time.monotonic() < deadline and server.poll() is None
                time.sleep(0.05)
        yield folder, f"http://127.0.0.1:{port}"
    finally:
        server.kill()
        server.wait()
