"""Nothing unsafe is loaded: every ``torch.load`` in the project passes ``weights_only=True``, a foreign or damaged
checkpoint is one line saying what the file is not (never torch's advice to retry with ``weights_only=False``),
and a crafted zip cannot write outside the folder it is unpacked into."""

from __future__ import annotations

import ast
import json
import os
import pickle
import re
import stat
import zipfile
from pathlib import Path

import pytest
import torch

from .conftest import REPO, run_bundle

CODE_FOLDERS = ("bundle", "scripts", "slicer_extension", "tests")
# `torch.load(` in a config expression, with what follows it up to the end of the JSON string
CONFIG_LOAD = re.compile(r"\btorch\.(?:serialization\.)?load\s*\(")


def _torch_load_names(tree: ast.AST) -> tuple[set[str], set[str]]:
    """Names bound to the torch module (``import torch as t``) and to torch.load itself (``from torch import load``)."""
    modules, loads = set(), set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            modules.update(alias.asname or alias.name for alias in node.names if alias.name == "torch")
        elif isinstance(node, ast.ImportFrom) and node.module in ("torch", "torch.serialization"):
            loads.update(alias.asname or alias.name for alias in node.names if alias.name == "load")
    return modules, loads


def _is_torch_load(func: ast.expr, modules: set[str], loads: set[str]) -> bool:
    if isinstance(func, ast.Name):
        return func.id in loads
    if not (isinstance(func, ast.Attribute) and func.attr == "load"):
        return False
    owner = func.value
    if isinstance(owner, ast.Attribute) and owner.attr == "serialization":
        owner = owner.value
    return isinstance(owner, ast.Name) and owner.id in modules | {"torch"}


def unsafe_torch_loads(source: str, filename: str = "<source>") -> list[str]:
    """``file:line`` of every ``torch.load`` call in Python ``source`` without a literal ``weights_only=True``."""
    tree = ast.parse(source, filename)
    modules, loads = _torch_load_names(tree)
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and _is_torch_load(node.func, modules, loads):
            safe = any(
                k.arg == "weights_only" and isinstance(k.value, ast.Constant) and k.value.value is True
                for k in node.keywords
            )
            if not safe:
                found.append(f"{filename}:{node.lineno}")
    return found


def _call_arguments(text: str, start: int) -> str:
    """The text between the parenthesis that opens at ``start - 1`` and the one that closes it."""
    depth = 1
    for index in range(start, len(text)):
        depth += {"(": 1, ")": -1}.get(text[index], 0)
        if depth == 0:
            return text[start:index]
    return text[start:]


def unsafe_config_loads(text: str, filename: str = "<config>") -> list[str]:
    """Every ``torch.load(...)`` in the string values of a JSON config without ``weights_only=True``."""
    found = []

    def strings(value):
        if isinstance(value, str):
            yield value
        elif isinstance(value, dict):
            for item in value.values():
                yield from strings(item)
        elif isinstance(value, list):
            for item in value:
                yield from strings(item)

    for expression in strings(json.loads(text)):
        for match in CONFIG_LOAD.finditer(expression):
            if not re.search(r"\bweights_only\s*=\s*True\b", _call_arguments(expression, match.end())):
                found.append(f"{filename}: {expression}")
    return found


def test_the_checks_catch_unsafe_loads():
    unsafe = """
import torch
import torch as th
from torch import load
from torch import load as read
torch.load("a.pt")
th.load("b.pt", weights_only=False)
load("c.pt", map_location="cpu")
read("d.pt", weights_only=flag)
torch.serialization.load("e.pt")
torch.load("f.pt", **options)
torch.load("ok.pt", weights_only=True)
torch.jit.load("model.ts")
"""
    assert [line.split(":")[1] for line in unsafe_torch_loads(unsafe)] == ["6", "7", "8", "9", "10", "11"]
    config = {
        "a": "$torch.load(@ckpt_path, map_location='cpu')",
        "b": ["$torch.load(@p, weights_only=True)"],
        "c": {"d": "$x.update(torch.load(f(@p), weights_only=False))"},
    }
    assert len(unsafe_config_loads(json.dumps(config))) == 2


def test_every_torch_load_in_the_project_is_weights_only():
    files = [p for folder in CODE_FOLDERS for p in sorted((REPO / folder).rglob("*.py"))]
    assert len(files) > 20
    unsafe = [hit for p in files for hit in unsafe_torch_loads(p.read_text(encoding="utf-8"), str(p.relative_to(REPO)))]
    configs = sorted((REPO / "configs").glob("*.json"))
    unsafe += [hit for p in configs for hit in unsafe_config_loads(p.read_text(encoding="utf-8"), p.name)]
    assert not unsafe, "torch.load without weights_only=True:\n" + "\n".join(unsafe)


# --- foreign and damaged checkpoints ------------------------------------------------------------------------------


