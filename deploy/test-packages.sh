#!/usr/bin/env bash
# Tests the Debian packages and install.sh in a throwaway Debian container (the local
# debootstrap base image; nothing is pulled):
# - drover-agent amd64: files, modes, conffile, `drover` user, state dir 0700, Docker group,
#   unit, `--version`/`--help`, man pages and completions (bash completion loads); the agent is never started by the package; conffile edits
#   survive a reinstall; remove keeps conffile and state; purge deletes both.
# - drover amd64: the same for the controller (data dir 0750).
# - install.sh: dry run; a failed enroll leaves the state dir empty and starts nothing;
#   an enrolled box gets the service enabled and started; a second run changes nothing;
#   then a real enrollment against `drover serve` from the controller package in the same
#   container, and the installed agent connecting to it; then `drover agent upgrade` of
#   that agent to a restamped copy (9.9.9) beside the package: reinstalling the same
#   package keeps it, a newer package (10.0.0, repacked) installed after it wins.
#   systemctl is a stub that logs its calls (no systemd in the container).
# - the arm64 agent package: architecture, ELF machine, same file list as amd64.
#
# Usage: bash deploy/test-packages.sh [--debs DIR]
#   --debs DIR   test the packages in DIR instead of running deploy/package.sh
# Env: IMAGE_PREFIX (base image ${IMAGE_PREFIX}/base:bookworm, default drover);
#      DROVER_BUILD_VERSION (the packages' version, as for package.sh).
set -euo pipefail

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$repo"
debs=""
while [ $# -gt 0 ]; do
    case "$1" in
    --debs) debs="$(cd "${2:?--debs needs a directory}" && pwd)" && shift 2 ;;
    -h | --help) sed -n '2,16p' "$0" && exit 0 ;;
    *) echo "test-packages.sh: unknown argument '$1'" >&2 && exit 2 ;;
    esac
done
say() { printf 'test-packages.sh: %s\n' "$*" >&2; }
die() { say "FAILED: $*" && exit 1; }

docker info >/dev/null 2>&1 || die "Docker is not reachable; this test needs it"
# The packages' version: DROVER_BUILD_VERSION when set (as package.sh), else Cargo.toml's.
# shellcheck source=deploy/workspace-version.sh
. deploy/workspace-version.sh
version="${DROVER_BUILD_VERSION:-$(workspace_version)}"
if [ -z "$debs" ]; then
    bash deploy/package.sh
    debs="$repo/target/packages"
fi
for f in "drover_${version}_amd64.deb" "drover-agent_${version}_amd64.deb" "drover-agent_${version}_arm64.deb"; do
    [ -f "$debs/$f" ] || die "missing $debs/$f"
done

# --- arm64 package: inspected on the host -----------------------------------------------------
[ "$(dpkg-deb -f "$debs/drover-agent_${version}_arm64.deb" Architecture)" = arm64 ] ||
    die "arm64 package has the wrong Architecture"
x="$(mktemp -d)"
dpkg-deb -x "$debs/drover-agent_${version}_arm64.deb" "$x"
readelf -h "$x/usr/bin/drover-agent" | grep -q 'AArch64' || die "arm64 package holds a non-AArch64 binary"
rm -rf "$x"
diff <(dpkg-deb -c "$debs/drover-agent_${version}_amd64.deb" | awk '{ print $1, $2, $6 }') \
    <(dpkg-deb -c "$debs/drover-agent_${version}_arm64.deb" | awk '{ print $1, $2, $6 }') ||
    die "amd64 and arm64 agent packages differ in files or modes"
say "arm64 package: architecture, AArch64 binary and file list OK"

