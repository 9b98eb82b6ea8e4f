# caldera (master and worker roles: one binary) on the offline sandbox image, for `cargo xtask fleet`.
# Built by scripts/build-fleet-images.sh from a staging context holding a host-built `caldera`
# binary; FROM names a local image, so nothing is pulled. caldera-builder:latest (Debian 12,
# scripts/build-sandbox-image.sh) has what the binary and the worker's preparation need: glibc,
# ca-certificates, git, gcc + libc6-dev. docker/Dockerfile is the image to deploy; this one exists for
# machines without an image registry.
# hadolint global ignore=DL3002,DL3066
# DL3002 (last USER root) on purpose, root: the worker chowns target dirs for the sandbox user and talks to the engine's socket (as docker/Dockerfile's worker); DL3066: the users are the base image's own.
ARG BASE_IMAGE=caldera-builder:latest
FROM ${BASE_IMAGE}
USER root
WORKDIR /
ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
    CALDERA_LOG_FORMAT=json \
    CALDERA_LISTEN=0.0.0.0:8080 \
    CALDERA_GRPC_LISTEN=0.0.0.0:9090
COPY caldera /usr/local/bin/caldera
RUN /usr/local/bin/caldera --version
ENTRYPOINT ["/usr/local/bin/caldera"]
CMD ["--help"]
