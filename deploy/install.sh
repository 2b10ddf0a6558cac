#!/usr/bin/env bash
# Installs, enrolls and starts the Drover agent on this box, in one command:
#
#   sudo ./install.sh --controller https://HOST:7443 --token TOKEN
#
# Options:
#   --controller URL   the controller's gRPC address (https://HOST:PORT)        [required]
#   --token TOKEN      one-time enrollment token (`drover token create`); or set
#                      DROVER_ENROLL_TOKEN instead, to keep it out of `ps`       [required]
#   --deb FILE         install this drover-agent .deb (default: an already installed agent,
#                      else drover-agent_*_<arch>.deb next to this script)
#   --binary FILE      install this drover-agent binary to /usr/local/bin instead of a .deb
#                      (the unit comes from systemd/drover-agent.service next to this script)
#   --state-dir DIR    agent state dir (default /var/lib/drover-agent)
#   --dry-run          print what would be done, change nothing
#
# Safe to run twice: the same version is not reinstalled, an enrolled state dir (non-empty)
# is not enrolled again, and enabling/starting a running service changes nothing.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
controller=""
token="${DROVER_ENROLL_TOKEN:-}"
deb=""
binary=""
state_dir="/var/lib/drover-agent"
dry_run=0
docker_group_added=0
unit=drover-agent.service
user=drover

say() { printf 'install.sh: %s\n' "$*" >&2; }
die() {
    say "error: $*"
    exit 1
}
usage() { sed -n '2,19p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'; }
# Runs a command, or only prints it with --dry-run. Never pass secrets as arguments.
run() {
    if [ "$dry_run" = 1 ]; then
        printf '+ %s\n' "$*"
    else
        "$@"
    fi
}

while [ $# -gt 0 ]; do
    case "$1" in
    --controller | --token | --deb | --binary | --state-dir)
        [ $# -ge 2 ] || die "$1 needs a value"
        case "$1" in
        --controller) controller="$2" ;;
        --token) token="$2" ;;
        --deb) deb="$2" ;;
        --binary) binary="$2" ;;
        --state-dir) state_dir="$2" ;;
        esac
        shift 2
        ;;
    --dry-run) dry_run=1 && shift ;;
    -h | --help) usage && exit 0 ;;
    *) die "unknown argument '$1' (see --help)" ;;
    esac
done

