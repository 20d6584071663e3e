"""The benchmark's compute sections: the machine's ceiling, the networks side by side, the fast inference path's
options, and one training step against its data loader. Each ``measure_*`` takes ``(settings, workdir, results)``
(the sections measured before it) and returns its JSON-able result.
"""

from __future__ import annotations

import contextlib
import copy
import datetime
import io
import json
import math
import os
import platform
import shlex
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Mapping
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch
from torch import nn

from scripts.benchmark_tools import (
    FAST_PATH_OPTIONS,
    NETWORKS,
    REPO,
    TRAINING_DATA,
    Settings,
    count_macs,
    interleaved,
    network_label,
    operator_shares,
    ratio,
    summary,
)


def machine_info(settings: Settings) -> dict[str, Any]:
    import monai
    import numpy
    import PIL

    cpu = platform.processor() or platform.machine()
    flags: list[str] = []
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name") and cpu in ("", platform.machine()):
                cpu = line.split(":", 1)[1].strip()
            if line.startswith("flags") and not flags:
                flags = sorted(f for f in line.split(":", 1)[1].split() if f.startswith(("avx512_bf16", "amx", "avx2")))
    versions = {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "monai": monai.__version__,
        "numpy": numpy.__version__,
        "pillow": PIL.__version__,
    }
    with contextlib.suppress(ImportError):
        import onnxruntime

        versions["onnxruntime"] = onnxruntime.__version__
    affinity = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else []
    return {
        "date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
        "command": "python -m scripts.benchmark " + " ".join(shlex.quote(a) for a in sys.argv[1:]),
        "cpu": cpu,
        "cpu_flags": flags,
        "logical_cpus": os.cpu_count(),
        "cpus_allowed": affinity,
        "threads": settings.threads,
        "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "versions": versions,
        "settings": asdict(settings),
    }


