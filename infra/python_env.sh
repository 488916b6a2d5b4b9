#!/usr/bin/env bash
# Prints the path of a Python virtualenv holding every dependency in pyproject.toml,
# creating it first if needed. The venv lives outside the clone, keyed by the dependency
# lists and the Python version, so a fresh clone reuses it and a dependency change
# rebuilds it. The project itself is not installed: callers put the repo on PYTHONPATH.
#
#   infra/python_env.sh            # prints e.g. ~/.cache/snap2caption/venv-3f2a9c1d0e4b
#   SNAP2CAPTION_PYTHON=python3.12 infra/python_env.sh
set -euo pipefail

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cache="${SNAP2CAPTION_CACHE:-$HOME/.cache/snap2caption}"
python="${SNAP2CAPTION_PYTHON:-python3}"

# Key: the dependency lists (not the whole pyproject, so editing a pytest marker does not
# reinstall torch), the interpreter version and this script's recipe version.
key="$("$python" - "$repo/pyproject.toml" <<'PY'
import hashlib, json, sys, tomllib, platform
p = tomllib.load(open(sys.argv[1], "rb"))["project"]
blob = json.dumps([p["dependencies"], p.get("optional-dependencies", {}), platform.python_version(), "recipe-1"])
print(hashlib.sha256(blob.encode()).hexdigest()[:12])
PY
)"
venv="$cache/venv-$key"

if [ ! -f "$venv/.complete" ]; then
  mkdir -p "$cache"
  # One builder at a time: a second caller (make test beside make serve) waits, then reuses.
  exec 9>"$venv.lock"
  flock 9
fi
if [ ! -f "$venv/.complete" ]; then
  echo "creating Python environment $venv (first run only: torch alone is a few GB)" >&2
  mkdir -p "$cache"
  # Built in place (venv scripts hard-code their path); .complete is written last, so an
  # interrupted build is detected and redone from scratch.
  rm -rf "$venv"
  "$python" -m venv "$venv"
  "$venv/bin/pip" install --quiet --upgrade pip >&2
  deps="$("$python" - "$repo/pyproject.toml" <<'PY'
import sys, tomllib
p = tomllib.load(open(sys.argv[1], "rb"))["project"]
print("\n".join(p["dependencies"] + p.get("optional-dependencies", {}).get("dev", [])))
PY
)"
  mapfile -t reqs <<<"$deps"
  "$venv/bin/pip" install --progress-bar off "${reqs[@]}" >&2
  touch "$venv/.complete"
fi
echo "$venv"
