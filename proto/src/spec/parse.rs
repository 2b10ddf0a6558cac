//! Parsing a `config.toml` / runner spec file: syntax and type errors with file, line and
//! column; one warning per key Drover does not know or does not implement; then
//! [`super::validate`].

use std::collections::BTreeSet;
use std::fmt;

use toml::de::{DeTable, DeValue};

use super::Config;
use super::locate::{TomlPath, line_col, line_of, path_at, position_of, value_at};

/// What the file is for: it decides which keys are required and which are meaningless.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ParseMode {
    /// `drover-agent run --config`: a gitlab-runner `config.toml`; every runner needs `token`.
    Standalone,
    /// `drover runner apply -f`: a runner spec; `token` or `registration_token` per runner.
    Spec,
}

/// A parsed and validated file.
#[derive(Debug, Clone)]
pub struct Parsed {
    pub config: Config,
    /// Keys that were ignored, each once, in file order.
    pub warnings: Vec<Warning>,
}

/// A key Drover ignores: unknown, or known but not implemented.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Warning {
    /// The file name as given to [`parse_config`].
    pub file: String,
    /// 1-based line of the key, when it could be located.
    pub line: Option<usize>,
    /// The key's TOML path, e.g. `runners[0].docker.helper_image`.
    pub path: String,
    /// Why it is ignored.
    pub message: String,
}

impl fmt::Display for Warning {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.line {
            Some(l) => write!(f, "{}:{}: {}: {}", self.file, l, self.path, self.message),
            None => write!(f, "{}: {}: {}", self.file, self.path, self.message),
        }
    }
}

/// Why a file was refused. Every variant names the file, the key path when known and, when
/// known, the line and column: `bad.toml:11:15: runners[0].docker.pull_policy: ...`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SpecError {
    /// Not TOML, or a value of the wrong type.
    #[error("{file}:{line}:{column}: {}{message}", path.as_ref().map(|p| format!("{p}: ")).unwrap_or_default())]
    Syntax {
        file: String,
        line: usize,
        column: usize,
        /// TOML path of the refused value, when the error sits inside one.
        path: Option<String>,
        message: String,
    },
    /// Valid TOML that Drover cannot run, or over a limit.
    #[error("{file}{}: {path}: {message}", position.map(|(l, c)| format!(":{l}:{c}")).unwrap_or_default())]
    Invalid {
        file: String,
        /// 1-based line and column of the offending value (or of its key).
        position: Option<(usize, usize)>,
        /// TOML path of the offending key or table.
        path: String,
        message: String,
    },
    /// Larger than [`super::limits::MAX_FILE_BYTES`]; not parsed.
    #[error("{file}: {message}")]
    TooLarge { file: String, message: String },
}

/// How a not-implemented key is matched: a path relative to the root or to each runner.
struct NotImplemented {
    /// Path segments; for runner keys relative to the `[[runners]]` table.
    key: &'static [&'static str],
    note: &'static str,
}

/// Top-level keys that parse but do nothing yet.
const ROOT_NOT_IMPLEMENTED: &[NotImplemented] = &[
    NotImplemented {
        key: &["session_server"],
        note: "not implemented (no interactive web terminal); ignored",
    },
    NotImplemented {
        key: &["log_format"],
        note: "not implemented; drover-agent logs plain text to stderr; ignored",
    },
];

/// `[[runners]]` keys that parse but do nothing yet. Values equal to gitlab-runner's default
/// (`false`, `0`, `""`, empty table or list) are not reported: they configure nothing.
const RUNNER_NOT_IMPLEMENTED: &[NotImplemented] = &[
    NotImplemented {
        key: &["custom_build_dir"],
        note: "not implemented; ignored",
    },
    NotImplemented {
        key: &["cache", "gcs"],
        note: "gcs caches are not implemented (only s3); ignored",
    },
    NotImplemented {
        key: &["cache", "azure"],
        note: "azure caches are not implemented (only s3); ignored",
    },
    NotImplemented {
        key: &["cache", "s3", "RoleARN"],
        note: "not implemented (AWS STS roles); the access keys are used; ignored",
    },
    NotImplemented {
        key: &["cache", "s3", "UploadRoleARN"],
        note: "not implemented (AWS STS roles); the access keys are used; ignored",
    },
    NotImplemented {
        key: &["cache", "s3", "Accelerate"],
        note: "not implemented (AWS transfer acceleration); ignored",
    },
    NotImplemented {
        key: &["cache", "s3", "DualStack"],
        note: "not implemented (AWS dual-stack endpoints); the address is used as given; ignored",
    },
    NotImplemented {
        key: &["docker", "host"],
        note: "not implemented; drover-agent uses the local Docker engine; ignored",
    },
    NotImplemented {
        key: &["docker", "tls_verify"],
        note: "not implemented; drover-agent uses the local Docker engine; ignored",
    },
    NotImplemented {
        key: &["docker", "tls_cert_path"],
        note: "not implemented; drover-agent uses the local Docker engine; ignored",
    },
    NotImplemented {
        key: &["docker", "helper_image"],
        note: "not needed: drover-agent clones, caches and uploads without a helper image; ignored",
    },
    NotImplemented {
        key: &["docker", "links"],
        note: "not implemented (use services); ignored",
    },
    NotImplemented {
        key: &["docker", "runtime"],
        note: "not implemented; ignored",
    },
    NotImplemented {
        key: &["docker", "userns_mode"],
        note: "not implemented; ignored",
    },
    NotImplemented {
        key: &["docker", "network_mtu"],
        note: "not implemented; ignored",
    },
];

