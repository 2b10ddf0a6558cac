//! Runner spec files on the controller: parsing with the shared parser
//! ([`drover_proto::spec::parse_with`], spec mode) plus the checks only a fleet needs
//! (unique, usable names), the per-runner diff `drover runner apply` prints, redaction, and
//! what an agent receives (`spec_json` without any token).

use std::collections::BTreeMap;

use drover_gitlab::RegisterOptions;
use drover_proto::spec::{CacheSecrets, ParseMode, RunnerConfig, SpecError, parse_with};
use secrecy::ExposeSecret;
use sha2::{Digest, Sha256};

/// A refused spec file: the shared parser's error, with file, line, column, key path and
/// value in its text.
pub type SpecRefusal = SpecError;

/// A parsed spec file.
#[derive(Debug, Clone)]
pub struct SpecFile {
    /// The runners, in file order.
    pub runners: Vec<RunnerConfig>,
    /// Ignored keys, one line each.
    pub warnings: Vec<String>,
}

/// Parses and validates a spec file. `selector` (from `runner import --selector`) is set on
/// every runner that has none.
pub fn parse_spec(
    text: &str,
    file: &str,
    selector: &BTreeMap<String, String>,
) -> Result<SpecFile, SpecRefusal> {
    let parsed = parse_with(text, file, ParseMode::Spec)?;
    let mut runners = parsed.config.runners;
    for r in &mut runners {
        if r.selector.is_empty() {
            r.selector = selector.clone();
        }
    }
    Ok(SpecFile {
        runners,
        warnings: parsed.warnings.iter().map(ToString::to_string).collect(),
    })
}

/// The spec as an agent receives it: JSON of [`RunnerConfig`] without `token`,
/// `registration_token` and `runner_creation_token` (the token travels in `runner_token`).
pub fn agent_spec_json(r: &RunnerConfig) -> String {
    let mut r = r.clone();
    r.token = None;
    r.registration_token = None;
    r.runner_creation_token = None;
    // They travel in the assignment's own fields ([`cache_secrets`]).
    CacheSecrets::take(&mut r);
    serde_json::to_string(&r).unwrap_or_else(|_| "{}".into())
}

/// The `[runners.cache.s3]` secrets of `r`, delivered beside [`agent_spec_json`].
pub fn cache_secrets(r: &RunnerConfig) -> CacheSecrets {
    CacheSecrets::take(&mut r.clone())
}

/// Secret keys of `[runners.cache.s3]`, redacted wherever the spec is shown.
const CACHE_SECRET_KEYS: [&str; 3] = ["AccessKey", "SecretKey", "SessionToken"];

/// The spec as JSON with every secret replaced by `<redacted>`.
pub fn redacted_json(r: &RunnerConfig) -> serde_json::Value {
    let mut v = serde_json::to_value(r).unwrap_or_default();
    if let Some(o) = v.as_object_mut() {
        for k in ["token", "registration_token", "runner_creation_token"] {
            if o.contains_key(k) {
                o.insert(k.into(), "<redacted>".into());
            }
        }
        if let Some(s3) = o
            .get_mut("cache")
            .and_then(|c| c.get_mut("s3"))
            .and_then(|s| s.as_object_mut())
        {
            for k in CACHE_SECRET_KEYS {
                if s3.contains_key(k) {
                    s3.insert(k.into(), "<redacted>".into());
                }
            }
        }
    }
    v
}

/// Digest of what a GitLab registration depends on: when it changes, the controller
/// registers a new GitLab runner (and retires the old one).
pub fn registration_key(r: &RunnerConfig) -> String {
    let secret = |s: &Option<secrecy::SecretString>| {
        s.as_ref()
            .map(|t| t.expose_secret().to_string())
            .unwrap_or_default()
    };
    let mut parts = serde_json::json!([
        r.url,
        secret(&r.token),
        secret(&r.registration_token),
        r.tag_list,
        r.run_untagged,
        r.locked,
        r.access_level,
        r.maximum_timeout,
        r.paused,
        r.description,
        r.maintenance_note,
    ]);
    // Only specs that use it add the runner-creation fields, so keys of older specs stay.
    if r.runner_creation_token.is_some()
        && let Some(p) = parts.as_array_mut()
    {
        p.push(serde_json::json!([
            secret(&r.runner_creation_token),
            r.runner_type,
            r.group_id,
            r.project_id,
        ]));
    }
    hex::encode(Sha256::digest(parts.to_string().as_bytes()))
}

/// Default description template: the runner's name and the agent's host.
pub const DEFAULT_DESCRIPTION: &str = "{name} on {hostname}";

/// The registration for runner `r` on an agent: `{name}`, `{hostname}` and `{agent_id}`
/// in the description template are filled in.
pub fn registration(r: &RunnerConfig, hostname: &str, agent_id: &str) -> RegisterOptions {
    let template = r.description.as_deref().unwrap_or(DEFAULT_DESCRIPTION);
    RegisterOptions {
        description: template
            .replace("{name}", &r.name)
            .replace("{hostname}", hostname)
            .replace("{agent_id}", agent_id),
        tag_list: r.tag_list.clone(),
        run_untagged: r.run_untagged.unwrap_or(r.tag_list.is_empty()),
        locked: r.locked.unwrap_or(false),
        access_level: r.access_level.clone(),
        maximum_timeout: r.maximum_timeout,
        paused: r.paused.unwrap_or(false),
        maintenance_note: r.maintenance_note.clone(),
    }
}

