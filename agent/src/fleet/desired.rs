//! The controller's desired state as the agent validates, persists and runs it.
//!
//! A pushed [`super::messages::DesiredState`] (converted from the wire in
//! `crate::control::wire`) holds [`Raw`] (the same fields, persistable, tokens included)
//! → [`Desired`] (validated: every `spec_json` parsed and checked with the shared spec
//! validator, token present, names unique). The persisted file holds [`Raw`] and is
//! validated again when loaded, so a file edited by hand cannot run what a push could not.

use std::path::{Path, PathBuf};

use drover_proto::spec::validate::{self, MAX_JOBS};
use drover_proto::spec::{CacheSecrets, Config, ParseMode, RunnerConfig};
use secrecy::SecretString;
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

use crate::identity::write_atomic;

/// Why a desired state (or the persisted file) was refused.
#[derive(Debug, thiserror::Error)]
pub enum DesiredError {
    #[error("runner #{index}: name missing")]
    NoName { index: usize },
    #[error("runner {name:?}: assigned twice")]
    Duplicate { name: String },
    #[error("runner {name:?}: spec_json: {message}")]
    SpecJson { name: String, message: String },
    #[error("runner {name:?}: {message}")]
    Invalid { name: String, message: String },
    #[error("runner {name:?}: runner_token missing")]
    NoToken { name: String },
    #[error("runner {name:?}: {field} {value:?} is not an RFC 3339 time")]
    Time {
        name: String,
        field: &'static str,
        value: String,
    },
    #[error("{path}: {message}")]
    File { path: PathBuf, message: String },
}

/// One assignment as received and persisted (tokens included: the file is 0600).
#[derive(Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct Raw {
    pub name: String,
    pub spec_json: String,
    pub runner_token: String,
    #[serde(default)]
    pub gitlab_runner_id: i64,
    /// RFC 3339; `None` = never expires (or unknown).
    #[serde(default)]
    pub token_expires_at: Option<String>,
    /// When this agent got the token (push or rotation), RFC 3339: rotation happens at 75 %
    /// of `token_obtained_at..token_expires_at`.
    #[serde(default)]
    pub token_obtained_at: Option<String>,
    /// `[runners.cache.s3]` `AccessKey`, `SecretKey`, `SessionToken` (RunnerAssignment
    /// fields 10-12; empty = unset), put back into the runner config on validation.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub cache_s3_access_key: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub cache_s3_secret_key: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub cache_s3_session_token: String,
}

impl std::fmt::Debug for Raw {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Raw")
            .field("name", &self.name)
            .field("gitlab_runner_id", &self.gitlab_runner_id)
            .field("token_expires_at", &self.token_expires_at)
            .field("runner_token", &"<redacted>")
            .field("cache_s3_secrets", &"<redacted>")
            .finish_non_exhaustive()
    }
}

/// The persisted file: the generation the agent runs and its assignments.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct Applied {
    pub generation: u64,
    pub runners: Vec<Raw>,
}

/// One validated assignment.
#[derive(Debug, Clone)]
pub struct Assignment {
    pub raw: Raw,
    /// The runner table, `token` set from `runner_token`, `limit` defaulted to 1.
    pub config: RunnerConfig,
    pub token: SecretString,
    pub token_expires_at: Option<OffsetDateTime>,
    pub token_obtained_at: Option<OffsetDateTime>,
}

impl Assignment {
    /// Jobs this runner may run at once (fleet mode defaults `limit` to 1, gitlab-runner's
    /// default `concurrent`, so the sum of limits bounds the agent and one runner cannot
    /// starve another).
    pub fn limit(&self) -> u32 {
        self.config.limit.filter(|l| *l > 0).unwrap_or(1)
    }

    /// When the token should be rotated: 75 % into `obtained..expires`. `None` = never
    /// expires. Without an obtained time (a file from an older agent) the lifetime is
    /// counted from `now`, so the rotation happens at 75 % of what is left.
    pub fn rotate_at(&self, now: OffsetDateTime) -> Option<OffsetDateTime> {
        let exp = self.token_expires_at?;
        let from = self.token_obtained_at.unwrap_or(now).min(exp);
        Some(from + (exp - from) * 0.75)
    }
}

/// A validated generation.
#[derive(Debug, Clone)]
pub struct Desired {
    pub generation: u64,
    pub runners: Vec<Assignment>,
}

