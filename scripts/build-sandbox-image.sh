#!/usr/bin/env bash
# Build caldera's sandbox ("builder") image without pulling anything from an image registry.
#
#   scripts/build-sandbox-image.sh [--force] [--no-cache] [IMAGE]   (default IMAGE: caldera-builder:latest)
#
#   --force      rebuild IMAGE even if it exists (reusing the cached rootfs tarball when there is one)
#   --no-cache   also rebuild the rootfs tarball (debootstrap again)
#
# What it does:
#   1. If IMAGE already exists in the local Docker engine, does nothing (unless --force).
#   2. Otherwise debootstraps Debian (minbase) into a temporary directory, installs the build packages
#      with apt inside it, creates the unprivileged user `caldera` (uid/gid 1000), cleans apt caches and
#      packs the tree into a tarball cached under $CALDERA_CACHE_DIR (default /var/cache/caldera), so a
#      rebuild of the same recipe only re-imports the tarball.
#   3. `docker import`s the tarball with the image configuration (USER, ENV, WORKDIR, CMD).
#
# The Debian mirror is the one apt on this machine is configured with (/etc/apt/sources.list and
# /etc/apt/sources.list.d/*); override with CALDERA_DEBIAN_MIRROR / CALDERA_DEBIAN_SECURITY_MIRROR.
# The suite defaults to bookworm (CALDERA_DEBIAN_SUITE).
#
# The image carries no Rust: toolchains are bind-mounted read-only by caldera-sandbox at
# /caldera/toolchain (the active one, on PATH) and /caldera/toolchains/<name>. Layout inside the image:
#   /caldera/src        crate source (read-only mount)      /caldera/target      target dir (writable mount)
#   /caldera/cargo-home CARGO_HOME (read-only mount)         /home/caldera        HOME (tmpfs at run time)
#
# On machines that can pull from a registry, `docker build -t caldera-builder:latest docker/builder`
# builds an equivalent image from docker/builder/Dockerfile.
#
# Needs root (debootstrap, chroot) and a running engine (scripts/ensure-docker.sh).
set -euo pipefail

log() { printf 'build-sandbox-image: %s\n' "$*" >&2; }
die() { log "error: $*"; exit 1; }

FORCE=0
NO_CACHE=0
IMAGE=""
for arg in "$@"; do
    case "$arg" in
        --force) FORCE=1 ;;
        --no-cache) FORCE=1; NO_CACHE=1 ;;
        -h|--help) sed -n '2,31p' "$0"; exit 0 ;;
        -*) die "unknown option $arg" ;;
        *) [ -z "$IMAGE" ] || die "only one IMAGE argument is accepted"; IMAGE="$arg" ;;
    esac
done
IMAGE="${IMAGE:-caldera-builder:latest}"
SUITE="${CALDERA_DEBIAN_SUITE:-bookworm}"
CACHE_DIR="${CALDERA_CACHE_DIR:-/var/cache/caldera}"
UID_GID=1000

# Keep in sync with docker/builder/Dockerfile.
PACKAGES=(
    build-essential pkg-config cmake ca-certificates git python3 file xz-utils procps
    nasm protobuf-compiler clang libclang-dev
    libssl-dev zlib1g-dev libsqlite3-dev libssh2-1-dev libcurl4-openssl-dev
    libfontconfig1-dev libfreetype-dev libpq-dev libzstd-dev liblzma-dev libbz2-dev libxml2-dev
    libdbus-1-dev libudev-dev libasound2-dev libx11-dev libxcb1-dev libxkbcommon-dev
)
# Bump when the recipe below changes in a way the package list does not show.
RECIPE_VERSION=1

[ "$(id -u)" = 0 ] || die "must run as root (debootstrap and chroot need it)"
command -v docker >/dev/null || die "docker CLI not found; run scripts/ensure-docker.sh first"
docker info >/dev/null 2>&1 || die "the Docker engine does not answer; run scripts/ensure-docker.sh first"

recipe_key() {
    printf '%s\n' "$RECIPE_VERSION" "$SUITE" "$UID_GID" "${PACKAGES[@]}" | sha256sum | cut -c1-16
}
KEY="$(recipe_key)"

