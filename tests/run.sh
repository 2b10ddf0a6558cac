#!/usr/bin/env bash
# The test command (README "Run the tests"; .ci/run calls it too).
# Installs what a fresh Debian machine lacks, starts a Docker daemon only if none answers,
# then runs formatting and lint checks and the whole test suite against the real engine.
set -euo pipefail
cd "$(dirname "$0")/.."

need_pkgs=()
command -v busybox >/dev/null 2>&1 || [ -x /bin/busybox ] || need_pkgs+=(busybox-static)
command -v git >/dev/null 2>&1 || need_pkgs+=(git)
command -v ip >/dev/null 2>&1 || need_pkgs+=(iproute2)
command -v docker >/dev/null 2>&1 || need_pkgs+=(docker.io)
# the status page test (tests/tests/fleet_health.rs) loads the page in headless Chromium
command -v chromium >/dev/null 2>&1 || need_pkgs+=(chromium)
# the store suite and the controller's PostgreSQL tests start a throwaway server (initdb)
ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || need_pkgs+=(postgresql)
if [ ${#need_pkgs[@]} -gt 0 ]; then
  if [ "$(id -u)" -ne 0 ]; then
    echo "tests/run.sh: missing ${need_pkgs[*]}; run as root or install them" >&2
    exit 1
  fi
  echo "installing ${need_pkgs[*]}" >&2
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need_pkgs[@]}" >/dev/null
fi

# the distributed cache tests (standalone_s3_cache, fleet_s3_cache) start a real
# S3-compatible server: moto's server mode from PyPI (about 20 s to install; skipped when present)
if ! command -v moto_server >/dev/null 2>&1 && ! python3 -c 'import moto.server' 2>/dev/null; then
  if ! command -v pip3 >/dev/null 2>&1; then
    [ "$(id -u)" -eq 0 ] || { echo "tests/run.sh: missing pip3 for moto; run as root or install python3-pip" >&2; exit 1; }
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3-pip >/dev/null
  fi
  echo "installing moto[server]" >&2
  pip3 install --quiet 'moto[server]' 2>/dev/null \
    || pip3 install --quiet --break-system-packages 'moto[server]'
fi

if ! docker info >/dev/null 2>&1; then
  echo "no Docker daemon answers; starting dockerd" >&2
  (dockerd >/tmp/drover-dockerd.log 2>&1 &)
  for _ in $(seq 1 60); do docker info >/dev/null 2>&1 && break; sleep 1; done
  docker info >/dev/null 2>&1 || { echo "dockerd did not start; see /tmp/drover-dockerd.log" >&2; exit 1; }
fi

# A compiler cache, when the machine has one, makes repeated runs cheap; nothing needs it.
if [ -z "${RUSTC_WRAPPER:-}" ] && command -v sccache >/dev/null 2>&1; then
  export RUSTC_WRAPPER=sccache
fi

# CI builds once from a clean clone: incremental compilation would only add a second copy of
# every workspace crate's objects to the target dir (gigabytes, on a disk of unknown size).
if [ "${CI:-}" = true ]; then
  export CARGO_INCREMENTAL=0
fi
# Disk use at each stage, in the log: a full disk fails builds with errors far from the cause.
disk() { echo "tests/run.sh: disk after $1: $(df -h --output=avail . | tail -1 | tr -d ' ') free, target $(du -sh target 2>/dev/null | cut -f1)" >&2; }
disk "set-up"

cargo fmt --all --check
cargo clippy --workspace --all-targets --locked -- -D warnings
cargo test --workspace --locked --no-fail-fast
disk "the test suite"

# After the suite, one at a time (each leans on the shared Docker engine or the whole machine):
# 1. the dockerd-restart test: it restarts the daemon, so nothing else may use it meanwhile.
# (`--workspace`, as above: the same features, so nothing is rebuilt.)
DROVER_TEST_DOCKERD_RESTART=1 cargo test --locked --workspace --test standalone_recovery \
  dockerd_restart
# 1b. the dockerd-stall test: it freezes the daemon (SIGSTOP) for a minute, same reason.
DROVER_TEST_DOCKERD_STOP=1 cargo test --locked --workspace --test standalone_docker_stall
# 2. the README's demo command: controller, two enrolled agents, a job in Docker (with the
#    binaries the test build made).
DEMO_NO_BUILD=1 bash deploy/demo.sh
# 3. the same fleet in containers: deploy/compose.yaml end to end, with images of the dev
#    binaries built above (about a minute; plus debootstrap of the base image once).
bash deploy/compose-test.sh --no-build
# 4. ARM64: cross build, smoke run and the agent's unit tests under qemu.
bash tests/cross-arm64.sh
disk "the ARM64 build"
# 5. the Debian packages (amd64 and arm64, from the dev binaries built above) installed,
#    enrolled, upgraded, removed and purged in a throwaway Debian container.
bash deploy/package.sh --profile dev --no-build
bash deploy/test-packages.sh --debs target/packages
# 6. the units under a real systemd (PID 1 in a container): sandbox, notify, watchdog, an
#    upgrade in the same unit, the graceful stop.
bash deploy/test-systemd.sh target/packages
disk "the packages"
