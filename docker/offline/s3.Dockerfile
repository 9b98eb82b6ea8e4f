# An S3-compatible server (s3s-fs, the server caldera's storage tests run in process) for
# `cargo xtask fleet`: its binary is built on the host with `cargo install` (a pinned version, see
# scripts/build-fleet-images.sh) and copied onto the offline sandbox image. Objects live under
# /data/BUCKET (a directory per bucket); the entrypoint creates the bucket's directory.
# hadolint global ignore=DL3002,DL3066
# DL3002 (last USER root) on purpose, root: s3s-fs writes the data volume, a throwaway test server; DL3066: the users are the base image's own.
ARG BASE_IMAGE=caldera-builder:latest
FROM ${BASE_IMAGE}
USER root
WORKDIR /
COPY s3s-fs /usr/local/bin/s3s-fs
COPY s3-entrypoint.sh /usr/local/bin/s3-entrypoint.sh
ENTRYPOINT ["/usr/local/bin/s3-entrypoint.sh"]
