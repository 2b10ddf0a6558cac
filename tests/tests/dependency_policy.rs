//! Dependency policy: one TLS stack (rustls on ring). OpenSSL, aws-lc, BoringSSL, native-tls
//! and a second semver-incompatible rustls are kept out of the resolved graph (every
//! platform, dev and build dependencies included), each refusal naming the path from a
//! workspace crate that pulls the package in.

use std::collections::{BTreeMap, HashMap, VecDeque};

use serde_json::Value;

/// Package names refused outright, by prefix.
const BANNED_PREFIXES: &[&str] = &[
    "openssl",
    "aws-lc",
    "boring",
    "native-tls",
    "tokio-native-tls",
    "hyper-tls",
    "s2n-tls",
];

/// Names under a banned prefix that are allowed: `openssl-probe` only looks for the system's
/// certificate directories (used by `rustls-native-certs`) and links nothing.
const ALLOWED: &[&str] = &["openssl-probe"];

/// Crates of which one semver-compatible line only may be resolved.
const SINGLE_LINE: &[&str] = &["rustls", "ring"];

/// `1.2.3` → `1`; `0.23.4` → `0.23` (cargo's compatibility rule).
fn semver_line(version: &str) -> String {
    let mut parts = version.split('.');
    let major = parts.next().unwrap_or_default();
    match major {
        "0" => format!("0.{}", parts.next().unwrap_or_default()),
        m => m.to_string(),
    }
}

/// The refusals for `cargo metadata --format-version 1` output; empty when the graph is
/// clean.
fn violations(metadata: &Value) -> Vec<String> {
    let packages: HashMap<&str, (&str, &str)> = metadata["packages"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|p| {
            Some((
                p["id"].as_str()?,
                (p["name"].as_str()?, p["version"].as_str()?),
            ))
        })
        .collect();
    let edges: HashMap<&str, Vec<&str>> = metadata["resolve"]["nodes"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|n| {
            let deps = n["deps"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|d| d["pkg"].as_str())
                .collect();
            Some((n["id"].as_str()?, deps))
        })
        .collect();
    let roots: Vec<&str> = metadata["workspace_members"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
        .collect();

    // Breadth-first from the workspace: the shortest path to every resolved package.
    let mut parent: HashMap<&str, Option<&str>> = roots.iter().map(|r| (*r, None)).collect();
    let mut queue: VecDeque<&str> = roots.iter().copied().collect();
    while let Some(id) = queue.pop_front() {
        for dep in edges.get(id).into_iter().flatten() {
            if !parent.contains_key(dep) {
                parent.insert(dep, Some(id));
                queue.push_back(dep);
            }
        }
    }
    let label = |id: &str| match packages.get(id) {
        Some((name, version)) => format!("{name} {version}"),
        None => id.to_string(),
    };
    let path_to = |id: &str| {
        let mut chain = vec![label(id)];
        let mut at = id;
        while let Some(Some(up)) = parent.get(at) {
            chain.push(label(up));
            at = up;
        }
        chain.reverse();
        chain.join(" -> ")
    };

    let mut reached: Vec<&str> = parent.keys().copied().collect();
    reached.sort_by_key(|id| label(id));
    let mut out = Vec::new();
    let mut lines: BTreeMap<&str, BTreeMap<String, &str>> = BTreeMap::new();
    for id in reached {
        let Some((name, version)) = packages.get(id) else {
            continue;
        };
        if BANNED_PREFIXES.iter().any(|p| name.starts_with(p)) && !ALLOWED.contains(name) {
            out.push(format!(
                "{name} {version} is refused (a second TLS/crypto stack): {}",
                path_to(id)
            ));
        }
        if SINGLE_LINE.contains(name) {
            lines
                .entry(name)
                .or_default()
                .entry(semver_line(version))
                .or_insert(id);
        }
    }
    for (name, by_line) in lines {
        if by_line.len() > 1 {
            let paths: Vec<String> = by_line.values().map(|id| path_to(id)).collect();
            out.push(format!(
                "{name} is resolved in {} incompatible versions: {}",
                by_line.len(),
                paths.join("; ")
            ));
        }
    }
    out
}

#[test]
fn resolved_graph_has_one_tls_stack() {
    let out = std::process::Command::new(env!("CARGO"))
        .args(["metadata", "--locked", "--format-version", "1"])
        .arg("--manifest-path")
        .arg(concat!(env!("CARGO_MANIFEST_DIR"), "/../Cargo.toml"))
        .output()
        .expect("run cargo metadata");
    assert!(
        out.status.success(),
        "cargo metadata failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let metadata: Value = serde_json::from_slice(&out.stdout).expect("cargo metadata JSON");
    assert!(
        metadata["resolve"]["nodes"]
            .as_array()
            .is_some_and(|n| n.len() > 100),
        "cargo metadata resolved no graph"
    );
    let found = violations(&metadata);
    assert!(found.is_empty(), "dependency policy:\n{}", found.join("\n"));
}

/// The check itself: a graph that pulls OpenSSL through native-tls, and two rustls lines,
/// is refused with the paths that pull them in; `openssl-probe` is allowed.
#[test]
fn policy_refuses_openssl_and_a_second_rustls() {
    let pkg = |name: &str, version: &str| serde_json::json!({"id": format!("{name}@{version}"), "name": name, "version": version});
    let node = |name: &str, deps: &[&str]| {
        let deps: Vec<Value> = deps.iter().map(|d| serde_json::json!({"pkg": d})).collect();
        serde_json::json!({"id": name, "deps": deps})
    };
    let metadata = serde_json::json!({
        "workspace_members": ["app@0.1.0"],
        "packages": [
            pkg("app", "0.1.0"), pkg("reqwest", "0.12.0"), pkg("native-tls", "0.2.0"),
            pkg("openssl-sys", "0.9.0"), pkg("openssl-probe", "0.1.0"),
            pkg("rustls", "0.23.1"), pkg("rustls", "0.21.0"), pkg("old", "1.0.0"),
        ],
        "resolve": {"nodes": [
            node("app@0.1.0", &["reqwest@0.12.0", "rustls@0.23.1", "old@1.0.0"]),
            node("reqwest@0.12.0", &["native-tls@0.2.0"]),
            node("native-tls@0.2.0", &["openssl-sys@0.9.0", "openssl-probe@0.1.0"]),
            node("old@1.0.0", &["rustls@0.21.0"]),
        ]},
    });
    let found = violations(&metadata);
    assert_eq!(found.len(), 3, "{found:#?}");
    assert_eq!(
        found[0],
        "native-tls 0.2.0 is refused (a second TLS/crypto stack): app 0.1.0 -> reqwest 0.12.0 -> native-tls 0.2.0"
    );
    assert!(
        found[1].starts_with("openssl-sys 0.9.0 is refused")
            && found[1].ends_with("native-tls 0.2.0 -> openssl-sys 0.9.0"),
        "{}",
        found[1]
    );
    assert!(
        found[2].starts_with("rustls is resolved in 2 incompatible versions")
            && found[2].contains("app 0.1.0 -> old 1.0.0 -> rustls 0.21.0")
            && found[2].contains("app 0.1.0 -> rustls 0.23.1"),
        "{}",
        found[2]
    );
}
