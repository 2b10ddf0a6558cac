#!/usr/bin/env bash
# Builds Drover's container images locally, with no registry:
#   ${IMAGE_PREFIX}/base:bookworm       Debian bookworm minbase with ca-certificates and git,
#                                       made with debootstrap from the Debian mirror this
#                                       machine's apt already uses
#   ${IMAGE_PREFIX}/controller:VERSION  `drover serve` (controller.Dockerfile)
#   ${IMAGE_PREFIX}/agent:VERSION       `drover-agent run` (agent.Dockerfile)
#   ${IMAGE_PREFIX}/fake-gitlab:VERSION the test fake GitLab, when its binary is built
#   ${IMAGE_PREFIX}/postgres:VERSION    with --postgres: PostgreSQL 15 from the base's apt
#                                       mirror, for deploy/compose-replicas.yaml
# (each also tagged :latest, unless --tag). IMAGE_PREFIX defaults to "drover".
#
# Why debootstrap: no base image can be pulled here, and the binaries link glibc
# dynamically. A minbase rootfs from Debian's own packages gives a small, ordinary Debian
# userland (bash, passwd, ca-certificates, git) that is rebuilt offline from the local apt mirror.
#
# Usage: bash deploy/docker/build-images.sh [--profile release|dev] [--no-build] [--tag TAG]
#                                           [--base-only] [--rebuild-base] [--postgres]
#   --profile       cargo profile of the binaries (default release, from target/release;
#                   dev reads target/debug: what CI builds anyway, stripped of debug info)
#   --no-build      use the binaries already built for that profile
#   --tag TAG       tag the application images TAG only (not VERSION and latest)
#   --base-only     only make the base image
#   --rebuild-base  re-run debootstrap even if the base image exists
#   --postgres      also make the PostgreSQL image (controller replicas' demo)
# Needs root for debootstrap (installs it with apt-get if missing). Mirror override:
# DEBIAN_MIRROR=URL.
set -euo pipefail

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
cd "$repo"
prefix="${IMAGE_PREFIX:-drover}"
suite=bookworm
base="$prefix/base:$suite"
build=1
base_only=0
rebuild_base=0
postgres=0
profile=release
tag=""
while [ $# -gt 0 ]; do
    case "$1" in
    --no-build) build=0 ;;
    --profile)
        shift
        case "${1:-}" in
        release | dev) profile="$1" ;;
        *) echo "build-images.sh: --profile must be release or dev, not '${1:-}'" >&2 && exit 2 ;;
        esac
        ;;
    --tag)
        shift
        [[ "${1:-}" =~ ^[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}$ ]] ||
            { echo "build-images.sh: --tag needs a Docker tag, not '${1:-}'" >&2 && exit 2; }
        tag="$1"
        ;;
    --base-only) base_only=1 ;;
    --rebuild-base) rebuild_base=1 ;;
    --postgres) postgres=1 ;;
    -h | --help) sed -n '2,27p' "$0" && exit 0 ;;
    *) echo "build-images.sh: unknown argument '$1' (see --help)" >&2 && exit 2 ;;
    esac
    shift
done
say() { printf 'build-images.sh: %s\n' "$*" >&2; }
die() { say "error: $*" && exit 1; }

