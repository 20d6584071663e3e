"""Generate ``sample_data/``: a small synthetic dermoscopy-like set that the default training config runs on.

Each image is a pigmented lesion on skin: a skin-toned, textured, unevenly lit background; an irregular lesion with
a fuzzy border, a darker core, blotches and dots; dark curved hairs crossing skin and lesion; and, in some images,
the dark round field of view of a dermatoscope. The lesion covers from about 2% to 70% of the image, spread
log-uniformly, because the paper's Fig. 4 shows lesion shares that vary that widely (the point of the Adapt Exp
loss). Image sizes differ, so the pipeline's resizing is exercised. Masks are single-channel PNGs holding 0 and 255;
a mask marks the lesion under the hairs too, like the ISIC ground truth.

The output is a pure function of ``seed`` (numpy's PCG64 streams, Pillow's encoders), so running

    python -m scripts.make_sample_data --out sample_data

regenerates the committed files byte for byte with the pinned numpy/Pillow.
"""

from __future__ import annotations

from pathlib import Path

import fire
import numpy as np
from PIL import Image, ImageDraw
from scipy import ndimage

from bundle.data import write_datalist

# (width, height): landscape like most dermatoscopes, plus portrait and square frames.
IMAGE_SIZES = ((320, 240), (240, 320), (300, 300), (336, 252), (288, 216), (320, 256))
SPLIT_SIZES = {"training": 16, "validation": 4, "test": 4}
LESION_FRACTION_RANGE = (0.02, 0.70)
JPEG_QUALITY = 90
_HAIR_SUPERSAMPLING = 3


def _smooth_noise(rng: np.random.Generator, shape: tuple[int, int], sigma: float) -> np.ndarray:
    """Gaussian-filtered white noise rescaled to zero mean and unit standard deviation."""
    field = ndimage.gaussian_filter(rng.standard_normal(shape), sigma, mode="wrap")
    return (field - field.mean()) / (field.std() + 1e-12)


def _skin(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    """Skin background (H, W, 3) in [0, 255]: per-image tone, blotchy and fine texture, light falling off radially."""
    light, dark = np.array([238.0, 200.0, 182.0]), np.array([182.0, 128.0, 98.0])
    tone = light + rng.uniform(0.0, 1.0) * (dark - light)
    blotches = _smooth_noise(rng, (height, width), sigma=22.0)[..., None] * np.array([7.0, 8.0, 7.0])
    grain = _smooth_noise(rng, (height, width), sigma=1.0)[..., None] * 3.0
    yy, xx = np.mgrid[0:height, 0:width]
    radius2 = ((xx - width / 2) / (width / 2)) ** 2 + ((yy - height / 2) / (height / 2)) ** 2
    lighting = (1.0 - 0.08 * radius2)[..., None]
    return (tone + blotches + grain) * lighting


def _lesion_distance(rng: np.random.Generator, height: int, width: int, target_fraction: float) -> np.ndarray:
    """
    Normalised distance ``d`` (H, W) from the lesion centre: the lesion is ``d < 1``.

    The border is a star-shaped curve ``r(phi) = R (1 + sum_k a_k cos(k phi + phase_k))`` on a rotated, stretched
    frame, roughened by smooth noise; ``R`` is refined until the lesion covers ``target_fraction`` of the image.
    """
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float64)
    spread = 0.18 * (1.0 - target_fraction)  # small lesions may sit off-centre, large ones cannot
    cx = width * (0.5 + rng.uniform(-spread, spread))
    cy = height * (0.5 + rng.uniform(-spread, spread))
    angle, aspect = rng.uniform(0.0, np.pi), rng.uniform(0.65, 1.0)
    u = (xx - cx) * np.cos(angle) + (yy - cy) * np.sin(angle)
    v = ((yy - cy) * np.cos(angle) - (xx - cx) * np.sin(angle)) / aspect
    rho, phi = np.hypot(u, v), np.arctan2(v, u)
    lobes = np.ones_like(phi)
    for k in range(2, 8):
        lobes += rng.uniform(0.0, 0.16 / np.sqrt(k)) * np.cos(k * phi + rng.uniform(0.0, 2 * np.pi))
    roughness = 0.045 * _smooth_noise(rng, (height, width), sigma=5.0)
    radius = np.sqrt(target_fraction * height * width / (np.pi * aspect))
    for _ in range(6):
        distance = rho / (radius * lobes) + roughness
        covered = max(float((distance < 1.0).mean()), 1e-4)
        radius *= np.sqrt(target_fraction / covered)
    return rho / (radius * lobes) + roughness


