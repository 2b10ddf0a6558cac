//! Bounds on a `config.toml` / runner spec: file size, counts and string sizes, checked on
//! the raw TOML document so that every key (known or not) is covered and each refusal names
//! its key path. What a file may hold is bounded here and nowhere else; the controller adds
//! one check of its own, that an agent's desired state fits a gRPC message.

use toml::de::{DeTable, DeValue};

use super::locate::{Segment, TomlPath};
use super::validate::Violation;

/// Largest file accepted: far above any real `config.toml` (a few KiB), small enough that a
/// spec and what the controller derives from it fit a gRPC message.
pub const MAX_FILE_BYTES: usize = 1024 * 1024;
/// Most `[[runners]]` tables in one file (and in the controller's merged set).
pub const MAX_RUNNERS: usize = 1000;
/// Most items in any other list or table (`tag_list`, `volumes`, `environment`, ...).
pub const MAX_ITEMS: usize = 256;
/// Most entries in a `[runners.selector]`.
pub const MAX_LABELS: usize = 64;
/// Longest runner name, in characters (checked in [`super::validate`]). gitlab-runner takes
/// any text as a name (it is the description GitLab shows); this only catches mistakes.
pub const MAX_NAME_CHARS: usize = 255;
/// Longest one-line value (URL, image name, path, token, ...), in bytes.
pub const MAX_VALUE_BYTES: usize = 4096;
/// Longest multi-line value (scripts, descriptions, `environment` entries), in bytes.
pub const MAX_TEXT_BYTES: usize = 64 * 1024;
/// Longest key, in bytes.
pub const MAX_KEY_BYTES: usize = 256;

/// `[[runners]]` keys whose values may span lines (and hold tabs): scripts and free text.
const MULTI_LINE_KEYS: &[&str] = &[
    "pre_build_script",
    "post_build_script",
    "pre_get_sources_script",
    "post_get_sources_script",
    "pre_clone_script",
    "post_clone_script",
    "description",
    "maintenance_note",
    "environment",
];

/// Refuses a file larger than [`MAX_FILE_BYTES`] before it is parsed.
pub fn check_file_size(len: usize) -> Result<(), String> {
    if len > MAX_FILE_BYTES {
        return Err(format!(
            "file is {len} bytes; at most {MAX_FILE_BYTES} bytes ({} MiB) are accepted",
            MAX_FILE_BYTES >> 20
        ));
    }
    Ok(())
}

/// Checks every count and string of the document; the first violation in file order wins.
pub fn check_document(root: &DeTable<'_>) -> Result<(), Violation> {
    let mut here = Vec::new();
    check_table(root, &mut here)
}

fn check_table(t: &DeTable<'_>, here: &mut Vec<Segment>) -> Result<(), Violation> {
    let max = max_items(here);
    if t.len() > max {
        return Err(violation(
            here,
            format!("{} entries; at most {max} are accepted", t.len()),
        ));
    }
    for (k, v) in t.iter() {
        let key = k.get_ref();
        if key.len() > MAX_KEY_BYTES || key.chars().any(char::is_control) {
            return Err(violation(
                here,
                format!(
                    "key {:?}: keys are at most {MAX_KEY_BYTES} bytes without control characters",
                    clip(key)
                ),
            ));
        }
        here.push(Segment::Key(key.to_string()));
        check_value(v.get_ref(), here)?;
        here.pop();
    }
    Ok(())
}

fn check_value(v: &DeValue<'_>, here: &mut Vec<Segment>) -> Result<(), Violation> {
    match v {
        DeValue::Table(t) => check_table(t, here),
        DeValue::Array(a) => {
            let max = max_items(here);
            if a.len() > max {
                return Err(violation(
                    here,
                    format!("{} items; at most {max} are accepted", a.len()),
                ));
            }
            for (i, item) in a.iter().enumerate() {
                here.push(Segment::Index(i));
                check_value(item.get_ref(), here)?;
                here.pop();
            }
            Ok(())
        }
        DeValue::String(s) => check_string(s, here),
        _ => Ok(()),
    }
}

fn check_string(s: &str, here: &[Segment]) -> Result<(), Violation> {
    let one_line = is_one_line(here);
    let max = if one_line {
        MAX_VALUE_BYTES
    } else {
        MAX_TEXT_BYTES
    };
    if s.len() > max {
        return Err(violation(
            here,
            format!(
                "value of {} bytes; at most {max} bytes are accepted",
                s.len()
            ),
        ));
    }
    // The value itself is not shown: it may be a token.
    let refused = |c: char| if one_line { c.is_control() } else { c == '\0' };
    if let Some((at, c)) = s.char_indices().find(|(_, c)| refused(*c)) {
        return Err(violation(
            here,
            format!(
                "value holds the control character {c:?} at byte {at}; {}",
                if one_line {
                    "a one-line value must hold none"
                } else {
                    "text must not hold NUL"
                }
            ),
        ));
    }
    Ok(())
}

/// Whether the string at `here` is a one-line value: every setting Drover reads (URL, image
/// name, path, token, ...) except scripts and free text. A newline in an image name or ESC
/// in a URL is a mistake or an attack, never a setting. Sections Drover does not read (a
/// PEM key under `[runners.cache.gcs]`, a Kubernetes patch, a service's `command`) may hold
/// any text but NUL, as gitlab-runner accepts them.
fn is_one_line(here: &[Segment]) -> bool {
    let key = |s: &Segment, name: &str| matches!(s, Segment::Key(k) if k == name);
    match here {
        [Segment::Key(_)] => true,
        [Segment::Key(_), Segment::Index(_)] => true,
        [s, Segment::Key(_)] if key(s, "session_server") => true,
        [r, Segment::Index(_), Segment::Key(k), rest @ ..] if key(r, "runners") => match rest {
            [] | [Segment::Index(_)] => !MULTI_LINE_KEYS.contains(&k.as_str()),
            [Segment::Key(_)] if k == "cache" => true,
            [s, Segment::Index(_), Segment::Key(f)] if k == "docker" && key(s, "services") => {
                f == "name" || f == "alias"
            }
            [s, ..] if k == "docker" && key(s, "services") => false,
            _ => k == "docker",
        },
        _ => false,
    }
}

/// How many items the list or table at `here` may hold.
fn max_items(here: &[Segment]) -> usize {
    match here {
        [Segment::Key(k)] if k == "runners" => MAX_RUNNERS,
        [Segment::Key(r), Segment::Index(_), Segment::Key(k)]
            if r == "runners" && k == "selector" =>
        {
            MAX_LABELS
        }
        _ => MAX_ITEMS,
    }
}

/// At most 40 characters of a value, for messages.
fn clip(s: &str) -> String {
    match s.char_indices().nth(40) {
        Some((i, _)) => s[..i].to_string(),
        None => s.to_string(),
    }
}

fn violation(here: &[Segment], message: String) -> Violation {
    Violation {
        path: TomlPath(here.to_vec()),
        message,
    }
}
