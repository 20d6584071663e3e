#!/usr/bin/env bash
# Serve the bundle to 3D Slicer with MONAI Label's stock "monaibundle" sample app, offline and on 127.0.0.1.
#
#   scripts/monailabel_serve.sh [options] BUNDLE STUDIES [-- more monailabel start_server options]
#
#   BUNDLE   an exported bundle zip (python -m scripts.export_bundle writes dist/<name>_v<version>.zip)
#   STUDIES  the folder of photographs (.jpg/.png) to label; MONAI Label keeps labels in STUDIES/labels/
#   --apps DIR    where the app is set up: DIR/monaibundle (default: ./monailabel-apps)
#   --host ADDR   address to listen on (default 127.0.0.1; 0.0.0.0 exposes the server to your network)
#   --port N      port (default 8000)
#   --venv DIR    MONAI Label's virtual environment (default: $RFE_MONAILABEL_VENV, else .ci-venv-monailabel in
#                 this repository; scripts/setup_monailabel_venv.sh DIR builds one)
#
# An interactive zip (export_bundle.py --interactive true: <name>_deepedit) needs nothing more: MONAI Label's app
# serves a bundle whose name contains "deepedit" as two models, <name>_deepedit (DeepEdit: 3D Slicer's points) and
# <name>_deepedit_seg (automatic).
# The zip is unpacked into DIR/monaibundle/model/<name>/ once; when that folder exists it is served as it is
# (MONAI Label training updates its models/model.pt), so delete it to unpack the zip again. Serve a zip, not this
# repository: the export writes the checkpoint's backbone into train.json, which MONAI Label's training builds
# (its checkpoint loader silently skips weights that do not fit another backbone). The server never reaches the
# network: the model-zoo lookup (--conf zoo_source github with the bundle present) and SAM2 (--conf sam2 false) are off.
# Every argument is checked before anything is created.
set -euo pipefail

repo="$(cd "$(dirname "$0")/.." && pwd)"
venv="${RFE_MONAILABEL_VENV:-$repo/.ci-venv-monailabel}"
venv_from="RFE_MONAILABEL_VENV"
[ -n "${RFE_MONAILABEL_VENV:-}" ] || venv_from="the default"
apps="monailabel-apps"
host="127.0.0.1"
port="8000"
positional=()
while [ $# -gt 0 ]; do
    case "$1" in
        --apps|--host|--port|--venv)
            [ $# -ge 2 ] || { echo "ERROR $1 needs a value (see --help)" >&2; exit 2; } ;;
    esac
    case "$1" in
        --apps) apps="$2"; shift 2 ;;
        --host) host="$2"; shift 2 ;;
        --port) port="$2"; shift 2 ;;
        --venv) venv="$2"; venv_from="--venv"; shift 2 ;;
        --) shift; break ;;
        -h|--help) awk 'NR > 1 && /^#/ { sub(/^# ?/, ""); print; next } NR > 1 { exit }' "$0"; exit 0 ;;
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
case "$port" in
    ''|*[!0-9]*) echo "ERROR --port $port: not a port number" >&2; exit 2 ;;
esac

if [ ! -x "$venv/bin/monailabel" ] || [ ! -x "$venv/bin/python" ]; then
    echo "ERROR $venv (from $venv_from): not a MONAI Label venv (no bin/monailabel); build one with" \
        "scripts/setup_monailabel_venv.sh [DIR], or name yours with --venv DIR or RFE_MONAILABEL_VENV=DIR" >&2
    exit 2
fi
venv="$(cd "$venv" && pwd)"
[ -f "$bundle" ] || { echo "ERROR $bundle: no such bundle zip (export one with scripts/export_bundle.py)" >&2; exit 2; }
[ -d "$studies" ] || { echo "ERROR $studies: no such folder of photographs" >&2; exit 2; }
studies="$(cd "$studies" && pwd)"
python="$venv/bin/python"

# the bundle's name: the zip's single top folder; no member may land outside it
name="$("$python" - "$bundle" <<'EOF'
import posixpath, sys, zipfile

try:
    names = zipfile.ZipFile(sys.argv[1]).namelist()
except (zipfile.BadZipFile, OSError) as error:
    sys.exit(f"ERROR {sys.argv[1]}: not a zip file ({error})")
tops = {n.split("/", 1)[0] for n in names}
if len(tops) != 1:
    sys.exit(f"ERROR {sys.argv[1]}: a bundle zip holds one top folder, this one has {sorted(tops)[:5]}")
for member in names:
    if member.startswith("/") or "\\" in member or ".." in posixpath.normpath(member).split("/"):
        sys.exit(f"ERROR {sys.argv[1]}: member {member!r} would be written outside the bundle's folder")
print(tops.pop())
EOF
)"

mkdir -p "$apps"
apps="$(cd "$apps" && pwd)"
app="$apps/monaibundle"
if [ ! -d "$app" ]; then
    # the sample app ships inside the monailabel package; this copies it from there (no download)
    "$python" -m monailabel.main apps --download --name monaibundle --output "$apps" >/dev/null
fi

target="$app/model/$name"
mkdir -p "$app/model"
if [ -e "$target" ]; then
    echo "serving the existing $target (delete it to install $bundle again)"
else
    "$python" -c 'import sys, zipfile; zipfile.ZipFile(sys.argv[1]).extractall(sys.argv[2])' "$bundle" "$app/model"
fi

# train.json reads the pipeline from configs/inference.json relative to the working directory (the bundle root),
# and MONAI Label's training runs in a child process that inherits it. Not the venv's bin/monailabel wrapper: it
# puts the folder above the venv (this repository) on PYTHONPATH, which would hide a bundle that lacks its code.
cd "$target"
exec "$python" -m monailabel.main start_server --app "$app" --studies "$studies" --host "$host" --port "$port" \
    --conf models "$name" --conf zoo_source github --conf sam2 false "$@"
