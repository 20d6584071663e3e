"""Turn a trained ``models/model.pt`` into a small checkpoint to ship: weights in half precision, the model's record
(network settings, training data, scores) kept, and where the weights came from added to it under ``about``.

The bundle's demo model (``models/demo/rfeunet_resnet34_isic2017_128.pt``, used when no ``models/model.pt`` has been
trained) was made this way; the recipe is in docs/README.md ("The demo model")::

    python -m scripts.make_demo_checkpoint /work/runs/demo/models/model.pt \\
        --out models/demo/rfeunet_resnet34_isic2017_128.pt --evaluation /work/runs/demo/eval/metrics.json \\
        --data "ISIC 2017 at 256x256: training 1840 pairs, validation 160 (a seeded 8 % of the official training)" \\
        --recipe "RFE U-Net ResNet-34 from scratch, 128 px, Dice+CE, Adam 1e-3 poly, batch 8, 10 epochs, seed 0"

Half precision halves the file (a ResNet-34 RFE U-Net: 100 MB → 50 MB); the loader copies the values into the
float32 network, and the scores barely move (the command prints the largest weight change so that it can be
checked). The file is a plain state_dict with the record in its ``_metadata`` (``bundle.checkpoint``), so loading
needs nothing but ``torch.load(weights_only=True)``, and MONAI's tools read it without options.

(The committed demo checkpoint predates that layout: it is ``{"model": ..., "network": ..., "about": ...}``, which
the bundle still reads, and ``scripts/export_bundle.py`` ships it in the new layout.)
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import fire
import torch

from bundle.checkpoint import model_record, read_checkpoint, recorded_state_dict, unwrap_state_dict
from bundle.errors import BundleError, CheckpointError
from bundle.files import atomic_write


def half_precision(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Floating-point tensors as float16 (clamped to its range); integer tensors (BatchNorm counters) unchanged."""
    limit = torch.finfo(torch.float16).max
    return {
        name: tensor.clamp(-limit, limit).half() if tensor.is_floating_point() else tensor
        for name, tensor in state.items()
    }


def make_demo_checkpoint(
    checkpoint: str, out: str, evaluation: str = "", data: str = "", recipe: str = "", licence: str = "CC-0 data"
) -> dict[str, Any]:
    """
    Write ``out``: the float16 state_dict, recording the checkpoint's record plus ``about``.

    Args:
        checkpoint: a ``model.pt`` written by training (it must record its network settings).
        out: the file to write (atomically).
        evaluation: an evaluation report (``eval/metrics.json``); its summary is stored under ``about``.
        data: what it was trained on, stored under ``about``.
        recipe: how it was trained, stored under ``about``.
        licence: the licence of the data it was trained on, stored under ``about``.

    Returns:
        What was written under ``about``, and ``max_weight_change`` (the largest absolute change half precision
        made to any weight).

    Raises:
        CheckpointError: the checkpoint cannot be read, holds no state_dict or records no network settings.
        ValueError: the evaluation report cannot be read.
    """
    record = model_record(checkpoint)
    settings = record.get("network") if record else None
    if settings is None:
        raise CheckpointError(checkpoint, "records no network settings (train it with this bundle's train.json)")
    state = unwrap_state_dict(read_checkpoint(checkpoint))
    if state is None:
        raise CheckpointError(checkpoint, "holds no state_dict")
    about: dict[str, Any] = {"source": Path(checkpoint).name, "data": data, "recipe": recipe, "licence": licence}
    if evaluation:
        try:
            about["evaluation"] = json.loads(Path(evaluation).read_text(encoding="utf-8"))["summary"]
        except (OSError, ValueError, KeyError) as error:
            raise ValueError(f"{evaluation}: not an evaluation report ({error})") from None
    half = half_precision(state)
    change = max(
        (float((half[k].float() - v.float()).abs().max()) for k, v in state.items() if v.is_floating_point()),
        default=0.0,
    )
    content = recorded_state_dict(half, {**record, "about": about})
    atomic_write(out, lambda tmp: torch.save(content, tmp))
    size = Path(out).stat().st_size
    print(f"wrote {out}: {size / 1e6:.1f} MB, {settings}; largest weight change {change:.2e}", flush=True)
    return {**about, "max_weight_change": change, "bytes": size}


def main(argv: list[str] | None = None) -> int:
    """Command line: 0 on success, 1 with one ``error:`` line otherwise."""
    try:
        fire.Fire(make_demo_checkpoint, command=argv, serialize=lambda _: None)
    except (BundleError, ValueError, OSError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
