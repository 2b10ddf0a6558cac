//! `$VAR` / `${VAR}` expansion of variable values, as GitLab does for `raw: false`
//! variables: one level deep, unknown names expand to nothing, `$$` is a literal `$`.

/// Expands `$NAME` and `${NAME}` in `value` with `lookup`. A `$` not followed by a name,
/// `{`, or `$` is kept as is; an unclosed `${` is kept as is.
pub fn expand(value: &str, lookup: &dyn Fn(&str) -> Option<String>) -> String {
    let mut out = String::with_capacity(value.len());
    let mut rest = value;
    while let Some(pos) = rest.find('$') {
        out.push_str(&rest[..pos]);
        let after = &rest[pos + 1..];
        if let Some(stripped) = after.strip_prefix('$') {
            out.push('$');
            rest = stripped;
        } else if let Some(braced) = after.strip_prefix('{') {
            match braced.find('}') {
                Some(end) if is_name(&braced[..end]) => {
                    out.push_str(&lookup(&braced[..end]).unwrap_or_default());
                    rest = &braced[end + 1..];
                }
                _ => {
                    out.push('$');
                    rest = after;
                }
            }
        } else {
            let len = after
                .char_indices()
                .find(|(_, c)| !(c.is_ascii_alphanumeric() || *c == '_'))
                .map(|(i, _)| i)
                .unwrap_or(after.len());
            if len == 0 {
                out.push('$');
                rest = after;
            } else {
                out.push_str(&lookup(&after[..len]).unwrap_or_default());
                rest = &after[len..];
            }
        }
    }
    out.push_str(rest);
    out
}

fn is_name(s: &str) -> bool {
    !s.is_empty() && s.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(input: &str, expected: &str) {
        let lookup = |k: &str| match k {
            "A" => Some("alpha".to_string()),
            "B_2" => Some("$A".to_string()),
            "EMPTY" => Some(String::new()),
            _ => None,
        };
        assert_eq!(expand(input, &lookup), expected, "input {input:?}");
    }

    #[test]
    fn expands_plain_and_braced_names() {
        check("$A", "alpha");
        check("${A}", "alpha");
        check("x$A-y", "xalpha-y");
        check("x${A}y", "xalphay");
        check("$A$A", "alphaalpha");
    }

    #[test]
    fn unknown_names_expand_to_nothing() {
        check("[$NOPE]", "[]");
        check("[${NOPE}]", "[]");
        check("[$EMPTY]", "[]");
    }

    #[test]
    fn expansion_is_one_level_deep() {
        check("$B_2", "$A");
    }

    #[test]
    fn dollar_dollar_is_a_literal_dollar() {
        check("$$A", "$A");
        check("cost: 5$$", "cost: 5$");
    }

    #[test]
    fn lone_or_malformed_dollars_are_kept() {
        check("a $ b", "a $ b");
        check("end$", "end$");
        check("${unclosed", "${unclosed");
        check("${bad-name}", "${bad-name}");
        check("$-x", "$-x");
    }

    #[test]
    fn non_ascii_text_is_kept() {
        check("é$A€", "éalpha€");
    }
}
