"""Checking configuration values as users type them on the command line, and reading parts of the bundle's configs.

``python -m monai.bundle run --resume false`` hands the config the *string* "false" (only ``False`` is parsed as
a Python literal), and a non-empty string is true: every yes/no key of the configs goes through :func:`flag`.
Option words go through :func:`choice`, counts and sizes through :func:`at_least` and :func:`image_size`, devices
through :func:`device`, so a wrong value is one :class:`~bundle.errors.ConfigError` naming the key, before any work
starts.
"""

from __future__ import annotations

import difflib
import os
from collections.abc import Iterable, Mapping
from numbers import Integral, Real
from pathlib import Path
from typing import Any, TypeVar

from bundle.errors import ConfigError

__all__ = ["at_least", "choice", "device", "flag", "image_size", "inference_part", "look_up", "suggestion"]

T = TypeVar("T")

_TRUE = ("true", "yes", "on", "1")
_FALSE = ("false", "no", "off", "0", "none", "")
# the networks halve the image five times
SIZE_MULTIPLE = 32


def flag(value: object, name: str = "option") -> bool:
    """``value`` as a bool: booleans and numbers as Python reads them, strings by their (case-insensitive) word.

    Raises:
        ConfigError: for a string that is not one of true/yes/on/1 or false/no/off/0/none/"".
    """
    if isinstance(value, str):
        word = value.strip().lower()
        if word in _TRUE:
            return True
        if word in _FALSE:
            return False
        raise ConfigError(f"{name}: {value!r} is not a yes/no value (use true or false)")
    return bool(value)


def suggestion(word: str, options: Iterable[str]) -> str:
    """``"; did you mean X?"`` for the closest of ``options``, or an empty string."""
    close = difflib.get_close_matches(str(word), [str(o) for o in options], n=1, cutoff=0.6)
    return f"; did you mean {close[0]}?" if close else ""


def choice(value: object, options: Iterable[str], name: str = "option") -> str:
    """``value`` if it is one of ``options``.

    Raises:
        ConfigError: naming the key, the value, the options and the closest one.
    """
    return str(look_up(value, tuple(options), name))


def look_up(value: object, options: Mapping[str, T] | Iterable[str], name: str = "option") -> T | str:
    """The option ``value`` names: ``options[value]`` for a mapping (a registry), else ``value`` itself.

    What MONAI's ``look_up_option`` does, with the one-line message of every option of this bundle.

    Raises:
        ConfigError: ``value`` is not one of ``options``, naming the key, the value, the options and the closest one.
    """
    names = tuple(options)
    if not isinstance(value, str) or value not in names:
        raise ConfigError(f"{name}: {value!r} is not one of {', '.join(names)}{suggestion(str(value), names)}")
    return options[value] if isinstance(options, Mapping) else value


def at_least(value: object, minimum: float, name: str = "option", integer: bool = True) -> int | float:
    """``value`` as an int (or a float with ``integer=False``) if it is at least ``minimum``.

    Raises:
        ConfigError: for a value that is not a number of that kind, or is smaller.
    """
    kind = Integral if integer else Real
    if isinstance(value, bool) or not isinstance(value, kind):
        raise ConfigError(f"{name}: {value!r} is not {'an integer' if integer else 'a number'}")
    if value < minimum:
        raise ConfigError(f"{name}: {value!r} is too small; it must be at least {minimum}")
    return int(value) if integer else float(value)


def image_size(value: object, name: str = "image_size") -> int:
    """``value`` if it is a positive multiple of 32 (the network halves the image five times).

    Raises:
        ConfigError: otherwise, naming the nearest valid sizes.
    """
    size = at_least(value, SIZE_MULTIPLE, name)
    if size % SIZE_MULTIPLE:
        lower = size // SIZE_MULTIPLE * SIZE_MULTIPLE
        raise ConfigError(
            f"{name}: {size} is not a multiple of {SIZE_MULTIPLE} (the network halves it five times); "
            f"use {lower} or {lower + SIZE_MULTIPLE}"
        )
    return size


def inference_part(
    bundle_root: str | os.PathLike, part: str, overrides: Mapping[str, Any] | None = None, **settings: Any
) -> Any:
    """The item ``part`` of the bundle's ``configs/inference.json``, parsed with ``overrides`` set first.

    This is how ``configs/train.json`` uses the one pipeline definition (network settings, network, image
    transforms): the file is ``<bundle_root>/configs/inference.json``, as the model zoo builds its paths, so training
    runs from any working directory with ``--bundle_root``. When ``bundle_root`` holds no configs (a run folder that
    only receives the models and logs, as ``scripts/experiments.py`` uses it), it is ``configs/inference.json`` of
    the working directory, as a ``%configs/inference.json#...`` macro would read it.

    Args:
        bundle_root: the bundle's folder (the one holding ``configs/``), or a run folder.
        part: the config id to parse, e.g. ``"network_def"``.
        overrides: top-level keys of ``inference.json`` to set, with their values (already parsed).
        settings: keys of ``part`` itself to set (``network_def#backbone`` for ``backbone=...``), as MONAI's
            ``load(net_override=...)`` passes them.

    Raises:
        ConfigError: neither place has a ``configs/inference.json``.
    """
    from monai.bundle import ConfigParser

    candidates = (Path(bundle_root) / "configs" / "inference.json", Path("configs") / "inference.json")
    path = next((candidate for candidate in candidates if candidate.is_file()), None)
    if path is None:
        raise ConfigError(
            f"{candidates[0]}: no such file, nor {Path.cwd() / candidates[1]}; --bundle_root must be the bundle's "
            "folder (the one holding configs/), or run from it"
        )
    parser = ConfigParser()
    parser.read_config(str(path))
    parser.update({"bundle_root": str(bundle_root), **(overrides or {})})
    parser.update({f"{part}#{key}": value for key, value in settings.items()})
    return parser.get_parsed_content(part)


def _gpus() -> str:
    import torch

    count = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if not count:
        return "PyTorch sees no CUDA GPU on this machine; use cpu"
    return f"PyTorch sees {count} CUDA GPU(s) here: use " + ", ".join(f"cuda:{i}" for i in range(count)) + " or cpu"


def device(value: object, name: str = "device") -> object:
    """``value`` (a ``torch.device`` or a string such as ``cpu``, ``cuda``, ``cuda:1``, ``mps``) if it names a
    device this machine has; returned as given.

    Raises:
        ConfigError: for a string that names no device type, or a device that is not here (naming the GPUs there
            are, and ``cpu``).
    """
    import torch

    try:
        wanted = torch.device(value) if isinstance(value, (str, torch.device)) else None
    except RuntimeError:
        wanted = None
    if wanted is None:
        raise ConfigError(f"{name}: {value!r} is not a device; use cpu, cuda, cuda:N (the N-th GPU) or mps")
    if wanted.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if (wanted.index or 0) >= count:
            raise ConfigError(f"{name}: {value!s} is not available: {_gpus()}")
    elif wanted.type == "mps" and not torch.backends.mps.is_available():
        raise ConfigError(f"{name}: {value!s} is not available: this machine has no Apple GPU (MPS); use cpu")
    elif wanted.type not in ("cpu", "cuda", "mps"):
        raise ConfigError(f"{name}: {value!s} is not a device this bundle runs on; use cpu, cuda, cuda:N or mps")
    return value
