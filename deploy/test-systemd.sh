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
# - a job running in Docker (the fake GitLab in the container, the busybox job image in the
#   host's engine) through `systemctl stop drover-agent`: SIGQUIT (KillSignal), passed by
#   the launcher to B, lets it finish (it succeeds, whole), then the unit stops with result
#   `success` and exit status 0; the same through a package upgrade (postinst try-restart);
#   and no watchdog timeout in the agent's journal.
#
# Usage: bash deploy/test-systemd.sh [DEBS_DIR]
#   DEBS_DIR   the packages (default target/packages, made by deploy/package.sh)
# Needs: root, Docker. Env: IMAGE_PREFIX (default drover), DROVER_BUILD_VERSION (the
# packages' version, as for package.sh), FAKE_GITLAB_BIN (default target/debug/fake-gitlab),
# KEEP_CONTAINER=1 (leave the container to look into).
set -euo pipefail

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$repo"
case "${1:-}" in -h | --help) sed -n '2,25p' "$0" && exit 0 ;; esac
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

fake_gitlab="$(realpath "${FAKE_GITLAB_BIN:-target/debug/fake-gitlab}")"
[ -x "$fake_gitlab" ] || die "no fake GitLab binary at $fake_gitlab (cargo test --workspace --no-run builds it)"
# The jobs' image, in the host's engine (which the agent in the container uses).
# shellcheck source=deploy/demo/steps.sh
. deploy/demo/steps.sh
import_job_image

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
    -v /var/run/docker.sock:/run/docker.sock -v "$fake_gitlab:/usr/local/bin/fake-gitlab:ro" \
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
# site=demo: deploy/demo/runners.toml's selector (the jobs below)
token="$(ctl token create --label site=demo)" || fail "token create"
bash /deploy/install.sh --controller https://127.0.0.1:7443 --token "$token" >/tmp/install.log 2>&1 ||
    { cat /tmp/install.log; fail "install.sh"; }
systemctl is-active --quiet drover-agent || fail "drover-agent.service is not active after install.sh"
[ "$(prop drover-agent Type)" = notify ] || fail "the agent's unit is Type=$(prop drover-agent Type)"
# The agent's own fields (4 spaces in), not its runners' `state`.
agent_field() { ctl agents -o json 2>/dev/null | perl -0777 -ne 'print $1 if /^    "'"$1"'":\s*"([^"]*)"/m'; }
agent_state() { agent_field state; }
agent_version() { agent_field version; }
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

# --- a running job through `systemctl stop` and through a package upgrade ------------------------
gitlab=http://127.0.0.1:8080
systemd-run --quiet --unit fake-gitlab /usr/local/bin/fake-gitlab --listen 127.0.0.1:8080 \
    --url "$gitlab" --registration-token demo-registration-token
wait_until 30 "the fake GitLab" curl -fsS -o /dev/null "$gitlab/fake/jobs"
sed -e "s|http://127.0.0.1:18080|$gitlab|" -e 's|^name = "drover-demo"$|name = "drover-systemd"|' \
    /deploy/demo/runners.toml >/tmp/runners.toml
ctl runner apply -f /tmp/runners.toml >/dev/null || fail "drover runner apply"
ctl rollout status --wait --timeout 3m >/dev/null || fail "the runner rollout did not complete"
job_status() { curl -fsS "$gitlab/fake/jobs/$1" | perl -ne 'print $1 if /"status":\s*"([a-z_]+)"/'; }
job_output() { curl -fsS "$gitlab/fake/jobs/$1" | grep -q "$2"; } # ID TEXT: the trace has TEXT
job_ended() { case "$(job_status "$1")" in success | failed | canceled) return 0 ;; esac; return 1; }
long_job() { # queues a job that sleeps 6 s; sets job to its id once its script runs
    job="$(curl -fsS -X POST -H 'Content-Type: application/json' --data-binary \
        '{"name":"long","image":"drover-demo/busybox:1","script":["echo script-started","sleep 6","echo done-$((40+2))"],"variables":{"GIT_STRATEGY":"none"}}' \
        "$gitlab/fake/jobs" | perl -ne 'print $1 if /"id":\s*(\d+)/')"
    [ -n "$job" ] || fail "the fake GitLab did not take the job"
    wait_until 60 "job $job to start its script (status $(job_status "$job"))" job_output "$job" script-started
}
succeeded_whole() { # ID WHAT: the job succeeded and ran its last line
    wait_until 20 "job $1 to end ($2)" job_ended "$1"
    [ "$(job_status "$1")" = success ] || { curl -fsS "$gitlab/fake/jobs/$1"; fail "$2: job $1 ended $(job_status "$1")"; }
    job_output "$1" done-42 || { curl -fsS "$gitlab/fake/jobs/$1"; fail "$2: job $1 did not run to its end"; }
}

[ "$(prop drover-agent KillSignal)" = 3 ] || fail "KillSignal is $(prop drover-agent KillSignal), not SIGQUIT (3)"
stop_agent() { # WHAT: systemctl stop, clean (result success, exit 0); sets took (seconds)
    local start=$SECONDS
    systemctl stop drover-agent || fail "$1: systemctl stop drover-agent"
    took=$((SECONDS - start))
    [ "$(prop drover-agent Result)" = success ] || fail "$1: result $(prop drover-agent Result)"
    [ "$(prop drover-agent ExecMainStatus)" = 0 ] || fail "$1: exit status $(prop drover-agent ExecMainStatus)"
}
long_job
stop_agent "the stop with job $job running"
[ "$took" -ge 3 ] || fail "systemctl stop returned in ${took}s: it did not wait for job $job"
succeeded_whole "$job" "systemctl stop"
ok "systemctl stop drover-agent waited ${took}s for the running job (SIGQUIT through the launcher to B), which succeeded; result success, exit 0"

systemctl start drover-agent || fail "systemctl start drover-agent"
wait_until 60 "the agent to report healthy again" healthy
long_job
start=$SECONDS
dpkg -i "/debs/drover-agent_${VERSION}_amd64.deb" >/tmp/dpkg.log 2>&1 || { cat /tmp/dpkg.log; fail "dpkg -i with job $job running"; }
took=$((SECONDS - start))
[ "$took" -ge 3 ] || fail "the package upgrade took ${took}s: its restart did not wait for job $job"
succeeded_whole "$job" "the package upgrade"
st="$(prop drover-agent ActiveState)/$(prop drover-agent SubState)"
[ "$st" = active/running ] || fail "after the package upgrade the unit is $st"
wait_until 60 "the agent to report healthy after the package upgrade" healthy
ok "a package upgrade (postinst try-restart) waited ${took}s for the running job, which succeeded; the agent is back"

# --- graceful stop with nothing running ---------------------------------------------------------
stop_agent "the stop with nothing running"
[ "$took" -lt 30 ] || fail "the agent took ${took}s to stop with no job running"
pgrep -u drover drover-agent >/dev/null && fail "an agent process outlived its unit"
ok "systemctl stop drover-agent: SIGQUIT through the launcher to B, result success, exit 0, ${took}s"

journalctl -u drover-agent --no-pager | grep -i 'watchdog timeout' && fail "the watchdog fired at some point"
systemctl stop drover || fail "systemctl stop drover"
[ "$(prop drover Result)" = success ] || fail "the controller's stop: result $(prop drover Result)"
ok "systemctl stop drover: result success"
IN_CONTAINER
say "the units work under a real systemd"
