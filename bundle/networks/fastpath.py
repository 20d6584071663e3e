"""The fast inference path: the same trained network, run faster, with the same masks.

``FastInferer`` is the ``inferer`` of ``configs/inference.json``, so every caller of that file gets it: the bundle
runner, ``LesionSegmenter`` (the 3D Slicer worker, batch and multi-process inference) and MONAI Label, which calls
the config's inferer with the network it loaded. Options, measured against plain eager PyTorch by
``scripts/benchmark.py`` (docs/performance.md, "Fast inference path"):

- ``"onnxruntime"``: the network exported to ONNX once and run by ONNX Runtime's CPU provider, which fuses each
  convolution with its BatchNorm and SiLU and keeps one blocked memory layout; float32, the same logits to ~1e-7.
- ``"bn_folded"``: a copy with every BatchNorm folded into its convolution (``bundle.networks.fusion``), in
  channels-last memory; float32.
- ``"none"``: the network itself.
- ``"auto"`` (the default): on the CPU, ``"onnxruntime"`` for trained weights (a ``weights_file`` that exists) when
  ``onnx`` and ``onnxruntime`` are installed, else ``"bn_folded"`` (an export costs seconds, worth paying once per
  checkpoint, not for random weights); on a GPU ``"none"``, where the runner's mixed precision is the fast path.
"""

from __future__ import annotations

import hashlib
import io
import logging
import warnings
import weakref
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from monai.inferers import Inferer
from torch import nn

from bundle.config import choice
from bundle.errors import ConfigError
from bundle.networks.fusion import fold_batchnorm

__all__ = [
    "FAST_PATHS",
    "FastInferer",
    "bf16_supported",
    "cache_folder",
    "fold_batchnorm",
    "onnxruntime_available",
    "prune_cache",
]

logger = logging.getLogger(__name__)

FAST_PATHS = ("auto", "onnxruntime", "bn_folded", "none")
ONNX_OPSET = 17
KEEP_CACHED = 2  # exported models kept per cache folder (the newest)
CACHE_FOLDER = ".cache"


def bf16_supported() -> bool:
    """Whether this CPU runs bfloat16 convolutions natively (AVX512-BF16 or AMX), where bf16 autocast can pay."""
    return bool(torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported())


def onnxruntime_available() -> bool:
    """Whether ``onnx`` (needed by the exporter) and ``onnxruntime`` can be imported."""
    try:
        import onnx  # noqa: F401
        import onnxruntime  # noqa: F401
    except ImportError:
        return False
    return True


