"""A fixed, untrained network for pipeline tests: it calls a pixel "lesion" where the photo is red.

It lets tests check geometry (orientation, size, EXIF) through the real pre- and post-processing of
configs/inference.json without training a model first.
"""

import torch


class RedIsLesion(torch.nn.Module):
    """Two logits per pixel: lesion when the (ImageNet-normalised) red channel exceeds green by a margin."""

    def __init__(self, **_: object) -> None:
        super().__init__()
        self.scale = torch.nn.Parameter(torch.tensor(20.0), requires_grad=False)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        lesion = self.scale * (image[:, 0:1] - image[:, 1:2] - 1.0)
        return torch.cat([torch.zeros_like(lesion), lesion], dim=1)
