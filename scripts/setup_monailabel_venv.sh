#!/usr/bin/env bash
# Build the venv MONAI Label runs from (it cannot share the bundle's: numpy < 2, torchvision, jsonschema 3).
#
#   scripts/setup_monailabel_venv.sh [VENV]     default: $RFE_MONAILABEL_VENV, else .ci-venv-monailabel here
#
# Installs scripts/monailabel-requirements.txt, then monailabel 0.8.5 without its dependencies (that skips sam2,
# which compiles CUDA code and is not needed with --conf sam2 false). Safe to run again: satisfied pins are kept.
# scripts/monailabel_serve.sh and tests/test_monailabel.py use the same default path.
set -euo pipefail
repo="$(cd "$(dirname "$0")/.." && pwd)"
venv="${1:-${RFE_MONAILABEL_VENV:-$repo/.ci-venv-monailabel}}"
python="${PYTHON:-python3}"

[ -x "$venv/bin/python" ] || "$python" -m venv "$venv"
"$venv/bin/python" -m pip install --quiet -r "$repo/scripts/monailabel-requirements.txt"
"$venv/bin/python" -m pip install --quiet --no-deps "monailabel==0.8.5"
"$venv/bin/python" -c "import monailabel, monai, torch, torchvision; print('MONAI Label', monailabel.__version__, \
'| MONAI', monai.__version__, '| torch', torch.__version__, '| venv $venv')"