/// Spec-file keys with no meaning in a standalone `config.toml`.
const SPEC_ONLY: &[&str] = &[
    "registration_token",
    "runner_creation_token",
    "runner_type",
    "group_id",
    "project_id",
    "tag_list",
    "run_untagged",
    "locked",
    "access_level",
    "maximum_timeout",
    "paused",
    "description",
    "maintenance_note",
    "selector",
];

/// Parses and validates a gitlab-runner `config.toml` for standalone mode.
/// `file` names the source in errors and warnings (usually the path as given).
pub fn parse_config(text: &str, file: &str) -> Result<Parsed, SpecError> {
    parse_with(text, file, ParseMode::Standalone)
}

/// Parses and validates `text` for `mode`.
pub fn parse_with(text: &str, file: &str, mode: ParseMode) -> Result<Parsed, SpecError> {
    super::limits::check_file_size(text.len()).map_err(|message| SpecError::TooLarge {
        file: file.to_string(),
        message,
    })?;
    let located = |root: Option<&DeTable<'_>>, e: toml::de::Error| {
        let start = e.span().map(|s| s.start);
        let (line, column) = start.map(|s| line_col(text, s)).unwrap_or((1, 1));
        SpecError::Syntax {
            file: file.to_string(),
            line,
            column,
            path: root
                .zip(start)
                .and_then(|(r, s)| path_at(r, s))
                .map(|p| p.to_string()),
            message: e.message().trim().to_string(),
        }
    };
    let doc = DeTable::parse(text).map_err(|e| located(None, e))?;
    let root = doc.get_ref();
    let invalid = |v: super::validate::Violation| SpecError::Invalid {
        file: file.to_string(),
        position: position_of(text, root, &v.path),
        path: v.path.to_string(),
        message: v.message,
    };
    super::limits::check_document(root).map_err(invalid)?;
    let syntax = |e| located(Some(root), e);

    let mut unknown: Vec<TomlPath> = Vec::new();
    let de = toml::Deserializer::parse(text).map_err(syntax)?;
    let config: Config = serde_ignored::deserialize(de, |p| {
        unknown.push(TomlPath::from_ignored(&p));
    })
    .map_err(syntax)?;

    let mut warnings = Warnings {
        text,
        file,
        root,
        seen: BTreeSet::new(),
        out: Vec::new(),
    };
    for p in unknown {
        warnings.push(&p, "unknown key; ignored");
    }
    for ni in ROOT_NOT_IMPLEMENTED {
        let p = TomlPath(ni.key.iter().map(|k| (*k).into()).collect());
        warnings.push_if_set(&p, ni.note);
    }
    for (i, _) in config.runners.iter().enumerate() {
        let base = TomlPath::runner(i);
        for ni in RUNNER_NOT_IMPLEMENTED {
            let mut p = base.clone();
            for k in ni.key {
                p = p.key(k);
            }
            warnings.push_if_set(&p, ni.note);
        }
        if let Some(c) = &config.runners[i].cache {
            for (key, note) in super::cache::cache_warnings(c) {
                let mut p = base.clone();
                for k in key {
                    p = p.key(k);
                }
                warnings.push(&p, note);
            }
        }
        if mode == ParseMode::Standalone {
            for k in SPEC_ONLY {
                warnings.push_if_set(
                    &base.key(k),
                    "only used by `drover runner apply`; ignored in standalone mode",
                );
            }
        }
    }
    let mut warnings = warnings.out;
    warnings.sort_by_key(|w| w.line.unwrap_or(usize::MAX));

    super::validate::validate(&config, mode).map_err(invalid)?;
    Ok(Parsed { config, warnings })
}

impl From<&str> for super::locate::Segment {
    fn from(s: &str) -> Self {
        super::locate::Segment::Key(s.to_string())
    }
}

struct Warnings<'a, 'i> {
    text: &'a str,
    file: &'a str,
    root: &'a DeTable<'i>,
    seen: BTreeSet<TomlPath>,
    out: Vec<Warning>,
}

impl Warnings<'_, '_> {
    fn push(&mut self, path: &TomlPath, message: &str) {
        if !self.seen.insert(path.clone()) {
            return;
        }
        self.out.push(Warning {
            file: self.file.to_string(),
            line: line_of(self.text, self.root, path),
            path: path.to_string(),
            message: message.to_string(),
        });
    }

    fn push_if_set(&mut self, path: &TomlPath, message: &str) {
        if value_at(self.root, path).is_some_and(is_set) {
            self.push(path, message);
        }
    }
}

/// A value that configures something (not gitlab-runner's default / empty).
fn is_set(v: &DeValue<'_>) -> bool {
    match v {
        DeValue::String(s) => !s.is_empty(),
        DeValue::Integer(i) => !i.as_str().trim_start_matches(['0', '+', '-']).is_empty(),
        DeValue::Float(_) | DeValue::Datetime(_) => true,
        DeValue::Boolean(b) => *b,
        DeValue::Array(a) => !a.is_empty(),
        DeValue::Table(t) => t.iter().any(|(_, v)| is_set(v.get_ref())),
    }
}
