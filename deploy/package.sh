#!/usr/bin/env bash
# Builds the Debian packages into target/packages/:
#   drover_<version>_amd64.deb        controller (`drover`, drover.service)
#   drover-agent_<version>_amd64.deb  agent (`drover-agent`, drover-agent.service)
#   drover-agent_<version>_arm64.deb  agent, cross-built for aarch64-unknown-linux-gnu
#
# Packages are staged as plain trees and built with `dpkg-deb --build` (no cargo-deb: it
# would cost a long extra compile and hides nothing we need). Version: the workspace
# Cargo.toml. Maintainer scripts: deploy/debian/<package>/.
#
# Usage: bash deploy/package.sh [--no-build] [--arch amd64|arm64|all] [--profile release|dev]
#   --no-build  package the binaries already in target/ (fails if one is missing)
#   --arch      which agent architectures to package (default: all)
#   --profile   cargo profile of the packaged binaries (default release; CI tests the
#               packaging itself with the dev binaries its tests already built)
# Run as root, it installs what it needs (rustup target, cross linker, dpkg-dev) and says so.
set -euo pipefail

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$repo"
build=1
arches=(amd64 arm64)
profile=release
while [ $# -gt 0 ]; do
    case "$1" in
    --no-build) build=0 ;;
    --arch)
        shift
        case "${1:-}" in
        amd64 | arm64) arches=("$1") ;;
        all) arches=(amd64 arm64) ;;
        *) echo "package.sh: --arch must be amd64, arm64 or all, not '${1:-}'" >&2 && exit 2 ;;
        esac
        ;;
    --profile)
        shift
        case "${1:-}" in
        release | dev) profile="$1" ;;
        *) echo "package.sh: --profile must be release or dev, not '${1:-}'" >&2 && exit 2 ;;
        esac
        ;;
    -h | --help) sed -n '2,17p' "$0" && exit 0 ;;
    *) echo "package.sh: unknown argument '$1' (see --help)" >&2 && exit 2 ;;
    esac
    shift
done

say() { printf 'package.sh: %s\n' "$*" >&2; }
die() { say "error: $*" && exit 1; }

