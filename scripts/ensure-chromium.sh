#!/usr/bin/env bash
# Make sure Debian's Chromium and ChromeDriver are installed, for the dashboard's browser test
# (crates/caldera/tests/browser.rs); idempotent.
#
#   scripts/ensure-chromium.sh
#
# 1. If /usr/bin/chromium and /usr/bin/chromedriver exist and report a version, does nothing.
# 2. Otherwise installs the Debian packages `chromium` and `chromium-driver` (apt-get update first).
#    Needs root (or sudo) and access to Debian's package mirrors. Nothing is downloaded from
#    anywhere else: the browser and its driver are Debian's, of the same version.
#
# The test finds them through CALDERA_CHROMIUM / CALDERA_CHROMEDRIVER (defaults: /usr/bin/chromium,
# /usr/bin/chromedriver). Every action is reported on stderr.
set -euo pipefail

log() { printf 'ensure-chromium: %s\n' "$*" >&2; }
die() { log "error: $*"; exit 1; }

CHROMIUM="${CALDERA_CHROMIUM:-/usr/bin/chromium}"
DRIVER="${CALDERA_CHROMEDRIVER:-/usr/bin/chromedriver}"

works() { [ -x "$CHROMIUM" ] && [ -x "$DRIVER" ] && "$CHROMIUM" --version >/dev/null 2>&1 && "$DRIVER" --version >/dev/null 2>&1; }

if works; then
    log "already installed: $("$CHROMIUM" --version 2>/dev/null), $("$DRIVER" --version 2>/dev/null | cut -d' ' -f1-2); nothing to do"
    exit 0
fi

SUDO=()
if [ "$(id -u)" != 0 ]; then
    command -v sudo >/dev/null || die "chromium/chromedriver are missing and installing them needs root; run this script as root"
    SUDO=(sudo)
fi

log "installing Debian packages chromium and chromium-driver (apt-get update first)"
export DEBIAN_FRONTEND=noninteractive
"${SUDO[@]}" apt-get update -qq >&2
"${SUDO[@]}" apt-get install -y -qq --no-install-recommends chromium chromium-driver >&2

works || die "installed, but $CHROMIUM or $DRIVER still does not run"
log "installed: $("$CHROMIUM" --version 2>/dev/null), $("$DRIVER" --version 2>/dev/null | cut -d' ' -f1-2)"
