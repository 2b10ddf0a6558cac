#!/usr/bin/env python3
"""Renders the Drover chart's templates without helm, for tests where helm is not available.

Supports exactly the subset of Go templates the chart uses, and fails on anything else:
- `{{ .Values.a.b }}`, `{{ .Release.Name }}`, `{{ .Release.Namespace }}`, `{{ .Chart.X }}`
- pipes into `quote`, `nindent N`, `indent N`; `toYaml VALUE`
- `{{ if PIPELINE }} ... {{ else }} ... {{ end }}` (Go truthiness), with conditions
  `not .Values.a`, `gt (int .Values.a) N`
- `{{ fail "message" }}` (the rendering fails with the message, as helm's does)
- whitespace trimming with `{{-` and `-}}`

Usage: render.py CHART_DIR [--values FILE]... [--set a.b=value]... [--name NAME]
       [--namespace NS] [--notes]
Prints the manifests as one multi-document YAML stream (templates in name order, each
prefixed with `# Source: drover/templates/NAME`, like `helm template`), or with --notes
the rendered NOTES.txt.
"""

import argparse
import json
import pathlib
import re
import sys

import yaml

ACTION = re.compile(r"{{(-?)\s*(.*?)\s*(-?)}}", re.S)


class TemplateError(Exception):
    pass


def merge(base, over):
    for k, v in over.items():
        if isinstance(v, dict) and isinstance(base.get(k), dict):
            merge(base[k], v)
        else:
            base[k] = v
    return base


def set_value(values, assignment):
    key, sep, raw = assignment.partition("=")
    if not sep or not key:
        raise TemplateError(f"--set {assignment!r}: expected a.b=value")
    node = values
    parts = key.split(".")
    for p in parts[:-1]:
        node = node.setdefault(p, {})
    # helm --set: numbers and booleans are typed, the rest are strings
    node[parts[-1]] = yaml.safe_load(raw) if re.fullmatch(r"-?\d+|true|false", raw) else raw


def tokenize(text, where):
    """Splits into ('text', s) and ('action', expr) tokens, applying {{- and -}} trimming."""
    tokens, pos = [], 0
    for m in ACTION.finditer(text):
        tokens.append(["text", text[pos : m.start()]])
        if m.group(1):
            tokens[-1][1] = tokens[-1][1].rstrip()
        tokens.append(["action", m.group(2), bool(m.group(3))])
        pos = m.end()
    tokens.append(["text", text[pos:]])
    for i, t in enumerate(tokens):
        if t[0] == "action" and t[2]:
            tokens[i + 1][1] = tokens[i + 1][1].lstrip()
    if "{{" in "".join(t[1] for t in tokens if t[0] == "text"):
        raise TemplateError(f"{where}: unclosed '{{{{'")
    return [(t[0], t[1]) for t in tokens]


def parse(tokens, where):
    """Builds a tree: list of ('text', s) | ('expr', e) | ('if', cond, then, else)."""
    root = []
    stack = [(root, None)]
    for kind, val in tokens:
        body = stack[-1][0]
        if kind == "text":
            body.append(("text", val))
        elif val.startswith("if "):
            node = ["if", val[3:].strip(), [], []]
            body.append(node)
            stack.append((node[2], node))
        elif val == "else":
            if stack[-1][1] is None:
                raise TemplateError(f"{where}: 'else' without 'if'")
            stack[-1] = (stack[-1][1][3], stack[-1][1])
        elif val == "end":
            if stack[-1][1] is None:
                raise TemplateError(f"{where}: 'end' without 'if'")
            stack.pop()
        elif val.startswith("/*"):
            continue
        else:
            body.append(("expr", val))
    if len(stack) != 1:
        raise TemplateError(f"{where}: 'if' without 'end'")
    return root


def lookup(path, ctx, where):
    node = ctx
    for part in path.lstrip(".").split("."):
        if not isinstance(node, dict) or part not in node:
            if isinstance(node, dict):
                return None  # helm: a missing key renders as empty / false
            raise TemplateError(f"{where}: {path}: {part!r} is not a field")
        node = node[part]
    return node


