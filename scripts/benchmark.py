"""Benchmark the RFE U-Net beside the networks a MONAI user would pick instead, and the bundle around it.

Every figure comes from one run on one machine, side by side, with a fixed number of threads: warm-up calls, then
the median of repeated calls, taken round-robin over the cases being compared so that a disturbance (another
process, a frequency change) hits them alike. Sections:

- ``ceiling``: multiply-accumulates per second (MAC/s) of one large 3x3 convolution, the most this machine gives;
- ``networks``: forward latency at batch 1 and throughput at batch 8 for the RFE U-Net (ResNet-34/50/101),
  MONAI's FlexibleUNet (ResNet-34/101) and BasicUNet, with parameters, MACs, MAC/s, and the share of the time
  spent in convolutions (the rest is memory-bound: normalisation, activations, pooling, concatenation, copies);
- ``fast_path``: inference options (inference mode, channels-last, BatchNorm folding, TorchScript freezing,
  ONNX Runtime, bf16 autocast) against plain eager inference of the RFE U-Net;
- ``training``: one training step (forward, loss, backward, Adam) of ``configs/train.json``'s network at its batch
  size, against its cached training loader alone;
- ``end_to_end``: one photograph through the bundle's own path (``bundle.inference.LesionSegmenter``: decode,
  preprocess, forward, resize back, write the PNG), each case in a fresh process (for its peak memory), against
  the forward pass alone;
- ``batch``: a folder of photographs through the same runner (photos/s) against forward-only throughput;
- ``slicer_worker``: the 3D Slicer module's worker process, its warm request against the bundle's cold start;
- ``slicer_clicks``: one click in that worker with a click-guided network, against its segment request
  (``scripts/benchmark_clicks.py``, which also measures it alone).

Writes the results as JSON (``--out_json``) and as tables between the ``<!-- benchmark:begin -->`` and
``<!-- benchmark:end -->`` lines of ``--out_md`` (docs/performance.md), each target of issue 11 marked met or not.

    python scripts/benchmark.py                          # everything, all the cores this process may use
    taskset -c 1 python scripts/benchmark.py --threads 1 --sections networks,fast_path
    python scripts/benchmark.py --quick --out_json /tmp/b.json --out_md /tmp/b.md   # a tiny run (tests)

MACs are counted by forward hooks on convolutions, transposed convolutions and linear layers (one multiply-add
each); thop, which the paper used, also counts BatchNorm and upsampling and counts a stride-2 transposed
convolution four times, so its totals are larger (tests/test_benchmark.py checks the two against each other).
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
import resource
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import fire

REPO = Path(__file__).resolve().parents[1]
if __package__ in (None, ""):  # run as `python scripts/benchmark.py`: make `bundle` importable
    sys.path.insert(0, str(REPO))

import torch  # noqa: E402
from torch import nn  # noqa: E402

from scripts import benchmark_clicks  # noqa: E402

SHARED = Path(os.environ.get("RFE_SHARED_DIR", REPO.parent / "shared"))
PHOTO = SHARED / "data" / "isic2017_val" / "images" / "ISIC_0001769.jpg"  # 1024 x 683
FULL_RESOLUTION = SHARED / "data" / "isic2017_val" / "full_resolution" / "ISIC_0012288.jpg"  # 4288 x 2848
PHOTO_FOLDER = SHARED / "data" / "isic2017_val" / "images"
TRAINING_DATA = SHARED / "data" / "isic2017_256" / "training"
WORKER_LIBRARY = REPO / "slicer_extension" / "SkinLesionSegmentation"
BEGIN, END = "<!-- benchmark:begin -->", "<!-- benchmark:end -->"
SECTIONS = ("ceiling", "networks", "fast_path", "training", "end_to_end", "batch", "slicer_worker", "slicer_clicks")
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


# -- measuring ----------------------------------------------------------------------------------------------------


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
    label = {"rfeunet": "RFE U-Net", "flexibleunet": "FlexibleUNet", "basicunet": "BasicUNet"}[name]
    return f"{label} ResNet-{backbone[6:]}" if backbone and name != "basicunet" else label


def subprocess_env(threads: int) -> dict[str, str]:
    """The environment of the benchmark's child processes: the same thread count, unbuffered output."""
    return {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads), "PYTHONUNBUFFERED": "1"}


