#!/usr/bin/env python3
"""Checks the key fields of the Drover chart's renderings (called by test.sh).

Usage: check.py DEFAULT_YAML CUSTOM_YAML NOTES_TXT REPLICAS_YAML
DEFAULT_YAML is rendered with default values and release `drover` in `default`;
CUSTOM_YAML with release `edge` in `fleet` and the overrides listed in test.sh;
REPLICAS_YAML with release `ha`, replicas=3, a database URL and a key.
"""

import sys

import yaml


def docs(path):
    out = {}
    for d in yaml.safe_load_all(open(path)):
        if not d:
            continue
        kind = d["kind"]
        if kind in out:
            raise AssertionError(f"{path}: two {kind} documents")
        out[kind] = d
    return out


def check(cond, what):
    if not cond:
        raise AssertionError(what)


def check_rendering(path, release, namespace, expect):
    d = docs(path)
    check(
        set(d) == {"ConfigMap", "Secret", "Service", "StatefulSet"},
        f"{path}: kinds {sorted(d)}",
    )
    for kind, doc in d.items():
        check(doc["metadata"]["name"] == release, f"{path}: {kind} name")
        check(doc["metadata"]["namespace"] == namespace, f"{path}: {kind} namespace")

    sts = d["StatefulSet"]["spec"]
    pod = sts["template"]["spec"]
    c = pod["containers"][0]
    labels = sts["template"]["metadata"]["labels"]
    check(sts["selector"]["matchLabels"].items() <= labels.items(), f"{path}: selector matches pod")
    check(sts["serviceName"] == release, f"{path}: serviceName")
    check(c["image"] == f"drover/controller:{expect['tag']}", f"{path}: image {c['image']}")
    check(pod["securityContext"]["runAsNonRoot"] is True, f"{path}: runAsNonRoot")
    check(pod["securityContext"]["runAsUser"] != 0, f"{path}: runAsUser")
    check(c["securityContext"]["allowPrivilegeEscalation"] is False, f"{path}: privilege escalation")
    cmd = " ".join(c["command"] + c["args"])
    for part in ("drover serve", "--data-dir /var/lib/drover", "--listen 0.0.0.0:7443",
                 "--http-listen 0.0.0.0:7080"):
        check(part in cmd, f"{path}: command lacks {part!r}: {cmd}")
    ports = {p["name"]: p["containerPort"] for p in c["ports"]}
    check(ports == {"grpc": 7443, "http": 7080}, f"{path}: container ports {ports}")
    for probe in ("readinessProbe", "livenessProbe"):
        check(c[probe]["httpGet"] == {"path": "/healthz", "port": "http"}, f"{path}: {probe}")
    refs = {(next(iter(e)), next(iter(e.values()))["name"]) for e in c["envFrom"]}
    check(refs == {("configMapRef", release), ("secretRef", release)}, f"{path}: envFrom {refs}")

    mounts = {m["name"]: m["mountPath"] for m in c["volumeMounts"]}
    check(mounts.get("data") == "/var/lib/drover", f"{path}: data mount {mounts}")
    (vct,) = sts["volumeClaimTemplates"]
    check(vct["metadata"]["name"] == "data", f"{path}: volumeClaimTemplate name")
    check(vct["spec"]["resources"]["requests"]["storage"] == expect["size"], f"{path}: size")
    check(vct["spec"].get("storageClassName") == expect["storage_class"], f"{path}: storageClassName")

    svc = d["Service"]["spec"]
    check(svc["type"] == expect["service_type"], f"{path}: service type")
    check(svc["selector"].items() <= labels.items(), f"{path}: service selects the pods")
    sports = {p["name"]: (p["port"], p["targetPort"]) for p in svc["ports"]}
    check(sports == {"grpc": (7443, "grpc"), "http": (7080, "http")}, f"{path}: service ports {sports}")

    check(d["ConfigMap"]["data"]["DROVER_LOG"] == "info", f"{path}: configmap DROVER_LOG")
    secret = d["Secret"].get("stringData") or {}
    check(secret.get("DROVER_DATABASE_URL") == expect["db"], f"{path}: secret {sorted(secret)}")


def check_replicas(path, release):
    """Several replicas on PostgreSQL: the count, and the key file every replica shares."""
    d = docs(path)
    sts = d["StatefulSet"]["spec"]
    check(sts["replicas"] == 3, f"{path}: replicas {sts['replicas']}")
    pod = sts["template"]["spec"]
    c = pod["containers"][0]
    mounts = {m["name"]: m["mountPath"] for m in c["volumeMounts"]}
    check(mounts.get("secrets-key") == "/etc/drover/secrets-key", f"{path}: key mount {mounts}")
    vols = {v["name"]: v for v in pod["volumes"]}
    sec = vols["secrets-key"]["secret"]
    check(sec["secretName"] == release and sec["items"] == [{"key": "kek.key", "path": "kek.key"}],
          f"{path}: key volume {sec}")
    check(d["ConfigMap"]["data"].get("DROVER_SECRETS_KEY_FILE") == "/etc/drover/secrets-key/kek.key",
          f"{path}: DROVER_SECRETS_KEY_FILE")
    check(d["Secret"]["data"]["kek.key"] == "a2V5", f"{path}: secret data")
    check("kek.key" not in (d["Secret"].get("stringData") or {}), f"{path}: key not in env")


def main():
    default, custom, notes, replicas = sys.argv[1:5]
    check_replicas(replicas, "ha")
    check_rendering(default, "drover", "default", {
        "tag": "0.1.0", "size": "1Gi", "storage_class": None, "service_type": "ClusterIP",
        "db": None,
    })
    check_rendering(custom, "edge", "fleet", {
        "tag": "9.9.9", "size": "5Gi", "storage_class": "fast", "service_type": "LoadBalancer",
        "db": "postgres://drover@db/drover",
    })
    text = open(notes).read()
    check("{{" not in text and "drover-0" in text and "7443" in text, "NOTES.txt rendering")
    print("check.py: key fields OK in every rendering and NOTES.txt", file=sys.stderr)


if __name__ == "__main__":
    try:
        main()
    except AssertionError as e:
        print(f"check.py: FAILED: {e}", file=sys.stderr)
        sys.exit(1)