if docker image inspect "$IMAGE" >/dev/null 2>&1 && [ "$FORCE" = 0 ]; then
    have="$(docker image inspect -f '{{ index .Config.Labels "org.caldera.builder.recipe" }}' "$IMAGE" 2>/dev/null || true)"
    if [ -n "$have" ] && [ "$have" != "<no value>" ] && [ "$have" != "$KEY" ]; then
        log "image $IMAGE exists but was built from another recipe ($have, current $KEY); pass --force to rebuild"
    else
        log "image $IMAGE already exists; nothing to do (pass --force to rebuild)"
    fi
    exit 0
fi

# --- Debian mirror from this machine's apt configuration --------------------------------------------
host_codename="$(. /etc/os-release 2>/dev/null && echo "${VERSION_CODENAME:-}")"

# Prints "URI SUITE" for every `deb` source apt knows about (one-line and deb822 formats).
apt_sources() {
    local f
    for f in /etc/apt/sources.list /etc/apt/sources.list.d/*.list; do
        [ -r "$f" ] || continue
        awk '$1 == "deb" {
                i = 2
                if ($i ~ /^\[/) { while ($i !~ /\]$/) i++; i++ }
                print $i, $(i + 1)
             }' "$f"
    done
    for f in /etc/apt/sources.list.d/*.sources; do
        [ -r "$f" ] || continue
        awk 'function flush() {
                 if (types ~ /(^| )deb( |$)/ && enabled != "no")
                     for (u in uris) for (s in suites) print uris[u], suites[s]
                 types = ""; enabled = ""; delete uris; delete suites
             }
             /^[ \t]*$/ { flush(); next }
             /^#/ { next }
             { key = tolower($1); sub(/:$/, "", key)
               if (key == "types") { $1 = ""; types = $0 }
               else if (key == "enabled") enabled = tolower($2)
               else if (key == "uris") for (i = 2; i <= NF; i++) uris[i] = $i
               else if (key == "suites") for (i = 2; i <= NF; i++) suites[i] = $i }
             END { flush() }' "$f"
    done
}

pick_mirror() { # $1 = wanted suite; prints the first URI serving it
    apt_sources | awk -v want="$1" '$2 == want { print $1; exit }'
}

MIRROR="${CALDERA_DEBIAN_MIRROR:-}"
if [ -z "$MIRROR" ]; then
    MIRROR="$(pick_mirror "$SUITE")"
    if [ -z "$MIRROR" ] && [ -n "$host_codename" ]; then
        MIRROR="$(pick_mirror "$host_codename")"
    fi
fi
[ -n "$MIRROR" ] || die "no Debian mirror for '$SUITE' in /etc/apt/sources.list*; set CALDERA_DEBIAN_MIRROR"
SECURITY_MIRROR="${CALDERA_DEBIAN_SECURITY_MIRROR:-}"
if [ -z "$SECURITY_MIRROR" ]; then
    SECURITY_MIRROR="$(pick_mirror "$SUITE-security")"
    if [ -z "$SECURITY_MIRROR" ] && [ -n "$host_codename" ]; then
        SECURITY_MIRROR="$(pick_mirror "$host_codename-security")"
    fi
fi
log "suite $SUITE, mirror $MIRROR, security mirror ${SECURITY_MIRROR:-(none)}"

# --- rootfs tarball (cached) ---------------------------------------------------------------------
mkdir -p "$CACHE_DIR"
TARBALL="$CACHE_DIR/builder-rootfs-$SUITE-$KEY.tar"

build_rootfs() {
    if ! command -v debootstrap >/dev/null; then
        log "installing debootstrap"
        apt-get update -qq >&2
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq debootstrap >&2
    fi
    local work root
    work="$(mktemp -d "${TMPDIR:-/var/tmp}/caldera-rootfs.XXXXXX")"
    root="$work/rootfs"
    # shellcheck disable=SC2064
    trap "cleanup_rootfs '$work'" EXIT

    log "debootstrap --variant=minbase $SUITE into $root (this takes a few minutes)"
    debootstrap --variant=minbase "$SUITE" "$root" "$MIRROR" >"$work/debootstrap.log" 2>&1 || {
        tail -n 30 "$work/debootstrap.log" >&2
        die "debootstrap failed (full log: $work/debootstrap.log)"
    }

    {
        echo "deb $MIRROR $SUITE main"
        echo "deb $MIRROR $SUITE-updates main"
        [ -z "$SECURITY_MIRROR" ] || echo "deb $SECURITY_MIRROR $SUITE-security main"
    } >"$root/etc/apt/sources.list"
    cp /etc/resolv.conf "$root/etc/resolv.conf"
    printf '#!/bin/sh\nexit 101\n' >"$root/usr/sbin/policy-rc.d"
    chmod 755 "$root/usr/sbin/policy-rc.d"
    mount -t proc proc "$root/proc"
    mount --bind /dev "$root/dev"

    log "installing ${#PACKAGES[@]} packages with apt in the chroot"
    chroot "$root" /usr/bin/env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin DEBIAN_FRONTEND=noninteractive \
        sh -c 'apt-get update -qq && apt-get install -y -qq --no-install-recommends "$@"' apt \
        "${PACKAGES[@]}" >"$work/apt.log" 2>&1 || {
        tail -n 30 "$work/apt.log" >&2
        die "apt-get install in the chroot failed (full log: $work/apt.log)"
    }

    log "creating user caldera ($UID_GID:$UID_GID) and the /caldera layout"
    chroot "$root" groupadd -g "$UID_GID" caldera
    chroot "$root" useradd -u "$UID_GID" -g "$UID_GID" -m -d /home/caldera -s /bin/bash caldera
    mkdir -p "$root/caldera/src" "$root/caldera/target" "$root/caldera/cargo-home" \
        "$root/caldera/toolchain" "$root/caldera/toolchains"
    chown "$UID_GID:$UID_GID" "$root/caldera/target"

    umount "$root/dev" "$root/proc"
    rm -f "$root/usr/sbin/policy-rc.d"
    : >"$root/etc/resolv.conf"
    log "cleaning apt caches and documentation"
    chroot "$root" apt-get clean
    rm -rf "$root"/var/lib/apt/lists/* "$root"/var/cache/apt/*.bin "$root"/var/log/apt/* \
        "$root"/usr/share/doc/* "$root"/usr/share/man/* "$root"/usr/share/info/* "$root"/tmp/* \
        "$root"/var/tmp/*
    find "$root/var/log" -type f -exec truncate -s 0 {} +

    log "packing $TARBALL"
    tar --numeric-owner --xattrs -C "$root" -cf "$TARBALL.partial" .
    mv "$TARBALL.partial" "$TARBALL"
    cleanup_rootfs "$work"
    trap - EXIT
}

cleanup_rootfs() {
    local work="$1"
    for m in dev proc; do
        mountpoint -q "$work/rootfs/$m" 2>/dev/null && umount -l "$work/rootfs/$m"
    done
    rm -rf --one-file-system "$work"
}

start=$(date +%s)
if [ -f "$TARBALL" ] && [ "$NO_CACHE" = 0 ]; then
    log "reusing cached rootfs $TARBALL"
else
    build_rootfs
fi

log "docker import $TARBALL as $IMAGE"
docker import \
    --change 'USER 1000:1000' \
    --change 'WORKDIR /caldera/src' \
    --change 'ENV PATH=/caldera/toolchain/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
    --change 'ENV CARGO_HOME=/caldera/cargo-home' \
    --change 'ENV CARGO_TARGET_DIR=/caldera/target' \
    --change 'ENV HOME=/home/caldera' \
    --change 'ENV LANG=C.UTF-8' \
    --change "LABEL org.caldera.builder.recipe=$KEY" \
    --change "LABEL org.caldera.builder.suite=$SUITE" \
    --change 'CMD ["sleep", "infinity"]' \
    "$TARBALL" "$IMAGE" >/dev/null
size="$(docker image inspect -f '{{ .Size }}' "$IMAGE")"
log "built $IMAGE (recipe $KEY, $((size / 1024 / 1024)) MiB) in $(($(date +%s) - start)) s"
