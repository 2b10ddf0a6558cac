#!/usr/bin/env bash
# Tests the Helm chart deploy/helm/drover.
# - With helm on PATH: `helm lint` and `helm template`, and the rendering must match the
#   one of render.py (so the checks below hold for what helm really produces).
# - Always: render.py (the chart's Go-template subset, see its doc) renders the chart with
#   default values and with overrides; every document must parse as YAML, pass
#   kubernetes-validate (Kubernetes' OpenAPI schemas, from PyPI) and have the key fields
#   checked in check.py (StatefulSet + volumeClaimTemplate, Service ports, ConfigMap/Secret
#   wired through envFrom, non-root, probes on /healthz; replicas > 1 with the shared key
#   file mounted, and refused without the database URL or the key).
# Installs pyyaml and kubernetes-validate into a venv under target/ when missing.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(cd "$here/../.." && pwd)"
chart="$here/drover"
venv="$repo/target/helm-test-venv"
if [ ! -x "$venv/bin/kubernetes-validate" ]; then
    echo "test.sh: installing pyyaml and kubernetes-validate into $venv (pip)" >&2
    python3 -m venv "$venv"
    "$venv/bin/pip" install -q pyyaml kubernetes-validate
fi
py="$venv/bin/python3"
out="$(mktemp -d)"
trap 'rm -rf "$out"' EXIT

"$py" "$here/render.py" "$chart" >"$out/default.yaml"
"$py" "$here/render.py" "$chart" --name edge --namespace fleet \
    --set persistence.storageClassName=fast --set persistence.size=5Gi \
    --set secret.databaseUrl=postgres://drover@db/drover --set secret.httpToken=t0ken \
    --set service.type=LoadBalancer \
    --set image.tag=9.9.9 >"$out/custom.yaml"
"$py" "$here/render.py" "$chart" --notes >"$out/NOTES.txt"
"$py" "$here/render.py" "$chart" --name ha --set replicas=3 \
    --set secret.databaseUrl=postgres://drover@db/drover --set secret.secretsKey=a2V5 \
    --set secret.httpToken=t0ken >"$out/replicas.yaml"
# Several replicas without the database URL (or the shared key) are refused, saying why.
for missing in "secret.secretsKey=a2V5" "secret.databaseUrl=postgres://drover@db/drover"; do
    if "$py" "$here/render.py" "$chart" --set replicas=2 --set "$missing" \
        >/dev/null 2>"$out/refused.txt"; then
        echo "test.sh: replicas=2 with only $missing rendered; it must be refused" >&2 && exit 1
    fi
    grep -q "replicas > 1 needs secret\." "$out/refused.txt" ||
        { echo "test.sh: unexpected refusal: $(cat "$out/refused.txt")" >&2 && exit 1; }
done

"$py" "$here/check.py" "$out/default.yaml" "$out/custom.yaml" "$out/NOTES.txt" "$out/replicas.yaml"

for f in default custom replicas; do
    "$venv/bin/kubernetes-validate" --strict --quiet "$out/$f.yaml" ||
        { echo "test.sh: kubernetes-validate rejected the $f rendering" >&2 && exit 1; }
done
echo "test.sh: kubernetes-validate: every rendering valid" >&2

if command -v helm >/dev/null; then
    helm lint --strict "$chart"
    helm template drover "$chart" >"$out/helm.yaml"
    for missing in "secret.secretsKey=a2V5" "secret.databaseUrl=postgres://drover@db/drover"; do
        if helm template drover "$chart" --set replicas=2 --set "$missing" >/dev/null 2>&1; then
            echo "test.sh: helm rendered replicas=2 with only $missing" >&2 && exit 1
        fi
    done
    "$py" - "$out/helm.yaml" "$out/default.yaml" <<'PY'
import sys, yaml
load = lambda p: [d for d in yaml.safe_load_all(open(p)) if d]
assert load(sys.argv[1]) == load(sys.argv[2]), "helm template and render.py differ"
PY
    echo "test.sh: helm lint clean; helm template matches render.py" >&2
else
    echo "test.sh: helm not installed: skipped helm lint (render.py + schema checks only)" >&2
fi
echo "test.sh: chart OK" >&2