/// How one runner differs between two generations.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Change {
    /// Runner name.
    pub name: String,
    /// `added`, `changed`, `removed` or `unchanged`.
    pub kind: &'static str,
    /// For `changed`: one line per differing key; secrets show as `<changed>`.
    pub details: Vec<String>,
}

fn flatten(prefix: &str, v: &serde_json::Value, out: &mut BTreeMap<String, String>) {
    match v {
        serde_json::Value::Object(o) => {
            for (k, v) in o {
                let p = if prefix.is_empty() {
                    k.clone()
                } else {
                    format!("{prefix}.{k}")
                };
                flatten(&p, v, out);
            }
        }
        serde_json::Value::Null => {}
        other => {
            out.insert(prefix.to_string(), other.to_string());
        }
    }
}

/// Per-runner changes from `old` to `new`, sorted by name.
pub fn diff(old: &[RunnerConfig], new: &[RunnerConfig]) -> Vec<Change> {
    let old: BTreeMap<&str, &RunnerConfig> = old.iter().map(|r| (r.name.as_str(), r)).collect();
    let new: BTreeMap<&str, &RunnerConfig> = new.iter().map(|r| (r.name.as_str(), r)).collect();
    let mut names: Vec<&str> = old.keys().chain(new.keys()).copied().collect();
    names.sort_unstable();
    names.dedup();
    names
        .into_iter()
        .map(|name| match (old.get(name), new.get(name)) {
            (None, _) => Change {
                name: name.into(),
                kind: "added",
                details: Vec::new(),
            },
            (Some(_), None) => Change {
                name: name.into(),
                kind: "removed",
                details: Vec::new(),
            },
            (Some(a), Some(b)) => {
                let mut fa = BTreeMap::new();
                let mut fb = BTreeMap::new();
                flatten("", &redacted_json(a), &mut fa);
                flatten("", &redacted_json(b), &mut fb);
                let mut keys: Vec<&String> = fa.keys().chain(fb.keys()).collect();
                keys.sort_unstable();
                keys.dedup();
                let mut details: Vec<String> = keys
                    .into_iter()
                    .filter(|k| fa.get(*k) != fb.get(*k))
                    .map(|k| {
                        let show =
                            |v: Option<&String>| v.cloned().unwrap_or_else(|| "(unset)".into());
                        format!("{k}: {} -> {}", show(fa.get(k)), show(fb.get(k)))
                    })
                    .collect();
                let (ca, cb) = (cache_secrets(a), cache_secrets(b));
                for (k, x, y) in [
                    ("cache.s3.AccessKey", &ca.access_key, &cb.access_key),
                    ("cache.s3.SecretKey", &ca.secret_key, &cb.secret_key),
                    (
                        "cache.s3.SessionToken",
                        &ca.session_token,
                        &cb.session_token,
                    ),
                    ("token", &a.token, &b.token),
                    (
                        "registration_token",
                        &a.registration_token,
                        &b.registration_token,
                    ),
                    (
                        "runner_creation_token",
                        &a.runner_creation_token,
                        &b.runner_creation_token,
                    ),
                ] {
                    let ex = x.as_ref().map(|s| s.expose_secret().to_string());
                    let ey = y.as_ref().map(|s| s.expose_secret().to_string());
                    if ex.is_some() && ey.is_some() && ex != ey {
                        details.push(format!("{k}: <changed>"));
                    }
                }
                Change {
                    name: name.into(),
                    kind: if details.is_empty() {
                        "unchanged"
                    } else {
                        "changed"
                    },
                    details,
                }
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const SPEC: &str = r#"
[[runners]]
name = "lab-docker"
url = "https://gitlab.example.com"
registration_token = "GR1348941secret"
tag_list = ["edge"]
executor = "docker"
[runners.selector]
site = "lab"
[runners.docker]
image = "alpine:3.20"
"#;

    #[test]
    fn parses_and_keeps_secrets_out_of_agent_json() {
        let f = parse_spec(SPEC, "runners.toml", &BTreeMap::new()).unwrap();
        assert_eq!(f.runners.len(), 1);
        let json = agent_spec_json(&f.runners[0]);
        assert!(!json.contains("GR1348941secret"), "{json}");
        let back: RunnerConfig = serde_json::from_str(&json).unwrap();
        assert_eq!(back.name, "lab-docker");
        assert_eq!(back.selector.get("site").map(String::as_str), Some("lab"));
        assert!(
            !redacted_json(&f.runners[0])
                .to_string()
                .contains("GR1348941secret")
        );
    }

    #[test]
    fn names_must_be_unique_and_usable() {
        let twice = format!(
            "{SPEC}{}",
            SPEC.replace("tag_list", "run_untagged = true\ntag_list")
        );
        let err = parse_spec(&twice, "r.toml", &BTreeMap::new()).unwrap_err();
        assert_eq!(
            err.to_string(),
            "r.toml:14:8: runners[1].name: name \"lab-docker\" is also used by runners[0]"
        );
        let blank = SPEC.replace("lab-docker", "  ");
        let err = parse_spec(&blank, "r.toml", &BTreeMap::new()).unwrap_err();
        assert!(
            err.to_string()
                .starts_with("r.toml:3:8: runners[0].name: runner #1: name missing"),
            "{err}"
        );
        let none = SPEC.replace("name = \"lab-docker\"\n", "");
        assert!(
            parse_spec(&none, "r.toml", &BTreeMap::new())
                .unwrap_err()
                .to_string()
                .contains("name missing")
        );
        let bad_url = SPEC.replace("https://gitlab.example.com", "gitlab");
        let err = parse_spec(&bad_url, "r.toml", &BTreeMap::new()).unwrap_err();
        assert!(
            err.to_string().starts_with("r.toml:4:7: runners[0].url"),
            "{err}"
        );
    }

    #[test]
    fn free_text_names_are_accepted() {
        let text = SPEC.replace("lab-docker", "gitlab runner for ci");
        let f = parse_spec(&text, "r.toml", &BTreeMap::new()).unwrap();
        assert_eq!(f.runners[0].name, "gitlab runner for ci");
        // gitlab-runner's documented examples and `register` output, as `runner import`
        // reads them (tokens used as is, a selector from the command line).
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../proto/tests/fixtures/gitlab-runner");
        let sel = BTreeMap::from([("site".to_string(), "lab".to_string())]);
        let mut n = 0;
        for e in std::fs::read_dir(&dir).unwrap() {
            let path = e.unwrap().path();
            let text = std::fs::read_to_string(&path).unwrap();
            let f = parse_spec(&text, &path.display().to_string(), &sel)
                .unwrap_or_else(|e| panic!("{e}"));
            assert!(f.runners.iter().all(|r| r.selector == sel));
            n += 1;
        }
        assert!(n >= 2);
    }

    #[test]
    fn import_selector_fills_only_empty_selectors() {
        let sel = BTreeMap::from([("site".to_string(), "other".to_string())]);
        let f = parse_spec(SPEC, "r.toml", &sel).unwrap();
        assert_eq!(
            f.runners[0].selector.get("site").map(String::as_str),
            Some("lab")
        );
        let no_sel = SPEC.replace("[runners.selector]\nsite = \"lab\"\n", "");
        let f = parse_spec(&no_sel, "r.toml", &sel).unwrap();
        assert_eq!(f.runners[0].selector, sel);
    }

    #[test]
    fn diff_names_fields_and_hides_secrets() {
        let a = parse_spec(SPEC, "a", &BTreeMap::new()).unwrap().runners;
        let b = parse_spec(
            &SPEC
                .replace("alpine:3.20", "alpine:3.21")
                .replace("GR1348941secret", "GR1348941other"),
            "b",
            &BTreeMap::new(),
        )
        .unwrap()
        .runners;
        let d = diff(&a, &b);
        assert_eq!(d.len(), 1);
        assert_eq!(d[0].kind, "changed");
        assert_eq!(
            d[0].details,
            vec![
                "docker.image: \"alpine:3.20\" -> \"alpine:3.21\"".to_string(),
                "registration_token: <changed>".to_string()
            ]
        );
        assert_ne!(registration_key(&a[0]), registration_key(&b[0]));
        assert_eq!(diff(&a, &a)[0].kind, "unchanged");
        assert_eq!(diff(&[], &a)[0].kind, "added");
        assert_eq!(diff(&a, &[])[0].kind, "removed");
    }

    #[test]
    fn deploy_examples_are_valid() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/examples");
        let mut n = 0;
        let demo = dir.join("../demo/runners.toml");
        let paths = std::fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().path())
            .chain(demo.exists().then_some(demo));
        for path in paths {
            if path.extension().is_some_and(|e| e == "toml") {
                let text = std::fs::read_to_string(&path).unwrap();
                let f = parse_spec(&text, &path.display().to_string(), &BTreeMap::new())
                    .unwrap_or_else(|e| panic!("{e}"));
                assert!(!f.runners.is_empty());
                assert!(f.warnings.is_empty(), "{:?}", f.warnings);
                n += 1;
            }
        }
        assert!(n >= 2);
    }

    #[test]
    fn description_template() {
        let mut r = parse_spec(SPEC, "a", &BTreeMap::new())
            .unwrap()
            .runners
            .remove(0);
        assert_eq!(
            registration(&r, "box1", "ag1").description,
            "lab-docker on box1"
        );
        r.description = Some("{hostname}/{agent_id}".into());
        let reg = registration(&r, "box1", "ag1");
        assert_eq!(reg.description, "box1/ag1");
        assert!(
            !reg.run_untagged,
            "tags given: untagged jobs only when asked"
        );
    }
}
