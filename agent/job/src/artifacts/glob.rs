//! Doublestar glob matching for `artifacts:paths`, `artifacts:exclude` and `cache:paths`,
//! with the syntax gitlab-runner accepts (it uses Go's `doublestar`): `**` as a whole path
//! segment matches zero or more segments; inside a segment `*` matches any run of
//! characters except `/`, `?` one character, `[abc]`, `[a-z]`, `[!a]`/`[^a]` a class,
//! `{a,b}` alternatives, `\` escapes. Dot files are not special.
//!
//! Patterns are relative to `CI_PROJECT_DIR`; [`normalize_pattern`] turns what a user wrote
//! (`./build/`, `$CI_PROJECT_DIR/out`, `a/../b`) into that form and refuses anything that
//! points outside the project directory.

/// A compiled pattern: its `/`-separated segments.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Glob {
    segments: Vec<String>,
}

/// Why a pattern was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PatternError {
    #[error("path {pattern:?} is not a subpath of the project directory {project_dir:?}")]
    OutsideProject {
        pattern: String,
        project_dir: String,
    },
    #[error("path {0:?} is empty")]
    Empty(String),
}

/// Makes `pattern` relative to the project directory: strips `./`, a leading
/// `project_dir/` and trailing slashes, resolves `.`/`..` lexically. Absolute paths elsewhere
/// and paths climbing above the project directory are refused. A pattern naming the project
/// directory itself becomes `**` (everything).
pub fn normalize_pattern(pattern: &str, project_dir: &str) -> Result<String, PatternError> {
    let trimmed = pattern.trim();
    if trimmed.is_empty() {
        return Err(PatternError::Empty(pattern.to_string()));
    }
    let outside = || PatternError::OutsideProject {
        pattern: pattern.to_string(),
        project_dir: project_dir.to_string(),
    };
    let project = project_dir.trim_end_matches('/');
    let relative = if let Some(abs) = trimmed.strip_prefix('/') {
        let abs = format!("/{abs}");
        if project.is_empty() {
            return Err(outside());
        }
        if abs == project {
            ""
        } else if let Some(rest) = abs.strip_prefix(&format!("{project}/")) {
            return normalize_relative(rest, pattern, project_dir);
        } else {
            return Err(outside());
        }
    } else {
        trimmed
    };
    normalize_relative(relative, pattern, project_dir)
}

fn normalize_relative(
    relative: &str,
    pattern: &str,
    project_dir: &str,
) -> Result<String, PatternError> {
    let mut out: Vec<&str> = Vec::new();
    for seg in relative.split('/') {
        match seg {
            "" | "." => {}
            ".." => {
                if out.pop().is_none() {
                    return Err(PatternError::OutsideProject {
                        pattern: pattern.to_string(),
                        project_dir: project_dir.to_string(),
                    });
                }
            }
            s => out.push(s),
        }
    }
    if out.is_empty() {
        return Ok("**".to_string());
    }
    Ok(out.join("/"))
}

impl Glob {
    /// Compiles a pattern already made relative by [`normalize_pattern`].
    pub fn new(pattern: &str) -> Glob {
        let mut segments: Vec<String> = Vec::new();
        for s in pattern.split('/').filter(|s| !s.is_empty()) {
            // `a/**/**/b` is the same as `a/**/b`.
            if s == "**" && segments.last().map(String::as_str) == Some("**") {
                continue;
            }
            segments.push(s.to_string());
        }
        Glob { segments }
    }

    /// Whether the whole relative `path` (segments separated by `/`) matches.
    pub fn matches(&self, path: &str) -> bool {
        let parts: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).collect();
        let pats: Vec<&str> = self.segments.iter().map(String::as_str).collect();
        match_segments(&pats, &parts)
    }
}

fn match_segments(pats: &[&str], parts: &[&str]) -> bool {
    match pats.split_first() {
        None => parts.is_empty(),
        Some((&"**", rest)) => (0..=parts.len()).any(|skip| match_segments(rest, &parts[skip..])),
        Some((p, rest)) => match parts.split_first() {
            Some((part, more)) => match_segment(p, part) && match_segments(rest, more),
            None => false,
        },
    }
}

/// Matches one segment pattern against one path segment.
pub fn match_segment(pattern: &str, name: &str) -> bool {
    let p: Vec<char> = pattern.chars().collect();
    let n: Vec<char> = name.chars().collect();
    match_chars(&p, &n)
}

