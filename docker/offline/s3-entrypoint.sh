#!/bin/sh
# s3s-fs over /data with one bucket (S3_BUCKET) and one key pair (S3_ACCESS_KEY, S3_SECRET_KEY).
set -eu
: "${S3_ACCESS_KEY:?set S3_ACCESS_KEY}" "${S3_SECRET_KEY:?set S3_SECRET_KEY}"
mkdir -p "/data/${S3_BUCKET:-caldera}"
exec /usr/local/bin/s3s-fs --host 0.0.0.0 --port 9000 \
    --access-key "$S3_ACCESS_KEY" --secret-key "$S3_SECRET_KEY" /data
