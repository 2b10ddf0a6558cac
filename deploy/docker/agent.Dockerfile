# The Drover agent in a container (demo and tests; on real boxes use the .deb and systemd).
# It drives the host's Docker engine through a mounted socket: run it with
#   -v /var/run/docker.sock:/var/run/docker.sock --group-add <gid of that socket>
# so it needs no root inside the container.
ARG BASE=drover/base:bookworm
FROM ${BASE}

RUN groupadd --system --gid 10001 drover \
 && useradd --system --uid 10001 --gid drover --home-dir /nonexistent --no-create-home \
      --shell /usr/sbin/nologin drover \
 && install -d -o drover -g drover -m 0700 /var/lib/drover-agent
COPY drover-agent /usr/bin/drover-agent

USER drover:drover
ENV DROVER_AGENT_STATE_DIR=/var/lib/drover-agent DROVER_LOG=info
VOLUME ["/var/lib/drover-agent"]
ENTRYPOINT ["/usr/bin/drover-agent"]
CMD ["run"]