# --- validate everything before changing anything -------------------------------------------
[ -n "$controller" ] || die "--controller URL is required (https://HOST:PORT)"
[[ "$controller" =~ ^https://[^/[:space:]]+:[0-9]+/?$ ]] ||
    die "--controller '$controller' is not https://HOST:PORT"
[ -n "$token" ] || die "--token TOKEN (or DROVER_ENROLL_TOKEN) is required"
[ -z "$deb" ] || [ -z "$binary" ] || die "--deb and --binary exclude each other"
case "$state_dir" in /*) ;; *) die "--state-dir '$state_dir' must be an absolute path" ;; esac
[ -z "$deb" ] || [ -f "$deb" ] || die "--deb file '$deb' not found"
[ -z "$binary" ] || [ -x "$binary" ] || die "--binary file '$binary' not found or not executable"
if [ "$dry_run" = 0 ] && [ "$(id -u)" != 0 ]; then
    die "must run as root (or use --dry-run)"
fi
command -v dpkg >/dev/null || die "dpkg not found: this script supports Debian and Ubuntu"
arch="$(dpkg --print-architecture)"

# Docker: the agent runs every job in it.
docker_sock="/run/docker.sock"
if [ -n "${DOCKER_HOST:-}" ]; then
    say "note: DOCKER_HOST=$DOCKER_HOST is set for this shell; the service uses $docker_sock"
fi
if [ ! -S "$docker_sock" ] && [ ! -S /var/run/docker.sock ]; then
    die "no Docker socket at $docker_sock: install Docker first (apt-get install docker.io)"
fi
say "docker socket found at $docker_sock"

# --- 1. install ------------------------------------------------------------------------------
installed_version() { dpkg-query -W -f='${Status} ${Version}' drover-agent 2>/dev/null |
    awk '$3 == "installed" { print $4 }'; }

if [ -z "$deb" ] && [ -z "$binary" ]; then
    if [ -n "$(installed_version)" ]; then
        say "drover-agent $(installed_version) is already installed (package); keeping it"
        bin_path=/usr/bin/drover-agent
    elif [ -x /usr/local/bin/drover-agent ]; then
        say "drover-agent is already installed at /usr/local/bin; keeping it"
        bin_path=/usr/local/bin/drover-agent
    else
        shopt -s nullglob
        candidates=("$here"/drover-agent_*_"$arch".deb)
        shopt -u nullglob
        [ ${#candidates[@]} -gt 0 ] ||
            die "drover-agent is not installed and no --deb/--binary given (nor drover-agent_*_$arch.deb next to $0)"
        deb="$(printf '%s\n' "${candidates[@]}" | sort -V | tail -n 1)"
    fi
fi

if [ -n "$deb" ]; then
    deb="$(cd "$(dirname "$deb")" && pwd)/$(basename "$deb")"
    deb_pkg="$(dpkg-deb -f "$deb" Package)" || die "--deb '$deb' is not a Debian package"
    [ "$deb_pkg" = drover-agent ] || die "--deb '$deb' holds package '$deb_pkg', not drover-agent"
    deb_arch="$(dpkg-deb -f "$deb" Architecture)"
    [ "$deb_arch" = "$arch" ] || die "--deb '$deb' is for $deb_arch, this box is $arch"
    deb_ver="$(dpkg-deb -f "$deb" Version)"
    if [ "$(installed_version)" = "$deb_ver" ]; then
        say "drover-agent $deb_ver is already installed; skipping install"
    else
        say "installing drover-agent $deb_ver from $deb"
        # apt resolves the Depends; the package's postinst creates the user and state dir.
        run env DEBIAN_FRONTEND=noninteractive apt-get install -y -q "$deb"
    fi
    bin_path=/usr/bin/drover-agent
elif [ -n "$binary" ]; then
    bin_path=/usr/local/bin/drover-agent
    new_ver="$("$binary" --version)" || die "--binary '$binary' does not run here (wrong architecture?)"
    if [ -x "$bin_path" ] && [ "$("$bin_path" --version 2>/dev/null)" = "$new_ver" ] &&
        cmp -s "$binary" "$bin_path"; then
        say "$new_ver is already installed at $bin_path; skipping install"
    else
        say "installing $new_ver to $bin_path"
        run install -m 0755 "$binary" "$bin_path"
        # A running agent picks the new binary up on restart (no-op when stopped).
        if [ -d /run/systemd/system ]; then run systemctl try-restart "$unit"; fi
    fi
    unit_src="$here/systemd/$unit"
    [ -f "$unit_src" ] || die "unit file $unit_src not found (keep install.sh beside deploy/systemd/)"
    unit_dst="/etc/systemd/system/$unit"
    unit_text="$(sed "s#^ExecStart=/usr/bin/drover-agent#ExecStart=$bin_path#" "$unit_src")"
    if [ -f "$unit_dst" ] && [ "$(cat "$unit_dst")" = "$unit_text" ]; then
        say "$unit_dst is up to date"
    elif [ "$dry_run" = 1 ]; then
        printf '+ write %s (ExecStart=%s)\n' "$unit_dst" "$bin_path"
    else
        printf '%s\n' "$unit_text" >"$unit_dst"
        chmod 0644 "$unit_dst"
    fi
    if [ ! -f /etc/default/drover-agent ]; then
        run install -m 0644 "$here/systemd/drover-agent.default" /etc/default/drover-agent
    fi
    if ! getent group "$user" >/dev/null; then run groupadd --system "$user"; fi
    if ! getent passwd "$user" >/dev/null; then
        run useradd --system --gid "$user" --home-dir /nonexistent --no-create-home \
            --shell /usr/sbin/nologin --comment "Drover" "$user"
    fi
fi
if [ "$dry_run" = 0 ] || [ -x "$bin_path" ]; then
    say "agent: $("$bin_path" --version 2>/dev/null || echo "$bin_path")"
fi

# --- 2. user, Docker access, state dir (the .deb did this too; Docker may have come later) ---
if getent group docker >/dev/null; then
    if ! id -nG "$user" 2>/dev/null | tr ' ' '\n' | grep -qx docker; then
        say "adding user $user to group docker (Docker socket access)"
        run usermod --append --groups docker "$user"
        docker_group_added=1
    fi
else
    say "warning: no 'docker' group: make sure user $user can use $docker_sock"
fi
if [ ! -d "$state_dir" ]; then
    run install -d -o "$user" -g "$user" -m 0700 "$state_dir"
fi
if [ "$state_dir" != /var/lib/drover-agent ]; then
    # The unit's ProtectSystem=strict only lets the agent write its default state dir.
    dropin="/etc/systemd/system/$unit.d/state-dir.conf"
    # --state-dir on the command line wins over DROVER_AGENT_STATE_DIR in /etc/default.
    # shellcheck disable=SC2016 # $DROVER_AGENT_ARGS is for systemd to expand
    dropin_text="$(printf '[Service]\nReadWritePaths=%s\nExecStart=\nExecStart=%s run --state-dir %s $DROVER_AGENT_ARGS\n' \
        "$state_dir" "$bin_path" "$state_dir")"
    if [ ! -f "$dropin" ] || [ "$(cat "$dropin")" != "$dropin_text" ]; then
        if [ "$dry_run" = 1 ]; then
            printf '+ write %s (state dir %s)\n' "$dropin" "$state_dir"
        else
            mkdir -p "$(dirname "$dropin")"
            printf '%s\n' "$dropin_text" >"$dropin"
        fi
    fi
fi

# --- 3. enroll ------------------------------------------------------------------------------
if [ -d "$state_dir" ] && [ -n "$(ls -A "$state_dir")" ]; then
    say "$state_dir is not empty: already enrolled, skipping enroll (to re-enroll: stop the service, empty it, rerun)"
else
    say "enrolling with $controller (state dir $state_dir)"
    if [ "$dry_run" = 1 ]; then
        printf '+ runuser -u %s -- %s enroll --controller %s --state-dir %s  (token from DROVER_ENROLL_TOKEN)\n' \
            "$user" "$bin_path" "$controller" "$state_dir"
    else
        # As the service user, so it owns its key; the token goes by environment, not argv.
        if ! DROVER_ENROLL_TOKEN="$token" runuser -u "$user" -- \
            "$bin_path" enroll --controller "$controller" --state-dir "$state_dir"; then
            # Leave the state dir empty, so that the next run enrolls again.
            find "$state_dir" -mindepth 1 -delete
            die "enroll with $controller failed (see above); nothing was started"
        fi
    fi
fi

# --- 4. enable and start --------------------------------------------------------------------
if [ ! -d /run/systemd/system ]; then
    if [ "$dry_run" = 1 ]; then
        say "note: systemd is not running here; a real run would stop at this point"
    else
        die "systemd is not running on this machine: start the agent yourself with '$bin_path run --state-dir $state_dir'"
    fi
fi
run systemctl daemon-reload
# Type=notify: `start` returns once the agent has sent READY=1 (or failed).
run systemctl enable --now "$unit"
if [ "$docker_group_added" = 1 ]; then
    # A process keeps the groups it started with: restart to gain Docker access.
    run systemctl restart "$unit"
fi
if [ "$dry_run" = 0 ]; then
    systemctl is-active --quiet "$unit" || die "$unit is not active: journalctl -u $unit"
    say "$unit is enabled and running"
else
    say "dry run: nothing was changed"
fi
