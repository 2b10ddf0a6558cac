#!/usr/bin/env bash
# End-to-end test of deploy/compose.yaml: builds the images, starts the controller and the
# fake GitLab, enrolls both agents in their containers, starts them, applies a runner spec
# selecting both (deploy/demo/runners.toml), runs a job (deploy/demo/job.json) through the
# fake GitLab and checks that it succeeded on one of the containerized agents and that
# `drover agents -o json` shows both. Then `docker-compose down -v` and removes the image
# tags, job containers and volumes it made, also when a step fails (the step is named and
# the exit status is non-zero). The fleet steps are deploy/demo/steps.sh, shared with
# deploy/demo.sh. Jobs run as sibling containers through the mounted Docker socket, in a
# busybox image imported from the host (no registry).
#
# Usage: bash deploy/compose-test.sh [--profile dev|release] [--no-build]
#   --profile   the binaries the images are made of (default dev: what CI builds anyway)
#   --no-build  use the binaries already built for that profile
# Needs Docker, curl, python3 and busybox-static; as root it installs docker-compose
# (apt-get) when missing, and the first run makes the base image (debootstrap, root).
# Env: IMAGE_PREFIX (drover), COMPOSE_TEST_GRPC_PORT (27443), COMPOSE_TEST_HTTP_PORT (27080),
# COMPOSE_TEST_GITLAB_PORT (28080): ports published on 127.0.0.1.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(cd "$here/.." && pwd)"
profile=dev
build_args=()
while [ $# -gt 0 ]; do
    case "$1" in
    --profile)
        shift
        case "${1:-}" in
        release | dev) profile="$1" ;;
        *) echo "compose-test.sh: --profile must be dev or release, not '${1:-}'" >&2 && exit 2 ;;
        esac
        ;;
    --no-build) build_args+=(--no-build) ;;
    -h | --help) sed -n '2,18p' "$0" && exit 0 ;;
    *) echo "compose-test.sh: unknown argument '$1' (see --help)" >&2 && exit 2 ;;
    esac
    shift
done

# Everything this test makes is named after it: the compose project (containers, network,
# volumes), the image tag and the runner (its job containers and volumes carry
# com.drover.runner=<runner>).
project=drover-compose-test
runner=drover-compose-test
export IMAGE_PREFIX="${IMAGE_PREFIX:-drover}"
export DROVER_VERSION=compose-test
export DROVER_GRPC_PORT="${COMPOSE_TEST_GRPC_PORT:-27443}"
export DROVER_HTTP_PORT="${COMPOSE_TEST_HTTP_PORT:-27080}"
export FAKE_GITLAB_PORT="${COMPOSE_TEST_GITLAB_PORT:-28080}"
gitlab_url="http://127.0.0.1:$FAKE_GITLAB_PORT"
started=$(date +%s)

say() { printf '==> [%3ss] %s\n' "$(($(date +%s) - started))" "$*" >&2; }
failure=""
die() {
    failure="$*"
    printf 'compose-test.sh: FAILED: %s\n' "$*" >&2
    exit 1
}
compose() { docker-compose --ansi never -p "$project" -f "$here/compose.yaml" "$@"; }
drover() { compose exec -T controller drover "$@"; }
# shellcheck source=deploy/demo/steps.sh
. "$here/demo/steps.sh"

# --- tools ---------------------------------------------------------------------------------
command -v curl >/dev/null || die "curl is missing (apt-get install curl)"
command -v python3 >/dev/null || die "python3 is missing (apt-get install python3)"
docker info >/dev/null 2>&1 || die "Docker is not reachable (is dockerd running, may you use it?)"
if ! command -v docker-compose >/dev/null; then
    [ "$(id -u)" = 0 ] || die "docker-compose is missing; run as root or: apt-get install docker-compose"
    say "installing docker-compose (apt-get)"
    apt-get update -qq >&2 || die "apt-get update failed"
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq docker-compose >/dev/null ||
        die "apt-get install docker-compose failed"
fi
DOCKER_GID="$(stat -c %g /var/run/docker.sock)" || die "no /var/run/docker.sock to mount into the agents"
export DOCKER_GID
DROVER_HTTP_TOKEN="$(od -An -N16 -tx1 /dev/urandom | tr -d ' \n')"
export DROVER_HTTP_TOKEN

# --- cleanup -------------------------------------------------------------------------------
had_job_image=0
docker image inspect "$demo_job_image" >/dev/null 2>&1 && had_job_image=1

