#!/usr/bin/env bash
# The Drover demo in one command: a controller, two enrolled agents, a fake GitLab, and a
# CI job that runs in Docker on an agent. Everything runs as local processes (built with
# cargo) on 127.0.0.1; the job container runs in the local Docker engine from a busybox
# image imported from the host's busybox-static. Nothing is pulled from a registry.
#
#   bash deploy/demo.sh            build, start, enroll, run a job, print its trace, stop
#   bash deploy/demo.sh up --keep  the same, but leave everything running afterwards
#   bash deploy/demo.sh status     show the fleet and the fake GitLab's jobs (while kept)
#   bash deploy/demo.sh down       stop everything and delete what the demo made
#
# Needs: Docker (the user may use it), cargo, curl, python3, /bin/busybox from
# busybox-static. Safe to rerun: every `up` starts with a `down`.
# Env: CARGO_TARGET_DIR (default target), DEMO_DIR (state and logs; default target/demo),
# DEMO_PROFILE (debug or release; default debug: builds faster), DEMO_GRPC_PORT (17443),
# DEMO_HTTP_PORT (17080), DEMO_GITLAB_PORT (18080), DEMO_NO_BUILD=1 (use the binaries already
# in the target dir, as the test command does after its test build: a plain `cargo build`
# there would compile a second dependency tree, since tests unify more features).
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(cd "$here/.." && pwd)"
target_dir="${CARGO_TARGET_DIR:-$repo/target}"
demo_dir="${DEMO_DIR:-$target_dir/demo}"
profile="${DEMO_PROFILE:-debug}"
grpc_port="${DEMO_GRPC_PORT:-17443}"
http_port="${DEMO_HTTP_PORT:-17080}"
gitlab_port="${DEMO_GITLAB_PORT:-18080}"
gitlab_url="http://127.0.0.1:$gitlab_port"
# Runner names: job containers and volumes carry `com.drover.runner=<name>`, which is how
# `down` finds the demo's leftovers without touching anything else on the engine.
fleet_runner=drover-demo
standalone_runner=drover-demo-standalone
standalone_token=glrt-drover-demo-standalone
registration_token=demo-registration-token # also in demo/runners.toml
started=$(date +%s)

say() { printf '==> [%3ss] %s\n' "$(($(date +%s) - started))" "$*" >&2; }
die() {
    printf 'demo.sh: error: %s\n' "$*" >&2
    exit 1
}
bin() { printf '%s/%s/%s' "$target_dir" "$profile" "$1"; }
drover() { "$(bin drover)" --data-dir "$demo_dir/controller" "$@"; }
# shellcheck source=deploy/demo/steps.sh
. "$here/demo/steps.sh"

# Starts NAME as a background process (own session) logging to $demo_dir/NAME.log.
start_proc() {
    local name="$1"
    shift
    setsid "$@" >"$demo_dir/$name.log" 2>&1 </dev/null &
    echo $! >"$demo_dir/$name.pid"
}

