#!/usr/bin/env bash
# Tests the packages' systemd units under a real systemd: a throwaway Debian container with
# systemd as PID 1 (deploy/docker/systemd-host.Dockerfile, from the local base image), the
# host's Docker engine through its socket. What test-packages.sh checks with a systemctl
# stub, here for real:
# - `drover.service` starts the controller as user drover inside its sandbox, and
#   `systemctl stop` ends it cleanly;
# - install.sh enrolls the agent and `systemctl enable --now` starts `drover-agent.service`:
#   Type=notify (the start waits for READY=1), the sandbox (ProtectSystem=strict, the
#   system call filter, ...), the docker group; the agent connects and its watchdog pings
#   arrive (a 6 s WatchdogSec drop-in, watched for more than two periods, no restart);
# - `drover agent upgrade` to a restamped 9.9.9: the agent re-executes itself and launches
#   B as its child in the same unit (same main pid, no restart), and B's READY=1 and
#   watchdog pings count (NotifyAccess=all);
# - `systemctl stop drover-agent` sends SIGQUIT (KillSignal), the launcher passes it to B,
#   and the unit stops with result `success` and exit status 0.
#
# Usage: bash deploy/test-systemd.sh [DEBS_DIR]
#   DEBS_DIR   the packages (default target/packages, made by deploy/package.sh)
# Needs: root, Docker. Env: IMAGE_PREFIX (default drover), DROVER_BUILD_VERSION (the
# packages' version, as for package.sh), KEEP_CONTAINER=1 (leave the container to look into).
set -euo pipefail

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$repo"
case "${1:-}" in -h | --help) sed -n '2,21p' "$0" && exit 0 ;; esac
debs="$(cd "${1:-target/packages}" 2>/dev/null && pwd)" ||
    { echo "test-systemd.sh: no packages directory '${1:-target/packages}'" >&2 && exit 2; }
say() { printf 'test-systemd.sh: %s\n' "$*" >&2; }
die() { say "FAILED: $*" && exit 1; }
# shellcheck source=deploy/workspace-version.sh
. deploy/workspace-version.sh
version="${DROVER_BUILD_VERSION:-$(workspace_version)}"
for f in "drover_${version}_amd64.deb" "drover-agent_${version}_amd64.deb"; do
    [ -f "$debs/$f" ] || die "missing $debs/$f (make the packages: bash deploy/package.sh)"
done

prefix="${IMAGE_PREFIX:-drover}"
base="$prefix/base:bookworm"
image="$prefix/systemd-host:bookworm"
bash deploy/docker/build-images.sh --base-only # reuses an up-to-date base
say "building $image (systemd from the base's apt; cached after the first time)"
docker build -q --build-arg "BASE=$base" -t "$image" - <deploy/docker/systemd-host.Dockerfile >/dev/null ||
    die "docker build of $image failed"

name="drover-systemd-$$"
cleanup() {
    if [ -n "${KEEP_CONTAINER:-}" ]; then
        say "kept container $name"
    else
        docker rm -f "$name" >/dev/null 2>&1 || true
    fi
}
trap cleanup EXIT
# systemd as PID 1 needs the cgroup tree, tmpfs /run, CAP_SYS_ADMIN and no seccomp filter of
# Docker's (it mounts, and sets up the units' sandboxes and their own filters); not
# --privileged, which a Docker engine inside a container may refuse. The Docker socket goes
# where the agent's unit expects it.
docker run -d --name "$name" --cap-add SYS_ADMIN --security-opt seccomp=unconfined --cgroupns=host \
    -v /sys/fs/cgroup:/sys/fs/cgroup:rw --tmpfs /run --tmpfs /run/lock --tmpfs /tmp \
    -v "$debs:/debs:ro" -v "$repo/deploy:/deploy:ro" \
    -v /var/run/docker.sock:/run/docker.sock \
    "$image" >/dev/null || die "could not start the systemd container"

docker exec -i -e VERSION="$version" -e DOCKER_GID="$(stat -c %g /var/run/docker.sock)" "$name" \
    bash -s <<'IN_CONTAINER'
set -euo pipefail
fail() {
    echo "in container: FAILED: $*" >&2
    for u in drover drover-agent; do
        echo "--- journalctl -u $u" >&2
        journalctl -u "$u" --no-pager -n 60 >&2 || true
    done
    exit 1
}
ok() { echo "in container: ok: $*" >&2; }
trap 'fail "line $LINENO: $BASH_COMMAND"' ERR
. /deploy/testing/restamp.sh
prop() { systemctl show -p "$2" --value "$1"; } # UNIT PROPERTY
wait_until() { # SECONDS WHAT COMMAND...
    local secs="$1" what="$2" i
    shift 2
    for i in $(seq 1 $((secs * 5))); do "$@" && return 0; sleep 0.2; done
    fail "timed out after ${secs}s waiting for $what"
}

state=""
for _ in $(seq 1 150); do
    state="$(systemctl is-system-running 2>/dev/null || true)"
    case "$state" in running | degraded) break ;; esac
    sleep 0.2
done
case "$state" in running | degraded) ;; *) fail "systemd did not finish booting: '$state'" ;; esac
ok "systemd is PID 1 ($(systemctl --version | head -n 1)), system $state"

# The engine's socket group, so the package adds drover to it (as on a box with docker.io).
groupadd -g "$DOCKER_GID" docker
dpkg -i "/debs/drover_${VERSION}_amd64.deb" "/debs/drover-agent_${VERSION}_amd64.deb" >/tmp/dpkg.log 2>&1 ||
    { cat /tmp/dpkg.log; fail "dpkg -i"; }