# -- sections -----------------------------------------------------------------------------------------------------


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
        "command": "python scripts/benchmark.py " + " ".join(shlex.quote(a) for a in sys.argv[1:]),
        "cpu": cpu,
        "cpu_flags": flags,
        "logical_cpus": os.cpu_count(),
        "cpus_allowed": affinity,
        "threads": settings.threads,
        "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "versions": versions,
        "settings": asdict(settings),
    }


def measure_ceiling(settings: Settings) -> dict[str, Any]:
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


def measure_networks(settings: Settings, ceiling: Mapping[str, Any] | None) -> dict[str, Any]:
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
    peak = ceiling.get("gmacs_per_s") if ceiling else None
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


def measure_fast_path(settings: Settings) -> dict[str, Any]:
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


def measure_training(settings: Settings, workdir: Path) -> dict[str, Any]:
    from monai.bundle import ConfigParser
    from monai.data import DataLoader

    from bundle.data import loader_workers, worker_init

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
        loader = parser.get_parsed_content("train#dataloader")
        cache_s = time.perf_counter() - start
        network = parser.get_parsed_content("network")
        loss_function = parser.get_parsed_content("loss_function")
        optimizer = parser.get_parsed_content("optimizer")
        batch_size = int(parser.get_parsed_content("batch_size"))
        size = int(parser.get_parsed_content("image_size"))
        label = network_label(parser.get_parsed_content("network_name"), parser.get_parsed_content("backbone"))
        workers = int(parser.get_parsed_content("num_workers"))
    finally:
        os.chdir(cwd)

    # the loader alone, as configured, then with other worker settings over the same cached dataset
    configured, batch = loader_epochs(loader, settings.loader_epochs)
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
        variants[f"{workers} workers{', persistent' if persistent else ''}"] = loader_epochs(
            other, settings.loader_epochs
        )[0]
        del other

    network.train()
    x, y = batch["image"].as_tensor()[:batch_size], batch["label"].as_tensor()[:batch_size]
    if len(x) < batch_size:  # a small dataset's last batch: repeat it to the configured size
        repeat = math.ceil(batch_size / len(x))
        x, y = x.repeat(repeat, 1, 1, 1)[:batch_size], y.repeat(repeat, 1, 1, 1)[:batch_size]

    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        loss_function(network(x), y).backward()
        optimizer.step()

    step_times = interleaved({"step": step}, settings.train_steps, settings.warmup)["step"]
    result = {
        "network": label,
        "image_size": size,
        "batch_size": batch_size,
        "data": source,
        "items": len(items),
        "num_workers": workers,
        "persistent_workers": bool(getattr(loader, "persistent_workers", False)),
        "cache_fill_s": cache_s,
        "step": summary(step_times),
        "step_images_per_s": batch_size / statistics.median(step_times),
        "loader": configured,
        "loader_first_batch_s": configured["first_batch_s"],
        "loader_images_per_s": configured["images_per_s"],
        "loader_variants": variants,
    }
    result["loader_vs_step"] = ratio(result["loader_images_per_s"], result["step_images_per_s"])
    return result


def _photo_case(case: Mapping[str, Any]) -> dict[str, Any]:
    """Run in a fresh process: one photo through ``LesionSegmenter`` end to end, and the forward pass alone."""
    started = time.perf_counter()
    torch.set_num_threads(int(case["threads"]))
    from bundle.inference import LesionSegmenter

    rss_imported = peak_rss_mb()
    segmenter = LesionSegmenter(bundle_root=REPO, overrides={**case["overrides"], "output_dir": case["output_dir"]})
    runner = segmenter.runner
    loaded_s = time.perf_counter() - started
    rss_loaded = peak_rss_mb()
    photo = case["photo"]
    start = time.perf_counter()
    first = segmenter.segment(photo)
    first_s = time.perf_counter() - start
    network_input = runner.preprocessing({"image": photo})["image"].unsqueeze(0).to(runner.device)
    forward = runner.forward if hasattr(runner, "forward") else _legacy_forward(runner)

    def preprocess():
        return runner.preprocessing({"image": photo})

    prepared = preprocess()
    predicted = runner.predict(prepared)
    cases = {
        "end_to_end": lambda: segmenter.segment(photo),
        "forward": lambda: forward(network_input),
        "decode_preprocess": preprocess,
        "forward_postprocess": lambda: runner.predict(prepared),
        "write": lambda: runner.writer(predicted),
    }
    times = interleaved(cases, int(case["repeats"]), int(case["warmup"]))
    return {
        "photo": photo,
        "photo_size": [int(v) for v in first["pred"].shape],  # (W, H)
        "network_input": list(network_input.shape),
        "mask_written": Path(first.get("pred_path", "")).is_file(),
        "process_to_loaded_s": loaded_s,
        "first_photo_s": first_s,
        **{name: summary(values) for name, values in times.items()},
        "rss_after_imports_mb": rss_imported,
        "rss_after_loading_mb": rss_loaded,
        "peak_rss_mb": peak_rss_mb(),
        "settings": _runner_settings(segmenter),
    }


