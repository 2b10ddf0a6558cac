# The Drover controller. Built by deploy/docker/build-images.sh from a local Debian base
# image (no registry needed); the build context holds only this file and `drover`.
ARG BASE=drover/base:bookworm
FROM ${BASE}

# Fixed ids, so a data volume keeps its owner across image rebuilds.
RUN groupadd --system --gid 10001 drover \
 && useradd --system --uid 10001 --gid drover --home-dir /nonexistent --no-create-home \
      --shell /usr/sbin/nologin drover \
 && install -d -o drover -g drover -m 0750 /var/lib/drover
COPY drover /usr/bin/drover

USER drover:drover
ENV DROVER_DATA_DIR=/var/lib/drover DROVER_LOG=info
VOLUME ["/var/lib/drover"]
# 7443: gRPC with mutual TLS, for agents. 7080: status page, /metrics, /healthz.
# The HTTP listener binds all addresses, so `drover serve` requires DROVER_HTTP_TOKEN (or
# --http-basic-auth-file) at run time; /healthz stays open for the health check.
EXPOSE 7443 7080
# bash's /dev/tcp: the image carries no curl.
HEALTHCHECK --interval=10s --timeout=3s --start-period=10s --retries=3 \
  CMD ["/bin/bash", "-c", "exec 3<>/dev/tcp/127.0.0.1/7080 && printf 'GET /healthz HTTP/1.0\\r\\n\\r\\n' >&3 && head -n 1 <&3 | grep -q ' 200 '"]
ENTRYPOINT ["/usr/bin/drover"]
CMD ["serve", "--data-dir", "/var/lib/drover", "--listen", "0.0.0.0:7443", "--http-listen", "0.0.0.0:7080"]
