#!/usr/bin/env bash
# Build the images of `cargo xtask fleet` (deploy/fleet/compose.yaml) without an image registry.
#
#   scripts/build-fleet-images.sh [--force]
#
# Images (each FROM the offline sandbox image, which scripts/build-sandbox-image.sh makes with
# debootstrap + `docker import`; `docker build` pulls nothing when FROM names a local image):
#   caldera-fleet:local           the `caldera` binary (master and worker roles): docker/offline/caldera.Dockerfile
#   caldera-fleet-postgres:local  PostgreSQL 15 from Debian's packages:            docker/offline/postgres.Dockerfile
#   caldera-fleet-s3:local        s3s-fs, an S3 server built with cargo:           docker/offline/s3.Dockerfile
#
# The caldera binary is $CALDERA_BIN, else this checkout's debug build (`cargo build -p caldera`,
# a no-op when up to date; the host must be Debian 12 or glibc-compatible with it). s3s-fs is
# `cargo install s3s-fs --version $S3S_FS_VERSION --features binary --locked` into
# $CALDERA_FLEET_TOOLS/s3s-fs (default /var/tmp/caldera-fleet-tools), once.
# caldera-fleet:local is rebuilt when its binary changed (a label holds the binary's SHA-256);
# the others only when missing (or with --force).
set -euo pipefail

log() { printf 'build-fleet-images: %s\n' "$*" >&2; }
die() { log "error: $*"; exit 1; }

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
tools="${CALDERA_FLEET_TOOLS:-/var/tmp/caldera-fleet-tools}"
base="${CALDERA_SANDBOX_IMAGE:-caldera-builder:latest}"
S3S_FS_VERSION=0.14.1
force=0
for arg in "$@"; do
    case "$arg" in
        --force) force=1 ;;
        -h|--help) sed -n '2,19p' "$0"; exit 0 ;;
        *) die "unknown argument $arg" ;;
    esac
done

docker image inspect "$base" >/dev/null 2>&1 ||
    die "the base image $base is missing: run scripts/build-sandbox-image.sh first"

have_image() { [ "$force" = 0 ] && docker image inspect "$1" >/dev/null 2>&1; }

stage="$(mktemp -d "${TMPDIR:-/var/tmp}/caldera-fleet-build.XXXXXX")"
trap 'rm -rf "$stage"' EXIT

build() { # IMAGE DOCKERFILE [docker build args…]
    local image="$1" file="$2"
    shift 2
    log "building $image from $file"
    docker build -q --build-arg "BASE_IMAGE=$base" -f "$root/docker/offline/$file" -t "$image" "$@" "$stage" >/dev/null
}

# --- caldera ---------------------------------------------------------------------------------------
bin="${CALDERA_BIN:-}"
if [ -z "$bin" ]; then
    (cd "$root" && cargo build -q -p caldera --bin caldera)
    bin="${CARGO_TARGET_DIR:-$root/target}/debug/caldera"
fi
[ -x "$bin" ] || die "no caldera binary at $bin"
sum="$(sha256sum "$bin" | cut -c1-16)"
have="$(docker image inspect -f '{{ index .Config.Labels "org.caldera.fleet.binary" }}' caldera-fleet:local 2>/dev/null || true)"
if [ "$force" = 0 ] && [ "$have" = "$sum" ]; then
    log "caldera-fleet:local is up to date (binary $sum)"
else
    cp "$bin" "$stage/caldera"
    build caldera-fleet:local caldera.Dockerfile --label "org.caldera.fleet.binary=$sum"
    rm -f "$stage/caldera"
fi

# --- postgres --------------------------------------------------------------------------------------
if have_image caldera-fleet-postgres:local; then
    log "caldera-fleet-postgres:local exists"
else
    cp "$root/docker/offline/postgres-entrypoint.sh" "$stage/"
    build caldera-fleet-postgres:local postgres.Dockerfile
fi

# --- s3 --------------------------------------------------------------------------------------------
if have_image caldera-fleet-s3:local; then
    log "caldera-fleet-s3:local exists"
else
    s3s="$tools/s3s-fs/bin/s3s-fs"
    if [ ! -x "$s3s" ] || ! "$s3s" --version 2>/dev/null | grep -q "$S3S_FS_VERSION"; then
        log "cargo install s3s-fs $S3S_FS_VERSION into $tools/s3s-fs (once)"
        cargo install -q s3s-fs --version "=$S3S_FS_VERSION" --features binary --locked --root "$tools/s3s-fs"
    fi
    cp "$s3s" "$root/docker/offline/s3-entrypoint.sh" "$stage/"
    build caldera-fleet-s3:local s3.Dockerfile
fi
log "images ready"
