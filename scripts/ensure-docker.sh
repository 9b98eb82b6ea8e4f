#!/usr/bin/env bash
# Make sure a Docker engine answers on this machine; idempotent.
#
#   scripts/ensure-docker.sh
#
# 1. If `docker info` already works, does nothing.
# 2. If `dockerd` is not installed, installs Debian's `docker.io` package (apt-get update first).
# 3. Starts `dockerd` detached (its own session, log in /var/log/caldera-dockerd.log, or under /tmp if
#    /var/log is not writable) and waits until `docker info` works (CALDERA_DOCKER_TIMEOUT, default 60 s).
# 4. If dockerd dies during start-up, reads its log and retries with the fallback the error calls for:
#    - storage driver unusable (overlay on overlay, no d_type, …)  → --storage-driver=vfs
#    - network set-up failed (iptables/nftables, bridge, NAT)        → --iptables=false --ip6tables=false
#      --bridge=none (caldera's sandbox only uses `--network none` containers)
#
# DOCKER_HOST=unix:///path/to.sock selects another local socket (dockerd then gets `-H` for it; give it
# its own --data-root/--exec-root/--pidfile in CALDERA_DOCKERD_FLAGS, which are passed to dockerd as
# they are). Every action is reported on stderr. Must run as root when it has to install or start the
# engine.
set -euo pipefail

log() { printf 'ensure-docker: %s\n' "$*" >&2; }
die() { log "error: $*"; exit 1; }

TIMEOUT="${CALDERA_DOCKER_TIMEOUT:-60}"

engine_answers() { docker info >/dev/null 2>&1; }

if command -v docker >/dev/null && engine_answers; then
    log "Docker engine already answers ($(docker version -f '{{.Server.Version}} (API {{.Server.APIVersion}})' 2>/dev/null || echo '?')); nothing to do"
    exit 0
fi

if [ "$(id -u)" != 0 ]; then
    die "the Docker engine does not answer and starting it needs root; run this script as root"
fi

if ! command -v dockerd >/dev/null; then
    log "dockerd not found: installing Debian package docker.io"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq >&2
    apt-get install -y -qq docker.io >&2
    command -v dockerd >/dev/null || die "docker.io installed but dockerd is still not on PATH"
fi
command -v docker >/dev/null || die "docker CLI not found after installing docker.io"

DEFAULT_SOCK=/var/run/docker.sock
HOST_URL="${DOCKER_HOST:-unix://$DEFAULT_SOCK}"
case "$HOST_URL" in
    unix://*) SOCK="${HOST_URL#unix://}" ;;
    *) die "DOCKER_HOST=$HOST_URL is not a local unix socket; start that engine yourself" ;;
esac
HOST_FLAGS=()
LOG_NAME=caldera-dockerd.log
if [ "$SOCK" != "$DEFAULT_SOCK" ] && [ "$SOCK" != /run/docker.sock ]; then
    HOST_FLAGS=(-H "unix://$SOCK")
    LOG_NAME="caldera-dockerd-$(printf '%s' "$SOCK" | tr -c 'A-Za-z0-9' '_').log"
fi
if [ -w /var/log ]; then
    LOG="/var/log/$LOG_NAME"
else
    LOG="/tmp/$LOG_NAME"
fi

# A dockerd serving our socket that is already starting (e.g. launched a moment ago by a parallel run)
# gets its chance first. A dockerd without -H serves the default socket.
dockerd_pid() {
    local pid args
    for pid in $(pgrep -x dockerd || true); do
        args="$(tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null || true)"
        if [ ${#HOST_FLAGS[@]} = 0 ]; then
            case "$args" in *" -H "*|*" --host"*) continue ;; esac
        else
            case "$args" in *"$SOCK"*) ;; *) continue ;; esac
        fi
        echo "$pid"
        return
    done
}

wait_for_engine() { # $1 = pid of the dockerd we watch; returns 0 when it answers, 1 if it died, 2 on timeout
    local pid="$1" waited=0
    while [ "$waited" -lt "$TIMEOUT" ]; do
        if engine_answers; then
            return 0
        fi
        if ! kill -0 "$pid" 2>/dev/null; then
            return 1
        fi
        sleep 1
        waited=$((waited + 1))
    done
    return 2
}

existing="$(dockerd_pid)"
if [ -n "$existing" ]; then
    log "dockerd is running (pid $existing) but does not answer yet; waiting up to ${TIMEOUT}s"
    if wait_for_engine "$existing"; then
        log "Docker engine answers"
        exit 0
    fi
    die "dockerd (pid $existing) runs but does not answer; see its log (${LOG}?) or stop it and re-run"
fi

start_dockerd() { # args: extra flags; sets STARTED_PID
    local mark
    mark=0
    if [ -f "$LOG" ]; then mark="$(wc -l <"$LOG")"; fi
    START_LINE=$((mark + 1))
    log "starting dockerd ${HOST_FLAGS[*]} $* ${CALDERA_DOCKERD_FLAGS:-} (log: $LOG)"
    # setsid: own session, so it survives this shell and its process group.
    # shellcheck disable=SC2086
    setsid dockerd "${HOST_FLAGS[@]}" "$@" ${CALDERA_DOCKERD_FLAGS:-} </dev/null >>"$LOG" 2>&1 &
    STARTED_PID=$!
}

# Log lines written by the most recent start attempt.
last_log() { tail -n +"$START_LINE" "$LOG" 2>/dev/null || true; }

flags=()
tried_vfs=0
tried_nonet=0
for attempt in 1 2 3; do
    start_dockerd "${flags[@]}"
    rc=0
    wait_for_engine "$STARTED_PID" || rc=$?
    if [ "$rc" = 0 ]; then
        log "Docker engine answers: $(docker version -f 'server {{.Server.Version}}, API {{.Server.APIVersion}}' 2>/dev/null), storage driver $(docker info -f '{{.Driver}}' 2>/dev/null), cgroup v$(docker info -f '{{.CgroupVersion}}' 2>/dev/null)"
        exit 0
    fi
    if [ "$rc" = 2 ]; then
        last_log | tail -n 20 >&2
        die "dockerd (pid $STARTED_PID) did not answer within ${TIMEOUT}s; it is left running, see $LOG"
    fi
    errors="$(last_log | grep -iE 'level=(fatal|error)|failed to start daemon' || true)"
    [ -n "$errors" ] || errors="$(last_log | tail -n 10)"
    log "dockerd exited during start-up (attempt $attempt)"
    printf '%s\n' "$errors" | tail -n 10 >&2
    if [ "$tried_vfs" = 0 ] && printf '%s' "$errors" | grep -qiE 'storage|graphdriver|overlay|d_type|driver not supported'; then
        log "storage driver problem: retrying with --storage-driver=vfs (slower, but works everywhere)"
        flags+=(--storage-driver=vfs)
        tried_vfs=1
    elif [ "$tried_nonet" = 0 ] && printf '%s' "$errors" | grep -qiE 'iptables|nftables|network controller|bridge|nat chain|ip_forward'; then
        log "network set-up problem: retrying with --iptables=false --ip6tables=false --bridge=none"
        flags+=(--iptables=false --ip6tables=false --bridge=none)
        tried_nonet=1
    else
        die "dockerd failed to start for a reason this script does not know how to work around; see $LOG"
    fi
done
die "dockerd did not start after $attempt attempts; see $LOG"
