"""Print how strongly each loss pushes a lesion pixel's logit, as a function of the predicted lesion probability.

    python -m scripts.loss_gradients [--lesion_share 0.05]

For one image whose lesion covers ``lesion_share`` of the pixels, the table gives |dL/dz| for a lesion pixel,
where z = z1 - z0 is the logit difference of the 2-channel output (so p = sigmoid(z)), per pixel, with the
loss's own per-image weighting: the gradient the optimiser sees from that pixel. Dice is left out by default: it is
a set-level loss with no per-pixel scale to compare.
"""

from __future__ import annotations

import fire
import torch

from bundle.losses import make_loss

PROBABILITIES = (0.001, 0.01, 0.1, 0.3, 0.5, 0.7, 0.9, 0.99)


def lesion_pixel_gradient(name: str, p: float, lesion_share: float, size: int = 100) -> float:
    """|dL/dz| at one lesion pixel predicted with probability ``p``, in an image with the given lesion share."""
    target = torch.zeros(1, 1, size, size)
    target.view(-1)[: round(lesion_share * size * size)] = 1.0
    z = torch.full((1, 1, size, size), torch.logit(torch.tensor(p)).item(), requires_grad=True)
    logits = torch.cat([torch.zeros_like(z), z], dim=1)  # z1 - z0 = z
    loss = make_loss(name, reduction="sum") if name in ("adaptexp", "exp") else make_loss(name)
    value = loss(logits, target)
    if name not in ("adaptexp", "exp"):
        value = value * target.numel()  # the MONAI losses average; undo it to compare per-pixel pushes
    value.backward()
    return abs(z.grad.view(-1)[0].item())


def main(lesion_share: float = 0.05, losses: str | tuple[str, ...] = "bce,focal,exp,adaptexp") -> None:
    """Print the table of |dL/dz| for one lesion pixel against its predicted lesion probability.

    Args:
        lesion_share: the share of the image's pixels that are lesion (the paper's k).
        losses: comma-separated loss names (see ``bundle.losses.LOSS_NAMES``).
    """
    # fire turns "a,b" into a tuple; a single name stays a string
    names = [n.strip() for n in (losses.split(",") if isinstance(losses, str) else losses) if n.strip()]
    lines = ["| p (lesion pixel) | " + " | ".join(names) + " |", "|---" * (len(names) + 1) + "|"]
    for p in PROBABILITIES:
        cells = [f"{lesion_pixel_gradient(n, p, lesion_share):.4g}" for n in names]
        lines.append(f"| {p:g} | " + " | ".join(cells) + " |")
    table = "\n".join(lines)
    print(f"|dL/dz| for one lesion pixel, image lesion share k = {lesion_share:g}\n\n{table}")


if __name__ == "__main__":
    fire.Fire(main)
