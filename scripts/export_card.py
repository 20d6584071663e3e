"""What an exported bundle says about its model: ``metadata.json``'s description, data and figures, and the README a
receiver reads first, made from the shipped checkpoint's record (``scripts/export_bundle.py`` writes them)."""

from __future__ import annotations

import json
from pathlib import Path

from bundle.interactive import IMAGE_CHANNELS, guidance_names

__all__ = [
    "describe_data",
    "describe_model",
    "is_click_guided",
    "model_scores",
    "network_phrase",
    "receiver_readme",
    "takes_clicks",
]


def is_click_guided(record: dict | None) -> bool:
    """Whether the checkpoint ``record`` describes a network that takes clicks (guidance channels)."""
    return bool(record and guidance_names((record.get("network") or {}).get("guidance")))


_NETWORKS = {"rfeunet": "RFE U-Net", "flexibleunet": "MONAI's FlexibleUNet", "basicunet": "MONAI's BasicUNet"}


def network_phrase(settings: dict) -> str:
    """E.g. "RFE U-Net, ResNet-34 encoder, 128x128 input"."""
    name = settings.get("name", "rfeunet")
    parts = [_NETWORKS.get(name, str(name))]
    if name != "basicunet" and settings.get("backbone"):
        parts.append(f"{str(settings['backbone']).replace('resnet', 'ResNet-')} encoder")
    if name == "rfeunet" and settings.get("rfe") is False:
        parts.append("plain skip connections (no RFE modules)")
    if settings.get("image_size"):
        parts.append(f"{settings['image_size']}x{settings['image_size']} input")
    return ", ".join(parts)


def _short_folder(path: str) -> str:
    """The last two parts of a folder: enough to recognise it without publishing the sender's whole path."""
    parts = Path(path).parts
    return "/".join(parts[-2:]) if parts else "?"


def describe_data(record: dict) -> str:
    """What the shipped weights were trained on, in one phrase."""
    about, data = record.get("about") or {}, record.get("data") or {}
    if about.get("data"):
        return str(about["data"])
    if not data:
        return "data the checkpoint does not record"
    pairs = f"{data.get('training_pairs', '?')} training and {data.get('validation_pairs', '?')} validation pairs"
    if data.get("synthetic_sample"):
        return f"the embedded SYNTHETIC sample ({pairs} of drawn blobs, no real photographs)"
    source = f"datalist {Path(data['datalist']).name}" if data.get("datalist") else f"{_short_folder(data['dataset'])}/"
    return f"{pairs} from {source}"


def model_scores(record: dict) -> tuple[dict, str]:
    """The shipped weights' figures for ``eval_metrics`` and the phrase saying where they come from."""
    about, scores = record.get("about") or {}, record.get("scores") or {}
    evaluation = (about.get("evaluation") or {}).get("original")
    if evaluation:
        metrics = {"val_mean_dice": evaluation["mDice"], "val_mean_iou": evaluation["mIoU"]}
        where = f"on {evaluation.get('n_images', '?')} held-out photographs at their own size"
    elif scores:
        metrics = {key: value for key, value in scores.items() if key != "epoch"}
        where = f"on the validation pairs at epoch {scores.get('epoch', '?')}"
    else:
        return {}, "no recorded scores"
    figures = ", ".join(f"{key} {value:.4f}" for key, value in metrics.items())
    return {key: round(float(value), 4) for key, value in metrics.items()}, f"{figures} {where}"


def describe_model(metadata: dict, record: dict) -> dict:
    """``metadata`` rewritten to describe the shipped weights: description, data source, figures and tensor shapes.

    Everything comes from the checkpoint's record (:mod:`bundle.checkpoint`): its network settings, the data it was
    trained on, its recipe and scores, and, for the demo, its ``about`` provenance.
    """
    settings = record["network"]
    metadata = json.loads(json.dumps(metadata))
    metrics, where = model_scores(record)
    recipe = (record.get("about") or {}).get("recipe") or ", ".join(
        f"{key} {value}" for key, value in (record.get("recipe") or {}).items() if value not in ("", None)
    )
    size = settings.get("image_size")
    metadata["description"] = " ".join(
        part
        for part in (
            "Delineates the skin lesion in an RGB dermoscopy photograph with a U-shaped network"
            f" ({network_phrase(settings)}).",
            "Its skip connections are Receptive Field Enhancement modules built from YOLOv8's SPPF and C2f blocks"
            " (Zarrin & Nikkhah, JADM 2025)."
            if settings.get("name", "rfeunet") == "rfeunet" and settings.get("rfe", True)
            else "",
            f"Photographs of any size are resized to {size}x{size}; masks come back at the photograph's own size."
            if size
            else "",
            f"It also takes the user's clicks as input ({', '.join(guidance_names(settings.get('guidance')))}): a "
            "lesion click grows the mask there, a background click removes it; without clicks it segments on its own."
            if is_click_guided(record)
            else "",
            f"Shipped weights: trained on {describe_data(record)}" + (f"; recipe: {recipe}" if recipe else "") + ";",
            f"{where}.",
            "Research use only; not a medical device.",
        )
        if part
    )
    metadata["data_source"] = describe_data(record)
    metadata["eval_metrics"] = metrics
    image = metadata["network_data_format"]["inputs"]["image"]
    pred = metadata["network_data_format"]["outputs"]["pred"]
    if size:
        image["spatial_shape"] = pred["spatial_shape"] = [size, size]
    if "in_channels" in settings:
        image["num_channels"] = int(settings["in_channels"])
        guidance = guidance_names(settings.get("guidance"))
        for index in range(IMAGE_CHANNELS, image["num_channels"]):
            extra = index - IMAGE_CHANNELS
            image["channel_def"].setdefault(str(index), guidance[extra] if extra < len(guidance) else f"extra {extra}")
    if "out_channels" in settings:
        pred["num_channels"] = int(settings["out_channels"])
    return metadata


