#!/usr/bin/env bash
# Command-line tools the stream tests and the README use, installed from Debian packages.
# Idempotent: a tool already on PATH is left alone, so a second run is instant.
#
#   infra/install_tools.sh          install what is missing (needs root or sudo)
#   infra/install_tools.sh --check  exit 1 (listing what is missing) instead of installing
#
# Tools:  kcat  -- an independent Kafka client (librdkafka), used to produce and read
#                  events the way a non-Python platform component would.
set -euo pipefail

# tool on PATH -> Debian package that provides it
declare -A PACKAGES=([kcat]=kcat)

missing=()
for tool in "${!PACKAGES[@]}"; do
  command -v "$tool" >/dev/null 2>&1 || missing+=("${PACKAGES[$tool]}")
done

if ((${#missing[@]} == 0)); then
  echo "install_tools.sh: all present (${!PACKAGES[*]})" >&2
  exit 0
fi
if [[ "${1:-}" == "--check" ]]; then
  echo "install_tools.sh: missing: ${missing[*]}" >&2
  exit 1
fi

command -v apt-get >/dev/null 2>&1 || {
  echo "install_tools.sh: ERROR: apt-get not found; install ${missing[*]} with your package manager" >&2
  exit 1
}
SUDO=()
if ((EUID != 0)); then
  command -v sudo >/dev/null 2>&1 || { echo "install_tools.sh: ERROR: need root or sudo for apt-get" >&2; exit 1; }
  SUDO=(sudo -n)
fi

echo "install_tools.sh: installing ${missing[*]}" >&2
export DEBIAN_FRONTEND=noninteractive
# Try without a package-list refresh first: on a machine with fresh lists that is the
# quickest path; refresh only when the package is not known yet.
if ! "${SUDO[@]}" apt-get install -y -q --no-install-recommends "${missing[@]}" >&2; then
  "${SUDO[@]}" apt-get update -q >&2
  "${SUDO[@]}" apt-get install -y -q --no-install-recommends "${missing[@]}" >&2
fi
for tool in "${!PACKAGES[@]}"; do
  command -v "$tool" >/dev/null 2>&1 || { echo "install_tools.sh: ERROR: $tool still missing" >&2; exit 1; }
done
echo "install_tools.sh: installed ${missing[*]}" >&2
