//! `$VAR` / `${VAR}` expansion, the one way the job crate expands variables: in variable
//! values (`raw: false`, one level deep) and in `artifacts:paths`/`name` and
//! `cache:key`/`paths`/`policy`/`fallback_keys`.
//!
//! gitlab-runner's rules (`common/variables.go`: `JobVariables.ExpandValue` is Go's
//! `os.Expand` with `JobVariables.Get`):
//! - `$NAME` takes the longest run of ASCII letters, digits and `_`; `${NAME}` takes
//!   everything up to the first `}`, whatever it is.
//! - Unknown names expand to nothing, as do the shell's special names `$*`, `$#`, `$@`,
//!   `$!`, `$?`, `$0`..`$9` and `$-` (one character each, braced or not).
//! - `$$` is a literal `$`.
//! - A `$` followed by nothing, or by a character that starts no name, is kept.
//! - `${}` and an unterminated `${` are bad syntax and dropped (`${` only; the text after it
//!   is kept).

use drover_gitlab::types::JobVariable;

use crate::sources::plan::variable;

/// The shell's one-character special names (Go's `isShellSpecialVar`).
fn is_special(c: u8) -> bool {
    matches!(
        c,
        b'*' | b'#' | b'$' | b'@' | b'!' | b'?' | b'-' | b'0'..=b'9'
    )
}

fn is_name_byte(c: u8) -> bool {
    c == b'_' || c.is_ascii_alphanumeric()
}

/// The name after a `$` in `s` (non-empty) and how many bytes it spans; `("", n)` with
/// `n > 0` is bad syntax to drop, `("", 0)` a `$` to keep.
fn shell_name(s: &str) -> (&str, usize) {
    let b = s.as_bytes();
    if b[0] == b'{' {
        if b.len() > 2 && is_special(b[1]) && b[2] == b'}' {
            return (&s[1..2], 3);
        }
        return match s[1..].find('}') {
            Some(0) => ("", 2),
            Some(end) => (&s[1..end + 1], end + 2),
            None => ("", 1),
        };
    }
    if is_special(b[0]) {
        return (&s[..1], 1);
    }
    let len = b.iter().take_while(|c| is_name_byte(**c)).count();
    (&s[..len], len)
}

/// What a name expands to: `$` for `$$`, nothing for the other special names, else
/// `lookup`, nothing when unknown (gitlab-runner's `JobVariables.Get`).
fn value_of(name: &str, lookup: &dyn Fn(&str) -> Option<String>) -> String {
    match name {
        "$" => "$".to_string(),
        "*" | "#" | "@" | "!" | "?" => String::new(),
        n if n.len() == 1 && n.as_bytes()[0].is_ascii_digit() => String::new(),
        n => lookup(n).unwrap_or_default(),
    }
}

/// Expands `value` with `lookup`, by the rules in the module doc.
pub fn expand(value: &str, lookup: &dyn Fn(&str) -> Option<String>) -> String {
    let mut out = String::with_capacity(value.len());
    let mut rest = value;
    while let Some(pos) = rest.find('$') {
        out.push_str(&rest[..pos]);
        let after = &rest[pos + 1..];
        if after.is_empty() {
            out.push('$');
            rest = after;
            break;
        }
        let (name, width) = shell_name(after);
        if name.is_empty() && width == 0 {
            out.push('$');
        } else if !name.is_empty() {
            out.push_str(&value_of(name, lookup));
        }
        rest = &after[width..];
    }
    out.push_str(rest);
    out
}

/// [`expand`] with a job's variables (the last definition of a key wins).
pub fn expand_vars(value: &str, vars: &[JobVariable]) -> String {
    expand(value, &|name| variable(vars, name).map(str::to_string))
}

#[cfg(test)]
mod tests {
    use secrecy::SecretString;

    use super::*;

    fn check(input: &str, expected: &str) {
        let lookup = |k: &str| match k {
            "A" => Some("alpha".to_string()),
            "B_2" => Some("$A".to_string()),
            "EMPTY" => Some(String::new()),
            "bad-name" => Some("odd".to_string()),
            "-" => Some("dash".to_string()),
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
        check("$A_", "");
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
        check("${$}", "$");
    }

    #[test]
    fn special_names_expand_to_nothing() {
        check("[$1$?$#$*$@$!]", "[]");
        check("[${0}]", "[]");
        // `-` is special to the scanner only: Get looks it up like any name.
        check("$-x", "dashx");
    }

    #[test]
    fn a_dollar_that_starts_no_name_is_kept() {
        check("a $ b", "a $ b");
        check("end$", "end$");
        check("$/x", "$/x");
        check("é$é", "é$é");
    }

    #[test]
    fn braces_take_anything_up_to_the_first_close() {
        check("${bad-name}", "odd");
        check("${A}}", "alpha}");
    }

    #[test]
    fn bad_brace_syntax_is_dropped() {
        check("x${}y", "xy");
        check("${unclosed", "unclosed");
        check("a${", "a");
    }

    #[test]
    fn non_ascii_text_is_kept() {
        check("é$A€", "éalpha€");
    }

    #[test]
    fn job_variables_last_definition_wins() {
        let vars: Vec<JobVariable> = [("REF", "old"), ("DIR", "/builds/g/p"), ("REF", "main")]
            .iter()
            .map(|(k, v)| JobVariable {
                key: k.to_string(),
                value: SecretString::from(v.to_string()),
                public: true,
                masked: false,
                file: false,
                raw: false,
            })
            .collect();
        assert_eq!(
            expand_vars("$DIR/out-${REF}", &vars),
            "/builds/g/p/out-main"
        );
        assert_eq!(expand_vars("cost$$5 $ ${open", &vars), "cost$5 $ open");
    }
}
