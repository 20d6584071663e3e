"""``scripts/monailabel_serve.sh`` checks its arguments before it creates anything, and says how to name the venv.

No server starts here (``tests/test_monailabel.py`` starts one); each case runs the script in an empty folder.
"""

from __future__ import annotations

import os
import subprocess
import zipfile
from pathlib import Path

import pytest

from .monailabel_server import SERVE_SCRIPT, missing_venv_reason, monailabel_venv


def serve(cwd: Path, *args: str, venv: Path | None = None) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "RFE_MONAILABEL_VENV"}
    if venv is not None:
        env["RFE_MONAILABEL_VENV"] = str(venv)
    return subprocess.run(["bash", str(SERVE_SCRIPT), *args], cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=120)  # fmt: skip


def one_error_line(proc: subprocess.CompletedProcess) -> str:
    assert proc.returncode != 0 and "Traceback" not in proc.stderr, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("ERROR "), proc.stderr
    return lines[0]


def test_a_venv_that_is_not_there_is_named_with_both_ways_to_name_one(tmp_path):
    (tmp_path / "photos").mkdir()
    built_elsewhere = tmp_path / "my-monailabel-venv"
    line = one_error_line(serve(tmp_path, "bundle.zip", "photos", venv=built_elsewhere))
    assert line.startswith(f"ERROR {built_elsewhere} (from RFE_MONAILABEL_VENV): not a MONAI Label venv"), line
    assert "--venv DIR" in line and "RFE_MONAILABEL_VENV=DIR" in line and "setup_monailabel_venv.sh" in line
    line = one_error_line(serve(tmp_path, "--venv", str(built_elsewhere), "bundle.zip", "photos"))
    assert line.startswith(f"ERROR {built_elsewhere} (from --venv): not a MONAI Label venv"), line
    assert sorted(p.name for p in tmp_path.iterdir()) == ["photos"]  # nothing created


def test_bad_arguments_create_nothing(tmp_path):
    venv = monailabel_venv()
    if missing_venv_reason(venv):
        pytest.skip(missing_venv_reason(venv))
    (tmp_path / "photos").mkdir()
    (tmp_path / "notes.txt").write_text("not a zip")
    with zipfile.ZipFile(tmp_path / "two_tops.zip", "w") as archive:
        archive.writestr("a/configs/train.json", "{}")
        archive.writestr("b/configs/train.json", "{}")
    with zipfile.ZipFile(tmp_path / "escaping.zip", "w") as archive:
        archive.writestr("bundle/../../outside.txt", "x")
    before = sorted(p.name for p in tmp_path.iterdir())
    cases = {
        ("notes.txt", "photos"): "ERROR notes.txt: not a zip file",
        ("two_tops.zip", "photos"): "ERROR two_tops.zip: a bundle zip holds one top folder, this one has ['a', 'b']",
        ("escaping.zip", "photos"): "ERROR escaping.zip: member 'bundle/../../outside.txt' would be written outside",
        ("absent.zip", "photos"): "ERROR absent.zip: no such bundle zip",
        ("two_tops.zip", "no_photos"): "ERROR no_photos: no such folder of photographs",
        ("--port",): "ERROR --port needs a value",
        ("--port", "80a", "notes.txt", "photos"): "ERROR --port 80a: not a port number",
        ("--apps", str(tmp_path / "apps"), "notes.txt", "photos"): "ERROR notes.txt: not a zip file",
    }
    for args, expected in cases.items():
        line = one_error_line(serve(tmp_path, *args, venv=venv))
        assert line.startswith(expected), (args, line)
    assert sorted(p.name for p in tmp_path.iterdir()) == before  # no monailabel-apps/, no apps/


def test_help_lists_every_option_and_creates_nothing(tmp_path):
    proc = serve(tmp_path, "--help")
    assert proc.returncode == 0 and proc.stderr == ""
    for option in ("--apps DIR", "--host ADDR", "--port N", "--venv DIR", "RFE_MONAILABEL_VENV"):
        assert option in proc.stdout, option
    assert "set -euo" not in proc.stdout and not list(tmp_path.iterdir())
