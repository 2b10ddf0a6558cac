//! `$VAR` / `${VAR}` expansion in `artifacts:paths`, `artifacts:name`, `cache:key` and
//! `cache:paths`, as gitlab-runner does with the job's variables before using them. Unknown
//! variables expand to nothing; `$$` is a literal `$`.

use crate::sources::plan::variable;
use drover_gitlab::types::JobVariable;

/// Expands variables in `value` from `vars` (the last definition of a key wins).
pub fn expand(value: &str, vars: &[JobVariable]) -> String {
    let mut out = String::with_capacity(value.len());
    let mut rest = value;
    while let Some(i) = rest.find('$') {
        out.push_str(&rest[..i]);
        let after = &rest[i + 1..];
        if let Some(tail) = after.strip_prefix('$') {
            out.push('$');
            rest = tail;
        } else if let Some(braced) = after.strip_prefix('{') {
            match braced.find('}') {
                Some(end) => {
                    out.push_str(variable(vars, &braced[..end]).unwrap_or(""));
                    rest = &braced[end + 1..];
                }
                None => {
                    out.push('$');
                    rest = after;
                }
            }
        } else {
            let end = after
                .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                .unwrap_or(after.len());
            if end == 0 {
                out.push('$');
            } else {
                out.push_str(variable(vars, &after[..end]).unwrap_or(""));
            }
            rest = &after[end..];
        }
    }
    out.push_str(rest);
    out
}

#[cfg(test)]
mod tests {
    use secrecy::SecretString;

    use super::*;

    #[test]
    fn expands_plain_and_braced() {
        let vars: Vec<JobVariable> = [("CI_PROJECT_DIR", "/builds/g/p"), ("REF", "main")]
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
        assert_eq!(expand("$CI_PROJECT_DIR/out", &vars), "/builds/g/p/out");
        assert_eq!(expand("cache-${REF}-x", &vars), "cache-main-x");
        assert_eq!(expand("$UNKNOWN/a", &vars), "/a");
        assert_eq!(expand("cost$$5 $ ${open", &vars), "cost$5 $ ${open");
    }
}
