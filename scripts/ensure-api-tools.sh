#!/usr/bin/env bash
# The Python checkers of the master's HTTP contract, used by crates/caldera-master/tests/contract.rs:
#   openapi-spec-validator  validates the served OpenAPI document (/api/v1/openapi.json);
#   schemathesis            a bounded property-based run against a real master (no 5xx, responses
#                           that match the schema);
#   prometheus_client       its OpenMetrics parser reads /metrics as a Prometheus server would.
#
# Installed from PyPI, pinned, into a virtualenv under $CALDERA_API_TOOLS (default
# /var/tmp/caldera-api-tools), once: a second run finds the venv's stamp matching the pins and does
# nothing. python3-venv comes from Debian when `python3 -m venv` is missing. `cargo xtask provision`
# (and so `cargo xtask test`) runs this; the tests run it too when the venv is missing.
#
# Prints the venv's directory last.
set -euo pipefail

tools="${CALDERA_API_TOOLS:-/var/tmp/caldera-api-tools}"
venv="$tools/venv"
# keep in sync with the comment above
requirements=(
    "openapi-spec-validator==0.9.0"
    "schemathesis==4.32.5"
    "prometheus_client==0.26.0"
)

log() { printf 'ensure-api-tools: %s\n' "$*" >&2; }
die() { log "error: $*"; exit 1; }

apt_install() {
    command -v apt-get >/dev/null || die "$* missing and no apt-get here: install them by hand"
    local sudo=()
    [ "$(id -u)" = 0 ] || sudo=(sudo)
    log "installing Debian packages: $*"
    "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get update -qq
    "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$@" >/dev/null
}

stamp="$venv/.caldera-requirements"
want="$(printf '%s\n' "${requirements[@]}")"
if [ -x "$venv/bin/python" ] && [ "$(cat "$stamp" 2>/dev/null)" = "$want" ]; then
    log "$venv is up to date"
else
    command -v python3 >/dev/null || apt_install python3
    mkdir -p "$tools"
    # concurrent test binaries may call this at once: one installs, the others wait for it
    exec 9>"$tools/.lock"
    flock 9
    if [ -x "$venv/bin/python" ] && [ "$(cat "$stamp" 2>/dev/null)" = "$want" ]; then
        log "$venv is up to date"
    else
        rm -rf "$venv"
        if ! python3 -m venv "$venv" >/dev/null 2>&1; then
            rm -rf "$venv"
            apt_install python3-venv
            python3 -m venv "$venv"
        fi
        log "installing ${requirements[*]} from PyPI into $venv"
        "$venv/bin/python" -m pip install -q --disable-pip-version-check "${requirements[@]}" >&2
        printf '%s\n' "$want" >"$stamp"
    fi
fi
printf '%s\n' "$venv"
