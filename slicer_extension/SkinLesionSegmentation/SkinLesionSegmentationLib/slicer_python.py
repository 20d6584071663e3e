"""What to install into Slicer's own Python so that the worker can run the bundle there: an install plan.

The worker needs, beyond what Slicer ships (numpy, scipy, Pillow, packaging, ...), only PyTorch and MONAI's core:
the bundle's inference path imports nothing else (its other requirements, such as ITK, nibabel, pytorch-ignite and
tensorboard, serve training, evaluation and other file formats). PyTorch comes from Slicer's PyTorch extension,
which picks the CPU or CUDA build; this module chooses MONAI's release from ``inference_packages.json`` (PyPI's
metadata, recorded by ``scripts/slicer_python_releases.py``): the newest one whose ``Requires-Python`` accepts
Slicer's Python and whose requirements the packages already installed meet. Slicer 5.4-5.8 run Python 3.9, where
that is MONAI 1.5.2; Slicer 5.10 and later run 3.12.

pip then runs with every installed distribution pinned at its installed version (``constraints``), so that
installing can add packages but never upgrade or replace one Slicer ships; if that cannot work, pip stops with its
resolver's message and changes nothing.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

RELEASES_FILE = Path(__file__).resolve().with_name("inference_packages.json")
INFERENCE_PACKAGES = ("monai",)  # besides torch, which the PyTorch extension installs


class InstallPlanError(ValueError):
    """No release fits this Python and its installed packages; the message says which and why."""


@dataclass(frozen=True)
class InstallPlan:
    """``requirements`` to pip-install with ``constraints`` in force, and the ``torch`` version they need."""

    python: str
    requirements: list[str]
    torch: str
    constraints: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def pip_arguments(self, constraints_file: str) -> list[str]:
        """Arguments after ``pip install``: the constraints file (written from :attr:`constraints`), then the pins."""
        return ["--constraint", str(constraints_file), *self.requirements]


def canonical_name(name: str) -> str:
    """A distribution name as pip compares them (PEP 503): ``Pillow`` and ``pillow`` are one package."""
    return re.sub(r"[-_.]+", "-", name).lower()


def installed_distributions() -> dict[str, str]:
    """``{canonical name: version}`` of every distribution installed in the running Python."""
    from importlib import metadata

    found = {}
    for distribution in metadata.distributions():
        name = distribution.metadata["Name"]
        if name:
            found.setdefault(canonical_name(name), distribution.version)
    return found


def read_releases(path: str | Path = RELEASES_FILE) -> dict[str, list[dict]]:
    return json.loads(Path(path).read_text(encoding="utf-8"))["releases"]


def _python_version(python: str | tuple) -> str:
    if isinstance(python, tuple):
        python = ".".join(str(part) for part in python[:3])
    if not re.fullmatch(r"\d+\.\d+(\.\d+)?", str(python)):
        raise InstallPlanError(f"not a Python version: {python!r}")
    return str(python)


def _why_not(release: dict, python: str, installed: Mapping[str, str]) -> str | None:
    """None when ``release`` installs on ``python`` next to ``installed`` (torch aside); else the reason."""
    from packaging.requirements import Requirement
    from packaging.specifiers import SpecifierSet

    if release.get("requires_python") and python not in SpecifierSet(release["requires_python"]):
        return f"needs Python {release['requires_python']}"
    for text in release.get("requires_dist", []):
        requirement = Requirement(text)
        if requirement.marker is not None and not requirement.marker.evaluate({"python_version": python}):
            continue
        name = canonical_name(requirement.name)
        have = installed.get(name)
        if name == "torch" and have is None:
            continue  # the PyTorch extension installs a version that meets the requirement
        if have is None:
            return f"needs {requirement}, which is not installed"
        if have not in requirement.specifier:
            return f"needs {requirement}, and {name} {have} is installed"
    return None


def _torch_requirement(release: dict) -> str:
    from packaging.requirements import Requirement

    for text in release.get("requires_dist", []):
        requirement = Requirement(text)
        if canonical_name(requirement.name) == "torch":
            return str(requirement.specifier)
    return ""


def install_plan(
    python: str | tuple,
    installed: Mapping[str, str],
    bundle_metadata: Mapping | None = None,
    releases: Mapping[str, list[dict]] | None = None,
) -> InstallPlan:
    """The packages to install into a Python of version ``python`` that has ``installed`` (name -> version).

    Args:
        python: that Python's version, ``"3.9.10"`` or ``sys.version_info``.
        installed: its installed distributions (:func:`installed_distributions` there); all of them are pinned.
        bundle_metadata: the bundle's ``configs/metadata.json``; a chosen MONAI older than its ``monai_version`` is
            noted.
        releases: the candidate releases (default: ``inference_packages.json``).

    Raises:
        InstallPlanError: when no recorded release of a package fits; the message lists why each was refused.
    """
    python = _python_version(python)
    installed = {canonical_name(name): version for name, version in installed.items()}
    releases = read_releases() if releases is None else releases
    requirements, notes, torch = [], [], ""
    for name in INFERENCE_PACKAGES:
        if name in installed:
            continue  # already there (a previous install): never replaced
        reasons = []
        for release in releases[name]:
            reason = _why_not(release, python, installed)
            if reason is None:
                break
            reasons.append(f"{name} {release['version']} {reason}")
        else:
            raise InstallPlanError(f"no {name} release fits Python {python}: " + "; ".join(reasons))
        requirements.append(f"{name}=={release['version']}")
        torch = _torch_requirement(release)
        wanted = (bundle_metadata or {}).get(f"{name}_version")
        if name == "monai" and wanted and wanted != release["version"]:
            notes.append(
                f"{name} {release['version']} instead of {wanted} (the bundle's): the newest release for "
                f"Python {python} with the packages installed there"
            )
    constraints = [f"{name}=={version}" for name, version in sorted(installed.items())]
    return InstallPlan(python, requirements, torch, constraints, notes)
