# shellcheck shell=bash
# The fleet steps deploy/demo.sh (local processes) and deploy/compose-test.sh (containers)
# share. Sourced, not run. The caller defines:
#   say MESSAGE, die MESSAGE  progress line, and fatal error (exits non-zero)
#   drover ARGS...            the controller CLI with the admin credentials
#   gitlab_url                where this shell reaches the fake GitLab's /fake/ control API
# Needs curl and python3.

steps_dir="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
demo_job_image=drover-demo/busybox:1 # also named in job.json and runners.toml

fake_get() { curl -fsS "$gitlab_url$1"; }
json_field() { python3 -c 'import json,sys; print(json.load(sys.stdin)[sys.argv[1]])' "$1"; }

wait_until() { # SECONDS WHAT COMMAND...: dies when COMMAND has not succeeded in time
    local secs="$1" what="$2"
    shift 2
    for _ in $(seq 1 $((secs * 5))); do
        "$@" >/dev/null 2>&1 && return 0
        sleep 0.2
    done
    die "timed out after ${secs}s waiting for $what"
}

# remove_runner_leftovers RUNNER: removes the job containers, then the volumes, labelled
# com.drover.runner=RUNNER; fails when docker cannot remove them.
remove_runner_leftovers() {
    local filter="label=com.drover.runner=$1" ids
    ids="$(docker ps -aq --filter "$filter")"
    # shellcheck disable=SC2086 # one id per word
    [ -z "$ids" ] || docker rm -f $ids >/dev/null || return
    ids="$(docker volume ls -q --filter "$filter")"
    # shellcheck disable=SC2086
    [ -z "$ids" ] || docker volume rm -f $ids >/dev/null
}

# The job image: the host's static busybox and its applet links, imported (no registry).
import_job_image() {
    docker image inspect "$demo_job_image" >/dev/null 2>&1 && return
    [ -x /bin/busybox ] || die "/bin/busybox is missing (apt-get install busybox-static)"
    local root applet
    root="$(mktemp -d)"
    mkdir -p "$root/bin" "$root/tmp" "$root/etc"
    cp /bin/busybox "$root/bin/busybox"
    for applet in $(/bin/busybox --list); do
        [ "$applet" = busybox ] || ln -sf busybox "$root/bin/$applet"
    done
    printf 'root:x:0:0:root:/root:/bin/sh\n' >"$root/etc/passwd"
    tar -C "$root" -c . | docker import -c 'CMD ["sh"]' - "$demo_job_image" >/dev/null
    rm -rf "$root"
    if ! docker run --rm "$demo_job_image" true >/dev/null 2>&1; then
        docker image rm "$demo_job_image" >/dev/null 2>&1 || true
        die "the job image does not run: is /bin/busybox static? (apt-get install busybox-static)"
    fi
}

# enroll_token NAME: prints a one-time enrollment token for an agent labelled site=demo
# (the runner spec's selector) and name=NAME.
enroll_token() {
    local token
    token="$(drover token create --label site=demo --label "name=$1")" ||
        die "drover token create failed for $1"
    [ -n "$token" ] || die "drover token create printed no token for $1"
    printf '%s' "$token"
}

agents_connected() { # N: true when N agents show as connected
    [ "$(drover agents -o json | grep -c '"connected": true')" -ge "$1" ]
}

# apply_runner_spec URL NAME: applies deploy/demo/runners.toml with the fake GitLab at URL
# (as the controller and the agents reach it) and the runner named NAME (job containers and
# volumes carry the label com.drover.runner=NAME), then waits for the rollout.
apply_runner_spec() {
    say "applying deploy/demo/runners.toml (runner $2, GitLab $1)"
    sed -e "s|http://127.0.0.1:18080|$1|" -e "s|^name = \"drover-demo\"$|name = \"$2\"|" \
        "$steps_dir/runners.toml" | drover runner apply -f /dev/stdin ||
        die "drover runner apply of deploy/demo/runners.toml failed"
    drover rollout status --wait --timeout 3m || die "the runner rollout did not complete in 3m"
}

# run_demo_job: queues deploy/demo/job.json in the fake GitLab, waits up to a minute for it
# to finish and prints its trace; dies unless it succeeded. Sets job_runner_id (the GitLab
# runner id that ran it).
run_demo_job() {
    say "queueing a job in the fake GitLab (deploy/demo/job.json)"
    local job_id job="" status=""
    job_id="$(curl -fsS -X POST -H 'Content-Type: application/json' \
        --data-binary @"$steps_dir/job.json" "$gitlab_url/fake/jobs" | json_field id)" ||
        die "the fake GitLab at $gitlab_url did not take the job"
    for _ in $(seq 1 300); do
        job="$(fake_get "/fake/jobs/$job_id")" || die "the fake GitLab lost job $job_id"
        status="$(printf '%s' "$job" | json_field status)"
        case "$status" in success | failed | canceled) break ;; esac
        sleep 0.2
    done
    job_runner_id="$(printf '%s' "$job" | json_field runner_id)"
    say "job $job_id: $status (runner $job_runner_id); its trace:"
    printf '%s' "$job" | json_field trace | sed 's/^/    | /'
    [ "$status" = success ] || die "the demo job $job_id did not succeed (status '$status')"
}
