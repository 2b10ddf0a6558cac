#!/bin/sh
# Checks deploy/prometheus/alerts.yaml and deploy/grafana/drover-dashboard.json:
# - the YAML parses and every rule has alert, expr, labels.severity and a summary;
# - the dashboard is valid JSON and every panel query names a metric the agent exports
#   (or the controller's drover_*);
# - `promtool check rules` passes, when promtool is installed (Debian: `prometheus`).
# Needs python3 with PyYAML (`pip install pyyaml` or Debian `python3-yaml`).
set -eu
here=$(cd "$(dirname "$0")" && pwd)
rules="$here/alerts.yaml"
dashboard="$here/../grafana/drover-dashboard.json"

python3 - "$rules" "$dashboard" <<'PY'
import json, re, sys
import yaml

rules_path, dash_path = sys.argv[1], sys.argv[2]
with open(rules_path) as f:
    doc = yaml.safe_load(f)
errors = []
names = set()
groups = doc.get("groups") if isinstance(doc, dict) else None
if not groups:
    errors.append(f"{rules_path}: no groups")
for g in groups or []:
    for r in g.get("rules", []):
        name = r.get("alert", "?")
        if name in names:
            errors.append(f"{rules_path}: alert {name} defined twice")
        names.add(name)
        for key in ("alert", "expr"):
            if not r.get(key):
                errors.append(f"{rules_path}: rule {name}: missing {key}")
        if not (r.get("labels") or {}).get("severity"):
            errors.append(f"{rules_path}: rule {name}: missing labels.severity")
        if not (r.get("annotations") or {}).get("summary"):
            errors.append(f"{rules_path}: rule {name}: missing annotations.summary")

known = re.compile(r"\b(gitlab_runner_[a-z_]+|drover_[a-z0-9_]+)\b")
with open(dash_path) as f:
    dash = json.load(f)
exprs = []
def walk(panels):
    for p in panels:
        for t in p.get("targets", []):
            exprs.append((p.get("title", "?"), t.get("expr", "")))
        walk(p.get("panels", []))
walk(dash.get("panels", []))
if not exprs:
    errors.append(f"{dash_path}: no panel queries")
for title, e in exprs:
    if not known.search(e):
        errors.append(f"{dash_path}: panel {title!r}: query names no Drover metric: {e}")

if errors:
    print("\n".join(errors), file=sys.stderr)
    sys.exit(1)
print(f"ok: {len(names)} alert rules, {len(exprs)} dashboard queries")
PY

if command -v promtool >/dev/null 2>&1; then
    promtool check rules "$rules"
else
    echo "promtool not installed: skipped 'promtool check rules' (Debian package: prometheus)"
fi