/// RFC 3339 of `t`.
pub fn rfc3339(t: OffsetDateTime) -> String {
    t.format(&Rfc3339).unwrap_or_default()
}

fn parse_time(name: &str, field: &'static str, v: &str) -> Result<OffsetDateTime, DesiredError> {
    OffsetDateTime::parse(v, &Rfc3339).map_err(|_| DesiredError::Time {
        name: name.to_string(),
        field,
        value: v.to_string(),
    })
}

/// Validates one assignment.
pub fn validate_one(raw: &Raw, index: usize) -> Result<Assignment, DesiredError> {
    if raw.name.trim().is_empty() {
        return Err(DesiredError::NoName { index });
    }
    let name = raw.name.clone();
    let mut config: RunnerConfig =
        serde_json::from_str(&raw.spec_json).map_err(|e| DesiredError::SpecJson {
            name: name.clone(),
            message: e.to_string(),
        })?;
    if raw.runner_token.trim().is_empty() {
        return Err(DesiredError::NoToken { name });
    }
    if config.registration_token.is_some() {
        return Err(DesiredError::Invalid {
            name,
            message: "spec_json carries a registration_token; it must stay on the controller"
                .into(),
        });
    }
    let token = SecretString::from(raw.runner_token.clone());
    config.name = name.clone();
    config.token = Some(token.clone());
    CacheSecrets::from_wire(
        raw.cache_s3_access_key.clone(),
        raw.cache_s3_secret_key.clone(),
        raw.cache_s3_session_token.clone(),
    )
    .put_into(&mut config);
    config.limit = Some(config.limit.filter(|l| *l > 0).unwrap_or(1));
    let file = Config {
        runners: vec![config.clone()],
        ..Config::default()
    };
    validate::validate(&file, ParseMode::Standalone).map_err(|v| DesiredError::Invalid {
        name: name.clone(),
        message: format!("{}: {}", v.path, v.message),
    })?;
    // gitlab-runner writes `0001-01-01T00:00:00Z` for "never expires".
    let token_expires_at = raw
        .token_expires_at
        .as_deref()
        .map(|v| parse_time(&name, "token_expires_at", v))
        .transpose()?
        .filter(|t| t.unix_timestamp() > 0);
    let token_obtained_at = raw
        .token_obtained_at
        .as_deref()
        .map(|v| parse_time(&name, "token_obtained_at", v))
        .transpose()?;
    Ok(Assignment {
        raw: raw.clone(),
        config,
        token,
        token_expires_at,
        token_obtained_at,
    })
}

/// Validates a whole generation: every runner, unique names, and a sum of limits a box can
/// run.
pub fn validate_all(generation: u64, runners: &[Raw]) -> Result<Desired, DesiredError> {
    let mut out: Vec<Assignment> = Vec::with_capacity(runners.len());
    for (i, r) in runners.iter().enumerate() {
        let a = validate_one(r, i)?;
        if out.iter().any(|o| o.raw.name == a.raw.name) {
            return Err(DesiredError::Duplicate { name: a.raw.name });
        }
        out.push(a);
    }
    let total: u64 = out.iter().map(|a| u64::from(a.limit())).sum();
    if total > u64::from(MAX_JOBS) {
        return Err(DesiredError::Invalid {
            name: "*".into(),
            message: format!("the runners' limits add up to {total}, above {MAX_JOBS}"),
        });
    }
    Ok(Desired {
        generation,
        runners: out,
    })
}

/// Where fleet mode keeps its applied generation: `<state dir>/applied.json` (0600).
#[derive(Debug, Clone)]
pub struct Store {
    path: PathBuf,
}

impl Store {
    /// The file in `state_dir`.
    pub fn new(state_dir: &Path) -> Store {
        Store {
            path: state_dir.join("applied.json"),
        }
    }

    /// Its path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The applied generation, `None` when the agent never applied one.
    pub fn load(&self) -> Result<Option<Applied>, DesiredError> {
        let text = match std::fs::read_to_string(&self.path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => {
                return Err(DesiredError::File {
                    path: self.path.clone(),
                    message: e.to_string(),
                });
            }
        };
        serde_json::from_str(&text)
            .map(Some)
            .map_err(|e| DesiredError::File {
                path: self.path.clone(),
                message: e.to_string(),
            })
    }

