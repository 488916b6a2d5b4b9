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
  echo "install_browser.sh: all present (chromium, playwright-core $PLAYWRIGHT_CORE_VERSION)" >&2
  echo "$node_dir"
  exit 0
fi
if [[ "${1:-}" == "--check" ]]; then
  have_driver || missing_apt+=("npm:playwright-core@$PLAYWRIGHT_CORE_VERSION")
  echo "install_browser.sh: missing: ${missing_apt[*]}" >&2
  exit 1
fi

if ((${#missing_apt[@]} > 0)); then
  command -v apt-get >/dev/null 2>&1 || {
    echo "install_browser.sh: ERROR: apt-get not found; install ${missing_apt[*]} with your package manager" >&2
    exit 1
  }
  SUDO=()
  if ((EUID != 0)); then
    command -v sudo >/dev/null 2>&1 || { echo "install_browser.sh: ERROR: need root or sudo for apt-get" >&2; exit 1; }
    SUDO=(sudo -n)
  fi
  echo "install_browser.sh: installing ${missing_apt[*]} (apt-get)" >&2
  export DEBIAN_FRONTEND=noninteractive
  # Without a package-list refresh first (quickest on fresh lists); refresh only on failure.
  if ! "${SUDO[@]}" apt-get install -y -q --no-install-recommends "${missing_apt[@]}" >&2; then
    "${SUDO[@]}" apt-get update -q >&2
    "${SUDO[@]}" apt-get install -y -q --no-install-recommends "${missing_apt[@]}" >&2
  fi
  have_chromium || { echo "install_browser.sh: ERROR: $CHROMIUM still missing" >&2; exit 1; }
  have_node || { echo "install_browser.sh: ERROR: node/npm still missing" >&2; exit 1; }
  pick_version
fi

if ! have_driver; then
  echo "install_browser.sh: installing playwright-core@$PLAYWRIGHT_CORE_VERSION into $node_dir" >&2
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
  have_driver || { echo "install_browser.sh: ERROR: playwright-core not installed" >&2; exit 1; }
fi
echo "install_browser.sh: ready (chromium $("$CHROMIUM" --version 2>/dev/null | awk '{print $2}'), playwright-core $PLAYWRIGHT_CORE_VERSION)" >&2
echo "$node_dir"
