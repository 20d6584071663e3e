"""Choosing a bundle: a bundle folder, or an exported bundle zip unpacked safely into a cache folder, or one
downloaded from a URL and kept only if its SHA-256 is the one its sender gave.

A bundle's configs and Python code run as code in the worker, so bundles should come from people you trust.
Unpacking at least never writes outside its target folder: a zip with an absolute path, a ``..`` component, a
drive letter or a symbolic link is refused before anything is written.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import stat
import tempfile
import urllib.error
import urllib.parse
import urllib.request
import zipfile
from pathlib import Path, PurePosixPath

INFERENCE_CONFIG = Path("configs") / "inference.json"
METADATA = Path("configs") / "metadata.json"
MAX_UNPACKED_BYTES = 8 * 1024**3  # a bundle of a few networks; more is a zip bomb, not a bundle


class BundleChoiceError(ValueError):
    """A path that is not a usable bundle folder or bundle zip; the message names it and says why."""


def is_bundle_folder(path: str | os.PathLike) -> bool:
    return (Path(path) / INFERENCE_CONFIG).is_file()


def check_bundle_folder(path: str | os.PathLike) -> Path:
    """Return ``path`` resolved if it holds ``configs/inference.json``; raise :class:`BundleChoiceError` if not."""
    path = Path(path).expanduser()
    if not path.is_dir():
        raise BundleChoiceError(f"{path}: no such folder")
    if not is_bundle_folder(path):
        raise BundleChoiceError(f"{path}: not a bundle folder (no {INFERENCE_CONFIG.as_posix()})")
    return path.resolve()


def _unsafe_member_reason(info: zipfile.ZipInfo) -> str | None:
    name = info.filename
    if stat.S_ISLNK(info.external_attr >> 16):
        return "is a symbolic link"
    if "\\" in name:
        return "uses backslashes (a Windows path)"
    posix = PurePosixPath(name)
    if posix.is_absolute() or (len(name) > 1 and name[1] == ":"):
        return "is an absolute path"
    if ".." in posix.parts:
        return "climbs out of the folder with '..'"
    return None


def check_zip_members(archive: zipfile.ZipFile, source: str | os.PathLike) -> None:
    """Raise :class:`BundleChoiceError` naming the first member that could land outside the target folder."""
    total = 0
    for info in archive.infolist():
        reason = _unsafe_member_reason(info)
        if reason:
            raise BundleChoiceError(f"{source}: refused, member {info.filename!r} {reason}")
        total += info.file_size
    if total > MAX_UNPACKED_BYTES:
        raise BundleChoiceError(f"{source}: refused, it would unpack to {total / 1024**3:.1f} GiB")


def _bundle_root_in(folder: Path, source: str | os.PathLike) -> Path:
    """The folder or its single top-level subfolder that holds ``configs/inference.json``."""
    if is_bundle_folder(folder):
        return folder
    candidates = [child for child in folder.iterdir() if child.is_dir() and is_bundle_folder(child)]
    if len(candidates) != 1:
        raise BundleChoiceError(f"{source}: not a bundle zip (no {INFERENCE_CONFIG.as_posix()} at its top level)")
    return candidates[0]


def _file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def unpack_bundle_zip(zip_path: str | os.PathLike, cache_dir: str | os.PathLike) -> Path:
    """Unpack a bundle zip into ``cache_dir/<name>-<hash>/`` once and return the bundle root inside it.

    Every member is checked first (:func:`check_zip_members`); the files go to a temporary folder that is renamed
    into place only when complete, so an interrupted unpack is never mistaken for a bundle. The same zip content
    is unpacked once and reused.
    """
    zip_path = Path(zip_path).expanduser()
    if not zip_path.is_file():
        raise BundleChoiceError(f"{zip_path}: no such file")
    target = Path(cache_dir) / f"{zip_path.stem}-{_file_sha256(zip_path)[:12]}"
    if target.is_dir():
        return _bundle_root_in(target, zip_path)
    try:
        archive = zipfile.ZipFile(zip_path)
    except zipfile.BadZipFile as err:
        raise BundleChoiceError(f"{zip_path}: not a zip file ({err})") from None
    with archive:
        check_zip_members(archive, zip_path)
        target.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
        try:
            archive.extractall(staging)
            _bundle_root_in(staging, zip_path)
            os.replace(staging, target)
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
    return _bundle_root_in(target, zip_path)


def _sha256_hex(text: str) -> str:
    """The hex digest of ``text``: a bare digest, or a ``sha256sum`` line (``<digest>  <name>``)."""
    digest = (text or "").strip().split()[0].lower() if (text or "").strip() else ""
    if not re.fullmatch(r"[0-9a-f]{64}", digest):
        raise BundleChoiceError(f"not a SHA-256 (64 hexadecimal digits): {text.strip()!r}")
    return digest


def download_bundle_zip(url: str, sha256: str, cache_dir: str | os.PathLike, timeout: float = 60.0) -> Path:
    """Download a bundle zip from ``url`` into ``cache_dir/downloads/`` and check its SHA-256 before keeping it.

    The file is hashed while it streams to a temporary name and renamed into place only when its digest equals
    ``sha256``; a mismatch deletes it and raises. A zip already downloaded with that digest is not fetched again.

    Raises:
        BundleChoiceError: a URL that is not http(s), a download that fails, or a file with another SHA-256.
    """
    expected = _sha256_hex(sha256)
    parsed = urllib.parse.urlsplit(url.strip())
    if parsed.scheme not in ("https", "http") or not parsed.netloc:
        raise BundleChoiceError(f"{url}: not an http(s) address")
    name = PurePosixPath(urllib.parse.unquote(parsed.path)).name or "bundle.zip"
    name = re.sub(r"[^A-Za-z0-9._-]", "_", name if name.lower().endswith(".zip") else name + ".zip")
    target = Path(cache_dir) / "downloads" / f"{expected[:12]}-{name}"
    if target.is_file() and _file_sha256(target) == expected:
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, partial = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".part", dir=target.parent)
    digest, size = hashlib.sha256(), 0
    try:
        with os.fdopen(fd, "wb") as handle, urllib.request.urlopen(url.strip(), timeout=timeout) as response:
            for block in iter(lambda: response.read(1 << 20), b""):
                size += len(block)
                if size > MAX_UNPACKED_BYTES:
                    raise BundleChoiceError(f"{url}: refused, larger than {MAX_UNPACKED_BYTES / 1024**3:.0f} GiB")
                digest.update(block)
                handle.write(block)
        if digest.hexdigest() != expected:
            raise BundleChoiceError(f"{url}: refused, its SHA-256 is {digest.hexdigest()}, expected {expected}")
        os.replace(partial, target)
    except (OSError, ValueError) as err:
        if isinstance(err, BundleChoiceError):
            raise
        if isinstance(err, urllib.error.HTTPError):
            detail = f"HTTP {err.code} {err.reason}"
        else:
            detail = getattr(err, "reason", None) or err
        raise BundleChoiceError(f"{url}: download failed ({detail})") from None
    finally:
        Path(partial).unlink(missing_ok=True)
    return target


def fetch_bundle(url: str, sha256: str, cache_dir: str | os.PathLike) -> Path:
    """A bundle zip downloaded from ``url`` (SHA-256 checked) and unpacked: the bundle root, as a folder."""
    return unpack_bundle_zip(download_bundle_zip(url, sha256, cache_dir), cache_dir)


def resolve_bundle(choice: str | os.PathLike, cache_dir: str | os.PathLike) -> Path:
    """A bundle folder as it is, or a ``.zip`` unpacked by :func:`unpack_bundle_zip`."""
    path = Path(choice).expanduser()
    if path.suffix.lower() == ".zip":
        return unpack_bundle_zip(path, cache_dir)
    return check_bundle_folder(path)


def read_metadata(bundle_root: str | os.PathLike) -> dict:
    """The bundle's ``configs/metadata.json`` (empty if it has none)."""
    path = Path(bundle_root) / METADATA
    if not path.is_file():
        return {}
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:
        raise BundleChoiceError(f"{path}: unreadable metadata ({err})") from None


def output_channel_def(metadata: dict) -> dict:
    """``network_data_format.outputs.pred.channel_def`` of a bundle's metadata, or ``{}``."""
    outputs = metadata.get("network_data_format", {}).get("outputs", {})
    pred = outputs.get("pred") or next(iter(outputs.values()), {})
    return dict(pred.get("channel_def", {}))