cleanup() {
    local rc=$? name
    trap - EXIT
    if [ "$rc" != 0 ]; then
        printf '\n----- docker-compose logs (last 25 lines per service) -----\n' >&2
        compose logs --no-color --tail 25 >&2 2>&1 || true
        printf '\ncompose-test.sh: FAILED after %ss: %s; cleaning up\n' \
            "$(($(date +%s) - started))" "${failure:-exit status $rc}" >&2
    fi
    compose down -v --remove-orphans >/dev/null 2>&1 ||
        { say "docker-compose down -v failed" && rc=1; }
    remove_runner_leftovers "$runner" || true
    for name in controller agent fake-gitlab; do
        docker image rm "$IMAGE_PREFIX/$name:$DROVER_VERSION" >/dev/null 2>&1 || true
    done
    [ "$had_job_image" = 1 ] || docker image rm "$demo_job_image" >/dev/null 2>&1 || true
    exit "$rc"
}

# --- images --------------------------------------------------------------------------------
say "building the images from $profile binaries (tag $DROVER_VERSION)"
trap cleanup EXIT
nice -n 19 bash "$repo/deploy/docker/build-images.sh" --profile "$profile" \
    --tag "$DROVER_VERSION" "${build_args[@]}" || die "deploy/docker/build-images.sh failed"
for name in controller agent fake-gitlab; do
    docker image inspect "$IMAGE_PREFIX/$name:$DROVER_VERSION" >/dev/null 2>&1 ||
        die "no image $IMAGE_PREFIX/$name:$DROVER_VERSION after build-images.sh"
done
# The agent runs git to fetch a job's sources (the demo job skips that: GIT_STRATEGY none).
docker run --rm --entrypoint git "$IMAGE_PREFIX/agent:$DROVER_VERSION" --version >/dev/null ||
    die "the agent image cannot run git (the base image must include it)"
say "importing the job image $demo_job_image from /bin/busybox"
import_job_image

# --- controller and fake GitLab --------------------------------------------------------------
compose down -v --remove-orphans >/dev/null 2>&1 || true # a previous run's leftovers
say "docker-compose up -d controller fake-gitlab"
compose up -d controller fake-gitlab || die "docker-compose up of the controller and the fake GitLab"
controller_healthy() {
    [ "$(docker inspect -f '{{.State.Health.Status}}' "$(compose ps -q controller)")" = healthy ]
}
wait_until 90 "the controller's health check" controller_healthy
wait_until 30 "the fake GitLab's control API on $gitlab_url" fake_get /fake/jobs

# --- enroll both agents, then start them ----------------------------------------------------
for n in 1 2; do
    say "enrolling agent-$n in its container (drover-agent enroll, one-time token)"
    token="$(enroll_token "agent-$n")"
    DROVER_ENROLL_TOKEN="$token" compose run --rm --no-deps -T -e DROVER_ENROLL_TOKEN \
        "agent-$n" enroll --controller https://controller:7443 >/dev/null ||
        die "agent-$n did not enroll (drover-agent enroll in its container)"
done
say "docker-compose up -d (the two agents)"
compose up -d || die "docker-compose up of the agents"
wait_until 90 "both agents to connect to the controller" agents_connected 2

# `drover agents -o json` must list both containerized agents, connected, labelled site=demo.
check_agents() {
    drover agents -o json | python3 -c '
import json, sys
agents = {a["hostname"]: a for a in json.load(sys.stdin)}
for host in ("demo-agent-1", "demo-agent-2"):
    a = agents.get(host)
    if a is None:
        sys.exit("drover agents -o json lists no agent with hostname %s (found %s)" % (host, sorted(agents)))
    if not a["connected"] or a["labels"].get("site") != "demo":
        sys.exit("agent %s is not connected with label site=demo: %s" % (host, json.dumps(a)))
print("both agents listed: " + ", ".join("%s (%s)" % (h, agents[h]["id"]) for h in sorted(agents)))'
}
listed="$(check_agents)" || die "drover agents -o json does not show both agents"
say "$listed"

# --- a runner on both, and a job ------------------------------------------------------------
apply_runner_spec http://fake-gitlab:8080 "$runner"
run_demo_job

# The GitLab runner that ran the job must be one of the runners the controller lists on a
# containerized agent (their hostnames are compose.yaml's demo-agent-N).
ran_on="$(drover agents -o json | python3 -c '
import json, sys
for a in json.load(sys.stdin):
    for r in a["runners"]:
        if str(r["gitlab_runner_id"]) == sys.argv[1] and a["hostname"].startswith("demo-agent-"):
            print("%s (agent %s, runner %s)" % (a["hostname"], a["id"], r["name"]))' "$job_runner_id")" ||
    die "drover agents -o json failed after the job"
[ -n "$ran_on" ] || die "GitLab runner $job_runner_id that ran the job is on no containerized agent"
say "the job ran on $ran_on"
say "compose test passed in $(($(date +%s) - started))s; cleaning up"
