"""Segmentation guided by the user's clicks: the guidance channels, the simulated user of training and evaluation.

A click-guided network takes, besides the photo's three colour channels, the channels named by its ``guidance``
setting (recorded in the checkpoint like the backbone), in the order of :data:`GUIDANCE_CHANNELS`:

- ``positive_clicks``: a disk of ``click_radius`` working-size pixels around each click on the lesion;
- ``negative_clicks``: the same for clicks on the background;
- ``previous_mask``: the mask the user sees before the click (the last prediction), at the working size.

With no clicks and no previous mask the guidance channels are zero and the network is an automatic one. Disks,
not distance maps: a disk is local (a click changes the input only near it), costs nothing to compute, and was the
better encoding in RITM's comparison (Sofiiuk et al. 2022); docs/design.md ("Interactive segmentation") has the
choices. Coordinates: a click is ``(x, y)`` = (column, row) in the photo's pixels as displayed, which is also the
(W, H) index order of the bundle's arrays.

:func:`next_click` is the standard simulated user of interactive segmentation (RITM, SimpleClick): click the point
of the largest error region farthest from its border; positive where the lesion was missed, negative where
background was called lesion. :class:`ClickSimulation` uses it, with some randomness, during training.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch
from monai.config import KeysCollection
from monai.data import MetaTensor
from monai.transforms import MapTransform, Transform
from scipy import ndimage

from bundle.errors import ConfigError

__all__ = [
    "GUIDANCE_CHANNELS",
    "AddGuidanced",
    "ClickSimulation",
    "ClicksFromPointsd",
    "click_disks",
    "guidance_names",
    "next_click",
    "working_clicks",
]

logger = logging.getLogger(__name__)

GUIDANCE_CHANNELS = ("positive_clicks", "negative_clicks", "previous_mask")
IMAGE_CHANNELS = 3
Click = tuple[float, float]


def guidance_names(value: Any) -> list[str]:
    """The guidance channels a setting names (a list, or a comma-separated string; empty for an automatic network).

    Raises:
        ConfigError: a name that is not one of :data:`GUIDANCE_CHANNELS`, or one named twice.
    """
    names = [n.strip() for n in value.split(",")] if isinstance(value, str) else [str(n) for n in value or ()]
    names = [n for n in names if n]
    for name in names:
        if name not in GUIDANCE_CHANNELS:
            raise ConfigError(f"guidance: {name!r} is not one of {', '.join(GUIDANCE_CHANNELS)}")
    if len(set(names)) != len(names):
        raise ConfigError(f"guidance: {value!r} names a channel twice")
    return [n for n in GUIDANCE_CHANNELS if n in names]


def click_disks(clicks: Sequence[Click], size: Sequence[int], radius: float) -> torch.Tensor:
    """A (W, H) float map: 1 within ``radius`` pixels of any click (``(x, y)`` in the map's own pixels), else 0."""
    width, height = (int(s) for s in size)
    disks = torch.zeros(width, height)
    if not len(clicks):
        return disks
    xs = torch.arange(width, dtype=torch.float32)[:, None]
    ys = torch.arange(height, dtype=torch.float32)[None, :]
    for x, y in clicks:
        disks = torch.maximum(disks, (((xs - float(x)) ** 2 + (ys - float(y)) ** 2) <= radius**2).float())
    return disks


def working_clicks(clicks: Sequence[Sequence[float]], photo_size: Sequence[int], working_size: Sequence[int]):
    """Clicks ``(x, y)`` in the photo's pixels → the working image's pixels (pixel centres map onto each other).

    Clicks outside the photo are left out with a warning (a point placed beside the photo in a viewer).
    """
    (photo_w, photo_h), (work_w, work_h) = ([float(v) for v in s] for s in (photo_size, working_size))
    mapped = []
    for click in clicks:
        x, y = float(click[0]), float(click[1])
        if not (-0.5 <= x < photo_w - 0.5 and -0.5 <= y < photo_h - 0.5):
            logger.warning("Click (%g, %g) is outside the %dx%d photo; ignored.", x, y, photo_w, photo_h)
            continue
        mapped.append(((x + 0.5) * work_w / photo_w - 0.5, (y + 0.5) * work_h / photo_h - 0.5))
    return mapped


def _previous_at(previous: Any, size: Sequence[int]) -> torch.Tensor:
    """A (W, H) mask or lesion probability of any size → a 0/1 (W, H) map of ``size`` (area average, then > 0.5)."""
    value = torch.as_tensor(np.asarray(previous, dtype=np.float32))
    value = value.reshape(value.shape[-2:]) if value.dim() > 2 else value
    if tuple(value.shape) != tuple(int(s) for s in size):
        value = torch.nn.functional.interpolate(value[None, None], tuple(int(s) for s in size), mode="area")[0, 0]
    return (value > 0.5).float()


class AddGuidanced(MapTransform):
    """Append the guidance channels of a click-guided network to the preprocessed ``image`` (3, w, h).

    ``data[clicks_key]`` is ``{"positive": [[x, y], ...], "negative": [...]}`` in the photo's pixels as displayed
    (the ``spatial_shape`` :class:`~bundle.transforms.LoadPhoto` recorded); ``data[previous_key]`` is the previous
    (W, H) mask or probability at the photo's size (or at the working size). Either may be absent: no clicks, no
    previous mask. With ``guidance`` empty (an automatic network) the image passes unchanged.

    Args:
        keys: the image key.
        guidance: the channel names (see :data:`GUIDANCE_CHANNELS`).
        click_radius: disk radius in working-size pixels.
    """

    def __init__(
        self,
        keys: KeysCollection = "image",
        guidance: Sequence[str] = (),
        click_radius: float = 3.0,
        clicks_key: str = "clicks",
        previous_key: str = "previous",
    ) -> None:
        super().__init__(keys)
        self.guidance = guidance_names(guidance)
        self.radius = float(click_radius)
        self.clicks_key, self.previous_key = clicks_key, previous_key

    def channels(self, clicks: Mapping[str, Sequence[Click]], previous: Any, size: Sequence[int]) -> torch.Tensor:
        """The (G, w, h) guidance for clicks already in working pixels and a previous mask (or None)."""
        maps = {
            "positive_clicks": lambda: click_disks(clicks.get("positive", ()), size, self.radius),
            "negative_clicks": lambda: click_disks(clicks.get("negative", ()), size, self.radius),
            "previous_mask": lambda: torch.zeros(tuple(size)) if previous is None else _previous_at(previous, size),
        }
        return torch.stack([maps[name]() for name in self.guidance]) if self.guidance else torch.zeros(0, *size)

    def __call__(self, data):
        if not self.guidance:
            return data
        d = dict(data)
        for key in self.key_iterator(d):
            image = d[key]
            size = image.shape[-2:]
            photo_size = image.meta.get("spatial_shape", size) if isinstance(image, MetaTensor) else size
            given = d.get(self.clicks_key) or {}
            clicks = {kind: working_clicks(given.get(kind, ()), photo_size, size) for kind in ("positive", "negative")}
            guidance = self.channels(clicks, d.get(self.previous_key), size).to(image.dtype)
            d[key] = torch.cat((image, guidance.to(image.device)), 0)
        return d


class ClicksFromPointsd(Transform):
    """Clicks as MONAI Label and 3D Slicer send them → ``data["clicks"]`` for :class:`AddGuidanced`.

    MONAI Label's DeepEdit requests carry one list of ``[i, j, k]`` image-index points per label name (a photo's
    index is ``[column, row, 0]``), and its DeepGrow ones ``foreground`` / ``background`` lists; points already
    under ``clicks`` are kept. Keys that are absent are no clicks; without any click, ``clicks`` is left out.

    Args:
        positive: request keys whose points are clicks on the lesion.
        negative: request keys whose points are clicks on the background.
    """

    def __init__(
        self,
        positive: Sequence[str] = ("lesion", "foreground"),
        negative: Sequence[str] = ("background",),
        clicks_key: str = "clicks",
    ) -> None:
        self.positive, self.negative, self.clicks_key = tuple(positive), tuple(negative), clicks_key

    @staticmethod
    def _points(value: Any) -> list[list[float]]:
        if value is None or isinstance(value, (str, bytes)):
            return []
        points = np.asarray(value, dtype=np.float64)
        if points.size == 0:
            return []
        points = points.reshape(-1, points.shape[-1]) if points.ndim > 1 else points.reshape(1, -1)
        return [[float(p[0]), float(p[1])] for p in points]

    def __call__(self, data):
        d = dict(data)
        clicks = {kind: list(points) for kind, points in (d.get(self.clicks_key) or {}).items()}
        for kind, keys in (("positive", self.positive), ("negative", self.negative)):
            for key in keys:
                clicks.setdefault(kind, []).extend(self._points(d.get(key)))
        if any(clicks.values()):
            d[self.clicks_key] = clicks
        else:  # no key: empty lists would make MONAI's decollate_batch split a batch into nothing
            d.pop(self.clicks_key, None)
        return d


def _border_distance(region: np.ndarray) -> np.ndarray:
    """Distance of each pixel of ``region`` to the nearest pixel outside it (the image border counts as outside)."""
    return ndimage.distance_transform_edt(np.pad(region, 1))[1:-1, 1:-1]


def next_click(
    pred: np.ndarray, truth: np.ndarray, rng: np.random.RandomState | None = None, spread: float = 0.0
) -> tuple[int, int, bool] | None:
    """The simulated user's next click: ``(x, y, positive)`` on the largest error region, or None when none is left.

    The error regions are the missed lesion (``truth & ~pred``) and the false lesion (``pred & ~truth``); the one
    whose interior lies deepest (largest distance to its border) is clicked, at that deepest point — positive for a
    missed region, negative for a false one (the robot user of RITM and SimpleClick). With ``rng`` and ``spread``
    > 0 the point is drawn among the pixels at least ``(1 - spread)`` times as deep, as training does.

    Args:
        pred, truth: (W, H) boolean (or 0/1) masks of the same shape; the click's ``(x, y)`` index them.
    """
    pred, truth = np.asarray(pred, dtype=bool), np.asarray(truth, dtype=bool)
    if pred.shape != truth.shape:
        raise ValueError(f"prediction {pred.shape} and truth {truth.shape} differ in shape")
    missed, false = _border_distance(truth & ~pred), _border_distance(pred & ~truth)
    positive = missed.max() >= false.max()
    depth = missed if positive else false
    deepest = depth.max()
    if deepest <= 0:
        return None
    if rng is None or spread <= 0:
        x, y = np.unravel_index(int(np.argmax(depth)), depth.shape)
    else:
        candidates = np.argwhere(depth >= max(1.0, (1.0 - spread) * deepest))
        x, y = candidates[rng.randint(len(candidates))]
    return int(x), int(y), bool(positive)


def _random_points(region: np.ndarray, count: int, rng: np.random.RandomState, margin: float) -> list[Click]:
    """``count`` points drawn from ``region``, preferring pixels at least ``margin`` from its border."""
    depth = _border_distance(region)
    candidates = np.argwhere(depth >= margin)
    if not len(candidates):
        candidates = np.argwhere(depth > 0)
    if not len(candidates):
        return []
    picks = candidates[rng.randint(len(candidates), size=count)]
    return [(float(x), float(y)) for x, y in picks]


class ClickSimulation:
    """Training with simulated clicks, as MONAI's ``iteration_update`` of a ``SupervisedTrainer`` (DeepEdit and
    RITM train this way): before each training step, some samples of the batch get clicks.

    For each sample: with probability ``automatic_share`` none (the network learns to segment without help);
    otherwise, with probability ``initial_click_share``, 1–3 random clicks inside the lesion and 0–2 outside it
    start the session, and then 0–``max_rounds`` rounds (drawn uniformly) of prediction without gradients, each
    followed by a :func:`next_click` on the largest error (point drawn with ``spread``) and, when the network takes
    one, the prediction as the previous mask. The training step then sees the guidance of the final state. The
    image channels of ``batch["image"]`` stay as the data set made them; its guidance channels (zeros from
    :class:`AddGuidanced`) are overwritten in place. For an automatic network (``guidance`` empty) every step is a
    plain training step.

    Args:
        guidance: the network's guidance channels (see :data:`GUIDANCE_CHANNELS`).
        click_radius: disk radius in working-size pixels.
        automatic_share, initial_click_share: probabilities described above.
        max_rounds: most error-driven clicks before the training step.
        spread: how far from the deepest point of an error region a simulated click may fall (0: the deepest).
        seed: of this simulation's own generator (``R``, saved and restored with the training's random states).
    """

    def __init__(
        self,
        guidance: Sequence[str],
        click_radius: float = 3.0,
        automatic_share: float = 0.3,
        initial_click_share: float = 0.5,
        max_rounds: int = 3,
        spread: float = 0.3,
        seed: int = 0,
    ) -> None:
        self.guide = AddGuidanced(guidance=guidance, click_radius=click_radius)
        self.automatic_share, self.initial_click_share = float(automatic_share), float(initial_click_share)
        self.max_rounds, self.spread = int(max_rounds), float(spread)
        self.R = np.random.RandomState(seed)

    def _guidance(self, clicks: list[dict[str, list[Click]]], previous: list[Any], size) -> torch.Tensor:
        return torch.stack([self.guide.channels(c, p, size) for c, p in zip(clicks, previous, strict=True)])

    def simulate(self, network: torch.nn.Module, image: torch.Tensor, label: torch.Tensor, device) -> torch.Tensor:
        """The (B, G, w, h) guidance for a batch: ``image`` (B, 3 + G, w, h), ``label`` (B, 1, w, h) 0/1."""
        batch, size = image.shape[0], tuple(image.shape[-2:])
        truth = np.asarray(label[:, 0].detach().cpu()) > 0.5
        clicks: list[dict[str, list[Click]]] = [{"positive": [], "negative": []} for _ in range(batch)]
        previous: list[Any] = [None] * batch
        rounds = np.zeros(batch, dtype=int)
        for i in range(batch):
            if self.R.rand() < self.automatic_share:
                continue
            if self.R.rand() < self.initial_click_share:
                margin = 1.5 * self.guide.radius
                clicks[i]["positive"] += _random_points(truth[i], self.R.randint(1, 4), self.R, margin)
                clicks[i]["negative"] += _random_points(~truth[i], self.R.randint(0, 3), self.R, margin)
            rounds[i] = self.R.randint(0, self.max_rounds + 1)
        colour = torch.as_tensor(image[:, :IMAGE_CHANNELS]).as_subclass(torch.Tensor)
        was_training = network.training
        network.eval()
        try:
            with torch.no_grad():
                for step in range(int(rounds.max(initial=0))):
                    active = torch.as_tensor(np.flatnonzero(rounds > step))
                    chosen = active.tolist()
                    guidance = self._guidance([clicks[i] for i in chosen], [previous[i] for i in chosen], size)
                    inputs = torch.cat((colour[active], guidance.to(colour.dtype)), 1).to(device)
                    pred = np.asarray(network(inputs).argmax(1).cpu()) > 0
                    for j, i in enumerate(active.tolist()):
                        if "previous_mask" in self.guide.guidance:
                            previous[i] = pred[j].astype(np.float32)
                        click = next_click(pred[j], truth[i], self.R, self.spread)
                        if click is not None:
                            clicks[i]["positive" if click[2] else "negative"].append(click[:2])
        finally:
            network.train(was_training)
        return self._guidance(clicks, previous, size)

    def __call__(self, engine, batchdata: dict[str, Any]) -> dict:
        if not self.guide.guidance:  # an automatic network: a plain training step
            return engine._iteration(engine, batchdata)
        image = batchdata["image"]
        guidance = self.simulate(engine.network, image, batchdata["label"], engine.state.device)
        image[:, IMAGE_CHANNELS:] = guidance.to(image.dtype)
        return engine._iteration(engine, batchdata)


def iou(pred: np.ndarray, truth: np.ndarray) -> float:
    """Intersection over union of two masks; 1.0 when both are empty."""
    pred, truth = np.asarray(pred, dtype=bool), np.asarray(truth, dtype=bool)
    union = np.logical_or(pred, truth).sum()
    return float(np.logical_and(pred, truth).sum() / union) if union else 1.0


def clicks_to_reach(ious: Sequence[float], threshold: float, max_clicks: int) -> int:
    """The number of clicks after which IoU first reaches ``threshold`` (0 when the first mask already does);
    ``max_clicks`` when it never does, as NoC counts it (RITM, SimpleClick)."""
    for count, value in enumerate(ious[: max_clicks + 1]):
        if value >= threshold:
            return count
    return max_clicks


def interactive_summary(
    per_image: Mapping[str, Sequence[float]],
    thresholds: Sequence[float] = (0.85, 0.90),
    max_clicks: int = 20,
    after: Sequence[int] = (0, 1, 3, 5),
) -> dict[str, float]:
    """NoC@t (mean clicks to reach IoU t), failures (images never reaching the highest t within ``max_clicks``),
    and mean IoU after each count in ``after``, over images whose IoU after 0, 1, 2, ... clicks is ``per_image``.

    A sequence shorter than ``max_clicks + 1`` ended early because nothing was left to correct: its last IoU holds.
    """
    curves = {name: _padded(values, max_clicks) for name, values in per_image.items()}
    summary: dict[str, float] = {"n_images": len(curves)}
    for t in thresholds:
        summary[f"NoC@{round(100 * t)}"] = float(np.mean([clicks_to_reach(c, t, max_clicks) for c in curves.values()]))
    top = max(thresholds)
    summary[f"failures@{round(100 * top)}"] = sum(1 for c in curves.values() if max(c) < top)
    for count in after:
        summary[f"mIoU@{count}"] = float(np.mean([c[count] for c in curves.values()]))
    return summary


def _padded(values: Sequence[float], max_clicks: int) -> list[float]:
    values = [float(v) for v in values[: max_clicks + 1]]
    return values + [values[-1]] * (max_clicks + 1 - len(values))
