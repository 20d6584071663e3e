"""README's "My own photos, step by step", run as written on real ISIC 2017 photographs (only the epochs shortened
and ``~/derm`` put in a temporary folder), from a copy of the bundle as a clone has it: the demo model, nothing
trained."""

from __future__ import annotations

import json
import shlex
import shutil
import subprocess
import sys

import pytest
from PIL import Image

from .conftest import REPO
from .small_bundle import copy_bundle

pytestmark = pytest.mark.slow


def walkthrough_commands() -> list[str]:
    """The commands of the README section, continuation lines joined."""
    text = (REPO / "README.md").read_text(encoding="utf-8")
    section = text.split("### My own photos, step by step", 1)[1].split("\n#", 1)[0]
    block = "\n".join(line[4:] for line in section.splitlines() if line.startswith("    "))
    commands = block.replace("\\\n", " ").splitlines()
    return [" ".join(c.split()) for c in commands if c.strip() and not c.lstrip().startswith("#")]


def test_the_readme_walkthrough_has_the_five_steps():
    commands = walkthrough_commands()
    assert len(commands) == 4 and all(c.startswith("python -m monai.bundle run") for c in commands), commands


def test_my_own_photos_walkthrough_works_as_written(isic_val, tmp_path):
    root = copy_bundle(tmp_path / "bundle")
    shutil.copytree(REPO / "models" / "demo", root / "models" / "demo")
    derm = tmp_path / "derm"
    names = sorted(p.stem for p in (isic_val / "images").glob("*.jpg"))[:14]
    # ~/derm/photos: the photos; ~/derm/data: 12 of them with their masks (IMG_x_mask.png, as step 2 names them);
    # ~/derm/new_photos: two more
    for folder in ("photos", "data/images", "data/masks", "new_photos"):
        (derm / folder).mkdir(parents=True)
    for index, name in enumerate(names):
        photo = isic_val / "images" / f"{name}.jpg"
        shutil.copy(photo, derm / "photos" / photo.name)
        if index < 12:
            shutil.copy(photo, derm / "data" / "images" / photo.name)
            shutil.copy(isic_val / "masks" / f"{name}.png", derm / "data" / "masks" / f"{name}_mask.png")
        else:
            shutil.copy(photo, derm / "new_photos" / photo.name)

    outputs = []
    for command in walkthrough_commands():
        command = command.replace("~/derm", str(derm)).replace("--max_epochs 20", "--max_epochs 1")
        argv = [sys.executable if word == "python" else word for word in shlex.split(command)]
        proc = subprocess.run(argv, cwd=root, capture_output=True, text=True, timeout=900)
        assert proc.returncode == 0, f"{command}\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
        outputs.append(proc.stdout + proc.stderr)

    # 1: a mask per photo, from the demo model
    assert sorted(p.name for p in (derm / "masks").iterdir()) == sorted(f"{n}_mask.png" for n in names)
    # 3: fine-tuned from the demo (its ResNet-34 at 128 px), into models/model.pt
    assert "Training starts from the weights of models/demo/rfeunet_resnet34_isic2017_128.pt" in outputs[1]
    assert (root / "models" / "model.pt").is_file()
    # 4: the test tenth scored with that model
    report = json.loads((derm / "eval" / "metrics.json").read_text())
    assert (root / report["scored"]["checkpoint"]).resolve() == (root / "models" / "model.pt").resolve()
    assert report["scored"]["images"] >= 1 and list((derm / "eval" / "overlays").glob("*_overlay.png"))
    # 5: the new photos' masks, at their own size
    for name in names[12:]:
        with Image.open(derm / "new_masks" / f"{name}_mask.png") as mask:
            assert mask.size == Image.open(isic_val / "images" / f"{name}.jpg").size
