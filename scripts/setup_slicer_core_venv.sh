#!/usr/bin/env bash
# Build the venv with Slicer Core (PyPI slicer-core: Slicer's MRML and module logics without Qt, with vtk), where
# tests/test_slicer_core_logic.py runs the Slicer module's headless Logic against a real MRML scene.
#
#   scripts/setup_slicer_core_venv.sh [VENV]     default: $RFE_SLICER_CORE_VENV, else .ci-venv-slicer-core here
#
# slicer-core needs Python >= 3.10 and is about 1 GB installed. Safe to run again: satisfied pins are kept.
set -euo pipefail
repo="$(cd "$(dirname "$0")/.." && pwd)"
venv="${1:-${RFE_SLICER_CORE_VENV:-$repo/.ci-venv-slicer-core}}"
python="${PYTHON:-python3}"

[ -x "$venv/bin/python" ] || "$python" -m venv "$venv"
"$venv/bin/python" -m pip install --quiet "slicer-core==5.13.31053.0" "scipy>=1.10"
"$venv/bin/python" -c "import importlib.metadata as m, slicer, scipy; print('Slicer Core', m.version('slicer-core'), \
'| vtk', m.version('vtk'), '| venv $venv')"
