# PostgreSQL 15 for deploy/compose-replicas.yaml, from the same local Debian base (no
# registry needed). Built by `deploy/docker/build-images.sh --postgres`. A demo database
# server, not a tuned one: one cluster in /var/lib/postgresql/data, password auth
# (scram-sha-256) from any address, the password and database from POSTGRES_PASSWORD and
# POSTGRES_DB at first start.
ARG BASE=drover/base:bookworm
FROM ${BASE}

USER root
RUN apt-get update \
 && apt-get install -y --no-install-recommends postgresql-15 \
 && rm -rf /var/lib/apt/lists/* \
 && install -d -o postgres -g postgres -m 0700 /var/lib/postgresql/data
USER postgres
ENV PGDATA=/var/lib/postgresql/data PATH=/usr/lib/postgresql/15/bin:/usr/bin:/bin
VOLUME ["/var/lib/postgresql/data"]
EXPOSE 5432
HEALTHCHECK --interval=5s --timeout=3s --start-period=20s --retries=5 \
  CMD ["pg_isready", "-h", "127.0.0.1", "-U", "postgres"]
ENTRYPOINT ["/bin/bash", "-c", "set -euo pipefail\n\
: \"${POSTGRES_PASSWORD:?set POSTGRES_PASSWORD}\"\n\
if [ ! -s \"$PGDATA/PG_VERSION\" ]; then\n\
  pw=\"$(mktemp)\"; printf '%s\\n' \"$POSTGRES_PASSWORD\" >\"$pw\"\n\
  initdb -D \"$PGDATA\" -U postgres --pwfile=\"$pw\" --auth-local=peer --auth-host=scram-sha-256 >/dev/null\n\
  rm -f \"$pw\"\n\
  echo 'host all all 0.0.0.0/0 scram-sha-256' >>\"$PGDATA/pg_hba.conf\"\n\
  pg_ctl -D \"$PGDATA\" -o '-c listen_addresses=' -w start >/dev/null\n\
  createdb -U postgres \"${POSTGRES_DB:-drover}\"\n\
  pg_ctl -D \"$PGDATA\" -m fast -w stop >/dev/null\n\
fi\n\
exec postgres -D \"$PGDATA\" -c listen_addresses='*' -k /tmp"]
