#!/usr/bin/env bash
# The device check in one command, on a machine that reaches no package registry (README, "On a GPU"):
#
#   bash benchmarks/device_check.sh --out DIR [--quick] [--minutes M]
#
# 1. installs the wheels in .wheels/ (benchmarks/device_requirements.txt; or $SASHIMI_WHEELS) with
#    --no-index --no-deps into a temporary folder put first on PYTHONPATH;
# 2. installs the project there too, without its pins (--no-deps, no build isolation: the image's setuptools;
#    where that fails, the checkout goes on PYTHONPATH instead);
# 3. runs benchmarks/device_check.py with the same arguments: DIR/device_check.json and DIR/device_check.log.
# $PYTHON picks the interpreter (default python3). The temporary folder is removed at the end.
set -euo pipefail
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
wheels="${SASHIMI_WHEELS:-$repo/.wheels}"
python="${PYTHON:-python3}"
site="$(mktemp -d "${TMPDIR:-/tmp}/sashimi_site.XXXXXX")"
trap 'rm -rf "$site"' EXIT
pip_install=("$python" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --disable-pip-version-check --target "$site")
shopt -s nullglob
carried=("$wheels"/*.whl)
if ((${#carried[@]})); then
  "${pip_install[@]}" "${carried[@]}"
  note="${#carried[@]} wheels from $wheels installed"
else
  note="no wheels in $wheels: the packages installed here"
fi
if "${pip_install[@]}" --no-build-isolation "$repo" >&2; then
  note="$note; the project installed without its pins"
else  # no setuptools here, say: the checkout itself on PYTHONPATH serves as well
  note="$note; the project could not be installed (pip above), run from the checkout"
  pythonpath="$site:$repo"
fi
echo "device_check.sh: $note" >&2
export SASHIMI_DEVICE_CHECK_INSTALL="$note"
export PYTHONPATH="${pythonpath:-$site}${PYTHONPATH:+:$PYTHONPATH}"
export PYTHONUNBUFFERED=1
cd "$repo"
"$python" benchmarks/device_check.py "$@"
