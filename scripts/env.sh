#!/usr/bin/env bash
# Creates (once) and activates the project environment, then makes sure the offline data is on disk.
# Idempotent: the venv lives outside the clone, keyed by a hash of pyproject.toml, so a second run
# (or CI in a fresh clone on the same machine) reuses it; a change of dependencies builds a new one
# in a single resolve (incremental installs of this stack have broken `pip check`: shared/STACK.md).
#
# Meant to be sourced (`source scripts/env.sh`, as scripts/test.sh and scripts/demo.sh do): it sets `repo`,
# activates the venv and exports EDGEMP_CACHE, EDGEMP_DATA_DIR (and EDGEMP_LEGACY_PYTHON) in the caller's shell.
# The set-up itself runs in a subshell with `set -euo pipefail`, so the caller's shell options are left exactly
# as they were: an interactive shell that sources this file keeps going after a failing command. A set-up error
# stops loudly: the message on stderr, then `return 1` (sourced) or `exit 1` (executed) — and a caller running
# with `set -e` (test.sh, demo.sh) stops there.
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
_edgemp_cache="${EDGEMP_CACHE:-$HOME/.cache/edgemp}"

# Prints the venv path on stdout (everything else goes to stderr); exits non-zero on any error.
_edgemp_venv="$(
set -euo pipefail
exec 3>&1 1>&2
trap 's=$?; [ "$s" = 0 ] || echo "[edgemp] environment set-up failed (status $s, see above); nothing was activated" >&2' EXIT
extras="${EDGEMP_EXTRAS:-dev,torch,coreml,jetson,modelopt,ray}"
cache="$_edgemp_cache"
# Key on the declared dependencies only (not on version/description edits).
deps="$(python3 -c 'import json, sys, tomllib; p = tomllib.load(open(sys.argv[1], "rb"))["project"]; print(json.dumps([p["dependencies"], p.get("optional-dependencies", {})], sort_keys=True))' "$repo/pyproject.toml")"
key="$( (echo "$deps"; echo "$extras") | sha256sum | cut -c1-12)"
venv="$cache/venv-$key"
mkdir -p "$cache"
if [ ! -f "$venv/.complete" ]; then
    echo "[edgemp] creating environment $venv (extras: $extras)" >&2
    rm -rf "$venv"
    python3.11 -m venv "$venv" 2>/dev/null || python3 -m venv "$venv"
    log="$cache/install-$key.log"
    if ! { "$venv/bin/python" -m pip install --upgrade pip \
           && "$venv/bin/python" -m pip install -e "$repo[$extras]" \
           && "$venv/bin/python" -m pip check; } >"$log" 2>&1; then
        tail -n 40 "$log" >&2
        echo "[edgemp] installation failed; full log: $log" >&2
        exit 1
    fi
    touch "$venv/.complete"
fi
# Point the editable install at this checkout (CI clones elsewhere; cheap, no dependency resolve).
"$venv/bin/python" -m pip install --quiet --no-deps --no-build-isolation -e "$repo" >"$cache/repoint.log" 2>&1 \
    || { cat "$cache/repoint.log" >&2; exit 1; }

# Fashion-MNIST (Debian package dataset-fashion-mnist) trains the example model. Nothing downloads it at
# run time: it is fetched here, at set-up, from the Debian archive into the cache when not installed.
data="$cache/data"
if [ ! -f /usr/share/datasets/fashion-mnist/t10k-labels-idx1-ubyte.gz ] \
   && [ ! -f "$data/usr/share/datasets/fashion-mnist/t10k-labels-idx1-ubyte.gz" ]; then
    echo "[edgemp] fetching Debian package dataset-fashion-mnist into $data" >&2
    mkdir -p "$data/deb"
    ( cd "$data/deb" && { apt-get download dataset-fashion-mnist >/dev/null 2>&1 \
        || { apt-get update -qq >/dev/null 2>&1 && apt-get download dataset-fashion-mnist >/dev/null; }; } )
    dpkg -x "$data"/deb/dataset-fashion-mnist_*.deb "$data"
fi

# Optional test tools, each skipped with a reason when unavailable (never a reason to fail set-up):
# - kotlinc + Android's org.json (Debian kotlin, libandroid-json-java) run android_demo's plain-Kotlin code on the JVM;
# - Python 3.8 + tflite-runtime 2.13 + numpy 1.24 is what a JetPack 5 device has: the harness must run there too.
if ! command -v kotlinc >/dev/null 2>&1 || [ ! -f /usr/share/java/com.android.json.jar ]; then
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
        echo "[edgemp] installing kotlin + libandroid-json-java (android_demo JVM tests)" >&2
        { apt-get install -y -qq --no-install-recommends kotlin libandroid-json-java \
          || { apt-get update -qq && apt-get install -y -qq --no-install-recommends kotlin libandroid-json-java; }; } \
          >"$cache/apt-kotlin.log" 2>&1 || echo "[edgemp] kotlin not installed (see $cache/apt-kotlin.log); those tests skip" >&2
    fi
fi
legacy="$cache/legacy-py38"
py38=""
for c in python3.8 "$HOME"/.pyenv/versions/3.8*/bin/python3.8 /usr/bin/python3.8; do
    if "$c" --version >/dev/null 2>&1; then py38="$c"; break; fi
done
if [ ! -f "$legacy/.complete" ] && [ -n "$py38" ]; then
    echo "[edgemp] creating $legacy (Python 3.8 + tflite-runtime, for the device harness tests)" >&2
    rm -rf "$legacy"
    { "$py38" -m venv "$legacy" && "$legacy/bin/python" -m pip install --quiet tflite-runtime==2.13.0 numpy==1.24.4 \
      && touch "$legacy/.complete"; } >"$cache/legacy-py38.log" 2>&1 \
      || echo "[edgemp] legacy runtime not set up (see $cache/legacy-py38.log); that test skips" >&2
fi
printf '%s' "$venv" >&3
)"
# (not `$(...) || ...`: bash ignores `set -e` inside a command that is tested, so set-up errors would pass unseen)
# shellcheck disable=SC2181
if [ $? -ne 0 ] || [ -z "$_edgemp_venv" ]; then
    unset _edgemp_cache _edgemp_venv
    return 1 2>/dev/null || exit 1
fi

# In the caller's shell, nothing here can fail: activate, export.
# shellcheck disable=SC1091
source "$_edgemp_venv/bin/activate"
export EDGEMP_DATA_DIR="${EDGEMP_DATA_DIR:-$_edgemp_cache/data}"
export EDGEMP_CACHE="$_edgemp_cache"
if [ -f "$_edgemp_cache/legacy-py38/.complete" ]; then
    export EDGEMP_LEGACY_PYTHON="${EDGEMP_LEGACY_PYTHON:-$_edgemp_cache/legacy-py38/bin/python}"
fi
unset _edgemp_cache _edgemp_venv