def _paint_lesion(rng: np.random.Generator, image: np.ndarray, distance: np.ndarray) -> np.ndarray:
    """Blend a pigmented lesion into ``image``: fuzzy border, dark brown core, blotches, bluish-grey areas, dots."""
    height, width = distance.shape
    softness = rng.uniform(0.015, 0.07)
    alpha = 1.0 / (1.0 + np.exp(np.clip(-(1.0 - distance) / softness, -50, 50)))
    rim = np.array([165.0, 108.0, 76.0]) * rng.uniform(0.8, 1.05)
    core = np.array([78.0, 46.0, 34.0]) * rng.uniform(0.7, 1.15)
    depth = np.clip((1.0 - distance) / rng.uniform(0.4, 0.9), 0.0, 1.0)[..., None] ** 1.3
    colour = rim + depth * (core - rim)
    colour *= 1.0 + 0.16 * _smooth_noise(rng, (height, width), sigma=8.0)[..., None]
    if rng.uniform() < 0.5:
        veil = 0.6 * np.clip(_smooth_noise(rng, (height, width), sigma=10.0) - 1.0, 0.0, 1.0)[..., None]
        colour += veil * (np.array([126.0, 120.0, 134.0]) - colour)
    dots = np.zeros((height, width))
    inside = np.argwhere(distance < 0.85)
    if len(inside):
        dots[tuple(inside[rng.integers(0, len(inside), rng.integers(0, 40))].T)] = 1.0
    dots = np.clip(ndimage.gaussian_filter(dots, rng.uniform(0.8, 1.6)) * 12.0, 0.0, 0.8)[..., None]
    colour += dots * (np.array([42.0, 26.0, 22.0]) - colour)
    return image + alpha[..., None] * (colour - image)


def _quadratic_bezier(p0: np.ndarray, p1: np.ndarray, p2: np.ndarray, steps: int = 64) -> np.ndarray:
    t = np.linspace(0.0, 1.0, steps)[:, None]
    return (1 - t) ** 2 * p0 + 2 * (1 - t) * t * p1 + t**2 * p2


def _hairs(rng: np.random.Generator, height: int, width: int, towards: tuple[float, float]) -> np.ndarray:
    """Coverage (H, W) in [0, 1] of dark curved hairs from edge to edge, some bent through ``towards``."""
    scale = _HAIR_SUPERSAMPLING
    canvas = Image.new("L", (width * scale, height * scale), 0)
    draw = ImageDraw.Draw(canvas)
    size = np.array([width, height], dtype=np.float64)
    for _ in range(rng.choice([0, 1, 2, 3, 4, 6], p=[0.2, 0.15, 0.2, 0.2, 0.15, 0.1])):
        start_angle = rng.uniform(0.0, 2 * np.pi)
        end_angle = start_angle + np.pi + rng.uniform(-0.8, 0.8)
        p0 = size / 2 + 0.75 * size * np.array([np.cos(start_angle), np.sin(start_angle)])
        p2 = size / 2 + 0.75 * size * np.array([np.cos(end_angle), np.sin(end_angle)])
        bend = np.array(towards) if rng.uniform() < 0.6 else size * rng.uniform(0.2, 0.8, 2)
        points = _quadratic_bezier(p0, bend + rng.normal(0.0, 0.1, 2) * size, p2) * scale
        draw.line([tuple(p) for p in points], fill=255, width=int(round(rng.uniform(1.0, 2.4) * scale)), joint="curve")
    coverage = canvas.resize((width, height), Image.Resampling.BOX)
    return np.asarray(coverage, dtype=np.float64) / 255.0