systemctl is-enabled --quiet drover-agent && fail "the package enabled the agent"
systemctl is-active --quiet drover-agent && fail "the package started the agent"

# --- the controller's unit --------------------------------------------------------------------
printf 'DROVER_LISTEN=127.0.0.1:7443\n' >>/etc/default/drover
systemctl start drover || fail "systemctl start drover"
wait_until 30 "the controller's address file" test -s /var/lib/drover/grpc.addr
ctl() { runuser -u drover -- drover --data-dir /var/lib/drover "$@"; }
[ "$(prop drover User)" = drover ] || fail "drover.service runs as '$(prop drover User)'"
ok "drover.service is active as user drover ($(stat -c '%a %U' /var/lib/drover) data dir)"

# --- the agent's unit: enrolled and started by install.sh ---------------------------------------
mkdir -p /etc/systemd/system/drover-agent.service.d
printf '[Service]\nWatchdogSec=6s\n' >/etc/systemd/system/drover-agent.service.d/watchdog.conf
token="$(ctl token create --label site=systemd)" || fail "token create"
bash /deploy/install.sh --controller https://127.0.0.1:7443 --token "$token" >/tmp/install.log 2>&1 ||
    { cat /tmp/install.log; fail "install.sh"; }
systemctl is-active --quiet drover-agent || fail "drover-agent.service is not active after install.sh"
[ "$(prop drover-agent Type)" = notify ] || fail "the agent's unit is Type=$(prop drover-agent Type)"
agent_state() { ctl agents -o json 2>/dev/null | perl -0777 -ne 'print $1 if /"state":\s*"([^"]*)"/'; }
agent_version() { ctl agents -o json 2>/dev/null | perl -0777 -ne 'print $1 if /"version":\s*"([^"]*)"/'; }
healthy() { [ "$(agent_state)" = healthy ]; }
wait_until 60 "the agent to report healthy (state '$(agent_state)')" healthy
main_pid="$(prop drover-agent MainPID)"
[ "$(ps -o user= -p "$main_pid")" = drover ] || fail "the agent runs as $(ps -o user= -p "$main_pid")"
ok "install.sh: enrolled; drover-agent.service active (Type=notify), pid $main_pid as drover, healthy"

# Watchdog: pings move WatchdogTimestamp; more than two 6 s periods pass without a restart.
watchdog_checked() { # WHAT: over 14 s, the pings arrive and nothing restarts the unit
    local first
    first="$(prop drover-agent WatchdogTimestampMonotonic)"
    sleep 14
    local st
    st="$(prop drover-agent ActiveState)/$(prop drover-agent SubState)"
    [ "$st" = active/running ] || fail "$1: the unit is $st"
    [ "$(prop drover-agent NRestarts)" = 0 ] || fail "$1: the unit restarted $(prop drover-agent NRestarts) times"
    [ "$(prop drover-agent WatchdogTimestampMonotonic)" != "$first" ] || fail "$1: no watchdog ping in 14 s"
    [ "$(prop drover-agent MainPID)" = "$main_pid" ] || fail "$1: main pid changed to $(prop drover-agent MainPID)"
}
watchdog_checked "after the start"
ok "watchdog pings arrive (WatchdogSec=6s), no restart in 14 s"

# --- an upgrade under systemd ---------------------------------------------------------------------
cp /usr/bin/drover-agent /tmp/drover-agent-b && restamp /tmp/drover-agent-b "$VERSION" 9.9.9
chmod 0644 /tmp/drover-agent-b
ctl agent upgrade --binary /tmp/drover-agent-b --health-timeout 60s >/tmp/upgrade.log 2>&1 ||
    { cat /tmp/upgrade.log; fail "drover agent upgrade"; }
on_b() { [ "$(agent_version)" = 9.9.9 ] && healthy; }
wait_until 90 "the agent to report 9.9.9 healthy (now '$(agent_version)' $(agent_state))" on_b
ctl agent upgrade status >/tmp/upgrade-status.txt 2>&1 || true
child="$(ps --ppid "$main_pid" -o pid= | head -n 1 | tr -d ' ')"
[ -n "$child" ] || { ps -ef; fail "the launcher (pid $main_pid) has no child"; }
exe="$(tr '\0' '\n' <"/proc/$child/cmdline" | head -n 1)"
[[ "$exe" == /var/lib/drover-agent/upgrade/* ]] || { ps -ef; fail "the launcher's child runs $exe, not B from the state dir"; }
watchdog_checked "on B"
ok "upgraded to 9.9.9 in the same unit: main pid $main_pid kept, no restart, B's watchdog pings count"

# --- graceful stop ------------------------------------------------------------------------------
[ "$(prop drover-agent KillSignal)" = 3 ] || fail "KillSignal is $(prop drover-agent KillSignal), not SIGQUIT (3)"
start=$SECONDS
systemctl stop drover-agent || fail "systemctl stop drover-agent"
took=$((SECONDS - start))
[ "$(prop drover-agent Result)" = success ] || fail "the agent's stop: result $(prop drover-agent Result)"
[ "$(prop drover-agent ExecMainStatus)" = 0 ] || fail "the agent's stop: exit status $(prop drover-agent ExecMainStatus)"
[ "$took" -lt 30 ] || fail "the agent took ${took}s to stop with no job running"
pgrep -u drover drover-agent >/dev/null && fail "an agent process outlived its unit"
ok "systemctl stop drover-agent: SIGQUIT through the launcher to B, result success, exit 0, ${took}s"

systemctl stop drover || fail "systemctl stop drover"
[ "$(prop drover Result)" = success ] || fail "the controller's stop: result $(prop drover Result)"
ok "systemctl stop drover: result success"
IN_CONTAINER
say "the units work under a real systemd"
