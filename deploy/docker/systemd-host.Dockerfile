# A Debian box with systemd as PID 1, for deploy/test-systemd.sh: the packages' units run
# under a real systemd there (their sandboxing, Type=notify, the watchdog, the graceful
# stop). From the local base image, with systemd from the base's apt (no registry needed).
ARG BASE=drover/base:bookworm
FROM ${BASE}

RUN apt-get update \
 && apt-get install -y --no-install-recommends systemd systemd-sysv procps curl \
 && rm -rf /var/lib/apt/lists/* \
 && systemctl mask getty@tty1.service console-getty.service systemd-logind.service \
      systemd-remount-fs.service systemd-firstboot.service
# systemd's own way to be asked to stop
STOPSIGNAL SIGRTMIN+3
CMD ["/lib/systemd/systemd"]