def weights_digest(network: nn.Module) -> str:
    """A hash of the network's class, tensor names, shapes and values, and of torch's version (the exporter's)."""
    digest = hashlib.blake2b(f"{type(network).__qualname__}|{torch.__version__}|{ONNX_OPSET}".encode(), digest_size=16)
    for name, tensor in network.state_dict().items():
        value = tensor.detach().cpu().contiguous()
        digest.update(f"{name}|{tuple(value.shape)}|{value.dtype}".encode())
        digest.update(value.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def export_onnx(network: nn.Module, example: torch.Tensor) -> bytes:
    """The eval-mode network as ONNX bytes, with batch, height and width left free."""
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")  # the tracer's notes on the size checks, which hold for every exported size
        buffer = io.BytesIO()
        torch.onnx.export(
            network,
            (example,),
            buffer,
            input_names=["image"],
            output_names=["logits"],
            dynamic_axes={
                "image": {0: "batch", 2: "height", 3: "width"},
                "logits": {0: "batch", 2: "height", 3: "width"},
            },
            opset_version=ONNX_OPSET,
            dynamo=False,
        )
    return buffer.getvalue()


SOURCE_SUFFIX = ".source.json"  # beside each cached model: the weights file it was exported from


def _source_of(weights_file: str | Path | None) -> dict[str, Any]:
    if not weights_file or not Path(weights_file).is_file():
        return {"weights_file": None}
    stat = Path(weights_file).stat()
    return {"weights_file": str(Path(weights_file).resolve()), "size": stat.st_size, "mtime_ns": stat.st_mtime_ns}


def _is_stale(cached: Path) -> bool:
    """Whether the weights ``cached`` was exported from are gone or changed (or it says nothing of them)."""
    import json

    try:
        source = json.loads(cached.with_name(cached.name + SOURCE_SUFFIX).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return True  # made by an older version, which recorded no source: remade when it is needed
    if not isinstance(source, dict):
        return True
    if source.get("weights_file") is None:
        return False  # exported from weights in memory: only the count limit applies
    return _source_of(source["weights_file"]) != source


def cache_folder(weights_file: str | Path | None) -> str:
    """Where the ONNX copies of the weights in ``weights_file`` are kept: ``.cache/`` beside it (``""``: none)."""
    return str(Path(weights_file).parent / CACHE_FOLDER) if weights_file else ""


def prune_cache(cache_dir: str | Path | None) -> list[Path]:
    """Delete the ONNX models in ``cache_dir`` whose weights file no longer exists or has changed since the export
    (a deleted or retrained ``models/model.pt``), with their source records; return the models deleted."""
    folder = Path(cache_dir) if cache_dir else None
    if folder is None or not folder.is_dir():
        return []
    stale = [path for path in sorted(folder.glob("*.onnx")) if _is_stale(path)]
    freed = 0
    for path in stale:
        try:
            freed += path.stat().st_size
            path.unlink()
        except OSError:
            continue
        path.with_name(path.name + SOURCE_SUFFIX).unlink(missing_ok=True)
    for record in folder.glob(f"*.onnx{SOURCE_SUFFIX}"):  # records whose model was deleted by hand
        if not record.with_name(record.name[: -len(SOURCE_SUFFIX)]).exists():
            record.unlink(missing_ok=True)
    if stale:
        logger.info(
            "Removed %d cached ONNX model(s) (%.0f MB) of weights that no longer exist from %s",
            len(stale),
            freed / 1e6,
            folder,
        )
    return stale


class _OnnxRuntimeEngine:
    """An ONNX Runtime session for one state of the network, cached on disk by :func:`weights_digest`, with a
    record of the weights file it came from, so that :func:`prune_cache` can tell when those are gone."""

    def __init__(
        self,
        network: nn.Module,
        example: torch.Tensor,
        cache_dir: str | Path | None,
        weights_file: str | Path | None = None,
    ) -> None:
        import onnxruntime

        model: bytes | str | None = None
        cached = None
        if cache_dir:
            prune_cache(cache_dir)
            cached = Path(cache_dir) / f"{type(network).__name__.lower()}-{weights_digest(network)}.onnx"
            if cached.is_file():
                model = str(cached)
        if model is None:
            model = export_onnx(network, example)
            if cached is not None:
                model = self._store(model, cached, _source_of(weights_file))
        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = torch.get_num_threads()
        options.inter_op_num_threads = 1
        options.log_severity_level = 3  # errors only
        self.session = onnxruntime.InferenceSession(model, options, providers=["CPUExecutionProvider"])
        self.source = model if isinstance(model, str) else "memory"

    @staticmethod
    def _store(model: bytes, path: Path, source: dict[str, Any]) -> bytes | str:
        """Write the exported model and its source record atomically (keeping the newest few); on failure keep it
        in memory."""
        import json

        from bundle.files import atomic_write, write_text_atomically

        try:
            write_text_atomically(path.with_name(path.name + SOURCE_SUFFIX), json.dumps(source) + "\n")
            atomic_write(path, lambda tmp: Path(tmp).write_bytes(model))
        except OSError as error:
            logger.warning("Could not cache the ONNX model in %s (%s); exporting again next time.", path.parent, error)
            return model
        older = sorted(path.parent.glob("*.onnx"), key=lambda p: p.stat().st_mtime, reverse=True)[KEEP_CACHED:]
        for stale in older:
            stale.unlink(missing_ok=True)
            stale.with_name(stale.name + SOURCE_SUFFIX).unlink(missing_ok=True)
        return str(path)

    def __call__(self, inputs: torch.Tensor) -> torch.Tensor:
        array = inputs.detach().cpu().float().numpy()
        (logits,) = self.session.run(["logits"], {"image": array})
        return torch.from_numpy(logits).to(inputs.device)


class _FoldedEngine:
    """The network with BatchNorm folded into its convolutions, in channels-last memory."""

    def __init__(self, network: nn.Module) -> None:
        self.network = fold_batchnorm(network).to(memory_format=torch.channels_last)
        self.source = "bn_folded"

    def __call__(self, inputs: torch.Tensor) -> torch.Tensor:
        return self.network(inputs.contiguous(memory_format=torch.channels_last))


class FastInferer(Inferer):
    """A MONAI inferer (``inferer(inputs, network)``) that runs an eval-mode network through a fast path.

    The fast version of ``network`` is made on the first call and made again whenever the network's weights
    change (``load_state_dict``, as MONAI Label does when a checkpoint is updated). A network in training
    mode, or with gradients required, runs as itself.

    Args:
        fast_path: one of :data:`FAST_PATHS` (see the module docstring).
        cache_dir: where ``"onnxruntime"`` keeps exported models, named by a hash of the weights (the newest
            two are kept, and those whose weights file is gone or changed are deleted: :func:`prune_cache`), so
            that only the first start with a checkpoint pays for the export; ``None``: export in memory at every
            start.
        weights_file: the checkpoint the network's weights come from; ``"auto"`` uses ONNX Runtime only when
            it exists.

    Raises:
        ConfigError: an unknown ``fast_path``, or ``"onnxruntime"`` when onnx / onnxruntime are not installed.
    """

    def __init__(
        self, fast_path: str = "auto", cache_dir: str | Path | None = None, weights_file: str | Path | None = None
    ) -> None:
        self.fast_path = choice(fast_path, FAST_PATHS, "fast_path")
        if fast_path == "onnxruntime" and not onnxruntime_available():
            raise ConfigError("fast_path: onnxruntime needs the onnx and onnxruntime packages (pip install them)")
        self.cache_dir = cache_dir or None
        self.weights_file = weights_file or None
        self.calls = 0
        self._network: weakref.ref | None = None
        self._versions: tuple[int, ...] = ()
        self._engine: Callable[[torch.Tensor], torch.Tensor] | None = None
        self.engine_name = "none"

    def resolve(self, device: torch.device) -> str:
        """The fast path ``"auto"`` stands for on ``device``."""
        if self.fast_path != "auto":
            return self.fast_path
        if device.type != "cpu":
            return "none"
        trained = self.weights_file is not None and Path(self.weights_file).is_file()
        return "onnxruntime" if trained and onnxruntime_available() else "bn_folded"

    def _prepare(self, network: nn.Module, inputs: torch.Tensor) -> None:
        versions = tuple(t._version for t in network.state_dict(keep_vars=True).values())
        if self._network is not None and self._network() is network and versions == self._versions:
            return
        choice = self.resolve(inputs.device)
        engine: Callable[[torch.Tensor], torch.Tensor] | None = None
        if choice == "onnxruntime":
            try:
                engine = _OnnxRuntimeEngine(network, inputs[:1], self.cache_dir, self.weights_file)
            except Exception as error:  # noqa: BLE001 - any export or runtime failure falls back to PyTorch
                logger.warning("ONNX Runtime fast path unavailable (%s); using BatchNorm folding.", error)
                choice = "bn_folded"
        if choice == "bn_folded":
            engine = _FoldedEngine(network)
        self._engine, self.engine_name = engine, choice
        self._network, self._versions = weakref.ref(network), versions
        logger.info("Inference fast path: %s", choice if engine is None else f"{choice} ({engine.source})")

    def __call__(self, inputs: torch.Tensor, network: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        self.calls += 1
        plain = not isinstance(network, nn.Module) or network.training or args or kwargs or torch.is_grad_enabled()
        if plain:
            return network(inputs, *args, **kwargs)
        self._prepare(network, inputs)
        if self._engine is None:
            return network(inputs)
        return self._engine(inputs)
