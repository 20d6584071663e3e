"""The benchmark's shared parts: where its data is, how much it measures (:class:`Settings`), and how it times and
counts (interleaved repeats, medians, multiply-accumulates, profiler shares, peak memory).

The sections themselves are in ``scripts/benchmark_compute.py`` (networks and training) and
``scripts/benchmark_bundle.py`` (the bundle's own inference path); ``scripts/benchmark.py`` runs them.
"""

from __future__ import annotations

import contextlib
import importlib
import importlib.util
import math
import os
import resource
import statistics
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any

import torch
from torch import nn

from bundle.networks.registry import network_title

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("RFE_SHARED_DIR", REPO.parent / "shared"))
PHOTO = SHARED / "data" / "isic2017_val" / "images" / "ISIC_0001769.jpg"  # 1024 x 683
FULL_RESOLUTION = SHARED / "data" / "isic2017_val" / "full_resolution" / "ISIC_0012288.jpg"  # 4288 x 2848
PHOTO_FOLDER = SHARED / "data" / "isic2017_val" / "images"
TRAINING_DATA = SHARED / "data" / "isic2017_256" / "training"
WORKER_LIBRARY = REPO / "slicer_extension" / "SkinLesionSegmentation"
# (name, backbone) for bundle.networks.make_network; the RFE U-Net and the peers of issue 11
NETWORKS = (
    ("rfeunet", "resnet34"),
    ("rfeunet", "resnet50"),
    ("rfeunet", "resnet101"),
    ("flexibleunet", "resnet34"),
    ("flexibleunet", "resnet101"),
    ("basicunet", ""),
)
FAST_PATH_OPTIONS = (
    "eager",
    "inference_mode",
    "channels_last",
    "bn_folded",
    "bn_folded+channels_last",
    "torchscript_frozen",
    "onnxruntime",
    "bf16_autocast",
    "bf16_autocast+channels_last",
)


@dataclass
class Settings:
    """How much to measure; :meth:`quick` gives the tiny run the tests use."""

    threads: int
    image_size: int = 256
    batch_size: int = 8
    warmup: int = 1
    repeats: int = 5
    batch_repeats: int = 3
    fast_path_networks: list[tuple[str, int]] = field(
        default_factory=lambda: [("resnet34", 128), ("resnet34", 256), ("resnet101", 256)]
    )
    ceiling_shape: tuple[int, int, int] = (256, 128, 128)  # channels, height, width of the 3x3 convolution
    train_items: int = 64
    train_steps: int = 3
    train_overrides: dict[str, Any] = field(default_factory=dict)
    loader_epochs: int = 2
    folder_photos: int = 16
    overrides: dict[str, Any] = field(default_factory=dict)  # configs/inference.json keys for the bundle's path

    @classmethod
    def quick(cls, threads: int) -> Settings:
        return cls(
            threads=threads,
            image_size=64,
            batch_size=2,
            repeats=1,
            batch_repeats=1,
            fast_path_networks=[("resnet34", 64)],
            ceiling_shape=(64, 32, 32),
            train_items=8,
            train_steps=1,
            train_overrides={"network_name": "rfeunet", "backbone": "resnet34", "image_size": 64, "batch_size": 2},
            loader_epochs=1,
            folder_photos=3,
            overrides={"ckpt_path": "", "backbone": "resnet34", "image_size": 64},
        )


def interleaved(cases: Mapping[str, Callable[[], Any]], repeats: int, warmup: int) -> dict[str, list[float]]:
    """Seconds per call of each case: ``warmup`` untimed calls each, then ``repeats`` rounds over all cases."""
    for call in cases.values():
        for _ in range(warmup):
            call()
    times: dict[str, list[float]] = {name: [] for name in cases}
    for _ in range(repeats):
        for name, call in cases.items():
            start = time.perf_counter()
            call()
            times[name].append(time.perf_counter() - start)
    return times


def summary(seconds: Sequence[float]) -> dict[str, Any]:
    """Median and minimum of timed calls, with the samples."""
    return {"median_s": statistics.median(seconds), "min_s": min(seconds), "samples_s": list(seconds)}


def ratio(numerator: float | None, denominator: float | None) -> float | None:
    """``numerator / denominator``, or None when either is missing or the denominator is 0."""
    if numerator is None or not denominator:
        return None
    return numerator / denominator