def to_yaml(v):
    return yaml.safe_dump(v, default_flow_style=False, sort_keys=True).rstrip("\n")


def go_str(v):
    if v is None:
        return ""
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (dict, list)):
        return json.dumps(v)
    return str(v)


def evaluate(expr, ctx, where):
    failing = re.fullmatch(r'fail\s+("(?:[^"\\]|\\.)*")', expr)
    if failing:
        raise TemplateError(f"{where}: {json.loads(failing.group(1))}")
    greater = re.fullmatch(r"gt\s+\(int\s+(\.[\w.]+)\)\s+(\d+)", expr)
    if greater:
        v = lookup(greater.group(1), ctx, where)
        return int(v or 0) > int(greater.group(2))
    stages = [s.strip() for s in expr.split("|")]
    head = stages[0].split()
    if len(head) == 2 and head[0] == "not" and head[1].startswith(".") and len(stages) == 1:
        return not truthy(lookup(head[1], ctx, where))
    if len(head) == 1 and head[0].startswith("."):
        value = lookup(head[0], ctx, where)
    elif len(head) == 2 and head[0] == "toYaml" and head[1].startswith("."):
        value = to_yaml(lookup(head[1], ctx, where))
    else:
        raise TemplateError(f"{where}: unsupported expression {stages[0]!r}")
    for stage in stages[1:]:
        words = stage.split()
        if words == ["quote"]:
            value = json.dumps(go_str(value))
        elif len(words) == 2 and words[0] in ("nindent", "indent") and words[1].isdigit():
            pad = " " * int(words[1])
            value = "\n".join(pad + line for line in go_str(value).split("\n"))
            if words[0] == "nindent":
                value = "\n" + value
        else:
            raise TemplateError(f"{where}: unsupported pipeline stage {stage!r}")
    return value


def truthy(v):
    return v not in (None, False, 0, "", [], {})


def run(tree, ctx, where, out):
    for node in tree:
        if node[0] == "text":
            out.append(node[1])
        elif node[0] == "expr":
            out.append(go_str(evaluate(node[1], ctx, where)))
        else:
            branch = node[2] if truthy(evaluate(node[1], ctx, where)) else node[3]
            run(branch, ctx, where, out)


def render_file(path, ctx):
    where = f"templates/{path.name}"
    out = []
    run(parse(tokenize(path.read_text(), where), where), ctx, where, out)
    return "".join(out)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("chart")
    ap.add_argument("--values", action="append", default=[])
    ap.add_argument("--set", action="append", default=[])
    ap.add_argument("--name", default="drover")
    ap.add_argument("--namespace", default="default")
    ap.add_argument("--notes", action="store_true")
    args = ap.parse_args()
    chart = pathlib.Path(args.chart)
    try:
        meta = yaml.safe_load((chart / "Chart.yaml").read_text())
        values = yaml.safe_load((chart / "values.yaml").read_text()) or {}
        for f in args.values:
            merge(values, yaml.safe_load(pathlib.Path(f).read_text()) or {})
        for s in args.set:
            set_value(values, s)
        ctx = {
            "Values": values,
            "Release": {"Name": args.name, "Namespace": args.namespace},
            "Chart": {
                "Name": meta["name"],
                "Version": meta["version"],
                "AppVersion": meta.get("appVersion", ""),
            },
        }
        if args.notes:
            sys.stdout.write(render_file(chart / "templates" / "NOTES.txt", ctx))
            return 0
        for t in sorted((chart / "templates").glob("*.yaml")):
            text = render_file(t, ctx)
            sys.stdout.write(f"---\n# Source: {meta['name']}/templates/{t.name}\n{text}")
            if not text.endswith("\n"):
                sys.stdout.write("\n")
    except (TemplateError, OSError, yaml.YAMLError, KeyError) as e:
        print(f"render.py: error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
