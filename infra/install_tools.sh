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

LOG_NAME=install_tools.sh  # prefix of its messages (log, die)
# shellcheck source-path=SCRIPTDIR source=lib/install.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib/install.sh"

missing=()
for tool in "${!PACKAGES[@]}"; do
  command -v "$tool" >/dev/null 2>&1 || missing+=("${PACKAGES[$tool]}")
done

if ((${#missing[@]} == 0)); then
  log "all present (${!PACKAGES[*]})"
  exit 0
fi
if [[ "${1:-}" == "--check" ]]; then
  log "missing: ${missing[*]}"
  exit 1
fi

apt_install "apt-get not found; install ${missing[*]} with your package manager" \
  "need root or sudo for apt-get" "installing ${missing[*]}" "${missing[@]}"
for tool in "${!PACKAGES[@]}"; do
  command -v "$tool" >/dev/null 2>&1 || die "$tool still missing"
done
log "installed ${missing[*]}"