# --- man pages and completions: in both packages, one page per subcommand ----------------
# contents PACKAGE BINARY SUBCOMMAND...: man pages of the binary and of each subcommand
# (gzipped roff), and the bash/zsh/fish completions in the usual directories.
contents() {
    local deb="$1" name="$2" files
    shift 2
    files="$(dpkg-deb -c "$deb" | awk '{ print $1, $6 }')"
    for page in "$name" "$@"; do
        echo "$files" | grep -qx -- "-rw-r--r-- ./usr/share/man/man1/$page.1.gz" ||
            die "$deb lacks man page $page.1.gz (0644)"
    done
    for f in "usr/share/bash-completion/completions/$name" "usr/share/zsh/vendor-completions/_$name" \
        "usr/share/fish/vendor_completions.d/$name.fish"; do
        echo "$files" | grep -qx -- "-rw-r--r-- ./$f" || die "$deb lacks $f (0644)"
    done
    x="$(mktemp -d)"
    dpkg-deb -x "$deb" "$x"
    zcat "$x/usr/share/man/man1/$name.1.gz" | grep -q '^\.SH ENVIRONMENT' ||
        die "$name.1 has no ENVIRONMENT section"
    bash --norc -c "source '$x/usr/share/bash-completion/completions/$name' && complete -p $name" >/dev/null ||
        die "$name bash completion does not load"
    rm -rf "$x"
}
contents "$debs/drover_${version}_amd64.deb" drover drover-serve drover-agents drover-agent-delete \
    drover-token-create drover-runner-apply drover-rollout-status drover-completion
contents "$debs/drover-agent_${version}_amd64.deb" drover-agent drover-agent-enroll drover-agent-run \
    drover-agent-status drover-agent-check drover-agent-completion
say "man pages and bash/zsh/fish completions in both packages OK"

# --- container tests --------------------------------------------------------------------------
base="${IMAGE_PREFIX:-drover}/base:bookworm"
bash deploy/docker/build-images.sh --base-only # reuses an up-to-date base
name="drover-pkgtest-$$"
cleanup() { docker rm -f "$name" >/dev/null 2>&1 || true; }
trap cleanup EXIT
docker run -d --name "$name" \
    -v "$debs:/debs:ro" -v "$repo/deploy:/deploy:ro" \
    -v /var/run/docker.sock:/run/docker.sock \
    "$base" sleep infinity >/dev/null

docker exec -i -e VERSION="$version" "$name" bash -s <<'IN_CONTAINER'
set -euo pipefail
fail() { echo "in container: FAILED: $*" >&2; exit 1; }
ok() { echo "in container: ok: $*" >&2; }
mode_owner() { stat -c '%a %U:%G' "$1"; }
deb_agent=/debs/drover-agent_${VERSION}_amd64.deb
deb_ctl=/debs/drover_${VERSION}_amd64.deb

# systemctl stub: logs calls; "is-active" answers from a state file.
mkdir -p /run/systemd/system /usr/local/sbin
cat >/usr/local/sbin/systemctl <<'EOF'
#!/bin/sh
echo "$*" >>/tmp/systemctl.log
case "$1" in
enable) [ "$2" = --now ] && touch /tmp/active ;;
is-active) [ -f /tmp/active ] ;;
esac
EOF
chmod +x /usr/local/sbin/systemctl
: >/tmp/systemctl.log

# --- agent package ----------------------------------------------------------------------------
dpkg -i "$deb_agent" >/tmp/dpkg.log 2>&1 || { cat /tmp/dpkg.log; fail "dpkg -i agent"; }
grep -q "no 'docker' group yet" /tmp/dpkg.log || fail "postinst did not warn about the missing docker group"
[ "$(mode_owner /usr/bin/drover-agent)" = "755 root:root" ] || fail "binary mode $(mode_owner /usr/bin/drover-agent)"
[ "$(mode_owner /usr/lib/systemd/system/drover-agent.service)" = "644 root:root" ] || fail "unit mode"
[ "$(mode_owner /etc/default/drover-agent)" = "644 root:root" ] || fail "env file mode"
dpkg-query -W -f='${Conffiles}\n' drover-agent | grep -q '^ /etc/default/drover-agent ' || fail "env file is not a conffile"
[ "$(mode_owner /var/lib/drover-agent)" = "700 drover:drover" ] || fail "state dir $(mode_owner /var/lib/drover-agent)"
[ -z "$(ls -A /var/lib/drover-agent)" ] || fail "state dir not empty after install"
uid="$(id -u drover)"
[ "$uid" -lt 1000 ] || fail "drover is not a system user (uid $uid)"
[ "$(getent passwd drover | cut -d: -f7)" = /usr/sbin/nologin ] || fail "drover has a login shell"
[ "$(drover-agent --version)" = "drover-agent $VERSION" ] || fail "--version says '$(drover-agent --version)'"
drover-agent --help | grep -q enroll || fail "--help lacks enroll"
drover-agent enroll --help | grep -q -- '--controller' || fail "enroll --help lacks --controller"
drover-agent --help | grep -q 'DROVER_AGENT_STATE_DIR' || fail "--help does not name DROVER_AGENT_STATE_DIR"
bash -c 'source /usr/share/bash-completion/completions/drover-agent && complete -p drover-agent' >/dev/null ||
    fail "installed bash completion does not load"