def measure_ceiling(settings: Settings, workdir: Path, results: Mapping[str, Any]) -> dict[str, Any]:
    """The 3x3 convolution's MAC/s, and the SPPF max-pool with torch's kernel against the RFE U-Net's."""
    from bundle.networks.blocks import MaxPool2d

    channels, height, width = settings.ceiling_shape
    conv = nn.Conv2d(channels, channels, 3, padding=1, bias=False).eval()
    x = torch.randn(1, channels, height, width)
    macs = count_macs(conv, x)
    # the first SPPF of the ResNet-34 RFE U-Net at 256 px pools 32 channels at 128 x 128
    pooled = torch.randn(1, 32, settings.image_size // 2, settings.image_size // 2)
    stock, shifted = nn.MaxPool2d(5, 1, 2), MaxPool2d(5, 1, 2)
    with torch.inference_mode():
        times = interleaved(
            {"conv": lambda: conv(x), "stock": lambda: stock(pooled), "shifted": lambda: shifted(pooled)},
            settings.repeats,
            settings.warmup,
        )
    result = summary(times["conv"])
    result.update(shape=[1, channels, height, width], macs=macs, gmacs_per_s=macs / result["median_s"] / 1e9)
    result["max_pool"] = {
        "shape": list(pooled.shape),
        "torch": summary(times["stock"]),
        "shifted_maxima": summary(times["shifted"]),
        "speedup": statistics.median(times["stock"]) / statistics.median(times["shifted"]),
    }
    return result


def measure_networks(settings: Settings, workdir: Path, results: Mapping[str, Any]) -> dict[str, Any]:
    """Latency, throughput, MACs, MAC/s and the time in convolutions of each of :data:`NETWORKS`."""
    from bundle.networks import make_network

    size, batch = settings.image_size, settings.batch_size
    single, many = torch.randn(1, 3, size, size), torch.randn(batch, 3, size, size)
    models = {}
    rows: dict[str, dict[str, Any]] = {}
    for name, backbone in NETWORKS:
        label = network_label(name, backbone)
        torch.manual_seed(0)
        model = make_network(name, backbone or "resnet34").eval()
        models[label] = model
        rows[label] = {
            "name": name,
            "backbone": backbone,
            "parameters": sum(p.numel() for p in model.parameters()),
            "macs": count_macs(model, single),
        }
    with torch.inference_mode():
        latency = interleaved(
            {k: (lambda m=m: m(single)) for k, m in models.items()}, settings.repeats, settings.warmup
        )
        throughput = interleaved(
            {k: (lambda m=m: m(many)) for k, m in models.items()}, settings.batch_repeats, settings.warmup
        )
        profiles = {k: operator_shares(lambda m=m: m(single)) for k, m in models.items()}
    peak = results.get("ceiling", {}).get("gmacs_per_s")
    for label, row in rows.items():
        row["batch1"] = summary(latency[label])
        row[f"batch{batch}"] = summary(throughput[label])
        row["batch_size"] = batch
        row["images_per_s"] = batch / row[f"batch{batch}"]["median_s"]
        row["gmacs_per_s"] = row["macs"] / row["batch1"]["median_s"] / 1e9
        row["of_ceiling"] = ratio(row["gmacs_per_s"], peak)
        share, row["top_operators"] = profiles[label]
        row["convolution_time_share"] = share
        row["convolution_gmacs_per_s"] = row["gmacs_per_s"] / share if share else None
    for row in rows.values():
        if row["name"] == "rfeunet":
            peer = rows.get(network_label("flexibleunet", row["backbone"]))
            row["vs_flexibleunet"] = ratio(row["gmacs_per_s"], peer["gmacs_per_s"]) if peer else None
    return {"image_size": size, "batch_size": batch, "rows": rows}


def _fast_path_cases(backbone: str, size: int, threads: int) -> tuple[dict[str, Callable], dict[str, Any]]:
    """The inference options for one RFE U-Net (random weights, BatchNorm statistics from two training batches)."""
    from bundle.networks import make_network
    from bundle.networks.fastpath import bf16_supported, fold_batchnorm

    torch.manual_seed(0)
    model = make_network("rfeunet", backbone)
    with torch.no_grad():  # realistic BatchNorm statistics, so that folding them is not a no-op
        model.train()(torch.randn(2, 3, size, size))
    model.eval()
    x = torch.randn(1, 3, size, size)
    x_last = x.contiguous(memory_format=torch.channels_last)
    model_last = copy.deepcopy(model).to(memory_format=torch.channels_last)
    folded = fold_batchnorm(model)
    folded_last = copy.deepcopy(folded).to(memory_format=torch.channels_last)
    notes: dict[str, Any] = {"preparation_s": {}, "skipped": {}}

    def under(context: Callable[[], Any], call: Callable[[], Any]) -> Callable[[], Any]:
        def run():
            with context():
                return call()

        return run

    def bf16() -> Any:
        return torch.autocast("cpu", dtype=torch.bfloat16)

    cases: dict[str, Callable] = {
        "eager": under(torch.no_grad, lambda: model(x)),
        "inference_mode": under(torch.inference_mode, lambda: model(x)),
        "channels_last": under(torch.inference_mode, lambda: model_last(x_last)),
        "bn_folded": under(torch.inference_mode, lambda: folded(x)),
        "bn_folded+channels_last": under(torch.inference_mode, lambda: folded_last(x_last)),
    }
    start = time.perf_counter()
    with torch.no_grad():
        frozen = torch.jit.freeze(torch.jit.script(copy.deepcopy(model)))
    notes["preparation_s"]["torchscript_frozen"] = time.perf_counter() - start
    cases["torchscript_frozen"] = under(torch.no_grad, lambda: frozen(x))
    try:
        import onnxruntime
    except ImportError:
        notes["skipped"]["onnxruntime"] = "onnxruntime is not installed (pip install onnxruntime)"
    else:
        start = time.perf_counter()
        buffer = io.BytesIO()
        with contextlib.redirect_stderr(io.StringIO()):  # the legacy exporter's deprecation notice
            torch.onnx.export(
                model, (x,), buffer, input_names=["image"], output_names=["logits"], opset_version=17, dynamo=False
            )
        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads, options.inter_op_num_threads = threads, 1
        session = onnxruntime.InferenceSession(buffer.getvalue(), options, providers=["CPUExecutionProvider"])
        notes["preparation_s"]["onnxruntime"] = time.perf_counter() - start
        x_numpy = x.numpy()
        cases["onnxruntime"] = lambda: torch.from_numpy(session.run(None, {"image": x_numpy})[0])
    if bf16_supported():
        cases["bf16_autocast"] = under(torch.inference_mode, under(bf16, lambda: model(x)))
        cases["bf16_autocast+channels_last"] = under(torch.inference_mode, under(bf16, lambda: model_last(x_last)))
    else:
        for option in ("bf16_autocast", "bf16_autocast+channels_last"):
            notes["skipped"][option] = "this CPU has no native bfloat16 (AVX512-BF16 or AMX)"
    return cases, notes


def measure_fast_path(settings: Settings, workdir: Path, results: Mapping[str, Any]) -> dict[str, Any]:
    """Each of :data:`FAST_PATH_OPTIONS` against plain eager inference, for each of the settings' networks."""
    results = []
    for backbone, size in settings.fast_path_networks:
        cases, notes = _fast_path_cases(backbone, size, settings.threads)
        reference = cases["eager"]().float()
        scale = reference.abs().max().item()
        differences = {name: (call().float() - reference).abs().max().item() for name, call in cases.items()}
        times = interleaved(cases, settings.repeats, settings.warmup)
        eager = statistics.median(times["eager"])
        options = {}
        for name in FAST_PATH_OPTIONS:
            if name not in cases:
                options[name] = {"skipped": notes["skipped"].get(name, "not measured")}
                continue
            options[name] = {
                **summary(times[name]),
                "speedup": eager / statistics.median(times[name]),
                "max_abs_logit_difference": differences[name],
                "preparation_s": notes["preparation_s"].get(name),
            }
        best = max((o for o in options if "speedup" in options[o]), key=lambda o: options[o]["speedup"])
        default = bundle_default_option()
        results.append(
            {
                "network": network_label("rfeunet", backbone),
                "backbone": backbone,
                "image_size": size,
                "logit_scale": scale,
                "options": options,
                "best": best,
                "default": default if "speedup" in options.get(default, {}) else None,
            }
        )
    return {"rows": results}


def bundle_default_option() -> str:
    """The option above that configs/inference.json's fast path ("auto") runs on this CPU with trained weights."""
    from bundle.networks.fastpath import FastInferer

    with tempfile.NamedTemporaryFile(suffix=".pt") as weights:
        chosen = FastInferer("auto", weights_file=weights.name).resolve(torch.device("cpu"))
    return {"onnxruntime": "onnxruntime", "bn_folded": "bn_folded+channels_last"}.get(chosen, "eager")


def _training_items(count: int, root: Path) -> tuple[list[dict[str, str]], str]:
    """``count`` training pairs of the ISIC 2017 256 px set when it is there, else of the embedded sample."""
    from bundle.data import load_datalist, pair_images_masks

    if (root / "images").is_dir():
        pairs, _, _ = pair_images_masks(root / "images", root / "masks")
        return pairs[:count], str(root)
    return load_datalist(REPO / "sample_data", key="training")[:count], str(REPO / "sample_data")


def loader_epochs(loader: Any, epochs: int) -> tuple[dict[str, Any], Any]:
    """Iterate whole epochs as a trainer does; returns the rates and the last batch.

    ``images_per_s`` counts the batches after each epoch's first, ``first_batch_s`` is the wait for the first
    (worker start-up, unless the workers persist), ``epoch_images_per_s`` includes that wait.
    """
    first, steady, total, images, counted, batch = [], 0.0, 0.0, 0, 0, None
    for _ in range(epochs):
        epoch_start = start = time.perf_counter()
        for index, batch in enumerate(loader):
            now = time.perf_counter()
            images += len(batch["image"])
            if index == 0:
                first.append(now - start)
            else:
                steady += now - start
                counted += len(batch["image"])
            start = time.perf_counter()
        total += time.perf_counter() - epoch_start
    rates = {
        "first_batch_s": statistics.median(first) if first else None,
        "images_per_s": counted / steady if steady else None,
        "epoch_images_per_s": images / total if total else None,
    }
    return rates, batch


def _training_parts(settings: Settings, workdir: Path) -> dict[str, Any]:
    """``configs/train.json``'s loader (its cache filled), network, loss and optimizer, for the settings' data."""
    from monai.bundle import ConfigParser

    items, source = _training_items(settings.train_items, TRAINING_DATA)
    datalist = workdir / "train_datalist.json"
    datalist.write_text(json.dumps({"training": items, "validation": items[:2]}))
    parser = ConfigParser()
    parser.read_config(str(REPO / "configs" / "train.json"))
    parser.update(
        {
            "bundle_root": str(REPO),
            "dataset_dir": str(workdir),
            "datalist": str(datalist),
            "ckpt_dir": str(workdir / "models"),
            "output_dir": str(workdir / "runs"),
            **settings.train_overrides,
        }
    )
    cwd = os.getcwd()
    os.chdir(REPO)  # train.json reads inference.json's transforms relative to the bundle root
    try:
        start = time.perf_counter()
        parts = {"loader": parser.get_parsed_content("train#dataloader"), "cache_fill_s": 0.0}
        parts["cache_fill_s"] = time.perf_counter() - start
        for key in ("network", "loss_function", "optimizer", "batch_size", "image_size", "num_workers"):
            parts[key] = parser.get_parsed_content(key)
        label = network_label(parser.get_parsed_content("network_name"), parser.get_parsed_content("backbone"))
    finally:
        os.chdir(cwd)
    return {**parts, "label": label, "items": len(items), "data": source}


def _loader_variants(loader: Any, epochs: int) -> dict[str, dict[str, Any]]:
    """The rates of loaders with other worker settings over the same cached dataset."""
    from monai.data import DataLoader

    from bundle.data import loader_workers, worker_init

    variants = {}
    for workers, persistent in ((0, False), (loader_workers(), False), (loader_workers(), True)):
        if workers == 0 and persistent:
            continue
        other = DataLoader(
            loader.dataset,
            batch_size=loader.batch_size,
            shuffle=True,
            drop_last=loader.drop_last,
            num_workers=workers,
            persistent_workers=persistent,
            worker_init_fn=worker_init,
        )
        variants[f"{workers} workers{', persistent' if persistent else ''}"] = loader_epochs(other, epochs)[0]
        del other
    return variants


def measure_training(settings: Settings, workdir: Path, results: Mapping[str, Any]) -> dict[str, Any]:
    """One training step (forward, loss, backward, Adam) of ``configs/train.json`` against its cached loader."""
    parts = _training_parts(settings, workdir)
    loader, network, batch_size = parts["loader"], parts["network"], int(parts["batch_size"])
    # the loader alone, as configured, then with other worker settings over the same cached dataset
    configured, batch = loader_epochs(loader, settings.loader_epochs)
    variants = _loader_variants(loader, settings.loader_epochs)

    network.train()
    x, y = batch["image"].as_tensor()[:batch_size], batch["label"].as_tensor()[:batch_size]
    if len(x) < batch_size:  # a small dataset's last batch: repeat it to the configured size
        repeat = math.ceil(batch_size / len(x))
        x, y = x.repeat(repeat, 1, 1, 1)[:batch_size], y.repeat(repeat, 1, 1, 1)[:batch_size]

    def step() -> None:
        parts["optimizer"].zero_grad(set_to_none=True)
        parts["loss_function"](network(x), y).backward()
        parts["optimizer"].step()

    step_times = interleaved({"step": step}, settings.train_steps, settings.warmup)["step"]
    result = {
        "network": parts["label"],
        "image_size": int(parts["image_size"]),
        "batch_size": batch_size,
        "data": parts["data"],
        "items": parts["items"],
        "num_workers": int(parts["num_workers"]),
        "persistent_workers": bool(getattr(loader, "persistent_workers", False)),
        "cache_fill_s": parts["cache_fill_s"],
        "step": summary(step_times),
        "step_images_per_s": batch_size / statistics.median(step_times),
        "loader": configured,
        "loader_first_batch_s": configured["first_batch_s"],
        "loader_images_per_s": configured["images_per_s"],
        "loader_variants": variants,
    }
    result["loader_vs_step"] = ratio(result["loader_images_per_s"], result["step_images_per_s"])
    return result