def _legacy_forward(runner: Any) -> Callable[[torch.Tensor], torch.Tensor]:
    """The runner's network call as its ``predict`` makes it (for runners without a ``forward`` method)."""
    autocast = getattr(runner, "_autocast", contextlib.nullcontext)

    def forward(batch: torch.Tensor) -> torch.Tensor:
        with torch.inference_mode(), autocast():
            return runner.inferer(batch, runner.network)

    return forward


def _runner_settings(segmenter: Any) -> dict[str, Any]:
    """The network and options the bundle's inference resolved (they may come from the checkpoint)."""
    settings = {}
    for key in ("network_name", "backbone", "image_size", "ckpt_path", "amp", "device", "fast_path"):
        with contextlib.suppress(Exception):
            value = segmenter.parser.get_parsed_content(key)
            settings[key] = value if isinstance(value, (int, float, bool, str)) or value is None else str(value)
    settings["has_weights"] = bool(getattr(segmenter.runner, "has_weights", False))
    return settings


def run_case_in_subprocess(case: dict[str, Any], workdir: Path, threads: int) -> dict[str, Any]:
    """Measure ``case`` in a fresh ``python scripts/benchmark.py --case FILE`` process and return its result."""
    case_file = workdir / f"case_{len(list(workdir.glob('case_*.json')))}.json"
    result_file = case_file.with_suffix(".result.json")
    case_file.write_text(json.dumps({**case, "result_path": str(result_file)}))
    process = subprocess.run(
        [sys.executable, str(Path(__file__).resolve()), "--case", str(case_file)],
        cwd=REPO,
        capture_output=True,
        text=True,
        env=subprocess_env(threads),
    )
    if process.returncode != 0 or not result_file.is_file():
        tail = " | ".join((process.stderr or process.stdout).strip().splitlines()[-3:])
        raise RuntimeError(f"benchmark case {case_file} failed (exit {process.returncode}): {tail}")
    return json.loads(result_file.read_text())


def measure_end_to_end(settings: Settings, workdir: Path) -> dict[str, Any]:
    rows = []
    for photo in (PHOTO, FULL_RESOLUTION):
        if not photo.is_file():
            rows.append({"photo": str(photo), "skipped": "photo not found (set RFE_SHARED_DIR to the shared/ folder)"})
            continue
        case = {
            "kind": "photo",
            "photo": str(photo),
            "threads": settings.threads,
            "repeats": settings.repeats,
            "warmup": settings.warmup,
            "overrides": settings.overrides,
            "output_dir": str(workdir / "masks"),
        }
        row = run_case_in_subprocess(case, workdir, settings.threads)
        row["end_to_end_vs_forward"] = ratio(row["end_to_end"]["median_s"], row["forward"]["median_s"])
        rows.append(row)
    return {"rows": rows}


