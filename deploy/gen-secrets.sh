#!/usr/bin/env bash
# Creates the secret env files that deploy/compose.yaml reads, with fresh random values:
#
#   deploy/gen-secrets.sh [DIR]      (DIR defaults to deploy/secrets)
#
# postgres.env, database.env, minio.env, storage-master.env, storage-worker.env. Idempotent: a file
# that exists is kept as it is (the database password is then read back from postgres.env, so
# database.env always matches it). Worker tokens (worker-N.env) need the database, so they are made
# afterwards with `caldera token create` (deploy/README.md). Values are hex, so they need no quoting
# in env files or URLs. Files are created mode 0600.
set -euo pipefail

dir="${1:-$(cd "$(dirname "$0")" && pwd)/secrets}"
umask 077
mkdir -p "$dir"

rand() { od -An -N"$1" -tx1 /dev/urandom | tr -d ' \n'; }

# write FILE LINE... : creates FILE with the lines, unless it exists
write() {
    local file="$dir/$1"
    shift
    if [ -e "$file" ]; then
        echo "gen-secrets: kept $file"
    else
        printf '%s\n' "$@" >"$file"
        echo "gen-secrets: wrote $file"
    fi
}

write postgres.env "POSTGRES_PASSWORD=$(rand 24)"
pg_password="$(sed -n 's/^POSTGRES_PASSWORD=//p' "$dir/postgres.env")"
[ -n "$pg_password" ] || { echo "gen-secrets: $dir/postgres.env has no POSTGRES_PASSWORD" >&2; exit 1; }
write database.env "CALDERA_DATABASE_URL=postgres://caldera:${pg_password}@postgres:5432/caldera"
write minio.env "MINIO_ROOT_USER=caldera-root" "MINIO_ROOT_PASSWORD=$(rand 24)"
write storage-master.env \
    "CALDERA_STORAGE_ACCESS_KEY_ID=caldera-master" \
    "CALDERA_STORAGE_SECRET_ACCESS_KEY=$(rand 24)"
write storage-worker.env \
    "CALDERA_STORAGE_ACCESS_KEY_ID=caldera-worker" \
    "CALDERA_STORAGE_SECRET_ACCESS_KEY=$(rand 24)"