# The first Debian archive URI in this machine's apt sources (deb822 or one-line format),
# skipping the security archive.
debian_mirror() {
    local f
    for f in /etc/apt/sources.list.d/*.sources; do
        [ -f "$f" ] || continue
        awk '/^URIs:/ { for (i = 2; i <= NF; i++) print $i }' "$f"
    done
    for f in /etc/apt/sources.list /etc/apt/sources.list.d/*.list; do
        [ -f "$f" ] || continue
        awk '$1 == "deb" { for (i = 2; i <= NF; i++) if ($i ~ /^[a-z]+:\/\//) { print $i; break } }' "$f"
    done
}

# --- base image ------------------------------------------------------------------------------
# What the base holds besides minbase: CA roots, and git, which the agent runs to fetch a
# job's sources. The list is recorded in a label; a base made with another list is remade.
base_packages=ca-certificates,git
base_label=com.drover.base.packages
have_packages="$(docker image inspect -f "{{index .Config.Labels \"$base_label\"}}" "$base" 2>/dev/null || true)"
if [ "$rebuild_base" = 0 ] && [ "$have_packages" = "$base_packages" ]; then
    say "base image $base exists (use --rebuild-base to remake it)"
else
    [ "$rebuild_base" = 1 ] || ! docker image inspect "$base" >/dev/null 2>&1 ||
        say "base image $base has packages '$have_packages', not '$base_packages': remaking it"
    mirror="${DEBIAN_MIRROR:-$(debian_mirror | grep -v -- '-security' | head -n 1)}"
    [ -n "$mirror" ] || die "no Debian mirror in /etc/apt/sources.list*; set DEBIAN_MIRROR=URL"
    [ "$(id -u)" = 0 ] || die "debootstrap needs root"
    if ! command -v debootstrap >/dev/null; then
        say "installing debootstrap (apt-get)"
        DEBIAN_FRONTEND=noninteractive apt-get install -y -q debootstrap >&2
    fi
    rootfs="$(mktemp -d)"
    trap 'rm -rf "$rootfs"' EXIT
    say "debootstrap --variant=minbase $suite from the apt mirror $mirror (a minute or two)"
    debootstrap --variant=minbase --include="$base_packages" "$suite" "$rootfs" "$mirror" \
        >"$rootfs.log" 2>&1 || {
        tail -n 20 "$rootfs.log" >&2
        die "debootstrap failed (log above)"
    }
    rm -f "$rootfs.log"
    # Trim what a container never uses; keep dpkg's database (the package tests need it).
    rm -rf "$rootfs"/var/cache/apt/archives/*.deb "$rootfs"/var/lib/apt/lists/* \
        "$rootfs"/usr/share/doc/* "$rootfs"/usr/share/man/* "$rootfs"/usr/share/locale/*
    tar --numeric-owner --sort=name -C "$rootfs" -c . |
        docker import --change 'CMD ["/bin/bash"]' --change "LABEL $base_label=$base_packages" \
            - "$base" >/dev/null
    rm -rf "$rootfs"
    trap - EXIT
    say "made $base ($(docker image inspect -f '{{.Size}}' "$base" | awk '{ printf "%d MB", $1 / 1e6 }'))"
fi
[ "$base_only" = 1 ] && exit 0

# --- application images ----------------------------------------------------------------------
# shellcheck source=deploy/workspace-version.sh
. deploy/workspace-version.sh
version="$(workspace_version)"
# cargo's output dir of a profile: `dev` builds land in `debug`.
bin_dir="target/$profile"
if [ "$profile" = dev ]; then
    bin_dir=target/debug
    command -v strip >/dev/null || die "strip is missing (apt-get install binutils)"
fi
if [ "$build" = 1 ]; then
    # One cargo command for the three, as deploy/demo.sh builds them: the same package set
    # unifies the same features, so binaries the demo built are reused as they are.
    say "building $profile binaries (drover, drover-agent, fake-gitlab)"
    nice -n 10 cargo build --profile "$profile" --locked \
        -p drover-controller -p drover-agent -p drover-tests \
        --bin drover --bin drover-agent --bin fake-gitlab >&2
fi
refs=("$prefix/NAME:$version" "$prefix/NAME:latest") # NAME: the image's name
[ -n "$tag" ] && refs=("$prefix/NAME:$tag")

# build_image NAME DOCKERFILE BINARY... : a context holding only the Dockerfile and binaries
# (target/ is gigabytes; never send it to the daemon).
build_image() {
    local name="$1" dockerfile="$2" ctx b ref tags=()
    shift 2
    for ref in "${refs[@]}"; do tags+=(-t "${ref//NAME/$name}"); done
    ctx="$(mktemp -d)"
    for b in "$@"; do
        [ -x "$bin_dir/$b" ] || die "missing $bin_dir/$b (build it first)"
        if [ "$profile" = dev ]; then
            # Dev binaries carry hundreds of MB of debug info no container needs.
            strip --strip-debug -o "$ctx/$b" "$bin_dir/$b" || die "strip of $bin_dir/$b failed"
        else
            cp "$bin_dir/$b" "$ctx/"
        fi
    done
    cp "deploy/docker/$dockerfile" "$ctx/Dockerfile"
    docker build -q --build-arg "BASE=$base" "${tags[@]}" "$ctx" >/dev/null || {
        rm -rf "$ctx"
        die "docker build of $prefix/$name failed"
    }
    rm -rf "$ctx"
    say "made ${refs[*]//NAME/$name} ($profile binaries)"
}
build_image controller controller.Dockerfile drover
build_image agent agent.Dockerfile drover-agent
if [ -x "$bin_dir/fake-gitlab" ]; then
    build_image fake-gitlab fake-gitlab.Dockerfile fake-gitlab
else
    say "no $bin_dir/fake-gitlab yet: skipping the fake-gitlab image (needed by the demo)"
fi
if [ "$postgres" = 1 ]; then
    build_image postgres postgres.Dockerfile
fi