def measure_batch(settings: Settings, workdir: Path) -> dict[str, Any]:
    from bundle.data import list_images
    from bundle.inference import LesionSegmenter

    if not PHOTO_FOLDER.is_dir():
        return {"skipped": f"{PHOTO_FOLDER} not found (set RFE_SHARED_DIR to the shared/ folder)"}
    items = list_images(PHOTO_FOLDER)[: settings.folder_photos]
    segmenter = LesionSegmenter(
        bundle_root=REPO, overrides={**settings.overrides, "output_dir": str(workdir / "batch")}
    )
    runner = segmenter.runner
    forward = runner.forward if hasattr(runner, "forward") else _legacy_forward(runner)
    network_input = runner.preprocessing(dict(items[0]))["image"].unsqueeze(0).to(runner.device)
    runner.run(items[:1])  # warm-up
    start = time.perf_counter()
    results, failures = runner.run(items)
    folder_s = time.perf_counter() - start
    forward_times = interleaved({"forward": lambda: forward(network_input)}, settings.repeats, settings.warmup)
    forward_rate = 1.0 / statistics.median(forward_times["forward"])
    result = {
        "photos": len(items),
        "segmented": len(results),
        "failures": len(failures),
        "folder_s": folder_s,
        "photos_per_s": len(results) / folder_s,
        "forward_batch_size": 1,
        "forward": summary(forward_times["forward"]),
        "forward_photos_per_s": forward_rate,
        "settings": _runner_settings(segmenter),
    }
    result["batch_vs_forward"] = ratio(result["photos_per_s"], forward_rate)
    return result


def measure_slicer_worker(settings: Settings, workdir: Path) -> dict[str, Any]:
    worker_script = WORKER_LIBRARY / "SkinLesionSegmentationLib" / "worker.py"
    if not worker_script.is_file():
        return {"skipped": "the Slicer worker (slicer_extension/.../worker.py) does not exist yet"}
    if not (PHOTO.is_file() and PHOTO_FOLDER.is_dir()):
        return {"skipped": f"photos not found under {PHOTO_FOLDER}"}
    import numpy as np
    from PIL import Image

    sys.path.insert(0, str(WORKER_LIBRARY))
    from SkinLesionSegmentationLib.client import WorkerClient

    # the bundle's cold start: a fresh `monai.bundle run` of inference.json on one photo
    single = workdir / "single"
    single.mkdir(exist_ok=True)
    (single / PHOTO.name).symlink_to(PHOTO)
    overrides = [
        part
        for key, value in settings.overrides.items()
        for part in (f"--{key}", value if isinstance(value, str) else json.dumps(value))
    ]
    command = [
        sys.executable,
        "-m",
        "monai.bundle",
        "run",
        "--config_file",
        "configs/inference.json",
        "--dataset_dir",
        str(single),
        "--output_dir",
        str(workdir / "cold"),
        *overrides,
    ]
    start = time.perf_counter()
    cold = subprocess.run(command, cwd=REPO, capture_output=True, text=True, env=subprocess_env(settings.threads))
    cold_s = time.perf_counter() - start
    if cold.returncode != 0:
        raise RuntimeError(f"bundle cold start failed: {' | '.join(cold.stderr.strip().splitlines()[-3:])}")

    second = next(p for p in sorted(PHOTO_FOLDER.iterdir()) if p.suffix.lower() == ".jpg" and p != PHOTO)
    photos = [np.asarray(Image.open(p).convert("RGB")) for p in (PHOTO, second)]
    client = WorkerClient(
        sys.executable, REPO, device="cpu", overrides=settings.overrides, env=subprocess_env(settings.threads)
    )
    try:
        start = time.perf_counter()
        client.start()
        started_s = time.perf_counter() - start
        start = time.perf_counter()
        client.segment(photos[0])
        first_s = time.perf_counter() - start
        warm = []
        for _ in range(max(1, settings.repeats)):
            start = time.perf_counter()
            client.segment(photos[1])
            warm.append(time.perf_counter() - start)
    finally:
        client.close()
    result = {
        "bundle_cold_start_s": cold_s,
        "worker_start_s": started_s,
        "worker_first_request_s": first_s,
        "worker_warm_request": summary(warm),
        "photo_sizes": [list(p.shape[:2]) for p in photos],
    }
    result["warm_vs_cold"] = ratio(result["worker_warm_request"]["median_s"], cold_s)
    return result


# -- targets and report -------------------------------------------------------------------------------------------