fn match_chars(p: &[char], n: &[char]) -> bool {
    let Some((&c, rest)) = p.split_first() else {
        return n.is_empty();
    };
    match c {
        '*' => (0..=n.len()).any(|i| match_chars(rest, &n[i..])),
        '?' => !n.is_empty() && match_chars(rest, &n[1..]),
        '\\' => match rest.split_first() {
            Some((&lit, after)) => n.first() == Some(&lit) && match_chars(after, &n[1..]),
            None => n.first() == Some(&'\\') && n.len() == 1,
        },
        '[' => match parse_class(rest) {
            Some((class, after)) => {
                !n.is_empty() && class.contains(n[0]) && match_chars(after, &n[1..])
            }
            None => n.first() == Some(&'[') && match_chars(rest, &n[1..]),
        },
        '{' => match parse_braces(rest) {
            Some((alternatives, after)) => alternatives.iter().any(|alt| {
                let mut combined = alt.clone();
                combined.extend_from_slice(after);
                match_chars(&combined, n)
            }),
            None => n.first() == Some(&'{') && match_chars(rest, &n[1..]),
        },
        lit => n.first() == Some(&lit) && match_chars(rest, &n[1..]),
    }
}

struct CharClass {
    negated: bool,
    ranges: Vec<(char, char)>,
}

impl CharClass {
    fn contains(&self, c: char) -> bool {
        let hit = self.ranges.iter().any(|&(lo, hi)| lo <= c && c <= hi);
        hit != self.negated
    }
}

/// Parses `[...]` after the opening bracket; returns the class and the rest of the pattern.
fn parse_class(p: &[char]) -> Option<(CharClass, &[char])> {
    let mut i = 0;
    let mut negated = false;
    if matches!(p.first(), Some('!') | Some('^')) {
        negated = true;
        i = 1;
    }
    let mut ranges = Vec::new();
    let mut first = true;
    while i < p.len() {
        let mut c = p[i];
        if c == ']' && !first {
            return Some((CharClass { negated, ranges }, &p[i + 1..]));
        }
        first = false;
        if c == '\\' && i + 1 < p.len() {
            i += 1;
            c = p[i];
        }
        if i + 2 < p.len() && p[i + 1] == '-' && p[i + 2] != ']' {
            ranges.push((c, p[i + 2]));
            i += 3;
        } else {
            ranges.push((c, c));
            i += 1;
        }
    }
    None
}

/// Parses `{a,b,...}` after the opening brace (nesting allowed); returns the alternatives
/// and the rest of the pattern.
fn parse_braces(p: &[char]) -> Option<(Vec<Vec<char>>, &[char])> {
    let mut depth = 0usize;
    let mut alternatives = Vec::new();
    let mut current = Vec::new();
    let mut i = 0;
    while i < p.len() {
        let c = p[i];
        match c {
            '\\' if i + 1 < p.len() => {
                current.push(c);
                current.push(p[i + 1]);
                i += 2;
                continue;
            }
            '{' => depth += 1,
            '}' if depth == 0 => {
                alternatives.push(current);
                return Some((alternatives, &p[i + 1..]));
            }
            '}' => depth -= 1,
            ',' if depth == 0 => {
                alternatives.push(std::mem::take(&mut current));
                i += 1;
                continue;
            }
            _ => {}
        }
        current.push(c);
        i += 1;
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(pattern: &str, path: &str, expect: bool) {
        assert_eq!(
            Glob::new(pattern).matches(path),
            expect,
            "pattern {pattern:?} against {path:?}"
        );
    }

    #[test]
    fn single_segment_wildcards() {
        check("*.txt", "a.txt", true);
        check("*.txt", "dir/a.txt", false);
        check("a?c", "abc", true);
        check("a?c", "ac", false);
        check("[ab]x", "bx", true);
        check("[!ab]x", "bx", false);
        check("[a-c]x", "cx", true);
        check("file.{o,a}", "file.a", true);
        check("file.{o,a}", "file.so", false);
        check(".hidden", ".hidden", true);
        check("*", ".hidden", true);
        check("a\\*b", "a*b", true);
        check("a\\*b", "axb", false);
    }

    #[test]
    fn doublestar_spans_segments() {
        check("**/*.o", "a.o", true);
        check("**/*.o", "x/y/z/a.o", true);
        check("bin/**/*.o", "bin/a.o", true);
        check("bin/**/*.o", "bin/x/y/a.o", true);
        check("bin/**/*.o", "lib/x/a.o", false);
        check("bin/**", "bin/x/y", true);
        check("**", "anything/at/all", true);
        check("a/**/**/b", "a/b", true);
    }

    #[test]
    fn normalization() {
        let n = |p: &str| normalize_pattern(p, "/builds/g/p");
        assert_eq!(n("./build/").unwrap(), "build");
        assert_eq!(n("/builds/g/p/out/*.txt").unwrap(), "out/*.txt");
        assert_eq!(n("/builds/g/p").unwrap(), "**");
        assert_eq!(n("a/../b").unwrap(), "b");
        assert!(matches!(
            n("../other"),
            Err(PatternError::OutsideProject { .. })
        ));
        assert!(matches!(
            n("/etc/passwd"),
            Err(PatternError::OutsideProject { .. })
        ));
        assert!(matches!(
            n("/builds/g/pother/x"),
            Err(PatternError::OutsideProject { .. })
        ));
        assert!(matches!(n("  "), Err(PatternError::Empty(_))));
    }
}
