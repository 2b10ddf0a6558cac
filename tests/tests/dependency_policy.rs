//! Dependency policy: one TLS stack (rustls on ring). OpenSSL, aws-lc, BoringSSL, native-tls
//! and a second semver-incompatible rustls are kept out of the resolved graph (every
//! platform, dev and build dependencies included), each refusal naming the path from a
//! workspace crate that pulls the package in.
//!
//! And the crate boundaries: the controller (and the GitLab client it uses) depend on neither
//! the agent nor Docker nor the archive code, checked over normal dependencies (what ends up
//! in the binary; dev and build dependencies are not followed).

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

/// What a set of roots reaches in the resolved graph of `cargo metadata --format-version 1`,
/// walked breadth-first so each package keeps its shortest path from a root.
struct Reach<'a> {
    /// Package id → (name, version).
    packages: HashMap<&'a str, (&'a str, &'a str)>,
    /// Package id → the package it was first reached from (`None` for a root).
    parent: HashMap<&'a str, Option<&'a str>>,
}

impl<'a> Reach<'a> {
    /// Everything `roots` reach; with `normal_only`, through normal dependencies only (what
    /// is linked into a crate; dev and build dependencies are not followed).
    fn new(metadata: &'a Value, roots: &[&'a str], normal_only: bool) -> Reach<'a> {
        let packages = packages(metadata);
        let is_normal = |d: &Value| {
            d["dep_kinds"]
                .as_array()
                .into_iter()
                .flatten()
                .any(|k| k["kind"].is_null())
        };
        let edges: HashMap<&str, Vec<&str>> = metadata["resolve"]["nodes"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|n| {
                let deps = n["deps"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter(|d| !normal_only || is_normal(d))
                    .filter_map(|d| d["pkg"].as_str())
                    .collect();
                Some((n["id"].as_str()?, deps))
            })
            .collect();
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
        Reach { packages, parent }
    }

    /// `name version`, or the id of a package `cargo metadata` did not describe.
    fn label(&self, id: &str) -> String {
        match self.packages.get(id) {
            Some((name, version)) => format!("{name} {version}"),
            None => id.to_string(),
        }
    }

    /// `root -> ... -> id`.
    fn path_to(&self, id: &str) -> String {
        let mut chain = vec![self.label(id)];
        let mut at = id;
        while let Some(Some(up)) = self.parent.get(at) {
            chain.push(self.label(up));
            at = up;
        }
        chain.reverse();
        chain.join(" -> ")
    }

    /// Every reached package as (id, name, version), sorted by name and version.
    fn reached(&self) -> Vec<(&'a str, &'a str, &'a str)> {
        let mut out: Vec<_> = self
            .parent
            .keys()
            .filter_map(|id| {
                let (name, version) = self.packages.get(id)?;
                Some((*id, *name, *version))
            })
            .collect();
        out.sort_by_key(|(id, _, _)| self.label(id));
        out
    }
}

/// Package id → (name, version).
fn packages(metadata: &Value) -> HashMap<&str, (&str, &str)> {
    metadata["packages"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|p| {
            Some((
                p["id"].as_str()?,
                (p["name"].as_str()?, p["version"].as_str()?),
            ))
        })
        .collect()
}