def _target(text: str, measured: float | None, limit: float, at_least: bool, unit: str = "×") -> dict[str, Any]:
    met = None if measured is None else (measured >= limit if at_least else measured <= limit)
    return {"target": text, "measured": measured, "limit": limit, "at_least": at_least, "unit": unit, "met": met}


def evaluate_targets(results: Mapping[str, Any]) -> list[dict[str, Any]]:
    """Issue 11's targets, each with the measured value it is judged on (None: not measured in this run)."""
    targets = []
    rows = results.get("networks", {}).get("rows", {})
    for backbone in ("resnet101", "resnet34"):
        row = rows.get(network_label("rfeunet", backbone), {})
        targets.append(
            _target(
                f"RFE U-Net {backbone} MAC/s ≥ 0.8× FlexibleUNet {backbone}'s", row.get("vs_flexibleunet"), 0.8, True
            )
        )
    e2e = {Path(r["photo"]).name: r for r in results.get("end_to_end", {}).get("rows", []) if "skipped" not in r}
    small, large = e2e.get(PHOTO.name, {}), e2e.get(FULL_RESOLUTION.name, {})
    targets.append(
        _target("end to end, 1024×683 photo ≤ 1.25× the forward pass", small.get("end_to_end_vs_forward"), 1.25, False)
    )
    targets.append(
        _target("end to end, 4288×2848 photo ≤ 2× the forward pass", large.get("end_to_end_vs_forward"), 2.0, False)
    )
    targets.append(_target("peak memory, 4288×2848 photo < 2 GB", large.get("peak_rss_mb"), 2048, False, " MiB"))
    targets.append(
        _target(
            "batch inference ≥ 0.8× forward-only throughput",
            results.get("batch", {}).get("batch_vs_forward"),
            0.8,
            True,
        )
    )
    targets.append(
        _target(
            "cached training loader ≥ 3× the training step's images/s",
            results.get("training", {}).get("loader_vs_step"),
            3.0,
            True,
        )
    )
    for row in results.get("fast_path", {}).get("rows", []):
        default = row["options"].get(row["default"] or "", {})
        targets.append(
            _target(
                f"fast path ≥ 1.3× eager, {row['network']} {row['image_size']} px (the bundle's default: "
                f"{row['default']}; fastest here: {row['best']})",
                default.get("speedup"),
                1.3,
                True,
            )
        )
    return targets


def _fmt(value: Any, digits: int = 2) -> str:
    if value is None:
        return "—"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def _ms(entry: Mapping[str, Any] | None) -> str:
    return "—" if not entry else f"{entry['median_s'] * 1000:.1f}"


def _table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += [
        "| " + " | ".join(_fmt(cell) if not isinstance(cell, str) else cell for cell in row) + " |" for row in rows
    ]
    return lines + [""]


