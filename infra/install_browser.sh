#!/usr/bin/env bash
# The browser the web-page tests drive: Debian's Chromium plus the npm package playwright-core
# (the driver library only; it never downloads a browser of its own).
# Idempotent: what is already there (right version) is left alone, so a second run is instant.
#
#   infra/install_browser.sh          install what is missing (needs root or sudo for apt-get)
#   infra/install_browser.sh --check  exit 1 (listing what is missing) instead of installing
#
# Prints the node folder (holding node_modules/playwright-core) on stdout as its last line.
set -euo pipefail

# Pinned. 1.62+ needs Node >= 20; Debian 12's own nodejs is 18, where the last 1.61 is used.
PLAYWRIGHT_CORE_VERSION_NODE20="1.65.1"
PLAYWRIGHT_CORE_VERSION_NODE18="1.61.1"
CHROMIUM="/usr/bin/chromium"
cache="${SNAP2CAPTION_CACHE:-$HOME/.cache/snap2caption}"
node_dir="$cache/node"
export PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD=1

LOG_NAME=install_browser.sh  # prefix of its messages (log, die)
# shellcheck source-path=SCRIPTDIR source=lib/install.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib/install.sh"

have_chromium() { [[ -x "$CHROMIUM" ]]; }
have_driver() {
  [[ -f "$node_dir/node_modules/playwright-core/package.json" ]] &&
    grep -q "\"version\": \"$PLAYWRIGHT_CORE_VERSION\"" "$node_dir/node_modules/playwright-core/package.json"
}
have_node() { command -v node >/dev/null 2>&1 && command -v npm >/dev/null 2>&1; }
pick_version() {
  local major=0
  have_node && major="$(node -p 'process.versions.node.split(".")[0]' 2>/dev/null || echo 0)"
  if ((major >= 20)); then PLAYWRIGHT_CORE_VERSION="$PLAYWRIGHT_CORE_VERSION_NODE20"
  else PLAYWRIGHT_CORE_VERSION="$PLAYWRIGHT_CORE_VERSION_NODE18"; fi
}
pick_version

missing_apt=()
have_chromium || missing_apt+=(chromium)
have_node || missing_apt+=(nodejs npm)

if ((${#missing_apt[@]} == 0)) && have_driver; then
  log "all present (chromium, playwright-core $PLAYWRIGHT_CORE_VERSION)"
  echo "$node_dir"
  exit 0
fi
if [[ "${1:-}" == "--check" ]]; then
  have_driver || missing_apt+=("npm:playwright-core@$PLAYWRIGHT_CORE_VERSION")
  log "missing: ${missing_apt[*]}"
  exit 1
fi

if ((${#missing_apt[@]} > 0)); then
  apt_install "apt-get not found; install ${missing_apt[*]} with your package manager" \
    "need root or sudo for apt-get" "installing ${missing_apt[*]} (apt-get)" "${missing_apt[@]}"
  have_chromium || die "$CHROMIUM still missing"
  have_node || die "node/npm still missing"
  pick_version
fi

if ! have_driver; then
  log "installing playwright-core@$PLAYWRIGHT_CORE_VERSION into $node_dir"
  mkdir -p "$node_dir"
  cat >"$node_dir/package.json" <<JSON
{
  "name": "snap2caption-browser-tests",
  "private": true,
  "dependencies": { "playwright-core": "$PLAYWRIGHT_CORE_VERSION" }
}
JSON
  npm install --prefix "$node_dir" --no-audit --no-fund --save-exact --loglevel=error \
    "playwright-core@$PLAYWRIGHT_CORE_VERSION" >&2
  have_driver || die "playwright-core not installed"
fi
log "ready (chromium $("$CHROMIUM" --version 2>/dev/null | awk '{print $2}'), playwright-core $PLAYWRIGHT_CORE_VERSION)"
echo "$node_dir"
