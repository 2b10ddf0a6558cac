//! Agent labels and runner selectors (`key = value`): one rule for `drover token create
//! --label`, `drover runner import --selector` and `[runners.selector]` in a spec.

/// Longest label key and value, in bytes.
pub const MAX_LABEL_LEN: usize = 63;

/// Checks a label key (1–63 of `[A-Za-z0-9._/-]`) and value (at most 63 bytes, no control
/// characters).
pub fn validate_label(k: &str, v: &str) -> Result<(), String> {
    if k.is_empty()
        || k.len() > MAX_LABEL_LEN
        || !k
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._/-".contains(&b))
    {
        return Err(format!(
            "label key {k:?} must be 1-{MAX_LABEL_LEN} characters of A-Z a-z 0-9 . _ / -"
        ));
    }
    if v.len() > MAX_LABEL_LEN || v.chars().any(|c| c.is_control()) {
        return Err(format!(
            "label value {v:?} must be at most {MAX_LABEL_LEN} printable characters"
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_and_values() {
        assert!(validate_label("site", "lab").is_ok());
        assert!(validate_label("example.com/rack", "").is_ok());
        assert!(validate_label("", "x").is_err());
        assert!(validate_label("<script>", "x").is_err());
        assert!(validate_label("a b", "x").is_err());
        assert!(validate_label("k", "\u{1b}]0;x\u{7}").is_err());
        assert!(validate_label("k", &"v".repeat(64)).is_err());
    }
}