def render_markdown(results: Mapping[str, Any]) -> str:
    """The tables of docs/performance.md's generated block."""
    machine = results["machine"]

    def ok(section: str) -> bool:
        return section in results and "error" not in results[section]

    versions = ", ".join(f"{k} {v}" for k, v in machine["versions"].items())
    out = [
        f"Measured {machine['date']} with `{machine['command'].strip()}`: {machine['cpu']} "
        f"({machine['logical_cpus']} logical CPUs, allowed {machine['cpus_allowed']}), **{machine['threads']} "
        f"thread(s)**, CPU flags {', '.join(machine['cpu_flags']) or 'none of note'}; {versions}. "
        f"Medians of {machine['settings']['repeats']} timed calls after {machine['settings']['warmup']} warm-up "
        "call(s), taken round-robin over the cases compared. "
        + (
            "GPU: not measured — no GPU was available to this run." if not machine["gpu"] else f"GPU: {machine['gpu']}."
        ),
        "",
        "### Targets (issue 11)",
        "",
    ]
    out += _table(
        ["target", "measured", "met"],
        [
            [
                t["target"],
                _fmt(t["measured"]) + (t["unit"] if t["measured"] is not None else ""),
                "not measured" if t["met"] is None else ("**met**" if t["met"] else "**not met**"),
            ]
            for t in results["targets"]
        ],
    )
    if ok("ceiling"):
        c = results["ceiling"]
        out += [
            "### Machine ceiling",
            "",
            f"One 3×3 convolution {c['shape']} → {c['shape'][1]} channels: {c['macs'] / 1e9:.2f} GMAC in "
            f"{c['median_s'] * 1000:.1f} ms = **{c['gmacs_per_s']:.1f} GMAC/s**. The RFE U-Net's 5×5 stride-1 "
            f"max-pool of {c['max_pool']['shape']}: torch's kernel {_ms(c['max_pool']['torch'])} ms, the shifted "
            f"maxima of `bundle.networks.blocks.MaxPool2d` {_ms(c['max_pool']['shifted_maxima'])} ms "
            f"({c['max_pool']['speedup']:.1f}× faster, the same values).",
            "",
        ]
    if ok("networks"):
        n = results["networks"]
        b = n["batch_size"]
        out += [f"### Networks ({n['image_size']}×{n['image_size']}, float32, eager, `torch.inference_mode`)", ""]
        out += _table(
            [
                "network",
                "parameters (M)",
                "GMAC",
                "batch 1 (ms)",
                "GMAC/s",
                "of ceiling",
                "vs FlexibleUNet",
                f"batch {b} (images/s)",
                "time in conv",
                "conv GMAC/s",
            ],
            [
                [
                    label,
                    r["parameters"] / 1e6,
                    r["macs"] / 1e9,
                    _ms(r["batch1"]),
                    _fmt(r["gmacs_per_s"], 1),
                    _fmt(r["of_ceiling"]),
                    _fmt(r.get("vs_flexibleunet")),
                    _fmt(r["images_per_s"]),
                    f"{r['convolution_time_share'] * 100:.0f}%",
                    _fmt(r["convolution_gmacs_per_s"], 1),
                ]
                for label, r in n["rows"].items()
            ],
        )
        out += [
            "Where the batch-1 time goes (torch.profiler, own CPU time of the largest operators; "
            "`_slow_conv2d_forward` is PyTorch's im2col path, which it picks over oneDNN for 1×1 convolutions on one "
            "thread and for small batch-1 feature maps):",
            "",
        ]
        out += [
            f"- {label}: " + ", ".join(f"`{op}` {share * 100:.0f}%" for op, share in r["top_operators"].items())
            for label, r in n["rows"].items()
        ]
        out += [""]
    if ok("fast_path"):
        out += ["### Fast inference path (RFE U-Net, batch 1; speed-up over plain eager float32)", ""]
        header = ["option"] + [f"{r['network']} {r['image_size']} px" for r in results["fast_path"]["rows"]]
        lines = []
        default = {r["default"] for r in results["fast_path"]["rows"]}
        for option in FAST_PATH_OPTIONS:
            cells = [f"`{option}`" + (" (the bundle's default)" if option in default else "")]
            for r in results["fast_path"]["rows"]:
                o = r["options"][option]
                cells.append(
                    f"skipped: {o['skipped']}"
                    if "skipped" in o
                    else f"{o['median_s'] * 1000:.1f} ms, **{o['speedup']:.2f}×**, "
                    f"Δ {o['max_abs_logit_difference']:.1e}"
                )
            lines.append(cells)
        out += _table(header, lines)
        prep = [
            f"{r['network']} {r['image_size']} px: "
            + ", ".join(f"{k} {v['preparation_s']:.1f} s" for k, v in r["options"].items() if v.get("preparation_s"))
            for r in results["fast_path"]["rows"]
        ]
        out += [
            "Δ: largest absolute logit difference from eager (logits of random weights, scale "
            + ", ".join(f"{r['logit_scale']:.2f}" for r in results["fast_path"]["rows"])
            + "). One-off preparation: "
            + "; ".join(prep)
            + ".",
            "",
        ]
    if ok("training"):
        t = results["training"]
        out += [f"### Training ({t['network']}, {t['image_size']} px, batch {t['batch_size']}, configs/train.json)", ""]
        out += _table(
            ["measure", "value"],
            [
                ["one step (forward, loss, backward, Adam), median", f"{t['step']['median_s']:.2f} s"],
                ["step throughput", f"{t['step_images_per_s']:.2f} images/s"],
                [
                    f"cached loader alone ({t['items']} items of {t['data']}, {t['num_workers']} workers, "
                    f"persistent: {_fmt(t['persistent_workers'])})",
                    f"{_fmt(t['loader_images_per_s'], 1)} images/s",
                ],
                ["loader ÷ step", f"{_fmt(t['loader_vs_step'], 1)}×"],
                ["loader's first batch of an epoch (worker start)", f"{_fmt(t['loader_first_batch_s'])} s"],
                ["cache fill (decode + resize, once)", f"{t['cache_fill_s']:.1f} s"],
            ],
        )
        out += _table(
            [
                "loader over the same cached items",
                "images/s after the first batch",
                "first batch (s)",
                "images/s over whole epochs",
            ],
            [
                [name, _fmt(v["images_per_s"], 1), _fmt(v["first_batch_s"]), _fmt(v["epoch_images_per_s"], 1)]
                for name, v in {"as configured": t["loader"], **t["loader_variants"]}.items()
            ],
        )
    if ok("end_to_end"):
        rows = [r for r in results["end_to_end"]["rows"] if "skipped" not in r]
        out += ["### One photograph end to end (`LesionSegmenter.segment`, a fresh process per photo)", ""]
        if rows:
            s = rows[0]["settings"]
            out += [
                f"Network: {s.get('network_name')} {s.get('backbone')} at {s.get('image_size')} px, "
                f"trained weights: {_fmt(s.get('has_weights'))}.",
                "",
            ]
        out += _table(
            [
                "photo (W×H)",
                "end to end (ms)",
                "forward alone (ms)",
                "ratio",
                "decode + preprocess (ms)",
                "forward + postprocess (ms)",
                "write PNG (ms)",
                "peak RSS (MiB)",
                "first photo (ms)",
            ],
            [
                [
                    f"{Path(r['photo']).name} ({r['photo_size'][0]}×{r['photo_size'][1]})",
                    _ms(r["end_to_end"]),
                    _ms(r["forward"]),
                    f"{r['end_to_end_vs_forward']:.2f}×",
                    _ms(r["decode_preprocess"]),
                    _ms(r["forward_postprocess"]),
                    _ms(r["write"]),
                    _fmt(r["peak_rss_mb"], 0),
                    f"{r['first_photo_s'] * 1000:.0f}",
                ]
                for r in rows
            ],
        )
        out += [f"Skipped: {r['photo']}: {r['skipped']}" for r in results["end_to_end"]["rows"] if "skipped" in r]
    if ok("batch"):
        b = results["batch"]
        out += ["### Batch inference over a folder (`SegmentationRunner.run`)", ""]
        out += (
            _table(
                ["photos", "photos/s", "forward-only photos/s (batch 1)", "ratio"],
                [[b["photos"], b["photos_per_s"], b["forward_photos_per_s"], f"{b['batch_vs_forward']:.2f}×"]],
            )
            if "skipped" not in b
            else [f"Skipped: {b['skipped']}", ""]
        )
    if ok("slicer_worker"):
        w = results["slicer_worker"]
        out += ["### 3D Slicer worker", ""]
        out += (
            _table(
                ["measure", "seconds"],
                [
                    ["bundle cold start (`monai.bundle run`, one photo, fresh process)", w["bundle_cold_start_s"]],
                    ["worker start (load the bundle)", w["worker_start_s"]],
                    ["worker, first request", w["worker_first_request_s"]],
                    ["worker, warm request (second photo), median", w["worker_warm_request"]["median_s"]],
                    ["warm request ÷ cold start", w["warm_vs_cold"]],
                ],
            )
            if "skipped" not in w
            else [f"Skipped: {w['skipped']}", ""]
        )
    if ok("slicer_clicks"):
        out += benchmark_clicks.render(results["slicer_clicks"])
    out += [
        f"Section {name} failed: {results[name]['error']}"
        for name in SECTIONS
        if name in results and "error" in results[name]
    ]
    out += [
        "### GPU",
        "",
        "Not measured: no GPU was lent to this run; the GPU rows (training images/s with AMP, "
        "inference latency, peak GPU memory) are left empty rather than estimated.",
        "",
    ]
    return "\n".join(out).rstrip() + "\n"