def _field_of_view(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    """Visibility (H, W): 1 inside the dermatoscope's round field of view, falling to 0 in the dark corners."""
    yy, xx = np.mgrid[0:height, 0:width]
    radius = np.hypot(xx - width / 2, yy - height / 2)
    edge = rng.uniform(0.36, 0.45) * np.hypot(width, height)
    return np.clip((edge - radius) / 10.0, 0.0, 1.0)


def make_case(seed: int, index: int, target_fraction: float) -> tuple[Image.Image, Image.Image]:
    """One synthetic (image, mask) pair: RGB image and single-channel 0/255 mask of the same size."""
    rng = np.random.default_rng([seed, index])
    width, height = IMAGE_SIZES[index % len(IMAGE_SIZES)]
    image = _skin(rng, height, width)
    distance = _lesion_distance(rng, height, width, target_fraction)
    image = _paint_lesion(rng, image, distance)
    centre = np.argwhere(distance < 0.5).mean(axis=0) if (distance < 0.5).any() else (height / 2, width / 2)
    hair = 0.9 * _hairs(rng, height, width, towards=(centre[1], centre[0]))[..., None]
    image += hair * (np.array([44.0, 32.0, 26.0]) - image)
    if rng.uniform() < 0.5:
        image *= _field_of_view(rng, height, width)[..., None]
    mask = np.where(distance < 1.0, 255, 0).astype(np.uint8)
    rgb = np.clip(np.round(image), 0, 255).astype(np.uint8)
    return Image.fromarray(rgb, "RGB"), Image.fromarray(mask, "L")


def make_sample_data(out: str = "sample_data", seed: int = 0) -> Path:
    """
    Write the synthetic set to ``out``: ``images/*.jpg``, ``masks/*.png``, ``datalist.json`` and a README.

    Args:
        out: output folder (created if needed; files of the same names are overwritten).
        seed: generator seed; the committed ``sample_data/`` is seed 0.

    Returns:
        The path of the datalist written.
    """
    root = Path(str(out))
    (root / "images").mkdir(parents=True, exist_ok=True)
    (root / "masks").mkdir(parents=True, exist_ok=True)
    count = sum(SPLIT_SIZES.values())
    fractions = np.random.default_rng(seed).permutation(np.geomspace(*LESION_FRACTION_RANGE, count))
    items = []
    for index, fraction in enumerate(fractions):
        image, mask = make_case(seed, index, float(fraction))
        name = f"synthetic_{index:03d}"
        image.save(root / "images" / f"{name}.jpg", quality=JPEG_QUALITY)
        mask.save(root / "masks" / f"{name}.png")
        items.append({"image": str(root / "images" / f"{name}.jpg"), "label": str(root / "masks" / f"{name}.png")})
    splits, start = {}, 0
    for key, size in SPLIT_SIZES.items():
        splits[key] = items[start : start + size]
        start += size
    (root / "README.md").write_text(
        "# Synthetic dermoscopy-like sample data\n\n"
        f"Generated by `python scripts/make_sample_data.py --out sample_data --seed {seed}`; not real patients.\n"
        f"{count} RGB JPEGs (quality {JPEG_QUALITY}, sizes {', '.join(f'{w}x{h}' for w, h in IMAGE_SIZES)}) with "
        "single-channel PNG masks holding 0 (skin) and 255 (lesion); the lesion covers "
        f"{LESION_FRACTION_RANGE[0]:.0%} to {LESION_FRACTION_RANGE[1]:.0%} of an image. `datalist.json` splits them "
        + "/".join(str(s) for s in SPLIT_SIZES.values())
        + " into training/validation/test, with paths relative to this folder.\n",
        encoding="utf-8",
    )
    return write_datalist(root / "datalist.json", splits, root)


if __name__ == "__main__":
    fire.Fire(make_sample_data)
