"""Downloads and archives for ``scripts/prepare_data.py``: the official ISIC archives fetched with resume and
checksums, and zip archives extracted safely (no member may land outside the target folder).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import stat
import zipfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.error import HTTPError, URLError
from urllib.parse import urlsplit
from urllib.request import Request, urlopen

from tqdm import tqdm

ISIC_HOST = "https://isic-challenge-data.s3.amazonaws.com"


@dataclass(frozen=True)
class Archive:
    """One official archive: ``<base_url>/<year>/<name>``."""

    name: str
    approx_gb: float  # rough size for the planning message; the server's Content-Length decides the disk check
    checksum: str | None  # "sha256:<hex>" or "md5:<hex>"; None: not published, only recorded after download


# Checksums as published alongside public dataset loaders (sha256 for ISIC 2018 from the torch-em project's table,
# md5 for 2016/2017 from a public PyTorch dataset collection); --checksums overrides them.
DOWNLOADS: dict[str, tuple[str, tuple[Archive, ...]]] = {
    "isic2016": (
        "2016",
        (
            Archive("ISBI2016_ISIC_Part1_Training_Data.zip", 0.9, "md5:2029f387e62dcc062b1370b1efc1f7fb"),
            Archive("ISBI2016_ISIC_Part1_Training_GroundTruth.zip", 0.01, "md5:fbd77134298f3511479a37bac93109c7"),
            Archive("ISBI2016_ISIC_Part1_Test_Data.zip", 0.4, "md5:efebcaeaae751007401a40a60d391f93"),
            Archive("ISBI2016_ISIC_Part1_Test_GroundTruth.zip", 0.01, "md5:492a7711a2e19b96114cab6c96bd1ad5"),
        ),
    ),
    "isic2017": (
        "2017",
        (
            Archive("ISIC-2017_Training_Data.zip", 5.8, "md5:a14a7e622c67a358797ae59abb8a0b0c"),
            Archive("ISIC-2017_Training_Part1_GroundTruth.zip", 0.01, "md5:77fdbeb6fbec4139937224416b250f4c"),
            Archive("ISIC-2017_Validation_Data.zip", 0.9, "md5:8d6419d942112f709894c0d82f6c9038"),
            Archive("ISIC-2017_Validation_Part1_GroundTruth.zip", 0.01, "md5:64d3e68fa2deeb8a5e89aa8dec2efd44"),
            Archive("ISIC-2017_Test_v2_Data.zip", 5.5, "md5:5f6a0b5e1f2972bd1f5ea02680489f09"),
            Archive("ISIC-2017_Test_v2_Part1_GroundTruth.zip", 0.01, "md5:b1742de6bd257faca3b2b21a4aa3b781"),
        ),
    ),
    "isic2018": (
        "2018",
        (
            Archive(
                "ISIC2018_Task1-2_Training_Input.zip",
                10.4,
                "sha256:80f98572347a2d7a376227fa9eb2e4f7459d317cb619865b8b9910c81446675f",
            ),
            Archive(
                "ISIC2018_Task1_Training_GroundTruth.zip",
                0.03,
                "sha256:99f8b2bb3c4d6af483362010715f7e7d5d122d9f6c02cac0e0d15bef77c7604c",
            ),
        ),
    ),
}
_CHUNK = 1 << 20
_DOWNLOAD_TIMEOUT_S = 60


class DownloadError(Exception):
    """A download that cannot go on; the message says what to do."""


def _say(line: str) -> None:
    print(line, flush=True)


def _unsafe_member(member: zipfile.ZipInfo, out: Path) -> str | None:
    """Why ``member`` could land outside ``out`` (on any system), or None."""
    name = member.filename
    if stat.S_ISLNK(member.external_attr >> 16):
        return "is a symbolic link"
    if "\\" in name or (len(name) > 1 and name[1] == ":"):
        return "is a Windows path (backslashes or a drive letter)"
    if not (out / name).resolve().is_relative_to(out):
        return f"would be written outside {out}"
    return None


def extract_zip(archive: Path, out: Path) -> None:
    """
    Extract ``archive`` into ``out``, skipping members already there with the same size (re-runs are cheap).

    Every member is checked before anything is written: absolute paths, ``..``, Windows paths and symbolic links
    are refused, so a crafted archive cannot write outside ``out``.

    Raises:
        ValueError: when the archive is not a readable zip or a member could land outside ``out``.
    """
    out = out.resolve()
    try:
        with zipfile.ZipFile(archive) as zf:
            todo = []
            for member in zf.infolist():
                reason = _unsafe_member(member, out)
                if reason:
                    raise ValueError(f"{archive}: refused, member {member.filename!r} {reason}.")
                if member.is_dir() or member.filename.startswith("__MACOSX/"):
                    continue
                target = (out / member.filename).resolve()
                if not (target.is_file() and target.stat().st_size == member.file_size):
                    todo.append((member, target))
            for member, target in tqdm(todo, desc=f"extracting {archive.name}", unit="file", disable=not todo):
                target.parent.mkdir(parents=True, exist_ok=True)
                partial = target.with_name(target.name + ".extracting")
                with zf.open(member) as source, open(partial, "wb") as destination:
                    shutil.copyfileobj(source, destination, _CHUNK)
                os.replace(partial, target)
    except (zipfile.BadZipFile, zipfile.LargeZipFile, EOFError) as error:
        raise ValueError(f"{archive} is not a readable zip archive ({error}).") from error


def _file_digest(path: Path, algorithm: str) -> str:
    digest = hashlib.new(algorithm)
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def _check_checksum(path: Path, checksum: str | None, name: str) -> None:
    """Raise DownloadError (after deleting ``path``) when ``path``, the download of ``name``, fails ``checksum``."""
    if checksum is None:
        return
    algorithm, _, expected = checksum.partition(":")
    if algorithm not in ("sha256", "md5") or not expected:
        raise DownloadError(f"checksum {checksum!r} for {name} is not 'sha256:<hex>' or 'md5:<hex>'.")
    actual = _file_digest(path, algorithm)
    if actual != expected.lower():
        path.unlink()
        raise DownloadError(
            f"checksum mismatch for {name}: expected {algorithm} {expected}, got {actual}; "
            "the corrupt download was deleted, run again to fetch it anew."
        )


def download_file(url: str, destination: Path, checksum: str | None = None) -> Path:
    """
    Download ``url`` to ``destination``, resuming a previous partial download and verifying ``checksum``.

    Bytes arrive in ``<destination>.part``; when it exists, the request asks for the rest (HTTP Range) and appends,
    or starts over when the server ignores the range. The file gets its final name only after its size and checksum
    check out. An existing ``destination`` that matches ``checksum`` is kept.

    Raises:
        DownloadError: when the host cannot be reached, the server answers with an error, the transfer stops short,
            the disk is too full, or the checksum does not match (the bad file is deleted).
    """
    destination.parent.mkdir(parents=True, exist_ok=True)
    if destination.is_file():
        _check_checksum(destination, checksum, destination.name)
        _say(f"already downloaded: {destination}")
        return destination
    partial = destination.with_name(destination.name + ".part")
    offset = partial.stat().st_size if partial.is_file() else 0
    request = Request(url, headers={"Range": f"bytes={offset}-"} if offset else {})
    host = urlsplit(url).netloc
    try:
        response = urlopen(request, timeout=_DOWNLOAD_TIMEOUT_S)
    except HTTPError as error:
        if error.code != 416 or not offset:  # 416: the range starts at the end, the .part is already whole
            raise DownloadError(f"{url}: the server answered HTTP {error.code} {error.reason}.") from None
        response = None
    except (URLError, OSError) as error:
        reason = getattr(error, "reason", error)
        raise DownloadError(
            f"cannot reach {host} ({reason}): this machine seems offline. Download {url} by hand and pass the "
            "archives or their extracted folders to prepare_data instead of --download."
        ) from None
    if response is not None:
        with response:
            resumed = response.status == 206
            if resumed and _range_start(response) != offset:
                partial.unlink(missing_ok=True)
                raise DownloadError(
                    f"{url}: asked for the bytes from {offset} on, the server sent another range; "
                    "the partial download was deleted, run again."
                )
            if not resumed:
                offset = 0  # the server sends the whole file: start over
            length = response.headers.get("Content-Length")
            remaining = int(length) if length is not None else None
            free = shutil.disk_usage(destination.parent).free
            if remaining is not None and free < remaining:
                raise DownloadError(
                    f"{destination.parent} has {free / 1e9:.1f} GB free, {destination.name} needs "
                    f"{remaining / 1e9:.1f} GB more."
                )
            total = offset + remaining if remaining is not None else None
            written = offset
            try:
                with (
                    open(partial, "ab" if resumed else "wb") as f,
                    tqdm(
                        total=total, initial=offset, unit="B", unit_scale=True, desc=destination.name, mininterval=1.0
                    ) as bar,
                ):
                    while chunk := response.read(_CHUNK):
                        f.write(chunk)
                        written += len(chunk)
                        bar.update(len(chunk))
            except OSError as error:
                raise DownloadError(
                    f"{destination.name}: the transfer broke off after {written} bytes ({error}); run again to resume."
                ) from None
            if total is not None and written != total:
                raise DownloadError(
                    f"{destination.name}: got {written} of {total} bytes; run again to resume from {partial}."
                )
    _check_checksum(partial, checksum, destination.name)
    os.replace(partial, destination)
    return destination


def _range_start(response: Any) -> int | None:
    """The first byte position of a 206 response's ``Content-Range: bytes <start>-<end>/<total>``."""
    content_range = response.headers.get("Content-Range", "")
    try:
        return int(content_range.split()[1].split("-")[0])
    except (IndexError, ValueError):
        return None