grep -q '^Type=notify' /usr/lib/systemd/system/drover-agent.service || fail "unit is not Type=notify"
grep -Eq '^(start|enable|restart|reload-or-restart)' /tmp/systemctl.log && fail "postinst started or enabled the agent: $(cat /tmp/systemctl.log)"
grep -qx 'daemon-reload' /tmp/systemctl.log || fail "postinst did not reload systemd"
ok "agent package installed: files, modes, conffile, user, state dir, --version, not started"

# Docker installed later: the group appears; a reinstall adds the agent user to it.
groupadd --system docker
echo 'DROVER_LOG=debug' >>/etc/default/drover-agent
dpkg -i "$deb_agent" >/tmp/dpkg.log 2>&1 || { cat /tmp/dpkg.log; fail "reinstall"; }
id -nG drover | tr ' ' '\n' | grep -qx docker || fail "drover is not in group docker after reinstall"
grep -q 'DROVER_LOG=debug' /etc/default/drover-agent || fail "conffile edit lost on reinstall"
grep -qx 'try-restart drover-agent.service' /tmp/systemctl.log || fail "upgrade did not try-restart"
ok "reinstall: docker group membership added, conffile edit kept, try-restart only"

touch /var/lib/drover-agent/agent.key
dpkg -r drover-agent >/dev/null
[ ! -e /usr/bin/drover-agent ] || fail "binary left after remove"
[ ! -e /usr/lib/systemd/system/drover-agent.service ] || fail "unit left after remove"
[ -f /etc/default/drover-agent ] || fail "remove deleted the conffile"
[ -f /var/lib/drover-agent/agent.key ] || fail "remove deleted the state"
grep -qx 'stop drover-agent.service' /tmp/systemctl.log || fail "prerm did not stop the service"
grep -qx 'disable drover-agent.service' /tmp/systemctl.log || fail "prerm did not disable the service"
dpkg -P drover-agent >/dev/null
[ ! -e /etc/default/drover-agent ] || fail "purge kept the conffile"
[ ! -e /var/lib/drover-agent ] || fail "purge kept the state dir"
getent passwd drover >/dev/null || fail "purge deleted the shared drover user"
ok "remove keeps conffile and state; purge deletes them"

# --- controller package -----------------------------------------------------------------------
: >/tmp/systemctl.log
dpkg -i "$deb_ctl" >/dev/null 2>&1 || fail "dpkg -i controller"
[ "$(drover --version)" = "drover $VERSION" ] || fail "drover --version says '$(drover --version)'"
[ "$(mode_owner /var/lib/drover)" = "750 drover:drover" ] || fail "data dir $(mode_owner /var/lib/drover)"
dpkg-query -W -f='${Conffiles}\n' drover | grep -q '^ /etc/default/drover ' || fail "controller env file is not a conffile"
[ -f /usr/lib/systemd/system/drover.service ] || fail "controller unit missing"
grep -Eq '^(start|enable|restart|reload-or-restart)' /tmp/systemctl.log && fail "postinst started the controller"
dpkg -P drover >/dev/null
[ ! -e /var/lib/drover ] && [ ! -e /etc/default/drover ] || fail "controller purge left files"
ok "controller package: --version, data dir 0750, conffile, purge"

# --- install.sh -------------------------------------------------------------------------------
: >/tmp/systemctl.log
rm -f /tmp/active
out="$(bash /deploy/install.sh --controller https://ctl.example:7443 --token secret-token-1 --deb "$deb_agent" --dry-run 2>&1)"
echo "$out" | grep -q '+ env DEBIAN_FRONTEND=noninteractive apt-get install' || fail "dry run: no install step: $out"
echo "$out" | grep -q '+ systemctl enable --now drover-agent.service' || fail "dry run: no enable step"
echo "$out" | grep -q 'secret-token-1' && fail "dry run printed the token"
dpkg-query -W drover-agent >/dev/null 2>&1 && dpkg-query -W -f='${Status}' drover-agent | grep -q ' installed' && fail "dry run installed the package"
ok "install.sh --dry-run prints the steps, hides the token, changes nothing"

bash /deploy/install.sh --controller https://ctl.example:7443 --token t --deb "$deb_agent" >/tmp/install1.log 2>&1 &&
    fail "install.sh succeeded although enroll cannot have worked"
