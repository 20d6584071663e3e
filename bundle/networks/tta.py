"""Test-time augmentation as a MONAI inferer: the network sees the image and its flips, and the logits are averaged.

Wraps the inferer ``configs/inference.json`` already uses (the fast path), so every caller of that file — the
command line, evaluation, the Slicer worker, MONAI Label — gets the same averaged prediction. The flipped copies go
through the network as one batch. Guidance channels (clicks, previous mask) are flipped with the image, so a
click-guided network sees consistent input in every copy.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from monai.inferers import Inferer

from bundle.config import choice

__all__ = ["TTA_MODES", "FlipTTA"]

# the flips (spatial dimensions of a (B, C, W, H) batch) each mode averages over
TTA_MODES: dict[str, tuple[tuple[int, ...], ...]] = {
    "none": ((),),
    "flips": ((), (2,), (3,), (2, 3)),
}


class FlipTTA(Inferer):
    """Average ``inferer``'s logits over the flips of ``mode`` (see :data:`TTA_MODES`), each flipped back first.

    Args:
        inferer: the inferer that runs the network (e.g. ``bundle.networks.fastpath.FastInferer``).
        mode: ``"none"`` (the inferer alone) or ``"flips"`` (identity, horizontal, vertical and both).
    """

    def __init__(self, inferer: Callable[..., torch.Tensor], mode: str = "flips") -> None:
        super().__init__()
        self.inferer = inferer
        self.flips = TTA_MODES[choice(mode, TTA_MODES, "tta")]

    def __call__(self, inputs: torch.Tensor, network: Callable[..., Any], *args: Any, **kwargs: Any) -> torch.Tensor:
        if len(self.flips) == 1:
            return self.inferer(inputs, network, *args, **kwargs)
        plain = inputs.as_subclass(torch.Tensor)  # a MetaTensor would take the average for a batch reduction
        batch = torch.cat([plain.flip(dims) if dims else plain for dims in self.flips], 0)
        logits = self.inferer(batch, network, *args, **kwargs).as_subclass(torch.Tensor)
        parts = logits.split(inputs.shape[0], 0)
        return torch.stack([p.flip(dims) if dims else p for p, dims in zip(parts, self.flips, strict=True)]).mean(0)