class RunsCode:
    """Unpickling this runs a command: what a malicious checkpoint holds."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def foreign_checkpoints(folder: Path) -> dict[str, str]:
    """Files that are not checkpoints of weights, by name, with what the message must say (empty and truncated
    files: ``tests/test_checkpoint.py``)."""
    folder.mkdir(parents=True, exist_ok=True)
    torch.save({"model": {"w": torch.zeros(2)}, "x": RunsCode(folder / "ran")}, folder / "runs_code.pt")
    with open(folder / "plain_pickle.pt", "wb") as handle:
        pickle.dump({"w": [1.0, 2.0]}, handle)
    torch.jit.script(torch.nn.Linear(2, 2)).save(str(folder / "model.ts"))
    with zipfile.ZipFile(folder / "archive.pt", "w") as archive:
        archive.writestr("notes.txt", "hello")
    (folder / "photo.pt").write_bytes((REPO / "sample_data" / "images" / "synthetic_000.jpg").read_bytes())
    torch.save({"optimizer": {"lr": 0.1}}, folder / "no_weights.pt")
    return {
        "runs_code.pt": "refused, since loading them could run code",
        "plain_pickle.pt": "not a PyTorch checkpoint",
        "model.ts": "a TorchScript program (like model.ts), not a checkpoint of weights",
        "archive.pt": "a zip archive that is not a PyTorch checkpoint",
        "photo.pt": "not a PyTorch checkpoint",
        "no_weights.pt": "holds no state_dict",
    }


def test_foreign_checkpoints_are_named_and_never_loaded_unsafely(tmp_path):
    from bundle.checkpoint import load_weights
    from bundle.errors import CheckpointError

    for name, expected in foreign_checkpoints(tmp_path).items():
        with pytest.raises(CheckpointError) as caught:
            load_weights(torch.nn.Linear(8, 8), tmp_path / name)
        message = str(caught.value)
        assert message.startswith(f"{tmp_path / name}: ") and expected in message, message
        assert "weights_only" not in message and "\n" not in message, message
    assert not (tmp_path / "ran").exists()


@pytest.mark.slow
def test_a_foreign_checkpoint_is_one_line_on_the_command_line(tmp_path):
    expected = foreign_checkpoints(tmp_path)
    for name in ("model.ts", "runs_code.pt"):
        proc = run_bundle(
            "run", "--config_file", "configs/inference.json", "--ckpt_path", str(tmp_path / name),
            "--dataset_dir", str(REPO / "sample_data" / "images"), "--output_dir", str(tmp_path / "out"),
        )  # fmt: skip
        assert proc.returncode == 2, proc.stderr[-3000:]
        assert "Traceback" not in proc.stderr and "weights_only" not in proc.stderr, proc.stderr[-3000:]
        errors = [line for line in proc.stderr.splitlines() if line.startswith("ERROR")]
        assert len(errors) == 1 and errors[0].startswith(f"ERROR {tmp_path / name}: "), errors
        assert expected[name] in errors[0], errors
    assert not (tmp_path / "ran").exists() and not (tmp_path / "out").exists()


# --- crafted zips --------------------------------------------------------------------------------------------------


def _crafted_zip(path: Path, member: str, symlink: bool = False) -> Path:
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("data/images/ok.jpg", b"fine")
        info = zipfile.ZipInfo(member)
        if symlink:
            info.external_attr = (stat.S_IFLNK | 0o777) << 16
        archive.writestr(info, "/etc/passwd" if symlink else b"escaped")
    return path


@pytest.mark.parametrize(
    "member, symlink",
    [
        ("../escaped.txt", False),
        ("data/../../escaped.txt", False),
        ("/tmp/escaped_abs.txt", False),
        ("data/link", True),
        ("C:/escaped.txt", False),
        ("data\\..\\..\\escaped.txt", False),
    ],
)
def test_prepare_data_refuses_a_zip_member_that_escapes(tmp_path, member, symlink):
    from scripts.downloads import extract_zip

    archive = _crafted_zip(tmp_path / "crafted.zip", member, symlink)
    out = tmp_path / "deep" / "out"
    before = set(tmp_path.rglob("*"))
    with pytest.raises(ValueError, match=re.escape(repr(member))):
        extract_zip(archive, out)
    written = set(tmp_path.rglob("*")) - before
    assert not [p for p in written if p.is_file()], written  # refused before anything was written
    assert not Path("/tmp/escaped_abs.txt").exists()


def test_prepare_data_unpacks_a_plain_zip(tmp_path):
    archive = tmp_path / "plain.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        zf.writestr("set/images/a.jpg", b"a")
        zf.writestr("set/masks/a.png", b"bb")
    from scripts.downloads import extract_zip

    extract_zip(archive, tmp_path / "out")
    assert (tmp_path / "out" / "set" / "masks" / "a.png").read_bytes() == b"bb"
