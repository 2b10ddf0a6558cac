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

cargo fmt --all --check
cargo clippy --workspace --all-targets --locked -- -D warnings
cargo test --workspace --locked

# After the suite, one at a time (each leans on the shared Docker engine or the whole machine):
# 1. the dockerd-restart test: it restarts the daemon, so nothing else may use it meanwhile.
DROVER_TEST_DOCKERD_RESTART=1 cargo test --locked -p drover-tests --test standalone_recovery \
  dockerd_restart
# 1b. the dockerd-stall test: it freezes the daemon (SIGSTOP) for a minute, same reason.
DROVER_TEST_DOCKERD_STOP=1 cargo test --locked -p drover-tests --test standalone_docker_stall
# 2. the README's demo command: controller, two enrolled agents, a job in Docker.
bash deploy/demo.sh
# 3. the same fleet in containers: deploy/compose.yaml end to end, with images of the dev
#    binaries built above (about a minute; plus debootstrap of the base image once).
bash deploy/compose-test.sh --no-build
# 4. ARM64: cross build, smoke run and the agent's unit tests under qemu.
bash tests/cross-arm64.sh
# 5. the Debian packages (amd64 and arm64, from the dev binaries built above) installed,
#    enrolled, upgraded, removed and purged in a throwaway Debian container.
bash deploy/package.sh --profile dev --no-build
bash deploy/test-packages.sh --debs target/packages
