#!/usr/bin/env bash
# The Drover demo in one command: a controller, two agents, a fake GitLab, and a CI job
# that runs on one of the agents.
#
#   bash deploy/demo.sh          build images, start, enroll, apply runners, run a job
#   bash deploy/demo.sh status   show the fleet
#   bash deploy/demo.sh down     stop and delete everything the demo made (volumes too)
#
# Safe to rerun: enrolled agents keep their state volumes and are not enrolled again.
# Needs: Docker, docker compose (v2 plugin or docker-compose v1.29), curl, root for the
# first base-image build (debootstrap). Env: IMAGE_PREFIX (default drover), SKIP_BUILD=1.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
project=drover-demo
job_image=drover-demo-job:latest
export IMAGE_PREFIX="${IMAGE_PREFIX:-drover}"
export DROVER_VERSION=latest
export DOCKER_GID

say() { printf '\n==> %s\n' "$*" >&2; }
die() {
    printf 'demo.sh: error: %s\n' "$*" >&2
    exit 1
}

if docker compose version >/dev/null 2>&1; then
    compose=(docker compose)
elif command -v docker-compose >/dev/null; then
    compose=(docker-compose)
else
    die "neither 'docker compose' nor 'docker-compose' found (apt-get install docker-compose)"
fi
dc() { "${compose[@]}" -p "$project" -f "$here/compose.yaml" "$@"; }

docker info >/dev/null 2>&1 || die "Docker is not reachable (is dockerd running, may you use it?)"
DOCKER_GID="$(stat -c %g /var/run/docker.sock)"

case "${1:-up}" in
down)
    dc down --volumes --remove-orphans
    docker image rm "$job_image" >/dev/null 2>&1 || true
    exit 0
    ;;
status)
    dc ps
    dc exec -T controller drover agents
    exit 0
    ;;
up) ;;
*) die "unknown command '$1' (up, status or down)" ;;
esac

# 1. images ---------------------------------------------------------------------------------
if [ "${SKIP_BUILD:-0}" != 1 ]; then
    say "building images (${IMAGE_PREFIX}/base, controller, agent, fake-gitlab)"
    bash "$here/docker/build-images.sh"
fi
for img in controller agent fake-gitlab; do
    docker image inspect "$IMAGE_PREFIX/$img:latest" >/dev/null 2>&1 ||
        die "image $IMAGE_PREFIX/$img:latest is missing (run deploy/docker/build-images.sh)"
done
# Jobs use a local image with pull_policy "never": the demo needs no registry.
docker tag "$IMAGE_PREFIX/base:bookworm" "$job_image"

# 2. controller and fake GitLab -------------------------------------------------------------
say "starting the controller and the fake GitLab"
dc up -d controller fake-gitlab
for _ in $(seq 1 60); do
    curl -fsS http://127.0.0.1:7080/healthz >/dev/null 2>&1 && break
    sleep 1
done
curl -fsS http://127.0.0.1:7080/healthz >/dev/null ||
    die "controller not healthy after 60 s: $(dc logs --tail 20 controller)"

# 3. enroll two agents (once: their state volumes keep the enrollment) ----------------------
for agent in agent-1 agent-2; do
    # shellcheck disable=SC2016 # expanded by the container's shell
    if dc run --rm --no-deps --entrypoint /bin/sh "$agent" -c \
        '[ -n "$(ls -A /var/lib/drover-agent)" ]' 2>/dev/null; then
        say "$agent is already enrolled"
        continue
    fi
    say "enrolling $agent"
    token="$(dc exec -T controller drover token create --label site=demo --label "name=$agent")"
    [ -n "$token" ] || die "drover token create printed no token"
    dc run --rm --no-deps -e DROVER_ENROLL_TOKEN="$token" "$agent" \
        enroll --controller https://controller:7443 --state-dir /var/lib/drover-agent
done
say "starting the agents"
dc up -d agent-1 agent-2

# 4. runners --------------------------------------------------------------------------------
say "applying deploy/demo/runners.toml"
dc exec -T controller drover runner apply -f /etc/drover/demo/runners.toml
dc exec -T controller drover rollout status --wait

# 5. a job ----------------------------------------------------------------------------------
say "queueing a job in the fake GitLab"
job_id="$(curl -fsS -X POST -H 'Content-Type: application/json' \
    --data-binary @"$here/demo/job.json" http://127.0.0.1:8080/fake/jobs |
    sed -n 's/.*"id"[[:space:]]*:[[:space:]]*\([0-9]*\).*/\1/p')"
[ -n "$job_id" ] || die "the fake GitLab did not return a job id"
status=""
for _ in $(seq 1 120); do
    job="$(curl -fsS "http://127.0.0.1:8080/fake/jobs/$job_id")"
    status="$(printf '%s' "$job" | sed -n 's/.*"status"[[:space:]]*:[[:space:]]*"\([a-z]*\)".*/\1/p')"
    case "$status" in success | failed | canceled) break ;; esac
    sleep 1
done
say "job $job_id: ${status:-unknown}"
printf '%s\n' "$job" | python3 -c 'import json,sys; print(json.load(sys.stdin).get("trace",""))' 2>/dev/null || true
dc exec -T controller drover agents
say "status page: http://127.0.0.1:7080/   stop with: bash deploy/demo.sh down"
[ "$status" = success ] || die "the demo job did not succeed (status '${status:-unknown}')"