RECEIVER_README = """# {title} — MONAI bundle `{name}` v{version}

{description}

Model card (training recipe, measured results, limitations): [docs/README.md](docs/README.md). Release notes:
`changelog` in `configs/metadata.json`. **Research use only — not a medical device and not for diagnosis.**

## Install

Python ≥ 3.10 with PyTorch, MONAI and the packages the bundle was tested with (`configs/metadata.json`):

    python -m pip install {packages}

(tested with {tested}). Nothing else is installed: run the commands below from this folder, where MONAI's runner
imports the bundle's own code in `bundle/`.

## Use

    # segment photographs: <photo>_mask.png (0/255, the photo's size) per photo in masks/
    python -m monai.bundle run --config_file configs/inference.json --dataset_dir /path/to/photos --output_dir masks

    # train or fine-tune on your own images/ and masks/ (or a datalist.json): see docs/README.md
    python -m monai.bundle run training --config_file configs/train.json --dataset_dir /path/to/data

`models/model.pt` is a plain PyTorch state_dict; the network it fits is described in `configs/metadata.json` and
built by `configs/inference.json`, so MONAI's own tools work without options, e.g. from Python
(`sys.path` must hold this folder, since the configs import `bundle`):

    import sys, monai
    sys.path.insert(0, "/path/to/{name}")
    net = monai.bundle.load(name="{name}", bundle_dir="/path/to", workflow_type="inference")
    from bundle.inference import LesionSegmenter
    mask = LesionSegmenter(bundle_root="/path/to/{name}").segment("photo.jpg")["pred"]

(`monai.bundle.load` takes the working directory as the bundle root, as for any bundle: start it from a folder that
holds no other `models/model.pt`.) `python -m monai.bundle ckpt_export network_def --filepath models/model.ts
--ckpt_file models/model.pt --meta_file configs/metadata.json --config_file configs/inference.json` writes
TorchScript, `onnx_export` the same way writes ONNX.

{clicks}## Before you run it

A bundle is a program: MONAI evaluates the `"$..."` values of `configs/*.json` as Python and `bundle/` runs on
import. Run bundles only from people you trust, and compare `sha256sum {name}_v{version}.zip` with the hash the
sender gives you through another channel.
"""


RECEIVER_CLICKS = """## Clicks (interactive segmentation)

The network also takes the user's clicks: a click on the lesion grows the mask there, a click on the background
removes it there; without clicks it segments on its own. From Python, clicks are (column, row) in the photo's pixels:

    segmenter = LesionSegmenter(bundle_root="/path/to/{name}")
    arrays = segmenter.segment_array(rgb, clicks={{"positive": [[x, y]], "negative": [[x2, y2]]}})

MONAI Label's stock `monaibundle` app serves this folder (its name contains `deepedit`) twice: `{name}_seg`
segments automatically, and `{name}` is a DeepEdit model. In 3D Slicer's MONAI Label module pick the latter
as the interactive model, select the segment "lesion" and place points on lesion that was missed, select the
segment "background" and place points on skin that was called lesion: each point re-runs the model with all
the points so far.

"""


def receiver_readme(metadata: dict) -> str:
    """The README.md of the zip: what the bundle is, what to install and the commands, for someone without this
    repository (the repository's README describes a development checkout: ``pip install -e``, tests, CI)."""
    packages = {"torch": metadata.get("pytorch_version"), "monai": metadata.get("monai_version")}
    packages.update(metadata.get("required_packages_version", {}))
    packages["numpy"] = metadata.get("numpy_version")
    return RECEIVER_README.format(
        title=metadata.get("name", metadata["bundle_name"]),
        name=metadata["bundle_name"],
        version=metadata["version"],
        description=metadata.get("description", ""),
        packages=" ".join(packages),
        tested=", ".join(f"{name} {version}" for name, version in packages.items() if version),
        clicks=RECEIVER_CLICKS.format(name=metadata["bundle_name"]) if takes_clicks(metadata) else "",
    )


def takes_clicks(metadata: dict) -> bool:
    """Whether the described network has input channels beyond the photo's colours (the click guidance)."""
    return int(metadata["network_data_format"]["inputs"]["image"].get("num_channels", IMAGE_CHANNELS)) > IMAGE_CHANNELS