# Stops every process the demo started (their pid files), then removes the demo's job
# containers and volumes and its state dir. The job image is kept (rebuilt in a second).
down() {
    local pidfile pid
    if [ -d "$demo_dir" ]; then
        for pidfile in "$demo_dir"/*.pid; do
            [ -e "$pidfile" ] || continue
            pid="$(cat "$pidfile")"
            # The process leads its own session: end the group (the process and nothing
            # else it spawned), then wait until it is gone.
            if kill -0 "$pid" 2>/dev/null; then
                kill -TERM -- "-$pid" 2>/dev/null || kill -TERM "$pid" 2>/dev/null || true
                for _ in $(seq 1 50); do
                    kill -0 "$pid" 2>/dev/null || break
                    sleep 0.2
                done
                kill -KILL -- "-$pid" 2>/dev/null || true
            fi
            rm -f "$pidfile"
        done
    fi
    if docker info >/dev/null 2>&1; then
        local runner
        for runner in "$fleet_runner" "$standalone_runner"; do
            remove_runner_leftovers "$runner"
        done
    fi
    rm -rf "$demo_dir"
}

port_in_use() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

on_failure() {
    local rc=$?
    [ "$rc" = 0 ] && return
    if [ -d "$demo_dir" ]; then
        for log in "$demo_dir"/*.log; do
            [ -e "$log" ] || continue
            printf '\n----- %s (last 15 lines) -----\n' "$(basename "$log")" >&2
            tail -n 15 "$log" >&2
        done
    fi
    printf '\ndemo.sh: failed; cleaning up (rerun with the same command)\n' >&2
    down
}

status() {
    [ -d "$demo_dir/controller" ] || die "the demo is not running (bash deploy/demo.sh up --keep)"
    drover agents
    if drover runner --help >/dev/null 2>&1; then
        printf '\n'
        drover runner list
        drover rollout status
    fi
    printf '\nfake GitLab jobs:\n'
    fake_get /fake/jobs | python3 -c 'import json,sys
for j in json.load(sys.stdin):
    print("  job %s %s: %s (runner %s)" % (j["id"], j["name"], j["status"], j["runner_id"]))'
}

# Standalone flow (works without fleet runner management): agent-1 also serves a
# gitlab-runner config.toml pointing at the fake GitLab.
standalone_runner() {
    say "starting agent-1 in standalone mode too (drover-agent run --config)"
    mkdir -p "$demo_dir/standalone"
    cat >"$demo_dir/standalone/config.toml" <<EOF
concurrent = 1
check_interval = 1
log_level = "info"

[[runners]]
  name = "$standalone_runner"
  url = "$gitlab_url"
  token = "$standalone_token"
  executor = "docker"
  [runners.docker]
    image = "$demo_job_image"
    pull_policy = "never"
    privileged = false
    volumes = ["/cache"]
EOF
    start_proc agent-1-standalone "$(bin drover-agent)" run \
        --config "$demo_dir/standalone/config.toml"
}

up() {
    local keep="${1:-}"
    [ -z "$keep" ] || [ "$keep" = --keep ] || die "unknown option '$keep' (--keep)"
    command -v cargo >/dev/null || die "cargo is missing (install Rust: https://rustup.rs)"
    command -v curl >/dev/null || die "curl is missing (apt-get install curl)"
    command -v python3 >/dev/null || die "python3 is missing (apt-get install python3)"
    docker info >/dev/null 2>&1 || die "Docker is not reachable (is dockerd running, may you use it?)"
    case "$profile" in debug | release) ;; *) die "DEMO_PROFILE '$profile' (debug or release)" ;; esac

    say "cleaning up a previous run, if any"
    down
    for port in "$grpc_port" "$http_port" "$gitlab_port"; do
        port_in_use "$port" && die "port $port on 127.0.0.1 is in use (set DEMO_*_PORT)"
    done
    mkdir -p "$demo_dir"
    trap on_failure EXIT

    if [ "${DEMO_NO_BUILD:-}" = 1 ]; then
        local b
        for b in drover drover-agent fake-gitlab; do
            [ -x "$(bin "$b")" ] || die "DEMO_NO_BUILD=1 but $(bin "$b") is missing"
        done
    else
        say "building drover, drover-agent, fake-gitlab ($profile; the first build takes minutes)"
        local release=()
        [ "$profile" = release ] && release=(--release)
        (cd "$repo" && cargo build --quiet "${release[@]}" \
            --workspace --bin drover --bin drover-agent --bin fake-gitlab)
    fi

    say "importing the job image $demo_job_image from /bin/busybox"
    import_job_image

    say "starting the controller (gRPC 127.0.0.1:$grpc_port, status page http://127.0.0.1:$http_port/)"
    start_proc controller "$(bin drover)" --data-dir "$demo_dir/controller" serve \
        --listen "127.0.0.1:$grpc_port" --http-listen "127.0.0.1:$http_port" \
        --heartbeat-interval 2s
    wait_until 60 "the controller" test -s "$demo_dir/controller/grpc.addr"

    say "starting the fake GitLab ($gitlab_url)"
    start_proc fake-gitlab "$(bin fake-gitlab)" --listen "127.0.0.1:$gitlab_port" \
        --registration-token "$registration_token" --runner-token "$standalone_token"
    wait_until 30 "the fake GitLab" fake_get /fake/jobs

    local n token
    for n in 1 2; do
        say "enrolling agent-$n with a one-time token"
        token="$(enroll_token "agent-$n")"
        DROVER_ENROLL_TOKEN="$token" "$(bin drover-agent)" enroll \
            --controller "https://127.0.0.1:$grpc_port" \
            --state-dir "$demo_dir/agent-$n" >/dev/null
        start_proc "agent-$n" "$(bin drover-agent)" run --state-dir "$demo_dir/agent-$n"
    done
    wait_until 60 "both agents to connect" agents_connected 2
    say "the fleet (drover agents):"
    drover agents

    # The one switch between the two flows. Fleet flow (needs `drover runner`): the
    # controller pushes deploy/demo/runners.toml to the enrolled agents, which register
    # runners in the fake GitLab and run the job.
    if drover runner --help >/dev/null 2>&1; then
        apply_runner_spec "$gitlab_url" "$fleet_runner"
    else
        standalone_runner
    fi

    run_demo_job

    trap - EXIT
    if [ "$keep" = --keep ]; then
        say "all running; status page http://127.0.0.1:$http_port/"
        say "see: bash deploy/demo.sh status    stop: bash deploy/demo.sh down"
    else
        say "demo passed; stopping everything (keep it running with: demo.sh up --keep)"
        down
    fi
}

case "${1:-up}" in
up) up "${2:-}" ;;
status) status ;;
down)
    down
    echo "demo.sh: stopped; demo state and job containers removed" >&2
    ;;
*) die "unknown command '$1' (up [--keep], status or down)" ;;
esac
