#!/usr/bin/env bash
# Serve the bundle to 3D Slicer with MONAI Label's stock "monaibundle" sample app, offline and on 127.0.0.1.
#
#   scripts/monailabel_serve.sh [options] BUNDLE STUDIES [-- more monailabel start_server options]
#
#   BUNDLE   an exported bundle zip (python scripts/export_bundle.py writes dist/<name>_v<version>.zip)
#   STUDIES  the folder of photographs (.jpg/.png) to label; MONAI Label keeps labels in STUDIES/labels/
#   --apps DIR    where the app is set up: DIR/monaibundle (default: ./monailabel-apps)
#   --host ADDR   address to listen on (default 127.0.0.1; 0.0.0.0 exposes the server to your network)
#   --port N      port (default 8000)
#
# The zip is unpacked into DIR/monaibundle/model/<name>/ once; when that folder exists it is served as it is
# (MONAI Label training updates its models/model.pt), so delete it to unpack the zip again. Serve a zip, not this
# repository: the export writes the checkpoint's backbone into train.json, which MONAI Label's training builds
# (its checkpoint loader silently skips weights that do not fit another backbone). The server never reaches the
# network: the model-zoo lookup (--conf zoo_source github with the bundle present) and SAM2 (--conf sam2 false) are off.
# MONAI Label runs from its own venv: $RFE_MONAILABEL_VENV, default .ci-venv-monailabel in this repository
# (build it with scripts/setup_monailabel_venv.sh).
set -euo pipefail

repo="$(cd "$(dirname "$0")/.." && pwd)"
venv="${RFE_MONAILABEL_VENV:-$repo/.ci-venv-monailabel}"
apps="monailabel-apps"
host="127.0.0.1"
port="8000"
positional=()
while [ $# -gt 0 ]; do
    case "$1" in
        --apps) apps="$2"; shift 2 ;;
        --host) host="$2"; shift 2 ;;
        --port) port="$2"; shift 2 ;;
        --) shift; break ;;
        -h|--help) sed -n '2,18p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
        -*) echo "ERROR unknown option $1 (see --help)" >&2; exit 2 ;;
        *) positional+=("$1"); shift ;;
    esac
done
if [ ${#positional[@]} -ne 2 ]; then
    echo "ERROR expected BUNDLE and STUDIES (see --help)" >&2
    exit 2
fi
bundle="${positional[0]}"
studies="${positional[1]}"
python="$venv/bin/python"

if [ ! -x "$venv/bin/monailabel" ]; then
    echo "ERROR $venv: no MONAI Label venv; build it with scripts/setup_monailabel_venv.sh" >&2
    exit 2
fi
[ -f "$bundle" ] || { echo "ERROR $bundle: no such bundle zip (export one with scripts/export_bundle.py)" >&2; exit 2; }
[ -d "$studies" ] || { echo "ERROR $studies: no such folder of photographs" >&2; exit 2; }
studies="$(cd "$studies" && pwd)"

mkdir -p "$apps"
apps="$(cd "$apps" && pwd)"
app="$apps/monaibundle"
if [ ! -d "$app" ]; then
    # the sample app ships inside the monailabel package; this copies it from there (no download)
    "$python" -m monailabel.main apps --download --name monaibundle --output "$apps" >/dev/null
fi

# the bundle's name: the zip's single top folder
name="$("$python" - "$bundle" <<'EOF'
import sys, zipfile

try:
    tops = {n.split("/", 1)[0] for n in zipfile.ZipFile(sys.argv[1]).namelist()}
except zipfile.BadZipFile as error:
    sys.exit(f"ERROR {sys.argv[1]}: not a zip file ({error})")
if len(tops) != 1:
    sys.exit(f"ERROR {sys.argv[1]}: a bundle zip holds one top folder, this one has {sorted(tops)}")
print(tops.pop())
EOF
)"
target="$app/model/$name"
mkdir -p "$app/model"
if [ -e "$target" ]; then
    echo "serving the existing $target (delete it to install $bundle again)"
else
    "$python" - "$bundle" "$app/model" <<'EOF'
import sys, zipfile
from pathlib import Path

source, destination = Path(sys.argv[1]), Path(sys.argv[2]).resolve()
with zipfile.ZipFile(source) as archive:
    for member in archive.namelist():
        path = (destination / member).resolve()
        if destination not in path.parents:
            sys.exit(f"ERROR {source}: member {member!r} would be written outside {destination}")
    archive.extractall(destination)
EOF
fi

# train.json reads the pipeline from configs/inference.json relative to the working directory (the bundle root),
# and MONAI Label's training runs in a child process that inherits it. Not the venv's bin/monailabel wrapper: it
# puts the folder above the venv (this repository) on PYTHONPATH, which would hide a bundle that lacks its code.
cd "$target"
exec "$python" -m monailabel.main start_server --app "$app" --studies "$studies" --host "$host" --port "$port" \
    --conf models "$name" --conf zoo_source github --conf sam2 false "$@"
