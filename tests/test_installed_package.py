"""``pip install .`` (a wheel, not editable) in a fresh virtual environment: the installed package carries its bundle
(configs, demo checkpoint, sample) and runs inference from any folder, from Python and with the bundle runner.

The install is a real one from the package registry (about 3 minutes here, most of it unpacking PyTorch); PyTorch is
pinned to the version of the interpreter running the tests, so that pip takes the same build (CPU or CUDA) and
source instead of resolving the newest release.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import venv
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from .conftest import REPO

pytestmark = pytest.mark.slow


def _clean_env() -> dict:
    """The test's environment without what makes this repository importable (PYTHONPATH, the active venv)."""
    drop = ("PYTHONPATH", "VIRTUAL_ENV", "PYTHONHOME")
    return {k: v for k, v in os.environ.items() if k not in drop} | {"PYTHONUNBUFFERED": "1"}


@pytest.fixture(scope="module")
def installed(tmp_path_factory):
    """(the fresh venv's python, a folder outside the repository)."""
    base = tmp_path_factory.mktemp("installed")
    source = base / "source"  # a copy, so that the build leaves nothing in the repository
    for part in ("pyproject.toml", "README.md", "LICENSE", "bundle", "configs", "sample_data", "models/demo"):
        if (REPO / part).is_dir():
            shutil.copytree(REPO / part, source / part, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            source.mkdir(exist_ok=True)
            shutil.copy2(REPO / part, source / part)
    venv.create(base / "venv", with_pip=True)
    python = base / "venv" / "bin" / "python"
    proc = subprocess.run(
        [str(python), "-m", "pip", "install", "-q", f"torch=={torch.__version__}", str(source)],
        cwd=base,
        env=_clean_env(),
        capture_output=True,
        text=True,
        timeout=1500,
    )
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    shutil.rmtree(source)
    outside = base / "elsewhere"
    outside.mkdir()
    return python, outside


def _run(python: Path, cwd: Path, *args: str) -> subprocess.CompletedProcess:
    proc = subprocess.run([str(python), *args], cwd=cwd, env=_clean_env(), capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    return proc


def test_the_installed_package_segments_with_its_own_bundle(installed, isic_val):
    python, outside = installed
    photo = sorted((isic_val / "images").iterdir())[0]
    script = (
        "import bundle, bundle.inference as i\n"
        "from bundle.inference import LesionSegmenter\n"
        f"s = LesionSegmenter(overrides={{'output_dir': {str(outside / 'python')!r}}})\n"
        f"r = s.segment({str(photo)!r})\n"
        "print(bundle.__file__); print(i.BUNDLE_ROOT); print(r['pred_path'])\n"
    )
    lines = _run(python, outside, "-c", script).stdout.strip().splitlines()
    package, root, mask = (Path(line) for line in lines[-3:])
    assert "site-packages" in package.parts and root == package.parent / "_root"
    assert (root / "configs" / "inference.json").is_file() and (root / "models" / "demo").is_dir()
    assert 0.02 < (np.asarray(Image.open(mask)) > 0).mean() < 0.98

    # the README's inference command, given the installed bundle's folder, from any working directory
    proc = _run(
        python, outside, "-m", "monai.bundle", "run", "--config_file", str(root / "configs" / "inference.json"),
        "--bundle_root", str(root), "--dataset_dir", str(photo), "--output_dir", str(outside / "cli"),
    )  # fmt: skip
    assert "segmented 1 of 1 images; 0 failed" in proc.stdout
    assert np.array_equal(np.asarray(Image.open(outside / "cli" / mask.name)), np.asarray(Image.open(mask)))


def test_a_folder_without_configs_is_one_error_naming_bundle_root(installed):
    python, outside = installed
    script = f"from bundle.inference import LesionSegmenter; LesionSegmenter(bundle_root={str(outside)!r})"
    proc = subprocess.run(
        [str(python), "-c", script],
        cwd=outside, env=_clean_env(), capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert proc.returncode != 0
    assert f"ConfigError: {outside}/configs/inference.json: no such file; bundle_root must be" in proc.stderr