# --- version -----------------------------------------------------------------------------
version="$(awk '
    /^\[/ { in_pkg = ($0 == "[workspace.package]") }
    in_pkg && $1 == "version" { gsub(/[" ]/, "", $3); print $3; exit }
' Cargo.toml)"
[[ "$version" =~ ^[0-9]+\.[0-9]+\.[0-9]+([.+~-][0-9A-Za-z.+~-]+)?$ ]] ||
    die "no usable version in Cargo.toml [workspace.package] (found '$version')"
# Debian sorts '~' before a release: 1.0.0-rc.1 becomes 1.0.0~rc.1.
deb_version="${version/-/\~}"

[ "$(uname -m)" = x86_64 ] || die "build host must be x86_64 (found $(uname -m))"
want_arm64=0
for a in "${arches[@]}"; do [ "$a" = arm64 ] && want_arm64=1; done

# --- tools -------------------------------------------------------------------------------
need_apt=()
command -v dpkg-deb >/dev/null || need_apt+=(dpkg)
command -v readelf >/dev/null || need_apt+=(binutils)
if [ "$build" = 1 ] && [ "$want_arm64" = 1 ]; then
    command -v aarch64-linux-gnu-gcc >/dev/null || need_apt+=(gcc-aarch64-linux-gnu libc6-dev-arm64-cross)
fi
if [ ${#need_apt[@]} -gt 0 ]; then
    [ "$(id -u)" = 0 ] || die "missing tools; run as root or: apt-get install -y ${need_apt[*]}"
    say "installing ${need_apt[*]} (apt-get)"
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q "${need_apt[@]}" >&2
fi
if [ "$build" = 1 ] && [ "$want_arm64" = 1 ] &&
    ! rustup target list --installed | grep -qx aarch64-unknown-linux-gnu; then
    say "installing rust target aarch64-unknown-linux-gnu (rustup)"
    rustup target add aarch64-unknown-linux-gnu >&2
fi

# --- build -------------------------------------------------------------------------------
# cargo's output dir of a profile: `dev` builds land in `debug`. Their large unstripped
# binaries are compressed fast (gzip -1): those packages only test the packaging.
out_dir="$profile"
compress=(-Zxz)
if [ "$profile" = dev ]; then
    out_dir=debug
    compress=(-Zgzip -z1)
fi
bin_dir() { # arch -> directory holding its binaries
    case "$1" in
    amd64) echo "target/$out_dir" ;;
    arm64) echo "target/aarch64-unknown-linux-gnu/$out_dir" ;;
    esac
}
if [ "$build" = 1 ]; then
    say "building $profile binaries for x86_64 (drover, drover-agent)"
    nice -n 10 cargo build --profile "$profile" --locked -p drover-controller -p drover-agent >&2
    if [ "$want_arm64" = 1 ]; then
        say "cross-building drover-agent for aarch64 (linker aarch64-linux-gnu-gcc, .cargo/config.toml)"
        nice -n 10 cargo build --profile "$profile" --locked -p drover-agent \
            --target aarch64-unknown-linux-gnu >&2
    fi
fi

# --- helpers -----------------------------------------------------------------------------
# Debian Depends for the shared libraries an ELF binary needs. Unknown libraries fail the
# build, so a new native dependency cannot slip into a package with a wrong Depends.
depends_of() {
    local bin="$1" libs glibc deps=()
    libs="$(readelf -d "$bin" | sed -n 's/.*(NEEDED).*\[\(.*\)\]/\1/p')"
    glibc="$(readelf -V "$bin" | grep -o 'GLIBC_[0-9][0-9.]*' | sed 's/GLIBC_//' | sort -uV | tail -n 1)"
    for lib in $libs; do
        case "$lib" in
        libc.so.6 | libm.so.6 | libpthread.so.0 | libdl.so.2 | librt.so.1 | ld-linux*) ;;
        libgcc_s.so.1) deps+=("libgcc-s1") ;;
        *) die "$bin needs $lib: add its Debian package to depends_of in deploy/package.sh" ;;
        esac
    done
    printf 'libc6 (>= %s)' "${glibc:-2.17}"
    for d in "${deps[@]}"; do printf ', %s' "$d"; done
}

# stage PACKAGE ARCH BINARY UNIT DEFAULTS DESCRIPTION DEPENDS EXTRA_CONTROL -> builds the .deb
# (DEPENDS: packages needed besides the binary's shared libraries and passwd)
stage() {
    local pkg="$1" arch="$2" bin="$3" unit="$4" defaults="$5" desc="$6" deps="$7" extra="$8"
    local root="target/packages/stage/${pkg}_${arch}" out
    out="target/packages/${pkg}_${version}_${arch}.deb"
    [ -x "$bin" ] || die "missing binary $bin (build first, or drop --no-build)"
    local elf_arch
    elf_arch="$(readelf -h "$bin" | awk -F: '/Machine:/ { gsub(/^ +/, "", $2); print $2 }')"
    case "$arch:$elf_arch" in
    amd64:*X86-64* | arm64:*AArch64*) ;;
    *) die "$bin is built for '$elf_arch', not $arch" ;;
    esac
    rm -rf "$root"
    install -d -m 0755 "$root/DEBIAN" "$root/usr/bin" "$root/usr/lib/systemd/system" \
        "$root/etc/default" "$root/usr/share/doc/$pkg"
    install -m 0755 "$bin" "$root/usr/bin/"
    install -m 0644 "deploy/systemd/$unit" "$root/usr/lib/systemd/system/$unit"
    install -m 0644 "deploy/systemd/$defaults.default" "$root/etc/default/$defaults"
    install -m 0644 "deploy/debian/copyright" "$root/usr/share/doc/$pkg/copyright"
    for script in postinst prerm postrm; do
        install -m 0755 "deploy/debian/$pkg/$script" "$root/DEBIAN/$script"
    done
    printf '/etc/default/%s\n' "$defaults" >"$root/DEBIAN/conffiles"
    chmod 0644 "$root/DEBIAN/conffiles"
    {
        printf 'Package: %s\n' "$pkg"
        printf 'Version: %s\n' "$deb_version"
        printf 'Architecture: %s\n' "$arch"
        printf 'Maintainer: Drover maintainers <drover@example.invalid>\n'
        printf 'Installed-Size: %s\n' "$(du -sk --exclude=DEBIAN "$root" | cut -f1)"
        printf 'Depends: %s, passwd%s\n' "$(depends_of "$bin")" "${deps:+, $deps}"
        [ -n "$extra" ] && printf '%s\n' "$extra"
        printf 'Section: admin\nPriority: optional\n'
        printf 'Description: %s\n' "$desc"
    } >"$root/DEBIAN/control"
    chmod 0644 "$root/DEBIAN/control"
    # Reproducible: file times clamp to the last commit.
    SOURCE_DATE_EPOCH="$(git log -1 --format=%ct 2>/dev/null || date +%s)" \
        dpkg-deb --root-owner-group "${compress[@]}" --build "$root" "$out" >/dev/null
    say "built $out ($(du -h "$out" | cut -f1))"
}

mkdir -p target/packages
stage drover amd64 "$(bin_dir amd64)/drover" drover.service drover \
    "Drover controller: fleet state, PKI, enrollment and the drover admin CLI
 Holds the desired state of a fleet of GitLab CI runners and pushes it to
 drover-agent on every box over gRPC with mutual TLS." "" ""
for arch in "${arches[@]}"; do
    stage drover-agent "$arch" "$(bin_dir "$arch")/drover-agent" drover-agent.service drover-agent \
        "Drover agent: GitLab CI runners with a native Docker executor
 Runs and supervises GitLab CI jobs in Docker on an edge box, configured by a
 Drover controller (or standalone from a gitlab-runner config.toml)." \
        "git, ca-certificates" "Recommends: docker.io | docker-ce"
done
rm -rf target/packages/stage
ls -l target/packages/*.deb >&2
