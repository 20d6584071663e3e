"""Writing files so that a reader never sees half of one (write beside the target, then rename into place), and
working through many files in threads."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TypeVar

T = TypeVar("T")
R = TypeVar("R")


def atomic_write(path: str | os.PathLike, write: Callable[[str], object]) -> Path:
    """Call ``write(tmp_path)`` on a temporary file in ``path``'s folder, then rename it to ``path``.

    The temporary name keeps ``path``'s suffixes, so writers that choose the format by extension (nibabel, Pillow)
    still see ``.nii.gz`` or ``.png``. On any error the temporary file is removed and ``path`` is untouched.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".part" + "".join(path.suffixes), dir=path.parent)
    os.close(fd)
    try:
        write(tmp)
        os.chmod(tmp, 0o644)  # mkstemp's 0o600 would make the file private to its writer
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def write_text_atomically(path: str | os.PathLike, text: str) -> Path:
    """Write ``text`` (UTF-8, newlines as given) to ``path`` through :func:`atomic_write`."""
    return atomic_write(path, lambda tmp: Path(tmp).write_text(text, encoding="utf-8", newline=""))


def threaded_map(function: Callable[[T], R], items: Iterable[T], threads: int = 8) -> Iterator[R]:
    """``function`` of each of ``items``, in order, computed by up to ``threads`` threads (no more than the CPUs).

    For reading and writing image files: Pillow decodes and encodes without holding the GIL, so threads give real
    parallelism there.
    """
    with ThreadPoolExecutor(max_workers=min(threads, os.cpu_count() or 1), thread_name_prefix="rfe-files") as pool:
        yield from pool.map(function, items)
