#!/usr/bin/env bash
# Checks the units with `systemd-analyze verify` and prints their `systemd-analyze security`
# exposure score. Works without a running systemd (e.g. in a container): the units are
# verified in a throwaway root holding the host's unit library and stand-in binaries.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
command -v systemd-analyze >/dev/null || {
    echo "verify.sh: systemd-analyze not found (apt-get install systemd)" >&2
    exit 1
}
root="$(mktemp -d)"
trap 'rm -rf "$root"' EXIT
mkdir -p "$root/usr/bin" "$root/etc/systemd/system" "$root/usr/lib/systemd"
cp -r /usr/lib/systemd/system "$root/usr/lib/systemd/"
for bin in drover drover-agent; do
    printf '#!/bin/sh\n' >"$root/usr/bin/$bin"
    chmod 0755 "$root/usr/bin/$bin"
done
cp "$here"/*.service "$root/etc/systemd/system/"
units=()
for f in "$here"/*.service; do units+=("/etc/systemd/system/$(basename "$f")"); done
systemd-analyze verify --root="$root" "${units[@]}"
# The agent stops gracefully: running jobs finish on `systemctl stop`, upgrades and reboots.
grep -qx 'KillSignal=SIGQUIT' "$here/drover-agent.service" || {
    echo "verify.sh: drover-agent.service must stop with KillSignal=SIGQUIT (graceful stop)" >&2
    exit 1
}
grep -qx 'TimeoutStopSec=1h' "$here/drover-agent.service" || {
    echo "verify.sh: drover-agent.service: TimeoutStopSec must leave a job time to finish (1h)" >&2
    exit 1
}
for u in "${units[@]}"; do
    systemd-analyze security --offline=yes --root="$root" "$u" | tail -n 1
done
echo "verify.sh: ${#units[@]} units verified"