def write_markdown(path: Path, block: str) -> None:
    """Replace the generated block of ``path`` (between BEGIN and END), or write a file holding only it."""
    from bundle.files import write_text_atomically

    text = path.read_text(encoding="utf-8") if path.is_file() else ""
    generated = f"{BEGIN}\n{block}{END}\n"
    if BEGIN in text and END in text:
        before, rest = text.split(BEGIN, 1)
        after = rest.split(END, 1)[1].lstrip("\n")
        text = before + generated + ("\n" + after if after else "")
    else:
        text = "# Performance\n\n" + generated
    write_text_atomically(path, text)


# -- command line -------------------------------------------------------------------------------------------------


def main(
    threads: int | None = None,
    quick: bool = False,
    sections: str | Sequence[str] = "all",
    out_json: str = "docs/performance.json",
    out_md: str = "docs/performance.md",
    overrides: dict | None = None,
    case: str = "",
) -> dict[str, Any] | None:
    """Run the benchmark and write ``out_json`` and the generated block of ``out_md`` (paths relative to the repo).

    Args:
        threads: torch threads for every measurement (default: the CPUs this process may run on); recorded.
        quick: a tiny configuration (64 px, batch 2, one repeat) that checks the machinery in seconds.
        sections: comma-separated subset of ceiling, networks, fast_path, training, end_to_end, batch,
            slicer_worker, slicer_clicks; ``all``: every one.
        out_json: where to write the measurements.
        out_md: where to write the generated block; everything outside it is kept.
        overrides: configs/inference.json keys and values for the bundle's own path (end_to_end, batch,
            slicer_worker), as a JSON object (for example one that sets ckpt_path to models/model.pt).
        case: internal: measure the case described by this JSON file in this (fresh) process.
    """
    if case:
        spec = json.loads(Path(case).read_text())
        Path(spec["result_path"]).write_text(json.dumps(_photo_case(spec)))
        return None
    threads = int(threads or (len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()))
    torch.set_num_threads(threads)
    chosen = list(SECTIONS) if sections == "all" else [sections] if isinstance(sections, str) else list(sections)
    chosen = [s.strip() for item in chosen for s in str(item).split(",") if s.strip()]
    unknown = sorted(set(chosen) - set(SECTIONS))
    if unknown:
        raise SystemExit(f"ERROR unknown section(s) {', '.join(unknown)}; choose from {', '.join(SECTIONS)}")
    settings = Settings.quick(threads) if quick else Settings(threads=threads)
    settings.overrides.update(overrides or {})
    results: dict[str, Any] = {"machine": machine_info(settings)}
    failed: list[str] = []
    with tempfile.TemporaryDirectory(prefix="rfe-benchmark-") as tmp:
        workdir = Path(tmp)
        steps = {
            "ceiling": lambda: measure_ceiling(settings),
            "networks": lambda: measure_networks(settings, results.get("ceiling")),
            "fast_path": lambda: measure_fast_path(settings),
            "training": lambda: measure_training(settings, workdir),
            "end_to_end": lambda: measure_end_to_end(settings, workdir),
            "batch": lambda: measure_batch(settings, workdir),
            "slicer_worker": lambda: measure_slicer_worker(settings, workdir),
            "slicer_clicks": lambda: benchmark_clicks.measure(settings),
        }
        for name in SECTIONS:
            if name in chosen:
                start = time.perf_counter()
                print(f"benchmark: {name} ...", file=sys.stderr, flush=True)
                try:
                    results[name] = steps[name]()
                except Exception as error:  # noqa: BLE001 - one failed section must not lose the others
                    results[name] = {"error": f"{type(error).__name__}: {error}"}
                    failed.append(name)
                    print(f"ERROR benchmark section {name}: {results[name]['error']}", file=sys.stderr, flush=True)
                    continue
                print(f"benchmark: {name} took {time.perf_counter() - start:.0f} s", file=sys.stderr, flush=True)
    results["targets"] = evaluate_targets(results)
    json_path, md_path = REPO / out_json, REPO / out_md
    json_path.parent.mkdir(parents=True, exist_ok=True)
    json_path.write_text(json.dumps(results, indent=1) + "\n")
    write_markdown(md_path, render_markdown(results))
    print(render_markdown(results))
    if failed:
        raise SystemExit(1)
    return None


if __name__ == "__main__":
    fire.Fire(main)