    /// Writes `applied` atomically with mode 0600.
    pub fn save(&self, applied: &Applied) -> Result<(), DesiredError> {
        let bytes = serde_json::to_vec_pretty(applied).map_err(|e| DesiredError::File {
            path: self.path.clone(),
            message: e.to_string(),
        })?;
        write_atomic(&self.path, &bytes, 0o600).map_err(|e| DesiredError::File {
            path: self.path.clone(),
            message: e.to_string(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use secrecy::ExposeSecret;

    fn raw(name: &str, spec: &str, token: &str) -> Raw {
        Raw {
            name: name.into(),
            spec_json: spec.into(),
            runner_token: token.into(),
            gitlab_runner_id: 7,
            token_expires_at: None,
            token_obtained_at: None,
            ..Default::default()
        }
    }

    const SPEC: &str =
        r#"{"url":"http://gitlab.test","executor":"docker","docker":{"image":"busybox"}}"#;

    #[test]
    fn valid_assignment_gets_token_and_default_limit() {
        let d = validate_all(3, &[raw("a", SPEC, "glrt-abc")]).unwrap();
        assert_eq!(d.runners[0].config.name, "a");
        assert_eq!(d.runners[0].limit(), 1);
        assert_eq!(
            d.runners[0].config.token.as_ref().unwrap().expose_secret(),
            "glrt-abc"
        );
    }

    #[test]
    fn refusals_name_the_runner_and_the_problem() {
        let cases = [
            (raw("a", "{not json", "t"), "runner \"a\": spec_json"),
            (raw("a", SPEC, " "), "runner_token missing"),
            (
                raw("a", r#"{"url":"http://g","executor":"shell"}"#, "t"),
                "executor \"shell\" is not supported",
            ),
            (
                raw("a", r#"{"url":"gitlab","executor":"docker"}"#, "t"),
                "url",
            ),
            (raw("", SPEC, "t"), "runner #0: name missing"),
            (
                raw(
                    "a",
                    r#"{"url":"http://g","executor":"docker","registration_token":"GR1"}"#,
                    "t",
                ),
                "registration_token",
            ),
        ];
        for (r, want) in cases {
            let e = validate_all(1, &[r]).unwrap_err().to_string();
            assert!(e.contains(want), "{e} lacks {want}");
        }
        let e = validate_all(1, &[raw("a", SPEC, "t"), raw("a", SPEC, "u")])
            .unwrap_err()
            .to_string();
        assert!(e.contains("assigned twice"), "{e}");
        let mut bad_time = raw("a", SPEC, "t");
        bad_time.token_expires_at = Some("tomorrow".into());
        let e = validate_all(1, &[bad_time]).unwrap_err().to_string();
        assert!(e.contains("token_expires_at \"tomorrow\""), "{e}");
    }

    #[test]
    fn rotation_at_three_quarters_of_the_lifetime() {
        let mut r = raw("a", SPEC, "t");
        r.token_obtained_at = Some("2026-01-01T00:00:00Z".into());
        r.token_expires_at = Some("2026-01-05T00:00:00Z".into());
        let a = validate_one(&r, 0).unwrap();
        let now = OffsetDateTime::now_utc();
        assert_eq!(rfc3339(a.rotate_at(now).unwrap()), "2026-01-04T00:00:00Z");
        r.token_obtained_at = None;
        let a = validate_one(&r, 0).unwrap();
        let now = parse_time("a", "x", "2026-01-01T00:00:00Z").unwrap();
        assert_eq!(rfc3339(a.rotate_at(now).unwrap()), "2026-01-04T00:00:00Z");
        r.token_expires_at = None;
        assert!(validate_one(&r, 0).unwrap().rotate_at(now).is_none());
        r.token_expires_at = Some("0001-01-01T00:00:00Z".into());
        assert!(validate_one(&r, 0).unwrap().rotate_at(now).is_none());
    }

    #[test]
    fn store_roundtrip_is_0600_and_absent_is_none() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let s = Store::new(dir.path());
        assert!(s.load().unwrap().is_none());
        let a = Applied {
            generation: 4,
            runners: vec![raw("a", SPEC, "glrt-secret")],
        };
        s.save(&a).unwrap();
        assert_eq!(s.load().unwrap().unwrap(), a);
        let mode = std::fs::metadata(s.path()).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        std::fs::write(s.path(), "{").unwrap();
        let e = s.load().unwrap_err().to_string();
        assert!(e.contains("applied.json"), "{e}");
        assert!(!format!("{:?}", a).contains("glrt-secret"));
    }
}
