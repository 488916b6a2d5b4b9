#!/usr/bin/env bash
# Installs the tools that render and validate k8s/ (idempotent, cached, version-pinned).
#
#   kustomize           Go module sigs.k8s.io/kustomize/kustomize/v5, built with `go install`
#                       through the Go module proxy into $SNAP2CAPTION_CACHE/bin.
#   kubernetes-validate PyPI package shipping the Kubernetes JSON schemas (generated from the
#                       upstream OpenAPI, "local-strict" flavour) for Kubernetes 1.25-1.37;
#                       ~110 MB, installed with pip --target into $SNAP2CAPTION_CACHE/py so it
#                       does not touch the caller's environment. tests/test_k8s_manifests.py
#                       puts that folder on sys.path.
#
# Usage: infra/install_k8s_tools.sh            # prints the two install locations
#        PYTHON=/path/to/python infra/install_k8s_tools.sh
# A second run with everything in place does nothing but print the locations.
set -euo pipefail

# v5.8.1 needs go >= 1.24 (v5.8.3 needs 1.27, newer than this machine's Go); GOTOOLCHAIN=local
# keeps go from fetching a toolchain of its own.
KUSTOMIZE_VERSION="${KUSTOMIZE_VERSION:-v5.8.1}"
KUBERNETES_VALIDATE_VERSION="${KUBERNETES_VALIDATE_VERSION:-1.37.0}"

CACHE="${SNAP2CAPTION_CACHE:-$HOME/.cache/snap2caption}"
BIN="$CACHE/bin"
PYDIR="$CACHE/py/kubernetes-validate-$KUBERNETES_VALIDATE_VERSION"
PYTHON="${PYTHON:-$(command -v python3 || true)}"

LOG_NAME=install_k8s_tools  # prefix of its messages (log, die)
# shellcheck source-path=SCRIPTDIR source=lib/install.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib/install.sh"
# This script's errors are plain lines, without the "ERROR: " of lib/log.sh's die.
die() { log "$*"; exit 1; }

# --- kustomize ------------------------------------------------------------------------
go_install_pinned "$BIN" kustomize "$KUSTOMIZE_VERSION" sigs.k8s.io/kustomize/kustomize/v5 \
  "about a minute" version

# --- kubernetes-validate (Kubernetes JSON schemas) ------------------------------------
if [[ ! -f "$PYDIR/.complete" ]]; then
  [[ -n "$PYTHON" ]] || die "no python3 found; set PYTHON"
  log "installing kubernetes-validate $KUBERNETES_VALIDATE_VERSION into $PYDIR"
  rm -rf "$PYDIR"
  # --no-deps: jsonschema, PyYAML and referencing come from the caller's environment
  # (the test needs them anyway). The small pure-Python rest of its dependencies goes into
  # the same folder; the test appends the folder to the END of sys.path, so a copy the
  # caller already has always wins and nothing of the caller's is shadowed.
  "$PYTHON" -m pip install --quiet --disable-pip-version-check --no-deps \
    --target "$PYDIR" "kubernetes-validate==$KUBERNETES_VALIDATE_VERSION" \
    "importlib-resources==7.1.0" "typing-extensions==4.16.0" "packaging==26.3"
  touch "$PYDIR/.complete"
fi

echo "KUSTOMIZE=$BIN/kustomize"
echo "KUBERNETES_VALIDATE_PATH=$PYDIR"
