"""Several processes, one per GPU, started by ``torchrun``: what ``configs/multi_gpu_train.json`` and
``configs/multi_gpu_inference.json`` add to the single-process configs.

Each process reads its place from the environment ``torchrun`` sets (``RANK``, ``LOCAL_RANK``, ``WORLD_SIZE``),
joins the process group in the config's ``initialize`` (:func:`start`, the config's ``process_group`` item, which the
single-process configs leave empty) and leaves it in ``finalize`` (:func:`finish`). On the CPU the processes talk
through gloo, which is how the tests run two of them.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable
from typing import Any

import torch

__all__ = ["data_parallel", "device", "finish", "for_process", "local_rank", "rank", "start", "world_size"]

# The engines' loggers (ignite names each one after its module and class): quiet on every process but the first.
ENGINE_LOGGER = "ignite.engine"


def rank() -> int:
    """This process's number among all of them (``RANK``; 0 without torchrun)."""
    return int(os.environ.get("RANK", 0))


def local_rank() -> int:
    """This process's number on its machine (``LOCAL_RANK``): the GPU it uses."""
    return int(os.environ.get("LOCAL_RANK", 0))


def world_size() -> int:
    """How many processes there are (``WORLD_SIZE``; 1 without torchrun)."""
    return int(os.environ.get("WORLD_SIZE", 1))


def device() -> torch.device:
    """This process's GPU (``cuda:<local rank>``), or the CPU on a machine without one."""
    return torch.device("cuda", local_rank()) if torch.cuda.is_available() else torch.device("cpu")


def start(on: str | torch.device) -> None:
    """Join the process group (NCCL between GPUs, gloo on the CPU) unless already joined, make ``on`` this
    process's GPU, and keep the engines' logs to the first process (the others log warnings and errors only)."""
    import torch.distributed as dist

    on = torch.device(on)
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if on.type == "cuda" else "gloo")
    if on.type == "cuda":
        torch.cuda.set_device(on)
    if rank() > 0:
        logging.getLogger(ENGINE_LOGGER).setLevel(logging.WARNING)


def finish(wait: bool = False) -> None:
    """Leave the process group, after all processes got here when ``wait`` (so that none ends before the
    others' work is written)."""
    import torch.distributed as dist

    if not dist.is_initialized():
        return
    if wait:
        dist.barrier()
    dist.destroy_process_group()


def data_parallel(network: torch.nn.Module, on: str | torch.device) -> torch.nn.parallel.DistributedDataParallel:
    """``network`` placed on ``on`` as a training places it (``bundle.training.on_device``: channels-last on a GPU),
    wrapped in ``DistributedDataParallel``."""
    from bundle.training import on_device

    on = torch.device(on)
    placed = on_device(network, on)
    return torch.nn.parallel.DistributedDataParallel(placed, device_ids=[on] if on.type == "cuda" else None)


def _reports(handler: Any) -> bool:
    """Whether ``handler`` writes logs, curves or tracking records (once per run is enough)."""
    from monai import handlers

    kinds = tuple(
        getattr(handlers, name)
        for name in ("StatsHandler", "TensorBoardHandler", "MLFlowHandler", "ClearMLHandler")
        if hasattr(handlers, name)
    )
    return isinstance(handler, kinds)


def for_process(handlers: Iterable[Any] | None, main_process: object = True) -> list[Any]:
    """The ``handlers`` an engine of this process attaches: all of them in the main process; elsewhere those that
    do not report (logs, TensorBoard, experiment tracking), so that each line and curve is written once."""
    from bundle.config import flag

    handlers = list(handlers or [])
    return handlers if flag(main_process, "is_main_process") else [h for h in handlers if not _reports(h)]