def load_checksums(checksums: str | Mapping[str, str | None] | None) -> dict[str, str | None]:
    """``--checksums``: a JSON file (or a mapping) of archive name -> ``"sha256:<hex>"``/``"md5:<hex>"``/null.

    Raises:
        ValueError: the file cannot be read or holds no object.
    """
    if checksums is None:
        return {}
    if isinstance(checksums, Mapping):
        return dict(checksums)
    path = Path(str(checksums))
    try:
        content = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as error:
        raise ValueError(f"cannot read the checksums file {path}: {error}.") from error
    if not isinstance(content, dict):
        raise ValueError(f"checksums file {path} must hold an object {{archive name: 'sha256:<hex>' or null}}.")
    return content


def download_dataset(
    dataset: str, folder: Path, base_url: str | None = None, checksums: Mapping[str, str | None] | None = None
) -> list[Path]:
    """
    Download the official archives of ``dataset`` (a key of :data:`DOWNLOADS`) into ``folder``.

    Args:
        dataset: ``"isic2016"``, ``"isic2017"`` or ``"isic2018"``.
        folder: where the archives go.
        base_url: replaces :data:`ISIC_HOST` (a mirror, or a local server in tests).
        checksums: archive name -> ``"sha256:<hex>"``/``"md5:<hex>"``/None, overriding the table.

    Returns:
        The archive paths.
    """
    if dataset not in DOWNLOADS:
        raise ValueError(f"cannot download {dataset!r}; --download knows {', '.join(DOWNLOADS)} (PH2 is not public).")
    year, archives = DOWNLOADS[dataset]
    checksums = dict(checksums or {})
    base = (base_url or ISIC_HOST).rstrip("/")
    _say(f"{dataset}: {len(archives)} archive(s), about {sum(a.approx_gb for a in archives):.1f} GB, into {folder}")
    return [
        download_file(f"{base}/{year}/{a.name}", folder / a.name, checksums.get(a.name, a.checksum)) for a in archives
    ]
