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

/// Checks a whole label set (agent labels, `--selector`): at most
/// [`super::limits::MAX_LABELS`] entries, each as [`validate_label`] wants.
pub fn validate_labels<'a>(
    labels: impl ExactSizeIterator<Item = (&'a String, &'a String)>,
) -> Result<(), String> {
    let max = super::limits::MAX_LABELS;
    if labels.len() > max {
        return Err(format!(
            "{} labels; at most {max} are accepted",
            labels.len()
        ));
    }
    for (k, v) in labels {
        validate_label(k, v)?;
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

    #[test]
    fn label_sets_are_bounded() {
        let set = |n: usize| -> std::collections::BTreeMap<String, String> {
            (0..n).map(|i| (format!("k{i}"), "v".to_string())).collect()
        };
        assert!(validate_labels(set(64).iter()).is_ok());
        assert_eq!(
            validate_labels(set(65).iter()).unwrap_err(),
            "65 labels; at most 64 are accepted"
        );
        let mut bad = set(1);
        bad.insert("<script>".into(), "x".into());
        assert!(validate_labels(bad.iter()).is_err());
    }
}
