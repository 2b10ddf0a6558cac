#!/usr/bin/env bash
# ARM64 check: cross-builds drover-agent for aarch64-unknown-linux-gnu and runs it, and the
# agent's unit tests, under qemu-aarch64-static.
#   1. installs what is missing (as root): rustup target, gcc-aarch64-linux-gnu (the linker
#      named in .cargo/config.toml), libc6-dev-arm64-cross, qemu-user-static
#   2. cargo test --no-run -p drover-agent --target aarch64-unknown-linux-gnu (debug
#      profile): the unit tests and the binary in one build (a separate `cargo build`
#      would compile the dependencies a second time, without the dev-dependencies' features)
#   3. smoke under qemu: `drover-agent --version`, `--help`, `check --config` on a valid
#      and an invalid file (the error must name file and line), and `run --config` on a
#      missing file (must fail naming it)
#   4. cargo test -p drover-agent --target aarch64-unknown-linux-gnu with qemu as runner.
#      Docker is made unreachable (DOCKER_HOST points nowhere), so Docker tests skip and
#      say why: they run natively on x86_64 and on real ARM64 boxes.
# Prints the time of each step. Usage: bash tests/cross-arm64.sh
set -euo pipefail
cd "$(dirname "$0")/.."
target=aarch64-unknown-linux-gnu
sysroot=/usr/aarch64-linux-gnu

say() { printf 'cross-arm64.sh: %s\n' "$*" >&2; }
die() { say "FAILED: $*" && exit 1; }
step_start=0
step() {
    step_start=$SECONDS
    say "$*"
}
took() { say "  took $((SECONDS - step_start)) s"; }

need=()
command -v aarch64-linux-gnu-gcc >/dev/null || need+=(gcc-aarch64-linux-gnu)
[ -e "$sysroot/lib/libc.so.6" ] || need+=(libc6-dev-arm64-cross)
command -v qemu-aarch64-static >/dev/null || need+=(qemu-user-static)
if [ ${#need[@]} -gt 0 ]; then
    [ "$(id -u)" = 0 ] || die "missing ${need[*]}: run as root or apt-get install -y ${need[*]}"
    say "installing ${need[*]} (apt-get)"
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q "${need[@]}" >&2
fi
if ! rustup target list --installed | grep -qx "$target"; then
    say "installing rust target $target (rustup)"
    rustup target add "$target" >&2
fi
qemu=(qemu-aarch64-static -L "$sysroot")
export CARGO_TARGET_AARCH64_UNKNOWN_LINUX_GNU_RUNNER="qemu-aarch64-static -L $sysroot"

total_start=$SECONDS
step "cross-building drover-agent for $target"
nice -n 10 cargo test --no-run --locked -p drover-agent --target "$target" >&2
took
bin="target/$target/debug/drover-agent"
readelf -h "$bin" | grep -q AArch64 || die "$bin is not an AArch64 binary"

step "smoke run under qemu"
version="$("${qemu[@]}" "$bin" --version)"
[[ "$version" =~ ^drover-agent\ [0-9] ]] || die "--version printed '$version'"
"${qemu[@]}" "$bin" --help | grep -q enroll || die "--help lacks enroll"
missing="/nonexistent/drover-cross-test/config.toml"
if out="$("${qemu[@]}" "$bin" run --config "$missing" 2>&1)"; then
    die "run --config $missing succeeded"
fi
[[ "$out" == *"$missing"* ]] || die "error for a missing config does not name it: $out"
cfg_dir="$(mktemp -d)"
trap 'rm -rf "$cfg_dir"' EXIT
cat >"$cfg_dir/good.toml" <<'TOML'
concurrent = 2
[[runners]]
  name = "edge-arm64"
  url = "https://gitlab.example.com"
  token = "glrt-example"
  executor = "docker"
  [runners.docker]
    image = "alpine:3.20"
    pull_policy = ["if-not-present"]
TOML
out="$("${qemu[@]}" "$bin" check --config "$cfg_dir/good.toml" 2>&1)" || die "check refused a valid config: $out"
[[ "$out" == *"valid,"* ]] || die "check printed '$out'"
printf '[[runners]]\n  name = "x"\n  executor = "shell"\n' >"$cfg_dir/bad.toml"
if out="$("${qemu[@]}" "$bin" check --config "$cfg_dir/bad.toml" 2>&1)"; then
    die "check accepted an invalid config"
fi
[[ "$out" == *"$cfg_dir/bad.toml:"* ]] || die "check error does not name file and line: $out"
say "  $version; --help and config validation OK"
took

step "agent unit tests under qemu (Docker made unreachable: its tests skip)"
DOCKER_HOST=unix:///nonexistent/drover-cross-test/docker.sock \
    nice -n 10 cargo test --locked -p drover-agent --target "$target" >&2
took
say "all ARM64 checks passed in $((SECONDS - total_start)) s"
