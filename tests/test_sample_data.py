"""scripts/make_sample_data.py and the committed sample_data/: deterministic, valid, varied like the paper's data."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
from PIL import Image

from bundle.data import load_datalist
from scripts.make_sample_data import make_sample_data

REPO = Path(__file__).resolve().parents[1]
SAMPLE = REPO / "sample_data"


def tree_bytes(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_generation_is_deterministic_and_matches_the_committed_files(tmp_path):
    command = [sys.executable, str(REPO / "scripts" / "make_sample_data.py"), "--out", str(tmp_path / "a")]
    subprocess.run(command, check=True, capture_output=True, timeout=120)
    make_sample_data(out=str(tmp_path / "b"))
    first, second = tree_bytes(tmp_path / "a"), tree_bytes(tmp_path / "b")
    assert len(first) == 24 * 2 + 2  # images, masks, datalist.json, README.md
    assert first == second
    committed = tree_bytes(SAMPLE)
    differing = sorted(name for name in first.keys() | committed.keys() if first.get(name) != committed.get(name))
    assert not differing, (
        f"sample_data/ differs from a fresh `python scripts/make_sample_data.py --out sample_data` in {differing[:5]} "
        "(a different numpy/Pillow/libjpeg can change the bytes: regenerate and commit)"
    )


def test_sample_datalist_loads_with_existing_pairs():
    splits = {key: load_datalist(SAMPLE, key=key) for key in ("training", "validation", "test")}
    assert [len(items) for items in splits.values()] == [16, 4, 4]
    names = [Path(item["image"]).stem for items in splits.values() for item in items]
    assert len(set(names)) == 24
    for items in splits.values():
        for item in items:
            assert Path(item["image"]).stem == Path(item["label"]).stem
    assert sum(p.stat().st_size for p in SAMPLE.rglob("*") if p.is_file()) < 1_000_000


def test_images_and_masks_look_like_the_task():
    fractions, sizes = [], set()
    items = [item for key in ("training", "validation", "test") for item in load_datalist(SAMPLE, key=key)]
    for item in items:
        image, mask = Image.open(item["image"]), Image.open(item["label"])
        assert image.format == "JPEG" and image.mode == "RGB"
        assert mask.format == "PNG" and mask.mode == "L" and mask.size == image.size
        values = np.asarray(mask)
        assert set(np.unique(values)) == {0, 255}
        lesion = values == 255
        fractions.append(lesion.mean())
        sizes.add(image.size)
        # A pigmented lesion: darker than the skin around it (the dermatoscope's black corners left aside).
        luminance = np.asarray(image.convert("L"), dtype=np.float64)
        assert luminance[lesion].mean() < luminance[~lesion & (luminance > 40)].mean() - 20
    assert len(sizes) >= 3 and any(w != h for w, h in sizes) and any(w < h for w, h in sizes)
    # The paper's Fig. 4: lesion shares vary widely between images.
    assert min(fractions) < 0.03 and max(fractions) > 0.6
    assert sum(f < 0.1 for f in fractions) >= 6 and sum(f > 0.3 for f in fractions) >= 4
