#!/usr/bin/env bash
# Prints the path of a Python virtualenv holding exactly what requirements.lock pins (every
# dependency in pyproject.toml, dev extras included, and everything they need, each version with
# its hashes), creating it first if needed. The venv lives outside the clone, keyed by the lock
# file's hash, the Python version and this script's recipe, so a fresh clone reuses it, a lock
# change rebuilds it, and a machine next year installs what CI tested. The lock's comments (uv's
# "# via" notes) are left out of the hash: they change nothing installed. The project itself is
# not installed: callers put the repo on PYTHONPATH.
#
# The lock is for Linux x86_64 and Python 3.11 (the CI runners and the image); `make lock`
# regenerates it after a change to the dependencies in pyproject.toml.
#
#   infra/python_env.sh            # prints e.g. ~/.cache/snap2caption/venv-3f2a9c1d0e4b
#   SNAP2CAPTION_PYTHON=python3.11 infra/python_env.sh
set -euo pipefail

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cache="${SNAP2CAPTION_CACHE:-$HOME/.cache/snap2caption}"
python="${SNAP2CAPTION_PYTHON:-python3}"
lock="$repo/requirements.lock"
# Bump when the way the venv is built changes (not when the lock does: its hash is in the key).
recipe="lock-1: venv + bundled pip, pip install --require-hashes --no-deps -r requirements.lock, pip check"

if [ ! -f "$lock" ]; then
  echo "python_env.sh: $lock is missing (make lock writes it from pyproject.toml)" >&2
  exit 1
fi

# Key: the lock's requirement lines, the interpreter version and the recipe. Refuses an
# interpreter or a machine the lock was not made for, rather than failing halfway through.
key="$("$python" - "$lock" "$recipe" <<'PY'
import hashlib, platform, sys
if sys.version_info[:2] != (3, 11) or sys.platform != "linux" or platform.machine() != "x86_64":
    sys.exit(f"python_env.sh: requirements.lock is for CPython 3.11 on Linux x86_64; {sys.executable} is "
             f"{platform.python_version()} on {sys.platform} {platform.machine()} "
             "(SNAP2CAPTION_PYTHON picks the interpreter)")
lines = [line for line in open(sys.argv[1], encoding="utf-8").read().splitlines()
         if line.strip() and not line.lstrip().startswith("#")]
h = hashlib.sha256("\n".join(lines + [platform.python_version(), sys.argv[2]]).encode())
print(h.hexdigest()[:12])
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
  echo "creating Python environment $venv from requirements.lock (first run only: torch alone is a few GB)" >&2
  mkdir -p "$cache"
  # Built in place (venv scripts hard-code their path); .complete is written last, so an
  # interrupted build is detected and redone from scratch.
  rm -rf "$venv"
  "$python" -m venv "$venv"
  # The interpreter's bundled pip (fixed by the Python version, which is in the key): no
  # unpinned upgrade from the index. --no-deps: the lock already lists every package, and
  # --require-hashes refuses any file whose hash it does not list.
  "$venv/bin/pip" install --disable-pip-version-check --progress-bar off \
    --require-hashes --no-deps -r "$lock" >&2
  # The lock was resolved as a whole; this catches one that lost a package (edited by hand).
  "$venv/bin/pip" check --disable-pip-version-check >&2
  cp "$lock" "$venv/requirements.lock"  # what this venv was built from, for `diff` later
  touch "$venv/.complete"
fi
echo "$venv"