grep -q 'enroll with https://ctl.example:7443 failed' /tmp/install1.log || { cat /tmp/install1.log; fail "no enroll failure message"; }
[ "$(drover-agent --version)" = "drover-agent $VERSION" ] || fail "install.sh did not install the package"
[ -z "$(ls -A /var/lib/drover-agent)" ] || fail "failed enroll left state behind"
grep -Eq '^(enable|start)' /tmp/systemctl.log && fail "a failed enroll still started the service"
ok "install.sh: failed enroll leaves an empty state dir and starts nothing"

# An enrolled box (state present): install is skipped, enroll is skipped, service enabled.
touch /var/lib/drover-agent/agent.crt
for run in 1 2; do
    bash /deploy/install.sh --controller https://ctl.example:7443 --token t --deb "$deb_agent" >/tmp/install2.log 2>&1 ||
        { cat /tmp/install2.log; fail "install.sh run $run on an enrolled box"; }
    grep -q 'already installed; skipping install' /tmp/install2.log || fail "run $run reinstalled"
    grep -q 'already enrolled' /tmp/install2.log || fail "run $run enrolled again"
    grep -q 'drover-agent.service is enabled and running' /tmp/install2.log || fail "run $run: not running"
done
[ "$(grep -c '^enable --now drover-agent.service' /tmp/systemctl.log)" = 2 ] || fail "enable calls: $(cat /tmp/systemctl.log)"
ok "install.sh on an enrolled box: skips install and enroll, enables and starts; twice is safe"

bash /deploy/install.sh --controller http://ctl.example:7443 --token t >/tmp/install3.log 2>&1 && fail "accepted http://"
grep -q "is not https://HOST:PORT" /tmp/install3.log || fail "no clear error for a bad URL"
ok "install.sh rejects a bad controller URL with a clear error"
dpkg -P drover-agent >/dev/null

# A real enrollment: the controller package's `drover serve` in this container, a token,
# install.sh with the agent package, then the agent started as its unit would start it.
: >/tmp/systemctl.log
rm -f /tmp/active
dpkg -i "$deb_ctl" >/dev/null 2>&1 || fail "dpkg -i controller (real enroll)"
drover serve --data-dir /tmp/ctl --listen 127.0.0.1:7443 --http-listen 127.0.0.1:7080 >/tmp/serve.log 2>&1 &
for _ in $(seq 1 100); do [ -s /tmp/ctl/grpc.addr ] && break; sleep 0.1; done
[ -s /tmp/ctl/grpc.addr ] || { cat /tmp/serve.log; fail "drover serve did not start"; }
token="$(drover --data-dir /tmp/ctl token create --label site=pkgtest)" || fail "token create"
bash /deploy/install.sh --controller https://127.0.0.1:7443 --token "$token" --deb "$deb_agent" >/tmp/install4.log 2>&1 ||
    { cat /tmp/install4.log; fail "install.sh with a real controller"; }
[ -s /var/lib/drover-agent/agent.crt ] || fail "no certificate after a real enroll"
[ "$(stat -c '%a %U' /var/lib/drover-agent/agent.key)" = "600 drover" ] || fail "agent.key $(stat -c '%a %U' /var/lib/drover-agent/agent.key)"
grep -qx 'enable --now drover-agent.service' /tmp/systemctl.log || fail "install.sh did not enable the service"
runuser -u drover -- drover-agent run --state-dir /var/lib/drover-agent >/tmp/agent.log 2>&1 &
agent_pid=$!
connected=""
for _ in $(seq 1 100); do
    if drover --data-dir /tmp/ctl agents -o json 2>/dev/null | grep -Eq '"state": ?"(healthy|degraded)"'; then
        connected=1 && break
    fi
    sleep 0.2
done
[ -n "$connected" ] || { cat /tmp/agent.log; drover --data-dir /tmp/ctl agents -o json; fail "the enrolled agent never connected"; }
drover --data-dir /tmp/ctl agents -o json | grep -q '"site": *"pkgtest"' || fail "agent lacks the token's label"
ok "install.sh with a real controller: enrolled (key 0600 drover), enabled, and the agent connects"