fn workspace_members(metadata: &Value) -> Vec<&str> {
    metadata["workspace_members"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
        .collect()
}

/// The refusals for `cargo metadata --format-version 1` output; empty when the graph is
/// clean.
fn violations(metadata: &Value) -> Vec<String> {
    let reach = Reach::new(metadata, &workspace_members(metadata), false);
    let mut out = Vec::new();
    let mut lines: BTreeMap<&str, BTreeMap<String, &str>> = BTreeMap::new();
    for (id, name, version) in reach.reached() {
        if BANNED_PREFIXES.iter().any(|p| name.starts_with(p)) && !ALLOWED.contains(&name) {
            out.push(format!(
                "{name} {version} is refused (a second TLS/crypto stack): {}",
                reach.path_to(id)
            ));
        }
        if SINGLE_LINE.contains(&name) {
            lines
                .entry(name)
                .or_default()
                .entry(semver_line(version))
                .or_insert(id);
        }
    }
    for (name, by_line) in lines {
        if by_line.len() > 1 {
            let paths: Vec<String> = by_line.values().map(|id| reach.path_to(id)).collect();
            out.push(format!(
                "{name} is resolved in {} incompatible versions: {}",
                by_line.len(),
                paths.join("; ")
            ));
        }
    }
    out
}

/// Workspace crates and the packages their resolved normal dependencies must not contain.
const KEPT_OUT: &[(&str, &[&str])] = &[
    ("drover-controller", &["drover-agent", "bollard", "zip"]),
    ("drover-gitlab", &["drover-agent", "bollard", "zip"]),
];

/// The packages of `banned` that workspace crate `root` reaches through normal dependencies
/// (any target platform), each with the path that pulls it in; a `root` missing from the
/// workspace is a refusal too, so a rename cannot make the check pass by finding nothing.
fn normal_dependency_violations(metadata: &Value, root: &str, banned: &[&str]) -> Vec<String> {
    let packages = packages(metadata);
    let Some(root_id) = workspace_members(metadata)
        .into_iter()
        .find(|id| packages.get(id).is_some_and(|(name, _)| *name == root))
    else {
        return vec![format!("{root} is not a workspace member")];
    };
    let reach = Reach::new(metadata, &[root_id], true);
    reach
        .reached()
        .into_iter()
        .filter(|(_, name, _)| banned.contains(name))
        .map(|(id, _, _)| {
            format!(
                "{root} must not depend on {}: {}",
                reach.label(id),
                reach.path_to(id)
            )
        })
        .collect()
}

fn cargo_metadata() -> Value {
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
    metadata
}

#[test]
fn resolved_graph_has_one_tls_stack() {
    let found = violations(&cargo_metadata());
    assert!(found.is_empty(), "dependency policy:\n{}", found.join("\n"));
}

#[test]
fn controller_depends_on_neither_the_agent_nor_docker() {
    let metadata = cargo_metadata();
    let found: Vec<String> = KEPT_OUT
        .iter()
        .flat_map(|(root, banned)| normal_dependency_violations(&metadata, root, banned))
        .collect();
    assert!(found.is_empty(), "crate boundaries:\n{}", found.join("\n"));
}

/// The boundary check itself: a normal path to a banned package is refused with that path;
/// the same package reached only as a dev or build dependency is not.
#[test]
fn boundary_check_follows_normal_dependencies_only() {
    let pkg = |name: &str| serde_json::json!({"id": format!("{name}@1.0.0"), "name": name, "version": "1.0.0"});
    let dep = |name: &str, kind: Value| serde_json::json!({"pkg": format!("{name}@1.0.0"), "dep_kinds": [{"kind": kind, "target": null}]});
    let metadata = serde_json::json!({
        "workspace_members": ["ctl@1.0.0", "agent@1.0.0"],
        "packages": [pkg("ctl"), pkg("client"), pkg("agent"), pkg("bollard"), pkg("zip"), pkg("testkit")],
        "resolve": {"nodes": [
            {"id": "ctl@1.0.0", "deps": [dep("client", Value::Null), dep("testkit", "dev".into())]},
            {"id": "client@1.0.0", "deps": [dep("agent", Value::Null)]},
            {"id": "agent@1.0.0", "deps": [dep("bollard", Value::Null)]},
            {"id": "testkit@1.0.0", "deps": [dep("zip", Value::Null)]},
        ]},
    });
    let found = normal_dependency_violations(&metadata, "ctl", &["agent", "bollard", "zip"]);
    assert_eq!(
        found,
        [
            "ctl must not depend on agent 1.0.0: ctl 1.0.0 -> client 1.0.0 -> agent 1.0.0",
            "ctl must not depend on bollard 1.0.0: ctl 1.0.0 -> client 1.0.0 -> agent 1.0.0 -> bollard 1.0.0",
        ]
    );
    assert_eq!(
        normal_dependency_violations(&metadata, "nope", &["zip"]),
        ["nope is not a workspace member"]
    );
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
