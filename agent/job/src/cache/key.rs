//! Cache key validation. Keys become file names on the agent's disk, so GitLab's rules for
//! `cache:key` are enforced again here: no `/` or `\` (nor their URL encodings `%2F`, `%5C`),
//! not made only of dots, no control characters, not empty, at most 250 bytes.

/// Why a cache key was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KeyError {
    #[error("cache key is empty")]
    Empty,
    #[error("cache key {0:?} contains a path separator (`/`, `\\`, `%2F` or `%5C`)")]
    Separator(String),
    #[error("cache key {0:?} is made only of dots")]
    Dots(String),
    #[error("cache key {0:?} contains a control character")]
    Control(String),
    #[error("cache key {0:?} is longer than 250 bytes")]
    TooLong(String),
}

/// Returns the key (trimmed) if it is safe as a file name, or why not.
pub fn sanitize_key(key: &str) -> Result<String, KeyError> {
    let key = key.trim();
    if key.is_empty() {
        return Err(KeyError::Empty);
    }
    let lower = key.to_ascii_lowercase();
    if key.contains('/') || key.contains('\\') || lower.contains("%2f") || lower.contains("%5c") {
        return Err(KeyError::Separator(key.to_string()));
    }
    let decoded_dots = lower.replace("%2e", ".");
    if decoded_dots.chars().all(|c| c == '.') {
        return Err(KeyError::Dots(key.to_string()));
    }
    if key.chars().any(char::is_control) {
        return Err(KeyError::Control(key.to_string()));
    }
    if key.len() > 250 {
        return Err(KeyError::TooLong(key.to_string()));
    }
    Ok(key.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_ordinary_keys() {
        assert_eq!(sanitize_key(" main-protected ").unwrap(), "main-protected");
        assert_eq!(sanitize_key("v1.2_node..x").unwrap(), "v1.2_node..x");
    }

    #[test]
    fn refuses_escaping_keys() {
        assert_eq!(sanitize_key(""), Err(KeyError::Empty));
        assert!(matches!(sanitize_key("a/b"), Err(KeyError::Separator(_))));
        assert!(matches!(sanitize_key("..\\x"), Err(KeyError::Separator(_))));
        assert!(matches!(
            sanitize_key("..%2Fetc"),
            Err(KeyError::Separator(_))
        ));
        assert!(matches!(sanitize_key(".."), Err(KeyError::Dots(_))));
        assert!(matches!(sanitize_key("."), Err(KeyError::Dots(_))));
        assert!(matches!(sanitize_key("%2E%2e"), Err(KeyError::Dots(_))));
        assert!(matches!(sanitize_key("a\nb"), Err(KeyError::Control(_))));
        assert!(matches!(
            sanitize_key(&"k".repeat(251)),
            Err(KeyError::TooLong(_))
        ));
    }
}
