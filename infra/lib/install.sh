# Shared by the infra/install_*.sh scripts and infra/prometheus.sh (sourced, not run): how
# pinned tools are built with `go install` into the project's tool cache, and how Debian
# packages are installed with apt-get. log and die come from lib/log.sh (the sourcing script
# sets LOG_NAME).
# shellcheck shell=bash

# SCRIPTDIR is infra/lib when shellcheck checks this file, infra/ when it follows a script here.
# shellcheck source-path=SCRIPTDIR source-path=SCRIPTDIR/lib source=log.sh
source "$(dirname "${BASH_SOURCE[0]}")/log.sh"

# go_install_pinned BIN NAME VERSION PACKAGE ETA CHECK_ARGS...
# Builds BIN/NAME-VERSION with `go install PACKAGE@VERSION` unless it is already there
# (creating BIN), points the symlink BIN/NAME at it and runs `BIN/NAME CHECK_ARGS...` as a
# smoke test. ETA says how long a build takes, for the log line.
go_install_pinned() {
  local bin="$1" name="$2" version="$3" package="$4" eta="$5"
  shift 5
  local dest="$bin/$name-$version" go
  mkdir -p "$bin"
  if [[ ! -x "$dest" ]]; then
    go="$(command -v go || true)"
    [[ -n "$go" || ! -x /usr/local/go/bin/go ]] || go=/usr/local/go/bin/go
    [[ -n "$go" ]] || die "go is not installed; it is needed to build $name"
    log "building $name $version with go install ($eta on 2 cores)"
    # A private GOBIN, moved into place only when complete: two concurrent first runs (tests
    # in parallel, CI) never see a half-written binary. A global, not a local: the EXIT trap
    # may run after this function has returned.
    GO_INSTALL_TMP="$(mktemp -d "$bin/.gobin.XXXXXX")"
    trap 'rm -rf "$GO_INSTALL_TMP"' EXIT
    # GOTOOLCHAIN=local keeps go from fetching a newer toolchain of its own.
    GOBIN="$GO_INSTALL_TMP" GOTOOLCHAIN=local GOFLAGS="${GOFLAGS:--buildvcs=false}" CGO_ENABLED=0 \
      "$go" install "$package@$version"
    mv "$GO_INSTALL_TMP/$name" "$dest"
    rm -rf "$GO_INSTALL_TMP"; trap - EXIT
  fi
  ln -sfn "$name-$version" "$bin/$name"
  "$bin/$name" "$@" >/dev/null
}

# apt_install NO_APT_MESSAGE NO_SUDO_MESSAGE INSTALLING_MESSAGE PACKAGE...
# apt-get install PACKAGE... as root, or through `sudo -n`. Dies with NO_APT_MESSAGE when
# there is no apt-get, with NO_SUDO_MESSAGE when neither root nor sudo; logs
# INSTALLING_MESSAGE before it starts. apt-get's own output goes to stderr.
apt_install() {
  local no_apt="$1" no_sudo="$2" installing="$3"
  shift 3
  command -v apt-get >/dev/null 2>&1 || die "$no_apt"
  local sudo=()
  if ((EUID != 0)); then
    command -v sudo >/dev/null 2>&1 || die "$no_sudo"
    sudo=(sudo -n)
  fi
  log "$installing"
  export DEBIAN_FRONTEND=noninteractive
  # Without a package-list refresh first (quickest on fresh lists); refresh only when a
  # package is not known yet. --no-install-recommends: no extras (prometheus would bring
  # node-exporter and friends, which start daemons).
  if ! "${sudo[@]}" apt-get install -y -q --no-install-recommends "$@" >&2; then
    "${sudo[@]}" apt-get update -q >&2
    "${sudo[@]}" apt-get install -y -q --no-install-recommends "$@" >&2
  fi
}
