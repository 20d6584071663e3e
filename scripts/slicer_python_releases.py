"""Record the PyPI metadata the Slicer module's install plan chooses from (run by a maintainer, needs PyPI).

    python -m scripts.slicer_python_releases      # rewrites SkinLesionSegmentationLib/inference_packages.json
    python -m scripts.slicer_python_releases --packages monai --versions "1.4.0 1.5.2 1.6.1"

For each release it asks pip (``pip install --dry-run --report``, nothing is installed) for the wheel's metadata and
keeps ``Requires-Python`` and ``Requires-Dist`` without extras. The module resolves from this file at run time
(``SkinLesionSegmentationLib.slicer_python.install_plan``), so choosing what to install into Slicer's Python needs
no network until pip installs it, and the tests can check the choice offline.
"""

from __future__ import annotations

import datetime
import json
import subprocess
import sys
import tempfile
from pathlib import Path

import fire

OUTPUT = (
    Path(__file__).resolve().parents[1]
    / "slicer_extension"
    / "SkinLesionSegmentation"
    / "SkinLesionSegmentationLib"
    / "inference_packages.json"
)
DEFAULT_VERSIONS = {"monai": "1.4.0 1.5.0 1.5.1 1.5.2 1.6.0 1.6.1"}


def release_metadata(name: str, version: str) -> dict:
    """``Requires-Python`` and the non-extra ``Requires-Dist`` of ``name==version``'s wheel, as pip reads them."""
    with tempfile.TemporaryDirectory() as folder:
        report = Path(folder) / "report.json"
        subprocess.run(
            [
                *(sys.executable, "-m", "pip", "install", "--quiet", "--dry-run", "--ignore-installed", "--no-deps"),
                *("--only-binary=:all:", "--report", str(report), f"{name}=={version}"),
            ],
            check=True,
        )
        (entry,) = json.loads(report.read_text())["install"]
    metadata = entry["metadata"]
    return {
        "version": metadata["version"],
        "requires_python": metadata.get("requires_python", ""),
        "requires_dist": [d for d in metadata.get("requires_dist", []) if "extra ==" not in d],
    }


def main(packages: str = "monai", versions: str = "", output: str = str(OUTPUT)) -> None:
    """Write the releases of ``packages`` (space-separated) with their metadata to ``output``."""
    data = {
        "about": (
            "PyPI metadata of the releases the Slicer module may install into Slicer's Python, read with "
            f"`pip install --dry-run --report` on {datetime.date.today().isoformat()} by "
            "scripts/slicer_python_releases.py; newest first."
        ),
        "releases": {},
    }
    for name in packages.split():
        chosen = (versions or DEFAULT_VERSIONS[name]).split()
        releases = [release_metadata(name, version) for version in chosen]
        data["releases"][name] = sorted(releases, key=lambda r: [int(p) for p in r["version"].split(".")], reverse=True)
    Path(output).write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")
    print(f"wrote {output}")


if __name__ == "__main__":
    fire.Fire(main)