def mac_breakdown(model: nn.Module, example: torch.Tensor) -> dict[str, int]:
    """Multiply-accumulates of each convolution, transposed convolution and linear layer in one forward pass.

    A convolution costs (in_channels / groups) * kernel area per output element; a transposed convolution
    (in_channels -> out_channels) costs (out_channels / groups) * kernel area per input element; a linear layer
    in_features per output element.
    """
    counts: dict[str, int] = {}
    names = {module: name for name, module in model.named_modules()}

    def hook(module: nn.Module, inputs: tuple, output: torch.Tensor) -> None:
        if isinstance(module, nn.modules.conv._ConvTransposeNd):
            macs = inputs[0].numel() * module.out_channels // module.groups * math.prod(module.kernel_size)
        elif isinstance(module, nn.modules.conv._ConvNd):
            macs = output.numel() * module.in_channels // module.groups * math.prod(module.kernel_size)
        else:
            macs = output.numel() * module.in_features
        counts[names[module]] = counts.get(names[module], 0) + macs

    handles = [
        module.register_forward_hook(hook)
        for module in model.modules()
        if isinstance(module, (nn.modules.conv._ConvNd, nn.Linear))
    ]
    try:
        with torch.no_grad():
            model(example)
    finally:
        for handle in handles:
            handle.remove()
    return counts


def count_macs(model: nn.Module, example: torch.Tensor) -> int:
    """Total of :func:`mac_breakdown`."""
    return sum(mac_breakdown(model, example).values())


COMPUTE_OPS = ("conv", "addmm", "aten::mm", "matmul", "linear", "bmm")


def operator_shares(forward: Callable[[], Any], top: int = 6) -> tuple[float, dict[str, float]]:
    """One call under torch.profiler: the fraction of CPU time in convolution and matrix-multiply kernels, and the
    ``top`` operators by their own CPU time (fractions)."""
    from torch.profiler import ProfilerActivity, profile

    with quiet_stderr(), profile(activities=[ProfilerActivity.CPU]) as prof:
        forward()
    events = [e for e in prof.key_averages() if e.key.startswith("aten::")]
    total = sum(e.self_cpu_time_total for e in events)
    if not total:
        return 0.0, {}
    compute = sum(e.self_cpu_time_total for e in events if any(op in e.key for op in COMPUTE_OPS))
    ranked = sorted(events, key=lambda e: e.self_cpu_time_total, reverse=True)[:top]
    return compute / total, {e.key: e.self_cpu_time_total / total for e in ranked}


@contextlib.contextmanager
def quiet_stderr():
    """Silence file descriptor 2 (the profiler's C++ start/stop lines), restoring it afterwards."""
    sys.stderr.flush()
    saved = os.dup(2)
    with open(os.devnull, "w") as devnull:
        os.dup2(devnull.fileno(), 2)
    try:
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


def peak_rss_mb() -> float:
    """Peak resident memory of this process so far, in MiB.

    Linux: ``VmHWM`` of /proc/self/status, since ``ru_maxrss`` survives ``exec`` and so reports the parent's peak
    in a child started by ``subprocess``. Elsewhere ``ru_maxrss`` (macOS reports bytes).
    """
    with contextlib.suppress(OSError):
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / (1024 * 1024) if sys.platform == "darwin" else peak / 1024


def network_label(name: str, backbone: str) -> str:
    """The row label of a network: ``RFE U-Net ResNet-34``, ``BasicUNet`` (``bundle.networks.registry``)."""
    return network_title(name, backbone)


def subprocess_env(threads: int) -> dict[str, str]:
    """The environment of the benchmark's child processes: the same thread count, unbuffered output."""
    return {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads), "PYTHONUNBUFFERED": "1"}


def slicer_library(module: str) -> ModuleType:
    """A module of the 3D Slicer module's library (``SkinLesionSegmentationLib.<module>``), imported from its folder
    as a package (it needs no Slicer), without adding the folder to ``sys.path``."""
    package = "SkinLesionSegmentationLib"
    if package not in sys.modules:
        folder = WORKER_LIBRARY / package
        spec = importlib.util.spec_from_file_location(
            package, folder / "__init__.py", submodule_search_locations=[str(folder)]
        )
        library = importlib.util.module_from_spec(spec)
        sys.modules[package] = library
        spec.loader.exec_module(library)
    return importlib.import_module(f"{package}.{module}")
