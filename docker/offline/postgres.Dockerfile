# PostgreSQL 15 from Debian's packages on the offline sandbox image, for `cargo xtask fleet`.
# apt reaches Debian's mirrors; no image registry is involved. The entrypoint creates the cluster on
# first start (user and database `caldera`, password from POSTGRES_PASSWORD, scram-sha-256 over
# the network) and then runs the server in the foreground as `postgres`.
# hadolint global ignore=DL3066
# DL3066: the users are the base image's own.
ARG BASE_IMAGE=caldera-builder:latest
FROM ${BASE_IMAGE}
USER root
WORKDIR /
ENV PATH=/usr/lib/postgresql/15/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
    PGDATA=/var/lib/postgresql/data
# hadolint ignore=DL3008
RUN apt-get update \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends postgresql-15 \
 && apt-get clean \
 && rm -rf /var/lib/apt/lists/* \
 && install -d -o postgres -g postgres -m 0700 /var/lib/postgresql/data \
 && install -d -o postgres -g postgres -m 0775 /var/run/postgresql
COPY postgres-entrypoint.sh /usr/local/bin/postgres-entrypoint.sh
USER postgres
ENTRYPOINT ["/usr/local/bin/postgres-entrypoint.sh"]