# Upgrades from the controller beside the package (dpkg owns /usr/bin/drover-agent): the
# controller upgrades the agent to B (9.9.9, a restamped copy of the packaged binary) and
# the packaged binary launches B; reinstalling the same package leaves B running; a newer
# package (10.0.0) installed after the switch wins at the next start.
. /deploy/testing/restamp.sh
agent_version() {
    drover --data-dir /tmp/ctl agents -o json 2>/dev/null |
        perl -0777 -ne 'print $1 if /"version":\s*"([^"]*)"/'
}
stop_agent() { # SIGTERM to the launcher and its child; wait until both are gone
    local pids=() p
    for p in /proc/[0-9]*; do
        tr '\0' ' ' <"$p/cmdline" 2>/dev/null | grep -q 'run --state-dir /var/lib/drover-agent' && pids+=("${p#/proc/}")
    done
    [ ${#pids[@]} -gt 0 ] && kill "${pids[@]}" 2>/dev/null
    for p in "${pids[@]}"; do # (a zombie, not yet waited for, has stopped)
        for _ in $(seq 1 200); do grep -qs '^State:.*[RSDT]' "/proc/$p/status" || break; sleep 0.1; done
        grep -qs '^State:.*[RSDT]' "/proc/$p/status" && fail "agent process $p did not stop"
    done
    wait "$agent_pid" 2>/dev/null || true
}
start_agent() {
    runuser -u drover -- drover-agent run --state-dir /var/lib/drover-agent >>/tmp/agent.log 2>&1 &
    agent_pid=$!
}
launched_b() { grep -c 'running the selected binary.*9\.9\.9\|version=9\.9\.9.*running the selected binary' /tmp/agent.log || true; }
wait_version() { # VERSION WHAT
    for _ in $(seq 1 300); do [ "$(agent_version)" = "$1" ] && return 0; sleep 0.2; done
    cat /tmp/agent.log; drover --data-dir /tmp/ctl agent upgrade status 2>&1 || true
    fail "$2: the agent reports '$(agent_version)', not $1"
}
cp /usr/bin/drover-agent /tmp/drover-agent-b && restamp /tmp/drover-agent-b "$VERSION" 9.9.9
[ "$(/tmp/drover-agent-b --version)" = "drover-agent 9.9.9" ] || fail "restamp: $(/tmp/drover-agent-b --version)"
drover --data-dir /tmp/ctl agent upgrade --binary /tmp/drover-agent-b --health-timeout 60s >/tmp/upgrade.log 2>&1 ||
    { cat /tmp/upgrade.log; fail "drover agent upgrade"; }
wait_version 9.9.9 "upgrade to B"
[ "$(drover-agent --version)" = "drover-agent $VERSION" ] || fail "the upgrade changed the packaged binary"
[ "$(launched_b)" -ge 1 ] || { cat /tmp/agent.log; fail "the launcher did not log running B"; }
before="$(launched_b)"
dpkg -i "$deb_agent" >/tmp/dpkg.log 2>&1 || { cat /tmp/dpkg.log; fail "reinstall beside B"; }
stop_agent
start_agent
for _ in $(seq 1 100); do [ "$(launched_b)" -gt "$before" ] && break; sleep 0.2; done
[ "$(launched_b)" -gt "$before" ] || { cat /tmp/agent.log; fail "after reinstalling the same package, B was not launched"; }
wait_version 9.9.9 "the same package reinstalled"
ok "agent upgraded to B by the controller beside the package; reinstalling the package keeps B"
newer=/tmp/pkg-newer
dpkg-deb -R "$deb_agent" "$newer"
restamp "$newer/usr/bin/drover-agent" "$VERSION" 10.0.0
sed -i 's/^Version: .*/Version: 10.0.0/' "$newer/DEBIAN/control"
dpkg-deb -b "$newer" /tmp/drover-agent_10.0.0.deb >/dev/null || fail "build the newer package"
dpkg -i /tmp/drover-agent_10.0.0.deb >/tmp/dpkg.log 2>&1 || { cat /tmp/dpkg.log; fail "dpkg -i the newer package"; }
stop_agent
start_agent
wait_version 10.0.0 "a newer package installed after the switch"
grep -q 'was installed after the switch to 9.9.9 and is not older' /tmp/agent.log ||
    { cat /tmp/agent.log; fail "the launcher did not say why the package runs"; }
stop_agent
ok "a newer package installed after the switch wins over the upgraded binary"
dpkg -P drover-agent >/dev/null
IN_CONTAINER
say "all package and install.sh checks passed"
